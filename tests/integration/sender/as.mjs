// A real OAuth 2.0 authorization server for the sender-constrained token tests: npm
// `oidc-provider`, the client credentials grant, JWT access tokens for one resource (resource
// indicators, RFC 8707), DPoP-bound tokens (RFC 9449) and certificate-bound tokens (RFC 8705).
//
//   node as.mjs --port 0 --audience api [--tls-port 0 --tls-cert F --tls-key F --client-ca F
//               --mtls-san-uri spiffe://…]
//
// Listens on 127.0.0.1: plain HTTP on --port (issuer, discovery, JWKS, the token endpoint for the
// DPoP client), and with --tls-port a second listener over TLS that asks for a client certificate
// and verifies it against --client-ca: the token endpoint for the mTLS client (tls_client_auth,
// certificate-bound tokens). Port 0: the kernel picks. Prints one JSON line on stdout once both
// listen: {"ready": true, "issuer", "port", "tls_port", "token_endpoint", "mtls_token_endpoint",
// "jwks_uri", "resource", "audience"}. Ends on SIGTERM or when stdin closes.

import { readFileSync } from 'node:fs';
import * as https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

import { HOST, announceReady, bootServer, listen } from '../serve.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.AS_PORT ?? '0' },
    'tls-port': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'client-ca': { type: 'string' },
    'mtls-san-uri': { type: 'string' },
    audience: { type: 'string', default: 'api' },
    resource: { type: 'string', default: 'https://api.mesh-oauth.test' },
    'token-ttl': { type: 'string', default: '600' },
  },
});

const RESOURCE = args.resource;
const AUDIENCE = args.audience;

// What the tests know of the clients: the DPoP client authenticates with a secret and asks for
// DPoP-bound tokens (or plain bearer ones, without a proof); the mTLS client authenticates with
// its certificate (tls_client_auth, its URI SAN registered) and always gets certificate-bound ones.
const DPOP_CLIENT = { id: 'dpop-client', secret: 'dpop-client-secret' };
const MTLS_CLIENT = { id: 'mtls-client' };

const { server: plain, port, origin: issuer, dispatch, serve } = await bootServer(args.port);
let tls;
let tlsPort;
if (args['tls-port'] !== undefined) {
  tls = https.createServer({
    cert: readFileSync(args['tls-cert']),
    key: readFileSync(args['tls-key']),
    ca: readFileSync(args['client-ca']),
    requestCert: true,
    // The handshake succeeds without a (valid) certificate; `tls_client_auth` then refuses the
    // client, as oidc-provider does behind a proxy that passes the verification result on.
    rejectUnauthorized: false,
  }, dispatch);
  tlsPort = await listen(tls, args['tls-port']);
}

// Signing keys made for this run, private JWKs as oidc-provider takes them.
const keyJwk = (type, options) => ({
  ...generateKeyPairSync(type, options).privateKey.export({ format: 'jwk' }),
  use: 'sig',
});
const jwks = {
  keys: [
    { ...keyJwk('ec', { namedCurve: 'P-256' }), alg: 'ES256' },
    { ...keyJwk('rsa', { modulusLength: 2048 }), alg: 'RS256' },
  ],
};

// The client certificate of a connection to the TLS listener: the one Node verified against
// --client-ca (what a TLS-terminating proxy would pass on as a header is read straight from
// the socket here).
function peerCertificate(ctx) {
  const socket = ctx.req.socket;
  if (typeof socket.getPeerX509Certificate !== 'function') return undefined;
  return socket.getPeerX509Certificate();
}

const clients = [
  {
    client_id: DPOP_CLIENT.id,
    client_secret: DPOP_CLIENT.secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
];
if (args['mtls-san-uri']) {
  clients.push({
    client_id: MTLS_CLIENT.id,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_san_uri: args['mtls-san-uri'],
    tls_client_certificate_bound_access_tokens: true,
  });
}

const provider = new Provider(issuer, {
  clients,
  jwks,
  clientAuthMethods: ['client_secret_basic', 'tls_client_auth'],
  enabledJWA: {
    // Every DPoP algorithm the tests' client uses; `Ed25519` is what npm `dpop` 2.x signs
    // Ed25519 proofs with (RFC 9864), `EdDSA` the older name of the same.
    dPoPSigningAlgValues: ['ES256', 'EdDSA', 'Ed25519', 'PS256', 'RS256'],
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    dPoP: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'orders:read',
          audience: AUDIENCE,
          accessTokenTTL: Number(args['token-ttl']),
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => {
        if (property !== 'tls_client_auth_san_uri') return false;
        const names = (peerCertificate(ctx)?.subjectAltName ?? '').split(', ');
        return names.includes(`URI:${expected}`);
      },
    },
  },
  scopes: ['orders:read'],
});
provider.on('server_error', (_ctx, error) => console.error('server_error', error));
serve(provider.callback());

announceReady({
  issuer,
  port,
  tls_port: tlsPort ?? null,
  token_endpoint: `${issuer}/token`,
  mtls_token_endpoint: tls ? `https://${HOST}:${tlsPort}/token` : null,
  jwks_uri: `${issuer}/jwks`,
  resource: RESOURCE,
  audience: AUDIENCE,
}, plain, tls);
