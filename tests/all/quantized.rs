//! Quantized models (`[quant]`, docs/quant.md) against independent oracles:
//!
//! - the deployable parameters (`quantize`) against a quantizer written
//!   here from the docs (per-row absmax int8, per-tensor absmean ternary,
//!   halves away from zero, the packing's bit layout);
//! - the quantization-aware forward against the reference interpreter run
//!   on parameters dequantized by that quantizer (f32 activations);
//! - the straight-through gradient against finite differences of the
//!   forward on the dequantized parameters (the rounding held fixed: the
//!   differences perturb the dequantized values themselves);
//! - streaming on latent parameters against the training forward, and the
//!   integer step (`try_step_q`) against it within float rounding.

use std::collections::BTreeMap;

use crate::common::harness::{
    max_stream_vs_forward_rel, param_map, random_params, random_params_in, random_tokens, ref_spec,
};
use crate::common::reference;
use nl::nl_model;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Dtype, Flat, Model};

nl_model! { r#"
name = "q_int8"
d_model = 16
heads = 2
vocab = 32
seq_len = 8
layers = 2
residual = true
norm = "rms"
positions = "rope"
[mlp]
hidden = 24
[memory]
rule = "delta"
[[memory.levels]]
period = 1
[quant]
weights = "int8"
"# }

nl_model! { r#"
name = "q_ternary_f32"
d_model = 12
heads = 3
vocab = 40
seq_len = 7
window = 5
norm = "layer"
positions = "bias"
[mlp]
hidden = 9
activation = "gelu"
[quant]
weights = "ternary"
activations = "f32"
"# }

nl_model! { r#"
name = "q_int8_acts"
d_model = 16
heads = 4
vocab = 24
seq_len = 6
layers = 2
residual = true
norm = "layer"
[mlp]
hidden = 20
activation = "relu"
[memory]
rule = "titans"
composition = "mal"
[[memory.levels]]
period = 1
[[memory.levels]]
period = 2
[quant]
weights = "int8"
activations = "int8"
"# }

nl_model! { r#"
name = "q_ternary"
d_model = 8
heads = 2
vocab = 20
seq_len = 6
tie_embeddings = true
[mlp]
hidden = 8
activation = "swiglu"
[memory]
rule = "hebbian"
[[memory.levels]]
period = 3
[quant]
weights = "ternary"
"# }

/// Rounding to the nearest integer, halves away from zero.
fn round_half_away(x: f64) -> f64 {
    let r = x.abs().floor() + if x.abs().fract() >= 0.5 { 1.0 } else { 0.0 };
    r.copysign(x)
}

/// The dequantized value of a tensor `[out, inp]` in scalar precision `s`
/// (`f32` or `f64` arithmetic for the scale and the quotient, as the model
/// computes them), written from docs/quant.md.
fn dequantize_by_hand(
    weights: &str,
    w: &[f64],
    out: usize,
    inp: usize,
    f32_math: bool,
) -> (Vec<f64>, Vec<f64>, Vec<i8>) {
    let r = |x: f64| if f32_math { f64::from(x as f32) } else { x };
    let mut wd = vec![0.0; w.len()];
    let mut codes = vec![0i8; w.len()];
    let mut scales = Vec::new();
    match weights {
        "int8" => {
            for o in 0..out {
                let row = &w[o * inp..(o + 1) * inp];
                let m = row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                let s = r(r(m.max(r(1e-8))) / 127.0);
                scales.push(s);
                for i in 0..inp {
                    let q = round_half_away(r(row[i] / s)).clamp(-127.0, 127.0);
                    codes[o * inp + i] = q as i8;
                    wd[o * inp + i] = r(s * q);
                }
            }
        }
        "ternary" => {
            let sum: f64 = w.iter().map(|x| x.abs()).sum();
            let s = r(sum / w.len() as f64 + 1e-8);
            scales.push(s);
            for (j, x) in w.iter().enumerate() {
                let q = round_half_away(r(x / s)).clamp(-1.0, 1.0);
                codes[j] = q as i8;
                wd[j] = r(s * q);
            }
        }
        _ => unreachable!(),
    }
    (wd, scales, codes)
}

/// The latent parameters' dequantized values, tensor by tensor (f64 math).
fn dequantized_map<M: Model>(p: &M::Params<f64>) -> BTreeMap<String, Vec<f64>> {
    let mut map = param_map::<M>(p);
    let weights = match M::QUANT.weights {
        nl_runtime::quant::WeightQuant::Int8 => "int8",
        nl_runtime::quant::WeightQuant::Ternary => "ternary",
        nl_runtime::quant::WeightQuant::F32 => return map,
    };
    for t in M::TENSORS.iter().filter(|t| t.quantized) {
        let w = map.get(t.name).cloned().unwrap_or_default();
        let (wd, _, _) = dequantize_by_hand(weights, &w, t.shape[0], t.shape[1], false);
        map.insert(t.name.to_string(), wd);
    }
    map
}

/// The quantized forward equals the reference interpreter on the
/// parameters dequantized by hand (f32 activations only: the reference has
/// no activation quantization).
fn forward_matches_reference<M: Model>() {
    let spec = ref_spec::<M>();
    let mut ws = boxed_zeroed::<M::Workspace<f64>>();
    for seed in [1u64, 2] {
        let p = random_params::<M>(seed, 0.1);
        let tokens = random_tokens::<M>(seed + 100);
        let loss = M::loss(&*p, &tokens, &mut *ws);
        let out = reference::forward(&spec, &dequantized_map::<M>(&p), &tokens, None, true);
        let logits = M::logits(&*ws);
        let mut worst = (loss - out.loss).abs();
        for t in 0..M::SEQ {
            for v in 0..M::VOCAB {
                worst = worst.max((logits[t * M::VOCAB + v] - out.logits[t][v]).abs());
            }
        }
        assert!(worst < 1e-10, "{}: max |generated - reference on dequantized| = {worst:e}", M::NAME);
        // And quantization changed something (the check is not vacuous).
        let plain = reference::forward(&spec, &param_map::<M>(&p), &tokens, None, true);
        assert!((plain.loss - out.loss).abs() > 1e-6, "{}: quantizing changed nothing", M::NAME);
    }
}

/// The gradient with respect to the latent parameters equals central
/// finite differences of the loss with respect to the dequantized
/// parameters (the same forward with the rounding held fixed). The
/// differences perturb `Workspace::qp`-style parameters directly through
/// the module's `dq` code, so no rounding moves.
fn gradient_matches_dequantized_fd<M: Model>(
    dq_loss: impl Fn(&M::Params<f64>, &[u32]) -> f64,
    dequantize: impl Fn(&M::Params<f64>, &mut M::Params<f64>),
) {
    let p = random_params::<M>(7, 0.1);
    let tokens = random_tokens::<M>(8);
    let mut ws = boxed_zeroed::<M::Workspace<f64>>();
    let mut g = boxed_zeroed::<M::Params<f64>>();
    M::loss_and_grad(&*p, &tokens, &mut *ws, &mut *g);
    let mut qp = boxed_zeroed::<M::Params<f64>>();
    dequantize(&p, &mut qp);
    let mut rng = Rng::new(9);
    let (mut worst, mut checked) = (0.0f64, 0);
    for t in M::TENSORS {
        for _ in 0..6.min(t.len) {
            let j = t.offset + rng.below(t.len as u64) as usize;
            let x0 = qp.as_flat()[j];
            let mut f = |dx: f64| {
                qp.as_flat_mut()[j] = x0 + dx;
                let l = dq_loss(&qp, &tokens);
                qp.as_flat_mut()[j] = x0;
                l
            };
            let a = g.as_flat()[j];
            let mut best = f64::INFINITY;
            for h in [1e-3, 2.5e-4, 6.25e-5, 1.5625e-5] {
                let n = (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h);
                best = best.min((a - n).abs() / a.abs().max(n.abs()).max(1e-5));
                if best < 1e-7 {
                    break;
                }
            }
            worst = worst.max(best);
            checked += 1;
        }
    }
    eprintln!("{}: {checked} entries, worst relative error {worst:.2e}", M::NAME);
    assert!(checked > 10 && worst < 1e-6, "{}: worst relative error {worst:e}", M::NAME);
}

/// `quantize` against the quantizer written here: codes, scales, packing,
/// and the f32 tensors copied; `QTENSORS` tiles `QParams` exactly.
fn deployable_params_by_hand<M: Model>(q_bytes: impl Fn(&M::QParams) -> &[u8]) {
    let p = random_params_in::<M, f32>(3, 0.1);
    let mut q = boxed_zeroed::<M::QParams>();
    M::quantize(&p, &mut q);
    let bytes = q_bytes(&q);
    let mut end = 0;
    for e in M::QTENSORS {
        assert_eq!(e.offset, end, "{}: {} is not contiguous", M::NAME, e.name);
        assert_eq!(e.bytes, e.shape.iter().product::<usize>() * e.dtype.size(), "{}", e.name);
        end += e.bytes;
    }
    assert_eq!(end, bytes.len());
    assert_eq!(bytes.len() % 4, 0);
    let at = |name: &str| M::QTENSORS.iter().find(|e| e.name == name);
    let f32s = |e: &nl_runtime::QTensorInfo| -> Vec<f64> {
        bytes[e.offset..e.offset + e.bytes]
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    };
    let latent = |t: &nl_runtime::TensorInfo| -> Vec<f64> {
        p.as_flat()[t.offset..t.offset + t.len].iter().map(|&x| f64::from(x)).collect()
    };
    let ternary = M::QUANT.weights == nl_runtime::quant::WeightQuant::Ternary;
    for t in M::TENSORS {
        let e = at(t.name).unwrap_or_else(|| panic!("{} missing from QTENSORS", t.name));
        if !t.quantized {
            assert_eq!((e.dtype, e.shape), (Dtype::F32, t.shape));
            assert_eq!(f32s(e), latent(t), "{} copied", t.name);
            continue;
        }
        let (out, inp) = (t.shape[0], t.shape[1]);
        let (_, scales, codes) =
            dequantize_by_hand(if ternary { "ternary" } else { "int8" }, &latent(t), out, inp, true);
        let s = at(&format!("{}.scale", t.name)).unwrap_or_else(|| panic!("{}.scale missing", t.name));
        assert_eq!(f32s(s), scales, "{} scales", t.name);
        let data = &bytes[e.offset..e.offset + e.bytes];
        if ternary {
            assert_eq!((e.dtype, e.shape), (Dtype::U8, &[out, inp.div_ceil(4)][..]));
            for o in 0..out {
                for i in 0..inp.div_ceil(4) * 4 {
                    let bits = (data[o * inp.div_ceil(4) + i / 4] >> (2 * (i % 4))) & 3;
                    let want = if i < inp { codes[o * inp + i] } else { 0 };
                    let code = match want {
                        0 => 0b00,
                        1 => 0b01,
                        -1 => 0b10,
                        _ => unreachable!(),
                    };
                    assert_eq!(bits, code, "{} row {o} column {i}", t.name);
                }
            }
        } else {
            assert_eq!((e.dtype, e.shape), (Dtype::I8, t.shape));
            let got: Vec<i8> = data.iter().map(|&b| b as i8).collect();
            assert_eq!(got, codes, "{} codes", t.name);
        }
    }
}

/// The integer step on `quantize(p)` against the step on the latent
/// parameters (which quantizes on the fly): the same quantized math, so
/// equal within f32 rounding.
fn integer_step_matches_latent_step<M: Model>() {
    let p = random_params_in::<M, f32>(5, 0.05);
    let mut q = boxed_zeroed::<M::QParams>();
    M::quantize(&p, &mut q);
    let mut pk = boxed_zeroed::<M::QPacked>();
    M::pack_q(&q, &mut pk);
    let (mut a, mut b) = (boxed_zeroed::<M::Stream<f32>>(), boxed_zeroed::<M::Stream<f32>>());
    let mut c = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut a);
    M::reset(&mut b);
    M::reset(&mut c);
    let mut rng = Rng::new(6);
    let mut worst = 0.0f64;
    for _ in 0..3 * M::SEQ {
        let tok = rng.below(M::VOCAB as u64) as u32;
        let x = M::try_step_q(&mut a, &q, tok).map(<[f32]>::to_vec).unwrap_or_default();
        // The serving copies (tiled int8 matrices, read where VNNI runs)
        // give the same exact integer sums: the same bits.
        let z = M::try_step_qp(&mut c, &q, &pk, tok).map(<[f32]>::to_vec).unwrap_or_default();
        assert_eq!(bits(&z), bits(&x), "{}: try_step_qp differs from try_step_q", M::NAME);
        let y = M::step(&mut b, &p, tok).to_vec();
        let scale = y.iter().fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
        for (u, v) in x.iter().zip(&y) {
            worst = worst.max(f64::from(u - v).abs() / scale);
        }
    }
    eprintln!("{}: integer step vs latent step, max relative difference {worst:.2e}", M::NAME);
    assert!(worst < 2e-4, "{}: integer step differs from the latent step by {worst:e}", M::NAME);
    assert!(M::try_step_q(&mut a, &q, M::VOCAB as u32).is_err());
}

/// Streaming on latent parameters against the training forward (f64).
fn stream_matches_training<M: Model>() {
    let rel = max_stream_vs_forward_rel::<M, f64>(4);
    assert!(rel < 1e-9, "{}: stream vs training forward {rel:e}", M::NAME);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn as_bytes<T>(t: &T) -> &[u8] {
    // SAFETY: `QParams` structs are `#[repr(C)]` arrays of f32/i8/u8 with no
    // padding (their size equals QPARAMS_BYTES, asserted at compile time),
    // so every byte is initialised; the slice borrows `t`.
    unsafe { std::slice::from_raw_parts(t as *const T as *const u8, std::mem::size_of::<T>()) }
}

macro_rules! quant_tests {
    ($t:ident, $m:ident, f32_acts: $f32_acts:expr) => {
        mod $t {
            use super::*;
            use $m as m;
            type M = m::Model;

            #[test]
            fn forward_matches_reference_on_dequantized_params() {
                if $f32_acts {
                    forward_matches_reference::<M>();
                }
            }

            #[test]
            fn gradient_is_the_straight_through_gradient() {
                if $f32_acts {
                    gradient_matches_dequantized_fd::<M>(
                        |qp, tokens| {
                            let mut ws = boxed_zeroed::<m::dq::Workspace<f64>>();
                            m::dq::loss(qp, tokens.try_into().expect("SEQ + 1 tokens"), &mut ws)
                        },
                        |p, qp| m::dequantize_params(p, qp),
                    );
                }
            }

            #[test]
            fn deployable_parameters_match_a_hand_quantizer() {
                deployable_params_by_hand::<M>(|q| as_bytes(q));
            }

            #[test]
            fn integer_step_matches_the_latent_step() {
                integer_step_matches_latent_step::<M>();
            }

            #[test]
            fn stream_matches_the_training_forward() {
                stream_matches_training::<M>();
            }

            #[test]
            fn footprint_is_the_size_of_the_generated_structs() {
                crate::common::harness::footprint_matches_generated_structs::<M>();
            }
        }
    };
}

quant_tests!(q_int8_tests, q_int8, f32_acts: true);
quant_tests!(q_ternary_f32_tests, q_ternary_f32, f32_acts: true);
quant_tests!(q_int8_acts_tests, q_int8_acts, f32_acts: false);
quant_tests!(q_ternary_tests, q_ternary, f32_acts: false);

/// With int8 activations the unembedding's gradient does not pass through
/// any activation's quantization (its input is quantized, but that is a
/// constant for it): it equals finite differences of the dequantized loss.
#[test]
fn int8_activations_unembedding_gradient_matches_fd() {
    type M = q_int8_acts::Model;
    let p = random_params::<M>(11, 0.1);
    let tokens = random_tokens::<M>(12);
    let mut ws = boxed_zeroed::<<M as Model>::Workspace<f64>>();
    let mut g = boxed_zeroed::<<M as Model>::Params<f64>>();
    M::loss_and_grad(&*p, &tokens, &mut *ws, &mut *g);
    let mut qp = boxed_zeroed::<<M as Model>::Params<f64>>();
    q_int8_acts::dequantize_params(&p, &mut qp);
    let t = M::TENSORS.iter().find(|t| t.name == "unembed").expect("unembed");
    let seq: &[u32; q_int8_acts::SEQ + 1] = tokens[..].try_into().expect("SEQ + 1 tokens");
    let mut dws = boxed_zeroed::<q_int8_acts::dq::Workspace<f64>>();
    let mut worst = 0.0f64;
    for j in (t.offset..t.offset + t.len).step_by(37) {
        let x0 = qp.as_flat()[j];
        let mut f = |dx: f64| {
            qp.as_flat_mut()[j] = x0 + dx;
            let l = q_int8_acts::dq::loss(&qp, seq, &mut dws);
            qp.as_flat_mut()[j] = x0;
            l
        };
        let h = 1e-3;
        let n = (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h);
        let a = g.as_flat()[j];
        worst = worst.max((a - n).abs() / a.abs().max(n.abs()).max(1e-5));
    }
    assert!(worst < 1e-6, "unembed gradient vs FD: {worst:e}");
}
