//! A whole model command line in three lines: a small spec
//! (`examples/tiny.toml`: two blocks of width 16 with RoPE, a GELU MLP and a
//! delta-rule memory level) compiled by `nl_model!`, and
//! `nl_driver::cli::main` over it.
//!
//! ```text
//! cargo run -p nl-driver --example tiny -- info
//! cargo run -p nl-driver --example tiny -- train --corpus data/corpus.txt --steps 200
//! cargo run -p nl-driver --example tiny -- sample --checkpoint checkpoints/tiny.safetensors --prompt "The "
//! ```
//!
//! The driver's tests run this binary (kill it mid-training, feed it bad input).

nl_macros::nl_model!("examples/tiny.toml");

fn main() -> std::process::ExitCode {
    nl_driver::cli::main::<tiny::Model>()
}
