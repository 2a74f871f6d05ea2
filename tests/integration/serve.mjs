// The boot the tests' Node servers share (login/op.mjs, mcp/as.mjs, mcp/server.mjs,
// outbound/as.mjs, sender/as.mjs): listen on loopback before the app exists (an issuer's URL
// names its port), print the one JSON `ready` line the Python side waits for, and end on
// SIGTERM, SIGINT or when stdin closes (the test process went away).

import * as http from 'node:http';

export const HOST = '127.0.0.1';

/** Listens on HOST at `port` (0: any free port); resolves to the port taken. */
export function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(port), HOST, () => resolve(server.address().port));
  });
}

/**
 * An HTTP server listening at `port` that answers 503 until `serve(handler)` names what
 * answers: the app is built after the port is known. `dispatch` lets another server (TLS)
 * share the handler.
 */
export async function bootServer(port) {
  let handler = (_req, res) => {
    res.statusCode = 503;
    res.end();
  };
  const dispatch = (req, res) => handler(req, res);
  const server = http.createServer(dispatch);
  const bound = await listen(server, port);
  return {
    server,
    port: bound,
    origin: `http://${HOST}:${bound}`,
    dispatch,
    serve: (next) => {
      handler = next;
    },
  };
}

/** Prints `{"ready": true, ...fields}` and stops `servers` (an undefined one is skipped) and
 * the process on SIGTERM, SIGINT or the end of stdin. */
export function announceReady(fields, ...servers) {
  const stop = () => {
    for (const server of servers) {
      server?.close();
      server?.closeAllConnections?.();
    }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
  // Last: a test may stop the server as soon as it reads this line.
  console.log(JSON.stringify({ ready: true, ...fields }));
}
