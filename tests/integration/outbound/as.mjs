// The authorization server of the outbound-credentials tests (issue 29): npm `oidc-provider`
// with the client credentials grant (client_secret_basic, client_secret_post, private_key_jwt,
// all as oidc-provider implements them) and RFC 8693 token exchange registered on it with
// `registerGrantType`: the handler verifies the subject and actor tokens with the server's own
// keys (npm `jose`), enforces `may_act`, and issues a token narrowed to the requested audience and
// scopes with `act` naming the actor — or a transaction token (`txntoken+jwt`).
//
//   node as.mjs --port 0 [--agent-jwks FILE] [--token-ttl 600] [--assertion-aud issuer|token_endpoint]
//
// Clients: `svc-basic` / `svc-basic-secret` (client_secret_basic), `svc-post` / `svc-post-secret`
// (client_secret_post), and with --agent-jwks `agent-jwt` (private_key_jwt, the public JWKS in
// FILE). Every client may use both grants. Resources: any `https://…mesh-oauth.test…` URI; the
// token's `aud` is the resource. oidc-provider accepts a private_key_jwt assertion whose `aud` is
// the issuer or the token endpoint URL; with --assertion-aud only that one (Okta and Entra ID
// accept only the token endpoint URL).
//
// Test controls, outside the OAuth endpoints:
//   GET  /test/mint?sub=S&ttl=N[&may_act=C][&scope=A+B]  a user token (the subject of exchanges)
//   GET  /test/stats                 {"token_requests": n, "token_request_ms": [when, …], "granted":
//                                    {client: {grant: n}}, "refused": …, "assertion_aud": [aud, …]}
//                                    (when: each call's epoch ms; aud: each verified assertion's)
//   POST /test/reset                 zeroes the counts
//   POST /test/mode?mode=M[&delay_ms=N]  the token endpoint: ok | status500 | garbage | slow | reset
// Prints one JSON line on stdout once it listens: {"ready": true, "issuer", "port",
// "token_endpoint", "jwks_uri"}. Ends on SIGTERM or when stdin closes.

import { readFileSync } from 'node:fs';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';
import { SignJWT, createLocalJWKSet, importJWK, jwtVerify } from 'jose';

import { announceReady, bootServer } from '../serve.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'agent-jwks': { type: 'string' },
    'token-ttl': { type: 'string', default: '600' },
    'assertion-aud': { type: 'string' },
  },
});

if (args['assertion-aud'] && !['issuer', 'token_endpoint'].includes(args['assertion-aud'])) {
  throw new Error('--assertion-aud must be issuer or token_endpoint');
}
const TTL = Number(args['token-ttl']);
const SCOPES = ['pay:read', 'pay:write', 'tools:call', 'orders:read'];
const DEFAULT_RESOURCE = 'https://as.mesh-oauth.test';
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const TXN_TOKEN = 'urn:ietf:params:oauth:token-type:txn_token';
const TOKEN_PATH = '/token';

const { server, port, origin: issuer, serve } = await bootServer(args.port);

const privateJwk = {
  ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }),
  alg: 'ES256',
  use: 'sig',
  kid: 'as-es256',
};
const { d: _d, ...publicJwk } = privateJwk;
const signingKey = await importJWK(privateJwk, 'ES256');
const ownKeys = createLocalJWKSet({ keys: [publicJwk] });

const grants = ['client_credentials', EXCHANGE];
const client = (extra) => ({
  grant_types: grants,
  redirect_uris: [],
  response_types: [],
  scope: SCOPES.join(' '),
  id_token_signed_response_alg: 'ES256',
  ...extra,
});
const clients = [
  client({ client_id: 'svc-basic', client_secret: 'svc-basic-secret', token_endpoint_auth_method: 'client_secret_basic' }),
  client({ client_id: 'svc-post', client_secret: 'svc-post-secret', token_endpoint_auth_method: 'client_secret_post' }),
];
if (args['agent-jwks']) {
  clients.push(client({
    client_id: 'agent-jwt',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: JSON.parse(readFileSync(args['agent-jwks'], 'utf8')),
  }));
}

const isTestResource = (uri) => {
  try {
    const url = new URL(uri);
    return url.protocol === 'https:' && url.hostname.endsWith('mesh-oauth.test');
  } catch {
    return false;
  }
};

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [privateJwk] },
  scopes: ['openid', ...SCOPES],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
  enabledJWA: { clientAuthSigningAlgValues: ['ES256', 'RS256'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => DEFAULT_RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (!isTestResource(resourceIndicator)) throw new errors.InvalidTarget();
        return {
          scope: SCOPES.join(' '),
          audience: resourceIndicator,
          accessTokenTTL: TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  routes: { token: TOKEN_PATH },
  // After the assertion's signature checked out: record its `aud`, and refuse another than
  // --assertion-aud's.
  assertJwtClientAuthClaimsAndHeader: async (_ctx, claims) => {
    stats.assertion_aud.push(claims.aud);
    const required = { issuer, token_endpoint: `${issuer}${TOKEN_PATH}` }[args['assertion-aud']];
    if (required && claims.aud !== required) {
      throw new errors.InvalidClientAuth(`audience (aud) must be ${required}`);
    }
  },
});
provider.proxy = false;

// A token this server issued (a user token from /test/mint, an actor's client-credentials
// token, an earlier exchange's result): verified with its own key.
async function verifyOwn(token, what) {
  try {
    const { payload } = await jwtVerify(token, ownKeys, { issuer });
    return payload;
  } catch (cause) {
    throw new errors.InvalidGrant(`${what} is not a valid token of this server (${cause.code ?? cause.message})`);
  }
}

const one = (value) => (Array.isArray(value) ? value[0] : value);

async function tokenExchange(ctx) {
  const { params, client: caller } = ctx.oidc;
  if (!params.subject_token || params.subject_token_type !== ACCESS_TOKEN) {
    throw new errors.InvalidRequest('subject_token of type access_token required');
  }
  const subject = await verifyOwn(params.subject_token, 'subject_token');
  let actor;
  if (params.actor_token) {
    if (params.actor_token_type !== ACCESS_TOKEN) {
      throw new errors.InvalidRequest('actor_token_type must be access_token');
    }
    actor = await verifyOwn(params.actor_token, 'actor_token');
    if (actor.sub !== caller.clientId) {
      throw new errors.InvalidGrant('the actor token is not the calling client\'s');
    }
  }
  // RFC 8693 §4.4: who may act for the subject.
  if (subject.may_act && subject.may_act.sub !== (actor?.sub ?? caller.clientId)) {
    throw new errors.InvalidGrant('may_act does not name this actor');
  }
  const requested = params.requested_token_type ?? ACCESS_TOKEN;
  if (requested !== ACCESS_TOKEN && requested !== TXN_TOKEN) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  const audience = one(params.audience) ?? one(params.resource);
  if (params.resource && !isTestResource(one(params.resource))) throw new errors.InvalidTarget();
  // Narrowed: the scopes asked for that the subject holds (all of the subject's if none asked).
  const held = new Set(String(subject.scope ?? '').split(' ').filter(Boolean));
  const asked = String(params.scope ?? '').split(' ').filter(Boolean);
  const scope = (asked.length ? asked.filter((s) => held.has(s)) : [...held]).join(' ');
  const now = Math.floor(Date.now() / 1000);
  const exp = Math.min(now + TTL, subject.exp ?? now + TTL);
  const claims = { sub: subject.sub, scope, client_id: caller.clientId };
  if (actor) {
    claims.act = subject.act ? { sub: actor.sub, act: subject.act } : { sub: actor.sub };
  }
  let jwt;
  if (requested === TXN_TOKEN) {
    jwt = new SignJWT({ ...claims, txn: randomUUID(), tctx: { destination: audience ?? null } })
      .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid, typ: 'txntoken+jwt' });
  } else {
    jwt = new SignJWT(claims).setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid, typ: 'at+jwt' });
  }
  jwt = jwt.setIssuer(issuer).setIssuedAt(now).setExpirationTime(exp).setJti(randomUUID());
  if (audience) jwt = jwt.setAudience(audience);
  ctx.body = {
    access_token: await jwt.sign(signingKey),
    issued_token_type: requested,
    token_type: requested === TXN_TOKEN ? 'N_A' : 'Bearer',
    expires_in: exp - now,
  };
}

provider.registerGrantType(
  EXCHANGE,
  tokenExchange,
  ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type',
    'audience', 'resource', 'scope'],
  ['audience', 'resource'],
);

// Every POST to the token endpoint counts (injected failures too); the grants oidc-provider
// answered are counted by client and grant type from its own events.
const stats = { token_requests: 0, token_request_ms: [], granted: {}, refused: {}, assertion_aud: [] };
let mode = 'ok';
let delayMs = 0;

const tally = (table, ctx) => {
  const id = ctx.oidc.client?.clientId ?? '?';
  const grant = ctx.oidc.params?.grant_type ?? '?';
  table[id] ??= {};
  table[id][grant] = (table[id][grant] ?? 0) + 1;
};
provider.on('grant.success', (ctx) => tally(stats.granted, ctx));
provider.on('grant.error', (ctx) => tally(stats.refused, ctx));

function json(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

const callback = provider.callback();
serve(async (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/test/mint') {
    const now = Math.floor(Date.now() / 1000);
    const claims = { scope: url.searchParams.get('scope') ?? 'pay:read pay:write tools:call' };
    if (url.searchParams.get('may_act')) claims.may_act = { sub: url.searchParams.get('may_act') };
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid, typ: 'at+jwt' })
      .setIssuer(issuer).setSubject(url.searchParams.get('sub') ?? 'alice')
      .setAudience(url.searchParams.get('aud') ?? 'agent-api')
      .setIssuedAt(now).setExpirationTime(now + Number(url.searchParams.get('ttl') ?? '600'))
      .setJti(randomUUID())
      .sign(signingKey);
    json(res, 200, { token });
    return;
  }
  if (url.pathname === '/test/stats') return json(res, 200, stats);
  if (url.pathname === '/test/reset' && req.method === 'POST') {
    stats.token_requests = 0;
    stats.token_request_ms = [];
    stats.granted = {};
    stats.refused = {};
    stats.assertion_aud = [];
    return json(res, 200, stats);
  }
  if (url.pathname === '/test/mode' && req.method === 'POST') {
    mode = url.searchParams.get('mode') ?? 'ok';
    delayMs = Number(url.searchParams.get('delay_ms') ?? '0');
    return json(res, 200, { mode, delay_ms: delayMs });
  }
  if (url.pathname === TOKEN_PATH && req.method === 'POST') {
    stats.token_requests += 1;
    stats.token_request_ms.push(Date.now());
    if (mode === 'reset') {
      req.socket.destroy();
      return;
    }
    if (mode === 'status500') return json(res, 500, { error: 'server_error' });
    if (mode === 'garbage') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"access_token": ');
      return;
    }
    if (mode === 'slow') await new Promise((resolve) => setTimeout(resolve, delayMs));
  }
  callback(req, res);
});

announceReady({
  issuer,
  port,
  token_endpoint: `${issuer}${TOKEN_PATH}`,
  jwks_uri: `${issuer}/jwks`,
}, server);
