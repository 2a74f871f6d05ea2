//! Every refusal reason is a metric name and an audit `reason` operators alert on: each one the
//! filter can give must be documented where operators look for it.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mesh_oauth::reason::Reason;
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
