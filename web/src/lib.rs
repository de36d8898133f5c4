//! `nl-web`: the deep language model with a memory
//! (`models/deep_memory.toml`: two pre-norm blocks, rope, SwiGLU, tied
//! embeddings, one `delta` memory level per block composed as a gate) for
//! the browser.
//!
//! [`Engine`] holds a checkpoint's parameters, a streaming state and,
//! once fine-tuning starts, the training state. It scores bytes one at a
//! time ([`Engine::feed`]: the surprise `-log2 softmax(logits_{t-1})[x_t]`
//! in bits, then the next-byte predictions), switches the memory's inner
//! loop on and off ([`Engine::set_frozen`], the stream's `freeze_memory`)
//! and fine-tunes the outer parameters on a text ([`Engine::train_start`],
//! [`Engine::train_step`]: `loss_and_grad_batch` and AdamW from
//! `nl-runtime`).
//!
//! The same code runs natively (the reference binaries `nl-web-scores` and
//! `nl-web-bench`) and as `wasm32-unknown-unknown` (built as a cdylib by
//! `run.sh`, with and without `simd128`), where the [`abi`] module exports
//! a plain C ABI over one global engine and the module's memory: the page's
//! worker (`www/worker.js`) writes inputs into buffers from [`abi::nl_alloc`]
//! and reads the outputs back. The crate uses `std` only for its allocator
//! (on wasm32-unknown-unknown, std's is dlmalloc); nothing here needs an
//! operating system.

use nl_runtime::optim::AdamW;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, checkpoint, Flat, Model as _};

nl_macros::nl_model!("../models/deep_memory.toml");

/// The generated module of the model.
pub use deep_memory as model;

/// The model type.
pub type M = model::Model;

/// The model's vocabulary (bytes).
pub const VOCAB: usize = model::VOCAB;

/// Tokens per training sequence (a training window holds `SEQ + 1` bytes).
pub const SEQ: usize = <M as nl_runtime::Model>::SEQ;

/// `1 / ln 2`: nats to bits.
const BITS_PER_NAT: f32 = core::f32::consts::LOG2_E;

/// Why an [`Engine`] call failed.
#[derive(Debug)]
pub enum Error {
    /// The checkpoint does not fit the model (the loader's typed error).
    Checkpoint(checkpoint::CheckpointError),
    /// No checkpoint has been loaded yet.
    NoModel,
    /// Fine-tuning needs a text of at least 2 bytes.
    TextTooShort(usize),
    /// [`Engine::train_step`] before [`Engine::train_start`].
    NotTraining,
    /// A bad setting (learning rate, batch).
    BadSetting(&'static str),
    /// The optimizer refused a step (a gradient or update was not finite).
    NonFinite,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Checkpoint(e) => write!(f, "this is not a checkpoint of {}: {e}", model::NAME),
            Error::NoModel => write!(f, "no model is loaded"),
            Error::TextTooShort(n) => write!(f, "fine-tuning needs a text of at least 2 bytes (got {n})"),
            Error::NotTraining => write!(f, "fine-tuning was not started"),
            Error::BadSetting(s) => write!(f, "bad setting: {s}"),
            Error::NonFinite => write!(f, "the optimizer step was not finite (learning rate too high?)"),
        }
    }
}

impl std::error::Error for Error {}

impl From<checkpoint::CheckpointError> for Error {
    fn from(e: checkpoint::CheckpointError) -> Self {
        Error::Checkpoint(e)
    }
}

/// The fine-tuning state: the optimizer's moments, the gradient buffer, the
/// training workspace and the text's bytes as tokens.
struct Trainer {
    ws: Box<model::Workspace<f32>>,
    grads: Box<model::Params<f32>>,
    m: Vec<f32>,
    v: Vec<f32>,
    t: u64,
    rng: Rng,
    text: Vec<u32>,
    batch_tokens: Vec<u32>,
    batch: usize,
    opt: AdamW,
}

/// One model: the loaded checkpoint, the current (possibly fine-tuned)
/// parameters, a streaming state and the fine-tuning state.
pub struct Engine {
    loaded: Box<model::Params<f32>>,
    params: Box<model::Params<f32>>,
    stream: Box<model::Stream<f32>>,
    frozen: bool,
    trainer: Option<Trainer>,
}

/// A next-byte prediction: the byte and its probability.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prediction {
    /// The byte.
    pub byte: u8,
    /// Its probability under the model.
    pub p: f32,
}

impl Engine {
    /// An engine with the parameters of a checkpoint (safetensors bytes, as
    /// written by `nl_runtime::checkpoint::save`): validated by
    /// `checkpoint::load_from_bytes` (typed errors for a wrong or corrupted
    /// file); the stream is reset with the inner loop on.
    pub fn new(bytes: &[u8]) -> Result<Engine, Error> {
        let mut loaded = boxed_zeroed::<model::Params<f32>>();
        checkpoint::load_from_bytes::<M, f32>(bytes, &mut loaded)?;
        let mut params = boxed_zeroed::<model::Params<f32>>();
        params.as_flat_mut().copy_from_slice(loaded.as_flat());
        let mut e = Engine { loaded, params, stream: boxed_zeroed(), frozen: false, trainer: None };
        e.reset();
        Ok(e)
    }

    /// Replaces the parameters with another checkpoint's; on an error
    /// nothing changes. Ends any fine-tuning and resets the stream.
    pub fn load(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut loaded = boxed_zeroed::<model::Params<f32>>();
        checkpoint::load_from_bytes::<M, f32>(bytes, &mut loaded)?;
        self.params.as_flat_mut().copy_from_slice(loaded.as_flat());
        self.loaded = loaded;
        self.trainer = None;
        self.reset();
        Ok(())
    }

    /// Goes back to the loaded checkpoint's parameters (undoes fine-tuning).
    pub fn restore(&mut self) {
        self.params.as_flat_mut().copy_from_slice(self.loaded.as_flat());
        self.trainer = None;
        self.reset();
    }

    /// Clears the stream: empty attention windows, zero memory, no prediction yet.
    pub fn reset(&mut self) {
        self.stream.reset();
        self.stream.freeze_memory = self.frozen;
    }

    /// Switches the memory's inner loop off (`true`: the memory stays as
    /// it is) or on; takes effect from the next byte fed.
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
        self.stream.freeze_memory = frozen;
    }

    /// Whether the inner loop is off.
    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// Feeds one byte: returns its surprise in bits under the prediction
    /// before it (`None` for the first byte after a reset, which has no
    /// prediction), then steps the stream (the memory adapts unless
    /// frozen).
    pub fn feed(&mut self, byte: u8) -> Option<f32> {
        let s = self.stream.surprise(u32::from(byte)).map(|nats| nats * BITS_PER_NAT);
        self.stream.step(&self.params, u32::from(byte));
        s
    }

    /// The `out.len()` most likely next bytes after the bytes fed so far,
    /// most likely first (ties: the smaller byte first).
    pub fn top(&self, out: &mut [Prediction]) {
        top_k(&self.stream.logits, out);
    }

    /// Starts fine-tuning the parameters (from where they are) on `text`:
    /// AdamW at `lr` (weight decay 0, clipping at 1), `batch` windows of
    /// `SEQ + 1` bytes per step, drawn at random offsets from `text`
    /// repeated end to end (so a short text works too), seeded by `seed`.
    pub fn train_start(&mut self, text: &[u8], lr: f64, batch: usize, seed: u64) -> Result<(), Error> {
        if text.len() < 2 {
            return Err(Error::TextTooShort(text.len()));
        }
        if !(lr.is_finite() && lr > 0.0 && lr < 1.0) {
            return Err(Error::BadSetting("the learning rate must be in (0, 1)"));
        }
        if batch == 0 || batch > 64 {
            return Err(Error::BadSetting("the batch must be 1 to 64 windows"));
        }
        let n = M::PARAM_COUNT;
        self.trainer = Some(Trainer {
            ws: boxed_zeroed(),
            grads: boxed_zeroed(),
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            rng: Rng::new(seed),
            text: text.iter().map(|&b| u32::from(b)).collect(),
            batch_tokens: vec![0; batch * (SEQ + 1)],
            batch,
            opt: AdamW { lr, weight_decay: 0.0, clip: 1.0, ..AdamW::default() },
        });
        Ok(())
    }

    /// One AdamW step of fine-tuning; returns the batch's mean loss (bits
    /// per byte) before the step. The stream is reset (its state belonged
    /// to the old parameters).
    pub fn train_step(&mut self) -> Result<f32, Error> {
        let tr = self.trainer.as_mut().ok_or(Error::NotTraining)?;
        let len = tr.text.len();
        for w in tr.batch_tokens.chunks_exact_mut(SEQ + 1) {
            let start = tr.rng.below(len as u64) as usize;
            for (i, t) in w.iter_mut().enumerate() {
                *t = tr.text[(start + i) % len];
            }
        }
        tr.grads.as_flat_mut().fill(0.0);
        let sum = M::loss_and_grad_batch(&self.params, &tr.batch_tokens, &mut tr.ws, &mut tr.grads);
        let inv = 1.0 / tr.batch as f32;
        for g in tr.grads.as_flat_mut() {
            *g *= inv;
        }
        tr.t += 1;
        tr.opt
            .step(self.params.as_flat_mut(), tr.grads.as_flat_mut(), &mut tr.m, &mut tr.v, tr.t)
            .map_err(|_| Error::NonFinite)?;
        self.reset();
        Ok(sum * inv * BITS_PER_NAT)
    }

    /// Fine-tuning steps taken since [`Engine::train_start`] (0 if not training).
    pub fn train_steps(&self) -> u64 {
        self.trainer.as_ref().map_or(0, |t| t.t)
    }
}

/// Writes the `out.len()` largest softmax probabilities of `logits` (most
/// likely first, ties: smaller index first).
pub fn top_k(logits: &[f32; VOCAB], out: &mut [Prediction]) {
    let k = out.len().min(VOCAB);
    let mx = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&l| f64::from(l - mx).exp()).sum();
    let mut taken = [false; VOCAB];
    for slot in out.iter_mut().take(k) {
        let mut best = usize::MAX;
        for (i, &l) in logits.iter().enumerate() {
            if !taken[i] && (best == usize::MAX || l > logits[best]) {
                best = i;
            }
        }
        taken[best] = true;
        *slot = Prediction { byte: best as u8, p: (f64::from(logits[best] - mx).exp() / sum) as f32 };
    }
}

/// Scores `text` from a reset stream: the surprise in bits of every byte
/// (`NaN` for the first), with the inner loop on or off. The reference the
/// browser test compares the page with (`nl-web-scores`).
pub fn score_text(engine: &mut Engine, text: &[u8], frozen: bool) -> Vec<f32> {
    engine.set_frozen(frozen);
    engine.reset();
    text.iter().map(|&b| engine.feed(b).unwrap_or(f32::NAN)).collect()
}

#[cfg(target_arch = "wasm32")]
pub mod abi;

#[cfg(test)]
mod tests {
    use super::*;
    use nl_runtime::Model;

    /// A checkpoint of the model initialised from `seed` (no trained weights needed).
    fn init_bytes(seed: u64) -> Vec<u8> {
        let mut p = boxed_zeroed::<model::Params<f32>>();
        M::init(&mut p, seed);
        checkpoint::to_bytes::<M, f32>(&p).expect("a checkpoint of the model's own layout")
    }

    fn window(seed: u64) -> Vec<u8> {
        let mut r = Rng::new(seed);
        (0..=SEQ).map(|_| b"abcdefgh the memory "[r.below(20) as usize]).collect()
    }

    /// The page's per-byte surprises, averaged, are the training forward's
    /// loss on the same window (another code path: `M::loss`, whole
    /// sequence at once), in bits; with the memory on and frozen.
    #[test]
    fn feed_matches_training_forward() {
        let bytes = init_bytes(3);
        let mut e = Engine::new(&bytes).unwrap();
        let text = window(5);
        let tokens: Vec<u32> = text.iter().map(|&b| u32::from(b)).collect();
        for frozen in [false, true] {
            let s = score_text(&mut e, &text, frozen);
            assert!(s[0].is_nan());
            let mean_bits = s[1..].iter().map(|&x| f64::from(x)).sum::<f64>() / SEQ as f64;
            let mut ws = boxed_zeroed::<model::Workspace<f32>>();
            ws.freeze_memory = frozen;
            let loss = f64::from(M::loss(&e.loaded, &tokens, &mut ws)) / core::f64::consts::LN_2;
            assert!((mean_bits - loss).abs() < 1e-4 * loss, "frozen {frozen}: stream {mean_bits} vs forward {loss}");
        }
    }

    /// `top_k` against a plain f64 softmax sorted by probability.
    #[test]
    fn top_k_matches_sorted_softmax() {
        let mut r = Rng::new(9);
        let mut logits = [0f32; VOCAB];
        for l in logits.iter_mut() {
            *l = (r.next_f64() * 10.0 - 5.0) as f32;
        }
        let sum: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let mut want: Vec<(usize, f64)> = logits.iter().map(|&l| f64::from(l).exp() / sum).enumerate().collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut got = [Prediction::default(); 5];
        top_k(&logits, &mut got);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(usize::from(g.byte), w.0);
            assert!((f64::from(g.p) - w.1).abs() < 1e-6);
        }
    }

    /// Fine-tuning on one text lowers the loss on it (the training forward
    /// `M::loss` before and after, an oracle outside the engine), a bad
    /// checkpoint is a typed error that leaves the engine as it was, and
    /// `restore` gives the checkpoint's scores back.
    #[test]
    fn fine_tuning_lowers_the_loss_and_restore_undoes_it() {
        let mut e = Engine::new(&init_bytes(1)).unwrap();
        let text = window(7);
        let tokens: Vec<u32> = text.iter().map(|&b| u32::from(b)).collect();
        let mut ws = boxed_zeroed::<model::Workspace<f32>>();
        let before = M::loss(&e.params, &tokens, &mut ws);
        let s0 = score_text(&mut e, &text, false);
        e.train_start(&text, 3e-3, 2, 1).unwrap();
        for _ in 0..8 {
            e.train_step().unwrap();
        }
        let after = M::loss(&e.params, &tokens, &mut ws);
        assert!(after < 0.9 * before, "loss {before} -> {after}");
        assert!(matches!(e.load(&init_bytes(1)[..100]), Err(Error::Checkpoint(_))));
        assert_eq!(M::loss(&e.params, &tokens, &mut ws), after);
        e.restore();
        let s1 = score_text(&mut e, &text, false);
        assert_eq!(s0[1..], s1[1..]);
        assert!(matches!(e.train_start(b"x", 1e-3, 1, 1), Err(Error::TextTooShort(1))));
        assert!(matches!(e.train_step(), Err(Error::NotTraining)));
    }
}
