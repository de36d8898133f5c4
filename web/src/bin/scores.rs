//! The native reference for the browser test: the surprise (bits) of every
//! byte of a file under a checkpoint, from a reset stream, with the memory's
//! inner loop on (the default) or off (`--frozen`), computed by the same
//! `nl-web` code the page runs as wasm.
//!
//! ```text
//! nl-web-scores CHECKPOINT TEXT_FILE [--frozen]   # one JSON array of numbers (null for the first byte)
//! ```

use std::process::ExitCode;

fn run() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let frozen = args.iter().any(|a| a == "--frozen");
    let files: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [ckpt, text] = files.as_slice() else {
        return Err("usage: nl-web-scores CHECKPOINT TEXT_FILE [--frozen]".into());
    };
    let bytes = std::fs::read(ckpt).map_err(|e| format!("cannot read {ckpt}: {e}"))?;
    let text = std::fs::read(text).map_err(|e| format!("cannot read {text}: {e}"))?;
    let mut engine = nl_web::Engine::new(&bytes).map_err(|e| format!("{ckpt}: {e}"))?;
    let scores = nl_web::score_text(&mut engine, &text, frozen);
    let items: Vec<String> =
        scores.iter().map(|s| if s.is_finite() { format!("{s:e}") } else { "null".to_string() }).collect();
    Ok(format!("[{}]", items.join(",")))
}

fn main() -> ExitCode {
    match run() {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nl-web-scores: {e}");
            ExitCode::FAILURE
        }
    }
}
