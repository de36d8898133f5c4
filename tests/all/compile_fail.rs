//! Spec errors reach the user as compile errors: every case in
//! `tests/compile_fail/` is a bad spec, and its `.stderr` shows the message
//! (the key, the file, its line and column, and what is allowed).
//!
//! Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test --test all -- compile_fail`.

use std::fs;
use std::path::{Path, PathBuf};

/// `nl_model!("path.toml")` resolves the path against `CARGO_MANIFEST_DIR`,
/// and trybuild compiles the cases as a generated package in
/// `<target>/tests/trybuild/nl/`, so that is the `CARGO_MANIFEST_DIR` they
/// see (not the workspace root). Mirror the spec files there so the cases
/// can name them as a user would: `tests/compile_fail/specs/<file>.toml`.
fn mirror_spec_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compile_fail/specs");
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; trybuild's project is `<target>/tests/trybuild/<crate>`.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("CARGO_TARGET_TMPDIR has a parent");
    let dst: PathBuf = target.join("tests/trybuild").join(env!("CARGO_PKG_NAME")).join("tests/compile_fail/specs");
    fs::create_dir_all(&dst).unwrap_or_else(|e| panic!("creating {}: {e}", dst.display()));
    for entry in fs::read_dir(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display())) {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|x| x == "toml") {
            let to = dst.join(path.file_name().expect("file name"));
            fs::copy(&path, &to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", path.display(), to.display()));
        }
    }
}

#[test]
fn spec_errors_are_compile_errors() {
    mirror_spec_files();
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
