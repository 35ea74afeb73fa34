//! The layering contract of docs/architecture.md, checked on every `cargo test`:
//! no import cycle between files or between top-level modules (a folder counts
//! as one), and no file over 700 code lines outside its tests. The same rules as
//! `shared/tools/layers.py`, so a cycle fails here even where that tool is absent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest a file may be, in code lines outside `#[cfg(test)] mod` blocks.
const MAX_CODE_LINES: usize = 700;

type Module = Vec<String>;

fn module_path(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without `#[cfg(test)] mod x { … }` blocks and without `//` comments.
fn strip_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ")
            || trimmed.starts_with("pub mod ")
            || trimmed.starts_with("pub(crate) mod ");
        let Some(open) = after.find('{').filter(|_| is_mod) else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
            continue;
        };
        out.push_str(&rest[..at]);
        let body = &after[open + 1..];
        let mut depth = 1usize;
        let mut end = body.len();
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &body[end.min(body.len())..];
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` / `super::a` path (and `{…}` groups) in `text`, as modules.
fn references(module: &Module, text: &str) -> Vec<Module> {
    let mut refs = Vec::new();
    let bytes = text.as_bytes();
    for keyword in ["crate", "super"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(keyword) {
            let start = from + pos;
            from = start + keyword.len();
            let before_ok = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            if !before_ok || !text[from..].starts_with("::") {
                continue;
            }
            // `super` is the parent of this module, for `x.rs` and `x/mod.rs` alike.
            let mut base: Module = if keyword == "crate" {
                Vec::new()
            } else {
                module[..module.len().saturating_sub(1)].to_vec()
            };
            let tail: String = text[from..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            base.extend(
                tail.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
            refs.push(base.clone());
            let after = &text[from + tail.len()..];
            if tail.ends_with("::") && after.starts_with('{') {
                let group: String = after[1..].chars().take_while(|c| *c != ';').collect();
                for item in group.split([',', '{', '}', ' ', '\n']) {
                    let item = item.trim();
                    if item.is_empty() || item == "self" {
                        continue;
                    }
                    let mut m = base.clone();
                    m.extend(item.split("::").map(str::to_string));
                    refs.push(m);
                }
            }
        }
    }
    refs
}

fn resolve(known: &BTreeSet<Module>, path: &Module) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|p| known.contains(p))
}

/// A cycle in `edges`, if any (depth-first search, colours).
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        v: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in edges.get(v).into_iter().flatten() {
            match state.get(w).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|m| m == w).unwrap_or(0);
                    return Some(stack[at..].to_vec());
                }
                0 => {
                    if let Some(c) = visit(w, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in edges.keys() {
        if state.get(v).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(v, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_cycle_and_no_oversized_file() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let known: BTreeSet<Module> = files.iter().map(|f| module_path(&src, f)).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut oversized = Vec::new();
    for f in &files {
        let module = module_path(&src, f);
        let text = strip_tests(&std::fs::read_to_string(f).unwrap());
        let code = text.lines().filter(|l| !l.trim().is_empty()).count();
        if code > MAX_CODE_LINES {
            oversized.push(format!("{} ({code})", f.display()));
        }
        let targets = edges.entry(module.clone()).or_default();
        for r in references(&module, &text) {
            if let Some(t) = resolve(&known, &r) {
                if t != module && !t.is_empty() {
                    targets.insert(t);
                }
            }
        }
    }
    let mut top: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (v, ws) in &edges {
        let Some(head) = v.first() else { continue };
        let entry = top.entry(vec![head.clone()]).or_default();
        for w in ws {
            if let Some(h) = w.first().filter(|h| *h != head) {
                entry.insert(vec![h.clone()]);
            }
        }
    }
    let show = |c: Vec<Module>| {
        c.iter()
            .map(|m| m.join("/"))
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    assert!(
        find_cycle(&top).is_none(),
        "cycle between top modules: {}",
        show(find_cycle(&top).unwrap())
    );
    assert!(
        find_cycle(&edges).is_none(),
        "cycle between files: {}",
        show(find_cycle(&edges).unwrap())
    );
    assert!(
        oversized.is_empty(),
        "files over {MAX_CODE_LINES} code lines: {oversized:?}"
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    let a: Module = vec!["a".into()];
    let b: Module = vec!["b".into()];
    let mut edges = BTreeMap::new();
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([a.clone()]));
    assert!(find_cycle(&edges).is_some());
    edges.insert(b, BTreeSet::new());
    assert!(find_cycle(&edges).is_none());
    let text = "use crate::x::{y, z::w};\n#[cfg(test)]\nmod tests { use crate::q; }\n";
    let refs = references(&vec!["m".into()], &strip_tests(text));
    assert!(refs.contains(&vec!["x".to_string(), "z".into(), "w".into()]));
    assert!(!refs.iter().any(|r| r.first().is_some_and(|h| h == "q")));
}
