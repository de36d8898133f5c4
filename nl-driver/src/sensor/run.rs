//! Training on normal readings and streaming scores, generic over
//! [`Model`].

use nl_runtime::optim::AdamW;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, parallel, Flat, Model};

use crate::{Error, Result};

/// The settings of [`train`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainSettings {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Peak AdamW learning rate (warmup, then cosine to 10%: [`crate::train::lr_at`]).
    pub lr: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of initialisation and window sampling.
    pub seed: u64,
    /// Worker threads (at least 1).
    pub threads: usize,
}

/// What [`train`] returns besides the parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trained {
    /// Mean loss of the last tenth of the steps, nats per reading.
    pub final_loss: f64,
    /// Tokens trained on.
    pub tokens: u64,
    /// Seconds of training.
    pub seconds: f64,
}

/// Trains `M` from `init(seed)` on windows of `SEQ + 1` codes drawn
/// uniformly from the streams (each sequence from a zero memory state),
/// with AdamW and global-norm clipping at 1, data-parallel over the threads.
///
/// # Errors
/// If no stream holds a whole window, or a step would make a parameter
/// non-finite.
pub fn train<M: Model>(streams: &[&[u8]], s: &TrainSettings) -> Result<(Box<M::Params<f32>>, Trained)>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    let len = M::SEQ + 1;
    let starts: Vec<(usize, usize)> = streams
        .iter()
        .enumerate()
        .flat_map(|(i, st)| (0..st.len().saturating_sub(len) + usize::from(st.len() >= len)).map(move |o| (i, o)))
        .collect();
    if starts.is_empty() {
        return Err(Error(format!("no training stream holds a window of {len} readings")));
    }
    let mut params = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut params, s.seed);
    let mut grads = boxed_zeroed::<M::Params<f32>>();
    let (mut m, mut v) = (vec![0f32; M::PARAM_COUNT], vec![0f32; M::PARAM_COUNT]);
    let mut workers = parallel::workers::<M, f32>(s.threads.max(1).min(s.batch.max(1)));
    let mut rng = Rng::for_stream(s.seed, 0x7a1);
    let mut tokens = vec![0u32; s.batch * len];
    let (mut tail, mut tail_n) = (0.0f64, 0u64);
    let t0 = std::time::Instant::now();
    for step in 1..=s.steps {
        for b in 0..s.batch {
            let (i, o) = starts[rng.below(starts.len() as u64) as usize];
            for (d, &c) in tokens[b * len..(b + 1) * len].iter_mut().zip(&streams[i][o..o + len]) {
                *d = u32::from(c);
            }
        }
        grads.as_flat_mut().fill(0.0);
        let loss = parallel::loss_and_grad_batch::<M, f32>(&params, &tokens, &mut workers, &mut grads);
        let inv = 1.0 / s.batch as f32;
        for g in grads.as_flat_mut() {
            *g *= inv;
        }
        let opt = AdamW {
            lr: crate::train::lr_at(step, s.steps, s.warmup.min(s.steps), s.lr),
            weight_decay: s.weight_decay,
            ..AdamW::default()
        };
        opt.step(params.as_flat_mut(), grads.as_flat_mut(), &mut m, &mut v, step)
            .map_err(|e| Error(format!("training step {step}: {e}")))?;
        if step * 10 > s.steps * 9 {
            tail += f64::from(loss) / s.batch as f64;
            tail_n += 1;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let tokens = s.steps * (s.batch * M::SEQ) as u64;
    Ok((params, Trained { final_loss: tail / tail_n.max(1) as f64, tokens, seconds }))
}

/// The surprise of every reading under a stream of `M` set up by `setup`
/// (e.g. the memory frozen, or a schedule): `-ln softmax(logits_{t-1})[x_t]`
/// in nats, `ln VOCAB` for the first reading. Parameters frozen; the
/// memory's inner loop runs as `setup` leaves it.
pub fn surprises<M: Model>(params: &M::Params<f32>, codes: &[u8], setup: impl FnOnce(&mut M::Stream<f32>)) -> Vec<f32> {
    let mut st = boxed_zeroed::<M::Stream<f32>>();
    setup(&mut st);
    let mut out = Vec::with_capacity(codes.len());
    if codes.is_empty() {
        return out;
    }
    out.push((M::VOCAB as f32).ln());
    for (t, &c) in codes.iter().enumerate() {
        let logits = M::step(&mut st, params, u32::from(c));
        if let Some(&next) = codes.get(t + 1) {
            out.push(crate::eval::surprise(logits, next as usize) as f32);
        }
    }
    out
}
