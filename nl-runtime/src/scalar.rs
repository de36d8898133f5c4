//! The scalar types generated models are generic over: `f32` and `f64`.

use core::fmt::Debug;
use core::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::Pod;

/// A floating-point scalar a generated model computes in.
///
/// Implemented for `f32` (training and serving) and `f64` (gradient checks
/// and the reference comparisons). The transcendental functions come from
/// `libm`, so they work without `std`, except `f32`'s [`Scalar::exp`] (and
/// so its `sigmoid` and `softplus`): a branch-free exp within 1 ulp that
/// vectorises in loops, as the softmax kernels need.
pub trait Scalar:
    Copy
    + Default
    + Debug
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Pod
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// Size in bytes (4 or 8).
    const BYTES: usize;
    /// Short dtype name as used in checkpoints: `F32` or `F64`.
    const DTYPE: &'static str;
    /// Converts from `f64` (rounding for `f32`).
    fn from_f64(x: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Converts from `usize` (exact for values below 2^24 in `f32`).
    fn from_usize(x: usize) -> Self;
    /// `e^self`.
    ///
    /// `f64`: `libm`'s `exp`. `f32`: a branch-free polynomial exp, inlined,
    /// so loops over slices auto-vectorise; within 1 ulp wherever the result
    /// is a normal number, `+inf` above `ln f32::MAX`, and exactly 0 (never
    /// a subnormal) below `ln f32::MIN_POSITIVE ~ -87.34`; NaN gives NaN.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// `ln(1 + e^self)`, computed without overflow.
    fn softplus(self) -> Self;
    /// `1 / (1 + e^-self)`, computed without overflow.
    fn sigmoid(self) -> Self;
    /// The larger of two values (NaN-propagation unspecified).
    fn max(self, other: Self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// `self * a + b`: fused (one rounding) when the target has FMA and
    /// `std` is on, a multiply and an add otherwise. The kernels use it in
    /// every inner product.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The sum of 16 lanes, the accumulators of the vectorised kernels:
    /// a pairwise tree (`f32` on x86-64: one AVX-512 reduction, or the tree
    /// in SSE2 registers, the same tree either way). Besides being short, an opaque reduction
    /// keeps the SLP vectoriser on the lane dimension of a block's
    /// accumulators; a tree written in scalar code side by side for the rows
    /// of a block leads it to vectorise across the rows instead, at two to
    /// three times the instructions.
    fn lane_sum(lanes: [Self; 16]) -> Self;
    /// [`Scalar::lane_sum`] of four rows' lanes at once, the same tree per
    /// row (so the same bits as four calls): the row kernels reduce a block
    /// of four rows with it. For `f32` on x86-64 the four trees share their
    /// last steps in one 128-bit register (SSE2, which every x86-64 CPU has:
    /// about 6 shuffles and 15 adds for the block, where four separate trees
    /// took about 70 instructions once the vectoriser had interleaved them).
    fn lane_sums4(rows: &[[Self; 16]; 4]) -> [Self; 4];
}

macro_rules! impl_scalar {
    ($t:ty, $bytes:expr, $dtype:expr, $exp:path, $ln:path, $sqrt:path, $log1p:path, $fabs:path, $lane_sum:path, $lane_sums4:path) => {
        impl Scalar for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const BYTES: usize = $bytes;
            const DTYPE: &'static str = $dtype;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_usize(x: usize) -> Self {
                x as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                // The hardware square root (correctly rounded, like libm's):
                // std's is an intrinsic loops can vectorise.
                #[cfg(feature = "std")]
                {
                    <$t>::sqrt(self)
                }
                #[cfg(not(feature = "std"))]
                {
                    $sqrt(self)
                }
            }
            #[inline(always)]
            fn softplus(self) -> Self {
                // ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)
                let m = if self > 0.0 { self } else { 0.0 };
                m + $log1p($exp(-$fabs(self)))
            }
            #[inline(always)]
            fn sigmoid(self) -> Self {
                if self >= 0.0 {
                    1.0 / (1.0 + $exp(-self))
                } else {
                    let e = $exp(self);
                    e / (1.0 + e)
                }
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                if self > other {
                    self
                } else {
                    other
                }
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $fabs(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                // A fused multiply-add where the target has one (one rounding,
                // one instruction); elsewhere a multiply and an add, never a
                // slow software fma.
                #[cfg(all(feature = "std", target_feature = "fma"))]
                {
                    <$t>::mul_add(self, a, b)
                }
                #[cfg(not(all(feature = "std", target_feature = "fma")))]
                {
                    self * a + b
                }
            }
            #[inline(always)]
            fn lane_sum(lanes: [Self; 16]) -> Self {
                $lane_sum(lanes)
            }
            #[inline(always)]
            fn lane_sums4(rows: &[[Self; 16]; 4]) -> [Self; 4] {
                $lane_sums4(rows)
            }
        }
    };
}

/// `log2(e)`, rounded to `f32`.
const LOG2E: f32 = core::f32::consts::LOG2_E;
/// `1.5 * 2^23`: adding it to a value of magnitude below `2^22` rounds that
/// value to an integer (in the current rounding mode, to nearest-even) and
/// leaves the integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// `ln 2 = LN2_HI + LN2_LO` (Cody-Waite). `LN2_HI = 355 / 512` has 9
/// significant bits, so `n * LN2_HI` is exact for every `|n| <= 2^15`, and so
/// is `x - n * LN2_HI` (Sterbenz) even without a fused multiply-add.
const LN2_HI: f32 = 355.0 / 512.0;
/// `ln 2 - LN2_HI`, rounded to `f32`.
const LN2_LO: f32 = -2.121_944_4e-4;
/// The largest `x` whose `e^x` is finite in `f32` (`0x42B17217`, just below
/// `ln f32::MAX = 88.722839...`); above it [`exp_f32`] returns `+inf`.
const EXP_MAX_ARG: f32 = 88.722_83;
/// The smallest `x` whose `e^x` is a normal `f32` (`0xC2AEAC4F`, just above
/// `ln f32::MIN_POSITIVE = -87.336544...`); below it [`exp_f32`] returns 0.
const EXP_MIN_ARG: f32 = -87.336_54;

/// `e^x` in `f32` without `libm`: branch-free straight-line code (selects,
/// no calls, no table), so a loop applying it over a slice auto-vectorises.
///
/// Method: `x = n ln 2 + r` with `n = round(x log2 e)` (by the `1.5 * 2^23`
/// magic-number trick) and `|r| <= ln(2) / 2` (Cody-Waite, `ln 2` split in
/// two parts); `e^r` by the degree-7 Cephes minimax polynomial
/// `1 + r + r^2 P5(r)` (approximation error below 0.05 ulp); `2^n` applied
/// by adding `n` to the exponent field of `e^r` (exact whenever the result
/// is a normal number).
///
/// Accuracy: below 1 ulp from the exact `e^x` everywhere the result is a
/// normal number (0.99 ulp without FMA, 0.90 with it, found by an exhaustive
/// check of every such `f32` input; the tests sweep millions). Special cases:
/// - `x > 88.72283` (`ln f32::MAX`), including `+inf`: `+inf`;
/// - `x < -87.33654` (`ln f32::MIN_POSITIVE`), including `-inf`: exactly
///   `0`. Results that would be subnormal (below `1.18e-38`) are flushed to
///   zero rather than produced, so no subnormal ever reaches the caller's
///   arithmetic (softmax weights that small do not change any sum);
/// - NaN: NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // The `Scalar` multiply-add: fused where the target has FMA (and `std`
    // is on), a multiply and an add otherwise; never a software fma call.
    #[inline(always)]
    fn mad(a: f32, b: f32, c: f32) -> f32 {
        Scalar::mul_add(a, b, c)
    }
    // n = round(x log2 e). For |x| < 2^21 the sum lies in [2^23, 2^24), whose
    // ulp is 1, so the rounding is to an integer and the subtraction is exact.
    // Larger |x| (and NaN) give meaningless n, replaced by the selects below.
    let t = mad(x, LOG2E, ROUND_MAGIC);
    let n = t - ROUND_MAGIC;
    // r = x - n ln 2, in two steps so that r keeps the bits of ln 2 that a
    // single f32 constant would lose.
    let r = mad(-n, LN2_HI, x);
    let r = mad(-n, LN2_LO, r);
    // e^r = 1 + r + r^2 P(r) on |r| <= ln(2) / 2 (Cephes `expf` coefficients).
    let q = mad(r, 1.987_569_1e-4, 1.398_199_9e-3);
    let q = mad(r, q, 8.333_452e-3);
    let q = mad(r, q, 4.166_579_6e-2);
    let q = mad(r, q, 1.666_666_5e-1);
    let q = mad(r, q, 0.5);
    // The last two steps are ordered by whether `mad` rounds once: with a
    // fused multiply-add, Horner to the end (1 + r (1 + r q)) is the more
    // accurate (at most 0.90 ulp overall); with a separate multiply and add,
    // 1 + (r + r^2 q) is (at most 0.99 ulp), both over every normal result.
    #[cfg(all(feature = "std", target_feature = "fma"))]
    let er = mad(r, mad(r, q, 1.0), 1.0);
    #[cfg(not(all(feature = "std", target_feature = "fma")))]
    let er = mad(r * r, q, r) + 1.0;
    // 2^n e^r: the low 9 bits of `t`'s representation are n mod 2^9 (the
    // mantissa holds 2^22 + n), so `t.to_bits() << 23` is n in the exponent
    // field, two's complement mod 2^32. Adding it to the bits of e^r (in
    // [0.7, 1.5], exponent 126 or 127) multiplies by 2^n exactly while the
    // result is normal, which the selects below guarantee.
    let y = f32::from_bits(er.to_bits().wrapping_add(t.to_bits() << 23));
    let y = if x < EXP_MIN_ARG { 0.0 } else { y };
    let y = if x > EXP_MAX_ARG { f32::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// A pairwise tree over 16 lanes: `(a[j] + a[j + 8])`, then halves again.
#[inline(always)]
fn lane_tree<T: Copy + AddAssign>(mut a: [T; 16]) -> T {
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for j in 0..w {
            a[j] += a[j + w];
        }
    }
    a[0]
}

/// [`lane_tree`] of four rows, row by row.
#[inline(always)]
fn lane_trees4<T: Copy + AddAssign>(rows: &[[T; 16]; 4]) -> [T; 4] {
    [lane_tree(rows[0]), lane_tree(rows[1]), lane_tree(rows[2]), lane_tree(rows[3])]
}

/// `f32` [`Scalar::lane_sum`]: one vector reduction with AVX-512 on
/// x86-64, the same tree in SSE2 registers on other x86-64 builds (the
/// default build, whose AVX-512 and AVX2 kernels are compiled inside
/// `#[target_feature]` functions: written as scalar code, the tree of each
/// row of a block was interleaved with the others' into shuffles), else
/// [`lane_tree`].
#[inline(always)]
fn lane_sum_f32(a: [f32; 16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        lane_sum_f32_x86(&a)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        lane_tree(a)
    }
}

/// `f32` [`Scalar::lane_sums4`]: on x86-64 the four trees in SSE2
/// registers, their last two steps shared; else [`lane_trees4`].
#[inline(always)]
fn lane_sums4_f32(rows: &[[f32; 16]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        lane_sums4_f32_x86(rows)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        lane_trees4(rows)
    }
}

/// The first two steps of [`lane_tree`] on one row in SSE2 registers: the
/// four partial sums `(a[j] + a[j + 8]) + (a[j + 4] + a[j + 12])`, `j < 4`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn quarter_sums_sse2(x: &[f32; 16]) -> core::arch::x86_64::__m128 {
    use core::arch::x86_64::{_mm_add_ps, _mm_loadu_ps};
    // SAFETY: `x` is 16 initialised `f32` (64 bytes); the four unaligned
    // loads read its quarters. SSE2 is part of the x86-64 baseline.
    unsafe {
        let p = x.as_ptr();
        let lo = _mm_add_ps(_mm_loadu_ps(p), _mm_loadu_ps(p.add(8)));
        let hi = _mm_add_ps(_mm_loadu_ps(p.add(4)), _mm_loadu_ps(p.add(12)));
        _mm_add_ps(lo, hi)
    }
}

/// [`lane_sum_f32`] of 16 `f32` in SSE2 registers (x86-64 without
/// AVX-512; with AVX the compiler encodes the same operations in VEX form):
/// the tree of [`lane_tree`], step by step.
#[cfg(all(target_arch = "x86_64", not(target_feature = "avx512f")))]
#[inline(always)]
fn lane_sum_f32_x86(x: &[f32; 16]) -> f32 {
    use core::arch::x86_64::{_mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps};
    let h = quarter_sums_sse2(x);
    // SAFETY: register-only SSE2 intrinsics; SSE2 is part of the x86-64
    // baseline, so every x86-64 CPU runs them.
    unsafe {
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<0b01>(h, h)))
    }
}

/// [`lane_sums4_f32`] on x86-64: each row's first two tree steps
/// ([`quarter_sums_sse2`]), then the last two for all four rows at once
/// (`a[0] + a[2]`, `a[1] + a[3]` by pairs of rows, then the two halves).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lane_sums4_f32_x86(rows: &[[f32; 16]; 4]) -> [f32; 4] {
    use core::arch::x86_64::{_mm_add_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_shuffle_ps, _mm_storeu_ps};
    let g: [_; 4] = core::array::from_fn(|r| quarter_sums_sse2(&rows[r]));
    let mut out = [0f32; 4];
    // SAFETY: SSE2 is part of the x86-64 baseline; the intrinsics are
    // register-only but for the unaligned store, which writes `out`'s 4
    // `f32` (16 bytes), exactly its size.
    unsafe {
        // [g0[0] + g0[2], g0[1] + g0[3], g1[0] + g1[2], g1[1] + g1[3]]
        let s01 = _mm_add_ps(_mm_movelh_ps(g[0], g[1]), _mm_movehl_ps(g[1], g[0]));
        let s23 = _mm_add_ps(_mm_movelh_ps(g[2], g[3]), _mm_movehl_ps(g[3], g[2]));
        // Even lanes plus odd lanes: one sum per row.
        let even = _mm_shuffle_ps::<0b10_00_10_00>(s01, s23);
        let odd = _mm_shuffle_ps::<0b11_01_11_01>(s01, s23);
        _mm_storeu_ps(out.as_mut_ptr(), _mm_add_ps(even, odd));
    }
    out
}

/// [`lane_sum_f32`] of 16 `f32` with AVX-512: one `zmm` reduction.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[inline(always)]
fn lane_sum_f32_x86(x: &[f32; 16]) -> f32 {
    use core::arch::x86_64::{_mm512_loadu_ps, _mm512_reduce_add_ps};
    // SAFETY: `x` is 16 initialised `f32` (64 bytes), exactly what the
    // unaligned load reads; the target has AVX-512F (checked by the `cfg`
    // at compile time).
    unsafe { _mm512_reduce_add_ps(_mm512_loadu_ps(x.as_ptr())) }
}

impl_scalar!(f32, 4, "F32", exp_f32, libm::logf, libm::sqrtf, libm::log1pf, libm::fabsf, lane_sum_f32, lane_sums4_f32);
impl_scalar!(f64, 8, "F64", libm::exp, libm::log, libm::sqrt, libm::log1p, libm::fabs, lane_tree, lane_trees4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softplus_and_sigmoid_match_closed_forms() {
        for &x in &[-50.0f64, -3.0, -0.5, 0.0, 0.7, 4.0, 60.0] {
            let sp = (1.0 + x.exp()).ln();
            let sg = 1.0 / (1.0 + (-x).exp());
            assert!((Scalar::softplus(x) - sp).abs() <= 1e-12 * sp.abs().max(1.0), "softplus({x})");
            assert!((Scalar::sigmoid(x) - sg).abs() <= 1e-15, "sigmoid({x})");
        }
        // No overflow far out.
        assert_eq!(Scalar::softplus(1000.0f64), 1000.0);
        assert_eq!(Scalar::sigmoid(-1000.0f32), 0.0);
    }

    /// Distance of `<f32 as Scalar>::exp(x)` from `e^x` (computed in `f64`,
    /// whose own error is negligible here), in ulps of the `f32` result.
    fn exp_f32_ulp_error(x: f32) -> f64 {
        let got = Scalar::exp(x) as f64;
        let want = libm::exp(x as f64);
        let rounded = want as f32;
        assert!(rounded.is_normal(), "exp({x:e}) = {want:e} is not a normal f32");
        // The ulp of the binade of the correctly rounded result.
        let ulp = f32::from_bits(rounded.to_bits() & 0x7f80_0000) as f64 / (1u32 << 23) as f64;
        (got - want).abs() / ulp
    }

    #[test]
    fn f32_exp_is_within_one_ulp() {
        let mut worst = (0.0f64, 0.0f32);
        let mut check = |x: f32| {
            let e = exp_f32_ulp_error(x);
            if e > worst.0 {
                worst = (e, x);
            }
        };
        // 2^21 evenly spaced points over [-87, 88]...
        let n = 1 << 21;
        for i in 0..=n {
            check(-87.0 + 175.0 * (i as f32 / n as f32));
        }
        // ...every 1021st f32 with a normal result (small magnitudes included,
        // where the spacing above is too coarse)...
        for (lo, hi) in [(0u32, EXP_MAX_ARG.to_bits()), (0x8000_0000, EXP_MIN_ARG.to_bits())] {
            for bits in (lo..=hi).step_by(1021) {
                check(f32::from_bits(bits));
            }
        }
        // ...and both ends, ulp by ulp: the overflow and subnormal limits,
        // the n = 128 and n = -126 reductions.
        for k in 0..4096 {
            check(f32::from_bits(EXP_MAX_ARG.to_bits() - k));
            check(f32::from_bits(EXP_MIN_ARG.to_bits() - k));
        }
        let (err, at) = worst;
        #[cfg(feature = "std")]
        std::eprintln!("f32 exp: max error {err:.4} ulp at x = {at:e}");
        assert!(err <= 1.0, "max error {err} ulp at x = {at:e}");
    }

    #[test]
    fn f32_exp_special_values() {
        let exp = <f32 as Scalar>::exp;
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-f32::NAN).is_nan());
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::MIN_POSITIVE), 1.0);
        assert_eq!(exp(-f32::MIN_POSITIVE), 1.0);
        assert_eq!(exp(1.0), core::f32::consts::E);
        assert_eq!((EXP_MAX_ARG.to_bits(), EXP_MIN_ARG.to_bits()), (0x42B1_7217, 0xC2AE_AC4F));
        assert!((LN2_HI as f64 + LN2_LO as f64 - core::f64::consts::LN_2).abs() < 1e-11);
        // Overflow exactly where e^x exceeds f32::MAX.
        assert!(exp(EXP_MAX_ARG).is_finite());
        assert!(exp(EXP_MAX_ARG) > 3.4e38);
        let above = f32::from_bits(EXP_MAX_ARG.to_bits() + 1);
        assert!(libm::exp(above as f64) > f32::MAX as f64);
        for x in [above, 88.8, 100.0, 1e6, 1e30, f32::MAX] {
            assert_eq!(exp(x), f32::INFINITY, "exp({x:e})");
        }
        // Normal down to ln(MIN_POSITIVE), exactly 0 below (never subnormal).
        assert!(exp(EXP_MIN_ARG) >= f32::MIN_POSITIVE);
        let below = f32::from_bits(EXP_MIN_ARG.to_bits() + 1);
        assert!(libm::exp(below as f64) < f32::MIN_POSITIVE as f64);
        for x in [below, -87.5, -100.0, -104.0, -1e6, -1e30, f32::MIN] {
            assert_eq!(exp(x).to_bits(), 0, "exp({x:e})");
        }
        // Monotone across the range reduction's switch points n -> n + 1.
        for n in -125..=127 {
            let x = (n as f32 + 0.5) * core::f32::consts::LN_2;
            let lo = f32::from_bits(x.to_bits().wrapping_sub(4));
            let mut prev = exp(lo);
            let mut b = lo;
            for _ in 0..8 {
                b = if b >= 0.0 { f32::from_bits(b.to_bits() + 1) } else { f32::from_bits(b.to_bits() - 1) };
                let y = exp(b);
                assert!(y >= prev, "exp not monotone at {b:e}");
                prev = y;
            }
        }
    }

    #[test]
    fn f32_sigmoid_and_softplus_match_f64() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.05;
            let xd = x as f64;
            let sg = 1.0 / (1.0 + libm::exp(-xd));
            let sp = if xd > 0.0 { xd } else { 0.0 } + libm::log1p(libm::exp(-libm::fabs(xd)));
            let (s32, p32) = (Scalar::sigmoid(x) as f64, Scalar::softplus(x) as f64);
            // Below about -87 sigmoid and softplus are subnormal in f32, flushed to 0.
            let tol = (3e-7 * sg).max(f32::MIN_POSITIVE as f64);
            assert!((s32 - sg).abs() <= tol, "sigmoid({x}) = {s32} vs {sg}");
            let tol = (3e-7 * sp).max(f32::MIN_POSITIVE as f64);
            assert!((p32 - sp).abs() <= tol, "softplus({x}) = {p32} vs {sp}");
        }
    }

    /// `lane_sum` and `lane_sums4` of `f32` are the pairwise tree, written
    /// out by hand here, bit for bit (the row kernels' bits must not depend
    /// on which of the two a row goes through), with values whose sums round
    /// differently in another order.
    #[test]
    fn lane_sums_are_the_pairwise_tree_bit_for_bit() {
        fn by_hand(a: &[f32; 16]) -> f32 {
            let b: [f32; 8] = core::array::from_fn(|j| a[j] + a[j + 8]);
            let c: [f32; 4] = core::array::from_fn(|j| b[j] + b[j + 4]);
            (c[0] + c[2]) + (c[1] + c[3])
        }
        let mut r = crate::rng::Rng::new(7);
        let mut differs = 0;
        for case in 0..200 {
            let rows: [[f32; 16]; 4] = core::array::from_fn(|_| {
                core::array::from_fn(|_| ((2.0 * r.next_f64() - 1.0) * 10f64.powi(case % 7 - 3)) as f32)
            });
            let four = <f32 as Scalar>::lane_sums4(&rows);
            for (row, got) in rows.iter().zip(four) {
                let want = by_hand(row);
                assert_eq!(got.to_bits(), want.to_bits(), "lane_sums4 {got} vs {want}");
                assert_eq!(<f32 as Scalar>::lane_sum(*row).to_bits(), want.to_bits());
                let sequential = row.iter().fold(0f32, |s, &x| s + x);
                differs += usize::from(sequential.to_bits() != want.to_bits());
            }
            let f64_rows = rows.map(|row| row.map(f64::from));
            let f64_four = <f64 as Scalar>::lane_sums4(&f64_rows);
            for (row, got) in f64_rows.iter().zip(f64_four) {
                let b: [f64; 8] = core::array::from_fn(|j| row[j] + row[j + 8]);
                let c: [f64; 4] = core::array::from_fn(|j| b[j] + b[j + 4]);
                assert_eq!(got.to_bits(), ((c[0] + c[2]) + (c[1] + c[3])).to_bits());
            }
        }
        // The check can fail: another order gives other bits in many cases.
        assert!(differs > 50, "only {differs} rows round differently in sequence");
    }
}
