//! The aarch64 NEON path of [`super`]: `int8 x int8` products with
//! `smull` + `smlal2` (two `i8 x i8` products summed in `i16`) and `sadalp`
//! (pairs added into `i32` lanes). (`sdot`, `vdotq_s32`, is not stable in
//! Rust yet.) The sums are exact, so the grouping does not matter: the
//! results are the portable path's bits.

use core::arch::aarch64::*;

use super::{dot_i8, finish};

/// `int8 x int8` with NEON: 16 codes per step, 4 rows at a time sharing the
/// input loads.
///
/// # Safety
/// The build has NEON; `wq` holds `out` rows of `inp` codes in -127..=127,
/// `xq` `inp` codes, `scales` and `y` `out` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn i8_i8_neon(wq: &[i8], scales: &[f32], out: usize, inp: usize, xq: &[i8], a: f32, y: &mut [f32]) {
    let mut r = 0;
    while r + 4 <= out {
        // SAFETY: NEON by this function's contract; rows `r..r + 4 <= out`
        // exist, and the 4 scales read and 4 outputs written are
        // `scales[r..r + 4]` and `y[r..r + 4]`, in bounds (both hold `out`).
        unsafe {
            let sums = rows4(&wq[r * inp..(r + 4) * inp], inp, xq);
            // `finish` on 4 lanes: the same two IEEE products per row
            // (`scvtf` rounds to nearest even, as `as f32` does).
            let s = vmulq_f32(vld1q_f32(scales.as_ptr().add(r)), vdupq_n_f32(a));
            vst1q_f32(y.as_mut_ptr().add(r), vmulq_f32(s, vcvtq_f32_s32(sums)));
        }
        r += 4;
    }
    while r < out {
        // SAFETY: as above, for the one row `r < out`.
        let acc = unsafe { rows::<1>(&wq[r * inp..(r + 1) * inp], inp, xq) };
        y[r] = finish(scales[r], a, acc[0]);
        r += 1;
    }
}

/// The exact dot products of 4 consecutive rows (`w`, `4 * inp` codes)
/// with `x`, as the 4 lanes of one vector (lane `k`: row `k`): the
/// accumulators of [`rows`] reduced together by two pairwise additions
/// (`addp`: `[a0 + a1, a2 + a3, b0 + b1, b2 + b3]`, twice) instead of one
/// across-lanes sum per row.
///
/// # Safety
/// NEON; `w.len() == 4 * inp`, `x.len() == inp`, codes in -127..=127.
#[inline(always)]
unsafe fn rows4(w: &[i8], inp: usize, x: &[i8]) -> int32x4_t {
    debug_assert!(w.len() == 4 * inp && x.len() == inp);
    let full = inp / 16 * 16;
    // SAFETY: NEON by the contract; the loads are those of `rows` (`p[c..c + 16]`
    // with `c + 16 <= full <= inp` of a slice of `inp` codes); `tail` is 16 writable bytes.
    unsafe {
        let mut acc = [vdupq_n_s32(0); 4];
        let mut c = 0;
        while c < full {
            let xv = vld1q_s8(x.as_ptr().add(c));
            for k in 0..4 {
                let wv = vld1q_s8(w.as_ptr().add(k * inp + c));
                // As in `rows`: at most 32258 per i16 lane.
                let p = vmlal_high_s8(vmull_s8(vget_low_s8(wv), vget_low_s8(xv)), wv, xv);
                acc[k] = vpadalq_s16(acc[k], p);
            }
            c += 16;
        }
        let sums = vpaddq_s32(vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3]));
        if full == inp {
            return sums;
        }
        let mut tail = [0i32; 4];
        vst1q_s32(tail.as_mut_ptr(), sums);
        for k in 0..4 {
            tail[k] += dot_i8(&w[k * inp + full..(k + 1) * inp], &x[full..]);
        }
        vld1q_s32(tail.as_ptr())
    }
}

/// The exact dot products of `R` consecutive rows (`w`, `R * inp` codes) with `x`.
///
/// # Safety
/// NEON; `w.len() == R * inp`, `x.len() == inp`, codes in -127..=127.
#[inline(always)]
unsafe fn rows<const R: usize>(w: &[i8], inp: usize, x: &[i8]) -> [i32; R] {
    debug_assert!(w.len() == R * inp && x.len() == inp);
    let full = inp / 16 * 16;
    // SAFETY: NEON by the contract. Every 16-byte load reads `p[c..c + 16]`
    // with `c + 16 <= full <= inp` of a slice of `inp` codes (`x`, or row
    // `k` of `w` at `k * inp`), so it stays in bounds.
    unsafe {
        let mut acc = [vdupq_n_s32(0); R];
        let mut c = 0;
        while c < full {
            let xv = vld1q_s8(x.as_ptr().add(c));
            for k in 0..R {
                let wv = vld1q_s8(w.as_ptr().add(k * inp + c));
                // Two products per i16 lane: |w x| <= 127 * 127, so a lane
                // holds at most 32258 < 32767 (no overflow).
                let p = vmlal_high_s8(vmull_s8(vget_low_s8(wv), vget_low_s8(xv)), wv, xv);
                acc[k] = vpadalq_s16(acc[k], p);
            }
            c += 16;
        }
        // A loop, not `array::from_fn`: a closure would not inherit the
        // target features.
        let mut sums = [0i32; R];
        for k in 0..R {
            sums[k] = vaddvq_s32(acc[k]) + dot_i8(&w[k * inp + full..(k + 1) * inp], &x[full..]);
        }
        sums
    }
}
