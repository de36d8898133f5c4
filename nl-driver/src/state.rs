//! The training state that lets a run resume exactly where it stopped.
//!
//! Beside each model checkpoint `X.safetensors` the trainer writes
//! `X.train.safetensors` (see [`path_for`]), a safetensors file (read and
//! written with the `safetensors` crate) with three F32 tensors of
//! `PARAM_COUNT` values each, `params`, `adam_m` and `adam_v`, and string
//! metadata: `format = "nl-train"`, `format_version = "1"`, the model's
//! `name` and `spec_sha256`, the completed `step` of `steps`, the `seed`,
//! the `batch`, the corpus's length and FNV-1a fingerprint, and the
//! smoothed training loss.
//!
//! A resumed run loads the three tensors, replays the batch sampler's
//! random draws of the completed steps (a few microseconds per step, so no
//! generator state needs storing), and goes on: with the same corpus and
//! thread count its parameters are bit for bit those of an uninterrupted
//! run (tested). The state holds its own copy of the parameters so that a
//! pair written at different moments can never be mixed; each file is
//! written to a temporary name and renamed, so an interrupted run leaves
//! the last complete pair in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nl_runtime::Model;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{Error, Result};

/// Value of the `format` metadata key of a training state.
pub const FORMAT: &str = "nl-train";
/// Value of the `format_version` metadata key.
pub const FORMAT_VERSION: &str = "1";

/// Where the training state of the checkpoint `checkpoint` lives:
/// `dir/stem.train.safetensors` for `dir/stem.ext` (`stem.train.safetensors`
/// without an extension).
pub fn path_for(checkpoint: &Path) -> PathBuf {
    let stem = checkpoint.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    checkpoint.with_file_name(format!("{stem}.train.safetensors"))
}

/// Everything a resumed run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Optimizer steps of the whole run (the learning-rate schedule's length).
    pub steps: u64,
    /// The run's seed.
    pub seed: u64,
    /// Sequences per step.
    pub batch: u64,
    /// Bytes of the corpus trained on.
    pub corpus_len: u64,
    /// [`crate::data::fnv1a`] of the corpus.
    pub corpus_fnv: u64,
    /// Bias-corrected exponential moving average of the training loss (nats), and its weight.
    pub smooth: (f64, f64),
    /// The parameters, flat, in `TENSORS` order.
    pub params: Vec<f32>,
    /// AdamW's first moments.
    pub adam_m: Vec<f32>,
    /// AdamW's second moments.
    pub adam_v: Vec<f32>,
}

fn le_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl TrainState {
    /// Writes the state of model `M` to `path` atomically (`<path>.tmp`, then a rename).
    pub fn save<M: Model>(&self, path: &Path) -> Result<()> {
        let n = M::PARAM_COUNT;
        if self.params.len() != n || self.adam_m.len() != n || self.adam_v.len() != n {
            return Err(Error(format!("training state of {}: tensors must have {n} values", M::NAME)));
        }
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("name", M::NAME.to_string()),
            ("spec_sha256", M::SPEC_SHA256.to_string()),
            ("step", self.step.to_string()),
            ("steps", self.steps.to_string()),
            ("seed", self.seed.to_string()),
            ("batch", self.batch.to_string()),
            ("corpus_len", self.corpus_len.to_string()),
            ("corpus_fnv", format!("{:016x}", self.corpus_fnv)),
            ("smooth", format!("{:e}", self.smooth.0)),
            ("smooth_w", format!("{:e}", self.smooth.1)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bufs = [
            ("params", le_bytes(&self.params)),
            ("adam_m", le_bytes(&self.adam_m)),
            ("adam_v", le_bytes(&self.adam_v)),
        ];
        let mut views = Vec::new();
        for (name, buf) in &bufs {
            let view = TensorView::new(Dtype::F32, vec![n], buf).map_err(|e| Error(format!("training state: {e}")))?;
            views.push((*name, view));
        }
        let bytes =
            safetensors::tensor::serialize(views, Some(meta)).map_err(|e| Error(format!("training state: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Reads the state of model `M` from `path`, refusing a file of another
    /// spec, another format, or with tensors of the wrong size.
    pub fn load<M: Model>(path: &Path) -> Result<TrainState> {
        let bytes = crate::read_file(path, "training state")?;
        let bad = |why: String| Error(format!("the training state {} {why}", path.display()));
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("is not a safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| meta.get(k).cloned().ok_or_else(|| bad(format!("has no `{k}` metadata")));
        if get("format")? != FORMAT || get("format_version")? != FORMAT_VERSION {
            return Err(bad(format!("is not an nl training state of format {FORMAT} version {FORMAT_VERSION}")));
        }
        let sha = get("spec_sha256")?;
        if sha != M::SPEC_SHA256 {
            return Err(bad(format!(
                "belongs to another spec (model `{}`, spec sha256 {}…; this is `{}`, {}…)",
                get("name").unwrap_or_default(),
                sha.get(..12).unwrap_or(&sha),
                M::NAME,
                &M::SPEC_SHA256[..12]
            )));
        }
        let int = |k: &str| get(k).and_then(|v| v.parse::<u64>().map_err(|_| bad(format!("has a bad `{k}`: {v:?}"))));
        let float = |k: &str| get(k).and_then(|v| v.parse::<f64>().map_err(|_| bad(format!("has a bad `{k}`: {v:?}"))));
        let fnv = get("corpus_fnv")?;
        let corpus_fnv = u64::from_str_radix(&fnv, 16).map_err(|_| bad(format!("has a bad `corpus_fnv`: {fnv:?}")))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("is not a safetensors file ({e})")))?;
        let tensor = |name: &str| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| bad(format!("has no tensor `{name}`")))?;
            if t.dtype() != Dtype::F32 || t.shape() != [M::PARAM_COUNT] {
                return Err(bad(format!(
                    "has `{name}` as {:?} {:?}, expected F32 [{}]",
                    t.dtype(),
                    t.shape(),
                    M::PARAM_COUNT
                )));
            }
            let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(format!("has a non-finite value in `{name}` at {i}")));
            }
            Ok(v)
        };
        let state = TrainState {
            step: int("step")?,
            steps: int("steps")?,
            seed: int("seed")?,
            batch: int("batch")?,
            corpus_len: int("corpus_len")?,
            corpus_fnv,
            smooth: (float("smooth")?, float("smooth_w")?),
            params: tensor("params")?,
            adam_m: tensor("adam_m")?,
            adam_v: tensor("adam_v")?,
        };
        if state.step > state.steps || state.batch == 0 {
            return Err(bad(format!("is inconsistent: step {} of {}, batch {}", state.step, state.steps, state.batch)));
        }
        Ok(state)
    }
}

/// Writes `bytes` to `path` atomically: `<path>.tmp`, synced, then renamed
/// over `path` (the directory is created if needed). On failure the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error(format!("cannot create the directory {}: {e}", dir.display())))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error(format!("cannot write {}: {e}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_path_sits_beside_the_checkpoint() {
        assert_eq!(path_for(Path::new("a/b/x.safetensors")), Path::new("a/b/x.train.safetensors"));
        assert_eq!(path_for(Path::new("x")), Path::new("x.train.safetensors"));
    }
}
