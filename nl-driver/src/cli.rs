//! The command line of one compiled model: `info`, `train`, `eval`,
//! `sample`, `serve`, `bench`, `report` and `export`. `cargo nl` builds, per spec, a binary
//! whose `main` is [`main`] and runs it with the user's arguments; a user's
//! crate can do the same in one line.
//!
//! Every error is one line on stderr after `error: ` and exit code 1
//! (usage errors: clap's message and exit code 2); nothing panics on bad
//! input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use nl_runtime::Model;

use crate::train::{Recipe, TrainConfig};
use crate::{bench, data, eval, sample, serve, Error, Result};

/// A compiled nl model: train it, score text with it, sample from it, serve it.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the model: sizes, tensors, bytes of its state, FLOPs per token.
    Info,
    /// Train on a text corpus (bytes are tokens).
    Train(Box<TrainArgs>),
    /// Score a text with a checkpoint: windows from a reset state and one continuous stream.
    Eval(EvalArgs),
    /// Generate text from a prompt.
    Sample(SampleArgs),
    /// Stream stdin or a file through the model: one JSON line of surprise per byte or per chunk.
    Serve(ServeArgs),
    /// Measure training and streaming tokens per second on one core.
    Bench(BenchArgs),
    /// Print one JSON line: per-token step latency p50/p95/p99/max, per-step training latency, RAM and flash bytes.
    Report(ReportArgs),
    /// Quantize a checkpoint into a deployable file (the model's QParams, docs/quant.md) and print both sizes.
    Export(ExportArgs),
}

/// `train`'s settings; every one left out takes the run's [`Recipe`] value.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct TrainArgs {
    /// Training text (bytes are tokens); the last 10% is held out.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Checkpoint path (default: checkpoints/<model>.safetensors). The training state goes beside it as <stem>.train.safetensors.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run whose checkpoint this is, from its training state (same corpus; exact).
    #[arg(long, value_name = "CKPT")]
    pub resume: Option<PathBuf>,
    /// Start a new run from this checkpoint's weights (fresh optimizer state).
    #[arg(long, value_name = "CKPT")]
    pub init: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Stop after this step (checkpoint written), keeping the schedule of all --steps; --resume goes on.
    #[arg(long, value_name = "STEP")]
    pub stop_after: Option<u64>,
    /// Train on this many tokens instead (steps = ceil(tokens / (batch * SEQ))); overrides --steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub tokens: Option<u64>,
    /// Sequences per optimizer step (their gradients are averaged).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch: Option<u64>,
    /// Peak AdamW learning rate (after warmup; cosine decay to 10% of it).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warmup steps (capped at the number of steps).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// AdamW decoupled weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clipping threshold (0 disables) [default: 1].
    #[arg(long)]
    pub clip: Option<f64>,
    /// Seed for initialisation, batch sampling and text sampling [default: 1].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (data-parallel over the batch; 0: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub threads: Option<u64>,
    /// Evaluate on held-out windows every this many steps (0: only at the end) [default: 1000].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Held-out windows of the periodic evaluations (0: all; the final one uses all) [default: 512].
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Write the checkpoint and training state every this many steps (0: only at the end) [default: 1000].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// JSON-lines log (default: beside the checkpoint, <stem>.log.jsonl).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// PNG loss curve (default: beside the checkpoint, <stem>.loss.png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Bytes to sample at the end (0: no sample) [default: 300].
    #[arg(long)]
    pub sample_len: Option<usize>,
    /// Sampling temperature (0: greedy) [default: 0.8].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Bytes of held-out text fed before sampling [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub prompt_len: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The run's settings: these arguments over `recipe`, the corpus
    /// defaulting to `default_corpus` and the checkpoint to `default_out`.
    pub fn resolve<M: Model>(
        &self,
        recipe: Recipe,
        default_corpus: Option<&Path>,
        default_out: &Path,
    ) -> Result<TrainConfig> {
        let corpus = self
            .corpus
            .clone()
            .or_else(|| default_corpus.map(Path::to_path_buf))
            .ok_or_else(|| Error("train needs --corpus FILE (a text file; bytes are tokens)".into()))?;
        let out = self.out.clone().unwrap_or_else(|| default_out.to_path_buf());
        let mut c = TrainConfig::with_recipe(corpus, out, recipe);
        c.batch = self.batch.unwrap_or(c.batch);
        c.steps = match self.tokens {
            Some(t) => t.div_ceil(c.batch * M::SEQ as u64),
            None => self.steps.unwrap_or(c.steps),
        };
        c.lr = self.lr.unwrap_or(c.lr);
        c.warmup = self.warmup.unwrap_or(c.warmup);
        c.weight_decay = self.weight_decay.unwrap_or(c.weight_decay);
        c.clip = self.clip.unwrap_or(c.clip);
        c.seed = self.seed.unwrap_or(c.seed);
        c.threads = self.threads.unwrap_or(c.threads);
        c.eval_every = self.eval_every.unwrap_or(c.eval_every);
        c.eval_windows = self.eval_windows.unwrap_or(c.eval_windows);
        c.checkpoint_every = self.checkpoint_every.unwrap_or(c.checkpoint_every);
        c.log = self.log.clone().or(c.log);
        c.plot = self.plot.clone().or(c.plot);
        c.resume = self.resume.clone();
        c.init = self.init.clone();
        c.stop_after = self.stop_after;
        c.sample_len = self.sample_len.unwrap_or(c.sample_len);
        c.temperature = self.temperature.unwrap_or(c.temperature);
        c.prompt_len = self.prompt_len.map_or(c.prompt_len, |p| p as usize);
        c.progress = !self.quiet;
        c.validate()?;
        Ok(c)
    }
}

/// `eval`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// The checkpoint to score with.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The text to score.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Score the whole file (default: its held-out last 10%, as `train` does).
    #[arg(long)]
    pub whole: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sample`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// The checkpoint to sample from.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The prompt (fed to the stream before sampling).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Bytes to generate.
    #[arg(long, default_value_t = 200)]
    pub len: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the bytes as they are (default: non-printable bytes as \xNN).
    #[arg(long)]
    pub raw: bool,
}

/// `serve`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The checkpoint to serve.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Read this file (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// One line per this many predicted bytes, with their mean surprise (0: one line per byte).
    #[arg(long, default_value_t = 0)]
    pub chunk: usize,
}

/// `bench`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Sequences per training step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds per run, at least.
    #[arg(long, default_value_t = 0.5)]
    pub min_time: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `report`'s arguments (see [`crate::report`] for what each number is).
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Timed streaming steps (one token each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub tokens: u64,
    /// Timed training steps (0: no training measurement; train_step_ms is null).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub train_steps: u64,
    /// Sequences per training step.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch: u64,
    /// Worker threads of a training step (data-parallel pool).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: u64,
    /// Seed of the parameters and tokens.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl ReportArgs {
    /// The measurement these arguments ask for.
    pub fn config(&self) -> crate::report::ReportConfig {
        crate::report::ReportConfig {
            tokens: self.tokens as usize,
            train_steps: self.train_steps as usize,
            batch: self.batch as usize,
            threads: self.threads as usize,
            seed: self.seed,
        }
    }
}

/// `export`'s arguments.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// The (f32 training) checkpoint to export.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The deployable file to write (atomically; its directory is created).
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses the process's arguments and runs the command for `M`; prints
/// an error as one line and returns a failing exit code.
pub fn main<M: Model>() -> ExitCode
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    let cli = Cli::parse();
    match run::<M>(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command for `M`.
pub fn run<M: Model>(command: Command) -> Result<()>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    match command {
        Command::Info => {
            print!("{}", info::<M>());
            Ok(())
        }
        Command::Train(a) => {
            let out = PathBuf::from("checkpoints").join(format!("{}.safetensors", M::NAME));
            let cfg = a.resolve::<M>(Recipe::DEFAULT, None, &out)?;
            crate::train::train::<M>(&cfg).map(|_| ())
        }
        Command::Eval(a) => {
            crate::require_bytes::<M>()?;
            let params = crate::load_params::<M>(&a.checkpoint)?;
            let text = if a.whole {
                crate::read_file(&a.corpus, "text")?
            } else {
                data::Corpus::read(&a.corpus, M::SEQ)?.held_out().to_vec()
            };
            let s = eval::score::<M>(&params, &text, |_| {});
            let part = if a.whole { "whole" } else { "held-out" };
            if a.json {
                let j = serde_json::json!({
                    "model": M::NAME, "text": a.corpus.display().to_string(), "part": part, "bytes": text.len(),
                    "windows": s.windows, "windows_bits_per_byte": s.windows_bits,
                    "stream_bytes": s.stream_bytes, "stream_bits_per_byte": s.stream_bits,
                });
                println!("{j}");
            } else {
                let f = |x: Option<f64>| x.map_or("n/a (text too short)".to_string(), |b| format!("{b:.4} bits/byte"));
                println!("{} ({part}, {} bytes) with {}:", a.corpus.display(), text.len(), a.checkpoint.display());
                println!(
                    "  windows from a reset state ({} windows of {} bytes): {}",
                    s.windows,
                    M::SEQ + 1,
                    f(s.windows_bits)
                );
                println!(
                    "  one continuous stream, state carried ({} predicted bytes): {}",
                    s.stream_bytes,
                    f(s.stream_bits)
                );
            }
            Ok(())
        }
        Command::Sample(a) => {
            crate::require_bytes::<M>()?;
            if !(a.temperature.is_finite() && a.temperature >= 0.0) {
                return Err(Error(format!("--temperature must be >= 0 (0: greedy), got {}", a.temperature)));
            }
            let params = crate::load_params::<M>(&a.checkpoint)?;
            let out = sample::generate::<M>(&params, a.prompt.as_bytes(), a.len, a.temperature, a.seed);
            let mut stdout = std::io::stdout().lock();
            let werr = |e: std::io::Error| Error(format!("cannot write the output: {e}"));
            if a.raw {
                stdout.write_all(a.prompt.as_bytes()).map_err(werr)?;
                stdout.write_all(&out).map_err(werr)?;
            } else {
                write!(stdout, "{}{}", data::escape(a.prompt.as_bytes()), data::escape(&out)).map_err(werr)?;
            }
            writeln!(stdout).map_err(werr)
        }
        Command::Serve(a) => {
            let params = crate::load_params::<M>(&a.checkpoint)?;
            let stdout = std::io::stdout().lock();
            let out = std::io::BufWriter::with_capacity(1 << 16, stdout);
            let summary = match &a.input {
                Some(p) => {
                    let f = std::fs::File::open(p)
                        .map_err(|e| Error(format!("cannot read the input {}: {e}", p.display())))?;
                    serve::serve::<M>(&params, f, out, a.chunk)?
                }
                None => serve::serve::<M>(&params, std::io::stdin().lock(), out, a.chunk)?,
            };
            eprintln!("served {} bytes: {:.4} bits/byte", summary.bytes, summary.bits_per_byte);
            Ok(())
        }
        Command::Bench(a) => {
            if !(a.min_time.is_finite() && a.min_time > 0.0) {
                return Err(Error(format!("--min-time must be a positive number of seconds, got {}", a.min_time)));
            }
            let r = bench::bench::<M>(a.batch, a.runs, a.min_time);
            if a.json {
                let j = serde_json::json!({
                    "model": M::NAME, "batch": a.batch, "runs": a.runs,
                    "train_tok_s": r.train.tok_s, "train_gflops": r.train.gflops,
                    "serve_tok_s": r.serve.tok_s, "serve_gflops": r.serve.gflops,
                });
                println!("{j}");
            } else {
                println!(
                    "{}: train {:.0} tok/s ({:.2} GFLOP/s, batch {}, 1 thread); serve {:.0} tok/s ({:.2} GFLOP/s); median of {} runs",
                    M::NAME,
                    r.train.tok_s,
                    r.train.gflops,
                    a.batch,
                    r.serve.tok_s,
                    r.serve.gflops,
                    a.runs
                );
            }
            Ok(())
        }
        Command::Report(a) => {
            let r = crate::report::report::<M>(&a.config())?;
            println!("{}", r.to_json());
            Ok(())
        }
        Command::Export(a) => {
            let (size, f32_size) = export::<M>(&a.checkpoint, &a.out)?;
            println!(
                "{}: {size} bytes, quantized {}; the f32 checkpoint {} is {f32_size} bytes ({:.2}x)",
                a.out.display(),
                M::QUANT.name(),
                a.checkpoint.display(),
                f32_size as f64 / size.max(1) as f64
            );
            Ok(())
        }
    }
}

/// Loads the f32 checkpoint `checkpoint`, quantizes it and writes the
/// deployable file `out` (`nl_runtime::checkpoint::export`); returns the
/// sizes in bytes of `out` and of `checkpoint`.
pub fn export<M: Model>(checkpoint: &Path, out: &Path) -> Result<(u64, u64)> {
    let params = crate::load_params::<M>(checkpoint)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error(format!("cannot create the directory {}: {e}", dir.display())))?;
    }
    nl_runtime::checkpoint::export::<M>(out, &params)?;
    let size = |p: &Path| {
        std::fs::metadata(p).map(|m| m.len()).map_err(|e| Error(format!("cannot stat {}: {e}", p.display())))
    };
    Ok((size(out)?, size(checkpoint)?))
}

/// A description of `M`: sizes, tensors, bytes of its state, FLOPs per token.
pub fn info<M: Model>() -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model {}: d_model {}, heads {}, vocab {}, seq_len {}, window {}, {} block(s), {} memory level(s) per block",
        M::NAME,
        M::D,
        M::HEADS,
        M::VOCAB,
        M::SEQ,
        M::WINDOW,
        M::LAYERS,
        M::LEVELS
    );
    let _ = writeln!(s, "spec sha256 {}", M::SPEC_SHA256);
    let _ = writeln!(
        s,
        "{} parameters; bytes (f32): Params {}, Workspace {}, Stream {}",
        M::PARAM_COUNT,
        std::mem::size_of::<M::Params<f32>>(),
        std::mem::size_of::<M::Workspace<f32>>(),
        std::mem::size_of::<M::Stream<f32>>()
    );
    let _ =
        writeln!(s, "FLOPs per token: forward {}, train {}, step {}", M::FLOPS_FORWARD, M::FLOPS_TRAIN, M::FLOPS_STEP);
    for t in M::TENSORS {
        let _ = writeln!(s, "  {:<28} {:<14} {}", t.name, format!("{:?}", t.shape), t.len);
    }
    s
}
