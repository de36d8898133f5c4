//! Throughput benchmark of generated models: training and streaming (serving)
//! tokens per second, achieved GFLOP/s, and the fraction of one core's peak.
//!
//! ```text
//! cargo run --release --example bench                   # aligned table
//! cargo run --release --example bench -- --json         # one JSON object per line
//! cargo run --release --example bench -- --help         # every setting
//! ```
//!
//! # Native CPU features
//!
//! A default build targets the baseline of the target triple (x86-64: SSE2,
//! no AVX, no FMA), whatever the machine it runs on. To let the compiler use
//! every feature of the build machine (AVX2, FMA, AVX-512, ...):
//!
//! ```text
//! RUSTFLAGS="-C target-cpu=native" cargo run --release --example bench -- --json
//! ```
//!
//! Each result reports both the features the binary was *compiled* with
//! (`cfg!(target_feature = ...)`) and the features the CPU *has*
//! (`is_x86_feature_detected!`), so the two builds can be told apart.
//!
//! # What is measured
//!
//! For each (model, mode), with `--threads N` (default 1):
//!
//! - `train`: one unit of work is one optimizer step: `--batch` sequences,
//!   each `loss_and_grad` on `SEQ + 1` tokens (gradients accumulated), the
//!   gradient scaled by `1 / batch`, then one AdamW step (with global-norm
//!   clipping) over the full flat parameter vector. It counts `batch * SEQ`
//!   tokens. GFLOP/s is `tok_s * FLOPS_TRAIN / 1e9` (forward + backward per
//!   token; the AdamW update's own few FLOPs per parameter are not counted).
//!   With `--threads N > 1` the batch goes through
//!   [`nl_runtime::parallel::DataParallel`]: split into `N` contiguous
//!   chunks of sequences, one per worker of a pool whose threads are
//!   started once, before timing (worker 0 is the calling thread);
//!   gradients reduced deterministically in worker order, each thread
//!   reducing its own range of elements; then the `1 / batch` scaling and
//!   the AdamW step, each thread on its own range of the flat vectors
//!   ([`nl_runtime::parallel::DataParallel::adamw_step`]).
//!   `--threads 1` is the sequential `Model::loss_and_grad_batch`.
//! - `serve`: one unit of work is 64 streaming `step`s, one token each, with
//!   the memory levels' inner loop on (a zeroed stream has
//!   `freeze_memory == false`, so the memory adapts at every step). The
//!   stream is reset before every run (untimed) and then fed tokens
//!   continuously. GFLOP/s is `tok_s * FLOPS_STEP / 1e9`. Serving is a
//!   single stream and always runs on 1 thread, whatever `--threads` says
//!   (its rows report `threads` 1).
//! - `serve-n`: one unit of work is 64 batched steps of 16 streams
//!   (`Model::try_step_batch`: each step feeds one token to each of the 16
//!   streams, reading each weight once for all of them; docs/batch.md),
//!   inner loop on, the weights packed once before timing. It counts
//!   `64 * 16` tokens (all streams); GFLOP/s is `tok_s * FLOPS_STEP / 1e9`;
//!   the rows report `batch` 16 (the streams) and `threads` 1.
//!
//! Tokens are uniform random in `0..VOCAB`, drawn from
//! [`nl_runtime::rng::Rng`] before timing (a pool reused cyclically), so the
//! RNG is not timed. All arithmetic is `f32`; the state is heap-allocated
//! with [`nl_runtime::boxed_zeroed`]. After an untimed warm-up (`--warmup`,
//! default 1 s, as the first fraction of a second runs measurably slower),
//! each of `--runs` timed runs repeats the unit of work until at least
//! `--min-time` seconds have passed (checked with [`std::time::Instant`]
//! after every unit), and its rate is tokens / elapsed. `tok_s` is the median over the runs, with
//! `tok_s_min` and `tok_s_max`. Results pass through [`std::hint::black_box`].
//!
//! # Peak
//!
//! `peak_gflops` is one core's peak FP32 FMA rate (also with `--threads`
//! above 1, so a 2-thread `peak_fraction` can exceed one core's 100%). By
//! default it is measured (`--peak measured`): twelve independent FMA
//! chains at each vector width the CPU has (512, 256 and 128 bits, detected
//! at run time, so a portable build measures the CPU too), best of three
//! timed runs of about 10 to 40 ms, and the fastest width is the peak. This
//! is the rate the core sustains now, at the clock it really runs at and
//! with the FMA units it really has: a VM's "cpu MHz" need not be its clock,
//! and some AVX-512 cores (e.g. AMD Zen 4) split a 512-bit FMA over two
//! 256-bit units. `--peak model` uses the formula instead:
//!
//! ```text
//! peak = lanes * 2 (an FMA is 2 FLOPs) * fma_units * GHz
//! lanes: 16 if the CPU has avx512f, else 8 if it has avx2 and fma, else 4 (SSE)
//! fma_units: 2 unless --fma-units says otherwise
//! GHz: --ghz, else the largest "cpu MHz" in /proc/cpuinfo / 1000
//! ```
//!
//! Either way it is the peak of the *CPU*, not of the build: a baseline
//! build cannot use AVX at all, which `peak_fraction` then shows. Every
//! JSON line states the basis in `peak_basis` (the measured one also gives
//! the model's figure for comparison).

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use nl::nl_runtime::optim::AdamW;
use nl::nl_runtime::parallel::DataParallel;
use nl::nl_runtime::rng::Rng;
use nl::nl_runtime::{boxed_zeroed, Flat, Model};

nl::nl_model!("models/micro.toml");
nl::nl_model!("models/micro_memory.toml");
nl::nl_model!("models/micro_cms4.toml");
nl::nl_model!("models/d128_memory.toml");
nl::nl_model!("models/deep.toml");
nl::nl_model!("models/deep_memory.toml");

/// Streaming steps per unit of serving work (between two clock reads).
const SERVE_CHUNK: usize = 64;
/// Streams of the `serve-n` mode.
const SERVE_STREAMS: usize = 16;
/// Training sequences in the pre-generated token pool.
const TRAIN_POOL_SEQS: usize = 256;
/// Tokens in the pre-generated serving pool.
const SERVE_POOL_TOKENS: usize = 1 << 16;

/// Benchmark training and serving throughput of the generated models.
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
struct Args {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,

    /// Only models whose spec path contains this substring.
    #[arg(long)]
    model: Option<String>,

    /// Only this mode.
    #[arg(long, value_enum)]
    mode: Option<Mode>,

    /// Timed runs per (model, mode); the reported rate is their median.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    runs: u64,

    /// Minimum duration of each timed run, in seconds.
    #[arg(long, default_value_t = 0.3)]
    min_time: f64,

    /// Untimed warm-up before the runs, in seconds (default: the larger of 1 and --min-time).
    #[arg(long)]
    warmup: Option<f64>,

    /// Sequences per optimizer step in train mode.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: u64,

    /// Worker threads for train mode (data-parallel over the batch); serve mode always uses 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,

    /// Clock for the peak, in GHz (default: the largest "cpu MHz" in /proc/cpuinfo).
    #[arg(long)]
    ghz: Option<f64>,

    /// FMA units per core assumed for the peak by the model (with --peak model).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    fma_units: u32,

    /// Basis of the peak: `measured` (a probe of independent FMA chains at
    /// each vector width the CPU has, on this core, now) or `model` (lanes x
    /// 2 x --fma-units x clock).
    #[arg(long, default_value = "measured", value_parser = ["measured", "model"])]
    peak: String,

    /// Seed for the parameters and the random tokens.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Also print every timed run's rate to stderr.
    #[arg(long)]
    verbose: bool,

    /// Run exactly this many units of work per (model, mode) instead of
    /// timed runs: no warm-up, one run, for instruction counts under a
    /// profiler (`valgrind --tool=callgrind`), where a fixed amount of work
    /// is the repeatable comparison. The rate printed is still tokens per
    /// second of that run.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    units: Option<u64>,
}

/// What is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `loss_and_grad` per sequence plus one AdamW step per batch.
    Train,
    /// Streaming `step`, one token per step, inner loop on.
    Serve,
    /// `SERVE_STREAMS` streams advanced together by `try_step_batch`, one
    /// token each per step, inner loop on.
    #[value(name = "serve-n")]
    ServeN,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Serve => "serve",
            Mode::ServeN => "serve-n",
        }
    }
}

/// Settings shared by every measurement.
#[derive(Clone, Copy, Debug)]
struct Cfg {
    runs: usize,
    min_time: f64,
    warmup: f64,
    batch: usize,
    threads: usize,
    seed: u64,
    verbose: bool,
    units: Option<u64>,
}

/// The rates of the timed runs of one (model, mode).
#[derive(Clone, Debug)]
struct Measurement {
    /// Tokens per second of each timed run.
    rates: Vec<f64>,
    /// Duration of each timed run, in seconds.
    secs: Vec<f64>,
    /// Whether the last loss (train) or logits (serve) were finite.
    finite: bool,
}

/// One benchmarked model: its spec path and its monomorphised benchmarks.
struct Entry {
    path: &'static str,
    name: &'static str,
    params: usize,
    seq: usize,
    flops_train: u64,
    flops_step: u64,
    train: fn(&Cfg) -> Measurement,
    serve: fn(&Cfg) -> Measurement,
    serve_n: fn(&Cfg) -> Measurement,
}

macro_rules! entry {
    ($path:literal, $m:ident) => {
        Entry {
            path: $path,
            name: <$m::Model as Model>::NAME,
            params: <$m::Model as Model>::PARAM_COUNT,
            seq: <$m::Model as Model>::SEQ,
            flops_train: <$m::Model as Model>::FLOPS_TRAIN,
            flops_step: <$m::Model as Model>::FLOPS_STEP,
            train: bench_train::<$m::Model>,
            serve: bench_serve::<$m::Model>,
            serve_n: bench_serve_n::<$m::Model>,
        }
    };
}

fn entries() -> Vec<Entry> {
    vec![
        entry!("models/micro.toml", micro),
        entry!("models/micro_memory.toml", micro_memory),
        entry!("models/micro_cms4.toml", micro_cms4),
        entry!("models/d128_memory.toml", d128_memory),
        entry!("models/deep.toml", deep),
        entry!("models/deep_memory.toml", deep_memory),
    ]
}

/// A benchmark body: `prepare` runs untimed before the warm-up and before
/// every timed run; `unit` is the timed unit of work of `tokens()` tokens.
trait Work {
    fn tokens(&self) -> usize;
    fn prepare(&mut self);
    fn unit(&mut self);
}

/// Warm-up, then `cfg.runs` runs of at least `cfg.min_time` seconds each.
fn measure<W: Work>(cfg: &Cfg, work: &mut W) -> (Vec<f64>, Vec<f64>) {
    let tokens = work.tokens() as f64;
    work.prepare();
    if let Some(n) = cfg.units {
        let start = Instant::now();
        for _ in 0..n {
            work.unit();
        }
        let elapsed = start.elapsed().as_secs_f64();
        return (vec![n as f64 * tokens / elapsed], vec![elapsed]);
    }
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < cfg.warmup {
        work.unit();
    }
    let mut rates = Vec::with_capacity(cfg.runs);
    let mut secs = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        work.prepare();
        let start = Instant::now();
        let mut units = 0u64;
        let elapsed = loop {
            work.unit();
            units += 1;
            let e = start.elapsed().as_secs_f64();
            if e >= cfg.min_time {
                break e;
            }
        };
        let rate = units as f64 * tokens / elapsed;
        if cfg.verbose {
            eprintln!("  run {}: {rate:.0} tok/s over {elapsed:.3} s", rates.len() + 1);
        }
        rates.push(rate);
        secs.push(elapsed);
    }
    (rates, secs)
}

/// Training state of model `M` in `f32`.
struct TrainWork<M: Model> {
    params: Box<M::Params<f32>>,
    grads: Box<M::Params<f32>>,
    ws: Box<M::Workspace<f32>>,
    /// The data-parallel pool (`None` with one thread: the sequential path uses `ws`).
    dp: Option<DataParallel<M, f32>>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    opt: AdamW,
    t: u64,
    batch: usize,
    pool: Vec<u32>,
    next_seq: usize,
    last_loss: f32,
}

impl<M: Model> Work for TrainWork<M>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    fn tokens(&self) -> usize {
        self.batch * M::SEQ
    }

    fn prepare(&mut self) {}

    fn unit(&mut self) {
        let len = M::SEQ + 1;
        self.grads.as_flat_mut().fill(0.0);
        if (self.next_seq + self.batch) * len > self.pool.len() {
            self.next_seq = 0;
        }
        let s = self.next_seq * len;
        self.next_seq += self.batch;
        let batch = black_box(&self.pool[s..s + self.batch * len]);
        let inv = 1.0 / self.batch as f32;
        self.t += 1;
        let (loss, norm) = match self.dp.as_mut() {
            None => {
                let loss = M::loss_and_grad_batch(&*self.params, batch, &mut *self.ws, &mut *self.grads);
                for g in self.grads.as_flat_mut() {
                    *g *= inv;
                }
                let norm = self.opt.step(
                    self.params.as_flat_mut(),
                    self.grads.as_flat_mut(),
                    &mut self.adam_m,
                    &mut self.adam_v,
                    self.t,
                );
                (loss, norm)
            }
            Some(dp) => {
                let loss = dp.loss_and_grad_batch(&*self.params, batch, &mut *self.grads);
                let norm = dp.adamw_step(
                    &self.opt,
                    inv,
                    self.params.as_flat_mut(),
                    self.grads.as_flat_mut(),
                    &mut self.adam_m,
                    &mut self.adam_v,
                    self.t,
                );
                (loss, norm)
            }
        };
        let norm = norm.expect("finite AdamW step");
        black_box(norm);
        self.last_loss = black_box(loss * inv);
    }
}

/// Times training of model `M`: per batch, `loss_and_grad_batch` over the sequences
/// (on `cfg.threads` workers) and one AdamW step over all `PARAM_COUNT` parameters.
fn bench_train<M: Model>(cfg: &Cfg) -> Measurement
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    let mut params = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut *params, cfg.seed);
    let mut rng = Rng::new(cfg.seed ^ 0xBE9C_0000_0000_0001);
    let pool = (0..TRAIN_POOL_SEQS.max(cfg.batch) * (M::SEQ + 1)).map(|_| rng.below(M::VOCAB as u64) as u32).collect();
    let mut work = TrainWork::<M> {
        params,
        grads: boxed_zeroed(),
        ws: boxed_zeroed(),
        dp: (cfg.threads > 1).then(|| DataParallel::new(cfg.threads)),
        adam_m: vec![0.0; M::PARAM_COUNT],
        adam_v: vec![0.0; M::PARAM_COUNT],
        opt: AdamW::default(),
        t: 0,
        batch: cfg.batch,
        pool,
        next_seq: 0,
        last_loss: 0.0,
    };
    let (rates, secs) = measure(cfg, &mut work);
    Measurement { rates, secs, finite: work.last_loss.is_finite() }
}

/// Streaming state of model `M` in `f32`.
struct ServeWork<M: Model> {
    params: Box<M::Params<f32>>,
    stream: Box<M::Stream<f32>>,
    pool: Vec<u32>,
    next: usize,
    last_finite: bool,
}

impl<M: Model> Work for ServeWork<M> {
    fn tokens(&self) -> usize {
        SERVE_CHUNK
    }

    fn prepare(&mut self) {
        M::reset(&mut *self.stream);
    }

    fn unit(&mut self) {
        let start = self.next;
        self.next = (self.next + SERVE_CHUNK) % SERVE_POOL_TOKENS;
        let mut last = 0.0f32;
        for &tok in &self.pool[start..start + SERVE_CHUNK] {
            let logits = M::step(&mut *self.stream, &*self.params, black_box(tok));
            last = black_box(logits)[0];
        }
        self.last_finite = last.is_finite();
    }
}

/// Times streaming of model `M`: one `step` per token, inner loop on.
fn bench_serve<M: Model>(cfg: &Cfg) -> Measurement {
    const { assert!(SERVE_POOL_TOKENS.is_multiple_of(SERVE_CHUNK)) };
    let mut params = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut *params, cfg.seed);
    // A zeroed stream is a reset one with the inner loop on (`freeze_memory == false`).
    let stream = boxed_zeroed::<M::Stream<f32>>();
    let mut rng = Rng::new(cfg.seed ^ 0x5E4E_0000_0000_0002);
    let pool = (0..SERVE_POOL_TOKENS).map(|_| rng.below(M::VOCAB as u64) as u32).collect();
    let mut work = ServeWork::<M> { params, stream, pool, next: 0, last_finite: true };
    let (rates, secs) = measure(cfg, &mut work);
    Measurement { rates, secs, finite: work.last_finite }
}

/// `SERVE_STREAMS` streams of model `M` in `f32`, served together.
struct ServeNWork<M: Model> {
    params: Box<M::Params<f32>>,
    packed: Box<M::Packed<f32>>,
    streams: Box<[M::Stream<f32>; SERVE_STREAMS]>,
    scratch: Box<M::BatchScratch<f32, SERVE_STREAMS>>,
    pool: Vec<u32>,
    next: usize,
    last_finite: bool,
}

impl<M: Model> Work for ServeNWork<M> {
    fn tokens(&self) -> usize {
        SERVE_CHUNK * SERVE_STREAMS
    }

    fn prepare(&mut self) {
        for s in self.streams.iter_mut() {
            M::reset(s);
        }
    }

    fn unit(&mut self) {
        let mut last = 0.0f32;
        for _ in 0..SERVE_CHUNK {
            let start = self.next;
            self.next = (self.next + SERVE_STREAMS) % SERVE_POOL_TOKENS;
            let tokens: &[u32; SERVE_STREAMS] = match self.pool[start..start + SERVE_STREAMS].try_into() {
                Ok(t) => t,
                Err(_) => unreachable!("the pool is a multiple of SERVE_STREAMS"),
            };
            let logits =
                M::try_step_batch(&mut self.streams, &self.params, &self.packed, &mut self.scratch, black_box(tokens))
                    .expect("pool tokens are below VOCAB");
            last = black_box(logits)[0];
        }
        self.last_finite = last.is_finite();
    }
}

/// Times serving `SERVE_STREAMS` streams of model `M` at once: one
/// `try_step_batch` per token of every stream, inner loop on; the weights
/// packed once, untimed.
fn bench_serve_n<M: Model>(cfg: &Cfg) -> Measurement {
    const { assert!(SERVE_POOL_TOKENS.is_multiple_of(SERVE_STREAMS)) };
    let mut params = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut *params, cfg.seed);
    let mut packed = boxed_zeroed::<M::Packed<f32>>();
    M::pack_serving(&params, &mut packed);
    let mut rng = Rng::new(cfg.seed ^ 0x5E4E_0000_0000_0003);
    let pool = (0..SERVE_POOL_TOKENS).map(|_| rng.below(M::VOCAB as u64) as u32).collect();
    let mut work = ServeNWork::<M> {
        params,
        packed,
        streams: boxed_zeroed(),
        scratch: boxed_zeroed(),
        pool,
        next: 0,
        last_finite: true,
    };
    let (rates, secs) = measure(cfg, &mut work);
    Measurement { rates, secs, finite: work.last_finite }
}

/// Median of a non-empty slice (mean of the middle two for an even length).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Target features the binary was compiled with.
fn compiled_features() -> Vec<&'static str> {
    let all = [
        ("sse2", cfg!(target_feature = "sse2")),
        ("avx", cfg!(target_feature = "avx")),
        ("avx2", cfg!(target_feature = "avx2")),
        ("fma", cfg!(target_feature = "fma")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("avx512bw", cfg!(target_feature = "avx512bw")),
        ("avx512vl", cfg!(target_feature = "avx512vl")),
        ("neon", cfg!(target_feature = "neon")),
    ];
    all.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect()
}

/// Features of the CPU the binary runs on.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn detected_features() -> Vec<&'static str> {
    let all = [
        ("sse2", is_x86_feature_detected!("sse2")),
        ("avx", is_x86_feature_detected!("avx")),
        ("avx2", is_x86_feature_detected!("avx2")),
        ("fma", is_x86_feature_detected!("fma")),
        ("avx512f", is_x86_feature_detected!("avx512f")),
        ("avx512bw", is_x86_feature_detected!("avx512bw")),
        ("avx512vl", is_x86_feature_detected!("avx512vl")),
    ];
    all.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect()
}

/// Features of the CPU the binary runs on (detection is only wired up for x86).
#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn detected_features() -> Vec<&'static str> {
    Vec::new()
}

/// The largest "cpu MHz" over the cores in /proc/cpuinfo.
fn cpuinfo_mhz() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .filter(|m| m.is_finite() && *m > 0.0)
        .reduce(f64::max)
}

/// One core's assumed peak FP32 rate and how it was derived.
struct Peak {
    gflops: Option<f64>,
    basis: String,
}

fn peak(detected: &[&str], ghz_flag: Option<f64>, fma_units: u32) -> Peak {
    let has = |f: &str| detected.contains(&f);
    let (lanes, isa) = if has("avx512f") {
        (16, "avx512f")
    } else if has("avx2") && has("fma") {
        (8, "avx2+fma")
    } else if has("sse2") {
        (4, "sse2 (no fma; 2 FLOPs/lane/unit assumed)")
    } else {
        (0, "unknown")
    };
    let (ghz, clock) = match ghz_flag {
        Some(g) => (Some(g), format!("{g} GHz from --ghz")),
        None => match cpuinfo_mhz() {
            Some(mhz) => (Some(mhz / 1e3), format!("{:.3} GHz from max 'cpu MHz' in /proc/cpuinfo", mhz / 1e3)),
            None => (None, "clock unknown (no /proc/cpuinfo 'cpu MHz'; pass --ghz)".to_string()),
        },
    };
    let per_cycle = lanes * 2 * fma_units;
    let gflops = ghz.filter(|_| lanes > 0).map(|g| f64::from(per_cycle) * g);
    let basis = format!(
        "1 core FP32: {lanes} lanes ({isa}, detected) * 2 (FMA) * {fma_units} FMA units = {per_cycle} FLOP/cycle; {clock}"
    );
    Peak { gflops, basis }
}

#[path = "common/fma_probe.rs"]
mod fma_probe;

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number with `prec` decimals, or `null` if not finite.
fn json_num(x: Option<f64>, prec: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "null".to_string(),
    }
}

fn json_list(xs: &[&str]) -> String {
    let items: Vec<String> = xs.iter().map(|s| json_str(s)).collect();
    format!("[{}]", items.join(","))
}

/// Everything reported for one (model, mode, threads).
struct Row<'a> {
    entry: &'a Entry,
    mode: Mode,
    batch: usize,
    threads: usize,
    flops_per_token: u64,
    tok_s: f64,
    tok_s_min: f64,
    tok_s_max: f64,
    run_s: f64,
    gflops: f64,
    peak_fraction: Option<f64>,
    finite: bool,
}

fn row<'a>(entry: &'a Entry, mode: Mode, cfg: &Cfg, peak: &Peak) -> Row<'a> {
    let (m, batch, threads, flops_per_token) = match mode {
        Mode::Train => ((entry.train)(cfg), cfg.batch, cfg.threads, entry.flops_train),
        Mode::Serve => ((entry.serve)(cfg), 1, 1, entry.flops_step),
        Mode::ServeN => ((entry.serve_n)(cfg), SERVE_STREAMS, 1, entry.flops_step),
    };
    let tok_s = median(&m.rates);
    let gflops = tok_s * flops_per_token as f64 / 1e9;
    Row {
        entry,
        mode,
        batch,
        threads,
        flops_per_token,
        tok_s,
        tok_s_min: m.rates.iter().copied().fold(f64::INFINITY, f64::min),
        tok_s_max: m.rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        run_s: median(&m.secs),
        gflops,
        peak_fraction: peak.gflops.map(|p| gflops / p),
        finite: m.finite,
    }
}

fn json_line(r: &Row, cfg: &Cfg, peak: &Peak, compiled: &[&str], detected: &[&str]) -> String {
    let e = r.entry;
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\"model\":{},\"name\":{},\"mode\":{},\"threads\":{},\"batch\":{},\"seq\":{},\"params\":{},\
         \"flops_per_token\":{},\"tok_s\":{},\"tok_s_min\":{},\"tok_s_max\":{},\"runs\":{},\"run_s\":{},\
         \"gflops\":{},\"peak_gflops\":{},\"peak_fraction\":{},\"peak_basis\":{},\
         \"features\":{{\"compiled\":{},\"detected\":{}}},\"dtype\":\"f32\",\"finite\":{}}}",
        json_str(e.path),
        json_str(e.name),
        json_str(r.mode.as_str()),
        r.threads,
        r.batch,
        e.seq,
        e.params,
        r.flops_per_token,
        json_num(Some(r.tok_s), 1),
        json_num(Some(r.tok_s_min), 1),
        json_num(Some(r.tok_s_max), 1),
        cfg.runs,
        json_num(Some(r.run_s), 3),
        json_num(Some(r.gflops), 4),
        json_num(peak.gflops, 3),
        json_num(r.peak_fraction, 5),
        json_str(&peak.basis),
        json_list(compiled),
        json_list(detected),
        r.finite
    );
    s
}

fn table_header() -> String {
    format!(
        "{:<24} {:<7} {:>3} {:>5} {:>11} {:>11} {:>11} {:>8} {:>7} {:>9}",
        "model", "mode", "thr", "batch", "tok/s", "min", "max", "GFLOP/s", "peak%", "FLOP/tok"
    )
}

fn table_line(r: &Row) -> String {
    let frac = r.peak_fraction.map_or_else(|| "-".to_string(), |f| format!("{:.2}%", 100.0 * f));
    let mut s = format!(
        "{:<24} {:<7} {:>3} {:>5} {:>11.0} {:>11.0} {:>11.0} {:>8.3} {:>7} {:>9}",
        r.entry.path,
        r.mode.as_str(),
        r.threads,
        r.batch,
        r.tok_s,
        r.tok_s_min,
        r.tok_s_max,
        r.gflops,
        frac,
        r.flops_per_token
    );
    if !r.finite {
        s.push_str("  (non-finite output!)");
    }
    s
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.min_time.is_finite() && args.min_time > 0.0) {
        eprintln!("error: --min-time must be a positive number of seconds, got {}", args.min_time);
        return ExitCode::FAILURE;
    }
    let warmup = args.warmup.unwrap_or(args.min_time.max(1.0));
    if !(warmup.is_finite() && warmup >= 0.0) {
        eprintln!("error: --warmup must be >= 0 seconds, got {warmup}");
        return ExitCode::FAILURE;
    }
    if let Some(g) = args.ghz {
        if !(g.is_finite() && g > 0.0) {
            eprintln!("error: --ghz must be a positive number, got {g}");
            return ExitCode::FAILURE;
        }
    }
    let cfg = Cfg {
        runs: args.runs as usize,
        min_time: args.min_time,
        warmup,
        batch: args.batch as usize,
        threads: args.threads as usize,
        seed: args.seed,
        verbose: args.verbose,
        units: args.units,
    };

    let compiled = compiled_features();
    let detected = detected_features();
    let model_peak = peak(&detected, args.ghz, args.fma_units);
    let peak = if args.peak == "measured" {
        match fma_probe::measure() {
            Some(m) => Peak {
                gflops: Some(m.best),
                basis: format!("1 core FP32, measured: {}; model for comparison: {}", m.basis, model_peak.basis),
            },
            None => model_peak,
        }
    } else {
        model_peak
    };

    let all = entries();
    let selected: Vec<&Entry> =
        all.iter().filter(|e| args.model.as_deref().is_none_or(|f| e.path.contains(f))).collect();
    if selected.is_empty() {
        eprintln!(
            "error: no model path contains {:?}; the models are: {}",
            args.model.as_deref().unwrap_or(""),
            all.iter().map(|e| e.path).collect::<Vec<_>>().join(", ")
        );
        return ExitCode::FAILURE;
    }
    let modes: Vec<Mode> =
        [Mode::Train, Mode::Serve, Mode::ServeN].into_iter().filter(|m| args.mode.is_none_or(|a| a == *m)).collect();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.json {
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        let _ = writeln!(out, "build: {profile}, compiled features [{}]", compiled.join(" "));
        let _ = writeln!(out, "cpu: detected features [{}]", detected.join(" "));
        let _ = writeln!(
            out,
            "peak: {} GFLOP/s ({})",
            peak.gflops.map_or_else(|| "unknown".to_string(), |g| format!("{g:.1}")),
            peak.basis
        );
        let _ = writeln!(
            out,
            "median of {} runs of >= {} s after {} s warm-up; f32; train: {} thread(s), batch {}; serve: 1 thread; serve-n: {} streams (batch), 1 thread",
            cfg.runs, cfg.min_time, cfg.warmup, cfg.threads, cfg.batch, SERVE_STREAMS
        );
        let _ = writeln!(out, "{}", table_header());
        let _ = out.flush();
    }
    for e in &selected {
        for &mode in &modes {
            let r = row(e, mode, &cfg, &peak);
            let line = if args.json { json_line(&r, &cfg, &peak, &compiled, &detected) } else { table_line(&r) };
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
    ExitCode::SUCCESS
}
