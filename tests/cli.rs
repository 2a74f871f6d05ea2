//! The `mesh-oauth` binary, run as a user runs it: `check-config` on the repository's Istio
//! files and on broken configurations, `explain` on the cases the Envoy integration tests
//! (tests/integration) put to the filter, with tokens minted here by ring.
// The helpers below are test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{b64, rs256, rsa_jwks, rsa_key, run_command, scratch, signing_input, Run, BIN, NOW};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const ISSUER: &str = "https://idp.example.com";
const PARTNER: &str = "https://partner.example.com";
const RSA_KID: &str = "rsa-a";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str], stdin: Option<&str>) -> Run {
    run_command(Command::new(BIN).args(args), stdin.unwrap_or(""))
}

/// The identity provider of these tests: an RSA key served from `jwksUri` (given to explain
/// with --jwks) and a partner whose Ed25519 key is inline in the configuration.
struct Idp {
    rsa: RsaKeyPair,
    ed25519: Ed25519KeyPair,
}

fn idp() -> Idp {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Idp {
        rsa: rsa_key(),
        ed25519: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
    }
}

impl Idp {
    fn rsa_jwks(&self) -> String {
        rsa_jwks(&self.rsa, RSA_KID)
    }

    fn ed25519_jwks(&self) -> String {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
            "x": b64(self.ed25519.public_key().as_ref())}]})
        .to_string()
    }

    fn rs256(&self, kid: &str, claims: &Value) -> String {
        rs256(&self.rsa, kid, claims)
    }

    fn eddsa(&self, claims: &Value) -> String {
        let input = signing_input(json!({"alg": "EdDSA", "kid": "ed-1"}), claims);
        let signature = self.ed25519.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.as_ref()))
    }

    fn config(&self) -> Value {
        json!({
            "providers": [
                {"name": "idp", "issuer": ISSUER, "audiences": ["orders"],
                 "jwksUri": "https://idp.example.com/jwks",
                 "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]},
                {"name": "partner", "issuer": PARTNER, "jwks": self.ed25519_jwks()}
            ],
            "rules": [
                {"name": "health", "match": {"paths": ["/healthz"]}, "allowAnonymous": true},
                {"name": "admin", "match": {"paths": ["/admin/*"]}, "deny": true},
                {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
                 "requires": {"scopes": ["orders:write"]}},
                {"name": "orders-read", "match": {"paths": ["/orders/*"]},
                 "requires": {"scopes": ["orders:read"]}}
            ]
        })
    }

    /// `explain` of `token` with this IdP's configuration and RSA keys, at `NOW`.
    fn explain(&self, case: &str, token: &str, extra: &[&str]) -> Run {
        self.explain_with(case, &self.config(), token, extra)
    }

    fn explain_with(&self, case: &str, config: &Value, token: &str, extra: &[&str]) -> Run {
        let config = scratch(&format!("{case}.json"), &config.to_string());
        let jwks = scratch(&format!("{case}.jwks.json"), &self.rsa_jwks());
        let now = NOW.to_string();
        let mut args = vec![
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
            "--token",
            token,
        ];
        if !extra.contains(&"--now") {
            args.extend(["--now", &now]);
        }
        args.extend_from_slice(extra);
        let out = run(&args, None);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_secret_free(&out.stdout, token);
        out
    }
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"iss": ISSUER, "aud": "orders", "sub": "alice",
        "iat": NOW - 60, "exp": NOW + 600, "scope": "orders:read"});
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}

/// Neither the token nor its signature appear in what explain prints.
fn assert_secret_free(stdout: &str, token: &str) {
    let signature = token.rsplit('.').next().unwrap();
    assert!(!stdout.contains(token), "the token was printed:\n{stdout}");
    assert!(
        signature.len() < 8 || !stdout.contains(signature),
        "the signature was printed:\n{stdout}"
    );
}

/// The lines of the filter's answer: from the `final:` (or `held:`) line on.
fn answer(out: &Run) -> Vec<&str> {
    let lines: Vec<&str> = out.stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("final:") || l.starts_with("held:"))
        .unwrap_or_else(|| panic!("no answer in:\n{}", out.stdout));
    lines[start..].to_vec()
}

fn header<'o>(answer: &[&'o str], name: &str) -> Option<&'o str> {
    let prefix = format!("  {name}: ");
    answer.iter().find_map(|l| l.strip_prefix(prefix.as_str()))
}

// ------------------------------------------------------------------------------ check-config

#[test]
fn check_config_accepts_a_good_json_configuration() {
    let path = scratch("good.json", &idp().config().to_string());
    let out = run(&["check-config", path.to_str().unwrap()], None);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "ok: 2 providers, 4 rules\n")
    );
}

#[test]
fn check_config_names_the_offending_field() {
    let mut config = idp().config();
    config["providers"][1] = json!({"issuer": PARTNER, "jwksUri": "ftp://partner.example.com/k"});
    let path = scratch("bad.json", &config.to_string());
    let path = path.to_str().unwrap();
    let out = run(&["check-config", path], None);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!("error: {path}: providers[1].jwksUri: not an http(s) URL\n")
    );
    assert_eq!(out.stdout, "");
}

#[test]
fn check_config_refuses_duplicate_members_as_the_filter_does() {
    let path = scratch(
        "duplicate.json",
        r#"{"providers": [{"issuer": "https://a.example.com", "jwksUri": "https://a.example.com/k"}],
            "unmatched": "deny", "unmatched": "anonymous"}"#,
    );
    let out = run(&["check-config", path.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("(config): "), "{}", out.stderr);
}

/// The repository's WasmPlugin files are what users apply: each pluginConfig must be one the
/// plugin accepts (the delivery tests check the same in Envoy).
#[test]
fn check_config_accepts_every_wasm_plugin_of_the_repository() {
    let mut files = vec![repo().join("wasm-plugin.yaml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 6, "examples/*.yaml: {examples:?}");
    files.extend(examples);
    for file in files {
        let out = run(&["check-config", file.to_str().unwrap()], None);
        assert_eq!(out.code, 0, "{}: {}", file.display(), out.stderr);
        assert!(
            out.stdout.starts_with("ok: WasmPlugin ") && out.stdout.lines().count() == 1,
            "{}: {}",
            file.display(),
            out.stdout
        );
    }
}

/// An outbound WasmPlugin's secrets live in the pod: check-config stands in a value for each
/// variable `vmConfig.env` gives the VM, and names one it does not give.
#[test]
fn check_config_reads_outbound_secrets_from_the_plugins_vm_env() {
    let file = repo().join("deploy/istio/outbound.yaml");
    let out = run(&["check-config", file.to_str().unwrap()], None);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (
            0,
            "ok: WasmPlugin agents/mesh-oauth-outbound: 1 provider, 2 outbound entries\n"
        ),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("- name: AGENT_CLIENT_SECRET", "- name: SOMETHING_ELSE");
    let path = scratch("outbound-undeclared.yaml", &text);
    let out = run(&["check-config", path.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "spec.pluginConfig.outbound[0].tokenExchange.clientSecretEnv: environment variable AGENT_CLIENT_SECRET is not set in the VM"
        ),
        "{}",
        out.stderr
    );
}

/// A client key and its certificate (`clientCertEnv`) live in the pod too: check-config stands in
/// a certificate that carries the stand-in key (a client key would not pass as a certificate).
#[test]
fn check_config_stands_in_a_certificate_for_client_cert_env() {
    let text = std::fs::read_to_string(repo().join("deploy/istio/outbound.yaml"))
        .unwrap()
        .replacen(
            "          clientSecretEnv: AGENT_CLIENT_SECRET\n          audience: tools",
            "          clientAuth: private_key_jwt\n          clientKeyEnv: AGENT_KEY\n          \
             clientCertEnv: AGENT_CERT\n          audience: tools",
            1,
        )
        .replace(
            "      - name: AGENT_CLIENT_SECRET\n        valueFrom: HOST",
            "      - name: AGENT_CLIENT_SECRET\n        valueFrom: HOST\n      \
             - name: AGENT_KEY\n        valueFrom: HOST\n      \
             - name: AGENT_CERT\n        valueFrom: HOST",
        );
    assert!(text.contains("clientCertEnv: AGENT_CERT") && text.contains("- name: AGENT_CERT"));
    let path = scratch("outbound-certificate.yaml", &text);
    let out = run(&["check-config", path.to_str().unwrap()], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let undeclared = text.replace("- name: AGENT_CERT", "- name: SOMETHING_ELSE");
    let path = scratch("outbound-certificate-undeclared.yaml", &undeclared);
    let out = run(&["check-config", path.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "spec.pluginConfig.outbound[0].tokenExchange.clientCertEnv: environment variable AGENT_CERT is not set in the VM"
        ),
        "{}",
        out.stderr
    );
}

/// `assertionAudience` (Okta and Entra ID want the token endpoint as the assertion's `aud`):
/// `explain` says which the assertion names, and check-config names a misspelt value's field.
#[test]
fn explain_shows_the_assertion_audience_and_check_config_refuses_another_value() {
    let text = std::fs::read_to_string(repo().join("deploy/istio/outbound.yaml"))
        .unwrap()
        .replacen(
            "          clientSecretEnv: AGENT_CLIENT_SECRET\n          audience: tools",
            "          clientAuth: private_key_jwt\n          clientKeyEnv: AGENT_KEY\n          \
             assertionAudience: tokenEndpoint\n          audience: tools",
            1,
        )
        .replace(
            "      - name: AGENT_CLIENT_SECRET\n        valueFrom: HOST",
            "      - name: AGENT_CLIENT_SECRET\n        valueFrom: HOST\n      \
             - name: AGENT_KEY\n        valueFrom: HOST",
        );
    assert!(
        text.contains("assertionAudience: tokenEndpoint") && text.contains("- name: AGENT_KEY")
    );
    let path = scratch("outbound-assertion-audience.yaml", &text);
    let path = path.to_str().unwrap();
    let out = run(
        &[
            "explain",
            "--config",
            path,
            "--host",
            "tools.tools:8080",
            "--path",
            "/mcp",
            "--method",
            "POST",
            "--token",
            "x.y.z",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("client agent (private_key_jwt, assertion aud = the token endpoint URL)"),
        "{}",
        out.stdout
    );
    let misspelt = text.replace(
        "assertionAudience: tokenEndpoint",
        "assertionAudience: token_endpoint",
    );
    let path = scratch("outbound-assertion-audience-misspelt.yaml", &misspelt);
    let out = run(&["check-config", path.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "spec.pluginConfig.outbound[0].tokenExchange.assertionAudience: must be \"issuer\" or \"tokenEndpoint\""
        ),
        "{}",
        out.stderr
    );
}

/// An outbound WasmPlugin whose entries are `entries` (YAML, indented for `outbound:`).
fn outbound_plugin(entries: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: outbound
  namespace: agents
spec:
  match:
    - mode: CLIENT
  url: oci://registry.example.com/mesh-oauth:0.1.0
  vmConfig:
    env:
      - name: AGENT_CLIENT_SECRET
        valueFrom: HOST
  pluginConfig:
    providers:
      - name: login
        issuer: https://login.example.com
    outbound:
{entries}"
    )
}

/// One outbound entry for [`outbound_plugin`]: `name` and its `match` as flow YAML.
fn outbound_entry(name: &str, matcher: &str) -> String {
    format!(
        "      - name: {name}
        match: {matcher}
        clientCredentials:
          provider: login
          clientId: agent
          clientSecretEnv: AGENT_CLIENT_SECRET
"
    )
}

/// First match wins: check-config refuses an entry that earlier entries take every request of
/// — by what their patterns match (wildcard hosts, path prefixes, methods, ports), not only
/// when they are written the same — and names them; an entry that still gets some requests
/// passes.
#[test]
fn check_config_names_the_earlier_entries_that_leave_an_outbound_entry_no_request() {
    let cases = [
        (
            vec![
                ("all", "{hosts: ['*.shop.svc.cluster.local']}"),
                ("pay", "{hosts: [payments.shop.svc.cluster.local], paths: ['/v1/*']}"),
            ],
            "outbound[1].match: never applies: every request it matches is taken by outbound[0] (\"all\"), which comes first (first match wins)",
        ),
        (
            vec![
                ("api", "{hosts: [a.internal], paths: ['/api/*'], methods: [GET, POST]}"),
                ("v2", "{hosts: [a.internal], paths: ['/api/v2/*'], methods: [POST], ports: ['8443']}"),
            ],
            "outbound[1].match: never applies: every request it matches is taken by outbound[0] (\"api\"), which comes first (first match wins)",
        ),
        (
            vec![
                ("a", "{hosts: [a.internal]}"),
                ("b", "{hosts: [b.internal], methods: [POST, PUT]}"),
                ("both", "{hosts: [a.internal, b.internal], methods: [POST]}"),
            ],
            "outbound[2].match: never applies: every request it matches is taken by outbound[0] (\"a\") and outbound[1] (\"b\"), which come first (first match wins)",
        ),
        (
            vec![("nothing", "{hosts: [a.internal], notHosts: ['*.internal']}")],
            "outbound[0].match: never applies: no request matches it (its not… fields exclude everything its other fields match)",
        ),
    ];
    for (entries, problem) in cases {
        let yaml: String = entries
            .iter()
            .map(|(name, matcher)| outbound_entry(name, matcher))
            .collect();
        let path = scratch("outbound-shadowed.yaml", &outbound_plugin(&yaml));
        let out = run(&["check-config", path.to_str().unwrap()], None);
        assert_eq!(out.code, 1, "{entries:?}: {}", out.stdout);
        assert_eq!(
            out.stderr,
            format!(
                "error: {}: WasmPlugin agents/outbound: spec.pluginConfig.{problem}\n",
                path.display()
            ),
            "{entries:?}"
        );
    }
    let reachable = [
        // The wildcard does not match the bare name; `/api` is not under `/api/*`; GET.
        vec![
            ("sub", "{hosts: ['*.shop.svc.cluster.local']}"),
            ("bare", "{hosts: [shop.svc.cluster.local]}"),
        ],
        vec![
            ("api", "{hosts: [a.internal], paths: ['/api/*']}"),
            ("root", "{hosts: [a.internal], paths: ['/api']}"),
        ],
        vec![
            ("a", "{hosts: [a.internal]}"),
            ("b", "{hosts: [b.internal], methods: [POST]}"),
            ("both", "{hosts: [a.internal, b.internal]}"),
        ],
        vec![
            ("tls", "{hosts: [a.internal], ports: ['443']}"),
            ("any", "{hosts: [a.internal], ports: ['443', '8443']}"),
        ],
    ];
    for entries in reachable {
        let yaml: String = entries
            .iter()
            .map(|(name, matcher)| outbound_entry(name, matcher))
            .collect();
        let path = scratch("outbound-reachable.yaml", &outbound_plugin(&yaml));
        let out = run(&["check-config", path.to_str().unwrap()], None);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (
                0,
                format!(
                    "ok: WasmPlugin agents/outbound: 1 provider, {} outbound entries\n",
                    entries.len()
                )
                .as_str()
            ),
            "{entries:?}: {}",
            out.stderr
        );
    }
}

/// A login WasmPlugin's client secret and cookie keys live in the pod too: check-config stands in
/// a key ring for the `cookieKeysEnv` variable (a client key would not pass as one), and names a
/// variable `vmConfig.env` does not give.
#[test]
fn check_config_reads_login_secrets_from_the_plugins_vm_env() {
    let file = repo().join("deploy/istio/login-gateway.yaml");
    let out = run(&["check-config", file.to_str().unwrap()], None);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (
            0,
            "ok: WasmPlugin istio-ingress/mesh-oauth-login: 1 provider, 3 rules\n"
        ),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "- name: WEB_LOGIN_COOKIE_KEYS\n        valueFrom: HOST",
        "- name: OTHER\n        valueFrom: HOST",
    );
    let path = scratch("login-undeclared.yaml", &text);
    let out = run(&["check-config", path.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(
            "spec.pluginConfig.login.cookieKeysEnv: environment variable WEB_LOGIN_COOKIE_KEYS is not set in the VM"
        ),
        "{}",
        out.stderr
    );
}

/// `explain` on an outbound configuration prints the outbound flow's own decision for the
/// first request (an empty cache): the entry, then the calls it makes, credentials named only.
#[test]
fn explain_an_outbound_request_shows_the_calls_without_credentials() {
    let config = repo().join("deploy/istio/outbound.yaml");
    let config = config.to_str().unwrap();
    let user = format!(
        "{}.{}.c2ln",
        b64(br#"{"alg":"ES256"}"#),
        b64(
            json!({"sub": "alice", "exp": 4_102_444_800u64, "may_act": {"sub": "agent"}})
                .to_string()
                .as_bytes()
        )
    );
    let out = run(
        &[
            "explain",
            "--config",
            config,
            "--host",
            "tools.tools:8080",
            "--path",
            "/mcp",
            "--method",
            "POST",
            "--token",
            &user,
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"entry: outbound[0] \"tools\": token exchange (RFC 8693), client agent (client_secret_basic), token in authorization"), "{}", out.stdout);
    for expected in [
        "  grant_type=client_credentials",
        "then, with that token as the actor, POST:",
        "  subject_token=(the request's bearer token)",
        "  actor_token=(the workload's own client-credentials token)",
        "  audience=tools",
        "  scope=tools:call",
    ] {
        assert!(lines.contains(&expected), "{expected}: {}", out.stdout);
    }
    assert!(!out.stdout.contains(&user) && !out.stdout.contains("stand-in"));

    let refused = run(
        &[
            "explain",
            "--config",
            config,
            "--host",
            "tools.tools",
            "--path",
            "/mcp",
        ],
        None,
    );
    assert!(
        refused
            .stdout
            .contains("decision: 403 missing_subject, before any call"),
        "{}",
        refused.stdout
    );
    let untouched = run(
        &[
            "explain",
            "--config",
            config,
            "--host",
            "orders.shop",
            "--path",
            "/",
        ],
        None,
    );
    assert!(
        untouched
            .stdout
            .contains("entry: none matches: the request goes on untouched"),
        "{}",
        untouched.stdout
    );
}

const PLUGIN_HEAD: &str = "\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: mesh-oauth
  namespace: shop
spec:
  url: oci://registry.example.com/mesh-oauth:0.1.0
";

#[test]
fn check_config_checks_each_wasm_plugin_and_names_the_field_in_the_yaml() {
    let yaml = format!(
        "{PLUGIN_HEAD}  pluginConfig:
    providers:
      - issuer: https://idp.example.com
        jwksUri: https://idp.example.com/jwks
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: unrelated}}
data: {{providers: none}}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: second, namespace: shop}}
spec:
  pluginConfig:
    providers:
      - issuer: https://idp.example.com
        jwksUri: idp.example.com/jwks
"
    );
    let path = scratch("two-plugins.yaml", &yaml);
    let path = path.to_str().unwrap();
    let out = run(&["check-config", path], None);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stdout,
        "ok: WasmPlugin shop/mesh-oauth: 1 provider, 0 rules\n"
    );
    assert_eq!(
        out.stderr,
        format!(
            "error: {path}: WasmPlugin shop/second: spec.pluginConfig.providers[0].jwksUri: not an http(s) URL\n"
        )
    );
}

/// The hashes `check-config` prints, in order, with each plugin's label.
fn printed_hashes(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|line| line.rsplit_once("config sha256: "))
        .map(|(label, hex)| (label.to_string(), hex.to_string()))
        .collect()
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A pipeline compares the hash `check-config` prints with what sidecars report: it is the
/// SHA-256 of the canonical JSON (sorted members, no whitespace), the same for the plugin's
/// JSON and for a WasmPlugin's YAML, whatever the member order and spacing.
#[test]
fn check_config_prints_the_policy_identity_the_filter_reports() {
    let canonical = r#"{"providers":[{"issuer":"https://idp.example.com","jwksUri":"https://idp.example.com/jwks","maxLifetimeSeconds":3600}],"unmatched":"deny"}"#;
    let json = scratch(
        "identity.json",
        "{\n  \"unmatched\": \"deny\",\n  \"providers\": [\n    {\"maxLifetimeSeconds\": 3600, \"jwksUri\": \"https://idp.example.com/jwks\",\n     \"issuer\": \"https://idp.example.com\"}\n  ]\n}\n",
    );
    let out = run(&["check-config", json.to_str().unwrap()], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "ok: 1 provider, 0 rules\n");
    assert_eq!(
        out.stderr,
        format!("config sha256: {}\n", sha256_hex(canonical))
    );
    let yaml = format!(
        "{PLUGIN_HEAD}  pluginConfig:
    providers:
      - jwksUri: https://idp.example.com/jwks
        maxLifetimeSeconds: 3600
        issuer: https://idp.example.com
    unmatched: deny
---
{PLUGIN_HEAD}  pluginConfig:
    providers:
      - jwksUri: https://idp.example.com/jwks
        maxLifetimeSeconds: 3601
        issuer: https://idp.example.com
    unmatched: deny
"
    )
    .replacen("name: mesh-oauth", "name: other", 1);
    let file = scratch("identity.yaml", &yaml);
    let out = run(&["check-config", file.to_str().unwrap()], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        printed_hashes(&out.stderr),
        [
            ("WasmPlugin shop/other: ".to_string(), sha256_hex(canonical)),
            (
                "WasmPlugin shop/mesh-oauth: ".to_string(),
                // One value changed, another hash.
                sha256_hex(&canonical.replace("3600", "3601"))
            ),
        ],
        "{}",
        out.stderr
    );
    // A file with an invalid plugin is not a policy to apply: no hash.
    let broken = yaml.replace("3601", "-1");
    let file = scratch("identity-broken.yaml", &broken);
    let out = run(&["check-config", file.to_str().unwrap()], None);
    assert_eq!(out.code, 1);
    assert!(printed_hashes(&out.stderr).is_empty(), "{}", out.stderr);
}

#[test]
fn check_config_refuses_yaml_the_filter_would_not_get_a_sound_config_from() {
    let cases = [
        // Kubernetes would keep one of the two; which one the author meant is unknown.
        (
            "duplicate-key.yaml",
            format!("{PLUGIN_HEAD}  pluginConfig:\n    unmatched: deny\n    unmatched: anonymous\n"),
            "not valid YAML",
        ),
        (
            "no-plugin-config.yaml",
            PLUGIN_HEAD.to_string(),
            "WasmPlugin shop/mesh-oauth: spec.pluginConfig: empty",
        ),
        (
            "no-wasm-plugin.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".to_string(),
            "YAML with a `kind: WasmPlugin` document",
        ),
        (
            "unknown-field.yaml",
            format!(
                "{PLUGIN_HEAD}  pluginConfig:\n    providers: [{{issuer: https://a.example.com, jwksUrl: https://a.example.com/k}}]\n"
            ),
            "spec.pluginConfig.providers[0].jwksUrl",
        ),
    ];
    for (name, yaml, expected) in cases {
        let path = scratch(name, &yaml);
        let out = run(&["check-config", path.to_str().unwrap()], None);
        assert_eq!(out.code, 1, "{name}: {}", out.stdout);
        assert!(out.stderr.contains(expected), "{name}: {}", out.stderr);
    }
}

// ------------------------------------------------------------------------------ explain
// Each case names the Envoy integration test that checks the filter's answer to it.

/// test_upstream_headers::test_claim_and_payload_headers, test_rules::test_required_scope_present_passes: 200, the token
/// removed and the identity headers set.
#[test]
fn explain_a_valid_token_shows_each_step_and_the_upstream_headers() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let out = idp.explain("valid", &token, &["--path", "/orders/7"]);
    let stdout = &out.stdout;
    for expected in [
        "1. path: \"/orders/7\" normalised to \"/orders/7\"",
        "   rules[0] \"health\": no: paths: /orders/7 not in [/healthz]",
        "   rules[2] \"orders-write\": no: methods: GET not in [POST]",
        "   rules[3] \"orders-read\": matches (paths [/orders/*])",
        "3. token location: found in header authorization (prefix \"Bearer \")",
        "4. token header: alg RS256, kid \"rsa-a\", typ \"JWT\"",
        "   claims (UNVERIFIED until the signature step says otherwise):",
        "       \"sub\": \"alice\"",
        "   providers[0] \"idp\": issuer matches: selected",
        "   providers[1] \"partner\": issuer \"https://partner.example.com\" differs",
        "   - kid \"rsa-a\": RSA, alg RS256",
        "7. signature: verified by key kid \"rsa-a\" (RSA): the claims above are authentic",
        "   exp 1700000600 (2023-11-14T22:23:20Z): pass, expires in 10 min 0 s",
        "   aud \"orders\", accepted [\"orders\"]: pass",
        "   scopes: required [orders:read], granted [orders:read] (from scope, scp): pass",
        "   requirement met",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert_eq!(
        answer(&out),
        [
            "final: allowed: the request goes on upstream",
            "  upstream: remove x-sub",
            "  upstream: remove authorization",
            "  upstream: set x-sub: alice",
        ]
    );
}

/// test_rejections::test_expired: 401 invalid_token naming the expiry.
#[test]
fn explain_an_expired_token() {
    let idp = idp();
    let token = idp.rs256(
        RSA_KID,
        &claims(json!({"iat": NOW - 3600, "exp": NOW - 600})),
    );
    let out = idp.explain("expired", &token, &["--path", "/orders/7"]);
    assert!(out
        .stdout
        .contains(
        "exp 1699999400 (2023-11-14T22:03:20Z): FAIL, expired 10 min 0 s ago (9 min 0 s beyond the skew)"
    ));
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (expired)");
    assert_eq!(
        header(&answer, "www-authenticate"),
        Some(
            "Bearer realm=\"localhost\", error=\"invalid_token\", error_description=\"token is expired\""
        )
    );
    assert_eq!(
        header(&answer, "body"),
        Some(r#"{"error":"invalid_token","error_description":"token is expired"}"#)
    );
}

/// Within the clock skew a token is still valid; `--now` as RFC 3339 is the same instant.
#[test]
fn explain_counts_the_skew_and_takes_rfc3339_times() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({"exp": NOW - 30})));
    let out = idp.explain(
        "skew",
        &token,
        &["--path", "/orders/7", "--now", "2023-11-14T22:13:20Z"],
    );
    assert!(out.stdout.contains(
        "exp 1699999970 (2023-11-14T22:12:50Z): pass, expired 30 s ago but within the skew"
    ));
    assert_eq!(
        answer(&out)[0],
        "final: allowed: the request goes on upstream"
    );
}

/// test_rejections::test_wrong_audience: 401 invalid_token naming the audience.
#[test]
fn explain_a_token_for_another_audience() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({"aud": "billing"})));
    let out = idp.explain("audience", &token, &["--path", "/orders/7"]);
    assert!(out
        .stdout
        .contains("   aud \"billing\", accepted [\"orders\"]: FAIL"));
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (audience)");
    assert!(header(&answer, "www-authenticate")
        .unwrap()
        .contains("error_description=\"token audience is not accepted\""));
}

/// test_rejections::test_unknown_key_id: 401 invalid_token naming the key.
#[test]
fn explain_a_token_signed_with_an_unknown_key() {
    let idp = idp();
    let token = idp.rs256("rotated", &claims(json!({})));
    let out = idp.explain("unknown-kid", &token, &["--path", "/orders/7"]);
    assert!(out
        .stdout
        .contains("7. signature: NOT verified: token key id is unknown"));
    assert!(out
        .stdout
        .contains("the filter first fetches the keys again"));
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (unknown_key)");
    assert!(header(&answer, "www-authenticate")
        .unwrap()
        .contains("error_description=\"token key id is unknown\""));
}

/// test_algorithms::test_token_with_a_flipped_signature_byte_is_refused: 401 invalid_token
/// naming the signature.
#[test]
fn explain_a_token_with_a_bad_signature() {
    let idp = idp();
    let good = idp.rs256(RSA_KID, &claims(json!({})));
    // Another payload under the original signature.
    let (header_segment, rest) = good.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let forged_payload = b64(claims(json!({"sub": "mallory"})).to_string().as_bytes());
    let forged = format!("{header_segment}.{forged_payload}.{signature}");
    let out = idp.explain("bad-signature", &forged, &["--path", "/orders/7"]);
    assert_secret_free(&out.stdout, &good);
    assert!(out.stdout.contains(
        "7. signature: NOT verified: token signature is invalid: refused with 401 (the claims above are unverified)"
    ));
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (signature)");
    assert!(header(&answer, "www-authenticate")
        .unwrap()
        .contains("error_description=\"token signature is invalid\""));
}

/// test_rules::test_missing_scope_is_403_insufficient_scope_naming_it.
#[test]
fn explain_a_token_without_the_required_scope() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let out = idp.explain(
        "scope",
        &token,
        &["--path", "/orders/7", "--method", "POST"],
    );
    assert!(out.stdout.contains(
        "   scopes: required [orders:write], granted [orders:read] (from scope, scp): FAIL, missing orders:write"
    ));
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 403 Forbidden (scope)");
    assert_eq!(
        header(&answer, "www-authenticate"),
        Some("Bearer realm=\"localhost\", error=\"insufficient_scope\", scope=\"orders:write\"")
    );
}

/// test_rules_contract::test_deny_rule_refuses_a_token_that_has_everything (and its dot-segment
/// case): 403 without a challenge, whatever the token.
#[test]
fn explain_a_deny_rule() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    // Normalisation first: the dot segment cannot walk around the rule.
    let out = idp.explain("deny", &token, &["--path", "/orders/../admin/users"]);
    assert!(out
        .stdout
        .contains("   rules[1] \"admin\": matches (paths [/admin/*])"));
    assert!(out
        .stdout
        .contains("   refused with 403 without looking at the token"));
    assert!(!out.stdout.contains("4. token header"));
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 403 Forbidden (deny_rule)");
    assert_eq!(header(&answer, "www-authenticate"), None);
}

/// test_rules::test_anonymous_path_passes_without_a_token and
/// test_anonymous_path_still_refuses_an_invalid_token.
#[test]
fn explain_an_anonymous_path() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    // A header no provider reads: the request carries no token the filter sees.
    let out = idp.explain(
        "anonymous",
        &token,
        &["--path", "/healthz", "--header", "x-api-token"],
    );
    assert!(out
        .stdout
        .contains("   none is needed here: the request passes"));
    assert_eq!(
        answer(&out),
        [
            "final: allowed: the request goes on upstream",
            "  upstream: remove x-sub"
        ]
    );

    let expired = idp.rs256(RSA_KID, &claims(json!({"exp": NOW - 600})));
    let out = idp.explain("anonymous-invalid", &expired, &["--path", "/healthz"]);
    assert_eq!(answer(&out)[0], "final: 401 Unauthorized (expired)");
}

/// test_missing_token::test_realm_defaults_to_the_requests_host: 401 with a bare challenge when a
/// token is needed and none is found.
#[test]
fn explain_a_token_where_no_provider_looks() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let out = idp.explain("nowhere", &token, &["--param", "access_token"]);
    assert!(out
        .stdout
        .contains("sent as query parameter `access_token=<token>`"));
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (missing)");
    assert_eq!(
        header(&answer, "www-authenticate"),
        Some("Bearer realm=\"localhost\"")
    );
}

/// test_key_fetch::test_key_server_slower_than_the_timeout_is_503_in_time: a request waits
/// while keys load, and gets 503 with Retry-After if they do not come.
#[test]
fn explain_without_the_keys_of_a_fetching_provider() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let config = scratch("no-keys.json", &idp.config().to_string());
    let now = NOW.to_string();
    let out = run(
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--token",
            &token,
            "--now",
            &now,
            "--path",
            "/orders/7",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(
        "6. keys: none given to explain (the filter fetches https://idp.example.com/jwks through cluster outbound|443||idp.example.com); pass --jwks FILE|URL"
    ));
    let answer = answer(&out);
    assert_eq!(
        answer[0],
        "held: keys loading for providers[0] \"idp\": the filter holds the request up to 5000 ms while it fetches them"
    );
    assert_eq!(
        answer[2],
        "final: 503 Service Unavailable (keys_unavailable)"
    );
    assert!(header(&answer, "retry-after").is_some());
}

/// Inline keys need no --jwks; the token can come from standard input.
#[test]
fn explain_reads_the_token_from_stdin_and_uses_inline_keys() {
    let idp = idp();
    let token = idp.eddsa(&json!({"iss": PARTNER, "sub": "svc", "exp": NOW + 60}));
    let config = scratch("stdin.json", &idp.config().to_string());
    let now = NOW.to_string();
    let out = run(
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--token",
            "-",
            "--now",
            &now,
            "--host",
            "orders.example.com",
        ],
        Some(&format!("{token}\n")),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_secret_free(&out.stdout, &token);
    assert!(out
        .stdout
        .contains("6. keys: inline `jwks` of the configuration: 1 key usable"));
    assert!(out
        .stdout
        .contains("   no rule matches: unmatched = authenticated"));
    assert_eq!(
        answer(&out),
        [
            "final: allowed: the request goes on upstream",
            "  upstream: remove x-sub",
            "  upstream: remove authorization",
        ]
    );
}

#[test]
fn explain_refuses_an_invalid_configuration_and_a_wrong_command_line() {
    let path = scratch("explain-bad.json", r#"{"providers": []}"#);
    let out = run(
        &[
            "explain",
            "--config",
            path.to_str().unwrap(),
            "--token",
            "x",
        ],
        None,
    );
    assert_eq!(out.code, 1);
    assert!(out
        .stderr
        .starts_with(&format!("error: {}: providers", path.to_str().unwrap())));
    let out = run(&["explain", "--token", "x"], None);
    assert_eq!(out.code, 2);
    assert!(out.stderr.starts_with("error: --config is needed"));
    let out = run(
        &[
            "explain",
            "--config",
            "c",
            "--token",
            "x",
            "--now",
            "yesterday",
        ],
        None,
    );
    assert_eq!(out.code, 2);
}

/// Every command answers `--help` and `-h` with its own usage and succeeds, even after other
/// options; without a command, the usage of all of them.
#[test]
fn every_command_answers_help_with_its_usage() {
    let commands = ["check-config", "convert", "explain"];
    for command in commands {
        for flag in ["--help", "-h"] {
            for args in [vec![command, flag], vec![command, "--config", "c", flag]] {
                if command != "explain" && args.len() > 2 {
                    continue;
                }
                let out = run(&args, None);
                assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
                assert_eq!(out.stderr, "", "{args:?}");
                assert!(
                    out.stdout.starts_with("usage:\n"),
                    "{args:?}: {}",
                    out.stdout
                );
                assert!(
                    out.stdout.contains(&format!("  mesh-oauth {command} ")),
                    "{args:?}: {}",
                    out.stdout
                );
                for other in commands.iter().filter(|other| **other != command) {
                    assert!(
                        !out.stdout.contains(&format!("mesh-oauth {other} ")),
                        "{args:?}: {}",
                        out.stdout
                    );
                }
            }
        }
    }
    let out = run(&["--help"], None);
    assert_eq!(out.code, 0);
    for command in commands {
        assert!(out.stdout.contains(&format!("  mesh-oauth {command} ")));
    }
    let out = run(&["convert", "--help-me"], None);
    assert_eq!(out.code, 2, "only --help and -h ask for help");
}

/// `--jwks URL`: the key document is fetched over HTTP, here from a one-shot server on the
/// loopback interface.
#[test]
fn explain_fetches_keys_from_a_url() {
    let idp = idp();
    let jwks = idp.rsa_jwks();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = std::io::Read::read(&mut stream, &mut buffer).unwrap();
            assert!(n > 0, "the client closed before its request ended");
            request.extend_from_slice(&buffer[..n]);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
            jwks.len()
        );
        stream.write_all(answer.as_bytes()).unwrap();
        String::from_utf8(request).unwrap()
    });
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let config = scratch("url.json", &idp.config().to_string());
    let now = NOW.to_string();
    let out = run(
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--token",
            &token,
            "--jwks",
            &url,
            "--now",
            &now,
            "--path",
            "/orders/1",
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /jwks HTTP/1.1\r\n"), "{request}");
    assert!(out.stdout.contains(&format!("6. keys: --jwks {url} (")));
    assert_eq!(
        answer(&out)[0],
        "final: allowed: the request goes on upstream"
    );
}

// ---- the calling workload --------------------------------------------------------------

fn workload_rules() -> Value {
    json!({
        "providers": [{"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks"}],
        "rules": [
            {"name": "checkout", "match": {"principals": ["cluster.local/ns/shop/sa/checkout"]},
             "allowAnonymous": true},
            {"name": "office", "match": {"ipBlocks": ["192.0.2.0/24"]}, "allowAnonymous": true}
        ],
        "unmatched": "deny"
    })
}

#[test]
fn explain_says_a_principal_rule_needs_mtls() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let out = idp.explain_with("no-mtls", &workload_rules(), &token, &[]);
    assert!(out.stdout.contains(
        "connection: no mTLS (no peer certificate: rules on principals and namespaces do not match)"
    ), "{}", out.stdout);
    assert!(out.stdout.contains(
        "   rules[0] \"checkout\": no: principals: no mTLS: the connection has no peer certificate: a rule that needs the caller's identity does not match without mTLS"
    ), "{}", out.stdout);
    assert_eq!(answer(&out)[0], "final: 403 Forbidden (deny_rule)");

    let peer = "spiffe://cluster.local/ns/shop/sa/checkout";
    let out = idp.explain_with("mtls", &workload_rules(), &token, &["--peer", peer]);
    assert!(out
        .stdout
        .contains("connection: mTLS, principal cluster.local/ns/shop/sa/checkout"));
    assert!(out.stdout.contains(
        "   rules[0] \"checkout\": matches (principals [cluster.local/ns/shop/sa/checkout])"
    ));
    assert!(
        answer(&out)[0].starts_with("final: allowed"),
        "{}",
        out.stdout
    );
}

#[test]
fn explain_says_the_direct_peer_is_unknown_behind_x_forwarded_for() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let args = [
        "--source",
        "192.0.2.7:5000",
        "--request-header",
        "X-Forwarded-For: 192.0.2.7",
    ];
    let out = idp.explain_with("xff", &workload_rules(), &token, &args);
    assert!(out.stdout.contains(
        "   rules[1] \"office\": no: ipBlocks: the direct peer address is not visible to the filter when the request has x-forwarded-for: unknown, so only a deny rule would count it as matching"
    ), "{}", out.stdout);
    let out = idp.explain_with("direct", &workload_rules(), &token, &args[..2]);
    assert!(
        out.stdout
            .contains("   rules[1] \"office\": matches (ipBlocks [192.0.2.0/24])"),
        "{}",
        out.stdout
    );
}

// ---- convert --------------------------------------------------------------------------

const ISTIO_PAIR: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: https://idp.example.com
    jwksUri: https://idp.example.com/jwks
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-users, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from:
    - source: {requestPrincipals: ["https://idp.example.com/*"]}
    - source: {serviceAccounts: ["shop/checkout"]}
    to:
    - operation: {methods: [GET], paths: ["/api/*"]}
    when:
    - key: request.auth.claims[groups]
      values: [dev]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-outside, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from:
    - source: {notIpBlocks: ["10.1.2.3/8"]}
    to:
    - operation: {notPaths: ["/healthz"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin, namespace: foo}
"#;

fn convert(name: &str, yaml: &str, extra: &[&str]) -> Run {
    let file = scratch(name, yaml);
    let mut args = vec!["convert", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args, None)
}

/// The single WasmPlugin's pluginConfig, as YAML text, after check-config accepted the output.
fn plugin_config(name: &str, yaml: &str) -> String {
    let file = scratch(&format!("{name}.converted.yaml"), yaml);
    let check = run(&["check-config", file.to_str().unwrap()], None);
    assert_eq!(
        check.code, 0,
        "check-config refused the output: {}",
        check.stderr
    );
    let docs = yaml_rust2::YamlLoader::load_from_str(yaml).unwrap();
    let plugins: Vec<_> = docs
        .iter()
        .filter(|doc| doc["kind"].as_str() == Some("WasmPlugin"))
        .collect();
    assert_eq!(plugins.len(), 1, "{yaml}");
    let mut out = String::new();
    yaml_rust2::YamlEmitter::new(&mut out)
        .dump(&plugins[0]["spec"]["pluginConfig"])
        .unwrap();
    out
}

#[test]
fn convert_puts_deny_before_allow_and_denies_what_no_allow_matches() {
    let out = convert("pair.yaml", ISTIO_PAIR, &["--check"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("ok: WasmPlugin foo/mesh-oauth-httpbin: 1 provider, 3 rules"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("document 4 (Deployment) is neither a RequestAuthentication nor an AuthorizationPolicy: skipped"));
    assert!(out
        .stderr
        .contains("Istio's default token locations written out"));
    let text = plugin_config("pair", &out.stdout);
    let order: Vec<usize> = [
        "foo/deny-outside[0]",
        "foo/allow-users[0].from[0].to[0]",
        "foo/allow-users[0].from[1].to[0]",
    ]
    .iter()
    .map(|name| {
        text.find(name)
            .unwrap_or_else(|| panic!("{name} missing in {text}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    for expected in [
        "unmatched: deny",
        "- 10.0.0.0/8",
        "- \"*/ns/shop/sa/checkout\"",
        "key: \"request.auth.claims[groups]\"",
        "- access_token",
    ] {
        assert!(text.contains(expected), "{expected} missing in {text}");
    }
    assert!(out
        .stdout
        .contains("selector:\n    matchLabels:\n      app: httpbin"));
}

#[test]
fn convert_refuses_what_it_cannot_express_and_names_it() {
    let policy = |spec: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n{spec}\n")
    };
    let cases = [
        (policy("  action: CUSTOM\n  provider: {name: opa}"), "AuthorizationPolicy foo/p: spec.action: CUSTOM (external authorization) is not supported by mesh-oauth"),
        (policy("  action: AUDIT"), "AuthorizationPolicy foo/p: spec.action: AUDIT is not supported"),
        (policy("  rules:\n  - to:\n    - operation: {methods: [get]}"), "AuthorizationPolicy foo/p: spec.rules[0].to[0].operation.methods: get: a lower-case method never matches in Istio"),
        (policy("  rules:\n  - to:\n    - operation: {paths: [\"/a/{*}/b\"]}"), "spec.rules[0].to[0].operation.paths: /a/{*}/b: path templates"),
        (policy("  rules:\n  - from:\n    - source: {principal: [x]}"), "AuthorizationPolicy foo/p: spec.rules[0].from[0].source.principal: not a field mesh-oauth can convert"),
        (policy("  rules:\n  - when:\n    - key: request.regex.headers[x]\n      values: [a]"), "from foo/p[0]: the converted configuration is refused: rules[0].match.when[0].key: unknown key \"request.regex.headers[x]\""),
        (policy("  rules:\n  - {}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: q, namespace: foo}\nspec:\n  selector: {matchLabels: {app: a}}\n  rules: [{}]"), "AuthorizationPolicy foo/p: an ALLOW policy for a whole namespace cannot be combined with the policies of"),
    ];
    for (yaml, expected) in cases {
        let out = convert("refused.yaml", &yaml, &[]);
        assert_eq!(out.code, 1, "{yaml}: {}", out.stdout);
        assert!(
            out.stderr.contains(expected),
            "{yaml}\nwanted: {expected}\ngot: {}",
            out.stderr
        );
        assert!(
            out.stdout.is_empty(),
            "printed despite the error: {}",
            out.stdout
        );
    }
}

#[test]
fn convert_keeps_istio_meaning_of_empty_policies() {
    // An ALLOW policy without rules allows nothing: everything is denied.
    let deny_all = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: foo}\nspec: {}\n";
    let out = convert("deny-all.yaml", deny_all, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = plugin_config("deny-all", &out.stdout);
    assert!(
        text.contains("rules: []")
            && text.contains("unmatched: deny")
            && text.contains("providers: []"),
        "{text}"
    );
    // `rules: [{}]` matches every request: everything is allowed.
    let allow_all = deny_all.replace("spec: {}", "spec:\n  rules: [{}]");
    let out = convert("allow-all.yaml", &allow_all, &[]);
    let text = plugin_config("allow-all", &out.stdout);
    assert!(
        text.contains("allowAnonymous: true") && !text.contains("match:"),
        "{text}"
    );
}

/// examples/migration.yaml is what the converter writes for examples/migration/istio-policies.yaml:
/// regenerate it with the command in its header when the converter changes.
#[test]
fn the_migration_example_is_the_converters_output() {
    let input = repo().join("examples/migration/istio-policies.yaml");
    let out = run(&["convert", input.to_str().unwrap()], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let committed = std::fs::read_to_string(repo().join("examples/migration.yaml")).unwrap();
    let body: String = committed
        .lines()
        .skip_while(|line| line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(body, out.stdout, "regenerate examples/migration.yaml");
}

#[test]
fn convert_writes_istio_hosts_with_ports_as_the_host() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: h, namespace: foo}\nspec:\n  rules:\n  - to:\n    - operation: {hosts: [\"httpbin.foo\", \"httpbin.foo:*\", \"api.example.com:8443\", \"[::1]:80\"]}\n";
    let out = convert("hosts.yaml", yaml, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = plugin_config("hosts", &out.stdout);
    assert!(
        text.contains(
            "hosts:\n        - httpbin.foo\n        - api.example.com\n        - \"[::1]\"\n"
        ),
        "{text}"
    );
    assert!(out.stderr.contains(
        "spec.rules[0].to[0].operation.hosts: api.example.com:8443: matched as api.example.com, whatever the port in :authority"
    ), "{}", out.stderr);
}

/// Root-namespace policies are the mesh baseline: one plugin in the root namespace for every
/// sidecar, first by `priority`, handing the token on; the namespace's plugin keeps the
/// baseline's providers and deny rules (a request must pass both) and removes the token.
#[test]
fn convert_writes_root_namespace_policies_as_the_mesh_baseline() {
    let yaml = |root: &str| {
        format!(
            r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: corp, namespace: {root}}}
spec:
  jwtRules:
  - issuer: https://login.example.com/realms/corp
    jwksUri: https://login.example.com/realms/corp/certs
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-debug, namespace: {root}}}
spec:
  action: DENY
  rules:
  - to:
    - operation: {{paths: ["/debug/*"]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  rules:
  - to:
    - operation: {{methods: [GET]}}
    when:
    - {{key: "request.auth.claims[iss]", values: ["https://login.example.com/realms/corp"]}}
"#
        )
    };
    for (root, flags) in [
        ("istio-system", vec!["--check"]),
        (
            "mesh-root",
            vec!["--check", "--root-namespace", "mesh-root"],
        ),
    ] {
        let out = convert(&format!("baseline-{root}.yaml"), &yaml(root), &flags);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let docs = yaml_rust2::YamlLoader::load_from_str(&out.stdout).unwrap();
        let plugins: Vec<&yaml_rust2::Yaml> = docs
            .iter()
            .filter(|d| d["kind"].as_str() == Some("WasmPlugin"))
            .collect();
        let names: Vec<(&str, &str)> = plugins
            .iter()
            .map(|d| {
                (
                    d["metadata"]["namespace"].as_str().unwrap(),
                    d["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [(root, "mesh-oauth-baseline"), ("shop", "mesh-oauth-orders")]
        );
        let (baseline, orders) = (plugins[0], plugins[1]);
        assert!(baseline["spec"]["selector"].is_badvalue(), "every sidecar");
        assert_eq!(baseline["spec"]["priority"].as_i64(), Some(1000));
        assert_eq!(
            baseline["spec"]["match"][0]["mode"].as_str(),
            Some("SERVER")
        );
        assert!(
            orders["spec"]["priority"].is_badvalue(),
            "runs after the baseline"
        );
        let forwards = |plugin: &yaml_rust2::Yaml| {
            plugin["spec"]["pluginConfig"]["providers"][0]["forwardOriginalToken"].as_bool()
        };
        assert_eq!(forwards(baseline), Some(true));
        assert_eq!(forwards(orders), None, "Istio's default: removed upstream");
        let rules = |plugin: &yaml_rust2::Yaml| -> Vec<String> {
            plugin["spec"]["pluginConfig"]["rules"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(rules(baseline), [format!("{root}/no-debug[0]")]);
        assert_eq!(
            rules(orders),
            [format!("{root}/no-debug[0]"), "shop/orders[0]".to_string()]
        );
        assert!(
            out.stderr.contains(&format!(
                "note: WasmPlugin {root}/mesh-oauth-baseline: forwardOriginalToken: true for https://login.example.com/realms/corp: the baseline hands the token on"
            )),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!(
                "ok: WasmPlugin {root}/mesh-oauth-baseline: 1 provider, 1 rule"
            )),
            "{}",
            out.stderr
        );
    }
    // Without the flag, policies in mesh-root are that namespace's only: the workload in shop
    // gets no provider from them, and its plugin could never verify a token.
    let out = convert("baseline-default.yaml", &yaml("mesh-root"), &[]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr.contains("providers: is empty") && out.stderr.contains("shop/orders"),
        "{}",
        out.stderr
    );
}

#[test]
fn convert_makes_a_plugin_per_selection_and_shares_namespace_denies() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-plaintext, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source: {notPrincipals: ["*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-frontend, namespace: foo}
spec:
  selector: {matchLabels: {app: api}}
  rules:
  - from:
    - source: {namespaces: [frontend]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway, namespace: foo}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}
  rules:
  - to:
    - operation: {paths: ["/public/*"]}
"#;
    let out = convert("selections.yaml", yaml, &["--check"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let docs = yaml_rust2::YamlLoader::load_from_str(&out.stdout).unwrap();
    let names: Vec<&str> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["mesh-oauth", "mesh-oauth-api", "mesh-oauth-ingress"]
    );
    let rule_names = |doc: &yaml_rust2::Yaml| -> Vec<String> {
        let rules = doc["spec"]["pluginConfig"]["rules"].as_vec().unwrap();
        rules
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect()
    };
    // The namespace's DENY runs in its own plugin on every workload, and is part of each
    // narrower plugin too, before that plugin's ALLOW rules.
    assert_eq!(rule_names(&docs[0]), ["foo/no-plaintext[0]"]);
    assert_eq!(
        docs[0]["spec"]["pluginConfig"]["unmatched"].as_str(),
        Some("anonymous")
    );
    assert_eq!(
        rule_names(&docs[1]),
        ["foo/no-plaintext[0]", "foo/only-frontend[0]"]
    );
    assert_eq!(
        docs[1]["spec"]["pluginConfig"]["unmatched"].as_str(),
        Some("deny")
    );
    assert_eq!(
        docs[1]["spec"]["selector"]["matchLabels"]["app"].as_str(),
        Some("api")
    );
    assert_eq!(
        docs[2]["spec"]["targetRefs"][0]["name"].as_str(),
        Some("ingress")
    );
    assert!(
        docs[2]["spec"]["match"].is_badvalue(),
        "targetRefs plugins take no match"
    );
    for plugin in [
        "foo/mesh-oauth: 0 providers, 1 rule",
        "foo/mesh-oauth-api: 0 providers, 2 rules",
        "foo/mesh-oauth-ingress: 0 providers, 2 rules",
    ] {
        assert!(
            out.stderr.contains(&format!("ok: WasmPlugin {plugin}")),
            "{}",
            out.stderr
        );
    }
}

// ---- sender-constrained tokens ----------------------------------------------------------

/// A DPoP client: an Ed25519 key of its own, proofs signed here with ring.
struct DpopClient(Ed25519KeyPair);

impl DpopClient {
    fn new() -> DpopClient {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        DpopClient(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn x(&self) -> String {
        b64(self.0.public_key().as_ref())
    }

    /// RFC 7638, computed here independently of the filter.
    fn jkt(&self) -> String {
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, self.x());
        b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    fn proof(&self, htm: &str, htu: &str, token: &str) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA",
                            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": self.x()}});
        let ath = b64(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        let input = signing_input(
            header,
            &json!({"jti": "proof-1", "htm": htm, "htu": htu, "iat": NOW, "ath": ath}),
        );
        format!("{input}.{}", b64(self.0.sign(input.as_bytes()).as_ref()))
    }
}

#[test]
fn explain_shows_each_dpop_proof_check() {
    let idp = idp();
    let client = DpopClient::new();
    let config = json!({
        "providers": [{"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks",
                       "dpop": {"mode": "required", "algorithms": ["EdDSA", "ES256"]}}]
    });
    let token = idp.rs256(RSA_KID, &claims(json!({"cnf": {"jkt": client.jkt()}})));
    let proof = client.proof("GET", "https://localhost/orders/7", &token);
    let args = ["--path", "/orders/7", "--dpop", proof.as_str()];
    let out = idp.explain_with("dpop-ok", &config, &token, &args);
    assert!(out.stdout.contains(
        "   DPoP proof checks passed: well-formed JWS, typ dpop+jwt, alg accepted, public jwk, signature, jti, htm, htu, iat, ath"
    ), "{}", out.stdout);
    assert!(
        out.stdout.contains("   bound to its sender: pass"),
        "{}",
        out.stdout
    );
    assert!(
        answer(&out)[0].starts_with("final: allowed"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&proof), "the proof is never printed");

    let wrong_method = client.proof("POST", "https://localhost/orders/7", &token);
    let args = ["--path", "/orders/7", "--dpop", wrong_method.as_str()];
    let out = idp.explain_with("dpop-htm", &config, &token, &args);
    assert!(
        out.stdout
            .contains("   DPoP proof: FAILED: DPoP proof htm does not match the request method"),
        "{}",
        out.stdout
    );
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (dpop_htm)");
    assert_eq!(
        header(&answer, "www-authenticate"),
        Some("DPoP realm=\"localhost\", algs=\"ES256 EdDSA\", error=\"invalid_dpop_proof\", error_description=\"DPoP proof htm does not match the request method\"")
    );

    // The same token as a bearer token: a downgrade.
    let out = idp.explain_with("dpop-bearer", &config, &token, &["--path", "/orders/7"]);
    assert!(
        out.stdout.contains("   refused with 401 (dpop_downgrade)"),
        "{}",
        out.stdout
    );
}

#[test]
fn explain_shows_the_step_up_checks_and_challenge() {
    let idp = idp();
    let config = json!({
        "providers": [{"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks"}],
        "rules": [{"name": "payments", "match": {"paths": ["/pay"]},
                   "requires": {"acrValues": ["urn:mfa"], "maxAuthAgeSeconds": 300}}]
    });
    let token = idp.rs256(
        RSA_KID,
        &claims(json!({"acr": "pwd", "auth_time": NOW - 600})),
    );
    let out = idp.explain_with("step-up", &config, &token, &["--path", "/pay"]);
    assert!(
        out.stdout
            .contains("   acr: one of [urn:mfa], the token has \"pwd\": FAIL"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("   auth_time 600 s ago, at most 300: FAIL"),
        "{}",
        out.stdout
    );
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (step_up)");
    assert_eq!(
        header(&answer, "www-authenticate"),
        Some("Bearer realm=\"localhost\", error=\"insufficient_user_authentication\", error_description=\"a stronger or more recent user authentication is required\", acr_values=\"urn:mfa\", max_age=300")
    );
}

#[test]
fn explain_shows_a_rules_audiences() {
    let idp = idp();
    let config = json!({
        "providers": [{"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks"}],
        "rules": [{"name": "billing", "match": {"paths": ["/billing"]},
                   "requires": {"audiences": ["billing"]}}]
    });
    let token = idp.rs256(RSA_KID, &claims(json!({"aud": ["orders", "web"]})));
    let out = idp.explain_with("audiences", &config, &token, &["--path", "/billing"]);
    assert!(
        out.stdout
            .contains("   audiences: one of [billing], the token has [\"orders\",\"web\"]: FAIL"),
        "{}",
        out.stdout
    );
    let answer = answer(&out);
    assert_eq!(answer[0], "final: 401 Unauthorized (audience)");
}

#[test]
fn explain_shows_what_the_client_sees_and_the_reason_it_is_not_told() {
    let idp = idp();
    let mut config = idp.config();
    config["answers"] = json!("minimal");
    let expired = idp.rs256(
        RSA_KID,
        &claims(json!({"exp": NOW - 120, "scope": "orders:read"})),
    );
    let out = idp.explain_with("minimal", &config, &expired, &["--path", "/orders/1"]);
    let minimal = answer(&out);
    assert_eq!(minimal[0], "final: 401 Unauthorized (expired)");
    assert!(
        minimal
            .contains(&"  www-authenticate: Bearer realm=\"localhost\", error=\"invalid_token\""),
        "{minimal:?}"
    );
    assert!(minimal.contains(&"  body: (none)"), "{minimal:?}");
    assert!(
        minimal.iter().any(|l| l.contains(
            "answers: minimal: the client is not told why; the audit line and metrics say expired"
        )),
        "{minimal:?}"
    );
    // A gRPC client reads a status; a browser is sent to log in.
    config["answers"] = json!("full");
    config["denyWith"] = json!({"login": {"url": "https://login.example.com/start"}});
    let grpc = idp.explain_with(
        "grpc",
        &config,
        &expired,
        &[
            "--path",
            "/orders/1",
            "--request-header",
            "content-type: application/grpc",
        ],
    );
    assert!(
        answer(&grpc).contains(&"  gRPC: grpc-status 16, grpc-message: token is expired"),
        "{}",
        grpc.stdout
    );
    let browser = idp.explain_with(
        "browser",
        &config,
        &expired,
        &[
            "--path",
            "/orders/1?x=1",
            "--request-header",
            "accept: text/html",
        ],
    );
    let redirect = answer(&browser);
    assert_eq!(redirect[0], "final: 302 Found (expired)", "{redirect:?}");
    assert!(
        redirect.contains(&"  location: https://login.example.com/start?return_to=/orders/1"),
        "{redirect:?}"
    );
    // The audit line keeps the refusal's own status, whatever the client is shown.
    assert!(
        redirect.contains(&"  the refusal's own status, in the audit line and metrics: 401"),
        "{redirect:?}"
    );
}

/// Without `--token` the request carries only the headers given: a token sent in one is found
/// where the filter looks and its provider gets `--jwks`; without any, the filter's 401.
#[test]
fn explain_takes_the_token_from_the_request_headers_or_none() {
    let idp = idp();
    let token = idp.rs256(RSA_KID, &claims(json!({})));
    let config = scratch("headers-only.json", &idp.config().to_string());
    let jwks = scratch("headers-only.jwks.json", &idp.rsa_jwks());
    let now = NOW.to_string();
    let base = [
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
        "--now",
        &now,
        "--path",
        "/orders/7",
    ];
    let header = format!("Authorization: Bearer {token}");
    let out = run(&[&base[..], &["--request-header", &header]].concat(), None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_secret_free(&out.stdout, &token);
    assert_eq!(
        answer(&out)[0],
        "final: allowed: the request goes on upstream",
        "{}",
        out.stdout
    );
    let out = run(&base, None);
    assert_eq!(answer(&out)[0], "final: 401 Unauthorized (missing)");
    assert!(out.stdout.contains("token: none given"), "{}", out.stdout);
}

#[test]
fn explain_names_the_tenant_an_issuer_pattern_matched() {
    let idp = idp();
    let config = json!({"providers": [{"name": "entra",
        "issuerPattern": "https://login.microsoftonline.com/{tenant}/v2.0",
        "tenants": ["t1"], "jwksUri": "https://login.microsoftonline.com/common/discovery/v2.0/keys"}]});
    let iss = "https://login.microsoftonline.com/t1/v2.0";
    let good = idp.rs256(RSA_KID, &claims(json!({"iss": iss, "tid": "t1"})));
    let out = idp.explain_with("tenant", &config, &good, &[]);
    assert!(
        out.stdout.contains("issuerPattern \"https://login.microsoftonline.com/{tenant}/v2.0\" matches with tenant \"t1\": selected"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("tenant \"t1\" is listed; the token's tid is \"t1\""),
        "{}",
        out.stdout
    );
    assert_eq!(
        answer(&out)[0],
        "final: allowed: the request goes on upstream"
    );
    let mismatch = idp.rs256(RSA_KID, &claims(json!({"iss": iss, "tid": "t9"})));
    let out = idp.explain_with("tid", &config, &mismatch, &[]);
    assert!(
        out.stdout
            .contains("token tenant (tid) does not match its issuer: refused with 401"),
        "{}",
        out.stdout
    );
    assert_eq!(answer(&out)[0], "final: 401 Unauthorized (tenant)");
    let foreign = idp.rs256(
        RSA_KID,
        &claims(json!({"iss": "https://login.microsoftonline.com/t2/v2.0", "tid": "t2"})),
    );
    let out = idp.explain_with("foreign", &config, &foreign, &[]);
    assert!(
        out.stdout.contains(
            "tenant \"t2\" is not among the provider's tenants: refused with 401 (tenant)"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn explain_says_a_public_rule_ignored_an_invalid_token() {
    let idp = idp();
    let mut config = idp.config();
    config["rules"][0]["invalidToken"] = json!("ignore");
    let expired = idp.rs256(RSA_KID, &claims(json!({"exp": NOW - 120})));
    let out = idp.explain_with("ignored", &config, &expired, &["--path", "/healthz"]);
    let answer = answer(&out);
    assert_eq!(
        answer[0], "final: allowed: the request goes on upstream",
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("invalidToken: \"ignore\": the token would be refused (expired); rule health lets the request go on as anonymous"),
        "{}",
        out.stdout
    );
}

#[test]
fn convert_folds_entra_tenants_into_one_issuer_pattern() {
    let rule = |tenant: &str| {
        format!("  - issuer: https://login.microsoftonline.com/{tenant}/v2.0\n    jwksUri: https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys\n    audiences: [api://orders]\n")
    };
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: entra, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: orders}}}}\n  jwtRules:\n{}{}",
        rule("t1"),
        rule("t2")
    );
    let out = convert("entra.yaml", &yaml, &["--check"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("issuerPattern: \"https://login.microsoftonline.com/{tenant}/v2.0\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("jwksUri: \"https://login.microsoftonline.com/common/discovery/v2.0/keys\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("tenants:\n          - t1\n          - t2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("2 jwtRules for the Entra tenants t1, t2 became one provider \"entra\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("ok: WasmPlugin shop/mesh-oauth-orders: 1 provider"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("answers:"), "{}", out.stdout);
    let minimal = convert("entra-minimal.yaml", &yaml, &["--check", "--minimal"]);
    assert!(
        minimal.stdout.contains("    answers: minimal\n"),
        "{}",
        minimal.stdout
    );
    // Rules that differ in more than the tenant stay apart.
    let different = yaml.replacen("audiences: [api://orders]", "audiences: [api://other]", 1);
    let out = convert("entra-apart.yaml", &different, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains("issuerPattern"), "{}", out.stdout);
}
