//! Checkpoints: a directory with the student's weights (`model.safetensors`, keyed by module
//! path), the optimizer moments (`optimizer.safetensors`) and everything else needed to resume
//! bit-for-bit (`state.json`: step, data cursor, seed, sampling RNG, the method's state, history).
//!
//! A checkpoint is written into `<dir>.tmp`, synced and renamed over `<dir>`, so a crash leaves
//! either the old checkpoint or the new one, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::data::DataCursor;
use crate::error::{Result, TrainError};
use crate::metrics::{EvalRecord, StepRecord};

/// File of the student's weights inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File of the optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File of the loop state.
pub const STATE_FILE: &str = "state.json";

/// Everything but tensors that a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// AdamW's update count (equal to `step` unless a run changed optimizers).
    pub optimizer_steps: u64,
    /// Next batch of the data order.
    pub cursor: DataCursor,
    /// Seed of the data order.
    pub seed: u64,
    /// State of the sampling RNG (on-policy methods draw from it).
    pub rng: u64,
    /// The method's own state ([`crate::methods::Method::state`]; `null` when stateless).
    #[serde(default)]
    pub method: serde_json::Value,
    /// Steps skipped because their loss or gradients were not finite (`on_non_finite = skip`).
    #[serde(default)]
    pub non_finite_steps: u64,
    /// Dynamic loss scaling (f16 training only).
    #[serde(default)]
    pub loss_scaler: Option<crate::precision::LossScaler>,
    /// Tokens consumed (counted positions).
    pub tokens_seen: u64,
    /// The learning-rate schedule the run was started with (`None` in checkpoints written before
    /// it was stored); a resume under another schedule is refused unless
    /// [`TrainConfig::allow_schedule_change`](crate::TrainConfig::allow_schedule_change).
    #[serde(default)]
    pub schedule: Option<crate::schedule::LrSchedule>,
    /// Training history up to `step`.
    pub history: Vec<StepRecord>,
    /// Evaluations up to `step`.
    pub evals: Vec<EvalRecord>,
}

fn to_bytes(data: &TensorData) -> Result<Vec<u8>> {
    if data.dtype() != DType::F32 {
        return Err(TrainError::checkpoint(
            "<memory>",
            format!("expected f32 tensors, got {:?}", data.dtype()),
        ));
    }
    Ok(data.as_bytes().to_vec())
}

/// Writes named `f32` tensors to a safetensors file.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Checkpoint`].
pub fn write_tensors(path: &Path, tensors: &BTreeMap<String, TensorData>) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, d)| Ok((k.clone(), to_bytes(d)?, d.shape().to_vec())))
        .collect::<Result<_>>()?;
    let views = bytes
        .iter()
        .map(|(k, b, s)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.as_str(), v))
                .map_err(|e| TrainError::checkpoint(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let buf = safetensors::serialize(views, None)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    fs::write(path, buf).map_err(|e| TrainError::io(path, e))
}

/// Reads named `f32` tensors from a safetensors file.
///
/// # Errors
/// [`TrainError::Io`], or [`TrainError::Checkpoint`] for a corrupt file or another dtype.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, TensorData>> {
    let buf = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&buf)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(TrainError::checkpoint(
                path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok(out)
}

/// Writes a JSON value to `path` through a temporary file and a rename.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Json`].
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value)
        .map_err(|source| TrainError::Json { path: path.to_path_buf(), source })?;
    let mut f = fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| TrainError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Student weights by module path.
    pub model: BTreeMap<String, TensorData>,
    /// Optimizer moments (`m.<path>`, `v.<path>`).
    pub optimizer: BTreeMap<String, TensorData>,
    /// Loop state.
    pub state: TrainState,
}

impl Checkpoint {
    /// Writes the checkpoint to `dir` atomically (into `<dir>.tmp`, then a rename; a previous
    /// checkpoint at `dir` is replaced).
    ///
    /// # Errors
    /// [`TrainError::Io`], [`TrainError::Json`] or [`TrainError::Checkpoint`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = sibling(dir, "tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        write_tensors(&tmp.join(MODEL_FILE), &self.model)?;
        write_tensors(&tmp.join(OPTIMIZER_FILE), &self.optimizer)?;
        write_json_atomic(&tmp.join(STATE_FILE), &self.state)?;
        let old = sibling(dir, "old");
        if dir.exists() {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
            }
            fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
        }
        fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        Ok(())
    }

    /// Reads a checkpoint directory.
    ///
    /// # Errors
    /// [`TrainError::Io`] when a file is missing, [`TrainError::Json`] or
    /// [`TrainError::Checkpoint`] when one is corrupt.
    pub fn load(dir: &Path) -> Result<Self> {
        let state_path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
        let state = serde_json::from_str(&text)
            .map_err(|source| TrainError::Json { path: state_path, source })?;
        Ok(Self {
            model: read_tensors(&dir.join(MODEL_FILE))?,
            optimizer: read_tensors(&dir.join(OPTIMIZER_FILE))?,
            state,
        })
    }
}

/// `<dir>.<suffix>` beside `dir`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip_bit_exact() {
        let dir = std::env::temp_dir().join(format!("kd-train-ckpt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut t = BTreeMap::new();
        t.insert(
            "a.weight".to_string(),
            TensorData::new(vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3.25e-7], [2, 2]),
        );
        t.insert("b".to_string(), TensorData::new(vec![7.0f32], [1]));
        let p = dir.join("x.safetensors");
        write_tensors(&p, &t).unwrap();
        assert_eq!(read_tensors(&p).unwrap(), t);
        fs::remove_dir_all(&dir).unwrap();
    }
}
