//! Sliding-window causal attention of the training pass as matrix
//! products: per head, the scores `Q_h K_h^T`, the weighted sum `P V_h` and
//! the four products of the backward run through the register-blocked
//! kernels of [`gemm`](crate::gemm) instead of one dot product or `axpy` per
//! (query, key) pair.
//!
//! Each product covers the whole `T x T` square of (query, key) pairs; the
//! pairs outside the window (the future, and keys more than `W - 1` back)
//! get probability exactly 0, so they add exact zeros to every sum. That
//! wastes the masked part of the square (half of it when `W = T`), which is
//! why the generated code uses these kernels only when `2 W >= T` and the
//! row kernels of [`kernels`](crate::kernels) otherwise.
//!
//! The math is that of [`kernels::attention`](crate::kernels::attention)
//! and its backward; the probabilities are kept by position (see
//! [`attention`]) rather than by offset. What differs is the rounding: a
//! score is a left fold over the head's columns (the gemm's order) instead
//! of 16 lanes, the softmax sums run over the row in position order, and
//! the products fold over positions in increasing order. Training only:
//! streaming and deployment keep the row kernels.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::gemm as mm;
/// Lanes of the row reductions (as in [`kernels`](crate::kernels)).
const LANES: usize = 16;
use crate::{Scalar, Zeroable};

/// Per-head buffers of [`attention`] and [`attention_backward_acc`] for
/// sequences of `T` positions and heads of `HD` columns: `9 T HD + 2 T^2`
/// values, shared by every head and block (each call overwrites them).
#[repr(C)]
pub struct AttnScratch<S, const T: usize, const HD: usize> {
    /// The head's queries, `[T, HD]`.
    pub qh: [[S; HD]; T],
    /// The head's keys, `[T, HD]`.
    pub kh: [[S; HD]; T],
    /// The head's keys transposed, `[HD, T]`.
    pub kt: [[S; T]; HD],
    /// The head's values, `[T, HD]`.
    pub vh: [[S; HD]; T],
    /// The head's values transposed, `[HD, T]`.
    pub vt: [[S; T]; HD],
    /// The head's output (forward) or its gradient (backward), `[T, HD]`.
    pub oh: [[S; HD]; T],
    /// Gradient of the head's queries.
    pub dqh: [[S; HD]; T],
    /// Gradient of the head's keys.
    pub dkh: [[S; HD]; T],
    /// Gradient of the head's values.
    pub dvh: [[S; HD]; T],
    /// Scores, then probabilities, by position: `s[t][tau]` (0 outside the window).
    pub s: [[S; T]; T],
    /// Gradient of the probabilities, then of the scores, by position.
    pub ds: [[S; T]; T],
}

// SAFETY: every field is an array of `S: Scalar`, for which all-zero bytes
// are a valid value (+0.0).
unsafe impl<S: Scalar, const T: usize, const HD: usize> Zeroable for AttnScratch<S, T, HD> {}

/// The largest element of a row: 16 running maxima, then a pairwise tree
/// (exact in any order), so no long dependency chain.
#[inline(always)]
fn max_tree<S: Scalar>(x: &[S]) -> S {
    let neg_inf = S::from_f64(f64::NEG_INFINITY);
    let mut lanes = [neg_inf; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] = lanes[j].max(c[j]);
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        lanes[j] = lanes[j].max(v);
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for j in 0..w {
            lanes[j] = lanes[j].max(lanes[j + w]);
        }
    }
    lanes[0]
}

/// The sum of a row: 16 partial sums (element `i` into lane `i mod 16`),
/// then [`Scalar::lane_sum`].
#[inline(always)]
fn sum_tree<S: Scalar>(x: &[S]) -> S {
    let mut lanes = [S::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            lanes[j] += c[j];
        }
    }
    for (j, &v) in chunks.remainder().iter().enumerate() {
        lanes[j] += v;
    }
    S::lane_sum(lanes)
}

/// The softmax of one row of scores over the window `lo..=t`, in place:
/// the scaled scores inside, `-inf` outside (whose `e^-inf` is exactly 0),
/// then the maximum, `e^(x - max)` and the normalisation, each a pass over
/// the whole row (fixed length, so they vectorise without remainders).
#[inline(always)]
fn softmax_row<S: Scalar, const T: usize>(row: &mut [S; T], lo: usize, t: usize, scale: S) {
    let neg_inf = S::from_f64(f64::NEG_INFINITY);
    for (tau, x) in row.iter_mut().enumerate() {
        *x = if tau >= lo && tau <= t { *x * scale } else { neg_inf };
    }
    let mx = max_tree(row);
    for x in row.iter_mut() {
        *x = (*x - mx).exp();
    }
    let inv = S::ONE / sum_tree(row);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Copies the columns `h HD .. (h + 1) HD` of `x` into `out` (`[T, HD]`)
/// and, transposed, into `out_t` (`[HD, T]`).
#[inline(always)]
fn split_head<S: Scalar, const T: usize, const D: usize, const HD: usize>(
    x: &[[S; D]; T],
    h: usize,
    out: &mut [[S; HD]; T],
    out_t: Option<&mut [[S; T]; HD]>,
) {
    for t in 0..T {
        out[t].copy_from_slice(&x[t][h * HD..(h + 1) * HD]);
    }
    if let Some(ot) = out_t {
        mm::transpose(out, ot);
    }
}

/// Adds `src` (`[T, HD]`) into the columns `h HD .. (h + 1) HD` of `dst`.
#[inline(always)]
fn add_head<S: Scalar, const T: usize, const D: usize, const HD: usize>(
    src: &[[S; HD]; T],
    h: usize,
    dst: &mut [[S; D]; T],
) {
    for t in 0..T {
        for (d, s) in dst[t][h * HD..(h + 1) * HD].iter_mut().zip(&src[t]) {
            *d += *s;
        }
    }
}

crate::dispatch::dispatched! {
    /// Sliding-window causal attention over a sequence, as
    /// [`kernels::attention`](crate::kernels::attention): row `t` attends to
    /// positions `max(0, t - W + 1) ..= t`, head `h` on columns
    /// `h HD .. (h + 1) HD`, logits `q.k / sqrt(HD)`; the probabilities go to
    /// `p` in position order: `p[t][h][j]` weighs position `max(0, t + 1 - W) + j`
    /// (zeros past the window's `min(t + 1, W)` positions). This is not the
    /// offset layout of the row kernels: a row is one contiguous copy.
    ///
    /// Per head: `S = Q_h K_h^T` (one product, every pair), the softmax of each
    /// row over its window (maximum, `e^(s - max)`, the sum of the row in 16
    /// lanes by position, one reciprocal), then `O_h = P V_h` (one product).
    pub fn attention[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], p: &mut [[[S; W]; H]; T], out: &mut [[S; D]; T], sc: &mut AttnScratch<S, T, HD>) = attention_body;
}

/// The body of [`attention`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn attention_body<S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    p: &mut [[[S; W]; H]; T],
    out: &mut [[S; D]; T],
    sc: &mut AttnScratch<S, T, HD>,
) {
    const { assert!(H * HD == D, "heads * head_dim must equal d_model") };
    const { assert!(W >= 1 && W <= T, "the window must be in 1..=T") };
    let scale = S::ONE / S::from_usize(HD).sqrt();
    for h in 0..H {
        split_head(q, h, &mut sc.qh, None);
        split_head(k, h, &mut sc.kh, Some(&mut sc.kt));
        split_head(v, h, &mut sc.vh, None);
        mm::linear_t(&sc.qh, &sc.kt, &mut sc.s);
        for t in 0..T {
            let lo = (t + 1).saturating_sub(W);
            softmax_row(&mut sc.s[t], lo, t, scale);
            let n = t + 1 - lo;
            let ph = &mut p[t][h];
            ph[..n].copy_from_slice(&sc.s[t][lo..=t]);
            ph[n..].fill(S::ZERO);
        }
        mm::linear_t(&sc.s, &sc.vh, &mut sc.oh);
        for t in 0..T {
            out[t][h * HD..(h + 1) * HD].copy_from_slice(&sc.oh[t]);
        }
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`attention`]: from `da` (gradient of the output) adds the
    /// gradients of `q`, `k` and `v` into `dq`, `dk`, `dv`, reading the
    /// probabilities `p` the forward kept.
    ///
    /// Per head, with `P` rebuilt by position from `p`: `dP = dO_h V_h^T`,
    /// `dV_h = P^T dO_h`, `dS = P * (dP - rowsum(P * dP)) / sqrt(HD)` (zero
    /// outside the window, where `P` is), `dQ_h = dS K_h`, `dK_h = dS^T Q_h`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward_acc[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], p: &[[[S; W]; H]; T], da: &[[S; D]; T], dq: &mut [[S; D]; T], dk: &mut [[S; D]; T], dv: &mut [[S; D]; T], sc: &mut AttnScratch<S, T, HD>) = attention_backward_acc_body;
}

/// The body of [`attention_backward_acc`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attention_backward_acc_body<
    S: Scalar,
    const T: usize,
    const D: usize,
    const H: usize,
    const HD: usize,
    const W: usize,
>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    p: &[[[S; W]; H]; T],
    da: &[[S; D]; T],
    dq: &mut [[S; D]; T],
    dk: &mut [[S; D]; T],
    dv: &mut [[S; D]; T],
    sc: &mut AttnScratch<S, T, HD>,
) {
    const { assert!(H * HD == D, "heads * head_dim must equal d_model") };
    const { assert!(W >= 1 && W <= T, "the window must be in 1..=T") };
    let scale = S::ONE / S::from_usize(HD).sqrt();
    for h in 0..H {
        for t in 0..T {
            let lo = (t + 1).saturating_sub(W);
            let row = &mut sc.s[t];
            row[..lo].fill(S::ZERO);
            row[lo..=t].copy_from_slice(&p[t][h][..t + 1 - lo]);
            row[t + 1..].fill(S::ZERO);
        }
        split_head(q, h, &mut sc.qh, None);
        split_head(k, h, &mut sc.kh, None);
        split_head(v, h, &mut sc.vh, Some(&mut sc.vt));
        split_head(da, h, &mut sc.oh, None);
        // dP = dO V^T; dV = P^T dO.
        mm::linear_t(&sc.oh, &sc.vt, &mut sc.ds);
        crate::kernels::zero(&mut sc.dvh);
        mm::linear_backward_weight_acc(&sc.s, &sc.oh, &mut sc.dvh);
        // dS = P (dP - sum) scale, over the window (zero elsewhere).
        for t in 0..T {
            let (pr, dr) = (&sc.s[t], &mut sc.ds[t]);
            let sum = crate::kernels::dot(pr, dr);
            for (d, &pi) in dr.iter_mut().zip(pr) {
                *d = pi * (*d - sum) * scale;
            }
        }
        // dQ = dS K; dK = dS^T Q.
        crate::kernels::zero(&mut sc.dqh);
        mm::linear_backward_input_acc(&sc.ds, &sc.kh, &mut sc.dqh);
        crate::kernels::zero(&mut sc.dkh);
        mm::linear_backward_weight_acc(&sc.ds, &sc.qh, &mut sc.dkh);
        add_head(&sc.dqh, h, dq);
        add_head(&sc.dkh, h, dk);
        add_head(&sc.dvh, h, dv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxed_zeroed;
    use crate::rng::Rng;

    fn random<const R: usize, const C: usize>(rng: &mut Rng, amp: f64) -> [[f64; C]; R] {
        core::array::from_fn(|_| core::array::from_fn(|_| amp * (2.0 * rng.next_f64() - 1.0)))
    }

    /// The gemm form against the row kernels, forward and backward, in f64,
    /// with a window shorter than the sequence and one equal to it.
    fn check<const T: usize, const W: usize>(seed: u64) {
        const D: usize = 12;
        const H: usize = 3;
        const HD: usize = 4;
        let mut rng = Rng::new(seed);
        let (q, k, v) = (random::<T, D>(&mut rng, 2.0), random::<T, D>(&mut rng, 2.0), random::<T, D>(&mut rng, 1.0));
        let da = random::<T, D>(&mut rng, 1.0);
        let g0 = random::<T, D>(&mut rng, 1.0);
        let mut sc = boxed_zeroed::<AttnScratch<f64, T, HD>>();
        let (mut p, mut out) = ([[[7.0; W]; H]; T], [[7.0; D]; T]);
        attention::<f64, T, D, H, HD, W>(&q, &k, &v, &mut p, &mut out, &mut sc);
        let (mut pw, mut ow) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
        crate::kernels::attention::<f64, T, D, H, HD, W>(&q, &k, &v, &mut pw, &mut ow);
        for t in 0..T {
            let n = (t + 1).min(W);
            for h in 0..H {
                for j in 0..W {
                    // Position order here, offset order in the row kernels.
                    let want = if j < n { pw[t][h][n - 1 - j] } else { 0.0 };
                    assert!((p[t][h][j] - want).abs() < 1e-14, "p[{t}][{h}][{j}]");
                }
            }
            for j in 0..D {
                assert!((out[t][j] - ow[t][j]).abs() < 1e-13, "out[{t}][{j}]");
            }
        }
        let (mut dq, mut dk, mut dv) = (g0, g0, g0);
        attention_backward_acc::<f64, T, D, H, HD, W>(&q, &k, &v, &p, &da, &mut dq, &mut dk, &mut dv, &mut sc);
        let (mut wq, mut wk, mut wv) = (g0, g0, g0);
        crate::kernels::attention_backward_acc::<f64, T, D, H, HD, W>(&q, &k, &v, &pw, &da, &mut wq, &mut wk, &mut wv);
        for t in 0..T {
            for j in 0..D {
                assert!((dq[t][j] - wq[t][j]).abs() < 1e-13, "dq[{t}][{j}]");
                assert!((dk[t][j] - wk[t][j]).abs() < 1e-13, "dk[{t}][{j}]");
                assert!((dv[t][j] - wv[t][j]).abs() < 1e-13, "dv[{t}][{j}]");
            }
        }
    }

    #[test]
    fn gemm_attention_matches_the_row_kernels() {
        check::<9, 4>(51);
        check::<9, 9>(52);
        check::<20, 17>(53);
        check::<1, 1>(54);
    }
}
