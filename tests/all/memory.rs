//! The memory branch (delta, titans, hebbian; MAG and MAL; CMS levels):
//! the generated forward against the reference interpreter, the backward
//! through the inner loop against finite differences, and streaming
//! against the training forward, with and without a carried state.

use crate::common::harness::*;
use crate::common::reference;
use nl::nl_model;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Flat, Model};

nl_model! { r#"
name = "delta_mag"
d_model = 8
heads = 2
vocab = 7
seq_len = 6
window = 4
[memory]
rule = "delta"
composition = "mag"
[[memory.levels]]
period = 1
"# }

nl_model! { r#"
name = "delta_mal"
d_model = 6
heads = 3
vocab = 5
seq_len = 7
window = 3
[memory]
rule = "delta"
composition = "mal"
[[memory.levels]]
period = 2
"# }

nl_model! { r#"
name = "titans_mag"
d_model = 8
heads = 2
vocab = 6
seq_len = 7
window = 3
[memory]
rule = "titans"
composition = "mag"
[[memory.levels]]
period = 1
[[memory.levels]]
period = 3
"# }

nl_model! { r#"
name = "titans_mal"
d_model = 6
heads = 2
vocab = 5
seq_len = 8
[memory]
rule = "titans"
composition = "mal"
b_eta = 1.0
[[memory.levels]]
period = 2
"# }

nl_model! { r#"
name = "hebbian_mag"
d_model = 8
heads = 4
vocab = 7
seq_len = 6
window = 2
[memory]
rule = "hebbian"
[[memory.levels]]
period = 1
"# }

nl_model! { r#"
name = "hebbian_mal"
d_model = 6
heads = 1
vocab = 5
seq_len = 7
window = 5
[memory]
rule = "hebbian"
composition = "mal"
normalize_keys = false
[[memory.levels]]
period = 3
"# }

// Raw keys (no normalisation): theta's 1 / (|k|^2 + eps) is then a real
// function of the key, and periods that do not divide the sequence.
nl_model! { r#"
name = "delta_raw"
d_model = 7
heads = 1
vocab = 6
seq_len = 9
window = 3
[memory]
rule = "delta"
composition = "mag"
normalize_keys = false
[[memory.levels]]
period = 2
[[memory.levels]]
period = 4
"# }

// Periods that do not divide the sequence length, three levels.
nl_model! { r#"
name = "cms_odd"
d_model = 9
heads = 3
vocab = 11
seq_len = 10
window = 4
[memory]
rule = "delta"
composition = "mag"
[[memory.levels]]
period = 1
[[memory.levels]]
period = 3
[[memory.levels]]
period = 4
"# }

nl_model! { r#"
name = "cms_titans_unnormalized"
d_model = 6
heads = 2
vocab = 5
seq_len = 10
window = 10
[memory]
rule = "titans"
composition = "mal"
normalize_keys = false
[[memory.levels]]
period = 1
[[memory.levels]]
period = 3
[[memory.levels]]
period = 4
"# }

macro_rules! memory_tests {
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
            fn forward_and_state_match_reference_with_carried_state_and_frozen_memory() {
                let spec = ref_spec::<M>();
                for (frozen, seed) in [(false, 4u64), (true, 5)] {
                    let p = random_params::<M>(seed, 0.2);
                    let tokens = random_tokens::<M>(seed + 1);
                    let carried = random_states::<M>(seed + 2);
                    let mut ws = boxed_zeroed::<m::Workspace<f64>>();
                    for l in 0..m::LEVELS {
                        load_state(&mut ws.blocks[0].start[l], &carried[l]);
                    }
                    ws.freeze_memory = frozen;
                    let loss = m::loss(&p, tokens.as_slice().try_into().unwrap(), &mut ws);
                    let out = reference::forward(&spec, &param_map::<M>(&p), &tokens, Some(&carried), !frozen);
                    assert!((loss - out.loss).abs() < 1e-10, "loss {loss} vs {}", out.loss);
                    for t in 0..m::SEQ {
                        for v in 0..m::VOCAB {
                            assert!((ws.logits[t][v] - out.logits[t][v]).abs() < 1e-10);
                        }
                    }
                    for l in 0..m::LEVELS {
                        for i in 0..m::D {
                            for j in 0..m::D {
                                assert!((ws.blocks[0].end[l].m[i][j] - out.states[l].m[i * m::D + j]).abs() < 1e-10);
                                assert!((ws.blocks[0].end[l].g[i][j] - out.states[l].g[i * m::D + j]).abs() < 1e-10);
                                assert!((ws.blocks[0].end[l].s[i][j] - out.states[l].s[i * m::D + j]).abs() < 1e-10);
                                assert!((ws.blocks[0].end[l].w[i][j] - out.states[l].w[i * m::D + j]).abs() < 1e-10);
                            }
                        }
                        assert_eq!(ws.blocks[0].end[l].n as usize, out.states[l].n);
                    }
                }
            }

            #[test]
            fn gradient_matches_finite_differences() {
                for seed in [21, 22] {
                    let r = grad_check::<M>(seed, 40);
                    eprintln!("{}: {r:?}", m::NAME);
                    assert!(r.checked > 0);
                    assert!(r.max_rel < 1e-6, "{r:?}");
                    assert!(r.max_abs_tiny < 1e-10, "{r:?}");
                }
            }

            #[test]
            fn gradient_with_carried_state_matches_finite_differences() {
                // The carried state is a constant: finite differences of the
                // loss from that state against the analytic gradient.
                let carried = random_states::<M>(99);
                let mut p = random_params::<M>(31, 0.2);
                let tokens = random_tokens::<M>(32);
                let tok: &[u32; m::SEQ + 1] = tokens.as_slice().try_into().unwrap();
                let mut ws = boxed_zeroed::<m::Workspace<f64>>();
                for l in 0..m::LEVELS {
                    load_state(&mut ws.blocks[0].start[l], &carried[l]);
                }
                let mut g = boxed_zeroed::<m::Params<f64>>();
                m::loss_and_grad(&p, tok, &mut ws, &mut g);
                let h = 1e-3;
                let mut worst = 0.0f64;
                let mut r = Rng::new(5);
                for _ in 0..200 {
                    let j = r.below(m::PARAM_COUNT as u64) as usize;
                    let x0 = p.as_flat()[j];
                    let mut f = |dx: f64| {
                        p.as_flat_mut()[j] = x0 + dx;
                        let l = m::loss(&p, tok, &mut ws);
                        p.as_flat_mut()[j] = x0;
                        l
                    };
                    let num = (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h);
                    let a = g.as_flat()[j];
                    let scale = a.abs().max(num.abs());
                    if scale >= FLOOR {
                        worst = worst.max((a - num).abs() / scale);
                    } else {
                        assert!((a - num).abs() < 1e-10);
                    }
                }
                eprintln!("{}: carried-state gradient max rel error {worst:e}", m::NAME);
                assert!(worst < 1e-6, "{worst:e}");
            }

            #[test]
            fn streaming_matches_training_forward() {
                let rel = max_stream_vs_forward_rel::<M, f32>(5);
                eprintln!("{}: max stream/forward relative difference = {rel:e}", m::NAME);
                assert!(rel < 1e-5, "relative difference {rel:e}");
            }

            #[test]
            fn streaming_matches_training_with_carried_state_including_final_memory() {
                let p64 = random_params::<M>(8, 0.2);
                let mut p = boxed_zeroed::<m::Params<f32>>();
                for (d, s) in p.as_flat_mut().iter_mut().zip(p64.as_flat()) {
                    *d = *s as f32;
                }
                let tokens = random_tokens::<M>(9);
                let tok: &[u32; m::SEQ + 1] = tokens.as_slice().try_into().unwrap();
                for carry in [false, true] {
                    let carried = random_states::<M>(10);
                    let mut ws = boxed_zeroed::<m::Workspace<f32>>();
                    let mut st = boxed_zeroed::<m::Stream<f32>>();
                    st.reset();
                    if carry {
                        for l in 0..m::LEVELS {
                            load_state(&mut ws.blocks[0].start[l], &carried[l]);
                            load_state(&mut st.blocks[0].mem[l], &carried[l]);
                        }
                    }
                    m::forward(&p, tok, &mut ws);
                    let mut worst = 0.0f32;
                    for t in 0..m::SEQ {
                        let row = ws.logits[t];
                        let scale = row.iter().fold(1.0f32, |a, x| a.max(x.abs()));
                        let got = st.step(&p, tokens[t]);
                        for (a, b) in got.iter().zip(row.iter()) {
                            worst = worst.max((a - b).abs() / scale);
                        }
                    }
                    assert!(worst < 1e-5, "carry={carry}: logits differ by {worst:e}");
                    for l in 0..m::LEVELS {
                        let (a, b) = (&st.blocks[0].mem[l], &ws.blocks[0].end[l]);
                        assert_eq!(a.n, b.n);
                        for i in 0..m::D {
                            for j in 0..m::D {
                                let tol = 1e-5 * (1.0 + b.m[i][j].abs());
                                assert!((a.m[i][j] - b.m[i][j]).abs() < tol, "carry={carry}: M[{l}] differs");
                                assert!((a.g[i][j] - b.g[i][j]).abs() < tol, "carry={carry}: G[{l}] differs");
                                assert!((a.s[i][j] - b.s[i][j]).abs() < tol, "carry={carry}: S[{l}] differs");
                            }
                        }
                    }
                }
            }
        }
    };
}

memory_tests!(delta_mag_tests, delta_mag);
memory_tests!(delta_mal_tests, delta_mal);
memory_tests!(titans_mag_tests, titans_mag);
memory_tests!(titans_mal_tests, titans_mal);
memory_tests!(hebbian_mag_tests, hebbian_mag);
memory_tests!(hebbian_mal_tests, hebbian_mal);
memory_tests!(cms_odd_tests, cms_odd);
memory_tests!(cms_titans_unnormalized_tests, cms_titans_unnormalized);
memory_tests!(delta_raw_tests, delta_raw);

#[test]
fn memory_state_is_not_a_parameter() {
    let names: Vec<&str> = cms_odd::TENSORS.iter().map(|t| t.name).collect();
    // The inner-loop state (M, G, S, W, n) lives in the workspace and the
    // stream, never among the parameters.
    let state = [".m", ".g", ".s", ".w", ".n"];
    assert!(names.iter().filter(|n| n.contains(".mem.")).all(|n| !state.iter().any(|s| n.ends_with(s))), "{names:?}");
    assert_eq!(cms_odd::PARAM_COUNT, <cms_odd::Model as Model>::PARAM_COUNT);
    assert_eq!(cms_odd::PERIODS, [1, 3, 4]);
}
