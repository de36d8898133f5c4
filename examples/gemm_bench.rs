//! Throughput of the training pass's matrix products alone, at the shapes
//! of the main job's model (`models/deep.toml`: `T` = 128 tokens, width
//! 128, 4 heads of 32, MLP width 256, 256 bytes), one core.
//!
//! ```text
//! cargo run --release --example gemm_bench
//! RUSTFLAGS="-C target-cpu=native" cargo run --release --example gemm_bench
//! cargo run --release --example gemm_bench -- --runs 9 --min-time 0.2
//! cargo run --release --example gemm_bench -- --sets 16
//! ```
//!
//! Each row is one of the three products of a linear layer `Y = X W^T`
//! (`x` `[T, I]`, `w` `[O, I]`; see `nl_runtime::gemm`): `fwd`
//! ([`linear_t`], `[T, I] x [I, O]`), `dx` ([`linear_backward_input_acc`],
//! `[T, O] x [O, I]`) and `dw` ([`linear_backward_weight_acc`],
//! `[O, T] x [T, I]`), each `2 T O I` FLOPs. The rates are medians of
//! `--runs` timed runs of at least `--min-time` seconds, after an untimed
//! warm-up; `% peak` is against the measured FMA peak of the core (the
//! `bench` example's probe). The kernel path is the one the dispatch picks
//! (`NL_KERNELS` can force a lower one).
//!
//! The rows show where the training pass's matrix time goes and how close
//! each shape comes to the peak; the model-level figure (`bench`) adds
//! everything between the products.
//!
//! By default every call reads the same operands, which then sit in the
//! L1 and L2 caches. `--sets N` keeps `N` copies of each layer's operands
//! and takes them in turn: with a total beyond the core's L2 cache (16
//! copies of the `[128, 128]` layer are 3 MiB) every call fetches its
//! operands from further out, as the training pass does (a training step
//! of `deep` touches several MiB: weights, their gradients, the kept
//! activations).

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use nl::nl_runtime::gemm::{linear_backward_input_acc, linear_backward_weight_acc, linear_t, path, transpose};
use nl::nl_runtime::{boxed_zeroed, rng::Rng};

#[path = "common/fma_probe.rs"]
mod fma_probe;

/// Timing settings.
struct Cfg {
    runs: usize,
    min_time: f64,
    /// Copies of each layer's operands, taken in turn.
    sets: usize,
}

/// The median of the timed runs' rates (GFLOP/s) of `f`, `flops` per call.
fn rate(cfg: &Cfg, flops: f64, mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < cfg.min_time {
        f();
    }
    let mut rates: Vec<f64> = (0..cfg.runs)
        .map(|_| {
            let t = Instant::now();
            let mut calls = 0u64;
            while t.elapsed().as_secs_f64() < cfg.min_time {
                f();
                calls += 1;
            }
            calls as f64 * flops / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Fills a matrix with uniform values in `[-1, 1)`.
fn fill<const R: usize, const C: usize>(m: &mut [[f32; C]; R], rng: &mut Rng) {
    for x in m.as_flattened_mut() {
        *x = (2.0 * rng.next_f64() - 1.0) as f32;
    }
}

/// One set of a linear layer's operands.
struct Operands<const T: usize, const O: usize, const I: usize> {
    x: Box<[[f32; I]; T]>,
    w: Box<[[f32; I]; O]>,
    wt: Box<[[f32; O]; I]>,
    dy: Box<[[f32; O]; T]>,
    y: Box<[[f32; O]; T]>,
    dx: Box<[[f32; I]; T]>,
    dw: Box<[[f32; I]; O]>,
}

impl<const T: usize, const O: usize, const I: usize> Operands<T, O, I> {
    fn new(rng: &mut Rng) -> Self {
        let mut o = Operands {
            x: boxed_zeroed(),
            w: boxed_zeroed(),
            wt: boxed_zeroed(),
            dy: boxed_zeroed(),
            y: boxed_zeroed(),
            dx: boxed_zeroed(),
            dw: boxed_zeroed(),
        };
        fill(&mut o.x, rng);
        fill(&mut o.w, rng);
        fill(&mut o.dy, rng);
        transpose(&o.w, &mut o.wt);
        o
    }
}

/// Times the three products of a `[T, I] -> [T, O]` linear layer; returns
/// one [`Row`] per product. With `cfg.sets > 1` each call takes the next
/// of that many copies of the operands, so they come from as far down the
/// cache hierarchy as the copies' total size sends them.
fn layer<const T: usize, const O: usize, const I: usize>(cfg: &Cfg, what: &'static str) -> Vec<Row> {
    let mut rng = Rng::new(7);
    let mut sets: Vec<Operands<T, O, I>> = (0..cfg.sets).map(|_| Operands::new(&mut rng)).collect();
    let flops = 2.0 * (T * O * I) as f64;
    let mut next = 0usize;
    let mut pick = move |n: usize| {
        next = (next + 1) % n;
        next
    };
    let n = sets.len();
    let fwd = rate(cfg, flops, || {
        let o = &mut sets[pick(n)];
        linear_t(black_box(&*o.x), black_box(&*o.wt), black_box(&mut *o.y))
    });
    // The accumulating products grow their outputs run after run; reset
    // them now and then so the values stay ordinary floats (the reset is
    // timed: one pass over each output per 64 of its products, about 1% of
    // them). The sets are taken in turn, so the `n` calls of every 64th
    // round reset each set once.
    let mut calls = 0usize;
    let dxr = rate(cfg, flops, || {
        calls += 1;
        let o = &mut sets[pick(n)];
        if calls % (64 * n) < n {
            o.dx.as_flattened_mut().fill(0.0);
        }
        linear_backward_input_acc(black_box(&*o.dy), black_box(&*o.w), black_box(&mut *o.dx))
    });
    let dwr = rate(cfg, flops, || {
        calls += 1;
        let o = &mut sets[pick(n)];
        if calls % (64 * n) < n {
            o.dw.as_flattened_mut().fill(0.0);
        }
        linear_backward_weight_acc(black_box(&*o.dy), black_box(&*o.x), black_box(&mut *o.dw))
    });
    vec![
        Row { what, product: "fwd", shape: [T, I, O], gflops: fwd },
        Row { what, product: "dx", shape: [T, O, I], gflops: dxr },
        Row { what, product: "dw", shape: [O, T, I], gflops: dwr },
    ]
}

/// One measured product.
struct Row {
    what: &'static str,
    product: &'static str,
    /// `[m, k, n]` of `C (+)= A B`.
    shape: [usize; 3],
    gflops: f64,
}

fn parse() -> Result<Cfg, String> {
    let mut cfg = Cfg { runs: 5, min_time: 0.1, sets: 1 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--runs" => {
                let v = value("--runs")?;
                cfg.runs = v.parse().ok().filter(|&n| n >= 1).ok_or(format!("--runs: not a count >= 1: {v}"))?;
            }
            "--min-time" => {
                let v = value("--min-time")?;
                cfg.min_time = v
                    .parse()
                    .ok()
                    .filter(|&t: &f64| t.is_finite() && t > 0.0)
                    .ok_or(format!("--min-time: not a positive number of seconds: {v}"))?;
            }
            "--sets" => {
                let v = value("--sets")?;
                cfg.sets = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=4096).contains(&n))
                    .ok_or(format!("--sets: not a count in 1..=4096: {v}"))?;
            }
            "--help" | "-h" => {
                return Err("usage: gemm_bench [--runs N (default 5)] [--min-time SECONDS (default 0.1)] \
                            [--sets N (default 1: copies of the operands, taken in turn)]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?} (--help lists them)")),
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let peak = fma_probe::measure();
    match &peak {
        Some(p) => println!("peak: {:.1} GFLOP/s (1 core FP32, measured: {})", p.best, p.basis),
        None => println!("peak: not measured on this CPU"),
    }
    println!("kernel path: {} (NL_KERNELS can force a lower one)", path().name());
    println!("median of {} runs of >= {} s", cfg.runs, cfg.min_time);
    if cfg.sets > 1 {
        println!("operands: {} copies per layer, taken in turn (see --help)", cfg.sets);
    }
    let mut rows = Vec::new();
    // deep.toml: T = 128, d_model 128, heads 4 x 32, mlp 256, vocab 256.
    rows.extend(layer::<128, 128, 128>(&cfg, "attention q/k/v/o"));
    rows.extend(layer::<128, 256, 128>(&cfg, "mlp gate/up, unembed"));
    rows.extend(layer::<128, 128, 256>(&cfg, "mlp down"));
    // The attention's products run per head in blocks of 32 queries
    // (nl_runtime::attn); the last block's, over all 128 keys:
    rows.extend(layer::<32, 128, 32>(&cfg, "scores (32 queries)"));
    rows.extend(layer::<32, 32, 128>(&cfg, "P V (32 queries)"));
    println!("{:<24} {:>7} {:>16} {:>9} {:>7}", "layer", "product", "[m, k, n]", "GFLOP/s", "% peak");
    for r in &rows {
        let pct = peak.as_ref().map_or("-".to_string(), |p| format!("{:.1}%", 100.0 * r.gflops / p.best));
        let shape = format!("{:?}", r.shape);
        println!("{:<24} {:>7} {:>16} {:>9.1} {:>7}", r.what, r.product, shape, r.gflops, pct);
    }
    ExitCode::SUCCESS
}
