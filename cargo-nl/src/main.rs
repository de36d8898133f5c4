//! `cargo nl`: every nl model spec checkable, trainable, testable and
//! servable from the command line, and wrapped for Python.
//!
//! ```text
//! cargo install --path cargo-nl          # then `cargo nl ...`; or: cargo run -p cargo-nl -- ...
//! cargo nl check  my.toml                # validate, print the plan (no compilation)
//! cargo nl expand my.toml                # the generated Rust module, formatted
//! cargo nl train  my.toml --corpus text.txt --steps 500
//! cargo nl eval   my.toml --checkpoint checkpoints/my.safetensors --corpus text.txt
//! cargo nl sample my.toml --checkpoint checkpoints/my.safetensors --prompt "The "
//! cargo nl serve  my.toml --checkpoint checkpoints/my.safetensors < log.txt
//! cargo nl bench  my.toml
//! cargo nl report my.toml                # latency percentiles, RAM and flash bytes (JSON)
//! cargo nl python my.toml                # a wheel: pip install it, import nl_<name>
//! ```
//!
//! `check` and `expand` run in this process (`nl-spec`, `nl-emit`). The
//! other commands need the model compiled: the tool writes a small crate
//! per spec into its cache (see [`cache`]), whose `main` is
//! `nl_driver::cli::main::<Model>()`, builds it with `cargo build
//! --release` for the host CPU, and runs it with the arguments after the
//! spec (`cargo nl train SPEC --help` lists them). `export` is not a
//! command yet: it arrives with quantized models.

mod cache;
mod commands;

use std::process::ExitCode;

fn main() -> ExitCode {
    // `cargo nl ...` runs `cargo-nl nl ...`: drop the subcommand's own name.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "nl") {
        args.remove(1);
    }
    match commands::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
