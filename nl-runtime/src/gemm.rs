//! Matrix-matrix kernels of the training pass: the three products of a
//! linear layer `Y = X W^T` (forward, backward to the input, backward to the
//! weight), written as one register-blocked kernel `C (+)= A B`.
//!
//! The kernel keeps a block of rows x columns of `C` in registers while `k`
//! runs: each step loads one row segment of `B` (contiguous) and broadcasts
//! one scalar of `A` per row, so every load of `B` feeds a fused multiply-add
//! per row and lane and no horizontal sums are needed. The public products
//! are const-generic (a generated model's shapes are checked in its types);
//! the kernel under them takes the sizes at run time, one copy per element
//! type and path (see the docs of its private `Shape` type for why).
//!
//! # Paths
//!
//! The kernel exists three times ([`Path`]):
//!
//! - [`Path::Avx512`]: explicit AVX-512F intrinsics (`__m512`/`__m512d`,
//!   `vfmadd231ps`/`pd`), blocks of 6 rows x 4 vectors (64 `f32` or 32 `f64`
//!   columns, 24 of the 32 vector registers);
//! - [`Path::Avx2`]: the same with AVX2 and FMA (`__m256`/`__m256d`),
//!   blocks of 6 rows x 2 vectors (16 `f32` or 8 `f64` columns, 12 of 16
//!   registers);
//! - [`Path::Portable`]: plain Rust the compiler vectorises for the build's
//!   target features (blocks of 4 rows x `NR` columns, `NR` 64 with
//!   AVX-512, 16 with AVX2, 8 otherwise), using [`Scalar::mul_add`].
//!
//! The SIMD paths finish the columns with one narrower panel whose last
//! vector is masked (masked loads and stores touch nothing outside the
//! operands), and the rows with blocks of 4, 2 and 1 rows. They run `k` in
//! chunks (64 steps with AVX-512, 256 with AVX2) and, when a panel has more
//! than one row block, first copy the chunk's rows of `B` into a contiguous
//! 16 KiB buffer on the stack, so all row blocks read them from the L1
//! cache whatever the stride of `B` (rows 1 KiB apart, say, would all fall
//! in a few cache sets and evict each other).
//!
//! Which one runs is [`path`], the choice every dispatched kernel shares
//! (see [`dispatch`](crate::dispatch)): on x86-64 with the `std` feature it
//! is chosen once from the CPU and cached, so a baseline build (SSE2) runs
//! AVX-512 or AVX2 code on a CPU that has it; a build with `avx512f` enabled
//! uses the AVX-512 path without detecting anything; without `std` the path
//! follows the build's target features; other architectures run the
//! portable path. The environment variable `NL_KERNELS` can select a lower
//! path than the CPU's best.
//! Explicit 512-bit code also sidesteps LLVM's tuning for some AVX-512 cores
//! (`prefer-256-bit`), which would otherwise keep the portable path's loops
//! in 256-bit registers even in a native build.
//!
//! The forward product needs `W^T` (`[I, O]`, rows along the output) to run
//! in this form; [`transpose`] builds it, once per weight per call of the
//! training pass (a copy of the weight, small next to the `SEQ` rows of
//! multiply-adds that reuse it).
//!
//! # Summation order
//!
//! Every output element is a left fold over `k` in increasing order starting
//! from the old value of `C` (or `+0.0`), one multiply-add per `k`, the same
//! for every tile size and path (the SIMD paths' `k` chunks continue the
//! fold from the partial sums they stored in `C`, which rounds nothing). The
//! SIMD paths always fuse the multiply-add (one rounding); the portable
//! path fuses it when the build has FMA (and `std`), see
//! [`Scalar::mul_add`]. So all three paths give bit-identical results
//! wherever the portable one is fused, which the tests check bit for bit
//! against a triple loop. The exception is the portable path of a build
//! without the `fma` target feature (a baseline x86-64 build on a CPU
//! without AVX2 and FMA, forced with `NL_KERNELS=portable`, or another
//! architecture): it rounds the product and the sum separately.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::Scalar;

pub use crate::dispatch::{path, Path};

#[cfg(target_arch = "x86_64")]
mod x86;

/// Rows of `C` per register block (portable path).
const MR: usize = 4;

/// Columns of `C` per register block (elements, portable path).
#[cfg(target_feature = "avx512f")]
const NR: usize = 64;
/// Columns of `C` per register block (elements, portable path).
#[cfg(all(not(target_feature = "avx512f"), target_feature = "avx2"))]
const NR: usize = 16;
/// Columns of `C` per register block (elements, portable path).
#[cfg(not(any(target_feature = "avx512f", target_feature = "avx2")))]
const NR: usize = 8;

/// Columns of the narrower block that handles what is left of `N` after the
/// full `NR` blocks; the last `N % 8` columns go one at a time.
const NR_TAIL: usize = 8;

/// The shape of one product `C (+)= A B`: `A` `[m, k]` (or, with `ta`,
/// stored transposed as `[k, m]`), `B` `[k, n]` and `C` `[m, n]`, all
/// row-major, rows `lda`, `ldb`, `ldc` elements apart (contiguous for
/// every product but the attention's blocks); `acc` adds to the old `C`
/// instead of overwriting it.
///
/// The kernels take the sizes at run time: the typed wrappers below
/// ([`linear_t`] and the two backward products) are const-generic and check
/// the shapes in their types, but everything under them is one function per
/// element type and path, not one per product shape. Every block size stays
/// a constant (the register tiles, the tails); only the trip counts of the
/// loops around them are run-time values, which costs nothing measurable
/// next to the multiply-adds of one tile. A copy of the kernel per shape,
/// path and scalar type (as before) was 37% of the LLVM IR of the test
/// binary (`cargo llvm-lines --test all`: 425 shapes), most of its build
/// time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// `C += A B` (else `C = A B`).
    pub acc: bool,
    /// `A` is stored transposed: `A[i][j]` is `a[j * lda + i]` (else
    /// `a[i * lda + j]`).
    pub ta: bool,
    /// Elements between the starts of consecutive stored rows of `A` (`k`,
    /// or `m` with `ta`, when contiguous).
    pub lda: usize,
    /// Elements between rows of `B` (`n` when contiguous).
    pub ldb: usize,
    /// Elements between rows of `C` (`n` when contiguous).
    pub ldc: usize,
}

impl Shape {
    /// The shape of contiguous operands.
    #[inline]
    fn dense(m: usize, k: usize, n: usize, acc: bool, ta: bool) -> Shape {
        Shape { m, k, n, acc, ta, lda: if ta { m } else { k }, ldb: n, ldc: n }
    }

    /// Panics unless the operands hold the shape's rows at its strides
    /// (each stride at least its row's length). Empty shapes are refused:
    /// every product here has at least one row, column and step.
    #[inline]
    fn check<S>(self, a: &[S], b: &[S], c: &[S]) {
        let Shape { m, k, n, ta, lda, ldb, ldc, .. } = self;
        let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
        let fits = |len: usize, rows: usize, cols: usize, ld: usize| ld >= cols && len >= (rows - 1) * ld + cols;
        assert!(
            m >= 1
                && k >= 1
                && n >= 1
                && fits(a.len(), a_rows, a_cols, lda)
                && fits(b.len(), k, n, ldb)
                && fits(c.len(), m, n, ldc),
            "gemm: operands of {}, {}, {} elements (strides {lda}, {ldb}, {ldc}) for [{m}, {k}] x [{k}, {n}]",
            a.len(),
            b.len(),
            c.len()
        );
    }
}

/// One `R x C` block of `C (+)= A B` at rows `m0..m0 + R`, columns
/// `n0..n0 + C`, all `k`.
#[inline(always)]
fn block<S: Scalar, const R: usize, const C: usize, const TA: bool>(
    g: Shape,
    a: &[S],
    b: &[S],
    c: &mut [S],
    m0: usize,
    n0: usize,
) {
    let (sm, sk) = if TA { (1, g.lda) } else { (g.lda, 1) };
    let mut acc = [[S::ZERO; C]; R];
    if g.acc {
        for r in 0..R {
            let at = (m0 + r) * g.ldc + n0;
            acc[r].copy_from_slice(&c[at..at + C]);
        }
    }
    for k in 0..g.k {
        let bk: &[S; C] = b[k * g.ldb + n0..][..C].try_into().expect("C elements");
        for r in 0..R {
            let ar = a[(m0 + r) * sm + k * sk];
            for j in 0..C {
                acc[r][j] = ar.mul_add(bk[j], acc[r][j]);
            }
        }
    }
    for r in 0..R {
        let at = (m0 + r) * g.ldc + n0;
        c[at..at + C].copy_from_slice(&acc[r]);
    }
}

/// All row blocks of the columns `n0..n0 + C`.
#[inline(always)]
fn column_panel<S: Scalar, const C: usize, const TA: bool>(g: Shape, a: &[S], b: &[S], c: &mut [S], n0: usize) {
    let mut m0 = 0;
    while m0 + MR <= g.m {
        block::<S, MR, C, TA>(g, a, b, c, m0, n0);
        m0 += MR;
    }
    while m0 < g.m {
        block::<S, 1, C, TA>(g, a, b, c, m0, n0);
        m0 += 1;
    }
}

/// The portable path: plain Rust the compiler vectorises for the build's
/// target features. Not inlined: one copy per scalar type and layout of `A`
/// serves every shape (a microcontroller build keeps two).
#[inline(never)]
fn gemm_portable<S: Scalar, const TA: bool>(g: Shape, a: &[S], b: &[S], c: &mut [S]) {
    let mut n0 = 0;
    while n0 + NR <= g.n {
        column_panel::<S, NR, TA>(g, a, b, c, n0);
        n0 += NR;
    }
    while n0 + NR_TAIL <= g.n {
        column_panel::<S, NR_TAIL, TA>(g, a, b, c, n0);
        n0 += NR_TAIL;
    }
    while n0 < g.n {
        column_panel::<S, 1, TA>(g, a, b, c, n0);
        n0 += 1;
    }
}

/// `C (+)= A B` of shape `g` on `path` (see [`Shape`] for the operands'
/// layout). Panics if the operands do not have the shape's sizes.
///
/// # Safety
///
/// `path.is_supported()`.
#[inline]
unsafe fn run<S: Scalar>(path: Path, g: Shape, a: &[S], b: &[S], c: &mut [S]) {
    g.check(a, b, c);
    #[cfg(target_arch = "x86_64")]
    {
        let done = match path {
            // SAFETY: the path is supported (this function's contract), so
            // the CPU has AVX-512F; the operands have the sizes of `g`
            // (checked above), the other half of the entry points' contract.
            Path::Avx512 => unsafe { x86::gemm_avx512::<S>(g, a, b, c) },
            // SAFETY: as above, the CPU has AVX2 and FMA.
            Path::Avx2 => unsafe { x86::gemm_avx2::<S>(g, a, b, c) },
            Path::Portable => false,
        };
        if done {
            return;
        }
    }
    let _ = path;
    if g.ta {
        gemm_portable::<S, true>(g, a, b, c);
    } else {
        gemm_portable::<S, false>(g, a, b, c);
    }
}

/// `dst = src^T`: `src` is `[R, C]`, `dst` is `[C, R]`. For `f32` with
/// both sizes multiples of 16 on the AVX-512 path, 16 x 16 tiles of
/// shuffles; otherwise it walks 8 x 8 tiles so both sides stay in a few
/// cache lines. (A copy: the same result on every path.)
#[inline]
pub fn transpose<S: Scalar, const R: usize, const C: usize>(src: &[[S; C]; R], dst: &mut [[S; R]; C]) {
    #[cfg(target_arch = "x86_64")]
    if R.is_multiple_of(16) && C.is_multiple_of(16) && path() == Path::Avx512 {
        // SAFETY: the path is supported, so the CPU has AVX-512F.
        if unsafe { x86::transpose_avx512(src.as_flattened(), R, C, dst.as_flattened_mut()) } {
            return;
        }
    }
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
    matmul(T, I, O, false, false, x.as_flattened(), wt.as_flattened(), y.as_flattened_mut());
}

/// `C (+)= A B` on flat row-major operands whose sizes are known only at
/// run time (the memory levels' chunks, see
/// [`memory`](crate::memory)): `a` is `[m, k]` (with `ta`, stored
/// transposed as `[k, m]`), `b` `[k, n]`, `c` `[m, n]`; `acc` adds to the old
/// `c`. The same kernel, path and summation order as the typed products.
/// Panics unless the operands have those sizes.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn matmul<S: Scalar>(m: usize, k: usize, n: usize, acc: bool, ta: bool, a: &[S], b: &[S], c: &mut [S]) {
    assert!(
        a.len() == m * k && b.len() == k * n && c.len() == m * n,
        "gemm: operands of {}, {}, {} elements for [{m}, {k}] x [{k}, {n}]",
        a.len(),
        b.len(),
        c.len()
    );
    // SAFETY: `path()` is always supported.
    unsafe { run(path(), Shape::dense(m, k, n, acc, ta), a, b, c) };
}

/// `C = A B` ([`matmul`] without `acc`) on sub-matrices: row `i` of the
/// stored `A` (`[m, k]`, or `[k, m]` with `ta`) starts at `a[i * lda]`, row
/// `i` of `B` (`[k, n]`) at `b[i * ldb]`, row `i` of `C` (`[m, n]`) at
/// `c[i * ldc]`; the elements between rows are neither read nor written.
/// The attention uses it for the blocks of its `T x T` squares (see
/// [`attn`](crate::attn)). Panics unless the operands hold those rows.
#[inline]
pub(crate) fn matmul_strided<S: Scalar>(
    (m, k, n): (usize, usize, usize),
    ta: bool,
    (a, lda): (&[S], usize),
    (b, ldb): (&[S], usize),
    (c, ldc): (&mut [S], usize),
) {
    let g = Shape { m, k, n, acc: false, ta, lda, ldb, ldc };
    // SAFETY: `path()` is always supported.
    unsafe { run(path(), g, a, b, c) };
}

/// Backward of a linear layer to its input: `dX += dY W`, i.e.
/// `dx[t][i] += sum_o dy[t][o] w[o][i]` (`w` `[O, I]` as stored).
#[inline]
pub fn linear_backward_input_acc<S: Scalar, const T: usize, const O: usize, const I: usize>(
    dy: &[[S; O]; T],
    w: &[[S; I]; O],
    dx: &mut [[S; I]; T],
) {
    matmul(T, O, I, true, false, dy.as_flattened(), w.as_flattened(), dx.as_flattened_mut());
}

/// [`linear_backward_input_acc`] that overwrites `dx` instead of adding to
/// it: `dX = dY W` (the same fold, from `+0.0`), which saves zeroing `dx`
/// first and reading it back.
#[inline]
pub fn linear_backward_input<S: Scalar, const T: usize, const O: usize, const I: usize>(
    dy: &[[S; O]; T],
    w: &[[S; I]; O],
    dx: &mut [[S; I]; T],
) {
    matmul(T, O, I, false, false, dy.as_flattened(), w.as_flattened(), dx.as_flattened_mut());
}

/// Backward of a linear layer to its weight: `dW += dY^T X`, i.e.
/// `dw[o][i] += sum_t dy[t][o] x[t][i]`.
#[inline]
pub fn linear_backward_weight_acc<S: Scalar, const T: usize, const O: usize, const I: usize>(
    dy: &[[S; O]; T],
    x: &[[S; I]; T],
    dw: &mut [[S; I]; O],
) {
    matmul(O, T, I, true, true, dy.as_flattened(), x.as_flattened(), dw.as_flattened_mut());
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

    /// A multiply-add with one rounding everywhere (software where the
    /// target has no FMA): the fold the SIMD paths must reproduce.
    trait Exact: Scalar {
        fn fma(a: Self, b: Self, c: Self) -> Self;
    }
    impl Exact for f32 {
        fn fma(a: f32, b: f32, c: f32) -> f32 {
            libm::fmaf(a, b, c)
        }
    }
    impl Exact for f64 {
        fn fma(a: f64, b: f64, c: f64) -> f64 {
            libm::fma(a, b, c)
        }
    }

    /// [`fill`] in `S`, with a spread of magnitudes so that rounding the
    /// product separately changes many results.
    fn fill_s<S: Scalar, const R: usize, const C: usize>(seed: u64) -> [[S; C]; R] {
        let v = fill::<R, C>(seed);
        core::array::from_fn(|r| core::array::from_fn(|c| S::from_f64(v[r][c] * (1 + (r * 7 + c) % 5) as f64)))
    }

    /// The documented fold, as a triple loop: `c[m][n] = mad(a(m, k),
    /// b[k][n], c[m][n])` for `k` in increasing order, from the old `c[m][n]`
    /// (`ACC`) or `+0.0`.
    fn reference<S: Scalar, const M: usize, const K: usize, const N: usize>(
        mad: fn(S, S, S) -> S,
        acc: bool,
        a: impl Fn(usize, usize) -> S,
        b: &[[S; N]; K],
        c: &mut [[S; N]; M],
    ) {
        for m in 0..M {
            for n in 0..N {
                let mut s = if acc { c[m][n] } else { S::ZERO };
                for k in 0..K {
                    s = mad(a(m, k), b[k][n], s);
                }
                c[m][n] = s;
            }
        }
    }

    /// The three products `(y, dx, dw)` for one shape, on `path` (if the
    /// CPU supports it, else `None`) or by [`reference`] with `mad`.
    #[allow(clippy::type_complexity)]
    fn products<S: Scalar, const T: usize, const O: usize, const I: usize>(
        how: Result<Path, fn(S, S, S) -> S>,
    ) -> Option<([[S; O]; T], [[S; I]; T], [[S; I]; O])> {
        let x = fill_s::<S, T, I>(1);
        let w = fill_s::<S, O, I>(2);
        let dy = fill_s::<S, T, O>(3);
        let mut wt = [[S::ZERO; O]; I];
        transpose(&w, &mut wt);
        let mut y = [[S::from_f64(7.0); O]; T];
        let mut dx = fill_s::<S, T, I>(4);
        let mut dw = fill_s::<S, O, I>(5);
        match how {
            Ok(path) => {
                if !path.is_supported() {
                    return None;
                }
                // SAFETY: `path` is supported (checked above).
                unsafe {
                    let g = Shape::dense(T, I, O, false, false);
                    run(path, g, x.as_flattened(), wt.as_flattened(), y.as_flattened_mut());
                    let g = Shape::dense(T, O, I, true, false);
                    run(path, g, dy.as_flattened(), w.as_flattened(), dx.as_flattened_mut());
                    let g = Shape::dense(O, T, I, true, true);
                    run(path, g, dy.as_flattened(), x.as_flattened(), dw.as_flattened_mut());
                }
            }
            Err(mad) => {
                reference(mad, false, |m, k| x[m][k], &wt, &mut y);
                reference(mad, true, |m, k| dy[m][k], &w, &mut dx);
                reference(mad, true, |m, k| dy[k][m], &x, &mut dw);
            }
        }
        Some((y, dx, dw))
    }

    fn same_bits<S: Scalar, const R: usize, const C: usize>(
        got: &[[S; C]; R],
        want: &[[S; C]; R],
        path: Path,
        shape: [usize; 3],
        what: &str,
    ) {
        for r in 0..R {
            for c in 0..C {
                let (g, w) = (got[r][c].to_f64(), want[r][c].to_f64());
                let (name, dtype) = (path.name(), S::DTYPE);
                assert!(g.to_bits() == w.to_bits(), "{name} {dtype} {shape:?}: {what}[{r}][{c}]: {g:e} != {w:e}");
            }
        }
    }

    /// Every path this CPU supports against the reference fold, bit for bit:
    /// the SIMD paths against exact FMAs, the portable path against its own
    /// `Scalar::mul_add` (exact FMA too in a build with FMA and `std`).
    fn paths_match_reference<S: Exact, const T: usize, const O: usize, const I: usize>() -> usize {
        let exact = products::<S, T, O, I>(Err(<S as Exact>::fma)).unwrap();
        let own = products::<S, T, O, I>(Err(<S as Scalar>::mul_add)).unwrap();
        let mut ran = 0;
        for path in Path::ALL {
            let Some(got) = products::<S, T, O, I>(Ok(path)) else { continue };
            let want = if path == Path::Portable { &own } else { &exact };
            same_bits(&got.0, &want.0, path, [T, O, I], "y");
            same_bits(&got.1, &want.1, path, [T, O, I], "dx");
            same_bits(&got.2, &want.2, path, [T, O, I], "dw");
            ran += 1;
        }
        ran
    }

    fn all_shapes<S: Exact>() {
        // (T, O, I): the products are [T, I] x [I, O], [T, O] x [O, I] and
        // [O, T] x [T, I], so each shape puts each size in each role.
        let mut ran = paths_match_reference::<S, 7, 13, 37>();
        ran += paths_match_reference::<S, 1, 1, 1>();
        ran += paths_match_reference::<S, 33, 64, 129>();
        ran += paths_match_reference::<S, 5, 17, 3>();
        ran += paths_match_reference::<S, 4, 16, 64>();
        ran += paths_match_reference::<S, 9, 130, 66>();
        ran += paths_match_reference::<S, 12, 48, 8>();
        ran += paths_match_reference::<S, 2, 100, 31>();
        // K above both paths' k-chunk (64 and 256 steps).
        ran += paths_match_reference::<S, 11, 261, 19>();
        assert!(ran >= 9, "the portable path runs everywhere");
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        {
            let expect = 1 + Path::ALL[1..].iter().filter(|p| p.is_supported()).count();
            assert_eq!(ran, 9 * expect);
            std::eprintln!("gemm paths checked ({}): {expect}", S::DTYPE);
        }
    }

    #[test]
    fn every_path_is_bit_exact_f32() {
        all_shapes::<f32>();
    }

    #[test]
    fn every_path_is_bit_exact_f64() {
        all_shapes::<f64>();
    }

    /// Sub-matrix products ([`Shape`] with strides wider than the rows, at
    /// offsets into larger buffers, `A` plain and transposed, overwriting
    /// and accumulating) on every path against the reference fold with
    /// exact FMAs (or the portable path's own multiply-add), bit for bit;
    /// the elements between and around the rows must keep their values.
    #[test]
    fn strided_products_on_every_path() {
        fn one<S: Exact>(path: Path, (m, k, n): (usize, usize, usize), acc: bool, ta: bool) -> bool {
            if !path.is_supported() {
                return false;
            }
            let mad: fn(S, S, S) -> S = if path == Path::Portable { <S as Scalar>::mul_add } else { <S as Exact>::fma };
            let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
            let (lda, ldb, ldc) = (a_cols + 3, n + 5, n + 2);
            let (oa, ob, oc) = (7, 1, 4);
            let a = &fill_s::<S, 1, 8192>(11)[0][..oa + a_rows * lda];
            let b = &fill_s::<S, 1, 8192>(12)[0][..ob + k * ldb];
            let c_all = fill_s::<S, 1, 8192>(13)[0];
            let c0 = &c_all[..oc + m * ldc];
            let mut want = c_all;
            for i in 0..m {
                for j in 0..n {
                    let mut s = if acc { c0[oc + i * ldc + j] } else { S::ZERO };
                    for kk in 0..k {
                        let av = if ta { a[oa + kk * lda + i] } else { a[oa + i * lda + kk] };
                        s = mad(av, b[ob + kk * ldb + j], s);
                    }
                    want[oc + i * ldc + j] = s;
                }
            }
            let mut got = c_all;
            let g = Shape { m, k, n, acc, ta, lda, ldb, ldc };
            // SAFETY: `path` is supported (checked above).
            unsafe { run(path, g, &a[oa..], &b[ob..], &mut got[oc..c0.len()]) };
            for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                let (g, w) = (g.to_f64(), w.to_f64());
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{} {} [{m}, {k}, {n}] acc {acc} ta {ta}: c[{e}] {g:e} != {w:e}",
                    path.name(),
                    S::DTYPE
                );
            }
            true
        }
        let mut ran = 0;
        for path in Path::ALL {
            for shape in [(32, 32, 96), (32, 96, 32), (7, 13, 37), (13, 70, 5), (1, 1, 1), (20, 261, 19)] {
                for (acc, ta) in [(false, false), (true, false), (false, true), (true, true)] {
                    ran += usize::from(one::<f32>(path, shape, acc, ta));
                    ran += usize::from(one::<f64>(path, shape, acc, ta));
                }
            }
        }
        assert!(ran >= 48, "the portable path runs everywhere");
    }

    /// The data is such that rounding the product separately changes
    /// results, so the bit-exact tests would catch an unfused path.
    #[test]
    fn unfused_differs_from_fused() {
        fn unfused<S: Scalar>(a: S, b: S, c: S) -> S {
            a * b + c
        }
        let exact = products::<f32, 33, 64, 129>(Err(<f32 as Exact>::fma)).unwrap();
        let plain = products::<f32, 33, 64, 129>(Err(unfused)).unwrap();
        assert_ne!(exact.0, plain.0);
        assert_ne!(exact.1, plain.1);
        assert_ne!(exact.2, plain.2);
    }

    /// [`transpose`] on every path against the definition `dst[c][r] =
    /// src[r][c]`, at sizes the shuffle kernel takes (multiples of 16) and
    /// sizes it leaves to the tile loop.
    #[test]
    fn transpose_on_every_path() {
        fn one<const R: usize, const C: usize>() {
            let src: [[f32; C]; R] = core::array::from_fn(|r| core::array::from_fn(|c| (r * 1000 + c) as f32));
            let mut dst = [[0.0f32; R]; C];
            transpose(&src, &mut dst);
            for r in 0..R {
                for c in 0..C {
                    assert_eq!(dst[c][r], src[r][c], "[{r}][{c}] of {R} x {C}");
                }
            }
        }
        let mut ran = 0;
        for p in Path::ALL {
            let done = crate::dispatch::on_path(p, || {
                one::<16, 16>();
                one::<64, 64>();
                one::<32, 48>();
                one::<48, 16>();
                one::<20, 36>();
            });
            ran += usize::from(done.is_some());
        }
        assert!(ran >= 1);
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
