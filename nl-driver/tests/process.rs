//! The command line as a user meets it: the `tiny` example's binary
//! (`examples/tiny.rs`, built by `cargo test` before the tests run) killed
//! mid-training, and given bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nl_driver::state::{self, TrainState};
use nl_runtime::{boxed_zeroed, Model};

nl_macros::nl_model!("examples/tiny.toml");

// A model of another spec, for a checkpoint the binary must refuse.
nl_macros::nl_model! { r#"
name = "other"
d_model = 16
heads = 2
vocab = 256
seq_len = 16
window = 16
"# }

/// The example binary: `target/<profile>/examples/tiny`, beside this test's `deps/`.
fn exe() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    let profile = me.parent().and_then(Path::parent).expect("target/<profile>");
    profile.join("examples").join(format!("tiny{}", std::env::consts::EXE_SUFFIX))
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

fn corpus(dir: &Path, len: usize) -> PathBuf {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/corpus.txt")).expect("data/corpus.txt");
    let p = dir.join(format!("corpus-{len}.txt"));
    std::fs::write(&p, &text[..len]).expect("write corpus");
    p
}

/// Kills a training process with SIGKILL while it runs; the checkpoint and
/// state on disk are the last complete pair, load cleanly, and the run
/// resumes from them.
#[test]
fn killed_training_leaves_the_last_checkpoint_intact_and_resumes() {
    let dir = scratch("killed");
    let c = corpus(&dir, 20_000);
    let out = dir.join("k.safetensors");
    let mut child = Command::new(exe())
        .args(["train", "--steps", "1000000", "--batch", "2", "--threads", "1", "--checkpoint-every", "3"])
        .args(["--eval-every", "0", "--sample-len", "0", "--quiet", "--corpus"])
        .arg(&c)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe().display()));
    let sp = state::path_for(&out);
    let t0 = Instant::now();
    // Wait until a few checkpoints have been written, then kill it at whatever point it is.
    loop {
        if TrainState::load::<tiny::Model>(&sp).is_ok_and(|s| s.step >= 9) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("training exited early: {status}");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(37));
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success());

    let st = TrainState::load::<tiny::Model>(&sp).expect("the state survives the kill");
    assert!(st.step >= 9 && st.step.is_multiple_of(3), "step {}", st.step);
    let mut params = boxed_zeroed::<<tiny::Model as Model>::Params<f32>>();
    nl_runtime::checkpoint::load::<tiny::Model, f32>(&out, &mut params).expect("the checkpoint survives the kill");
    let resumed = Command::new(exe())
        .args(["train", "--quiet", "--sample-len", "0", "--eval-every", "0", "--stop-after"])
        .arg((st.step + 3).to_string())
        .arg("--corpus")
        .arg(&c)
        .arg("--out")
        .arg(&out)
        .arg("--resume")
        .arg(&out)
        .output()
        .expect("resume");
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "resume failed: {err}");
    let after = TrainState::load::<tiny::Model>(&sp).expect("state after resuming");
    assert_eq!((after.step, after.steps), (st.step + 3, 1_000_000));
}

/// Runs the binary; returns (exit code, stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(exe()).args(args).stdin(Stdio::null()).output().expect("run the example");
    (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn bad_input_is_one_line_and_never_a_panic() {
    let dir = scratch("bad-input");
    let c = corpus(&dir, 20_000);
    let small = corpus(&dir, 50);
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}").expect("write");
    let other = dir.join("other.safetensors");
    let mut p = boxed_zeroed::<<other::Model as Model>::Params<f32>>();
    other::Model::init(&mut p, 1);
    nl_runtime::checkpoint::save::<other::Model, f32>(&other, &p).expect("save other");
    let missing = dir.join("missing.safetensors");
    let (c, small, garbage, other, missing) = (
        c.to_string_lossy().into_owned(),
        small.to_string_lossy().into_owned(),
        garbage.to_string_lossy().into_owned(),
        other.to_string_lossy().into_owned(),
        missing.to_string_lossy().into_owned(),
    );
    let out = dir.join("o.safetensors").to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--out", &out], "--corpus"),
        (vec!["train", "--corpus", &missing, "--out", &out], "cannot read the corpus"),
        (vec!["train", "--corpus", &small, "--out", &out], "too small"),
        (vec!["train", "--corpus", &c, "--out", &out, "--lr", "0"], "--lr"),
        (vec!["train", "--corpus", &c, "--out", &out, "--resume", &missing], "does not exist"),
        (vec!["train", "--corpus", &c, "--out", &out, "--init", &other, "--quiet"], "spec"),
        (vec!["eval", "--checkpoint", &missing, "--corpus", &c], "cannot load the checkpoint"),
        (vec!["eval", "--checkpoint", &garbage, "--corpus", &c], "cannot load the checkpoint"),
        (vec!["eval", "--checkpoint", &other, "--corpus", &c], "spec"),
        (vec!["serve", "--checkpoint", &other], "spec"),
        (vec!["sample", "--checkpoint", &garbage], "cannot load the checkpoint"),
        (vec!["sample", "--checkpoint", &other, "--temperature=-1"], "--temperature"),
        (vec!["export", "--checkpoint", &missing, "--out", &out], "cannot load the checkpoint"),
        (vec!["export", "--checkpoint", &other, "--out", &out], "spec"),
    ];
    for (args, needle) in cases {
        let (code, err) = run(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
        assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "{args:?}: {err}");
    }
    // Usage errors are clap's, exit code 2.
    let (code, err) = run(&["train", "--steps", "zero"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn export_writes_a_deployable_file_of_an_f32_model() {
    type T = tiny::Model;
    let dir = scratch("export");
    let ckpt = dir.join("t.safetensors");
    let mut p = boxed_zeroed::<<T as Model>::Params<f32>>();
    T::init(&mut p, 3);
    nl_runtime::checkpoint::save::<T, f32>(&ckpt, &p).expect("save");
    let out = dir.join("deploy").join("t.deploy.safetensors");
    let o = Command::new(exe())
        .args(["export", "--checkpoint", &ckpt.to_string_lossy(), "--out", &out.to_string_lossy()])
        .stdin(Stdio::null())
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let size = std::fs::metadata(&out).expect("written").len();
    assert!(stdout.contains(&format!("{size} bytes")) && stdout.contains("f32/f32"), "{stdout}");
    // An f32 model's deployable file holds its parameters, bit for bit.
    let mut q = boxed_zeroed::<<T as Model>::QParams>();
    nl_runtime::checkpoint::load_q::<T>(&out, &mut q).expect("a valid deployable file");
    assert_eq!(nl_runtime::pod_bytes(&*q), nl_runtime::pod_bytes(&*p));
    // It is not a training checkpoint: `eval` and `export` refuse it, saying why.
    let (code, err) = run(&["export", "--checkpoint", &out.to_string_lossy(), "--out", &out.to_string_lossy()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.lines().count() == 1 && err.contains("deployable"), "{err}");
}

/// `report` prints one JSON line in the shared schema whose byte counts are
/// the structs' sizes (computed here from the same spec, and the parameter
/// and flash bytes also from the tensor lists) and whose percentiles are
/// ordered; with a bad argument it fails with one line.
#[test]
fn report_prints_sizes_and_ordered_percentiles() {
    type T = tiny::Model;
    let o = Command::new(exe())
        .args(["report", "--tokens", "300", "--train-steps", "4", "--batch", "3", "--threads", "2"])
        .stdin(Stdio::null())
        .output()
        .expect("run the example");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let j: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object");
    let keys: Vec<&str> = j.as_object().expect("an object").keys().map(String::as_str).collect();
    let mut want = ["model", "target", "weights", "step_us", "train_step_ms", "ram_bytes", "flash_bytes", "tokens"];
    want.sort_unstable();
    assert_eq!(keys, want, "{j}");
    assert_eq!(
        (j["model"].as_str(), j["target"].as_str(), j["weights"].as_str()),
        (Some("tiny"), Some("native"), Some("f32"))
    );
    assert_eq!(j["tokens"].as_u64(), Some(300));
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")) as usize;
    let ram = &j["ram_bytes"];
    let param_bytes: usize = T::TENSORS.iter().map(|t| t.len * 4).sum();
    assert_eq!(n(&ram["params"]), size_of::<<T as Model>::Params<f32>>());
    assert_eq!(n(&ram["params"]), param_bytes);
    assert_eq!(n(&ram["grads"]), param_bytes);
    assert_eq!(n(&ram["stream"]), size_of::<<T as Model>::Stream<f32>>());
    assert_eq!(n(&ram["workspace"]), size_of::<<T as Model>::Workspace<f32>>());
    assert_eq!(n(&ram["optimizer"]), 2 * T::PARAM_COUNT * 4);
    let qbytes: usize = T::QTENSORS.iter().map(|t| t.bytes).sum();
    assert_eq!(n(&j["flash_bytes"]), size_of::<<T as Model>::QParams>());
    assert_eq!(n(&j["flash_bytes"]), qbytes);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    let s = &j["step_us"];
    let (p50, p95, p99, max) = (f(&s["p50"]), f(&s["p95"]), f(&s["p99"]), f(&s["max"]));
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max, "{s}");
    let t = &j["train_step_ms"];
    assert!(0.0 < f(&t["p50"]) && f(&t["p50"]) <= f(&t["p95"]) && f(&t["p95"]) <= f(&t["max"]), "{t}");

    let o = Command::new(exe()).args(["report", "--train-steps", "0", "--tokens", "20"]).output().expect("run");
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(j["train_step_ms"].is_null(), "{j}");
    let (code, err) = run(&["report", "--tokens", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("panicked"));
}
