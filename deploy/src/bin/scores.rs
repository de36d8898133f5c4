//! Host reference (any target with `std`): prints the surprise scores of the
//! embedded model over `nl_deploy::SENTENCE`, one `index score` per line,
//! in the same format as `run.mjs` (wasm) so `check.py` can compare them.

fn main() {
    let mut s = [0f32; nl_deploy::N_SCORES];
    nl_deploy::scores(&mut s).expect("embedded checkpoint");
    for (i, x) in s.iter().enumerate() {
        println!("{i} {x:.9e}");
    }
    // The fallible step: a token outside the vocabulary is an error code
    // and leaves the stream as it was.
    let mut x = 0f32;
    // SAFETY: `x` is a valid f32 to write.
    assert_eq!(unsafe { nl_deploy::nl_step(256, &mut x) }, nl_deploy::NL_ERR_TOKEN);
    assert_eq!(nl_deploy::nl_reset(), nl_deploy::NL_OK);
    // SAFETY: as above.
    assert_eq!(unsafe { nl_deploy::nl_step(u32::from(nl_deploy::SENTENCE[0]), &mut x) }, nl_deploy::NL_OK);
    // SAFETY: as above.
    assert_eq!(unsafe { nl_deploy::nl_step(u32::from(nl_deploy::SENTENCE[1]), &mut x) }, nl_deploy::NL_OK);
    assert_eq!(x, s[0], "nl_step's surprise is the scores' first");
}
