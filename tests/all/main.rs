//! The workspace-level integration tests, in one test binary (`cargo test
//! --test all`): one crate to expand, monomorphise and link instead of one
//! per file. Each file is a module, so a test's path names its file, e.g.
//! `stability::long::micro_memory`; filter on it as usual
//! (`cargo test --test all -- stability::`).

mod common;
mod shipped;

mod attention;
mod checkpoint;
mod compile_fail;
mod learning;
mod memory;
mod memory_learning;
mod models;
mod parallel;
mod reference_oracle;
mod stability;
