//! Quantized weights and activations (issue #12): the quantizers, the
//! ternary packing, fake quantization for quantization-aware training, and
//! the serving kernels `y = W x` on quantized operands.
//!
//! # Semantics
//!
//! Everything below is exact: integer arithmetic, or IEEE operations in a
//! fixed order, so every target (x86-64, aarch64, wasm32, the bare-metal
//! 32-bit ones) and every kernel path gives the same bits.
//!
//! **Tensors.** A quantized tensor is an `[out, in]` weight matrix, row-major:
//! row `r` (the `in` values `W[r * in .. (r + 1) * in]`) produces output `r`.
//! Training keeps latent weights in floating point; the forward pass reads
//! their quantized values.
//!
//! **Rounding** is to the nearest integer with halves away from zero (what
//! `f32::round` and `libm::round` do: `2.5 -> 3`, `-2.5 -> -3`,
//! `0.49999997 -> 0`). "`q = clamp(round(v / s), -L, L)`" means: the
//! quotient in the scalar type (one IEEE division), rounded, then clamped;
//! a NaN quotient gives 0. Rounding to an integer is exact, so any correct
//! implementation gives the same result on every target; the one here is a
//! few IEEE conversions and one subtraction, without a call (so the
//! quantizers vectorise), and the tests check it against `libm::round`
//! (pure software) and `f32::round` on sweeps of values.
//!
//! **`int8` weights** ([`WeightQuant::Int8`]): per output row `r`, the scale
//! `s_r = max(max_i |W_ri|, 1e-8) / 127` and the codes
//! `Wq_ri = clamp(round(W_ri / s_r), -127, 127)`; the value the forward pass
//! uses is `s_r * Wq_ri`. The maximum runs over the row (order does not
//! matter for a maximum; NaN entries are skipped), `1e-8` is rounded to the
//! scalar type, and the division by 127 is one IEEE division. An all-zero
//! row has `s_r = 1e-8 / 127` and codes 0. See [`int8_row_scale`],
//! [`quantize_int8`].
//!
//! **`ternary` weights** ([`WeightQuant::Ternary`], BitNet b1.58 "absmean"):
//! one scale per tensor, `s = mean_i |W_i| + 1e-8`, codes
//! `Wq_i = clamp(round(W_i / s), -1, 1)`, value `s * Wq_i`. The mean is
//! computed in `f64` whatever the scalar type: `sum = 0.0`, then
//! `sum = sum + |W_i|` for `i = 0, 1, ...` in order (each `|W_i|` widened
//! exactly), then `mean = sum / n` (`n` the element count, 1 for an empty
//! tensor), then `mean + 1e-8` (in `f64`), then one rounding to the scalar
//! type. See [`ternary_scale`], [`quantize_ternary`].
//!
//! **`int8` activations** ([`ActQuant::Int8`]): per input vector `x`,
//! `a = max(max_i |x_i|, 1e-8) / 127` and `xq_i = clamp(round(x_i / a), -127, 127)`
//! (as for a weight row). See [`quantize_act`].
//!
//! **Integer products** ([`matvec_i8_i8`], [`matvec_t2_i8`]):
//! `acc_r = sum_i Wq_ri * xq_i`, exact in `i32` (so its order is
//! irrelevant; `in <= `[`MAX_IN`] keeps `|acc_r| <= 127 * 127 * in` below
//! `2^31`), then one scaling: `y_r = (s_r * a) * (acc_r as f32)`: the two
//! scales multiplied first (one rounding), `acc_r` converted to `f32` (round
//! to nearest even, exact below `2^24`), then one multiplication. Ternary
//! weights use `s_r = s` for every row.
//!
//! **`f32`-activation products** ([`matvec_i8_f32`], [`matvec_t2_f32`]):
//! `y_r = s_r * S_r` (one multiplication) where `S_r` is the sum of the
//! terms `p_i = (Wq_ri as f32) * x_i` (each product rounded to `f32`, never
//! fused with the addition; for ternary codes, `-x_i`, `x_i` or a zero)
//! in this order, with `L = 16` lanes and
//! `F = in - in % 16`:
//!
//! 1. lane `j` (`0 <= j < 16`) starts at `+0.0` and adds `p_j, p_{16+j},
//!    p_{32+j}, ...` for every index below `F`, one `f32` addition each, in
//!    increasing order;
//! 2. the lanes are reduced by halving: `h_j = l_j + l_{j+8}` (`j < 8`), then
//!    `q_j = h_j + h_{j+4}` (`j < 4`), then `t_j = q_j + q_{j+2}` (`j < 2`),
//!    then `T = t_0 + t_1`;
//! 3. the tail `U` starts at `+0.0` and adds `p_F, p_{F+1}, ..., p_{in-1}`
//!    in order;
//! 4. `S_r = T + U`.
//!
//! This is the order a 16-lane vector loop computes (the halving is the
//! natural reduction of one 512-bit, two 256-bit or four 128-bit registers),
//! and the portable code is written in it, so every build of it (plain, or
//! compiled for AVX2 or AVX-512 by the run-time paths) gives the same bits:
//! Rust never reassociates or contracts floating-point operations. The
//! ternary kernel [`matvec_t2_f32`] decodes the codes and forms the same
//! terms, so it equals [`matvec_i8_f32`] on the unpacked codes with every
//! `s_r = s`, bit for bit.
//!
//! **Ternary packing** ([`pack_ternary`]): 4 codes per byte, row-major, each
//! row padded to `ceil(in / 4)` bytes (so row `r` starts at byte
//! `r * ceil(in / 4)`). Code `4b + j` of a row is in bits `2j .. 2j + 1` of
//! the row's byte `b` (the first code in the low bits), with the 2-bit
//! values `0b00 = 0`, `0b01 = +1`, `0b10 = -1`; `0b11` is invalid, and the
//! padding codes after the last column are `0b00`. [`check_ternary`]
//! validates packed bytes; the kernels never read the padding and read an
//! invalid `0b11` as 0 (all paths alike).
//!
//! Codes must lie in `-127..=127` (`-1..=1` for ternary), as the quantizers
//! produce them: a `-128` in the integer kernels' operands gives
//! unspecified (but memory-safe) results, since the SIMD paths negate codes
//! in 8 bits.
//!
//! # Paths
//!
//! The kernels exist in several builds ([`QuantPath`]): [`QuantPath::Portable`]
//! (plain Rust, always correct, vectorised by the compiler for the build's
//! target features); on x86-64 [`QuantPath::Avx2`] (`vpsignb` +
//! `vpmaddubsw` + `vpmaddwd` for int8 x int8, `vpshufb` decoding and
//! `vpsadbw` sums for ternary x int8) and [`QuantPath::Avx512Vnni`]
//! (`vpdpbusd` for int8 x int8, the ternary decoding with mask registers);
//! on aarch64 [`QuantPath::Neon`] (`smull` + `smlal2` + `sadalp` for int8 x
//! int8). The `f32`-activation kernels on the x86 paths are the portable
//! code compiled with those target features (same order, so the same bits).
//! [`quantize_act`] has an AVX-512 body on [`QuantPath::Avx512Vnni`] (the
//! same operations per element, 16 lanes at a time).
//!
//! **Tiled `int8` codes** ([`tile_int8`], [`I8Tile`],
//! [`matvec_i8_i8_tiled`]): a serving copy of an `int8` matrix in tiles of
//! 16 rows by 4 inputs, each code offset by 128, the layout `vpdpbusd`
//! reads with no horizontal sums: the same exact sums and scaling as
//! [`matvec_i8_i8`], so the same bits, about twice as fast on AVX-512 VNNI
//! ([`tiles_pay`]); docs/quant.md has the derivation.
//!
//! Which one runs is [`path`]: on x86-64 with `std`, chosen once from the
//! CPU (`is_x86_feature_detected!`) at the first call and cached in an
//! atomic, and the environment variable `NL_QUANT` (`portable`, `avx2`,
//! `avx512vnni`), read then, can force a lower supported path; without
//! `std` it follows the build's target features; on aarch64 with NEON it is
//! [`QuantPath::Neon`]; elsewhere [`QuantPath::Portable`]. The `_with`
//! variants of the kernels run a given path (tests, benchmarks).

// Index loops are kept where they read like the formulas.
#![allow(clippy::needless_range_loop)]

#[cfg(all(feature = "std", target_arch = "x86_64"))]
use core::sync::atomic::{AtomicU8, Ordering};

use crate::Scalar;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;

/// How a weight tensor is stored for the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightQuant {
    /// Plain `f32` (or the training scalar): no quantization.
    F32,
    /// Per-row absmax `int8` codes with one `f32` scale per output row.
    Int8,
    /// Per-tensor absmean ternary codes `{-1, 0, +1}` with one scale, packed 4 per byte.
    Ternary,
}

/// How the input vector of a quantized product is fed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActQuant {
    /// Plain `f32` activations.
    F32,
    /// Per-vector absmax `int8` codes with one scale.
    Int8,
}

/// The largest code magnitude of `int8` weights and activations.
pub const INT8_MAX_CODE: i32 = 127;

/// The floor of the absmax before the division by 127 (and the additive
/// constant of the ternary scale): `1e-8`, rounded to the scalar type.
pub const SCALE_EPS: f64 = 1e-8;

/// The largest `in` the integer kernels accept: `127 * 127 * MAX_IN < 2^31`,
/// so the exact `i32` accumulation cannot overflow.
pub const MAX_IN: usize = (i32::MAX / (127 * 127)) as usize;

/// An error of the ternary packing functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// A code given to [`pack_ternary`] is not -1, 0 or +1.
    NotTernary {
        /// Its index in the codes.
        index: usize,
        /// The value found.
        value: i8,
    },
    /// A packed byte holds the invalid code `0b11`.
    InvalidCode {
        /// The row.
        row: usize,
        /// The column (code index within the row).
        col: usize,
    },
    /// A padding code (after the last column of a row) is not `0b00`.
    NonZeroPadding {
        /// The row.
        row: usize,
    },
}

impl core::fmt::Display for QuantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            QuantError::NotTernary { index, value } => {
                write!(f, "ternary code {index} is {value}, not -1, 0 or +1")
            }
            QuantError::InvalidCode { row, col } => {
                write!(f, "packed ternary row {row}, column {col} holds the invalid code 0b11")
            }
            QuantError::NonZeroPadding { row } => write!(f, "packed ternary row {row} has non-zero padding"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for QuantError {}

// ---------------------------------------------------------------------------
// Quantizers.

/// `max_i |v_i|` (NaN entries are skipped; `+0.0` for an empty slice).
/// A maximum does not depend on the order, so it runs in 16 lanes (which
/// vectorise) and combines them.
#[inline(always)]
fn absmax<S: Scalar>(v: &[S]) -> S {
    #[inline(always)]
    fn upd<S: Scalar>(m: S, x: S) -> S {
        let a = x.abs();
        if a > m {
            a
        } else {
            m
        }
    }
    let mut lanes = [S::ZERO; L];
    let mut chunks = v.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            lanes[j] = upd(lanes[j], c[j]);
        }
    }
    // The lanes are combined as a tree (halves, then quarters, ...): a left
    // fold was a chain of 16 dependent maxima through memory, the most
    // expensive part of quantizing a 64-vector. The lanes hold no NaN and
    // no `-0.0` (absolute values, from `+0.0`), so every order gives the
    // same maximum.
    let mut w = L / 2;
    while w > 0 {
        for j in 0..w {
            lanes[j] = upd(lanes[j], lanes[j + w]);
        }
        w /= 2;
    }
    let mut m = lanes[0];
    for &x in chunks.remainder() {
        m = upd(m, x);
    }
    m
}

/// `max(m, 1e-8) / 127` in `S` (a NaN `m` gives `1e-8 / 127`).
#[inline]
pub(crate) fn absmax_scale<S: Scalar>(m: S) -> S {
    let eps = S::from_f64(SCALE_EPS);
    let m = if m > eps { m } else { eps };
    m / S::from_f64(127.0)
}

/// `clamp(round(v / s), -lim, lim)` with halves away from zero, a NaN quotient giving 0.
///
/// Computed without a call, so loops over it vectorise: the quotient is
/// widened to `f64` (exact) and clamped to `[-lim - 1, lim + 1]` (which
/// changes no result of the final clamp), then `t = trunc(c)` (the
/// conversion to `i32`) and the fraction `c - t` (exact: `|c| <= 128`) decide
/// the rounding: `t + 1` if the fraction is at least `+0.5`, `t - 1` if at
/// most `-0.5`. That is exactly `libm::round` (the tests compare them); a
/// NaN stays NaN through the clamp and converts to 0.
#[inline(always)]
fn quantize_value<S: Scalar>(v: S, s: S, lim: i32) -> i32 {
    let q = (v / s).to_f64();
    let bound = f64::from(lim) + 1.0;
    let c = q.clamp(-bound, bound);
    let t = c as i32;
    let frac = c - f64::from(t);
    let r = t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5);
    r.clamp(-lim, lim)
}

/// The `int8` scale of one weight row (or activation vector):
/// `max(max_i |row_i|, 1e-8) / 127` in `S`.
pub fn int8_row_scale<S: Scalar>(row: &[S]) -> S {
    absmax_scale(absmax(row))
}

/// Quantizes an `[out, inp]` weight to per-row `int8`: `scales[r]` is
/// [`int8_row_scale`] of row `r` and `q[r * inp + i] = clamp(round(w / scales[r]), -127, 127)`.
///
/// # Panics
/// If `w.len()` or `q.len()` is not `out * inp`, or `scales.len() != out`.
pub fn quantize_int8(w: &[f32], out: usize, inp: usize, q: &mut [i8], scales: &mut [f32]) {
    assert_matrix_len("quantize_int8: w", w.len(), out, inp);
    assert_matrix_len("quantize_int8: q", q.len(), out, inp);
    assert_eq!(scales.len(), out, "quantize_int8: scales has {} entries, not out = {out}", scales.len());
    if inp == 0 {
        scales.fill(absmax_scale(0.0));
        return;
    }
    for ((row, qrow), s) in w.chunks_exact(inp).zip(q.chunks_exact_mut(inp)).zip(scales.iter_mut()) {
        *s = int8_row_scale(row);
        for (qi, &wi) in qrow.iter_mut().zip(row) {
            *qi = quantize_value(wi, *s, INT8_MAX_CODE) as i8;
        }
    }
}

/// The ternary (absmean) scale of a whole tensor: `mean_i |w_i| + 1e-8`,
/// summed in `f64` in index order, divided by the count (1 if empty), plus
/// `1e-8` in `f64`, then rounded once to `S`.
pub fn ternary_scale<S: Scalar>(w: &[S]) -> S {
    let mut sum = 0.0f64;
    for &x in w {
        sum += x.abs().to_f64();
    }
    let mean = sum / w.len().max(1) as f64;
    S::from_f64(mean + SCALE_EPS)
}

/// Ternary codes of `w` for the scale `scale` (normally [`ternary_scale`] of
/// `w`): `q_i = clamp(round(w_i / scale), -1, 1)`.
///
/// # Panics
/// If `q.len() != w.len()`.
pub fn quantize_ternary(w: &[f32], scale: f32, q: &mut [i8]) {
    assert_eq!(q.len(), w.len(), "quantize_ternary: q has {} entries, w {}", q.len(), w.len());
    for (qi, &wi) in q.iter_mut().zip(w) {
        *qi = quantize_value(wi, scale, 1) as i8;
    }
}

/// Quantizes one activation vector to `int8`: returns its scale
/// `a = max(max_i |x_i|, 1e-8) / 127` and writes `xq_i = clamp(round(x_i / a), -127, 127)`.
///
/// # Panics
/// If `xq.len() != x.len()`.
pub fn quantize_act(x: &[f32], xq: &mut [i8]) -> f32 {
    quantize_act_with(path(), x, xq)
}

/// [`quantize_act`] on a given path: [`QuantPath::Avx512Vnni`] has its own
/// (16 lanes, the same operations), every other path runs the portable body.
///
/// # Panics
/// As [`quantize_act`], and if the path is not [supported](QuantPath::is_supported).
pub fn quantize_act_with(path: QuantPath, x: &[f32], xq: &mut [i8]) -> f32 {
    assert_eq!(xq.len(), x.len(), "quantize_act: xq has {} entries, x {}", xq.len(), x.len());
    assert!(path.is_supported(), "quantize_act: the {} path is not supported on this CPU", path.name());
    #[cfg(target_arch = "x86_64")]
    if path == QuantPath::Avx512Vnni {
        // SAFETY: the path is supported (asserted above), so the CPU has
        // AVX-512 F and BW; the lengths are equal (asserted above).
        return unsafe { x86::quantize_act_avx512(x, xq) };
    }
    quantize_act_portable(x, xq)
}

/// The portable body of [`quantize_act`].
fn quantize_act_portable(x: &[f32], xq: &mut [i8]) -> f32 {
    let a = int8_row_scale(x);
    for (qi, &xi) in xq.iter_mut().zip(x) {
        *qi = quantize_value_f32(xi, a);
    }
    a
}

/// [`quantize_value`] for `f32` and the limit 127, in `f32` (8 or 16 lanes
/// per vector instead of 4): the same steps, exact in `f32` as well
/// (`|c| <= 128`, so the fraction `c - t` is exact). A NaN quotient is
/// replaced by 0 before the conversion (what `as i32` would give it), so
/// the conversion is a plain truncation (`cvttps2dq`), which vectorises,
/// where the saturating `as i32` does not.
#[inline(always)]
fn quantize_value_f32(v: f32, s: f32) -> i8 {
    let c = (v / s).clamp(-128.0, 128.0);
    let c = if c.is_nan() { 0.0 } else { c };
    // SAFETY: `c` is not NaN and `-128 <= c <= 128`, so its truncation is
    // representable in `i32`: what `to_int_unchecked` requires.
    let t: i32 = unsafe { c.to_int_unchecked() };
    let frac = c - t as f32;
    let r = t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5);
    r.clamp(-INT8_MAX_CODE, INT8_MAX_CODE) as i8
}

// ---------------------------------------------------------------------------
// Fake quantization (quantization-aware training).

/// Fake `int8` quantization of an `[out, inp]` weight for training: `wd` is
/// the dequantized weight `s_r * Wq_ri` in `S` (scale and codes as in
/// [`quantize_int8`], computed in `S`; for `f32` exactly `scales[r] * (q as f32)`).
///
/// # Panics
/// If `w.len()` or `wd.len()` is not `out * inp`.
pub fn fake_quant_int8<S: Scalar>(w: &[S], out: usize, inp: usize, wd: &mut [S]) {
    assert_matrix_len("fake_quant_int8: w", w.len(), out, inp);
    assert_matrix_len("fake_quant_int8: wd", wd.len(), out, inp);
    if inp == 0 {
        return;
    }
    for (row, drow) in w.chunks_exact(inp).zip(wd.chunks_exact_mut(inp)) {
        let s = int8_row_scale(row);
        for (d, &wi) in drow.iter_mut().zip(row) {
            *d = s * S::from_f64(f64::from(quantize_value(wi, s, INT8_MAX_CODE)));
        }
    }
}

/// Fake ternary quantization of a whole tensor for training: returns the
/// scale `s` ([`ternary_scale`]) and writes `wd_i = s * clamp(round(w_i / s), -1, 1)`.
///
/// # Panics
/// If `wd.len() != w.len()`.
pub fn fake_quant_ternary<S: Scalar>(w: &[S], wd: &mut [S]) -> S {
    assert_eq!(wd.len(), w.len(), "fake_quant_ternary: wd has {} entries, w {}", wd.len(), w.len());
    let s = ternary_scale(w);
    for (d, &wi) in wd.iter_mut().zip(w) {
        *d = s * S::from_f64(f64::from(quantize_value(wi, s, 1)));
    }
    s
}

/// Fake `int8` quantization of one activation vector: returns its scale `a`
/// (as [`quantize_act`], in `S`) and writes `xd_i = a * xq_i`.
///
/// # Panics
/// If `xd.len() != x.len()`.
pub fn fake_quant_act<S: Scalar>(x: &[S], xd: &mut [S]) -> S {
    assert_eq!(xd.len(), x.len(), "fake_quant_act: xd has {} entries, x {}", xd.len(), x.len());
    let a = int8_row_scale(x);
    for (d, &xi) in xd.iter_mut().zip(x) {
        *d = a * S::from_f64(f64::from(quantize_value(xi, a, INT8_MAX_CODE)));
    }
    a
}

// ---------------------------------------------------------------------------
// Ternary packing.

/// Bytes per packed ternary row: `ceil(inp / 4)`.
pub const fn ternary_row_bytes(inp: usize) -> usize {
    inp.div_ceil(4)
}

/// The 2-bit code of a ternary value (`0b00 = 0`, `0b01 = +1`, `0b10 = -1`).
#[inline(always)]
fn code_of(v: i8) -> Option<u8> {
    match v {
        0 => Some(0b00),
        1 => Some(0b01),
        -1 => Some(0b10),
        _ => None,
    }
}

/// Packs ternary codes `q` (`[out, inp]`, values -1, 0, +1) into `packed`
/// (`out * ceil(inp / 4)` bytes, layout in the [module docs](self); padding
/// codes are `0b00`).
///
/// # Errors
/// [`QuantError::NotTernary`] for the first code outside -1..=1 (`packed`
/// is then partly written).
///
/// # Panics
/// If `q.len() != out * inp` or `packed.len() != out * ceil(inp / 4)`.
pub fn pack_ternary(q: &[i8], out: usize, inp: usize, packed: &mut [u8]) -> Result<(), QuantError> {
    let nb = ternary_row_bytes(inp);
    assert_matrix_len("pack_ternary: q", q.len(), out, inp);
    assert_matrix_len("pack_ternary: packed", packed.len(), out, nb);
    for r in 0..out {
        for b in 0..nb {
            let mut byte = 0u8;
            for j in 0..4 {
                let col = 4 * b + j;
                if col < inp {
                    let index = r * inp + col;
                    let code = code_of(q[index]).ok_or(QuantError::NotTernary { index, value: q[index] })?;
                    byte |= code << (2 * j);
                }
            }
            packed[r * nb + b] = byte;
        }
    }
    Ok(())
}

/// Checks packed ternary bytes: no `0b11` code and zero padding in every row.
///
/// # Errors
/// The first problem found, row by row.
///
/// # Panics
/// If `packed.len() != out * ceil(inp / 4)`.
pub fn check_ternary(packed: &[u8], out: usize, inp: usize) -> Result<(), QuantError> {
    let nb = ternary_row_bytes(inp);
    assert_matrix_len("check_ternary: packed", packed.len(), out, nb);
    for r in 0..out {
        for b in 0..nb {
            let byte = packed[r * nb + b];
            for j in 0..4 {
                let code = (byte >> (2 * j)) & 3;
                let col = 4 * b + j;
                if col >= inp {
                    if code != 0 {
                        return Err(QuantError::NonZeroPadding { row: r });
                    }
                } else if code == 0b11 {
                    return Err(QuantError::InvalidCode { row: r, col });
                }
            }
        }
    }
    Ok(())
}

/// Unpacks ternary bytes into codes `q` (`[out, inp]`), the inverse of [`pack_ternary`].
///
/// # Errors
/// As [`check_ternary`] (checked first; `q` is untouched on error).
///
/// # Panics
/// If `q.len() != out * inp` or `packed.len() != out * ceil(inp / 4)`.
pub fn unpack_ternary(packed: &[u8], out: usize, inp: usize, q: &mut [i8]) -> Result<(), QuantError> {
    assert_matrix_len("unpack_ternary: q", q.len(), out, inp);
    check_ternary(packed, out, inp)?;
    let nb = ternary_row_bytes(inp);
    for r in 0..out {
        for col in 0..inp {
            q[r * inp + col] = ternary_code(&packed[r * nb..(r + 1) * nb], col) as i8;
        }
    }
    Ok(())
}

/// The ternary value of code `col` of a packed row (`0b11` reads as 0).
#[inline(always)]
fn ternary_code(row: &[u8], col: usize) -> i32 {
    let c = i32::from(row[col / 4] >> (2 * (col % 4))) & 3;
    (c & 1) - (c >> 1)
}

// ---------------------------------------------------------------------------
// Paths.

/// An implementation of the kernels (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuantPath {
    /// Plain Rust, vectorised by the compiler for the build's target.
    Portable,
    /// x86-64 AVX2 intrinsics.
    Avx2,
    /// x86-64 AVX-512 F + BW + VNNI intrinsics.
    Avx512Vnni,
    /// aarch64 NEON intrinsics.
    Neon,
}

impl QuantPath {
    /// Every path, lowest first.
    pub const ALL: [QuantPath; 4] = [QuantPath::Portable, QuantPath::Avx2, QuantPath::Avx512Vnni, QuantPath::Neon];

    /// The name `NL_QUANT` takes: `portable`, `avx2`, `avx512vnni` or `neon`.
    pub fn name(self) -> &'static str {
        match self {
            QuantPath::Portable => "portable",
            QuantPath::Avx2 => "avx2",
            QuantPath::Avx512Vnni => "avx512vnni",
            QuantPath::Neon => "neon",
        }
    }

    /// Whether this path can run here: the portable path always; the x86-64
    /// ones if the CPU has their features (detected with `std`, else enabled
    /// in the build); NEON on aarch64 builds with it.
    pub fn is_supported(self) -> bool {
        match self {
            QuantPath::Portable => true,
            QuantPath::Avx2 => has_avx2(),
            QuantPath::Avx512Vnni => has_avx512vnni(),
            QuantPath::Neon => cfg!(all(target_arch = "aarch64", target_feature = "neon")),
        }
    }
}

/// Whether the CPU has AVX2 (the [`QuantPath::Avx2`] feature).
#[inline]
fn has_avx2() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    {
        cfg!(all(target_arch = "x86_64", target_feature = "avx2"))
    }
}

/// Whether the CPU has AVX-512 F, BW and VNNI (the [`QuantPath::Avx512Vnni`] features).
#[inline]
fn has_avx512vnni() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    {
        cfg!(all(
            target_arch = "x86_64",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vnni"
        ))
    }
}

/// The path the kernels take here (see the [module docs](self)). Always one
/// that [`QuantPath::is_supported`].
#[inline(always)]
pub fn path() -> QuantPath {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        match DETECTED.load(Ordering::Relaxed) {
            1 => QuantPath::Portable,
            2 => QuantPath::Avx2,
            3 => QuantPath::Avx512Vnni,
            _ => detect(),
        }
    }
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    {
        if QuantPath::Avx512Vnni.is_supported() {
            QuantPath::Avx512Vnni
        } else if QuantPath::Avx2.is_supported() {
            QuantPath::Avx2
        } else if QuantPath::Neon.is_supported() {
            QuantPath::Neon
        } else {
            QuantPath::Portable
        }
    }
}

/// The name of the path the kernels take here ([`path`]), e.g. for a benchmark's output.
pub fn kernel_name() -> &'static str {
    path().name()
}

/// The detected path, `1 + ` its index in [`QuantPath::ALL`]; 0 until detected.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
static DETECTED: AtomicU8 = AtomicU8::new(0);

/// Picks the best supported path (or a lower one `NL_QUANT` names) and caches
/// it in [`DETECTED`]. Threads racing here compute and store the same value.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[cold]
#[inline(never)]
fn detect() -> QuantPath {
    let best = QuantPath::ALL.into_iter().rev().find(|p| p.is_supported()).unwrap_or(QuantPath::Portable);
    let chosen = std::env::var("NL_QUANT")
        .ok()
        .and_then(|v| QuantPath::ALL.into_iter().find(|p| p.name() == v.trim()))
        .filter(|p| *p <= best && p.is_supported())
        .unwrap_or(best);
    let code = 1 + QuantPath::ALL.iter().position(|p| *p == chosen).unwrap_or(0);
    DETECTED.store(code as u8, Ordering::Relaxed);
    chosen
}

// ---------------------------------------------------------------------------
// Kernels: checks and dispatch.

/// Panics unless `len == rows * cols` (without overflow).
#[inline]
#[track_caller]
fn assert_matrix_len(what: &str, len: usize, rows: usize, cols: usize) {
    assert!(rows.checked_mul(cols) == Some(len), "{what} has {len} entries, not {rows} x {cols}");
}

/// The shared checks of the kernels' operands.
#[allow(clippy::too_many_arguments)]
#[inline]
#[track_caller]
fn check_operands(
    name: &str,
    path: QuantPath,
    w_len: usize,
    out: usize,
    w_cols: usize,
    x_len: usize,
    inp: usize,
    y_len: usize,
) {
    check_vectors(name, path, x_len, inp, y_len, out);
    assert_matrix_len(name, w_len, out, w_cols);
}

/// The checks of [`check_operands`] that do not depend on the weights'
/// layout: the path, the input's and the output's lengths.
#[inline]
#[track_caller]
fn check_vectors(name: &str, path: QuantPath, x_len: usize, inp: usize, y_len: usize, out: usize) {
    assert!(path.is_supported(), "{name}: the {} path is not supported here", path.name());
    assert_eq!(x_len, inp, "{name}: the input has {x_len} entries, not in = {inp}");
    assert_eq!(y_len, out, "{name}: y has {y_len} entries, not out = {out}");
}

/// The integer kernels' final scaling: `y_r = (s_r * a) * (acc_r as f32)`.
#[inline(always)]
fn finish(s: f32, a: f32, acc: i32) -> f32 {
    (s * a) * acc as f32
}

/// `y = W x` for `int8` weights (`wq` `[out, inp]`, per-row `scales`) and an
/// `int8` input (`xq`, scale `a`): `y_r = (scales[r] * a) * sum_i wq_ri xq_i`,
/// the sum exact in `i32` ([module docs](self)). Runs [`path`].
///
/// # Panics
/// If a length does not match, or `inp > MAX_IN`.
pub fn matvec_i8_i8(wq: &[i8], scales: &[f32], out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    matvec_i8_i8_with(path(), wq, scales, out, inp, xq, a, y)
}

/// [`matvec_i8_i8`] on a given path.
///
/// # Panics
/// As [`matvec_i8_i8`], and if the path is not [supported](QuantPath::is_supported).
#[allow(clippy::too_many_arguments)]
pub fn matvec_i8_i8_with(
    path: QuantPath,
    wq: &[i8],
    scales: &[f32],
    out: usize,
    inp: usize,
    xq: &[i8],
    a: f32,
    y: &mut [f32],
) {
    check_operands("matvec_i8_i8", path, wq.len(), out, inp, xq.len(), inp, y.len());
    assert_eq!(scales.len(), out, "matvec_i8_i8: scales has {} entries, not out = {out}", scales.len());
    assert!(inp <= MAX_IN, "matvec_i8_i8: in = {inp} is above MAX_IN = {MAX_IN}");
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is supported (asserted above), so the CPU has
        // AVX2; the lengths are those the function requires (asserted above).
        QuantPath::Avx2 => unsafe { x86::i8_i8_avx2(wq, scales, out, inp, xq, a, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, the CPU has AVX-512 F, BW and VNNI.
        QuantPath::Avx512Vnni => unsafe { x86::i8_i8_avx512vnni(wq, scales, out, inp, xq, a, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above, the build has NEON; lengths asserted above.
        QuantPath::Neon => unsafe { aarch64::i8_i8_neon(wq, scales, out, inp, xq, a, y) },
        _ => i8_i8_portable(wq, scales, out, inp, xq, a, y),
    }
}

// ---------------------------------------------------------------------------
// The tiled int8 layout (serving with VNNI).

/// Rows of an [`I8Tile`].
pub const TILE_ROWS: usize = 16;
/// Inputs (columns) of an [`I8Tile`].
pub const TILE_COLS: usize = 4;

/// 16 rows by 4 inputs of an `int8` weight matrix in the tiled serving
/// layout ([`tile_int8`]): byte `4k + j` is `Wq[r0 + k][c0 + j] + 128` as a
/// `u8` (0 for a row or column past the matrix: a code of 0), so one tile
/// is one 512-bit register whose lane `k` holds row `r0 + k`'s four codes,
/// the unsigned operand of `vpdpbusd`. With this layout an `int8 x int8`
/// product reads each weight once with no horizontal sums: the row-major
/// kernel spends more instructions reducing 16 rows' lanes and fixing the
/// codes' signs than multiplying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct I8Tile(pub [u8; TILE_ROWS * TILE_COLS]);

// SAFETY: a `u8` array: all-zero bytes are a valid value.
unsafe impl crate::Zeroable for I8Tile {}

/// Tiles of an `[out, inp]` matrix: `ceil(out / 16) * ceil(inp / 4)`.
pub const fn tiles_len(out: usize, inp: usize) -> usize {
    out.div_ceil(TILE_ROWS) * inp.div_ceil(TILE_COLS)
}

/// Writes the `int8` codes `wq` (`[out, inp]`, row-major, codes in
/// `-127..=127`) in the tiled layout: tile `(R, C)` (rows `16R..16R + 16`,
/// inputs `4C..4C + 4`) is `tiles[R * ceil(inp / 4) + C]`, laid out as
/// [`I8Tile`] says.
///
/// # Panics
/// If `wq.len() != out * inp` or `tiles.len() != tiles_len(out, inp)`.
pub fn tile_int8(wq: &[i8], out: usize, inp: usize, tiles: &mut [I8Tile]) {
    assert_matrix_len("tile_int8: wq", wq.len(), out, inp);
    assert_eq!(
        tiles.len(),
        tiles_len(out, inp),
        "tile_int8: tiles has {} entries, not tiles_len({out}, {inp})",
        tiles.len()
    );
    let cb = inp.div_ceil(TILE_COLS);
    for (t, tile) in tiles.iter_mut().enumerate() {
        let (r0, c0) = (t / cb * TILE_ROWS, t % cb * TILE_COLS);
        for (b, byte) in tile.0.iter_mut().enumerate() {
            let (r, c) = (r0 + b / TILE_COLS, c0 + b % TILE_COLS);
            let code = if r < out && c < inp { wq[r * inp + c] } else { 0 };
            *byte = (i16::from(code) + 128) as u8;
        }
    }
}

/// Whether the tiled layout is the fast one on [`path`]: it is read by
/// `vpdpbusd`, so on [`QuantPath::Avx512Vnni`]; on the other paths
/// [`matvec_i8_i8`] on the row-major codes is at least as fast.
pub fn tiles_pay() -> bool {
    path() == QuantPath::Avx512Vnni
}

/// [`matvec_i8_i8`] on the tiled codes ([`tile_int8`] of `wq`): the same
/// exact sums and scaling, so the same bits. Runs [`path`].
///
/// # Panics
/// If a length does not match, or `inp > MAX_IN`.
pub fn matvec_i8_i8_tiled(tiles: &[I8Tile], scales: &[f32], out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    matvec_i8_i8_tiled_with(path(), tiles, scales, out, inp, xq, a, y)
}

/// [`matvec_i8_i8_tiled`] on a given path: [`QuantPath::Avx512Vnni`] has
/// its own kernel; every other path runs the portable one.
///
/// # Panics
/// As [`matvec_i8_i8_tiled`], and if the path is not [supported](QuantPath::is_supported).
#[allow(clippy::too_many_arguments)]
pub fn matvec_i8_i8_tiled_with(
    path: QuantPath,
    tiles: &[I8Tile],
    scales: &[f32],
    out: usize,
    inp: usize,
    xq: &[i8],
    a: f32,
    y: &mut [f32],
) {
    let name = "matvec_i8_i8_tiled";
    assert_eq!(
        tiles.len(),
        tiles_len(out, inp),
        "{name}: tiles has {} entries, not tiles_len({out}, {inp})",
        tiles.len()
    );
    check_vectors(name, path, xq.len(), inp, y.len(), out);
    assert_eq!(scales.len(), out, "{name}: scales has {} entries, not out = {out}", scales.len());
    assert!(inp <= MAX_IN, "{name}: in = {inp} is above MAX_IN = {MAX_IN}");
    #[cfg(target_arch = "x86_64")]
    if path == QuantPath::Avx512Vnni {
        // SAFETY: the path is supported (asserted above), so the CPU has
        // AVX-512 F, BW and VNNI; the lengths are those the function
        // requires (asserted above).
        return unsafe { x86::i8_i8_tiled_vnni(tiles, scales, out, inp, xq, a, y) };
    }
    i8_i8_tiled_portable(tiles, scales, out, inp, xq, a, y)
}

/// The portable body of [`matvec_i8_i8_tiled`]: each row's sum read back
/// from the tiles, in `i32`.
fn i8_i8_tiled_portable(tiles: &[I8Tile], scales: &[f32], out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    let cb = inp.div_ceil(TILE_COLS);
    for r in 0..out {
        let row_tiles = &tiles[r / TILE_ROWS * cb..(r / TILE_ROWS + 1) * cb];
        let lane = (r % TILE_ROWS) * TILE_COLS;
        let mut acc = 0i32;
        for (c, &x) in xq.iter().enumerate() {
            let w = i32::from(row_tiles[c / TILE_COLS].0[lane + c % TILE_COLS]) - 128;
            acc += w * i32::from(x);
        }
        y[r] = finish(scales[r], a, acc);
    }
}

/// `y = W x` for ternary weights (`packed` as [`pack_ternary`] writes it,
/// one `scale`) and an `int8` input (`xq`, scale `a`):
/// `y_r = (scale * a) * sum_i Wq_ri xq_i`, the sum exact in `i32` and
/// computed with additions and subtractions only. Runs [`path`].
///
/// # Panics
/// If a length does not match, or `inp > MAX_IN`.
pub fn matvec_t2_i8(packed: &[u8], scale: f32, out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    matvec_t2_i8_with(path(), packed, scale, out, inp, xq, a, y)
}

/// [`matvec_t2_i8`] on a given path.
///
/// # Panics
/// As [`matvec_t2_i8`], and if the path is not [supported](QuantPath::is_supported).
#[allow(clippy::too_many_arguments)]
pub fn matvec_t2_i8_with(
    path: QuantPath,
    packed: &[u8],
    scale: f32,
    out: usize,
    inp: usize,
    xq: &[i8],
    a: f32,
    y: &mut [f32],
) {
    check_operands("matvec_t2_i8", path, packed.len(), out, ternary_row_bytes(inp), xq.len(), inp, y.len());
    assert!(inp <= MAX_IN, "matvec_t2_i8: in = {inp} is above MAX_IN = {MAX_IN}");
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is supported (asserted above), so the CPU has
        // AVX2; the lengths are those the function requires (asserted above).
        QuantPath::Avx2 => unsafe { x86::t2_i8_avx2(packed, scale, out, inp, xq, a, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, the CPU has AVX-512 F, BW and VNNI.
        QuantPath::Avx512Vnni => unsafe { x86::t2_i8_avx512(packed, scale, out, inp, xq, a, y) },
        _ => t2_i8_portable(packed, scale, out, inp, xq, a, y),
    }
}

/// `y = W x` for `int8` weights (`wq` `[out, inp]`, per-row `scales`) and an
/// `f32` input: `y_r = scales[r] * S_r`, `S_r` the sum of
/// `(wq_ri as f32) * x_i` in the 16-lane order of the [module docs](self).
/// Runs [`path`].
///
/// # Panics
/// If a length does not match.
pub fn matvec_i8_f32(wq: &[i8], scales: &[f32], out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    matvec_i8_f32_with(path(), wq, scales, out, inp, x, y)
}

/// [`matvec_i8_f32`] on a given path.
///
/// # Panics
/// As [`matvec_i8_f32`], and if the path is not [supported](QuantPath::is_supported).
pub fn matvec_i8_f32_with(
    path: QuantPath,
    wq: &[i8],
    scales: &[f32],
    out: usize,
    inp: usize,
    x: &[f32],
    y: &mut [f32],
) {
    check_operands("matvec_i8_f32", path, wq.len(), out, inp, x.len(), inp, y.len());
    assert_eq!(scales.len(), out, "matvec_i8_f32: scales has {} entries, not out = {out}", scales.len());
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is supported (asserted above), so the CPU has AVX2.
        QuantPath::Avx2 => unsafe { x86::i8_f32_avx2(wq, scales, out, inp, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, the CPU has AVX-512 F and BW.
        QuantPath::Avx512Vnni => unsafe { x86::i8_f32_avx512(wq, scales, out, inp, x, y) },
        _ => i8_f32_portable(wq, scales, out, inp, x, y),
    }
}

/// `y = W x` for ternary weights (`packed`, one `scale`) and an `f32` input:
/// `y_r = scale * S_r`, `S_r` the sum of the terms `(Wq_ri as f32) * x_i`
/// in the 16-lane order of the [module docs](self).
/// Runs [`path`].
///
/// # Panics
/// If a length does not match.
pub fn matvec_t2_f32(packed: &[u8], scale: f32, out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    matvec_t2_f32_with(path(), packed, scale, out, inp, x, y)
}

/// [`matvec_t2_f32`] on a given path.
///
/// # Panics
/// As [`matvec_t2_f32`], and if the path is not [supported](QuantPath::is_supported).
pub fn matvec_t2_f32_with(
    path: QuantPath,
    packed: &[u8],
    scale: f32,
    out: usize,
    inp: usize,
    x: &[f32],
    y: &mut [f32],
) {
    check_operands("matvec_t2_f32", path, packed.len(), out, ternary_row_bytes(inp), x.len(), inp, y.len());
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is supported (asserted above), so the CPU has AVX2.
        QuantPath::Avx2 => unsafe { x86::t2_f32_avx2(packed, scale, out, inp, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, the CPU has AVX-512 F and BW.
        QuantPath::Avx512Vnni => unsafe { x86::t2_f32_avx512(packed, scale, out, inp, x, y) },
        _ => t2_f32_portable(packed, scale, out, inp, x, y),
    }
}

// ---------------------------------------------------------------------------
// Portable bodies (`#[inline(always)]`: the x86 paths compile the `f32` ones
// with their target features). Callers have checked the lengths.

/// Lanes of the `f32` summation order.
const L: usize = 16;

/// The halving reduction of the 16 lanes ([module docs](self), step 2).
#[inline(always)]
fn tree16(l: [f32; L]) -> f32 {
    let mut h = [0.0f32; 8];
    for j in 0..8 {
        h[j] = l[j] + l[j + 8];
    }
    let mut q = [0.0f32; 4];
    for j in 0..4 {
        q[j] = h[j] + h[j + 4];
    }
    let t0 = q[0] + q[2];
    let t1 = q[1] + q[3];
    t0 + t1
}

/// Exact `i32` dot product of two `int8` code vectors.
#[inline(always)]
fn dot_i8(w: &[i8], x: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (&wi, &xi) in w.iter().zip(x) {
        acc += i32::from(wi) * i32::from(xi);
    }
    acc
}

/// Portable [`matvec_i8_i8`].
pub(crate) fn i8_i8_portable(wq: &[i8], scales: &[f32], out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    for r in 0..out {
        y[r] = finish(scales[r], a, dot_i8(&wq[r * inp..(r + 1) * inp], xq));
    }
}

/// Exact ternary dot product of codes `col0..inp` of a packed row with `xq`
/// (additions, subtractions and masks only; `col0` a multiple of 4).
#[inline(always)]
fn dot_t2_i8(row: &[u8], xq: &[i8], col0: usize, inp: usize) -> i32 {
    /// `x * code` for the 2-bit `c`: `-(c & 1)` is all ones for +1 (and the
    /// invalid 0b11), `-(c >> 1)` for -1 (and 0b11, which so reads as
    /// `x - x = 0`).
    #[inline(always)]
    fn term(c: i32, x: i32) -> i32 {
        (x & -(c & 1)) - (x & -(c >> 1))
    }
    let whole = inp / 4 * 4;
    let mut acc = 0i32;
    if col0 < whole {
        for (&b, xs) in row[col0 / 4..whole / 4].iter().zip(xq[col0..whole].chunks_exact(4)) {
            for j in 0..4 {
                acc += term(i32::from(b >> (2 * j)) & 3, i32::from(xs[j]));
            }
        }
    }
    for col in whole.max(col0)..inp {
        acc += term(i32::from(row[col / 4] >> (2 * (col % 4))) & 3, i32::from(xq[col]));
    }
    acc
}

/// Portable [`matvec_t2_i8`].
pub(crate) fn t2_i8_portable(packed: &[u8], scale: f32, out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    let nb = ternary_row_bytes(inp);
    for r in 0..out {
        y[r] = finish(scale, a, dot_t2_i8(&packed[r * nb..(r + 1) * nb], xq, 0, inp));
    }
}

/// The ternary codes of every byte value, in column order (`0b11` reads as 0).
static T2_DECODE: [[i8; 4]; 256] = {
    let mut t = [[0i8; 4]; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 4 {
            let c = (b >> (2 * j)) & 3;
            t[b][j] = ((c & 1) as i8) - ((c >> 1) as i8);
            j += 1;
        }
        b += 1;
    }
    t
};

/// The `f32` kernels' row loop: `R` rows from `r0` at a time share the
/// loads of `x`. `chunk(r, c, xc)` returns the 16 product terms of row `r`,
/// columns `c..c + 16` (`xc` those inputs), `term(r, i, xi)` one term of the
/// tail, `scale(r)` the row's scale. Sums in the documented 16-lane order.
#[inline(always)]
fn f32_rows<const R: usize>(
    r0: usize,
    inp: usize,
    x: &[f32],
    chunk: &impl Fn(usize, usize, &[f32; L]) -> [f32; L],
    term: &impl Fn(usize, usize, f32) -> f32,
    scale: &impl Fn(usize) -> f32,
    y: &mut [f32],
) {
    let full = inp / L * L;
    let mut acc = [[0.0f32; L]; R];
    let mut c = 0;
    while c < full {
        let xc: &[f32; L] = x[c..c + L].try_into().expect("16 inputs");
        for k in 0..R {
            let t = chunk(r0 + k, c, xc);
            for j in 0..L {
                acc[k][j] += t[j];
            }
        }
        c += L;
    }
    for k in 0..R {
        let mut tail = 0.0f32;
        for i in full..inp {
            tail += term(r0 + k, i, x[i]);
        }
        y[r0 + k] = scale(r0 + k) * (tree16(acc[k]) + tail);
    }
}

/// All rows of an `f32` kernel, 4 at a time, then one at a time.
#[inline(always)]
fn f32_matvec(
    out: usize,
    inp: usize,
    x: &[f32],
    chunk: impl Fn(usize, usize, &[f32; L]) -> [f32; L],
    term: impl Fn(usize, usize, f32) -> f32,
    scale: impl Fn(usize) -> f32,
    y: &mut [f32],
) {
    let mut r = 0;
    while r + 4 <= out {
        f32_rows::<4>(r, inp, x, &chunk, &term, &scale, y);
        r += 4;
    }
    while r < out {
        f32_rows::<1>(r, inp, x, &chunk, &term, &scale, y);
        r += 1;
    }
}

/// Portable [`matvec_i8_f32`] (also the body of its x86 paths).
#[inline(always)]
pub(crate) fn i8_f32_portable(wq: &[i8], scales: &[f32], out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    f32_matvec(
        out,
        inp,
        x,
        |r, c, xc| {
            let w: &[i8; L] = wq[r * inp + c..r * inp + c + L].try_into().expect("16 codes");
            core::array::from_fn(|j| f32::from(w[j]) * xc[j])
        },
        |r, i, xi| f32::from(wq[r * inp + i]) * xi,
        |r| scales[r],
        y,
    )
}

/// Portable [`matvec_t2_f32`] (also the body of its x86 paths): the
/// codes decoded by table, then [`matvec_i8_f32`]'s terms and order.
#[inline(always)]
pub(crate) fn t2_f32_portable(packed: &[u8], scale: f32, out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    let nb = ternary_row_bytes(inp);
    f32_matvec(
        out,
        inp,
        x,
        |r, c, xc| {
            let b: &[u8; 4] = packed[r * nb + c / 4..r * nb + c / 4 + 4].try_into().expect("4 bytes");
            let codes: [i8; L] = core::array::from_fn(|j| T2_DECODE[usize::from(b[j / 4])][j % 4]);
            core::array::from_fn(|j| f32::from(codes[j]) * xc[j])
        },
        |r, i, xi| ternary_code(&packed[r * nb..(r + 1) * nb], i) as f32 * xi,
        |_| scale,
        y,
    )
}

#[cfg(test)]
mod tests;
