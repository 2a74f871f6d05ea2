//! The `:path` normaliser that rule matching relies on: its output is a canonical path that
//! normalises to itself, so no second spelling of a resource slips past a rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(normal) = path::normalize(raw) else {
        return;
    };
    assert!(normal.starts_with('/'), "not absolute: {normal:?}");
    assert!(!normal.contains("//"), "repeated slash: {normal:?}");
    assert!(
        !normal
            .split('/')
            .any(|segment| segment == "." || segment == ".."),
        "dot segment: {normal:?}"
    );
    assert_eq!(
        path::normalize(&normal).as_deref(),
        Ok(&*normal),
        "not idempotent"
    );
});
