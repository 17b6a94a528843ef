//! Loading and saving Hugging Face model directories (`config.json` + `model.safetensors`).
//!
//! Weights may be stored as `F32`, `F16`, `BF16` or `F64`; they are converted to `f32`. Key
//! layouts accepted:
//!
//! - `save_pretrained` of the `*ForCausalLM` class: `transformer.h.0...` (GPT-2),
//!   `model.layers.0...` (LLaMA family), plus `lm_head.weight` when untied;
//! - the hub GPT-2 layout (and base-model saves): the same keys without the `transformer.` /
//!   `model.` prefix; the legacy GPT-2 buffers `h.N.attn.bias` and `h.N.attn.masked_bias` and any
//!   `rotary_emb.inv_freq` are skipped;
//! - sharded checkpoints (`model.safetensors.index.json` + shards).
//!
//! Saving always writes the `save_pretrained` layout in `f32`, one `model.safetensors`.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use safetensors::{SafeTensorError, SafeTensors, View};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gpt2::Gpt2;
use crate::layers::{LayerNorm, RmsNorm};
use crate::llama::Llama;
use crate::model::CausalLm;

/// File name of the weights in a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the shard index of a sharded checkpoint.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the config in a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the generation defaults in a model directory.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Loads a model from a Hugging Face directory (`config.json` + `model.safetensors` or a sharded
/// checkpoint) onto `device`.
///
/// # Errors
/// [`ModelError::Io`] when a file is missing, the config errors of
/// [`ModelConfig::from_json`], [`ModelError::Safetensors`] for a corrupt or truncated weights
/// file, [`ModelError::MissingTensor`] / [`ModelError::ShapeMismatch`] /
/// [`ModelError::UnsupportedDtype`] naming the offending key.
pub fn load_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<CausalLm> {
    let dir = dir.as_ref();
    let config = ModelConfig::from_file(dir.join(CONFIG_FILE))?;
    let files = weight_files(dir)?;
    let mut weights = Weights::new(&config, device);
    for path in files {
        let bytes =
            std::fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        weights.add_file(path, bytes)?;
    }
    load_with_weights(&config, weights)
}

/// Builds a model from a config and the bytes of one safetensors file.
///
/// # Errors
/// As [`load_pretrained`].
pub fn load_from_bytes(
    config: &ModelConfig,
    safetensors: Vec<u8>,
    device: &Device,
) -> Result<CausalLm> {
    let mut weights = Weights::new(config, device);
    weights.add_file(PathBuf::from("<memory>"), safetensors)?;
    load_with_weights(config, weights)
}

fn load_with_weights(config: &ModelConfig, mut weights: Weights) -> Result<CausalLm> {
    let model = match config {
        ModelConfig::Gpt2(c) => CausalLm::Gpt2(Gpt2::from_weights(c, &mut weights)?),
        ModelConfig::Llama(c) => CausalLm::Llama(Llama::from_weights(c, &mut weights)?),
    };
    let unused = weights.unused();
    if !unused.is_empty() {
        log::warn!("{} checkpoint tensors were not used: {:?}", unused.len(), unused);
    }
    Ok(model)
}

/// Writes `config.json`, `generation_config.json` and `model.safetensors` (`f32`,
/// `save_pretrained` key layout) into `dir`, creating it if needed. The result loads back with [`load_pretrained`] and with
/// `transformers`' `from_pretrained`.
///
/// # Errors
/// [`ModelError::Io`] when the directory or a file cannot be written.
pub fn save_pretrained(model: &CausalLm, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir)
        .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
    let config = model.config();
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config.to_json()).expect("a JSON value serializes");
    std::fs::write(&config_path, text + "\n")
        .map_err(|source| ModelError::Io { path: config_path.clone(), source })?;

    // generation_config.json as `save_pretrained` writes it for a model config.
    let generation = serde_json::json!({
        "_from_model_config": true,
        "bos_token_id": config.bos_token_id(),
        "eos_token_id": match config.eos_token_ids() {
            [] => serde_json::Value::Null,
            [one] => serde_json::json!(one),
            many => serde_json::json!(many),
        },
        "pad_token_id": config.pad_token_id(),
    });
    let generation_path = dir.join(GENERATION_CONFIG_FILE);
    let text = serde_json::to_string_pretty(&generation).expect("a JSON value serializes");
    std::fs::write(&generation_path, text + "\n")
        .map_err(|source| ModelError::Io { path: generation_path, source })?;

    let tensors = model.named_tensors();
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let weights_path = dir.join(WEIGHTS_FILE);
    // Streamed to the file: no second in-memory copy of the weights.
    let named = tensors.iter().map(|t| (t.name.as_str(), t));
    safetensors::serialize_to_file(named, Some(metadata), &weights_path).map_err(|e| match e {
        SafeTensorError::IoError(source) => ModelError::Io { path: weights_path.clone(), source },
        other => ModelError::Safetensors { path: weights_path.clone(), reason: other.to_string() },
    })
}

/// The safetensors files of a model directory: `model.safetensors`, else the shards listed in
/// `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    if !index_path.is_file() {
        return Err(ModelError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} found"),
            ),
        });
    }
    let text = std::fs::read_to_string(&index_path)
        .map_err(|source| ModelError::Io { path: index_path.clone(), source })?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| ModelError::Json { path: index_path.clone(), source })?;
    let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
        ModelError::config("weight_map", format!("missing in {}", index_path.display()))
    })?;
    let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// How a Hugging Face checkpoint stores a linear layer's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HfLinear {
    /// `torch.nn.Linear`: `[out, in]`, transposed for burn.
    Linear,
    /// GPT-2 `Conv1D`: `[in, out]`, burn's layout already.
    Conv1D,
}

/// One stored tensor, located in one of the loaded files.
#[derive(Debug)]
struct Entry {
    file: usize,
    stored_name: String,
    info: TensorInfo,
}

/// The tensors of a checkpoint, looked up by canonical (`save_pretrained`) key and converted to
/// `f32` on demand.
#[derive(Debug)]
pub(crate) struct Weights {
    files: Vec<(PathBuf, Vec<u8>, usize)>,
    entries: HashMap<String, Entry>,
    used: HashSet<String>,
    prefix: &'static str,
    device: Device,
}

impl Weights {
    fn new(config: &ModelConfig, device: &Device) -> Self {
        let prefix = match config {
            ModelConfig::Gpt2(_) => "transformer.",
            ModelConfig::Llama(_) => "model.",
        };
        Self {
            files: Vec::new(),
            entries: HashMap::new(),
            used: HashSet::new(),
            prefix,
            device: device.clone(),
        }
    }

    /// Parses the header of one safetensors file and indexes its tensors.
    fn add_file(&mut self, path: PathBuf, bytes: Vec<u8>) -> Result<()> {
        let (header_len, metadata): (usize, Metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
        let file = self.files.len();
        for (name, info) in metadata.tensors() {
            // Hub GPT-2 files (and base-model saves) lack the `transformer.` / `model.` prefix.
            let canonical = if name.starts_with(self.prefix) || name.starts_with("lm_head.") {
                name.clone()
            } else {
                format!("{}{name}", self.prefix)
            };
            self.entries.insert(canonical, Entry { file, stored_name: name, info: info.clone() });
        }
        self.files.push((path, bytes, 8 + header_len));
        Ok(())
    }

    /// Marks a key as intentionally unused (tied heads, buffers).
    pub(crate) fn skip(&mut self, key: &str) {
        self.used.insert(key.to_string());
    }

    /// Stored keys that no module consumed (legacy buffers excluded).
    fn unused(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, _)| !self.used.contains(*k))
            .filter(|(k, _)| {
                !(k.ends_with(".attn.bias")
                    || k.ends_with(".attn.masked_bias")
                    || k.ends_with("rotary_emb.inv_freq"))
            })
            .map(|(_, e)| e.stored_name.clone())
            .collect();
        out.sort();
        out
    }

    /// The tensor `key` as `f32` values, checked against `expected`.
    fn take(&mut self, key: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entries.get(key).ok_or_else(|| ModelError::MissingTensor {
            key: key.into(),
            expected: expected.to_vec(),
        })?;
        if entry.info.shape != expected {
            return Err(ModelError::ShapeMismatch {
                key: key.into(),
                expected: expected.to_vec(),
                got: entry.info.shape.clone(),
            });
        }
        let (path, bytes, start) = &self.files[entry.file];
        let (lo, hi) = entry.info.data_offsets;
        let raw = bytes.get(start + lo..start + hi).ok_or_else(|| ModelError::Safetensors {
            path: path.clone(),
            reason: format!("data of `{}` lies outside the file", entry.stored_name),
        })?;
        let n: usize = expected.iter().product();
        let values = to_f32(raw, entry.info.dtype, key)?;
        if values.len() != n {
            return Err(ModelError::Safetensors {
                path: path.clone(),
                reason: format!(
                    "`{}` holds {} values, its shape needs {n}",
                    entry.stored_name,
                    values.len()
                ),
            });
        }
        self.used.insert(key.to_string());
        Ok(values)
    }

    fn param<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Result<Param<Tensor<D>>> {
        let values = self.take(key, &shape)?;
        Ok(Param::from_data(TensorData::new(values, shape), &self.device))
    }

    /// A linear layer `{prefix}.weight` (+ `{prefix}.bias`) as burn `[d_in, d_out]`.
    pub(crate) fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        layout: HfLinear,
    ) -> Result<Linear> {
        let key = format!("{prefix}.weight");
        let weight = match layout {
            HfLinear::Conv1D => self.param(&key, [d_in, d_out])?,
            HfLinear::Linear => {
                let stored = self.take(&key, &[d_out, d_in])?;
                let values = transpose(&stored, d_out, d_in);
                Param::from_data(TensorData::new(values, [d_in, d_out]), &self.device)
            }
        };
        let bias = if bias { Some(self.param(&format!("{prefix}.bias"), [d_out])?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// An embedding table `{prefix}.weight`, `[n, d]`.
    pub(crate) fn embedding(&mut self, prefix: &str, n: usize, d: usize) -> Result<Embedding> {
        Ok(Embedding { weight: self.param(&format!("{prefix}.weight"), [n, d])? })
    }

    /// A layer norm `{prefix}.weight`, `{prefix}.bias`.
    pub(crate) fn layer_norm(&mut self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.param(&format!("{prefix}.weight"), [d])?,
            bias: self.param(&format!("{prefix}.bias"), [d])?,
            eps,
        })
    }

    /// An RMSNorm `{prefix}.weight`.
    pub(crate) fn rms_norm(&mut self, prefix: &str, d: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: self.param(&format!("{prefix}.weight"), [d])?, eps })
    }
}

/// Little-endian stored values of one tensor as `f32`.
fn to_f32(raw: &[u8], dtype: Dtype, key: &str) -> Result<Vec<f32>> {
    let values = match dtype {
        Dtype::F32 => {
            raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                key: key.into(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(values)
}

/// Row-major transpose of a `[rows, cols]` matrix.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// A parameter on its way to a safetensors file: HF key, HF shape, `f32` values.
#[derive(Debug, Clone)]
pub(crate) struct NamedTensor {
    pub(crate) name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl NamedTensor {
    pub(crate) fn from_tensor<const D: usize>(name: &str, tensor: Tensor<D>) -> Self {
        let shape = tensor.dims().to_vec();
        let n: usize = shape.iter().product();
        let data = tensor.into_data().try_cast_as::<f32>().expect("float data casts to f32");
        // TensorData holds contiguous native-endian values: on little-endian targets its bytes
        // are already the safetensors encoding.
        let bytes = if cfg!(target_endian = "little") && data.as_bytes().len() == 4 * n {
            data.as_bytes().to_vec()
        } else {
            let values = data.try_into_vec_as::<f32>().expect("f32 data");
            let mut bytes = Vec::with_capacity(4 * n);
            for v in values {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes
        };
        Self { name: name.to_string(), shape, bytes }
    }
}

impl View for &NamedTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// `{prefix}.weight` (+ `.bias`) of a burn linear layer in the HF storage layout.
pub(crate) fn export_linear(prefix: &str, linear: &Linear, layout: HfLinear) -> Vec<NamedTensor> {
    let weight = linear.weight.val(); // [d_in, d_out]
    let weight = match layout {
        HfLinear::Conv1D => weight,
        HfLinear::Linear => weight.transpose(), // [d_out, d_in]
    };
    let mut out = vec![NamedTensor::from_tensor(&format!("{prefix}.weight"), weight)];
    if let Some(bias) = &linear.bias {
        out.push(NamedTensor::from_tensor(&format!("{prefix}.bias"), bias.val()));
    }
    out
}

impl LayerNorm {
    pub(crate) fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        vec![
            NamedTensor::from_tensor(&format!("{prefix}.weight"), self.weight.val()),
            NamedTensor::from_tensor(&format!("{prefix}.bias"), self.bias.val()),
        ]
    }
}

impl RmsNorm {
    pub(crate) fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        vec![NamedTensor::from_tensor(&format!("{prefix}.weight"), self.weight.val())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_dtypes_convert() {
        let one_f16 = half::f16::from_f32(1.5).to_bits().to_le_bytes();
        assert_eq!(to_f32(&one_f16, Dtype::F16, "k").unwrap(), vec![1.5]);
        let bf = half::bf16::from_f32(-2.0).to_bits().to_le_bytes();
        assert_eq!(to_f32(&bf, Dtype::BF16, "k").unwrap(), vec![-2.0]);
        let err = to_f32(&[0u8; 4], Dtype::I32, "w").unwrap_err();
        assert!(matches!(err, ModelError::UnsupportedDtype { ref key, .. } if key == "w"));
    }

    #[test]
    fn transpose_is_row_major() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
