//! The driver's loops against independent oracles: an uninterrupted run
//! (for resumption), hand-computed softmaxes over `Model::step`'s logits
//! (for serving, scoring and greedy sampling).

use std::path::{Path, PathBuf};

use nl_driver::state::{self, TrainState};
use nl_driver::train::{train, TrainConfig};
use nl_driver::{eval, sample, serve};
use nl_runtime::{boxed_zeroed, Model};

nl_macros::nl_model!("examples/tiny.toml");

type M = tiny::Model;

/// A fresh directory under the target directory.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
}

/// The first 20,000 bytes of the repository's corpus, as a file in `dir`.
fn corpus(dir: &Path) -> PathBuf {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/corpus.txt")).expect("data/corpus.txt");
    let p = dir.join("corpus.txt");
    std::fs::write(&p, &text[..20_000]).expect("write corpus");
    p
}

fn config(dir: &Path, out: &str, threads: u64) -> TrainConfig {
    let mut c = TrainConfig::new(corpus(dir), dir.join(out));
    c.steps = 9;
    c.batch = 4;
    c.warmup = 2;
    c.lr = 1e-2;
    c.threads = threads;
    c.eval_every = 4;
    c.eval_windows = 8;
    c.checkpoint_every = 2;
    c.sample_len = 0;
    c.progress = false;
    c
}

/// (step, batch bits, smoothed bits, lr, grad norm) of every train line of a log.
fn train_lines(log: &Path) -> Vec<(u64, u64, u64, u64, u64)> {
    std::fs::read_to_string(log)
        .expect("log")
        .lines()
        .filter_map(nl_driver::train::LogLine::parse)
        .filter_map(|l| match l {
            nl_driver::train::LogLine::Train { step, bits, smooth_bits, lr, grad_norm, .. } => {
                Some((step, bits.to_bits(), smooth_bits.to_bits(), lr.to_bits(), grad_norm.to_bits()))
            }
            nl_driver::train::LogLine::Eval { .. } => None,
        })
        .collect()
}

/// A run stopped after step 5 and resumed ends bit for bit where the
/// uninterrupted run ends: parameters, both AdamW moments, the smoothed
/// loss, the log's training lines, on one thread and on two.
#[test]
fn resume_continues_bit_for_bit() {
    for threads in [1, 2] {
        let dir = scratch(&format!("resume-{threads}"));
        let whole = config(&dir, "whole.safetensors", threads);
        train::<M>(&whole).expect("uninterrupted run");

        let mut part = config(&dir, "part.safetensors", threads);
        part.stop_after = Some(5);
        let r = train::<M>(&part).expect("first part");
        assert_eq!(r.steps, 5);
        let mid = TrainState::load::<M>(&state::path_for(&part.out)).expect("state after the first part");
        assert_eq!((mid.step, mid.steps), (5, 9));
        part.stop_after = None;
        part.resume = Some(part.out.clone());
        let r = train::<M>(&part).expect("resumed part");
        assert_eq!(r.steps, 9);

        let a = std::fs::read(&whole.out).expect("whole checkpoint");
        let b = std::fs::read(&part.out).expect("resumed checkpoint");
        assert!(a == b, "threads {threads}: the resumed checkpoint differs from the uninterrupted one");
        let sa = TrainState::load::<M>(&state::path_for(&whole.out)).expect("state");
        let sb = TrainState::load::<M>(&state::path_for(&part.out)).expect("state");
        assert_eq!(sa, sb, "threads {threads}: training states differ");
        assert_ne!(mid.params, sb.params, "the second part trained");
        let (la, lb) = (train_lines(&dir.join("whole.log.jsonl")), train_lines(&dir.join("part.log.jsonl")));
        assert!(!la.is_empty());
        assert_eq!(la, lb, "threads {threads}: the logs' training lines differ");
        assert!(dir.join("part.loss.png").is_file(), "the loss curve is drawn");
    }
}

#[test]
fn resume_refuses_a_missing_state_and_another_corpus() {
    let dir = scratch("resume-refusals");
    let mut c = config(&dir, "r.safetensors", 1);
    c.stop_after = Some(2);
    train::<M>(&c).expect("first part");
    // Another corpus: one byte changed.
    let other = dir.join("other.txt");
    let mut bytes = std::fs::read(&c.corpus).expect("corpus");
    bytes[100] ^= 1;
    std::fs::write(&other, &bytes).expect("write");
    let mut r = c.clone();
    r.resume = Some(c.out.clone());
    r.corpus = other;
    let e = train::<M>(&r).err().map(|e| e.0).unwrap_or_default();
    assert!(e.contains("another corpus"), "{e}");
    // No training state beside the checkpoint.
    std::fs::remove_file(state::path_for(&c.out)).expect("remove state");
    let mut r = c.clone();
    r.resume = Some(c.out.clone());
    let e = train::<M>(&r).err().map(|e| e.0).unwrap_or_default();
    assert!(e.contains("does not exist") && e.contains("--init"), "{e}");
    // --init starts from the weights: step 0 of a new run is evaluated on them.
    let mut i = c.clone();
    i.init = Some(c.out.clone());
    i.stop_after = Some(1);
    train::<M>(&i).expect("init from weights");
}

/// `-log2 softmax(logits)[next]`, written plainly (no max subtracted).
fn bits_by_hand(logits: &[f32], next: u8) -> f64 {
    let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
    -(f64::from(logits[usize::from(next)]).exp() / z).log2()
}

fn trained_params() -> Box<<M as Model>::Params<f32>> {
    let mut p = boxed_zeroed::<<M as Model>::Params<f32>>();
    M::init(&mut p, 3);
    p
}

#[test]
fn serve_writes_the_surprise_of_every_byte() {
    let params = trained_params();
    let text = b"the cat sat on the mat; the cat sat on the mat.\n\x00\xff";
    let mut out = Vec::new();
    let s = serve::serve::<M>(&params, &text[..], &mut out, 0).expect("serve");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out).expect("utf8").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(lines.len(), text.len() - 1);
    let mut stream = boxed_zeroed::<<M as Model>::Stream<f32>>();
    M::reset(&mut stream);
    let mut total = 0.0;
    for (i, line) in lines.iter().enumerate() {
        let expect = bits_by_hand(M::step(&mut stream, &params, u32::from(text[i])), text[i + 1]);
        total += expect;
        assert_eq!(line["i"].as_u64(), Some(i as u64 + 1));
        assert_eq!(line["byte"].as_u64(), Some(u64::from(text[i + 1])));
        let got = line["bits"].as_f64().expect("bits");
        assert!((got - expect).abs() < 1e-9, "byte {}: {got} vs {expect}", i + 1);
    }
    assert_eq!(s.bytes, text.len() as u64);
    assert!((s.bits_per_byte - total / (text.len() - 1) as f64).abs() < 1e-9);

    // Chunks of 8: each line is the mean of its bytes; the last chunk is partial.
    let mut out = Vec::new();
    serve::serve::<M>(&params, &text[..], &mut out, 8).expect("serve chunks");
    let chunks: Vec<serde_json::Value> =
        String::from_utf8(out).expect("utf8").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(chunks.len(), (text.len() - 1).div_ceil(8));
    for c in &chunks {
        let (a, b) = (c["start"].as_u64().expect("start") as usize, c["end"].as_u64().expect("end") as usize);
        let mean: f64 = (a..b).map(|i| lines[i - 1]["bits"].as_f64().unwrap_or(f64::NAN)).sum::<f64>() / (b - a) as f64;
        assert!((c["bits_per_byte"].as_f64().unwrap_or(f64::NAN) - mean).abs() < 1e-9, "{c}");
    }
    // Nothing in, nothing out.
    let mut out = Vec::new();
    let s = serve::serve::<M>(&params, &b""[..], &mut out, 0).expect("empty");
    assert!(out.is_empty() && s.bytes == 0 && s.bits_per_byte.is_nan());
}

#[test]
fn scores_are_the_means_of_their_parts() {
    let params = trained_params();
    let text: Vec<u8> = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/corpus.txt")).expect("corpus")
        [5000..5000 + 3 * <M as Model>::SEQ + 5]
        .to_vec();
    let s = eval::score::<M>(&params, &text, |_| {});
    // The stream: as served.
    let mut out = Vec::new();
    let served = serve::serve::<M>(&params, &text[..], &mut out, 0).expect("serve");
    assert!((s.stream_bits.unwrap_or(f64::NAN) - served.bits_per_byte).abs() < 1e-9);
    assert_eq!(s.stream_bytes, text.len() - 1);
    // The windows: 3 full windows, each `loss` of its SEQ + 1 bytes.
    assert_eq!(s.windows, 3);
    let mut ws = boxed_zeroed::<<M as Model>::Workspace<f32>>();
    let seq = <M as Model>::SEQ;
    let mean: f64 = (0..3)
        .map(|w| {
            let t: Vec<u32> = text[w * seq..w * seq + seq + 1].iter().map(|&b| u32::from(b)).collect();
            f64::from(M::loss(&params, &t, &mut ws))
        })
        .sum::<f64>()
        / 3.0;
    assert!((s.windows_bits.unwrap_or(f64::NAN) - mean / std::f64::consts::LN_2).abs() < 1e-9);
    // Too short for a window or a prediction.
    let short = eval::score::<M>(&params, b"x", |_| {});
    assert_eq!((short.windows_bits, short.stream_bits, short.windows), (None, None, 0));
}

#[test]
fn greedy_sampling_takes_the_argmax_and_sampling_is_deterministic() {
    let params = trained_params();
    let prompt = b"The memory ";
    let out = sample::generate::<M>(&params, prompt, 12, 0.0, 1);
    let mut stream = boxed_zeroed::<<M as Model>::Stream<f32>>();
    M::reset(&mut stream);
    let mut logits = Vec::new();
    for &b in prompt {
        logits = M::step(&mut stream, &params, u32::from(b)).to_vec();
    }
    for &b in &out {
        let best = (0..logits.len()).fold(0, |m, i| if logits[i] > logits[m] { i } else { m });
        assert_eq!(usize::from(b), best);
        logits = M::step(&mut stream, &params, u32::from(b)).to_vec();
    }
    let a = sample::generate::<M>(&params, prompt, 50, 0.8, 7);
    assert_eq!(a, sample::generate::<M>(&params, prompt, 50, 0.8, 7));
    assert_ne!(a, sample::generate::<M>(&params, prompt, 50, 0.8, 8));
}
