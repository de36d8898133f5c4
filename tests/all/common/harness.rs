//! Generic checks over any generated model (through `nl_runtime::Model`),
//! each against an independent oracle: central finite differences in f64,
//! the reference interpreter, the training forward.

#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use nl_runtime::memory::LevelView;
use nl_runtime::{boxed_zeroed, rng::Rng, Flat, Model, Scalar};

use super::reference::{self, Activation, Composition, LevelState, Norm, Positions, RefSpec, Rule};

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
        layers: plan.layers,
        residual: plan.residual,
        norm: match plan.norm {
            nl_spec::Norm::None => Norm::None,
            nl_spec::Norm::Rms => Norm::Rms,
            nl_spec::Norm::Layer => Norm::Layer,
        },
        positions: match plan.positions {
            nl_spec::Positions::None => Positions::None,
            nl_spec::Positions::Rope => Positions::Rope,
            nl_spec::Positions::Bias => Positions::Bias,
        },
        mlp: plan.mlp.map(|m| {
            let activation = match m.activation {
                nl_spec::Activation::Swiglu => Activation::Swiglu,
                nl_spec::Activation::Gelu => Activation::Gelu,
                nl_spec::Activation::Relu => Activation::Relu,
            };
            (m.hidden, activation)
        }),
        tie_embeddings: plan.tie_embeddings,
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
    /// The same per feature ([`feature`] of the tensor's name), over the
    /// features with a well-conditioned entry checked.
    pub by_feature: BTreeMap<&'static str, f64>,
    /// Largest absolute error over the tiny entries (both sides below `FLOOR`).
    pub max_abs_tiny: f64,
    /// Entries checked.
    pub checked: usize,
    /// Entries whose first difference (`h = 1e-3`) was off by more than
    /// `1e-7` relative and that were taken again with smaller steps.
    pub refined: usize,
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
/// both far below `1e-6 * FLOOR`. Where that differs from the analytic value
/// by more than `1e-7` relative, the difference is taken again with `h / 4`
/// down to `h / 256` and the closest of the five counts (see
/// [`GradCheck::refined`]): a `relu` kink within `2h` of the point, or a
/// strongly curved loss (a deep stack without residual connections whose
/// norms see tiny inputs), spoils the large step only, while a wrong
/// gradient differs at every step.
pub fn grad_check<M: Model>(seed: u64, per_tensor: usize) -> GradCheck {
    grad_check_with::<M>(seed, per_tensor, |_| {})
}

/// [`grad_check`] on a workspace that `prepare` sets up first (for example
/// with a carried memory state, which every evaluation of the loss then
/// starts from).
pub fn grad_check_with<M: Model>(
    seed: u64,
    per_tensor: usize,
    prepare: impl FnOnce(&mut M::Workspace<f64>),
) -> GradCheck {
    let mut p = random_params::<M>(seed, 0.1);
    let tokens = random_tokens::<M>(seed + 7);
    let mut ws = boxed_zeroed::<M::Workspace<f64>>();
    prepare(&mut *ws);
    let mut g = boxed_zeroed::<M::Params<f64>>();
    M::loss_and_grad(&*p, &tokens, &mut *ws, &mut *g);
    let analytic = g.as_flat().to_vec();
    let mut r = Rng::new(seed ^ 0xC0FFEE);
    let h = 1e-3;
    let mut out = GradCheck {
        max_rel: 0.0,
        by_feature: BTreeMap::new(),
        max_abs_tiny: 0.0,
        checked: 0,
        refined: 0,
        worst: (String::new(), 0),
    };
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
            let mut d4 = |h: f64| (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h);
            let a = analytic[j];
            let mut numeric = d4(h);
            if (a - numeric).abs() > 1e-7 * a.abs().max(numeric.abs()).max(FLOOR) {
                out.refined += 1;
                for smaller in [h / 4.0, h / 16.0, h / 64.0, h / 256.0] {
                    let n = d4(smaller);
                    if (a - n).abs() < (a - numeric).abs() {
                        numeric = n;
                    }
                }
            }
            let scale = a.abs().max(numeric.abs());
            if scale < FLOOR {
                out.max_abs_tiny = out.max_abs_tiny.max((a - numeric).abs());
            } else {
                let rel = (a - numeric).abs() / scale;
                let by_feature = out.by_feature.entry(feature(t.name)).or_insert(0.0);
                *by_feature = by_feature.max(rel);
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

/// The feature a tensor belongs to, for reports: `embed`, `unembed`,
/// `attention`, `pos_bias`, `norm gain`, `norm shift`, `mlp`,
/// `memory projections` or `memory gates`.
pub fn feature(name: &str) -> &'static str {
    // The name inside its block: `blocks.1.mem.0.wk` -> `mem.0.wk`.
    let local = match name.strip_prefix("blocks.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, local)| local),
        None => name,
    };
    let last = local.rsplit('.').next().unwrap_or(local);
    match local.split('.').next().unwrap_or(local) {
        "embed" => "embed",
        "unembed" => "unembed",
        "attn" if last == "pos_bias" => "pos_bias",
        "attn" => "attention",
        "norm_a" | "norm_m" | "norm_f" if last == "beta" => "norm shift",
        "norm_a" | "norm_m" | "norm_f" => "norm gain",
        "mlp" => "mlp",
        "mem" if matches!(last, "wk" | "wv" | "wq") => "memory projections",
        "mem" => "memory gates",
        _ => panic!("no feature for tensor `{name}`"),
    }
}

/// The parameters of [`random_params`] rounded to the scalar `S`.
pub fn random_params_in<M: Model, S: Scalar>(seed: u64, jitter: f64) -> Box<M::Params<S>> {
    let p64 = random_params::<M>(seed, jitter);
    let mut p = boxed_zeroed::<M::Params<S>>();
    for (d, s) in p.as_flat_mut().iter_mut().zip(p64.as_flat()) {
        *d = S::from_f64(*s);
    }
    p
}

/// Largest relative difference between the logits of streaming `step` over
/// `tokens[..SEQ]` and the training forward (both in `S`), where each row is
/// scaled by its largest logit magnitude (at least 1).
pub fn max_stream_vs_forward_rel<M: Model, S: Scalar>(seed: u64) -> f64 {
    let p = random_params_in::<M, S>(seed, 0.05);
    let tokens = random_tokens::<M>(seed + 3);
    let mut ws = boxed_zeroed::<M::Workspace<S>>();
    M::loss(&*p, &tokens, &mut *ws);
    let mut st = boxed_zeroed::<M::Stream<S>>();
    M::reset(&mut *st);
    let mut worst = 0.0f64;
    for t in 0..M::SEQ {
        let row = &M::logits(&*ws)[t * M::VOCAB..(t + 1) * M::VOCAB];
        let scale = row.iter().fold(1.0f64, |m, x| m.max(x.to_f64().abs()));
        let got = M::step(&mut *st, &*p, tokens[t]);
        for (a, b) in got.iter().zip(row) {
            worst = worst.max((a.to_f64() - b.to_f64()).abs() / scale);
        }
    }
    worst
}

/// Whether the model's memory rule is `titans` (the only rule with a
/// momentum `S` and writes `W`).
pub fn is_titans<M: Model>() -> bool {
    M::TENSORS.iter().any(|t| t.name.ends_with(".w_eta"))
}

/// A random inner-loop state for every level of every block of `M`
/// (block-major, as the reference takes it): small entries, `n` chosen so
/// fires fall at varied offsets; `S` and `W` stay zero unless the rule is
/// `titans`.
pub fn random_states<M: Model>(seed: u64) -> Vec<LevelState> {
    let (d, titans) = (M::D, is_titans::<M>());
    let mut r = Rng::new(seed);
    (0..M::LAYERS * M::LEVELS)
        .map(|l| {
            let mut rand = |s: f64| (0..d * d).map(|_| s * (2.0 * r.next_f64() - 1.0)).collect::<Vec<f64>>();
            let (m, g, s, w) = (rand(0.3), rand(0.05), rand(0.1), rand(0.05));
            let (s, w) = if titans { (s, w) } else { (vec![0.0; d * d], vec![0.0; d * d]) };
            LevelState { m, g, s, w, n: 5 + l * 7 }
        })
        .collect()
}

/// Loads a reference state into a generated model's level state.
pub fn load_state<S: Scalar, const D: usize>(dst: &mut nl_runtime::memory::LevelState<S, D>, src: &LevelState) {
    for i in 0..D {
        for j in 0..D {
            dst.m[i][j] = S::from_f64(src.m[i * D + j]);
            dst.g[i][j] = S::from_f64(src.g[i * D + j]);
            dst.s[i][j] = S::from_f64(src.s[i * D + j]);
            dst.w[i][j] = S::from_f64(src.w[i * D + j]);
        }
    }
    dst.n = src.n as u64;
}

/// Largest absolute difference between two level states over `M`, `G`, `S`
/// and `W`, each entry scaled by `1 + |b|`; panics if their counts `n` differ.
pub fn max_state_diff<A: Scalar, B: Scalar>(a: LevelView<'_, A>, b: LevelView<'_, B>) -> f64 {
    assert_eq!((a.d, a.n), (b.d, b.n), "level states of different width or count");
    let pairs = [(a.m, b.m), (a.g, b.g), (a.s, b.s), (a.w, b.w)];
    let mut worst = 0.0f64;
    for (x, y) in pairs {
        for (x, y) in x.iter().zip(y) {
            let (x, y) = (x.to_f64(), y.to_f64());
            worst = worst.max((x - y).abs() / (1.0 + y.abs()));
        }
    }
    worst
}

/// A reference state as a [`LevelView`], for [`max_state_diff`].
pub fn ref_view(s: &LevelState) -> LevelView<'_, f64> {
    LevelView { d: s.m.len().isqrt(), m: &s.m, g: &s.g, s: &s.s, w: &s.w, n: s.n as u64 }
}

/// The plan's footprint (what a spec costs before it is compiled, and what
/// the workspace limit checks) against the sizes of the generated structs:
/// `nl_spec::footprint` models their `#[repr(C)]` layout, so they are equal
/// to the byte.
pub fn footprint_matches_generated_structs<M: Model>() {
    let plan = nl_spec::plan_from_str(M::SPEC, M::NAME).expect("valid spec");
    let f = plan.footprint;
    let sizes = [
        ("Params", f.params, std::mem::size_of::<M::Params<f32>>()),
        ("Workspace", f.workspace, std::mem::size_of::<M::Workspace<f32>>()),
        ("Stream", f.stream, std::mem::size_of::<M::Stream<f32>>()),
        ("QParams", plan.deploy_bytes(), std::mem::size_of::<M::QParams>()),
    ];
    for (what, planned, actual) in sizes {
        assert_eq!(planned, actual, "{}: {what} planned {planned} bytes, generated {actual}", M::NAME);
    }
}

/// The reference's zero state for every level of every block of a spec
/// (block-major).
pub fn zero_states(spec: &RefSpec) -> Vec<LevelState> {
    (0..spec.layers * spec.periods.len()).map(|_| LevelState::zero(spec.d)).collect()
}
