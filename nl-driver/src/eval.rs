//! Scoring text with a model, in nats per byte (divide by `ln 2` for bits).
//!
//! Two ways, both used by the main job and `cargo nl eval`:
//! - **windows from a reset state**: windows of `SEQ + 1` bytes at stride
//!   `SEQ` ([`crate::data::windows`]), each through [`Model::loss`];
//! - **one continuous stream, state carried**: [`Model::reset`] once, then
//!   [`Model::step`] for every byte, each next byte scored by its
//!   [`surprise`] under the step's logits. This is what a deployed model
//!   sees, memory levels learning as they read.

use nl_runtime::{boxed_zeroed, Model};

use crate::data;

/// `-ln softmax(logits)[target]`, computed in f64 (log-sum-exp with the
/// maximum subtracted): the surprise of `target`, in nats.
pub fn surprise(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    max + sum.ln() - f64::from(logits[target])
}

/// Mean cross-entropy (nats per byte) of `M` over the chosen windows of
/// `text` (indices into [`data::windows`]`(text, SEQ)`); 0 for none.
pub fn windows<M: Model>(params: &M::Params<f32>, text: &[u8], which: &[usize], ws: &mut M::Workspace<f32>) -> f64 {
    let seq = M::SEQ;
    let starts = data::windows(text, seq);
    let mut tokens = vec![0u32; seq + 1];
    let mut total = 0.0f64;
    for &w in which {
        let s = starts[w];
        for (t, &b) in tokens.iter_mut().zip(&text[s..s + seq + 1]) {
            *t = u32::from(b);
        }
        total += f64::from(M::loss(params, &tokens, ws));
    }
    total / which.len().max(1) as f64
}

/// Scores `text` as one continuous stream: [`Model::reset`] once, then
/// [`Model::step`] for every byte but the last, each step's logits scoring
/// the next byte by [`surprise`]. Returns (total nats, predicted bytes =
/// `text.len() - 1`, or 0 for a text shorter than 2 bytes). `progress` is
/// called every few thousand bytes with the number of bytes fed so far.
pub fn stream<M: Model>(params: &M::Params<f32>, text: &[u8], mut progress: impl FnMut(usize)) -> (f64, usize) {
    let q = deployable::<M>(params);
    let mut stream = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *stream);
    let mut total = 0.0f64;
    for (i, pair) in text.windows(2).enumerate() {
        let logits = step_byte::<M>(&mut stream, &q, pair[0]);
        total += surprise(logits, usize::from(pair[1]));
        if i % 4096 == 4095 {
            progress(i + 1);
        }
    }
    let predicted = text.len().saturating_sub(1);
    progress(predicted);
    (total, predicted)
}

/// A model's serving parameters: the deployable parameters
/// ([`Model::quantize`]: a copy for an f32 model) and their serving copies
/// ([`Model::pack_q`]: the tiled `int8` matrices), which every streaming
/// command of this crate serves: a quantized model streams through its
/// integer kernels, as on a device, with the fastest layout this CPU reads.
pub struct Deployed<M: Model> {
    /// The deployable parameters (an exported checkpoint's data).
    pub q: Box<M::QParams>,
    /// [`Model::pack_q`] of `q`.
    pub packed: Box<M::QPacked>,
}

impl<M: Model> Deployed<M> {
    /// One streaming step ([`Model::try_step_qp`]).
    pub fn try_step<'a>(
        &self,
        stream: &'a mut M::Stream<f32>,
        token: u32,
    ) -> Result<&'a [f32], nl_runtime::TokenError> {
        M::try_step_qp(stream, &self.q, &self.packed, token)
    }
}

/// The serving parameters of `params` (see [`Deployed`]).
pub fn deployable<M: Model>(params: &M::Params<f32>) -> Deployed<M> {
    let mut q = boxed_zeroed::<M::QParams>();
    M::quantize(params, &mut q);
    let mut packed = boxed_zeroed::<M::QPacked>();
    M::pack_q(&q, &mut packed);
    Deployed { q, packed }
}

/// Feeds one byte to a stream on serving parameters
/// ([`Deployed::try_step`]) and returns the next-byte logits.
///
/// # Panics
/// If `M::VOCAB < 256` (the commands check [`crate::require_bytes`] first).
pub fn step_byte<'a, M: Model>(stream: &'a mut M::Stream<f32>, d: &Deployed<M>, byte: u8) -> &'a [f32] {
    match d.try_step(stream, u32::from(byte)) {
        Ok(logits) => logits,
        Err(e) => panic!("{e} (a byte-level command on a model whose vocabulary is below 256)"),
    }
}

/// Both scores of a text, in bits per byte.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// Windows from a reset state (`None` if the text is shorter than one window).
    pub windows_bits: Option<f64>,
    /// Windows scored.
    pub windows: usize,
    /// One continuous stream, state carried (`None` for fewer than 2 bytes).
    pub stream_bits: Option<f64>,
    /// Bytes the stream predicted (`len - 1`).
    pub stream_bytes: usize,
}

/// Scores `text` both ways ([`windows`] over every window, [`stream`]), in bits per byte.
pub fn score<M: Model>(params: &M::Params<f32>, text: &[u8], progress: impl FnMut(usize)) -> Scores {
    let mut ws = boxed_zeroed::<M::Workspace<f32>>();
    let n = data::windows(text, M::SEQ).len();
    let all: Vec<usize> = (0..n).collect();
    let windows_bits = (n > 0).then(|| windows::<M>(params, text, &all, &mut ws) / std::f64::consts::LN_2);
    let (nats, bytes) = stream::<M>(params, text, progress);
    let stream_bits = (bytes > 0).then(|| nats / bytes as f64 / std::f64::consts::LN_2);
    Scores { windows_bits, windows: n, stream_bits, stream_bytes: bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surprise_is_minus_log_softmax() {
        let uniform = [0.5f32; 256];
        assert!((surprise(&uniform, 7) / std::f64::consts::LN_2 - 8.0).abs() < 1e-12);
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        for (k, &l) in logits.iter().enumerate() {
            assert!((surprise(&logits, k) - (z.ln() - f64::from(l))).abs() < 1e-12);
        }
        // Large logits do not overflow.
        assert!((surprise(&[1000.0, 1000.0], 0) - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
