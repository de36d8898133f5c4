//! The latency and footprint report ([`nl_driver::report`]) of every model
//! of `examples/bench.rs`, one JSON line per model, on this machine
//! (target `native`):
//!
//! ```text
//! cargo run --release --example report                       # every model
//! cargo run --release --example report -- --model memory     # the specs whose path contains "memory"
//! cargo run --release --example report -- --tokens 2000 --train-steps 20
//! ```
//!
//! Each line has the keys of `cargo nl report SPEC` (and of the deploy
//! targets' lines): `model`, `target`, `weights`, `step_us` (p50/p95/p99/max
//! of one streaming `try_step_qp` on the deployable parameters),
//! `train_step_ms` (p50/p95/max of one optimizer step of `--batch`
//! sequences on `--threads` workers), `ram_bytes` (`size_of` of Params,
//! Stream, Workspace, the gradient and AdamW's moments, f32),
//! `flash_bytes` (`size_of` of the deployable `QParams`; code not
//! included) and `tokens`. See `nl_driver::report` for each number.

use std::process::ExitCode;

use clap::Parser;
use nl::nl_runtime::Model;
use nl_driver::report::{report, ReportConfig};

nl::nl_model!("models/micro.toml");
nl::nl_model!("models/micro_memory.toml");
nl::nl_model!("models/micro_cms4.toml");
nl::nl_model!("models/d128_memory.toml");
nl::nl_model!("models/deep.toml");
nl::nl_model!("models/deep_memory.toml");

/// Latency percentiles, RAM and flash bytes of the bench's models.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Only models whose spec path contains this substring.
    #[arg(long)]
    model: Option<String>,
    /// Timed streaming steps per model.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    tokens: u64,
    /// Timed training steps per model (0: none).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    train_steps: u64,
    /// Sequences per training step.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: u64,
    /// Worker threads of a training step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,
}

/// The report of `M` as a JSON line, or the error.
fn line<M: Model>(cfg: &ReportConfig) -> Result<String, String>
where
    M::Params<f32>: Send + Sync,
    M::Workspace<f32>: Send,
{
    report::<M>(cfg).map(|r| r.to_json().to_string()).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let a = Args::parse();
    let cfg = ReportConfig {
        tokens: a.tokens as usize,
        train_steps: a.train_steps as usize,
        batch: a.batch as usize,
        threads: a.threads as usize,
        seed: 1,
    };
    type Run = fn(&ReportConfig) -> Result<String, String>;
    let all: [(&str, Run); 6] = [
        ("models/micro.toml", line::<micro::Model>),
        ("models/micro_memory.toml", line::<micro_memory::Model>),
        ("models/micro_cms4.toml", line::<micro_cms4::Model>),
        ("models/d128_memory.toml", line::<d128_memory::Model>),
        ("models/deep.toml", line::<deep::Model>),
        ("models/deep_memory.toml", line::<deep_memory::Model>),
    ];
    let selected: Vec<_> = all.iter().filter(|(p, _)| a.model.as_deref().is_none_or(|f| p.contains(f))).collect();
    if selected.is_empty() {
        let names: Vec<&str> = all.iter().map(|(p, _)| *p).collect();
        eprintln!(
            "error: no model path contains {:?}; the models are: {}",
            a.model.unwrap_or_default(),
            names.join(", ")
        );
        return ExitCode::FAILURE;
    }
    for (_, run) in selected {
        match run(&cfg) {
            Ok(l) => println!("{l}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
