//! Safetensors checkpoints that cannot be misread.
//!
//! Layout (the [safetensors] format): an 8-byte little-endian header length
//! `N`, then `N` bytes of JSON header, then the data section. The header
//! lists every tensor of [`Model::TENSORS`], in that order, as
//! `"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}`
//! (byte offsets into the data section, contiguous, so the data section is
//! exactly the bytes of `Params<S>` in little-endian), and a
//! `"__metadata__"` object with `format = "nl"`, `format_version = "2"` (version 1 named the one block's tensors without the `blocks.0.` prefix; such files are refused with [`CheckpointError::BadMetadata`]),
//! `spec_sha256` (the model's [`Model::SPEC_SHA256`]) and `model`.
//! The header is padded with spaces so the data section starts at a file
//! offset that is a multiple of 8.
//!
//! Reading checks everything: the JSON (a small strict parser that never
//! panics), the spec hash, every tensor's dtype, shape and offsets, that no
//! tensor is missing or unexpected, the data length, and that every value is
//! finite (a NaN or an infinity is refused with
//! [`CheckpointError::NonFinite`], naming the tensor and the index, unless
//! the caller opts out with [`LoadOptions::check_finite`] and the `_with`
//! functions). Parsing and validation need no allocator; [`view`] even uses
//! the bytes in place.
//!
//! **Deployable files** ([`export`], [`export_bytes`]; read by [`view_q`],
//! [`load_q_from_bytes`], [`load_q`]) hold a model's [`Model::QParams`]: the
//! same layout, with the metadata also holding `kind = "deploy"` (a training
//! checkpoint has no `kind`; each reader refuses the other kind with
//! [`CheckpointError::WrongKind`]) and `quant` (the scheme,
//! [`crate::QuantScheme::name`], e.g. `int8/f32`), and one tensor per
//! [`Model::QTENSORS`] entry (dtype `F32`, `I8` or `U8`, `data_offsets` its
//! byte range), so the data section is exactly the bytes of `QParams`. An f32
//! model's deployable file has the same data section as its f32 checkpoint
//! and differs only in that metadata. Reading runs the same parser and
//! tensor-table checks, then checks the values: f32 finite, scales `> 0`,
//! int8 codes not -128, packed ternary codes valid, `__pad__` zero
//! (docs/quant.md, "Deployable checkpoints").
//!
//! [safetensors]: https://github.com/huggingface/safetensors

use core::any::TypeId;
use core::fmt;

use crate::quant::QuantError;
use crate::{Dtype, Flat, Model, QTensorInfo, Scalar, ScalarStruct, TensorInfo};

/// Largest header accepted, in bytes.
pub const MAX_HEADER: u64 = 1 << 20;
/// Most tensors a model may have for checkpointing (the validator tracks
/// which it has seen in a fixed bitset, without an allocator).
pub const MAX_TENSORS: usize = 1024;
/// Value of the `format` metadata key.
pub const FORMAT: &str = "nl";
/// Value of the `format_version` metadata key.
pub const FORMAT_VERSION: &str = "2";
/// Value of the `kind` metadata key of a deployable file ([`export`]); a
/// training checkpoint ([`save`]) has no `kind` key.
pub const KIND_DEPLOY: &str = "deploy";

/// What a file holds, as its `kind` metadata says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A training checkpoint: `Params<S>` (no `kind` key), read by [`load`] / [`view`].
    Training,
    /// A deployable file: `QParams` (`kind = "deploy"`), read by [`load_q`] / [`view_q`].
    Deploy,
    /// Another `kind` value (in [`CheckpointError::WrongKind`]'s `kind`).
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::Training => f.write_str("a training checkpoint (f32/f64 parameters, no `kind` metadata)"),
            FileKind::Deploy => f.write_str("a deployable file (metadata kind = \"deploy\": the quantized QParams)"),
            FileKind::Other => f.write_str("a file of unknown kind"),
        }
    }
}

/// A short piece of text copied from a checkpoint for an error message
/// (at most 64 bytes; longer text is cut and shown with `…`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text {
    buf: [u8; 64],
    len: u8,
    cut: bool,
}

impl Text {
    fn from_raw(raw: &[u8]) -> Text {
        let mut t = Text { buf: [0; 64], len: 0, cut: false };
        let mut i = 0;
        while let Some(c) = next_char(raw, &mut i) {
            let mut tmp = [0u8; 4];
            let enc = c.encode_utf8(&mut tmp).as_bytes();
            let len = t.len as usize;
            match t.buf.get_mut(len..len + enc.len()) {
                Some(dst) => {
                    dst.copy_from_slice(enc);
                    t.len += enc.len() as u8;
                }
                None => {
                    t.cut = true;
                    break;
                }
            }
        }
        t
    }

    /// The text (possibly cut).
    pub fn as_str(&self) -> &str {
        self.buf.get(..self.len as usize).and_then(|b| core::str::from_utf8(b).ok()).unwrap_or("")
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.cut {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A shape read from a checkpoint (up to 8 dimensions are kept).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    dims: [u64; 8],
    n: usize,
}

impl Dims {
    fn push(&mut self, d: u64) {
        if let Some(s) = self.dims.get_mut(self.n) {
            *s = d;
        }
        self.n += 1;
    }

    /// The dimensions, outermost first (at most the first 8 are kept; see
    /// [`Dims::rank`]).
    pub fn as_slice(&self) -> &[u64] {
        self.dims.get(..self.n).unwrap_or(&self.dims)
    }

    /// The number of dimensions (may exceed the 8 kept).
    pub fn rank(&self) -> usize {
        self.n
    }

    /// The position of flat (row-major) `index` in a tensor of `shape`.
    fn unravel(index: usize, shape: &[usize]) -> Dims {
        let mut d = Dims { dims: [0; 8], n: shape.len() };
        let mut rest = index;
        for (j, &len) in shape.iter().enumerate().rev() {
            let (q, r) = match (rest.checked_div(len), rest.checked_rem(len)) {
                (Some(q), Some(r)) => (q, r),
                _ => (0, 0), // an empty dimension: no element has a position in it
            };
            if let Some(slot) = d.dims.get_mut(j) {
                *slot = r as u64;
            }
            rest = q;
        }
        d
    }

    fn matches(&self, expected: &[usize]) -> bool {
        // More than 8 dimensions never match (no model tensor has them).
        self.n == expected.len()
            && self.n <= self.dims.len()
            && self.dims.iter().zip(expected).all(|(&a, &b)| a == b as u64)
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims.iter().take(self.n).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.n > self.dims.len() {
            write!(f, ", … ({} dims)", self.n)?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a checkpoint was rejected.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Fewer than the 8 bytes of the header length.
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// The header length is larger than [`MAX_HEADER`] or than the bytes after it.
    HeaderTooLarge {
        /// The header length read from the file.
        len: u64,
        /// The largest length that would have been accepted.
        limit: u64,
    },
    /// The header is not the JSON this format allows.
    BadJson {
        /// Byte offset in the file of the first offending byte.
        offset: usize,
    },
    /// A tensor of the model is not in the header.
    MissingTensor(&'static str),
    /// The header has a tensor the model does not have.
    UnexpectedTensor(Text),
    /// A tensor has another dtype than the scalar being loaded.
    WrongDtype {
        /// Tensor name.
        tensor: &'static str,
        /// Dtype in the file.
        found: Text,
        /// Dtype of the scalar being loaded.
        expected: &'static str,
    },
    /// A tensor has another shape than the model's.
    WrongShape {
        /// Tensor name.
        tensor: &'static str,
        /// Shape in the file.
        found: Dims,
        /// The model's shape.
        expected: &'static [usize],
    },
    /// A tensor's `data_offsets` are not where the model's layout puts them.
    WrongOffsets {
        /// Tensor name.
        tensor: &'static str,
        /// Offsets in the file.
        found: [u64; 2],
        /// Offsets of the model's layout.
        expected: [u64; 2],
    },
    /// The checkpoint was written for another spec.
    SpecMismatch {
        /// `spec_sha256` in the file.
        found: Text,
        /// The model's [`Model::SPEC_SHA256`].
        expected: &'static str,
    },
    /// A required metadata key (or the `__metadata__` object) is missing.
    MissingMetadata(&'static str),
    /// A metadata value is not the one this format requires.
    BadMetadata {
        /// The key.
        key: &'static str,
        /// Its value in the file.
        found: Text,
        /// The required value.
        expected: &'static str,
    },
    /// The data section has another length than the parameters.
    DataLength {
        /// Bytes in the file.
        found: usize,
        /// Bytes of the parameters.
        expected: usize,
    },
    /// [`view`]: the data section is not aligned for the scalar type.
    Misaligned {
        /// Address of the data section modulo `align`.
        addr_mod: usize,
        /// Required alignment.
        align: usize,
    },
    /// [`view`]: in-place views need a little-endian target.
    BigEndian,
    /// The scalar type is neither `f32` nor `f64`.
    UnsupportedScalar(&'static str),
    /// The model has more than [`MAX_TENSORS`] tensors.
    TooManyTensors(usize),
    /// The caller's buffer is too small for the header.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        found: usize,
    },
    /// A value is NaN or infinite. Refused by default; see
    /// [`LoadOptions::check_finite`] to load such a checkpoint anyway.
    NonFinite {
        /// The tensor (its name in [`Model::TENSORS`]).
        tensor: &'static str,
        /// The flat (row-major) index of the first such value in the tensor.
        index: usize,
        /// The same index per dimension, outermost first.
        position: Dims,
        /// The value (NaN, `inf` or `-inf`; `f32` values are widened exactly).
        value: f64,
    },
    /// The file is not the kind the reader reads: a deployable file given
    /// to the training loader, or a training checkpoint given to
    /// [`view_q`] / [`load_q`].
    WrongKind {
        /// What the file is.
        found: FileKind,
        /// What the reader reads.
        expected: FileKind,
        /// The file's `kind` metadata (`None`: a training checkpoint's, absent).
        kind: Option<Text>,
    },
    /// A deployable file quantized with another scheme than the model's.
    QuantMismatch {
        /// `quant` in the file.
        found: Text,
        /// The model's scheme, [`crate::QuantScheme::name`].
        expected: &'static str,
    },
    /// A scale of a quantized tensor is zero or negative (a NaN or an
    /// infinite scale is [`CheckpointError::NonFinite`]).
    BadScale {
        /// The scale tensor (`<name>.scale`).
        tensor: &'static str,
        /// The index of the first such scale.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// An int8 weight code is -128 (codes are -127..=127; the integer
    /// kernels rely on it).
    BadCode {
        /// The tensor.
        tensor: &'static str,
        /// The flat (row-major) index of the first such code.
        index: usize,
        /// The same index per dimension, outermost first.
        position: Dims,
        /// The code.
        value: i8,
    },
    /// Packed ternary codes hold the invalid code `0b11` or non-zero padding.
    BadTernary {
        /// The tensor.
        tensor: &'static str,
        /// What [`crate::quant::check_ternary`] found (row and column).
        error: QuantError,
    },
    /// A byte of the `__pad__` tensor is not zero.
    NonZeroPad {
        /// Its index in `__pad__`.
        index: usize,
        /// Its value.
        value: u8,
    },
    /// Reading or writing a checkpoint file failed.
    #[cfg(feature = "std")]
    Io {
        /// What was being done.
        op: IoOp,
        /// The checkpoint's path (for [`save`], the destination; the data is
        /// first written to `<path>.tmp`).
        path: std::path::PathBuf,
        /// The error of the operating system.
        source: std::io::Error,
    },
}

/// The file operation of a [`CheckpointError::Io`].
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoOp {
    /// [`load`]: reading the file.
    Read,
    /// [`save`]: creating, writing or syncing the temporary file `<path>.tmp`.
    Write,
    /// [`save`]: renaming `<path>.tmp` to the path.
    Rename,
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CheckpointError::*;
        match self {
            Truncated { len } => write!(f, "truncated checkpoint: {len} bytes, fewer than the 8-byte header length"),
            HeaderTooLarge { len, limit } => {
                write!(f, "header length {len} is larger than the {limit} bytes allowed (file truncated or corrupt)")
            }
            BadJson { offset } => write!(f, "malformed checkpoint header JSON at byte {offset}"),
            MissingTensor(n) => write!(f, "tensor `{n}` of the model is missing from the checkpoint"),
            UnexpectedTensor(n) => write!(f, "the checkpoint has tensor `{n}`, which the model does not have"),
            WrongDtype { tensor, found, expected } => {
                write!(f, "tensor `{tensor}` has dtype {found} in the checkpoint, expected {expected}")
            }
            WrongShape { tensor, found, expected } => {
                write!(f, "tensor `{tensor}` has shape {found} in the checkpoint, expected {expected:?}")
            }
            WrongOffsets { tensor, found, expected } => {
                write!(f, "tensor `{tensor}` has data_offsets {found:?} in the checkpoint, expected {expected:?}")
            }
            SpecMismatch { found, expected } => write!(
                f,
                "the checkpoint was written for another spec: spec_sha256 {found}, this model's is {expected}"
            ),
            MissingMetadata(k) => write!(f, "the checkpoint header has no `{k}` metadata"),
            BadMetadata { key, found, expected } => {
                write!(f, "metadata `{key}` is {found:?} in the checkpoint, expected {expected:?}")
            }
            DataLength { found, expected } => {
                write!(f, "the data section is {found} bytes, the parameters are {expected} bytes")
            }
            Misaligned { addr_mod, align } => write!(
                f,
                "the data section is not {align}-byte aligned in memory (address mod {align} = {addr_mod}); \
                 copy it with load_from_bytes, or load the file into an aligned buffer"
            ),
            BigEndian => write!(f, "in-place views of little-endian checkpoints need a little-endian target"),
            UnsupportedScalar(d) => write!(f, "checkpoints hold f32 or f64 scalars, not {d}"),
            TooManyTensors(n) => write!(f, "the model has {n} tensors, more than the {MAX_TENSORS} supported"),
            BufferTooSmall { needed, found } => {
                write!(f, "the header needs a {needed}-byte buffer, {found} bytes given")
            }
            NonFinite { tensor, index, position, value } => write!(
                f,
                "tensor `{tensor}` has the non-finite value {value} at index {index} (position {position}); \
                 refused (LoadOptions::new().check_finite(false) loads it anyway)"
            ),
            WrongKind { found, expected, kind } => {
                write!(f, "the file is {found}")?;
                if let (FileKind::Other, Some(k)) = (found, kind) {
                    write!(f, " {k:?}")?;
                }
                write!(f, ", but {expected} is being read")?;
                match (found, expected) {
                    (FileKind::Deploy, _) => {
                        f.write_str("; read it with checkpoint::view_q / load_q, not as training parameters")
                    }
                    (FileKind::Training, FileKind::Deploy) => {
                        f.write_str("; make a deployable file from it with `export` (checkpoint::export)")
                    }
                    _ => Ok(()),
                }
            }
            QuantMismatch { found, expected } => write!(
                f,
                "the deployable file is quantized as {found:?}, this model as {expected:?} (another [quant] scheme)"
            ),
            BadScale { tensor, index, value } => {
                write!(f, "tensor `{tensor}` has the scale {value} at index {index}; scales must be > 0")
            }
            BadCode { tensor, index, position, value } => write!(
                f,
                "tensor `{tensor}` has the int8 code {value} at index {index} (position {position}); codes are -127..=127"
            ),
            BadTernary { tensor, error } => write!(f, "tensor `{tensor}`: {error}"),
            NonZeroPad { index, value } => write!(f, "byte {index} of `__pad__` is {value:#04x}, not zero"),
            #[cfg(feature = "std")]
            Io { op, path, source } => {
                let path = path.display();
                match op {
                    IoOp::Read => write!(f, "cannot read the checkpoint {path}: {source}"),
                    IoOp::Write => write!(f, "cannot write the checkpoint {path} (to {path}.tmp first): {source}"),
                    IoOp::Rename => write!(f, "cannot save the checkpoint {path} (renaming {path}.tmp): {source}"),
                }
            }
        }
    }
}

impl core::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            #[cfg(feature = "std")]
            CheckpointError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// For callers returning `std::io::Result`: the kind of the underlying I/O
/// error (`InvalidData` for a rejected checkpoint), and this error, whose
/// message names the path, as the payload.
#[cfg(feature = "std")]
impl From<CheckpointError> for std::io::Error {
    fn from(e: CheckpointError) -> Self {
        let kind = match &e {
            CheckpointError::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// Which optional checks loading runs. [`LoadOptions::new`] (also the
/// `Default`) runs them all, as `load` (with `std`), [`load_from_bytes`],
/// [`view`] and [`validate`] do; pass other options to their `_with`
/// variants.
///
/// ```
/// use nl_runtime::checkpoint::LoadOptions;
/// // Accept NaN and infinite values (e.g. to inspect a diverged run).
/// let unchecked = LoadOptions::new().check_finite(false);
/// assert!(!unchecked.check_finite && LoadOptions::default().check_finite);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Refuse NaN and infinite values with [`CheckpointError::NonFinite`]
    /// (default: `true`). The check reads every value once and needs no
    /// allocator.
    pub check_finite: bool,
}

impl LoadOptions {
    /// Every check on.
    pub const fn new() -> LoadOptions {
        LoadOptions { check_finite: true }
    }

    /// Sets whether NaN and infinite values are refused.
    pub const fn check_finite(mut self, check: bool) -> LoadOptions {
        self.check_finite = check;
        self
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions::new()
    }
}

// ---------------------------------------------------------------- writing

/// Writes into a buffer, counting (and dropping) whatever does not fit.
struct W<'a> {
    buf: &'a mut [u8],
    n: usize,
}

impl W<'_> {
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(s) = self.buf.get_mut(self.n) {
                *s = b;
            }
            self.n += 1;
        }
    }

    fn uint(&mut self, mut v: u64) {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&tmp[i..]);
    }

    fn string(&mut self, s: &str) {
        self.put(b"\"");
        for c in s.chars() {
            match c {
                '"' => self.put(b"\\\""),
                '\\' => self.put(b"\\\\"),
                c if (c as u32) < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let v = c as usize;
                    self.put(&[b'\\', b'u', b'0', b'0', HEX[v >> 4], HEX[v & 15]]);
                }
                c => {
                    let mut tmp = [0u8; 4];
                    self.put(c.encode_utf8(&mut tmp).as_bytes());
                }
            }
        }
        self.put(b"\"");
    }
}

fn write_json<M: Model>(w: &mut W<'_>, table: Table) {
    w.put(b"{\"__metadata__\":{\"format\":");
    w.string(FORMAT);
    w.put(b",\"format_version\":");
    w.string(FORMAT_VERSION);
    w.put(b",\"spec_sha256\":");
    w.string(M::SPEC_SHA256);
    w.put(b",\"model\":");
    w.string(M::NAME);
    if table.is_deploy() {
        w.put(b",\"kind\":");
        w.string(KIND_DEPLOY);
        w.put(b",\"quant\":");
        w.string(M::QUANT.name());
    }
    w.put(b"}");
    for e in table.entries() {
        w.put(b",");
        w.string(e.name);
        w.put(b":{\"dtype\":");
        w.string(e.dtype);
        w.put(b",\"shape\":[");
        for (i, &d) in e.shape.iter().enumerate() {
            if i > 0 {
                w.put(b",");
            }
            w.uint(d as u64);
        }
        w.put(b"],\"data_offsets\":[");
        w.uint(e.begin);
        w.put(b",");
        w.uint(e.end);
        w.put(b"]}");
    }
    w.put(b"}");
}

/// The length of the header of `table` (8 + JSON + padding to a multiple of 8).
fn table_header_len<M: Model>(table: Table) -> usize {
    let mut w = W { buf: &mut [], n: 0 };
    write_json::<M>(&mut w, table);
    8 + w.n.next_multiple_of(8)
}

/// Writes the header of `table` into `buf`; returns its length.
fn write_table_header<M: Model>(buf: &mut [u8], table: Table) -> Result<usize, CheckpointError> {
    let needed = table_header_len::<M>(table);
    let found = buf.len();
    let Some(buf) = buf.get_mut(..needed) else {
        return Err(CheckpointError::BufferTooSmall { needed, found });
    };
    let (len, rest) = buf.split_at_mut(8);
    len.copy_from_slice(&((needed - 8) as u64).to_le_bytes());
    let mut w = W { buf: rest, n: 0 };
    write_json::<M>(&mut w, table);
    while w.n < needed - 8 {
        w.put(b" ");
    }
    Ok(needed)
}

/// Bytes before the data section: the 8-byte length, the JSON header and its
/// padding (a multiple of 8 in all).
pub fn header_len<M: Model, S: Scalar>() -> usize {
    table_header_len::<M>(Table::params::<M, S>())
}

/// Writes everything before the data section (the 8-byte length, the JSON
/// header, the space padding) into `buf` and returns its length,
/// [`header_len`]. The data section to follow is the parameters' scalars in
/// little-endian, in `TENSORS` order.
pub fn write_header<M: Model, S: Scalar>(buf: &mut [u8]) -> Result<usize, CheckpointError> {
    scalar_kind::<S>()?;
    write_table_header::<M>(buf, Table::params::<M, S>())
}

/// [`write_header`] into a new vector.
#[cfg(feature = "alloc")]
pub fn header_bytes<M: Model, S: Scalar>() -> Result<alloc::vec::Vec<u8>, CheckpointError> {
    let mut v = alloc::vec![0u8; header_len::<M, S>()];
    write_header::<M, S>(&mut v)?;
    Ok(v)
}

/// A whole checkpoint (header and data) in a new vector.
#[cfg(feature = "alloc")]
pub fn to_bytes<M: Model, S: Scalar>(params: &M::Params<S>) -> Result<alloc::vec::Vec<u8>, CheckpointError> {
    let mut v = header_bytes::<M, S>()?;
    match as_kind(params.as_flat())? {
        Kind::F32(x) => x.iter().for_each(|x| v.extend_from_slice(&x.to_le_bytes())),
        Kind::F64(x) => x.iter().for_each(|x| v.extend_from_slice(&x.to_le_bytes())),
    }
    Ok(v)
}

/// Saves `params` to `path` atomically: writes `<path>.tmp` in the same
/// directory, flushes and syncs it, then renames it over `path`. A reader
/// sees the old file or the new one, never a part.
///
/// The values are written as they are (NaN and infinities included, which
/// loading then refuses by default).
///
/// # Errors
/// [`CheckpointError::Io`], naming `path`, if the temporary file cannot be
/// written or renamed (it is removed then: a failed save leaves no
/// `<path>.tmp` behind and the old file, if any, untouched), and
/// [`CheckpointError::UnsupportedScalar`] if `S` is not `f32` or `f64`.
/// `std::io::Error` has a `From` conversion for callers returning
/// `std::io::Result`.
#[cfg(feature = "std")]
pub fn save<M: Model, S: Scalar>(
    path: impl AsRef<std::path::Path>,
    params: &M::Params<S>,
) -> Result<(), CheckpointError> {
    use std::io::Write;
    let header = header_bytes::<M, S>()?;
    let kind = as_kind(params.as_flat())?;
    write_atomic(path.as_ref(), |w| {
        w.write_all(&header)?;
        match kind {
            Kind::F32(x) => x.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
            Kind::F64(x) => x.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        }
    })
}

/// Writes `path` atomically: `write` fills `<path>.tmp` (buffered), which is
/// synced and renamed over `path`; on failure the temporary file is removed.
#[cfg(feature = "std")]
fn write_atomic(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    use std::borrow::ToOwned;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    };
    let fail = |op, source| {
        // Nothing to do if the temporary file was never created.
        let _ = std::fs::remove_file(&tmp);
        CheckpointError::Io { op, path: path.to_owned(), source }
    };
    write().map_err(|e| fail(IoOp::Write, e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(IoOp::Rename, e))?;
    // Make the rename durable where directories can be synced (best effort).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads `path` and loads it into `params` with [`load_from_bytes`] (every
/// check on, non-finite values refused).
///
/// # Errors
/// [`CheckpointError::Io`] naming `path` if it cannot be read, else as
/// [`load_from_bytes`].
#[cfg(feature = "std")]
pub fn load<M: Model, S: Scalar>(
    path: impl AsRef<std::path::Path>,
    params: &mut M::Params<S>,
) -> Result<(), CheckpointError> {
    load_with::<M, S>(path, params, LoadOptions::new())
}

/// [`load`] with the checks of `options`.
///
/// # Errors
/// As [`load`].
#[cfg(feature = "std")]
pub fn load_with<M: Model, S: Scalar>(
    path: impl AsRef<std::path::Path>,
    params: &mut M::Params<S>,
    options: LoadOptions,
) -> Result<(), CheckpointError> {
    let bytes = read_file(path.as_ref())?;
    load_from_bytes_with::<M, S>(&bytes, params, options)
}

// ---------------------------------------------------------------- scalars

#[cfg(feature = "alloc")]
enum Kind<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

enum KindMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

fn scalar_kind<S: Scalar>() -> Result<bool, CheckpointError> {
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        Ok(true)
    } else if TypeId::of::<S>() == TypeId::of::<f64>() {
        Ok(false)
    } else {
        Err(CheckpointError::UnsupportedScalar(S::DTYPE))
    }
}

#[cfg(feature = "alloc")]
fn as_kind<S: Scalar>(x: &[S]) -> Result<Kind<'_>, CheckpointError> {
    Ok(if scalar_kind::<S>()? {
        // SAFETY: `S` is `f32` (same `TypeId`), so this is the same slice.
        Kind::F32(unsafe { core::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
    } else {
        // SAFETY: `S` is `f64` (same `TypeId`), so this is the same slice.
        Kind::F64(unsafe { core::slice::from_raw_parts(x.as_ptr() as *const f64, x.len()) })
    })
}

fn as_kind_mut<S: Scalar>(x: &mut [S]) -> Result<KindMut<'_>, CheckpointError> {
    Ok(if scalar_kind::<S>()? {
        // SAFETY: `S` is `f32` (same `TypeId`); the exclusive borrow moves into the result.
        KindMut::F32(unsafe { core::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
    } else {
        // SAFETY: `S` is `f64` (same `TypeId`); the exclusive borrow moves into the result.
        KindMut::F64(unsafe { core::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f64, x.len()) })
    })
}

// ---------------------------------------------------------------- tables

/// The name of the padding tensor of a deployable file (zero bytes that
/// round `QParams` to a multiple of 4 bytes).
pub const PAD_TENSOR: &str = "__pad__";

/// Element type of a listed tensor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
    I8,
    U8,
}

/// One tensor a file lists: name, safetensors dtype, shape, byte range in the data section.
#[derive(Clone, Copy)]
struct Entry {
    name: &'static str,
    dtype: &'static str,
    elem: Elem,
    shape: &'static [usize],
    begin: u64,
    end: u64,
}

/// The tensors a file lists, in order: the one description from which
/// training checkpoints and deployable files are both written and checked.
#[derive(Clone, Copy)]
enum Table {
    /// A training checkpoint: every tensor of `TENSORS`, as `elem` (F32 or F64).
    Params { tensors: &'static [TensorInfo], elem: Elem },
    /// A deployable file: `QTENSORS` (`tensors`, the model's `TENSORS`,
    /// give the packed ternary tensors' widths).
    Deploy { qtensors: &'static [QTensorInfo], tensors: &'static [TensorInfo] },
}

impl Table {
    fn params<M: Model, S: Scalar>() -> Table {
        Table::Params { tensors: M::TENSORS, elem: if S::BYTES == 8 { Elem::F64 } else { Elem::F32 } }
    }

    fn deploy<M: Model>() -> Table {
        Table::Deploy { qtensors: M::QTENSORS, tensors: M::TENSORS }
    }

    fn is_deploy(self) -> bool {
        matches!(self, Table::Deploy { .. })
    }

    fn len(self) -> usize {
        match self {
            Table::Params { tensors, .. } => tensors.len(),
            Table::Deploy { qtensors, .. } => qtensors.len(),
        }
    }

    fn entry(self, i: usize) -> Option<Entry> {
        match self {
            Table::Params { tensors, elem } => {
                let t = tensors.get(i)?;
                let (dtype, b) = if elem == Elem::F64 { ("F64", 8) } else { ("F32", 4) };
                let (begin, end) = (t.offset as u64 * b, (t.offset + t.len) as u64 * b);
                Some(Entry { name: t.name, dtype, elem, shape: t.shape, begin, end })
            }
            Table::Deploy { qtensors, .. } => {
                let t = qtensors.get(i)?;
                let elem = match t.dtype {
                    Dtype::F32 => Elem::F32,
                    Dtype::I8 => Elem::I8,
                    Dtype::U8 => Elem::U8,
                };
                let (begin, end) = (t.offset as u64, (t.offset + t.bytes) as u64);
                Some(Entry { name: t.name, dtype: t.dtype.name(), elem, shape: t.shape, begin, end })
            }
        }
    }

    fn entries(self) -> impl Iterator<Item = Entry> {
        (0..self.len()).map_while(move |i| self.entry(i))
    }

    /// Bytes of the data section.
    fn data_len(self) -> u64 {
        self.entries().map(|e| e.end.saturating_sub(e.begin)).sum()
    }

    /// The `in` width of the latent `[out, in]` tensor `name`.
    fn in_width(self, name: &str) -> Option<usize> {
        match self {
            Table::Deploy { tensors, .. } => tensors.iter().find(|t| t.name == name)?.shape.get(1).copied(),
            Table::Params { .. } => None,
        }
    }
}

// ---------------------------------------------------------------- reading

/// Validates a whole checkpoint for model `M` with scalar `S` and returns
/// its data section (exactly the bytes of `M::Params<S>`, little-endian).
/// Every check is on: this succeeds exactly when [`load_from_bytes`] does.
///
/// Never panics, whatever the bytes; needs no allocator.
///
/// # Errors
/// The first problem found, as a [`CheckpointError`]: the structure (header,
/// metadata, tensors, length) first, then non-finite values
/// ([`CheckpointError::NonFinite`], the first in file order).
pub fn validate<M: Model, S: Scalar>(bytes: &[u8]) -> Result<&[u8], CheckpointError> {
    validate_with::<M, S>(bytes, LoadOptions::new())
}

/// [`validate`] with the checks of `options`.
///
/// # Errors
/// As [`validate`].
pub fn validate_with<M: Model, S: Scalar>(bytes: &[u8], options: LoadOptions) -> Result<&[u8], CheckpointError> {
    scalar_kind::<S>()?;
    check::<M>(bytes, Table::params::<M, S>(), options)
}

/// Checks a whole file against `table` (and `M`'s metadata) and returns its
/// data section: the one reader of training checkpoints and deployable
/// files. Never panics; needs no allocator.
fn check<M: Model>(bytes: &[u8], table: Table, options: LoadOptions) -> Result<&[u8], CheckpointError> {
    if table.len() > MAX_TENSORS {
        return Err(CheckpointError::TooManyTensors(table.len()));
    }
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(CheckpointError::Truncated { len: bytes.len() });
    };
    let n = u64::from_le_bytes(*len);
    let limit = MAX_HEADER.min(rest.len() as u64);
    if n > limit {
        return Err(CheckpointError::HeaderTooLarge { len: n, limit });
    }
    let (header, data) = rest.split_at(n as usize);
    if let Err(e) = core::str::from_utf8(header) {
        return Err(CheckpointError::BadJson { offset: 8 + e.valid_up_to() });
    }
    let mut p = Parser { b: header, i: 0 };
    let found = p.top(table)?;
    check_metadata::<M>(found.meta, table.is_deploy())?;
    if let Some(e) = found.first_error {
        return Err(e);
    }
    for (i, e) in table.entries().enumerate() {
        if found.seen[i / 64] & (1 << (i % 64)) == 0 {
            return Err(CheckpointError::MissingTensor(e.name));
        }
    }
    let expected = table.data_len();
    if data.len() as u64 != expected {
        return Err(CheckpointError::DataLength { found: data.len(), expected: expected as usize });
    }
    check_values(table, data, options)?;
    Ok(data)
}

/// The metadata checks, in this order: format, version, kind (a training
/// checkpoint has none, a deployable file `deploy`), the quantization
/// scheme (deployable files), the spec hash, the model name's presence.
fn check_metadata<M: Model>(meta: Option<[Option<&[u8]>; 6]>, deploy: bool) -> Result<(), CheckpointError> {
    let m = meta.ok_or(CheckpointError::MissingMetadata("__metadata__"))?;
    for (k, want) in [(0, FORMAT), (1, FORMAT_VERSION)] {
        let raw = m[k].ok_or(CheckpointError::MissingMetadata(META_KEYS[k]))?;
        if !jeq(raw, want) {
            return Err(CheckpointError::BadMetadata { key: META_KEYS[k], found: Text::from_raw(raw), expected: want });
        }
    }
    let found = match m[4] {
        None => FileKind::Training,
        Some(k) if jeq(k, KIND_DEPLOY) => FileKind::Deploy,
        Some(_) => FileKind::Other,
    };
    let expected = if deploy { FileKind::Deploy } else { FileKind::Training };
    if found != expected {
        return Err(CheckpointError::WrongKind { found, expected, kind: m[4].map(Text::from_raw) });
    }
    if deploy {
        let q = m[5].ok_or(CheckpointError::MissingMetadata("quant"))?;
        if !jeq(q, M::QUANT.name()) {
            return Err(CheckpointError::QuantMismatch { found: Text::from_raw(q), expected: M::QUANT.name() });
        }
    }
    let sha = m[2].ok_or(CheckpointError::MissingMetadata("spec_sha256"))?;
    if !jeq(sha, M::SPEC_SHA256) {
        return Err(CheckpointError::SpecMismatch { found: Text::from_raw(sha), expected: M::SPEC_SHA256 });
    }
    m[3].ok_or(CheckpointError::MissingMetadata("model"))?;
    Ok(())
}

/// The value checks, tensor by tensor in file order: f32/f64 values finite
/// (if `options` say so), scales (`*.scale` of a deployable file) `> 0`,
/// int8 codes not -128, packed ternary codes valid, `__pad__` zero.
fn check_values(table: Table, data: &[u8], options: LoadOptions) -> Result<(), CheckpointError> {
    for e in table.entries() {
        // The offsets were checked against the table and the length against its sum.
        let Some(x) = usize::try_from(e.begin).ok().zip(usize::try_from(e.end).ok()).and_then(|(b, n)| data.get(b..n))
        else {
            continue;
        };
        let non_finite = |(index, value)| CheckpointError::NonFinite {
            tensor: e.name,
            index,
            position: Dims::unravel(index, e.shape),
            value,
        };
        match e.elem {
            Elem::F32 => {
                if options.check_finite {
                    first_non_finite_f32(x).map(non_finite).map_or(Ok(()), Err)?;
                }
                if table.is_deploy() && e.name.ends_with(".scale") {
                    let (words, _) = x.as_chunks::<4>();
                    if let Some((index, w)) = first(words, |w| f32::from_le_bytes(*w) <= 0.0) {
                        let value = f32::from_le_bytes(*w);
                        return Err(CheckpointError::BadScale { tensor: e.name, index, value });
                    }
                }
            }
            Elem::F64 => {
                if options.check_finite {
                    first_non_finite_f64(x).map(non_finite).map_or(Ok(()), Err)?;
                }
            }
            Elem::I8 => {
                if let Some((index, _)) = first(x, |&b| b == 0x80) {
                    let position = Dims::unravel(index, e.shape);
                    return Err(CheckpointError::BadCode { tensor: e.name, index, position, value: i8::MIN });
                }
            }
            Elem::U8 if e.name == PAD_TENSOR => {
                if let Some((index, &value)) = first(x, |&b| b != 0) {
                    return Err(CheckpointError::NonZeroPad { index, value });
                }
            }
            Elem::U8 => {
                // Packed ternary `[out, ceil(in / 4)]`; `in` is the latent tensor's width.
                if let (Some(&out), Some(&nb)) = (e.shape.first(), e.shape.get(1)) {
                    let inp = table.in_width(e.name).filter(|&i| crate::quant::ternary_row_bytes(i) == nb);
                    let inp = inp.unwrap_or(nb.saturating_mul(4));
                    if out.checked_mul(nb) == Some(x.len()) {
                        crate::quant::check_ternary(x, out, inp)
                            .map_err(|error| CheckpointError::BadTernary { tensor: e.name, error })?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Exponent bits of an `f32`: all ones for NaN and the infinities only.
const F32_EXP: u32 = 0x7f80_0000;
/// Exponent bits of an `f64`: all ones for NaN and the infinities only.
const F64_EXP: u64 = 0x7ff0_0000_0000_0000;

/// The flat index and value of the first NaN or infinity in little-endian
/// `f32` data (a trailing partial value is ignored).
fn first_non_finite_f32(data: &[u8]) -> Option<(usize, f64)> {
    let (words, _) = data.as_chunks::<4>();
    let bad = |w: &[u8; 4]| u32::from_le_bytes(*w) & F32_EXP == F32_EXP;
    first(words, bad).map(|(i, w)| (i, f64::from(f32::from_le_bytes(*w))))
}

/// As [`first_non_finite_f32`], for `f64` data.
fn first_non_finite_f64(data: &[u8]) -> Option<(usize, f64)> {
    let (words, _) = data.as_chunks::<8>();
    let bad = |w: &[u8; 8]| u64::from_le_bytes(*w) & F64_EXP == F64_EXP;
    first(words, bad).map(|(i, w)| (i, f64::from_le_bytes(*w)))
}

/// The first `x` with `bad(x)`, and its index. Blocks are tested with a
/// non-short-circuit `|`, which vectorises; only a block with a hit is
/// searched element by element.
#[inline(always)]
fn first<T>(xs: &[T], bad: impl Fn(&T) -> bool) -> Option<(usize, &T)> {
    const BLOCK: usize = 256;
    for (b, block) in xs.chunks(BLOCK).enumerate() {
        if block.iter().fold(false, |any, x| any | bad(x)) {
            return block.iter().enumerate().find(|(_, x)| bad(x)).map(|(i, x)| (b * BLOCK + i, x));
        }
    }
    None
}

/// Validates `bytes` (every check on, non-finite values refused) and copies
/// the parameters into `params`, which are left untouched on any error.
///
/// # Errors
/// As [`validate`].
pub fn load_from_bytes<M: Model, S: Scalar>(bytes: &[u8], params: &mut M::Params<S>) -> Result<(), CheckpointError> {
    load_from_bytes_with::<M, S>(bytes, params, LoadOptions::new())
}

/// [`load_from_bytes`] with the checks of `options`.
///
/// # Errors
/// As [`validate`].
pub fn load_from_bytes_with<M: Model, S: Scalar>(
    bytes: &[u8],
    params: &mut M::Params<S>,
    options: LoadOptions,
) -> Result<(), CheckpointError> {
    let data = validate_with::<M, S>(bytes, options)?;
    let flat = params.as_flat_mut();
    let expected = core::mem::size_of_val(flat);
    if data.len() != expected {
        return Err(CheckpointError::DataLength { found: data.len(), expected });
    }
    match as_kind_mut(flat)? {
        KindMut::F32(x) => {
            for (v, c) in x.iter_mut().zip(data.chunks_exact(4)) {
                let mut b = [0u8; 4];
                b.copy_from_slice(c);
                *v = f32::from_le_bytes(b);
            }
        }
        KindMut::F64(x) => {
            for (v, c) in x.iter_mut().zip(data.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                *v = f64::from_le_bytes(b);
            }
        }
    }
    Ok(())
}

/// Validates `bytes` (every check on, non-finite values refused) and
/// returns the parameters in place, without copying and without an
/// allocator.
///
/// Needs a little-endian target ([`CheckpointError::BigEndian`] otherwise)
/// and the data section aligned in memory for `S`
/// ([`CheckpointError::Misaligned`] otherwise; the writer puts the data at a
/// file offset that is a multiple of 8, so a buffer aligned to 8 works).
///
/// # Errors
/// As [`validate`], and the two above.
pub fn view<M: Model, S: Scalar>(bytes: &[u8]) -> Result<&M::Params<S>, CheckpointError>
where
    M::Params<S>: ScalarStruct<S>,
{
    view_with::<M, S>(bytes, LoadOptions::new())
}

/// [`view`] with the checks of `options` (e.g. without the finiteness
/// check, which reads every value once, for weights checked at build time).
///
/// # Errors
/// As [`view`].
pub fn view_with<M: Model, S: Scalar>(bytes: &[u8], options: LoadOptions) -> Result<&M::Params<S>, CheckpointError>
where
    M::Params<S>: ScalarStruct<S>,
{
    let data = validate_with::<M, S>(bytes, options)?;
    if !cfg!(target_endian = "little") {
        return Err(CheckpointError::BigEndian);
    }
    let size = core::mem::size_of::<M::Params<S>>();
    if data.len() != size {
        return Err(CheckpointError::DataLength { found: data.len(), expected: size });
    }
    let align = core::mem::align_of::<M::Params<S>>();
    let addr_mod = data.as_ptr() as usize % align;
    if addr_mod != 0 {
        return Err(CheckpointError::Misaligned { addr_mod, align });
    }
    // SAFETY:
    // - size: `data` is exactly `size_of::<M::Params<S>>()` bytes (checked above);
    // - alignment: `data.as_ptr()` is a multiple of `align_of::<M::Params<S>>()` (checked);
    // - validity: `M::Params<S>: ScalarStruct<S>`, so it is `#[repr(C)]` arrays of `S`
    //   with no padding, and `validate` checked (via `TypeId`) that `S` is `f32` or `f64`,
    //   for which every bit pattern is a valid value; on a little-endian target (checked)
    //   the file's little-endian bytes are those values, in `TENSORS` order (`validate`
    //   checked every tensor's offsets against `TENSORS`);
    // - lifetime and aliasing: the result borrows `bytes` immutably for as long as it lives,
    //   and `ScalarStruct` types have no interior mutability.
    Ok(unsafe { &*(data.as_ptr() as *const M::Params<S>) })
}

// ---------------------------------------------------------------- deployable files

/// Bytes before the data section of `M`'s deployable file ([`export_bytes`]):
/// the 8-byte length, the JSON header and its padding (a multiple of 8).
pub fn export_header_len<M: Model>() -> usize {
    table_header_len::<M>(Table::deploy::<M>())
}

/// Writes everything before the data section of `M`'s deployable file into
/// `buf` and returns its length, [`export_header_len`]; the data section to
/// follow is the bytes of `M::QParams` (f32 values little-endian).
///
/// # Errors
/// [`CheckpointError::BufferTooSmall`].
pub fn write_export_header<M: Model>(buf: &mut [u8]) -> Result<usize, CheckpointError> {
    write_table_header::<M>(buf, Table::deploy::<M>())
}

/// Swaps the bytes of every f32 value of deployable-parameter bytes `x`
/// (little-endian file order <-> a big-endian target's; a no-op on a
/// little-endian target).
fn swap_f32_to_le(table: Table, x: &mut [u8]) {
    if cfg!(target_endian = "little") {
        return;
    }
    for e in table.entries().filter(|e| e.elem == Elem::F32) {
        if let Some(t) = x.get_mut(e.begin as usize..e.end as usize) {
            t.chunks_exact_mut(4).for_each(|w| w.reverse());
        }
    }
}

/// The size of `M::QParams` must be the bytes `QTENSORS` lists.
fn check_qparams_size<M: Model>(table: Table) -> Result<(), CheckpointError> {
    let size = core::mem::size_of::<M::QParams>();
    if table.data_len() != size as u64 {
        return Err(CheckpointError::DataLength { found: size, expected: table.data_len() as usize });
    }
    if table.len() > MAX_TENSORS {
        return Err(CheckpointError::TooManyTensors(table.len()));
    }
    Ok(())
}

/// A whole deployable file of `q` in a new vector: the header (metadata
/// `kind = "deploy"` and `quant`, one tensor per [`Model::QTENSORS`] entry),
/// then exactly the bytes of `q`. The values are written as they are (a
/// file that loading would refuse, e.g. with a NaN, can be written).
///
/// # Errors
/// [`CheckpointError::DataLength`] if `size_of::<M::QParams>()` is not the
/// bytes `QTENSORS` lists (never for a generated model).
#[cfg(feature = "alloc")]
pub fn export_bytes<M: Model>(q: &M::QParams) -> Result<alloc::vec::Vec<u8>, CheckpointError> {
    let table = Table::deploy::<M>();
    check_qparams_size::<M>(table)?;
    let h = export_header_len::<M>();
    let mut v = alloc::vec![0u8; h];
    write_export_header::<M>(&mut v)?;
    v.extend_from_slice(crate::pod_bytes(q));
    if let Some(data) = v.get_mut(h..) {
        swap_f32_to_le(table, data);
    }
    Ok(v)
}

/// Quantizes `params` with [`Model::quantize`] and saves the deployable
/// file ([`export_bytes`]) to `path` atomically, as [`save`] does.
///
/// # Errors
/// As [`save`] ([`CheckpointError::Io`] naming `path`), and as [`export_bytes`].
#[cfg(feature = "std")]
pub fn export<M: Model>(path: impl AsRef<std::path::Path>, params: &M::Params<f32>) -> Result<(), CheckpointError> {
    let mut q = crate::boxed_zeroed::<M::QParams>();
    M::quantize(params, &mut q);
    let bytes = export_bytes::<M>(&q)?;
    write_atomic(path.as_ref(), |w| std::io::Write::write_all(w, &bytes))
}

/// Validates a whole deployable file of `M` (every check on) and returns
/// its data section, exactly the bytes of `M::QParams`: the header and
/// metadata (`kind = "deploy"`, the model's `quant` scheme and spec hash),
/// every tensor's name, dtype, shape and offsets against
/// [`Model::QTENSORS`] and nothing else, the data length, then the values
/// in file order: f32 values finite, scales `> 0`, int8 codes not -128,
/// packed ternary codes valid ([`crate::quant::check_ternary`]), `__pad__`
/// zero. Succeeds exactly when [`load_q_from_bytes`] does.
///
/// Never panics, whatever the bytes; needs no allocator.
///
/// # Errors
/// The first problem found, as a [`CheckpointError`].
pub fn validate_q<M: Model>(bytes: &[u8]) -> Result<&[u8], CheckpointError> {
    validate_q_with::<M>(bytes, LoadOptions::new())
}

/// [`validate_q`] with the checks of `options` ([`LoadOptions::check_finite`]
/// `false` accepts NaN and infinite f32 values, scales included; the other
/// value checks always run).
///
/// # Errors
/// As [`validate_q`].
pub fn validate_q_with<M: Model>(bytes: &[u8], options: LoadOptions) -> Result<&[u8], CheckpointError> {
    let table = Table::deploy::<M>();
    check_qparams_size::<M>(table)?;
    check::<M>(bytes, table, options)
}

/// Validates a deployable file ([`validate_q`], every check on) and returns
/// the parameters in place, without copying and without an allocator: for
/// weights in flash.
///
/// Needs a little-endian target ([`CheckpointError::BigEndian`]) and the
/// data section aligned in memory for `M::QParams` (4 bytes;
/// [`CheckpointError::Misaligned`] otherwise; the writer puts the data at a
/// file offset that is a multiple of 8).
///
/// # Errors
/// As [`validate_q`], and the two above.
pub fn view_q<M: Model>(bytes: &[u8]) -> Result<&M::QParams, CheckpointError> {
    view_q_with::<M>(bytes, LoadOptions::new())
}

/// [`view_q`] with the checks of `options`.
///
/// # Errors
/// As [`view_q`].
pub fn view_q_with<M: Model>(bytes: &[u8], options: LoadOptions) -> Result<&M::QParams, CheckpointError> {
    let data = validate_q_with::<M>(bytes, options)?;
    if !cfg!(target_endian = "little") {
        return Err(CheckpointError::BigEndian);
    }
    let size = core::mem::size_of::<M::QParams>();
    if data.len() != size {
        return Err(CheckpointError::DataLength { found: data.len(), expected: size });
    }
    let align = core::mem::align_of::<M::QParams>();
    let addr_mod = data.as_ptr() as usize % align;
    if addr_mod != 0 {
        return Err(CheckpointError::Misaligned { addr_mod, align });
    }
    // SAFETY:
    // - size: `data` is exactly `size_of::<M::QParams>()` bytes (checked above);
    // - alignment: `data.as_ptr()` is a multiple of `align_of::<M::QParams>()` (checked);
    // - validity: `M::QParams: Pod` (the `Model` bound), so it has no padding and every
    //   bit pattern of its bytes is a valid value (its fields are arrays of f32, i8 and
    //   u8); on a little-endian target (checked) the file's little-endian f32 bytes are
    //   those values; `validate_q` checked the layout against `QTENSORS` and the values
    //   (finite, scales > 0, codes -127..=127, ternary codes, zero padding);
    // - lifetime and aliasing: the result borrows `bytes` immutably for as long as it
    //   lives, and `Pod` types have no interior mutability.
    Ok(unsafe { &*(data.as_ptr() as *const M::QParams) })
}

/// Validates a deployable file ([`validate_q`], every check on) and copies
/// it into `q`, which is left untouched on any error. Needs no alignment.
///
/// # Errors
/// As [`validate_q`].
pub fn load_q_from_bytes<M: Model>(bytes: &[u8], q: &mut M::QParams) -> Result<(), CheckpointError> {
    load_q_from_bytes_with::<M>(bytes, q, LoadOptions::new())
}

/// [`load_q_from_bytes`] with the checks of `options`.
///
/// # Errors
/// As [`validate_q`].
pub fn load_q_from_bytes_with<M: Model>(
    bytes: &[u8],
    q: &mut M::QParams,
    options: LoadOptions,
) -> Result<(), CheckpointError> {
    let data = validate_q_with::<M>(bytes, options)?;
    let dst = crate::pod_bytes_mut(q);
    if dst.len() != data.len() {
        return Err(CheckpointError::DataLength { found: data.len(), expected: dst.len() });
    }
    dst.copy_from_slice(data);
    swap_f32_to_le(Table::deploy::<M>(), dst);
    Ok(())
}

/// Reads `path` and loads the deployable file into `q` with
/// [`load_q_from_bytes`] (every check on).
///
/// # Errors
/// [`CheckpointError::Io`] naming `path` if it cannot be read, else as
/// [`load_q_from_bytes`].
#[cfg(feature = "std")]
pub fn load_q<M: Model>(path: impl AsRef<std::path::Path>, q: &mut M::QParams) -> Result<(), CheckpointError> {
    load_q_with::<M>(path, q, LoadOptions::new())
}

/// [`load_q`] with the checks of `options`.
///
/// # Errors
/// As [`load_q`].
#[cfg(feature = "std")]
pub fn load_q_with<M: Model>(
    path: impl AsRef<std::path::Path>,
    q: &mut M::QParams,
    options: LoadOptions,
) -> Result<(), CheckpointError> {
    let bytes = read_file(path.as_ref())?;
    load_q_from_bytes_with::<M>(&bytes, q, options)
}

/// The bytes of the file `path` ([`CheckpointError::Io`] naming it on failure).
#[cfg(feature = "std")]
fn read_file(path: &std::path::Path) -> Result<std::vec::Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Io {
        op: IoOp::Read,
        path: std::borrow::ToOwned::to_owned(path),
        source,
    })
}

const META_KEYS: [&str; 6] = ["format", "format_version", "spec_sha256", "model", "kind", "quant"];

struct Found<'a> {
    meta: Option<[Option<&'a [u8]>; 6]>,
    seen: [u64; MAX_TENSORS / 64],
    first_error: Option<CheckpointError>,
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

fn hex(c: u8) -> Option<u32> {
    (c as char).to_digit(16)
}

fn hex4_at(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i.checked_add(4)?)?;
    s.iter().try_fold(0u32, |acc, &c| Some(acc * 16 + hex(c)?))
}

/// Decodes the next character of a validated JSON string body.
fn next_char(raw: &[u8], i: &mut usize) -> Option<char> {
    let c = *raw.get(*i)?;
    if c == b'\\' {
        let e = *raw.get(*i + 1)?;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4_at(raw, *i + 2)?;
                if (0xD800..0xDC00).contains(&hi) {
                    let lo = hex4_at(raw, *i + 8)?;
                    *i += 12;
                    return char::from_u32(0x10000 + ((hi - 0xD800) << 10) + lo.checked_sub(0xDC00)?);
                }
                *i += 6;
                return char::from_u32(hi);
            }
            _ => return None,
        };
        *i += 2;
        Some(ch)
    } else {
        let len = match c {
            0..0x80 => 1,
            0xC0..0xE0 => 2,
            0xE0..0xF0 => 3,
            _ => 4,
        };
        let s = raw.get(*i..*i + len)?;
        let ch = core::str::from_utf8(s).ok()?.chars().next()?;
        *i += len;
        Some(ch)
    }
}

/// Whether the JSON string body `raw` decodes to `s`.
fn jeq(raw: &[u8], s: &str) -> bool {
    let mut i = 0;
    let mut it = s.chars();
    loop {
        match (next_char(raw, &mut i), it.next()) {
            (None, None) => return i == raw.len(),
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

impl<'a> Parser<'a> {
    fn err(&self) -> CheckpointError {
        CheckpointError::BadJson { offset: 8 + self.i }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), CheckpointError> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err())
        }
    }

    /// After a member: `,` (true: another member follows) or `close` (false).
    fn sep(&mut self, close: u8) -> Result<bool, CheckpointError> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(self.err()),
        }
    }

    /// `{` then whether the object has members (false: it was `{}`).
    fn open(&mut self, open: u8, close: u8) -> Result<bool, CheckpointError> {
        self.eat(open)?;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// A string; returns its body (between the quotes, escapes validated).
    fn string(&mut self) -> Result<&'a [u8], CheckpointError> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.peek() {
                None => return Err(self.err()),
                Some(b'"') => {
                    let raw = self.b.get(start..self.i).ok_or_else(|| self.err())?;
                    self.i += 1;
                    return Ok(raw);
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let cp = hex4_at(self.b, self.i).ok_or_else(|| self.err())?;
                            if (0xDC00..0xE000).contains(&cp) {
                                return Err(self.err());
                            }
                            self.i += 4;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.peek() != Some(b'\\') || self.b.get(self.i + 1) != Some(&b'u') {
                                    return Err(self.err());
                                }
                                self.i += 2;
                                match hex4_at(self.b, self.i) {
                                    Some(lo) if (0xDC00..0xE000).contains(&lo) => self.i += 4,
                                    _ => return Err(self.err()),
                                }
                            }
                        }
                        _ => return Err(self.err()),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.err()),
                Some(_) => self.i += 1,
            }
        }
    }

    /// A non-negative integer without sign, fraction or exponent.
    fn uint(&mut self) -> Result<u64, CheckpointError> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            if self.i > start && v == 0 {
                return Err(self.err()); // leading zero
            }
            v = v.checked_mul(10).and_then(|v| v.checked_add((c - b'0') as u64)).ok_or_else(|| self.err())?;
            self.i += 1;
        }
        if self.i == start || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(self.err());
        }
        Ok(v)
    }

    fn top(&mut self, table: Table) -> Result<Found<'a>, CheckpointError> {
        let mut f = Found { meta: None, seen: [0; MAX_TENSORS / 64], first_error: None };
        if self.open(b'{', b'}')? {
            loop {
                let key_at = self.i;
                let key = self.string()?;
                self.eat(b':')?;
                if jeq(key, "__metadata__") {
                    if f.meta.is_some() {
                        self.i = key_at;
                        self.ws();
                        return Err(self.err());
                    }
                    f.meta = Some(self.metadata()?);
                } else {
                    self.tensor(key, key_at, &mut f, table)?;
                }
                if !self.sep(b'}')? {
                    break;
                }
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return Err(self.err());
        }
        Ok(f)
    }

    fn metadata(&mut self) -> Result<[Option<&'a [u8]>; 6], CheckpointError> {
        let mut m = [None; 6];
        if self.open(b'{', b'}')? {
            loop {
                let key_at = self.i;
                let key = self.string()?;
                self.eat(b':')?;
                let value = self.string()?;
                if let Some(k) = META_KEYS.iter().position(|k| jeq(key, k)) {
                    if m[k].is_some() {
                        self.i = key_at;
                        self.ws();
                        return Err(self.err());
                    }
                    m[k] = Some(value);
                }
                if !self.sep(b'}')? {
                    break;
                }
            }
        }
        Ok(m)
    }

    fn tensor(&mut self, key: &'a [u8], key_at: usize, f: &mut Found<'a>, table: Table) -> Result<(), CheckpointError> {
        let (mut dtype, mut shape, mut offsets) = (None, None, None);
        let dup = |p: &mut Self, at: usize| {
            p.i = at;
            p.ws();
            p.err()
        };
        if self.open(b'{', b'}')? {
            loop {
                let at = self.i;
                let k = self.string()?;
                self.eat(b':')?;
                if jeq(k, "dtype") {
                    if dtype.is_some() {
                        return Err(dup(self, at));
                    }
                    dtype = Some(self.string()?);
                } else if jeq(k, "shape") {
                    if shape.is_some() {
                        return Err(dup(self, at));
                    }
                    let mut d = Dims { dims: [0; 8], n: 0 };
                    if self.open(b'[', b']')? {
                        loop {
                            d.push(self.uint()?);
                            if !self.sep(b']')? {
                                break;
                            }
                        }
                    }
                    shape = Some(d);
                } else if jeq(k, "data_offsets") {
                    if offsets.is_some() {
                        return Err(dup(self, at));
                    }
                    self.eat(b'[')?;
                    let begin = self.uint()?;
                    self.eat(b',')?;
                    let end = self.uint()?;
                    self.eat(b']')?;
                    offsets = Some([begin, end]);
                } else {
                    return Err(dup(self, at));
                }
                if !self.sep(b'}')? {
                    break;
                }
            }
        }
        let (Some(dtype), Some(shape), Some(offsets)) = (dtype, shape, offsets) else {
            self.i -= 1; // at the closing brace
            return Err(self.err());
        };
        let Some((idx, t)) = table.entries().enumerate().find(|(_, t)| jeq(key, t.name)) else {
            f.first_error.get_or_insert(CheckpointError::UnexpectedTensor(Text::from_raw(key)));
            return Ok(());
        };
        let (word, bit) = (idx / 64, 1u64 << (idx % 64));
        let Some(w) = f.seen.get_mut(word) else {
            return Err(CheckpointError::TooManyTensors(table.len()));
        };
        if *w & bit != 0 {
            return Err(dup(self, key_at)); // the same tensor twice
        }
        *w |= bit;
        let expected = [t.begin, t.end];
        let e = if !jeq(dtype, t.dtype) {
            CheckpointError::WrongDtype { tensor: t.name, found: Text::from_raw(dtype), expected: t.dtype }
        } else if !shape.matches(t.shape) {
            CheckpointError::WrongShape { tensor: t.name, found: shape, expected: t.shape }
        } else if offsets != expected {
            CheckpointError::WrongOffsets { tensor: t.name, found: offsets, expected }
        } else {
            return Ok(());
        };
        f.first_error.get_or_insert(e);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_decode_escapes() {
        assert!(jeq(br#"a\"b\\c\u0041\ud83d\ude00"#, "a\"b\\cA\u{1F600}"));
        assert!(!jeq(b"ab", "abc"));
        assert!(!jeq(b"abc", "ab"));
        let mut p = Parser { b: br#""\ud800x""#, i: 0 };
        assert!(p.string().is_err());
        let mut p = Parser { b: br#""\udc00""#, i: 0 };
        assert!(p.string().is_err());
        let mut p = Parser { b: b"\"a\x01\"", i: 0 };
        assert!(p.string().is_err());
    }

    #[test]
    fn integers_are_strict() {
        for (s, ok) in [("0", Some(0)), ("123", Some(123)), ("01", None), ("-1", None), ("1.0", None), ("1e3", None)] {
            let mut p = Parser { b: s.as_bytes(), i: 0 };
            assert_eq!(p.uint().ok(), ok, "{s}");
        }
        let mut p = Parser { b: b"18446744073709551616", i: 0 };
        assert!(p.uint().is_err());
    }
}
