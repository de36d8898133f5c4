//! The explicit x86-64 SIMD paths of [`super`]: `C (+)= A B` with AVX-512F
//! (`__m512`/`__m512d`) and with AVX2 + FMA (`__m256`/`__m256d`).
//!
//! One kernel, generic over a [`Vector`] type, is instantiated inside a
//! `#[target_feature]` function per instruction set ([`gemm_avx512`],
//! [`gemm_avx2`]); everything below those entry points is `#[inline(always)]`,
//! so it is compiled with the entry point's features and the intrinsics
//! become single instructions in it.
//!
//! Blocking: a block of `MR` rows x `NV` vectors of `C` stays in registers
//! while `k` runs; each step loads `NV` vectors of row `k` of `B` and
//! broadcasts `MR` scalars of `A`, then does `MR * NV` fused multiply-adds,
//! one per accumulator. The columns left after the full `NV`-vector panels
//! go into one narrower panel whose last vector is masked (masked loads and
//! stores, so nothing outside `B` or `C` is touched); the rows left after the
//! full `MR`-row blocks go into blocks of 4, 2 and 1 rows. `k` runs in
//! chunks of `KC`, each chunk's rows of the panel of `B` packed into a
//! contiguous buffer first (see [`k_chunks`]).
//!
//! Every lane of every accumulator is one element of `C`, updated once per
//! `k` in increasing order by `fma(a[m][k], b[k][n], acc)` (one rounding),
//! starting from the old `C` or from `+0.0`: exactly the fold the module
//! documents, whatever the block shape.

use core::any::TypeId;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::Shape;
use crate::Scalar;

/// A SIMD vector of `LANES` elements of `E`: the operations the kernel needs.
///
/// # Safety
///
/// Every method may only be called on a CPU that has the target features of
/// the implementor (`avx512f` for the `Avx512*` types, `avx2` and `fma` for
/// the `Avx2*` types). Pointer arguments must be valid for reading (or
/// writing) the first `n` elements (`load`, `store`) or one element
/// (`splat`); masked lanes are neither read nor written.
trait Vector: Copy {
    /// The element type.
    type E: Copy;
    /// Elements per vector.
    const LANES: usize;
    /// All lanes `+0.0`.
    unsafe fn zero() -> Self;
    /// All lanes `*p`.
    unsafe fn splat(p: *const Self::E) -> Self;
    /// Lanes `p[0..n]` (`1 <= n <= LANES`); lanes from `n` on are `+0.0`.
    unsafe fn load(p: *const Self::E, n: usize) -> Self;
    /// Writes lanes `0..n` (`1 <= n <= LANES`) to `p[0..n]`.
    unsafe fn store(self, p: *mut Self::E, n: usize);
    /// `a * b + c` in every lane, with one rounding.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
}

/// 16 `f32` lanes of AVX-512F.
#[derive(Clone, Copy)]
struct Avx512F32(__m512);
/// 8 `f64` lanes of AVX-512F.
#[derive(Clone, Copy)]
struct Avx512F64(__m512d);
/// 8 `f32` lanes of AVX2 (FMA3 for the multiply-add).
#[derive(Clone, Copy)]
struct Avx2F32(__m256);
/// 4 `f64` lanes of AVX2 (FMA3 for the multiply-add).
#[derive(Clone, Copy)]
struct Avx2F64(__m256d);

// SAFETY (all four impls): each method is one or two intrinsics of the
// instruction set the `Vector` contract obliges the caller to have (AVX-512F;
// AVX2 and FMA), and touches memory only at the elements the contract
// requires to be valid: full loads and stores read or write exactly `LANES`
// elements when `n == LANES`, masked ones only the first `n` (masked-off
// lanes of `vmaskmov`/`vmovups{k}` neither access memory nor fault).

impl Vector for Avx512F32 {
    type E = f32;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see above the impls (AVX-512F by the contract).
        unsafe { Self(_mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        // SAFETY: see above the impls; `p` is valid for one read.
        unsafe { Self(_mm512_set1_ps(*p)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, n: usize) -> Self {
        // SAFETY: see above the impls; `p[0..n]` is valid for reads.
        unsafe {
            if n == Self::LANES {
                Self(_mm512_loadu_ps(p))
            } else {
                Self(_mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p))
            }
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, n: usize) {
        // SAFETY: see above the impls; `p[0..n]` is valid for writes.
        unsafe {
            if n == Self::LANES {
                _mm512_storeu_ps(p, self.0)
            } else {
                _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, self.0)
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: see above the impls (no memory access).
        unsafe { Self(_mm512_fmadd_ps(a.0, b.0, c.0)) }
    }
}

impl Vector for Avx512F64 {
    type E = f64;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see above the impls (AVX-512F by the contract).
        unsafe { Self(_mm512_setzero_pd()) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f64) -> Self {
        // SAFETY: see above the impls; `p` is valid for one read.
        unsafe { Self(_mm512_set1_pd(*p)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64, n: usize) -> Self {
        // SAFETY: see above the impls; `p[0..n]` is valid for reads.
        unsafe {
            if n == Self::LANES {
                Self(_mm512_loadu_pd(p))
            } else {
                Self(_mm512_maskz_loadu_pd(((1u32 << n) - 1) as __mmask8, p))
            }
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64, n: usize) {
        // SAFETY: see above the impls; `p[0..n]` is valid for writes.
        unsafe {
            if n == Self::LANES {
                _mm512_storeu_pd(p, self.0)
            } else {
                _mm512_mask_storeu_pd(p, ((1u32 << n) - 1) as __mmask8, self.0)
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: see above the impls (no memory access).
        unsafe { Self(_mm512_fmadd_pd(a.0, b.0, c.0)) }
    }
}

/// The `vmaskmovps` mask selecting lanes `0..n` of 8 (sign bit set).
///
/// # Safety
///
/// The CPU must have AVX2.
#[inline(always)]
unsafe fn mask_i32x8(n: usize) -> __m256i {
    // SAFETY: AVX2 by this function's contract; no memory access.
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// The `vmaskmovpd` mask selecting lanes `0..n` of 4 (sign bit set).
///
/// # Safety
///
/// The CPU must have AVX2.
#[inline(always)]
unsafe fn mask_i64x4(n: usize) -> __m256i {
    // SAFETY: AVX2 by this function's contract; no memory access.
    unsafe { _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), _mm256_setr_epi64x(0, 1, 2, 3)) }
}

impl Vector for Avx2F32 {
    type E = f32;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see above the impls (AVX by the contract).
        unsafe { Self(_mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        // SAFETY: see above the impls; `p` is valid for one read.
        unsafe { Self(_mm256_set1_ps(*p)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, n: usize) -> Self {
        // SAFETY: see above the impls; `p[0..n]` is valid for reads.
        unsafe {
            if n == Self::LANES {
                Self(_mm256_loadu_ps(p))
            } else {
                Self(_mm256_maskload_ps(p, mask_i32x8(n)))
            }
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, n: usize) {
        // SAFETY: see above the impls; `p[0..n]` is valid for writes.
        unsafe {
            if n == Self::LANES {
                _mm256_storeu_ps(p, self.0)
            } else {
                _mm256_maskstore_ps(p, mask_i32x8(n), self.0)
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: see above the impls (FMA by the contract; no memory access).
        unsafe { Self(_mm256_fmadd_ps(a.0, b.0, c.0)) }
    }
}

impl Vector for Avx2F64 {
    type E = f64;
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: see above the impls (AVX by the contract).
        unsafe { Self(_mm256_setzero_pd()) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f64) -> Self {
        // SAFETY: see above the impls; `p` is valid for one read.
        unsafe { Self(_mm256_set1_pd(*p)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64, n: usize) -> Self {
        // SAFETY: see above the impls; `p[0..n]` is valid for reads.
        unsafe {
            if n == Self::LANES {
                Self(_mm256_loadu_pd(p))
            } else {
                Self(_mm256_maskload_pd(p, mask_i64x4(n)))
            }
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64, n: usize) {
        // SAFETY: see above the impls; `p[0..n]` is valid for writes.
        unsafe {
            if n == Self::LANES {
                _mm256_storeu_pd(p, self.0)
            } else {
                _mm256_maskstore_pd(p, mask_i64x4(n), self.0)
            }
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: see above the impls (FMA by the contract; no memory access).
        unsafe { Self(_mm256_fmadd_pd(a.0, b.0, c.0)) }
    }
}

/// Where one block reads and writes. `A` is addressed as
/// `a[m * sm + k * sk]`; `B` and `C` are row-major with row strides `ldb`
/// and `ldc` elements.
#[derive(Clone, Copy)]
struct Operands<E> {
    a: *const E,
    sm: usize,
    sk: usize,
    b: *const E,
    ldb: usize,
    c: *mut E,
    ldc: usize,
}

/// One block of `R` rows x `NV` vectors of `C (+)= A B`, `kc` steps of `k`,
/// at `o`'s pointers (row `m0` of `A` and `C`, column `n0` of `B` and `C`,
/// step `k0` of `A` and `B`): starts from the old `C` if `acc`, else from
/// `+0.0`. The last of the `NV` vectors has `last` lanes (`1..=LANES`), the
/// others are full.
///
/// # Safety
///
/// The [`Vector`] contract for `V`; `A[r][k]` for `r < R`, `k < kc`, and the
/// `(NV - 1) * LANES + last` columns of rows `0..kc` of `B` and rows `0..R`
/// of `C` at `o`'s pointers are in bounds of the operands (`C` exclusively
/// borrowed, not overlapping `A` or `B`).
#[inline(always)]
unsafe fn block<V: Vector, const R: usize, const NV: usize>(o: Operands<V::E>, kc: usize, acc: bool, last: usize) {
    let lanes = |j: usize| if j + 1 == NV { last } else { V::LANES };
    // SAFETY: every pointer below stays inside the region this function's
    // contract declares in bounds: row `r < R` / `k < kc`, vector `j < NV` at
    // column `j * LANES`, `lanes(j)` elements; the `Vector` calls meet the
    // CPU-feature part of their contract by this function's.
    unsafe {
        let mut c = [[V::zero(); NV]; R];
        if acc {
            for r in 0..R {
                for j in 0..NV {
                    c[r][j] = V::load(o.c.add(r * o.ldc + j * V::LANES), lanes(j));
                }
            }
        }
        for k in 0..kc {
            let bk = o.b.add(k * o.ldb);
            let mut b = [V::zero(); NV];
            for j in 0..NV {
                b[j] = V::load(bk.add(j * V::LANES), lanes(j));
            }
            for r in 0..R {
                let a = V::splat(o.a.add(r * o.sm + k * o.sk));
                for j in 0..NV {
                    c[r][j] = V::fma(a, b[j], c[r][j]);
                }
            }
        }
        for r in 0..R {
            for j in 0..NV {
                c[r][j].store(o.c.add(r * o.ldc + j * V::LANES), lanes(j));
            }
        }
    }
}

// Compile time: the kernel below is instantiated once per element type and
// path, whatever the product shapes (they are run-time values, see
// `super::Shape`); the register blocks are the instances: `MR`, 4, 2 and 1
// rows (the row remainder as its binary digits) times `NV` vectors and each
// narrower tail width.

/// All rows of one column panel of `NV` vectors (the last with `last`
/// lanes), `kc` steps of `k`: `m / MR` blocks of `MR` rows, then blocks of
/// 4, 2 and 1 rows as the binary digits of `m % MR` say.
///
/// # Safety
///
/// As [`block`], for all `m` rows.
#[inline(always)]
unsafe fn column_panel<V: Vector, const NV: usize, const MR: usize>(
    o: Operands<V::E>,
    m: usize,
    kc: usize,
    acc: bool,
    last: usize,
) {
    let at = |m0: usize| Operands { a: o.a.wrapping_add(m0 * o.sm), c: o.c.wrapping_add(m0 * o.ldc), ..o };
    // SAFETY: the blocks cover rows `m0..m0 + R` with `m0 + R <= m` (the
    // remainder's digits sum to `m % MR < 8`), so each block's region is
    // inside the panel's, which this function's contract declares in bounds
    // (and `wrapping_add` stays in bounds for these `m0`).
    unsafe {
        for i in 0..m / MR {
            block::<V, MR, NV>(at(i * MR), kc, acc, last);
        }
        let mut m0 = m / MR * MR;
        let rest = m % MR;
        if rest & 4 != 0 {
            block::<V, 4, NV>(at(m0), kc, acc, last);
            m0 += 4;
        }
        if rest & 2 != 0 {
            block::<V, 2, NV>(at(m0), kc, acc, last);
            m0 += 2;
        }
        if rest & 1 != 0 {
            block::<V, 1, NV>(at(m0), kc, acc, last);
        }
    }
}

/// One column panel of `NV` vectors (the last with `last` lanes) at `o`,
/// all `m` rows, `k` in chunks of `KC`. With more than one row block, each
/// chunk's rows of `B` are first copied into a contiguous buffer on the
/// stack (`KC * NV` vectors, at most 16 KiB), which every row block then
/// reads from the L1 cache: read in place, rows `n` elements apart map to
/// few cache sets when `n` is a multiple of a large power of two, and evict
/// each other. Chunks after the first continue the fold from the partial
/// sums they stored in `C` (exact: a store and a load round nothing).
///
/// # Safety
///
/// As [`column_panel`], for all `k` steps.
#[inline(always)]
unsafe fn k_chunks<V: Vector, const NV: usize, const MR: usize, const KC: usize>(
    o: Operands<V::E>,
    m: usize,
    k: usize,
    acc: bool,
    last: usize,
) {
    let lanes = |j: usize| if j + 1 == NV { last } else { V::LANES };
    let mut packed = MaybeUninit::<[[V; NV]; KC]>::uninit();
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        let mut o = Operands { a: o.a.wrapping_add(k0 * o.sk), b: o.b.wrapping_add(k0 * o.ldb), ..o };
        // SAFETY: steps `k0..k0 + kc` of `0..k`: inside the region this
        // function's contract declares in bounds. The buffer has room for
        // `kc <= KC` rows of `NV` vectors, all of which the copy loop writes
        // before the blocks read them.
        unsafe {
            if m > MR {
                let p = packed.as_mut_ptr().cast::<V::E>();
                for kk in 0..kc {
                    for j in 0..NV {
                        let v = V::load(o.b.add(kk * o.ldb + j * V::LANES), lanes(j));
                        v.store(p.add((kk * NV + j) * V::LANES), V::LANES);
                    }
                }
                o.b = p;
                o.ldb = NV * V::LANES;
            }
            column_panel::<V, NV, MR>(o, m, kc, acc || k0 > 0, last);
        }
        k0 += kc;
    }
}

/// `C (+)= A B` of shape `g` (`TA` is `g.ta`): `n / (NV * LANES)` panels of `NV` vectors,
/// then one panel of the `ceil(rest / LANES)` vectors the rest needs, its
/// last vector masked.
///
/// # Safety
///
/// The [`Vector`] contract's CPU features for `V`; `a`, `b`, `c` valid for
/// the rows of `A`, `B` and `C` at `g`'s strides ([`Shape::check`](super::Shape),
/// `c` for writes, unaliased).
#[inline(always)]
unsafe fn kernel<V: Vector, const MR: usize, const NV: usize, const KC: usize, const TA: bool>(
    g: Shape,
    a: *const V::E,
    b: *const V::E,
    c: *mut V::E,
) {
    const { assert!(MR >= 1 && MR <= 8 && NV >= 1 && NV <= 8 && KC >= 1) };
    let Shape { m, k, n, acc, lda, ldb, ldc, .. } = g;
    // A constant stride of 1 along `k` (or along the rows, with `TA`) keeps
    // the broadcasts' addresses in the inner loop at fixed offsets from one
    // pointer; both strides at run time cost several integer instructions
    // per step of `k` (15% more instructions for micro's training with AVX2,
    // counted by callgrind).
    let (sm, sk) = if TA { (1, lda) } else { (lda, 1) };
    let at = |n0: usize| Operands { a, sm, sk, b: b.wrapping_add(n0), ldb, c: c.wrapping_add(n0), ldc };
    let width = NV * V::LANES;
    let n0 = n / width * width;
    // The columns after the full panels: `tail_nv` vectors, the last with
    // `tail_last` lanes.
    let tail_nv = (n - n0).div_ceil(V::LANES);
    let tail_last = n % V::LANES;
    let tail_last = if tail_last == 0 { V::LANES } else { tail_last };
    // SAFETY: the panels cover columns `p * width..(p + 1) * width` with the
    // end at most `n`, then `n0..n` (`tail_nv <= NV` vectors, the last one
    // `tail_last` lanes); with rows `0..m` of `A`/`C` and `0..k` of `B`
    // every access is inside the operands, as this function's contract
    // declares them (and `wrapping_add` stays in bounds for these `n0`).
    unsafe {
        for p in 0..n / width {
            k_chunks::<V, NV, MR, KC>(at(p * width), m, k, acc, V::LANES);
        }
        macro_rules! tail {
            ($($nv:literal)*) => {$(
                // Only the widths up to `NV` are instantiated.
                if const { $nv <= NV } && tail_nv == $nv {
                    // A constant `last` when the tail's vectors are all
                    // full keeps its loads and stores unmasked and out of
                    // the inner loop's branches.
                    if tail_last == V::LANES {
                        k_chunks::<V, $nv, MR, KC>(at(n0), m, k, acc, V::LANES);
                    } else {
                        k_chunks::<V, $nv, MR, KC>(at(n0), m, k, acc, tail_last);
                    }
                }
            )*};
        }
        tail!(1 2 3 4 5 6 7);
    }
}

/// [`kernel`] with `TA` set from `g.ta`.
///
/// # Safety
///
/// As [`kernel`].
#[inline(always)]
unsafe fn kernel_for<V: Vector, const MR: usize, const NV: usize, const KC: usize>(
    g: Shape,
    a: *const V::E,
    b: *const V::E,
    c: *mut V::E,
) {
    // SAFETY: this function's contract is `kernel`'s.
    unsafe {
        if g.ta {
            kernel::<V, MR, NV, KC, true>(g, a, b, c)
        } else {
            kernel::<V, MR, NV, KC, false>(g, a, b, c)
        }
    }
}

/// Rows of `C` per register block, AVX-512 (32 vector registers).
const MR_512: usize = 6;
/// Vectors of `C` per register block row, AVX-512.
const NV_512: usize = 4;
/// Rows of `C` per register block, AVX2 (16 vector registers).
const MR_256: usize = 6;
/// Vectors of `C` per register block row, AVX2.
const NV_256: usize = 2;
/// Steps of `k` per pass over a column panel, AVX-512: the packed rows of
/// `B` take `KC * NV * 64` bytes.
const KC_512: usize = 64;
/// Steps of `k` per pass over a column panel, AVX2 (`KC * NV * 32` bytes).
const KC_256: usize = 256;

/// Whether `S` is `E` (by `TypeId`): what makes the entry points' casts of
/// `S` pointers to `E` pointers sound.
#[inline(always)]
fn is<S: Scalar, E: 'static>() -> bool {
    TypeId::of::<S>() == TypeId::of::<E>()
}

/// The operands as element pointers, if `S` is `E` (by `TypeId`).
#[inline(always)]
fn as_elems<S: Scalar, E: 'static>(a: &[S], b: &[S], c: &mut [S]) -> Option<(*const E, *const E, *mut E)> {
    if is::<S, E>() {
        // `S` and `E` are the same type, so these are pointers to `E` with
        // the provenance of the whole operands.
        Some((a.as_ptr().cast(), b.as_ptr().cast(), c.as_mut_ptr().cast()))
    } else {
        None
    }
}

/// The body of the entry points: the kernel on `$f32` or `$f64` vectors as
/// `S` is `f32` or `f64`, else `false`. The `const` conditions on `S::BYTES`
/// keep the kernel of the other element type from being instantiated at all
/// (compile time); `as_elems`'s `TypeId` test is what makes the casts sound.
macro_rules! by_element {
    ($g:ident, $a:ident, $b:ident, $c:ident, $f32:ty, $f64:ty, $mr:expr, $nv:expr, $kc:expr) => {{
        if const { S::BYTES == 4 } {
            if let Some((a, b, c)) = as_elems::<S, f32>($a, $b, $c) {
                // SAFETY: the CPU features and the operands' rows at the
                // shape's strides by the entry point's contract; `c` from
                // the exclusive borrow.
                unsafe { kernel_for::<$f32, { $mr }, { $nv }, { $kc }>($g, a, b, c) };
                return true;
            }
        } else if const { S::BYTES == 8 } {
            if let Some((a, b, c)) = as_elems::<S, f64>($a, $b, $c) {
                // SAFETY: as for `f32` above.
                unsafe { kernel_for::<$f64, { $mr }, { $nv }, { $kc }>($g, a, b, c) };
                return true;
            }
        }
        false
    }};
}

/// `C (+)= A B` of shape `g` with AVX-512F (layout: [`Shape`]). Returns
/// `false`, having done nothing, if `S` is neither `f32` nor `f64`.
///
/// # Safety
///
/// The CPU must have AVX-512F, and the operands the rows of `g` at its strides
/// ([`Shape::check`](super::Shape), which `run` calls first).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn gemm_avx512<S: Scalar>(g: Shape, a: &[S], b: &[S], c: &mut [S]) -> bool {
    by_element!(g, a, b, c, Avx512F32, Avx512F64, MR_512, NV_512, KC_512)
}

/// [`gemm_avx512`] with AVX2 and FMA.
///
/// # Safety
///
/// The CPU must have AVX2 and FMA, and the operands the rows of `g` (as
/// for [`gemm_avx512`]).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gemm_avx2<S: Scalar>(g: Shape, a: &[S], b: &[S], c: &mut [S]) -> bool {
    by_element!(g, a, b, c, Avx2F32, Avx2F64, MR_256, NV_256, KC_256)
}

/// `dst = src^T` with AVX-512F on whole 16 x 16 tiles, if `S` is `f32`
/// (else `false`, having done nothing): `src` is `[rows, cols]`, `dst`
/// `[cols, rows]`, both multiples of 16 (asserted). Each tile is
/// 16 row loads, four rounds of 16 shuffles and 16 stores (a quarter of a
/// cycle per element, against about one for the scalar tile loop).
///
/// Round by round, for rows `4g..4g + 4` of a tile: `unpacklo/hi_ps` of row
/// pairs, then `unpacklo/hi_pd` of those, leave vector `u[g][c]` holding
/// in its 128-bit lane `L` column `4L + c` of the four rows; the output row
/// `4L + c` is lane `L` of `u[0][c]..u[3][c]`, a 4 x 4 transpose of 128-bit
/// lanes done by two rounds of `shuffle_f32x4`.
///
/// # Safety
///
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_avx512<S: Scalar>(src: &[S], rows: usize, cols: usize, dst: &mut [S]) -> bool {
    assert!(rows.is_multiple_of(16) && cols.is_multiple_of(16) && src.len() == rows * cols && dst.len() == rows * cols);
    if !is::<S, f32>() {
        return false;
    }
    // `S` is `f32`: the same elements, with the provenance of the slices.
    let (src, dst) = (src.as_ptr().cast::<f32>(), dst.as_mut_ptr().cast::<f32>());
    for r0 in (0..rows).step_by(16) {
        for c0 in (0..cols).step_by(16) {
            // SAFETY: rows `r0..r0 + 16`, columns `c0..c0 + 16` of `src`
            // and the transposed tile of `dst` are in bounds (the sizes
            // asserted above); the CPU has AVX-512F (this function's
            // contract).
            unsafe {
                let p = src.add(r0 * cols + c0);
                let r: [__m512; 16] = core::array::from_fn(|i| _mm512_loadu_ps(p.add(i * cols)));
                let mut u = [[_mm512_setzero_ps(); 4]; 4];
                for g in 0..4 {
                    let a = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]);
                    let b = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);
                    let c = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
                    let d = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
                    let (a, b, c, d) =
                        (_mm512_castps_pd(a), _mm512_castps_pd(b), _mm512_castps_pd(c), _mm512_castps_pd(d));
                    u[g][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
                    u[g][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
                    u[g][2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
                    u[g][3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
                }
                let q = dst.add(c0 * rows + r0);
                for c in 0..4 {
                    let v0 = _mm512_shuffle_f32x4::<0x44>(u[0][c], u[1][c]);
                    let v1 = _mm512_shuffle_f32x4::<0xEE>(u[0][c], u[1][c]);
                    let v2 = _mm512_shuffle_f32x4::<0x44>(u[2][c], u[3][c]);
                    let v3 = _mm512_shuffle_f32x4::<0xEE>(u[2][c], u[3][c]);
                    let out = [
                        _mm512_shuffle_f32x4::<0x88>(v0, v2),
                        _mm512_shuffle_f32x4::<0xDD>(v0, v2),
                        _mm512_shuffle_f32x4::<0x88>(v1, v3),
                        _mm512_shuffle_f32x4::<0xDD>(v1, v3),
                    ];
                    for (l, o) in out.into_iter().enumerate() {
                        _mm512_storeu_ps(q.add((4 * l + c) * rows), o);
                    }
                }
            }
        }
    }
    true
}
