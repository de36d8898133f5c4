//! Host reference (any target with `std`): prints the surprise scores of the
//! embedded model over `nl_deploy::SENTENCE`, one `index score` per line,
//! in the same format as `run.mjs` (wasm) so `check.py` can compare them.

fn main() {
    let mut s = [0f32; nl_deploy::N_SCORES];
    nl_deploy::scores(&mut s).expect("embedded checkpoint");
    for (i, x) in s.iter().enumerate() {
        println!("{i} {x:.9e}");
    }
}
