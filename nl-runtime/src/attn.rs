//! Sliding-window causal attention of the training pass as matrix
//! products: per head, the scores `Q_h K_h^T`, the weighted sum `P V_h` and
//! the four products of the backward run through the register-blocked
//! kernels of [`gemm`](crate::gemm) instead of one dot product or `axpy` per
//! (query, key) pair.
//!
//! The products run in blocks of [`BLOCK`] queries (and, for `dV` and `dK`,
//! of as many keys). A query block covers the keys from the start of the
//! key block holding its first query's window start up to its last query:
//! the later keys are in none of its windows, so their products are
//! skipped (3/8 of the `T x T` square at `T = W = 128`). The covered pairs
//! outside a window (the future inside the diagonal block, and keys more
//! than `W - 1` back) get probability exactly 0 and add exact zeros to every
//! sum. The waste left is the diagonal blocks' upper halves and, with a
//! short window, the keys before it in its first block; the generated code
//! uses these kernels only when `2 W >= T` and the row kernels of
//! [`kernels`](crate::kernels) otherwise.
//!
//! The heads' columns of `q`, `k`, `v`, the output and the gradients, and
//! the probabilities' squares, are read and written in place, as strided
//! operands; only the transposed keys (forward) or values (backward) and
//! the square of the scores' gradient are in the scratch.
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

/// Per-head buffers of [`attention`] and [`attention_backward`] for
/// sequences of `T` positions and heads of `HD` columns: `2 T HD + T^2`
/// values, shared by every head and block (each call overwrites them). The
/// products read and write the heads' columns of `q`, `k`, `v` and the
/// outputs, and the probabilities' squares, in place (as strided
/// sub-matrices); only the operands they need transposed, and the
/// gradient's square, live here.
#[repr(C)]
pub struct AttnScratch<S, const T: usize, const HD: usize> {
    /// The head's keys (forward) or values (backward), `[T, HD]`.
    pub xh: [[S; HD]; T],
    /// `xh` transposed, `[HD, T]`.
    pub xt: [[S; T]; HD],
    /// Gradient of the probabilities, then of the scores, by position
    /// (only the blocks the products cover are written).
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

/// The softmax of one row of scores over the window `lo..=t` (indices into
/// `row`), in place: the scaled scores inside, `-inf` outside (whose
/// `e^-inf` is exactly 0), then the maximum, `e^(x - max)` and the
/// normalisation, each a pass over the whole row.
#[inline(always)]
fn softmax_row<S: Scalar>(row: &mut [S], lo: usize, t: usize, scale: S) {
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

/// Queries (and keys) per block of the `T x T` squares: the products run
/// block by block and skip the blocks no query of the block attends to.
const BLOCK: usize = 32;

/// Row block `i`: its queries `r0..r1` and the keys `c0..r1` its products
/// cover, `c0` the start of the block holding the first query's window
/// start (so every covered pair is in whole key blocks).
#[inline(always)]
fn query_block<const T: usize, const W: usize>(i: usize) -> (usize, usize, usize) {
    let r0 = i * BLOCK;
    let r1 = (r0 + BLOCK).min(T);
    let c0 = (r0 + 1).saturating_sub(W) / BLOCK * BLOCK;
    (r0, r1, c0)
}

/// Key block `j`: its keys `c0..c1` and the queries `c0..q1` of the row
/// blocks whose products cover it (those from block `j` on whose key range
/// starts at or before `c0`).
#[inline(always)]
fn key_block<const T: usize, const W: usize>(j: usize) -> (usize, usize, usize) {
    let c0 = j * BLOCK;
    let c1 = (c0 + BLOCK).min(T);
    let mut q1 = c1;
    let mut i = j + 1;
    while i * BLOCK < T && query_block::<T, W>(i).2 <= c0 {
        q1 = query_block::<T, W>(i).1;
        i += 1;
    }
    (c0, c1, q1)
}

/// Columns `h HD .. (h + 1) HD` of `x`, transposed, into `out_t`
/// (`[HD, T]`), through `tmp`.
#[inline(always)]
fn head_transposed<S: Scalar, const T: usize, const D: usize, const HD: usize>(
    x: &[[S; D]; T],
    h: usize,
    tmp: &mut [[S; HD]; T],
    out_t: &mut [[S; T]; HD],
) {
    for t in 0..T {
        tmp[t].copy_from_slice(&x[t][h * HD..(h + 1) * HD]);
    }
    mm::transpose(tmp, out_t);
}

/// Head `h`'s columns of a `[T, D]` matrix from row `r` on, as a strided
/// operand (rows `D` apart).
#[inline(always)]
fn head<S, const T: usize, const D: usize>(x: &[[S; D]; T], r: usize, col: usize) -> (&[S], usize) {
    (&x.as_flattened()[r * D + col..], D)
}

/// [`head`] for writing.
#[inline(always)]
fn head_mut<S, const T: usize, const D: usize>(x: &mut [[S; D]; T], r: usize, col: usize) -> (&mut [S], usize) {
    (&mut x.as_flattened_mut()[r * D + col..], D)
}

/// Block `(r, c)` of a `T x T` square, as a strided operand (rows `T` apart).
#[inline(always)]
fn square<S, const T: usize>(x: &[[S; T]; T], r: usize, c: usize) -> (&[S], usize) {
    (&x.as_flattened()[r * T + c..], T)
}

/// [`square`] for writing.
#[inline(always)]
fn square_mut<S, const T: usize>(x: &mut [[S; T]; T], r: usize, c: usize) -> (&mut [S], usize) {
    (&mut x.as_flattened_mut()[r * T + c..], T)
}

crate::dispatch::dispatched! {
    /// Sliding-window causal attention over a sequence, as
    /// [`kernels::attention`](crate::kernels::attention): row `t` attends to
    /// positions `max(0, t - W + 1) ..= t`, head `h` on columns
    /// `h HD .. (h + 1) HD`, logits `q.k / sqrt(HD)`; the probabilities go to
    /// `p` as one `[query][key]` square per head: `p[h][t][tau]` weighs
    /// position `tau` for query `t`, written over the blocks the products
    /// cover (0 there outside the window; the blocks no window reaches are
    /// not written, and [`attention_backward`] does not read them). This is
    /// not the offset layout of the row kernels.
    ///
    /// Per head and block of [`BLOCK`] queries: `S = Q_h K_h^T` over the
    /// keys the block's windows reach (one product), the softmax of each row
    /// over its window (maximum, `e^(s - max)`, the sum of the row in 16
    /// lanes by position, one reciprocal), then `O_h = P V_h` (one product,
    /// written straight into the head's columns of `out`).
    pub fn attention[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], p: &mut [[[S; T]; T]; H], out: &mut [[S; D]; T], sc: &mut AttnScratch<S, T, HD>) = attention_body;
}

/// The body of [`attention`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn attention_body<S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize>(
    q: &[[S; D]; T],
    k: &[[S; D]; T],
    v: &[[S; D]; T],
    p: &mut [[[S; T]; T]; H],
    out: &mut [[S; D]; T],
    sc: &mut AttnScratch<S, T, HD>,
) {
    const { assert!(H * HD == D, "heads * head_dim must equal d_model") };
    const { assert!(W >= 1 && W <= T, "the window must be in 1..=T") };
    let scale = S::ONE / S::from_usize(HD).sqrt();
    for h in 0..H {
        let col = h * HD;
        head_transposed(k, h, &mut sc.xh, &mut sc.xt);
        for i in 0..T.div_ceil(BLOCK) {
            let (r0, r1, c0) = query_block::<T, W>(i);
            let (rows, keys) = (r1 - r0, r1 - c0);
            // S[r0..r1][c0..r1] = Q_h[r0..r1] K_h^T[.., c0..r1]
            mm::matmul_strided(
                (rows, HD, keys),
                false,
                head(q, r0, col),
                (&sc.xt.as_flattened()[c0..], T),
                square_mut(&mut p[h], r0, c0),
            );
            for t in r0..r1 {
                let lo = (t + 1).saturating_sub(W);
                softmax_row(&mut p[h][t][c0..r1], lo - c0, t - c0, scale);
            }
            // O_h[r0..r1] = P[r0..r1][c0..r1] V_h[c0..r1]
            mm::matmul_strided(
                (rows, keys, HD),
                false,
                square(&p[h], r0, c0),
                head(v, c0, col),
                head_mut(out, r0, col),
            );
        }
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`attention`]: from `da` (gradient of the output) writes
    /// the gradients of `q`, `k` and `v` into `dq`, `dk`, `dv` (overwriting
    /// them: every element belongs to one head's products), reading the
    /// probabilities `p` the forward kept.
    ///
    /// Per head, block by block as in the forward, with `P` read from `p`'s
    /// blocks in place: `dP = dO_h V_h^T`, `dS = P * (dP - rowsum(P * dP))
    /// / sqrt(HD)` (zero outside the window, where `P` is), `dQ_h = dS K_h`;
    /// then per block of keys `dV_h = P^T dO_h` and `dK_h = dS^T Q_h` over
    /// the queries whose blocks reached them.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward[S: Scalar, const T: usize, const D: usize, const H: usize, const HD: usize, const W: usize][S, T, D, H, HD, W](q: &[[S; D]; T], k: &[[S; D]; T], v: &[[S; D]; T], p: &[[[S; T]; T]; H], da: &[[S; D]; T], dq: &mut [[S; D]; T], dk: &mut [[S; D]; T], dv: &mut [[S; D]; T], sc: &mut AttnScratch<S, T, HD>) = attention_backward_body;
}

/// The body of [`attention_backward`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attention_backward_body<
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
    p: &[[[S; T]; T]; H],
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
        let col = h * HD;
        head_transposed(v, h, &mut sc.xh, &mut sc.xt);
        for i in 0..T.div_ceil(BLOCK) {
            let (r0, r1, c0) = query_block::<T, W>(i);
            let (rows, keys) = (r1 - r0, r1 - c0);
            // dP = dO_h V_h^T over the block.
            mm::matmul_strided(
                (rows, HD, keys),
                false,
                head(da, r0, col),
                (&sc.xt.as_flattened()[c0..], T),
                square_mut(&mut sc.ds, r0, c0),
            );
            // dS = P (dP - sum) scale (zero where P is).
            for t in r0..r1 {
                let (pr, dr) = (&p[h][t][c0..r1], &mut sc.ds[t][c0..r1]);
                let sum = crate::kernels::dot_slice(pr, dr);
                for (d, &pi) in dr.iter_mut().zip(pr) {
                    *d = pi * (*d - sum) * scale;
                }
            }
            // dQ_h[r0..r1] = dS K_h[c0..r1].
            mm::matmul_strided(
                (rows, keys, HD),
                false,
                square(&sc.ds, r0, c0),
                head(k, c0, col),
                head_mut(dq, r0, col),
            );
        }
        // By key block: dV_h = P^T dO_h, dK_h = dS^T Q_h over the queries
        // whose blocks covered it (the transposed squares read in place).
        for j in 0..T.div_ceil(BLOCK) {
            let (c0, c1, q1) = key_block::<T, W>(j);
            let (keys, queries) = (c1 - c0, q1 - c0);
            mm::matmul_strided(
                (keys, queries, HD),
                true,
                square(&p[h], c0, c0),
                head(da, c0, col),
                head_mut(dv, c0, col),
            );
            mm::matmul_strided(
                (keys, queries, HD),
                true,
                square(&sc.ds, c0, c0),
                head(q, c0, col),
                head_mut(dk, c0, col),
            );
        }
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

    /// Fills the scratch with NaN, which any read of a stale value carries
    /// into the results.
    fn scribble<const T: usize, const HD: usize>(sc: &mut AttnScratch<f64, T, HD>) {
        sc.xh.as_flattened_mut().fill(f64::NAN);
        sc.xt.as_flattened_mut().fill(f64::NAN);
        sc.ds.as_flattened_mut().fill(f64::NAN);
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
        scribble(&mut sc);
        // Unwritten blocks of the squares stay NaN: the backward must not
        // read them.
        let mut p = boxed_zeroed::<[[[f64; T]; T]; H]>();
        p.as_flattened_mut().as_flattened_mut().fill(f64::NAN);
        let mut out = [[7.0; D]; T];
        attention::<f64, T, D, H, HD, W>(&q, &k, &v, &mut p, &mut out, &mut sc);
        let (mut pw, mut ow) = ([[[0.0; W]; H]; T], [[0.0; D]; T]);
        crate::kernels::attention::<f64, T, D, H, HD, W>(&q, &k, &v, &mut pw, &mut ow);
        for t in 0..T {
            let lo = (t + 1).saturating_sub(W);
            for h in 0..H {
                for tau in lo..=t {
                    // Position order here, offset order in the row kernels.
                    let want = pw[t][h][t - tau];
                    assert!((p[h][t][tau] - want).abs() < 1e-14, "p[{h}][{t}][{tau}]");
                }
                // The future inside the diagonal block: exactly 0.
                for tau in t + 1..(t / BLOCK * BLOCK + BLOCK).min(T) {
                    assert_eq!(p[h][t][tau], 0.0, "p[{h}][{t}][{tau}]");
                }
            }
            for j in 0..D {
                assert!((out[t][j] - ow[t][j]).abs() < 1e-13, "out[{t}][{j}]");
            }
        }
        // The backward may read only what it writes itself.
        scribble(&mut sc);
        // Overwritten: the old values must not leak in.
        let (mut dq, mut dk, mut dv) = (g0, g0, g0);
        attention_backward::<f64, T, D, H, HD, W>(&q, &k, &v, &p, &da, &mut dq, &mut dk, &mut dv, &mut sc);
        let zero = [[0.0; D]; T];
        let (mut wq, mut wk, mut wv) = (zero, zero, zero);
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
        // More than one block of the squares: whole windows, a window that
        // drops whole key blocks, and sizes that are not multiples of it.
        check::<96, 96>(55);
        check::<100, 40>(56);
        check::<77, 33>(57);
        check::<70, 64>(58);
    }
}
