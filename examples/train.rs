//! Trains a generated model as a byte-level language model on a text corpus.
//!
//! ```text
//! cargo run --release --example train                          # the deep language model (models/deep.toml) on data/corpus.txt
//! cargo run --release --example train -- --model micro_memory   # another compiled-in spec (each has its own default settings)
//! cargo run --release --example train -- --threads 2            # data-parallel over the batch
//! cargo run --release --example train -- --help                 # every setting
//! ```
//!
//! The last 10% of the corpus bytes are held out. Training samples random
//! windows of `SEQ + 1` bytes from the rest; each optimizer step accumulates
//! the gradients of `--batch` sequences and takes one AdamW step (linear
//! warmup, then cosine decay to 10% of `--lr`, global-norm clipping). With
//! `--threads N > 1` each batch goes through `nl_runtime::parallel` (one
//! contiguous chunk of sequences per worker thread, each with its own
//! workspace and gradient buffer, gradients added in worker order), so a run
//! is deterministic for a given `N`.
//!
//! The held-out text is scored twice at the end, in bits per byte:
//! - windows from a reset state: `SEQ + 1`-byte windows at stride `SEQ`, each
//!   through [`Model::loss`] (the periodic evaluations use a subset of them);
//! - one continuous stream, state carried: [`Model::reset`] once, then
//!   [`Model::step`] for every held-out byte, each next byte scored by
//!   `-log softmax(logits)[next]` (computed in f64).
//!
//! Then a text sample is generated with the streaming state, and the
//! parameters are saved as a safetensors checkpoint (`nl_runtime::checkpoint`:
//! one F32 tensor per `TENSORS` entry, the spec's SHA-256 in the metadata;
//! written atomically).
//!
//! The trainer is generic over [`nl_runtime::Model`]: `train::<M>(&args)`
//! works for any generated model; `main` looks `--model` up in [`MODELS`],
//! the specs compiled into this example.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nl::nl_runtime::optim::AdamW;
use nl::nl_runtime::parallel;
use nl::nl_runtime::rng::{sample_logits, Rng};
use nl::nl_runtime::{boxed_zeroed, Flat, Model};

nl::nl_model!("models/micro.toml");
nl::nl_model!("models/micro_memory.toml");
nl::nl_model!("models/micro_titans.toml");
nl::nl_model!("models/deep.toml");
nl::nl_model!("models/deep_memory.toml");

/// A compiled-in model the main job can train.
struct Entry {
    /// The model's name (`Model::NAME`, the spec's file stem), as given to `--model`.
    name: &'static str,
    /// The whole run for this model: `train::<X::Model>`.
    train: fn(&Args) -> Res<()>,
    /// The training settings used where the command line gives none.
    recipe: Recipe,
}

/// A model's default training settings (each overridden by its flag).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Recipe {
    steps: u64,
    batch: u64,
    lr: f64,
    warmup: u64,
    weight_decay: f64,
    threads: u64,
}

/// The first version's settings, kept for the micro models: 11,000 steps of
/// 16 sequences, AdamW at 1e-2 without weight decay, one thread.
const MICRO_RECIPE: Recipe = Recipe { steps: 11_000, batch: 16, lr: 1e-2, warmup: 100, weight_decay: 0.0, threads: 1 };

/// The deep models: about 8M training tokens on both cores (the 3-minute
/// budget of the main job on a 2-core machine), AdamW at 3e-3 with weight
/// decay 0.1.
const DEEP_RECIPE: Recipe = Recipe { steps: 4_000, batch: 16, lr: 3e-3, warmup: 200, weight_decay: 0.1, threads: 2 };

/// The models `--model` chooses among (each compiled from `models/<name>.toml`).
const MODELS: &[Entry] = &[
    Entry { name: <deep::Model as Model>::NAME, train: train::<deep::Model>, recipe: DEEP_RECIPE },
    Entry { name: <deep_memory::Model as Model>::NAME, train: train::<deep_memory::Model>, recipe: DEEP_RECIPE },
    Entry { name: <micro::Model as Model>::NAME, train: train::<micro::Model>, recipe: MICRO_RECIPE },
    Entry { name: <micro_memory::Model as Model>::NAME, train: train::<micro_memory::Model>, recipe: MICRO_RECIPE },
    Entry { name: <micro_titans::Model as Model>::NAME, train: train::<micro_titans::Model>, recipe: MICRO_RECIPE },
];

/// The names in [`MODELS`], comma-separated.
fn model_names() -> String {
    MODELS.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
}

/// The [`MODELS`] entry called `name`, or an error listing the available names.
fn find_model(name: &str) -> Result<&'static Entry, String> {
    MODELS
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| format!("unknown model '{name}' (--model); available: {}", model_names()))
}

/// Fraction of the corpus (its tail) held out for evaluation.
const HELD_OUT_FRACTION: f64 = 0.10;

/// Train a generated nl model as a byte-level language model.
#[derive(Parser, Debug, Clone)]
#[command(version, long_about = None, allow_negative_numbers = true)]
struct Cli {
    /// Model to train, compiled in from models/<MODEL>.toml: deep (the default language model), deep_memory, micro, micro_memory or micro_titans.
    #[arg(long, default_value = "deep")]
    model: String,

    /// Worker threads for training (data-parallel over the batch; 0: all available cores). Default: the model's (deep: 2, micro: 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1024))]
    threads: Option<u64>,

    /// Training text (bytes are tokens). Default: data/corpus.txt of this package.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/corpus.txt"))]
    corpus: PathBuf,

    /// Optimizer steps. Default: the model's (deep: 4000, micro: 11000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,

    /// Train on this many tokens instead (steps = ceil(tokens / (batch * SEQ))); overrides --steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    tokens: Option<u64>,

    /// Sequences per optimizer step (their gradients are averaged). Default: the model's (16).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: Option<u64>,

    /// Peak AdamW learning rate (after warmup; cosine decay to 10% of it). Default: the model's (deep: 3e-3, micro: 1e-2).
    #[arg(long)]
    lr: Option<f64>,

    /// Linear warmup steps (capped at the number of steps). Default: the model's (deep: 200, micro: 100).
    #[arg(long)]
    warmup: Option<u64>,

    /// AdamW decoupled weight decay. Default: the model's (deep: 0.1, micro: 0).
    #[arg(long)]
    weight_decay: Option<f64>,

    /// Global gradient-norm clipping threshold (0 disables).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,

    /// Seed for initialisation, batch sampling and text sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Evaluate on held-out windows every this many steps (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    eval_every: u64,

    /// Held-out windows used by the periodic evaluations, evenly spaced (0: all).
    /// The final evaluation always uses all of them.
    #[arg(long, default_value_t = 512)]
    eval_windows: usize,

    /// Checkpoint path. Default: checkpoints/<model>.safetensors under this package.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Bytes to generate for the final sample (0: no sample).
    #[arg(long, default_value_t = 300)]
    sample_len: usize,

    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,

    /// Bytes of held-out text fed to the stream before sampling.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    prompt_len: u64,
}

/// The settings of one run: the command line over the model's [`Recipe`].
#[derive(Debug, Clone)]
struct Args {
    threads: u64,
    corpus: PathBuf,
    steps: u64,
    tokens: Option<u64>,
    batch: u64,
    lr: f64,
    warmup: u64,
    weight_decay: f64,
    clip: f64,
    seed: u64,
    eval_every: u64,
    eval_windows: usize,
    out: Option<PathBuf>,
    sample_len: usize,
    temperature: f64,
    prompt_len: u64,
}

impl Args {
    /// `cli`'s settings, the model's recipe where `cli` has none.
    fn resolve(cli: Cli, r: Recipe) -> Args {
        Args {
            threads: cli.threads.unwrap_or(r.threads),
            corpus: cli.corpus,
            steps: cli.steps.unwrap_or(r.steps),
            tokens: cli.tokens,
            batch: cli.batch.unwrap_or(r.batch),
            lr: cli.lr.unwrap_or(r.lr),
            warmup: cli.warmup.unwrap_or(r.warmup),
            weight_decay: cli.weight_decay.unwrap_or(r.weight_decay),
            clip: cli.clip,
            seed: cli.seed,
            eval_every: cli.eval_every,
            eval_windows: cli.eval_windows,
            out: cli.out,
            sample_len: cli.sample_len,
            temperature: cli.temperature,
            prompt_len: cli.prompt_len,
        }
    }
}

/// A result whose error is a message for the user (printed by `main`).
type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = |entry: &Entry| (entry.train)(&Args::resolve(cli.clone(), entry.recipe));
    match find_model(&cli.model).map_err(Into::into).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the settings clap cannot check by type.
fn validate(args: &Args) -> Res<()> {
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(format!("--lr must be a positive number, got {}", args.lr).into());
    }
    if !(args.clip.is_finite() && args.clip >= 0.0) {
        return Err(format!("--clip must be >= 0 (0 disables clipping), got {}", args.clip).into());
    }
    if !(args.weight_decay.is_finite() && args.weight_decay >= 0.0 && args.lr * args.weight_decay < 1.0) {
        return Err(format!("--weight-decay must be >= 0 with lr * weight_decay < 1, got {}", args.weight_decay).into());
    }
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        return Err(format!("--temperature must be >= 0 (0: greedy), got {}", args.temperature).into());
    }
    Ok(())
}

/// Worker threads for `--threads requested` (0: all available cores), at
/// most one per sequence of a batch of `batch`, at least 1.
fn resolve_threads(requested: u64, batch: u64) -> usize {
    let n = if requested == 0 { std::thread::available_parallelism().map_or(1, |n| n.get() as u64) } else { requested };
    n.clamp(1, batch.max(1)) as usize
}

/// The whole run for model `M`: load, train, evaluate, sample, save.
fn train<M: Model>(args: &Args) -> Res<()>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    validate(args)?;
    let threads = resolve_threads(args.threads, args.batch);
    let seq = M::SEQ;
    if M::VOCAB < 256 {
        return Err(format!("model {} has a vocabulary of {}; byte-level training needs 256", M::NAME, M::VOCAB).into());
    }

    // ---- data
    let corpus =
        fs::read(&args.corpus).map_err(|e| format!("cannot read the corpus {}: {e}", args.corpus.display()))?;
    let split = train_split(corpus.len());
    let (train_part, held_out) = corpus.split_at(split);
    if !corpus_is_large_enough(corpus.len(), seq) {
        let need = (1..).find(|&n| corpus_is_large_enough(n, seq)).unwrap_or(usize::MAX);
        return Err(format!(
            "the corpus {} is too small: {} bytes, model {} needs at least {need} \
             (the first 90% for training, >= {} bytes; the last 10% held out, >= {} bytes = one window)",
            args.corpus.display(),
            corpus.len(),
            M::NAME,
            MIN_TRAIN_WINDOWS * (seq + 1),
            seq + 1
        )
        .into());
    }
    let held_windows = held_out_windows(held_out, seq);

    let steps = match args.tokens {
        Some(t) => t.div_ceil(args.batch * seq as u64),
        None => args.steps,
    };
    let warmup = args.warmup.min(steps);
    let tokens_per_step = args.batch * seq as u64;
    let total_tokens = steps
        .checked_mul(tokens_per_step)
        .filter(|&t| t < 1 << 53)
        .ok_or_else(|| format!("{steps} steps x {tokens_per_step} tokens per step is too many tokens"))?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints").join(format!("{}.safetensors", M::NAME)),
    };

    println!(
        "model {}: d_model {}, heads {}, seq {}, window {}, vocab {}, {} memory level(s)",
        M::NAME,
        M::D,
        M::HEADS,
        M::SEQ,
        M::WINDOW,
        M::VOCAB,
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
        args.corpus.display(),
        corpus.len(),
        train_part.len(),
        held_out.len(),
        held_windows.len(),
        seq
    );
    println!(
        "training: {steps} steps x {} sequences x {seq} tokens = {} tokens; AdamW lr {} (warmup {warmup}, cosine to 10%), \
         weight decay {}, clip {}, seed {}, {threads} thread(s)",
        args.batch,
        total_tokens,
        args.lr,
        args.weight_decay,
        args.clip,
        args.seed
    );

    // ---- state (all on the heap)
    let mut params = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut *params, args.seed);
    let mut grads = boxed_zeroed::<M::Params<f32>>();
    let mut ws = boxed_zeroed::<M::Workspace<f32>>();
    // Data-parallel workers (own workspace and gradient buffer each); none on one thread.
    let mut workers = if threads > 1 { parallel::workers::<M, f32>(threads) } else { Vec::new() };
    let mut adam_m = vec![0f32; M::PARAM_COUNT];
    let mut adam_v = vec![0f32; M::PARAM_COUNT];
    let mut rng = Rng::new(args.seed ^ 0xDA7A_5EED_0000_0001);

    // Periodic evaluations use an evenly spaced subset, the final one all windows.
    let periodic: Vec<usize> = subset(held_windows.len(), args.eval_windows);
    let init_eval = evaluate::<M>(&params, held_out, &periodic, &mut ws);
    println!(
        "step 0: held-out {:.3} bits/byte ({} windows; uniform: {:.2})",
        init_eval / std::f64::consts::LN_2,
        periodic.len(),
        (M::VOCAB as f64).log2()
    );

    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template("{bar:24.cyan/blue} {pos}/{len} [{elapsed}<{eta}] {msg}")
            .map_err(|e| format!("progress bar template: {e}"))?
            .progress_chars("=> "),
    );

    let start = Instant::now();
    let mut eval_time = Duration::ZERO;
    let mut smooth = 0.0f64; // EMA of the train loss, bias-corrected below
    let mut smooth_w = 0.0f64;
    let mut last_norm = 0.0;
    let inv_batch = 1.0 / args.batch as f32;
    let mut batch_tokens = vec![0u32; args.batch as usize * (seq + 1)];
    let max_start = (train_part.len() - (seq + 1)) as u64 + 1;

    for step in 1..=steps {
        grads.as_flat_mut().fill(0.0);
        for window in batch_tokens.chunks_exact_mut(seq + 1) {
            let s = rng.below(max_start) as usize;
            for (t, &b) in window.iter_mut().zip(&train_part[s..s + seq + 1]) {
                *t = u32::from(b);
            }
        }
        let loss_sum = if workers.is_empty() {
            M::loss_and_grad_batch(&*params, &batch_tokens, &mut *ws, &mut *grads)
        } else {
            parallel::loss_and_grad_batch::<M, f32>(&params, &batch_tokens, &mut workers, &mut grads)
        };
        let batch_loss = f64::from(loss_sum) / args.batch as f64;
        if !batch_loss.is_finite() {
            pb.abandon();
            return Err(format!("the training loss diverged ({batch_loss}) at step {step}; try a lower --lr").into());
        }
        for g in grads.as_flat_mut() {
            *g *= inv_batch;
        }
        let opt = AdamW {
            lr: lr_at(step, steps, warmup, args.lr),
            weight_decay: args.weight_decay,
            clip: args.clip,
            ..AdamW::default()
        };
        last_norm = match opt.step(params.as_flat_mut(), grads.as_flat_mut(), &mut adam_m, &mut adam_v, step) {
            Ok(norm) => norm,
            Err(e) => {
                pb.abandon();
                return Err(format!("training stopped at step {step}: {e}; try a lower --lr").into());
            }
        };

        smooth = 0.98 * smooth + 0.02 * batch_loss;
        smooth_w = 0.98 * smooth_w + 0.02;
        let train_time = start.elapsed().saturating_sub(eval_time).as_secs_f64().max(1e-9);
        let tok_s = (step * tokens_per_step) as f64 / train_time;
        pb.set_position(step);
        pb.set_message(format!(
            "loss {:.3} ({:.2} bits/byte) | {:.1}k tok/s",
            smooth / smooth_w,
            smooth / smooth_w / std::f64::consts::LN_2,
            tok_s / 1e3
        ));

        if args.eval_every > 0 && step % args.eval_every == 0 && step < steps {
            let t0 = Instant::now();
            let l = evaluate::<M>(&params, held_out, &periodic, &mut ws);
            eval_time += t0.elapsed();
            pb.suspend(|| {
                println!(
                    "step {step}: train {:.3} bits/byte, held-out {:.3} bits/byte, lr {:.2e}, grad norm {:.2}",
                    smooth / smooth_w / std::f64::consts::LN_2,
                    l / std::f64::consts::LN_2,
                    lr_at(step, steps, warmup, args.lr),
                    last_norm
                )
            });
        }
    }
    pb.finish_and_clear();
    let train_time = start.elapsed().saturating_sub(eval_time);

    // ---- final evaluation over every held-out window
    let t0 = Instant::now();
    let all: Vec<usize> = (0..held_windows.len()).collect();
    let final_loss = evaluate::<M>(&params, held_out, &all, &mut ws);

    // ---- final evaluation as one continuous stream, state carried
    let spb = ProgressBar::with_draw_target(Some(held_out.len() as u64), ProgressDrawTarget::hidden());
    spb.set_style(
        ProgressStyle::with_template("stream evaluation {bar:24.cyan/blue} {pos}/{len} bytes [{elapsed}<{eta}]")
            .map_err(|e| format!("progress bar template: {e}"))?
            .progress_chars("=> "),
    );
    let s0 = Instant::now();
    let mut shown = false;
    let (stream_nats, stream_bytes) = evaluate_stream::<M>(&params, held_out, |done| {
        // Only drawn if the evaluation takes more than a second.
        if !shown && s0.elapsed() > Duration::from_secs(1) {
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
    if args.sample_len > 0 {
        let text =
            generate::<M>(&params, held_out, args.prompt_len as usize, args.sample_len, args.temperature, args.seed);
        println!("\nsample (temperature {}; the prompt, from the held-out text, is in [brackets]):", args.temperature);
        println!("{text}\n");
    }

    // ---- checkpoint
    let size = save_checkpoint::<M>(&params, &out)?;
    println!("checkpoint: {} ({} bytes)", out.display(), size);

    // ---- summary
    let trained = total_tokens;
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
    println!(
        "final train loss (smoothed): {:.3} bits/byte, last grad norm {:.2}",
        smooth / smooth_w / std::f64::consts::LN_2,
        last_norm
    );
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
    println!("held-out (windows from a reset state): {:.2} bits/byte", final_loss / std::f64::consts::LN_2);
    println!(
        "held-out (one continuous stream, state carried): {:.2} bits/byte (uniform: {:.2})",
        stream_loss / std::f64::consts::LN_2,
        (M::VOCAB as f64).log2()
    );
    Ok(())
}

/// Minimum training part, in sequences of `SEQ + 1` bytes.
const MIN_TRAIN_WINDOWS: usize = 4;

/// Bytes of a corpus of `len` bytes used for training (the rest is held out).
fn train_split(len: usize) -> usize {
    ((len as f64) * (1.0 - HELD_OUT_FRACTION)).floor() as usize
}

/// Whether a corpus of `len` bytes has a few training windows and at least
/// one held-out window.
fn corpus_is_large_enough(len: usize, seq: usize) -> bool {
    let split = train_split(len);
    split >= MIN_TRAIN_WINDOWS * (seq + 1) && len - split > seq
}

/// Learning rate at 1-based `step`: linear warmup to `peak` over `warmup`
/// steps, then cosine decay from `peak` to `0.1 * peak` at the last step.
fn lr_at(step: u64, steps: u64, warmup: u64, peak: f64) -> f64 {
    if step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let decay_steps = steps - warmup;
    let progress = if decay_steps == 0 { 1.0 } else { (step - warmup) as f64 / decay_steps as f64 };
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (0.1 + 0.9 * cos)
}

/// Start offsets of the held-out evaluation windows: `SEQ + 1` bytes each,
/// at stride `SEQ`, so every held-out byte after the first is predicted
/// exactly once (the predicted targets do not overlap).
fn held_out_windows(held_out: &[u8], seq: usize) -> Vec<usize> {
    (0..).map(|i| i * seq).take_while(|&s| s + seq < held_out.len()).collect()
}

/// `k` indices evenly spaced over `0..n` (all of them if `k == 0` or `k >= n`).
fn subset(n: usize, k: usize) -> Vec<usize> {
    if k == 0 || k >= n {
        (0..n).collect()
    } else {
        (0..k).map(|i| i * n / k).collect()
    }
}

/// Mean cross-entropy (nats per byte) over the chosen held-out windows.
fn evaluate<M: Model>(params: &M::Params<f32>, held_out: &[u8], which: &[usize], ws: &mut M::Workspace<f32>) -> f64 {
    let seq = M::SEQ;
    let starts = held_out_windows(held_out, seq);
    let mut tokens = vec![0u32; seq + 1];
    let mut total = 0.0f64;
    for &w in which {
        let s = starts[w];
        for (t, &b) in tokens.iter_mut().zip(&held_out[s..s + seq + 1]) {
            *t = u32::from(b);
        }
        total += f64::from(M::loss(params, &tokens, ws));
    }
    total / which.len().max(1) as f64
}

/// `-ln softmax(logits)[target]`, computed in f64 (log-sum-exp with the
/// maximum subtracted): the surprise of `target`, in nats.
fn surprise(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    max + sum.ln() - f64::from(logits[target])
}

/// Scores `text` as one continuous stream: [`Model::reset`] once, then
/// [`Model::step`] for every byte but the last, each step's logits scoring
/// the next byte by [`surprise`]. Returns (total nats, predicted bytes =
/// `text.len() - 1`, or 0 for a text shorter than 2 bytes). `progress` is
/// called every few thousand bytes with the number of bytes fed so far.
fn evaluate_stream<M: Model>(params: &M::Params<f32>, text: &[u8], mut progress: impl FnMut(usize)) -> (f64, usize) {
    let mut stream = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *stream);
    let mut total = 0.0f64;
    for (i, pair) in text.windows(2).enumerate() {
        let logits = M::step(&mut *stream, params, u32::from(pair[0]));
        total += surprise(logits, usize::from(pair[1]));
        if i % 4096 == 4095 {
            progress(i + 1);
        }
    }
    let predicted = text.len().saturating_sub(1);
    progress(predicted);
    (total, predicted)
}

/// Feeds a prompt from the held-out text to a fresh stream, then samples
/// `len` bytes. Returns `[prompt]continuation`, with non-printable bytes escaped.
fn generate<M: Model>(
    params: &M::Params<f32>,
    held_out: &[u8],
    prompt_len: usize,
    len: usize,
    temp: f64,
    seed: u64,
) -> String {
    // Start the prompt at the beginning of a paragraph (after a newline) if there is one.
    let begin = held_out.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let begin = if begin + prompt_len.min(held_out.len()) <= held_out.len() { begin } else { 0 };
    let prompt = &held_out[begin..(begin + prompt_len).min(held_out.len())];

    let mut stream = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *stream);
    let mut rng = Rng::new(seed ^ 0x5A3B_1E00_0000_0002);
    let mut logits: Vec<f32> = Vec::new();
    for &b in prompt {
        logits.clear();
        logits.extend_from_slice(M::step(&mut *stream, params, u32::from(b)));
    }
    let mut out = Vec::with_capacity(len.min(1 << 20));
    for _ in 0..len {
        let next = sample_logits(&logits, temp, &mut rng);
        // Byte-level model: every token is a byte (VOCAB == 256 is checked in `train`).
        let b = u8::try_from(next).unwrap_or(b'?');
        out.push(b);
        logits.clear();
        logits.extend_from_slice(M::step(&mut *stream, params, u32::from(b)));
    }
    format!("[{}]{}", escape(prompt), escape(&out))
}

/// Printable ASCII and newlines as they are, everything else as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\n' => s.push('\n'),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// Saves the checkpoint as safetensors, atomically (`<out>.tmp`, then rename); returns its size in bytes.
fn save_checkpoint<M: Model>(params: &M::Params<f32>, out: &Path) -> Res<u64> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the checkpoint directory {}: {e}", dir.display()))?;
    }
    // The error names the path it was writing.
    nl::nl_runtime::checkpoint::save::<M, f32>(out, params)?;
    let size = fs::metadata(out).map_err(|e| format!("cannot stat {}: {e}", out.display()))?.len();
    debug_assert_eq!(size, (nl::nl_runtime::checkpoint::header_len::<M, f32>() + 4 * M::PARAM_COUNT) as u64);
    Ok(size)
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
    }

    #[test]
    fn models_are_found_by_name() {
        let names: Vec<&str> = MODELS.iter().map(|e| e.name).collect();
        assert_eq!(names, ["deep", "deep_memory", "micro", "micro_memory", "micro_titans"]);
        for name in names {
            assert_eq!(find_model(name).map(|e| e.name), Ok(name));
        }
        let err = find_model("nano").err().unwrap_or_default();
        assert!(
            err.contains("'nano'") && err.contains("deep, deep_memory, micro, micro_memory, micro_titans"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(find_model("").is_err() && find_model("Micro").is_err());
    }

    #[test]
    fn help_lists_every_model_and_default_is_deep() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "model");
        let help = arg.and_then(|a| a.get_help()).map(|h| h.to_string()).unwrap_or_default();
        for e in MODELS {
            assert!(help.contains(e.name), "--model help {help:?} does not name {}", e.name);
        }
        let cli = Cli::try_parse_from(["train"]).map_err(|e| e.to_string());
        assert_eq!(cli.as_ref().map(|a| (a.model.as_str(), a.threads)), Ok(("deep", None)));
        // The model's recipe fills what the command line leaves out.
        let cli = Cli::try_parse_from(["train", "--lr", "0.5"]).map_err(|e| e.to_string());
        let args = cli.map(|c| Args::resolve(c, MICRO_RECIPE));
        assert_eq!(args.as_ref().map(|a| (a.lr, a.steps, a.threads)), Ok((0.5, 11_000, 1)));
    }

    #[test]
    fn threads_resolve() {
        assert_eq!(resolve_threads(1, 16), 1);
        assert_eq!(resolve_threads(2, 16), 2);
        assert_eq!(resolve_threads(64, 16), 16);
        assert_eq!(resolve_threads(3, 0), 1);
        let all = resolve_threads(0, 1 << 20);
        assert!(all >= 1);
        assert_eq!(all, std::thread::available_parallelism().map_or(1, |n| n.get()));
    }

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

    /// `-ln p[next]` from one step's logits, written plainly (no max subtracted).
    fn by_hand(logits: &[f32], next: u8) -> f64 {
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        -(f64::from(logits[usize::from(next)]).exp() / z).ln()
    }

    /// The continuous-stream evaluation of `M` on short texts equals the
    /// surprises computed by hand from `Model::step`'s logits, state carried.
    fn stream_matches_steps<M: Model>() {
        let mut params = boxed_zeroed::<M::Params<f32>>();
        M::init(&mut *params, 3);

        // Two bytes: one prediction, from a reset state.
        let mut stream = boxed_zeroed::<M::Stream<f32>>();
        M::reset(&mut *stream);
        let expect = by_hand(M::step(&mut *stream, &params, u32::from(b'h')), b'i');
        let (nats, n) = evaluate_stream::<M>(&params, b"hi", |_| {});
        assert_eq!(n, 1);
        assert!((nats - expect).abs() < 1e-9 * expect.max(1.0), "{nats} vs {expect}");

        // Longer: the state is carried from byte to byte (not reset).
        let text = b"hello, world";
        M::reset(&mut *stream);
        let mut expect = 0.0;
        for pair in text.windows(2) {
            expect += by_hand(M::step(&mut *stream, &params, u32::from(pair[0])), pair[1]);
        }
        let mut calls = 0;
        let (nats, n) = evaluate_stream::<M>(&params, text, |_| calls += 1);
        assert_eq!(n, text.len() - 1);
        assert!(calls >= 1);
        assert!((nats - expect).abs() < 1e-9 * expect.max(1.0), "{nats} vs {expect}");

        // Nothing to predict.
        assert_eq!(evaluate_stream::<M>(&params, b"x", |_| {}), (0.0, 0));
        assert_eq!(evaluate_stream::<M>(&params, b"", |_| {}), (0.0, 0));
    }

    /// For the attention-only `micro`, the carried stream past `SEQ` bytes
    /// sees what a training window sees once the window holds `WINDOW`
    /// bytes: its logits at those positions equal the window's.
    #[test]
    fn carried_stream_matches_a_later_window_once_it_is_full() {
        type M = micro::Model;
        let mut params = boxed_zeroed::<<M as Model>::Params<f32>>();
        M::init(&mut *params, 5);
        let mut rng = Rng::new(11);
        let text: Vec<u8> = (0..3 * M::SEQ).map(|_| rng.below(256) as u8).collect();
        let mut stream = boxed_zeroed::<<M as Model>::Stream<f32>>();
        M::reset(&mut *stream);
        let rows: Vec<Vec<f32>> = text.iter().map(|&b| M::step(&mut *stream, &params, u32::from(b)).to_vec()).collect();
        let start = M::SEQ + 7;
        let tokens: Vec<u32> = text[start..start + M::SEQ + 1].iter().map(|&b| u32::from(b)).collect();
        let mut ws = boxed_zeroed::<<M as Model>::Workspace<f32>>();
        M::loss(&params, &tokens, &mut ws);
        for (t, row) in M::logits(&ws).chunks_exact(M::VOCAB).enumerate().skip(M::WINDOW - 1) {
            for (a, b) in row.iter().zip(&rows[start + t]) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "position {t}: window {a} vs stream {b}");
            }
        }
    }

    #[test]
    fn stream_evaluation_matches_steps_micro() {
        stream_matches_steps::<micro::Model>();
    }

    #[test]
    fn stream_evaluation_matches_steps_micro_memory() {
        stream_matches_steps::<micro_memory::Model>();
    }
}
