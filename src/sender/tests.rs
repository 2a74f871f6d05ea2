#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::dpop::{check_proof, thumbprint, Proof, ProofError};
use super::replay::{Admission, LocalReplay};
use super::*;
use crate::alg::Alg;
use crate::authorize::Request;
use crate::config;
use crate::keys::testing::{b64, TestKey, RSA_A};
use crate::path::normalize_origin;
use crate::peer::{FixedPeer, NoPeer};
use serde_json::json;

const NOW: u64 = 1_700_000_000;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln";
const URL: &str = "https://api.example.com/orders/7";

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

// ---- the RFCs' own examples -------------------------------------------------------------

#[test]
fn thumbprint_of_rfc_7638_section_3_1() {
    let jwk = object(json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    }));
    assert_eq!(
        thumbprint(&jwk).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn thumbprint_and_ath_of_rfc_9449() {
    // §4.2 / §6.1: the proof key of the examples and its jkt.
    let jwk = object(json!({
        "kty": "EC",
        "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
        "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
        "crv": "P-256"
    }));
    assert_eq!(
        thumbprint(&jwk).unwrap(),
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    );
    // §7.1: the access token of the example and its ath.
    assert_eq!(
        b64url(&sha256(b"Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU")),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

#[test]
fn origins_are_compared_normalised() {
    assert_eq!(
        normalize_origin("HTTPS://API.Example.com:443").as_deref(),
        Some("https://api.example.com")
    );
    assert_eq!(
        normalize_origin("http://h:80/").as_deref(),
        Some("http://h")
    );
    assert_eq!(
        normalize_origin("https://h:8443").as_deref(),
        Some("https://h:8443")
    );
    assert_eq!(
        normalize_origin("https://[::1]:8443").as_deref(),
        Some("https://[::1]:8443")
    );
    assert_eq!(
        normalize_origin("https://[::1]").as_deref(),
        Some("https://[::1]")
    );
    for bad in [
        "ftp://h",
        "https://",
        "https://h/p",
        "https://u@h",
        "https://h:x",
        "h",
    ] {
        assert_eq!(normalize_origin(bad), None, "{bad}");
    }
}

// ---- proofs made here ------------------------------------------------------------------

struct Client {
    key: TestKey,
    alg: Alg,
}

impl Client {
    fn new(alg: Alg) -> Client {
        let key = match alg {
            Alg::EdDSA => TestKey::ed25519(),
            Alg::RS256 | Alg::PS256 => TestKey::rsa(RSA_A),
            _ => TestKey::ec(alg),
        };
        Client { key, alg }
    }

    fn jwk(&self) -> Value {
        let mut jwk = self.key.jwk(None);
        jwk.as_object_mut().unwrap().remove("alg");
        jwk
    }

    fn jkt(&self) -> String {
        thumbprint(self.jwk().as_object().unwrap()).unwrap()
    }

    fn sign(&self, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = self.key.sign(self.alg, input.as_bytes());
        format!("{input}.{}", b64(&signature))
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg.name(), "jwk": self.jwk()})
    }

    fn claims(&self) -> Value {
        json!({"jti": "e1j3V_bKic8-LAEB", "htm": "POST", "htu": URL, "iat": NOW,
               "ath": b64url(&sha256(TOKEN.as_bytes()))})
    }

    fn proof(&self) -> String {
        self.sign(self.header(), self.claims())
    }

    /// A proof with one header or claim member replaced (`null` removes it).
    fn proof_with(&self, header: Value, claims: Value) -> String {
        let mut h = self.header();
        let mut c = self.claims();
        for (target, patch) in [(&mut h, header), (&mut c, claims)] {
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    target.as_object_mut().unwrap().remove(k);
                } else {
                    target[k] = v.clone();
                }
            }
        }
        self.sign(h, c)
    }
}

fn settings() -> config::Dpop {
    let parsed = config::parse(
        &json!({"providers": [{"issuer": "https://idp", "jwksUri": "https://idp/jwks",
                               "dpop": {"mode": "required"}}]})
        .to_string(),
    )
    .unwrap();
    parsed.providers[0].dpop.clone()
}

fn request<'a>(headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
    Request {
        method: "POST",
        scheme: "https",
        authority: "api.example.com",
        path: "/orders/7?expand=items",
        headers,
        peer: &NoPeer,
    }
}

fn checked(proof: &str, settings: &config::Dpop) -> Result<Proof, ProofError> {
    let headers = [("dpop", proof)];
    check_proof(
        proof,
        TOKEN,
        settings,
        60,
        &request(&headers),
        NOW,
        &TokenLimits::from(&config::Limits::default()),
        None,
        &mut Vec::new(),
    )
}

#[test]
fn valid_proofs_are_accepted_for_each_family() {
    for alg in [Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::PS256, Alg::RS256] {
        let client = Client::new(alg);
        let proof =
            checked(&client.proof(), &settings()).unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(proof.jkt, client.jkt(), "{alg}");
        assert_eq!(proof.expires_s, NOW + 60 + 60);
    }
}

#[test]
fn each_check_refuses_on_its_own() {
    let client = Client::new(Alg::ES256);
    let hs = {
        let header =
            json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}});
        format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(client.claims().to_string().as_bytes()),
            b64(b"mac")
        )
    };
    let none = format!(
        "{}.{}.{}",
        b64(br#"{"typ":"dpop+jwt","alg":"none"}"#),
        b64(client.claims().to_string().as_bytes()),
        b64(b"x")
    );
    let mut private = client.jwk();
    private["d"] = json!("AAAA");
    let other = Client::new(Alg::ES256);
    let forged = {
        // Signed by another key than the one it carries.
        other.sign(client.header(), client.claims())
    };
    let cases: Vec<(String, ProofError)> = vec![
        (
            "not.a.jws!".into(),
            ProofError::Malformed("DPoP proof is not a well-formed JWS"),
        ),
        (
            client.proof_with(json!({"typ": "JWT"}), json!({})),
            ProofError::Typ,
        ),
        (
            client.proof_with(json!({"typ": null}), json!({})),
            ProofError::Typ,
        ),
        (none, ProofError::Algorithm),
        (hs, ProofError::Algorithm),
        (
            client.proof_with(json!({"jwk": null}), json!({})),
            ProofError::NoKey,
        ),
        (
            client.proof_with(json!({"jwk": private}), json!({})),
            ProofError::PrivateKey,
        ),
        (forged, ProofError::Signature),
        (
            client.proof_with(json!({}), json!({"jti": null})),
            ProofError::Jti,
        ),
        (
            client.proof_with(json!({}), json!({"jti": ""})),
            ProofError::Jti,
        ),
        (
            client.proof_with(json!({}), json!({"htm": "GET"})),
            ProofError::Htm,
        ),
        (
            client.proof_with(json!({}), json!({"htm": "post"})),
            ProofError::Htm,
        ),
        (
            client.proof_with(
                json!({}),
                json!({"htu": "https://evil.example.com/orders/7"}),
            ),
            ProofError::HtuOrigin,
        ),
        (
            client.proof_with(json!({}), json!({"htu": "http://api.example.com/orders/7"})),
            ProofError::HtuOrigin,
        ),
        (
            client.proof_with(
                json!({}),
                json!({"htu": "https://api.example.com/orders/8"}),
            ),
            ProofError::HtuPath,
        ),
        (
            client.proof_with(
                json!({}),
                json!({"htu": "https://api.example.com/orders/7?expand=items"}),
            ),
            ProofError::HtuMalformed,
        ),
        (
            client.proof_with(json!({}), json!({"htu": "/orders/7"})),
            ProofError::HtuMalformed,
        ),
        (
            client.proof_with(json!({}), json!({"iat": NOW - 121})),
            ProofError::Stale,
        ),
        (
            client.proof_with(json!({}), json!({"iat": NOW + 61})),
            ProofError::Future,
        ),
        (
            client.proof_with(json!({}), json!({"iat": "now"})),
            ProofError::IatMissing,
        ),
        (
            client.proof_with(json!({}), json!({"ath": null})),
            ProofError::Ath,
        ),
        (
            client.proof_with(json!({}), json!({"ath": b64url(&sha256(b"another token"))})),
            ProofError::Ath,
        ),
    ];
    for (proof, expected) in cases {
        assert_eq!(
            checked(&proof, &settings()).map(|p| p.jkt),
            Err(expected),
            "{expected:?}"
        );
    }
}

#[test]
fn ed25519_is_eddsa_in_proofs_only() {
    // RFC 9864's fully-specified name, which npm `dpop` 2 signs with.
    let client = Client::new(Alg::EdDSA);
    let proof = client.proof_with(json!({"alg": "Ed25519"}), json!({}));
    assert_eq!(
        checked(&proof, &settings()).map(|p| p.jkt),
        Ok(client.jkt())
    );
    let limits = TokenLimits::from(&config::Limits::default());
    assert!(matches!(
        crate::token::parse(&proof, &limits),
        Err(crate::token::TokenError::UnsupportedAlgorithm)
    ));
}

#[test]
fn htu_is_compared_after_normalisation() {
    let client = Client::new(Alg::EdDSA);
    for htu in [
        "HTTPS://API.EXAMPLE.COM:443/orders/7",
        "https://api.example.com/orders/./7",
        "https://api.example.com/orders/%37",
    ] {
        let proof = client.proof_with(json!({}), json!({"htu": htu}));
        assert!(checked(&proof, &settings()).is_ok(), "{htu}");
    }
    // With `origins`, the proof names the public origin, not the sidecar's own `:authority`.
    let mut behind_gateway = settings();
    behind_gateway.origins = Some(vec!["https://shop.example.com".into()]);
    let public = client.proof_with(
        json!({}),
        json!({"htu": "https://shop.example.com/orders/7"}),
    );
    assert!(checked(&public, &behind_gateway).is_ok());
    assert_eq!(
        checked(&client.proof(), &behind_gateway).map(|p| p.jkt),
        Err(ProofError::HtuOrigin)
    );
}

#[test]
fn the_proof_header_must_be_there_once() {
    let none: [(&str, &str); 0] = [];
    assert_eq!(
        dpop::proof_header(&request(&none)),
        Err(ProofError::Missing)
    );
    let two = [("dpop", "a.b.c"), ("dpop", "d.e.f")];
    assert_eq!(
        dpop::proof_header(&request(&two)),
        Err(ProofError::Multiple)
    );
    let folded = [("dpop", "a.b.c, d.e.f")];
    assert_eq!(
        dpop::proof_header(&request(&folded)),
        Err(ProofError::Multiple)
    );
}

// ---- the binding decision -----------------------------------------------------------------

fn provider(dpop_mode: &str, certificate: &str) -> Provider {
    let parsed = config::parse(
        &json!({"providers": [{"issuer": "https://idp", "jwksUri": "https://idp/jwks",
                               "dpop": {"mode": dpop_mode}, "certificateBound": certificate}]})
        .to_string(),
    )
    .unwrap();
    parsed.providers[0].clone()
}

fn decide(
    provider: &Provider,
    claims: Value,
    presented: Presented,
    headers: &[(&str, &str)],
    peer: &dyn Peer,
    replay: &LocalReplay,
) -> Result<(), Denial> {
    let mut binding = request(headers);
    binding.peer = peer;
    check(
        provider,
        &object(claims),
        TOKEN,
        presented,
        &binding,
        NOW * 1000,
        &TokenLimits::from(&config::Limits::default()),
        None,
        &mut |proof| replay.admit(proof.replay_id, proof.expires_s, NOW),
    )
}

fn reason(result: Result<(), Denial>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(denial) => denial.reason().name(),
    }
}

#[test]
fn dpop_modes_and_the_bearer_downgrade() {
    let client = Client::new(Alg::ES256);
    let proof = client.proof();
    let with_proof = [("dpop", proof.as_str())];
    let bound = json!({"cnf": {"jkt": client.jkt()}});
    let replay = LocalReplay::default();
    let required = provider("required", "off");
    let allowed = provider("allowed", "off");
    let off = provider("off", "off");
    let run = |p: &Provider, claims: &Value, presented, headers: &[(&str, &str)]| {
        reason(decide(
            p,
            claims.clone(),
            presented,
            headers,
            &NoPeer,
            &LocalReplay::default(),
        ))
    };
    assert_eq!(run(&required, &bound, Presented::Dpop, &with_proof), "ok");
    assert_eq!(run(&allowed, &bound, Presented::Dpop, &with_proof), "ok");
    // A bound token as a bearer token: refused in every mode (RFC 9449 §7.1).
    for p in [&required, &allowed, &off] {
        assert_eq!(
            run(p, &bound, Presented::Bearer, &with_proof),
            "dpop_downgrade"
        );
    }
    assert_eq!(
        run(&required, &json!({}), Presented::Bearer, &[]),
        "dpop_required"
    );
    assert_eq!(run(&allowed, &json!({}), Presented::Bearer, &[]), "ok");
    assert_eq!(run(&off, &json!({}), Presented::Bearer, &[]), "ok");
    assert_eq!(
        run(&allowed, &json!({}), Presented::Dpop, &with_proof),
        "dpop_unbound"
    );
    assert_eq!(run(&required, &bound, Presented::Dpop, &[]), "dpop_missing");
    let other = json!({"cnf": {"jkt": Client::new(Alg::ES256).jkt()}});
    assert_eq!(
        run(&required, &other, Presented::Dpop, &with_proof),
        "dpop_binding"
    );
    // The same proof twice on one sidecar.
    assert_eq!(
        reason(decide(
            &required,
            bound.clone(),
            Presented::Dpop,
            &with_proof,
            &NoPeer,
            &replay
        )),
        "ok"
    );
    assert_eq!(
        reason(decide(
            &required,
            bound,
            Presented::Dpop,
            &with_proof,
            &NoPeer,
            &replay
        )),
        "dpop_replay"
    );
}

#[test]
fn certificate_bound_tokens() {
    // The SHA-256 of a certificate as Envoy reports it (hex) and as the token binds it.
    let digest = sha256(b"the client certificate, DER");
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let with_cert = FixedPeer {
        certificate_digest: Some(hex),
        ..FixedPeer::default()
    };
    let bound = json!({"cnf": {"x5t#S256": b64url(&digest)}});
    let other = json!({"cnf": {"x5t#S256": b64url(&sha256(b"another certificate"))}});
    let replay = LocalReplay::default();
    let run = |mode: &str, claims: &Value, peer: &dyn Peer| {
        reason(decide(
            &provider("off", mode),
            claims.clone(),
            Presented::Bearer,
            &[],
            peer,
            &replay,
        ))
    };
    assert_eq!(run("required", &bound, &with_cert), "ok");
    assert_eq!(run("allowed", &bound, &with_cert), "ok");
    assert_eq!(run("required", &other, &with_cert), "cert_mismatch");
    assert_eq!(run("required", &bound, &NoPeer), "cert_missing");
    assert_eq!(run("allowed", &bound, &NoPeer), "cert_missing");
    assert_eq!(run("required", &json!({}), &with_cert), "cert_unbound");
    assert_eq!(run("allowed", &json!({}), &NoPeer), "ok");
    assert_eq!(run("off", &other, &with_cert), "ok");
    assert_eq!(Admission::Fresh, replay.admit([9; 16], NOW + 1, NOW));
}
