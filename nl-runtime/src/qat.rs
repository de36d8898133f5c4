//! The quantized forward pass on latent (floating-point) weights: what
//! quantization-aware training and the streaming reference read
//! (docs/quant.md). The quantization itself is [`crate::quant`]'s; this
//! module applies it to whole tensors, rows of activations and
//! matrix-vector products, generic over [`Scalar`] (f32 and f64).
//!
//! - [`dequantize`]: a weight tensor's quantized value `s * Wq`, written
//!   over a copy of its latent value (training: the whole parameter struct
//!   is dequantized once per call, and the f32 forward and backward run on
//!   it; the gradient with respect to the dequantized value is the
//!   straight-through gradient of the latent one).
//! - [`fake_quant_rows`]: each row of a `[T][N]` activation replaced by
//!   `a * xq`, its int8 quantization (per token).
//! - [`fq_matvec`]: `y = Wd xd` for one input vector, quantizing the row of
//!   `W` (or the tensor, for ternary) and the input on the fly: the
//!   streaming `step` of a quantized model on latent parameters. The sum
//!   over `i` is sequential (`i = 0, 1, ...`), each term `wd_i * xd_i`.
//!   It quantizes a row per output, so it is a few times slower than an
//!   f32 product: the fast path is the integer one (`Stream::try_step_q`).

use crate::quant::{fake_quant_act, fake_quant_int8, fake_quant_ternary, ActQuant, WeightQuant};
use crate::Scalar;

/// Writes the value the quantized forward reads of the `[out, inp]` weight
/// tensor `w` into `wd`: `s_r * Wq_r` per row (int8), `s * Wq` (ternary),
/// or `w` itself (f32).
///
/// # Panics
/// If `w.len() != wd.len()` or `w.len() != out * inp`.
pub fn dequantize<S: Scalar>(wq: WeightQuant, w: &[S], out: usize, inp: usize, wd: &mut [S]) {
    assert!(w.len() == wd.len() && w.len() == out * inp, "dequantize: a tensor of {out} x {inp}");
    match wq {
        WeightQuant::F32 => wd.copy_from_slice(w),
        WeightQuant::Int8 => fake_quant_int8(w, out, inp, wd),
        WeightQuant::Ternary => {
            fake_quant_ternary(w, wd);
        }
    }
}

/// Replaces every row of `x` by its int8 fake quantization `a * xq` (per
/// row: `a = max(max_i |x_i|, 1e-8) / 127`), in place.
pub fn fake_quant_rows<S: Scalar, const T: usize, const N: usize>(x: &mut [[S; N]; T]) {
    for r in x.iter_mut() {
        fake_quant_row(r);
    }
}

/// [`fake_quant_rows`] for one vector, in place.
pub fn fake_quant_row<S: Scalar>(x: &mut [S]) {
    // The quantizer reads `x` and writes `xd` elementwise after computing
    // the scale from all of `x`; doing it in place needs the scale first.
    let a = crate::quant::int8_row_scale(x);
    for v in x.iter_mut() {
        *v = a * code(*v / a);
    }
}

/// `clamp(round(q), -127, 127)` as a scalar (halves away from zero; NaN gives 0),
/// the int8 code of a quotient as `crate::quant` computes it.
fn code<S: Scalar>(q: S) -> S {
    let r = libm::round(q.to_f64());
    if r.is_nan() {
        S::ZERO
    } else {
        S::from_f64(r.clamp(-127.0, 127.0))
    }
}

/// `y = Wd xd` for one input vector: `W` `[OUT][IN]` latent, read quantized
/// as `wq` says, `x` read quantized as `aq` says. `buf` is scratch of at
/// least `2 * IN` values (the quantized input and one dequantized row).
///
/// # Panics
/// If `buf.len() < 2 * IN`.
pub fn fq_matvec<S: Scalar, const OUT: usize, const IN: usize>(
    wq: WeightQuant,
    aq: ActQuant,
    w: &[[S; IN]; OUT],
    x: &[S; IN],
    buf: &mut [S],
    y: &mut [S; OUT],
) {
    assert!(buf.len() >= 2 * IN, "fq_matvec: scratch of 2 * IN = {} values, got {}", 2 * IN, buf.len());
    let (xd, rest) = buf.split_at_mut(IN);
    let row = &mut rest[..IN];
    match aq {
        ActQuant::F32 => xd.copy_from_slice(x),
        ActQuant::Int8 => {
            fake_quant_act(x, xd);
        }
    }
    // Ternary: one scale for the tensor, computed once.
    let tscale = match wq {
        WeightQuant::Ternary => crate::quant::ternary_scale(w.as_flattened()),
        _ => S::ONE,
    };
    for (r, out) in w.iter().zip(y.iter_mut()) {
        match wq {
            WeightQuant::F32 => row.copy_from_slice(r),
            WeightQuant::Int8 => fake_quant_int8(r, 1, IN, row),
            WeightQuant::Ternary => {
                for (d, &v) in row.iter_mut().zip(r) {
                    let q = libm::round((v / tscale).to_f64());
                    let q = if q.is_nan() { 0.0 } else { q.clamp(-1.0, 1.0) };
                    *d = tscale * S::from_f64(q);
                }
            }
        }
        let mut acc = S::ZERO;
        for (a, b) in row.iter().zip(xd.iter()) {
            acc += *a * *b;
        }
        *out = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_quant_row_by_hand() {
        // a = 2.54 / 127 = 0.02; codes round(x / a) = 127, 25 (0.5 / 0.02 = 25), -13 (-0.25 / 0.02 = -12.5 -> -13), 0.
        let mut x = [2.54f64, 0.5, -0.25, 0.0];
        fake_quant_row(&mut x);
        let a = 2.54f64 / 127.0;
        let want = [127.0 * a, (0.5f64 / a).round() * a, (-0.25f64 / a).round() * a, 0.0];
        assert_eq!(x, want);
        assert_eq!(((0.5f64 / a).round(), (-0.25f64 / a).round()), (25.0, -13.0));
        // The same as the quantizer writing to another buffer.
        let src = [0.3f32, -1.7, 0.01, 2.2, -0.6];
        let mut a1 = src;
        fake_quant_row(&mut a1);
        let mut a2 = [0f32; 5];
        fake_quant_act(&src, &mut a2);
        assert_eq!(a1, a2);
    }

    #[test]
    fn fq_matvec_is_the_dequantized_product() {
        let w = [[0.5f64, -0.25, 0.125], [1.0, 0.3, -0.7]];
        let x = [0.2f64, -1.0, 0.4];
        let mut buf = [0f64; 6];
        for (wq, aq) in [
            (WeightQuant::F32, ActQuant::F32),
            (WeightQuant::Int8, ActQuant::F32),
            (WeightQuant::Int8, ActQuant::Int8),
            (WeightQuant::Ternary, ActQuant::Int8),
            (WeightQuant::Ternary, ActQuant::F32),
        ] {
            let mut y = [0f64; 2];
            fq_matvec(wq, aq, &w, &x, &mut buf, &mut y);
            let mut wd = [0f64; 6];
            dequantize(wq, w.as_flattened(), 2, 3, &mut wd);
            let mut xd = x;
            if aq == ActQuant::Int8 {
                fake_quant_row(&mut xd);
            }
            for r in 0..2 {
                let want: f64 = (0..3).map(|i| wd[r * 3 + i] * xd[i]).sum();
                assert!((y[r] - want).abs() < 1e-15, "{wq:?} {aq:?}: {} vs {want}", y[r]);
            }
        }
        // Ternary by hand: s = mean |W| = (0.5 + 0.25 + 0.125 + 1 + 0.3 + 0.7) / 6 + 1e-8;
        // codes round(W / s): s ~ 0.479, so 0.5 -> 1, -0.25 -> -1 (-0.52), 0.125 -> 0, 1 -> 1 (2.09 clamped), 0.3 -> 1 (0.63), -0.7 -> -1.
        let s = (0.5 + 0.25 + 0.125 + 1.0 + 0.3 + 0.7) / 6.0 + 1e-8;
        let mut wd = [0f64; 6];
        dequantize(WeightQuant::Ternary, w.as_flattened(), 2, 3, &mut wd);
        assert_eq!(wd, [s, -s, 0.0, s, s, -s]);
    }
}
