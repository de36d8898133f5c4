//! A byte corpus, its split into a training part and a held-out tail, and
//! the windows evaluation reads.
//!
//! The last [`HELD_OUT_FRACTION`] of the bytes (rounded so the training
//! part is `floor(0.9 * len)` bytes) are held out. Training samples random
//! windows of `SEQ + 1` bytes from the training part; evaluation reads the
//! held-out part as windows of `SEQ + 1` bytes at stride `SEQ`, so every
//! held-out byte after the first is predicted exactly once.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Fraction of the corpus (its tail) held out for evaluation.
pub const HELD_OUT_FRACTION: f64 = 0.10;

/// Minimum training part, in sequences of `SEQ + 1` bytes.
pub const MIN_TRAIN_WINDOWS: usize = 4;

/// A corpus read from a file, split into training and held-out bytes.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Where it was read from.
    pub path: PathBuf,
    /// Every byte of the file.
    pub bytes: Vec<u8>,
    /// Bytes `..split` are for training, `split..` are held out.
    pub split: usize,
}

impl Corpus {
    /// Reads `path` and checks it is large enough for sequences of `seq + 1`
    /// bytes: at least [`MIN_TRAIN_WINDOWS`] of them to train on and one
    /// held-out window. The error gives the size needed.
    pub fn read(path: &Path, seq: usize) -> Result<Corpus> {
        let bytes = crate::read_file(path, "corpus")?;
        Corpus::from_bytes(path, bytes, seq)
    }

    /// As [`Corpus::read`], from bytes already in memory (`path` is only named in errors).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>, seq: usize) -> Result<Corpus> {
        if !is_large_enough(bytes.len(), seq) {
            let need = (1..).find(|&n| is_large_enough(n, seq)).unwrap_or(usize::MAX);
            return Err(Error(format!(
                "the corpus {} is too small: {} bytes, and sequences of {} bytes need at least {need} \
                 (the first 90% for training, >= {} bytes; the last 10% held out, >= {} bytes = one window)",
                path.display(),
                bytes.len(),
                seq + 1,
                MIN_TRAIN_WINDOWS * (seq + 1),
                seq + 1
            )));
        }
        let split = train_split(bytes.len());
        Ok(Corpus { path: path.to_path_buf(), bytes, split })
    }

    /// The training part.
    pub fn train(&self) -> &[u8] {
        &self.bytes[..self.split]
    }

    /// The held-out part.
    pub fn held_out(&self) -> &[u8] {
        &self.bytes[self.split..]
    }

    /// A 64-bit FNV-1a hash of every byte: training state records it, so a
    /// resumed run can check it reads the same corpus.
    pub fn fingerprint(&self) -> u64 {
        fnv1a(&self.bytes)
    }
}

/// 64-bit FNV-1a of `bytes` (a fingerprint, not a cryptographic hash).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Bytes of a corpus of `len` bytes used for training (the rest is held out).
pub fn train_split(len: usize) -> usize {
    ((len as f64) * (1.0 - HELD_OUT_FRACTION)).floor() as usize
}

/// Whether a corpus of `len` bytes has [`MIN_TRAIN_WINDOWS`] training
/// windows of `seq + 1` bytes and at least one held-out window.
pub fn is_large_enough(len: usize, seq: usize) -> bool {
    let split = train_split(len);
    split >= MIN_TRAIN_WINDOWS * (seq + 1) && len - split > seq
}

/// Start offsets of the evaluation windows of `text`: `seq + 1` bytes each,
/// at stride `seq`, so every byte after the first is predicted exactly once
/// (the predicted targets do not overlap). Empty if `text` is shorter than
/// one window.
pub fn windows(text: &[u8], seq: usize) -> Vec<usize> {
    (0..).map(|i| i * seq).take_while(|&s| s + seq < text.len()).collect()
}

/// `k` indices evenly spaced over `0..n` (all of them if `k == 0` or `k >= n`).
pub fn subset(n: usize, k: usize) -> Vec<usize> {
    if k == 0 || k >= n {
        (0..n).collect()
    } else {
        (0..k).map(|i| i * n / k).collect()
    }
}

/// Printable ASCII and newlines as they are, every other byte as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\n' => s.push('\n'),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_windows() {
        assert_eq!(train_split(100), 90);
        assert_eq!(train_split(9), 8);
        // seq 4: windows of 5 bytes at stride 4.
        assert_eq!(windows(b"abcdefghij", 4), [0, 4]);
        assert_eq!(windows(b"abcd", 4), Vec::<usize>::new());
        assert_eq!(windows(b"abcde", 4), [0]);
        assert_eq!(subset(10, 0), (0..10).collect::<Vec<_>>());
        assert_eq!(subset(10, 5), [0, 2, 4, 6, 8]);
        assert_eq!(subset(3, 5), [0, 1, 2]);
    }

    #[test]
    fn too_small_corpus_says_how_much_is_needed() {
        let e = Corpus::from_bytes(Path::new("c.txt"), vec![b'a'; 10], 4).err().map(|e| e.0).unwrap_or_default();
        assert!(e.contains("c.txt") && e.contains("10 bytes") && e.contains("at least"), "{e}");
        // The size it names is enough, and one byte less is not.
        let need: usize =
            e.split("at least ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(is_large_enough(need, 4) && !is_large_enough(need - 1, 4), "{need}");
        let c = Corpus::from_bytes(Path::new("c.txt"), vec![b'a'; need], 4).map_err(|e| e.0);
        assert_eq!(c.map(|c| (c.train().len(), c.held_out().len())), Ok((train_split(need), need - train_split(need))));
    }

    #[test]
    fn fnv1a_known_values() {
        // Reference values of 64-bit FNV-1a (from the algorithm's definition).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn escape_keeps_text_and_escapes_the_rest() {
        assert_eq!(escape(b"hi\n\x00\xff~"), "hi\n\\x00\\xff~");
    }
}
