//! Stability of the memory under adversarial streams (docs/model.md,
//! "Stability"): every logit stays finite and every level's memory stays
//! below the bound that the contraction argument gives for the model's
//! parameters.
//!
//! # The bound
//!
//! For the first block the memory reads `m_t = e_t`, so a token's key,
//! value and gates depend on the token alone: over the vocabulary we take
//! `alpha_min`, `alpha_max`, `eta_max` (titans), the largest trace
//! contribution `lambda = max sigma |k|^2 / (|k|^2 + eps)` and the largest
//! input `b = max sigma |v| |k| / (|k|^2 + eps)`, with `sigma =
//! sigmoid(w_theta . u + b_theta)` (so `theta = sigma / (p (|k|^2 + eps))`).
//!
//! A fire of a `delta` level applies `M <- M ((1 - alpha) I - A) + sum_i
//! theta_i v_i k_i^T` with `A = sum_i theta_i k_i k_i^T` over at most `p`
//! tokens, so `A` is positive semi-definite with `trace A <= lambda < 1`,
//! the eigenvalues of `(1 - alpha) I - A` lie in `[1 - alpha - lambda, 1 -
//! alpha]`, and in the Frobenius norm
//! `|M'| <= rho |M| + b` with `rho = max(1 - alpha_min, alpha_max + lambda - 1) < 1`.
//! From a reset state (`M = 0`) this gives `|M| <= b / (1 - rho)` at every
//! token. `hebbian` is the same with `rho = 1 - alpha_min`.
//!
//! `titans` puts its momentum on the write term: a fire applies `S' = eta
//! S + W` with `W = sum_i theta_i (1 - eta_i) v_i k_i^T` (`|W| <= b`) and `M' = M ((1 -
//! alpha) I - A) + S'`, so `|S| <= b / (1 - eta_max)` and
//! `|M| <= b / ((1 - eta_max) (1 - rho))`.

#![allow(clippy::needless_range_loop)]

use nl_runtime::optim::AdamW;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Flat, Model};

use super::harness::{param_map, ref_spec};
use super::reference::Rule;

/// `eps` of the key normalisation and of the inner learning rate.
const EPS: f64 = 1e-6;

/// The contraction bound of one level, from its per-token quantities.
#[derive(Clone, Copy, Debug)]
pub struct LevelBound {
    /// Contraction factor of `M` per fire.
    pub rho: f64,
    /// Largest input per fire (titans: the bound on `|S|`).
    pub b: f64,
    /// The bound on `|M|_F` from a reset state (`None` only if `rho` is not below 1).
    pub bound: Option<f64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `W x` for a row-major `[d, d]` matrix.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len()).map(|row| dot(row, x)).collect()
}

/// The bound of every memory level of `M` with parameters `p`.
pub fn level_bounds<M: Model>(p: &M::Params<f32>) -> Vec<LevelBound> {
    let spec = ref_spec::<M>();
    let mut p64 = boxed_zeroed::<M::Params<f64>>();
    for (a, b) in p64.as_flat_mut().iter_mut().zip(p.as_flat()) {
        *a = f64::from(*b);
    }
    let t = param_map::<M>(&p64);
    let d = spec.d;
    (0..spec.periods.len())
        .map(|l| {
            let g = |n: &str| &t[&format!("blocks.0.mem.{l}.{n}")];
            let (mut a_min, mut a_max, mut eta_max, mut lambda, mut b) = (1.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for x in 0..spec.vocab {
                let e = &t["embed"][x * d..(x + 1) * d];
                let mut k = matvec(g("wk"), e);
                if spec.normalize_keys {
                    let s = (dot(&k, &k) + EPS).sqrt();
                    k.iter_mut().for_each(|v| *v /= s);
                }
                let v = matvec(g("wv"), e);
                let gate = |w: &[f64], bias: f64| sigmoid(dot(&w[..d], &k) + dot(&w[d..], &v) + bias);
                let alpha = gate(g("w_alpha"), g("b_alpha")[0]);
                let sigma = gate(g("w_theta"), g("b_theta")[0]);
                let ksq = dot(&k, &k);
                a_min = a_min.min(alpha);
                a_max = a_max.max(alpha);
                lambda = lambda.max(sigma * ksq / (ksq + EPS));
                b = b.max(sigma * dot(&v, &v).sqrt() * ksq.sqrt() / (ksq + EPS));
                if spec.rule == Rule::Titans {
                    eta_max = eta_max.max(gate(g("w_eta"), g("b_eta")[0]));
                }
            }
            let rho = match spec.rule {
                Rule::Hebbian => 1.0 - a_min,
                _ => (1.0 - a_min).max(a_max + lambda - 1.0),
            };
            // titans: the momentum is a bounded average of writes.
            let input = if spec.rule == Rule::Titans { b / (1.0 - eta_max) } else { b };
            LevelBound { rho, b: input, bound: (rho < 1.0).then(|| input / (1.0 - rho)) }
        })
        .collect()
}

/// The adversarial inputs of the stability tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// One token, repeated (a stuck sensor, a repeated byte).
    Constant(u32),
    /// Two tokens, alternating.
    Alternating(u32, u32),
    /// At each step, the token the model finds least likely.
    LeastLikely,
    /// Uniformly random tokens.
    Random(u64),
}

/// What one stream did.
#[derive(Clone, Debug)]
pub struct StreamReport {
    /// Steps run.
    pub steps: u64,
    /// The first step whose logits were not all finite (`None`: all finite).
    pub first_non_finite: Option<u64>,
    /// Largest `|M|_F` seen per level (sampled every few steps and at the end).
    pub max_norm: Vec<f64>,
}

/// Streams `steps` tokens of `input` through a reset stream of `M`.
pub fn stream<M: Model>(p: &M::Params<f32>, input: Input, steps: u64) -> StreamReport {
    let mut st = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut st);
    let mut rng = Rng::new(match input {
        Input::Random(seed) => seed,
        _ => 0,
    });
    let mut report = StreamReport { steps, first_non_finite: None, max_norm: vec![0.0; M::LEVELS] };
    let mut next = match input {
        Input::Constant(x) | Input::Alternating(x, _) => x,
        _ => 0,
    };
    for i in 0..steps {
        let logits = M::step(&mut st, p, next);
        if report.first_non_finite.is_none() && logits.iter().any(|x| !x.is_finite()) {
            report.first_non_finite = Some(i);
        }
        next = match input {
            Input::Constant(x) => x,
            Input::Alternating(a, b) => {
                if i % 2 == 0 {
                    b
                } else {
                    a
                }
            }
            Input::LeastLikely => argmin(logits),
            Input::Random(_) => rng.below(M::VOCAB as u64) as u32,
        };
        if i % 7 == 0 || i + 1 == steps {
            for l in 0..M::LEVELS {
                let n = M::memory_level(&st, l).expect("level exists").m_norm();
                // NaN compares false: record it as infinite.
                report.max_norm[l] = if n.is_nan() { f64::INFINITY } else { report.max_norm[l].max(n) };
            }
        }
    }
    report
}

fn argmin(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v < x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Parameters after `steps` AdamW steps (batch `batch`, learning rate
/// `lr`, the main job's other settings) on `text` read as tokens modulo the
/// vocabulary, from `init(seed)`.
pub fn trained<M: Model>(text: &[u8], steps: u64, batch: usize, lr: f64, seed: u64) -> Box<M::Params<f32>> {
    let mut p = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut *p, seed);
    let mut g = boxed_zeroed::<M::Params<f32>>();
    let mut ws = boxed_zeroed::<M::Workspace<f32>>();
    let n = M::PARAM_COUNT;
    let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
    let opt = AdamW { lr, ..AdamW::default() };
    let mut rng = Rng::new(seed);
    let mut tokens = vec![0u32; batch * (M::SEQ + 1)];
    for step in 1..=steps {
        for seq in tokens.chunks_exact_mut(M::SEQ + 1) {
            let at = rng.below((text.len() - M::SEQ - 1) as u64) as usize;
            for (t, b) in seq.iter_mut().zip(&text[at..]) {
                *t = u32::from(*b) % M::VOCAB as u32;
            }
        }
        g.as_flat_mut().fill(0.0);
        M::loss_and_grad_batch(&p, &tokens, &mut ws, &mut g);
        let scale = 1.0 / batch as f32;
        g.as_flat_mut().iter_mut().for_each(|x| *x *= scale);
        opt.step(p.as_flat_mut(), g.as_flat_mut(), &mut m, &mut v, step).expect("finite AdamW step");
    }
    p
}

/// The shipped corpus.
pub fn corpus() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/data/corpus.txt")).expect("data/corpus.txt is readable")
}

/// The token with the largest bound input `sigma |v| |k| / (|k|^2 + eps)` at level 0
/// (token 0 for a model without memory): the worst one to repeat.
pub fn worst_token<M: Model>(p: &M::Params<f32>) -> u32 {
    if M::LEVELS == 0 {
        return 0;
    }
    let spec = ref_spec::<M>();
    let mut p64 = boxed_zeroed::<M::Params<f64>>();
    for (a, b) in p64.as_flat_mut().iter_mut().zip(p.as_flat()) {
        *a = f64::from(*b);
    }
    let t = param_map::<M>(&p64);
    let d = spec.d;
    let mut best = (0, f64::NEG_INFINITY);
    for x in 0..spec.vocab {
        let e = &t["embed"][x * d..(x + 1) * d];
        let mut k = matvec(&t["blocks.0.mem.0.wk"], e);
        if spec.normalize_keys {
            let s = (dot(&k, &k) + EPS).sqrt();
            k.iter_mut().for_each(|v| *v /= s);
        }
        let v = matvec(&t["blocks.0.mem.0.wv"], e);
        let w = &t["blocks.0.mem.0.w_theta"];
        let sigma = sigmoid(dot(&w[..d], &k) + dot(&w[d..], &v) + t["blocks.0.mem.0.b_theta"][0]);
        let ksq = dot(&k, &k);
        let score = sigma * dot(&v, &v).sqrt() * ksq.sqrt() / (ksq + EPS);
        if score > best.1 {
            best = (x as u32, score);
        }
    }
    best.0
}

/// The four adversarial inputs for a model with parameters `p`.
pub fn inputs<M: Model>(p: &M::Params<f32>) -> [Input; 4] {
    let v = M::VOCAB as u32;
    [Input::Constant(worst_token::<M>(p)), Input::Alternating(0, v - 1), Input::LeastLikely, Input::Random(7)]
}

/// Streams every input through `p` for `steps` tokens, prints one line
/// each, and asserts finiteness and the bound; `label` names the weights.
pub fn check<M: Model>(p: &M::Params<f32>, label: &str, steps: u64) {
    let bounds = level_bounds::<M>(p);
    for input in inputs::<M>(p) {
        let r = stream::<M>(p, input, steps);
        let finite =
            r.first_non_finite.map_or("all logits finite".to_string(), |t| format!("NON-FINITE logits from token {t}"));
        let mut line = format!("{} {label} {input:?} {steps} tokens, {finite}:", M::NAME);
        for (l, b) in bounds.iter().enumerate() {
            let bound = b.bound.map_or("none".to_string(), |x| format!("{x:.4e}"));
            line +=
                &format!(" level {l} max |M| {:.4e} (bound {bound}, rho {:.6}, b {:.3e});", r.max_norm[l], b.rho, b.b);
        }
        eprintln!("{line}");
        assert_eq!(r.first_non_finite, None, "{line}: non-finite logits");
        for (l, b) in bounds.iter().enumerate() {
            assert!(r.max_norm[l].is_finite(), "{line}: level {l} memory not finite");
            if let Some(bound) = b.bound {
                // f32 rounding: a relative slack far below any real excess.
                assert!(r.max_norm[l] <= bound * (1.0 + 1e-3) + 1e-6, "{line}: level {l} above its bound");
            }
        }
    }
}
