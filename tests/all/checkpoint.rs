//! Safetensors checkpoints (`nl_runtime::checkpoint`): round trips, atomic
//! saves and their errors (naming the path), rejection of truncated,
//! corrupted, foreign and mistyped files and of NaN / infinite values
//! (naming the tensor and index, unless opted out), plus deterministic
//! property tests that reading never panics and that every reader agrees.

use std::path::{Path, PathBuf};

use crate::shipped::{micro, micro_memory};
use nl::nl_model;
use nl_runtime::checkpoint::{self, CheckpointError, IoOp, LoadOptions};
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, Flat, Model, Scalar};

nl_model! { r#"
name = "tiny"
d_model = 4
heads = 2
vocab = 5
seq_len = 3
window = 2
[memory]
rule = "titans"
composition = "mag"
[[memory.levels]]
period = 1
"# }

type MM = micro_memory::Model;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nl-checkpoint-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn params<M: Model, S: nl_runtime::Scalar>(seed: u64) -> Box<M::Params<S>> {
    let mut p = boxed_zeroed::<M::Params<S>>();
    M::init(&mut p, seed);
    p
}

fn bits(p: &micro_memory::Params<f32>) -> Vec<u32> {
    p.as_flat().iter().map(|x| x.to_bits()).collect()
}

fn stream_logits(p: &micro_memory::Params<f32>) -> Vec<u32> {
    let mut st = boxed_zeroed::<micro_memory::Stream<f32>>();
    let mut out = Vec::new();
    for t in [3u32, 7, 101, 42, 0, 255, 9, 9, 9, 17, 64, 200] {
        out.extend(MM::step(&mut st, p, t).iter().map(|x| x.to_bits()));
    }
    out
}

fn valid_file() -> (Box<micro_memory::Params<f32>>, Vec<u8>) {
    let p = params::<MM, f32>(7);
    let bytes = checkpoint::to_bytes::<MM, f32>(&p).unwrap();
    (p, bytes)
}

#[test]
fn spec_hash_is_the_sha256_of_the_spec() {
    assert_eq!(micro_memory::SPEC_SHA256, nl_spec::sha256_hex(micro_memory::SPEC.as_bytes()));
    assert_eq!(<MM as Model>::SPEC_SHA256.len(), 64);
    assert_ne!(micro::SPEC_SHA256, micro_memory::SPEC_SHA256);
}

#[test]
fn round_trip_through_a_file_is_bit_exact() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("m.safetensors");
    let p = params::<MM, f32>(11);
    checkpoint::save::<MM, f32>(&path, &p).unwrap();
    let mut q = boxed_zeroed::<micro_memory::Params<f32>>();
    checkpoint::load::<MM, f32>(&path, &mut q).unwrap();
    assert_eq!(bits(&p), bits(&q));
    assert_eq!(stream_logits(&p), stream_logits(&q));

    // The file is the header then exactly the parameter bytes, 8-aligned.
    let bytes = std::fs::read(&path).unwrap();
    let h = checkpoint::header_len::<MM, f32>();
    assert_eq!(h % 8, 0);
    assert_eq!(bytes.len(), h + 4 * MM::PARAM_COUNT);
    assert_eq!(&bytes[..h], &checkpoint::header_bytes::<MM, f32>().unwrap()[..]);
    assert_eq!(bytes, checkpoint::to_bytes::<MM, f32>(&p).unwrap());
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(header.starts_with(r#"{"__metadata__":{"format":"nl","format_version":"2","spec_sha256":""#));
    assert!(header.contains(r#""embed":{"dtype":"F32","shape":[256,64],"data_offsets":[0,65536]}"#), "{header}");

    // f64 round trip too.
    let p64 = params::<MM, f64>(5);
    checkpoint::save::<MM, f64>(&path, &p64).unwrap();
    let mut q64 = boxed_zeroed::<micro_memory::Params<f64>>();
    checkpoint::load::<MM, f64>(&path, &mut q64).unwrap();
    assert!(p64.as_flat().iter().zip(q64.as_flat()).all(|(a, b)| a.to_bits() == b.to_bits()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_header_into_a_caller_buffer() {
    let need = checkpoint::header_len::<MM, f32>();
    let mut small = vec![0u8; need - 1];
    assert!(matches!(
        checkpoint::write_header::<MM, f32>(&mut small),
        Err(CheckpointError::BufferTooSmall { needed, .. }) if needed == need
    ));
    let mut buf = vec![0u8; need + 100];
    assert_eq!(checkpoint::write_header::<MM, f32>(&mut buf).unwrap(), need);
    assert_eq!(&buf[..need], &checkpoint::header_bytes::<MM, f32>().unwrap()[..]);
}

#[test]
fn view_uses_aligned_bytes_in_place_and_rejects_misaligned_ones() {
    let (p, bytes) = valid_file();
    let mut buf = vec![0u8; bytes.len() + 16];
    let base = buf.as_ptr() as usize;
    // An offset putting the data section (at a multiple of 8 in the file) on an 8-aligned address.
    let k = (8 - base % 8) % 8;
    buf[k..k + bytes.len()].copy_from_slice(&bytes);
    let v = checkpoint::view::<MM, f32>(&buf[k..k + bytes.len()]).unwrap();
    assert_eq!(bits(v), bits(&p));
    assert_eq!(stream_logits(v), stream_logits(&p));

    buf[k + 1..k + 1 + bytes.len()].copy_from_slice(&bytes);
    let Err(e) = checkpoint::view::<MM, f32>(&buf[k + 1..k + 1 + bytes.len()]) else {
        panic!("a misaligned view was accepted")
    };
    assert!(matches!(e, CheckpointError::Misaligned { addr_mod: 1, align: 4 }), "{e}");
    assert!(e.to_string().contains("aligned"), "{e}");
    // Copying works at any alignment.
    let mut q = boxed_zeroed::<micro_memory::Params<f32>>();
    checkpoint::load_from_bytes::<MM, f32>(&buf[k + 1..k + 1 + bytes.len()], &mut q).unwrap();
    assert_eq!(bits(&q), bits(&p));
}

#[test]
fn truncated_files_are_rejected() {
    let (_, bytes) = valid_file();
    let h = checkpoint::header_len::<MM, f32>();
    for len in [0, 1, 7, 8, 9, 100, h - 1, h, h + 1, h + 4, bytes.len() / 2, bytes.len() - 4, bytes.len() - 1] {
        let e = checkpoint::validate::<MM, f32>(&bytes[..len]).unwrap_err();
        let ok = match len {
            0..8 => matches!(e, CheckpointError::Truncated { .. }),
            _ if len < h => matches!(e, CheckpointError::HeaderTooLarge { .. }),
            _ => {
                matches!(e, CheckpointError::DataLength { found, expected } if found == len - h && expected == bytes.len() - h)
            }
        };
        assert!(ok, "length {len}: {e}");
    }
    // One byte too many is also wrong.
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(checkpoint::validate::<MM, f32>(&long), Err(CheckpointError::DataLength { .. })));
}

#[test]
fn every_header_byte_flip_is_an_error_or_harmless() {
    let (p, mut bytes) = valid_file();
    let h = checkpoint::header_len::<MM, f32>();
    let (mut errors, mut harmless) = (0, 0);
    for i in 0..h {
        for mask in [0x01u8, 0x20, 0x80, 0xff] {
            bytes[i] ^= mask;
            match checkpoint::validate::<MM, f32>(&bytes) {
                Err(e) => {
                    let _ = e.to_string();
                    errors += 1;
                }
                Ok(_) => {
                    let mut q = boxed_zeroed::<micro_memory::Params<f32>>();
                    checkpoint::load_from_bytes::<MM, f32>(&bytes, &mut q).unwrap();
                    assert_eq!(bits(&q), bits(&p), "flip {mask:#x} at {i} changed the parameters");
                    harmless += 1;
                }
            }
            bytes[i] ^= mask;
        }
    }
    println!("header flips: {errors} rejected, {harmless} harmless (e.g. in the model name)");
    assert!(errors > 3 * h);
}

#[test]
fn a_checkpoint_of_another_spec_is_rejected() {
    let pm = params::<micro::Model, f32>(1);
    let bytes = checkpoint::to_bytes::<micro::Model, f32>(&pm).unwrap();
    let e = checkpoint::validate::<MM, f32>(&bytes).unwrap_err();
    assert!(matches!(e, CheckpointError::SpecMismatch { .. } | CheckpointError::MissingTensor(_)), "{e}");
    assert!(e.to_string().contains(micro_memory::SPEC_SHA256), "{e}");
    let (_, bytes) = valid_file();
    let e = checkpoint::validate::<micro::Model, f32>(&bytes).unwrap_err();
    assert!(matches!(e, CheckpointError::SpecMismatch { .. }), "{e}");

    // Same spec hash forged into a foreign layout: the tensors still disagree.
    // (The 8-byte length prefix is binary; the hashes have the same length.)
    let json = std::str::from_utf8(&bytes[8..checkpoint::header_len::<MM, f32>()])
        .unwrap()
        .replace(micro_memory::SPEC_SHA256, micro::SPEC_SHA256);
    let mut forged = bytes[..8].to_vec();
    forged.extend_from_slice(json.as_bytes());
    forged.extend_from_slice(&bytes[checkpoint::header_len::<MM, f32>()..]);
    let e = checkpoint::validate::<micro::Model, f32>(&forged).unwrap_err();
    assert!(matches!(e, CheckpointError::UnexpectedTensor(ref n) if n.as_str() == "blocks.0.mem.0.wk"), "{e}");
}

#[test]
fn an_f64_checkpoint_is_not_loaded_as_f32() {
    let p = params::<MM, f64>(3);
    let bytes = checkpoint::to_bytes::<MM, f64>(&p).unwrap();
    let mut q = boxed_zeroed::<micro_memory::Params<f32>>();
    let e = checkpoint::load_from_bytes::<MM, f32>(&bytes, &mut q).unwrap_err();
    assert!(
        matches!(e, CheckpointError::WrongDtype { tensor: "embed", ref found, expected: "F32" } if found.as_str() == "F64"),
        "{e}"
    );
    assert_eq!(e.to_string(), "tensor `embed` has dtype F64 in the checkpoint, expected F32");
    assert!(q.as_flat().iter().all(|&x| x == 0.0), "a rejected load leaves the parameters alone");
}

#[test]
fn oversized_header_lengths_are_rejected() {
    let (_, mut bytes) = valid_file();
    for n in [u64::MAX, 1 << 40, checkpoint::MAX_HEADER + 1, bytes.len() as u64 - 7] {
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let e = checkpoint::validate::<MM, f32>(&bytes).unwrap_err();
        assert!(matches!(e, CheckpointError::HeaderTooLarge { len, .. } if len == n), "{n}: {e}");
    }
}

#[test]
fn hand_edited_headers_get_precise_errors() {
    let (_, bytes) = valid_file();
    let h = checkpoint::header_len::<MM, f32>();
    let header = std::str::from_utf8(&bytes[8..h]).unwrap().to_string();
    let data = &bytes[h..];
    let file = |json: &str| {
        let mut f = (json.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(json.as_bytes());
        f.extend_from_slice(data);
        f
    };
    let check = |json: String, want: &str| {
        let Err(e) = checkpoint::validate::<MM, f32>(&file(&json)) else {
            panic!("accepted ({want}): {}", &json[json.len() - 80..])
        };
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    };
    check(header.replace("[256,64],", "[64,256],"), "shape [64, 256] in the checkpoint, expected [256, 64]");
    check(header.replace("[0,65536]", "[0,65532]"), "data_offsets [0, 65532]");
    check(header.replace(r#""format":"nl""#, r#""format":"pt""#), "metadata `format` is \"pt\"");
    check(header.replace(r#""model":"#, r#""modex":"#), "no `model` metadata");
    check(header.replace("__metadata__", "__metadata_x"), "malformed"); // a tensor with metadata keys
    let meta_end = header.find("},").unwrap() + 2;
    check(format!("{{{}", &header[meta_end..]), "no `__metadata__` metadata");
    check(
        header.replace(r#""embed":"#, r#""extra":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"embed":"#),
        "`extra`, which the model does not have",
    );
    check(header.replace(r#""format":"nl","#, ""), "no `format` metadata");
    check(header.replace(r#""embed":"#, r#""embex":"#), "`embex`");
    check(header.replace(r#""embed":"#, r#""\u0065mbed":"#).replace(r#""unembed":"#, r#""embed":"#), "malformed");
    check(header.replace("[256,64]", "[256,064]"), "malformed");
    check(header.replace("[256,64]", "[256,64.0]"), "malformed");
    check(header.replace("}}", "},}"), "malformed");
    // Escapes in names decode before comparing: this is the same file.
    let escaped = header.replace(r#""embed":"#, r#""\u0065mbed":"#);
    let mut q = boxed_zeroed::<micro_memory::Params<f32>>();
    checkpoint::load_from_bytes::<MM, f32>(&file(&escaped), &mut q).unwrap();
    // Keys in another order are fine.
    let reordered = header.replace(
        r#""dtype":"F32","shape":[256,64],"data_offsets":[0,65536]"#,
        r#""data_offsets":[0,65536], "shape":[256,64] , "dtype":"F32""#,
    );
    assert_ne!(reordered, header);
    checkpoint::validate::<MM, f32>(&file(&reordered)).unwrap();
    // Dropping a tensor.
    let start = header.find(r#","unembed":"#).unwrap();
    let end = start + header[start..].find('}').unwrap() + 1;
    let dropped = format!("{}{}", &header[..start], &header[end..]);
    let e = checkpoint::validate::<MM, f32>(&file(&dropped)).unwrap_err();
    assert!(matches!(e, CheckpointError::MissingTensor("unembed")), "{e}");
}

#[test]
fn save_is_atomic_and_replaces_the_whole_file() {
    let dir = temp_dir("atomic");
    let path = dir.join("c.safetensors");
    std::fs::write(&path, vec![0xAB; 3_000_000]).unwrap();
    let p = params::<MM, f32>(2);
    checkpoint::save::<MM, f32>(&path, &p).unwrap();
    let tmp = dir.join("c.safetensors.tmp");
    assert!(!tmp.exists(), "the temporary file remains");
    assert_eq!(std::fs::read(&path).unwrap(), checkpoint::to_bytes::<MM, f32>(&p).unwrap());
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["c.safetensors"]);
    // A failed save (directory missing) leaves nothing behind and reports the error.
    let bad = dir.join("missing").join("c.safetensors");
    assert!(checkpoint::save::<MM, f32>(&bad, &p).is_err());
    assert!(!dir.join("missing").exists());
    assert!(matches!(
        checkpoint::load::<MM, f32>(&bad, &mut boxed_zeroed()),
        Err(CheckpointError::Io { op: IoOp::Read, .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn save_and_load_errors_name_the_path() {
    let dir = temp_dir("save-errors");
    let p = params::<MM, f32>(2);

    // The directory does not exist: the temporary file cannot be created.
    let bad = dir.join("no-such-dir").join("c.safetensors");
    let e = checkpoint::save::<MM, f32>(&bad, &p).unwrap_err();
    let shown = e.to_string();
    assert!(shown.contains(&bad.display().to_string()), "{shown}");
    assert!(
        matches!(&e, CheckpointError::Io { op: IoOp::Write, path, source }
            if path == &bad && source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert!(std::error::Error::source(&e).is_some());
    // Callers returning `std::io::Result` keep the kind and the path.
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(io.to_string().contains(&bad.display().to_string()), "{io}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "a failed save leaves nothing behind");

    // The temporary file is written but the rename fails (the destination is
    // a non-empty directory): the temporary file is removed, the directory kept.
    let target = dir.join("d.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let e = checkpoint::save::<MM, f32>(&target, &p).unwrap_err();
    assert!(matches!(&e, CheckpointError::Io { op: IoOp::Rename, path, .. } if path == &target), "{e:?}");
    assert!(e.to_string().contains(&target.display().to_string()), "{e}");
    assert!(!dir.join("d.safetensors.tmp").exists(), "the temporary file remains");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");

    // Reading a missing file names it too.
    let missing = dir.join("missing.safetensors");
    let e = checkpoint::load::<MM, f32>(&missing, &mut boxed_zeroed()).unwrap_err();
    assert!(matches!(&e, CheckpointError::Io { op: IoOp::Read, path, .. } if path == &missing), "{e:?}");
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- non-finite values

/// `bytes` copied to a buffer at an offset that puts its start (and so the
/// data section, at a multiple of 8 in the file) on an 8-aligned address;
/// `view` needs that.
pub(crate) struct Aligned {
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    pub(crate) fn new(bytes: &[u8]) -> Aligned {
        let mut buf = vec![0u8; bytes.len() + 8];
        let at = (8 - buf.as_ptr() as usize % 8) % 8;
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        Aligned { buf, at, len: bytes.len() }
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }
}

/// The bits of every scalar (`f32` to `f64` is exact, NaN payloads included).
fn bits_of<S: Scalar>(x: &[S]) -> Vec<u64> {
    x.iter().map(|x| x.to_f64().to_bits()).collect()
}

/// Row-major position of `index` in `shape`, for the expected errors.
fn position_of(mut index: usize, shape: &[usize]) -> Vec<u64> {
    let mut pos = vec![0u64; shape.len()];
    for (p, &d) in pos.iter_mut().zip(shape).rev() {
        *p = (index % d) as u64;
        index /= d;
    }
    pos
}

/// Whether `e` is the non-finite error for `value` at `index` of tensor `name`.
fn is_non_finite(e: &CheckpointError, name: &str, index: usize, shape: &[usize], value: f64) -> bool {
    matches!(e, CheckpointError::NonFinite { tensor, index: i, position, value: v }
        if *tensor == name && *i == index && position.as_slice() == position_of(index, shape)
            && (v.to_bits() == value.to_bits() || v.is_nan() && value.is_nan()))
}

/// Every reader, checked and unchecked, on a checkpoint of `M` in `S` whose
/// flat parameters are `p` with `value` at index `index` of tensor `t`.
fn refused_everywhere<S: Scalar>(dir: &Path, t: &nl_runtime::TensorInfo, index: usize, value: f64) {
    let mut p = params::<MM, S>(7);
    p.as_flat_mut()[t.offset + index] = S::from_f64(value);
    let bytes = checkpoint::to_bytes::<MM, S>(&p).unwrap();
    let want = |e: &CheckpointError| {
        assert!(is_non_finite(e, t.name, index, t.shape, value), "{e:?}");
        let shown = e.to_string();
        assert!(shown.contains(&format!("tensor `{}`", t.name)), "{shown}");
        assert!(shown.contains(&format!("at index {index} ")), "{shown}");
    };
    let unchecked = LoadOptions::new().check_finite(false);

    want(&checkpoint::validate::<MM, S>(&bytes).unwrap_err());
    checkpoint::validate_with::<MM, S>(&bytes, unchecked).unwrap();

    let mut q = boxed_zeroed::<micro_memory::Params<S>>();
    want(&checkpoint::load_from_bytes::<MM, S>(&bytes, &mut q).unwrap_err());
    assert!(q.as_flat().iter().all(|&x| x == S::ZERO), "a refused load leaves the parameters alone");
    checkpoint::load_from_bytes_with::<MM, S>(&bytes, &mut q, unchecked).unwrap();
    assert_eq!(bits_of(q.as_flat()), bits_of(p.as_flat()));

    let a = Aligned::new(&bytes);
    let Err(e) = checkpoint::view::<MM, S>(a.bytes()) else { panic!("view accepted a non-finite value") };
    want(&e);
    let v = checkpoint::view_with::<MM, S>(a.bytes(), unchecked).unwrap();
    assert_eq!(bits_of(v.as_flat()), bits_of(p.as_flat()));

    let path = dir.join(format!("{}-{index}-{}.safetensors", t.name, S::DTYPE));
    checkpoint::save::<MM, S>(&path, &p).unwrap();
    let mut q = boxed_zeroed::<micro_memory::Params<S>>();
    want(&checkpoint::load::<MM, S>(&path, &mut q).unwrap_err());
    assert!(q.as_flat().iter().all(|&x| x == S::ZERO));
    checkpoint::load_with::<MM, S>(&path, &mut q, unchecked).unwrap();
    assert_eq!(bits_of(q.as_flat()), bits_of(p.as_flat()));
}

fn non_finite_in<S: Scalar>(dir: &Path) {
    let ts = MM::TENSORS;
    let (first, mid, last) = (&ts[0], &ts[ts.len() / 2], &ts[ts.len() - 1]);
    assert_eq!((first.name, first.shape), ("embed", &[256usize, 64][..]));
    // NaN in `embed` at row 3, column 5; +inf in the middle of a middle
    // tensor; -inf as the very last value of the file.
    refused_everywhere::<S>(dir, first, 3 * 64 + 5, f64::NAN);
    assert_eq!(position_of(3 * 64 + 5, first.shape), [3, 5]);
    refused_everywhere::<S>(dir, mid, mid.len / 2, f64::INFINITY);
    refused_everywhere::<S>(dir, last, last.len - 1, f64::NEG_INFINITY);

    // Several: the first in file order is named.
    let mut p = params::<MM, S>(7);
    for (t, i, x) in [(last, 0, f64::NAN), (mid, 1, f64::INFINITY), (first, 4, f64::NEG_INFINITY)] {
        p.as_flat_mut()[t.offset + i] = S::from_f64(x);
    }
    let bytes = checkpoint::to_bytes::<MM, S>(&p).unwrap();
    let e = checkpoint::validate::<MM, S>(&bytes).unwrap_err();
    assert!(is_non_finite(&e, first.name, 4, first.shape, f64::NEG_INFINITY), "{e:?}");

    // The largest, smallest and subnormal finite values, and -0, are fine.
    let mut p = params::<MM, S>(7);
    let max = if S::BYTES == 4 { f32::MAX as f64 } else { f64::MAX };
    let tiny = if S::BYTES == 4 { f32::from_bits(1) as f64 } else { f64::from_bits(1) };
    for (i, x) in [max, -max, tiny, -tiny, -0.0].into_iter().enumerate() {
        p.as_flat_mut()[mid.offset + i] = S::from_f64(x);
    }
    let bytes = checkpoint::to_bytes::<MM, S>(&p).unwrap();
    let mut q = boxed_zeroed::<micro_memory::Params<S>>();
    checkpoint::load_from_bytes::<MM, S>(&bytes, &mut q).unwrap();
    assert_eq!(bits_of(q.as_flat()), bits_of(p.as_flat()));
}

#[test]
fn non_finite_values_are_refused_with_their_tensor_and_index() {
    let dir = temp_dir("non-finite");
    non_finite_in::<f32>(&dir);
    non_finite_in::<f64>(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_nan_and_infinity_bit_pattern_is_refused() {
    // Signalling and negative NaNs with payloads, written straight into the
    // data section: the check looks at the exponent bits only.
    let (p, bytes) = valid_file();
    let h = checkpoint::header_len::<MM, f32>();
    let embed = &MM::TENSORS[0];
    for (k, pattern) in
        [0x7f80_0000u32, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0xffc0_1234, 0xffff_ffff].into_iter().enumerate()
    {
        let at = 1000 + 37 * k;
        let mut b = bytes.clone();
        b[h + 4 * at..h + 4 * at + 4].copy_from_slice(&pattern.to_le_bytes());
        let e = checkpoint::validate::<MM, f32>(&b).unwrap_err();
        let value = f64::from(f32::from_bits(pattern));
        assert!(is_non_finite(&e, embed.name, at, embed.shape, value), "{pattern:#x}: {e:?}");
        let mut q = boxed_zeroed::<micro_memory::Params<f32>>();
        let unchecked = LoadOptions::new().check_finite(false);
        checkpoint::load_from_bytes_with::<MM, f32>(&b, &mut q, unchecked).unwrap();
        assert_eq!(q.as_flat()[at].to_bits(), pattern);
        assert_eq!(bits(&q)[..at], bits(&p)[..at]);
    }
    let p64 = params::<MM, f64>(3);
    let bytes = checkpoint::to_bytes::<MM, f64>(&p64).unwrap();
    let h = checkpoint::header_len::<MM, f64>();
    for pattern in [0x7ff0_0000_0000_0000u64, 0xfff0_0000_0000_0000, 0x7ff0_0000_0000_0001, 0xfff8_dead_beef_0000] {
        let at = embed.len + 5; // in the tensor after `embed`
        let mut b = bytes.clone();
        b[h + 8 * at..h + 8 * at + 8].copy_from_slice(&pattern.to_le_bytes());
        let e = checkpoint::validate::<MM, f64>(&b).unwrap_err();
        let t = MM::TENSORS.iter().find(|t| (t.offset..t.offset + t.len).contains(&at)).unwrap();
        assert!(is_non_finite(&e, t.name, at - t.offset, t.shape, f64::from_bits(pattern)), "{e:?}");
    }
}

/// A small deterministic generator (splitmix64).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn validate_never_panics_on_arbitrary_bytes() {
    type T = tiny::Model;
    let p = params::<T, f32>(1);
    let valid = checkpoint::to_bytes::<T, f32>(&p).unwrap();
    let p64 = params::<T, f64>(1);
    let valid64 = checkpoint::to_bytes::<T, f64>(&p64).unwrap();
    checkpoint::validate::<T, f32>(&valid).unwrap();
    let h = checkpoint::header_len::<T, f32>();
    let mut g = Gen(0x5EED);
    let (mut inputs, mut accepted) = (0usize, 0usize);
    let mut kinds = [0usize; 6];
    const N: usize = 200_000;
    let mut buf = Vec::new();
    for i in 0..N {
        buf.clear();
        let kind = i % 6;
        match kind {
            // Random length, random bytes.
            0 => (0..g.below(300)).for_each(|_| buf.push(g.next() as u8)),
            // A plausible length prefix, then random JSON-ish bytes.
            1 => {
                let n = g.below(200);
                buf.extend_from_slice(&(n as u64).to_le_bytes());
                const ALPHABET: &[u8] = b"{}[]:,\"\\ 0123456789u.eE-FdtypeshaF32_metadata";
                (0..n + g.below(3)).for_each(|_| buf.push(ALPHABET[g.below(ALPHABET.len())]));
            }
            // Flips of a valid file.
            2 => {
                buf.extend_from_slice(&valid);
                for _ in 0..1 + g.below(4) {
                    let at = if g.below(4) == 0 { g.below(buf.len()) } else { g.below(h) };
                    buf[at] ^= 1 << g.below(8);
                }
            }
            // Truncations.
            3 => buf.extend_from_slice(&valid[..g.below(valid.len() + 1)]),
            // Splices of two (valid f32 / f64) files.
            4 => {
                let (a, b) = if g.below(2) == 0 { (&valid, &valid64) } else { (&valid64, &valid) };
                let cut_a = g.below(a.len() + 1);
                let cut_b = g.below(b.len() + 1);
                buf.extend_from_slice(&a[..cut_a]);
                buf.extend_from_slice(&b[cut_b..]);
            }
            // Byte overwrites with interesting values, and insertions/deletions.
            _ => {
                buf.extend_from_slice(&valid);
                let at = g.below(h);
                match g.below(3) {
                    0 => {
                        const BYTES: &[u8] = b"\"{}[],:\\0 \x00\xff";
                        buf[at] = BYTES[g.below(BYTES.len())];
                    }
                    1 => {
                        buf.remove(at);
                    }
                    _ => buf.insert(at, g.next() as u8),
                }
            }
        }
        kinds[kind] += 1;
        inputs += 1;
        let ok32 = checkpoint::validate::<T, f32>(&buf).is_ok();
        let ok64 = checkpoint::validate::<T, f64>(&buf).is_ok();
        if let Err(e) = checkpoint::validate::<MM, f32>(&buf) {
            let _ = e.to_string();
        }
        accepted += usize::from(ok32) + usize::from(ok64);
        if ok32 {
            let mut q = boxed_zeroed::<tiny::Params<f32>>();
            checkpoint::load_from_bytes::<T, f32>(&buf, &mut q).unwrap();
        }
    }
    println!("validate: {inputs} arbitrary inputs (by kind {kinds:?}), {accepted} accepted, no panic");
    assert_eq!(inputs, N);
}

/// What every reader says about `bytes` as a checkpoint of `tiny` in `S`,
/// with `options`; they must agree.
fn read_all<S: Scalar>(bytes: &[u8], aligned: &[u8], options: LoadOptions) -> Result<Vec<u64>, CheckpointError>
where
    tiny::Params<S>: nl_runtime::ScalarStruct<S>,
{
    type T = tiny::Model;
    let validated = checkpoint::validate_with::<T, S>(bytes, options);
    let mut q = boxed_zeroed::<tiny::Params<S>>();
    let loaded = checkpoint::load_from_bytes_with::<T, S>(bytes, &mut q, options);
    let viewed = match checkpoint::view_with::<T, S>(aligned, options) {
        // A corrupted header length can move the data section off the 8-byte
        // grid; then only `view` refuses (the copying readers do not care).
        Err(CheckpointError::Misaligned { .. }) if loaded.is_ok() => Ok(&*q),
        v => v,
    };
    match (validated, loaded, viewed) {
        (Ok(_), Ok(()), Ok(v)) => {
            assert_eq!(bits_of(v.as_flat()), bits_of(q.as_flat()));
            Ok(bits_of(q.as_flat()))
        }
        (Err(a), Err(b), Err(c)) => {
            let _ = (a.to_string(), format!("{a:?}"));
            // The same error, whichever reader (`view`'s alignment is given).
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            assert_eq!(format!("{a:?}"), format!("{c:?}"));
            assert!(q.as_flat().iter().all(|&x| x == S::ZERO), "a rejected load wrote: {a}");
            Err(a)
        }
        (a, b, c) => panic!("the readers disagree: {:?} / {:?} / {:?}", a.err(), b.err(), c.err()),
    }
}

#[test]
fn readers_never_panic_and_agree_on_random_corruptions() {
    type T = tiny::Model;
    let valid32 = checkpoint::to_bytes::<T, f32>(&params::<T, f32>(1)).unwrap();
    let valid64 = checkpoint::to_bytes::<T, f64>(&params::<T, f64>(1)).unwrap();
    let h32 = checkpoint::header_len::<T, f32>();
    let h64 = checkpoint::header_len::<T, f64>();
    let mut r = Rng::new(0xC0FFEE);
    let mut below = |n: usize| r.below(n.max(1) as u64) as usize;
    let checked = LoadOptions::new();
    let unchecked = checked.check_finite(false);
    let (mut non_finite, mut ok, mut other) = (0usize, 0usize, 0usize);
    const N: usize = 30_000;
    for i in 0..N {
        let (valid, h, width) = if i % 2 == 0 { (&valid32, h32, 4) } else { (&valid64, h64, 8) };
        let mut buf = valid.clone();
        match below(6) {
            // Non-finite values written over random data values: often
            // several, of random sign and payload, from 0 to all exponent bits.
            0 | 1 => {
                for _ in 0..1 + below(3) {
                    let at = h + width * below((valid.len() - h) / width);
                    let mut x = [0u8; 8];
                    x.iter_mut().for_each(|b| *b = below(256) as u8);
                    let x = &mut x[..width];
                    // The top byte holds the sign and exponent's high bits, the one below the rest.
                    x[width - 1] |= 0x7f;
                    x[width - 2] |= if width == 4 { 0x80 } else { 0xf0 };
                    if below(2) == 0 {
                        x[..width - 2].fill(0); // an infinity, or a NaN with a small payload
                    }
                    buf[at..at + width].copy_from_slice(x);
                }
            }
            // Random bit flips anywhere.
            2 => {
                for _ in 0..1 + below(4) {
                    let at = below(buf.len());
                    buf[at] ^= 1 << below(8);
                }
            }
            // Random bytes over a random range.
            3 => {
                let at = below(buf.len());
                let end = at + below(buf.len() - at + 1);
                buf[at..end].iter_mut().for_each(|b| *b = below(256) as u8);
            }
            // Truncation or extension.
            4 => {
                if below(2) == 0 {
                    buf.truncate(below(buf.len() + 1));
                } else {
                    (0..1 + below(16)).for_each(|_| buf.push(below(256) as u8));
                }
            }
            // A wholly random string, sometimes with a plausible length prefix.
            _ => {
                buf.clear();
                if below(2) == 0 {
                    buf.extend_from_slice(&(below(400) as u64).to_le_bytes());
                }
                (0..below(400)).for_each(|_| buf.push(below(256) as u8));
            }
        }
        let aligned = Aligned::new(&buf);
        for is32 in [true, false] {
            let (c, u) = if is32 {
                (read_all::<f32>(&buf, aligned.bytes(), checked), read_all::<f32>(&buf, aligned.bytes(), unchecked))
            } else {
                (read_all::<f64>(&buf, aligned.bytes(), checked), read_all::<f64>(&buf, aligned.bytes(), unchecked))
            };
            match (&c, &u) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b);
                    ok += 1;
                }
                (Err(CheckpointError::NonFinite { tensor, index, position, value }), Ok(values)) => {
                    // The unchecked load has that very value there, and only finite ones before it.
                    let t = T::TENSORS.iter().find(|t| t.name == *tensor).unwrap();
                    let flat = t.offset + index;
                    let there = f64::from_bits(values[flat]);
                    assert!(there.is_nan() && value.is_nan() || there.is_infinite() && there == *value, "{value}");
                    assert!(values[..flat].iter().all(|&b| f64::from_bits(b).is_finite()), "not the first");
                    assert_eq!(position.as_slice(), position_of(*index, t.shape));
                    non_finite += 1;
                }
                (Err(a), Err(b)) => {
                    assert_eq!(format!("{a:?}"), format!("{b:?}"), "unchecked reading fails alike");
                    other += 1;
                }
                _ => panic!("checked {:?}, unchecked {:?}", c.as_ref().err(), u.as_ref().err()),
            }
        }
    }
    println!("{N} corruptions x 2 dtypes: {ok} accepted, {non_finite} refused as non-finite, {other} otherwise");
    assert!(non_finite > N / 4 && ok > 0 && other > N / 2, "{ok} {non_finite} {other}");
}

/// Writes a checkpoint and the values the Python check expects
/// (`tests/python/read_checkpoint.py`), into `$NL_CHECKPOINT_DIR`
/// (default `target/checkpoint-python`). Run by `.ci/run`.
#[test]
#[ignore = "writes files for the Python check; run by .ci/run"]
fn write_checkpoint_for_python() {
    let dir = std::env::var_os("NL_CHECKPOINT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/checkpoint-python"));
    std::fs::create_dir_all(&dir).unwrap();
    let p = params::<MM, f32>(42);
    checkpoint::save::<MM, f32>(dir.join("micro_memory.safetensors"), &p).unwrap();
    let embed = &p.as_flat()[..8];
    let mut text = format!("model {}\nspec_sha256 {}\ntensor embed 0\n", micro_memory::NAME, micro_memory::SPEC_SHA256);
    for x in embed {
        text += &format!("{:#010x} {x:e}\n", x.to_bits());
    }
    std::fs::write(dir.join("micro_memory.expected.txt"), text).unwrap();
    println!("wrote {}", dir.display());
}
