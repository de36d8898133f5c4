//! `cargo nl` as a user runs it. The `check` / `expand` / bad-input tests
//! are quick; the cache test compiles model crates in release mode (about
//! two minutes the first time on 2 cores), so it is `#[ignore]`d in the
//! default test command and run by CI (`.ci/run`) with the end-to-end
//! script `cargo-nl/tests/e2e.sh`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cargo_nl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cargo-nl")).args(args).output().expect("run cargo-nl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

const SMALL: &str = "d_model = 16\nheads = 2\nvocab = 256\nseq_len = 8\nwindow = 8\n";

#[test]
fn check_prints_the_plan_with_hand_counted_sizes() {
    let dir = scratch("check");
    let spec = dir.join("small.toml");
    std::fs::write(&spec, SMALL).expect("write");
    // As cargo runs it (`cargo-nl nl check ...`) and directly.
    for args in [&["nl", "check"][..], &["check"][..]] {
        let mut a = args.to_vec();
        let s = spec.to_string_lossy().into_owned();
        a.push(&s);
        let o = cargo_nl(&a);
        let out = text(&o.stdout);
        assert!(o.status.success(), "{}", text(&o.stderr));
        // embed 256x16 + wq, wk, wv, wo 16x16 each + unembed 256x16.
        let params = 256 * 16 + 4 * 16 * 16 + 256 * 16;
        assert!(out.contains(&format!("parameters: {params} ")), "{out}");
        assert!(out.contains(&format!("Params {} B", 4 * params)), "{out}");
        assert!(out.starts_with("model small "), "{out}");
        for t in ["embed", "blocks.0.attn.wq", "blocks.0.attn.wo", "unembed"] {
            assert!(out.lines().any(|l| l.trim_start().starts_with(t)), "{t} missing: {out}");
        }
    }
}

#[test]
fn expand_prints_the_module() {
    let dir = scratch("expand");
    let spec = dir.join("small.toml");
    std::fs::write(&spec, SMALL).expect("write");
    let o = cargo_nl(&["expand", &spec.to_string_lossy()]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("pub mod small"), "{}", &out[..out.len().min(400)]);
    assert!(out.contains("impl nl_runtime::Model for Model") || out.contains("Model for Model"), "no Model impl");
}

#[test]
fn bad_specs_are_errors_with_the_line_and_never_a_panic() {
    let dir = scratch("bad");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "name = \"bad\"\nd_model = 30\nheads = 4\nvocab = 256\nseq_len = 8\n").expect("write");
    let o = cargo_nl(&["check", &bad.to_string_lossy()]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: invalid model spec"), "{err}");
    assert!(err.contains("bad.toml:3:") && err.contains("heads = 4") && err.contains("does not divide"), "{err}");

    let missing = dir.join("missing.toml");
    for cmd in ["check", "expand", "train", "build", "python"] {
        let o = cargo_nl(&[cmd, &missing.to_string_lossy()]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
        assert!(err.starts_with("error: cannot read the spec"), "{cmd}: {err}");
    }
    let o = cargo_nl(&["train"]);
    assert_eq!(o.status.code(), Some(2), "a missing argument is a usage error");
    assert!(!text(&o.stderr).contains("panicked"));
}

/// Which of `built` / `cached` the tool reported, and the binary.
fn build(spec: &Path, cache: &Path) -> (String, PathBuf) {
    let o = Command::new(env!("CARGO_BIN_EXE_cargo-nl"))
        .args(["build", &spec.to_string_lossy()])
        .env("NL_CACHE_DIR", cache)
        .output()
        .expect("run cargo-nl build");
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    let word = err
        .lines()
        .find_map(|l| l.strip_prefix("cargo nl: ").and_then(|r| r.split(' ').next()))
        .unwrap_or_default()
        .to_string();
    (word, PathBuf::from(text(&o.stdout).trim()))
}

/// An edited spec gets its own crate and is built; an unchanged one is
/// found in the cache and its binary is not rewritten.
#[test]
#[ignore = "compiles model crates in release mode; run by CI (.ci/run)"]
fn edited_spec_rebuilds_and_unchanged_does_not() {
    let cache = std::env::var_os("NL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("nl-cache"));
    let dir = scratch("cache");
    let spec = dir.join("cached.toml");
    // A spec no earlier run has built (the nonce is a comment: it changes the key, not the model).
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let first = format!("# nonce {nonce}\n{SMALL}");
    std::fs::write(&spec, &first).expect("write");
    let (w1, exe1) = build(&spec, &cache);
    assert_eq!(w1, "built");
    let t1 = std::fs::metadata(&exe1).and_then(|m| m.modified()).expect("binary");
    let (w2, exe2) = build(&spec, &cache);
    assert_eq!((w2.as_str(), &exe2), ("cached", &exe1));
    assert_eq!(std::fs::metadata(&exe2).and_then(|m| m.modified()).ok(), Some(t1), "the binary was rewritten");

    // Edit the spec: another crate, built.
    std::fs::write(&spec, first.replace("d_model = 16", "d_model = 32")).expect("write");
    let (w3, exe3) = build(&spec, &cache);
    assert_eq!(w3, "built");
    assert_ne!(exe3, exe1);
    let info = Command::new(&exe3).arg("info").output().expect("info");
    assert!(text(&info.stdout).contains("d_model 32"), "{}", text(&info.stdout));
    // And back: the first crate is still cached.
    std::fs::write(&spec, &first).expect("write");
    let (w4, exe4) = build(&spec, &cache);
    assert_eq!((w4.as_str(), &exe4), ("cached", &exe1));
    assert_eq!(std::fs::metadata(&exe4).and_then(|m| m.modified()).ok(), Some(t1));
}
