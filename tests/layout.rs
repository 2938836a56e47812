//! The layout the crate docs promise, checked from the source: no import circle
//! between top-level modules, every top-level module named in `src/lib.rs`'s
//! module map, listed after every module it uses, and no library file over 900
//! lines outside its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 900;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules: `src/X.rs` and `src/X/` (not `lib.rs`, `main.rs`, `bin/`).
fn top_modules() -> BTreeSet<String> {
    let mut mods = BTreeSet::new();
    for e in fs::read_dir(src()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            if name != "bin" {
                mods.insert(name);
            }
        } else if let Some(m) = name.strip_suffix(".rs") {
            if m != "lib" && m != "main" {
                mods.insert(m.to_string());
            }
        }
    }
    mods
}

fn files_of(module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        out.push(file);
    }
    let mut dirs = vec![src().join(module)];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The code of a file before its `#[cfg(test)] mod tests`, without comments.
fn code(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which top-level modules each top-level module names (`crate::X`, or `X::`
/// inside a `use crate::{...}` group).
fn imports(mods: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g = BTreeMap::new();
    for m in mods {
        let mut uses = BTreeSet::new();
        for f in files_of(m) {
            let c = code(&f);
            let mut names: Vec<String> = Vec::new();
            for (i, _) in c.match_indices("crate::") {
                let rest = &c[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let end = group.find("};").unwrap_or(group.len());
                    for part in group[..end].split(|ch: char| ",{} \n".contains(ch)) {
                        let head = part.split("::").next().unwrap_or("");
                        names.push(head.to_string());
                    }
                } else {
                    let head: String = rest
                        .chars()
                        .take_while(|ch| {
                            ch.is_ascii_lowercase() || *ch == '_' || ch.is_ascii_digit()
                        })
                        .collect();
                    names.push(head);
                }
            }
            for n in names {
                if mods.contains(&n) && &n != m {
                    uses.insert(n);
                }
            }
        }
        g.insert(m.clone(), uses);
    }
    g
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let mods = top_modules();
    let g = imports(&mods);
    // Depth-first search for a back edge; report the whole circle.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in &g[n] {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in &mods {
        if let Some(c) = visit(m, &g, &mut Vec::new(), &mut done) {
            panic!("import circle: {}\nimports: {g:#?}", c.join(" -> "));
        }
    }
    // The check itself sees imports (it would pass vacuously otherwise).
    assert!(g["server"].contains("pool"), "{g:#?}");
    assert!(g["reload"].contains("server"), "{g:#?}");
}

#[test]
fn every_top_level_module_is_in_the_crate_docs_map() {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let docs: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    for m in top_modules() {
        assert!(
            docs.contains(&format!("[`{m}`]")),
            "module {m} is missing from the module map in src/lib.rs"
        );
        assert!(
            lib.contains(&format!("pub mod {m};")),
            "module {m} is not declared in src/lib.rs"
        );
    }
}

/// The map lists modules bottom-up: each uses only modules listed before it.
#[test]
fn the_map_lists_each_module_after_everything_it_uses() {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mods = top_modules();
    // Order of the map's entries: lines `//! - [`name`]: ...`.
    let order: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split('`').next())
        .filter(|m| mods.contains(*m))
        .map(str::to_string)
        .collect();
    assert_eq!(
        order.len(),
        mods.len(),
        "map entries {order:?} vs modules {mods:?}"
    );
    let pos = |m: &str| order.iter().position(|o| o == m).unwrap();
    let mut wrong = Vec::new();
    for (m, uses) in imports(&mods) {
        for u in uses {
            if pos(&u) > pos(&m) {
                wrong.push(format!("{m} uses {u}, listed after it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_library_file_is_over_900_lines_outside_its_tests() {
    let mut over = Vec::new();
    let mut seen = 0;
    for m in top_modules() {
        for f in files_of(&m) {
            seen += 1;
            let text = fs::read_to_string(&f).unwrap();
            let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
            let n = text[..cut].lines().count();
            if n > MAX_LINES {
                over.push(format!("{} ({n} lines)", f.display()));
            }
        }
    }
    assert!(seen > 20, "only {seen} files found under src/");
    assert!(over.is_empty(), "split these: {over:?}");
}
