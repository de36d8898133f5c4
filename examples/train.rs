//! Trains a generated model as a byte-level language model on a text corpus.
//!
//! ```text
//! cargo run --release --example train                          # the deep language model (models/deep.toml) on data/corpus.txt
//! cargo run --release --example train -- --model micro_memory   # another compiled-in spec (each has its own default settings)
//! cargo run --release --example train -- --threads 2            # data-parallel over the batch
//! cargo run --release --example train -- --help                 # every setting
//! ```
//!
//! This is a thin use of `nl-driver` (the library `cargo nl` runs for any
//! spec): the specs below are compiled in, `--model` picks one, each has
//! its own default settings ([`Recipe`]), and `nl_driver::train::train`
//! does the rest. What a run does, in its docs: the last 10% of the corpus
//! is held out; random windows of `SEQ + 1` bytes, `--batch` of them per
//! AdamW step (warmup, cosine decay to 10%, clipping), data-parallel and
//! deterministic for a given `--threads`; a held-out evaluation every
//! `--eval-every` steps; the checkpoint and its training state every
//! `--checkpoint-every` steps, atomically (`--resume` goes on exactly); a
//! JSON-lines log and a PNG loss curve beside the checkpoint; at the end the
//! held-out text scored as windows from a reset state and as one continuous
//! stream, state carried, in bits per byte, and a sample.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use nl::nl_runtime::Model;
use nl_driver::cli::TrainArgs;
use nl_driver::train::{train, Recipe};

nl::nl_model!("models/micro.toml");
nl::nl_model!("models/micro_memory.toml");
nl::nl_model!("models/micro_titans.toml");
nl::nl_model!("models/deep.toml");
nl::nl_model!("models/deep_memory.toml");

/// A compiled-in model the main job can train.
struct Entry {
    /// The model's name (`Model::NAME`, the spec's file stem), as given to `--model`.
    name: &'static str,
    /// The whole run for this model: `run::<X::Model>`.
    run: fn(&TrainArgs, Recipe) -> nl_driver::Result<()>,
    /// The training settings used where the command line gives none.
    recipe: Recipe,
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
    Entry { name: <deep::Model as Model>::NAME, run: run::<deep::Model>, recipe: DEEP_RECIPE },
    Entry { name: <deep_memory::Model as Model>::NAME, run: run::<deep_memory::Model>, recipe: DEEP_RECIPE },
    Entry { name: <micro::Model as Model>::NAME, run: run::<micro::Model>, recipe: MICRO_RECIPE },
    Entry { name: <micro_memory::Model as Model>::NAME, run: run::<micro_memory::Model>, recipe: MICRO_RECIPE },
    Entry { name: <micro_titans::Model as Model>::NAME, run: run::<micro_titans::Model>, recipe: MICRO_RECIPE },
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

/// Train a generated nl model as a byte-level language model (the main job).
///
/// Every setting left out takes the model's recipe (deep: 4000 steps, lr
/// 3e-3, weight decay 0.1, warmup 200, 2 threads; micro: 11000 steps, lr
/// 1e-2, no weight decay, warmup 100, 1 thread; both batch 16); the corpus
/// defaults to data/corpus.txt of this package and the checkpoint to
/// checkpoints/<model>.safetensors.
#[derive(Parser, Debug, Clone)]
#[command(version, long_about = None, allow_negative_numbers = true)]
struct Cli {
    /// Model to train, compiled in from models/<MODEL>.toml: deep (the default language model), deep_memory, micro, micro_memory or micro_titans.
    #[arg(long, default_value = "deep")]
    model: String,

    #[command(flatten)]
    train: TrainArgs,
}

/// The whole run for model `M`: nl-driver's trainer with this package's defaults.
fn run<M: Model>(args: &TrainArgs, recipe: Recipe) -> nl_driver::Result<()>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("corpus.txt");
    let out: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints").join(format!("{}.safetensors", M::NAME));
    let cfg = args.resolve::<M>(recipe, Some(&corpus), &out)?;
    train::<M>(&cfg).map(|_| ())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = find_model(&cli.model).map_err(nl_driver::Error).and_then(|e| (e.run)(&cli.train, e.recipe));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nl::nl_runtime::boxed_zeroed;
    use nl::nl_runtime::rng::Rng;

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
        assert_eq!(cli.as_ref().map(|a| (a.model.as_str(), a.train.threads)), Ok(("deep", None)));
        // The model's recipe fills what the command line leaves out.
        let cli = Cli::try_parse_from(["train", "--lr", "0.5"]).map_err(|e| e.to_string());
        let cfg = cli.map_err(nl_driver::Error).and_then(|c| {
            c.train.resolve::<micro::Model>(MICRO_RECIPE, Some(Path::new("c.txt")), Path::new("o.safetensors"))
        });
        assert_eq!(cfg.as_ref().map(|c| (c.lr, c.steps, c.threads, c.weight_decay)), Ok((0.5, 11_000, 1, 0.0)));
        // --tokens sets the steps: ceil(tokens / (batch * SEQ)).
        let cli = Cli::try_parse_from(["train", "--tokens", "100000"]).map_err(|e| e.to_string());
        let cfg = cli.map_err(nl_driver::Error).and_then(|c| {
            c.train.resolve::<deep::Model>(DEEP_RECIPE, Some(Path::new("c.txt")), Path::new("o.safetensors"))
        });
        assert_eq!(cfg.map(|c| c.steps), Ok(100_000u64.div_ceil(16 * 128)));
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
        let text = b"hello, world";
        let mut stream = boxed_zeroed::<M::Stream<f32>>();
        M::reset(&mut *stream);
        let mut expect = 0.0;
        for pair in text.windows(2) {
            expect += by_hand(M::step(&mut *stream, &params, u32::from(pair[0])), pair[1]);
        }
        let mut calls = 0;
        let (nats, n) = nl_driver::eval::stream::<M>(&params, text, |_| calls += 1);
        assert_eq!(n, text.len() - 1);
        assert!(calls >= 1);
        assert!((nats - expect).abs() < 1e-9 * expect.max(1.0), "{nats} vs {expect}");
        assert_eq!(nl_driver::eval::stream::<M>(&params, b"x", |_| {}), (0.0, 0));
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

    #[test]
    fn stream_evaluation_matches_steps_deep() {
        stream_matches_steps::<deep::Model>();
    }
}
