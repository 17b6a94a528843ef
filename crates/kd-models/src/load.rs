//! Loading and saving Hugging Face model directories (`config.json` + `model.safetensors`):
//! `config.json` → [`ModelConfig`] → the architecture → its weights, read by the
//! [`weights`] reader.
//!
//! # Loading
//!
//! Safetensors files are memory-mapped and read one tensor at a time, straight into a parameter
//! of the dtype asked for in [`LoadOptions::dtype`] (by default the device's default float
//! dtype, `f32` unless changed through burn's device settings). The pages of the map are handed
//! back to the OS as they are read, so the peak resident memory of a load is about the size of
//! the model in that dtype, not the size of the files plus the model.
//!
//! Weights may be stored as `F32`, `F16`, `BF16` or `F64`. Each tensor is converted element by
//! element from its stored type into the requested one; a tensor already stored in the requested
//! type is copied bit for bit (a `bf16` checkpoint loaded as `bf16` never passes through `f32`).
//! The transpose of `nn.Linear` weights (`[out, in]` → burn's `[in, out]`) happens in the same
//! pass.
//!
//! Key layouts accepted:
//!
//! - `save_pretrained` of the `*ForCausalLM` class: `transformer.h.0...` (GPT-2),
//!   `model.layers.0...` (LLaMA family), plus `lm_head.weight` when untied;
//! - the hub GPT-2 layout (and base-model saves): the same keys without the `transformer.` /
//!   `model.` prefix; the legacy GPT-2 buffers `h.N.attn.bias` and `h.N.attn.masked_bias` and any
//!   `rotary_emb.inv_freq` are skipped;
//! - sharded checkpoints (`model.safetensors.index.json` + shards).
//!
//! A checkpoint file must not be truncated or rewritten by another process while it loads: as
//! with every memory-mapped loader, the process would then be killed by `SIGBUS`.
//!
//! # Saving
//!
//! [`save_pretrained`] writes the `save_pretrained` layout, one `model.safetensors`, each
//! parameter in its own dtype (a `bf16` model gives a `BF16` file); [`save_pretrained_as`]
//! converts every parameter to one dtype on the way. `config.json` names the dtype in `dtype`
//! and `torch_dtype` as `transformers` does. Tensors are encoded one at a time while the file
//! is written, so saving needs memory for the model plus one tensor.
//!
//! # Example: load a checkpoint in bf16, save it as f32
//!
//! ```no_run
//! use burn::tensor::{Device, FloatDType};
//! use kd_models::load::{LoadOptions, load_pretrained_with, save_pretrained_as};
//!
//! # fn main() -> kd_models::Result<()> {
//! let options = LoadOptions::default().with_dtype(FloatDType::BF16);
//! let model = load_pretrained_with("path/to/hf-model", &options, &Device::flex())?;
//! save_pretrained_as(&model, "path/to/f32-copy", FloatDType::F32)?;
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use burn::tensor::{Device, FloatDType};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::model::CausalLm;
use crate::weights::{self, Weights};

pub use crate::weights::{LoadOptions, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};

/// File name of the config in a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the generation defaults in a model directory.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Loads a model from a Hugging Face directory (`config.json` + `model.safetensors` or a sharded
/// checkpoint) onto `device`, with default [`LoadOptions`].
///
/// # Errors
/// As [`load_pretrained_with`].
pub fn load_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<CausalLm> {
    load_pretrained_with(dir, &LoadOptions::default(), device)
}

/// Loads a model from a Hugging Face directory (`config.json` + `model.safetensors` or a sharded
/// checkpoint) onto `device`, its parameters in the dtype of `options`.
///
/// The weight files are memory-mapped and read one tensor at a time (see the [module
/// docs](self)).
///
/// # Errors
/// [`ModelError::Io`] when a file is missing or cannot be mapped, the config errors of
/// [`ModelConfig::from_json`], [`ModelError::Safetensors`] for a corrupt or truncated weights
/// file (every offset and size in a header is checked against the file before anything is
/// read), [`ModelError::InvalidFile`] for a broken shard index or a config whose sizes need more
/// weights than the files hold, [`ModelError::MissingTensor`] / [`ModelError::ShapeMismatch`] /
/// [`ModelError::UnsupportedDtype`] naming the offending key, [`ModelError::InvalidArgument`]
/// when `device` cannot hold the requested dtype.
pub fn load_pretrained_with(
    dir: impl AsRef<Path>,
    options: &LoadOptions,
    device: &Device,
) -> Result<CausalLm> {
    let dir = dir.as_ref();
    let config = ModelConfig::from_file(dir.join(CONFIG_FILE))?;
    let weights = weights::read_dir(dir, config.key_prefix(), options, device)?;
    load_with_weights(&config, weights)
}

/// Builds a model from a config and the bytes of one safetensors file, with default
/// [`LoadOptions`].
///
/// # Errors
/// As [`load_pretrained_with`].
pub fn load_from_bytes(
    config: &ModelConfig,
    safetensors: Vec<u8>,
    device: &Device,
) -> Result<CausalLm> {
    load_from_bytes_with(config, safetensors, &LoadOptions::default(), device)
}

/// Builds a model from a config and the bytes of one safetensors file, its parameters in the
/// dtype of `options`.
///
/// # Errors
/// As [`load_pretrained_with`].
pub fn load_from_bytes_with(
    config: &ModelConfig,
    safetensors: Vec<u8>,
    options: &LoadOptions,
    device: &Device,
) -> Result<CausalLm> {
    let weights = weights::read_bytes(safetensors, config.key_prefix(), options, device)?;
    load_with_weights(config, weights)
}

fn load_with_weights(config: &ModelConfig, mut weights: Weights) -> Result<CausalLm> {
    check_capacity(config, &weights)?;
    let model = CausalLm::from_weights(config, &mut weights)?;
    let unused = weights.unused();
    if !unused.is_empty() {
        log::warn!("{} checkpoint tensors were not used: {:?}", unused.len(), unused);
    }
    Ok(model)
}

/// Refuses a config whose parameters need more bytes than the weight files hold (at 2 bytes a
/// value, the smallest float dtype loaded), before anything is allocated for them.
fn check_capacity(config: &ModelConfig, weights: &Weights) -> Result<()> {
    let needed = config.num_parameters().map(|n| u128::from(n) * 2);
    let held = u128::from(weights.data_bytes());
    if needed.is_some_and(|n| n <= held) {
        return Ok(());
    }
    let files: Vec<String> = weights.paths().map(|p| p.display().to_string()).collect();
    let path = weights.paths().next().map_or_else(Default::default, Path::to_path_buf);
    Err(ModelError::InvalidFile {
        path,
        reason: format!(
            "config.json describes {} parameters, at least {} bytes, but the weights ({}) hold {held} bytes of tensors",
            config.num_parameters().map_or("more than 2^64".into(), |n| n.to_string()),
            needed.map_or("more than 2^65".into(), |n| n.to_string()),
            files.join(", "),
        ),
    })
}

/// Writes `config.json`, `generation_config.json` and `model.safetensors` (`save_pretrained` key
/// layout, every parameter in its own dtype) into `dir`, creating it if needed. The result loads
/// back with [`load_pretrained`] and with `transformers`' `from_pretrained`.
///
/// # Errors
/// [`ModelError::Io`] when the directory or a file cannot be written.
pub fn save_pretrained(model: &CausalLm, dir: impl AsRef<Path>) -> Result<()> {
    save(model, dir.as_ref(), None)
}

/// As [`save_pretrained`], with every parameter converted to `dtype` as it is written (`F32` and
/// `Flex32` are written as `F32`).
///
/// # Errors
/// [`ModelError::Io`] when the directory or a file cannot be written.
pub fn save_pretrained_as(
    model: &CausalLm,
    dir: impl AsRef<Path>,
    dtype: FloatDType,
) -> Result<()> {
    save(model, dir.as_ref(), Some(dtype))
}

fn save(model: &CausalLm, dir: &Path, dtype: Option<FloatDType>) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;
    let dtype_name = weights::write_file(model.named_tensors(), dtype, &dir.join(WEIGHTS_FILE))?;

    let config = model.config();
    let mut value = config.to_json();
    // transformers ≥ 4.56 reads `dtype`, older versions `torch_dtype`.
    value["dtype"] = serde_json::json!(dtype_name);
    value["torch_dtype"] = serde_json::json!(dtype_name);
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
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
        .map_err(|source| ModelError::Io { path: generation_path, source })
}

impl CausalLm {
    /// Loads a Hugging Face model directory (`config.json` + `model.safetensors`).
    ///
    /// # Errors
    /// See [`load_pretrained`].
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        load_pretrained(dir, device)
    }

    /// Loads a Hugging Face model directory with its parameters in the dtype of `options`
    /// (bf16, say, with no `f32` copy of a bf16 checkpoint).
    ///
    /// # Errors
    /// See [`load_pretrained_with`].
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        load_pretrained_with(dir, options, device)
    }

    /// Writes the model as a Hugging Face directory that reloads to the same logits.
    ///
    /// # Errors
    /// See [`save_pretrained`].
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_pretrained(self, dir)
    }

    /// As [`CausalLm::save_pretrained`], every parameter converted to `dtype` as it is written.
    ///
    /// # Errors
    /// See [`save_pretrained_as`].
    pub fn save_pretrained_as(&self, dir: impl AsRef<Path>, dtype: FloatDType) -> Result<()> {
        save_pretrained_as(self, dir, dtype)
    }
}
