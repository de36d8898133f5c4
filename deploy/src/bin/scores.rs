//! Host reference (any target with `std`): prints the checked run of the
//! embedded model ([`nl_deploy::print_run`]: surprise scores over
//! `nl_deploy::SENTENCE`, the on-device training demo's losses, the RAM
//! parts) in the format `run.mjs` (wasm) and `nl-deploy-bare` (qemu) print,
//! so `check.py` can compare them.

fn main() {
    let mut out = String::new();
    if let Err(e) = nl_deploy::print_run(&mut out, true) {
        print!("{out}");
        eprintln!("nl-deploy-scores: {e}");
        std::process::exit(2);
    }
    print!("{out}");
}
