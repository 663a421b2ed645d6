//! The module tree of `crates/duplex/src` reads one way (issue 16): no
//! import circle between its top-level modules (a file or folder directly
//! under `src/`). This test reads the sources as text, collects every
//! `crate::<module>` path each top-level module names, and finds the
//! circles (strongly connected components) of that graph.
//! There are none (issue 16 removed the last, through `AppState`, the
//! upgrade handlers and the connection queue); any new one fails here.
//! Run it alone: `cargo test -p duplex --test architecture`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn top_level(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::x` paths in code (comments dropped), including `use crate::{a, b}`.
fn named_modules(source: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let name = part.trim().split("::").next().unwrap_or("").trim();
                if modules.contains(name) {
                    found.insert(name.to_string());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) {
                found.insert(name);
            }
        }
    }
    found
}

/// Tarjan's strongly connected components of size > 1, each sorted.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[v].min(s.low[w.as_str()]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w.as_str()) {
                let low = s.low[v].min(s.index[w.as_str()]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found.sort();
    s.found
}

#[test]
fn no_new_import_circle_between_top_level_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_level(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = top_level(&src, file) else {
            continue;
        };
        let source = std::fs::read_to_string(file).expect("read source");
        let named = named_modules(&source, &modules);
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(named.into_iter().filter(|m| *m != module));
    }
    let found = circles(&graph);
    assert!(
        found.is_empty(),
        "import circles between top-level modules of crates/duplex/src: {found:?} (graph: {graph:#?})"
    );
}

/// The non-test part of a source file: everything before its first
/// `#[cfg(test)]` line.
fn code_part(source: &str) -> Vec<&str> {
    source
        .lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .collect()
}

/// `(name, lines)` of every function in `lines`, by brace counting from its
/// `fn` line (good enough for this code base: no braces in char literals of
/// signatures).
fn functions<'a>(lines: &[&'a str]) -> Vec<(&'a str, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let name = [
            "pub(crate) async fn ",
            "pub(super) async fn ",
            "pub async fn ",
            "async fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "pub fn ",
            "fn ",
        ]
        .iter()
        .find_map(|p| line.strip_prefix(p))
        .map(|rest| rest.split(['(', '<', ' ']).next().unwrap_or(""));
        let Some(name) = name else {
            i += 1;
            continue;
        };
        let (mut depth, mut opened, mut j) = (0i64, false, i);
        while j < lines.len() {
            let l = lines[j];
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
            opened |= l.contains('{');
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        found.push((name, j - i + 1));
        i = if opened { j + 1 } else { i + 1 };
    }
    found
}

/// Small files with one job, functions a reader can hold (issue 16): no
/// source file's non-test part over 500 lines, no function over 80 lines
/// (the metrics table aside).
#[test]
fn files_and_functions_stay_small() {
    const ALLOWED: &[(&str, &str)] = &[("metrics.rs", "encode")];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut too_big = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file).expect("read source");
        let code = code_part(&source);
        let rel = file
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        if rel.ends_with("tests.rs") {
            continue; // a test module in its own file (`#[cfg(test)] mod tests;`)
        }
        if code.len() > 500 {
            too_big.push(format!("{rel}: {} lines", code.len()));
        }
        for (name, lines) in functions(&code) {
            if lines > 80 && !ALLOWED.contains(&(rel.as_str(), name)) {
                too_big.push(format!("{rel}: fn {name} is {lines} lines"));
            }
        }
    }
    assert!(too_big.is_empty(), "{too_big:#?}");
}
