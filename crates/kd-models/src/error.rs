//! The one error type of this crate, [`ModelError`], and its [`Result`] alias.

use std::path::PathBuf;

/// Everything that can go wrong while reading configs, loading or saving weights, tokenizing or
/// generating.
///
/// Every variant carries the offending file, key or value so that the message alone says what to
/// fix. Shape mismatches inside `forward` (a bug in the caller, not in the data) panic instead,
/// as documented on the forward methods.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read or written.
    ///
    /// Check that the path exists, that it is a Hugging Face model directory (with `config.json`
    /// and `model.safetensors`) and that it is readable (or, when saving, writable).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A JSON file (`config.json`, `tokenizer_config.json`, ...) is not valid JSON.
    ///
    /// Re-download or re-save the file; it is probably truncated or hand-edited.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file that failed to parse.
        path: PathBuf,
        /// The underlying parse error.
        source: serde_json::Error,
    },

    /// A config field is missing or has the wrong type or an invalid value.
    ///
    /// Fix the named key in `config.json` (compare with the reference `transformers` config class
    /// of the architecture).
    #[error("config key `{key}`: {reason}")]
    Config {
        /// The config key (as in `config.json`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The config's `model_type` is not one of the architectures this crate implements.
    ///
    /// Supported are `gpt2`, `llama`, `mistral` and `qwen2`.
    #[error("unsupported model_type `{model_type}` (supported: gpt2, llama, mistral, qwen2)")]
    UnsupportedModelType {
        /// The `model_type` found in the config.
        model_type: String,
    },

    /// A config value names a feature this crate does not implement (an activation function, a
    /// RoPE scaling type, ...).
    ///
    /// Use a checkpoint without that feature, or add it to the port.
    #[error("unsupported value `{value}` for config key `{key}`")]
    UnsupportedConfig {
        /// The config key.
        key: String,
        /// The value that is not supported.
        value: String,
    },

    /// A `.safetensors` file is corrupt, truncated or not a safetensors file at all.
    ///
    /// Re-download the checkpoint; compare its size and sha256 with the source.
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors {
        /// The file that failed to parse.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },

    /// A model file is inconsistent or out of bounds: not a regular file, larger than such a file
    /// can be, a shard index naming a shard outside the model directory or disagreeing with the
    /// shards, a tokenizer with duplicate ids or merges of unknown tokens, a config whose sizes
    /// need more weights than the files hold.
    ///
    /// The message names what is wrong; repair or re-download the named file.
    #[error("invalid {path}: {reason}")]
    InvalidFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A weight the architecture needs is not in the checkpoint.
    ///
    /// The checkpoint does not match its `config.json` (wrong architecture, or a layout this
    /// crate does not know). Keys are looked up in the `save_pretrained` layout
    /// (`transformer.h.0...`, `model.layers.0...`) and, for GPT-2, the hub layout without the
    /// `transformer.` prefix.
    #[error("missing tensor `{key}` (expected shape {expected:?})")]
    MissingTensor {
        /// The Hugging Face key of the weight.
        key: String,
        /// The shape it should have.
        expected: Vec<usize>,
    },

    /// A weight has a shape that does not match the config.
    ///
    /// The checkpoint does not match its `config.json`; check the sizes named in the message
    /// against `hidden_size`/`n_embd`, `vocab_size`, the head counts and `intermediate_size`.
    #[error("tensor `{key}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The Hugging Face key of the weight.
        key: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the checkpoint.
        got: Vec<usize>,
    },

    /// A weight is stored in a dtype the loader does not read (not a float dtype).
    ///
    /// Supported stored dtypes are `F32`, `F16`, `BF16` and `F64`; quantized checkpoints must be
    /// de-quantized first.
    #[error("tensor `{key}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The Hugging Face key of the weight.
        key: String,
        /// The stored dtype, as the safetensors crate names it.
        dtype: String,
    },

    /// The tokenizer could not be loaded or failed to encode/decode.
    ///
    /// Check that `tokenizer.json` exists and was written by a recent `tokenizers` version.
    #[error("tokenizer error{}: {reason}", path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, when the error is about loading it.
        path: Option<PathBuf>,
        /// What the `tokenizers` library reported.
        reason: String,
    },

    /// An argument is invalid (an empty prompt, a token id outside the vocabulary, a
    /// non-positive temperature, ...).
    ///
    /// The message names the argument and the accepted range.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// `Result` with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// Builds a [`ModelError::Config`].
    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        Self::Config { key: key.to_string(), reason: reason.into() }
    }

    /// Builds a [`ModelError::InvalidArgument`].
    pub(crate) fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { name: name.to_string(), reason: reason.into() }
    }
}
