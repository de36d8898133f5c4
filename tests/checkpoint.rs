//! Safetensors checkpoints (`nl_runtime::checkpoint`): round trips, atomic
//! saves, and rejection of truncated, corrupted, foreign and mistyped files,
//! plus a deterministic property test that `validate` never panics.

use std::path::{Path, PathBuf};

use nl::nl_model;
use nl_runtime::checkpoint::{self, CheckpointError};
use nl_runtime::{boxed_zeroed, Flat, Model};

nl_model!("models/micro_memory.toml");
nl_model!("models/micro.toml");

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
    assert!(header.starts_with(r#"{"__metadata__":{"format":"nl","format_version":"1","spec_sha256":""#));
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
    let forged = String::from_utf8(bytes[..checkpoint::header_len::<MM, f32>()].to_vec())
        .unwrap()
        .replace(micro_memory::SPEC_SHA256, micro::SPEC_SHA256);
    let mut forged = forged.into_bytes();
    forged.extend_from_slice(&bytes[checkpoint::header_len::<MM, f32>()..]);
    let e = checkpoint::validate::<micro::Model, f32>(&forged).unwrap_err();
    assert!(matches!(e, CheckpointError::UnexpectedTensor(ref n) if n.as_str() == "mem.0.wk"), "{e}");
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
    assert!(matches!(checkpoint::load::<MM, f32>(&bad, &mut boxed_zeroed()), Err(CheckpointError::Io(_))));
    std::fs::remove_dir_all(&dir).unwrap();
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
