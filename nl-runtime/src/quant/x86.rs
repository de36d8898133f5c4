//! The x86-64 paths of [`super`]: `int8 x int8` and `ternary x int8`
//! products with AVX2 and with AVX-512 (BW, VNNI), and the `f32`-activation
//! kernels' portable bodies compiled with those target features.
//!
//! Every entry point is a `#[target_feature]` function; everything it calls
//! here is `#[inline(always)]`, so it is compiled with the entry point's
//! features. The integer sums are exact (`i32`/`i64` lanes that cannot
//! overflow for `in <= MAX_IN`), so their grouping by lanes does not matter:
//! every path gives the portable path's bits.
//!
//! # Safety contract of the entry points
//!
//! The CPU has the features the entry point enables, and the operands have
//! the lengths the public kernels assert: `wq`/`packed` hold `out` rows of
//! `inp` codes (`ceil(inp / 4)` bytes for packed rows), `xq`/`x` hold `inp`
//! values, `scales` and `y` hold `out`, and `inp <= MAX_IN`. All loads
//! below are proved in bounds from these lengths.

use core::arch::x86_64::*;

use super::{absmax_scale, dot_i8, dot_t2_i8, finish, ternary_row_bytes, I8Tile, INT8_MAX_CODE, TILE_COLS, TILE_ROWS};

// ---------------------------------------------------------------------------
// Activation quantization.

/// [`quantize_act`](super::quantize_act) with AVX-512: 16 lanes per step,
/// the last step masked. The same operations as the portable
/// `quantize_value_f32` on each element, so the same codes: the absmax over
/// lanes (a maximum of non-negative, non-NaN values does not depend on the
/// order; a NaN element is skipped, as `absmax` skips it: `vmaxps` returns
/// its second operand, the running maximum, when the first is NaN), the
/// quotient `x / a` rounded once (`vdivps`), a NaN quotient replaced by 0,
/// the clamp to `[-128, 128]`, truncation, the exact fraction, the
/// half-away-from-zero step and the clamp to `[-127, 127]`.
///
/// # Safety
/// The CPU has AVX-512 F and BW; `xq.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_act_avx512(x: &[f32], xq: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), xq.len());
    let n = x.len();
    let mask = |i: usize| -> __mmask16 {
        let left = n - i;
        if left >= 16 {
            !0
        } else {
            (1u16 << left) - 1
        }
    };
    // SAFETY (of every load and store below): at offset `i < n`, `min(16, n - i)`
    // lanes of `x` (read) and of `xq` (written, equal length) are in bounds;
    // the other lanes are masked off (neither read, written nor faulted).
    unsafe {
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        let mut m = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let v = _mm512_maskz_loadu_ps(mask(i), x.as_ptr().add(i));
            let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
            m = _mm512_max_ps(a, m);
            i += 16;
        }
        let a = absmax_scale(_mm512_reduce_max_ps(m));
        let av = _mm512_set1_ps(a);
        let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(128.0));
        let (half, neg_half) = (_mm512_set1_ps(0.5), _mm512_set1_ps(-0.5));
        let one = _mm512_set1_epi32(1);
        let (qmin, qmax) = (_mm512_set1_epi32(-INT8_MAX_CODE), _mm512_set1_epi32(INT8_MAX_CODE));
        let mut i = 0;
        while i < n {
            let k = mask(i);
            let v = _mm512_maskz_loadu_ps(k, x.as_ptr().add(i));
            let q = _mm512_div_ps(v, av);
            // NaN -> 0, then clamp (no NaN left, so max/min are plain).
            let q = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(q, q), q);
            let c = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
            let t = _mm512_cvttps_epi32(c);
            let frac = _mm512_sub_ps(c, _mm512_cvtepi32_ps(t));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, half);
            let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(frac, neg_half);
            let r = _mm512_mask_add_epi32(t, up, t, one);
            let r = _mm512_mask_sub_epi32(r, down, r, one);
            let r = _mm512_min_epi32(_mm512_max_epi32(r, qmin), qmax);
            _mm512_mask_cvtepi32_storeu_epi8(xq.as_mut_ptr().add(i).cast(), k, r);
            i += 16;
        }
        a
    }
}

// ---------------------------------------------------------------------------
// int8 x int8.

/// `int8 x int8` with AVX2: 32 codes per step, 4 rows at a time sharing the
/// input loads.
///
/// # Safety
/// The CPU has AVX2; the operands satisfy the [module's contract](self).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn i8_i8_avx2(wq: &[i8], scales: &[f32], out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    let mut r = 0;
    // SAFETY (of the three intrinsics below): AVX2 by this function's
    // contract; the 8 scales read are `scales[r..r + 8]` and the 8 outputs
    // written `y[r..r + 8]`, in bounds as `r + 8 <= out` and both hold `out`.
    while r + 8 <= out {
        // SAFETY: AVX2 by this function's contract; rows `r..r + 8 <= out` exist.
        let w = &wq[r * inp..(r + 8) * inp];
        // SAFETY: AVX2 by this function's contract; `w` holds the 8 rows.
        // Without a tail (`inp` a multiple of 32), the tail code is not compiled in.
        let sums = unsafe {
            if inp.is_multiple_of(32) {
                rows8_i8_avx2::<false>(w, inp, xq)
            } else {
                rows8_i8_avx2::<true>(w, inp, xq)
            }
        };
        // `finish` on 8 lanes: the same two IEEE products per row.
        unsafe {
            let s = _mm256_mul_ps(_mm256_loadu_ps(scales.as_ptr().add(r)), _mm256_set1_ps(a));
            _mm256_storeu_ps(y.as_mut_ptr().add(r), _mm256_mul_ps(s, _mm256_cvtepi32_ps(sums)));
        }
        r += 8;
    }
    while r + 4 <= out {
        // SAFETY: AVX2 by this function's contract; rows `r..r + 4 <= out` exist.
        let acc = unsafe { rows_i8_avx2::<4>(&wq[r * inp..(r + 4) * inp], inp, xq) };
        for k in 0..4 {
            y[r + k] = finish(scales[r + k], a, acc[k]);
        }
        r += 4;
    }
    while r < out {
        // SAFETY: as above, for the one row `r < out`.
        let acc = unsafe { rows_i8_avx2::<1>(&wq[r * inp..(r + 1) * inp], inp, xq) };
        y[r] = finish(scales[r], a, acc[0]);
        r += 1;
    }
}

/// The exact dot products of `R` consecutive rows (`w`, `R * inp` codes) with `x`.
///
/// # Safety
/// The CPU has AVX2; `w.len() == R * inp`, `x.len() == inp`, codes in -127..=127.
#[inline(always)]
unsafe fn rows_i8_avx2<const R: usize>(w: &[i8], inp: usize, x: &[i8]) -> [i32; R] {
    debug_assert!(w.len() == R * inp && x.len() == inp);
    let full = inp / 32 * 32;
    // SAFETY: AVX2 by the contract. Every 32-byte load reads `p[c..c + 32]`
    // with `c + 32 <= full <= inp` of a slice of `inp` codes (`x`, or row
    // `k` of `w`, which starts at `k * inp` of `R * inp`), so it stays in bounds.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); R];
        let mut c = 0;
        while c < full {
            let xv = _mm256_loadu_si256(x.as_ptr().add(c).cast());
            // |x| as unsigned bytes (x >= -127, so |x| <= 127).
            let ax = _mm256_sign_epi8(xv, xv);
            for k in 0..R {
                let wv = _mm256_loadu_si256(w.as_ptr().add(k * inp + c).cast());
                // w * sign(x) (0 where x == 0): then |x| * (w sign(x)) = w x.
                let sw = _mm256_sign_epi8(wv, xv);
                // u8 x i8 products summed in pairs to i16: |x| <= 127 and
                // |w| <= 127, so a pair sum is at most 2 * 127 * 127 = 32258
                // < 32767 and `vpmaddubsw`'s saturation never triggers.
                let p16 = _mm256_maddubs_epi16(ax, sw);
                // Pairs of i16 summed to i32 (exact).
                acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(p16, ones));
            }
            c += 32;
        }
        // A loop, not `array::from_fn`: a closure would not inherit the
        // target features, and the reductions' intrinsics would become calls.
        let mut sums = [0i32; R];
        for k in 0..R {
            sums[k] = hsum_i32x8(acc[k]) + dot_i8(&w[k * inp + full..(k + 1) * inp], &x[full..]);
        }
        sums
    }
}

/// The exact dot products of 8 consecutive rows (`w`, `8 * inp` codes)
/// with `x`, as the 8 `i32` lanes of one vector (lane `k`: row `k`): the
/// row accumulators of [`rows_i8_avx2`], reduced together by
/// [`reduce8_epi32`] instead of one horizontal sum per row.
///
/// `TAIL` false: the caller guarantees `inp % 32 == 0` (no tail code).
///
/// # Safety
/// The CPU has AVX2; `w.len() == 8 * inp`, `x.len() == inp`, codes in -127..=127.
#[inline(always)]
unsafe fn rows8_i8_avx2<const TAIL: bool>(w: &[i8], inp: usize, x: &[i8]) -> __m256i {
    debug_assert!(w.len() == 8 * inp && x.len() == inp && (TAIL || inp.is_multiple_of(32)));
    let full = inp / 32 * 32;
    // SAFETY: AVX2 by the contract; the loads are those of `rows_i8_avx2`
    // (`p[c..c + 32]` with `c + 32 <= full <= inp` of a slice of `inp`
    // codes: `x`, or row `k` of `w` at `k * inp`); `tail` is 32 writable bytes.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 8];
        let mut c = 0;
        while c < full {
            let xv = _mm256_loadu_si256(x.as_ptr().add(c).cast());
            let ax = _mm256_sign_epi8(xv, xv);
            for k in 0..8 {
                let wv = _mm256_loadu_si256(w.as_ptr().add(k * inp + c).cast());
                // As in `rows_i8_avx2`: |x| * (w sign(x)) = w x, pair sums
                // below 2 * 127 * 127 < 32767 (no saturation).
                let p16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(wv, xv));
                acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(p16, ones));
            }
            c += 32;
        }
        let sums = reduce8_epi32(&acc);
        if !TAIL || full == inp {
            return sums;
        }
        let mut tail = [0i32; 8];
        _mm256_storeu_si256(tail.as_mut_ptr().cast(), sums);
        for k in 0..8 {
            tail[k] += dot_i8(&w[k * inp + full..(k + 1) * inp], &x[full..]);
        }
        _mm256_loadu_si256(tail.as_ptr().cast())
    }
}

/// Lane `k` of the result is the sum of the 8 `i32` lanes of `v[k]`
/// (wrapping; exact for the kernels' sums): a transposing reduction, 21
/// operations for 8 rows. Step 1 adds the `epi32` unpackings of pairs
/// `(v[2j], v[2j + 1])` (per 128-bit lane: `[a0 + a2, b0 + b2, a1 + a3, b1 + b3]`),
/// step 2 the `epi64` unpackings of pairs of those (per 128-bit lane: rows
/// `4m..4m + 4` in order), step 3 the two 128-bit halves.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn reduce8_epi32(v: &[__m256i; 8]) -> __m256i {
    {
        let mut s = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            let (a, b) = (v[2 * j], v[2 * j + 1]);
            s[j] = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
        }
        let mut u = [_mm256_setzero_si256(); 2];
        for m in 0..2 {
            let (a, b) = (s[2 * m], s[2 * m + 1]);
            u[m] = _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
        }
        // Rows 0..4 from the low halves of both, rows 4..8 from the high ones.
        _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(u[0], u[1]), _mm256_permute2x128_si256::<0x31>(u[0], u[1]))
    }
}

/// The sum of the 8 `i32` lanes (wrapping, exact here).
#[inline(always)]
fn hsum_i32x8(v: __m256i) -> i32 {
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` is 32 writable bytes, what the unaligned store writes;
    // `vmovdqu` is AVX, which every caller (AVX2 or AVX-512 code) has.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
    lanes.iter().fold(0i32, |s, &l| s.wrapping_add(l))
}

/// `int8 x int8` with AVX-512 VNNI (`vpdpbusd`): 64 codes per step (the last
/// step masked), 4 rows at a time sharing the input loads.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; the operands satisfy the [module's contract](self).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn i8_i8_avx512vnni(
    wq: &[i8],
    scales: &[f32],
    out: usize,
    inp: usize,
    xq: &[i8],
    a: f32,
    y: &mut [f32],
) {
    let mut r = 0;
    while r + 16 <= out {
        // SAFETY: the features by this function's contract; rows `r..r + 16 <= out` exist.
        let sums = unsafe { rows16_i8_vnni(&wq[r * inp..(r + 16) * inp], inp, xq) };
        // SAFETY: the features by this function's contract; rows `r..r + 16`
        // with `r + 16 <= out = scales.len() = y.len()`.
        unsafe { finish16(sums, scales, _mm512_set1_ps(a), r, 16, y) };
        r += 16;
    }
    while r + 4 <= out {
        // SAFETY: the features by this function's contract; rows `r..r + 4 <= out` exist.
        let acc = unsafe { rows_i8_vnni::<4>(&wq[r * inp..(r + 4) * inp], inp, xq) };
        for k in 0..4 {
            y[r + k] = finish(scales[r + k], a, acc[k]);
        }
        r += 4;
    }
    while r < out {
        // SAFETY: as above, for the one row `r < out`.
        let acc = unsafe { rows_i8_vnni::<1>(&wq[r * inp..(r + 1) * inp], inp, xq) };
        y[r] = finish(scales[r], a, acc[0]);
        r += 1;
    }
}

/// [`finish`] on 16 lanes: `y[r0 + k] = (scales[r0 + k] * a) * (sums[k] as
/// f32)` for `k < n`, the same two IEEE products per row (`vcvtdq2ps`
/// rounds to nearest even, as `as f32` does); the lanes from `n` on are
/// neither read nor written.
///
/// # Safety
/// The CPU has AVX-512 F; `n <= 16` and `r0 + n <= scales.len(), y.len()`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn finish16(sums: __m512i, scales: &[f32], a: __m512, r0: usize, n: usize, y: &mut [f32]) {
    debug_assert!(n <= 16 && r0 + n <= scales.len() && r0 + n <= y.len());
    let m: __mmask16 = if n >= 16 { !0 } else { (1u16 << n) - 1 };
    // SAFETY: lanes `k < n` read `scales[r0 + k]` and write `y[r0 + k]`, in
    // bounds by the contract; the other lanes are masked off.
    unsafe {
        let s = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, scales.as_ptr().add(r0)), a);
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(r0), m, _mm512_mul_ps(s, _mm512_cvtepi32_ps(sums)));
    }
}

/// `int8 x int8` on the tiled layout ([`super::tile_int8`]) with AVX-512
/// VNNI: per tile one `vpdpbusd` of the tile (unsigned: code + 128) by the
/// input's four codes broadcast to every lane (signed), so lane `k` of a
/// 16-row block accumulates `sum_c (Wq[r0 + k][c] + 128) * xq[c]`; `128 *
/// sum_c xq[c]` is subtracted at the end. The accumulations wrap in `i32`,
/// which is arithmetic modulo `2^32`, and the true sum fits in `i32` (`in <=
/// MAX_IN`), so the result is exact. Four row blocks at a time share the
/// broadcasts, each in two accumulators (even and odd groups of inputs) so
/// the `vpdpbusd` chains overlap.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `tiles.len() == tiles_len(out, inp)`,
/// `xq.len() == inp`, `scales.len() == y.len() == out`, `inp <= MAX_IN`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn i8_i8_tiled_vnni(
    tiles: &[I8Tile],
    scales: &[f32],
    out: usize,
    inp: usize,
    xq: &[i8],
    a: f32,
    y: &mut [f32],
) {
    let cb = inp.div_ceil(TILE_COLS);
    let full = inp / TILE_COLS;
    // The input's last, partial group of four codes, zero-padded, as `i32`
    // (little-endian bytes, as the tiles' lanes hold them).
    let mut last = [0u8; TILE_COLS];
    for (l, &x) in last.iter_mut().zip(&xq[full * TILE_COLS..]) {
        *l = x as u8;
    }
    let last = i32::from_le_bytes(last);
    let sum_x: i32 = xq.iter().map(|&x| i32::from(x)).sum();
    let correction = _mm512_set1_epi32(sum_x.wrapping_mul(128));
    let blocks = out.div_ceil(TILE_ROWS);
    let scale_a = _mm512_set1_ps(a);
    let k = Kernel { tiles: tiles.as_ptr(), x: xq.as_ptr(), cb, full, last, correction, scale_a };
    let mut r = 0;
    while r + 4 <= blocks {
        // SAFETY: the features by this function's contract; `r + 4 <= blocks`
        // and the lengths are those `Kernel::blocks` requires.
        unsafe { k.blocks::<4>(r, scales, out, y) };
        r += 4;
    }
    while r < blocks {
        // SAFETY: as above, for the one block `r < blocks`.
        unsafe { k.blocks::<1>(r, scales, out, y) };
        r += 1;
    }
}

/// The operands of [`i8_i8_tiled_vnni`] shared by its row blocks.
struct Kernel {
    /// The tiles (`ceil(out / 16) * cb`).
    tiles: *const I8Tile,
    /// The input codes (`inp`).
    x: *const i8,
    /// Groups of four inputs, `ceil(inp / 4)`.
    cb: usize,
    /// Whole groups of four inputs, `inp / 4`.
    full: usize,
    /// The last, partial group zero-padded (when `full < cb`).
    last: i32,
    /// `128 * sum(xq)` in every lane.
    correction: __m512i,
    /// `a` in every lane.
    scale_a: __m512,
}

impl Kernel {
    /// Row blocks `r..r + G`: sums, correction, scaling, masked store.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `r + G <= ceil(out / 16)`; the
    /// fields and slices are those [`i8_i8_tiled_vnni`] made from operands
    /// satisfying its contract: the tiles read, `tiles[(r + g) * cb + c]`
    /// for `c < cb`, and the input groups read, bytes `4c .. 4c + 4` for
    /// `c < full` (so below `inp`), are in bounds; the scales read and the
    /// outputs written are rows `r0 .. r0 + min(16, out - r0)` of slices of
    /// `out`, the other lanes masked off.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn blocks<const G: usize>(&self, r: usize, scales: &[f32], out: usize, y: &mut [f32]) {
        // SAFETY: the reads and writes are those the contract lists.
        unsafe {
            let group = |c: usize| _mm512_set1_epi32(self.x.add(c * TILE_COLS).cast::<i32>().read_unaligned());
            let tile = |g: usize, c: usize| _mm512_load_si512(self.tiles.add((r + g) * self.cb + c).cast());
            let zero = _mm512_setzero_si512();
            let mut even = [zero; G];
            let mut odd = [zero; G];
            let mut c = 0;
            while c + 2 <= self.full {
                let (x0, x1) = (group(c), group(c + 1));
                for g in 0..G {
                    even[g] = _mm512_dpbusd_epi32(even[g], tile(g, c), x0);
                    odd[g] = _mm512_dpbusd_epi32(odd[g], tile(g, c + 1), x1);
                }
                c += 2;
            }
            if c < self.full {
                let x0 = group(c);
                for g in 0..G {
                    even[g] = _mm512_dpbusd_epi32(even[g], tile(g, c), x0);
                }
                c += 1;
            }
            if c < self.cb {
                let x1 = _mm512_set1_epi32(self.last);
                for g in 0..G {
                    odd[g] = _mm512_dpbusd_epi32(odd[g], tile(g, c), x1);
                }
            }
            for g in 0..G {
                let sums = _mm512_sub_epi32(_mm512_add_epi32(even[g], odd[g]), self.correction);
                let r0 = (r + g) * TILE_ROWS;
                finish16(sums, scales, self.scale_a, r0, (out - r0).min(TILE_ROWS), y);
            }
        }
    }
}

/// The exact dot products of 16 consecutive rows (`w`, `16 * inp` codes)
/// with `x`, as the 16 `i32` lanes of one vector (lane `k`: row `k`): the
/// row accumulators of [`rows_i8_vnni`], reduced together by
/// [`reduce16_epi32`] instead of one horizontal sum per row.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `w.len() == 16 * inp`, `x.len() == inp`,
/// codes in -127..=127.
#[inline(always)]
unsafe fn rows16_i8_vnni(w: &[i8], inp: usize, x: &[i8]) -> __m512i {
    debug_assert!(w.len() == 16 * inp && x.len() == inp);
    // SAFETY: the features by the contract; the loads are those of
    // `rows_i8_vnni`: at offset `c < inp` of a slice of `inp` codes (`x`,
    // or row `k` of `w` at `k * inp`), `min(64, inp - c)` bytes, the rest
    // of the lanes masked off (neither read nor faulted).
    unsafe {
        let zero = _mm512_setzero_si512();
        let mut acc = [zero; 16];
        let mut c = 0;
        while c < inp {
            let n = inp - c;
            let m: __mmask64 = if n >= 64 { !0 } else { (1u64 << n) - 1 };
            let xv = _mm512_maskz_loadu_epi8(m, x.as_ptr().add(c));
            let ax = _mm512_abs_epi8(xv);
            let neg = _mm512_movepi8_mask(xv);
            for k in 0..16 {
                let wv = _mm512_maskz_loadu_epi8(m, w.as_ptr().add(k * inp + c));
                // As in `rows_i8_vnni`: |x| * (w sign(x)) = w x.
                let sw = _mm512_mask_sub_epi8(wv, neg, zero, wv);
                acc[k] = _mm512_dpbusd_epi32(acc[k], ax, sw);
            }
            c += 64;
        }
        reduce16_epi32(&acc)
    }
}

/// Lane `k` of the result is the sum of the 16 `i32` lanes of `v[k]`
/// (wrapping; exact for the kernels' sums): a transposing reduction, 45
/// operations for 16 rows instead of a horizontal sum per row. Step 1 adds
/// the `epi32` unpackings of pairs `(v[2j], v[2j + 1])` (per 128-bit lane
/// `[a0 + a2, b0 + b2, a1 + a3, b1 + b3]`), step 2 the `epi64` unpackings of
/// pairs of those (per 128-bit lane: partial sums of rows `4m..4m + 4`, in
/// order), steps 3 and 4 the 128-bit lanes, by `vshufi32x4` (`0x88`: lanes
/// 0 and 2 of each operand, `0xDD`: lanes 1 and 3), so that lane block
/// `m` ends with rows `4m..4m + 4`.
///
/// # Safety
/// The CPU has AVX-512 F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce16_epi32(v: &[__m512i; 16]) -> __m512i {
    /// The sums of lanes `(0, 2)` and `(1, 3)` of `a`, then of `b`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn lanes(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(a, b), _mm512_shuffle_i32x4::<0xDD>(a, b))
    }
    {
        let mut s = [_mm512_setzero_si512(); 8];
        for j in 0..8 {
            let (a, b) = (v[2 * j], v[2 * j + 1]);
            s[j] = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
        }
        let mut u = [_mm512_setzero_si512(); 4];
        for m in 0..4 {
            let (a, b) = (s[2 * m], s[2 * m + 1]);
            u[m] = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        }
        let v0 = lanes(u[0], u[1]);
        let v1 = lanes(u[2], u[3]);
        lanes(v0, v1)
    }
}

/// The exact dot products of `R` consecutive rows with `x`, `vpdpbusd`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `w.len() == R * inp`, `x.len() == inp`,
/// codes in -127..=127.
#[inline(always)]
unsafe fn rows_i8_vnni<const R: usize>(w: &[i8], inp: usize, x: &[i8]) -> [i32; R] {
    debug_assert!(w.len() == R * inp && x.len() == inp);
    // SAFETY: the features by the contract. A load at offset `c < inp` of a
    // slice of `inp` codes (`x`, or row `k` of `w` at `k * inp`) reads
    // `min(64, inp - c)` bytes: a full load while `c + 64 <= inp`, else a
    // masked one whose lanes `inp - c ..` are neither read nor faulted.
    unsafe {
        let zero = _mm512_setzero_si512();
        let mut acc = [zero; R];
        let mut c = 0;
        while c < inp {
            let n = inp - c;
            let m: __mmask64 = if n >= 64 { !0 } else { (1u64 << n) - 1 };
            let xv = _mm512_maskz_loadu_epi8(m, x.as_ptr().add(c));
            // |x| as unsigned bytes, and the sign of x as a mask.
            let ax = _mm512_abs_epi8(xv);
            let neg = _mm512_movepi8_mask(xv);
            for k in 0..R {
                let wv = _mm512_maskz_loadu_epi8(m, w.as_ptr().add(k * inp + c));
                // w * sign(x): negated where x < 0 (where x == 0, |x| = 0).
                let sw = _mm512_mask_sub_epi8(wv, neg, zero, wv);
                // Four u8 x i8 products added to each i32 lane (no saturation).
                acc[k] = _mm512_dpbusd_epi32(acc[k], ax, sw);
            }
            c += 64;
        }
        let mut sums = [0i32; R];
        for k in 0..R {
            sums[k] = _mm512_reduce_add_epi32(acc[k]);
        }
        sums
    }
}

// ---------------------------------------------------------------------------
// ternary x int8: decoding by byte shuffles, sums by `vpsadbw`.
//
// A step takes the packed bytes of 32 (AVX2) or 64 (AVX-512) codes,
// spreads every byte over the 4 byte lanes of its codes (`vpshufb`), keeps
// in lane `4b + j` only bits `2j..2j + 1` and compares them with the codes
// of +1 and -1: two lane masks. The term is `x` where +1, `-x` where -1,
// 0 elsewhere (0b00, and the invalid 0b11). The terms (|t| <= 127) are
// summed exactly by `vpsadbw` against zero after adding 128 to each
// (`t ^ 0x80` as an unsigned byte), and `128` per term subtracted at the
// end: additions and subtractions only, no multiplication.

/// Byte-lane constants of the decoding: `spread` (the `vpshufb` indices,
/// byte `b` of the lane's 4 to its lanes `4b..4b + 4`, with lane block
/// `q` of 16 bytes reading packed bytes `4q..4q + 4`), the bit masks, and
/// the codes of +1 and -1 in place.
const fn decode_tables() -> ([i8; 64], [i8; 64], [i8; 64], [i8; 64]) {
    let mut spread = [0i8; 64];
    let mut mask = [0i8; 64];
    let mut plus = [0i8; 64];
    let mut minus = [0i8; 64];
    let mut i = 0;
    while i < 64 {
        let j = i % 4;
        spread[i] = (i / 4) as i8;
        mask[i] = (0b11u8 << (2 * j)) as i8;
        plus[i] = (0b01u8 << (2 * j)) as i8;
        minus[i] = (0b10u8 << (2 * j)) as i8;
        i += 1;
    }
    (spread, mask, plus, minus)
}

/// The tables of [`decode_tables`].
static DECODE: ([i8; 64], [i8; 64], [i8; 64], [i8; 64]) = decode_tables();

/// `ternary x int8` with AVX2: 32 codes (8 packed bytes) per step, the
/// tail of each row portable.
///
/// # Safety
/// The CPU has AVX2; the operands satisfy the [module's contract](self).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn t2_i8_avx2(packed: &[u8], scale: f32, out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    let nb = ternary_row_bytes(inp);
    let full = inp / 32 * 32;
    let (spread, mask, plus, minus) = &DECODE;
    // SAFETY: AVX2 by the contract. The table loads read the first 32 bytes
    // of 64-byte arrays (`spread[..32]` is 0,0,0,0,1,..,3 then 4,..,7). In the loop,
    // `c + 32 <= full <= inp`: the input load reads `xq[c..c + 32]` and the
    // packed load the row's bytes `c / 4 .. c / 4 + 8 <= full / 4 <= nb`.
    unsafe {
        let spread = _mm256_loadu_si256(spread.as_ptr().cast());
        let mask = _mm256_loadu_si256(mask.as_ptr().cast());
        let plus = _mm256_loadu_si256(plus.as_ptr().cast());
        let minus = _mm256_loadu_si256(minus.as_ptr().cast());
        let bias = _mm256_set1_epi8(i8::MIN);
        let zero = _mm256_setzero_si256();
        for r in 0..out {
            let row = &packed[r * nb..(r + 1) * nb];
            let mut acc = zero;
            let mut c = 0;
            while c < full {
                let bytes = _mm_loadl_epi64(row.as_ptr().add(c / 4).cast());
                // Both 128-bit lanes hold the 8 bytes; lane 0 spreads bytes
                // 0..4, lane 1 bytes 4..8 (`spread` is 0,0,0,0,1,..,3 then 4,..,7).
                let codes = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), spread), mask);
                let xv = _mm256_loadu_si256(xq.as_ptr().add(c).cast());
                let p = _mm256_and_si256(xv, _mm256_cmpeq_epi8(codes, plus));
                let m = _mm256_and_si256(xv, _mm256_cmpeq_epi8(codes, minus));
                let t = _mm256_sub_epi8(p, m);
                acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(t, bias), zero));
                c += 32;
            }
            // Lanes hold sums of `t + 128` over 8 bytes: at most 8 * 255 per
            // step, far from overflowing i64.
            let mut lanes = [0i64; 4];
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc);
            let sum = lanes.iter().sum::<i64>() - 128 * full as i64;
            y[r] = finish(scale, a, sum as i32 + dot_t2_i8(row, xq, full, inp));
        }
    }
}

/// `ternary x int8` with AVX-512 BW: 64 codes (16 packed bytes) per step,
/// the tail of each row portable.
///
/// # Safety
/// The CPU has AVX-512 F and BW; the operands satisfy the [module's contract](self).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn t2_i8_avx512(packed: &[u8], scale: f32, out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    let nb = ternary_row_bytes(inp);
    let full = inp / 64 * 64;
    let (spread, mask, plus, minus) = &DECODE;
    // SAFETY: AVX-512 F and BW by the contract. The table loads read the
    // 64-byte arrays whole. In the loop `c + 64 <= full <= inp`: the input
    // load reads `xq[c..c + 64]`, the packed one the row's bytes
    // `c / 4 .. c / 4 + 16 <= full / 4 <= nb`.
    unsafe {
        // `vpshufb` indexes within 128-bit lanes: lane `q` spreads bytes
        // `4q..4q + 4` of its copy of the 16 packed bytes.
        let spread = _mm512_loadu_si512(spread.as_ptr().cast());
        let mask = _mm512_loadu_si512(mask.as_ptr().cast());
        let plus = _mm512_loadu_si512(plus.as_ptr().cast());
        let minus = _mm512_loadu_si512(minus.as_ptr().cast());
        let bias = _mm512_set1_epi8(i8::MIN);
        let zero = _mm512_setzero_si512();
        for r in 0..out {
            let row = &packed[r * nb..(r + 1) * nb];
            let mut acc = zero;
            let mut c = 0;
            while c < full {
                let bytes = _mm_loadu_si128(row.as_ptr().add(c / 4).cast());
                let codes = _mm512_and_si512(_mm512_shuffle_epi8(_mm512_broadcast_i32x4(bytes), spread), mask);
                let xv = _mm512_loadu_si512(xq.as_ptr().add(c).cast());
                let p = _mm512_cmpeq_epi8_mask(codes, plus);
                let m = _mm512_cmpeq_epi8_mask(codes, minus);
                // x where +1, then 0 - x where -1, 0 elsewhere.
                let t = _mm512_mask_sub_epi8(_mm512_maskz_mov_epi8(p, xv), m, zero, xv);
                acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_xor_si512(t, bias), zero));
                c += 64;
            }
            let sum = _mm512_reduce_add_epi64(acc) - 128 * full as i64;
            y[r] = finish(scale, a, sum as i32 + dot_t2_i8(row, xq, full, inp));
        }
    }
}

// ---------------------------------------------------------------------------
// f32 activations: the portable bodies with the paths' features (the same
// operations in the same order, so the same bits; only the vector width of
// the compiled code changes).

/// [`super::i8_f32_portable`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2 (the lengths are checked by indexing).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn i8_f32_avx2(wq: &[i8], scales: &[f32], out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    super::i8_f32_portable(wq, scales, out, inp, x, y)
}

/// [`super::i8_f32_portable`] compiled for AVX-512.
///
/// # Safety
/// The CPU has AVX-512 F and BW (the lengths are checked by indexing).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn i8_f32_avx512(wq: &[i8], scales: &[f32], out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    super::i8_f32_portable(wq, scales, out, inp, x, y)
}

/// [`super::t2_f32_portable`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2 (the lengths are checked by indexing).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn t2_f32_avx2(packed: &[u8], scale: f32, out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    super::t2_f32_portable(packed, scale, out, inp, x, y)
}

/// [`super::t2_f32_portable`] compiled for AVX-512.
///
/// # Safety
/// The CPU has AVX-512 F and BW (the lengths are checked by indexing).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn t2_f32_avx512(packed: &[u8], scale: f32, out: usize, inp: usize, x: &[f32], y: &mut [f32]) {
    super::t2_f32_portable(packed, scale, out, inp, x, y)
}
