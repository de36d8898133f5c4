//! Tests of [`super`]: hand-computed quantizations and packings, every
//! kernel path against plain references, bit for bit.

extern crate std;

use std::vec;
use std::vec::Vec;

use super::*;

/// splitmix64: a small deterministic generator for the test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// An int8 code in -127..=127, a quarter of them the extremes ±127 or 0.
    fn code(&mut self) -> i8 {
        let v = self.next();
        match v % 8 {
            0 => 127,
            1 => -127,
            2 => 0,
            _ => (((v >> 8) % 255) as i32 - 127) as i8,
        }
    }
    fn ternary(&mut self) -> i8 {
        (self.next() % 3) as i8 - 1
    }
}

/// Every path this machine can run.
fn paths() -> Vec<QuantPath> {
    QuantPath::ALL.into_iter().filter(|p| p.is_supported()).collect()
}

const INS: [usize; 12] = [1, 3, 4, 5, 31, 32, 33, 64, 127, 129, 256, 1000];
// 17, 37 and 64 rows: the AVX-512 path's blocks of 16 rows (with 1 and 5
// rows left over), the AVX2 path's blocks of 8 (1 and 5 left), and the
// blocks of 4 and single rows after them.
const OUTS: [usize; 5] = [1, 3, 17, 37, 64];

// ---------------------------------------------------------------------------
// Rounding and quantizers, by hand.

#[test]
fn rounding_is_half_away_from_zero_and_matches_std() {
    for (v, r) in
        [(2.5f32, 3), (-2.5, -3), (0.5, 1), (-0.5, -1), (1.5, 2), (0.49999997, 0), (-0.49999997, 0), (126.5, 127)]
    {
        assert_eq!(quantize_value(v, 1.0f32, 127), r, "{v}");
    }
    // Clamp, and NaN to 0.
    assert_eq!(quantize_value(200.0f32, 1.0, 127), 127);
    assert_eq!(quantize_value(-1e30f32, 1.0, 127), -127);
    assert_eq!(quantize_value(f32::INFINITY, 1.0, 127), 127);
    assert_eq!(quantize_value(f32::NAN, 1.0, 127), 0);
    assert_eq!(quantize_value_f32(f32::NAN, 1.0), 0);
    assert_eq!(quantize_value_f32(f32::NEG_INFINITY, 1.0), -127);
    assert_eq!(quantize_value_f32(1e30, 1.0), 127);
    assert_eq!(quantize_value(1.7f32, 1.0, 1), 1);
    assert_eq!(quantize_value(-3.0f64, 1.0, 1), -1);
    // quantize_value equals libm's round then clamp on a fine grid (every
    // 1/64, so every half) and on random values around the clamp.
    let mut rng = Rng(1);
    for k in -130 * 64..=130 * 64 {
        let v = k as f32 / 64.0;
        let want = libm::round(f64::from(v)).clamp(-127.0, 127.0) as i32;
        assert_eq!(quantize_value(v, 1.0f32, 127), want, "{v}");
        assert_eq!(quantize_value(f64::from(v), 1.0f64, 1), want.clamp(-1, 1), "{v}");
        assert_eq!(i32::from(quantize_value_f32(v, 1.0)), want, "{v}");
        let s = 0.37f32;
        assert_eq!(i32::from(quantize_value_f32(v, s)), quantize_value(v, s, 127), "{v}");
        let u = rng.unit() * 140.0;
        assert_eq!(quantize_value(u, 1.0f32, 127), libm::roundf(u).clamp(-127.0, 127.0) as i32, "{u}");
        assert_eq!(i32::from(quantize_value_f32(u, 1.0)), libm::roundf(u).clamp(-127.0, 127.0) as i32, "{u}");
        let n = f32::from_bits(v.to_bits().wrapping_add(1));
        assert_eq!(quantize_value(n, 1.0f32, 127), libm::roundf(n).clamp(-127.0, 127.0) as i32, "{n}");
        let n = f32::from_bits(v.to_bits().wrapping_sub(1));
        assert_eq!(quantize_value(n, 1.0f32, 127), libm::roundf(n).clamp(-127.0, 127.0) as i32, "{n}");
    }
    // libm's round on the widened value equals std's f32::round (and
    // libm::roundf) bit for bit over a sweep of every 4099th bit pattern.
    let mut bits = 0u32;
    loop {
        let v = f32::from_bits(bits);
        if v.is_finite() {
            let a = libm::round(f64::from(v)) as f32;
            assert_eq!(a.to_bits(), v.round().to_bits(), "{v:e}");
            assert_eq!(libm::roundf(v).to_bits(), v.round().to_bits(), "{v:e}");
        }
        match bits.checked_add(4099) {
            Some(b) => bits = b,
            None => break,
        }
    }
}

#[test]
fn int8_weights_by_hand() {
    // Row 0: absmax 127, so s = 127 / 127 = 1 exactly and the codes are the
    // rounded values; row 1: zeros; row 2: absmax 0.25.
    let w = [
        127.0f32, 2.5, -2.5, 0.49999997, -0.5, 1.5, -126.5, //
        0.0, 0.0, -0.0, 0.0, 0.0, 0.0, 0.0, //
        0.25, -0.125, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let mut q = [0i8; 21];
    let mut s = [0.0f32; 3];
    quantize_int8(&w, 3, 7, &mut q, &mut s);
    assert_eq!(s[0], 1.0);
    assert_eq!(&q[..7], &[127, 3, -3, 0, -1, 2, -127]);
    assert_eq!(s[1], 1e-8f32 / 127.0);
    assert_eq!(&q[7..14], &[0; 7]);
    assert_eq!(s[2], 0.25f32 / 127.0);
    // -0.125 / (0.25 / 127) = -63.5 up to the rounding of s: 0.25 / 127 is
    // rounded down, so the quotient is just above 63.5 in magnitude: -64.
    assert_eq!(&q[14..], &[127, -64, 0, 0, 0, 0, 0]);
    assert_eq!(int8_row_scale(&w[..7]), 1.0);
    // NaN entries are skipped by the maximum and quantize to 0.
    let mut qn = [9i8; 2];
    let mut sn = [0.0f32; 1];
    quantize_int8(&[f32::NAN, -127.0], 1, 2, &mut qn, &mut sn);
    assert_eq!((sn[0], qn), (1.0, [0, -127]));
}

#[test]
fn ternary_weights_by_hand() {
    // mean |w| = (0.5 + 1.5 + 0 + 2) / 4 = 1: s = f32(1 + 1e-8) = 1.0, and
    // 0.5 rounds away from zero to 1; in f64 s = 1.00000001 > 1 and 0.5 / s
    // is just below a half: 0.
    let w = [0.5f32, -1.5, 0.0, 2.0];
    let s = ternary_scale(&w);
    assert_eq!(s, 1.0);
    let mut q = [0i8; 4];
    quantize_ternary(&w, s, &mut q);
    assert_eq!(q, [1, -1, 0, 1]);
    let w64 = [0.5f64, -1.5, 0.0, 2.0];
    let s64 = ternary_scale(&w64);
    assert_eq!(s64, 1.0 + 1e-8);
    let mut d64 = [0.0f64; 4];
    assert_eq!(fake_quant_ternary(&w64, &mut d64), s64);
    assert_eq!(d64, [0.0, -s64, 0.0, s64]);
    // The f64 mean: 0.1 + 0.2 + 0.3 summed in order, / 3, + 1e-8.
    let w3 = [0.1f64, -0.2, 0.3];
    assert_eq!(ternary_scale(&w3), (0.1 + 0.2 + 0.3) / 3.0 + 1e-8);
    // The f32 scale is the f64 computation rounded once.
    let w3f = [0.1f32, -0.2, 0.3];
    let sum = f64::from(0.1f32) + f64::from(0.2f32) + f64::from(0.3f32);
    assert_eq!(ternary_scale(&w3f), (sum / 3.0 + 1e-8) as f32);
    // Empty and zero tensors.
    assert_eq!(ternary_scale::<f32>(&[]), 1e-8f32);
    assert_eq!(ternary_scale(&[0.0f32; 5]), 1e-8f32);
}

#[test]
fn activations_by_hand() {
    let x = [127.0f32, -63.5, 0.5, -0.25, 2.5];
    let mut xq = [0i8; 5];
    let a = quantize_act(&x, &mut xq);
    assert_eq!(a, 1.0);
    assert_eq!(xq, [127, -64, 1, 0, 3]);
    let mut xd = [0.0f32; 5];
    assert_eq!(fake_quant_act(&x, &mut xd), 1.0);
    assert_eq!(xd, [127.0, -64.0, 1.0, 0.0, 3.0]);
    let z = [0.0f32; 3];
    let mut zq = [5i8; 3];
    assert_eq!(quantize_act(&z, &mut zq), 1e-8f32 / 127.0);
    assert_eq!(zq, [0; 3]);
}

#[test]
fn packing_by_hand_and_round_trip() {
    // Row 0: +1 -1 0 +1 | -1; row 1: 0 0 +1 -1 | 0.
    let q = [1i8, -1, 0, 1, -1, 0, 0, 1, -1, 0];
    let mut p = [0xFFu8; 4];
    pack_ternary(&q, 2, 5, &mut p).expect("ternary codes");
    // 0x49 = 0b01_00_10_01 (codes 0..3 from the low bits), 0x02 = code -1
    // then zero padding; 0x90 = 0b10_01_00_00.
    assert_eq!(p, [0x49, 0x02, 0x90, 0x00]);
    assert_eq!(check_ternary(&p, 2, 5), Ok(()));
    let mut back = [9i8; 10];
    unpack_ternary(&p, 2, 5, &mut back).expect("valid bytes");
    assert_eq!(back, q);
    // Errors.
    assert_eq!(pack_ternary(&[0, 2], 1, 2, &mut [0]), Err(QuantError::NotTernary { index: 1, value: 2 }));
    assert_eq!(check_ternary(&[0b1100], 1, 2), Err(QuantError::InvalidCode { row: 0, col: 1 }));
    assert_eq!(check_ternary(&[0x00, 0b0100_0000], 2, 3), Err(QuantError::NonZeroPadding { row: 1 }));
    assert!(unpack_ternary(&[0b11], 1, 1, &mut [0]).is_err());
    assert_eq!(ternary_row_bytes(0), 0);
    assert_eq!(ternary_row_bytes(5), 2);
    // A random round trip on every shape.
    let mut rng = Rng(7);
    for &inp in &INS {
        for &out in &OUTS {
            let q: Vec<i8> = (0..out * inp).map(|_| rng.ternary()).collect();
            let mut p = vec![0u8; out * ternary_row_bytes(inp)];
            pack_ternary(&q, out, inp, &mut p).expect("ternary codes");
            let mut back = vec![0i8; out * inp];
            unpack_ternary(&p, out, inp, &mut back).expect("valid bytes");
            assert_eq!(back, q);
        }
    }
}

#[test]
fn fake_quant_matches_the_quantizers() {
    let mut rng = Rng(3);
    let (out, inp) = (5, 37);
    let w: Vec<f32> = (0..out * inp).map(|_| rng.unit() * 0.3).collect();
    let mut q = vec![0i8; out * inp];
    let mut s = vec![0.0f32; out];
    quantize_int8(&w, out, inp, &mut q, &mut s);
    let mut wd = vec![0.0f32; out * inp];
    fake_quant_int8(&w, out, inp, &mut wd);
    for i in 0..out * inp {
        assert_eq!(wd[i].to_bits(), (s[i / inp] * f32::from(q[i])).to_bits());
    }
    let st = ternary_scale(&w);
    let mut qt = vec![0i8; out * inp];
    quantize_ternary(&w, st, &mut qt);
    assert_eq!(fake_quant_ternary(&w, &mut wd), st);
    for i in 0..out * inp {
        assert_eq!(wd[i].to_bits(), (st * f32::from(qt[i])).to_bits());
    }
    let x: Vec<f32> = (0..inp).map(|_| rng.unit()).collect();
    let mut xq = vec![0i8; inp];
    let a = quantize_act(&x, &mut xq);
    let mut xd = vec![0.0f32; inp];
    assert_eq!(fake_quant_act(&x, &mut xd), a);
    for i in 0..inp {
        assert_eq!(xd[i].to_bits(), (a * f32::from(xq[i])).to_bits());
    }
    // f64: the same formulas in f64.
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut wd64 = vec![0.0f64; out * inp];
    fake_quant_int8(&w64, out, inp, &mut wd64);
    for r in 0..out {
        let row = &w64[r * inp..(r + 1) * inp];
        let s = row.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-8) / 127.0;
        for i in 0..inp {
            assert_eq!(wd64[r * inp + i], s * (row[i] / s).round().clamp(-127.0, 127.0));
        }
    }
}

// ---------------------------------------------------------------------------
// Kernels against references.

/// The exact reference of the integer kernels: `i64` triple loop, then the formula.
fn reference_int(w: &[i8], s: &[f32], out: usize, inp: usize, x: &[i8], a: f32) -> Vec<f32> {
    (0..out)
        .map(|r| {
            let acc: i64 = (0..inp).map(|i| i64::from(w[r * inp + i]) * i64::from(x[i])).sum();
            (s[r] * a) * (acc as i32) as f32
        })
        .collect()
}

/// The documented `f32` order, written plainly: 16 lanes over whole
/// chunks, the halving tree, the tail, `s_r * (T + U)`.
fn reference_f32(w: &[i8], s: &[f32], out: usize, inp: usize, x: &[f32]) -> Vec<f32> {
    let full = inp - inp % 16;
    (0..out)
        .map(|r| {
            let p = |i: usize| f32::from(w[r * inp + i]) * x[i];
            let mut l = [0.0f32; 16];
            for i in 0..full {
                l[i % 16] += p(i);
            }
            let h: Vec<f32> = (0..8).map(|j| l[j] + l[j + 8]).collect();
            let q: Vec<f32> = (0..4).map(|j| h[j] + h[j + 4]).collect();
            let t = (q[0] + q[2]) + (q[1] + q[3]);
            let mut u = 0.0f32;
            for i in full..inp {
                u += p(i);
            }
            s[r] * (t + u)
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_path_equals_the_references_bit_for_bit() {
    let mut rng = Rng(12);
    let paths = paths();
    for &inp in &INS {
        for &out in &OUTS {
            let wq: Vec<i8> = (0..out * inp).map(|_| rng.code()).collect();
            let scales: Vec<f32> = (0..out).map(|_| (rng.unit().abs() + 0.01) / 127.0).collect();
            let xq: Vec<i8> = (0..inp).map(|_| rng.code()).collect();
            let x: Vec<f32> = (0..inp).map(|_| rng.unit() * 4.0).collect();
            let a = 0.037f32;
            let tq: Vec<i8> = (0..out * inp).map(|_| rng.ternary()).collect();
            let mut packed = vec![0u8; out * ternary_row_bytes(inp)];
            pack_ternary(&tq, out, inp, &mut packed).expect("ternary codes");
            let ts = 0.021f32;
            let tscales = vec![ts; out];

            let want_i8_i8 = bits(&reference_int(&wq, &scales, out, inp, &xq, a));
            let mut tiles = vec![I8Tile([0; 64]); tiles_len(out, inp)];
            tile_int8(&wq, out, inp, &mut tiles);
            let want_t2_i8 = bits(&reference_int(&tq, &tscales, out, inp, &xq, a));
            let want_i8_f32 = bits(&reference_f32(&wq, &scales, out, inp, &x));
            let want_t2_f32 = bits(&reference_f32(&tq, &tscales, out, inp, &x));
            for &p in &paths {
                let mut y = vec![f32::NAN; out];
                let what = |k: &str| std::format!("{k} on {} at [{out}x{inp}]", p.name());
                matvec_i8_i8_with(p, &wq, &scales, out, inp, &xq, a, &mut y);
                assert_eq!(bits(&y), want_i8_i8, "{}", what("i8_i8"));
                y.fill(f32::NAN);
                matvec_i8_i8_tiled_with(p, &tiles, &scales, out, inp, &xq, a, &mut y);
                assert_eq!(bits(&y), want_i8_i8, "{}", what("i8_i8_tiled"));
                matvec_t2_i8_with(p, &packed, ts, out, inp, &xq, a, &mut y);
                assert_eq!(bits(&y), want_t2_i8, "{}", what("t2_i8"));
                matvec_i8_f32_with(p, &wq, &scales, out, inp, &x, &mut y);
                assert_eq!(bits(&y), want_i8_f32, "{}", what("i8_f32"));
                matvec_t2_f32_with(p, &packed, ts, out, inp, &x, &mut y);
                assert_eq!(bits(&y), want_t2_f32, "{}", what("t2_f32"));
            }
            // The dispatched entry points run one of those paths.
            let mut y = vec![0.0f32; out];
            matvec_i8_i8(&wq, &scales, out, inp, &xq, a, &mut y);
            assert_eq!(bits(&y), want_i8_i8);
            matvec_i8_i8_tiled(&tiles, &scales, out, inp, &xq, a, &mut y);
            assert_eq!(bits(&y), want_i8_i8);
            matvec_t2_i8(&packed, ts, out, inp, &xq, a, &mut y);
            assert_eq!(bits(&y), want_t2_i8);
            matvec_i8_f32(&wq, &scales, out, inp, &x, &mut y);
            assert_eq!(bits(&y), want_i8_f32);
            matvec_t2_f32(&packed, ts, out, inp, &x, &mut y);
            assert_eq!(bits(&y), want_t2_f32);
        }
    }
}

#[test]
fn extreme_codes_and_sums() {
    // All +-127 (the largest pair sums of vpmaddubsw, 2 * 127 * 127), the
    // longest row the tests run, and a row at MAX_IN magnitude is checked
    // only for the bound's arithmetic.
    assert!(127 * 127 * MAX_IN as i64 <= i64::from(i32::MAX));
    assert!(127 * 127 * (MAX_IN as i64 + 1) > i64::from(i32::MAX));
    for &inp in &[1000usize, 4099] {
        for sign in [1i8, -1] {
            // 19 rows: one block of 16 rows on the AVX-512 path, two of 8
            // on the AVX2 one, reduced together, then single rows.
            let rows = 19;
            let wq = vec![127 * sign; rows * inp];
            let xq: Vec<i8> = (0..inp).map(|i| if i % 3 == 0 { -127 } else { 127 }).collect();
            let s: Vec<f32> = (0..rows).map(|r| 1.0 / (1 + r) as f32).collect();
            let want = bits(&reference_int(&wq, &s, rows, inp, &xq, 1.0));
            let mut tiles = vec![I8Tile([0; 64]); tiles_len(rows, inp)];
            tile_int8(&wq, rows, inp, &mut tiles);
            for p in paths() {
                let mut y = vec![0.0f32; rows];
                matvec_i8_i8_with(p, &wq, &s, rows, inp, &xq, 1.0, &mut y);
                assert_eq!(bits(&y), want, "{}", p.name());
                let mut y = vec![0.0f32; rows];
                matvec_i8_i8_tiled_with(p, &tiles, &s, rows, inp, &xq, 1.0, &mut y);
                assert_eq!(bits(&y), want, "tiled on {}", p.name());
            }
        }
    }
}

#[test]
fn invalid_ternary_code_reads_as_zero_on_every_path() {
    let (out, inp) = (3, 133);
    let mut rng = Rng(5);
    let tq: Vec<i8> = (0..out * inp).map(|_| rng.ternary()).collect();
    let mut packed = vec![0u8; out * ternary_row_bytes(inp)];
    pack_ternary(&tq, out, inp, &mut packed).expect("ternary codes");
    // Turn every zero code into 0b11.
    let mut bad = packed.clone();
    for r in 0..out {
        for col in 0..inp {
            if tq[r * inp + col] == 0 {
                bad[r * ternary_row_bytes(inp) + col / 4] |= 0b11 << (2 * (col % 4));
            }
        }
    }
    let xq: Vec<i8> = (0..inp).map(|_| rng.code()).collect();
    let x: Vec<f32> = (0..inp).map(|_| rng.unit()).collect();
    for p in paths() {
        let (mut y0, mut y1) = (vec![0.0f32; out], vec![0.0f32; out]);
        matvec_t2_i8_with(p, &packed, 0.5, out, inp, &xq, 0.1, &mut y0);
        matvec_t2_i8_with(p, &bad, 0.5, out, inp, &xq, 0.1, &mut y1);
        assert_eq!(bits(&y0), bits(&y1), "{}", p.name());
        matvec_t2_f32_with(p, &packed, 0.5, out, inp, &x, &mut y0);
        matvec_t2_f32_with(p, &bad, 0.5, out, inp, &x, &mut y1);
        assert_eq!(bits(&y0), bits(&y1), "{}", p.name());
    }
}

#[test]
fn integer_product_equals_the_fake_quantized_product() {
    let mut rng = Rng(99);
    for &inp in &INS {
        for &out in &OUTS {
            let w: Vec<f32> = (0..out * inp).map(|_| rng.unit() * 0.2).collect();
            let x: Vec<f32> = (0..inp).map(|_| rng.unit() * 3.0).collect();
            let mut wq = vec![0i8; out * inp];
            let mut s = vec![0.0f32; out];
            quantize_int8(&w, out, inp, &mut wq, &mut s);
            let mut xq = vec![0i8; inp];
            let a = quantize_act(&x, &mut xq);
            let mut wd = vec![0.0f32; out * inp];
            fake_quant_int8(&w, out, inp, &mut wd);
            let mut xd = vec![0.0f32; inp];
            fake_quant_act(&x, &mut xd);
            // Ternary weights too.
            let st = ternary_scale(&w);
            let mut tq = vec![0i8; out * inp];
            quantize_ternary(&w, st, &mut tq);
            let mut packed = vec![0u8; out * ternary_row_bytes(inp)];
            pack_ternary(&tq, out, inp, &mut packed).expect("ternary codes");
            let mut td = vec![0.0f32; out * inp];
            fake_quant_ternary(&w, &mut td);
            for p in paths() {
                let mut y = vec![0.0f32; out];
                matvec_i8_i8_with(p, &wq, &s, out, inp, &xq, a, &mut y);
                let mut yt = vec![0.0f32; out];
                matvec_t2_i8_with(p, &packed, st, out, inp, &xq, a, &mut yt);
                for r in 0..out {
                    for (got, wd) in [(y[r], &wd), (yt[r], &td)] {
                        let terms = (0..inp).map(|i| f64::from(wd[r * inp + i]) * f64::from(xd[i]));
                        let want: f64 = terms.clone().sum();
                        let mag: f64 = terms.map(f64::abs).sum();
                        // The fake-quantized values are f32 products (one
                        // rounding each): relative 1e-6 of the terms' size.
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-6 * mag + 1e-30,
                            "{} [{out}x{inp}] row {r}: {got} vs {want}",
                            p.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ternary_f32_equals_int8_f32_on_the_unpacked_codes() {
    let mut rng = Rng(8);
    for &inp in &INS {
        let out = 17;
        let tq: Vec<i8> = (0..out * inp).map(|_| rng.ternary()).collect();
        let mut packed = vec![0u8; out * ternary_row_bytes(inp)];
        pack_ternary(&tq, out, inp, &mut packed).expect("ternary codes");
        let mut x: Vec<f32> = (0..inp).map(|i| if i % 7 == 0 { -0.0 } else { rng.unit() }).collect();
        if inp > 40 {
            x[40] = f32::INFINITY;
            x[3] = f32::NAN;
        }
        for p in paths() {
            let (mut y0, mut y1) = (vec![0.0f32; out], vec![0.0f32; out]);
            matvec_t2_f32_with(p, &packed, 0.3, out, inp, &x, &mut y0);
            matvec_i8_f32_with(p, &tq, &vec![0.3; out], out, inp, &x, &mut y1);
            assert_eq!(bits(&y0), bits(&y1), "{} in {inp}", p.name());
        }
    }
}

#[test]
fn dispatch() {
    assert!(path().is_supported());
    assert_eq!(kernel_name(), path().name());
    assert!(QuantPath::Portable.is_supported());
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if let Ok(v) = std::env::var("NL_QUANT") {
        if let Some(p) = QuantPath::ALL.into_iter().find(|p| p.name() == v.trim()).filter(|p| p.is_supported()) {
            assert_eq!(path(), p, "NL_QUANT={v}");
        }
    }
    std::println!("quant kernel path: {} (supported: {:?})", kernel_name(), paths());
}

#[test]
#[should_panic(expected = "not supported")]
fn unsupported_path_panics() {
    let p = QuantPath::ALL.into_iter().find(|p| !p.is_supported()).expect("some path is foreign here");
    matvec_i8_i8_with(p, &[1], &[1.0], 1, 1, &[1], 1.0, &mut [0.0]);
}

#[test]
#[should_panic(expected = "matvec_i8_f32")]
fn length_mismatch_panics() {
    matvec_i8_f32(&[1, 2], &[1.0], 1, 3, &[1.0, 2.0, 3.0], &mut [0.0]);
}

#[test]
fn quantize_act_is_the_same_on_every_path() {
    let mut rng = Rng(7);
    let mut cases: Vec<Vec<f32>> = vec![
        vec![],
        vec![0.0; 17],
        vec![127.0, -63.5, 0.5, -0.25, 2.5],
        vec![f32::NAN, 1.0, -2.0, f32::NAN],
        vec![f32::INFINITY, 1.0, -3.0],
        vec![-0.0, 0.0, 1e-30, -1e-30],
    ];
    // Exact halves of the scale (ties), and lengths around the lane counts.
    cases.push((0..70).map(|i| (i as f32 - 35.0) * 0.5).collect());
    for n in [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 128, 200] {
        cases.push((0..n).map(|_| rng.unit() * 8.0 - 4.0).collect());
    }
    for x in &cases {
        let mut want = vec![0i8; x.len()];
        let wa = quantize_act_portable(x, &mut want);
        // The portable body against the definition, element by element.
        for (q, &v) in want.iter().zip(x) {
            let c = libm::roundf(v / wa);
            let c = if c.is_nan() { 0.0 } else { c.clamp(-127.0, 127.0) };
            assert_eq!(*q as f32, c, "{v} / {wa}");
        }
        for p in paths() {
            let mut got = vec![0i8; x.len()];
            let ga = quantize_act_with(p, x, &mut got);
            assert_eq!(ga.to_bits(), wa.to_bits(), "scale on {p:?} for {x:?}");
            assert_eq!(got, want, "codes on {p:?} for {x:?}");
        }
    }
}

#[test]
fn tiled_layout_by_hand() {
    // [17, 5]: two row blocks (the second with one row), two groups of
    // inputs (the second with one column).
    let (out, inp) = (17, 5);
    let wq: Vec<i8> = (0..out * inp).map(|i| (i as i32 % 255 - 127) as i8).collect();
    let mut tiles = vec![I8Tile([7; 64]); tiles_len(out, inp)];
    assert_eq!(tiles.len(), 4);
    tile_int8(&wq, out, inp, &mut tiles);
    let w = |r: usize, c: usize| (i16::from(wq[r * inp + c]) + 128) as u8;
    // Tile 0: rows 0..16, inputs 0..4.
    assert_eq!(tiles[0].0[0..4], [w(0, 0), w(0, 1), w(0, 2), w(0, 3)]);
    assert_eq!(tiles[0].0[60..64], [w(15, 0), w(15, 1), w(15, 2), w(15, 3)]);
    // Tile 1: rows 0..16, input 4 and three padding columns (code 0 = 128).
    assert_eq!(tiles[1].0[4..8], [w(1, 4), 128, 128, 128]);
    // Tile 2: row 16 and 15 padding rows; tile 3: row 16, input 4.
    assert_eq!(tiles[2].0[0..4], [w(16, 0), w(16, 1), w(16, 2), w(16, 3)]);
    assert!(tiles[2].0[4..].iter().all(|&b| b == 128));
    assert_eq!(tiles[3].0[0..4], [w(16, 4), 128, 128, 128]);
    assert!(tiles[3].0[4..].iter().all(|&b| b == 128));
}
