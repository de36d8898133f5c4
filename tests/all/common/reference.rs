//! Slow, plain reference interpreter of the `nl` model family, used as a test
//! oracle.
//!
//! It is written from the model's statement (`docs/model.md`) alone: every step
//! below cites the step number of its "Forward" section. Everything is `f64`,
//! shapes are run-time values, storage is `Vec<f64>` in row-major order, and
//! the loops are written out one index at a time on purpose. Speed and
//! elegance are not goals; being obviously equal to the math is.
//!
//! Choices where MODEL.md leaves room (see also the docs of [`forward`]):
//!
//! - Positions are 0-based here: position `t` reads `tokens[t]` and predicts
//!   `tokens[t + 1]`; the attention window is `tau in [max(0, t - W + 1), t]`
//!   (MODEL.md writes the same window 1-based).
//! - The gates are computed from `u_t = [k_t ; v_t]` with `k_t` already
//!   normalised (MODEL.md step 2 defines `k_t` as the normalised key).
//! - With a period `p > 1`, `theta_t` scales each token's surprise as it is
//!   accumulated, while `alpha_t` and `eta_t` are those of the token at which
//!   the level fires (the last token of the chunk), as MODEL.md's subscripts say.
//! - With `memory_on = false` the whole inner-loop state (M, G, S, n) of every
//!   level stays at its start value; the read `y_t^l = M q_t` still happens.
//! - With composition `None` and at least one level, the memory branch still
//!   runs on `m_t = e_t` (so the returned states evolve), but its output does
//!   not reach the logits.
//! - Composition `Mag` or `Mal` without any level is rejected (`y_t` would be
//!   `0 / sqrt(0)`).
//! - Tensors that the spec does not call for (for example `mem.0.w_eta` for a
//!   `delta` level) are rejected, so that a naming mismatch cannot go unseen.

// Index loops are kept on purpose: they read like the formulas.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

/// The inner-loop update rule of the memory levels (MODEL.md step 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `g = (M k - v) k^T`, `M <- (1 - alpha) M - G`.
    Delta,
    /// `g = (M k - v) k^T`, `S <- eta S - G`, `M <- (1 - alpha) M + S`.
    Titans,
    /// `g = -v k^T`, `M <- (1 - alpha) M - G`.
    Hebbian,
}

/// How the memory output enters the block (MODEL.md steps 3 and 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Composition {
    /// Attention only: `h_t = e_t`, `o_t = a_t`.
    None,
    /// Memory as gate: `h_t = e_t`, `o_t = a_t * sigmoid(y_t)`.
    Mag,
    /// Memory as layer: `h_t = e_t + y_t`, `o_t = a_t`.
    Mal,
}

/// The shape and switches of one model, as far as the forward pass needs them.
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
    /// Mean next-token cross-entropy over the sequence (MODEL.md step 7).
    pub loss: f64,
    /// State of every level after the last token of the sequence.
    pub states: Vec<LevelState>,
}

/// Result of [`forward_trace`]: the output plus the intermediate values that
/// the hand-computed tests look at.
#[derive(Clone, Debug)]
pub struct RefTrace {
    /// What [`forward`] returns.
    pub output: RefOutput,
    /// Per position: the combined memory output `y_t` (`d` values; all zero
    /// when there are no levels).
    pub y: Vec<Vec<f64>>,
    /// Per position: the attention input `h_t` (`d` values).
    pub h: Vec<Vec<f64>>,
    /// Per position: the attention output `a_t` (`d` values, heads concatenated).
    pub attn: Vec<Vec<f64>>,
    /// Per position: the state of every level after that position's token.
    pub states_after: Vec<Vec<LevelState>>,
}

/// Epsilon of the key / query normalisation `n(z)` (MODEL.md step 2).
pub const NORM_EPS: f64 = 1e-6;

/// Runs the model over one sequence and returns logits, loss and final states.
///
/// `tokens.len() == seq_len + 1`; position t (0-based) reads `tokens[t]` and
/// predicts `tokens[t+1]`. `params`: tensor name -> row-major values.
/// `carried`: start state per level (`None` = all zero, `n = 0`).
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
    for (l, &p) in spec.periods.iter().enumerate() {
        assert!(p >= 1, "reference: period of level {l} must be >= 1, got {p}");
    }
    assert!(
        levels > 0 || spec.composition == Composition::None,
        "reference: composition {:?} needs at least one memory level",
        spec.composition
    );
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
    let mut expected: Vec<String> = Vec::new();
    let embed = tensor(params, "embed", vocab * d, &mut expected);
    let attn_wq = tensor(params, "attn.wq", d * d, &mut expected);
    let attn_wk = tensor(params, "attn.wk", d * d, &mut expected);
    let attn_wv = tensor(params, "attn.wv", d * d, &mut expected);
    let attn_wo = tensor(params, "attn.wo", d * d, &mut expected);
    let unembed = tensor(params, "unembed", vocab * d, &mut expected);
    let mut level_params: Vec<LevelParams> = Vec::new();
    for l in 0..levels {
        let p = |suffix: &str| format!("mem.{l}.{suffix}");
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
    let unexpected: Vec<&String> = params.keys().filter(|name| !expected.contains(name)).collect();
    assert!(
        unexpected.is_empty(),
        "reference: unexpected tensors {unexpected:?} for this spec (expected exactly {expected:?})"
    );

    // ---- Start state --------------------------------------------------
    let mut states: Vec<LevelState> = match carried {
        None => (0..levels).map(|_| LevelState::zero(d)).collect(),
        Some(c) => {
            assert_eq!(c.len(), levels, "reference: carried has {} level states, spec has {levels} levels", c.len());
            for (l, st) in c.iter().enumerate() {
                assert_eq!(st.m.len(), d * d, "reference: carried[{l}].m must be d*d");
                assert_eq!(st.g.len(), d * d, "reference: carried[{l}].g must be d*d");
                assert_eq!(st.s.len(), d * d, "reference: carried[{l}].s must be d*d");
            }
            c.to_vec()
        }
    };

    // ---- Steps 1 to 3, position by position ---------------------------
    let mut all_e: Vec<Vec<f64>> = Vec::new();
    let mut all_y: Vec<Vec<f64>> = Vec::new();
    let mut all_h: Vec<Vec<f64>> = Vec::new();
    let mut states_after: Vec<Vec<LevelState>> = Vec::new();
    for &token in tokens.iter().take(seq_len) {
        // Step 1: e_t = E[x_t] (row x_t of `embed`).
        let x = token as usize;
        let mut e = vec![0.0; d];
        for (i, e_i) in e.iter_mut().enumerate() {
            *e_i = embed[x * d + i];
        }

        // Step 2: memory branch, input m_t = e_t.
        let m_in = e.clone();
        let mut y = vec![0.0; d];
        for l in 0..levels {
            let lp = &level_params[l];
            let st = &mut states[l];
            let period = spec.periods[l];

            // Step 2: k_t = n(Wk m_t), v_t = Wv m_t, q_t = n(Wq m_t).
            let mut k = matvec(lp.wk, d, d, &m_in);
            let v = matvec(lp.wv, d, d, &m_in);
            let mut q = matvec(lp.wq, d, d, &m_in);
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
            let y_l = matvec(&st.m, d, d, &q);
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

        // Step 3: h = e (none, mag) or e + y (mal).
        let mut h = e.clone();
        if spec.composition == Composition::Mal {
            for i in 0..d {
                h[i] += y[i];
            }
        }

        all_e.push(e);
        all_y.push(y);
        all_h.push(h);
        states_after.push(states.clone());
    }

    // ---- Step 4: sliding-window causal attention ------------------------
    let mut q_all: Vec<Vec<f64>> = Vec::new();
    let mut k_all: Vec<Vec<f64>> = Vec::new();
    let mut v_all: Vec<Vec<f64>> = Vec::new();
    for h in &all_h {
        q_all.push(matvec(attn_wq, d, d, h));
        k_all.push(matvec(attn_wk, d, d, h));
        v_all.push(matvec(attn_wv, d, d, h));
    }
    let mut all_a: Vec<Vec<f64>> = Vec::new();
    for t in 0..seq_len {
        // tau in [max(0, t - W + 1), t] (0-based form of MODEL.md's window).
        let start = (t + 1).saturating_sub(window);
        let mut a = vec![0.0; d];
        for j in 0..spec.heads {
            let lo = j * hd;
            // Scores s_tau = Q_t^j . K_tau^j / sqrt(hd).
            let mut scores: Vec<f64> = Vec::new();
            for k_tau in k_all.iter().take(t + 1).skip(start) {
                let mut s = 0.0;
                for c in lo..lo + hd {
                    s += q_all[t][c] * k_tau[c];
                }
                scores.push(s / (hd as f64).sqrt());
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
        }
        all_a.push(a);
    }

    // ---- Steps 5 to 7 ---------------------------------------------------
    let mut logits: Vec<Vec<f64>> = Vec::new();
    let mut loss_sum = 0.0;
    for t in 0..seq_len {
        // Step 5: o = a (none, mal) or a * sigmoid(y) (mag).
        let mut o = all_a[t].clone();
        if spec.composition == Composition::Mag {
            for i in 0..d {
                o[i] *= sigmoid(all_y[t][i]);
            }
        }
        // Step 6: z = Wo o, logits = U z.
        let z = matvec(attn_wo, d, d, &o);
        let row = matvec(unembed, vocab, d, &z);
        // Step 7: -log softmax(logits_t)[x_{t+1}].
        let target = tokens[t + 1] as usize;
        loss_sum += -log_softmax(&row)[target];
        logits.push(row);
    }
    let loss = loss_sum / seq_len as f64;

    RefTrace { output: RefOutput { logits, loss, states }, y: all_y, h: all_h, attn: all_a, states_after }
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
