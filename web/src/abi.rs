//! The C ABI the page's worker calls (wasm32 only): one global [`Engine`],
//! buffers in the module's exported memory from [`nl_alloc`], and return
//! codes instead of panics ([`NL_OK`], or [`NL_ERR`] with a message readable
//! through [`nl_error_ptr`] / [`nl_error_len`]).
//!
//! The module is single-threaded (wasm32-unknown-unknown without atomics),
//! so the engine sits behind a `Mutex` only to be a safe `static`; it is
//! never contended.

use std::alloc::Layout;
use std::sync::Mutex;

use crate::{Engine, Error, Prediction};

/// Return code: success.
pub const NL_OK: i32 = 0;
/// Return code: failure; the message is at [`nl_error_ptr`] (UTF-8, [`nl_error_len`] bytes).
pub const NL_ERR: i32 = -1;

/// Alignment of the buffers [`nl_alloc`] hands out (enough for `f32`, `u32`, `f64`).
const ALIGN: usize = 8;

/// The most predictions per byte [`nl_feed`] writes.
pub const MAX_TOP: usize = 16;

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());

fn fail(e: impl core::fmt::Display) -> i32 {
    let mut m = LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner());
    *m = e.to_string();
    NL_ERR
}

fn with_engine(f: impl FnOnce(&mut Engine) -> Result<(), Error>) -> i32 {
    let mut g = ENGINE.lock().unwrap_or_else(|p| p.into_inner());
    match g.as_mut() {
        None => fail(Error::NoModel),
        Some(e) => match f(e) {
            Ok(()) => NL_OK,
            Err(e) => fail(e),
        },
    }
}

/// # Safety
/// `ptr` is null with `len == 0`, or valid for reads of `len` bytes.
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: the caller guarantees `ptr` is valid for `len` byte reads.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }
}

/// A buffer of `len` bytes (8-aligned) in the module's memory, or null if
/// `len` is 0 or memory cannot grow. Free it with [`nl_free`] and the same `len`.
#[no_mangle]
pub extern "C" fn nl_alloc(len: usize) -> *mut u8 {
    match Layout::from_size_align(len, ALIGN) {
        // SAFETY: the layout has a non-zero size.
        Ok(l) if len > 0 => unsafe { std::alloc::alloc(l) },
        _ => core::ptr::null_mut(),
    }
}

/// Frees a buffer from [`nl_alloc`].
///
/// # Safety
/// `ptr` came from `nl_alloc(len)` with this `len` and is not used after; null is ignored.
#[no_mangle]
pub unsafe extern "C" fn nl_free(ptr: *mut u8, len: usize) {
    if !ptr.is_null() && len > 0 {
        if let Ok(l) = Layout::from_size_align(len, ALIGN) {
            // SAFETY: `ptr` was allocated by `nl_alloc(len)`, i.e. with this layout.
            unsafe { std::alloc::dealloc(ptr, l) };
        }
    }
}

/// The last error's message (UTF-8, [`nl_error_len`] bytes; valid until the next call).
#[no_mangle]
pub extern "C" fn nl_error_ptr() -> *const u8 {
    LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()).as_ptr()
}

/// The last error's message length in bytes.
#[no_mangle]
pub extern "C" fn nl_error_len() -> usize {
    LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// The model's parameter count.
#[no_mangle]
pub extern "C" fn nl_param_count() -> u32 {
    <crate::M as nl_runtime::Model>::PARAM_COUNT as u32
}

/// Tokens per fine-tuning window (`seq_len`; a window holds one more byte).
#[no_mangle]
pub extern "C" fn nl_seq() -> u32 {
    crate::SEQ as u32
}

/// Loads a checkpoint (safetensors bytes). The first load makes the engine;
/// a later one replaces its parameters. On an error the engine (if any) is
/// unchanged and [`NL_ERR`] is returned with the loader's message.
///
/// # Safety
/// `ptr` is valid for reads of `len` bytes (or null with `len == 0`).
#[no_mangle]
pub unsafe extern "C" fn nl_load(ptr: *const u8, len: usize) -> i32 {
    // SAFETY: forwarded from the caller.
    let b = unsafe { bytes(ptr, len) };
    let mut g = ENGINE.lock().unwrap_or_else(|p| p.into_inner());
    let r = match g.as_mut() {
        Some(e) => e.load(b),
        None => Engine::new(b).map(|e| *g = Some(e)),
    };
    match r {
        Ok(()) => NL_OK,
        Err(e) => fail(e),
    }
}

/// Resets the stream (empty windows, zero memory).
#[no_mangle]
pub extern "C" fn nl_reset() -> i32 {
    with_engine(|e| {
        e.reset();
        Ok(())
    })
}

/// Switches the inner loop off (`frozen != 0`) or on.
#[no_mangle]
pub extern "C" fn nl_set_frozen(frozen: i32) -> i32 {
    with_engine(|e| {
        e.set_frozen(frozen != 0);
        Ok(())
    })
}

/// Feeds `len` bytes to the stream, carrying on from the bytes before. For
/// byte `i` it writes its surprise in bits to `surprise[i]` (`NaN` for the
/// first byte after a reset) and, if `k > 0`, the `k` most likely next
/// bytes after it to `top_bytes[i * k ..]` with their probabilities at
/// `top_p[i * k ..]` (`k` is capped at [`MAX_TOP`]).
///
/// # Safety
/// `text` is valid for `len` byte reads, `surprise` for `len` `f32` writes,
/// and if `k > 0`, `top_bytes` for `len * k` byte writes and `top_p` for
/// `len * k` `f32` writes; the buffers do not overlap.
#[no_mangle]
pub unsafe extern "C" fn nl_feed(
    text: *const u8,
    len: usize,
    surprise: *mut f32,
    top_bytes: *mut u8,
    top_p: *mut f32,
    k: usize,
) -> i32 {
    let k = k.min(MAX_TOP);
    // SAFETY: forwarded from the caller.
    let text = unsafe { bytes(text, len) };
    with_engine(|e| {
        let mut top = [Prediction::default(); MAX_TOP];
        for (i, &b) in text.iter().enumerate() {
            let s = e.feed(b).unwrap_or(f32::NAN);
            // SAFETY: `i < len` and the caller guarantees `surprise` holds `len` f32s.
            unsafe { surprise.add(i).write(s) };
            if k > 0 {
                e.top(&mut top[..k]);
                for (j, p) in top[..k].iter().enumerate() {
                    // SAFETY: `i * k + j < len * k`, within the caller's buffers.
                    unsafe {
                        top_bytes.add(i * k + j).write(p.byte);
                        top_p.add(i * k + j).write(p.p);
                    }
                }
            }
        }
        Ok(())
    })
}

/// Starts fine-tuning on `len` bytes of `text` (see [`Engine::train_start`]).
///
/// # Safety
/// `text` is valid for `len` byte reads (or null with `len == 0`).
#[no_mangle]
pub unsafe extern "C" fn nl_train_start(text: *const u8, len: usize, lr: f64, batch: u32, seed: u32) -> i32 {
    // SAFETY: forwarded from the caller.
    let text = unsafe { bytes(text, len) };
    with_engine(|e| e.train_start(text, lr, batch as usize, u64::from(seed)))
}

/// One fine-tuning step; writes the batch's mean loss (bits per byte, before the step) to `loss`.
///
/// # Safety
/// `loss` is valid for one `f32` write.
#[no_mangle]
pub unsafe extern "C" fn nl_train_step(loss: *mut f32) -> i32 {
    with_engine(|e| {
        let l = e.train_step()?;
        // SAFETY: the caller guarantees `loss` is valid for one write.
        unsafe { loss.write(l) };
        Ok(())
    })
}

/// Goes back to the loaded checkpoint's parameters (undoes fine-tuning).
#[no_mangle]
pub extern "C" fn nl_restore() -> i32 {
    with_engine(|e| {
        e.restore();
        Ok(())
    })
}
