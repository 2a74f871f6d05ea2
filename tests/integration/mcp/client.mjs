// The MCP client of the MCP authorization test: the official TypeScript SDK's `Client` over
// `StreamableHTTPClientTransport`, authorized by the SDK's own `ClientCredentialsProvider`
// (machine-to-machine OAuth, client_credentials). Nothing here speaks OAuth: on the filter's 401
// the SDK reads `resource_metadata`, fetches the protected resource metadata, discovers the
// authorization server, asks it for a token for the resource and retries.
//
//   node client.mjs --url http://127.0.0.1:PORT/mcp --client-id ID --client-secret S --issuer ISS
//                   [--scope S]
//
// `--scope` is the provider's `scope` option: in SDK 1.x a client_credentials token request
// carries only that (fetchToken → prepareTokenRequest(clientMetadata.scope)), never the
// challenge's `scope` or the metadata's `scopes_supported` (those the SDK uses for the
// authorization code flow and registration only); without it the token request has no scope.
//
// The transport's `fetch` is wrapped only to record what the SDK sent and got. Prints one JSON
// object on stdout: {"tools", "result", "requests": [{method, url, status, www_authenticate,
// body (token requests: their form fields), json (metadata answers)}], "token_claims"}; exits 1
// with {"error", "requests"} when the SDK fails.

import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    issuer: { type: 'string' },
    scope: { type: 'string' },
  },
});

const requests = [];

async function recordingFetch(input, init) {
  const url = input instanceof Request ? input.url : String(input);
  const method = init?.method ?? (input instanceof Request ? input.method : 'GET');
  const entry = { method, url };
  const body = init?.body;
  if (body instanceof URLSearchParams) {
    entry.body = Object.fromEntries(body);
  } else if (typeof body === 'string') {
    try {
      entry.body = JSON.parse(body);
    } catch {
      entry.body = Object.fromEntries(new URLSearchParams(body));
    }
  }
  const headers = new Headers(init?.headers);
  entry.authorization = headers.get('authorization')?.split(' ')[0] ?? null;
  requests.push(entry);
  const response = await fetch(input, init);
  entry.status = response.status;
  entry.www_authenticate = response.headers.get('www-authenticate');
  entry.content_type = response.headers.get('content-type');
  if (url.includes('/.well-known/') && response.ok) {
    try {
      entry.json = await response.clone().json();
    } catch {
      entry.json = null;
    }
  }
  return response;
}

const authProvider = new ClientCredentialsProvider({
  clientId: args['client-id'],
  clientSecret: args['client-secret'],
  expectedIssuer: args.issuer,
  scope: args.scope,
});

const transport = new StreamableHTTPClientTransport(new URL(args.url), {
  authProvider,
  fetch: recordingFetch,
});
const client = new Client({ name: 'mesh-oauth-test-client', version: '1.0.0' });

function claimsOf(token) {
  if (!token) return null;
  const [, payload] = token.split('.');
  try {
    return JSON.parse(Buffer.from(payload, 'base64url').toString());
  } catch {
    return null;
  }
}

try {
  await client.connect(transport);
  const { tools } = await client.listTools();
  const result = await client.callTool({ name: 'add', arguments: { a: 2, b: 3 } });
  await client.close();
  const tokens = authProvider.tokens();
  console.log(JSON.stringify({
    tools: tools.map((tool) => tool.name),
    result,
    requests,
    token_claims: claimsOf(tokens?.access_token),
    token_scope: tokens?.scope ?? null,
  }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error?.stack ?? error), requests }));
  process.exit(1);
}
