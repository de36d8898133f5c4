//! The data-parallel training path (`nl_runtime::parallel`) matches the
//! sequential `loss_and_grad_batch` (up to summation order), is bit-identical
//! across repeated runs, and rejects batches of partial sequences.

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
