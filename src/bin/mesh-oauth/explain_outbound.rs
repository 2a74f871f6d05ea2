//! `explain` for a configuration with `outbound` entries: the outbound flow itself decides the
//! request, with an empty token cache (what the first such request meets), and this prints
//! that decision. Secrets, assertions and tokens are named, never shown.

use crate::explain::Options;
use mesh_oauth::config::{Config, Grant, HttpTarget};
use mesh_oauth::keystore::MemoryShared;
use mesh_oauth::outbound::answer::TokenAnswer;
use mesh_oauth::outbound::{Call, Context, Flow, HeaderEdit, OutboundRequest, Step};
use std::fmt::Write;

/// Form fields that carry a credential: shown by what they hold.
const HIDDEN: &[(&str, &str)] = &[
    ("client_secret", "(the client secret)"),
    ("client_assertion", "(a signed private_key_jwt assertion)"),
    ("subject_token", "(the request's bearer token)"),
    (
        "actor_token",
        "(the workload's own client-credentials token)",
    ),
];

pub fn explain(config: &Config, options: &Options) -> Result<String, String> {
    let mut flow = Flow::new(
        config,
        &config.outbound,
        config.limits.max_outbound_tokens,
        None,
    );
    let mut headers: Vec<(String, String)> = options.headers.clone();
    if let Some(token) = &options.token {
        headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let request = OutboundRequest {
        method: &options.method,
        path: &options.path,
        authority: &options.host,
        headers: &pairs,
        peer: &options.peer,
        arrived_ms: options.now_ms,
    };
    let issuers: Vec<String> = config.providers.iter().map(|p| p.issuer.clone()).collect();
    let endpoint = |provider: usize| {
        issuers.get(provider).map(|issuer| HttpTarget {
            url: format!("the token_endpoint of {issuer}'s discovery document"),
            cluster: String::new(),
            authority: String::new(),
            path: String::new(),
        })
    };
    let store = MemoryShared::default();
    let cx = Context {
        store: &store,
        now_ms: options.now_ms,
        token_endpoint: &endpoint,
        jti: &|| [0; 16],
        jitter: 0.5,
    };
    let mut out = format!(
        "outbound request: {} {}{}\n",
        options.method, options.host, options.path
    );
    let selected = flow
        .select(&request)
        .and_then(|index| Some((index, config.outbound.entries.get(index)?)));
    let actor_first = match selected {
        None => {
            out.push_str("entry: none matches: the request goes on untouched\n");
            return Ok(out);
        }
        Some((index, entry)) => {
            let client = entry.grant.client();
            let grant = match &entry.grant {
                Grant::ClientCredentials(_) => "client credentials",
                Grant::TokenExchange(_) => "token exchange (RFC 8693)",
            };
            let _ = writeln!(
                out,
                "entry: outbound[{index}] \"{}\": {grant}, client {} ({}), token in {}",
                entry.name,
                client.client_id,
                client.auth.summary(),
                entry.header
            );
            matches!(&entry.grant, Grant::TokenExchange(x) if x.actor_client_credentials)
        }
    };
    match flow.on_request(&request, &cx) {
        Step::Respond {
            status,
            reason,
            retry_after_seconds,
            ..
        } => {
            let retry = retry_after_seconds
                .map(|s| format!(", Retry-After: {s}"))
                .unwrap_or_default();
            let _ = writeln!(out, "decision: {status} {reason}{retry}, before any call");
        }
        Step::Call(call) => {
            let _ = writeln!(
                out,
                "decision: with no token cached yet, hold the request and POST to {}:",
                call.target.url
            );
            print_call(&mut out, &call);
            if actor_first {
                // The flow's next step once the actor's own token is in (a stand-in here).
                let answer =
                    br#"{"access_token":"stand-in","token_type":"Bearer","expires_in":300}"#;
                let next = flow.on_token_answer(
                    call.pending,
                    &TokenAnswer {
                        status: Some(200),
                        body: answer,
                    },
                    &cx,
                );
                if let Step::Call(exchange) = next {
                    out.push_str("then, with that token as the actor, POST:\n");
                    print_call(&mut out, &exchange);
                }
            }
            out.push_str("then: the issued token is attached and cached for every worker\n");
        }
        Step::Continue { edits, .. } => {
            for edit in edits {
                match edit {
                    HeaderEdit::Set(name, _) => {
                        let _ = writeln!(out, "decision: set {name} (the cached token)");
                    }
                    HeaderEdit::Remove(name) => {
                        let _ = writeln!(out, "decision: remove {name}");
                    }
                }
            }
        }
        Step::Wait { .. } | Step::Untouched | Step::Done | Step::RenewalFailed { .. } => {
            out.push_str("decision: wait for the token endpoint\n");
        }
    }
    Ok(out)
}

/// A call's form fields, credentials named rather than shown.
fn print_call(out: &mut String, call: &Call) {
    for pair in call.body.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name);
        let shown = HIDDEN
            .iter()
            .find(|(hidden, _)| *hidden == name)
            .map_or_else(|| decode(value), |(_, what)| (*what).to_owned());
        let _ = writeln!(out, "  {name}={shown}");
    }
    if call.headers.iter().any(|(n, _)| *n == "authorization") {
        out.push_str("  (client authentication: HTTP Basic with the client id and secret)\n");
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
