//! Generic checks over any generated model (through `nl_runtime::Model`),
//! each against an independent oracle: central finite differences in f64,
//! the reference interpreter, the training forward.

#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use nl_runtime::{boxed_zeroed, rng::Rng, Flat, Model};

use super::reference::{self, Composition, LevelState, RefSpec, Rule};

/// The reference interpreter's view of a generated model's spec.
pub fn ref_spec<M: Model>() -> RefSpec {
    let plan = nl_spec::plan_from_str(M::SPEC, M::NAME).expect("a generated model's spec is valid");
    let (rule, normalize_keys, periods) = match &plan.memory {
        None => (Rule::Delta, true, Vec::new()),
        Some(m) => (
            match m.rule {
                nl_spec::Rule::Delta => Rule::Delta,
                nl_spec::Rule::Titans => Rule::Titans,
                nl_spec::Rule::Hebbian => Rule::Hebbian,
            },
            m.normalize_keys,
            m.periods.clone(),
        ),
    };
    let composition = match plan.composition {
        nl_spec::Composition::None => Composition::None,
        nl_spec::Composition::Mag => Composition::Mag,
        nl_spec::Composition::Mal => Composition::Mal,
    };
    RefSpec {
        d: plan.d,
        heads: plan.heads,
        vocab: plan.vocab,
        seq_len: plan.seq_len,
        window: plan.window,
        rule,
        composition,
        normalize_keys,
        periods,
        // The plan has no block keys yet: one plain block.
        ..RefSpec::default()
    }
}

/// The parameters by checkpoint name, as the reference interpreter takes them.
pub fn param_map<M: Model>(p: &M::Params<f64>) -> BTreeMap<String, Vec<f64>> {
    let flat = p.as_flat();
    M::TENSORS.iter().map(|t| (t.name.to_string(), flat[t.offset..t.offset + t.len].to_vec())).collect()
}

/// Initialised parameters with every entry also nudged randomly, so that
/// zero-initialised tensors (gate weights) are exercised away from zero.
pub fn random_params<M: Model>(seed: u64, jitter: f64) -> Box<M::Params<f64>> {
    let mut p = boxed_zeroed::<M::Params<f64>>();
    M::init(&mut *p, seed);
    let mut r = Rng::new(seed ^ 0x5EED);
    for x in p.as_flat_mut() {
        *x += jitter * (2.0 * r.next_f64() - 1.0);
    }
    p
}

/// A random token sequence of `SEQ + 1` tokens.
pub fn random_tokens<M: Model>(seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..=M::SEQ).map(|_| r.below(M::VOCAB as u64) as u32).collect()
}

/// Largest absolute difference between the generated forward (f64) and the
/// reference interpreter, over all logits and the loss, for a few seeds.
pub fn max_forward_diff_vs_reference<M: Model>(seeds: &[u64]) -> f64 {
    let spec = ref_spec::<M>();
    let mut ws = boxed_zeroed::<M::Workspace<f64>>();
    let mut worst = 0.0f64;
    for &seed in seeds {
        let p = random_params::<M>(seed, 0.1);
        let tokens = random_tokens::<M>(seed + 100);
        let loss = M::loss(&*p, &tokens, &mut *ws);
        let out = reference::forward(&spec, &param_map::<M>(&p), &tokens, None, true);
        let logits = M::logits(&*ws);
        assert_eq!(logits.len(), M::SEQ * M::VOCAB);
        for t in 0..M::SEQ {
            for v in 0..M::VOCAB {
                worst = worst.max((logits[t * M::VOCAB + v] - out.logits[t][v]).abs());
            }
        }
        worst = worst.max((loss - out.loss).abs());
    }
    worst
}

/// Result of a gradient check.
#[derive(Debug)]
pub struct GradCheck {
    /// Largest relative error over the well-conditioned entries checked.
    pub max_rel: f64,
    /// Largest absolute error over the tiny entries (both sides below `FLOOR`).
    pub max_abs_tiny: f64,
    /// Entries checked.
    pub checked: usize,
    /// The tensor and index of the worst relative error.
    pub worst: (String, usize),
}

/// Entries whose analytic and numeric gradients are both below this are
/// compared absolutely (relative error is meaningless for them).
pub const FLOOR: f64 = 1e-5;

/// Central finite differences in f64 against `loss_and_grad`.
///
/// Sampling: every entry of tensors with at most `per_tensor` entries; for
/// larger tensors, `per_tensor` entries drawn uniformly (seeded), plus for
/// `embed` every row of a token in the sequence (the rows that get gradient).
/// The derivative is the fourth-order central difference
/// `(8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h` with `h = 1e-3`:
/// truncation error O(h^4) ~ 1e-12 and rounding error ~ 1e-16 |f| / h ~ 1e-12,
/// both far below `1e-6 * FLOOR`.
pub fn grad_check<M: Model>(seed: u64, per_tensor: usize) -> GradCheck {
    let mut p = random_params::<M>(seed, 0.1);
    let tokens = random_tokens::<M>(seed + 7);
    let mut ws = boxed_zeroed::<M::Workspace<f64>>();
    let mut g = boxed_zeroed::<M::Params<f64>>();
    M::loss_and_grad(&*p, &tokens, &mut *ws, &mut *g);
    let analytic = g.as_flat().to_vec();
    let mut r = Rng::new(seed ^ 0xC0FFEE);
    let h = 1e-3;
    let mut out = GradCheck { max_rel: 0.0, max_abs_tiny: 0.0, checked: 0, worst: (String::new(), 0) };
    for t in M::TENSORS {
        let mut idx: Vec<usize> = if t.len <= per_tensor {
            (0..t.len).collect()
        } else {
            (0..per_tensor).map(|_| r.below(t.len as u64) as usize).collect()
        };
        if t.name == "embed" {
            for &tok in &tokens[..M::SEQ] {
                let row = tok as usize * M::D;
                idx.push(row + r.below(M::D as u64) as usize);
            }
        }
        for i in idx {
            let j = t.offset + i;
            let x0 = p.as_flat()[j];
            let mut f = |dx: f64| {
                p.as_flat_mut()[j] = x0 + dx;
                let l = M::loss(&*p, &tokens, &mut *ws);
                p.as_flat_mut()[j] = x0;
                l
            };
            let numeric = (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h);
            let a = analytic[j];
            let scale = a.abs().max(numeric.abs());
            if scale < FLOOR {
                out.max_abs_tiny = out.max_abs_tiny.max((a - numeric).abs());
            } else {
                let rel = (a - numeric).abs() / scale;
                if rel > out.max_rel {
                    out.max_rel = rel;
                    out.worst = (t.name.to_string(), i);
                }
            }
            out.checked += 1;
        }
    }
    out
}

/// Largest relative difference between the logits of streaming `step` over
/// `tokens[..SEQ]` and the training forward (both f32), where each row is
/// scaled by its largest logit magnitude (at least 1).
pub fn max_stream_vs_forward_rel<M: Model>(seed: u64) -> f32 {
    let mut p64 = random_params::<M>(seed, 0.05);
    let mut p = boxed_zeroed::<M::Params<f32>>();
    for (d, s) in p.as_flat_mut().iter_mut().zip(p64.as_flat_mut().iter()) {
        *d = *s as f32;
    }
    let tokens = random_tokens::<M>(seed + 3);
    let mut ws = boxed_zeroed::<M::Workspace<f32>>();
    M::loss(&*p, &tokens, &mut *ws);
    let mut st = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *st);
    let mut worst = 0.0f32;
    for t in 0..M::SEQ {
        let row = &M::logits(&*ws)[t * M::VOCAB..(t + 1) * M::VOCAB];
        let scale = row.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let got = M::step(&mut *st, &*p, tokens[t]);
        for (a, b) in got.iter().zip(row) {
            worst = worst.max((a - b).abs() / scale);
        }
    }
    worst
}

/// The reference's zero state for every level of every block of a spec
/// (block-major).
pub fn zero_states(spec: &RefSpec) -> Vec<LevelState> {
    (0..spec.layers * spec.periods.len()).map(|_| LevelState::zero(spec.d)).collect()
}
