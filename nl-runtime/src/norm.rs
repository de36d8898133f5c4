//! Per-token normalisations of the residual stream (the pre-norms of a deep
//! model's blocks and its final norm).
//!
//! Both normalise the `D` features of one token, with [`NORM_EPS`] inside
//! the square root:
//! - RMS norm: `y = g * x / sqrt(mean(x^2) + eps)`;
//! - layer norm: `y = g * (x - mean(x)) / sqrt(var(x) + eps) + beta`, with
//!   the population variance (`1 / D`), computed in two passes (the mean,
//!   then the squared deviations) so it does not cancel.
//!
//! The training forms keep, per row, the reciprocal `1 / sqrt(... + eps)`
//! (and for the layer norm the mean) for the backward; the one-row forms
//! serve the streaming step. The backward forms add into their outputs.
//!
//! The backward formulas, with `xhat` the normalised row, `r` the kept
//! reciprocal and `gy = g * dy`:
//! - RMS: `dx = r (gy - xhat mean(gy xhat))`, `dg += dy xhat`;
//! - layer: `dx = r (gy - mean(gy) - xhat mean(gy xhat))`, `dg += dy xhat`,
//!   `dbeta += dy`.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::kernels::dot;
use crate::Scalar;

/// The `eps` of both norms, added to the mean square (RMS) or the variance
/// (layer norm) before the square root.
pub const NORM_EPS: f64 = 1e-5;

/// Independent partial sums per pass, so the reductions vectorise.
const LANES: usize = 16;

/// `sum_j f(j)` over `0..n` in [`LANES`] partial sums (the order differs
/// from a left fold).
#[inline(always)]
fn sum_by<S: Scalar>(n: usize, f: impl Fn(usize) -> S) -> S {
    let mut lanes = [S::ZERO; LANES];
    let full = n / LANES * LANES;
    let mut c = 0;
    while c < full {
        for j in 0..LANES {
            lanes[j] += f(c + j);
        }
        c += LANES;
    }
    let mut tail = S::ZERO;
    for j in full..n {
        tail += f(j);
    }
    S::lane_sum(lanes) + tail
}

/// `1 / sqrt(mean(x^2) + eps)` of one row.
#[inline(always)]
fn rms_inv<S: Scalar, const D: usize>(x: &[S; D]) -> S {
    let ms = dot(x, x) / S::from_usize(D);
    S::ONE / (ms + S::from_f64(NORM_EPS)).sqrt()
}

/// The mean of one row and `1 / sqrt(var + eps)` (population variance,
/// from the squared deviations).
#[inline(always)]
fn layer_stats<S: Scalar, const D: usize>(x: &[S; D]) -> (S, S) {
    let inv_d = S::ONE / S::from_usize(D);
    let mean = sum_by(D, |j| x[j]) * inv_d;
    let var = sum_by(D, |j| {
        let c = x[j] - mean;
        c * c
    }) * inv_d;
    (mean, S::ONE / (var + S::from_f64(NORM_EPS)).sqrt())
}

crate::dispatch::dispatched! {
    /// RMS norm of one row (the streaming form): `y = g * x / sqrt(mean(x^2) + eps)`.
    pub fn rms_row[S: Scalar, const D: usize][S, D](x: &[S; D], g: &[S; D], y: &mut [S; D]) = rms_row_body;
}

/// The body of [`rms_row`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn rms_row_body<S: Scalar, const D: usize>(x: &[S; D], g: &[S; D], y: &mut [S; D]) {
    let r = rms_inv(x);
    for j in 0..D {
        y[j] = g[j] * (x[j] * r);
    }
}

crate::dispatch::dispatched! {
    /// Layer norm of one row (the streaming form):
    /// `y = g * (x - mean) / sqrt(var + eps) + beta`.
    pub fn layer_row[S: Scalar, const D: usize][S, D](x: &[S; D], g: &[S; D], beta: &[S; D], y: &mut [S; D]) = layer_row_body;
}

/// The body of [`layer_row`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn layer_row_body<S: Scalar, const D: usize>(x: &[S; D], g: &[S; D], beta: &[S; D], y: &mut [S; D]) {
    let (mean, r) = layer_stats(x);
    for j in 0..D {
        y[j] = g[j].mul_add((x[j] - mean) * r, beta[j]);
    }
}

crate::dispatch::dispatched! {
    /// RMS norm of every row of a sequence; `inv[t] = 1 / sqrt(mean(x[t]^2) + eps)`
    /// is kept for [`rms_backward_acc`]. Row by row the same values as [`rms_row`].
    pub fn rms_forward[S: Scalar, const T: usize, const D: usize][S, T, D](x: &[[S; D]; T], g: &[S; D], y: &mut [[S; D]; T], inv: &mut [S; T]) = rms_forward_body;
}

/// The body of [`rms_forward`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn rms_forward_body<S: Scalar, const T: usize, const D: usize>(
    x: &[[S; D]; T],
    g: &[S; D],
    y: &mut [[S; D]; T],
    inv: &mut [S; T],
) {
    for t in 0..T {
        let r = rms_inv(&x[t]);
        inv[t] = r;
        for j in 0..D {
            y[t][j] = g[j] * (x[t][j] * r);
        }
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`rms_forward`]: from `dy` (gradient of `y`) adds the
    /// gradients of `g` into `dg` and of `x` into `dx`. `inv` is the forward's.
    pub fn rms_backward_acc[S: Scalar, const T: usize, const D: usize][S, T, D](x: &[[S; D]; T], g: &[S; D], inv: &[S; T], dy: &[[S; D]; T], dg: &mut [S; D], dx: &mut [[S; D]; T]) = rms_backward_acc_body;
}

/// The body of [`rms_backward_acc`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn rms_backward_acc_body<S: Scalar, const T: usize, const D: usize>(
    x: &[[S; D]; T],
    g: &[S; D],
    inv: &[S; T],
    dy: &[[S; D]; T],
    dg: &mut [S; D],
    dx: &mut [[S; D]; T],
) {
    let inv_d = S::ONE / S::from_usize(D);
    for t in 0..T {
        let (xt, dyt, r) = (&x[t], &dy[t], inv[t]);
        // mean(gy xhat) = r mean(g dy x).
        let c = sum_by(D, |j| g[j] * dyt[j] * xt[j]) * inv_d * r;
        for j in 0..D {
            let xhat = xt[j] * r;
            dg[j] = dyt[j].mul_add(xhat, dg[j]);
            dx[t][j] = r.mul_add((-xhat).mul_add(c, g[j] * dyt[j]), dx[t][j]);
        }
    }
}

crate::dispatch::dispatched! {
    /// Layer norm of every row of a sequence; the row means go to `mean` and
    /// `inv[t] = 1 / sqrt(var(x[t]) + eps)` to `inv`, for [`layer_backward_acc`].
    /// Row by row the same values as [`layer_row`].
    pub fn layer_forward[S: Scalar, const T: usize, const D: usize][S, T, D](x: &[[S; D]; T], g: &[S; D], beta: &[S; D], y: &mut [[S; D]; T], mean: &mut [S; T], inv: &mut [S; T]) = layer_forward_body;
}

/// The body of [`layer_forward`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn layer_forward_body<S: Scalar, const T: usize, const D: usize>(
    x: &[[S; D]; T],
    g: &[S; D],
    beta: &[S; D],
    y: &mut [[S; D]; T],
    mean: &mut [S; T],
    inv: &mut [S; T],
) {
    for t in 0..T {
        let (mu, r) = layer_stats(&x[t]);
        mean[t] = mu;
        inv[t] = r;
        for j in 0..D {
            y[t][j] = g[j].mul_add((x[t][j] - mu) * r, beta[j]);
        }
    }
}

crate::dispatch::dispatched! {
    /// Backward of [`layer_forward`]: from `dy` adds the gradients of `g`,
    /// `beta` and `x` into `dg`, `dbeta` and `dx`. `mean` and `inv` are the
    /// forward's.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_backward_acc[S: Scalar, const T: usize, const D: usize][S, T, D](x: &[[S; D]; T], g: &[S; D], mean: &[S; T], inv: &[S; T], dy: &[[S; D]; T], dg: &mut [S; D], dbeta: &mut [S; D], dx: &mut [[S; D]; T]) = layer_backward_acc_body;
}

/// The body of [`layer_backward_acc`], compiled once per [`Path`](crate::dispatch::Path).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn layer_backward_acc_body<S: Scalar, const T: usize, const D: usize>(
    x: &[[S; D]; T],
    g: &[S; D],
    mean: &[S; T],
    inv: &[S; T],
    dy: &[[S; D]; T],
    dg: &mut [S; D],
    dbeta: &mut [S; D],
    dx: &mut [[S; D]; T],
) {
    let inv_d = S::ONE / S::from_usize(D);
    for t in 0..T {
        let (xt, dyt, mu, r) = (&x[t], &dy[t], mean[t], inv[t]);
        let m1 = sum_by(D, |j| g[j] * dyt[j]) * inv_d;
        let m2 = sum_by(D, |j| g[j] * dyt[j] * ((xt[j] - mu) * r)) * inv_d;
        for j in 0..D {
            let xhat = (xt[j] - mu) * r;
            dg[j] = dyt[j].mul_add(xhat, dg[j]);
            dbeta[j] += dyt[j];
            dx[t][j] = r.mul_add((-xhat).mul_add(m2, g[j] * dyt[j] - m1), dx[t][j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const T: usize = 5;
    const D: usize = 37;

    fn random<const R: usize, const C: usize>(rng: &mut Rng, lo: f64, hi: f64) -> [[f64; C]; R] {
        core::array::from_fn(|_| core::array::from_fn(|_| lo + (hi - lo) * rng.next_f64()))
    }

    /// Plain f64 RMS norm of one row.
    fn rms_plain(x: &[f64; D], g: &[f64; D]) -> [f64; D] {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / D as f64;
        let r = 1.0 / libm::sqrt(ms + 1e-5);
        core::array::from_fn(|j| g[j] * x[j] * r)
    }

    /// Plain f64 layer norm of one row.
    fn layer_plain(x: &[f64; D], g: &[f64; D], b: &[f64; D]) -> [f64; D] {
        let mu = x.iter().sum::<f64>() / D as f64;
        let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / D as f64;
        let r = 1.0 / libm::sqrt(var + 1e-5);
        core::array::from_fn(|j| g[j] * (x[j] - mu) * r + b[j])
    }

    /// `max |a - b| / max(max |b|, 1e-300)`.
    fn rel(a: &[f64], b: &[f64]) -> f64 {
        let scale = b.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn forwards_match_plain_formulas() {
        let mut rng = Rng::new(11);
        // An offset in x so the layer norm's mean matters.
        let x = random::<T, D>(&mut rng, -2.0, 3.0);
        let g = random::<1, D>(&mut rng, 0.5, 1.5)[0];
        let b = random::<1, D>(&mut rng, -0.5, 0.5)[0];
        let (mut y, mut inv, mut mean) = ([[0.0; D]; T], [0.0; T], [0.0; T]);
        rms_forward(&x, &g, &mut y, &mut inv);
        for t in 0..T {
            assert!(rel(&y[t], &rms_plain(&x[t], &g)) < 1e-14, "rms row {t}");
            let mut row = [0.0; D];
            rms_row(&x[t], &g, &mut row);
            assert_eq!(row, y[t]);
        }
        layer_forward(&x, &g, &b, &mut y, &mut mean, &mut inv);
        for t in 0..T {
            assert!(rel(&y[t], &layer_plain(&x[t], &g, &b)) < 1e-14, "layer row {t}");
            let mut row = [0.0; D];
            layer_row(&x[t], &g, &b, &mut row);
            assert_eq!(row, y[t]);
        }
        // A constant row: layer norm gives beta, RMS norm g x / sqrt(x^2 + eps).
        let c = [[2.5; D]; 1];
        let (mut y1, mut m1, mut i1) = ([[0.0; D]; 1], [0.0; 1], [0.0; 1]);
        layer_forward(&c, &g, &b, &mut y1, &mut m1, &mut i1);
        assert!(rel(&y1[0], &b) < 1e-15);
        rms_forward(&c, &g, &mut y1, &mut i1);
        assert!((i1[0] - 1.0 / libm::sqrt(6.25 + 1e-5)).abs() < 1e-15);
    }

    #[test]
    fn f32_forwards_are_close_to_f64() {
        let mut rng = Rng::new(12);
        for trial in 0..50 {
            let scale = [1e-3, 1.0, 1e3][trial % 3];
            let x = random::<T, D>(&mut rng, -scale, 2.0 * scale);
            let g = random::<1, D>(&mut rng, -1.5, 1.5)[0];
            let b = random::<1, D>(&mut rng, -0.5, 0.5)[0];
            let x32: [[f32; D]; T] = core::array::from_fn(|t| core::array::from_fn(|j| x[t][j] as f32));
            let g32: [f32; D] = core::array::from_fn(|j| g[j] as f32);
            let b32: [f32; D] = core::array::from_fn(|j| b[j] as f32);
            // The oracle sees exactly the f32 inputs.
            let xr: [[f64; D]; T] = core::array::from_fn(|t| core::array::from_fn(|j| x32[t][j] as f64));
            let gr: [f64; D] = core::array::from_fn(|j| g32[j] as f64);
            let br: [f64; D] = core::array::from_fn(|j| b32[j] as f64);
            let (mut y, mut inv, mut mean) = ([[0.0f32; D]; T], [0.0f32; T], [0.0f32; T]);
            rms_forward(&x32, &g32, &mut y, &mut inv);
            for t in 0..T {
                let want = rms_plain(&xr[t], &gr);
                for j in 0..D {
                    // Elementwise: a few f32 roundings of the value itself.
                    let err = (y[t][j] as f64 - want[j]).abs();
                    assert!(err <= 8.0 * f32::EPSILON as f64 * want[j].abs() + 1e-30, "rms {trial} [{t}][{j}]");
                }
            }
            layer_forward(&x32, &g32, &b32, &mut y, &mut mean, &mut inv);
            for t in 0..T {
                let want = layer_plain(&xr[t], &gr, &br);
                for j in 0..D {
                    // Relative to the terms: x - mean cancels where x is
                    // near the mean, so the bound is on |g| (|x| + |mean|) r.
                    let mu = xr[t].iter().sum::<f64>() / D as f64;
                    let var = xr[t].iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / D as f64;
                    let r = 1.0 / libm::sqrt(var + 1e-5);
                    let terms = gr[j].abs() * (xr[t][j].abs() + mu.abs()) * r + br[j].abs() + want[j].abs();
                    let err = (y[t][j] as f64 - want[j]).abs();
                    assert!(err <= 8.0 * f32::EPSILON as f64 * terms, "layer {trial} [{t}][{j}]: {err:e}");
                }
            }
        }
    }

    /// Central differences of `L = sum(c * f(x))` against the analytic
    /// backward, for every input of both norms.
    #[test]
    fn backwards_match_finite_differences() {
        let mut rng = Rng::new(13);
        let x = random::<T, D>(&mut rng, -1.0, 2.0);
        let g = random::<1, D>(&mut rng, 0.5, 1.5)[0];
        let b = random::<1, D>(&mut rng, -0.5, 0.5)[0];
        let c = random::<T, D>(&mut rng, -1.0, 1.0);
        let loss = |y: &[[f64; D]; T]| (0..T).map(|t| (0..D).map(|j| c[t][j] * y[t][j]).sum::<f64>()).sum::<f64>();
        let rms_loss = |x: &[[f64; D]; T], g: &[f64; D]| {
            let (mut y, mut inv) = ([[0.0; D]; T], [0.0; T]);
            rms_forward(x, g, &mut y, &mut inv);
            loss(&y)
        };
        let layer_loss = |x: &[[f64; D]; T], g: &[f64; D], b: &[f64; D]| {
            let (mut y, mut inv, mut mean) = ([[0.0; D]; T], [0.0; T], [0.0; T]);
            layer_forward(x, g, b, &mut y, &mut mean, &mut inv);
            loss(&y)
        };
        let h = 1e-5;
        let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);

        // Accumulation: start from nonzero gradients and subtract them after.
        let dx0 = random::<T, D>(&mut rng, -1.0, 1.0);
        let dg0 = random::<1, D>(&mut rng, -1.0, 1.0)[0];
        let db0 = random::<1, D>(&mut rng, -1.0, 1.0)[0];

        let (mut y, mut inv, mut mean) = ([[0.0; D]; T], [0.0; T], [0.0; T]);
        rms_forward(&x, &g, &mut y, &mut inv);
        let (mut dx, mut dg) = (dx0, dg0);
        rms_backward_acc(&x, &g, &inv, &c, &mut dg, &mut dx);
        let (mut an, mut num) = ([0.0; T * D + D], [0.0; T * D + D]);
        for t in 0..T {
            for j in 0..D {
                an[t * D + j] = dx[t][j] - dx0[t][j];
                num[t * D + j] = fd(&|e| {
                    let mut xp = x;
                    xp[t][j] += e;
                    rms_loss(&xp, &g)
                });
            }
        }
        for j in 0..D {
            an[T * D + j] = dg[j] - dg0[j];
            num[T * D + j] = fd(&|e| {
                let mut gp = g;
                gp[j] += e;
                rms_loss(&x, &gp)
            });
        }
        let e = rel(&an, &num);
        assert!(e < 1e-6, "rms backward: {e:e}");

        layer_forward(&x, &g, &b, &mut y, &mut mean, &mut inv);
        let (mut dx, mut dg, mut db) = (dx0, dg0, db0);
        layer_backward_acc(&x, &g, &mean, &inv, &c, &mut dg, &mut db, &mut dx);
        let (mut an, mut num) = ([0.0; T * D + 2 * D], [0.0; T * D + 2 * D]);
        for t in 0..T {
            for j in 0..D {
                an[t * D + j] = dx[t][j] - dx0[t][j];
                num[t * D + j] = fd(&|e| {
                    let mut xp = x;
                    xp[t][j] += e;
                    layer_loss(&xp, &g, &b)
                });
            }
        }
        for j in 0..D {
            an[T * D + j] = dg[j] - dg0[j];
            num[T * D + j] = fd(&|e| {
                let mut gp = g;
                gp[j] += e;
                layer_loss(&x, &gp, &b)
            });
            an[T * D + D + j] = db[j] - db0[j];
            num[T * D + D + j] = fd(&|e| {
                let mut bp = b;
                bp[j] += e;
                layer_loss(&x, &g, &bp)
            });
        }
        let e = rel(&an, &num);
        assert!(e < 1e-6, "layer backward: {e:e}");
    }
}
