//! Writes the weights embedded by `deploy/` (the `no_std` deployment crate):
//! a model initialised deterministically with `init(seed)` in f32, saved as
//! a safetensors checkpoint. Two models, matching `deploy/`'s builds:
//!
//! - `micro_memory` (default): the seed's memory model, `models/micro_memory.toml`;
//! - `deep`: the main job's deep language model, `models/deep.toml` (two
//!   pre-norm blocks, RMSNorm, rope, SwiGLU, tied embeddings), embedded by
//!   `deploy/` built with `--features deep`;
//! - `micro_memory_int8`, `micro_memory_ternary`, `deep_int8`,
//!   `deep_ternary` (`models/quant/`): quantized, written as exported
//!   deployable checkpoints (`checkpoint::export`: int8 or packed ternary
//!   codes and f32 scales), embedded by `deploy/` with `--features int8`,
//!   `ternary`, `deep_int8`, `deep_ternary`.
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
nl_model!("models/quant/micro_memory_int8.toml");
nl_model!("models/quant/micro_memory_ternary.toml");
nl_model!("models/quant/deep_int8.toml");
nl_model!("models/quant/deep_ternary.toml");

/// The models `deploy/` can embed, by name.
const MODELS: [&str; 6] =
    ["micro_memory", "deep", "micro_memory_int8", "micro_memory_ternary", "deep_int8", "deep_ternary"];

/// Initialises `M` with `seed` and saves it to `out` (f32; a quantized
/// model as its exported deployable checkpoint); returns the parameter count.
fn write<M: Model>(out: &Path, seed: u64) -> std::io::Result<usize> {
    let mut p = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut p, seed);
    if M::QUANT.weights == nl::nl_runtime::quant::WeightQuant::F32 {
        checkpoint::save::<M, f32>(out, &p)?;
    } else {
        checkpoint::export::<M>(out, &p)?;
    }
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
        "micro_memory_int8" => write::<micro_memory_int8::Model>(&out, seed)?,
        "micro_memory_ternary" => write::<micro_memory_ternary::Model>(&out, seed)?,
        "deep_int8" => write::<deep_int8::Model>(&out, seed)?,
        "deep_ternary" => write::<deep_ternary::Model>(&out, seed)?,
        _ => write::<micro_memory::Model>(&out, seed)?,
    };
    println!(
        "wrote {} ({} bytes: {count} f32 parameters of {model}, seed {seed})",
        out.display(),
        std::fs::metadata(&out)?.len(),
    );
    Ok(())
}
