//! Optimizers over flat parameter slices: SGD with momentum and AdamW, with
//! optional global-norm gradient clipping.
//!
//! They see parameters and gradients through [`crate::Flat`], so one
//! implementation serves every generated model. State vectors are borrowed
//! from the caller (no allocation), sized `PARAM_COUNT`.

use crate::Scalar;

/// The global L2 norm of a gradient: `sqrt(sum g^2)`, accumulated in f64.
pub fn global_norm<S: Scalar>(grads: &[S]) -> f64 {
    // Eight partial sums in f64, so the pass is not one chain of dependent
    // adds (the order differs from a left fold; the sum is f64 either way).
    let mut lanes = [0.0f64; 8];
    let mut chunks = grads.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            let g = c[j].to_f64();
            lanes[j] += g * g;
        }
    }
    let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for g in chunks.remainder() {
        let g = g.to_f64();
        s += g * g;
    }
    libm::sqrt(s)
}

/// Scales `grads` so their global norm is at most `max_norm`; returns the
/// norm before clipping. `max_norm <= 0` disables clipping.
pub fn clip_global_norm<S: Scalar>(grads: &mut [S], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > max_norm {
        let k = S::from_f64(max_norm / norm);
        for g in grads {
            *g *= k;
        }
    }
    norm
}

/// SGD with (heavy-ball) momentum and optional weight decay:
/// `v <- mu v + g + wd p`, `p <- p - lr v`.
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum coefficient `mu` (0 = plain SGD).
    pub momentum: f64,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Global-norm clipping threshold (`<= 0`: none).
    pub clip: f64,
}

impl Sgd {
    /// One update. `velocity` is the optimizer state (zero at the start).
    /// Returns the gradient norm before clipping.
    ///
    /// # Panics
    /// If the slices differ in length.
    pub fn step<S: Scalar>(&self, params: &mut [S], grads: &mut [S], velocity: &mut [S]) -> f64 {
        assert!(params.len() == grads.len() && params.len() == velocity.len(), "Sgd::step: slice lengths differ");
        let norm = clip_global_norm(grads, self.clip);
        let (lr, mu, wd) = (S::from_f64(self.lr), S::from_f64(self.momentum), S::from_f64(self.weight_decay));
        for ((p, g), v) in params.iter_mut().zip(grads.iter()).zip(velocity.iter_mut()) {
            *v = mu * *v + *g + wd * *p;
            *p -= lr * *v;
        }
        norm
    }
}

/// AdamW (decoupled weight decay, Loshchilov & Hutter), bias-corrected.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay: `p <- p - lr * wd * p`.
    pub weight_decay: f64,
    /// Global-norm clipping threshold (`<= 0`: none).
    pub clip: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, clip: 1.0 }
    }
}

impl AdamW {
    /// One update at step `t` (1-based). `m` and `v` are the moment
    /// estimates (zero at the start). Returns the gradient norm before clipping.
    ///
    /// # Panics
    /// If the slices differ in length or `t == 0`.
    pub fn step<S: Scalar>(&self, params: &mut [S], grads: &mut [S], m: &mut [S], v: &mut [S], t: u64) -> f64 {
        assert!(t > 0, "AdamW::step: t is 1-based");
        let n = params.len();
        assert!(grads.len() == n && m.len() == n && v.len() == n, "AdamW::step: slice lengths differ");
        let norm = clip_global_norm(grads, self.clip);
        let bc1 = 1.0 - libm::pow(self.beta1, t as f64);
        let bc2 = 1.0 - libm::pow(self.beta2, t as f64);
        let b1 = S::from_f64(self.beta1);
        let b2 = S::from_f64(self.beta2);
        let one = S::ONE;
        let step = S::from_f64(self.lr / bc1);
        let inv_bc2 = S::from_f64(1.0 / bc2);
        let eps = S::from_f64(self.eps);
        let decay = S::from_f64(1.0 - self.lr * self.weight_decay);
        for i in 0..n {
            let g = grads[i];
            m[i] = b1 * m[i] + (one - b1) * g;
            v[i] = b2 * v[i] + (one - b2) * g * g;
            let denom = (v[i] * inv_bc2).sqrt() + eps;
            params[i] = params[i] * decay - step * m[i] / denom;
        }
        norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_to_the_threshold() {
        let mut g = [3.0f64, 4.0];
        assert_eq!(clip_global_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-15 && (g[1] - 0.8).abs() < 1e-15);
        let mut g = [3.0f64, 4.0];
        clip_global_norm(&mut g, 0.0);
        assert_eq!(g, [3.0, 4.0]);
    }

    #[test]
    fn sgd_momentum_by_hand() {
        let o = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0, clip: 0.0 };
        let mut p = [1.0f64];
        let mut v = [0.0];
        o.step(&mut p, &mut [2.0], &mut v); // v = 2, p = 1 - 0.2 = 0.8
        assert!((p[0] - 0.8).abs() < 1e-15);
        o.step(&mut p, &mut [2.0], &mut v); // v = 1.8 + 2 = 3.8, p = 0.8 - 0.38 = 0.42
        assert!((p[0] - 0.42).abs() < 1e-14);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // With bias correction the first step is lr * g / (|g| + eps') = lr * sign(g).
        let o = AdamW { lr: 0.01, weight_decay: 0.0, clip: 0.0, ..AdamW::default() };
        let mut p = [1.0f64, -1.0];
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        o.step(&mut p, &mut [0.5, -3.0], &mut m, &mut v, 1);
        assert!((p[0] - 0.99).abs() < 1e-9 && (p[1] + 0.99).abs() < 1e-9, "{p:?}");
        // Decoupled decay shrinks the parameter independently of the gradient.
        let o = AdamW { lr: 0.1, weight_decay: 0.5, clip: 0.0, ..AdamW::default() };
        let mut p = [2.0f64];
        let (mut m, mut v) = ([0.0], [0.0]);
        o.step(&mut p, &mut [0.0], &mut m, &mut v, 1);
        assert!((p[0] - 2.0 * 0.95).abs() < 1e-12);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let o = AdamW { lr: 0.05, clip: 0.0, ..AdamW::default() };
        let mut p = [3.0f64, -2.0];
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        for t in 1..=2000 {
            let mut g = [2.0 * (p[0] - 1.0), 2.0 * (p[1] + 0.5)];
            o.step(&mut p, &mut g, &mut m, &mut v, t);
        }
        assert!((p[0] - 1.0).abs() < 1e-3 && (p[1] + 0.5).abs() < 1e-3, "{p:?}");
    }
}
