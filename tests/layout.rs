//! The layout of `src/` as the README describes it: no import circles between the engine's
//! modules (file by file, and with folders taken as one), the engine never imports the sandbox,
//! `extern "C"` only in `src/ffi`, and every module opens with a `//!` line saying what it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`http::retry`; the crate root is "") to its source file, outside `src/bin`.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            (parts.join("::"), p)
        })
        .collect()
}

/// The code of a source: without comments (a doc link is not an import) and without its
/// `#[cfg(test)] mod tests` (tests may reach anywhere).
fn code(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap();
    let s = match s.find("#[cfg(test)]\nmod tests") {
        Some(i) => &s[..i],
        None => &s[..],
    };
    s.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::a::b::...` paths a source names.
fn crate_paths(s: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `$crate::`, `fhirbulk_crate::`
        }
        let mut parts = Vec::new();
        let mut r = rest;
        loop {
            let n = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            if n == 0 {
                break;
            }
            parts.push(r[..n].to_owned());
            r = &r[n..];
            match r.strip_prefix("::") {
                Some(next) if next.starts_with(|c: char| c.is_ascii_lowercase()) => r = next,
                _ => break,
            }
        }
        out.push(parts);
    }
    out
}

/// Edges between modules: `collapse` takes each top-level module (with its folder) as one.
fn graph(mods: &BTreeMap<String, PathBuf>, collapse: bool) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, p) in mods {
        if m.is_empty() {
            continue; // the crate root declares and re-exports
        }
        let s = code(p);
        let mut targets = Vec::new();
        for parts in crate_paths(&s) {
            let t = (1..=parts.len())
                .rev()
                .map(|i| parts[..i].join("::"))
                .find(|c| mods.contains_key(c));
            targets.extend(t);
        }
        // `super::x` in a folder module names a sibling.
        let parent = m.rsplit_once("::").map_or("", |(a, _)| a);
        let mut rest = s.as_str();
        while let Some(i) = rest.find("super::") {
            rest = &rest[i + "super::".len()..];
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..n];
            let t = if parent.is_empty() {
                name.to_owned()
            } else {
                format!("{parent}::{name}")
            };
            if mods.contains_key(&t) {
                targets.push(t);
            }
        }
        let top = |x: &str| x.split("::").next().unwrap().to_owned();
        for t in targets {
            let (a, b) = if collapse {
                (top(m), top(&t))
            } else {
                (m.clone(), t)
            };
            if a != b {
                g.entry(a).or_default().insert(b);
            }
        }
    }
    g
}

/// A cycle in `g`, if there is one.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == v) {
            let mut c = path[i..].to_vec();
            c.push(v.to_owned());
            return Some(c);
        }
        if done.contains(v) {
            return None;
        }
        path.push(v.to_owned());
        for w in g.get(v).into_iter().flatten() {
            if let Some(c) = visit(w, g, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(v.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|v| visit(v, g, &mut done, &mut Vec::new()))
}

#[test]
fn no_import_circles() {
    let mods = modules();
    assert!(mods.contains_key("http::retry"), "{:?}", mods.keys());
    for collapse in [false, true] {
        let g = graph(&mods, collapse);
        if let Some(c) = cycle(&g) {
            panic!("import circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_detector_finds_a_circle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    assert_eq!(cycle(&g), None);
    g.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle(&g).unwrap().len(), 4);
    assert_eq!(
        crate_paths("use crate::http::retry::{Budget}; crate::error::Error::new"),
        vec![
            vec!["http".to_owned(), "retry".to_owned()],
            vec!["error".to_owned()]
        ]
    );
}

#[test]
fn the_engine_never_imports_the_sandbox() {
    for (m, p) in modules() {
        if m.is_empty() || m == "sandbox" || m.starts_with("sandbox::") {
            continue;
        }
        let s = code(&p);
        assert!(
            !crate_paths(&s).iter().any(|x| x[0] == "sandbox"),
            "{m} imports the sandbox"
        );
    }
}

#[test]
fn extern_c_only_in_ffi() {
    for (m, p) in modules() {
        if m == "ffi" || m.starts_with("ffi::") {
            continue;
        }
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(!s.contains("extern \"C\""), "{m} has extern \"C\"");
    }
}

#[test]
fn every_module_says_what_it_is() {
    for (m, p) in modules() {
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(
            s.trim_start().starts_with("//!"),
            "{} ({m}) does not open with a //! line",
            p.display()
        );
    }
}
