//! Data-parallel training over a batch, on several threads, with a
//! deterministic gradient reduction (needs the `std` feature).
//!
//! Two entry points:
//!
//! - [`DataParallel`]: a persistent [`Pool`] of threads, started once and
//!   reused for every step, with one [`Worker`] per thread. This is the form
//!   for a training loop (no thread is spawned per step, the gradient
//!   reduction runs on every thread).
//! - [`loss_and_grad_batch`]: the same computation on scoped threads spawned
//!   for the call (a one-off call; a loop should use [`DataParallel`]).
//!
//! A batch of whole sequences (`SEQ + 1` tokens each) is split into one
//! contiguous chunk per worker; chunk `i` runs [`Model::loss_and_grad_batch`]
//! into worker `i`'s own zeroed gradient buffer, worker 0 on the calling
//! thread. The per-worker gradients are then added into the caller's
//! gradient in worker index order, element by element
//! (`grads[j] += g[0][j]; grads[j] += g[1][j]; ...`), and the per-chunk
//! losses are summed in the same order, so the result depends only on the
//! batch and the number of workers, never on thread timing: repeated calls
//! are bit-identical, and [`DataParallel`] and [`loss_and_grad_batch`] give
//! the same bits for the same worker count. (It may differ from the
//! single-threaded [`Model::loss_and_grad_batch`] in the last bits, as the
//! summation order of the sequences' gradients differs.) [`DataParallel`]
//! splits the reduction itself by element: thread `t` reduces the elements
//! of its own contiguous range, each element still in worker order, so the
//! bits are those of the serial reduction.
//!
//! The threads share the parameters and own their workers, so generic
//! callers need `M::Params<S>: Send + Sync` and `M::Workspace<S>: Send`
//! (every generated model satisfies both: its structs are arrays of `S`).
//!
//! ```ignore
//! let mut dp = DataParallel::<M, f32>::new(2);
//! grads.as_flat_mut().fill(0.0);
//! let loss = dp.loss_and_grad_batch(&params, batch_tokens, &mut grads);
//! ```
//!
//! # Why a hand-written pool
//!
//! [`Pool`] is about a hundred lines over [`std::thread`], [`Mutex`] and
//! [`Condvar`] rather than a crate such as rayon because what a training
//! step needs is narrow and a general pool does not give it for free: job
//! `i` must run on thread `i` (fixed assignment, so the reduction order is
//! a function of the index, not of work stealing), a step must allocate
//! nothing (rayon's `scope`/`spawn` box every job), the calling thread must
//! work as worker 0 instead of blocking in `install`, and `nl-runtime`
//! keeps no dependency beyond `libm`. The one `unsafe` is the lifetime
//! erasure of the job handed to the threads; its proof is at [`Pool::run`].

use alloc::boxed::Box;
use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::optim::{self, AdamUpdate, AdamW, NonFinite};
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

/// A job as the pool's threads see it: a type-erased `&dyn Fn(usize) + Sync`
/// whose lifetime has been erased (see the proof at [`Pool::run`]).
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, so calling it through a shared pointer from
// several threads at once is sound; that the pointee outlives every use is
// proved at `Pool::run`.
unsafe impl Send for Job {}

/// What the calling thread and the pool's threads share, under one lock.
struct State {
    /// Incremented once per [`Pool::run`]; a thread runs each generation once.
    generation: u64,
    /// The current generation's job (`None` between runs).
    job: Option<Job>,
    /// The first panic payload of a thread in the current generation.
    panic: Option<Box<dyn Any + Send>>,
    /// Set by `Drop`: the threads exit.
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// A copy of `State::generation`, written under the lock, that idle
    /// threads poll while they spin.
    generation: AtomicU64,
    /// Threads that have not yet finished the current generation's job
    /// (set under the lock by `run`; decremented by the threads).
    pending: AtomicUsize,
    /// Signalled when a new generation (or shutdown) is published.
    start: Condvar,
    /// Signalled when `pending` reaches zero.
    done: Condvar,
}

impl Shared {
    /// The state, whatever a panicking thread left (no code panics while
    /// holding the lock, so the state is always consistent).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A persistent pool of `workers - 1` threads plus the calling thread: the
/// threads are started once by [`Pool::new`] and reused by every
/// [`Pool::run`], which runs job `i` on thread `i` (job 0 on the caller).
///
/// A waiting thread (a pool thread between jobs, the caller waiting for the
/// others) first spins for up to [`SPIN`], polling an atomic and yielding
/// the core between polls, then blocks
/// on a condition variable: a training step's jobs follow each other within
/// microseconds, and waking a blocked thread costs a system call and, on a
/// virtual machine, the wake-up of an idle virtual CPU (tens of
/// microseconds), while the bounded spin costs a loaded machine at most
/// [`SPIN`] of CPU per wait. Dropping the pool stops and joins the threads.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `workers` workers: the calling thread and `workers - 1`
    /// threads, started now.
    ///
    /// # Panics
    /// If `workers == 0`, or if the operating system refuses a thread.
    pub fn new(workers: usize) -> Self {
        assert!(workers > 0, "parallel::Pool needs at least one worker");
        let shared = Arc::new(Shared {
            state: Mutex::new(State { generation: 0, job: None, panic: None, shutdown: false }),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        let threads = (1..workers)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(std::format!("nl-pool-{index}"))
                    .spawn(move || worker_loop(&shared, index))
                    .expect("parallel::Pool: could not start a thread")
            })
            .collect();
        Self { shared, threads }
    }

    /// The number of workers (threads plus the caller).
    pub fn workers(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `f(i)` once for every `i` in `0..self.workers()`, `f(0)` on the
    /// calling thread and `f(i)` on the pool's thread `i`, and returns when
    /// every call has returned. A panic in any call is propagated to the
    /// caller after every other call has finished (the first thread's
    /// payload, or the caller's own).
    ///
    /// Nothing is allocated. `&mut self` makes runs of one pool exclusive.
    pub fn run<F: Fn(usize) + Sync>(&mut self, f: F) {
        if self.threads.is_empty() {
            f(0);
            return;
        }
        let f: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY (lifetime erasure): the transmute only widens the trait
        // object's lifetime bound to 'static; the layout of the fat pointer
        // is unchanged. It is sound because the pointer is dereferenced only
        // while `f` is alive:
        // - a thread dereferences the `Job` of a generation only between
        //   reading it under the lock and decrementing `pending` (it keeps
        //   no copy afterwards: `worker_loop` reads `job` anew for every
        //   generation, and only after `generation` has changed);
        // - this function publishes the job with `pending = threads`, and
        //   does not return, nor unwind (`f(0)` runs under `catch_unwind`),
        //   before it has loaded `pending == 0` (Acquire, pairing with each
        //   thread's AcqRel decrement, which follows its last use of the
        //   job), and then clears `job`, all while `f` (a local of this
        //   frame) is alive;
        // - a thread that panics in the job still decrements `pending`
        //   (the job runs under `catch_unwind`), so the wait always ends
        //   unless a job never returns, in which case this frame never ends
        //   either.
        // `&mut self` rules out a second `run` overwriting `job` meanwhile.
        let job = Job(unsafe {
            core::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(f)
        });
        {
            let mut st = self.shared.lock();
            st.job = Some(job);
            self.shared.pending.store(self.threads.len(), Ordering::Relaxed);
            st.generation += 1;
            self.shared.generation.store(st.generation, Ordering::Release);
        }
        self.shared.start.notify_all();
        let own = catch_unwind(AssertUnwindSafe(|| f(0)));
        spin_while(|| self.shared.pending.load(Ordering::Acquire) > 0);
        let payload = {
            let mut st = self.shared.lock();
            while self.shared.pending.load(Ordering::Acquire) > 0 {
                st = self.shared.done.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.job = None;
            st.panic.take()
        };
        if let Err(e) = own {
            resume_unwind(e);
        }
        if let Some(e) = payload {
            resume_unwind(e);
        }
    }

    /// Runs `f(i, &mut items[i])` for every `i`, item `i` on worker `i`
    /// (see [`Pool::run`]).
    ///
    /// # Panics
    /// If `items.len() != self.workers()`, or if a call panics.
    pub fn for_each_mut<T: Send, F: Fn(usize, &mut T) + Sync>(&mut self, items: &mut [T], f: F) {
        assert_eq!(items.len(), self.workers(), "parallel::Pool::for_each_mut: one item per worker");
        let base = SyncPtr(items.as_mut_ptr());
        let n = items.len();
        self.run(move |i| {
            assert!(i < n);
            let base = &base;
            // SAFETY: `i < n = items.len()`, so the pointer is in bounds of
            // `items`, which is exclusively borrowed for this call; `run`
            // calls the closure exactly once per index, so the `&mut` of
            // different calls are disjoint elements and none outlives its
            // call; `T: Send` lets the element be used on another thread.
            let item = unsafe { &mut *base.0.add(i) };
            f(i, item);
        });
    }
}

/// Range `i` of `n` (`chunk_range(total, n, i)`) of the slice of `total`
/// elements at `p.0`.
///
/// # Safety
/// `p.0` must point to `total` initialised elements exclusively borrowed
/// for `'a`, and no other reference to the range may be alive while the
/// returned slice is (different `i` give disjoint ranges).
unsafe fn part<'a, S>(p: &SyncPtr<S>, total: usize, n: usize, i: usize) -> &'a mut [S] {
    assert!(i < n, "range {i} of {n}");
    let (a, b) = chunk_range(total, n, i);
    // SAFETY: `i < n` (asserted), so `a <= b <= total` (chunk_range) and
    // the range is inside the slice; the caller guarantees the rest.
    unsafe { core::slice::from_raw_parts_mut(p.0.add(a), b - a) }
}

/// A raw pointer that may be shared between the pool's threads (the users
/// of it prove each access disjoint).
struct SyncPtr<T>(*mut T);

// SAFETY: `SyncPtr` is only a pointer value; every dereference is justified
// where it happens (disjoint indices of a buffer exclusively borrowed for the
// duration of a `Pool::run`), and `T: Send` allows the pointee to be used on
// another thread.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.start.notify_all();
        for t in self.threads.drain(..) {
            // A thread's panics are caught in `worker_loop`: join cannot fail
            // but for an abort, and a destructor must not panic.
            let _ = t.join();
        }
    }
}

/// The body of pool thread `index`: wait for a generation, run its job,
/// report, repeat until shutdown.
fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        spin_while(|| shared.generation.load(Ordering::Acquire) == seen);
        let job = {
            let mut st = shared.lock();
            while st.generation == seen && !st.shutdown {
                st = shared.start.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job.expect("a new generation has a job")
        };
        // SAFETY: see `Pool::run`: the job's pointee is alive until this
        // thread decrements `pending` below.
        let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.0)(index) }));
        if let Err(e) = result {
            shared.lock().panic.get_or_insert(e);
        }
        if shared.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Take the lock before notifying: the caller checks `pending`
            // under the lock before it waits, so it is either not yet
            // checking (and will see 0) or already waiting (and is woken).
            let _st = shared.lock();
            shared.done.notify_one();
        }
    }
}

/// How long a waiting thread spins before it blocks (see [`Pool`]).
pub const SPIN: Duration = Duration::from_micros(200);

/// Spins while `busy()` holds, for at most [`SPIN`], yielding the core
/// between polls: on an idle core `yield_now` returns at once (the spin
/// keeps its latency), on a loaded one it lets the runnable threads (the
/// one being waited for among them) run instead of the spinner.
fn spin_while(busy: impl Fn() -> bool) {
    let start = Instant::now();
    while busy() {
        for _ in 0..16 {
            core::hint::spin_loop();
        }
        std::thread::yield_now();
        if start.elapsed() >= SPIN {
            return;
        }
    }
}

/// The per-worker state of [`DataParallel`] other than the gradient: a
/// workspace and the loss of the worker's chunk.
struct Scratch<M: Model, S: Scalar> {
    ws: Box<M::Workspace<S>>,
    loss: S,
}

/// Data-parallel [`Model::loss_and_grad_batch`] on a persistent [`Pool`]:
/// the threads, workspaces and gradient buffers are made once by
/// [`DataParallel::new`] and reused by every step.
///
/// Each step is two [`Pool::run`]s: the chunks' gradients (chunk `i` on
/// worker `i`), then the reduction, each thread adding into its own
/// contiguous range of the caller's gradient (in worker order per element).
/// Results are those of [`loss_and_grad_batch`] with as many workers, bit
/// for bit.
pub struct DataParallel<M: Model, S: Scalar> {
    pool: Pool,
    /// Worker `i`'s workspace and loss.
    scratch: Vec<Scratch<M, S>>,
    /// Worker `i`'s gradient (apart from `scratch`, so the reduction can
    /// share the gradients without sharing the workspaces).
    grads: Vec<Box<M::Params<S>>>,
    /// Worker `i`'s partial sum of squares in [`DataParallel::adamw_step`].
    sums: Vec<f64>,
    /// Worker `i`'s check result in [`DataParallel::adamw_step`].
    checks: Vec<Result<(), NonFinite>>,
}

impl<M: Model, S: Scalar> DataParallel<M, S>
where
    M::Params<S>: Send + Sync,
    M::Workspace<S>: Send,
{
    /// A pool of `workers` workers (the calling thread and `workers - 1`
    /// threads), each with a zeroed workspace and gradient buffer.
    ///
    /// # Panics
    /// If `workers == 0`.
    pub fn new(workers: usize) -> Self {
        assert!(workers > 0, "parallel::DataParallel needs at least one worker");
        Self {
            pool: Pool::new(workers),
            scratch: (0..workers).map(|_| Scratch { ws: boxed_zeroed(), loss: S::ZERO }).collect(),
            grads: (0..workers).map(|_| boxed_zeroed()).collect(),
            sums: std::vec![0.0; workers],
            checks: std::vec![Ok(()); workers],
        }
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.scratch.len()
    }

    /// Adds the gradient of every sequence of `tokens` into `grads` and
    /// returns the sum of their mean losses, exactly as the free function
    /// [`loss_and_grad_batch`] does with `self.workers()` workers (same
    /// chunks, same reduction order, same bits), on the pool's threads.
    ///
    /// With one worker it is exactly the sequential
    /// `M::loss_and_grad_batch` on the worker's workspace.
    ///
    /// # Panics
    /// If `tokens.len()` is not a multiple of `SEQ + 1`, or if a token is
    /// `>= VOCAB` (a panic on a pool thread is propagated).
    pub fn loss_and_grad_batch(&mut self, params: &M::Params<S>, tokens: &[u32], grads: &mut M::Params<S>) -> S {
        let len = M::SEQ + 1;
        assert!(
            tokens.len().is_multiple_of(len),
            "parallel::DataParallel::loss_and_grad_batch: a batch is whole sequences of SEQ + 1 = {len} tokens, \
             got {} tokens",
            tokens.len()
        );
        let n = self.scratch.len();
        if n == 1 {
            return M::loss_and_grad_batch(params, tokens, &mut *self.scratch[0].ws, grads);
        }
        let seqs = tokens.len() / len;
        let scratch = SyncPtr(self.scratch.as_mut_ptr());
        let chunk_grads = SyncPtr(self.grads.as_mut_ptr());
        self.pool.run(|i| {
            let (scratch, chunk_grads) = (&scratch, &chunk_grads);
            assert!(i < n);
            // SAFETY: `i < n`, the length of both `self.scratch` and
            // `self.grads` (made together in `new`), which `&mut self`
            // borrows exclusively for this call; `run` calls the closure
            // once per index, so the `&mut` of different calls are disjoint
            // elements, none outliving its call; the elements are `Send`.
            let (sc, g) = unsafe { (&mut *scratch.0.add(i), &mut **chunk_grads.0.add(i)) };
            g.as_flat_mut().fill(S::ZERO);
            let (a, b) = chunk_range(seqs, n, i);
            sc.loss = if a == b {
                S::ZERO
            } else {
                M::loss_and_grad_batch(params, &tokens[a * len..b * len], &mut *sc.ws, g)
            };
        });
        let out = grads.as_flat_mut();
        let total = out.len();
        let out = SyncPtr(out.as_mut_ptr());
        let chunk_grads = &self.grads;
        self.pool.run(|t| {
            let (a, b) = chunk_range(total, n, t);
            let out = &out;
            // SAFETY: `a <= b <= total = out.len()` (chunk_range), so the
            // range is inside `grads`' flat slice, exclusively borrowed for
            // this call; `run` calls the closure once per `t`, and the
            // ranges of different `t` are disjoint (chunk_range), so the
            // mutable slices do not overlap; `S: Send`.
            let out = unsafe { core::slice::from_raw_parts_mut(out.0.add(a), b - a) };
            for g in chunk_grads {
                for (o, &x) in out.iter_mut().zip(&g.as_flat()[a..b]) {
                    *o += x;
                }
            }
        });
        let mut loss = S::ZERO;
        for sc in &self.scratch {
            loss += sc.loss;
        }
        loss
    }

    /// `grads *= grad_scale` then one [`AdamW::step`] at step `t` over the
    /// flat vectors, each thread on its own contiguous range of elements.
    ///
    /// Each element gets exactly the arithmetic of a sequential
    /// `for g in grads { *g *= grad_scale }` followed by
    /// `opt.step(params, grads, m, v, t)`. The one difference is the
    /// gradient's global norm (used for clipping, and returned): each
    /// thread sums the squares of its range as [`optim::global_norm`] does
    /// and the partial sums are added in worker order, so the norm depends
    /// on the worker count in its last bits (and, where it clips, so does
    /// the clip factor), never on timing. With one worker it is exactly the
    /// sequential pair.
    ///
    /// # Errors
    /// As [`AdamW::step`]: [`NonFinite`] if a (scaled) gradient is NaN or
    /// infinite or the update would write a non-finite value; then
    /// `params`, `m` and `v` are untouched and `grads` holds the scaled
    /// gradient (as the sequential scaling loop leaves it).
    ///
    /// # Panics
    /// If the slices differ in length or `t == 0`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step(
        &mut self,
        opt: &AdamW,
        grad_scale: S,
        params: &mut [S],
        grads: &mut [S],
        m: &mut [S],
        v: &mut [S],
        t: u64,
    ) -> Result<f64, NonFinite> {
        let total = params.len();
        assert!(t > 0, "AdamW::step: t is 1-based");
        assert!(
            grads.len() == total && m.len() == total && v.len() == total,
            "DataParallel::adamw_step: slice lengths differ"
        );
        let n = self.scratch.len();
        if n == 1 {
            for g in grads.iter_mut() {
                *g *= grad_scale;
            }
            return opt.step(params, grads, m, v, t);
        }
        let (pp, gp, mp, vp) = (
            SyncPtr(params.as_mut_ptr()),
            SyncPtr(grads.as_mut_ptr()),
            SyncPtr(m.as_mut_ptr()),
            SyncPtr(v.as_mut_ptr()),
        );
        // Every `part(p, i)` below is sound: `p` points to one of the four
        // slices, each `total` long and exclusively borrowed for this call;
        // `run` calls each closure once per `i` and the ranges of different
        // `i` are disjoint, so no element is reached twice, and no part
        // outlives its closure call (see `part`).
        // SAFETY: as just said, for every call of `part` in this function.
        let part = |p: &SyncPtr<S>, i: usize| unsafe { part(p, total, n, i) };
        self.pool.for_each_mut(&mut self.sums, |i, sum| {
            let g = part(&gp, i);
            for x in g.iter_mut() {
                *x *= grad_scale;
            }
            *sum = optim::sum_squares(g);
        });
        let mut sq = 0.0f64;
        for &s in &self.sums {
            sq += s;
        }
        let norm = libm::sqrt(sq);
        if !norm.is_finite() {
            return Err(optim::norm_error(grads));
        }
        let u = AdamUpdate::<S>::new(opt, norm, t);
        self.pool.for_each_mut(&mut self.checks, |i, check| {
            let (a, _) = chunk_range(total, n, i);
            *check = u.check(a, part(&pp, i), part(&gp, i), part(&mp, i), part(&vp, i));
        });
        // The ranges ascend with the worker index: the first error is the
        // one at the lowest index, the sequential step's.
        if let Some(&Err(e)) = self.checks.iter().find(|c| c.is_err()) {
            return Err(e);
        }
        self.pool.run(|i| u.apply(part(&pp, i), part(&gp, i), part(&mp, i), part(&vp, i)));
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::{chunk_range, Pool};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::vec::Vec;

    #[test]
    fn pool_runs_every_index_once_per_run_on_its_own_thread() {
        for n in 1..5 {
            let mut pool = Pool::new(n);
            assert_eq!(pool.workers(), n);
            let caller = std::thread::current().id();
            for _ in 0..50 {
                let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                let ids = std::sync::Mutex::new(std::vec![None; n]);
                pool.run(|i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    ids.lock().unwrap()[i] = Some(std::thread::current().id());
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                let ids = ids.into_inner().unwrap();
                assert_eq!(ids[0], Some(caller), "job 0 runs on the caller");
                for i in 1..n {
                    assert!(ids[i].is_some() && ids[i] != Some(caller));
                    assert!((1..i).all(|j| ids[j] != ids[i]), "one thread per index");
                }
            }
        }
    }

    #[test]
    fn for_each_mut_gives_item_i_to_worker_i() {
        let mut pool = Pool::new(3);
        let mut items = [10u64, 20, 30];
        for _ in 0..10 {
            pool.for_each_mut(&mut items, |i, x| *x += i as u64);
        }
        assert_eq!(items, [10, 30, 50]);
    }

    #[test]
    fn a_panic_reaches_the_caller_and_the_pool_goes_on() {
        let mut pool = Pool::new(3);
        for bad in 0..3 {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(|i| assert!(i != bad, "job {i} fails"));
            }));
            assert!(r.is_err());
            let sum = AtomicUsize::new(0);
            pool.run(|i| {
                sum.fetch_add(i + 1, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 6);
        }
    }

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
