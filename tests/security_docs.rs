//! docs/security.md lists every hostile-input test as `file::function`; this keeps
//! the list and `tests/security_*.rs` in step, both ways.

use std::collections::BTreeSet;
use std::path::Path;

/// `file::function` for every `#[test]`/`#[tokio::test]` in `tests/security_*.rs`.
fn tests_in_sources(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if !stem.starts_with("security_") || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut pending = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with("#[test]") || line.starts_with("#[tokio::test") {
                pending = true;
                continue;
            }
            if pending && line.starts_with("#[") {
                continue;
            }
            if pending {
                let rest = line
                    .strip_prefix("async fn ")
                    .or_else(|| line.strip_prefix("fn "))
                    .unwrap_or_else(|| panic!("{stem}: test attribute not followed by fn: {line}"));
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.insert(format!("{stem}::{name}"));
                pending = false;
            }
        }
    }
    out
}

/// Every `` `security_x::name` `` mentioned in the doc.
fn tests_in_doc(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, chunk) in doc.split('`').enumerate() {
        if i % 2 == 0 {
            continue;
        }
        if let Some((file, name)) = chunk.split_once("::") {
            let ident = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            };
            if file.starts_with("security_") && ident(file) && ident(name) {
                out.insert(chunk.to_string());
            }
        }
    }
    out
}

#[test]
fn every_security_test_is_listed_in_security_md_and_vice_versa() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let in_doc = tests_in_doc(&doc);
    let in_src = tests_in_sources(&root.join("tests"));
    assert!(in_src.len() > 50, "found only {} tests", in_src.len());
    let undocumented: Vec<_> = in_src.difference(&in_doc).collect();
    let missing: Vec<_> = in_doc.difference(&in_src).collect();
    assert!(
        undocumented.is_empty(),
        "tests not listed in docs/security.md: {undocumented:#?}"
    );
    assert!(
        missing.is_empty(),
        "docs/security.md lists tests that do not exist: {missing:#?}"
    );
}
