//! Writes the weights embedded by `deploy/` (the `no_std` deployment crate):
//! the seed's memory model (`models/micro_memory.toml`) initialised
//! deterministically with `init(seed)` in f32, saved as a safetensors
//! checkpoint.
//!
//! ```text
//! cargo run --release --example make_deploy_weights                  # deploy/weights/micro_memory.safetensors
//! cargo run --release --example make_deploy_weights -- OUT.safetensors [SEED]
//! ```
//!
//! A trained checkpoint of the same spec (e.g. from `examples/train.rs` with
//! `micro_memory`) can be dropped in place of this file instead.

use std::path::PathBuf;

use nl::nl_model;
use nl::nl_runtime::{boxed_zeroed, checkpoint, Model};

nl_model!("models/micro_memory.toml");

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/weights/micro_memory.safetensors"));
    let seed: u64 = args.next().map_or(1, |s| s.parse().expect("SEED is an integer"));
    let mut p = boxed_zeroed::<micro_memory::Params<f32>>();
    micro_memory::Model::init(&mut p, seed);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    checkpoint::save::<micro_memory::Model, f32>(&out, &p)?;
    println!(
        "wrote {} ({} bytes: {} f32 parameters of {}, seed {seed})",
        out.display(),
        std::fs::metadata(&out)?.len(),
        micro_memory::Model::PARAM_COUNT,
        micro_memory::NAME
    );
    Ok(())
}
