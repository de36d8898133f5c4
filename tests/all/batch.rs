//! Many streams per core (docs/batch.md): `Model::try_step_batch` over `N`
//! streams against `N` single streams each stepped by `Model::step` (the
//! oracle: the single-stream step is itself tested against the reference
//! interpreter in `memory`, `blocks`, `attention` and `reference_oracle`).
//!
//! For every spec of the matrix (the shipped micro specs, every memory rule
//! with MAG and MAL, multi-level specs with periods, every block feature:
//! norms, RoPE and bias positions, each MLP activation, tied embeddings,
//! several layers; a quantized spec, whose batched step is per stream) and
//! `N` in 1, 3 and 16: the streams start at different positions (each first
//! fed its own number of tokens, some past the window), every third stream
//! has its memory frozen, each step feeds each stream its own random token,
//! and each stream's logits must equal its single stream's at every step
//! (f64, relative to the row's largest logit), and every memory level's
//! final state too. A batch with a token `>= VOCAB` must be an error that
//! changes no stream (the steps after it still match).

use crate::common::harness::*;
use crate::{attention, blocks, memory, quantized, shipped};
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Model, Scalar};

/// How a test sets a stream's `freeze_memory` (`None`: no memory).
type Freeze<M, S> = Option<fn(&mut <M as Model>::Stream<S>, bool)>;

/// Worst relative difference between batched and single-stream logits
/// (and memory states) over a run of `N` streams.
fn batch_vs_single<M: Model, S: Scalar, const N: usize>(seed: u64, freeze: Freeze<M, S>) -> f64 {
    let p = random_params_in::<M, S>(seed, 0.05);
    let mut packed = boxed_zeroed::<M::Packed<S>>();
    M::pack_serving(&p, &mut packed);
    let mut batch = boxed_zeroed::<[M::Stream<S>; N]>();
    let mut single: Vec<Box<M::Stream<S>>> = (0..N).map(|_| boxed_zeroed()).collect();
    let mut sc = boxed_zeroed::<M::BatchScratch<S, N>>();
    let mut rng = Rng::new(seed ^ 0xBA7C);
    let tok = |rng: &mut Rng| rng.below(M::VOCAB as u64) as u32;
    // Different positions: stream i first sees its own number of tokens
    // (through the single step on both sides, which leaves them equal).
    for i in 0..N {
        if let Some(f) = freeze {
            f(&mut batch[i], i % 3 == 1);
            f(&mut single[i], i % 3 == 1);
        }
        for _ in 0..(i * 7) % (2 * M::WINDOW + 5) {
            let t = tok(&mut rng);
            M::step(&mut batch[i], &p, t);
            M::step(&mut single[i], &p, t);
        }
    }
    let mut worst = 0.0f64;
    let steps = 2 * M::WINDOW + 6;
    for step in 0..steps {
        let tokens: [u32; N] = core::array::from_fn(|_| tok(&mut rng));
        if step == steps / 2 {
            let mut bad = tokens;
            bad[N - 1] = M::VOCAB as u32;
            let err = M::try_step_batch(&mut batch, &p, &packed, &mut sc, &bad);
            assert_eq!(err.err().map(|e| e.token), Some(M::VOCAB as u32), "{}: a token >= VOCAB is an error", M::NAME);
        }
        let got = match M::try_step_batch(&mut batch, &p, &packed, &mut sc, &tokens) {
            Ok(l) => l.to_vec(),
            Err(e) => panic!("{}: {e}", M::NAME),
        };
        assert_eq!(got.len(), N * M::VOCAB);
        for i in 0..N {
            let want = M::step(&mut single[i], &p, tokens[i]);
            let scale = want.iter().fold(1.0f64, |m, x| m.max(x.to_f64().abs()));
            for (a, b) in got[i * M::VOCAB..(i + 1) * M::VOCAB].iter().zip(want) {
                worst = worst.max((a.to_f64() - b.to_f64()).abs() / scale);
            }
        }
    }
    for i in 0..N {
        for l in 0..M::LAYERS * M::LEVELS {
            match (M::memory_level(&batch[i], l), M::memory_level(&single[i], l)) {
                (Some(a), Some(b)) => worst = worst.max(max_state_diff(a, b)),
                (a, b) => assert!(a.is_none() && b.is_none(), "{}: level {l} in one stream only", M::NAME),
            }
        }
    }
    worst
}

/// Runs `N` = 1, 3 and 16 in f64 (and 3 in f32) and checks the worst difference.
fn check<M: Model>(f64_freeze: Freeze<M, f64>, f32_freeze: Freeze<M, f32>) {
    let runs = [
        ("f64 N=1", batch_vs_single::<M, f64, 1>(1, f64_freeze), 1e-11),
        ("f64 N=3", batch_vs_single::<M, f64, 3>(2, f64_freeze), 1e-11),
        ("f64 N=16", batch_vs_single::<M, f64, 16>(3, f64_freeze), 1e-11),
        ("f32 N=3", batch_vs_single::<M, f32, 3>(4, f32_freeze), 1e-5),
    ];
    for (what, worst, tol) in runs {
        println!("{} {what}: worst relative difference {worst:.3e}", M::NAME);
        assert!(
            worst <= tol,
            "{} {what}: batched logits differ from single-stream step by {worst:e} > {tol:e}",
            M::NAME
        );
    }
}

macro_rules! batch_tests {
    ($($m:ident :: $s:ident $(, $mem:ident)?;)*) => {
        $(
            #[test]
            fn $s() {
                batch_tests!(@run $m :: $s $(, $mem)?);
            }
        )*
    };
    (@run $m:ident :: $s:ident, mem) => {
        check::<$m::$s::Model>(
            Some(|st: &mut $m::$s::Stream<f64>, f| st.freeze_memory = f),
            Some(|st: &mut $m::$s::Stream<f32>, f| st.freeze_memory = f),
        )
    };
    (@run $m:ident :: $s:ident) => {
        check::<$m::$s::Model>(None, None)
    };
}

batch_tests! {
    shipped::micro;
    shipped::micro_memory, mem;
    shipped::micro_titans, mem;
    shipped::micro_hebbian, mem;
    shipped::micro_mal, mem;
    shipped::micro_cms4, mem;
    attention::odd;
    attention::one_head;
    memory::delta_mag, mem;
    memory::delta_mal, mem;
    memory::titans_mag, mem;
    memory::titans_mal, mem;
    memory::hebbian_mag, mem;
    memory::hebbian_mal, mem;
    memory::delta_raw, mem;
    memory::cms_odd, mem;
    memory::cms_titans_unnormalized, mem;
    blocks::b_plain_two;
    blocks::b_rms_swiglu_rope_tied;
    blocks::b_rms_gelu_bias;
    blocks::b_gelu_rope_res;
    blocks::b_delta_mag_layer_gelu_bias, mem;
    blocks::b_delta_mal_one_block_all, mem;
    blocks::b_delta_mal_rms_relu, mem;
    blocks::b_delta_mag_rope_raw, mem;
    blocks::b_titans_mal_rms_relu_rope_tied, mem;
    blocks::b_titans_mag_layer_swiglu, mem;
    blocks::b_hebbian_mag_layer_raw, mem;
    blocks::b_hebbian_mal_bias_relu_tied, mem;
    quantized::q_int8, mem;
    quantized::q_int8_acts, mem;
}
