//! Matrix-matrix kernels of the training pass: the three products of a
//! linear layer `Y = X W^T` (forward, backward to the input, backward to the
//! weight), written as one register-blocked kernel `C (+)= A B`.
//!
//! The kernel keeps a block of `MR` rows x `NR` columns of `C` in registers
//! while `k` runs: each step loads one `NR`-wide row of `B` (contiguous) and
//! broadcasts `MR` scalars of `A`, so every load of `B` feeds `MR` fused
//! multiply-adds per lane and no horizontal sums are needed. `NR` is chosen
//! from the target's vector width at compile time (64 with AVX-512 = four
//! 16-lane registers, 16 with AVX2, 8 otherwise), so `MR * NR / lanes`
//! accumulators fit the register file. Every size is a const generic, so a
//! generated model gets a copy specialised to its shapes.
//!
//! The forward product needs `W^T` (`[I, O]`, rows along the output) to run
//! in this form; [`transpose`] builds it, once per weight per call of the
//! training pass (a copy of the weight, small next to the `SEQ` rows of
//! multiply-adds that reuse it).
//!
//! Summation order: every output element is a left fold over `k` in
//! increasing order starting from the old value of `C` (or zero), the same
//! for every tile size, so results do not depend on the target's `NR`
//! except through fused vs unfused multiply-adds.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::Scalar;

/// Rows of `C` per register block.
const MR: usize = 4;

/// Columns of `C` per register block (elements).
#[cfg(target_feature = "avx512f")]
const NR: usize = 64;
/// Columns of `C` per register block (elements).
#[cfg(all(not(target_feature = "avx512f"), target_feature = "avx2"))]
const NR: usize = 16;
/// Columns of `C` per register block (elements).
#[cfg(not(any(target_feature = "avx512f", target_feature = "avx2")))]
const NR: usize = 8;

/// Columns of the narrower block that handles what is left of `N` after the
/// full `NR` blocks; the last `N % 8` columns go one at a time.
const NR_TAIL: usize = 8;

/// One `R x C` block of `C (+)= A B` at rows `c[..R]`, columns `n0..n0 + C`.
/// `a(r, k)` is `A[m0 + r][k]` for the block's first row `m0`.
#[inline(always)]
fn block<S: Scalar, const R: usize, const C: usize, const K: usize, const N: usize, const ACC: bool>(
    a: impl Fn(usize, usize) -> S,
    b: &[[S; N]; K],
    n0: usize,
    c: &mut [[S; N]],
) {
    let mut acc = [[S::ZERO; C]; R];
    if ACC {
        for r in 0..R {
            acc[r].copy_from_slice(&c[r][n0..n0 + C]);
        }
    }
    for k in 0..K {
        let bk = &b[k][n0..n0 + C];
        for r in 0..R {
            let ar = a(r, k);
            for j in 0..C {
                acc[r][j] = ar.mul_add(bk[j], acc[r][j]);
            }
        }
    }
    for r in 0..R {
        c[r][n0..n0 + C].copy_from_slice(&acc[r]);
    }
}

/// All row blocks of the columns `n0..n0 + C`.
#[inline(always)]
fn column_panel<S: Scalar, const C: usize, const M: usize, const K: usize, const N: usize, const ACC: bool>(
    a: &impl Fn(usize, usize) -> S,
    b: &[[S; N]; K],
    n0: usize,
    c: &mut [[S; N]; M],
) {
    let mut m0 = 0;
    while m0 + MR <= M {
        block::<S, MR, C, K, N, ACC>(|r, k| a(m0 + r, k), b, n0, &mut c[m0..m0 + MR]);
        m0 += MR;
    }
    while m0 < M {
        block::<S, 1, C, K, N, ACC>(|_, k| a(m0, k), b, n0, &mut c[m0..m0 + 1]);
        m0 += 1;
    }
}

/// `C = A B` (`ACC = false`) or `C += A B` (`ACC = true`), `A` given as a
/// function `a(m, k)`, `B` row-major `[K, N]`, `C` row-major `[M, N]`.
#[inline(always)]
fn gemm<S: Scalar, const M: usize, const K: usize, const N: usize, const ACC: bool>(
    a: impl Fn(usize, usize) -> S,
    b: &[[S; N]; K],
    c: &mut [[S; N]; M],
) {
    let mut n0 = 0;
    while n0 + NR <= N {
        column_panel::<S, NR, M, K, N, ACC>(&a, b, n0, c);
        n0 += NR;
    }
    while n0 + NR_TAIL <= N {
        column_panel::<S, NR_TAIL, M, K, N, ACC>(&a, b, n0, c);
        n0 += NR_TAIL;
    }
    while n0 < N {
        column_panel::<S, 1, M, K, N, ACC>(&a, b, n0, c);
        n0 += 1;
    }
}

/// `dst = src^T`: `src` is `[R, C]`, `dst` is `[C, R]`. Walks 8 x 8 tiles so
/// both sides stay in a few cache lines.
#[inline]
pub fn transpose<S: Scalar, const R: usize, const C: usize>(src: &[[S; C]; R], dst: &mut [[S; R]; C]) {
    const TILE: usize = 8;
    let mut r0 = 0;
    while r0 < R {
        let r1 = (r0 + TILE).min(R);
        let mut c0 = 0;
        while c0 < C {
            let c1 = (c0 + TILE).min(C);
            for c in c0..c1 {
                for r in r0..r1 {
                    dst[c][r] = src[r][c];
                }
            }
            c0 = c1;
        }
        r0 = r1;
    }
}

/// `Y = X W^T` with the weight given transposed: `x` `[T, I]`, `wt` = `W^T`
/// `[I, O]` (see [`transpose`]), `y` `[T, O]`: `y[t][o] = sum_i x[t][i] w[o][i]`.
#[inline]
pub fn linear_t<S: Scalar, const T: usize, const O: usize, const I: usize>(
    x: &[[S; I]; T],
    wt: &[[S; O]; I],
    y: &mut [[S; O]; T],
) {
    gemm::<S, T, I, O, false>(|m, k| x[m][k], wt, y);
}

/// Backward of a linear layer to its input: `dX += dY W`, i.e.
/// `dx[t][i] += sum_o dy[t][o] w[o][i]` (`w` `[O, I]` as stored).
#[inline]
pub fn linear_backward_input_acc<S: Scalar, const T: usize, const O: usize, const I: usize>(
    dy: &[[S; O]; T],
    w: &[[S; I]; O],
    dx: &mut [[S; I]; T],
) {
    gemm::<S, T, O, I, true>(|m, k| dy[m][k], w, dx);
}

/// Backward of a linear layer to its weight: `dW += dY^T X`, i.e.
/// `dw[o][i] += sum_t dy[t][o] x[t][i]`.
#[inline]
pub fn linear_backward_weight_acc<S: Scalar, const T: usize, const O: usize, const I: usize>(
    dy: &[[S; O]; T],
    x: &[[S; I]; T],
    dw: &mut [[S; I]; O],
) {
    gemm::<S, O, T, I, true>(|m, k| dy[k][m], x, dw);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values with no structure a kernel bug could hide behind.
    fn fill<const R: usize, const C: usize>(seed: u64) -> [[f64; C]; R] {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        core::array::from_fn(|_| {
            core::array::from_fn(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
        })
    }

    /// Checks all three products against triple loops for one shape, with
    /// every tail path (rows not a multiple of 4, columns not of 8 or 64).
    fn check<const T: usize, const O: usize, const I: usize>() {
        let x = fill::<T, I>(1);
        let w = fill::<O, I>(2);
        let dy = fill::<T, O>(3);
        let mut wt = [[0.0; O]; I];
        transpose(&w, &mut wt);
        for o in 0..O {
            for i in 0..I {
                assert_eq!(wt[i][o], w[o][i]);
            }
        }
        let mut y = [[7.0; O]; T];
        linear_t(&x, &wt, &mut y);
        let mut dx = fill::<T, I>(4);
        let dx0 = dx;
        linear_backward_input_acc(&dy, &w, &mut dx);
        let mut dw = fill::<O, I>(5);
        let dw0 = dw;
        linear_backward_weight_acc(&dy, &x, &mut dw);
        for t in 0..T {
            for o in 0..O {
                let e: f64 = (0..I).map(|i| x[t][i] * w[o][i]).sum();
                assert!((y[t][o] - e).abs() < 1e-12, "y[{t}][{o}]");
            }
            for i in 0..I {
                let e: f64 = dx0[t][i] + (0..O).map(|o| dy[t][o] * w[o][i]).sum::<f64>();
                assert!((dx[t][i] - e).abs() < 1e-12, "dx[{t}][{i}]");
            }
        }
        for o in 0..O {
            for i in 0..I {
                let e: f64 = dw0[o][i] + (0..T).map(|t| dy[t][o] * x[t][i]).sum::<f64>();
                assert!((dw[o][i] - e).abs() < 1e-12, "dw[{o}][{i}]");
            }
        }
    }

    #[test]
    fn products_match_triple_loops() {
        check::<32, 64, 64>();
        check::<32, 256, 64>();
        check::<7, 13, 24>();
        check::<5, 77, 9>();
        check::<1, 1, 1>();
        check::<9, 130, 66>();
    }

    #[test]
    fn linear_by_hand() {
        // W = [[1, 2], [3, 4], [5, 6]] maps x = [1, -1] to [-1, -1, -1].
        let w = [[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let mut wt = [[0.0; 3]; 2];
        transpose(&w, &mut wt);
        assert_eq!(wt, [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]);
        let x = [[1.0, -1.0]];
        let mut y = [[0.0; 3]];
        linear_t(&x, &wt, &mut y);
        assert_eq!(y, [[-1.0, -1.0, -1.0]]);
        let dy = [[1.0, 0.0, 2.0]];
        let mut dx = [[0.0; 2]];
        linear_backward_input_acc(&dy, &w, &mut dx);
        assert_eq!(dx, [[11.0, 14.0]]);
        let mut dw = [[0.0; 2]; 3];
        linear_backward_weight_acc(&dy, &x, &mut dw);
        assert_eq!(dw, [[1.0, -1.0], [0.0, 0.0], [2.0, -2.0]]);
    }
}
