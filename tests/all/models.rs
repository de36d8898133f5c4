//! Every spec shipped in `models/` compiles through `nl_model!` (in
//! `shipped.rs`), and its generated forward (f64) matches the reference
//! interpreter to 1e-10.

use crate::common::harness::*;
use crate::shipped::{
    d128_memory, deep, deep_memory, micro, micro_cms4, micro_hebbian, micro_mal, micro_memory, micro_titans, sensor,
    sensor_attn,
};

macro_rules! reference_test {
    ($name:ident, $m:ident) => {
        #[test]
        fn $name() {
            let diff = max_forward_diff_vs_reference::<$m::Model>(&[1]);
            eprintln!("{}: max |generated - reference| = {diff:e}", $m::NAME);
            assert!(diff < 1e-10, "{}: max difference {diff:e}", $m::NAME);
        }
    };
}

reference_test!(micro_matches_reference, micro);
reference_test!(micro_memory_matches_reference, micro_memory);
reference_test!(micro_titans_matches_reference, micro_titans);
reference_test!(micro_hebbian_matches_reference, micro_hebbian);
reference_test!(micro_mal_matches_reference, micro_mal);
reference_test!(micro_cms4_matches_reference, micro_cms4);
reference_test!(sensor_matches_reference, sensor);
reference_test!(sensor_attn_matches_reference, sensor_attn);
reference_test!(d128_memory_matches_reference, d128_memory);
reference_test!(deep_matches_reference, deep);
reference_test!(deep_memory_matches_reference, deep_memory);

#[test]
fn every_model_file_is_covered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("models/ exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    let covered = [
        "d128_memory.toml",
        "deep.toml",
        "deep_memory.toml",
        "micro.toml",
        "micro_cms4.toml",
        "micro_hebbian.toml",
        "micro_mal.toml",
        "micro_memory.toml",
        "micro_titans.toml",
        "sensor.toml",
        "sensor_attn.toml",
    ];
    assert_eq!(files, covered, "add a reference_test! (and an nl_model! in shipped.rs) for each new spec in models/");
}

#[test]
fn seed_models_have_the_seed_sizes() {
    assert_eq!(micro::PARAM_COUNT, 49_152);
    // One delta level: 3 d^2 + 2 (2d + 1) = 12,288 + 258.
    assert_eq!(micro_memory::PARAM_COUNT, 49_152 + 3 * 64 * 64 + 2 * (2 * 64 + 1));
    assert_eq!(micro_cms4::PERIODS, [1, 4, 16, 64]);
}

/// `loss_and_grad_batch` is `loss_and_grad` on each sequence in turn: same
/// summed loss, same accumulated gradient (bit for bit: the same kernels in
/// the same order), and it packs the parameters it is given on every call
/// (a second call with other parameters is not served stale packed weights).
fn batch_equals_sequences<M: nl::nl_runtime::Model>() {
    use nl::nl_runtime::{boxed_zeroed, Flat};
    let seqs: Vec<u32> = (0..3).flat_map(|s| random_tokens::<M>(10 + s)).collect();
    for seed in [1, 2] {
        let p = random_params::<M>(seed, 0.1);
        let mut ws = boxed_zeroed::<M::Workspace<f64>>();
        let mut g_seq = boxed_zeroed::<M::Params<f64>>();
        let mut loss_seq = 0.0;
        for seq in seqs.chunks_exact(M::SEQ + 1) {
            loss_seq += M::loss_and_grad(&p, seq, &mut ws, &mut g_seq);
        }
        // The batch call reuses a workspace last packed from other parameters.
        let other = random_params::<M>(seed + 100, 0.1);
        let mut g_other = boxed_zeroed::<M::Params<f64>>();
        M::loss_and_grad_batch(&other, &seqs, &mut ws, &mut g_other);
        let mut g_batch = boxed_zeroed::<M::Params<f64>>();
        let loss_batch = M::loss_and_grad_batch(&p, &seqs, &mut ws, &mut g_batch);
        assert_eq!(loss_batch, loss_seq, "{}: summed loss", M::NAME);
        assert!(g_seq.as_flat().iter().any(|&x| x != 0.0));
        assert_eq!(g_batch.as_flat(), g_seq.as_flat(), "{}: gradient", M::NAME);
    }
}

#[test]
fn batch_gradient_is_the_sum_over_sequences() {
    batch_equals_sequences::<micro::Model>();
    batch_equals_sequences::<micro_memory::Model>();
    batch_equals_sequences::<micro_cms4::Model>();
}

#[test]
#[should_panic(expected = "whole sequences")]
fn batch_of_partial_sequences_is_refused() {
    use nl::nl_runtime::boxed_zeroed;
    let p = random_params::<micro::Model>(1, 0.1);
    let mut ws = boxed_zeroed::<micro::Workspace<f64>>();
    let mut g = boxed_zeroed::<micro::Params<f64>>();
    micro::loss_and_grad_batch(&p, &[0; micro::SEQ + 2], &mut ws, &mut g);
}

#[test]
fn plan_footprint_is_the_size_of_the_generated_structs() {
    footprint_matches_generated_structs::<micro::Model>();
    footprint_matches_generated_structs::<micro_memory::Model>();
    footprint_matches_generated_structs::<micro_titans::Model>();
    footprint_matches_generated_structs::<micro_hebbian::Model>();
    footprint_matches_generated_structs::<micro_mal::Model>();
    footprint_matches_generated_structs::<micro_cms4::Model>();
    footprint_matches_generated_structs::<sensor::Model>();
    footprint_matches_generated_structs::<d128_memory::Model>();
    footprint_matches_generated_structs::<deep::Model>();
    footprint_matches_generated_structs::<deep_memory::Model>();
}
