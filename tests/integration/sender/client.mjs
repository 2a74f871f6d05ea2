// A real DPoP client (RFC 9449) for the sender-constrained token tests: npm `dpop` makes the key
// pair and every proof. For each --alg it gets a DPoP-bound access token from the authorization
// server (client credentials, a proof on the token request), then calls --target three ways:
//
//   dpop      `Authorization: DPoP <token>` and a fresh proof for this very request (expected 200)
//   bearer    the same token as `Authorization: Bearer` (a downgrade, RFC 9449 §7.1)
//   no_proof  `Authorization: DPoP <token>` without a `DPoP` header
//
//   node client.mjs --token-endpoint URL --client-id ID --client-secret S --resource URI
//                   --target URL [--alg ES256 --alg Ed25519 --alg PS256] [--export-key]
//
// Prints one JSON object: {"results": [{alg, proof_alg, token_type, access_token, jkt,
// calls: {dpop, bearer, no_proof}}]}, each call {status, www_authenticate: [...], body}.
// --export-key adds the key pair as JWKs (`private_jwk`), for tests that make their own proofs
// with the bound key. --bearer-token: also get a token without a proof (`plain_token`).

import * as http from 'node:http';
import { parseArgs } from 'node:util';

import * as DPoP from 'dpop';

const { values: args } = parseArgs({
  options: {
    'token-endpoint': { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    resource: { type: 'string' },
    target: { type: 'string' },
    alg: { type: 'string', multiple: true, default: ['ES256'] },
    'export-key': { type: 'boolean', default: false },
    'bearer-token': { type: 'boolean', default: false },
  },
});

const TIMEOUT_MS = 10_000;

// One request with node:http, so that each `WWW-Authenticate` field is seen on its own (fetch
// joins repeated fields with commas, which the challenges themselves contain).
function request(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, timeout: TIMEOUT_MS, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const wwwAuthenticate = [];
        for (let i = 0; i < res.rawHeaders.length; i += 2) {
          if (res.rawHeaders[i].toLowerCase() === 'www-authenticate') {
            wwwAuthenticate.push(res.rawHeaders[i + 1]);
          }
        }
        resolve({
          status: res.statusCode,
          www_authenticate: wwwAuthenticate,
          headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8'),
        });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${method} ${url}`)));
    req.on('error', reject);
    req.end(body);
  });
}

async function tokenRequest(proof) {
  const form = new URLSearchParams({ grant_type: 'client_credentials', resource: args.resource });
  const basic = Buffer.from(
    `${encodeURIComponent(args['client-id'])}:${encodeURIComponent(args['client-secret'])}`,
  ).toString('base64');
  const headers = {
    authorization: `Basic ${basic}`,
    'content-type': 'application/x-www-form-urlencoded',
  };
  if (proof) headers.dpop = proof;
  const resp = await request(args['token-endpoint'], { method: 'POST', headers, body: form.toString() });
  if (resp.status !== 200) {
    throw new Error(`token request refused: ${resp.status} ${resp.body}`);
  }
  return JSON.parse(resp.body);
}

/** `htu` of a request: the URL without query and fragment (RFC 9449 §4.2). */
function htuOf(url) {
  const htu = new URL(url);
  htu.search = '';
  htu.hash = '';
  return htu.href;
}

function protectedHeader(proof) {
  return JSON.parse(Buffer.from(proof.split('.')[0], 'base64url').toString('utf8'));
}

async function run(alg) {
  const keypair = await DPoP.generateKeyPair(alg, { extractable: args['export-key'] });
  const tokenProof = await DPoP.generateProof(keypair, args['token-endpoint'], 'POST');
  const grant = await tokenRequest(tokenProof);
  const token = grant.access_token;
  const target = args.target;

  const proof = await DPoP.generateProof(keypair, htuOf(target), 'GET', undefined, token);
  const calls = {
    dpop: await request(target, { headers: { authorization: `DPoP ${token}`, dpop: proof } }),
    bearer: await request(target, { headers: { authorization: `Bearer ${token}` } }),
    no_proof: await request(target, { headers: { authorization: `DPoP ${token}` } }),
  };
  const result = {
    alg,
    proof_alg: protectedHeader(proof).alg,
    token_type: grant.token_type,
    access_token: token,
    jkt: await DPoP.calculateThumbprint(keypair.publicKey),
    calls,
  };
  if (args['export-key']) {
    result.private_jwk = await crypto.subtle.exportKey('jwk', keypair.privateKey);
    result.public_jwk = await crypto.subtle.exportKey('jwk', keypair.publicKey);
  }
  return result;
}

const output = { results: [] };
for (const alg of args.alg) {
  output.results.push(await run(alg));
}
if (args['bearer-token']) {
  output.plain_token = await tokenRequest(undefined);
}
console.log(JSON.stringify(output));
