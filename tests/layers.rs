//! The layers of `src/` import one way: down.
//!
//! Every top-level module of the crate is a layer with a rank; a layer may
//! name (in a `use`, or in a path in code) only layers of lower rank. So
//! the code that runs in a forked child (`worker/`) cannot reach the
//! caller's API or the supervisor, and no import cycle can form between
//! layers (a cycle inside one layer is fine). A new top-level module must
//! be given a rank here, which is where its place in the house is decided.
//! DESIGN.md, "Layers", explains each one.
//!
//! This reads the source text: comments (doc comments included) are
//! skipped, so a doc link may point anywhere.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Top to bottom. Equal ranks may not import each other either.
///
/// `beat` and `canvas` sit side by side between `pool` and `options`: each
/// is a producer built on `options::Job` (a schedule submits jobs with
/// their options at its slots; a workflow moves results between them),
/// the facade calls both, and neither needs the other.
const LAYERS: &[(&str, u32)] = &[
    ("broker", 12),    // several hosts through Redis: client, worker host, job names
    ("pool", 11),      // the public facade: Pool, PoolBuilder
    ("beat", 10),      // periodic jobs: schedules, their thread and clocks
    ("canvas", 10),    // workflows: signatures, chains, groups, chords, their coordinator
    ("options", 9),    // job options: Job, retries, callbacks, results, rate limits
    ("client", 8),     // the caller's side: Shared, JobHandle, map/imap
    ("supervisor", 7), // the supervisor thread and its worker connections
    ("control", 6),    // what inspection and revoke answer: snapshots, events
    ("batch", 5),      // the submission model: Batch, Sink, Slot, JobId, gate, throttles
    ("metrics", 4),    // counters and Stats
    ("worker", 3),     // what runs in a forked child: worker loop, calling convention, fork server
    ("transport", 2),  // wire, rings, shared memory, doorbells, codec
    ("sys", 1),        // clock, spinning, huge pages, prefault
    ("config", 0),     // validated settings (imports nothing)
    ("error", 0),      // errors (imports nothing)
];

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, r)| r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to, and how deep it is (the
/// number of `super::` that lead from it to the crate root).
fn place(src: &Path, file: &Path) -> (String, usize) {
    let rel: Vec<String> = file
        .strip_prefix(src)
        .unwrap()
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let top = rel[0].trim_end_matches(".rs").to_string();
    let last = rel.last().unwrap();
    let depth = if last == "mod.rs" {
        rel.len() - 1
    } else {
        rel.len()
    };
    (top, depth)
}

/// The code of a file with comments removed (line comments, doc comments
/// and block comments; string contents are kept, which is harmless here).
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every top-level module a file's code names: `crate::x`, `crate::{x, ..}`,
/// and `super::` chains long enough to reach the crate root.
fn named_layers(code: &str, depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `$crate::` or a longer identifier
        }
        let after = &code[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident_at(item.trim());
                if !name.is_empty() {
                    found.push(name.to_string());
                }
            }
        } else {
            found.push(ident_at(after).to_string());
        }
    }
    let supers = "super::".repeat(depth.max(1));
    for (i, _) in code.match_indices(&supers) {
        if code[..i].ends_with("::") {
            continue; // part of a longer chain, counted from its start
        }
        let name = ident_at(&code[i + supers.len()..]);
        if !name.is_empty() && name != "super" {
            found.push(name.to_string());
        }
    }
    found
}

#[test]
fn layers_import_only_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut tops: Vec<String> = Vec::new();
    let mut wrong: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let (top, depth) = place(&src, file);
        let shown = format!("src/{}", file.strip_prefix(&src).unwrap().display());
        if top == "lib" {
            continue; // the crate root declares and re-exports every layer
        }
        if !tops.contains(&top) {
            tops.push(top.clone());
        }
        let Some(mine) = rank(&top) else {
            wrong
                .entry(shown)
                .or_default()
                .push(format!("`{top}` is not in LAYERS: give it a rank"));
            continue;
        };
        let text = fs::read_to_string(file).unwrap();
        for name in named_layers(&code(&text), depth) {
            let Some(theirs) = rank(&name) else { continue };
            if name != top && theirs >= mine {
                wrong.entry(shown.clone()).or_default().push(format!(
                    "`{top}` (rank {mine}) names `{name}` (rank {theirs})"
                ));
            }
        }
    }
    for (layer, _) in LAYERS {
        assert!(
            tops.iter().any(|t| t == layer),
            "LAYERS names `{layer}`, which src/ no longer has"
        );
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways:\n{}",
        wrong
            .iter()
            .map(|(f, w)| format!("  {f}: {}", w.join("; ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_scanner_sees_what_it_must() {
    let text = "use crate::a::b;\n// use crate::hidden;\nlet x = crate::c::d();\nuse crate::{e, f::g};\n\
                /* crate::block */ use super::super::h::i;";
    let names = named_layers(&code(text), 2);
    assert_eq!(names, ["a", "c", "e", "f", "h"]);
    assert_eq!(named_layers("use super::x;", 2), Vec::<String>::new());
    assert_eq!(named_layers("use super::x;", 1), ["x"]);
}
