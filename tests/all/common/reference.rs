//! Slow, plain reference interpreter of the `nl` model family, used as a test
//! oracle.
//!
//! It is written from the model's statement (`docs/model.md`, its "Blocks"
//! section included) alone: every step below cites the step number of its
//! "Forward" section. Everything is `f64`,
//! shapes are run-time values, storage is `Vec<f64>` in row-major order, and
//! the loops are written out one index at a time on purpose. Speed and
//! elegance are not goals; being obviously equal to the math is.
//!
//! Choices where the papers leave room (recorded in `docs/model.md`) (see also the docs of [`forward`]):
//!
//! - Positions are 0-based here: position `t` reads `tokens[t]` and predicts
//!   `tokens[t + 1]`; the attention window is `tau in [max(0, t - W + 1), t]`
//!   (the papers write the same window 1-based).
//! - The gates are computed from `u_t = [k_t ; v_t]` with `k_t` already
//!   normalised (`docs/model.md` step 2 defines `k_t` as the normalised key).
//! - With a period `p > 1`, `theta_t` scales each token's surprise as it is
//!   accumulated, while `alpha_t` and `eta_t` are those of the token at which
//!   the level fires (the last token of the chunk), as the subscripts of `docs/model.md` say.
//! - With `memory_on = false` the whole inner-loop state (M, G, S, n) of every
//!   level stays at its start value; the read `y_t^l = M q_t` still happens.
//! - With composition `None` and at least one level, the memory branch still
//!   runs on `m_t = e_t` (so the returned states evolve), but its output does
//!   not reach the logits.
//! - Composition `Mag` or `Mal` without any level is rejected (`y_t` would be
//!   `0 / sqrt(0)`).
//! - Blocks (`layers`, `residual`, `norm`, `positions`, `mlp`,
//!   `tie_embeddings`): tensors are named `blocks.{b}.` + the first
//!   version's name, except `embed`, `unembed` and `norm_f`. A spec with all
//!   of these at their defaults (one plain block) also accepts the names
//!   without the prefix, as long as no tensor uses it.
//! - Rope rotates queries and keys by their absolute (0-based) positions in
//!   f64; the scores depend on the offset `t - tau` only, to rounding.
//! - The memory states of all blocks are kept in one list, block-major.
//! - Tensors that the spec does not call for (for example `mem.0.w_eta` for a
//!   `delta` level) are rejected, so that a naming mismatch cannot go unseen.

// Index loops are kept on purpose: they read like the formulas.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

/// The inner-loop update rule of the memory levels (docs/model.md step 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `g = (M k - v) k^T`, `M <- (1 - alpha) M - G`.
    Delta,
    /// `g = (M k - v) k^T`, `S <- eta S - G`, `M <- (1 - alpha) M + S`.
    Titans,
    /// `g = -v k^T`, `M <- (1 - alpha) M - G`.
    Hebbian,
}

/// How the memory output enters the block (docs/model.md steps 3 and 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Composition {
    /// Attention only: `h_t = e_t`, `o_t = a_t`.
    None,
    /// Memory as gate: `h_t = e_t`, `o_t = a_t * sigmoid(y_t)`.
    Mag,
    /// Memory as layer: `h_t = e_t + y_t`, `o_t = a_t`.
    Mal,
}

/// The pre-norm of every branch and the final norm (spec key `norm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// No norms: identity, no tensors.
    None,
    /// `g * x / sqrt(mean(x^2) + 1e-5)`; tensor `.g`.
    Rms,
    /// `g * (x - mean) / sqrt(var + 1e-5) + beta` (population variance);
    /// tensors `.g` and `.beta`.
    Layer,
}

/// How attention sees positions (spec key `positions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Not at all (only through the causal window).
    None,
    /// Rotary: per head, pairs `(2i, 2i+1)` of queries and keys rotated by
    /// `pos * 10000^(-2i/hd)`.
    Rope,
    /// A learned bias per head and offset added to the scores,
    /// `blocks.{b}.attn.pos_bias` `[heads, window]`.
    Bias,
}

/// The MLP's nonlinearity (spec key `mlp.activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `W_down (silu(W_gate w) * (W_up w))`.
    Swiglu,
    /// `W_down gelu(W_up w)`, tanh form.
    Gelu,
    /// `W_down relu(W_up w)`.
    Relu,
}

/// The shape and switches of one model, as far as the forward pass needs them.
///
/// The block keys (`layers` .. `tie_embeddings`) default to one plain block
/// (see [`Default`]), so a spec of the first version is written
/// `RefSpec { d, heads, .., periods, ..RefSpec::default() }`.
#[derive(Clone, Debug)]
pub struct RefSpec {
    /// Model width `d`.
    pub d: usize,
    /// Number of attention heads `h`; `d` must be a multiple of it.
    pub heads: usize,
    /// Vocabulary size `V`.
    pub vocab: usize,
    /// Sequence length `T`.
    pub seq_len: usize,
    /// Attention window `W`, `1 <= W <= T`.
    pub window: usize,
    /// Inner-loop rule shared by all levels.
    pub rule: Rule,
    /// How the memory output is combined with attention.
    pub composition: Composition,
    /// Whether keys and queries go through `n(z) = z / sqrt(|z|^2 + eps)`.
    pub normalize_keys: bool,
    /// Period `p_l` of every level; its length is the number of levels `L`.
    pub periods: Vec<usize>,
    /// Number of blocks, at least 1 (default 1).
    pub layers: usize,
    /// Whether each branch adds to a residual stream (default `false`).
    pub residual: bool,
    /// Pre-norms of the branches and the final norm (default none).
    pub norm: Norm,
    /// Positions in attention (default none).
    pub positions: Positions,
    /// `Some((hidden, activation))` for an MLP in every block (default none).
    pub mlp: Option<(usize, Activation)>,
    /// Whether `unembed` is `embed` (default `false`).
    pub tie_embeddings: bool,
}

impl Default for RefSpec {
    /// A one-token, width-1 model with no memory, attention only, and every
    /// block key at its default; meant to be overridden field by field.
    fn default() -> Self {
        RefSpec {
            d: 1,
            heads: 1,
            vocab: 1,
            seq_len: 1,
            window: 1,
            rule: Rule::Delta,
            composition: Composition::None,
            normalize_keys: true,
            periods: Vec::new(),
            layers: 1,
            residual: false,
            norm: Norm::None,
            positions: Positions::None,
            mlp: None,
            tie_embeddings: false,
        }
    }
}

impl RefSpec {
    /// Whether every block key is at its default: one block, no residual, no
    /// norm, no positions, no MLP, untied embeddings. Such a model computes
    /// what the first version computed, and its tensors may be named either
    /// `blocks.0.attn.wq` or `attn.wq` (all one way or all the other).
    pub fn is_one_plain_block(&self) -> bool {
        self.layers == 1
            && !self.residual
            && self.norm == Norm::None
            && self.positions == Positions::None
            && self.mlp.is_none()
            && !self.tie_embeddings
    }
}

/// Inner-loop state of one memory level; matrices d*d row-major.
///
/// `s` (momentum) is only used by [`Rule::Titans`] and stays zero otherwise.
/// `n` counts the tokens this state has seen since its last reset.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelState {
    /// Memory matrix `M`, `d * d`, row-major.
    pub m: Vec<f64>,
    /// Accumulated surprise `G` since the last fire, `d * d`, row-major.
    pub g: Vec<f64>,
    /// Momentum `S` (`titans` only), `d * d`, row-major.
    pub s: Vec<f64>,
    /// Accumulated writes `W = sum theta (1 - eta) v k^T` since the last fire (`titans` only).
    pub w: Vec<f64>,
    /// Tokens seen since the last reset.
    pub n: usize,
}

impl LevelState {
    /// The reset state: all matrices zero, `n = 0`.
    pub fn zero(d: usize) -> Self {
        LevelState { m: vec![0.0; d * d], g: vec![0.0; d * d], s: vec![0.0; d * d], w: vec![0.0; d * d], n: 0 }
    }
}

/// Result of [`forward`].
#[derive(Clone, Debug)]
pub struct RefOutput {
    /// `seq_len` rows of `vocab` logits.
    pub logits: Vec<Vec<f64>>,
    /// Mean next-token cross-entropy over the sequence (docs/model.md step 7).
    pub loss: f64,
    /// State of every level after the last token of the sequence,
    /// block-major: `states[b * L + l]` is level l of block b.
    pub states: Vec<LevelState>,
}

/// The intermediate values of one block, each per position.
#[derive(Clone, Debug)]
pub struct BlockTrace {
    /// The block's input `x^b_t`.
    pub x_in: Vec<Vec<f64>>,
    /// The normed input `u_t = N_a(x^b_t)` (the memory's input `m_t`).
    pub u: Vec<Vec<f64>>,
    /// The combined memory output `y_t` (all zero when there are no levels).
    pub y: Vec<Vec<f64>>,
    /// The attention input `h_t`.
    pub h: Vec<Vec<f64>>,
    /// Per position and head: the scores over the window, oldest key first,
    /// after the `1/sqrt(hd)` scaling, rope and the position bias.
    pub scores: Vec<Vec<Vec<f64>>>,
    /// Per position and head: the softmax of `scores`.
    pub weights: Vec<Vec<Vec<f64>>>,
    /// The attention output `a_t` (heads concatenated).
    pub attn: Vec<Vec<f64>>,
    /// `z_t = Wo o_t`.
    pub z: Vec<Vec<f64>>,
    /// `x'_t` (`x^b_t + z_t` with residual, else `z_t`).
    pub mid: Vec<Vec<f64>>,
    /// The MLP output `f_t` (empty without an MLP).
    pub f: Vec<Vec<f64>>,
    /// The block's output `x^{b+1}_t`.
    pub x_out: Vec<Vec<f64>>,
}

/// Result of [`forward_trace`]: the output plus the intermediate values that
/// the hand-computed tests look at.
#[derive(Clone, Debug)]
pub struct RefTrace {
    /// What [`forward`] returns.
    pub output: RefOutput,
    /// Per position: block 0's combined memory output `y_t` (`d` values; all
    /// zero when there are no levels).
    pub y: Vec<Vec<f64>>,
    /// Per position: block 0's attention input `h_t` (`d` values).
    pub h: Vec<Vec<f64>>,
    /// Per position: block 0's attention output `a_t` (`d` values, heads
    /// concatenated).
    pub attn: Vec<Vec<f64>>,
    /// Per position: the state of every level after that position's token,
    /// block-major as in [`RefOutput::states`].
    pub states_after: Vec<Vec<LevelState>>,
    /// Per position: `N_f(x^L_t)`, what the unembedding reads.
    pub final_normed: Vec<Vec<f64>>,
    /// Every block's intermediate values.
    pub blocks: Vec<BlockTrace>,
}

/// Epsilon of the key / query normalisation `n(z)` (docs/model.md step 2).
pub const NORM_EPS: f64 = 1e-6;

/// Epsilon of the block norms `rms` and `layer`.
pub const BLOCK_NORM_EPS: f64 = 1e-5;

/// Base of the rope frequencies.
pub const ROPE_BASE: f64 = 10000.0;

/// Runs the model over one sequence and returns logits, loss and final states.
///
/// `tokens.len() == seq_len + 1`; position t (0-based) reads `tokens[t]` and
/// predicts `tokens[t+1]`. `params`: tensor name -> row-major values (see
/// [`RefSpec::is_one_plain_block`] for the two naming schemes).
/// `carried`: start state per level, block-major (block 0's levels, then block
/// 1's, ...; `None` = all zero, `n = 0`). The returned `states` are in the same
/// order; for one block that is simply one state per level.
/// `memory_on = false`: the inner loop is switched off: every level's state
/// stays at its start value (zero when not carried), so `y_t^l = M_start q_t`.
///
/// Panics with a message naming the problem on inconsistent input (missing,
/// unexpected or wrongly sized tensor, wrong number of tokens, token out of
/// range, bad shape).
pub fn forward(
    spec: &RefSpec,
    params: &BTreeMap<String, Vec<f64>>,
    tokens: &[u32],
    carried: Option<&[LevelState]>,
    memory_on: bool,
) -> RefOutput {
    forward_trace(spec, params, tokens, carried, memory_on).output
}

/// The parameters of one memory level, looked up and size-checked.
struct LevelParams<'a> {
    wk: &'a [f64],
    wv: &'a [f64],
    wq: &'a [f64],
    w_alpha: &'a [f64],
    b_alpha: f64,
    w_theta: &'a [f64],
    b_theta: f64,
    /// `Some((w_eta, b_eta))` for `titans` only.
    eta: Option<(&'a [f64], f64)>,
}

/// The gain `g` and, for [`Norm::Layer`], the shift `beta` of one norm.
struct NormParams<'a> {
    g: &'a [f64],
    beta: Option<&'a [f64]>,
}

/// The MLP weights of one block.
struct MlpParams<'a> {
    w_up: &'a [f64],
    /// `Some` for [`Activation::Swiglu`] only.
    w_gate: Option<&'a [f64]>,
    w_down: &'a [f64],
}

/// The parameters of one block, looked up and size-checked.
struct BlockParams<'a> {
    norm_a: Option<NormParams<'a>>,
    attn_wq: &'a [f64],
    attn_wk: &'a [f64],
    attn_wv: &'a [f64],
    attn_wo: &'a [f64],
    /// `[heads, window]`, for [`Positions::Bias`] only.
    pos_bias: Option<&'a [f64]>,
    levels: Vec<LevelParams<'a>>,
    norm_m: Option<NormParams<'a>>,
    mlp: Option<MlpParams<'a>>,
}

/// Looks up the norm tensors `{prefix}g` (and `{prefix}beta` for layer norm);
/// `None` when the spec has no norms.
fn norm_params<'a>(
    spec: &RefSpec,
    params: &'a BTreeMap<String, Vec<f64>>,
    prefix: &str,
    expected: &mut Vec<String>,
) -> Option<NormParams<'a>> {
    match spec.norm {
        Norm::None => None,
        Norm::Rms => Some(NormParams { g: tensor(params, &format!("{prefix}g"), spec.d, expected), beta: None }),
        Norm::Layer => {
            let g = tensor(params, &format!("{prefix}g"), spec.d, expected);
            let beta = tensor(params, &format!("{prefix}beta"), spec.d, expected);
            Some(NormParams { g, beta: Some(beta) })
        }
    }
}

/// Same as [`forward`], and also returns the intermediate values.
pub fn forward_trace(
    spec: &RefSpec,
    params: &BTreeMap<String, Vec<f64>>,
    tokens: &[u32],
    carried: Option<&[LevelState]>,
    memory_on: bool,
) -> RefTrace {
    // ---- Shape checks -------------------------------------------------
    let d = spec.d;
    let vocab = spec.vocab;
    let seq_len = spec.seq_len;
    let window = spec.window;
    let levels = spec.periods.len();
    let layers = spec.layers;
    assert!(d > 0, "reference: d must be positive");
    assert!(spec.heads > 0, "reference: heads must be positive");
    let head_remainder = d % spec.heads;
    assert!(head_remainder == 0, "reference: d = {d} is not a multiple of heads = {}", spec.heads);
    let hd = d / spec.heads;
    assert!(vocab > 0, "reference: vocab must be positive");
    assert!(seq_len > 0, "reference: seq_len must be positive");
    assert!(
        window >= 1 && window <= seq_len,
        "reference: window = {window} must satisfy 1 <= window <= seq_len = {seq_len}"
    );
    assert!(layers >= 1, "reference: layers must be at least 1");
    for (l, &p) in spec.periods.iter().enumerate() {
        assert!(p >= 1, "reference: period of level {l} must be >= 1, got {p}");
    }
    assert!(
        levels > 0 || spec.composition == Composition::None,
        "reference: composition {:?} needs at least one memory level",
        spec.composition
    );
    if spec.positions == Positions::Rope {
        assert!(hd.is_multiple_of(2), "reference: rope needs an even head width, hd = {hd}");
    }
    if let Some((hidden, _)) = spec.mlp {
        assert!(hidden > 0, "reference: mlp hidden must be positive");
    }
    assert_eq!(
        tokens.len(),
        seq_len + 1,
        "reference: expected seq_len + 1 = {} tokens, got {}",
        seq_len + 1,
        tokens.len()
    );
    for (i, &tok) in tokens.iter().enumerate() {
        assert!((tok as usize) < vocab, "reference: tokens[{i}] = {tok} is out of range for vocab = {vocab}");
    }

    // ---- Parameters ---------------------------------------------------
    // One plain block may use the names without the `blocks.0.` prefix (the
    // first version's names); every other spec uses `blocks.{b}.`.
    let unprefixed = spec.is_one_plain_block() && !params.keys().any(|name| name.starts_with("blocks."));
    let mut expected: Vec<String> = Vec::new();
    let embed = tensor(params, "embed", vocab * d, &mut expected);
    let mut blocks: Vec<BlockParams> = Vec::new();
    for b in 0..layers {
        let pre = if unprefixed { String::new() } else { format!("blocks.{b}.") };
        let norm_a = norm_params(spec, params, &format!("{pre}norm_a."), &mut expected);
        let attn_wq = tensor(params, &format!("{pre}attn.wq"), d * d, &mut expected);
        let attn_wk = tensor(params, &format!("{pre}attn.wk"), d * d, &mut expected);
        let attn_wv = tensor(params, &format!("{pre}attn.wv"), d * d, &mut expected);
        let attn_wo = tensor(params, &format!("{pre}attn.wo"), d * d, &mut expected);
        let pos_bias = match spec.positions {
            Positions::Bias => Some(tensor(params, &format!("{pre}attn.pos_bias"), spec.heads * window, &mut expected)),
            Positions::None | Positions::Rope => None,
        };
        let mut level_params: Vec<LevelParams> = Vec::new();
        for l in 0..levels {
            let p = |suffix: &str| format!("{pre}mem.{l}.{suffix}");
            let wk = tensor(params, &p("wk"), d * d, &mut expected);
            let wv = tensor(params, &p("wv"), d * d, &mut expected);
            let wq = tensor(params, &p("wq"), d * d, &mut expected);
            let w_alpha = tensor(params, &p("w_alpha"), 2 * d, &mut expected);
            let b_alpha = tensor(params, &p("b_alpha"), 1, &mut expected)[0];
            let w_theta = tensor(params, &p("w_theta"), 2 * d, &mut expected);
            let b_theta = tensor(params, &p("b_theta"), 1, &mut expected)[0];
            let eta = if spec.rule == Rule::Titans {
                let w_eta = tensor(params, &p("w_eta"), 2 * d, &mut expected);
                let b_eta = tensor(params, &p("b_eta"), 1, &mut expected)[0];
                Some((w_eta, b_eta))
            } else {
                None
            };
            level_params.push(LevelParams { wk, wv, wq, w_alpha, b_alpha, w_theta, b_theta, eta });
        }
        let (norm_m, mlp) = match spec.mlp {
            None => (None, None),
            Some((hidden, activation)) => {
                let norm_m = norm_params(spec, params, &format!("{pre}norm_m."), &mut expected);
                let w_up = tensor(params, &format!("{pre}mlp.w_up"), hidden * d, &mut expected);
                let w_gate = match activation {
                    Activation::Swiglu => Some(tensor(params, &format!("{pre}mlp.w_gate"), hidden * d, &mut expected)),
                    Activation::Gelu | Activation::Relu => None,
                };
                let w_down = tensor(params, &format!("{pre}mlp.w_down"), d * hidden, &mut expected);
                (norm_m, Some(MlpParams { w_up, w_gate, w_down }))
            }
        };
        blocks.push(BlockParams {
            norm_a,
            attn_wq,
            attn_wk,
            attn_wv,
            attn_wo,
            pos_bias,
            levels: level_params,
            norm_m,
            mlp,
        });
    }
    let norm_f = norm_params(spec, params, "norm_f.", &mut expected);
    let unembed = if spec.tie_embeddings { embed } else { tensor(params, "unembed", vocab * d, &mut expected) };
    let unexpected: Vec<&String> = params.keys().filter(|name| !expected.contains(name)).collect();
    assert!(
        unexpected.is_empty(),
        "reference: unexpected tensors {unexpected:?} for this spec (expected exactly {expected:?})"
    );

    // ---- Start state (block-major) ------------------------------------
    let mut states: Vec<LevelState> = match carried {
        None => (0..layers * levels).map(|_| LevelState::zero(d)).collect(),
        Some(c) => {
            assert_eq!(
                c.len(),
                layers * levels,
                "reference: carried has {} level states, spec has {layers} blocks of {levels} levels",
                c.len()
            );
            for (l, st) in c.iter().enumerate() {
                assert_eq!(st.m.len(), d * d, "reference: carried[{l}].m must be d*d");
                assert_eq!(st.g.len(), d * d, "reference: carried[{l}].g must be d*d");
                assert_eq!(st.s.len(), d * d, "reference: carried[{l}].s must be d*d");
            }
            c.to_vec()
        }
    };

    // ---- Step 1: x^0_t = e_t = E[x_t] (row x_t of `embed`) --------------
    let mut x_stream: Vec<Vec<f64>> = Vec::new();
    for &token in tokens.iter().take(seq_len) {
        let x = token as usize;
        let mut e = vec![0.0; d];
        for (i, e_i) in e.iter_mut().enumerate() {
            *e_i = embed[x * d + i];
        }
        x_stream.push(e);
    }

    // ---- Blocks ----------------------------------------------------------
    let mut states_after: Vec<Vec<LevelState>> = vec![Vec::new(); seq_len];
    let mut block_traces: Vec<BlockTrace> = Vec::new();
    for (b, bp) in blocks.iter().enumerate() {
        let x_in = x_stream.clone();
        // u_t = N_a(x^b_t).
        let all_u: Vec<Vec<f64>> = x_in.iter().map(|x| apply_norm(spec.norm, bp.norm_a.as_ref(), x)).collect();

        // Steps 2 and 3, position by position: memory on m_t = u_t, then h_t.
        let block_states = &mut states[b * levels..(b + 1) * levels];
        let mut all_y: Vec<Vec<f64>> = Vec::new();
        let mut all_h: Vec<Vec<f64>> = Vec::new();
        for t in 0..seq_len {
            let m_in = all_u[t].clone();
            let mut y = vec![0.0; d];
            for l in 0..levels {
                let y_l = memory_level(spec, &bp.levels[l], &mut block_states[l], spec.periods[l], &m_in, memory_on);
                for i in 0..d {
                    y[i] += y_l[i];
                }
            }
            // Step 2: y = (1 / sqrt(L)) sum_l y^l.
            if levels > 0 {
                let scale = 1.0 / (levels as f64).sqrt();
                for y_i in y.iter_mut() {
                    *y_i *= scale;
                }
            }
            // Step 3: h = u (none, mag) or u + y (mal).
            let mut h = all_u[t].clone();
            if spec.composition == Composition::Mal {
                for i in 0..d {
                    h[i] += y[i];
                }
            }
            all_y.push(y);
            all_h.push(h);
            states_after[t].extend(block_states.iter().cloned());
        }

        // Step 4: sliding-window causal attention, with positions.
        let mut q_all: Vec<Vec<f64>> = Vec::new();
        let mut k_all: Vec<Vec<f64>> = Vec::new();
        let mut v_all: Vec<Vec<f64>> = Vec::new();
        for (t, h) in all_h.iter().enumerate() {
            let mut q = matvec(bp.attn_wq, d, d, h);
            let mut k = matvec(bp.attn_wk, d, d, h);
            if spec.positions == Positions::Rope {
                // Absolute position t (0-based); the score depends on the
                // difference of the two positions only.
                q = rope(&q, spec.heads, t);
                k = rope(&k, spec.heads, t);
            }
            q_all.push(q);
            k_all.push(k);
            v_all.push(matvec(bp.attn_wv, d, d, h));
        }
        let mut all_a: Vec<Vec<f64>> = Vec::new();
        let mut all_scores: Vec<Vec<Vec<f64>>> = Vec::new();
        let mut all_weights: Vec<Vec<Vec<f64>>> = Vec::new();
        for t in 0..seq_len {
            // tau in [max(0, t - W + 1), t] (0-based form of the window in docs/model.md).
            let start = (t + 1).saturating_sub(window);
            let mut a = vec![0.0; d];
            let mut head_scores: Vec<Vec<f64>> = Vec::new();
            let mut head_weights: Vec<Vec<f64>> = Vec::new();
            for j in 0..spec.heads {
                let lo = j * hd;
                // Scores s_tau = Q_t^j . K_tau^j / sqrt(hd) (+ B_j[t - tau]).
                let mut scores: Vec<f64> = Vec::new();
                for (tau, k_tau) in k_all.iter().enumerate().take(t + 1).skip(start) {
                    let mut s = 0.0;
                    for c in lo..lo + hd {
                        s += q_all[t][c] * k_tau[c];
                    }
                    let mut s = s / (hd as f64).sqrt();
                    if let Some(bias) = bp.pos_bias {
                        s += bias[j * window + (t - tau)];
                    }
                    scores.push(s);
                }
                // Softmax over the window, shifted by the maximum for stability.
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut weights: Vec<f64> = Vec::new();
                let mut total = 0.0;
                for s in &scores {
                    let w = (s - max).exp();
                    weights.push(w);
                    total += w;
                }
                // a_t^j = sum_tau softmax(s)_tau Vv_tau^j.
                for (w, v_tau) in weights.iter().zip(v_all.iter().take(t + 1).skip(start)) {
                    for c in lo..lo + hd {
                        a[c] += (w / total) * v_tau[c];
                    }
                }
                head_weights.push(weights.iter().map(|w| w / total).collect());
                head_scores.push(scores);
            }
            all_a.push(a);
            all_scores.push(head_scores);
            all_weights.push(head_weights);
        }

        // Steps 5 and 6, then the residual stream and the MLP.
        let mut all_z: Vec<Vec<f64>> = Vec::new();
        let mut all_mid: Vec<Vec<f64>> = Vec::new();
        let mut all_f: Vec<Vec<f64>> = Vec::new();
        for t in 0..seq_len {
            // Step 5: o = a (none, mal) or a * sigmoid(y) (mag).
            let mut o = all_a[t].clone();
            if spec.composition == Composition::Mag {
                for i in 0..d {
                    o[i] *= sigmoid(all_y[t][i]);
                }
            }
            // Step 6: z = Wo o.
            let z = matvec(bp.attn_wo, d, d, &o);
            // x' = x^b + z (residual) or z.
            let mut mid = z.clone();
            if spec.residual {
                for i in 0..d {
                    mid[i] = x_in[t][i] + z[i];
                }
            }
            // MLP: f = MLP(N_m(x')); x^{b+1} = x' + f (residual) or f.
            let mut out = mid.clone();
            if let (Some(mp), Some((hidden, activation))) = (&bp.mlp, spec.mlp) {
                let w = apply_norm(spec.norm, bp.norm_m.as_ref(), &mid);
                let up = matvec(mp.w_up, hidden, d, &w);
                let mut act = vec![0.0; hidden];
                match activation {
                    Activation::Swiglu => {
                        let gate = matvec(mp.w_gate.expect("swiglu has w_gate"), hidden, d, &w);
                        for i in 0..hidden {
                            act[i] = silu(gate[i]) * up[i];
                        }
                    }
                    Activation::Gelu => {
                        for i in 0..hidden {
                            act[i] = gelu(up[i]);
                        }
                    }
                    Activation::Relu => {
                        for i in 0..hidden {
                            act[i] = up[i].max(0.0);
                        }
                    }
                }
                let f = matvec(mp.w_down, d, hidden, &act);
                if spec.residual {
                    for i in 0..d {
                        out[i] = mid[i] + f[i];
                    }
                } else {
                    out = f.clone();
                }
                all_f.push(f);
            }
            all_z.push(z);
            all_mid.push(mid);
            x_stream[t] = out;
        }
        block_traces.push(BlockTrace {
            x_in,
            u: all_u,
            y: all_y,
            h: all_h,
            scores: all_scores,
            weights: all_weights,
            attn: all_a,
            z: all_z,
            mid: all_mid,
            f: all_f,
            x_out: x_stream.clone(),
        });
    }

    // ---- Output and loss ------------------------------------------------
    let mut logits: Vec<Vec<f64>> = Vec::new();
    let mut final_normed: Vec<Vec<f64>> = Vec::new();
    let mut loss_sum = 0.0;
    for t in 0..seq_len {
        // logits = U N_f(x^L) (U = E when the embeddings are tied).
        let n = apply_norm(spec.norm, norm_f.as_ref(), &x_stream[t]);
        let row = matvec(unembed, vocab, d, &n);
        final_normed.push(n);
        // Step 7: -log softmax(logits_t)[x_{t+1}].
        let target = tokens[t + 1] as usize;
        loss_sum += -log_softmax(&row)[target];
        logits.push(row);
    }
    let loss = loss_sum / seq_len as f64;

    let first = &block_traces[0];
    RefTrace {
        output: RefOutput { logits, loss, states },
        y: first.y.clone(),
        h: first.h.clone(),
        attn: first.attn.clone(),
        states_after,
        final_normed,
        blocks: block_traces,
    }
}

/// One token through one memory level (docs/model.md step 2): updates the level's
/// state (when `memory_on`) and returns the read `y^l = M q`.
fn memory_level(
    spec: &RefSpec,
    lp: &LevelParams,
    st: &mut LevelState,
    period: usize,
    m_in: &[f64],
    memory_on: bool,
) -> Vec<f64> {
    let d = spec.d;
    // Step 2: k_t = n(Wk m_t), v_t = Wv m_t, q_t = n(Wq m_t).
    let mut k = matvec(lp.wk, d, d, m_in);
    let v = matvec(lp.wv, d, d, m_in);
    let mut q = matvec(lp.wq, d, d, m_in);
    if spec.normalize_keys {
        k = normalize(&k);
        q = normalize(&q);
    }

    if memory_on {
        // Step 2: u_t = [k_t ; v_t] and the gates.
        let mut u = Vec::with_capacity(2 * d);
        u.extend_from_slice(&k);
        u.extend_from_slice(&v);
        let alpha = sigmoid(dot(lp.w_alpha, &u) + lp.b_alpha);
        // theta_t = sigmoid(w_theta . u_t + b_theta) / (p_l * (|k_t|^2 + eps)), eps = 1e-6.
        let theta = sigmoid(dot(lp.w_theta, &u) + lp.b_theta) / (period as f64 * (dot(&k, &k) + 1e-6));

        // Step 2: surprise against the current M, then G <- G + theta g.
        // delta, titans: g = (M k - v) k^T; hebbian: g = -v k^T.
        let mut r = vec![0.0; d];
        for i in 0..d {
            r[i] = match spec.rule {
                Rule::Delta | Rule::Titans => {
                    let mut mk_i = 0.0;
                    for j in 0..d {
                        mk_i += st.m[i * d + j] * k[j];
                    }
                    mk_i - v[i]
                }
                Rule::Hebbian => -v[i],
            };
        }
        for i in 0..d {
            for j in 0..d {
                st.g[i * d + j] += theta * (r[i] * k[j]);
            }
        }
        // titans: eta_t = sigmoid(w_eta . u_t + b_eta), and the writes
        // W <- W + theta (1 - eta) v k^T, the momentum's input.
        let eta = match lp.eta {
            Some((w_eta, b_eta)) => sigmoid(dot(w_eta, &u) + b_eta),
            None => 0.0,
        };
        if spec.rule == Rule::Titans {
            for i in 0..d {
                for j in 0..d {
                    st.w[i * d + j] += theta * (1.0 - eta) * (v[i] * k[j]);
                }
            }
        }

        // Step 2: fire when (n + 1) mod p == 0.
        let chunk_position = (st.n + 1) % period;
        if chunk_position == 0 {
            match spec.rule {
                Rule::Delta | Rule::Hebbian => {
                    // M <- (1 - alpha) M - G
                    for idx in 0..d * d {
                        st.m[idx] = (1.0 - alpha) * st.m[idx] - st.g[idx];
                    }
                }
                Rule::Titans => {
                    // M <- (1 - alpha) M - G + eta S, then S <- eta S + W
                    for idx in 0..d * d {
                        st.m[idx] = (1.0 - alpha) * st.m[idx] - st.g[idx] + eta * st.s[idx];
                    }
                    for idx in 0..d * d {
                        st.s[idx] = eta * st.s[idx] + st.w[idx];
                    }
                }
            }
            // G <- 0, W <- 0
            for idx in 0..d * d {
                st.g[idx] = 0.0;
                st.w[idx] = 0.0;
            }
        }
        // n counts the tokens seen since the last reset.
        st.n += 1;
    }

    // Step 2: read y^l = M q (after this token's fire, if any).
    matvec(&st.m, d, d, &q)
}

/// `N(x)` over the `d` features of one token, eps = [`BLOCK_NORM_EPS`]:
/// identity for [`Norm::None`]; `g * x / sqrt(mean(x^2) + eps)` for
/// [`Norm::Rms`]; `g * (x - mean) / sqrt(var + eps) + beta` with the
/// population variance for [`Norm::Layer`].
pub fn apply_norm_values(norm: Norm, g: &[f64], beta: &[f64], x: &[f64]) -> Vec<f64> {
    let d = x.len();
    match norm {
        Norm::None => x.to_vec(),
        Norm::Rms => {
            let mut sq = 0.0;
            for x_i in x {
                sq += x_i * x_i;
            }
            let denom = (sq / d as f64 + BLOCK_NORM_EPS).sqrt();
            (0..d).map(|i| g[i] * x[i] / denom).collect()
        }
        Norm::Layer => {
            let mut sum = 0.0;
            for x_i in x {
                sum += x_i;
            }
            let mean = sum / d as f64;
            let mut var = 0.0;
            for x_i in x {
                var += (x_i - mean) * (x_i - mean);
            }
            let var = var / d as f64;
            let denom = (var + BLOCK_NORM_EPS).sqrt();
            (0..d).map(|i| g[i] * (x[i] - mean) / denom + beta[i]).collect()
        }
    }
}

fn apply_norm(norm: Norm, p: Option<&NormParams>, x: &[f64]) -> Vec<f64> {
    match p {
        None => x.to_vec(),
        Some(p) => {
            let zero = vec![0.0; x.len()];
            apply_norm_values(norm, p.g, p.beta.unwrap_or(&zero), x)
        }
    }
}

/// Rotary positions at absolute position `pos`: in every head, the pair of
/// components `(2i, 2i+1)` is rotated by `pos * 10000^(-2i/hd)`.
pub fn rope(x: &[f64], heads: usize, pos: usize) -> Vec<f64> {
    let d = x.len();
    let hd = d / heads;
    let mut out = x.to_vec();
    for j in 0..heads {
        for i in 0..hd / 2 {
            let angle = pos as f64 * ROPE_BASE.powf(-((2 * i) as f64) / hd as f64);
            let (sin, cos) = angle.sin_cos();
            let a = x[j * hd + 2 * i];
            let b = x[j * hd + 2 * i + 1];
            out[j * hd + 2 * i] = a * cos - b * sin;
            out[j * hd + 2 * i + 1] = a * sin + b * cos;
        }
    }
    out
}

/// `silu(x) = x * sigmoid(x)`.
pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// The tanh form `gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// Looks up tensor `name`, checks it has `len` values and records the name as
/// expected. Panics when it is missing or has the wrong length.
fn tensor<'a>(params: &'a BTreeMap<String, Vec<f64>>, name: &str, len: usize, expected: &mut Vec<String>) -> &'a [f64] {
    expected.push(name.to_string());
    let values = params.get(name).unwrap_or_else(|| panic!("reference: missing tensor `{name}`"));
    assert_eq!(values.len(), len, "reference: tensor `{name}` has {} values, expected {len}", values.len());
    values
}

/// `W x` for `W` of shape `[rows, cols]`, row-major.
pub fn matvec(w: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    assert_eq!(w.len(), rows * cols, "reference: matvec weight size");
    assert_eq!(x.len(), cols, "reference: matvec input size");
    let mut out = vec![0.0; rows];
    for (r, out_r) in out.iter_mut().enumerate() {
        let mut acc = 0.0;
        for c in 0..cols {
            acc += w[r * cols + c] * x[c];
        }
        *out_r = acc;
    }
    out
}

/// Dot product of two equally long vectors.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "reference: dot of different lengths");
    let mut acc = 0.0;
    for i in 0..a.len() {
        acc += a[i] * b[i];
    }
    acc
}

/// `n(z) = z / sqrt(|z|^2 + eps)` with eps = [`NORM_EPS`].
pub fn normalize(z: &[f64]) -> Vec<f64> {
    let mut sq = 0.0;
    for z_i in z {
        sq += z_i * z_i;
    }
    let denom = (sq + NORM_EPS).sqrt();
    z.iter().map(|z_i| z_i / denom).collect()
}

/// `1 / (1 + exp(-x))`, evaluated without overflow.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log softmax(x)`, shifted by the maximum for stability.
pub fn log_softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for x_i in x {
        sum += (x_i - max).exp();
    }
    let log_z = max + sum.ln();
    x.iter().map(|x_i| x_i - log_z).collect()
}
