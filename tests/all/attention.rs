//! The attention-only models (composition `none`): the generated forward
//! against the reference interpreter, the analytic backward against finite
//! differences, and streaming against the training forward.

use crate::common::harness::*;
use crate::shipped::micro;
use nl::nl_model;

nl_model! { r#"
name = "odd"
d_model = 24
heads = 3
vocab = 13
seq_len = 7
window = 3
"# }

nl_model! { r#"
name = "full_window"
d_model = 16
heads = 4
vocab = 11
seq_len = 9
"# }

nl_model! { r#"
name = "one_head"
d_model = 6
heads = 1
vocab = 5
seq_len = 5
window = 1
"# }

macro_rules! model_tests {
    ($t:ident, $m:ident, $per_tensor:expr) => {
        mod $t {
            use super::*;

            #[test]
            fn forward_matches_reference() {
                let diff = max_forward_diff_vs_reference::<super::$m::Model>(&[1, 2, 3]);
                eprintln!("{}: max |generated - reference| = {diff:e}", stringify!($m));
                assert!(diff < 1e-10, "max difference {diff:e}");
            }

            #[test]
            fn gradient_matches_finite_differences() {
                for seed in [11, 12] {
                    let r = grad_check::<super::$m::Model>(seed, $per_tensor);
                    eprintln!("{}: {r:?}", stringify!($m));
                    assert!(r.checked > 0);
                    assert!(r.max_rel < 1e-6, "{r:?}");
                    assert!(r.max_abs_tiny < 1e-10, "{r:?}");
                }
            }

            #[test]
            fn streaming_matches_training_forward() {
                let rel = max_stream_vs_forward_rel::<super::$m::Model, f32>(5);
                eprintln!("{}: max stream/forward relative difference = {rel:e}", stringify!($m));
                assert!(rel < 1e-5, "relative difference {rel:e}");
            }
        }
    };
}

model_tests!(micro_tests, micro, 24);
model_tests!(odd_tests, odd, 64);
model_tests!(full_window_tests, full_window, 64);
model_tests!(one_head_tests, one_head, 1000);

#[test]
fn constants_follow_the_spec() {
    assert_eq!((micro::D, micro::HEADS, micro::VOCAB, micro::SEQ, micro::WINDOW), (64, 4, 256, 32, 16));
    assert_eq!(micro::PARAM_COUNT, 49_152);
    assert_eq!(micro::NAME, "micro");
    assert_eq!(odd::HEAD_DIM, 8);
    assert_eq!(full_window::WINDOW, 9);
    let names: Vec<&str> = micro::TENSORS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        ["embed", "blocks.0.attn.wq", "blocks.0.attn.wk", "blocks.0.attn.wv", "blocks.0.attn.wo", "unembed"]
    );
}

#[test]
fn surprise_is_the_cross_entropy_of_the_next_token() {
    let p = random_params::<odd::Model>(3, 0.0);
    let mut st = nl_runtime::boxed_zeroed::<odd::Stream<f64>>();
    assert!(st.surprise(0).is_none());
    let logits = *st.step(&p, 4);
    let lse = logits.iter().map(|x| x.exp()).sum::<f64>().ln();
    let s = st.surprise(7).unwrap();
    assert!((s - (lse - logits[7])).abs() < 1e-12);
}

#[test]
#[should_panic(expected = "token 13 is out of range for a vocabulary of 13")]
fn out_of_range_tokens_panic_clearly() {
    let p = random_params::<odd::Model>(3, 0.0);
    let mut st = nl_runtime::boxed_zeroed::<odd::Stream<f64>>();
    st.step(&p, 13);
}
