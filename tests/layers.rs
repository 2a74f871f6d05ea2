//! The map stays true: `src/config/` (the contract) imports no stage, so no circle between the
//! configuration and the stages can come back; and README's table of `src/` names every file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What the contract may import: itself and the vocabulary that imports nothing of the crate.
const CONTRACT_MAY_IMPORT: &[&str] = &["config", "alg", "json"];
const VOCABULARY: &[&str] = &["src/alg.rs", "src/json.rs"];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// `src/…` as written in the README, from a path under the repository.
fn relative(path: &Path) -> String {
    path.strip_prefix(ROOT)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// The crate modules a source file names (`crate::policy::…`, `crate::{keys, sender}`),
/// comments left out.
fn crate_modules(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut modules = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names = match rest.strip_prefix('{') {
            Some(group) => group.split('}').next().unwrap_or_default().to_owned(),
            None => rest.to_owned(),
        };
        for name in names.split(',') {
            let module: String = name
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !module.is_empty() {
                modules.push(module);
            }
            if !rest.starts_with('{') {
                break;
            }
        }
    }
    modules
}

#[test]
fn the_contract_imports_no_stage() {
    let files = rust_files(&Path::new(ROOT).join("src/config"));
    assert!(files.len() >= 5, "src/config/ not found");
    let mut offences = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        for module in crate_modules(&source) {
            if !CONTRACT_MAY_IMPORT.contains(&module.as_str()) {
                offences.push(format!("{}: crate::{module}", relative(file)));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "src/config/ is the contract: it parses into plain data and imports no stage (what \
         needs a stage belongs in src/compile.rs):\n{}",
        offences.join("\n")
    );
    // Through the vocabulary no circle can come back either.
    for file in VOCABULARY {
        let source = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        let imports = crate_modules(&source);
        assert!(imports.is_empty(), "{file} imports {imports:?}");
    }
}

#[test]
fn the_import_check_sees_every_form() {
    let source = "use crate::config::Rule;\nuse crate::{keys::KeySet, sender};\n\
                  // crate::policy in a comment\nlet x = crate::policy::host_matches(h, a);";
    assert_eq!(
        crate_modules(source),
        ["config", "keys", "sender", "policy"]
    );
}

/// The rows of README's table of `src/`: each row's backquoted names.
fn readme_rows() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let start = readme
        .find("| layer | file | what |")
        .expect("README.md has the table of src/ (| layer | file | what |)");
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|row| {
            row.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A file is named by its whole path, or by its name in the row of its directory
/// (`src/config/` … `providers.rs`).
fn named(file: &str, rows: &[Vec<String>]) -> bool {
    rows.iter().any(|names| {
        names.iter().any(|name| name == file)
            || names
                .iter()
                .filter(|name| name.starts_with("src/") && name.ends_with('/'))
                .any(|dir| {
                    file.strip_prefix(dir.as_str())
                        .is_some_and(|rest| names.iter().any(|name| name == rest))
                })
    })
}

#[test]
fn the_readme_table_names_every_file_in_src() {
    let rows = readme_rows();
    assert!(rows.len() >= 10, "README's table of src/ has too few rows");
    let missing: Vec<String> = rust_files(&Path::new(ROOT).join("src"))
        .iter()
        .map(|file| relative(file))
        .filter(|file| !named(file, &rows))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's table of src/ does not name:\n{}",
        missing.join("\n")
    );
    let gone: Vec<&String> = rows
        .iter()
        .flatten()
        .filter(|name| name.starts_with("src/") && name.ends_with(".rs"))
        .filter(|name| !Path::new(ROOT).join(name).is_file())
        .collect();
    assert!(
        gone.is_empty(),
        "README.md's table names files that are not there: {gone:?}"
    );
}
