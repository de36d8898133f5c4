//! The `nl` workspace's root package: it holds the runnable examples
//! (`examples/`) and the workspace-level tests (`tests/`).
//!
//! Users of nl depend on `nl-macros` (for [`nl_model!`]) and `nl-runtime`;
//! this crate re-exports both for the examples.
#![warn(missing_docs)]

pub use nl_macros::nl_model;
pub use nl_runtime;
