//! Text generation: feed a prompt to a fresh stream, then sample bytes from
//! the softmax of the logits at a temperature
//! ([`nl_runtime::rng::sample_logits`]; temperature 0 is greedy).

use nl_runtime::rng::{sample_logits, Rng};
use nl_runtime::{boxed_zeroed, Model};

/// Feeds `prompt` to a fresh stream of `M` (on its deployable parameters,
/// [`crate::eval::deployable`]), then samples `len` bytes, each fed back. With an empty prompt the first byte is drawn from a
/// zero-logit (uniform) distribution. Deterministic for a given `seed`.
/// `M::VOCAB` must be 256 or more and every sampled token is a byte: a
/// token above 255 (a vocabulary larger than the bytes) is written as `?`.
pub fn generate<M: Model>(params: &M::Params<f32>, prompt: &[u8], len: usize, temperature: f64, seed: u64) -> Vec<u8> {
    let q = crate::eval::deployable::<M>(params);
    let mut stream = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *stream);
    let mut rng = Rng::new(seed ^ 0x5A3B_1E00_0000_0002);
    let mut logits: Vec<f32> = vec![0.0; M::VOCAB];
    for &b in prompt {
        logits.clear();
        logits.extend_from_slice(crate::eval::step_byte::<M>(&mut stream, &q, b));
    }
    let mut out = Vec::with_capacity(len.min(1 << 20));
    for _ in 0..len {
        let next = sample_logits(&logits, temperature, &mut rng);
        let b = u8::try_from(next).unwrap_or(b'?');
        out.push(b);
        logits.clear();
        logits.extend_from_slice(crate::eval::step_byte::<M>(&mut stream, &q, b));
    }
    out
}

/// The main job's sample: a prompt of `prompt_len` bytes from `text`
/// (starting after its first newline if that leaves room), then `len`
/// sampled bytes. Returns (prompt, continuation).
pub fn from_text<M: Model>(
    params: &M::Params<f32>,
    text: &[u8],
    prompt_len: usize,
    len: usize,
    temperature: f64,
    seed: u64,
) -> (Vec<u8>, Vec<u8>) {
    let begin = text.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let begin = if begin + prompt_len.min(text.len()) <= text.len() { begin } else { 0 };
    let prompt = text[begin..(begin + prompt_len).min(text.len())].to_vec();
    let out = generate::<M>(params, &prompt, len, temperature, seed);
    (prompt, out)
}
