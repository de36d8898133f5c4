//! Deep models (docs/model.md, "Blocks"): a matrix of small odd specs over
//! every block key (`layers`, `residual`, `norm`, `positions`, `[mlp]`,
//! `tie_embeddings`) and their combinations with every memory rule and
//! composition. For each spec, in f64: the generated forward against the
//! reference interpreter, the analytic gradient against finite differences
//! (the worst relative error per feature is printed), streaming against the
//! training forward (logits and every block's final memory state, from a
//! reset and from a carried state), and the plan's footprint against the
//! generated structs; for the rope specs, a stream far from the origin
//! against a fresh training window.
//!
//! | spec | layers | residual | norm | positions | mlp | tied | memory |
//! |---|---|---|---|---|---|---|---|
//! | `b_plain_two` | 2 | no | none | none | - | no | - |
//! | `b_rms_swiglu_rope_tied` | 2 | yes | rms | rope | swiglu | yes | - |
//! | `b_rms_gelu_bias` | 3 | no | rms | bias | gelu | no | - |
//! | `b_gelu_rope_res` | 2 | yes | none | rope | gelu | no | - |
//! | `b_delta_mag_layer_gelu_bias` | 2 | yes | layer | bias | gelu | no | delta mag, periods 1, 3 |
//! | `b_delta_mal_one_block_all` | 1 | yes | layer | rope | swiglu | yes | delta mal, period 3 |
//! | `b_delta_mal_rms_relu` | 2 | no | rms | none | relu | no | delta mal, periods 1, 2, 3 |
//! | `b_delta_mag_rope_raw` | 3 | yes | none | rope | - | no | delta mag, period 2, raw keys |
//! | `b_titans_mal_rms_relu_rope_tied` | 3 | yes | rms | rope | relu | yes | titans mal, period 2 |
//! | `b_titans_mag_layer_swiglu` | 2 | yes | layer | none | swiglu | no | titans mag, periods 1, 2 |
//! | `b_hebbian_mag_layer_raw` | 2 | no | layer | none | - | no | hebbian mag, periods 2, 3, raw keys |
//! | `b_hebbian_mal_bias_relu_tied` | 1 | no | none | bias | relu | yes | hebbian mal, period 1 |

use crate::common::harness::*;
use crate::common::reference;
use nl::nl_model;
use nl_runtime::{boxed_zeroed, Model};

nl_model! { r#"
name = "b_plain_two"
d_model = 6
heads = 2
vocab = 5
seq_len = 5
window = 3
layers = 2
"# }

nl_model! { r#"
name = "b_rms_swiglu_rope_tied"
d_model = 8
heads = 2
vocab = 7
seq_len = 7
window = 3
layers = 2
residual = true
norm = "rms"
positions = "rope"
tie_embeddings = true
[mlp]
hidden = 7
activation = "swiglu"
"# }

nl_model! { r#"
name = "b_rms_gelu_bias"
d_model = 6
heads = 2
vocab = 5
seq_len = 6
window = 3
layers = 3
norm = "rms"
positions = "bias"
[mlp]
hidden = 6
activation = "gelu"
"# }

nl_model! { r#"
name = "b_gelu_rope_res"
d_model = 8
heads = 2
vocab = 6
seq_len = 6
window = 3
layers = 2
residual = true
positions = "rope"
[mlp]
hidden = 5
activation = "gelu"
"# }

nl_model! { r#"
name = "b_delta_mag_layer_gelu_bias"
d_model = 6
heads = 2
vocab = 6
seq_len = 7
window = 3
layers = 2
residual = true
norm = "layer"
positions = "bias"
[mlp]
hidden = 5
activation = "gelu"
[memory]
rule = "delta"
composition = "mag"
[[memory.levels]]
period = 1
[[memory.levels]]
period = 3
"# }

nl_model! { r#"
name = "b_delta_mal_one_block_all"
d_model = 6
heads = 3
vocab = 7
seq_len = 7
window = 4
residual = true
norm = "layer"
positions = "rope"
tie_embeddings = true
[mlp]
hidden = 5
[memory]
rule = "delta"
composition = "mal"
[[memory.levels]]
period = 3
"# }

nl_model! { r#"
name = "b_delta_mal_rms_relu"
d_model = 6
heads = 2
vocab = 5
seq_len = 7
window = 5
layers = 2
norm = "rms"
[mlp]
hidden = 5
activation = "relu"
[memory]
rule = "delta"
composition = "mal"
[[memory.levels]]
period = 1
[[memory.levels]]
period = 2
[[memory.levels]]
period = 3
"# }

nl_model! { r#"
name = "b_delta_mag_rope_raw"
d_model = 8
heads = 2
vocab = 7
seq_len = 7
window = 2
layers = 3
residual = true
positions = "rope"
[memory]
rule = "delta"
composition = "mag"
normalize_keys = false
[[memory.levels]]
period = 2
"# }

nl_model! { r#"
name = "b_titans_mal_rms_relu_rope_tied"
d_model = 8
heads = 2
vocab = 6
seq_len = 7
window = 3
layers = 3
residual = true
norm = "rms"
positions = "rope"
tie_embeddings = true
[mlp]
hidden = 6
activation = "relu"
[memory]
rule = "titans"
composition = "mal"
[[memory.levels]]
period = 2
"# }

nl_model! { r#"
name = "b_titans_mag_layer_swiglu"
d_model = 8
heads = 2
vocab = 5
seq_len = 5
window = 3
layers = 2
residual = true
norm = "layer"
[mlp]
hidden = 6
activation = "swiglu"
[memory]
rule = "titans"
composition = "mag"
[[memory.levels]]
period = 1
[[memory.levels]]
period = 2
"# }

nl_model! { r#"
name = "b_hebbian_mag_layer_raw"
d_model = 6
heads = 3
vocab = 5
seq_len = 7
window = 4
layers = 2
norm = "layer"
[memory]
rule = "hebbian"
composition = "mag"
normalize_keys = false
[[memory.levels]]
period = 2
[[memory.levels]]
period = 3
"# }

nl_model! { r#"
name = "b_hebbian_mal_bias_relu_tied"
d_model = 6
heads = 2
vocab = 6
seq_len = 6
window = 4
positions = "bias"
tie_embeddings = true
[mlp]
hidden = 7
activation = "relu"
[memory]
rule = "hebbian"
composition = "mal"
[[memory.levels]]
period = 1
"# }

/// Entries sampled per tensor by the gradient checks: every entry of the
/// norms, position biases and gate vectors (at most 16 values here), 16 of
/// each matrix.
const PER_TENSOR: usize = 16;

/// Asserts a gradient check and prints its worst relative error per feature.
fn report(name: &str, what: &str, r: &GradCheck) {
    eprintln!("gradient {name} ({what}): {} entries, {} refined", r.checked, r.refined);
    for (feature, rel) in &r.by_feature {
        eprintln!("gradient {name} ({what}): {feature} max rel {rel:.2e}");
    }
    assert!(r.checked > 0);
    assert!(r.max_rel < 1e-6, "{name} ({what}): {r:?}");
    assert!(r.max_abs_tiny < 1e-10, "{name} ({what}): {r:?}");
}

/// Largest difference between a streamed logits row and the training
/// forward's, relative to the row's largest magnitude (at least 1).
fn row_diff(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs() / scale))
}

/// Every spec: forward against the reference, gradient against finite
/// differences, streaming logits against training, footprint.
macro_rules! block_tests {
    ($t:ident, $m:ident) => {
        mod $t {
            use super::*;
            use $m as m;
            type M = m::Model;

            #[test]
            fn forward_matches_reference() {
                let diff = max_forward_diff_vs_reference::<M>(&[1, 2, 3]);
                eprintln!("{}: max |generated - reference| = {diff:e}", m::NAME);
                assert!(diff < 1e-10, "max difference {diff:e}");
            }

            #[test]
            fn gradient_matches_finite_differences() {
                for seed in [11, 12] {
                    report(m::NAME, "reset state", &grad_check::<M>(seed, PER_TENSOR));
                }
            }

            #[test]
            fn streaming_matches_training_forward() {
                let rel = max_stream_vs_forward_rel::<M, f64>(5);
                eprintln!("{}: max stream/forward relative difference = {rel:e}", m::NAME);
                assert!(rel < 1e-9, "relative difference {rel:e}");
            }

            #[test]
            fn footprint_is_the_size_of_the_generated_structs() {
                footprint_matches_generated_structs::<M>();
            }
        }
    };
}

/// Specs with memory: every block's state, against the reference and
/// between streaming and training, from a reset and from a carried state;
/// the gradient from a carried state.
macro_rules! memory_block_tests {
    ($t:ident, $m:ident) => {
        mod $t {
            use super::*;
            use $m as m;
            type M = m::Model;

            #[test]
            fn forward_and_every_block_state_match_reference_with_carried_state_and_frozen_memory() {
                let spec = ref_spec::<M>();
                for (frozen, seed) in [(false, 4u64), (true, 5)] {
                    let p = random_params::<M>(seed, 0.1);
                    let tokens = random_tokens::<M>(seed + 1);
                    let carried = random_states::<M>(seed + 2);
                    let mut ws = boxed_zeroed::<m::Workspace<f64>>();
                    for b in 0..m::LAYERS {
                        for l in 0..m::LEVELS {
                            load_state(&mut ws.blocks[b].start[l], &carried[b * m::LEVELS + l]);
                        }
                    }
                    ws.freeze_memory = frozen;
                    let loss = M::loss(&*p, &tokens, &mut *ws);
                    let out = reference::forward(&spec, &param_map::<M>(&p), &tokens, Some(&carried), !frozen);
                    let mut worst = (loss - out.loss).abs();
                    for t in 0..m::SEQ {
                        for v in 0..m::VOCAB {
                            worst = worst.max((ws.logits[t][v] - out.logits[t][v]).abs());
                        }
                    }
                    for b in 0..m::LAYERS {
                        for l in 0..m::LEVELS {
                            let want = ref_view(&out.states[b * m::LEVELS + l]);
                            worst = worst.max(max_state_diff(ws.blocks[b].end[l].view(), want));
                        }
                    }
                    eprintln!("{} (frozen {frozen}): max |generated - reference| = {worst:e}", m::NAME);
                    assert!(worst < 1e-10, "frozen {frozen}: {worst:e}");
                }
            }

            #[test]
            fn streaming_matches_training_logits_and_every_block_state() {
                let p = random_params::<M>(8, 0.1);
                let tokens = random_tokens::<M>(9);
                for carry in [false, true] {
                    let carried = random_states::<M>(10);
                    let mut ws = boxed_zeroed::<m::Workspace<f64>>();
                    let mut st = boxed_zeroed::<m::Stream<f64>>();
                    st.reset();
                    if carry {
                        for b in 0..m::LAYERS {
                            for l in 0..m::LEVELS {
                                load_state(&mut ws.blocks[b].start[l], &carried[b * m::LEVELS + l]);
                                load_state(&mut st.blocks[b].mem[l], &carried[b * m::LEVELS + l]);
                            }
                        }
                    }
                    M::loss(&*p, &tokens, &mut *ws);
                    let mut logits = 0.0f64;
                    for t in 0..m::SEQ {
                        logits = logits.max(row_diff(st.step(&p, tokens[t]), &ws.logits[t]));
                    }
                    let mut state = 0.0f64;
                    for b in 0..m::LAYERS {
                        for l in 0..m::LEVELS {
                            let streamed = M::memory_level(&*st, b * m::LEVELS + l).expect("a level");
                            state = state.max(max_state_diff(streamed, ws.blocks[b].end[l].view()));
                        }
                    }
                    eprintln!("{} (carried {carry}): stream/training logits {logits:e}, states {state:e}", m::NAME);
                    assert!(logits < 1e-9, "carried {carry}: logits differ by {logits:e}");
                    assert!(state < 1e-9, "carried {carry}: states differ by {state:e}");
                }
            }

            #[test]
            fn gradient_with_carried_state_matches_finite_differences() {
                let carried = random_states::<M>(99);
                let r = grad_check_with::<M>(13, PER_TENSOR, |ws| {
                    for b in 0..m::LAYERS {
                        for l in 0..m::LEVELS {
                            load_state(&mut ws.blocks[b].start[l], &carried[b * m::LEVELS + l]);
                        }
                    }
                });
                report(m::NAME, "carried state", &r);
            }
        }
    };
}

/// Rope specs: a stream whose position is near 10^7 gives the logits of a
/// fresh training window of the same tokens, as far as its attention sees
/// only those tokens: the scores depend on offsets alone. The stream starts
/// from an empty ring and a reset memory with `pos` set, so its window is
/// full of zero keys and values; block `b`'s output at row `t` sees only the
/// sequence's tokens once `t >= (b + 1) (WINDOW - 1)`, the logits from row
/// `LAYERS (WINDOW - 1)` on. The rows before are compared with a stream set
/// to the smallest position with the same (full, zero) window, `WINDOW`:
/// the position enters only through the ring slot. The memory of a block
/// after the first reads that block's input, which differs at the early
/// rows, and carries the difference to every later row: with memory and
/// more than one block, pass `freeze_memory` to keep every memory at its
/// reset state (read, never written) in the stream and the training window.
macro_rules! rope_tests {
    ($t:ident, $m:ident $(, $freeze:ident)?) => {
        mod $t {
            use super::*;
            use $m as m;
            type M = m::Model;

            #[test]
            fn stream_far_from_the_origin_matches_a_fresh_window() {
                let first = m::LAYERS * (m::WINDOW - 1);
                assert!(first < m::SEQ, "{}: no row to compare", m::NAME);
                for (seed, far_pos) in [(41u64, 10_000_000u64), (42, 10_000_001)] {
                    let p = random_params::<M>(seed, 0.1);
                    let tokens = random_tokens::<M>(seed + 1);
                    let mut ws = boxed_zeroed::<m::Workspace<f64>>();
                    let mut far = boxed_zeroed::<m::Stream<f64>>();
                    let mut near = boxed_zeroed::<m::Stream<f64>>();
                    far.reset();
                    near.reset();
                    far.pos = far_pos;
                    near.pos = m::WINDOW as u64;
                    $(
                        ws.$freeze = true;
                        far.$freeze = true;
                        near.$freeze = true;
                    )?
                    M::loss(&*p, &tokens, &mut *ws);
                    let (mut vs_window, mut vs_near) = (0.0f64, 0.0f64);
                    for t in 0..m::SEQ {
                        let got = *far.step(&p, tokens[t]);
                        vs_near = vs_near.max(row_diff(&got, near.step(&p, tokens[t])));
                        if t >= first {
                            vs_window = vs_window.max(row_diff(&got, &ws.logits[t]));
                        }
                    }
                    assert_eq!(far.pos, far_pos + m::SEQ as u64);
                    eprintln!(
                        "{} at position {far_pos}: vs a fresh window {vs_window:e} (rows {first}..{}), vs position {} {vs_near:e}",
                        m::NAME,
                        m::SEQ,
                        m::WINDOW
                    );
                    assert!(vs_window < 1e-9, "position {far_pos}: {vs_window:e} from the training window");
                    assert!(vs_near < 1e-12, "position {far_pos}: {vs_near:e} from a stream near the origin");
                }
            }
        }
    };
}

block_tests!(b_plain_two_tests, b_plain_two);
block_tests!(b_rms_swiglu_rope_tied_tests, b_rms_swiglu_rope_tied);
block_tests!(b_rms_gelu_bias_tests, b_rms_gelu_bias);
block_tests!(b_gelu_rope_res_tests, b_gelu_rope_res);
block_tests!(b_delta_mag_layer_gelu_bias_tests, b_delta_mag_layer_gelu_bias);
block_tests!(b_delta_mal_one_block_all_tests, b_delta_mal_one_block_all);
block_tests!(b_delta_mal_rms_relu_tests, b_delta_mal_rms_relu);
block_tests!(b_delta_mag_rope_raw_tests, b_delta_mag_rope_raw);
block_tests!(b_titans_mal_rms_relu_rope_tied_tests, b_titans_mal_rms_relu_rope_tied);
block_tests!(b_titans_mag_layer_swiglu_tests, b_titans_mag_layer_swiglu);
block_tests!(b_hebbian_mag_layer_raw_tests, b_hebbian_mag_layer_raw);
block_tests!(b_hebbian_mal_bias_relu_tied_tests, b_hebbian_mal_bias_relu_tied);

memory_block_tests!(b_delta_mag_layer_gelu_bias_memory, b_delta_mag_layer_gelu_bias);
memory_block_tests!(b_delta_mal_one_block_all_memory, b_delta_mal_one_block_all);
memory_block_tests!(b_delta_mal_rms_relu_memory, b_delta_mal_rms_relu);
memory_block_tests!(b_delta_mag_rope_raw_memory, b_delta_mag_rope_raw);
memory_block_tests!(b_titans_mal_rms_relu_rope_tied_memory, b_titans_mal_rms_relu_rope_tied);
memory_block_tests!(b_titans_mag_layer_swiglu_memory, b_titans_mag_layer_swiglu);
memory_block_tests!(b_hebbian_mag_layer_raw_memory, b_hebbian_mag_layer_raw);
memory_block_tests!(b_hebbian_mal_bias_relu_tied_memory, b_hebbian_mal_bias_relu_tied);

rope_tests!(b_rms_swiglu_rope_tied_rope, b_rms_swiglu_rope_tied);
rope_tests!(b_gelu_rope_res_rope, b_gelu_rope_res);
rope_tests!(b_delta_mal_one_block_all_rope, b_delta_mal_one_block_all);
rope_tests!(b_delta_mag_rope_raw_rope, b_delta_mag_rope_raw, freeze_memory);
rope_tests!(b_titans_mal_rms_relu_rope_tied_rope, b_titans_mal_rms_relu_rope_tied, freeze_memory);

/// The matrix covers every value of every block key, and every rule with
/// both compositions (a spec added or changed keeps it so).
#[test]
fn the_matrix_covers_every_key_value() {
    let specs = [
        b_plain_two::SPEC,
        b_rms_swiglu_rope_tied::SPEC,
        b_rms_gelu_bias::SPEC,
        b_gelu_rope_res::SPEC,
        b_delta_mag_layer_gelu_bias::SPEC,
        b_delta_mal_one_block_all::SPEC,
        b_delta_mal_rms_relu::SPEC,
        b_delta_mag_rope_raw::SPEC,
        b_titans_mal_rms_relu_rope_tied::SPEC,
        b_titans_mag_layer_swiglu::SPEC,
        b_hebbian_mag_layer_raw::SPEC,
        b_hebbian_mal_bias_relu_tied::SPEC,
    ];
    let mut seen = std::collections::BTreeSet::new();
    for src in specs {
        let plan = nl_spec::plan_from_str(src, "spec").expect("valid");
        seen.insert(format!("layers {}", plan.layers));
        seen.insert(format!("residual {}", plan.residual));
        seen.insert(format!("norm {}", plan.norm.as_str()));
        seen.insert(format!("positions {}", plan.positions.as_str()));
        seen.insert(format!("mlp {}", plan.mlp.map_or("none", |m| m.activation.as_str())));
        seen.insert(format!("tied {}", plan.tie_embeddings));
        if let Some(mem) = &plan.memory {
            seen.insert(format!("{:?} {}", mem.rule, plan.composition.as_str()));
            seen.insert(format!("normalize_keys {}", mem.normalize_keys));
            if mem.periods.iter().any(|p| !plan.seq_len.is_multiple_of(*p)) {
                seen.insert("a period not dividing seq_len".to_string());
            }
        }
    }
    let want = [
        "layers 1",
        "layers 2",
        "layers 3",
        "residual true",
        "residual false",
        "norm none",
        "norm rms",
        "norm layer",
        "positions none",
        "positions rope",
        "positions bias",
        "mlp none",
        "mlp swiglu",
        "mlp gelu",
        "mlp relu",
        "tied true",
        "tied false",
        "Delta mag",
        "Delta mal",
        "Titans mag",
        "Titans mal",
        "Hebbian mag",
        "Hebbian mal",
        "normalize_keys true",
        "normalize_keys false",
        "a period not dividing seq_len",
    ];
    for w in want {
        assert!(seen.contains(w), "no spec of the matrix has {w}: {seen:?}");
    }
}
