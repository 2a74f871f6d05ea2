//! The configuration reference, `docs/configuration.md`, kept honest against the parser:
//! every field name the parser in `src/config/` accepts must be documented there, every JSON example on the
//! page must be a configuration the parser accepts, and nothing points outside the repository.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const REFERENCE: &str = "docs/configuration.md";
/// The parser: every file of the module but its unit tests.
const PARSER: &str = "src/config/";
/// The field lists that are named constants rather than inline `&[...]` arrays.
/// `MATCH_FIELDS` is a table whose rows start with the field name.
const FIELD_CONSTS: [&str; 8] = [
    "CONFIG_FIELDS",
    "PROVIDER_FIELDS",
    "MATCH_FIELDS",
    "LOGIN_FIELDS",
    "OPERATION_FIELDS",
    "OUTBOUND_ENTRY_FIELDS",
    "OUTBOUND_CLIENT_FIELDS",
    "OUTBOUND_EXCHANGE_FIELDS",
];
/// Far fewer than the parser accepts: extraction that silently finds (almost) nothing fails.
const MIN_FIELDS: usize = 40;
/// `Object::new` is called for each kind of object in the configuration.
const MIN_OBJECT_LISTS: usize = 10;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// --- Rust source, by simple string processing --------------------------------------------------

/// The source with `//` comments blanked out (string literals respected), so that neither a
/// commented-out field nor a quote in a comment is mistaken for a field name. Offsets are kept.
fn strip_line_comments(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        if let Some(end) = literal_end(bytes, i) {
            i = end;
            continue;
        }
        match bytes[i] {
            // A char literal such as '"' must not open a string.
            b'\'' if i + 2 < bytes.len() && bytes[i + 2] == b'\'' && bytes[i + 1] != b'\\' => {
                i += 3
            }
            b'\'' if i + 3 < bytes.len() && bytes[i + 1] == b'\\' && bytes[i + 3] == b'\'' => {
                i += 4
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    // Only ASCII bytes were replaced by ASCII spaces, so the text is still UTF-8.
    String::from_utf8(out).unwrap()
}

/// When a string literal (`"..."`, `r"..."`, `r#"..."#`) starts at `start`, the index just
/// past its end.
fn literal_end(bytes: &[u8], start: usize) -> Option<usize> {
    let unterminated =
        || -> ! { panic!("unterminated string literal at byte {start} of {PARSER}") };
    match bytes[start] {
        b'"' => {
            let mut i = start + 1;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    _ => i += 1,
                }
            }
            unterminated()
        }
        b'r' if start == 0 || !is_identifier(bytes[start - 1]) => {
            let hashes = bytes[start + 1..]
                .iter()
                .take_while(|b| **b == b'#')
                .count();
            let open = start + 1 + hashes;
            if bytes.get(open) != Some(&b'"') {
                return None;
            }
            let mut closing = vec![b'"'];
            closing.extend(std::iter::repeat_n(b'#', hashes));
            let end = bytes[open + 1..]
                .windows(closing.len())
                .position(|window| window == closing.as_slice())
                .unwrap_or_else(|| unterminated());
            Some(open + 1 + end + closing.len())
        }
        _ => None,
    }
}

fn is_identifier(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The index of the bracket that closes the one at `open` (`(`/`)` or `[`/`]`), skipping
/// string literals.
fn matching_close(text: &str, open: usize) -> usize {
    let bytes = text.as_bytes();
    let (opener, closer) = match bytes[open] {
        b'(' => (b'(', b')'),
        b'[' => (b'[', b']'),
        other => panic!("not an opening bracket: {}", other as char),
    };
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        if let Some(end) = literal_end(bytes, i) {
            i = end;
            continue;
        }
        match bytes[i] {
            b if b == opener => depth += 1,
            b if b == closer => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced {} at byte {open} of {PARSER}", opener as char);
}

/// The contents of the plain string literals in `text` (field names have no escapes).
fn string_literals(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match literal_end(bytes, i) {
            Some(end) => {
                let literal = &text[i..end];
                assert!(
                    literal.starts_with('"') && !literal.contains('\\'),
                    "unexpected literal in a field list of {PARSER}: {literal}"
                );
                found.push(literal[1..literal.len() - 1].to_owned());
                i = end;
            }
            None => i += 1,
        }
    }
    found
}

/// The contents of the first `&[ ... ]` in `text`, if any.
fn slice_literal(text: &str) -> Option<&str> {
    let start = text.find("&[")? + 1;
    let end = matching_close(text, start);
    Some(&text[start + 1..end])
}

/// The names in `const <name>: &[&str] = &[ ... ];` (or a table of rows that start with a name,
/// where the name is the row's only string).
fn const_fields(source: &str, name: &str) -> Vec<String> {
    let declaration = format!("const {name}: &[");
    let at = source
        .find(&declaration)
        .unwrap_or_else(|| panic!("{PARSER} no longer declares `{declaration}`"));
    let list = slice_literal(&source[at + declaration.len()..])
        .unwrap_or_else(|| panic!("`{name}` in {PARSER} is not a `&[...]` list"));
    string_literals(list)
}

/// The parser proper: the files of `src/config/`, without its unit tests, in name order.
fn parser_source() -> String {
    let dir = repo().join(PARSER);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .filter(|path| path.file_name().is_some_and(|n| n != "tests.rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{PARSER} holds {files:?}");
    let source: Vec<String> = files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    strip_line_comments(&source.join("\n"))
}

/// Every field name the parser accepts: the names in the field constants and in the list of
/// every `Object::new(value, path, &[...])` call. Returns the names and how many lists were read.
fn accepted_fields() -> (BTreeSet<String>, usize) {
    let source = parser_source();
    let mut fields = BTreeSet::new();
    let mut lists = 0;
    for name in FIELD_CONSTS {
        let names = const_fields(&source, name);
        assert!(!names.is_empty(), "`{name}` in {PARSER} lists no fields");
        fields.extend(names);
    }
    let call = "Object::new(";
    let mut from = 0;
    while let Some(found) = source[from..].find(call) {
        let open = from + found + call.len() - 1;
        let close = matching_close(&source, open);
        let arguments = &source[open + 1..close];
        let line = source[..open].lines().count();
        let names = if let Some(list) = slice_literal(arguments) {
            string_literals(list)
        } else if let Some(name) = FIELD_CONSTS.iter().find(|name| arguments.contains(*name)) {
            const_fields(&source, name)
        } else {
            panic!(
                "{PARSER}:{line}: `Object::new({})` takes its fields from neither an inline \
                 `&[...]` list nor one of {FIELD_CONSTS:?}; teach this test where they are",
                arguments.trim()
            );
        };
        assert!(
            !names.is_empty(),
            "{PARSER}:{line}: found no field names in `Object::new({})`",
            arguments.trim()
        );
        for name in &names {
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{PARSER}:{line}: {name:?} does not look like a field name"
            );
        }
        fields.extend(names);
        lists += 1;
        from = close;
    }
    (fields, lists)
}

#[test]
fn every_accepted_field_is_documented() {
    let (fields, lists) = accepted_fields();
    assert!(
        lists >= MIN_OBJECT_LISTS,
        "only {lists} `Object::new` calls found in {PARSER}; the extraction is broken"
    );
    assert!(
        fields.len() >= MIN_FIELDS,
        "only {} field names found in {PARSER} ({fields:?}); the extraction is broken",
        fields.len()
    );
    for known in [
        "providers",
        "jwksUri",
        "maxLifetimeSeconds",
        "paths",
        "anyOf",
    ] {
        assert!(
            fields.contains(known),
            "{known} not extracted from {PARSER}"
        );
    }
    let reference = read(REFERENCE);
    let missing: Vec<&String> = fields
        .iter()
        .filter(|name| !reference.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "{REFERENCE} does not document these fields {PARSER} accepts (as `name`): {missing:?}"
    );
}

// --- Markdown ---------------------------------------------------------------------------------

struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    text: String,
}

/// The fenced code blocks (```` ``` ````, possibly indented) of a Markdown page.
fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Block {
                        line: index + 1,
                        info: info.trim().to_owned(),
                        text: String::new(),
                    });
                }
            }
            Some(block) => {
                if trimmed.trim_end() == "```" {
                    blocks.extend(open.take());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    if let Some(block) = open {
        panic!("{REFERENCE}:{}: code block is never closed", block.line);
    }
    blocks
}

#[test]
fn every_json_example_is_a_valid_configuration() {
    let reference = read(REFERENCE);
    let blocks = fenced_blocks(&reference);
    let mut checked = 0;
    for block in &blocks {
        let at = format!("{REFERENCE}:{}", block.line);
        if block.info != "json" {
            // JSON fenced under another name would escape the check below.
            assert!(
                !block.text.trim_start().starts_with('{'),
                "{at}: a JSON example must be fenced as ```json (found ```{})",
                block.info
            );
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&block.text)
            .unwrap_or_else(|e| panic!("{at}: not valid JSON: {e}"));
        assert!(
            value.get("providers").is_some(),
            "{at}: not a complete plugin configuration (an object with `providers`)"
        );
        // Secrets come from the VM's environment: the check stands one in for each variable.
        let env = |_: &str| Some("example-secret".to_owned());
        let configured = mesh_oauth::config::parse_with_env(&block.text, &env)
            .and_then(mesh_oauth::compile::compile);
        if let Err(e) = configured {
            panic!("{at}: the example is refused by the parser: {e}");
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} ```json examples found in {REFERENCE}"
    );
}

// --- No references outside the repository -------------------------------------------------------

fn files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

#[test]
fn nothing_points_outside_the_repository() {
    let mut files = vec![repo().join("README.md")];
    files_under(&repo().join("docs"), &mut files);
    files_under(&repo().join("src"), &mut files);
    assert!(files.iter().any(|f| f.ends_with(REFERENCE)));
    let offending: Vec<String> = files
        .iter()
        .filter(|path| {
            std::fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).contains("../shared"))
                .unwrap_or(false)
        })
        .map(|path| {
            path.strip_prefix(repo())
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect();
    assert!(
        offending.is_empty(),
        "these files mention `../shared`, which is not part of the repository: {offending:?}"
    );
}
