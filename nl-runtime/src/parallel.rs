//! Data-parallel training over a batch, on several threads, with a
//! deterministic gradient reduction (needs the `std` feature).
//!
//! A batch of whole sequences (`SEQ + 1` tokens each) is split into one
//! contiguous chunk per [`Worker`]; chunk `i` runs [`Model::loss_and_grad_batch`]
//! into worker `i`'s own zeroed gradient buffer, worker 0 on the calling
//! thread and every other worker on a scoped thread
//! ([`std::thread::scope`]). The per-worker gradients are then added into the
//! caller's gradient in worker index order, element by element, and the
//! per-chunk losses are summed in the same order, so the result depends only
//! on the batch and the number of workers, never on thread timing: repeated
//! calls are bit-identical. (It may differ from the single-threaded
//! [`Model::loss_and_grad_batch`] in the last bits, as the summation order
//! of the sequences' gradients differs.)
//!
//! The threads share the parameters and own their workers, so generic
//! callers need `M::Params<S>: Send + Sync` and `M::Workspace<S>: Send`
//! (every generated model satisfies both: its structs are arrays of `S`).
//!
//! ```ignore
//! let mut workers: Vec<Worker<M, f32>> = (0..2).map(|_| Worker::new()).collect();
//! grads.as_flat_mut().fill(0.0);
//! let loss = loss_and_grad_batch::<M, f32>(&params, batch_tokens, &mut workers, &mut grads);
//! ```

use alloc::boxed::Box;

use crate::{boxed_zeroed, Flat, Model, Scalar};

/// Per-thread state of the data-parallel path: a training workspace and a
/// gradient buffer, both heap-allocated with [`boxed_zeroed`].
///
/// Reuse workers across steps: building one allocates a workspace and a full
/// parameter-sized gradient buffer.
pub struct Worker<M: Model, S: Scalar> {
    /// Scratch for the sequences of this worker's chunk.
    pub ws: Box<M::Workspace<S>>,
    /// This worker's gradient for its chunk (zeroed before every use).
    pub grads: Box<M::Params<S>>,
}

impl<M: Model, S: Scalar> Worker<M, S> {
    /// A worker with a zeroed workspace and gradient buffer.
    pub fn new() -> Self {
        Self { ws: boxed_zeroed(), grads: boxed_zeroed() }
    }
}

impl<M: Model, S: Scalar> Default for Worker<M, S> {
    fn default() -> Self {
        Self::new()
    }
}

/// `workers` fresh [`Worker`]s.
pub fn workers<M: Model, S: Scalar>(workers: usize) -> std::vec::Vec<Worker<M, S>> {
    (0..workers).map(|_| Worker::new()).collect()
}

/// The sequence range `[start, end)` of chunk `i` when `seqs` sequences are
/// split into `chunks` contiguous, balanced chunks (sizes differ by at most one).
fn chunk_range(seqs: usize, chunks: usize, i: usize) -> (usize, usize) {
    (i * seqs / chunks, (i + 1) * seqs / chunks)
}

/// Data-parallel [`Model::loss_and_grad_batch`]: adds the gradient of every
/// sequence of `tokens` into `grads` and returns the sum of their mean losses.
///
/// `tokens` holds whole sequences of `SEQ + 1` tokens back to back. They are
/// split into `workers.len()` contiguous chunks (chunk `i` is sequences
/// `i * n / w .. (i + 1) * n / w`); chunk `i` runs on worker `i`, worker 0 on
/// the calling thread and the others on scoped threads. Each worker's
/// gradient buffer is zeroed and receives its chunk's gradient; then, for
/// every element `j`, `grads[j] += g[0][j]; grads[j] += g[1][j]; ...` in
/// worker index order (through [`Flat::as_flat`]), and the returned loss is the sum of the chunk losses in index
/// order. The result is therefore deterministic for a given batch and
/// worker count. Workers whose chunk is empty (more workers than
/// sequences) do no work.
///
/// With one worker no thread is spawned and the call is exactly
/// `M::loss_and_grad_batch(params, tokens, &mut workers[0].ws, grads)`
/// (bit-identical to the sequential path; the worker's gradient buffer is
/// not used).
///
/// # Panics
/// If `workers` is empty, if `tokens.len()` is not a multiple of `SEQ + 1`,
/// or if a token is `>= VOCAB` (a panic on a worker thread is propagated).
pub fn loss_and_grad_batch<M: Model, S: Scalar>(
    params: &M::Params<S>,
    tokens: &[u32],
    workers: &mut [Worker<M, S>],
    grads: &mut M::Params<S>,
) -> S
where
    M::Params<S>: Send + Sync,
    M::Workspace<S>: Send,
{
    let len = M::SEQ + 1;
    assert!(!workers.is_empty(), "parallel::loss_and_grad_batch needs at least one worker");
    assert!(
        tokens.len().is_multiple_of(len),
        "parallel::loss_and_grad_batch: a batch is whole sequences of SEQ + 1 = {len} tokens, got {} tokens",
        tokens.len()
    );
    if workers.len() == 1 {
        return M::loss_and_grad_batch(params, tokens, &mut *workers[0].ws, grads);
    }
    let seqs = tokens.len() / len;
    let n = workers.len();
    let run = |i: usize, w: &mut Worker<M, S>| -> S {
        w.grads.as_flat_mut().fill(S::ZERO);
        let (a, b) = chunk_range(seqs, n, i);
        if a == b {
            return S::ZERO;
        }
        M::loss_and_grad_batch(params, &tokens[a * len..b * len], &mut *w.ws, &mut *w.grads)
    };
    let mut losses = std::vec![S::ZERO; n];
    std::thread::scope(|scope| {
        let (first, rest) = workers.split_first_mut().expect("at least one worker");
        let (loss0, rest_losses) = losses.split_first_mut().expect("one loss per worker");
        let run = &run;
        let handles: std::vec::Vec<_> = rest
            .iter_mut()
            .zip(rest_losses.iter_mut())
            .enumerate()
            .map(|(k, (w, l))| scope.spawn(move || *l = run(k + 1, w)))
            .collect();
        *loss0 = run(0, first);
        for h in handles {
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    let out = grads.as_flat_mut();
    for w in workers.iter() {
        for (g, &x) in out.iter_mut().zip(w.grads.as_flat()) {
            *g += x;
        }
    }
    let mut loss = S::ZERO;
    for l in losses {
        loss += l;
    }
    loss
}

#[cfg(test)]
mod tests {
    use super::chunk_range;

    #[test]
    fn chunks_cover_every_sequence_once() {
        for seqs in 0..20 {
            for chunks in 1..6 {
                let mut next = 0;
                for i in 0..chunks {
                    let (a, b) = chunk_range(seqs, chunks, i);
                    assert_eq!(a, next);
                    assert!(b >= a && b - a <= seqs / chunks + 1);
                    next = b;
                }
                assert_eq!(next, seqs);
            }
        }
    }
}
