//! Deployable (quantized) checkpoints (`nl_runtime::checkpoint::export`,
//! `view_q`, `load_q`): round trips that stream bit for bit like the
//! `QParams` they came from, the file's layout, every refusal with its typed
//! error, the kinds kept apart (a deployable file is not a training
//! checkpoint and vice versa), and random corruptions on which the readers
//! never panic and agree.

use std::path::{Path, PathBuf};

use crate::checkpoint::Aligned;
use nl::nl_model;
use nl_runtime::checkpoint::{self, CheckpointError, FileKind, LoadOptions};
use nl_runtime::quant::QuantError;
use nl_runtime::rng::Rng;
use nl_runtime::{boxed_zeroed, pod_bytes, pod_bytes_mut, Dtype, Model, QTensorInfo};

// int8 weights, f32 activations; no `__pad__` (the int8 codes fill whole words).
nl_model! { r#"
name = "qc_int8"
d_model = 8
heads = 2
vocab = 12
seq_len = 4
window = 3
[mlp]
hidden = 4
[quant]
weights = "int8"
"# }

// int8 weights and activations, widths not multiples of 4: a `__pad__`.
nl_model! { r#"
name = "qc_int8_pad"
d_model = 6
heads = 2
vocab = 10
seq_len = 4
window = 3
norm = "rms"
[mlp]
hidden = 5
[memory]
rule = "delta"
[[memory.levels]]
period = 1
[quant]
weights = "int8"
activations = "int8"
"# }

// Ternary weights (int8 activations), in-widths 6 and 5: padded codes in
// every row, and a `__pad__`.
nl_model! { r#"
name = "qc_ternary"
d_model = 6
heads = 2
vocab = 9
seq_len = 4
window = 3
[mlp]
hidden = 5
[quant]
weights = "ternary"
"# }

// An f32 model: its deployable file is its parameters.
nl_model! { r#"
name = "qc_f32"
d_model = 4
heads = 2
vocab = 5
seq_len = 3
window = 2
"# }

type I8 = qc_int8::Model;
type I8P = qc_int8_pad::Model;
type T2 = qc_ternary::Model;
type F = qc_f32::Model;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nl-qckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn deployable<M: Model>(seed: u64) -> Box<M::QParams> {
    let mut p = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut p, seed);
    let mut q = boxed_zeroed::<M::QParams>();
    M::quantize(&p, &mut q);
    q
}

/// The logits' bits of a stream of tokens through `try_step_q`.
fn logits<M: Model>(q: &M::QParams) -> Vec<u32> {
    let mut st = boxed_zeroed::<M::Stream<f32>>();
    let mut out = Vec::new();
    for i in 0..20u32 {
        let t = (i * 7 + 3) % M::VOCAB as u32;
        out.extend(M::try_step_q(&mut st, q, t).unwrap().iter().map(|x| x.to_bits()));
    }
    out
}

fn header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// `bytes` with its JSON header edited by `edit` (re-padded, length fixed).
fn edit_header(bytes: &[u8], edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    let h = header_len(bytes);
    let json = edit(std::str::from_utf8(&bytes[8..h]).unwrap().trim_end());
    let n = json.len().next_multiple_of(8);
    let mut out = (n as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(8 + n, b' ');
    out.extend_from_slice(&bytes[h..]);
    out
}

/// `"name":{"dtype":..,"shape":[..]` of a `QTENSORS` entry, as the writer puts it.
fn entry_json(t: &QTensorInfo) -> String {
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!(r#""{}":{{"dtype":"{}","shape":[{}]"#, t.name, t.dtype.name(), shape.join(","))
}

fn replace_once(s: &str, from: &str, to: &str) -> String {
    assert_eq!(s.matches(from).count(), 1, "{from} in {s}");
    s.replace(from, to)
}

/// What every reader says about `bytes` as a deployable file of `M`; they must agree.
fn read_all<M: Model>(bytes: &[u8], options: LoadOptions) -> Result<Vec<u8>, CheckpointError> {
    let aligned = Aligned::new(bytes);
    let validated = checkpoint::validate_q_with::<M>(bytes, options);
    let mut q = boxed_zeroed::<M::QParams>();
    let loaded = checkpoint::load_q_from_bytes_with::<M>(bytes, &mut q, options);
    let viewed = match checkpoint::view_q_with::<M>(aligned.bytes(), options) {
        // A corrupted header length can move the data section off the 4-byte grid.
        Err(CheckpointError::Misaligned { .. }) if loaded.is_ok() => Ok(&*q),
        v => v,
    };
    match (validated, loaded, viewed) {
        (Ok(d), Ok(()), Ok(v)) => {
            assert_eq!(pod_bytes(v), pod_bytes(&*q));
            assert_eq!(d, pod_bytes(&*q));
            Ok(pod_bytes(&*q).to_vec())
        }
        (Err(a), Err(b), Err(c)) => {
            let _ = a.to_string();
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            assert_eq!(format!("{a:?}"), format!("{c:?}"));
            assert!(pod_bytes(&*q).iter().all(|&b| b == 0), "a rejected load wrote: {a}");
            Err(a)
        }
        (a, b, c) => panic!("the readers disagree: {:?} / {:?} / {:?}", a.err(), b.err(), c.err()),
    }
}

fn round_trip<M: Model>() {
    let q = deployable::<M>(3);
    let bytes = checkpoint::export_bytes::<M>(&q).unwrap();
    let h = checkpoint::export_header_len::<M>();
    assert_eq!(h % 8, 0);
    assert_eq!(header_len(&bytes), h);
    // The data section is exactly the QParams bytes, the QTENSORS back to back.
    assert_eq!(&bytes[h..], pod_bytes(&*q));
    let end = M::QTENSORS.iter().fold(0, |at, t| {
        assert_eq!(t.offset, at, "{}", t.name);
        at + t.bytes
    });
    assert_eq!(end, std::mem::size_of::<M::QParams>());
    let json = std::str::from_utf8(&bytes[8..h]).unwrap();
    let meta = format!(
        r#"{{"__metadata__":{{"format":"nl","format_version":"2","spec_sha256":"{}","model":"{}","kind":"deploy","quant":"{}"}}"#,
        M::SPEC_SHA256,
        M::NAME,
        M::QUANT.name()
    );
    assert!(json.starts_with(&meta), "{json}");
    for t in M::QTENSORS {
        let want = format!(r#"{},"data_offsets":[{},{}]}}"#, entry_json(t), t.offset, t.offset + t.bytes);
        assert!(json.contains(&want), "{want} not in {json}");
    }

    // In place, copied, and through a file: the same bytes, the same logits.
    let want = logits::<M>(&q);
    let aligned = Aligned::new(&bytes);
    let v = checkpoint::view_q::<M>(aligned.bytes()).unwrap();
    assert_eq!(pod_bytes(v), pod_bytes(&*q));
    assert_eq!(logits::<M>(v), want);
    let mut c = boxed_zeroed::<M::QParams>();
    checkpoint::load_q_from_bytes::<M>(&bytes, &mut c).unwrap();
    assert_eq!(logits::<M>(&c), want);
    let dir = temp_dir(M::NAME);
    let path = dir.join("m.deploy.safetensors");
    let mut p = boxed_zeroed::<M::Params<f32>>();
    M::init(&mut p, 3);
    checkpoint::export::<M>(&path, &p).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let mut f = boxed_zeroed::<M::QParams>();
    checkpoint::load_q::<M>(&path, &mut f).unwrap();
    assert_eq!(logits::<M>(&f), want);

    // The kinds are kept apart, both ways, whatever the spec.
    let train = checkpoint::to_bytes::<M, f32>(&p).unwrap();
    let e = checkpoint::validate_q::<M>(&train).unwrap_err();
    assert!(
        matches!(e, CheckpointError::WrongKind { found: FileKind::Training, expected: FileKind::Deploy, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("training checkpoint") && e.to_string().contains("export"), "{e}");
    let e = checkpoint::validate::<M, f32>(&bytes).unwrap_err();
    assert!(
        matches!(e, CheckpointError::WrongKind { found: FileKind::Deploy, expected: FileKind::Training, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("deployable") && e.to_string().contains("view_q"), "{e}");
    let e = checkpoint::load_q::<M>(dir.join("missing"), &mut f).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }) && e.to_string().contains("missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_round_trips_bit_for_bit() {
    round_trip::<I8>();
    round_trip::<I8P>();
    round_trip::<T2>();
    round_trip::<F>();
}

#[test]
fn the_specs_cover_padding_and_its_absence() {
    let has_pad = |q: &[QTensorInfo]| q.iter().any(|t| t.name == checkpoint::PAD_TENSOR);
    assert!(!has_pad(I8::QTENSORS));
    assert!(has_pad(I8P::QTENSORS));
    assert!(has_pad(T2::QTENSORS));
    // Packed ternary rows with padding codes (in-width not a multiple of 4).
    let padded = T2::QTENSORS.iter().filter(|t| t.dtype == Dtype::U8 && t.name != checkpoint::PAD_TENSOR).count();
    assert!(padded >= 4);
    assert!(T2::TENSORS.iter().filter(|t| t.quantized).all(|t| t.shape[1] % 4 != 0));
    assert_eq!(I8::QUANT.name(), "int8/f32");
    assert_eq!(I8P::QUANT.name(), "int8/int8");
    assert_eq!(T2::QUANT.name(), "ternary/int8");
}

#[test]
fn an_f32_models_export_is_its_parameters() {
    let mut p = boxed_zeroed::<qc_f32::Params<f32>>();
    F::init(&mut p, 9);
    let bytes = checkpoint::export_bytes::<F>(&p).unwrap();
    let train = checkpoint::to_bytes::<F, f32>(&p).unwrap();
    let (h, ht) = (header_len(&bytes), header_len(&train));
    assert_eq!(&bytes[h..], &train[ht..]);
    assert!(std::str::from_utf8(&bytes[..h]).unwrap().contains(r#""kind":"deploy","quant":"f32/f32""#));
    assert_eq!(F::QTENSORS.len(), F::TENSORS.len());
    assert!(F::QTENSORS.iter().all(|t| t.dtype == Dtype::F32));
}

/// The first entry of `M::QTENSORS` matching `pred`.
fn entry<M: Model>(pred: impl Fn(&QTensorInfo) -> bool) -> &'static QTensorInfo {
    M::QTENSORS.iter().find(|t| pred(t)).expect("such an entry")
}

/// A valid file of `M` with the data bytes changed by `edit`.
fn with_data<M: Model>(edit: impl FnOnce(&mut M::QParams)) -> Vec<u8> {
    let mut q = deployable::<M>(5);
    edit(&mut q);
    checkpoint::export_bytes::<M>(&q).unwrap()
}

fn set_f32<M: Model>(q: &mut M::QParams, t: &QTensorInfo, index: usize, v: f32) {
    let at = t.offset + 4 * index;
    pod_bytes_mut(q)[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn refusals<M: Model>() {
    let valid = checkpoint::export_bytes::<M>(&deployable::<M>(5)).unwrap();
    read_all::<M>(&valid, LoadOptions::new()).unwrap();
    let err = |b: &[u8]| read_all::<M>(b, LoadOptions::new()).unwrap_err();

    // Metadata: spec, scheme, kind.
    let other_sha = "0".repeat(64);
    let e = err(&edit_header(&valid, |j| replace_once(j, M::SPEC_SHA256, &other_sha)));
    assert!(matches!(e, CheckpointError::SpecMismatch { .. }), "{e}");
    assert!(e.to_string().contains(M::SPEC_SHA256), "{e}");
    let scheme = format!(r#""quant":"{}""#, M::QUANT.name());
    let e = err(&edit_header(&valid, |j| replace_once(j, &scheme, r#""quant":"int4/f32""#)));
    assert!(
        matches!(&e, CheckpointError::QuantMismatch { found, expected } if found.as_str() == "int4/f32" && *expected == M::QUANT.name()),
        "{e}"
    );
    assert!(e.to_string().contains("int4/f32") && e.to_string().contains(M::QUANT.name()), "{e}");
    let e = err(&edit_header(&valid, |j| replace_once(j, &format!(",{scheme}"), "")));
    assert!(matches!(e, CheckpointError::MissingMetadata("quant")), "{e}");
    let e = err(&edit_header(&valid, |j| replace_once(j, r#""kind":"deploy""#, r#""kind":"train""#)));
    assert!(
        matches!(&e, CheckpointError::WrongKind { found: FileKind::Other, kind: Some(t), .. } if t.as_str() == "train"),
        "{e}"
    );
    let e = err(&edit_header(&valid, |j| replace_once(j, r#""kind":"deploy","#, "")));
    assert!(matches!(e, CheckpointError::WrongKind { found: FileKind::Training, .. }), "{e}");

    // The tensor table: shape, dtype, offsets, missing, unexpected.
    for t in M::QTENSORS {
        let from = entry_json(t);
        let mut shape = t.shape.to_vec();
        shape[0] += 1;
        let to = entry_json(&QTensorInfo { shape: Box::leak(shape.into_boxed_slice()), ..*t });
        let e = err(&edit_header(&valid, |j| replace_once(j, &from, &to)));
        assert!(matches!(e, CheckpointError::WrongShape { tensor, .. } if tensor == t.name), "{e}");
        assert!(e.to_string().contains(t.name));
        let other = if t.dtype == Dtype::F32 { Dtype::I8 } else { Dtype::F32 };
        let to = entry_json(&QTensorInfo { dtype: other, ..*t });
        let e = err(&edit_header(&valid, |j| replace_once(j, &from, &to)));
        assert!(
            matches!(e, CheckpointError::WrongDtype { tensor, expected, .. } if tensor == t.name && expected == t.dtype.name()),
            "{e}"
        );
        let offs = format!(r#"{from},"data_offsets":[{},{}]"#, t.offset, t.offset + t.bytes);
        let to = format!(r#"{from},"data_offsets":[{},{}]"#, t.offset, t.offset + t.bytes + 1);
        let e = err(&edit_header(&valid, |j| replace_once(j, &offs, &to)));
        assert!(matches!(e, CheckpointError::WrongOffsets { tensor, .. } if tensor == t.name), "{e}");
        let renamed = format!(r#""{}x"{}"#, t.name, &from[t.name.len() + 2..]);
        let e = err(&edit_header(&valid, |j| replace_once(j, &from, &renamed)));
        assert!(matches!(&e, CheckpointError::UnexpectedTensor(n) if n.as_str() == format!("{}x", t.name)), "{e}");
    }
    let last = M::QTENSORS.last().unwrap();
    let e = err(&edit_header(&valid, |j| {
        let at = j.find(&format!(r#","{}":"#, last.name)).unwrap();
        format!("{}}}", &j[..at])
    }));
    assert!(matches!(e, CheckpointError::MissingTensor(n) if n == last.name), "{e}");

    // Length.
    let e = err(&valid[..valid.len() - 1]);
    assert!(matches!(e, CheckpointError::DataLength { .. }), "{e}");
    let mut long = valid.clone();
    long.extend_from_slice(&[0; 4]);
    assert!(matches!(err(&long), CheckpointError::DataLength { .. }));

    // Misalignment (view only; copying works anywhere).
    let mut buf = vec![0u8; valid.len() + 16];
    let k = (8 - buf.as_ptr() as usize % 8) % 8 + 2;
    buf[k..k + valid.len()].copy_from_slice(&valid);
    let Err(e) = checkpoint::view_q::<M>(&buf[k..k + valid.len()]) else { panic!("a misaligned view was accepted") };
    assert!(matches!(e, CheckpointError::Misaligned { addr_mod: 2, align: 4 }), "{e}");
    let mut c = boxed_zeroed::<M::QParams>();
    checkpoint::load_q_from_bytes::<M>(&buf[k..k + valid.len()], &mut c).unwrap();

    // Values: non-finite f32 (opt-out), scales, codes, ternary bytes, pad.
    let f = entry::<M>(|t| t.dtype == Dtype::F32 && !t.name.ends_with(".scale"));
    let b = with_data::<M>(|q| set_f32::<M>(q, f, 1, f32::INFINITY));
    let e = err(&b);
    assert!(matches!(e, CheckpointError::NonFinite { tensor, index: 1, .. } if tensor == f.name), "{e}");
    read_all::<M>(&b, LoadOptions::new().check_finite(false)).unwrap();
    if let Some(s) = M::QTENSORS.iter().find(|t| t.name.ends_with(".scale")) {
        let n = s.bytes / 4;
        let b = with_data::<M>(|q| set_f32::<M>(q, s, n - 1, f32::NAN));
        let e = err(&b);
        assert!(
            matches!(e, CheckpointError::NonFinite { tensor, index, .. } if tensor == s.name && index == n - 1),
            "{e}"
        );
        read_all::<M>(&b, LoadOptions::new().check_finite(false)).unwrap();
        for v in [0.0, -0.0, -1.5, f32::NEG_INFINITY] {
            let b = with_data::<M>(|q| set_f32::<M>(q, s, n - 1, v));
            let e = read_all::<M>(&b, LoadOptions::new().check_finite(false)).unwrap_err();
            assert!(
                matches!(e, CheckpointError::BadScale { tensor, index, value } if tensor == s.name && index == n - 1 && value.to_bits() == v.to_bits()),
                "{e}"
            );
            assert!(e.to_string().contains(s.name), "{e}");
        }
    }
    if let Some(c) = M::QTENSORS.iter().find(|t| t.dtype == Dtype::I8) {
        let index = c.shape[1] + 2; // row 1, column 2
        let b = with_data::<M>(|q| pod_bytes_mut(q)[c.offset + index] = 0x80);
        let e = err(&b);
        assert!(
            matches!(&e, CheckpointError::BadCode { tensor, index: i, position, value: -128 } if *tensor == c.name && *i == index && position.as_slice() == [1, 2]),
            "{e}"
        );
        assert!(e.to_string().contains(c.name) && e.to_string().contains("-128"), "{e}");
        let b = with_data::<M>(|q| pod_bytes_mut(q)[c.offset + index] = 0x81); // -127: fine
        read_all::<M>(&b, LoadOptions::new()).unwrap();
    }
    for c in M::QTENSORS.iter().filter(|t| t.dtype == Dtype::U8 && t.name != checkpoint::PAD_TENSOR) {
        let inp = M::TENSORS.iter().find(|t| t.name == c.name).unwrap().shape[1];
        let nb = c.shape[1];
        // Row 1, column 1: the code 0b11.
        let b = with_data::<M>(|q| pod_bytes_mut(q)[c.offset + nb] |= 0b1100);
        let e = err(&b);
        assert!(
            matches!(e, CheckpointError::BadTernary { tensor, error: QuantError::InvalidCode { row: 1, col: 1 } } if tensor == c.name),
            "{e}"
        );
        assert!(e.to_string().contains(c.name), "{e}");
        // Row 2's last byte: a padding code set.
        assert_ne!(inp % 4, 0);
        let b = with_data::<M>(|q| pod_bytes_mut(q)[c.offset + 3 * nb - 1] |= 0b01 << (2 * 3));
        let e = err(&b);
        assert!(
            matches!(e, CheckpointError::BadTernary { tensor, error: QuantError::NonZeroPadding { row: 2 } } if tensor == c.name),
            "{e}"
        );
    }
    if let Some(p) = M::QTENSORS.iter().find(|t| t.name == checkpoint::PAD_TENSOR) {
        let b = with_data::<M>(|q| pod_bytes_mut(q)[p.offset + p.bytes - 1] = 7);
        let e = err(&b);
        assert!(matches!(e, CheckpointError::NonZeroPad { index, value: 7 } if index == p.bytes - 1), "{e}");
        assert!(e.to_string().contains("__pad__"), "{e}");
    }
}

#[test]
fn every_refusal_has_its_typed_error() {
    refusals::<I8>();
    refusals::<I8P>();
    refusals::<T2>();
    refusals::<F>();
}

#[test]
fn a_file_of_another_scheme_or_spec_is_refused() {
    let i8 = checkpoint::export_bytes::<I8>(&deployable::<I8>(1)).unwrap();
    let t2 = checkpoint::export_bytes::<T2>(&deployable::<T2>(1)).unwrap();
    let e = checkpoint::validate_q::<T2>(&i8).unwrap_err();
    assert!(matches!(e, CheckpointError::QuantMismatch { expected: "ternary/int8", .. }), "{e}");
    let e = checkpoint::validate_q::<I8P>(&t2).unwrap_err();
    assert!(matches!(e, CheckpointError::QuantMismatch { expected: "int8/int8", .. }), "{e}");
    // Same scheme (f32/f32), another spec.
    let mut p = boxed_zeroed::<crate::checkpoint::tiny::Params<f32>>();
    crate::checkpoint::tiny::Model::init(&mut p, 1);
    let tiny = checkpoint::export_bytes::<crate::checkpoint::tiny::Model>(&p).unwrap();
    let e = checkpoint::validate_q::<F>(&tiny).unwrap_err();
    assert!(matches!(e, CheckpointError::SpecMismatch { .. }), "{e}");
}

fn corruptions<M: Model>(seed: u64, n: usize) -> [usize; 3] {
    let valid = checkpoint::export_bytes::<M>(&deployable::<M>(2)).unwrap();
    let h = header_len(&valid);
    let mut r = Rng::new(seed);
    let mut below = |n: usize| r.below(n.max(1) as u64) as usize;
    let mut counts = [0usize; 3];
    for _ in 0..n {
        let mut buf = valid.clone();
        match below(6) {
            // Bit flips in the header.
            0 => (0..1 + below(3)).for_each(|_| {
                let at = below(h);
                buf[at] ^= 1 << below(8);
            }),
            // Random bytes over random data bytes (codes, scales, pad).
            1 | 2 => (0..1 + below(4)).for_each(|_| {
                let at = h + below(buf.len() - h);
                buf[at] = below(256) as u8;
            }),
            // Bit flips anywhere.
            3 => (0..1 + below(4)).for_each(|_| {
                let at = below(buf.len());
                buf[at] ^= 1 << below(8);
            }),
            // Truncation or extension.
            4 => {
                if below(2) == 0 {
                    buf.truncate(below(buf.len() + 1));
                } else {
                    (0..1 + below(8)).for_each(|_| buf.push(below(256) as u8));
                }
            }
            // Random bytes over a random range.
            _ => {
                let at = below(buf.len());
                let end = at + below(buf.len() - at + 1).min(64);
                buf[at..end].iter_mut().for_each(|b| *b = below(256) as u8);
            }
        }
        let checked = read_all::<M>(&buf, LoadOptions::new());
        let unchecked = read_all::<M>(&buf, LoadOptions::new().check_finite(false));
        match (&checked, &unchecked) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                counts[0] += 1;
            }
            (Err(CheckpointError::NonFinite { .. }), Ok(_)) => counts[1] += 1,
            (Err(a), Err(b)) => {
                if !matches!(a, CheckpointError::NonFinite { .. }) {
                    assert_eq!(format!("{a:?}"), format!("{b:?}"));
                }
                counts[2] += 1;
            }
            _ => panic!("checked {:?}, unchecked {:?}", checked.err(), unchecked.err()),
        }
        // The training readers never panic on it either (a flip in the
        // `kind` key can make an f32 model's file a training checkpoint).
        if let Err(e) = checkpoint::validate::<M, f32>(&buf) {
            let _ = e.to_string();
        }
    }
    counts
}

#[test]
fn readers_never_panic_and_agree_on_random_corruptions() {
    const N: usize = 4000;
    for (name, c) in [
        ("int8", corruptions::<I8>(1, N)),
        ("int8 pad", corruptions::<I8P>(2, N)),
        ("ternary", corruptions::<T2>(3, N)),
        ("f32", corruptions::<F>(4, N / 2)),
    ] {
        println!("{name}: {} accepted, {} non-finite, {} refused otherwise", c[0], c[1], c[2]);
        assert!(c[2] > c[0] / 4, "{name}: {c:?}");
    }
}

/// Writes deployable files and what the Python check expects
/// (`tests/python/read_quantized.py`) into `$NL_QCHECKPOINT_DIR` (default
/// `target/qcheckpoint-python`): per model, `<name>.safetensors` and
/// `<name>.expected.txt` (metadata, then one line per tensor: name, dtype,
/// shape, the data bytes in hex). Run by `.ci/run`.
#[test]
#[ignore = "writes files for the Python check; run by .ci/run"]
fn write_quantized_for_python() {
    let dir = std::env::var_os("NL_QCHECKPOINT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/qcheckpoint-python"));
    std::fs::create_dir_all(&dir).unwrap();
    fn write<M: Model>(dir: &Path) {
        let mut p = boxed_zeroed::<M::Params<f32>>();
        M::init(&mut p, 42);
        checkpoint::export::<M>(dir.join(format!("{}.safetensors", M::NAME)), &p).unwrap();
        let mut q = boxed_zeroed::<M::QParams>();
        M::quantize(&p, &mut q);
        let bytes = pod_bytes(&*q);
        let mut text = format!("model {}\nspec_sha256 {}\nquant {}\n", M::NAME, M::SPEC_SHA256, M::QUANT.name());
        for t in M::QTENSORS {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            let hex: String = bytes[t.offset..t.offset + t.bytes].iter().map(|b| format!("{b:02x}")).collect();
            text += &format!("tensor {} {} {} {hex}\n", t.name, t.dtype.name(), shape.join(","));
        }
        std::fs::write(dir.join(format!("{}.expected.txt", M::NAME)), text).unwrap();
    }
    write::<I8>(&dir);
    write::<I8P>(&dir);
    write::<T2>(&dir);
    write::<F>(&dir);
    println!("wrote {}", dir.display());
}
