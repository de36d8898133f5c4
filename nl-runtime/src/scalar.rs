//! The scalar types generated models are generic over: `f32` and `f64`.

use core::fmt::Debug;
use core::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::Zeroable;

/// A floating-point scalar a generated model computes in.
///
/// Implemented for `f32` (training and serving) and `f64` (gradient checks
/// and the reference comparisons). The transcendental functions come from
/// `libm`, so they work without `std`.
pub trait Scalar:
    Copy
    + Default
    + Debug
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Zeroable
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
}

macro_rules! impl_scalar {
    ($t:ty, $bytes:expr, $dtype:expr, $exp:path, $ln:path, $sqrt:path, $log1p:path, $fabs:path) => {
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
                $sqrt(self)
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
        }
    };
}

impl_scalar!(f32, 4, "F32", libm::expf, libm::logf, libm::sqrtf, libm::log1pf, libm::fabsf);
impl_scalar!(f64, 8, "F64", libm::exp, libm::log, libm::sqrt, libm::log1p, libm::fabs);

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
}
