// The authorization server of the MCP authorization test: npm `oidc-provider` with the client
// credentials grant and resource indicators (RFC 8707), issuing JWT access tokens whose `aud` is
// the resource the client asked for, as the MCP authorization spec has clients ask.
//
//   node as.mjs --port 0 --resource http://127.0.0.1:PORT/mcp [--other-resource URI]
//
// One confidential client (`mcp-client` / `mcp-client-secret`, client_secret_basic), as the MCP
// SDK's ClientCredentialsProvider authenticates. `--resource` is the MCP server as the mesh-oauth
// filter names it (scopes `tools:call` and `tools:read`); `--other-resource` a second resource
// the same client may get tokens for (so that the test holds a valid token for another audience).
// Any other `resource` is `invalid_target`. Discovery is OpenID Connect's
// (/.well-known/openid-configuration), which the SDK falls back to after RFC 8414's.
// Prints one JSON line on stdout once it listens: {"ready": true, "issuer", "port",
// "token_endpoint", "jwks_uri"}. Ends on SIGTERM or when stdin closes.

import { generateKeyPairSync } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

import { announceReady, bootServer } from '../serve.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    resource: { type: 'string' },
    'other-resource': { type: 'string', default: 'https://other.mesh-oauth.test/mcp' },
  },
});
if (!args.resource) {
  console.error('--resource is required');
  process.exit(2);
}

const SCOPES = ['tools:call', 'tools:read'];
const RESOURCES = new Set([args.resource, args['other-resource']]);

const { server, port, origin: issuer, serve } = await bootServer(args.port);

const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'mcp-client',
    client_secret: 'mcp-client-secret',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    // The only signing key is ES256 (oidc-provider's client default is RS256).
    id_token_signed_response_alg: 'ES256',
    scope: SCOPES.join(' '),
  }],
  jwks: { keys: [{ ...key, alg: 'ES256', use: 'sig' }] },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => args.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (!RESOURCES.has(resourceIndicator)) throw new errors.InvalidTarget();
        return {
          scope: SCOPES.join(' '),
          audience: resourceIndicator,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  scopes: SCOPES,
});
provider.on('server_error', (_ctx, error) => console.error('server_error', error));
provider.on('grant.error', (_ctx, error) => console.error('grant.error', error));
serve(provider.callback());

announceReady({
  issuer,
  port,
  token_endpoint: `${issuer}/token`,
  jwks_uri: `${issuer}/jwks`,
}, server);
