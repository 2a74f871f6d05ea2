// A real OpenID Provider for the browser login tests: npm `oidc-provider` with its development
// login and consent pages (any login name and password sign in), the code flow with PKCE
// required, refresh tokens, JWT access tokens for one resource (so the plugin's rules can
// verify them), RP-initiated logout and back-channel logout.
//
//   node op.mjs --port 0 --app-origin http://localhost:PORT [--access-token-ttl 30]
//               [--client-jwk '<public JWK>']   (the client authenticates with private_key_jwt)
//               [--assertion-aud issuer|token_endpoint]   (the only assertion `aud` accepted;
//                                                           without it, oidc-provider takes both)
//
// Listens on 127.0.0.1 (the app is on `localhost`: browsers keep cookies per host, not per
// port, so the two sets of cookies never mix). Prints one JSON line on stdout once it listens:
// {"ready": true, "issuer", "port", "client_id", "client_secret", "audience"}.
// Test control (not part of OpenID): `POST /test/backchannel-logout?sub=…&sid=…` makes the OP
// send a back-channel logout to the client now; `GET /test/backchannel-results` lists the
// statuses the client answered; `GET /test/grants` counts the token endpoint's grants by type
// and outcome (`{"success": {"refresh_token": 1}, "error": {…}}`); `GET /test/assertion-audiences`
// lists the `aud` of each client assertion whose signature checked out. Ends on SIGTERM or when
// stdin closes.

import { generateKeyPairSync } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

import { announceReady, bootServer } from '../serve.mjs';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'app-origin': { type: 'string' },
    'access-token-ttl': { type: 'string', default: '60' },
    audience: { type: 'string', default: 'web-api' },
    'client-jwk': { type: 'string' },
    'assertion-aud': { type: 'string' },
  },
});

if (args['assertion-aud'] && !['issuer', 'token_endpoint'].includes(args['assertion-aud'])) {
  throw new Error('--assertion-aud must be issuer or token_endpoint');
}
const APP = args['app-origin'];
const CLIENT = { id: 'web-app', secret: 'web-app-secret-of-the-test' };
const RESOURCE = 'https://api.login.test';

const { server, port, origin: issuer, serve } = await bootServer(args.port);

const key = {
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  alg: 'RS256',
  use: 'sig',
  kid: 'op-rs256',
};

const backchannelResults = [];
const assertionAudiences = [];

// With --client-jwk the client proves itself with a signed assertion (RFC 7523) instead.
const clientAuth = args['client-jwk']
  ? { token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [JSON.parse(args['client-jwk'])] } }
  : { token_endpoint_auth_method: 'client_secret_basic', client_secret: CLIENT.secret };

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT.id,
    ...clientAuth,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [`${APP}/oauth2/callback`],
    post_logout_redirect_uris: [`${APP}/goodbye`],
    backchannel_logout_uri: `${APP}/oauth2/backchannel-logout`,
    backchannel_logout_session_required: true,
  }],
  jwks: { keys: [key] },
  // Every session gets a refresh token, without offline_access and a consent prompt.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  pkce: { required: () => true },
  rotateRefreshToken: true,
  ttl: {
    IdToken: 3600,
    RefreshToken: 3600,
    Session: 3600,
    Grant: 3600,
    Interaction: 600,
  },
  claims: { openid: ['sub', 'sid'] },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'openid',
        audience: args.audience,
        accessTokenTTL: Number(args['access-token-ttl']),
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  // After a client assertion's signature checked out: record its `aud`, and refuse another than
  // --assertion-aud's.
  assertJwtClientAuthClaimsAndHeader: async (_ctx, claims) => {
    assertionAudiences.push(claims.aud);
    const required = { issuer, token_endpoint: `${issuer}/token` }[args['assertion-aud']];
    if (required && claims.aud !== required) {
      throw new errors.InvalidClientAuth(`audience (aud) must be ${required}`);
    }
  },
  // Back-channel logouts go to the app on loopback, which the default fetch refuses (9.7+).
  fetch: (url, options) => {
    delete options.dispatcher;
    return fetch(url, options).then((response) => {
      backchannelResults.push(response.status);
      return response;
    });
  },
});
const grants = { success: {}, error: {} };
const countGrant = (outcome) => (ctx) => {
  const type = ctx.oidc?.params?.grant_type ?? 'unknown';
  grants[outcome][type] = (grants[outcome][type] ?? 0) + 1;
};
provider.on('grant.success', countGrant('success'));
provider.on('grant.error', countGrant('error'));
provider.on('server_error', (_ctx, error) => console.error('server_error', error));
provider.on('backchannel.error', (_client, error) => console.error('backchannel.error', error.message));

const op = provider.callback();
serve(async (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname === '/test/backchannel-logout' && req.method === 'POST') {
    try {
      const client = await provider.Client.find(CLIENT.id);
      await client.backchannelLogout(url.searchParams.get('sub'), url.searchParams.get('sid'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ sent: true }));
    } catch (error) {
      res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ sent: false, error: error.message }));
    }
    return;
  }
  if (url.pathname === '/test/grants') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(grants));
    return;
  }
  if (url.pathname === '/test/assertion-audiences') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(assertionAudiences));
    return;
  }
  if (url.pathname === '/test/backchannel-results') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(backchannelResults));
    return;
  }
  op(req, res);
});

announceReady({
  issuer,
  port,
  client_id: CLIENT.id,
  client_secret: CLIENT.secret,
  audience: args.audience,
}, server);
