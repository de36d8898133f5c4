//! The latency and footprint report of one model on the machine it runs on
//! (`cargo nl report SPEC`, `examples/report.rs`): per-token streaming
//! latency, per-step training latency, RAM and flash bytes, as one JSON
//! line with the keys the deploy targets' lines share.
//!
//! What each number is:
//!
//! - `step_us`: p50/p95/p99/max over `tokens` timed calls of
//!   [`Model::try_step_qp`] on the deployable parameters ([`Model::QParams`]
//!   and their serving copies [`Model::QPacked`]: the integer kernels for a
//!   quantized model, the f32 ones otherwise), the
//!   inner loop on, one token per call, each call timed alone with
//!   [`Instant`] (so each sample includes one clock read, about 20 ns on
//!   Linux x86-64). Tokens are uniform random, drawn before timing; an
//!   untimed warm-up of `tokens / 10` steps (at least 16) comes first.
//! - `train_step_ms`: p50/p95/max over `train_steps` timed optimizer steps
//!   of `batch` sequences: zero the gradient, `loss_and_grad_batch` (on
//!   `threads` workers of a [`DataParallel`] pool when `threads > 1`),
//!   scale by `1 / batch`, one [`AdamW`] step (also on the pool); after one
//!   untimed step.
//!   `null` when `train_steps` is 0.
//! - `ram_bytes`: `size_of` of the structs a run holds, for `f32`:
//!   `params` = `M::Params<f32>` (the trainable parameters), `stream` =
//!   `M::Stream<f32>` (one stream's window and memory state), `workspace` =
//!   `M::Workspace<f32>` (training scratch: activations of one sequence),
//!   `grads` = `M::Params<f32>` (the gradient buffer) and `optimizer` =
//!   AdamW's two moment vectors, `2 * PARAM_COUNT * size_of::<f32>()`. With
//!   `threads > 1` every extra worker holds one more workspace and gradient
//!   buffer; the line reports the one-thread footprint.
//! - `flash_bytes`: `size_of::<M::QParams>()`, the deployable parameter
//!   bytes (what an exported file holds beside its header). Code size is
//!   not included on the native target: the binary that measures links the
//!   whole driver (command line, plotting, ...), so its size says nothing
//!   about the model; the deploy targets' lines give the linked image.
//! - `weights`: the spec's `[quant] weights` (`f32`, `int8`, `ternary`);
//!   `target`: `native` (this process, on this machine's CPU).

use std::time::Instant;

use nl_runtime::optim::AdamW;
use nl_runtime::parallel::DataParallel;
use nl_runtime::quant::WeightQuant;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Flat, Model};

use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportConfig {
    /// Timed streaming steps (one token each); at least 1.
    pub tokens: usize,
    /// Timed training steps (0: no training measurement).
    pub train_steps: usize,
    /// Sequences per training step; at least 1.
    pub batch: usize,
    /// Worker threads of a training step; at least 1.
    pub threads: usize,
    /// Seed of the parameters and tokens.
    pub seed: u64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self { tokens: 10_000, train_steps: 100, batch: 16, threads: 1, seed: 1 }
    }
}

/// The `p`-th percentile of `sorted` (ascending, non-empty) by the
/// nearest-rank method: the smallest sample such that at least `p` percent
/// of the samples are at or below it, i.e. `sorted[ceil(p / 100 * n) - 1]`
/// (`sorted[0]` for `p == 0`). Always one of the samples.
///
/// # Panics
/// If `sorted` is empty or `p` is not in `0..=100`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    assert!((0.0..=100.0).contains(&p), "percentile {p} outside 0..=100");
    let n = sorted.len();
    let rank = (p / 100.0 * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Percentiles of a set of samples (see [`percentile`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `samples` (sorted in place).
    ///
    /// # Panics
    /// If `samples` is empty or holds a NaN.
    pub fn of(samples: &mut [f64]) -> Self {
        assert!(samples.iter().all(|x| !x.is_nan()), "a NaN sample");
        samples.sort_by(f64::total_cmp);
        Self {
            p50: percentile(samples, 50.0),
            p95: percentile(samples, 95.0),
            p99: percentile(samples, 99.0),
            max: percentile(samples, 100.0),
        }
    }
}

/// RAM of the structs a run holds, in bytes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ram {
    /// `size_of::<M::Params<f32>>()`.
    pub params: usize,
    /// `size_of::<M::Stream<f32>>()`.
    pub stream: usize,
    /// `size_of::<M::Workspace<f32>>()`.
    pub workspace: usize,
    /// `size_of::<M::Params<f32>>()`: the gradient buffer.
    pub grads: usize,
    /// AdamW's first and second moments: `2 * PARAM_COUNT * 4`.
    pub optimizer: usize,
}

/// The RAM footprint of `M` in `f32`.
pub fn ram<M: Model>() -> Ram {
    Ram {
        params: size_of::<M::Params<f32>>(),
        stream: size_of::<M::Stream<f32>>(),
        workspace: size_of::<M::Workspace<f32>>(),
        grads: size_of::<M::Params<f32>>(),
        optimizer: 2 * M::PARAM_COUNT * size_of::<f32>(),
    }
}

/// The report of one model on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The model's name.
    pub model: String,
    /// Where it ran (`native` for this process).
    pub target: String,
    /// `f32`, `int8` or `ternary`.
    pub weights: &'static str,
    /// Per-token streaming step latency, microseconds.
    pub step_us: Percentiles,
    /// Per-step training latency, milliseconds (`p99` unused), if measured.
    pub train_step_ms: Option<Percentiles>,
    /// RAM bytes.
    pub ram: Ram,
    /// Flash bytes (the deployable parameters), if known.
    pub flash_bytes: Option<usize>,
    /// Timed streaming steps.
    pub tokens: usize,
}

impl Report {
    /// The report as one JSON object, in the shared schema.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.step_us;
        serde_json::json!({
            "model": self.model,
            "target": self.target,
            "weights": self.weights,
            "step_us": { "p50": s.p50, "p95": s.p95, "p99": s.p99, "max": s.max },
            "train_step_ms": self.train_step_ms.map(|t| serde_json::json!({ "p50": t.p50, "p95": t.p95, "max": t.max })),
            "ram_bytes": {
                "params": self.ram.params, "stream": self.ram.stream, "workspace": self.ram.workspace,
                "grads": self.ram.grads, "optimizer": self.ram.optimizer,
            },
            "flash_bytes": self.flash_bytes,
            "tokens": self.tokens,
        })
    }
}

/// The name of a weight format in the report.
pub fn weights_name(w: WeightQuant) -> &'static str {
    match w {
        WeightQuant::F32 => "f32",
        WeightQuant::Int8 => "int8",
        WeightQuant::Ternary => "ternary",
    }
}

/// Measures `M` on this machine (see the module docs for each number).
///
/// # Errors
/// If `tokens`, `batch` or `threads` is 0.
pub fn report<M: Model>(cfg: &ReportConfig) -> Result<Report>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    if cfg.tokens == 0 || cfg.batch == 0 || cfg.threads == 0 {
        return Err(Error(format!(
            "report needs --tokens, --batch and --threads of at least 1 (got {}, {}, {})",
            cfg.tokens, cfg.batch, cfg.threads
        )));
    }
    let mut params = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut *params, cfg.seed);
    let mut rng = Rng::new(cfg.seed ^ 0x4E50_0000_0000_0003);

    // Streaming, on the deployable parameters.
    let q = crate::eval::deployable::<M>(&params);
    let mut stream = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *stream);
    let warm = (cfg.tokens / 10).max(16);
    let toks: Vec<u32> = (0..warm + cfg.tokens).map(|_| rng.below(M::VOCAB as u64) as u32).collect();
    let mut step_us = Vec::with_capacity(cfg.tokens);
    for (i, &t) in toks.iter().enumerate() {
        let t0 = Instant::now();
        let r = q.try_step(&mut *stream, std::hint::black_box(t));
        let dt = t0.elapsed();
        let logits = r.map_err(|e| Error(format!("streaming step refused a token: {e}")))?;
        std::hint::black_box(logits);
        if i >= warm {
            step_us.push(dt.as_nanos() as f64 / 1e3);
        }
    }

    // Training: one untimed step, then the timed ones.
    let train_step_ms = (cfg.train_steps > 0).then(|| {
        let len = M::SEQ + 1;
        let mut grads = boxed_zeroed::<M::Params<f32>>();
        let mut ws = boxed_zeroed::<M::Workspace<f32>>();
        let mut dp = (cfg.threads > 1).then(|| DataParallel::<M, f32>::new(cfg.threads));
        let (mut m, mut v) = (vec![0f32; M::PARAM_COUNT], vec![0f32; M::PARAM_COUNT]);
        let opt = AdamW { lr: 1e-4, ..AdamW::default() };
        let batch: Vec<u32> = (0..cfg.batch * len).map(|_| rng.below(M::VOCAB as u64) as u32).collect();
        let inv = 1.0 / cfg.batch as f32;
        let mut ms = Vec::with_capacity(cfg.train_steps);
        for t in 0..=cfg.train_steps as u64 {
            let t0 = Instant::now();
            grads.as_flat_mut().fill(0.0);
            let loss = match dp.as_mut() {
                None => M::loss_and_grad_batch(&*params, &batch, &mut *ws, &mut *grads),
                Some(dp) => dp.loss_and_grad_batch(&params, &batch, &mut grads),
            };
            // A refused (non-finite) step writes nothing and costs the same.
            let _ = match dp.as_mut() {
                None => {
                    for g in grads.as_flat_mut() {
                        *g *= inv;
                    }
                    opt.step(params.as_flat_mut(), grads.as_flat_mut(), &mut m, &mut v, t + 1)
                }
                Some(dp) => dp.adamw_step(&opt, inv, params.as_flat_mut(), grads.as_flat_mut(), &mut m, &mut v, t + 1),
            };
            let dt = t0.elapsed();
            std::hint::black_box(loss);
            if t > 0 {
                ms.push(dt.as_nanos() as f64 / 1e6);
            }
        }
        Percentiles::of(&mut ms)
    });

    Ok(Report {
        model: M::NAME.to_string(),
        target: "native".to_string(),
        weights: weights_name(M::QUANT.weights),
        step_us: Percentiles::of(&mut step_us),
        train_step_ms,
        ram: ram::<M>(),
        flash_bytes: Some(size_of::<M::QParams>()),
        tokens: cfg.tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_hand() {
        // n = 10: p50 -> rank ceil(5) = 5 -> 5th value; p95 -> ceil(9.5) = 10; p99 -> 10.
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 5.0);
        assert_eq!(percentile(&v, 95.0), 10.0);
        assert_eq!(percentile(&v, 90.0), 9.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 10.0);
        // n = 200 (values 1..=200): p95 -> rank 190, p99 -> rank 198, p50 -> rank 100.
        let w: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!((percentile(&w, 50.0), percentile(&w, 95.0), percentile(&w, 99.0)), (100.0, 190.0, 198.0));
        // One sample: every percentile is it.
        assert_eq!(percentile(&[7.5], 50.0), 7.5);
        assert_eq!(percentile(&[7.5], 99.0), 7.5);
        // n = 3: p50 -> ceil(1.5) = 2nd; p95 -> ceil(2.85) = 3rd.
        assert_eq!(percentile(&[1.0, 2.0, 30.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 30.0], 95.0), 30.0);
    }

    #[test]
    fn percentiles_of_unsorted_samples() {
        let mut s = [9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 100.0];
        let p = Percentiles::of(&mut s);
        assert_eq!(p, Percentiles { p50: 5.0, p95: 100.0, p99: 100.0, max: 100.0 });
    }

    #[test]
    #[should_panic(expected = "no samples")]
    fn percentile_of_nothing_panics() {
        percentile(&[], 50.0);
    }
}
