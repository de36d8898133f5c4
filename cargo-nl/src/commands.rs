//! The commands of `cargo nl`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::cache::{self, Kind, Spec};

/// Check, expand, train, evaluate, sample, serve, benchmark, report on and wrap for Python any nl model spec.
#[derive(Parser, Debug)]
#[command(name = "cargo-nl", bin_name = "cargo nl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// How a model is compiled.
#[derive(Args, Debug, Clone)]
struct BuildOpts {
    /// The model spec (TOML).
    spec: PathBuf,
    /// Build for the target's baseline CPU instead of this machine's (-C target-cpu=native).
    #[arg(long)]
    portable: bool,
}

/// A command run by the model's own binary, with its arguments.
#[derive(Args, Debug, Clone)]
struct RunOpts {
    #[command(flatten)]
    build: BuildOpts,
    /// The command's arguments (`cargo nl <command> SPEC --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate a spec and print its plan (tensors, parameters, bytes, FLOPs) without compiling it.
    Check {
        /// The model spec (TOML).
        spec: PathBuf,
    },
    /// Print the Rust module generated from a spec (formatted).
    Expand {
        /// The model spec (TOML).
        spec: PathBuf,
    },
    /// Compile a spec's binary into the cache (or find it there) and print its path.
    Build(BuildOpts),
    /// Print the compiled model's sizes (as the binary sees them).
    Info(RunOpts),
    /// Train on a text corpus: progress bar, held-out evaluation, JSON-lines log, PNG loss curve, atomic checkpoints, --resume.
    Train(RunOpts),
    /// Score a text with a checkpoint (windows, and one continuous stream).
    Eval(RunOpts),
    /// Generate text from a prompt with a checkpoint.
    Sample(RunOpts),
    /// Stream stdin or a file through a checkpoint: one JSON line of surprise per byte or chunk.
    Serve(RunOpts),
    /// Training and streaming tokens per second on one core.
    Bench(RunOpts),
    /// One JSON line of per-token step latency p50/p95/p99/max, per-step training latency, RAM and flash bytes.
    Report(RunOpts),
    /// Quantize a checkpoint into a deployable file (--checkpoint CKPT --out FILE) and print both sizes.
    Export(RunOpts),
    /// Build a Python wheel of the model (PyO3 + maturin) and print its path.
    Python {
        #[command(flatten)]
        build: BuildOpts,
        /// Directory for the wheel.
        #[arg(long, default_value = "target/wheels")]
        out: PathBuf,
    },
}

/// Runs the command line `args` (program name first).
pub fn run(args: Vec<OsString>) -> Result<ExitCode, String> {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with success; usage errors to stderr.
            let _ = e.print();
            return Ok(ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)));
        }
    };
    match cli.command {
        Cmd::Check { spec } => {
            let spec = Spec::read(&spec)?;
            print!("{}", describe(&spec.plan));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Expand { spec } => {
            let spec = Spec::read(&spec)?;
            print!("{}", nl_emit::emit_pretty(&spec.plan, &spec.source));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Build(b) => {
            let built = build(&b)?;
            println!("{}", built.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info(r) => exec(&r, "info"),
        Cmd::Train(r) => exec(&r, "train"),
        Cmd::Eval(r) => exec(&r, "eval"),
        Cmd::Sample(r) => exec(&r, "sample"),
        Cmd::Serve(r) => exec(&r, "serve"),
        Cmd::Bench(r) => exec(&r, "bench"),
        Cmd::Report(r) => exec(&r, "report"),
        Cmd::Export(r) => exec(&r, "export"),
        Cmd::Python { build, out } => {
            let wheel = python(&build, &out)?;
            println!("{}", wheel.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Builds (or finds) the binary of a spec; says on stderr which.
fn build(b: &BuildOpts) -> Result<PathBuf, String> {
    let spec = Spec::read(&b.spec)?;
    let c = cache::generate(&spec, Kind::Bin, b.portable)?;
    let built = cache::build_bin(&c)?;
    eprintln!(
        "cargo nl: {} {} ({})",
        if built.rebuilt { "built" } else { "cached" },
        spec.plan.name,
        built.path.display()
    );
    Ok(built.path)
}

/// Builds the spec's binary and runs `command` with the user's arguments;
/// its exit code is ours.
fn exec(r: &RunOpts, command: &str) -> Result<ExitCode, String> {
    let exe = build(&r.build)?;
    let mut cmd = Command::new(&exe);
    cmd.arg(command).args(&r.args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Replace this process: signals (Ctrl-C, kill) reach the model's
        // binary directly, and its exit code is the command's.
        let e = cmd.exec();
        Err(format!("cannot run {}: {e}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        Ok(ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)))
    }
}

/// Builds the spec's Python wheel into `out`; returns the wheel's path.
fn python(b: &BuildOpts, out: &Path) -> Result<PathBuf, String> {
    let spec = Spec::read(&b.spec)?;
    let c = cache::generate(&spec, Kind::Python, b.portable)?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let out = out.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", out.display()))?;
    let before: Vec<PathBuf> = wheels(&out, &spec.plan.name);
    // maturin from PATH, else as a Python module.
    let mut cmd = if which("maturin") {
        Command::new("maturin")
    } else {
        let mut c = Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into()));
        c.args(["-m", "maturin"]);
        c
    };
    let status = cmd
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(c.dir.join("Cargo.toml"))
        .arg("--out")
        .arg(&out)
        .env("CARGO_TARGET_DIR", &c.target_dir)
        .env("RUSTFLAGS", &c.rustflags)
        .status()
        .map_err(|e| format!("cannot run maturin ({e}); install it with `pip install maturin`"))?;
    if !status.success() {
        return Err(format!(
            "maturin failed ({status}) building {}; is it installed (`pip install maturin`)?",
            c.dir.display()
        ));
    }
    let after = wheels(&out, &spec.plan.name);
    // The newest wheel of this module (a rebuild may overwrite the same name).
    after
        .iter()
        .filter(|w| !before.contains(w))
        .chain(after.iter())
        .max_by_key(|w| std::fs::metadata(w).and_then(|m| m.modified()).ok())
        .cloned()
        .ok_or_else(|| format!("maturin succeeded but no wheel of nl_{} is in {}", spec.plan.name, out.display()))
}

/// The wheels of module `nl_<name>` in `dir`.
fn wheels(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!("nl_{name}-");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "whl")
                        && p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `program` is on the PATH.
fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join(program).is_file() || d.join(format!("{program}.exe")).is_file())
    })
}

/// Human units for a byte count.
fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{n} B ({:.2} GiB)", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{n} B ({:.2} MiB)", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{n} B ({:.1} KiB)", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The plan as `check` prints it.
pub fn describe(p: &nl_spec::Plan) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "model {} (spec sha256 {})", p.name, p.spec_sha256);
    let _ = writeln!(
        s,
        "  d_model {}, heads {} (head_dim {}), vocab {}, seq_len {}, window {}, {} block(s), norm {}, positions {}, mlp {}, {} memory level(s) per block",
        p.d,
        p.heads,
        p.head_dim,
        p.vocab,
        p.seq_len,
        p.window,
        p.layers,
        p.norm.as_str(),
        p.positions.as_str(),
        p.mlp.as_ref().map_or("none".to_string(), |m| format!("{} hidden {}", m.activation.as_str(), m.hidden)),
        p.levels()
    );
    let _ = writeln!(s, "tensors:");
    for t in &p.tensors {
        let _ = writeln!(s, "  {:<28} {:<14} {:>10}", t.name, format!("{:?}", t.shape), t.len);
    }
    let _ = writeln!(s, "parameters: {} ({} as f32)", p.param_count, bytes(p.bytes_f32));
    if p.quant.is_quantized() {
        let _ = writeln!(
            s,
            "quantized: weights {}, activations {} ({} matrices); deployable parameters {} ({:.1}% of f32)",
            p.quant.weights.as_str(),
            p.quant.activations.as_str(),
            p.tensors.iter().filter(|t| t.quantized).count(),
            bytes(p.deploy_bytes()),
            100.0 * p.deploy_bytes() as f64 / p.bytes_f32 as f64
        );
    }
    let f = &p.footprint;
    let _ = writeln!(s, "bytes (f32): Params {}", bytes(f.params));
    let _ = writeln!(s, "             Workspace {} (memory history {})", bytes(f.workspace), bytes(f.memory_history));
    let _ = writeln!(s, "             Stream {}", bytes(f.stream));
    let _ = writeln!(
        s,
        "training state (params, gradients, AdamW m and v, one workspace): {}",
        bytes(4 * f.params + f.workspace)
    );
    let _ = writeln!(
        s,
        "FLOPs per token: forward {}, train {}, streaming step {}",
        p.flops.forward, p.flops.train, p.flops.step
    );
    s
}
