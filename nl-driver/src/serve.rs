//! Serving: a byte stream in, its surprise out, one JSON line per byte or
//! per chunk of bytes, in bounded memory.
//!
//! The model reads the input as one continuous stream (state carried, the
//! memory levels learning as they read) on its deployable parameters
//! ([`eval::deployable`]: integer kernels for a quantized model): byte
//! `i - 1` is fed with [`Model::try_step_q`], and byte `i` is scored by its surprise under those
//! logits, in bits ([`crate::eval::surprise`] / ln 2). The first byte has
//! no prediction. Per byte (`chunk == 0`) a line is
//! `{"i":1,"byte":104,"bits":7.98}`; per chunk of `n` predicted bytes it is
//! `{"start":1,"end":4097,"bits_per_byte":2.31}` (`end` exclusive). Input
//! is read in blocks of 64 KiB and output is flushed after each block, so
//! the memory used is the stream state plus two buffers, whatever the
//! input's length, and an interactive pipe sees its lines as it writes.

use std::io::{Read, Write};

use nl_runtime::{boxed_zeroed, Model};

use crate::{eval, Error, Result};

/// What a served input came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServeSummary {
    /// Bytes read.
    pub bytes: u64,
    /// Mean surprise of the predicted bytes (`bytes - 1` of them), bits per byte (NaN for none).
    pub bits_per_byte: f64,
}

/// A number for JSON: `null` where it is not finite.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".to_string()
    }
}

/// Streams `input` through `M` and writes JSON lines to `out` (see the module docs).
pub fn serve<M: Model>(
    params: &M::Params<f32>,
    mut input: impl Read,
    mut out: impl Write,
    chunk: usize,
) -> Result<ServeSummary> {
    crate::require_bytes::<M>()?;
    let q = eval::deployable::<M>(params);
    let mut stream = boxed_zeroed::<M::Stream<f32>>();
    M::reset(&mut *stream);
    let mut logits = vec![0f32; M::VOCAB];
    let mut buf = vec![0u8; 1 << 16];
    let (mut i, mut total) = (0u64, 0.0f64);
    let (mut chunk_start, mut chunk_bits) = (1u64, 0.0f64);
    let werr = |e: std::io::Error| Error(format!("cannot write the output: {e}"));
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error(format!("cannot read the input: {e}"))),
        };
        for &b in &buf[..n] {
            if i > 0 {
                let bits = eval::surprise(&logits, usize::from(b)) / std::f64::consts::LN_2;
                total += bits;
                if chunk == 0 {
                    writeln!(out, "{{\"i\":{i},\"byte\":{b},\"bits\":{}}}", num(bits)).map_err(werr)?;
                } else {
                    chunk_bits += bits;
                    if i + 1 - chunk_start == chunk as u64 {
                        let mean = chunk_bits / chunk as f64;
                        writeln!(out, "{{\"start\":{chunk_start},\"end\":{},\"bits_per_byte\":{}}}", i + 1, num(mean))
                            .map_err(werr)?;
                        (chunk_start, chunk_bits) = (i + 1, 0.0);
                    }
                }
            }
            logits.copy_from_slice(eval::step_byte::<M>(&mut stream, &q, b));
            i += 1;
        }
        out.flush().map_err(werr)?;
    }
    if chunk > 0 && i > chunk_start {
        let mean = chunk_bits / (i - chunk_start) as f64;
        writeln!(out, "{{\"start\":{chunk_start},\"end\":{i},\"bits_per_byte\":{}}}", num(mean)).map_err(werr)?;
    }
    out.flush().map_err(werr)?;
    let predicted = i.saturating_sub(1);
    Ok(ServeSummary { bytes: i, bits_per_byte: if predicted > 0 { total / predicted as f64 } else { f64::NAN } })
}
