//! Training a model as a byte-level language model on a text corpus.
//!
//! The corpus is split ([`crate::data`]): the last 10% is held out.
//! Training samples random windows of `SEQ + 1` bytes from the rest; each
//! optimizer step accumulates the gradients of `batch` sequences and takes
//! one AdamW step (linear warmup, then cosine decay to 10% of `lr`,
//! global-norm clipping; [`lr_at`]). With `threads > 1` each batch goes
//! through [`nl_runtime::parallel::DataParallel`] (a pool of threads started
//! once; one contiguous chunk of sequences per worker, gradients added in worker order), so a run is deterministic for
//! a given thread count.
//!
//! Along the way: a progress bar (on a terminal), a held-out evaluation
//! every `eval_every` steps, one JSON object per line in the log
//! ([`LogLine`]), the PNG loss curve ([`crate::plot`]) redrawn at every
//! evaluation, and a checkpoint plus its training state
//! ([`crate::state`]) every `checkpoint_every` steps and at the end, each
//! written atomically. `resume` continues a run from its state exactly;
//! `init` starts a new run from a checkpoint's weights.
//!
//! At the end the held-out text is scored as windows from a reset state
//! and as one continuous stream ([`crate::eval`]), and a sample is printed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nl_runtime::optim::AdamW;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, parallel, Flat, Model};

use crate::data::{self, Corpus};
use crate::state::{self, TrainState};
use crate::{eval, plot, sample, Error, Result};

const LN2: f64 = std::f64::consts::LN_2;

/// Default training settings (each overridable).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch: u64,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Worker threads (0: all cores).
    pub threads: u64,
}

impl Recipe {
    /// The settings `cargo nl train` uses where the command line gives none:
    /// 1000 steps of 16 sequences, AdamW at 3e-3 (warmup 100) with weight
    /// decay 0.1, on every core.
    pub const DEFAULT: Recipe = Recipe { steps: 1000, batch: 16, lr: 3e-3, warmup: 100, weight_decay: 0.1, threads: 0 };
}

/// Every setting of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Training text (bytes are tokens).
    pub corpus: PathBuf,
    /// Checkpoint path (the training state goes beside it, [`state::path_for`]).
    pub out: PathBuf,
    /// Optimizer steps of the run (ignored when resuming: the state's count is kept).
    pub steps: u64,
    /// Sequences per step.
    pub batch: u64,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// Linear warmup steps (capped at `steps`).
    pub warmup: u64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold (0 disables).
    pub clip: f64,
    /// Seed of initialisation, batch sampling and text sampling.
    pub seed: u64,
    /// Worker threads (0: all cores; at most one per sequence of a batch).
    pub threads: u64,
    /// Evaluate on held-out windows every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Held-out windows of the periodic evaluations, evenly spaced (0: all).
    pub eval_windows: usize,
    /// Write the checkpoint and training state every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// JSON-lines log (`None`: none).
    pub log: Option<PathBuf>,
    /// PNG loss curve (`None`: none).
    pub plot: Option<PathBuf>,
    /// Resume from this checkpoint's training state.
    pub resume: Option<PathBuf>,
    /// Start from this checkpoint's weights (fresh optimizer).
    pub init: Option<PathBuf>,
    /// Stop after this step (checkpoint and state written), keeping the
    /// learning-rate schedule of all `steps`; `resume` goes on from there.
    pub stop_after: Option<u64>,
    /// Bytes to sample at the end (0: none).
    pub sample_len: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
    /// Bytes of held-out text fed before sampling.
    pub prompt_len: usize,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
}

impl TrainConfig {
    /// A run on `corpus` saved to `out` with [`Recipe::DEFAULT`], the log
    /// and plot beside the checkpoint ([`TrainConfig::with_recipe`]).
    pub fn new(corpus: impl Into<PathBuf>, out: impl Into<PathBuf>) -> TrainConfig {
        TrainConfig::with_recipe(corpus, out, Recipe::DEFAULT)
    }

    /// A run with `recipe`'s settings; clipping at 1, seed 1, an evaluation
    /// on 512 windows every 1000 steps, checkpoints every 1000 steps, the
    /// log at `out` with extension `log.jsonl` and the plot at `loss.png`,
    /// a 300-byte sample at temperature 0.8 after a 64-byte prompt.
    pub fn with_recipe(corpus: impl Into<PathBuf>, out: impl Into<PathBuf>, recipe: Recipe) -> TrainConfig {
        let out = out.into();
        TrainConfig {
            corpus: corpus.into(),
            log: Some(sibling(&out, "log.jsonl")),
            plot: Some(sibling(&out, "loss.png")),
            out,
            steps: recipe.steps,
            batch: recipe.batch,
            lr: recipe.lr,
            warmup: recipe.warmup,
            weight_decay: recipe.weight_decay,
            clip: 1.0,
            seed: 1,
            threads: recipe.threads,
            eval_every: 1000,
            eval_windows: 512,
            checkpoint_every: 1000,
            resume: None,
            init: None,
            stop_after: None,
            sample_len: 300,
            temperature: 0.8,
            prompt_len: 64,
            progress: true,
        }
    }

    /// Checks the settings a type cannot.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error(format!("--lr must be a positive number, got {}", self.lr)));
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return Err(Error(format!("--clip must be >= 0 (0 disables clipping), got {}", self.clip)));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0 && self.lr * self.weight_decay < 1.0) {
            return Err(Error(format!(
                "--weight-decay must be >= 0 with lr * weight_decay < 1, got {}",
                self.weight_decay
            )));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error(format!("--temperature must be >= 0 (0: greedy), got {}", self.temperature)));
        }
        if self.steps == 0 || self.batch == 0 {
            return Err(Error(format!(
                "--steps and --batch must be at least 1, got {} and {}",
                self.steps, self.batch
            )));
        }
        if self.resume.is_some() && self.init.is_some() {
            return Err(Error(
                "--resume and --init exclude each other (resume continues a run; init starts one from weights)".into(),
            ));
        }
        Ok(())
    }
}

/// `path` with its extension replaced by `ext` (`x.safetensors` → `x.<ext>`).
pub fn sibling(path: &Path, ext: &str) -> PathBuf {
    path.with_extension(ext)
}

/// Learning rate at 1-based `step`: linear warmup to `peak` over `warmup`
/// steps, then cosine decay from `peak` to `0.1 * peak` at the last step.
pub fn lr_at(step: u64, steps: u64, warmup: u64, peak: f64) -> f64 {
    if step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let decay_steps = steps - warmup;
    let progress = if decay_steps == 0 { 1.0 } else { (step - warmup) as f64 / decay_steps as f64 };
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (0.1 + 0.9 * cos)
}

/// Worker threads for `requested` (0: all available cores), at most one per
/// sequence of a batch of `batch`, at least 1.
pub fn resolve_threads(requested: u64, batch: u64) -> usize {
    let n = if requested == 0 { std::thread::available_parallelism().map_or(1, |n| n.get() as u64) } else { requested };
    n.clamp(1, batch.max(1)) as usize
}

/// One line of the JSON-lines log: `{"kind":"train",…}` every few steps,
/// `{"kind":"eval",…}` at every evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogLine {
    /// Training progress after `step`.
    Train {
        /// Steps done.
        step: u64,
        /// Tokens trained on.
        tokens: u64,
        /// This step's batch loss, bits per byte.
        bits: f64,
        /// Smoothed training loss, bits per byte.
        smooth_bits: f64,
        /// Learning rate of the step.
        lr: f64,
        /// Gradient norm before clipping.
        grad_norm: f64,
        /// Training tokens per second so far (evaluation time excluded).
        tok_s: f64,
    },
    /// A held-out evaluation after `step`.
    Eval {
        /// Steps done.
        step: u64,
        /// Tokens trained on.
        tokens: u64,
        /// Held-out windows scored.
        windows: usize,
        /// Held-out bits per byte.
        bits: f64,
    },
}

impl LogLine {
    /// The line as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            LogLine::Train { step, tokens, bits, smooth_bits, lr, grad_norm, tok_s } => serde_json::json!({
                "kind": "train", "step": step, "tokens": tokens, "bits": bits, "smooth_bits": smooth_bits,
                "lr": lr, "grad_norm": grad_norm, "tok_s": tok_s,
            }),
            LogLine::Eval { step, tokens, windows, bits } => serde_json::json!({
                "kind": "eval", "step": step, "tokens": tokens, "windows": windows, "bits": bits,
            }),
        }
    }

    /// Reads a line written by [`LogLine::to_json`] (`None` for anything else).
    pub fn parse(line: &str) -> Option<LogLine> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        match v.get("kind")?.as_str()? {
            "train" => Some(LogLine::Train {
                step: u("step")?,
                tokens: u("tokens")?,
                bits: f("bits")?,
                smooth_bits: f("smooth_bits")?,
                lr: f("lr")?,
                grad_norm: f("grad_norm")?,
                tok_s: f("tok_s")?,
            }),
            "eval" => Some(LogLine::Eval {
                step: u("step")?,
                tokens: u("tokens")?,
                windows: u("windows")? as usize,
                bits: f("bits")?,
            }),
            _ => None,
        }
    }

    fn step(&self) -> u64 {
        match *self {
            LogLine::Train { step, .. } | LogLine::Eval { step, .. } => step,
        }
    }
}

/// The log file and the curves drawn from it.
struct Log {
    file: Option<fs::File>,
    path: Option<PathBuf>,
    train: Vec<plot::Point>,
    held_out: Vec<plot::Point>,
}

impl Log {
    /// Opens the log; when resuming after `keep_until` steps, keeps the
    /// earlier lines up to that step (later ones belong to the lost part of
    /// an interrupted run) and rebuilds the curves from them.
    fn open(path: Option<&Path>, keep_until: Option<u64>) -> Result<Log> {
        let mut log = Log { file: None, path: path.map(Path::to_path_buf), train: Vec::new(), held_out: Vec::new() };
        let Some(path) = path else { return Ok(log) };
        let mut kept = String::new();
        if let Some(until) = keep_until {
            for line in fs::read_to_string(path).unwrap_or_default().lines() {
                if let Some(l) = LogLine::parse(line).filter(|l| l.step() <= until) {
                    log.add_point(&l);
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        state::write_atomic(path, kept.as_bytes())?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error(format!("cannot open the log {}: {e}", path.display())))?;
        log.file = Some(file);
        Ok(log)
    }

    fn add_point(&mut self, l: &LogLine) {
        match *l {
            LogLine::Train { tokens, smooth_bits, .. } => self.train.push((tokens as f64, smooth_bits)),
            LogLine::Eval { tokens, bits, .. } => self.held_out.push((tokens as f64, bits)),
        }
    }

    fn write(&mut self, l: LogLine) -> Result<()> {
        self.add_point(&l);
        if let (Some(f), Some(p)) = (self.file.as_mut(), self.path.as_ref()) {
            writeln!(f, "{}", l.to_json()).map_err(|e| Error(format!("cannot write the log {}: {e}", p.display())))?;
        }
        Ok(())
    }
}

/// What a finished run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// The last step done (`steps`, or `stop_after`).
    pub steps: u64,
    /// Tokens trained on in this invocation.
    pub tokens: u64,
    /// Seconds of training in this invocation (evaluation excluded).
    pub train_seconds: f64,
    /// Held-out bits per byte, windows from a reset state.
    pub held_out_windows_bits: f64,
    /// Held-out bits per byte, one continuous stream.
    pub held_out_stream_bits: f64,
    /// The smoothed training loss at the end, bits per byte.
    pub train_bits: f64,
    /// Where the checkpoint is.
    pub checkpoint: PathBuf,
}

/// Trains `M` as configured; prints the run's story to stdout and returns
/// its numbers. Every failure (unreadable corpus, divergence, a checkpoint
/// of another spec, a write error) is an [`Error`]; the last checkpoint
/// written stays intact.
pub fn train<M: Model>(cfg: &TrainConfig) -> Result<TrainReport>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    cfg.validate()?;
    crate::require_bytes::<M>()?;
    let seq = M::SEQ;
    let corpus = Corpus::read(&cfg.corpus, seq)?;
    let (train_part, held_out) = (corpus.train(), corpus.held_out());
    let held_windows = data::windows(held_out, seq);

    // ---- state (all on the heap)
    let mut params = boxed_zeroed::<M::Params<f32>>();
    let mut adam_m = vec![0f32; M::PARAM_COUNT];
    let mut adam_v = vec![0f32; M::PARAM_COUNT];
    let (mut first, mut steps, mut smooth, mut smooth_w) = (1u64, cfg.steps, 0.0f64, 0.0f64);
    let mut batch = cfg.batch;
    let mut seed = cfg.seed;
    let resumed = match &cfg.resume {
        Some(ckpt) => {
            let sp = state::path_for(ckpt);
            if !sp.exists() {
                return Err(Error(format!(
                    "cannot resume from {}: its training state {} does not exist (use --init to start a new run from the weights)",
                    ckpt.display(),
                    sp.display()
                )));
            }
            let st = TrainState::load::<M>(&sp)?;
            if (st.corpus_len, st.corpus_fnv) != (corpus.bytes.len() as u64, corpus.fingerprint()) {
                return Err(Error(format!(
                    "cannot resume from {}: it was trained on another corpus ({} bytes, fingerprint {:016x}; {} has {} bytes, {:016x})",
                    sp.display(),
                    st.corpus_len,
                    st.corpus_fnv,
                    corpus.path.display(),
                    corpus.bytes.len(),
                    corpus.fingerprint()
                )));
            }
            params.as_flat_mut().copy_from_slice(&st.params);
            adam_m.copy_from_slice(&st.adam_m);
            adam_v.copy_from_slice(&st.adam_v);
            (first, steps, batch, seed) = (st.step + 1, st.steps, st.batch, st.seed);
            (smooth, smooth_w) = st.smooth;
            Some(st.step)
        }
        None => {
            match &cfg.init {
                Some(ckpt) => {
                    let p = crate::load_params::<M>(ckpt)?;
                    params.as_flat_mut().copy_from_slice(p.as_flat());
                }
                None => M::init(&mut *params, seed),
            }
            None
        }
    };
    let threads = resolve_threads(cfg.threads, batch);
    let warmup = cfg.warmup.min(steps);
    let tokens_per_step = batch * seq as u64;
    let total_tokens = steps
        .checked_mul(tokens_per_step)
        .filter(|&t| t < 1 << 53)
        .ok_or_else(|| Error(format!("{steps} steps x {tokens_per_step} tokens per step is too many tokens")))?;

    println!(
        "model {}: d_model {}, heads {}, seq {}, window {}, vocab {}, {} block(s), {} memory level(s) per block",
        M::NAME,
        M::D,
        M::HEADS,
        M::SEQ,
        M::WINDOW,
        M::VOCAB,
        M::LAYERS,
        M::LEVELS
    );
    println!(
        "  {} params, {} bytes (f32), {} FLOPs/token (train), {} FLOPs/token (forward)",
        M::PARAM_COUNT,
        M::PARAM_COUNT * 4,
        M::FLOPS_TRAIN,
        M::FLOPS_FORWARD
    );
    println!(
        "corpus {}: {} bytes; train {} bytes, held out {} bytes ({} windows of {} predicted bytes)",
        cfg.corpus.display(),
        corpus.bytes.len(),
        train_part.len(),
        held_out.len(),
        held_windows.len(),
        seq
    );
    if let Some(done) = resumed {
        println!(
            "resuming from {} at step {done} of {steps}",
            state::path_for(cfg.resume.as_deref().unwrap_or(Path::new(""))).display()
        );
    }
    println!(
        "training: {steps} steps x {batch} sequences x {seq} tokens = {total_tokens} tokens; AdamW lr {} (warmup {warmup}, cosine to 10%), \
         weight decay {}, clip {}, seed {seed}, {threads} thread(s)",
        cfg.lr, cfg.weight_decay, cfg.clip
    );

    let mut grads = boxed_zeroed::<M::Params<f32>>();
    let mut ws = boxed_zeroed::<M::Workspace<f32>>();
    // The data-parallel pool: its threads start here, once, and serve every step.
    let mut pool = (threads > 1).then(|| parallel::DataParallel::<M, f32>::new(threads));
    let mut rng = Rng::new(seed ^ 0xDA7A_5EED_0000_0001);
    let max_start = (train_part.len() - (seq + 1)) as u64 + 1;
    // Replay the completed steps' draws so the batches go on as in an uninterrupted run.
    for _ in 0..(first - 1) * batch {
        rng.below(max_start);
    }
    let mut log = Log::open(cfg.log.as_deref(), resumed)?;

    let periodic: Vec<usize> = data::subset(held_windows.len(), cfg.eval_windows);
    if resumed.is_none() {
        let init_eval = eval::windows::<M>(&params, held_out, &periodic, &mut ws);
        println!(
            "step 0: held-out {:.3} bits/byte ({} windows; uniform: {:.2})",
            init_eval / LN2,
            periodic.len(),
            (M::VOCAB as f64).log2()
        );
        log.write(LogLine::Eval { step: 0, tokens: 0, windows: periodic.len(), bits: init_eval / LN2 })?;
    }

    let pb = if cfg.progress { ProgressBar::new(steps) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{bar:24.cyan/blue} {pos}/{len} [{elapsed}<{eta}] {msg}")
            .map_err(|e| Error(format!("progress bar template: {e}")))?
            .progress_chars("=> "),
    );
    pb.set_position(first - 1);
    pb.reset_eta();

    let save = |params: &M::Params<f32>, m: &[f32], v: &[f32], step: u64, smooth: (f64, f64)| -> Result<()> {
        let st = TrainState {
            step,
            steps,
            seed,
            batch,
            corpus_len: corpus.bytes.len() as u64,
            corpus_fnv: corpus.fingerprint(),
            smooth,
            params: params.as_flat().to_vec(),
            adam_m: m.to_vec(),
            adam_v: v.to_vec(),
        };
        st.save::<M>(&state::path_for(&cfg.out))?;
        crate::save_params::<M>(params, &cfg.out)?;
        Ok(())
    };
    let redraw = |log: &Log| -> Result<()> {
        match &cfg.plot {
            Some(p) => {
                plot::loss_curve(p, &format!("{}: bits per byte", M::NAME), &log.train, &log.held_out).map(|_| ())
            }
            None => Ok(()),
        }
    };

    let start = Instant::now();
    let mut eval_time = Duration::ZERO;
    let mut last_norm = 0.0;
    let inv_batch = 1.0 / batch as f32;
    let mut batch_tokens = vec![0u32; batch as usize * (seq + 1)];
    let log_every = (steps / 200).max(1);
    let last = cfg.stop_after.map_or(steps, |s| s.clamp(first.saturating_sub(1), steps));

    for step in first..=last {
        grads.as_flat_mut().fill(0.0);
        for window in batch_tokens.chunks_exact_mut(seq + 1) {
            let s = rng.below(max_start) as usize;
            for (t, &b) in window.iter_mut().zip(&train_part[s..s + seq + 1]) {
                *t = u32::from(b);
            }
        }
        let loss_sum = match pool.as_mut() {
            None => M::loss_and_grad_batch(&*params, &batch_tokens, &mut *ws, &mut *grads),
            Some(pool) => pool.loss_and_grad_batch(&params, &batch_tokens, &mut grads),
        };
        let batch_loss = f64::from(loss_sum) / batch as f64;
        if !batch_loss.is_finite() {
            pb.abandon();
            return Err(Error(format!(
                "the training loss diverged ({batch_loss}) at step {step}; try a lower --lr (the last checkpoint is kept)"
            )));
        }
        let lr = lr_at(step, steps, warmup, cfg.lr);
        let opt = AdamW { lr, weight_decay: cfg.weight_decay, clip: cfg.clip, ..AdamW::default() };
        // The mean gradient and the AdamW step (on the pool's threads, by ranges of elements, with threads > 1).
        let stepped = match pool.as_mut() {
            None => {
                for g in grads.as_flat_mut() {
                    *g *= inv_batch;
                }
                opt.step(params.as_flat_mut(), grads.as_flat_mut(), &mut adam_m, &mut adam_v, step)
            }
            Some(pool) => pool.adamw_step(
                &opt,
                inv_batch,
                params.as_flat_mut(),
                grads.as_flat_mut(),
                &mut adam_m,
                &mut adam_v,
                step,
            ),
        };
        last_norm = match stepped {
            Ok(norm) => norm,
            Err(e) => {
                pb.abandon();
                return Err(Error(format!(
                    "training stopped at step {step}: {e}; try a lower --lr (the last checkpoint is kept)"
                )));
            }
        };

        smooth = 0.98 * smooth + 0.02 * batch_loss;
        smooth_w = 0.98 * smooth_w + 0.02;
        let train_time = start.elapsed().saturating_sub(eval_time).as_secs_f64().max(1e-9);
        let tok_s = ((step + 1 - first) * tokens_per_step) as f64 / train_time;
        pb.set_position(step);
        pb.set_message(format!(
            "loss {:.3} ({:.2} bits/byte) | {:.1}k tok/s",
            smooth / smooth_w,
            smooth / smooth_w / LN2,
            tok_s / 1e3
        ));
        if step % log_every == 0 || step == steps {
            log.write(LogLine::Train {
                step,
                tokens: step * tokens_per_step,
                bits: batch_loss / LN2,
                smooth_bits: smooth / smooth_w / LN2,
                lr,
                grad_norm: last_norm,
                tok_s,
            })?;
        }

        if cfg.eval_every > 0 && step % cfg.eval_every == 0 && step < last {
            let t0 = Instant::now();
            let l = eval::windows::<M>(&params, held_out, &periodic, &mut ws);
            log.write(LogLine::Eval { step, tokens: step * tokens_per_step, windows: periodic.len(), bits: l / LN2 })?;
            redraw(&log)?;
            eval_time += t0.elapsed();
            pb.suspend(|| {
                println!(
                    "step {step}: train {:.3} bits/byte, held-out {:.3} bits/byte, lr {:.2e}, grad norm {:.2}",
                    smooth / smooth_w / LN2,
                    l / LN2,
                    lr,
                    last_norm
                )
            });
        }
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < last {
            let t0 = Instant::now();
            save(&params, &adam_m, &adam_v, step, (smooth, smooth_w))?;
            eval_time += t0.elapsed();
        }
    }
    pb.finish_and_clear();
    let train_time = start.elapsed().saturating_sub(eval_time);
    save(&params, &adam_m, &adam_v, last, (smooth, smooth_w))?;
    if last < steps {
        println!("stopped after step {last} of {steps} (--stop-after); --resume {} goes on", cfg.out.display());
    }

    // ---- final evaluation over every held-out window
    let t0 = Instant::now();
    let all: Vec<usize> = (0..held_windows.len()).collect();
    let final_loss = eval::windows::<M>(&params, held_out, &all, &mut ws);
    log.write(LogLine::Eval {
        step: last,
        tokens: last * tokens_per_step,
        windows: all.len(),
        bits: final_loss / LN2,
    })?;
    redraw(&log)?;

    // ---- final evaluation as one continuous stream, state carried
    let spb = ProgressBar::with_draw_target(Some(held_out.len() as u64), ProgressDrawTarget::hidden());
    spb.set_style(
        ProgressStyle::with_template("stream evaluation {bar:24.cyan/blue} {pos}/{len} bytes [{elapsed}<{eta}]")
            .map_err(|e| Error(format!("progress bar template: {e}")))?
            .progress_chars("=> "),
    );
    let s0 = Instant::now();
    let mut shown = false;
    let (stream_nats, stream_bytes) = eval::stream::<M>(&params, held_out, |done| {
        // Only drawn if the evaluation takes more than a second.
        if cfg.progress && !shown && s0.elapsed() > Duration::from_secs(1) {
            spb.set_draw_target(ProgressDrawTarget::stderr());
            shown = true;
        }
        spb.set_position(done as u64);
    });
    spb.finish_and_clear();
    let stream_time = s0.elapsed();
    let stream_loss = stream_nats / stream_bytes.max(1) as f64;
    let final_eval_time = t0.elapsed();

    // ---- sample
    if cfg.sample_len > 0 {
        let (prompt, text) =
            sample::from_text::<M>(&params, held_out, cfg.prompt_len, cfg.sample_len, cfg.temperature, seed);
        println!("\nsample (temperature {}; the prompt, from the held-out text, is in [brackets]):", cfg.temperature);
        println!("[{}]{}\n", data::escape(&prompt), data::escape(&text));
    }

    let size = fs::metadata(&cfg.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "checkpoint: {} ({} bytes; training state {})",
        cfg.out.display(),
        size,
        state::path_for(&cfg.out).display()
    );
    if let Some(p) = &cfg.log {
        println!("log: {}", p.display());
    }
    if let Some(p) = &cfg.plot {
        println!("loss curve: {}", p.display());
    }

    // ---- summary
    let trained = (last + 1 - first) * tokens_per_step;
    let secs = train_time.as_secs_f64().max(1e-9);
    let tok_s = trained as f64 / secs;
    println!(
        "trained {} tokens in {:.1} s ({:.1} s total with {:.1} s of evaluation): {:.0} tok/s, {:.2} GFLOP/s",
        trained,
        secs,
        start.elapsed().as_secs_f64(),
        (eval_time + final_eval_time).as_secs_f64(),
        tok_s,
        tok_s * M::FLOPS_TRAIN as f64 / 1e9
    );
    let train_bits = if smooth_w > 0.0 { smooth / smooth_w / LN2 } else { f64::NAN };
    println!("final train loss (smoothed): {train_bits:.3} bits/byte, last grad norm {last_norm:.2}");
    println!(
        "held-out evaluation: {} windows, {} predicted bytes, {:.4} nats/byte",
        held_windows.len(),
        held_windows.len() * seq,
        final_loss
    );
    println!(
        "held-out stream evaluation: {} predicted bytes, {:.4} nats/byte, {:.1} s",
        stream_bytes,
        stream_loss,
        stream_time.as_secs_f64()
    );
    println!("held-out (windows from a reset state): {:.2} bits/byte", final_loss / LN2);
    println!(
        "held-out (one continuous stream, state carried): {:.2} bits/byte (uniform: {:.2})",
        stream_loss / LN2,
        (M::VOCAB as f64).log2()
    );
    Ok(TrainReport {
        steps: last,
        tokens: trained,
        train_seconds: secs,
        held_out_windows_bits: final_loss / LN2,
        held_out_stream_bits: stream_loss / LN2,
        train_bits,
        checkpoint: cfg.out.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_and_decays_to_ten_percent() {
        assert!((lr_at(1, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(1, 1, 1, 1.0) - 1.0).abs() < 1e-12);
        // Half way through the decay: the cosine is at its midpoint, 0.1 + 0.9 * 0.5.
        assert!((lr_at(55, 100, 10, 1.0) - 0.55).abs() < 1e-12);
    }

    #[test]
    fn threads_resolve() {
        assert_eq!(resolve_threads(1, 16), 1);
        assert_eq!(resolve_threads(2, 16), 2);
        assert_eq!(resolve_threads(64, 16), 16);
        assert_eq!(resolve_threads(3, 0), 1);
        assert_eq!(resolve_threads(0, 1 << 20), std::thread::available_parallelism().map_or(1, |n| n.get()));
    }

    #[test]
    fn log_lines_round_trip() {
        let lines = [
            LogLine::Train { step: 3, tokens: 96, bits: 7.5, smooth_bits: 7.9, lr: 1e-3, grad_norm: 0.5, tok_s: 1e5 },
            LogLine::Eval { step: 4, tokens: 128, windows: 12, bits: 6.25 },
        ];
        for l in lines {
            assert_eq!(LogLine::parse(&l.to_json().to_string()), Some(l));
        }
        assert_eq!(LogLine::parse("{\"kind\":\"other\"}"), None);
        assert_eq!(LogLine::parse("not json"), None);
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let ok = TrainConfig::new("c.txt", "x.safetensors");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.log.as_deref(), Some(Path::new("x.log.jsonl")));
        for (cfg, flag) in [
            (TrainConfig { lr: 0.0, ..ok.clone() }, "--lr"),
            (TrainConfig { lr: f64::NAN, ..ok.clone() }, "--lr"),
            (TrainConfig { clip: -1.0, ..ok.clone() }, "--clip"),
            (TrainConfig { weight_decay: 1e4, ..ok.clone() }, "--weight-decay"),
            (TrainConfig { temperature: -0.5, ..ok.clone() }, "--temperature"),
            (TrainConfig { steps: 0, ..ok.clone() }, "--steps"),
            (TrainConfig { resume: Some("a".into()), init: Some("b".into()), ..ok.clone() }, "--resume"),
        ] {
            let e = cfg.validate().err().map(|e| e.0).unwrap_or_default();
            assert!(e.contains(flag) && !e.contains('\n'), "{flag}: {e}");
        }
    }
}
