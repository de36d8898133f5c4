//! Native speed of what the page does, for the table beside the wasm
//! numbers (`bench.mjs` measures the same work in node, `test.mjs` in the
//! browser): streaming tokens/s (one `feed` per byte with the top-5
//! predictions, as the page asks for) and fine-tuning tokens/s (training
//! tokens, `SEQ` per window, through `loss_and_grad_batch` + AdamW).
//!
//! ```text
//! nl-web-bench CHECKPOINT TEXT_FILE [STREAM_TOKENS [TRAIN_STEPS [BATCH]]]   # defaults 4096, 4, 4
//! ```

use std::process::ExitCode;
use std::time::Instant;

fn arg(args: &[String], i: usize, default: usize) -> Result<usize, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| format!("argument {} must be a count, got '{s}'", i + 1)),
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(ckpt), Some(text)) = (args.first(), args.get(1)) else {
        return Err("usage: nl-web-bench CHECKPOINT TEXT_FILE [STREAM_TOKENS [TRAIN_STEPS [BATCH]]]".into());
    };
    let (n, steps, batch) = (arg(&args, 2, 4096)?, arg(&args, 3, 4)?, arg(&args, 4, 4)?);
    let bytes = std::fs::read(ckpt).map_err(|e| format!("cannot read {ckpt}: {e}"))?;
    let text = std::fs::read(text).map_err(|e| format!("cannot read {text}: {e}"))?;
    if text.len() < 2 {
        return Err("the text needs at least 2 bytes".into());
    }
    let mut e = nl_web::Engine::new(&bytes).map_err(|e| format!("{ckpt}: {e}"))?;
    let mut top = [nl_web::Prediction::default(); 5];
    let t0 = Instant::now();
    let mut sum = 0.0f64;
    for i in 0..n {
        sum += f64::from(e.feed(text[i % text.len()]).unwrap_or(0.0));
        e.top(&mut top);
    }
    let stream_s = t0.elapsed().as_secs_f64();
    e.train_start(&text, 1e-3, batch, 1).map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    for _ in 0..steps {
        e.train_step().map_err(|e| e.to_string())?;
    }
    let train_s = t1.elapsed().as_secs_f64();
    let train_tokens = (steps * batch * nl_web::SEQ) as f64;
    println!(
        "{{\"stream_tok_s\":{:.1},\"train_tok_s\":{:.1},\"stream_tokens\":{n},\"train_tokens\":{train_tokens},\"mean_bits\":{:.4}}}",
        n as f64 / stream_s,
        train_tokens / train_s,
        sum / n as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nl-web-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
