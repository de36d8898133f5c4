//! Rotary position embeddings (RoPE).
//!
//! Per head of width `HD = 2 * HALF`, the pairs `(x, y) = (2i, 2i + 1)` of
//! the head's query/key columns, `i in 0..HALF`, turn by the angle
//! `a = pos * w_i`, `w_i = base^(-2i / HD)` ([`rope_freq`], base
//! [`ROPE_BASE`]): `(x, y) -> (x cos a - y sin a, x sin a + y cos a)`. Then
//! `(R(t w) q) . (R(tau w) k) = q . R((tau - t) w) k`: the score of query
//! position `t` and key position `tau` depends on the offset `t - tau` only.
//!
//! Two ways to use it:
//! - training (positions `0..T`): [`rope_table`] with `start = 0` and
//!   `N = T`, then [`rope_apply`] to `q` and `k` before the attention, and
//!   [`rope_apply_inverse`] (the transpose rotation) to `dq` and `dk` after
//!   its backward;
//! - streaming (unbounded positions): the window keeps unrotated keys and
//!   [`attend_row_pos`](crate::kernels::attend_row_pos) scores the query
//!   against the key `o` steps back with a table indexed by the offset
//!   (`rope_table` with `start = 0`, `N = W`):
//!   `sum_i cos(o w_i) (qx kx + qy ky) + sin(o w_i) (qx ky - qy kx)`.
//!   No absolute position enters, so the stream keeps full precision at any
//!   length.
//!
//! Tables are computed in `f64` (angles `pos * w_i` and `libm`'s cos/sin,
//! absolute error about `pos * 1e-16` radians) and rounded to `S` once.

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

use crate::Scalar;

/// The RoPE base (`10000`).
pub const ROPE_BASE: f64 = 10000.0;

/// The angular frequency of pair `i` of a head of width `hd`:
/// `w_i = ROPE_BASE^(-2i / hd)`, in `f64`.
#[inline]
pub fn rope_freq(i: usize, hd: usize) -> f64 {
    libm::pow(ROPE_BASE, -((2 * i) as f64) / hd as f64)
}

/// Fills `cos[r][i] = cos((start + r) w_i)` and `sin[r][i] = sin((start + r) w_i)`
/// for `r in 0..N`, `i in 0..HALF`, for heads of width `2 * HALF`:
/// positions `start..start + N` (training: `start = 0`, `N = T`) or offsets
/// `0..N` (the streaming window: `start = 0`, `N = W`). Computed in `f64`,
/// rounded to `S`.
#[inline]
pub fn rope_table<S: Scalar, const N: usize, const HALF: usize>(
    start: u64,
    cos: &mut [[S; HALF]; N],
    sin: &mut [[S; HALF]; N],
) {
    let hd = 2 * HALF;
    for i in 0..HALF {
        let w = rope_freq(i, hd);
        for r in 0..N {
            let a = (start + r as u64) as f64 * w;
            let (s, c) = libm::sincos(a);
            cos[r][i] = S::from_f64(c);
            sin[r][i] = S::from_f64(s);
        }
    }
}

/// Rotates every head of every row of `x` in place, row `t` by the angles
/// of table row `t` (`cos`, `sin` from [`rope_table`]). Heads are
/// `D / HD` blocks of `HD = 2 * HALF` columns.
#[inline]
pub fn rope_apply<S: Scalar, const T: usize, const D: usize, const HD: usize, const HALF: usize>(
    x: &mut [[S; D]; T],
    cos: &[[S; HALF]; T],
    sin: &[[S; HALF]; T],
) {
    rotate::<S, T, D, HD, HALF, false>(x, cos, sin)
}

/// The inverse (transpose) of [`rope_apply`] with the same tables: rotates
/// by `-a`. It maps the gradient of rotated queries/keys to the gradient of
/// the unrotated ones.
#[inline]
pub fn rope_apply_inverse<S: Scalar, const T: usize, const D: usize, const HD: usize, const HALF: usize>(
    x: &mut [[S; D]; T],
    cos: &[[S; HALF]; T],
    sin: &[[S; HALF]; T],
) {
    rotate::<S, T, D, HD, HALF, true>(x, cos, sin)
}

/// The rotation of [`rope_apply`] (by `-a` when `INVERSE`: `sin(-a) = -sin a`).
#[inline(always)]
fn rotate<S: Scalar, const T: usize, const D: usize, const HD: usize, const HALF: usize, const INVERSE: bool>(
    x: &mut [[S; D]; T],
    cos: &[[S; HALF]; T],
    sin: &[[S; HALF]; T],
) {
    const { assert!(HD == 2 * HALF && HD > 0 && D.is_multiple_of(HD), "RoPE needs HD = 2 HALF dividing D") };
    for t in 0..T {
        // Column `j` of a head is `fma(x, m1[j], y * m2[j])` with `(x, y)`
        // its pair: `(c, -s)` on the first of the pair, `(s, c)` on the
        // second (the formulas above, operation for operation). Spreading
        // the row's table over the head's columns once lets the columns run
        // as whole vectors (pair swaps are lane shuffles), not a gather and
        // scatter per pair.
        let mut m1 = [S::ZERO; HD];
        let mut m2 = [S::ZERO; HD];
        for i in 0..HALF {
            let (c, s) = (cos[t][i], if INVERSE { -sin[t][i] } else { sin[t][i] });
            (m1[2 * i], m2[2 * i]) = (c, -s);
            (m1[2 * i + 1], m2[2 * i + 1]) = (s, c);
        }
        for head in x[t].chunks_exact_mut(HD) {
            let h: [S; HD] = head.try_into().expect("HD columns");
            for j in 0..HD {
                head[j] = h[j & !1].mul_add(m1[j], h[j | 1] * m2[j]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const HD: usize = 8;
    const HALF: usize = 4;

    #[test]
    fn tables_are_f64_cos_and_sin() {
        let (mut c, mut s) = ([[0.0f64; HALF]; 6], [[0.0f64; HALF]; 6]);
        rope_table(10_000_000, &mut c, &mut s);
        for r in 0..6 {
            for i in 0..HALF {
                let a = (10_000_000 + r) as f64 * libm::pow(10000.0, -(2.0 * i as f64) / 8.0);
                assert!((c[r][i] - libm::cos(a)).abs() < 1e-15 && (s[r][i] - libm::sin(a)).abs() < 1e-15);
            }
        }
        assert_eq!(rope_freq(0, 8), 1.0);
        assert!((rope_freq(2, 8) - 0.01).abs() < 1e-17);
        let (mut c32, mut s32) = ([[0.0f32; HALF]; 6], [[0.0f32; HALF]; 6]);
        rope_table(10_000_000, &mut c32, &mut s32);
        for r in 0..6 {
            for i in 0..HALF {
                assert_eq!((c32[r][i], s32[r][i]), (c[r][i] as f32, s[r][i] as f32));
            }
        }
    }

    /// `(R(t w) q) . (R(tau w) k)` equals the offset form at `o = t - tau`
    /// for many random positions below 4096.
    #[test]
    fn rotated_dot_depends_on_the_offset_only() {
        const T: usize = 4096;
        let mut rng = Rng::new(31);
        let mut ct = [[0.0f64; HALF]; T];
        let mut st = [[0.0f64; HALF]; T];
        rope_table(0, &mut ct, &mut st);
        for _ in 0..2000 {
            let t = rng.below(T as u64) as usize;
            let tau = rng.below(t as u64 + 1) as usize;
            let q: [[f64; 2 * HD]; 1] = [core::array::from_fn(|_| rng.next_f64() * 2.0 - 1.0)];
            let k: [[f64; 2 * HD]; 1] = [core::array::from_fn(|_| rng.next_f64() * 2.0 - 1.0)];
            let (mut qr, mut kr) = (q, k);
            rope_apply::<f64, 1, { 2 * HD }, HD, HALF>(&mut qr, &[ct[t]], &[st[t]]);
            rope_apply::<f64, 1, { 2 * HD }, HD, HALF>(&mut kr, &[ct[tau]], &[st[tau]]);
            let o = t - tau;
            for h in 0..2 {
                let cols = h * HD..(h + 1) * HD;
                let rotated: f64 = cols.clone().map(|j| qr[0][j] * kr[0][j]).sum();
                let mut offset = 0.0;
                for i in 0..HALF {
                    let (qx, qy) = (q[0][h * HD + 2 * i], q[0][h * HD + 2 * i + 1]);
                    let (kx, ky) = (k[0][h * HD + 2 * i], k[0][h * HD + 2 * i + 1]);
                    offset += ct[o][i] * (qx * kx + qy * ky) + st[o][i] * (qx * ky - qy * kx);
                }
                assert!((rotated - offset).abs() < 1e-12, "t {t} tau {tau}: {rotated} vs {offset}");
            }
        }
    }

    #[test]
    fn inverse_undoes_apply() {
        const T: usize = 50;
        let mut rng = Rng::new(32);
        let (mut c, mut s) = ([[0.0f64; HALF]; T], [[0.0f64; HALF]; T]);
        rope_table(0, &mut c, &mut s);
        let x: [[f64; 16]; T] = core::array::from_fn(|_| core::array::from_fn(|_| rng.next_f64() * 2.0 - 1.0));
        let mut y = x;
        rope_apply::<f64, T, 16, HD, HALF>(&mut y, &c, &s);
        assert!(y != x);
        // A rotation keeps each pair's length.
        for t in 0..T {
            for p in 0..8 {
                let n0 = x[t][2 * p] * x[t][2 * p] + x[t][2 * p + 1] * x[t][2 * p + 1];
                let n1 = y[t][2 * p] * y[t][2 * p] + y[t][2 * p + 1] * y[t][2 * p + 1];
                assert!((n0 - n1).abs() < 1e-15);
            }
        }
        rope_apply_inverse::<f64, T, 16, HD, HALF>(&mut y, &c, &s);
        for t in 0..T {
            for j in 0..16 {
                assert!((y[t][j] - x[t][j]).abs() < 1e-15, "[{t}][{j}]");
            }
        }
        let x32: [[f32; 16]; T] = core::array::from_fn(|t| core::array::from_fn(|j| x[t][j] as f32));
        let (mut c32, mut s32) = ([[0.0f32; HALF]; T], [[0.0f32; HALF]; T]);
        rope_table(0, &mut c32, &mut s32);
        let mut y32 = x32;
        rope_apply::<f32, T, 16, HD, HALF>(&mut y32, &c32, &s32);
        rope_apply_inverse::<f32, T, 16, HD, HALF>(&mut y32, &c32, &s32);
        for t in 0..T {
            for j in 0..16 {
                assert!((y32[t][j] - x32[t][j]).abs() < 4.0 * f32::EPSILON, "f32 [{t}][{j}]");
            }
        }
    }

    /// The backward of `y = rope(x)` is `dx = rope_inverse(dy)`: central
    /// differences of `L = sum(c * rope(x))`.
    #[test]
    fn inverse_is_the_backward() {
        const T: usize = 7;
        let mut rng = Rng::new(33);
        let (mut ct, mut st) = ([[0.0f64; HALF]; T], [[0.0f64; HALF]; T]);
        rope_table(1000, &mut ct, &mut st);
        let x: [[f64; 16]; T] = core::array::from_fn(|_| core::array::from_fn(|_| rng.next_f64() * 2.0 - 1.0));
        let c: [[f64; 16]; T] = core::array::from_fn(|_| core::array::from_fn(|_| rng.next_f64() * 2.0 - 1.0));
        let loss = |x: &[[f64; 16]; T]| {
            let mut y = *x;
            rope_apply::<f64, T, 16, HD, HALF>(&mut y, &ct, &st);
            (0..T).map(|t| (0..16).map(|j| c[t][j] * y[t][j]).sum::<f64>()).sum::<f64>()
        };
        let mut dx = c;
        rope_apply_inverse::<f64, T, 16, HD, HALF>(&mut dx, &ct, &st);
        let h = 1e-5;
        for t in 0..T {
            for j in 0..16 {
                let (mut xp, mut xm) = (x, x);
                xp[t][j] += h;
                xm[t][j] -= h;
                let n = (loss(&xp) - loss(&xm)) / (2.0 * h);
                assert!((n - dx[t][j]).abs() <= 1e-6 * dx[t][j].abs().max(1e-2), "[{t}][{j}]: {n} vs {}", dx[t][j]);
            }
        }
    }
}
