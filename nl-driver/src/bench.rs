//! A quick throughput measurement of one model on this machine: training
//! (one AdamW step of `batch` sequences per unit of work) and streaming
//! (`try_step_qp` on the deployable parameters and their serving copies,
//! one token per call, the inner loop on: the integer kernels for a
//! quantized model), in tokens per second
//! and GFLOP/s from the model's FLOP counts. Each of `runs` timed runs
//! repeats the unit until `min_seconds` have passed; the median run is
//! reported. Tokens are uniform random bytes drawn before timing.
//! (The repository's `examples/bench.rs` is the full benchmark, with the
//! core's peak; this is what `cargo nl bench` runs on any spec.)

use std::time::Instant;

use nl_runtime::optim::AdamW;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Flat, Model};

/// One measured mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Median tokens per second.
    pub tok_s: f64,
    /// `tok_s` times the model's FLOPs per token, in GFLOP/s.
    pub gflops: f64,
}

/// Training and streaming rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchReport {
    /// Training (forward + backward + AdamW), one thread.
    pub train: Rate,
    /// Streaming `step`.
    pub serve: Rate,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures `M` (f32, one thread): `runs` runs of at least `min_seconds` each, after one untimed unit.
pub fn bench<M: Model>(batch: usize, runs: usize, min_seconds: f64) -> BenchReport {
    let (batch, runs) = (batch.max(1), runs.max(1));
    let mut params = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut *params, 1);
    let mut grads = boxed_zeroed::<M::Params<f32>>();
    let mut ws = boxed_zeroed::<M::Workspace<f32>>();
    let mut m = vec![0f32; M::PARAM_COUNT];
    let mut v = vec![0f32; M::PARAM_COUNT];
    let mut rng = Rng::new(7);
    let tokens: Vec<u32> = (0..batch * (M::SEQ + 1)).map(|_| rng.below(M::VOCAB as u64) as u32).collect();
    let opt = AdamW { lr: 1e-4, ..AdamW::default() };
    let mut step = 0u64;
    let mut train_unit = || {
        grads.as_flat_mut().fill(0.0);
        std::hint::black_box(M::loss_and_grad_batch(&*params, &tokens, &mut *ws, &mut *grads));
        step += 1;
        // A non-finite update is refused and leaves the state as it was; the timing is the same.
        let _ = opt.step(params.as_flat_mut(), grads.as_flat_mut(), &mut m, &mut v, step);
    };
    let train = time(runs, min_seconds, (batch * M::SEQ) as f64, &mut train_unit);

    let q = crate::eval::deployable::<M>(&params);
    let mut stream = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *stream);
    let stream_tokens: Vec<u32> = (0..4096).map(|_| rng.below(M::VOCAB as u64) as u32).collect();
    let mut at = 0usize;
    let mut serve_unit = || {
        for _ in 0..64 {
            // Tokens are below VOCAB, so the step cannot refuse them.
            let _ = std::hint::black_box(q.try_step(&mut *stream, stream_tokens[at % stream_tokens.len()]));
            at += 1;
        }
    };
    let serve = time(runs, min_seconds, 64.0, &mut serve_unit);
    BenchReport {
        train: Rate { tok_s: train, gflops: train * M::FLOPS_TRAIN as f64 / 1e9 },
        serve: Rate { tok_s: serve, gflops: serve * M::FLOPS_STEP as f64 / 1e9 },
    }
}

/// Median tokens per second of `unit` (worth `tokens` tokens) over `runs` runs.
fn time(runs: usize, min_seconds: f64, tokens: f64, unit: &mut dyn FnMut()) -> f64 {
    unit();
    let rates = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            let mut n = 0u64;
            while n == 0 || t0.elapsed().as_secs_f64() < min_seconds {
                unit();
                n += 1;
            }
            n as f64 * tokens / t0.elapsed().as_secs_f64().max(1e-9)
        })
        .collect();
    median(rates)
}
