//! On-device training of the embedded f32 model (the outer loop), with no
//! allocator: the parameters, the training workspace, the gradients and the
//! AdamW moments all live in `static`s (`.bss`), each behind its own
//! try-lock.
//!
//! Two forms:
//!
//! - **full**: every tensor trains. [`train_init`] copies the embedded
//!   checkpoint (flash) into a `Params<f32>` in RAM; [`train_step`] runs the
//!   generated forward and analytic backward (`loss_and_grad_batch`) and one
//!   [`AdamW`] update. RAM: parameters + workspace + gradients + two moments.
//! - **head** (only with `unembed` and no final norm, i.e. the default
//!   model): only the output layer `unembed` trains. The body stays in
//!   flash, read in place. As nothing before the head needs a gradient,
//!   the body runs as the generated *streaming* step (a `Stream`, 78 KB,
//!   instead of the training `Workspace`, 1.7 MB, which keeps the inner
//!   loop's per-token history for the backward): after each token,
//!   `Stream::x` is the final residual stream, the head's input, kept for
//!   the sequence; the head's logits, softmax cross-entropy and gradient
//!   are computed from it by [`head_loss_and_grad`], written out plainly
//!   here. Only the head's copy, gradient and moments, the stream and the
//!   hidden states are in RAM (the frozen tensors have no gradient or
//!   optimizer buffer at all).
//!
//! A step never panics: a bad length, a token outside the vocabulary, a
//! re-entered call, a step before its `init` and a non-finite loss or
//! update are errors ([`crate::Error`]), and a refused step changes nothing.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use nl_runtime::optim::AdamW;
use nl_runtime::{Flat, Scalar, TokenError};

use crate::{model, params, Error, SENTENCE};

/// Tokens per training sequence: `SEQ + 1` (the model's `seq_len` inputs
/// and their next tokens). A step takes a whole number of sequences.
pub const SEQ_TOKENS: usize = model::SEQ + 1;

/// The optimizer every step uses: AdamW with the runtime's defaults (lr
/// `1e-3`, betas `0.9 / 0.999`, eps `1e-8`, no weight decay, global-norm
/// clipping at 1).
pub const OPTIMIZER: AdamW = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, clip: 1.0 };

/// Training steps of the demo run ([`demo_losses`], [`demo_head_losses`]).
pub const DEMO_STEPS: usize = 5;

/// The demo's local stream: [`SENTENCE`]'s bytes cycled to one sequence of
/// [`SEQ_TOKENS`] tokens.
pub fn demo_tokens(out: &mut [u32; SEQ_TOKENS]) {
    for (i, t) in out.iter_mut().enumerate() {
        *t = u32::from(SENTENCE[i % SENTENCE.len()]);
    }
}

/// A state in `.bss` handed out by a try-lock.
struct Cell<T> {
    busy: AtomicBool,
    state: UnsafeCell<T>,
}

// SAFETY: `state` is only reached through `Cell::with`, which hands out the
// `&mut` only to the caller that flipped `busy` from false to true (an
// atomic compare-exchange: at most one holder on any number of cores or
// interrupt levels) and clears `busy` only after that borrow has ended.
unsafe impl<T> Sync for Cell<T> {}

impl<T> Cell<T> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, Error> {
        if self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(Error::Busy);
        }
        // SAFETY: we hold the lock (see `impl Sync for Cell`), so this is the
        // only reference to the state until `busy` is cleared below.
        let r = f(unsafe { &mut *self.state.get() });
        self.busy.store(false, Ordering::Release);
        Ok(r)
    }
}

/// The full model's training state.
struct Full {
    params: model::Params<f32>,
    ws: model::Workspace<f32>,
    grads: model::Params<f32>,
    m: model::Params<f32>,
    v: model::Params<f32>,
    /// AdamW steps taken (0: none yet).
    t: u64,
    ready: bool,
}

static FULL: Cell<Full> = Cell {
    busy: AtomicBool::new(false),
    // SAFETY: every field is an array of f32 (all-zero bytes are 0.0), the
    // generated `Workspace<f32>` (`nl_runtime::Zeroable`: all-zero is a
    // valid workspace), a `u64` or a `bool` (all-zero is `false`). Being
    // all-zero, the static is placed in `.bss`.
    state: UnsafeCell::new(unsafe { core::mem::zeroed() }),
};

/// Makes the next sequence start from a reset memory state with the inner
/// loop on (a model without memory has no such state).
fn fresh(ws: &mut model::Workspace<f32>) {
    #[cfg(nl_default_model)]
    {
        ws.reset_state();
        ws.freeze_memory = false;
    }
    #[cfg(not(nl_default_model))]
    let _ = ws;
}

/// Checks a step's tokens: a non-empty whole number of sequences, every
/// token below the vocabulary. Returns the number of sequences.
fn check_tokens(tokens: &[u32]) -> Result<usize, Error> {
    if tokens.is_empty() || !tokens.len().is_multiple_of(SEQ_TOKENS) {
        return Err(Error::Length { len: tokens.len(), seq: SEQ_TOKENS });
    }
    if let Some(&token) = tokens.iter().find(|&&t| t as usize >= model::VOCAB) {
        return Err(Error::Token(TokenError { token, vocab: model::VOCAB }));
    }
    Ok(tokens.len() / SEQ_TOKENS)
}

/// The tokens of one sequence as the generated code takes them.
fn seq(tokens: &[u32]) -> &[u32; SEQ_TOKENS] {
    // `check_tokens` made the length a multiple of SEQ_TOKENS; chunks are exact.
    tokens.try_into().unwrap_or_else(|_| unreachable!())
}

/// Copies the embedded checkpoint into RAM and clears the gradients, the
/// optimizer state and the step count: full training starts (again) from
/// the shipped parameters.
pub fn train_init() -> Result<(), Error> {
    let p = params().map_err(Error::Checkpoint)?;
    FULL.with(|s| {
        s.params.as_flat_mut().copy_from_slice(p.as_flat());
        s.grads.as_flat_mut().fill(0.0);
        s.m.as_flat_mut().fill(0.0);
        s.v.as_flat_mut().fill(0.0);
        fresh(&mut s.ws);
        s.t = 0;
        s.ready = true;
    })
}

/// One training step of the full model on `tokens` (a whole number of
/// sequences of [`SEQ_TOKENS`], each starting from a reset memory state):
/// forward, analytic backward, and one [`OPTIMIZER`] update with the
/// gradient of the mean loss. Returns the mean loss (nats per token)
/// before the update.
///
/// # Errors
/// [`Error::Length`], [`Error::Token`], [`Error::NotInitialized`],
/// [`Error::Busy`], or [`Error::NonFinite`] (a non-finite loss, gradient or
/// update); then the parameters and optimizer state are unchanged.
pub fn train_step(tokens: &[u32]) -> Result<f32, Error> {
    let n = check_tokens(tokens)?;
    FULL.with(|s| {
        if !s.ready {
            return Err(Error::NotInitialized);
        }
        s.grads.as_flat_mut().fill(0.0);
        fresh(&mut s.ws);
        let loss = model::loss_and_grad_batch(&s.params, tokens, &mut s.ws, &mut s.grads) / n as f32;
        if !loss.is_finite() {
            return Err(Error::NonFinite);
        }
        if n > 1 {
            let k = 1.0 / n as f32;
            s.grads.as_flat_mut().iter_mut().for_each(|g| *g *= k);
        }
        OPTIMIZER
            .step(s.params.as_flat_mut(), s.grads.as_flat_mut(), s.m.as_flat_mut(), s.v.as_flat_mut(), s.t + 1)
            .map_err(|_| Error::NonFinite)?;
        s.t += 1;
        Ok(loss)
    })?
}

/// The mean loss (nats per token) of the full model's current parameters
/// on `tokens` (forward only; nothing trains).
///
/// # Errors
/// As [`train_step`], but never [`Error::NonFinite`].
pub fn train_loss(tokens: &[u32]) -> Result<f32, Error> {
    let n = check_tokens(tokens)?;
    FULL.with(|s| {
        if !s.ready {
            return Err(Error::NotInitialized);
        }
        let mut loss = 0.0;
        for sq in tokens.chunks_exact(SEQ_TOKENS) {
            fresh(&mut s.ws);
            loss += model::loss(&s.params, seq(sq), &mut s.ws);
        }
        Ok(loss / n as f32)
    })?
}

/// A copy of the full model's current (trained) parameters, for checks.
///
/// # Errors
/// [`Error::Busy`] or [`Error::NotInitialized`].
pub fn train_weights(out: &mut model::Params<f32>) -> Result<(), Error> {
    FULL.with(|s| {
        if !s.ready {
            return Err(Error::NotInitialized);
        }
        out.as_flat_mut().copy_from_slice(s.params.as_flat());
        Ok(())
    })?
}

/// The demo run of full training: [`train_init`], then [`DEMO_STEPS`]
/// steps on [`demo_tokens`]; `out[i]` is step `i`'s loss (before its
/// update) and `out[DEMO_STEPS]` the loss after the last update.
pub fn demo_losses(out: &mut [f32; DEMO_STEPS + 1]) -> Result<(), Error> {
    let mut tokens = [0u32; SEQ_TOKENS];
    demo_tokens(&mut tokens);
    train_init()?;
    for o in out.iter_mut().take(DEMO_STEPS) {
        *o = train_step(&tokens)?;
    }
    out[DEMO_STEPS] = train_loss(&tokens)?;
    Ok(())
}

/// The loss of the output layer alone and its gradient, computed plainly
/// from the final hidden states `h` (the generated training forward's
/// `Workspace::xs[LAYERS]`, or the streaming state's `Stream::x` after
/// each token): `logits[t] = w h[t]`, the mean next-token
/// cross-entropy over the rows, and `g += d loss / d w`
/// (`(softmax(logits[t]) - onehot(targets[t])) / T` outer `h[t]`, summed
/// over `t`; only if `g` is `Some`). `row` is one row of logits'
/// scratch. Returns the mean loss.
///
/// # Panics
/// If `targets` has fewer than `T` tokens or one is `>= V` (callers check).
pub fn head_loss_and_grad<S: Scalar, const T: usize, const V: usize, const DM: usize>(
    w: &[[S; DM]; V],
    h: &[[S; DM]; T],
    targets: &[u32],
    row: &mut [S; V],
    mut g: Option<&mut [[S; DM]; V]>,
) -> S {
    let inv_t = S::ONE / S::from_usize(T);
    let mut loss = S::ZERO;
    for t in 0..T {
        let y = targets[t] as usize;
        for (l, wv) in row.iter_mut().zip(w.iter()) {
            let mut acc = S::ZERO;
            for (a, b) in wv.iter().zip(h[t].iter()) {
                acc += *a * *b;
            }
            *l = acc;
        }
        let mut mx = row[0];
        for &l in row.iter() {
            mx = mx.max(l);
        }
        // -log softmax(y) = log(sum of e^(l - max)) - (l_y - max).
        let ly = row[y] - mx;
        let mut sum = S::ZERO;
        for l in row.iter_mut() {
            *l = (*l - mx).exp();
            sum += *l;
        }
        loss += sum.ln() - ly;
        let Some(g) = g.as_deref_mut() else { continue };
        let k = inv_t / sum;
        for l in row.iter_mut() {
            *l *= k;
        }
        row[y] -= inv_t;
        for (gv, &d) in g.iter_mut().zip(row.iter()) {
            for (gi, &hi) in gv.iter_mut().zip(h[t].iter()) {
                *gi += d * hi;
            }
        }
    }
    loss * inv_t
}

#[cfg(nl_default_model)]
pub use head::*;

/// The head-only form (models whose logits are `unembed` applied to the
/// last block's output, with no final norm: the default model).
#[cfg(nl_default_model)]
mod head {
    use super::*;

    /// The trainable subset's tensor names, in `TENSORS` order.
    pub const HEAD_TENSORS: &[&str] = &["unembed"];

    type W = [[f32; model::D]; model::VOCAB];

    /// The final hidden states of one sequence.
    type H = [[f32; model::D]; model::SEQ];

    /// The head-only training state: the trained `unembed`, its gradient
    /// and moments, and the body's streaming state, hidden states and one
    /// row of logits. Nothing of the frozen body.
    struct Head {
        w: W,
        st: model::Stream<f32>,
        h: H,
        row: [f32; model::VOCAB],
        g: W,
        m: W,
        v: W,
        t: u64,
        ready: bool,
    }

    static HEAD: Cell<Head> = Cell {
        busy: AtomicBool::new(false),
        // SAFETY: arrays of f32, the generated `Stream<f32>` (`Zeroable`: all
        // zero is a reset stream), a `u64` and a `bool`: all-zero bytes are
        // valid. Placed in `.bss`.
        state: UnsafeCell::new(unsafe { core::mem::zeroed() }),
    };

    /// Bytes of RAM of each part of head-only training (the `.bss` the
    /// linker reports for a firmware that calls only `nl_head_*`, up to
    /// the lock flags and alignment): the trained parameters (`unembed`),
    /// the workspace (the body's `Stream`, the sequence's hidden states and
    /// one row of logits), the gradient and the optimizer state (two moments).
    pub const HEAD_RAM: [usize; 4] = [
        core::mem::size_of::<W>(),
        core::mem::size_of::<model::Stream<f32>>() + core::mem::size_of::<H>() + 4 * model::VOCAB,
        core::mem::size_of::<W>(),
        2 * core::mem::size_of::<W>(),
    ];

    /// Copies the embedded `unembed` into RAM and clears its gradient,
    /// moments and step count (the body is read from flash).
    pub fn head_init() -> Result<(), Error> {
        let p = params().map_err(Error::Checkpoint)?;
        HEAD.with(|s| {
            s.w.as_flattened_mut().copy_from_slice(p.unembed.as_flattened());
            s.g.as_flattened_mut().fill(0.0);
            s.m.as_flattened_mut().fill(0.0);
            s.v.as_flattened_mut().fill(0.0);
            s.st.reset();
            s.t = 0;
            s.ready = true;
        })
    }

    /// The frozen body's final hidden states of one sequence: the
    /// generated streaming step from a reset state over `tokens[..SEQ]`,
    /// keeping `Stream::x` after each token.
    ///
    /// # Errors
    /// A token outside the vocabulary (callers check first).
    pub fn body_hidden(
        st: &mut model::Stream<f32>,
        p: &model::Params<f32>,
        tokens: &[u32],
        h: &mut H,
    ) -> Result<(), TokenError> {
        st.reset();
        for (ht, &tok) in h.iter_mut().zip(tokens) {
            st.try_step(p, tok)?;
            *ht = st.x;
        }
        Ok(())
    }

    /// Runs the frozen body on each sequence and the RAM head on its output,
    /// adding the head's gradient into `s.g` if `grad`. Returns the sum of
    /// the sequences' mean losses.
    fn head_pass(s: &mut Head, p: &model::Params<f32>, tokens: &[u32], grad: bool) -> Result<f32, Error> {
        let mut loss = 0.0;
        for sq in tokens.chunks_exact(SEQ_TOKENS) {
            body_hidden(&mut s.st, p, sq, &mut s.h).map_err(Error::Token)?;
            let g = if grad { Some(&mut s.g) } else { None };
            loss += head_loss_and_grad(&s.w, &s.h, &sq[1..], &mut s.row, g);
        }
        Ok(loss)
    }

    /// One training step of the head only on `tokens` (as
    /// [`train_step`]): the frozen body's forward from flash, the head's
    /// loss and gradient ([`head_loss_and_grad`]) and one [`OPTIMIZER`]
    /// update of `unembed`. Returns the mean loss before the update.
    ///
    /// # Errors
    /// As [`train_step`].
    pub fn head_step(tokens: &[u32]) -> Result<f32, Error> {
        let n = check_tokens(tokens)?;
        let p = params().map_err(Error::Checkpoint)?;
        HEAD.with(|s| {
            if !s.ready {
                return Err(Error::NotInitialized);
            }
            s.g.as_flattened_mut().fill(0.0);
            let loss = head_pass(s, p, tokens, true)? / n as f32;
            if !loss.is_finite() {
                return Err(Error::NonFinite);
            }
            if n > 1 {
                let k = 1.0 / n as f32;
                s.g.as_flattened_mut().iter_mut().for_each(|g| *g *= k);
            }
            OPTIMIZER
                .step(
                    s.w.as_flattened_mut(),
                    s.g.as_flattened_mut(),
                    s.m.as_flattened_mut(),
                    s.v.as_flattened_mut(),
                    s.t + 1,
                )
                .map_err(|_| Error::NonFinite)?;
            s.t += 1;
            Ok(loss)
        })?
    }

    /// The mean loss of the frozen body with the current head on `tokens`.
    ///
    /// # Errors
    /// As [`head_step`], but never [`Error::NonFinite`].
    pub fn head_loss_now(tokens: &[u32]) -> Result<f32, Error> {
        let n = check_tokens(tokens)?;
        let p = params().map_err(Error::Checkpoint)?;
        HEAD.with(|s| {
            if !s.ready {
                return Err(Error::NotInitialized);
            }
            Ok(head_pass(s, p, tokens, false)? / n as f32)
        })?
    }

    /// A copy of the trained head (`unembed`), for checks.
    ///
    /// # Errors
    /// [`Error::Busy`] or [`Error::NotInitialized`].
    pub fn head_weights(out: &mut W) -> Result<(), Error> {
        HEAD.with(|s| {
            if !s.ready {
                return Err(Error::NotInitialized);
            }
            *out = s.w;
            Ok(())
        })?
    }

    /// The demo run of head-only training, as [`demo_losses`].
    pub fn demo_head_losses(out: &mut [f32; DEMO_STEPS + 1]) -> Result<(), Error> {
        let mut tokens = [0u32; SEQ_TOKENS];
        demo_tokens(&mut tokens);
        head_init()?;
        for o in out.iter_mut().take(DEMO_STEPS) {
            *o = head_step(&tokens)?;
        }
        out[DEMO_STEPS] = head_loss_now(&tokens)?;
        Ok(())
    }
}

/// Bytes of RAM of each part of full training (the `.bss` the linker
/// reports for a firmware that calls only `nl_train_*`, up to the lock
/// flags and alignment): the parameters' RAM copy, the workspace, the
/// gradients and the optimizer state (AdamW's two moments).
pub const FULL_RAM: [usize; 4] = [
    core::mem::size_of::<model::Params<f32>>(),
    core::mem::size_of::<model::Workspace<f32>>(),
    core::mem::size_of::<model::Params<f32>>(),
    2 * core::mem::size_of::<model::Params<f32>>(),
];
