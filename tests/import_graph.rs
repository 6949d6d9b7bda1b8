//! The module tree's imports point one way: no two source files of a crate import each
//! other, directly or around a loop.
//!
//! Every `crate::…`, `super::…` and `self::…` path in non-test code is resolved to the
//! file of the deepest module it names, giving one edge per (file, file) pair. A module
//! reaching into its own children (declaring them, re-exporting from them, dispatching to
//! them) is containment, not an import, and is left out; a child using its parent's
//! shared types is an import. Test code (`#[cfg(test)]` modules and files) is left out:
//! fakes and the code they stand in for naturally name each other.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module path (`["vfio", "iommu", "dma"]`) of every source file under `src`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a readable directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut segs: Vec<String> = rel
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(
                segs.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                segs.pop();
            }
            out.insert(segs, path);
        }
    }
    out
}

/// Names of the child modules `text` declares under `#[cfg(test)]` (whole test files).
fn test_children(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cfg_test = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("#[cfg(test)]") {
            cfg_test = true;
            continue;
        }
        if cfg_test {
            let decl = line.strip_prefix("pub ").unwrap_or(line);
            let decl = decl.strip_prefix("pub(crate) ").unwrap_or(decl);
            if let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                out.insert(name.trim().to_string());
            }
        }
        if !line.starts_with("#[") {
            cfg_test = false;
        }
    }
    out
}

/// The file's code with comments, string literals and `#[cfg(test)]` inline modules
/// blanked out, as (inline module depth, text) per line.
fn non_test_code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // Stack of brace depths at which an inline module opened, and whether it is a test one.
    let mut mods: Vec<(usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut cfg_test_pending = false;
    let mut in_block_comment = false;
    for raw in text.lines() {
        let mut line = String::new();
        let mut chars = raw.chars().peekable();
        let mut in_str = false;
        while let Some(c) = chars.next() {
            if in_block_comment {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block_comment = false;
                }
                continue;
            }
            if in_str {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_str = false;
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block_comment = true;
                }
                '"' => in_str = true,
                '\'' => {
                    // A char literal ('{', '\'') would upset the brace count; lifetimes
                    // ('a) have no closing quote within two characters.
                    let rest: String = chars.clone().take(3).collect();
                    if let Some(end) = rest.find('\'').filter(|&i| i > 0) {
                        for _ in 0..=end {
                            chars.next();
                        }
                    } else {
                        line.push(c);
                    }
                }
                _ => line.push(c),
            }
        }
        let trimmed = line.trim();
        if trimmed.starts_with("#[cfg(test)]") {
            cfg_test_pending = true;
        }
        let opens_mod = {
            let d = trimmed.strip_prefix("pub ").unwrap_or(trimmed);
            d.starts_with("mod ") && d.contains('{')
        };
        let in_test = mods.iter().any(|&(_, t)| t);
        let inline_depth = mods.len();
        let opens_test_mod = opens_mod && cfg_test_pending;
        if !in_test && !opens_test_mod {
            out.push((inline_depth, line.clone()));
        }
        for c in line.chars() {
            match c {
                '{' => {
                    if opens_mod && !mods.iter().any(|&(d, _)| d == depth) {
                        mods.push((depth, cfg_test_pending || in_test));
                    }
                    depth += 1;
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    if mods.last().is_some_and(|&(d, _)| d == depth) {
                        mods.pop();
                    }
                }
                _ => {}
            }
        }
        if !trimmed.starts_with("#[") && !trimmed.is_empty() {
            cfg_test_pending = false;
        }
    }
    out
}

/// The module paths a line names, absolute from the crate root.
fn named_paths(here: &[String], inline_depth: usize, line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !word(bytes[i]) || (i > 0 && (word(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let start = i;
        // A path: words joined by `::`, possibly ending in `{a, b::c}` groups.
        let mut end = i;
        while end < bytes.len() && (word(bytes[end]) || bytes[end] == b':') {
            end += 1;
        }
        let path = &line[start..end];
        i = end.max(start + 1);
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if segs.len() < 2 {
            continue;
        }
        let mut base: Vec<String>;
        let mut rest = &segs[..];
        match segs[0] {
            "crate" => {
                base = Vec::new();
                rest = &segs[1..];
            }
            "self" | "super" => {
                base = here.to_vec();
                let mut inline = inline_depth;
                while let Some(&s) = rest.first() {
                    match s {
                        "self" => rest = &rest[1..],
                        "super" => {
                            if inline > 0 {
                                inline -= 1;
                            } else {
                                base.pop();
                            }
                            rest = &rest[1..];
                        }
                        _ => break,
                    }
                }
                if inline > 0 {
                    // Still inside an inline module of this file: a local path.
                    continue;
                }
            }
            _ => continue,
        }
        let mut target = base;
        target.extend(rest.iter().map(|s| s.to_string()));
        // Names inside a `{...}` group after the path: each is a path below it.
        if end < bytes.len() && bytes[end] == b'{' && path.ends_with("::") {
            let close = line[end..].find('}').map_or(line.len(), |c| end + c);
            for item in line[end + 1..close].split(',') {
                let item = item.trim().split(" as ").next().unwrap_or("").trim();
                if item.is_empty() {
                    continue;
                }
                let mut p = target.clone();
                if item != "self" && item != "*" {
                    p.extend(item.split("::").map(str::to_string));
                }
                out.push(p);
            }
            i = close;
        } else {
            out.push(target);
        }
    }
    out
}

/// The file-to-file import edges of the crate rooted at `src`.
fn edges(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = modules(src);
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut texts = BTreeMap::new();
    for (module, path) in &files {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for child in test_children(&text) {
            let mut c = module.clone();
            c.push(child);
            test_only.insert(c);
        }
        texts.insert(module.clone(), text);
    }
    let is_test = |m: &Vec<String>| test_only.iter().any(|t| m.starts_with(t));
    let mut out: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &texts {
        if is_test(module) {
            continue;
        }
        let mut targets = BTreeSet::new();
        for (inline_depth, line) in non_test_code(text) {
            for path in named_paths(module, inline_depth, &line) {
                // The deepest module the path names.
                let file = (0..=path.len())
                    .rev()
                    .map(|n| path[..n].to_vec())
                    .find(|p| files.contains_key(p))
                    .unwrap_or_default();
                if file != *module && !file.starts_with(module) && !is_test(&file) {
                    targets.insert(file);
                }
            }
        }
        out.insert(module.clone(), targets);
    }
    out
}

/// Every cycle's members (strongly connected components with more than one file).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    let reach = |from: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<_, _> = graph.keys().map(|k| (k.clone(), reach(k))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for k in graph.keys() {
        if done.contains(k) || !reaches[k].contains(k) {
            continue;
        }
        let scc: Vec<Vec<String>> = graph
            .keys()
            .filter(|m| reaches[k].contains(*m) && reaches[*m].contains(k))
            .cloned()
            .collect();
        done.extend(scc.iter().cloned());
        out.push(scc);
    }
    out
}

fn show(cycles: &[Vec<Vec<String>>]) -> String {
    cycles
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_devices_crate_has_no_import_cycle() {
    let c = cycles(&edges(&root().join("devices/src")));
    assert!(c.is_empty(), "files importing each other:\n{}", show(&c));
}

#[test]
fn the_passvm_crate_has_no_import_cycle() {
    let c = cycles(&edges(&root().join("src")));
    assert!(c.is_empty(), "files importing each other:\n{}", show(&c));
}

#[test]
fn the_checker_sees_a_cycle_through_super_and_crate_paths() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let src = dir.path();
    fs::create_dir_all(src.join("a")).expect("mkdir");
    fs::write(src.join("lib.rs"), "pub mod a;\n").expect("write");
    fs::write(
        src.join("a/mod.rs"),
        "pub mod x;\npub mod y;\npub mod z;\npub use x::X;\n#[cfg(test)]\nmod t;\n",
    )
    .expect("write");
    // x -> y through `super`, y -> x through `crate` inside a group; z only in a test.
    fs::write(
        src.join("a/x.rs"),
        "use super::y::Y; // crate::a::z::Z in a comment\npub struct X;\n",
    )
    .expect("write");
    fs::write(
        src.join("a/y.rs"),
        "use crate::a::{x::X, z};\npub struct Y;\n#[cfg(test)]\nmod tests {\n    use super::super::z::Z;\n}\n",
    )
    .expect("write");
    fs::write(
        src.join("a/z.rs"),
        "pub struct Z;\nfn f() { let _ = \"crate::a::x::X\"; let _ = '{'; }\n#[cfg(test)]\nmod tests { use crate::a::y::Y; }\n",
    )
    .expect("write");
    fs::write(src.join("a/t.rs"), "use super::x::X;\n").expect("write");
    let g = edges(src);
    let key = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    assert_eq!(g[&key("a::x")], [key("a::y")].into_iter().collect());
    assert_eq!(
        g[&key("a::y")],
        [key("a::x"), key("a::z")].into_iter().collect()
    );
    assert!(
        g[&key("a::z")].is_empty(),
        "strings, chars and tests are not imports: {:?}",
        g[&key("a::z")]
    );
    assert!(
        g[&key("a")].is_empty(),
        "a parent's re-export is containment"
    );
    assert!(!g.contains_key(&key("a::t")), "test files are left out");
    assert_eq!(show(&cycles(&g)), "a::x <-> a::y");
}
