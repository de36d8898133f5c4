//! The workspace-level integration tests, in one test binary (`cargo test
//! --test all`): one crate to expand, monomorphise and link instead of one
//! per file. Each file is a module, so a test's path names its file, e.g.
//! `stability::long::micro_memory`; filter on it as usual
//! (`cargo test --test all -- stability::`).

mod common;
mod shipped;

mod attention;
mod batch;
mod blocks;
mod checkpoint;
mod compile_fail;
mod learning;
mod memory;
mod memory_learning;
mod models;
mod parallel;
mod quant_checkpoint;
mod quantized;
mod reference_oracle;
mod schedule;
mod sensor_scenario;
mod stability;

/// With `autotests = false` a new `tests/*.rs` file would never be built:
/// every test file lives in `tests/all/` and is declared above.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let stray: Vec<String> = std::fs::read_dir(dir.join("tests"))
        .expect("tests/ exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".rs"))
        .collect();
    assert!(stray.is_empty(), "move {stray:?} into tests/all/ and declare it in tests/all/main.rs");
    let main = std::fs::read_to_string(dir.join("tests/all/main.rs")).expect("main.rs");
    for entry in std::fs::read_dir(dir.join("tests/all")).expect("tests/all exists") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "main") {
            assert!(main.contains(&format!("mod {module};")), "tests/all/{name} is not declared in tests/all/main.rs");
        }
    }
}
