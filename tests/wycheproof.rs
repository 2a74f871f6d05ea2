//! Wycheproof signature vectors through mesh-oauth's own key parser and verifier
//! (`keys::parse_jwks` then `verify::verify`), not through ring directly: a vector's public key
//! becomes a JWK exactly as an identity provider would publish it, and its message and signature
//! are what a token's signing input and signature segment would carry.
//!
//! Every vector must give its expected result: `valid` verifies, `invalid` is refused.
//! Deliberate differences, each counted per file and pinned by the tables below:
//! - `acceptable` vectors (only RSA PKCS#1 v1.5 "MissingNull": a DigestInfo without the NULL
//!   parameters) are refused: we accept exactly one encoding, the one RFC 8017 §9.2 produces.
//! - RSA-PSS groups whose parameters JOSE cannot express (RFC 7518 §3.5: MGF1 with the message
//!   hash and a salt as long as the hash) are refused under the PS algorithm of their hash
//!   ("non-JOSE PSS refused"), except the vectors re-signed with exactly JOSE's salt length:
//!   Wycheproof calls them invalid for their group, and they are valid PS signatures, so they
//!   must verify ("JOSE salt accepted"). Groups whose hash no JOSE algorithm uses (SHA-1,
//!   SHA-224, SHA-512/t, SHAKE) have nothing to run and are counted as skipped.
//! - Keys that `parse_jwks` refuses by policy (RSA below 2048 bits, say) are counted as skipped
//!   by policy; every table below expects none, so a policy change shows up here.
#![allow(clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mesh_oauth::alg::{Alg, AlgSet};
use mesh_oauth::keys::{parse_jwks, JwksLimits, KeySet};
use mesh_oauth::verify::verify;
use serde_json::{json, Value};
use wycheproof::{HashFunction, TestResult};

const LIMITS: JwksLimits = JwksLimits {
    max_bytes: 64 * 1024,
    max_keys: 4,
};

/// What one file's vectors did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Vectors run through the verifier with the result Wycheproof expects.
    passed: usize,
    /// Of `passed`: `acceptable` vectors (refused, see the module comment).
    acceptable: usize,
    /// Of `passed`: valid PSS signatures with parameters JOSE cannot express, refused.
    refused_non_jose: usize,
    /// Of `passed`: vectors of a non-JOSE PSS group re-signed with JOSE's salt length
    /// (Wycheproof: invalid for that group), accepted.
    accepted_jose_salt: usize,
    /// Vectors whose key `parse_jwks` refused.
    skipped_by_policy: usize,
    /// Vectors whose parameters have no JOSE algorithm at all.
    skipped_no_jose_alg: usize,
    /// "tcId N: expected X, got Y" for every vector that did not give its expected result.
    mismatches: Vec<String>,
}

impl Tally {
    fn total(&self) -> usize {
        self.passed + self.skipped_by_policy + self.skipped_no_jose_alg + self.mismatches.len()
    }
}

/// What the verifier must answer for a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Accept,
    Refuse,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7518 §6.3.1: the modulus and exponent are unsigned big-endian without leading zeros
/// (Wycheproof writes them as two's complement, with a leading zero byte when the top bit is set).
fn unsigned(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// The key set an identity provider publishing this one key would serve; `None` when
/// `parse_jwks` refuses it.
fn key_set(jwk: Value) -> Option<KeySet> {
    let document = serde_json::to_vec(&json!({ "keys": [jwk] })).expect("JSON of a JSON value");
    parse_jwks(&document, &LIMITS, false).ok()
}

fn rsa_jwk(n: &[u8], e: &[u8]) -> Value {
    json!({"kty": "RSA", "use": "sig", "n": b64(unsigned(n)), "e": b64(unsigned(e))})
}

/// One vector, whichever family's type it came in.
struct Vector<'a> {
    tc_id: usize,
    msg: &'a [u8],
    sig: &'a [u8],
    result: TestResult,
}

/// The message as a token's signing input and the signature as its signature segment, verified
/// with whichever key of the set fits `alg` (no `kid`, as a token that names none).
fn outcome(alg: Alg, keys: &KeySet, vector: &Vector) -> Expect {
    match verify(alg, None, vector.msg, vector.sig, keys, AlgSet::all()) {
        Ok(_) => Expect::Accept,
        Err(_) => Expect::Refuse,
    }
}

/// Runs one vector. `acceptable`: what we do with Wycheproof's `acceptable` vectors in this
/// family; `None` means the family is not expected to have any.
fn check(tally: &mut Tally, alg: Alg, keys: &KeySet, vector: &Vector, acceptable: Option<Expect>) {
    let (tc_id, result) = (vector.tc_id, vector.result);
    let expect = match result {
        TestResult::Valid => Expect::Accept,
        TestResult::Invalid => Expect::Refuse,
        TestResult::Acceptable => match acceptable {
            Some(expect) => expect,
            None => {
                tally
                    .mismatches
                    .push(format!("tcId {tc_id}: unexpected acceptable vector"));
                return;
            }
        },
    };
    let got = outcome(alg, keys, vector);
    if got == expect {
        tally.passed += 1;
        if result == TestResult::Acceptable {
            tally.acceptable += 1;
        }
    } else {
        tally.mismatches.push(format!(
            "tcId {tc_id}: {result:?}, expected {expect:?}, got {got:?}"
        ));
    }
}

fn vector<'a>(tc_id: usize, msg: &'a [u8], sig: &'a [u8], result: TestResult) -> Vector<'a> {
    Vector {
        tc_id,
        msg,
        sig,
        result,
    }
}

fn report(file: &str, tally: &Tally) {
    println!(
        "{file}: passed {} (acceptable refused {}, non-JOSE PSS refused {}, JOSE salt accepted {}), \
         skipped by policy {}, skipped without JOSE algorithm {}, mismatches {}",
        tally.passed,
        tally.acceptable,
        tally.refused_non_jose,
        tally.accepted_jose_salt,
        tally.skipped_by_policy,
        tally.skipped_no_jose_alg,
        tally.mismatches.len()
    );
}

/// The file ran every vector it holds and gave exactly the expected tally.
#[track_caller]
fn assert_tally(file: &str, number_of_tests: usize, tally: &Tally, expected: &Expected) {
    report(file, tally);
    assert!(
        tally.mismatches.is_empty(),
        "{file}: {} vectors gave the wrong result: {:#?}",
        tally.mismatches.len(),
        tally.mismatches
    );
    assert_eq!(
        tally.total(),
        number_of_tests,
        "{file}: not every vector was accounted for"
    );
    let got = Expected {
        passed: tally.passed,
        acceptable: tally.acceptable,
        refused_non_jose: tally.refused_non_jose,
        accepted_jose_salt: tally.accepted_jose_salt,
        skipped: tally.skipped_by_policy + tally.skipped_no_jose_alg,
    };
    assert_eq!(&got, expected, "{file}: counts changed");
    assert_eq!(tally.skipped_by_policy, 0, "{file}: a key was refused");
}

/// Pinned per-file counts, so a vector silently dropping out (or a policy change) fails.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    passed: usize,
    acceptable: usize,
    refused_non_jose: usize,
    accepted_jose_salt: usize,
    skipped: usize,
}

const fn passed(passed: usize) -> Expected {
    Expected {
        passed,
        acceptable: 0,
        refused_non_jose: 0,
        accepted_jose_salt: 0,
        skipped: 0,
    }
}

#[test]
fn ecdsa_p1363_vectors() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let files = [
        (
            TestName::EcdsaSecp256r1Sha256P1363,
            Alg::ES256,
            32,
            passed(262),
        ),
        (
            TestName::EcdsaSecp384r1Sha384P1363,
            Alg::ES384,
            48,
            passed(280),
        ),
    ];
    for (name, alg, coordinate_len, expected) in files {
        let set = TestSet::load(name).expect("vectors load");
        let mut tally = Tally::default();
        for group in &set.test_groups {
            let point: &[u8] = &group.key.key;
            let built = match point.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * coordinate_len => {
                    let (x, y) = xy.split_at(coordinate_len);
                    let crv = if coordinate_len == 32 {
                        "P-256"
                    } else {
                        "P-384"
                    };
                    key_set(json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)}))
                }
                _ => panic!("{name:?}: group key is not an uncompressed point"),
            };
            let Some(keys) = built else {
                tally.skipped_by_policy += group.tests.len();
                continue;
            };
            for test in &group.tests {
                check(
                    &mut tally,
                    alg,
                    &keys,
                    &vector(test.tc_id, &test.msg, &test.sig, test.result),
                    None,
                );
            }
        }
        assert_tally(&format!("{name:?}"), set.number_of_tests, &tally, &expected);
    }
}

#[test]
fn ed25519_vectors() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).expect("vectors load");
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&group.key.pk)});
        let Some(keys) = key_set(jwk) else {
            tally.skipped_by_policy += group.tests.len();
            continue;
        };
        for test in &group.tests {
            check(
                &mut tally,
                Alg::EdDSA,
                &keys,
                &vector(test.tc_id, &test.msg, &test.sig, test.result),
                None,
            );
        }
    }
    assert_tally("Ed25519", set.number_of_tests, &tally, &passed(151));
}

/// RS256/RS384/RS512 at every key size Wycheproof has (8192 is the top of what we accept).
#[test]
fn rsa_pkcs1_v1_5_vectors() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let with_missing_null = |total: usize| Expected {
        passed: total,
        acceptable: 1,
        refused_non_jose: 0,
        accepted_jose_salt: 0,
        skipped: 0,
    };
    let files = [
        (TestName::Rsa2048Sha256, Alg::RS256, with_missing_null(259)),
        (TestName::Rsa2048Sha384, Alg::RS384, with_missing_null(258)),
        (TestName::Rsa2048Sha512, Alg::RS512, with_missing_null(259)),
        (TestName::Rsa3072Sha256, Alg::RS256, with_missing_null(259)),
        (TestName::Rsa3072Sha384, Alg::RS384, with_missing_null(259)),
        (TestName::Rsa3072Sha512, Alg::RS512, with_missing_null(260)),
        (TestName::Rsa4096Sha256, Alg::RS256, with_missing_null(258)),
        (TestName::Rsa4096Sha384, Alg::RS384, with_missing_null(259)),
        (TestName::Rsa4096Sha512, Alg::RS512, with_missing_null(259)),
        (TestName::Rsa8192Sha256, Alg::RS256, with_missing_null(258)),
        (TestName::Rsa8192Sha384, Alg::RS384, with_missing_null(259)),
        (TestName::Rsa8192Sha512, Alg::RS512, with_missing_null(259)),
    ];
    for (name, alg, expected) in files {
        let set = TestSet::load(name).expect("vectors load");
        let mut tally = Tally::default();
        for group in &set.test_groups {
            let Some(keys) = key_set(rsa_jwk(&group.key.n, &group.key.e)) else {
                tally.skipped_by_policy += group.tests.len();
                continue;
            };
            for test in &group.tests {
                check(
                    &mut tally,
                    alg,
                    &keys,
                    &vector(test.tc_id, &test.msg, &test.sig, test.result),
                    Some(Expect::Refuse),
                );
            }
        }
        assert_tally(&format!("{name:?}"), set.number_of_tests, &tally, &expected);
    }
}

/// The PS algorithm for a message hash, and the digest length JOSE fixes the salt to.
fn pss_alg(hash: HashFunction) -> Option<(Alg, usize)> {
    match hash {
        HashFunction::Sha2_256 => Some((Alg::PS256, 32)),
        HashFunction::Sha2_384 => Some((Alg::PS384, 48)),
        HashFunction::Sha2_512 => Some((Alg::PS512, 64)),
        _ => None,
    }
}

/// Every RSA-PSS file, group by group: JOSE-expressible groups must give Wycheproof's result;
/// groups with another MGF hash or salt length must be refused under the PS algorithm of their
/// message hash; groups with a message hash no PS algorithm uses are counted as skipped.
#[test]
fn rsa_pss_vectors() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    use wycheproof::Mgf;
    let counts = |passed, refused_non_jose, accepted_jose_salt, skipped| Expected {
        passed,
        acceptable: 0,
        refused_non_jose,
        accepted_jose_salt,
        skipped,
    };
    let files = [
        (
            TestName::RsaPss2048Sha256Mgf1SaltLen32,
            counts(108, 0, 0, 0),
        ),
        (
            TestName::RsaPss2048Sha256Mgf1SaltLen32WithParams,
            counts(108, 0, 0, 0),
        ),
        (
            TestName::RsaPss2048Sha384Mgf1SaltLen48,
            counts(141, 0, 0, 0),
        ),
        (
            TestName::RsaPss3072Sha256Mgf1SaltLen32,
            counts(108, 0, 0, 0),
        ),
        (
            TestName::RsaPss3072Sha256Mgf1SaltLen32WithParams,
            counts(108, 0, 0, 0),
        ),
        (
            TestName::RsaPss4096Sha256Mgf1SaltLen32,
            counts(108, 0, 0, 0),
        ),
        (
            TestName::RsaPss4096Sha384Mgf1SaltLen48,
            counts(141, 0, 0, 0),
        ),
        (
            TestName::RsaPss4096Sha512Mgf1SaltLen64,
            counts(179, 0, 0, 0),
        ),
        (
            TestName::RsaPss4096Sha512Mgf1SaltLen64WithParams,
            counts(179, 0, 0, 0),
        ),
        // Salt length 0 (SHA-256) or 32 (SHA-512), or MGF1 with another hash than the message's.
        (
            TestName::RsaPss2048Sha256Mgf1SaltLen0,
            counts(103, 61, 1, 0),
        ),
        (
            TestName::RsaPss2048Sha256Mgf1SaltLen0WithParams,
            counts(103, 61, 1, 0),
        ),
        (
            TestName::RsaPss4096Sha512Mgf1SaltLen32,
            counts(177, 132, 0, 0),
        ),
        (
            TestName::RsaPss4096Sha512Mgf1SaltLen32WithParams,
            counts(177, 132, 0, 0),
        ),
        (
            TestName::RsaPss2048Sha512Mgf1Sha256SaltLen32WithParams,
            counts(178, 132, 0, 0),
        ),
        (TestName::RsaPss2048Sha256Mgf1Sha1_20, counts(108, 63, 0, 0)),
        // Every combination of SHA-1..SHA-512 message and MGF1 hash with salts 0..64: the three
        // JOSE ones verify, the rest with a SHA-2 message hash are refused.
        (TestName::RsaPssmisc, counts(90, 87, 0, 60)),
        (TestName::RsaPssmiscWithParams, counts(90, 87, 0, 60)),
        // Message hashes no JOSE algorithm uses.
        (TestName::RsaPss2048Sha1Mgf1SaltLen20, counts(0, 0, 0, 88)),
        (
            TestName::RsaPss2048Sha1Mgf1SaltLen20WithParams,
            counts(0, 0, 0, 88),
        ),
        (
            TestName::RsaPss2048Sha512_224Mgf1SaltLen28,
            counts(0, 0, 0, 100),
        ),
        (
            TestName::RsaPss2048Sha512_256Mgf1SaltLen32,
            counts(0, 0, 0, 115),
        ),
        (TestName::RsaPss2048Shake128, counts(0, 0, 0, 114)),
        (TestName::RsaPss2048Shake256, counts(0, 0, 0, 184)),
        (TestName::RsaPss3072Shake128, counts(0, 0, 0, 114)),
        (TestName::RsaPss3072Shake256, counts(0, 0, 0, 184)),
        (TestName::RsaPss4096Shake256, counts(0, 0, 0, 184)),
    ];
    assert_eq!(
        files.len(),
        TestName::all().len(),
        "every PSS file is listed"
    );
    for (name, expected) in files {
        let set = TestSet::load(name).expect("vectors load");
        let mut tally = Tally::default();
        for group in &set.test_groups {
            let Some((alg, digest_len)) = pss_alg(group.hash) else {
                tally.skipped_no_jose_alg += group.tests.len();
                continue;
            };
            let Some(keys) = key_set(rsa_jwk(&group.key.n, &group.key.e)) else {
                tally.skipped_by_policy += group.tests.len();
                continue;
            };
            let mgf1_own_hash = group.mgf == Mgf::Mgf1 && group.mgf_hash == Some(group.hash);
            let jose = mgf1_own_hash && group.salt_size == digest_len;
            for test in &group.tests {
                let vector = vector(test.tc_id, &test.msg, &test.sig, test.result);
                if jose {
                    check(&mut tally, alg, &keys, &vector, None);
                    continue;
                }
                // A vector re-signed with the hash's own salt length is a valid PS signature,
                // whatever the group's parameters say.
                let jose_salt =
                    mgf1_own_hash && test.comment == format!("s_len changed to {digest_len}");
                let expect = if jose_salt {
                    Expect::Accept
                } else {
                    Expect::Refuse
                };
                let got = outcome(alg, &keys, &vector);
                if got != expect {
                    tally.mismatches.push(format!(
                        "tcId {}: non-JOSE group (MGF {:?}, salt {}) as {alg}: expected {expect:?}, got {got:?}",
                        test.tc_id, group.mgf_hash, group.salt_size
                    ));
                    continue;
                }
                tally.passed += 1;
                if jose_salt {
                    tally.accepted_jose_salt += 1;
                } else if test.result != TestResult::Invalid {
                    tally.refused_non_jose += 1;
                }
            }
        }
        assert_tally(&format!("{name:?}"), set.number_of_tests, &tally, &expected);
    }
}

/// Writes the vectors the host signature path is checked with in real Envoy
/// (`tests/integration/test_host_wycheproof.py` through the probe module `tests/host-probe`):
/// every RSA PKCS#1 v1.5, ECDSA P1363 and Ed25519 vector above and every RSA-PSS vector JOSE
/// can express, each with its key as a JWK, Wycheproof's result, and what this native run
/// (our own RSA and Ed25519 code where the module verifies) answered. Run by `make host-probe`:
/// `HOST_PROBE_VECTORS=<file> cargo test --test wycheproof -- --ignored host_probe_vectors`.
#[test]
#[ignore = "writes the vector file for the host probe; run by `make host-probe`"]
fn host_probe_vectors() {
    let path = std::env::var("HOST_PROBE_VECTORS").expect("HOST_PROBE_VECTORS: the file to write");
    let mut groups = Vec::new();
    let mut add_group = |file: String, alg: Alg, jwk: Value, vectors: Vec<Vector>| {
        let keys = key_set(jwk.clone()).expect("every key of these files is accepted");
        let tests: Vec<Value> = vectors
            .iter()
            .map(|v| {
                let result = match v.result {
                    TestResult::Valid => "valid",
                    TestResult::Invalid => "invalid",
                    TestResult::Acceptable => "acceptable",
                };
                json!({"id": format!("{file}/{}", v.tc_id), "msg": b64(v.msg), "sig": b64(v.sig),
                       "result": result, "native": outcome(alg, &keys, v) == Expect::Accept})
            })
            .collect();
        groups.push(json!({"file": file, "alg": alg.name(), "jwk": jwk, "tests": tests}));
    };
    {
        use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
        for (name, alg) in [
            (TestName::Rsa2048Sha256, Alg::RS256),
            (TestName::Rsa2048Sha384, Alg::RS384),
            (TestName::Rsa2048Sha512, Alg::RS512),
            (TestName::Rsa3072Sha256, Alg::RS256),
            (TestName::Rsa3072Sha384, Alg::RS384),
            (TestName::Rsa3072Sha512, Alg::RS512),
            (TestName::Rsa4096Sha256, Alg::RS256),
            (TestName::Rsa4096Sha384, Alg::RS384),
            (TestName::Rsa4096Sha512, Alg::RS512),
            (TestName::Rsa8192Sha256, Alg::RS256),
            (TestName::Rsa8192Sha384, Alg::RS384),
            (TestName::Rsa8192Sha512, Alg::RS512),
        ] {
            let set = TestSet::load(name).expect("vectors load");
            for group in &set.test_groups {
                let vectors = group
                    .tests
                    .iter()
                    .map(|t| vector(t.tc_id, &t.msg, &t.sig, t.result))
                    .collect();
                add_group(
                    format!("{name:?}"),
                    alg,
                    rsa_jwk(&group.key.n, &group.key.e),
                    vectors,
                );
            }
        }
    }
    {
        // RSA-PSS is verified in the module (`mesh_oauth::rsa`), never by the host: every group
        // JOSE can express (MGF1 over the message hash, salt as long as the hash).
        use wycheproof::rsa_pss_verify::{TestName, TestSet};
        use wycheproof::Mgf;
        for name in TestName::all() {
            let set = TestSet::load(name).expect("vectors load");
            for group in &set.test_groups {
                let Some((alg, digest_len)) = pss_alg(group.hash) else {
                    continue;
                };
                let jose = group.mgf == Mgf::Mgf1
                    && group.mgf_hash == Some(group.hash)
                    && group.salt_size == digest_len;
                if !jose {
                    continue;
                }
                let vectors = group
                    .tests
                    .iter()
                    .map(|t| vector(t.tc_id, &t.msg, &t.sig, t.result))
                    .collect();
                add_group(
                    format!("{name:?}"),
                    alg,
                    rsa_jwk(&group.key.n, &group.key.e),
                    vectors,
                );
            }
        }
    }
    {
        use wycheproof::ecdsa::{TestName, TestSet};
        for (name, alg, crv, coordinate_len) in [
            (TestName::EcdsaSecp256r1Sha256P1363, Alg::ES256, "P-256", 32),
            (TestName::EcdsaSecp384r1Sha384P1363, Alg::ES384, "P-384", 48),
        ] {
            let set = TestSet::load(name).expect("vectors load");
            for group in &set.test_groups {
                let (0x04, xy) = group.key.key.split_first().expect("a point") else {
                    panic!("{name:?}: group key is not an uncompressed point");
                };
                let (x, y) = xy.split_at(coordinate_len);
                let jwk = json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)});
                let vectors = group
                    .tests
                    .iter()
                    .map(|t| vector(t.tc_id, &t.msg, &t.sig, t.result))
                    .collect();
                add_group(format!("{name:?}"), alg, jwk, vectors);
            }
        }
    }
    {
        // EdDSA never goes to the host: these run the module's own Ed25519 code in Envoy's V8.
        use wycheproof::eddsa::{TestName, TestSet};
        let set = TestSet::load(TestName::Ed25519).expect("vectors load");
        for group in &set.test_groups {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&group.key.pk)});
            let vectors = group
                .tests
                .iter()
                .map(|t| vector(t.tc_id, &t.msg, &t.sig, t.result))
                .collect();
            add_group("Ed25519".to_owned(), Alg::EdDSA, jwk, vectors);
        }
    }
    let document = serde_json::to_vec(&json!({ "groups": groups })).expect("JSON");
    std::fs::write(&path, document).expect("vector file written");
}
