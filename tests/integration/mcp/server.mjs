// The MCP server behind Envoy for the MCP authorization test: the official TypeScript SDK's
// `McpServer` with one tool (`add`) over the Streamable HTTP transport, stateless, on
// 127.0.0.1 at /mcp. It knows nothing about OAuth: the mesh-oauth filter in front of it does.
//
//   node server.mjs --port 0 --record FILE
//
// Every request it receives is appended to FILE as one JSON line ({method, path, authorization:
// whether an Authorization header came through, client: the `x-token-client-id` header the
// filter sets from a verified token}), so that the test can tell what reached the upstream and
// what the filter answered itself. Anything but /mcp is a 404. Prints one JSON line
// on stdout once it listens: {"ready": true, "port", "url"}. Ends on SIGTERM or when stdin closes.

import { appendFileSync } from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import * as z from 'zod/v4';

import { HOST, announceReady, listen } from '../serve.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    record: { type: 'string' },
  },
});

function mcpServer() {
  const server = new McpServer({ name: 'mesh-oauth-test-server', version: '1.0.0' });
  server.registerTool(
    'add',
    {
      title: 'Addition',
      description: 'Adds two numbers',
      inputSchema: { a: z.number(), b: z.number() },
    },
    async ({ a, b }) => ({ content: [{ type: 'text', text: String(a + b) }] }),
  );
  return server;
}

const httpServer = http.createServer(async (req, res) => {
  const path = new URL(req.url, `http://${HOST}`).pathname;
  if (args.record) {
    appendFileSync(args.record, JSON.stringify({
      method: req.method,
      path,
      authorization: req.headers.authorization !== undefined,
      client: req.headers['x-token-client-id'] ?? null,
    }) + '\n');
  }
  if (path !== '/mcp') {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  // Stateless: one server and one transport per request, as the SDK's stateless example does.
  const server = mcpServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res);
  } catch (error) {
    console.error('mcp error', error);
    if (!res.headersSent) res.writeHead(500).end();
  }
});

const port = await listen(httpServer, args.port);
announceReady({ port, url: `http://${HOST}:${port}/mcp` }, httpServer);
