//! Native micro-benchmarks of the core: what one request costs before Wasm and the host add
//! theirs. `make bench` runs them with short times; `cargo bench --bench core` with criterion's.
// Set-up failures should stop the bench loudly; none of this code ships.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use mesh_oauth::alg::{Alg, AlgSet};
use mesh_oauth::authorize::{self, KeyLookup, KeyState, Outcome, Request};
use mesh_oauth::cache::TokenCache;
use mesh_oauth::compile::{self, Compiled};
use mesh_oauth::config::{self, Action};
use mesh_oauth::keys::{parse_jwks, JwksLimits, KeySet};
use mesh_oauth::peer::NoPeer;
use mesh_oauth::policy::{self, Applies, RequestFacts, TokenClaims};
use mesh_oauth::sender::dpop::{self, Proof};
use mesh_oauth::sender::replay::Admission;
use mesh_oauth::token::{self, TokenLimits};
use mesh_oauth::verify;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Map, Value};
use std::hint::black_box;

const ISSUER: &str = "https://idp.example.com";
const NOW_S: u64 = 1_700_000_000;
const NOW_MS: u64 = NOW_S * 1000;
const RSA_PKCS8: &[u8] = include_bytes!("../tests/fixtures/rsa2048-a.pk8.der");
const ALGS: [Alg; 6] = [
    Alg::RS256,
    Alg::PS256,
    Alg::ES256,
    Alg::ES384,
    Alg::EdDSA,
    Alg::HS256,
];

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Hmac(ring::hmac::Key),
}

/// One signing key per benchmarked algorithm, named by its kid.
struct TestKey {
    alg: Alg,
    signer: Signer,
    jwk: Value,
}

impl TestKey {
    fn new(alg: Alg) -> TestKey {
        let rng = SystemRandom::new();
        let ec = |signing: &'static signature::EcdsaSigningAlgorithm, crv: &str| {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
            let point = pair.public_key().as_ref();
            let half = (point.len() - 1) / 2;
            let jwk = json!({"kty": "EC", "crv": crv,
                             "x": b64(&point[1..=half]), "y": b64(&point[1 + half..])});
            (Signer::Ec(pair), jwk)
        };
        let (signer, mut jwk) = match alg {
            Alg::RS256 | Alg::PS256 => {
                let pair = RsaKeyPair::from_pkcs8(RSA_PKCS8).unwrap();
                let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let jwk = json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)});
                (Signer::Rsa(pair), jwk)
            }
            Alg::ES256 => ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
            Alg::ES384 => ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
            Alg::EdDSA => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
                let jwk = json!({"kty": "OKP", "crv": "Ed25519",
                                 "x": b64(pair.public_key().as_ref())});
                (Signer::Ed(pair), jwk)
            }
            Alg::HS256 => {
                let secret = [7u8; 64];
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
                (Signer::Hmac(key), json!({"kty": "oct", "k": b64(&secret)}))
            }
            other => panic!("no benchmark key for {other}"),
        };
        jwk["kid"] = json!(alg.name());
        jwk["alg"] = json!(alg.name());
        TestKey { alg, signer, jwk }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(pair) => {
                let padding: &'static dyn signature::RsaEncoding = match self.alg {
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(padding, &rng, message, &mut sig).unwrap();
                sig
            }
            Signer::Ec(pair) => pair.sign(&rng, message).unwrap().as_ref().to_vec(),
            Signer::Ed(pair) => pair.sign(message).as_ref().to_vec(),
            Signer::Hmac(key) => ring::hmac::sign(key, message).as_ref().to_vec(),
        }
    }

    /// A token as an IdP issues them: a few ordinary claims, scopes and a role.
    fn mint(&self) -> String {
        self.mint_with(json!({}))
    }

    fn mint_with(&self, extra: Value) -> String {
        let header = json!({"alg": self.alg.name(), "kid": self.alg.name(), "typ": "JWT"});
        let mut claims = json!({"iss": ISSUER, "aud": "api", "sub": "user-1234",
                            "iat": NOW_S, "exp": NOW_S + 600, "jti": "b1e2c3",
                            "scope": "orders:read orders:write",
                            "realm_access": {"roles": ["editor", "viewer"]}});
        for (name, value) in extra.as_object().unwrap() {
            claims[name] = value.clone();
        }
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = b64(&self.sign(input.as_bytes()));
        format!("{input}.{signature}")
    }
}

/// Keys that are always there, as the key store has them once fetched.
struct FixedKeys(KeySet);

impl KeyLookup for FixedKeys {
    fn keys(&self, _provider: usize, _now_ms: u64) -> KeyState<'_> {
        KeyState::Ready(&self.0)
    }

    fn refetch_possible(&self, _provider: usize, _now_ms: u64) -> bool {
        false
    }

    fn key_version(&self, _provider: usize) -> u64 {
        1
    }

    /// Replay memory is the sidecar's shared data, measured in Envoy; here every proof is new.
    fn admit_proof(&self, _proof: &Proof, _now_s: u64) -> Admission {
        Admission::Fresh
    }
}

struct Fixture {
    keys: Vec<TestKey>,
    key_set: FixedKeys,
    config: Compiled,
}

impl Fixture {
    fn new() -> Fixture {
        let keys: Vec<TestKey> = ALGS.into_iter().map(TestKey::new).collect();
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        let limits = JwksLimits {
            max_bytes: 64 * 1024,
            max_keys: 16,
        };
        let key_set = FixedKeys(parse_jwks(jwks.to_string().as_bytes(), &limits, true).unwrap());
        // A handful of rules before the one that decides, as a real service has.
        let config = compile::configure(
            &json!({
                "providers": [{"issuer": ISSUER, "audiences": ["api"], "jwks": jwks.to_string(),
                               "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}],
                "rules": [
                    {"match": {"paths": ["/health", "/metrics"]}, "allowAnonymous": true},
                    {"match": {"paths": ["/admin/*"]}, "deny": true},
                    {"match": {"paths": ["*.png", "*.css"], "methods": ["GET"]}, "allowAnonymous": true},
                    {"match": {"paths": ["/orders/*"], "methods": ["GET"]},
                     "requires": {"scopes": ["orders:read"]}},
                    {"match": {"paths": ["/orders/*"], "methods": ["POST", "PUT", "DELETE"],
                               "hosts": ["orders.example.com", "*.orders.example.com"]},
                     "requires": {"scopes": ["orders:write"],
                                  "claims": [{"claim": "realm_access.roles",
                                              "anyOf": ["editor", "admin"]}]}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        Fixture {
            keys,
            key_set,
            config,
        }
    }

    fn key(&self, alg: Alg) -> &TestKey {
        self.keys.iter().find(|k| k.alg == alg).unwrap()
    }
}

fn token_limits() -> TokenLimits {
    TokenLimits::from(&config::Limits::default())
}

fn bench_parse(c: &mut Criterion, fx: &Fixture) {
    let raw = fx.key(Alg::RS256).mint();
    let limits = token_limits();
    c.bench_function("parse/RS256", |b| {
        b.iter(|| token::parse(black_box(&raw), &limits).unwrap())
    });
}

fn bench_verify(c: &mut Criterion, fx: &Fixture) {
    let limits = token_limits();
    let mut group = c.benchmark_group("verify");
    for alg in ALGS {
        let raw = fx.key(alg).mint();
        let jws = token::parse(&raw, &limits).unwrap();
        group.bench_function(alg.name(), |b| {
            b.iter(|| {
                verify::verify(
                    jws.header.alg,
                    jws.header.kid.as_deref(),
                    black_box(jws.signing_input),
                    black_box(&jws.signature),
                    &fx.key_set.0,
                    AlgSet::all(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn bench_policy(c: &mut Criterion, fx: &Fixture) {
    let raw = fx.key(Alg::EdDSA).mint();
    let claims: Map<String, Value> = token::parse(&raw, &token_limits()).unwrap().claims;
    let facts = RequestFacts {
        method: "POST",
        path: "/orders/42",
        host: "orders.example.com:8443",
        headers: &[],
        peer: &NoPeer,
    };
    let no_token = &mut || Ok::<TokenClaims, ()>(None);
    let scope_claims = &fx.config.providers[0].scope_claims;
    c.bench_function("policy/select+check", |b| {
        b.iter(|| {
            let selection = policy::select(
                &fx.config,
                &fx.config.rule_index,
                black_box(&facts),
                no_token,
            )
            .unwrap();
            let Applies::Rule(rule) = selection.applies else {
                panic!("the orders-write rule should apply")
            };
            let Action::Requires(requirement) = &rule.action else {
                panic!("the orders-write rule requires a token")
            };
            policy::check_requirement(requirement, 0, black_box(&claims), scope_claims, NOW_S)
                .unwrap()
        })
    });
}

fn request_headers(token: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".to_string(), format!("Bearer {token}")),
        ("user-agent".to_string(), "wrk".to_string()),
        ("accept".to_string(), "*/*".to_string()),
    ]
}

fn run_authorize(fx: &Fixture, cache: &mut TokenCache, headers: &[(String, String)]) {
    run_authorize_with(&fx.config, fx, cache, headers);
}

fn run_authorize_with(
    config: &Compiled,
    fx: &Fixture,
    cache: &mut TokenCache,
    headers: &[(String, String)],
) {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let request = Request {
        method: "POST",
        scheme: "https",
        path: "/orders/42?expand=items",
        authority: "orders.example.com",
        headers: &headers,
        peer: &NoPeer,
    };
    match authorize::authorize(config, &fx.key_set, cache, black_box(&request), NOW_MS).outcome {
        Outcome::Allow(_) => {}
        other => panic!("the benchmark token should be allowed: {other:?}"),
    }
}

fn bench_authorize(c: &mut Criterion, fx: &Fixture) {
    let mut group = c.benchmark_group("authorize");
    let headers = request_headers(&fx.key(Alg::RS256).mint());
    let mut warm = TokenCache::new(1024);
    run_authorize(fx, &mut warm, &headers);
    group.bench_function("cache_hit", |b| {
        b.iter(|| run_authorize(fx, &mut warm, &headers))
    });
    // Capacity 0: nothing is remembered, every call parses and verifies.
    let mut cold = TokenCache::new(0);
    for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let headers = request_headers(&fx.key(alg).mint());
        group.bench_function(format!("cold/{}", alg.name()), |b| {
            b.iter(|| run_authorize(fx, &mut cold, &headers))
        });
    }
    group.finish();
}

/// A DPoP-bound ES256 token with an ES256 proof: the proof check alone, and the whole request
/// with the token already verified once (the proof is checked on every request).
fn bench_dpop(c: &mut Criterion, fx: &Fixture) {
    let client = TestKey::new(Alg::ES256);
    let mut jwk = client.jwk.clone();
    jwk.as_object_mut().unwrap().remove("kid");
    let jkt = dpop::thumbprint(jwk.as_object().unwrap()).unwrap();
    let token = fx.key(Alg::ES256).mint_with(json!({"cnf": {"jkt": jkt}}));
    let ath = b64(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let claims = json!({"jti": "4b1e1c54-ec02", "htm": "POST", "iat": NOW_S, "ath": ath,
                        "htu": "https://orders.example.com/orders/42"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let proof = format!("{input}.{}", b64(&client.sign(input.as_bytes())));
    let mut config = fx.config.config.clone();
    config.providers[0].dpop.mode = config::Binding::Allowed;
    let config = compile::compile(config).unwrap();
    let headers = vec![
        ("authorization".to_string(), format!("DPoP {token}")),
        ("dpop".to_string(), proof.clone()),
        ("user-agent".to_string(), "wrk".to_string()),
        ("accept".to_string(), "*/*".to_string()),
    ];
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let binding = Request {
        method: "POST",
        scheme: "https",
        authority: "orders.example.com",
        path: "/orders/42?expand=items",
        headers: &pairs,
        peer: &NoPeer,
    };
    let limits = token_limits();
    c.bench_function("sender/dpop_proof/ES256", |b| {
        b.iter(|| {
            dpop::check_proof(
                black_box(&proof),
                &token,
                &config.providers[0].dpop,
                60,
                &binding,
                NOW_S,
                &limits,
                None,
                &mut Vec::new(),
            )
            .unwrap()
        })
    });
    let mut warm = TokenCache::new(1024);
    run_authorize_with(&config, fx, &mut warm, &headers);
    c.bench_function("authorize/dpop_cache_hit/ES256", |b| {
        b.iter(|| run_authorize_with(&config, fx, &mut warm, &headers))
    });
}

fn benches(c: &mut Criterion) {
    let fx = Fixture::new();
    bench_parse(c, &fx);
    bench_verify(c, &fx);
    bench_policy(c, &fx);
    bench_authorize(c, &fx);
    bench_dpop(c, &fx);
}

criterion_group!(core, benches);
criterion_main!(core);
