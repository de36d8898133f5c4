//! The data-parallel training path (`nl_runtime::parallel`: the persistent
//! pool `DataParallel` and the scoped-thread `loss_and_grad_batch`) matches
//! the sequential `loss_and_grad_batch` (up to summation order), is
//! bit-identical across repeated runs and pool reuse, and rejects batches of
//! partial sequences.

use crate::common::harness::*;
use crate::shipped::{micro, micro_memory};
use nl::nl_runtime::{boxed_zeroed, parallel, Flat, Model};

/// Sequences per test batch.
const SEQS: usize = 6;

/// `SEQS` random sequences back to back.
fn batch<M: Model>() -> Vec<u32> {
    (0..SEQS as u64).flat_map(|s| random_tokens::<M>(100 + s)).collect()
}

/// Loss and gradient of the parallel path with `n` workers, into zeroed grads.
fn parallel_grad<M: Model>(params: &M::Params<f64>, tokens: &[u32], n: usize) -> (f64, Vec<f64>)
where
    M::Params<f64>: Send + Sync,
    M::Workspace<f64>: Send,
{
    let mut workers = parallel::workers::<M, f64>(n);
    let mut grads = boxed_zeroed::<M::Params<f64>>();
    let loss = parallel::loss_and_grad_batch::<M, f64>(params, tokens, &mut workers, &mut *grads);
    (loss, grads.as_flat().to_vec())
}

fn check_matches_sequential<M: Model>()
where
    M::Params<f64>: Send + Sync,
    M::Workspace<f64>: Send,
{
    let params = random_params::<M>(7, 0.1);
    let tokens = batch::<M>();
    let mut ws = boxed_zeroed::<M::Workspace<f64>>();
    let mut seq_grads = boxed_zeroed::<M::Params<f64>>();
    let seq_loss = M::loss_and_grad_batch(&*params, &tokens, &mut *ws, &mut *seq_grads);
    let seq = seq_grads.as_flat();
    let scale = seq.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{}: zero gradient", M::NAME);
    for n in [1, 2, 3] {
        let (loss, grad) = parallel_grad::<M>(&params, &tokens, n);
        let loss_err = (loss - seq_loss).abs() / seq_loss.abs();
        assert!(loss_err < 1e-12, "{} x{n}: loss {loss} vs {seq_loss}", M::NAME);
        let worst = grad.iter().zip(seq).map(|(a, b)| (a - b).abs()).fold(0.0f64, f64::max) / scale;
        eprintln!("{} x{n}: max |parallel - sequential| / max |g| = {worst:e}", M::NAME);
        assert!(worst < 1e-12, "{} x{n}: relative gradient difference {worst:e}", M::NAME);
        if n == 1 {
            assert_eq!(grad, seq, "{}: one worker is the sequential path", M::NAME);
        }
        // The persistent pool gives the scoped path's bits, call after call
        // (one pool reused, also after a batch of another size).
        let mut dp = parallel::DataParallel::<M, f64>::new(n);
        assert_eq!(dp.workers(), n);
        for round in 0..3 {
            let mut g = boxed_zeroed::<M::Params<f64>>();
            let l = dp.loss_and_grad_batch(&params, &tokens, &mut *g);
            assert_eq!(l.to_bits(), loss.to_bits(), "{} x{n} pool round {round}: loss", M::NAME);
            assert!(
                g.as_flat().iter().zip(&grad).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} x{n} pool round {round}: grad differs from the scoped path",
                M::NAME
            );
            let mut other = boxed_zeroed::<M::Params<f64>>();
            dp.loss_and_grad_batch(&params, &tokens[..(M::SEQ + 1)], &mut *other);
        }
        // Repeated runs (fresh and reused workers) are bit-identical.
        for _ in 0..3 {
            let (loss2, grad2) = parallel_grad::<M>(&params, &tokens, n);
            assert_eq!(loss2.to_bits(), loss.to_bits(), "{} x{n}: loss not repeatable", M::NAME);
            assert!(
                grad2.iter().zip(&grad).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} x{n}: grad not repeatable",
                M::NAME
            );
        }
    }
}

#[test]
fn micro_parallel_matches_sequential() {
    check_matches_sequential::<micro::Model>();
}

#[test]
fn micro_memory_parallel_matches_sequential() {
    check_matches_sequential::<micro_memory::Model>();
}

#[test]
fn grads_accumulate_into_existing() {
    type M = micro::Model;
    let params = random_params::<M>(3, 0.1);
    let tokens = batch::<M>();
    let mut workers = parallel::workers::<M, f64>(2);
    let mut grads = boxed_zeroed::<<M as Model>::Params<f64>>();
    parallel::loss_and_grad_batch::<M, f64>(&params, &tokens, &mut workers, &mut *grads);
    let once = grads.as_flat().to_vec();
    parallel::loss_and_grad_batch::<M, f64>(&params, &tokens, &mut workers, &mut *grads);
    for (a, b) in grads.as_flat().iter().zip(&once) {
        assert!((a - 2.0 * b).abs() <= 1e-12 * b.abs().max(1e-300), "{a} vs 2 * {b}");
    }
}

#[test]
fn more_workers_than_sequences() {
    type M = micro_memory::Model;
    let params = random_params::<M>(5, 0.1);
    let tokens: Vec<u32> = batch::<M>()[..2 * (<M as Model>::SEQ + 1)].to_vec();
    let (l2, g2) = parallel_grad::<M>(&params, &tokens, 2);
    let (l3, g3) = parallel_grad::<M>(&params, &tokens, 3);
    assert_eq!(l2.to_bits(), l3.to_bits());
    assert_eq!(g2, g3);
}

#[test]
#[should_panic(expected = "whole sequences")]
fn partial_sequences_panic() {
    type M = micro::Model;
    let params = random_params::<M>(1, 0.1);
    let mut tokens = batch::<M>();
    tokens.pop();
    parallel_grad::<M>(&params, &tokens, 2);
}

#[test]
#[should_panic(expected = "whole sequences")]
fn partial_sequences_panic_memory() {
    type M = micro_memory::Model;
    let params = random_params::<M>(1, 0.1);
    let mut tokens = batch::<M>();
    tokens.push(0);
    parallel_grad::<M>(&params, &tokens, 3);
}

/// The pool on partial batches (sequence counts that do not divide among the
/// workers, down to one sequence and an empty batch) and with more workers
/// than sequences: each matches the sequential path within 1e-12 and the
/// scoped path bit for bit.
fn check_pool_batches<M: Model>()
where
    M::Params<f64>: Send + Sync,
    M::Workspace<f64>: Send,
{
    let params = random_params::<M>(11, 0.1);
    let all = batch::<M>();
    let len = M::SEQ + 1;
    let mut ws = boxed_zeroed::<M::Workspace<f64>>();
    for n in [2, 3, 4] {
        let mut dp = parallel::DataParallel::<M, f64>::new(n);
        for seqs in [0, 1, 2, 3, 5] {
            let tokens = &all[..seqs * len];
            let mut seq_grads = boxed_zeroed::<M::Params<f64>>();
            let seq_loss = M::loss_and_grad_batch(&*params, tokens, &mut *ws, &mut *seq_grads);
            let mut g = boxed_zeroed::<M::Params<f64>>();
            let loss = dp.loss_and_grad_batch(&params, tokens, &mut *g);
            assert!((loss - seq_loss).abs() <= 1e-12 * seq_loss.abs(), "{} x{n} {seqs} seqs: loss", M::NAME);
            let scale = seq_grads.as_flat().iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let worst = g.as_flat().iter().zip(seq_grads.as_flat()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-12 * scale, "{} x{n} {seqs} seqs: gradient off by {worst:e}", M::NAME);
            if seqs == 0 {
                assert!(loss == 0.0 && scale == 0.0);
            }
            let (l2, g2) = parallel_grad::<M>(&params, tokens, n);
            assert_eq!(loss.to_bits(), l2.to_bits(), "{} x{n} {seqs} seqs: pool vs scoped loss", M::NAME);
            assert!(g.as_flat().iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

#[test]
fn micro_pool_partial_batches() {
    check_pool_batches::<micro::Model>();
}

#[test]
fn micro_memory_pool_partial_batches() {
    check_pool_batches::<micro_memory::Model>();
}

#[test]
fn pool_accumulates_into_existing() {
    type M = micro::Model;
    let params = random_params::<M>(3, 0.1);
    let tokens = batch::<M>();
    let mut dp = parallel::DataParallel::<M, f64>::new(2);
    let mut grads = boxed_zeroed::<<M as Model>::Params<f64>>();
    dp.loss_and_grad_batch(&params, &tokens, &mut *grads);
    let once = grads.as_flat().to_vec();
    dp.loss_and_grad_batch(&params, &tokens, &mut *grads);
    for (a, b) in grads.as_flat().iter().zip(&once) {
        assert!((a - 2.0 * b).abs() <= 1e-12 * b.abs().max(1e-300), "{a} vs 2 * {b}");
    }
}

#[test]
#[should_panic(expected = "whole sequences")]
fn pool_partial_sequences_panic() {
    type M = micro::Model;
    let params = random_params::<M>(1, 0.1);
    let mut tokens = batch::<M>();
    tokens.pop();
    let mut dp = parallel::DataParallel::<M, f64>::new(2);
    let mut grads = boxed_zeroed::<<M as Model>::Params<f64>>();
    dp.loss_and_grad_batch(&params, &tokens, &mut *grads);
}

#[test]
fn pool_survives_a_worker_panic() {
    // A token outside the vocabulary panics on the worker whose chunk holds
    // it (the last one); the panic reaches the caller and the pool still works.
    type M = micro::Model;
    let params = random_params::<M>(2, 0.1);
    let good = batch::<M>();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() = <M as Model>::VOCAB as u32;
    let mut dp = parallel::DataParallel::<M, f64>::new(3);
    let mut grads = boxed_zeroed::<<M as Model>::Params<f64>>();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dp.loss_and_grad_batch(&params, &bad, &mut *grads);
    }));
    assert!(r.is_err(), "an out-of-vocabulary token must panic");
    let mut g = boxed_zeroed::<<M as Model>::Params<f64>>();
    let loss = dp.loss_and_grad_batch(&params, &good, &mut *g);
    let (l2, g2) = parallel_grad::<M>(&params, &good, 3);
    assert_eq!(loss.to_bits(), l2.to_bits());
    assert!(g.as_flat().iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// Random vectors for an optimizer step: params, grads, m, v (v >= 0).
fn adam_state(n: usize, seed: u64) -> [Vec<f64>; 4] {
    let mut rng = nl::nl_runtime::rng::Rng::new(seed);
    let mut draw = |k: f64| (0..n).map(|_| k * rng.normal()).collect::<Vec<f64>>();
    let (p, g, m) = (draw(0.5), draw(3.0), draw(0.1));
    let v = draw(0.1).into_iter().map(|x| x * x).collect();
    [p, g, m, v]
}

/// `DataParallel::adamw_step` against the oracle, the sequential
/// `grads *= scale; AdamW::step` on copies: without clipping every element
/// is bit-identical (the norm, summed by ranges, only clips); with clipping
/// within 1e-12; the norm within 1e-12; repeatable bit for bit.
#[test]
fn pool_adamw_matches_the_sequential_step() {
    use nl::nl_runtime::optim::AdamW;
    type M = micro::Model;
    let n = <M as Model>::PARAM_COUNT + 5; // not a multiple of the workers or of 8
    for workers in [1, 2, 3] {
        let mut dp = parallel::DataParallel::<M, f64>::new(workers);
        for (clip, t) in [(0.0, 1), (1.0, 3), (1e9, 7)] {
            let opt = AdamW { lr: 1e-2, weight_decay: 0.1, clip, ..AdamW::default() };
            let [p0, g0, m0, v0] = adam_state(n, 40 + t);
            let (mut p, mut g, mut m, mut v) = (p0.clone(), g0.clone(), m0.clone(), v0.clone());
            for x in &mut g {
                *x *= 0.25;
            }
            let seq_norm = opt.step(&mut p, &mut g, &mut m, &mut v, t).expect("finite");
            let mut run = || {
                let (mut pp, mut gp, mut mp, mut vp) = (p0.clone(), g0.clone(), m0.clone(), v0.clone());
                let norm = dp.adamw_step(&opt, 0.25, &mut pp, &mut gp, &mut mp, &mut vp, t).expect("finite");
                (norm, [pp, gp, mp, vp])
            };
            let (norm, got) = run();
            assert!((norm - seq_norm).abs() <= 1e-12 * seq_norm, "x{workers}: norm {norm} vs {seq_norm}");
            for (name, (a, b)) in ["params", "grads", "m", "v"].iter().zip(got.iter().zip([&p, &g, &m, &v])) {
                if clip == 0.0 || clip == 1e9 || workers == 1 {
                    assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "x{workers} clip {clip}: {name}");
                } else {
                    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-3)).fold(0.0, f64::max);
                    assert!(worst < 1e-12, "x{workers} clip {clip}: {name} off by {worst:e}");
                }
            }
            let (norm2, again) = run();
            assert_eq!(norm2.to_bits(), norm.to_bits());
            assert!(again.iter().zip(&got).all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())));
        }
    }
}

/// A refused step writes nothing to params, m and v, and names the element
/// the sequential step names.
#[test]
fn pool_adamw_refuses_what_the_sequential_step_refuses() {
    use nl::nl_runtime::optim::AdamW;
    type M = micro::Model;
    let n = 1000;
    let [p0, g0, m0, v0] = adam_state(n, 9);
    for workers in [2, 3] {
        let mut dp = parallel::DataParallel::<M, f64>::new(workers);
        // A NaN gradient in the last worker's range; then an update that overflows.
        let mut bad_g = g0.clone();
        bad_g[977] = f64::NAN;
        let mut big_p = p0.clone();
        big_p[612] = f64::MAX;
        let cases = [
            (AdamW::default(), p0.clone(), bad_g),
            (AdamW { weight_decay: -1e3, lr: 1.0, clip: 0.0, ..AdamW::default() }, big_p, g0.clone()),
        ];
        for (opt, p_in, g_in) in cases {
            let (mut p, mut g, mut m, mut v) = (p_in.clone(), g_in.clone(), m0.clone(), v0.clone());
            let seq = opt.step(&mut p, &mut g, &mut m, &mut v, 1).expect_err("refused");
            let (mut p, mut g, mut m, mut v) = (p_in.clone(), g_in.clone(), m0.clone(), v0.clone());
            let got = dp.adamw_step(&opt, 1.0, &mut p, &mut g, &mut m, &mut v, 1).expect_err("refused");
            assert_eq!(got.index(), seq.index(), "x{workers}: {got} vs {seq}");
            assert!(p.iter().zip(&p_in).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(m == m0 && v == v0);
        }
    }
}
