//! Writes the weights embedded by `deploy/` (the `no_std` deployment crate):
//! a model initialised deterministically with `init(seed)` in f32, saved as
//! a safetensors checkpoint. Two models, matching `deploy/`'s builds:
//!
//! - `micro_memory` (default): the seed's memory model, `models/micro_memory.toml`;
//! - `deep`: the main job's deep language model, `models/deep.toml` (two
//!   pre-norm blocks, RMSNorm, rope, SwiGLU, tied embeddings), embedded by
//!   `deploy/` built with `--features deep`.
//!
//! ```text
//! cargo run --release --example make_deploy_weights                       # deploy/weights/micro_memory.safetensors
//! cargo run --release --example make_deploy_weights -- --model deep       # deploy/weights/deep.safetensors
//! cargo run --release --example make_deploy_weights -- [--model NAME] OUT.safetensors [SEED]
//! ```
//!
//! A trained checkpoint of the same spec (e.g. from `examples/train.rs`) can
//! be dropped in place of the file instead.

use std::path::{Path, PathBuf};

use nl::nl_model;
use nl::nl_runtime::{boxed_zeroed, checkpoint, Model};

nl_model!("models/micro_memory.toml");
nl_model!("models/deep.toml");

/// The models `deploy/` can embed, by name.
const MODELS: [&str; 2] = ["micro_memory", "deep"];

/// Initialises `M` with `seed` and saves it (f32) to `out`; returns the parameter count.
fn write<M: Model>(out: &Path, seed: u64) -> std::io::Result<usize> {
    let mut p = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut p, seed);
    checkpoint::save::<M, f32>(out, &p)?;
    Ok(M::PARAM_COUNT)
}

fn usage(msg: &str) -> ! {
    eprintln!("make_deploy_weights: {msg}");
    eprintln!("usage: make_deploy_weights [--model {}] [OUT.safetensors [SEED]]", MODELS.join("|"));
    std::process::exit(2)
}

fn main() -> std::io::Result<()> {
    let mut model = String::from("micro_memory");
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--model" {
            model = args.next().unwrap_or_else(|| usage("--model needs a name"));
        } else if let Some(m) = a.strip_prefix("--model=") {
            model = m.to_string();
        } else if a.starts_with("--") {
            usage(&format!("unknown option {a}"));
        } else {
            positional.push(a);
        }
    }
    if !MODELS.contains(&model.as_str()) {
        usage(&format!("unknown model {model:?}"));
    }
    if positional.len() > 2 {
        usage("too many arguments");
    }
    let mut positional = positional.into_iter();
    let out = positional.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("deploy/weights/{model}.safetensors"))
    });
    let seed: u64 = positional.next().map_or(1, |s| s.parse().unwrap_or_else(|_| usage("SEED is an integer")));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let count = match model.as_str() {
        "deep" => write::<deep::Model>(&out, seed)?,
        _ => write::<micro_memory::Model>(&out, seed)?,
    };
    println!(
        "wrote {} ({} bytes: {count} f32 parameters of {model}, seed {seed})",
        out.display(),
        std::fs::metadata(&out)?.len(),
    );
    Ok(())
}
