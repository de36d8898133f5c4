//! The per-spec crates `cargo nl` generates, builds and reuses.
//!
//! # Where
//!
//! `$NL_CACHE_DIR` if set, else `$XDG_CACHE_HOME/nl`, else `~/.cache/nl`
//! (`%LOCALAPPDATA%\nl` on Windows), else `./target/nl-cache`. Inside:
//!
//! - `<name>-<key>/`: one crate per (spec, kind, flags): `Cargo.toml`,
//!   `<name>.toml` (the spec, byte for byte), `src/main.rs` (or, for
//!   Python, `src/lib.rs` and `pyproject.toml`);
//! - `target-native/`, `target-portable/`, `target-python/`: one Cargo
//!   target directory per flag set, shared by every spec, so nl and its
//!   dependencies compile once per flag set.
//!
//! # The key
//!
//! The first 16 hex digits of the SHA-256 of, joined by NUL bytes: the
//! spec's bytes, the nl version (`CARGO_PKG_VERSION` of this tool), the
//! kind (`bin` or `python`), the `RUSTFLAGS` the build uses (`-C
//! target-cpu=native` unless `--portable`, plus the caller's own
//! `RUSTFLAGS`), and the path of the nl sources the crate depends on. An
//! edited spec, another nl version, other flags or another source tree
//! therefore get their own crate and binary; an unchanged spec finds its
//! crate, and `cargo build` on it is a no-op (cargo's own fingerprints
//! still rebuild it if the nl sources it depends on by path changed). The
//! tool reports `cached` when the binary was not rewritten and `built`
//! when it was (tested in `tests/cli.rs`).
//!
//! # Which nl
//!
//! The generated crates depend on `nl-macros`, `nl-runtime` and `nl-driver`
//! by path: the source tree this tool was built from (`cargo install
//! --path cargo-nl` keeps pointing at it), or `$NL_ROOT`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a generated crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A binary whose `main` is `nl_driver::cli::main`.
    Bin,
    /// A Python extension module (PyO3), built into a wheel by maturin.
    Python,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Bin => "bin",
            Kind::Python => "python",
        }
    }
}

/// A spec read from a file and planned.
pub struct Spec {
    /// The file.
    pub path: PathBuf,
    /// Its bytes (as text).
    pub source: String,
    /// Its plan (the module name is `plan.name`).
    pub plan: nl_spec::Plan,
}

impl Spec {
    /// Reads and plans `path`; the error is the macro's diagnostic (file, line, column, the TOML line).
    pub fn read(path: &Path) -> Result<Spec, String> {
        let source =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the spec {}: {e}", path.display()))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let plan = nl_spec::plan_from_str(&source, &stem)
            .map_err(|e| format!("invalid model spec\n{}", e.render(&path.display().to_string(), &source)))?;
        Ok(Spec { path: path.to_path_buf(), source, plan })
    }
}

/// The cache directory (see the module docs).
pub fn dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("NL_CACHE_DIR") {
        return d;
    }
    if let Some(d) = env("XDG_CACHE_HOME") {
        return d.join("nl");
    }
    if let Some(d) = env("LOCALAPPDATA") {
        return d.join("nl");
    }
    if let Some(d) = env("HOME") {
        return d.join(".cache").join("nl");
    }
    PathBuf::from("target").join("nl-cache")
}

/// The nl source tree the generated crates depend on.
pub fn nl_root() -> Result<PathBuf, String> {
    let root = match std::env::var_os("NL_ROOT").filter(|v| !v.is_empty()) {
        Some(r) => PathBuf::from(r),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let root = root.canonicalize().unwrap_or(root);
    if !root.join("nl-driver").join("Cargo.toml").is_file() {
        return Err(format!(
            "the nl sources are not at {} (this tool was built from there); set NL_ROOT to a checkout of nl",
            root.display()
        ));
    }
    Ok(root)
}

/// The `RUSTFLAGS` of a build: the caller's, plus `-C target-cpu=native` unless portable.
pub fn rustflags(portable: bool) -> String {
    let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !portable {
        if !flags.is_empty() {
            flags.push(' ');
        }
        flags.push_str("-C target-cpu=native");
    }
    flags
}

/// The cache key of a crate (see the module docs).
pub fn key(spec_source: &str, kind: Kind, rustflags: &str, root: &Path) -> String {
    let mut data = Vec::new();
    for part in [
        spec_source.as_bytes(),
        env!("CARGO_PKG_VERSION").as_bytes(),
        kind.word().as_bytes(),
        rustflags.as_bytes(),
        root.to_string_lossy().as_bytes(),
    ] {
        data.extend_from_slice(part);
        data.push(0);
    }
    nl_spec::sha256_hex(&data)[..16].to_string()
}

/// A generated crate, ready to build.
pub struct Crate {
    /// Its directory.
    pub dir: PathBuf,
    /// Its package (and binary) name.
    pub package: String,
    /// The Cargo target directory it builds into.
    pub target_dir: PathBuf,
    /// The `RUSTFLAGS` it builds with.
    pub rustflags: String,
}

/// Writes `file` with `text` unless it already holds exactly that (so an
/// unchanged crate keeps its files' times and cargo sees nothing new).
fn write_if_changed(file: &Path, text: &str) -> Result<(), String> {
    if std::fs::read(file).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    if let Some(d) = file.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    std::fs::write(file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// A TOML string literal for a path (basic string, escaped).
fn toml_str(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The version of pyo3 the Python crates use (nl-python's).
pub const PYO3_VERSION: &str = "0.30";

/// Generates (or finds) the crate of `spec` for `kind`.
pub fn generate(spec: &Spec, kind: Kind, portable: bool) -> Result<Crate, String> {
    let root = nl_root()?;
    let flags = rustflags(portable);
    let key = key(&spec.source, kind, &flags, &root);
    let name = &spec.plan.name;
    let cache = dir();
    let (dir, package, target) = match kind {
        Kind::Bin => (
            cache.join(format!("{name}-{key}")),
            format!("nl-{name}-{key}").replace('_', "-"),
            cache.join(if portable { "target-portable" } else { "target-native" }),
        ),
        Kind::Python => (
            cache.join(format!("{name}-{key}-py")),
            format!("nl-py-{name}").replace('_', "-"),
            cache.join("target-python"),
        ),
    };
    let path = |crate_name: &str| toml_str(&root.join(crate_name));
    let common = format!(
        "nl-macros = {{ path = {} }}\nnl-runtime = {{ path = {}, features = [\"std\"] }}\n",
        path("nl-macros"),
        path("nl-runtime"),
    );
    let spec_file = format!("{name}.toml");
    let cargo_toml = match kind {
        Kind::Bin => format!(
            "# Generated by cargo nl from {spec} (key {key}); regenerated when needed, do not edit.\n\
             [package]\nname = \"{package}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
             [dependencies]\n{common}nl-driver = {{ path = {driver} }}\n\n\
             [profile.release]\ncodegen-units = 4\n\n[workspace]\n",
            spec = spec.path.display(),
            driver = path("nl-driver"),
        ),
        Kind::Python => format!(
            "# Generated by cargo nl from {spec} (key {key}); regenerated when needed, do not edit.\n\
             [package]\nname = \"{package}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
             [lib]\nname = \"nl_{name}\"\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\n{common}nl-python = {{ path = {py} }}\n\
             pyo3 = {{ version = \"{PYO3_VERSION}\", features = [\"extension-module\"] }}\n\n\
             [profile.release]\ncodegen-units = 4\n\n[workspace]\n",
            spec = spec.path.display(),
            py = path("nl-python"),
        ),
    };
    write_if_changed(&dir.join("Cargo.toml"), &cargo_toml)?;
    write_if_changed(&dir.join(&spec_file), &spec.source)?;
    match kind {
        Kind::Bin => write_if_changed(
            &dir.join("src").join("main.rs"),
            &format!(
                "//! `{name}`, compiled from its spec by `cargo nl`: the nl-driver command line for this model.\n\n\
                 mod model {{\n    nl_macros::nl_model!(\"{spec_file}\");\n}}\n\n\
                 fn main() -> std::process::ExitCode {{\n    nl_driver::cli::main::<model::{name}::Model>()\n}}\n"
            ),
        )?,
        Kind::Python => {
            write_if_changed(
                &dir.join("src").join("lib.rs"),
                &format!(
                    "//! `nl_{name}`: the Python module of `{name}`, compiled from its spec by `cargo nl python`.\n\n\
                     mod model {{\n    nl_macros::nl_model!(\"{spec_file}\");\n}}\n\n\
                     #[pyo3::pymodule]\n#[pyo3(name = \"nl_{name}\")]\n\
                     fn pymodule_init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {{\n    \
                     nl_python::register::<model::{name}::Model>(m)\n}}\n"
                ),
            )?;
            write_if_changed(
                &dir.join("pyproject.toml"),
                &format!(
                    "[build-system]\nrequires = [\"maturin>=1,<2\"]\nbuild-backend = \"maturin\"\n\n\
                     [project]\nname = \"nl-{}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\ndependencies = [\"numpy\"]\n\n\
                     [tool.maturin]\nmodule-name = \"nl_{name}\"\n",
                    name.replace('_', "-")
                ),
            )?;
        }
    }
    // Start from nl's own lock file (nl-python's for Python): the same
    // dependency versions as the repository's tests (cargo adds the new root
    // package and prunes the rest).
    let lock = dir.join("Cargo.lock");
    let source_lock = match kind {
        Kind::Bin => root.join("Cargo.lock"),
        Kind::Python => root.join("nl-python").join("Cargo.lock"),
    };
    if !lock.exists() {
        if let Ok(l) = std::fs::read_to_string(source_lock) {
            write_if_changed(&lock, &l)?;
        }
    }
    Ok(Crate { dir, package, target_dir: target, rustflags: flags })
}

/// What [`build_bin`] did.
pub struct Built {
    /// The binary.
    pub path: PathBuf,
    /// Whether it was (re)written by this build (`false`: cached).
    pub rebuilt: bool,
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Builds a [`Kind::Bin`] crate in release mode; cargo's output goes to stderr.
pub fn build_bin(c: &Crate) -> Result<Built, String> {
    let exe = c.target_dir.join("release").join(format!("{}{}", c.package, std::env::consts::EXE_SUFFIX));
    let before = mtime(&exe);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--manifest-path"])
        .arg(c.dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&c.target_dir)
        .env("RUSTFLAGS", &c.rustflags)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the model crate {} failed ({status})", c.dir.display()));
    }
    if !exe.is_file() {
        return Err(format!("cargo built {} but {} is not there", c.dir.display(), exe.display()));
    }
    let after = mtime(&exe);
    Ok(Built { rebuilt: before.is_none() || before != after, path: exe })
}
