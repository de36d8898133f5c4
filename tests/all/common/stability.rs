//! Stability of the memory under adversarial streams (docs/model.md,
//! "Stability"): every logit stays finite and every level's memory stays
//! below the bound that the contraction argument gives for the model's
//! parameters.
//!
//! # The bound
//!
//! A level reads `u = N_a(x)`, its block's pre-norm of the block's input
//! (`N_a` is the identity without norms), and a token's key, value and gates
//! depend on `u` alone: `k = n(Wk u)` (or `Wk u` with raw keys), `v = Wv u`,
//! `alpha = sigmoid(w_alpha . [k; v] + b_alpha)`, `sigma = sigmoid(w_theta .
//! [k; v] + b_theta)` (so `theta = sigma / (p (|k|^2 + eps))`) and, for
//! titans, `eta`. From the extrema of these over the inputs the level can see,
//! `alpha_min`, `alpha_max`, `eta_max`, the largest trace contribution
//! `lambda = max sigma |k|^2 / (|k|^2 + eps)` and the largest input
//! `b = max sigma |v| |k| / (|k|^2 + eps)`:
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
//!
//! `rho` grows with `lambda` and `alpha_max` and falls with `alpha_min`, so
//! any valid bounds on the extrema (a lower bound on `alpha_min`, upper
//! bounds on the others) give a valid, looser bound on `|M|`. Where the
//! extrema come from is what differs between blocks: see
//! [`exact_level_bound`] (block 0: exact, over the vocabulary) and
//! [`norm_level_bound`] (blocks after the first: from the pre-norm alone).
//! A block after the first without norms reads a residual stream that
//! depends on the whole context and is bounded by nothing in its own
//! parameters: its levels have no bound here and are only checked to stay
//! finite.

#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use nl_runtime::optim::AdamW;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Flat, Model};

use super::harness::{param_map, ref_spec};
use super::reference::{apply_norm_values, Norm, RefSpec, Rule};

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
    /// `true`: the extrema are exact, over the vocabulary (block 0);
    /// `false`: bounds on them from the block's pre-norm (blocks after the first).
    pub exact: bool,
}

impl LevelBound {
    /// Combines the extrema (or bounds on them) into `rho`, `b` and the bound.
    fn from_extrema(rule: Rule, ex: Extrema, exact: bool) -> Self {
        let Extrema { a_min, a_max, eta_max, lambda, b } = ex;
        let rho = match rule {
            Rule::Hebbian => 1.0 - a_min,
            _ => (1.0 - a_min).max(a_max + lambda - 1.0),
        };
        // titans: the momentum is a bounded average of writes.
        let input = if rule == Rule::Titans { b / (1.0 - eta_max) } else { b };
        LevelBound { rho, b: input, bound: (rho < 1.0).then(|| input / (1.0 - rho)), exact }
    }
}

/// `alpha_min`, `alpha_max`, `eta_max` (0 unless titans), `lambda`, `b`.
#[derive(Clone, Copy, Debug)]
struct Extrema {
    a_min: f64,
    a_max: f64,
    eta_max: f64,
    lambda: f64,
    b: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm2(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// `W x` for a row-major `[d, d]` matrix.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks_exact(x.len()).map(|row| dot(row, x)).collect()
}

/// The parameters in f64, by checkpoint name.
fn params64<M: Model>(p: &M::Params<f32>) -> BTreeMap<String, Vec<f64>> {
    let mut p64 = boxed_zeroed::<M::Params<f64>>();
    for (a, b) in p64.as_flat_mut().iter_mut().zip(p.as_flat()) {
        *a = f64::from(*b);
    }
    param_map::<M>(&p64)
}

/// The gain `g` and shift `beta` (zero for `rms`) of block `b`'s branch
/// pre-norm `N_a`; `None` without norms.
fn norm_a<'a>(spec: &RefSpec, t: &'a BTreeMap<String, Vec<f64>>, b: usize) -> Option<(&'a [f64], Vec<f64>)> {
    let name = |n: &str| format!("blocks.{b}.norm_a.{n}");
    match spec.norm {
        Norm::None => None,
        Norm::Rms => Some((&t[&name("g")], vec![0.0; spec.d])),
        Norm::Layer => Some((&t[&name("g")], t[&name("beta")].clone())),
    }
}

/// What block 0 reads for token `x`: `u = N_a(e_x)` (docs/model.md,
/// "Blocks", eps included), `e_x` itself without norms.
fn block0_input(spec: &RefSpec, t: &BTreeMap<String, Vec<f64>>, x: usize) -> Vec<f64> {
    let e = &t["embed"][x * spec.d..(x + 1) * spec.d];
    match norm_a(spec, t, 0) {
        None => e.to_vec(),
        Some((g, beta)) => apply_norm_values(spec.norm, g, &beta, e),
    }
}

/// Block 0, level `l`: the extrema over the vocabulary, exact because block
/// 0 reads `u = N_a(e_t)`, a function of the token alone (for a one-block
/// model without norms, `e_t`: the first version's bound, number for
/// number).
fn exact_level_bound(spec: &RefSpec, t: &BTreeMap<String, Vec<f64>>, l: usize) -> LevelBound {
    let d = spec.d;
    let g = |n: &str| &t[&format!("blocks.0.mem.{l}.{n}")];
    let mut ex = Extrema { a_min: 1.0, a_max: 0.0, eta_max: 0.0, lambda: 0.0, b: 0.0 };
    for x in 0..spec.vocab {
        let e = block0_input(spec, t, x);
        let mut k = matvec(g("wk"), &e);
        if spec.normalize_keys {
            let s = (dot(&k, &k) + EPS).sqrt();
            k.iter_mut().for_each(|v| *v /= s);
        }
        let v = matvec(g("wv"), &e);
        let gate = |w: &[f64], bias: f64| sigmoid(dot(&w[..d], &k) + dot(&w[d..], &v) + bias);
        let alpha = gate(g("w_alpha"), g("b_alpha")[0]);
        let sigma = gate(g("w_theta"), g("b_theta")[0]);
        let ksq = dot(&k, &k);
        ex.a_min = ex.a_min.min(alpha);
        ex.a_max = ex.a_max.max(alpha);
        ex.lambda = ex.lambda.max(sigma * ksq / (ksq + EPS));
        ex.b = ex.b.max(sigma * dot(&v, &v).sqrt() * ksq.sqrt() / (ksq + EPS));
        if spec.rule == Rule::Titans {
            ex.eta_max = ex.eta_max.max(gate(g("w_eta"), g("b_eta")[0]));
        }
    }
    LevelBound::from_extrema(spec.rule, ex, true)
}

/// Squarings in [`spectral_bound`].
const SQUARINGS: u32 = 6;

/// An upper bound on the spectral norm `|A|_2` of a row-major `[rows, d]`
/// matrix: with `B = A^T A / |A|_F^2` (eigenvalues `sigma_i^2 / |A|_F^2 <=
/// 1`), `|A|_2^(2 m) <= trace(B^m) |A|_F^(2 m)` for `m = 2^SQUARINGS`
/// (`sigma_max^(2 m) <= sum_i sigma_i^(2 m)`), so `|A|_2 <= |A|_F
/// trace(B^m)^(1 / (2 m))`: at most `d^(1 / (2 m))` (1.04 for `d = 128`)
/// times `|A|_2`, and never above `|A|_F`. The factor `1 + 1e-9` covers the
/// rounding of the products (relative errors near `1e-13`).
pub fn spectral_bound(a: &[f64], d: usize) -> f64 {
    let fro = norm2(a);
    if fro == 0.0 {
        return 0.0;
    }
    let mut b = vec![0.0; d * d];
    for row in a.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                b[i * d + j] += row[i] * row[j] / (fro * fro);
            }
        }
    }
    for _ in 0..SQUARINGS {
        let mut c = vec![0.0; d * d];
        for i in 0..d {
            for k in 0..d {
                let x = b[i * d + k];
                for j in 0..d {
                    c[i * d + j] += x * b[k * d + j];
                }
            }
        }
        b = c;
    }
    let trace: f64 = (0..d).map(|i| b[i * d + i]).sum();
    let m = f64::from(1u32 << SQUARINGS);
    fro * trace.powf(1.0 / (2.0 * m)).min(1.0) * (1.0 + 1e-9)
}

/// An upper bound on `|W u|_2` over every output `u = g * z + beta` of a
/// pre-norm with gain `g` and shift `beta` (zero for `rms`), where `|z|_2 <=
/// sqrt(d)`: `|W diag(g)|_2 sqrt(d) + |W beta|_2`, the spectral norm bounded
/// by [`spectral_bound`] (below the Frobenius norm).
pub fn projection_bound(w: &[f64], g: &[f64], beta: &[f64]) -> f64 {
    let d = g.len();
    let wg: Vec<f64> = w.chunks_exact(d).flat_map(|row| row.iter().zip(g).map(|(a, b)| a * b)).collect();
    spectral_bound(&wg, d) * (d as f64).sqrt() + norm2(&matvec(w, beta))
}

/// Block `blk > 0`, level `l`, with norms: bounds on the extrema that hold
/// for every input `x` of the block, from the block's parameters alone.
///
/// - The pre-norm. `rms`: `u = g * z` with `z = x / sqrt(mean(x^2) + eps)`,
///   `|z|^2 = d mean(x^2) / (mean(x^2) + eps) < d`, so `|z|_2 < sqrt(d)` (and
///   `|u_i| <= |g_i| sqrt(d)`, `|u|_2 <= max|g| sqrt(d)`) whatever `x` is.
///   `layer`: `u = g * z + beta` with `z = (x - mean) / sqrt(var + eps)`,
///   `|z|^2 = d var / (var + eps) < d`, the same.
/// - Projections: `|W u| <= |W diag(g) z| + |W beta|`, at most
///   `|W diag(g)|_2 sqrt(d) + |W beta|` ([`projection_bound`]; at most
///   `|W|_F max|g| sqrt(d) + |W|_F |beta|`). So `|v| <= V`; `|Wk u| <= R`,
///   and `|k| <= K` with `K = R / sqrt(R^2 + eps)` (< 1, as `r / sqrt(r^2 +
///   eps)` grows with `r`) when keys are normalised, `K = R` when raw.
/// - Gates: `w . [k; v] = w_k . k + a . u` with `a = Wv^T w_v` (`v` is linear
///   in `u`), so `|w . [k; v]| <= s = |w_k| K + |g * a| sqrt(d) + |a . beta|`
///   (below `|w_k| K + |w_v| V`), and a gate lies in `[sigmoid(bias - s),
///   sigmoid(bias + s)]`: this bounds `alpha_min` from below, `alpha_max`,
///   `sigma_max` and `eta_max` from above.
/// - `lambda <= sigma_max K^2 / (K^2 + eps)` (`r^2 / (r^2 + eps)` grows with `r`).
/// - `b <= sigma_max V f` with `f = max_{0 <= r <= K} r / (r^2 + eps)`:
///   `K / (K^2 + eps)` if `K <= sqrt(eps)`, else `1 / (2 sqrt(eps))` = 500.
///   Nothing in the parameters keeps `|k|` away from `sqrt(eps)` (a residual
///   stream near 0, or `u` near the kernel of `Wk`), and there a write
///   `theta v k^T` really is `sigma |v| / (2 sqrt(eps))`: this factor is
///   the main reason the bound is loose (thousands of times the measured
///   norms at init) where block 0's, with `|k| ~ 1` for every token, is not.
///
/// Then `rho`, `b / (1 - rho)` and titans' `1 / (1 - eta_max)` as for block
/// 0. When a trained gate's `s` is large, `alpha_min` rounds to 0, `rho` to
/// 1 and the level has no finite bound (`bound: None`, finiteness only).
fn norm_level_bound(spec: &RefSpec, t: &BTreeMap<String, Vec<f64>>, blk: usize, l: usize) -> Option<LevelBound> {
    let d = spec.d;
    let (gain, beta) = norm_a(spec, t, blk)?;
    let g = |n: &str| &t[&format!("blocks.{blk}.mem.{l}.{n}")];
    let r = projection_bound(g("wk"), gain, &beta);
    let k_max = if spec.normalize_keys { r / (r * r + EPS).sqrt() } else { r };
    let wv = g("wv");
    let v_max = projection_bound(wv, gain, &beta);
    // The range of `w . [k; v]` is within `[-s, s]`.
    let s = |w: &[f64]| {
        let mut a = vec![0.0; d];
        for (row, wi) in wv.chunks_exact(d).zip(&w[d..]) {
            a.iter_mut().zip(row).for_each(|(a, r)| *a += wi * r);
        }
        let ga: Vec<f64> = a.iter().zip(gain).map(|(a, g)| a * g).collect();
        norm2(&w[..d]) * k_max + norm2(&ga) * (d as f64).sqrt() + dot(&a, &beta).abs()
    };
    let (wa, ba) = (g("w_alpha"), g("b_alpha")[0]);
    let (wt, bt) = (g("w_theta"), g("b_theta")[0]);
    let sigma_max = sigmoid(bt + s(wt));
    let f = if k_max <= EPS.sqrt() { k_max / (k_max * k_max + EPS) } else { 1.0 / (2.0 * EPS.sqrt()) };
    let ex = Extrema {
        a_min: sigmoid(ba - s(wa)),
        a_max: sigmoid(ba + s(wa)),
        eta_max: if spec.rule == Rule::Titans { sigmoid(g("b_eta")[0] + s(g("w_eta"))) } else { 0.0 },
        lambda: sigma_max * k_max * k_max / (k_max * k_max + EPS),
        b: sigma_max * v_max * f,
    };
    Some(LevelBound::from_extrema(spec.rule, ex, false))
}

/// The bound of every memory level of `M` with parameters `p`, block-major
/// (entry `b * LEVELS + l` is block `b`'s level `l`, the index of
/// [`Model::memory_level`]): exact extrema for block 0, bounds from the
/// pre-norm for later blocks, `None` for later blocks of a model without
/// norms (no bound from the parameters: finiteness only).
pub fn level_bounds<M: Model>(p: &M::Params<f32>) -> Vec<Option<LevelBound>> {
    let spec = ref_spec::<M>();
    let t = params64::<M>(p);
    let levels = spec.periods.len();
    (0..spec.layers * levels)
        .map(|i| {
            let (blk, l) = (i / levels, i % levels);
            if blk == 0 {
                Some(exact_level_bound(&spec, &t, l))
            } else {
                norm_level_bound(&spec, &t, blk, l)
            }
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
    /// Largest `|M|_F` seen per level of every block, block-major (sampled
    /// every few steps and at the end).
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
    let levels = M::LAYERS * M::LEVELS;
    let mut report = StreamReport { steps, first_non_finite: None, max_norm: vec![0.0; levels] };
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
            for l in 0..levels {
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

/// The token with the largest bound input `sigma |v| |k| / (|k|^2 + eps)` at
/// block 0's level 0, which reads `N_a(e_t)` (token 0 for a model without
/// memory): the worst one to repeat.
pub fn worst_token<M: Model>(p: &M::Params<f32>) -> u32 {
    if M::LEVELS == 0 {
        return 0;
    }
    let spec = ref_spec::<M>();
    let t = params64::<M>(p);
    let d = spec.d;
    let mut best = (0, f64::NEG_INFINITY);
    for x in 0..spec.vocab {
        let e = block0_input(&spec, &t, x);
        let mut k = matvec(&t["blocks.0.mem.0.wk"], &e);
        if spec.normalize_keys {
            let s = (dot(&k, &k) + EPS).sqrt();
            k.iter_mut().for_each(|v| *v /= s);
        }
        let v = matvec(&t["blocks.0.mem.0.wv"], &e);
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
/// each, and asserts finiteness and the bound of every level of every block
/// that has one (levels without one: finiteness only); `label` names the
/// weights. Each line gives, per level, `max |M|`, the bound and their
/// ratio (how loose the bound is).
pub fn check<M: Model>(p: &M::Params<f32>, label: &str, steps: u64) {
    let bounds = level_bounds::<M>(p);
    for input in inputs::<M>(p) {
        let r = stream::<M>(p, input, steps);
        let finite =
            r.first_non_finite.map_or("all logits finite".to_string(), |t| format!("NON-FINITE logits from token {t}"));
        let mut line = format!("{} {label} {input:?} {steps} tokens, {finite}:", M::NAME);
        for (i, b) in bounds.iter().enumerate() {
            let (blk, l) = (i / M::LEVELS, i % M::LEVELS);
            line += &match b {
                None => format!(" block {blk} level {l} max |M| {:.4e} (no bound: finite only);", r.max_norm[i]),
                Some(b) => {
                    let bound = b.bound.map_or("none".to_string(), |x| format!("{x:.4e}"));
                    let kind = if b.exact { "exact" } else { "from norm" };
                    let ratio = b.bound.map_or(String::new(), |x| format!(", ratio {:.2e}", r.max_norm[i] / x));
                    format!(
                        " block {blk} level {l} max |M| {:.4e} (bound {bound} {kind}, rho {:.6}, b {:.3e}{ratio});",
                        r.max_norm[i], b.rho, b.b
                    )
                }
            };
        }
        eprintln!("{line}");
        assert_eq!(r.first_non_finite, None, "{line}: non-finite logits");
        for (i, b) in bounds.iter().enumerate() {
            assert!(r.max_norm[i].is_finite(), "{line}: level {i} memory not finite");
            if let Some(bound) = b.and_then(|b| b.bound) {
                // f32 rounding: a relative slack far below any real excess.
                assert!(r.max_norm[i] <= bound * (1.0 + 1e-3) + 1e-6, "{line}: level {i} above its bound");
            }
        }
    }
}
