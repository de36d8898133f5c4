//! Elementwise activations of a block's MLP and their backward.
//!
//! The MLP's matrix products are the [`gemm`](crate::gemm) kernels; these
//! functions do the elementwise part between them. They work on slices of
//! equal length, so any shape can be passed through `as_flattened()` (a
//! `[[S; F]; T]` sequence or one `[S; F]` row of the streaming step alike).
//! The backward forms overwrite their outputs.
//!
//! - `swiglu`: `out = silu(gate) * up`, `silu(a) = a sigmoid(a)`;
//! - `gelu` (tanh form): `gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`,
//!   computed as `x sigmoid(z)` with `z = 2 sqrt(2/pi) (x + 0.044715 x^3)`
//!   (the same function: `1 + tanh(u) = 2 sigmoid(2u)`), which never
//!   subtracts nearly equal values, so `f32` keeps its relative accuracy for
//!   negative `x` too;
//! - `relu`: `max(x, 0)`, with derivative 0 at `x = 0`.
//!
//! # Panics
//! Every function panics if its slices do not all have the same length.

use crate::Scalar;

/// `sqrt(2 / pi)`, the tanh-form GELU's scale.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh-form GELU.
const GELU_CUBIC: f64 = 0.044_715;

/// `(sigmoid(z), 1 - sigmoid(z))`, both to full relative precision, from
/// one exponential of `-|z|` (selects, no branches on the value).
#[inline(always)]
fn sigmoid_pair<S: Scalar>(z: S) -> (S, S) {
    let e = (-z.abs()).exp();
    let big = S::ONE / (S::ONE + e);
    let small = e * big;
    if z >= S::ZERO {
        (big, small)
    } else {
        (small, big)
    }
}

#[inline(always)]
fn check_len(a: usize, b: usize) {
    assert_eq!(a, b, "activation slices must have equal lengths");
}

crate::dispatch::dispatched! {
    /// SwiGLU forward: `out[j] = silu(gate[j]) * up[j]`.
    pub fn swiglu_forward[S: Scalar][S](gate: &[S], up: &[S], out: &mut [S]) = swiglu_forward_body;
}

/// The body of [`swiglu_forward`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn swiglu_forward_body<S: Scalar>(gate: &[S], up: &[S], out: &mut [S]) {
    check_len(gate.len(), up.len());
    check_len(gate.len(), out.len());
    for ((o, &a), &b) in out.iter_mut().zip(gate).zip(up) {
        *o = a * a.sigmoid() * b;
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`swiglu_forward`]: from `dout` writes
    /// `dgate = dout * up * silu'(gate)` and `dup = dout * silu(gate)`, with
    /// `silu'(a) = s (1 + a (1 - s))`, `s = sigmoid(a)`.
    pub fn swiglu_backward[S: Scalar][S](gate: &[S], up: &[S], dout: &[S], dgate: &mut [S], dup: &mut [S]) = swiglu_backward_body;
}

/// The body of [`swiglu_backward`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn swiglu_backward_body<S: Scalar>(gate: &[S], up: &[S], dout: &[S], dgate: &mut [S], dup: &mut [S]) {
    let n = gate.len();
    check_len(n, up.len());
    check_len(n, dout.len());
    check_len(n, dgate.len());
    check_len(n, dup.len());
    for j in 0..n {
        let (a, b, d) = (gate[j], up[j], dout[j]);
        let (s, one_minus_s) = sigmoid_pair(a);
        dup[j] = d * (a * s);
        dgate[j] = d * b * (s * a.mul_add(one_minus_s, S::ONE));
    }
}

crate::dispatch::dispatched! {
    /// GELU (tanh form) forward: `y[j] = gelu(x[j])`.
    pub fn gelu_forward[S: Scalar][S](x: &[S], y: &mut [S]) = gelu_forward_body;
}

/// The body of [`gelu_forward`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn gelu_forward_body<S: Scalar>(x: &[S], y: &mut [S]) {
    check_len(x.len(), y.len());
    let c2 = S::from_f64(2.0 * SQRT_2_OVER_PI);
    let k = S::from_f64(GELU_CUBIC);
    for (yj, &v) in y.iter_mut().zip(x) {
        let z = c2 * (k * v * v).mul_add(v, v);
        *yj = v * z.sigmoid();
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`gelu_forward`]: writes `dx = dy * gelu'(x)`, with
    /// `gelu'(x) = s + x s (1 - s) z'(x)`, `s = sigmoid(z)`,
    /// `z'(x) = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)`.
    pub fn gelu_backward[S: Scalar][S](x: &[S], dy: &[S], dx: &mut [S]) = gelu_backward_body;
}

/// The body of [`gelu_backward`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn gelu_backward_body<S: Scalar>(x: &[S], dy: &[S], dx: &mut [S]) {
    check_len(x.len(), dy.len());
    check_len(x.len(), dx.len());
    let c2 = S::from_f64(2.0 * SQRT_2_OVER_PI);
    let k = S::from_f64(GELU_CUBIC);
    let k3 = S::from_f64(3.0 * GELU_CUBIC);
    // Beyond |x| = 1e4, s (1 - s) is exactly 0 in f32 and f64; clamping x in
    // z'(x) there keeps 0 * z' from becoming 0 * inf.
    let lim = S::from_f64(1e4);
    for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        let z = c2 * (k * v * v).mul_add(v, v);
        let (s, one_minus_s) = sigmoid_pair(z);
        let vc = v.max(-lim);
        let vc = -((-vc).max(-lim));
        let dz = c2 * (k3 * vc).mul_add(vc, S::ONE);
        *d = g * (v * s * one_minus_s).mul_add(dz, s);
    }
}

/// ReLU forward: `y[j] = max(x[j], 0)` (NaN gives 0).
#[inline]
pub fn relu_forward<S: Scalar>(x: &[S], y: &mut [S]) {
    check_len(x.len(), y.len());
    for (yj, &v) in y.iter_mut().zip(x) {
        *yj = if v > S::ZERO { v } else { S::ZERO };
    }
}

/// Backward of [`relu_forward`]: writes `dx = dy` where `x > 0`, else 0.
#[inline]
pub fn relu_backward<S: Scalar>(x: &[S], dy: &[S], dx: &mut [S]) {
    check_len(x.len(), dy.len());
    check_len(x.len(), dx.len());
    for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        *d = if v > S::ZERO { g } else { S::ZERO };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const N: usize = 401;

    /// Inputs over [-12, 12], a few far out, and the exact zero.
    fn inputs(seed: u64) -> [f64; N] {
        let mut rng = Rng::new(seed);
        let mut x: [f64; N] = core::array::from_fn(|_| rng.next_f64() * 24.0 - 12.0);
        x[0] = 0.0;
        x[1] = -30.0;
        x[2] = 40.0;
        x[3] = -1e5;
        x[4] = 1e5;
        x
    }

    fn silu_plain(a: f64) -> f64 {
        a / (1.0 + libm::exp(-a))
    }

    fn gelu_plain(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)))
    }

    fn close(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol * want.abs().max(1e-300) || got == want
    }

    #[test]
    fn forwards_match_plain_formulas() {
        let a = inputs(21);
        let b = inputs(22);
        let mut out = [0.0; N];
        swiglu_forward(&a, &b, &mut out);
        for j in 0..N {
            let want = silu_plain(a[j]) * b[j];
            assert!(close(out[j], want, 1e-14), "swiglu {j}: {} vs {want}", out[j]);
        }
        gelu_forward(&a, &mut out);
        for j in 0..N {
            // The tanh form in f64 loses relative accuracy where 1 + tanh cancels.
            let want = gelu_plain(a[j]);
            assert!((out[j] - want).abs() <= 1e-14 * a[j].abs().max(1.0), "gelu {j}: {} vs {want}", out[j]);
        }
        // Where the tanh form cancels (x < -3), against e^z / (1 + e^z) by hand.
        for &x in &[-3.5f64, -5.0, -8.0, -12.0] {
            let z = 2.0 * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
            let want = x * libm::exp(z) / (1.0 + libm::exp(z));
            let mut y = [0.0];
            gelu_forward(&[x], &mut y);
            assert!(close(y[0], want, 1e-14), "gelu({x})");
        }
        relu_forward(&a, &mut out);
        for j in 0..N {
            assert_eq!(out[j], a[j].max(0.0));
        }
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn f32_forwards_are_close_to_f64() {
        let a = inputs(23).map(|v| v as f32);
        let b = inputs(24).map(|v| v as f32);
        let mut out = [0.0f32; N];
        let eps = f32::EPSILON as f64;
        swiglu_forward(&a, &b, &mut out);
        for j in 0..N {
            let (x, u) = (a[j] as f64, b[j] as f64);
            let want = silu_plain(x) * u;
            // silu's relative condition number is 1 + |a| (1 - s): a few ulp
            // plus the exp's 1 ulp scaled by it.
            let tol = eps * (4.0 + x.abs().min(100.0));
            assert!(close(out[j] as f64, want, tol), "swiglu {j}: {} vs {want}", out[j]);
        }
        gelu_forward(&a, &mut out);
        for j in 0..N {
            let x = a[j] as f64;
            let z = 2.0 * SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
            let want = x * libm::exp(z.min(700.0)) / (1.0 + libm::exp(z.min(700.0)));
            // Results below the f32 normal range are flushed (as the exp does).
            if want.abs() < f32::MIN_POSITIVE as f64 * 1e3 {
                assert!(out[j].abs() < f32::MIN_POSITIVE * 1e3, "gelu {j}");
                continue;
            }
            // For negative x, sigmoid(z) ~ e^z: the rounding of z (relative
            // eps) becomes a relative error of |z| eps; a few ulp otherwise.
            let tol = eps * (4.0 + 2.0 * z.abs().min(200.0));
            assert!(close(out[j] as f64, want, tol), "gelu {j} ({x}): {} vs {want}", out[j]);
        }
    }

    /// Central differences of `L = sum(c * f(inputs))` against the analytic backward.
    #[test]
    fn backwards_match_finite_differences() {
        let mut a = inputs(25);
        let b = inputs(26);
        // Away from relu's kink, and not so far out that differences vanish.
        for v in a.iter_mut() {
            if v.abs() < 1e-3 {
                *v = 0.5;
            }
        }
        let mut rng = Rng::new(27);
        let c: [f64; N] = core::array::from_fn(|_| rng.next_f64() * 2.0 - 1.0);
        // A step relative to the input, so large inputs do not drown the
        // difference in the rounding of the values.
        let step = |x: f64| 1e-6 * x.abs().max(1.0);
        let (mut dg, mut du, mut dx) = ([7.0; N], [7.0; N], [7.0; N]);
        swiglu_backward(&a, &b, &c, &mut dg, &mut du);
        let mut worst = 0.0f64;
        for j in 0..N {
            let f = |x: f64, u: f64| {
                let mut o = [0.0];
                swiglu_forward(&[x], &[u], &mut o);
                c[j] * o[0]
            };
            let (ha, hb) = (step(a[j]), step(b[j]));
            let ng = (f(a[j] + ha, b[j]) - f(a[j] - ha, b[j])) / (2.0 * ha);
            let nu = (f(a[j], b[j] + hb) - f(a[j], b[j] - hb)) / (2.0 * hb);
            worst = worst.max((dg[j] - ng).abs() / ng.abs().max(1e-3));
            worst = worst.max((du[j] - nu).abs() / nu.abs().max(1e-3));
        }
        assert!(worst < 1e-6, "swiglu backward: {worst:e}");

        let mut worst = 0.0f64;
        gelu_backward(&a, &c, &mut dx);
        for j in 0..N {
            let f = |x: f64| {
                let mut o = [0.0];
                gelu_forward(&[x], &mut o);
                c[j] * o[0]
            };
            let h = step(a[j]);
            let n = (f(a[j] + h) - f(a[j] - h)) / (2.0 * h);
            worst = worst.max((dx[j] - n).abs() / n.abs().max(1e-3));
        }
        assert!(worst < 1e-6, "gelu backward: {worst:e}");
        // Far out: exactly 0 and exactly dy, never NaN.
        let mut d = [0.0; 4];
        gelu_backward(&[-1e5, 1e5, -1e30, 1e30], &[1.0; 4], &mut d);
        assert_eq!(d, [0.0, 1.0, 0.0, 1.0]);
        let mut d32 = [0.0f32; 4];
        gelu_backward(&[-1e5f32, 1e5, -1e30, 1e30], &[1.0; 4], &mut d32);
        assert_eq!(d32, [0.0, 1.0, 0.0, 1.0]);

        relu_backward(&a, &c, &mut dx);
        for j in 0..N {
            assert_eq!(dx[j], if a[j] > 0.0 { c[j] } else { 0.0 });
        }
        relu_backward(&[0.0, -0.0], &[1.0, 1.0], &mut d[..2]);
        assert_eq!(&d[..2], &[0.0, 0.0]);
    }

    #[test]
    fn f32_backwards_are_close_to_f64() {
        let a = inputs(28).map(|v| v as f32);
        let b = inputs(29).map(|v| v as f32);
        let dy = [1.0f32; N];
        let (mut g32, mut u32_, mut x32) = ([0.0f32; N], [0.0f32; N], [0.0f32; N]);
        let (mut g64, mut u64_, mut x64) = ([0.0f64; N], [0.0f64; N], [0.0f64; N]);
        let (a64, b64) = (a.map(|v| v as f64), b.map(|v| v as f64));
        swiglu_backward(&a, &b, &dy, &mut g32, &mut u32_);
        swiglu_backward(&a64, &b64, &[1.0; N], &mut g64, &mut u64_);
        gelu_backward(&a, &dy, &mut x32);
        gelu_backward(&a64, &[1.0; N], &mut x64);
        let eps = f32::EPSILON as f64;
        for j in 0..N {
            let x = a64[j].abs().min(100.0);
            // Absolute against the derivative's natural scale (|b| and 1).
            assert!((g32[j] as f64 - g64[j]).abs() <= eps * (8.0 + 2.0 * x * x) * b64[j].abs().max(1e-30), "dgate {j}");
            assert!(close(u32_[j] as f64, u64_[j], eps * (4.0 + x)), "dup {j}");
            assert!((x32[j] as f64 - x64[j]).abs() <= eps * (8.0 + 4.0 * x * x * x), "dgelu {j}");
        }
    }
}
