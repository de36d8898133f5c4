//! The memory branch's kernels (MODEL.md step 2): projections and gates,
//! the inner loop (surprise, accumulation, periodic fires, read-after-write),
//! its exact backward pass through every update of a training sequence, and
//! the one-token streaming step.
//!
//! A level is monomorphised over its rule ([`Delta`], [`Titans`],
//! [`Hebbian`]), the sequence length `T` and the width `D`; the period is a
//! constant argument from the generated code.
//!
//! Notation per token `t` (0-based) of one level: `kr = Wk m`, `k = n(kr)`,
//! `v = Wv m`, `qr = Wq m`, `q = n(qr)`, `u = [k; v]`, gates `alpha =
//! sigmoid(w_alpha.u + b_alpha)`, `theta = softplus(w_theta.u + b_theta)`,
//! `eta = sigmoid(w_eta.u + b_eta)`. The surprise is written `g = r k^T`
//! with `r = M k - v` (delta, titans) or `r = -v` (hebbian), `M` the
//! memory before the token. `G += theta g`; on a fire (`(n + 1) % period ==
//! 0`) `M <- (1 - alpha) M - G` (delta, hebbian) or `S <- eta S - G`,
//! `M <- (1 - alpha) M + S` (titans), then `G <- 0`. The read is `M q`.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::kernels::{dot, linear, linear_backward_input_acc, linear_backward_weight_acc};
use crate::{Scalar, Zeroable};

/// `eps` of the key/query normalisation `n(z) = z / sqrt(|z|^2 + eps)`.
pub const NORM_EPS: f64 = 1e-6;

/// A memory update rule, as a type so each level's code is monomorphised.
pub trait Rule: 'static {
    /// The surprise is `(M k - v) k^T` (reads the memory) rather than `-v k^T`.
    const READS_MEMORY: bool;
    /// The rule has a momentum `S` and an `eta` gate.
    const MOMENTUM: bool;
}

/// `g = (M k - v) k^T`, `M <- (1 - alpha) M - G`.
#[derive(Clone, Copy, Debug)]
pub struct Delta;
/// `g = (M k - v) k^T`, `S <- eta S - G`, `M <- (1 - alpha) M + S`.
#[derive(Clone, Copy, Debug)]
pub struct Titans;
/// `g = -v k^T`, `M <- (1 - alpha) M - G`.
#[derive(Clone, Copy, Debug)]
pub struct Hebbian;

impl Rule for Delta {
    const READS_MEMORY: bool = true;
    const MOMENTUM: bool = false;
}
impl Rule for Titans {
    const READS_MEMORY: bool = true;
    const MOMENTUM: bool = true;
}
impl Rule for Hebbian {
    const READS_MEMORY: bool = false;
    const MOMENTUM: bool = false;
}

/// The inner-loop state of one level: memory `M`, accumulator `G`,
/// momentum `S` (titans; zero otherwise) and `n`, the tokens seen since the
/// last reset. Not a parameter; never part of a parameter checkpoint.
#[repr(C)]
#[derive(Clone, Debug, PartialEq)]
pub struct LevelState<S, const D: usize> {
    /// The memory `M` (`D x D`, row-major).
    pub m: [[S; D]; D],
    /// Gradient accumulator `G` of the current chunk.
    pub g: [[S; D]; D],
    /// Momentum `S` (titans).
    pub s: [[S; D]; D],
    /// Tokens seen since the last reset.
    pub n: u64,
}

// SAFETY: arrays of `S: Scalar` and a `u64`: all-zero bytes are valid values.
unsafe impl<S: Scalar, const D: usize> Zeroable for LevelState<S, D> {}

impl<S: Scalar, const D: usize> LevelState<S, D> {
    /// Clears the state (zero memory, accumulator, momentum and count).
    pub fn reset(&mut self) {
        for r in self.m.iter_mut().chain(self.g.iter_mut()).chain(self.s.iter_mut()) {
            r.fill(S::ZERO);
        }
        self.n = 0;
    }

    /// Copies another state into this one.
    pub fn copy_from(&mut self, other: &Self) {
        self.m = other.m;
        self.g = other.g;
        self.s = other.s;
        self.n = other.n;
    }
}

/// One level's parameters, borrowed from the generated `Params`.
/// `w_*` have `2 D` entries (`[k; v]` halves); `w_eta` is empty unless titans.
#[derive(Clone, Copy)]
pub struct LevelParams<'a, S, const D: usize> {
    /// Key projection `[D, D]`.
    pub wk: &'a [[S; D]; D],
    /// Value projection `[D, D]`.
    pub wv: &'a [[S; D]; D],
    /// Query projection `[D, D]`.
    pub wq: &'a [[S; D]; D],
    /// Forget-gate weight `[2D]`.
    pub w_alpha: &'a [S],
    /// Forget-gate bias.
    pub b_alpha: S,
    /// Inner-learning-rate weight `[2D]`.
    pub w_theta: &'a [S],
    /// Inner-learning-rate bias.
    pub b_theta: S,
    /// Momentum-gate weight `[2D]` (titans) or empty.
    pub w_eta: &'a [S],
    /// Momentum-gate bias (titans).
    pub b_eta: S,
}

/// Gradients of one level's parameters, borrowed from the generated gradient `Params`.
pub struct LevelGrads<'a, S, const D: usize> {
    /// Gradient of `wk`.
    pub wk: &'a mut [[S; D]; D],
    /// Gradient of `wv`.
    pub wv: &'a mut [[S; D]; D],
    /// Gradient of `wq`.
    pub wq: &'a mut [[S; D]; D],
    /// Gradient of `w_alpha`.
    pub w_alpha: &'a mut [S],
    /// Gradient of `b_alpha`.
    pub b_alpha: &'a mut S,
    /// Gradient of `w_theta`.
    pub w_theta: &'a mut [S],
    /// Gradient of `b_theta`.
    pub b_theta: &'a mut S,
    /// Gradient of `w_eta` (empty unless titans).
    pub w_eta: &'a mut [S],
    /// Gradient of `b_eta` (a dummy unless titans).
    pub b_eta: &'a mut S,
}

/// What the training forward of one level keeps for its backward pass.
#[repr(C)]
pub struct LevelTrace<S, const T: usize, const D: usize> {
    /// Normalised keys `k_t` (raw `kr_t` when not normalising).
    pub k: [[S; D]; T],
    /// Values `v_t`.
    pub v: [[S; D]; T],
    /// Normalised queries `q_t`.
    pub q: [[S; D]; T],
    /// `sqrt(|kr_t|^2 + eps)` (1 when not normalising).
    pub k_norm: [S; T],
    /// `sqrt(|qr_t|^2 + eps)` (1 when not normalising).
    pub q_norm: [S; T],
    /// Surprise factor `r_t` (`M k - v` or `-v`).
    pub r: [[S; D]; T],
    /// Forget gate `alpha_t`.
    pub alpha: [S; T],
    /// Inner learning rate `theta_t`.
    pub theta: [S; T],
    /// Pre-activation of `theta_t` (for the softplus derivative).
    pub theta_pre: [S; T],
    /// Momentum gate `eta_t` (titans).
    pub eta: [S; T],
    /// `M` after token `t` (after its fire, if any).
    pub m_hist: [[[S; D]; D]; T],
    /// `S` after token `t` (titans).
    pub s_hist: [[[S; D]; D]; T],
    /// Backward scratch: gradient of `k_t` then of `kr_t`.
    pub dk: [[S; D]; T],
    /// Backward scratch: gradient of `v_t`.
    pub dv: [[S; D]; T],
    /// Backward scratch: gradient of `q_t` then of `qr_t`.
    pub dq: [[S; D]; T],
}

// SAFETY: arrays of `S: Scalar` only: all-zero bytes are valid values.
unsafe impl<S: Scalar, const T: usize, const D: usize> Zeroable for LevelTrace<S, T, D> {}

/// Normalises `z` in place to `z / sqrt(|z|^2 + eps)` and returns the divisor.
#[inline]
pub fn normalize<S: Scalar, const D: usize>(z: &mut [S; D]) -> S {
    let s = (dot(z, z) + S::from_f64(NORM_EPS)).sqrt();
    let inv = S::ONE / s;
    for x in z.iter_mut() {
        *x *= inv;
    }
    s
}

/// Backward of [`normalize`]: given `y = z / s` and `dy`, returns `dz = (dy - y (y.dy)) / s` in place of `dy`.
#[inline]
pub fn normalize_backward<S: Scalar, const D: usize>(y: &[S; D], s: S, dy: &mut [S; D]) {
    let c = dot(y, dy);
    let inv = S::ONE / s;
    for (d, yi) in dy.iter_mut().zip(y) {
        *d = (*d - *yi * c) * inv;
    }
}

/// A gate's pre-activation `w . [k; v] + b`.
#[inline]
pub fn gate_pre<S: Scalar, const D: usize>(w: &[S], b: S, k: &[S; D], v: &[S; D]) -> S {
    let (wk, wv) = w.split_at(D);
    crate::kernels::dot_slice(wk, k) + crate::kernels::dot_slice(wv, v) + b
}

/// Gates of one token: `(alpha, theta, theta_pre, eta)`.
#[inline]
fn gates<S: Scalar, R: Rule, const D: usize>(p: &LevelParams<'_, S, D>, k: &[S; D], v: &[S; D]) -> (S, S, S, S) {
    let alpha = gate_pre(p.w_alpha, p.b_alpha, k, v).sigmoid();
    let theta_pre = gate_pre(p.w_theta, p.b_theta, k, v);
    let eta = if R::MOMENTUM { gate_pre(p.w_eta, p.b_eta, k, v).sigmoid() } else { S::ZERO };
    (alpha, theta_pre.softplus(), theta_pre, eta)
}

/// The inner loop for one token: surprise against the current memory,
/// accumulation, the fire if due, then `n += 1`. Writes `r` (the surprise
/// factor). With `frozen` the state is left untouched (inner loop off).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn update<S: Scalar, R: Rule, const D: usize>(
    st: &mut LevelState<S, D>,
    period: u64,
    frozen: bool,
    k: &[S; D],
    v: &[S; D],
    alpha: S,
    theta: S,
    eta: S,
    r: &mut [S; D],
) {
    // r = M k - v (delta, titans) or -v (hebbian)
    for i in 0..D {
        r[i] = if R::READS_MEMORY { dot(&st.m[i], k) - v[i] } else { -v[i] };
    }
    if frozen {
        return;
    }
    let fire = (st.n + 1).is_multiple_of(period);
    st.n += 1;
    // One pass over the D x D state: G' = G + theta r k^T, then on a fire
    // M <- (1 - alpha) M - G' (or S <- eta S - G', M <- (1 - alpha) M + S)
    // and G <- 0; otherwise G <- G'.
    let keep = S::ONE - alpha;
    for i in 0..D {
        let c = theta * r[i];
        let (m, g, s) = (&mut st.m[i], &mut st.g[i], &mut st.s[i]);
        if !fire {
            for j in 0..D {
                g[j] += c * k[j];
            }
        } else if R::MOMENTUM {
            for j in 0..D {
                s[j] = eta * s[j] - (g[j] + c * k[j]);
                m[j] = keep * m[j] + s[j];
                g[j] = S::ZERO;
            }
        } else {
            for j in 0..D {
                m[j] = keep * m[j] - (g[j] + c * k[j]);
                g[j] = S::ZERO;
            }
        }
    }
}

/// `y += scale * M q`.
#[inline]
pub fn read_acc<S: Scalar, const D: usize>(m: &[[S; D]; D], q: &[S; D], scale: S, y: &mut [S; D]) {
    for i in 0..D {
        y[i] += scale * dot(&m[i], q);
    }
}

/// Per-token scratch of the streaming step.
#[repr(C)]
pub struct StepScratch<S, const D: usize> {
    /// Key.
    pub k: [S; D],
    /// Value.
    pub v: [S; D],
    /// Query.
    pub q: [S; D],
    /// Surprise factor.
    pub r: [S; D],
}

// SAFETY: arrays of `S: Scalar` only.
unsafe impl<S: Scalar, const D: usize> Zeroable for StepScratch<S, D> {}

/// One streaming token through one level: projections, gates, inner loop,
/// and `y += scale * M q`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn step<S: Scalar, R: Rule, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    m_in: &[S; D],
    st: &mut LevelState<S, D>,
    sc: &mut StepScratch<S, D>,
    scale: S,
    y: &mut [S; D],
) {
    crate::kernels::matvec(p.wk, m_in, &mut sc.k);
    crate::kernels::matvec(p.wv, m_in, &mut sc.v);
    crate::kernels::matvec(p.wq, m_in, &mut sc.q);
    if normalize_keys {
        normalize(&mut sc.k);
        normalize(&mut sc.q);
    }
    let (alpha, theta, _, eta) = gates::<S, R, D>(p, &sc.k, &sc.v);
    update::<S, R, D>(st, period, frozen, &sc.k, &sc.v, alpha, theta, eta, &mut sc.r);
    read_acc(&st.m, &sc.q, scale, y);
}

/// The training forward of one level over a sequence: from input `m_in`
/// and start state `start`, adds `scale * y^l_t` into `y`, leaves the final
/// state in `end` and what the backward needs in `tr`.
#[allow(clippy::too_many_arguments)]
pub fn forward<S: Scalar, R: Rule, const T: usize, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    m_in: &[[S; D]; T],
    start: &LevelState<S, D>,
    end: &mut LevelState<S, D>,
    tr: &mut LevelTrace<S, T, D>,
    scale: S,
    y: &mut [[S; D]; T],
) {
    linear(m_in, p.wk, &mut tr.k);
    linear(m_in, p.wv, &mut tr.v);
    linear(m_in, p.wq, &mut tr.q);
    for t in 0..T {
        if normalize_keys {
            tr.k_norm[t] = normalize(&mut tr.k[t]);
            tr.q_norm[t] = normalize(&mut tr.q[t]);
        } else {
            tr.k_norm[t] = S::ONE;
            tr.q_norm[t] = S::ONE;
        }
        let (alpha, theta, theta_pre, eta) = gates::<S, R, D>(p, &tr.k[t], &tr.v[t]);
        tr.alpha[t] = alpha;
        tr.theta[t] = theta;
        tr.theta_pre[t] = theta_pre;
        tr.eta[t] = eta;
    }
    end.copy_from(start);
    for t in 0..T {
        update::<S, R, D>(end, period, frozen, &tr.k[t], &tr.v[t], tr.alpha[t], tr.theta[t], tr.eta[t], &mut tr.r[t]);
        tr.m_hist[t] = end.m;
        if R::MOMENTUM {
            tr.s_hist[t] = end.s;
        }
        read_acc(&end.m, &tr.q[t], scale, &mut y[t]);
    }
}

/// Backward adjoint state of one level, carried backwards through time.
#[repr(C)]
pub struct LevelAdjoint<S, const D: usize> {
    /// Gradient with respect to `M` after the current token.
    pub dm: [[S; D]; D],
    /// Gradient with respect to `G` after the current token.
    pub dg: [[S; D]; D],
    /// Gradient with respect to `S` after the current token.
    pub ds: [[S; D]; D],
}

// SAFETY: arrays of `S: Scalar` only.
unsafe impl<S: Scalar, const D: usize> Zeroable for LevelAdjoint<S, D> {}

/// The backward of [`forward`]: differentiates through every inner-loop
/// update of the sequence (the start state is a constant). `dy` is the
/// gradient of the loss with respect to the combined read `y` (this level
/// contributes `scale * M q`). Adds the parameter gradients into `g` and the
/// gradient with respect to the input into `dm_in`.
#[allow(clippy::too_many_arguments)]
pub fn backward<S: Scalar, R: Rule, const T: usize, const D: usize>(
    p: &LevelParams<'_, S, D>,
    period: u64,
    normalize_keys: bool,
    frozen: bool,
    m_in: &[[S; D]; T],
    start: &LevelState<S, D>,
    tr: &mut LevelTrace<S, T, D>,
    adj: &mut LevelAdjoint<S, D>,
    scale: S,
    dy: &[[S; D]; T],
    g: &mut LevelGrads<'_, S, D>,
    dm_in: &mut [[S; D]; T],
) {
    for r in adj.dm.iter_mut().chain(adj.dg.iter_mut()).chain(adj.ds.iter_mut()) {
        r.fill(S::ZERO);
    }
    let mut dyl = [S::ZERO; D];
    for t in (0..T).rev() {
        let m_prev: &[[S; D]; D] = if t == 0 { &start.m } else { &tr.m_hist[t - 1] };
        let m_cur = &tr.m_hist[t];
        let (k, v, r) = (&tr.k[t], &tr.v[t], &tr.r[t]);
        let (alpha, theta, eta) = (tr.alpha[t], tr.theta[t], tr.eta[t]);
        // Read: y^l = scale * M_t q_t.
        for i in 0..D {
            dyl[i] = scale * dy[t][i];
        }
        // dq = M_t^T dyl ; dM_t += dyl q^T
        let dq = &mut tr.dq[t];
        dq.fill(S::ZERO);
        for i in 0..D {
            let c = dyl[i];
            for j in 0..D {
                dq[j] += c * m_cur[i][j];
                adj.dm[i][j] += c * tr.q[t][j];
            }
        }
        let dk = &mut tr.dk[t];
        let dv = &mut tr.dv[t];
        dk.fill(S::ZERO);
        dv.fill(S::ZERO);
        let mut d_alpha = S::ZERO;
        let mut d_eta = S::ZERO;
        let mut d_theta = S::ZERO;
        let n = start.n + t as u64;
        let fire = !frozen && (n + 1).is_multiple_of(period);
        if !frozen {
            if fire {
                // delta/hebbian: M_t = (1 - alpha) M_{t-1} - G'_t
                // titans: S_t = eta S_{t-1} - G'_t ; M_t = (1 - alpha) M_{t-1} + S_t
                // G_t = 0: the incoming dG is dropped, and `dg` becomes dG'_t.
                let keep = S::ONE - alpha;
                if R::MOMENTUM {
                    let s_prev: &[[S; D]; D] = if t == 0 { &start.s } else { &tr.s_hist[t - 1] };
                    for i in 0..D {
                        for j in 0..D {
                            let ds_tot = adj.ds[i][j] + adj.dm[i][j];
                            d_alpha -= adj.dm[i][j] * m_prev[i][j];
                            d_eta += ds_tot * s_prev[i][j];
                            adj.dg[i][j] = -ds_tot;
                            adj.ds[i][j] = eta * ds_tot;
                            adj.dm[i][j] *= keep;
                        }
                    }
                } else {
                    for i in 0..D {
                        for j in 0..D {
                            d_alpha -= adj.dm[i][j] * m_prev[i][j];
                            adj.dg[i][j] = -adj.dm[i][j];
                            adj.dm[i][j] *= keep;
                        }
                    }
                }
            }
            // Without a fire G_t = G'_t, so `dg` already holds dG'_t. Either
            // way dG_{t-1} = dG'_t, so `dg` carries on unchanged below.
            // G'_t = G_{t-1} + theta r k^T
            // d_theta = r^T dG' k ; dr = theta dG' k ; dk += theta dG'^T r
            let mut dr = [S::ZERO; D];
            for i in 0..D {
                let gk = dot(&adj.dg[i], k);
                d_theta += r[i] * gk;
                dr[i] = theta * gk;
                let c = theta * r[i];
                for j in 0..D {
                    dk[j] += c * adj.dg[i][j];
                }
            }
            if R::READS_MEMORY {
                // r = M_{t-1} k - v: dM_{t-1} += dr k^T ; dk += M_{t-1}^T dr ; dv -= dr
                for i in 0..D {
                    for j in 0..D {
                        adj.dm[i][j] += dr[i] * k[j];
                        dk[j] += dr[i] * m_prev[i][j];
                    }
                    dv[i] -= dr[i];
                }
            } else {
                // r = -v
                for i in 0..D {
                    dv[i] -= dr[i];
                }
            }
        }
        // Gates: alpha = sigmoid(a), theta = softplus(b), eta = sigmoid(c), each of w.[k; v] + bias.
        let da = d_alpha * alpha * (S::ONE - alpha);
        let db = d_theta * tr.theta_pre[t].sigmoid();
        let dc = if R::MOMENTUM { d_eta * eta * (S::ONE - eta) } else { S::ZERO };
        gate_backward(da, p.w_alpha, k, v, g.w_alpha, g.b_alpha, dk, dv);
        gate_backward(db, p.w_theta, k, v, g.w_theta, g.b_theta, dk, dv);
        if R::MOMENTUM {
            gate_backward(dc, p.w_eta, k, v, g.w_eta, g.b_eta, dk, dv);
        }
        if normalize_keys {
            normalize_backward(k, tr.k_norm[t], dk);
            normalize_backward(&tr.q[t], tr.q_norm[t], &mut tr.dq[t]);
        }
    }
    // kr = Wk m, v = Wv m, qr = Wq m
    linear_backward_weight_acc(&tr.dk, m_in, g.wk);
    linear_backward_weight_acc(&tr.dv, m_in, g.wv);
    linear_backward_weight_acc(&tr.dq, m_in, g.wq);
    linear_backward_input_acc(&tr.dk, p.wk, dm_in);
    linear_backward_input_acc(&tr.dv, p.wv, dm_in);
    linear_backward_input_acc(&tr.dq, p.wq, dm_in);
}

/// Backward of a gate pre-activation `w . [k; v] + b` given its gradient `d`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn gate_backward<S: Scalar, const D: usize>(
    d: S,
    w: &[S],
    k: &[S; D],
    v: &[S; D],
    dw: &mut [S],
    db: &mut S,
    dk: &mut [S; D],
    dv: &mut [S; D],
) {
    *db += d;
    for i in 0..D {
        dw[i] += d * k[i];
        dw[D + i] += d * v[i];
        dk[i] += d * w[i];
        dv[i] += d * w[D + i];
    }
}
