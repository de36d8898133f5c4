//! Snapshots of the emitted module for every spec in `models/`, and a check
//! that the emitted code is a well-formed Rust file.
//!
//! Update the snapshots with `INSTA_UPDATE=always cargo test -p nl-emit`
//! (or `cargo insta review`), then read the diff.

use std::fs;
use std::path::PathBuf;

/// Every `models/*.toml` as `(file stem, source)`, sorted by file name.
fn models() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no *.toml in {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let stem = p.file_stem().expect("file stem").to_string_lossy().into_owned();
            let source = fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (stem, source)
        })
        .collect()
}

/// Every model's emitted code, `(file stem, code, has a [memory] table)`.
fn emitted() -> Vec<(String, String, bool)> {
    models()
        .into_iter()
        .map(|(stem, source)| {
            let plan =
                nl_spec::plan_from_str(&source, &stem).unwrap_or_else(|e| panic!("{}", e.render(&stem, &source)));
            let has_memory = plan.memory.is_some();
            (stem, nl_emit::emit_pretty(&plan, &source), has_memory)
        })
        .collect()
}

#[test]
fn emitted_modules() {
    for (name, code, _) in emitted() {
        insta::assert_snapshot!(name, code);
    }
}

#[test]
fn emitted_code_parses() {
    for (name, code, _) in emitted() {
        assert!(!code.starts_with("// emitted tokens did not parse"), "{name}: {}", code.lines().next().unwrap_or(""));
        if let Err(e) = syn::parse_file(&code) {
            panic!("{name}: the emitted code does not parse as a Rust file: {e}\n{code}");
        }
    }
}
