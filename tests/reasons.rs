//! Every refusal reason is a metric name and an audit `reason` operators alert on: each one the
//! filter can give must be documented where operators look for it.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mesh_oauth::reason::{LoginReason, Reason};
use std::path::Path;

const DOCUMENTS: [&str; 2] = ["README.md", "docs/configuration.md"];

#[test]
fn every_reason_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs: Vec<String> = DOCUMENTS
        .iter()
        .map(|doc| std::fs::read_to_string(root.join(doc)).unwrap())
        .collect();
    let undocumented: Vec<&str> = Reason::ALL
        .iter()
        .map(|reason| reason.name())
        .filter(|name| {
            let quoted = format!("`{name}`");
            !docs.iter().any(|doc| doc.contains(&quoted))
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "reasons missing from {DOCUMENTS:?}: {undocumented:?}"
    );
    assert!(Reason::ALL.len() >= 40, "Reason::ALL lost its variants");
}

/// Login reasons are metric segments (`login.failed.<reason>`, `session.refused.<reason>`) and
/// audit `reason`s too: each is listed in the "Login reasons" table of the configuration
/// reference (a name that happens to be documented elsewhere, e.g. the token's `expired`, does
/// not count).
#[test]
fn every_login_reason_is_in_the_login_reasons_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let start = reference
        .find("### Login reasons")
        .expect("a \"Login reasons\" section in docs/configuration.md");
    let section = &reference[start..];
    let end = section[3..].find("\n#").map_or(section.len(), |at| at + 3);
    let table = &section[..end];
    let missing: Vec<&str> = LoginReason::ALL
        .iter()
        .map(|reason| reason.name())
        .filter(|name| !table.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "login reasons missing from the table: {missing:?}"
    );
    assert!(
        LoginReason::ALL.len() >= 40,
        "LoginReason::ALL lost its variants"
    );
}
