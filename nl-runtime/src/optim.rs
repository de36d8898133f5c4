//! Optimizers over flat parameter slices: SGD with momentum and AdamW, with
//! optional global-norm gradient clipping.
//!
//! They see parameters and gradients through [`crate::Flat`], so one
//! implementation serves every generated model. State vectors are borrowed
//! from the caller (no allocation), sized `PARAM_COUNT`.
//!
//! A step never writes a non-finite value: if a gradient is NaN or infinite,
//! or if the update would make a parameter or an optimizer state value NaN
//! or infinite, [`Sgd::step`] and [`AdamW::step`] return [`NonFinite`] and
//! leave every slice exactly as it was (training cannot poison the
//! parameters, nor a checkpoint saved from them).

use crate::Scalar;

crate::dispatch::dispatched! {
    /// The global L2 norm of a gradient: `sqrt(sum g^2)`, accumulated in f64.
    pub fn global_norm[S: Scalar][S](grads: &[S]) -> f64 = global_norm_body;
}

/// The body of [`global_norm`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn global_norm_body<S: Scalar>(grads: &[S]) -> f64 {
    // Eight partial sums in f64, so the pass is not one chain of dependent
    // adds (the order differs from a left fold; the sum is f64 either way).
    libm::sqrt(sum_squares(grads))
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

/// Why an optimizer step was refused.
///
/// A refused step writes nothing: the parameters, the gradients and the
/// optimizer state (velocity, moments) are bit for bit what they were
/// before the call, so a diverging run cannot put a NaN or an infinity into
/// the parameters (and from there into a checkpoint).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum NonFinite {
    /// `grads[index]` is NaN or infinite (the global norm is not finite).
    Gradient {
        /// Flat index of the first such gradient.
        index: usize,
        /// Its value, widened to `f64`.
        value: f64,
    },
    /// Every gradient is finite but the sum of their squares overflows
    /// `f64` (possible only for `f64` gradients above about `1e154`).
    GradientNorm,
    /// The update would make a parameter or an optimizer state value
    /// NaN or infinite (a too large learning rate, a parameter near the
    /// largest float, a gradient whose square overflows, ...).
    Update {
        /// Flat index of the first such element.
        index: usize,
        /// Which value would stop being finite.
        quantity: Quantity,
        /// The value the update computed (and did not write), widened to `f64`.
        value: f64,
    },
}

impl NonFinite {
    /// The flat index of the offending element, if there is one.
    pub fn index(&self) -> Option<usize> {
        match *self {
            NonFinite::Gradient { index, .. } | NonFinite::Update { index, .. } => Some(index),
            NonFinite::GradientNorm => None,
        }
    }
}

impl core::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NonFinite::Gradient { index, value } => {
                write!(f, "optimizer step refused: gradient {index} is {value}; nothing was written")
            }
            NonFinite::GradientNorm => {
                write!(f, "optimizer step refused: the gradient's global norm overflows f64; nothing was written")
            }
            NonFinite::Update { index, quantity, value } => write!(
                f,
                "optimizer step refused: the update would make the {quantity} at index {index} {value}; \
                 nothing was written"
            ),
        }
    }
}

impl core::error::Error for NonFinite {}

/// A value an optimizer step writes (see [`NonFinite::Update`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quantity {
    /// The parameter itself.
    Param,
    /// [`Sgd`]'s velocity.
    Velocity,
    /// [`AdamW`]'s first moment `m`.
    FirstMoment,
    /// [`AdamW`]'s second moment `v`.
    SecondMoment,
}

impl core::fmt::Display for Quantity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Quantity::Param => "parameter",
            Quantity::Velocity => "velocity",
            Quantity::FirstMoment => "first moment",
            Quantity::SecondMoment => "second moment",
        })
    }
}

/// Whether `x` is neither NaN nor infinite (a branch-free compare, so
/// check loops vectorise).
#[inline(always)]
fn finite<S: Scalar>(x: S) -> bool {
    x.abs() < S::from_f64(f64::INFINITY)
}

/// The gradient's global norm, refused if it is not finite (then nothing
/// has been read but `grads`, and nothing written).
#[inline(always)]
fn finite_norm<S: Scalar>(grads: &[S]) -> Result<f64, NonFinite> {
    let norm = global_norm_body(grads);
    if norm.is_finite() {
        return Ok(norm);
    }
    Err(norm_error(grads))
}

/// The factor [`clip_global_norm`] scales the gradients by (`1` when it
/// does not clip). For a finite gradient `g`, `g * factor` has the same bits
/// as `g` after clipping in place (`g * 1` is `g` exactly).
#[inline(always)]
fn clip_factor<S: Scalar>(norm: f64, max_norm: f64) -> S {
    if max_norm > 0.0 && norm > max_norm {
        S::from_f64(max_norm / norm)
    } else {
        S::ONE
    }
}

/// Clips in place with the factor of [`clip_factor`] (without computing the
/// norm again).
#[inline(always)]
fn scale<S: Scalar>(grads: &mut [S], k: S) {
    if k != S::ONE {
        for g in grads {
            *g *= k;
        }
    }
}

/// Checks that an update writes only finite values, before it writes any.
///
/// `update(i)` computes element `i`'s new values without writing anything
/// (named by `quantities`, in the same order). The pass only reads, and
/// folds the finiteness of every new value with a non-short-circuit `&`, so
/// it vectorises; only on a failure does a second read-only pass look for
/// the first bad element.
#[inline(always)]
fn check_update<S: Scalar, const K: usize>(
    n: usize,
    quantities: [Quantity; K],
    update: impl Fn(usize) -> [S; K],
) -> Result<(), NonFinite> {
    let mut ok = true;
    for i in 0..n {
        for x in update(i) {
            ok &= finite(x);
        }
    }
    if ok {
        return Ok(());
    }
    for i in 0..n {
        for (x, quantity) in update(i).into_iter().zip(quantities) {
            if !finite(x) {
                return Err(NonFinite::Update { index: i, quantity, value: x.to_f64() });
            }
        }
    }
    Ok(()) // unreachable: the first pass found a non-finite value
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
    /// On success, `grads` holds the clipped gradient (as
    /// [`clip_global_norm`] leaves it) and `params` and `velocity` the new
    /// values.
    ///
    /// # Errors
    /// [`NonFinite`] if a gradient is NaN or infinite, or if the update
    /// would make a parameter or a velocity NaN or infinite. Then nothing is
    /// written: `params`, `grads` and `velocity` are exactly as before. The
    /// check costs one extra read-only pass over the slices (no allocation).
    ///
    /// # Panics
    /// If the slices differ in length.
    pub fn step<S: Scalar>(&self, params: &mut [S], grads: &mut [S], velocity: &mut [S]) -> Result<f64, NonFinite> {
        let n = params.len();
        assert!(grads.len() == n && velocity.len() == n, "Sgd::step: slice lengths differ");
        let norm = finite_norm(grads)?;
        let k = clip_factor::<S>(norm, self.clip);
        let (lr, mu, wd) = (S::from_f64(self.lr), S::from_f64(self.momentum), S::from_f64(self.weight_decay));
        // Check with exactly the arithmetic of the writing loop below (on the
        // gradient clipped as `clip_global_norm` clips it), then write.
        check_update(n, [Quantity::Velocity, Quantity::Param], |i| {
            let (p, g, v) = (params[i], grads[i] * k, velocity[i]);
            let v = mu * v + g + wd * p;
            [v, p - lr * v]
        })?;
        scale(grads, k);
        for ((p, g), v) in params.iter_mut().zip(grads.iter()).zip(velocity.iter_mut()) {
            *v = mu * *v + *g + wd * *p;
            *p -= lr * *v;
        }
        Ok(norm)
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
    /// On success, `grads` holds the clipped gradient (as
    /// [`clip_global_norm`] leaves it) and `params`, `m` and `v` the new
    /// values.
    ///
    /// # Errors
    /// [`NonFinite`] if a gradient is NaN or infinite, or if the update
    /// would make a parameter or a moment NaN or infinite. Then nothing is
    /// written: `params`, `grads`, `m` and `v` are exactly as before, and
    /// the caller may retry the step (e.g. with a lower learning rate) or
    /// stop. The check costs one extra read-only pass over the slices (no
    /// allocation).
    ///
    /// # Panics
    /// If the slices differ in length or `t == 0`.
    pub fn step<S: Scalar>(
        &self,
        params: &mut [S],
        grads: &mut [S],
        m: &mut [S],
        v: &mut [S],
        t: u64,
    ) -> Result<f64, NonFinite> {
        adamw_step(self, params, grads, m, v, t)
    }
}

crate::dispatch::dispatched! {
    /// [`AdamW::step`], dispatched (see [`dispatch`](crate::dispatch)).
    fn adamw_step[S: Scalar][S](o: &AdamW, params: &mut [S], grads: &mut [S], m: &mut [S], v: &mut [S], t: u64) -> Result<f64, NonFinite> = adamw_step_body;
}

/// The body of [`AdamW::step`], compiled once per [`Path`](crate::dispatch::Path).
#[inline(always)]
fn adamw_step_body<S: Scalar>(
    o: &AdamW,
    params: &mut [S],
    grads: &mut [S],
    m: &mut [S],
    v: &mut [S],
    t: u64,
) -> Result<f64, NonFinite> {
    assert!(t > 0, "AdamW::step: t is 1-based");
    let n = params.len();
    assert!(grads.len() == n && m.len() == n && v.len() == n, "AdamW::step: slice lengths differ");
    let norm = finite_norm(grads)?;
    let u = AdamUpdate::<S>::new(o, norm, t);
    u.check(0, params, grads, m, v)?;
    u.apply(params, grads, m, v);
    Ok(norm)
}

/// The element-wise part of one [`AdamW::step`], given the gradient's
/// global norm: the constants of step `t` and the clip factor, applied to
/// any range of the flat slices (so a data-parallel caller,
/// [`crate::parallel::DataParallel::adamw_step`], runs it by ranges with
/// the very arithmetic of the sequential step).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamUpdate<S: Scalar> {
    /// The clip factor (`1` when not clipping).
    pub(crate) k: S,
    b1: S,
    b2: S,
    step: S,
    inv_bc2: S,
    eps: S,
    decay: S,
}

impl<S: Scalar> AdamUpdate<S> {
    /// The constants of step `t` (1-based) for a gradient of global norm `norm`.
    pub(crate) fn new(opt: &AdamW, norm: f64, t: u64) -> Self {
        let bc1 = 1.0 - libm::pow(opt.beta1, t as f64);
        let bc2 = 1.0 - libm::pow(opt.beta2, t as f64);
        Self {
            k: clip_factor::<S>(norm, opt.clip),
            b1: S::from_f64(opt.beta1),
            b2: S::from_f64(opt.beta2),
            step: S::from_f64(opt.lr / bc1),
            inv_bc2: S::from_f64(1.0 / bc2),
            eps: S::from_f64(opt.eps),
            decay: S::from_f64(1.0 - opt.lr * opt.weight_decay),
        }
    }

    /// Checks that the update of these (equally long) slices writes only
    /// finite values, writing nothing; an error's index is `offset` plus
    /// the index in the slices.
    #[inline(always)]
    pub(crate) fn check(&self, offset: usize, params: &[S], grads: &[S], m: &[S], v: &[S]) -> Result<(), NonFinite> {
        let (k, b1, b2, one) = (self.k, self.b1, self.b2, S::ONE);
        // Exactly the arithmetic of `apply` (on the gradient clipped as
        // `clip_global_norm` clips it).
        check_update(params.len(), [Quantity::FirstMoment, Quantity::SecondMoment, Quantity::Param], |i| {
            let g = grads[i] * k;
            let mi = b1 * m[i] + (one - b1) * g;
            let vi = b2 * v[i] + (one - b2) * g * g;
            let denom = (vi * self.inv_bc2).sqrt() + self.eps;
            [mi, vi, params[i] * self.decay - self.step * mi / denom]
        })
        .map_err(|e| match e {
            NonFinite::Update { index, quantity, value } => {
                NonFinite::Update { index: index + offset, quantity, value }
            }
            e => e,
        })
    }

    /// Clips `grads` in place and writes the new `params`, `m` and `v`.
    #[inline(always)]
    pub(crate) fn apply(&self, params: &mut [S], grads: &mut [S], m: &mut [S], v: &mut [S]) {
        let n = params.len();
        assert!(grads.len() == n && m.len() == n && v.len() == n, "AdamW: slice lengths differ");
        scale(grads, self.k);
        let (b1, b2, one) = (self.b1, self.b2, S::ONE);
        for i in 0..n {
            let g = grads[i];
            m[i] = b1 * m[i] + (one - b1) * g;
            v[i] = b2 * v[i] + (one - b2) * g * g;
            let denom = (v[i] * self.inv_bc2).sqrt() + self.eps;
            params[i] = params[i] * self.decay - self.step * m[i] / denom;
        }
    }
}

/// The sum of squares of `grads` in `f64`, as [`global_norm`] sums them
/// (eight partial sums, then the remainder).
#[inline(always)]
pub(crate) fn sum_squares<S: Scalar>(grads: &[S]) -> f64 {
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
    s
}

/// [`finite_norm`]'s refusal for a gradient whose norm is not finite.
pub(crate) fn norm_error<S: Scalar>(grads: &[S]) -> NonFinite {
    match grads.iter().position(|&g| !finite(g)) {
        Some(index) => NonFinite::Gradient { index, value: grads[index].to_f64() },
        None => NonFinite::GradientNorm,
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
        assert_eq!(o.step(&mut p, &mut [2.0], &mut v), Ok(2.0)); // v = 2, p = 1 - 0.2 = 0.8
        assert!((p[0] - 0.8).abs() < 1e-15);
        o.step(&mut p, &mut [2.0], &mut v).unwrap(); // v = 1.8 + 2 = 3.8, p = 0.8 - 0.38 = 0.42
        assert!((p[0] - 0.42).abs() < 1e-14);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // With bias correction the first step is lr * g / (|g| + eps') = lr * sign(g).
        let o = AdamW { lr: 0.01, weight_decay: 0.0, clip: 0.0, ..AdamW::default() };
        let mut p = [1.0f64, -1.0];
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        o.step(&mut p, &mut [0.5, -3.0], &mut m, &mut v, 1).unwrap();
        assert!((p[0] - 0.99).abs() < 1e-9 && (p[1] + 0.99).abs() < 1e-9, "{p:?}");
        // Decoupled decay shrinks the parameter independently of the gradient.
        let o = AdamW { lr: 0.1, weight_decay: 0.5, clip: 0.0, ..AdamW::default() };
        let mut p = [2.0f64];
        let (mut m, mut v) = ([0.0], [0.0]);
        o.step(&mut p, &mut [0.0], &mut m, &mut v, 1).unwrap();
        assert!((p[0] - 2.0 * 0.95).abs() < 1e-12);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let o = AdamW { lr: 0.05, clip: 0.0, ..AdamW::default() };
        let mut p = [3.0f64, -2.0];
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        for t in 1..=2000 {
            let mut g = [2.0 * (p[0] - 1.0), 2.0 * (p[1] + 0.5)];
            o.step(&mut p, &mut g, &mut m, &mut v, t).unwrap();
        }
        assert!((p[0] - 1.0).abs() < 1e-3 && (p[1] + 0.5).abs() < 1e-3, "{p:?}");
    }

    // ---- exact values, computed by hand (every number below is a short
    // binary fraction, so each operation is exact in f32 and f64)

    fn sgd_by_hand<S: Scalar>() {
        // v' = mu v + g + wd p = 0.5 v + g + 0.25 p; p' = p - lr v' = p - 0.5 v'.
        let o = Sgd { lr: 0.5, momentum: 0.5, weight_decay: 0.25, clip: 0.0 };
        let f = |x: [f64; 3]| x.map(S::from_f64);
        let (mut p, mut g, mut v) = (f([1.0, -2.0, 0.5]), f([1.0, 0.5, -0.25]), f([0.5, 0.0, -1.0]));
        let norm = o.step(&mut p, &mut g, &mut v).unwrap();
        // |g|^2 = 1 + 1/4 + 1/16.
        assert_eq!(norm, libm::sqrt(1.3125));
        // v' = [0.25 + 1 + 0.25, 0 + 0.5 - 0.5, -0.5 - 0.25 + 0.125].
        assert_eq!(v, f([1.5, 0.0, -0.625]));
        assert_eq!(p, f([1.0 - 0.75, -2.0, 0.5 + 0.3125])); // [0.25, -2, 0.8125]
        assert_eq!(g, f([1.0, 0.5, -0.25]), "no clipping: the gradient is left alone");

        // Clipping at 2.5 a gradient of norm 5 halves it (in place, as before).
        let o = Sgd { lr: 0.5, momentum: 0.0, weight_decay: 0.0, clip: 2.5 };
        let (mut p, mut g, mut v) = (f([1.0, 1.0, 1.0]), f([3.0, 4.0, 0.0]), f([7.0, 7.0, 7.0]));
        assert_eq!(o.step(&mut p, &mut g, &mut v), Ok(5.0));
        assert_eq!(g, f([1.5, 2.0, 0.0]));
        assert_eq!(v, f([1.5, 2.0, 0.0]));
        assert_eq!(p, f([0.25, 0.0, 1.0]));
    }

    fn adamw_by_hand<S: Scalar>() {
        // t = 1, beta1 = 1/2, beta2 = 3/4, eps = 0, lr = 1/4, wd = 1/2:
        // m' = g/2, v' = g^2/4, bias corrections 1/2 and 1/4, so the step is
        // lr / (1/2) = 1/2 times m'/sqrt(4 v') = (g/2)/|g|, and the decay is
        // 1 - lr wd = 7/8: p' = 7/8 p - sign(g)/4.
        let o = AdamW { lr: 0.25, beta1: 0.5, beta2: 0.75, eps: 0.0, weight_decay: 0.5, clip: 0.0 };
        let f = |x: [f64; 3]| x.map(S::from_f64);
        let (mut p, mut g) = (f([1.0, -2.0, 4.0]), f([2.0, -0.5, 1.0]));
        let (mut m, mut v) = (f([0.0; 3]), f([0.0; 3]));
        let norm = o.step(&mut p, &mut g, &mut m, &mut v, 1).unwrap();
        assert_eq!(norm, libm::sqrt(5.25)); // 4 + 1/4 + 1
        assert_eq!(m, f([1.0, -0.25, 0.5]));
        assert_eq!(v, f([1.0, 0.0625, 0.25]));
        assert_eq!(p, f([0.875 - 0.25, -1.75 + 0.25, 3.5 - 0.25])); // [0.625, -1.5, 3.25]
        assert_eq!(g, f([2.0, -0.5, 1.0]));
    }

    #[test]
    fn a_normal_step_gives_the_hand_computed_values() {
        sgd_by_hand::<f32>();
        sgd_by_hand::<f64>();
        adamw_by_hand::<f32>();
        adamw_by_hand::<f64>();
    }

    /// The update as it was before steps checked for non-finite values
    /// (clip in place, then one writing loop): the checked steps must give
    /// the same bits.
    fn adamw_reference(o: &AdamW, p: &mut [f32], g: &mut [f32], m: &mut [f32], v: &mut [f32], t: u64) -> f64 {
        let norm = clip_global_norm(g, o.clip);
        let bc1 = 1.0 - libm::pow(o.beta1, t as f64);
        let bc2 = 1.0 - libm::pow(o.beta2, t as f64);
        let (b1, b2) = (o.beta1 as f32, o.beta2 as f32);
        let step = (o.lr / bc1) as f32;
        let inv_bc2 = (1.0 / bc2) as f32;
        let eps = o.eps as f32;
        let decay = (1.0 - o.lr * o.weight_decay) as f32;
        for i in 0..p.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let denom = (v[i] * inv_bc2).sqrt() + eps;
            p[i] = p[i] * decay - step * m[i] / denom;
        }
        norm
    }

    fn sgd_reference(o: &Sgd, p: &mut [f32], g: &mut [f32], vel: &mut [f32]) -> f64 {
        let norm = clip_global_norm(g, o.clip);
        let (lr, mu, wd) = (o.lr as f32, o.momentum as f32, o.weight_decay as f32);
        for i in 0..p.len() {
            vel[i] = mu * vel[i] + g[i] + wd * p[i];
            p[i] -= lr * vel[i];
        }
        norm
    }

    #[test]
    fn checked_steps_match_the_unchecked_update_bit_for_bit() {
        let mut r = crate::rng::Rng::new(17);
        let mut vec = |scale: f64| -> [f32; 37] { core::array::from_fn(|_| (r.normal() * scale) as f32) };
        let (mut p, mut m, mut v) = (vec(1.0), [0.0f32; 37], [0.0f32; 37]);
        let (mut p2, mut m2, mut v2) = (p, m, v);
        let (mut q, mut vel) = (p, vec(0.1));
        let (mut q2, mut vel2) = (q, vel);
        for t in 1..=200u64 {
            let g = vec(if t % 3 == 0 { 10.0 } else { 0.1 }); // clipped every third step
            let o = AdamW { lr: 0.01, weight_decay: 0.1, clip: 1.0, ..AdamW::default() };
            let (mut g1, mut g2) = (g, g);
            let norm = o.step(&mut p, &mut g1, &mut m, &mut v, t).unwrap();
            assert_eq!(norm, adamw_reference(&o, &mut p2, &mut g2, &mut m2, &mut v2, t));
            let s = Sgd { lr: 0.01, momentum: 0.9, weight_decay: 0.01, clip: 1.0 };
            let (mut h1, mut h2) = (g, g);
            let norm = s.step(&mut q, &mut h1, &mut vel).unwrap();
            assert_eq!(norm, sgd_reference(&s, &mut q2, &mut h2, &mut vel2));
            for (a, b) in [(&p, &p2), (&m, &m2), (&v, &v2), (&g1, &g2), (&q, &q2), (&vel, &vel2), (&h1, &h2)] {
                assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()), "step {t}");
            }
        }
    }

    // ---- refusals: nothing is written

    /// A `Display` rendered into a fixed buffer (the crate is `no_std`).
    struct Shown {
        buf: [u8; 256],
        len: usize,
    }

    impl Shown {
        fn of(x: &impl core::fmt::Display) -> Shown {
            let mut s = Shown { buf: [0; 256], len: 0 };
            core::fmt::write(&mut s, format_args!("{x}")).expect("fits in 256 bytes");
            s
        }
        fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).expect("UTF-8")
        }
    }

    impl core::fmt::Write for Shown {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let dst = self.buf.get_mut(self.len..self.len + s.len()).ok_or(core::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.len += s.len();
            Ok(())
        }
    }

    /// Bitwise equality (`f32` to `f64` is exact, so this compares the bits).
    fn same<S: Scalar>(a: &[S], b: &[S]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits())
    }

    /// Takes one normal AdamW step from `p0`, then the step `o` with
    /// gradient `g`, which must be refused with an error for which `want`
    /// holds, leaving params, gradients and moments bit for bit as they were.
    fn adamw_refuses<S: Scalar>(o: AdamW, p0: [f64; 3], g: [f64; 3], want: impl Fn(NonFinite) -> bool) {
        let f = |x: [f64; 3]| x.map(S::from_f64);
        let mut p = f(p0);
        let (mut m, mut v) = (f([0.0; 3]), f([0.0; 3]));
        AdamW { lr: 0.01, ..AdamW::default() }.step(&mut p, &mut f([0.5, -0.25, 1.0]), &mut m, &mut v, 1).unwrap();
        let mut g = f(g);
        let before = (p, g, m, v);
        let r = o.step(&mut p, &mut g, &mut m, &mut v, 2);
        assert!(r.is_err_and(&want), "{r:?}");
        assert!(same(&p, &before.0) && same(&g, &before.1) && same(&m, &before.2) && same(&v, &before.3));
    }

    /// As [`adamw_refuses`], for SGD with momentum (the velocity is nonzero).
    fn sgd_refuses<S: Scalar>(o: Sgd, p0: [f64; 3], g: [f64; 3], want: impl Fn(NonFinite) -> bool) {
        let f = |x: [f64; 3]| x.map(S::from_f64);
        let mut p = f(p0);
        let mut vel = f([0.0; 3]);
        let normal = Sgd { lr: 0.01, momentum: 0.9, weight_decay: 0.0, clip: 0.0 };
        normal.step(&mut p, &mut f([0.5, -0.25, 1.0]), &mut vel).unwrap();
        let mut g = f(g);
        let before = (p, g, vel);
        let r = o.step(&mut p, &mut g, &mut vel);
        assert!(r.is_err_and(&want), "{r:?}");
        assert!(same(&p, &before.0) && same(&g, &before.1) && same(&vel, &before.2));
    }

    fn gradient_refusals<S: Scalar>() {
        // Both clip (at 1): a NaN/inf gradient must be refused before clipping.
        let adam = AdamW::default();
        let sgd = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0, clip: 1.0 };
        let p0 = [1.0, -2.0, 0.5];
        let (nan, inf) = (f64::NAN, f64::INFINITY);
        for (g, index) in [([0.0, nan, 1.0], 1), ([inf, 0.0, 1.0], 0), ([0.0, 1.0, -inf], 2)] {
            let want = |e| match e {
                NonFinite::Gradient { index: i, value } => {
                    i == index && (value.is_nan() && g[index].is_nan() || value == g[index])
                }
                _ => false,
            };
            adamw_refuses::<S>(adam, p0, g, want);
            sgd_refuses::<S>(sgd, p0, g, want);
        }
    }

    #[test]
    fn non_finite_gradients_are_refused_and_nothing_is_written() {
        gradient_refusals::<f32>();
        gradient_refusals::<f64>();
        // Finite f64 gradients whose squares overflow f64.
        let mut p = [1.0f64; 3];
        let mut g = [1e200, 0.0, 0.0];
        let r = Sgd { lr: 0.1, momentum: 0.0, weight_decay: 0.0, clip: 1.0 }.step(&mut p, &mut g, &mut [0.0; 3]);
        assert_eq!(r, Err(NonFinite::GradientNorm));
        assert_eq!((p, g), ([1.0; 3], [1e200, 0.0, 0.0]));
        assert!(Shown::of(&r.unwrap_err()).as_str().contains("norm"));
    }

    #[test]
    fn updates_that_overflow_are_refused_and_nothing_is_written() {
        let max = f32::MAX as f64;
        // SGD with a huge learning rate: p1 = 2 - 1e38 * 1e3 overflows to -inf.
        let o = Sgd { lr: 1e38, momentum: 0.0, weight_decay: 0.0, clip: 0.0 };
        let mut p = [1.0f32, 2.0, 3.0];
        let mut g = [0.0f32, 1e3, 0.0];
        let mut vel = [0.0f32; 3];
        let r = o.step(&mut p, &mut g, &mut vel);
        assert_eq!(r, Err(NonFinite::Update { index: 1, quantity: Quantity::Param, value: f64::NEG_INFINITY }));
        assert_eq!((p, g, vel), ([1.0, 2.0, 3.0], [0.0, 1e3, 0.0], [0.0; 3]));
        assert_eq!(
            Shown::of(&r.unwrap_err()).as_str(),
            "optimizer step refused: the update would make the parameter at index 1 -inf; nothing was written"
        );
        // And with state: after a normal step, at a parameter near f32::MAX (f32) ...
        sgd_refuses::<f32>(
            Sgd { lr: 1.0, momentum: 0.9, weight_decay: 0.0, clip: 0.0 },
            [0.0, 1.0, max],
            [0.0, 0.0, -1e38],
            |e| e == NonFinite::Update { index: 2, quantity: Quantity::Param, value: f64::INFINITY },
        );
        // ... and f64.
        sgd_refuses::<f64>(
            Sgd { lr: 1e300, momentum: 0.9, weight_decay: 0.0, clip: 0.0 },
            [0.0, 1.0, 1.0],
            [0.0, 1e10, 0.0],
            |e| e == NonFinite::Update { index: 1, quantity: Quantity::Param, value: f64::NEG_INFINITY },
        );
        // AdamW: a parameter near the largest float and a huge learning rate.
        adamw_refuses::<f32>(
            AdamW { lr: 1e37, clip: 0.0, ..AdamW::default() },
            [1.0, -max, 0.5],
            [0.5, 1.0, -0.25],
            |e| e == NonFinite::Update { index: 1, quantity: Quantity::Param, value: f64::NEG_INFINITY },
        );
        // AdamW: a finite gradient whose square overflows f32: the second
        // moment would be inf (the parameter itself would stay finite, as
        // m / sqrt(inf) = 0), and is refused too.
        adamw_refuses::<f32>(AdamW { clip: 0.0, ..AdamW::default() }, [1.0, 2.0, 3.0], [0.0, 1e30, 0.0], |e| {
            e == NonFinite::Update { index: 1, quantity: Quantity::SecondMoment, value: f64::INFINITY }
        });
        // Weight decay of a parameter near the largest float (decay > 1).
        adamw_refuses::<f64>(
            AdamW { lr: 1.0, weight_decay: -1.0, clip: 0.0, ..AdamW::default() },
            [1.0, 2.0, f64::MAX],
            [0.5, 1.0, -0.25],
            |e| e == NonFinite::Update { index: 2, quantity: Quantity::Param, value: f64::INFINITY },
        );
        let e = NonFinite::Update { index: 2, quantity: Quantity::SecondMoment, value: f64::INFINITY };
        assert_eq!(e.index(), Some(2));
    }
}
