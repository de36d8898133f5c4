//! `nl-spec`: the compiler's front and middle.
//!
//! - [`Spec`]: the TOML model spec, parsed with serde (unknown keys are
//!   rejected) and validated; every error is a [`SpecError`] that names the
//!   offending key, its line and column, and what is allowed.
//! - [`Plan`]: what the generator and tools read: every tensor with its
//!   checkpoint name, shape and offset, the parameter count, the bytes, and
//!   the FLOPs per token.
//!
//! ```
//! let plan = nl_spec::plan_from_str(
//!     "d_model = 64\nheads = 4\nvocab = 256\nseq_len = 32\nwindow = 16\n",
//!     "micro",
//! ).unwrap();
//! assert_eq!(plan.param_count, 49_152);
//! ```
#![warn(missing_docs)]

mod error;
mod plan;
mod spec;

pub use error::SpecError;
pub use plan::{
    attention_as_gemm, footprint, sha256, sha256_hex, Flops, Footprint, Init, MemoryPlan, Plan, TensorPlan,
};
pub use spec::{
    ActQuant, Activation, Composition, Limits, MlpSpec, Norm, Positions, QuantSpec, Rule, Spec, WeightQuant,
    DEFAULT_WORKSPACE_LIMIT_MIB, LIMITS,
};

/// Parses and validates a spec, then builds its plan.
///
/// `default_name` is the module name used when the spec has no `name` key
/// (the macro passes the file stem).
pub fn plan_from_str(source: &str, default_name: &str) -> Result<Plan, SpecError> {
    let spec = Spec::parse(source, default_name)?;
    let mut plan = Plan::new(&spec);
    plan.spec_sha256 = sha256_hex(source.as_bytes());
    Ok(plan)
}
