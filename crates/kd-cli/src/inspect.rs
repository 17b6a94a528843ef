//! `kd inspect <dir>`: loads a Hugging Face model directory the way training does and prints what
//! it holds, or one error line naming the file and what is wrong (exit status 2).
//!
//! The loaders of `kd_models` check every file before they trust it (safetensors headers against
//! the file, the shard index against the shards, config sizes against the weights, tokenizer
//! vocabularies); this command only adds the name of the file to the errors that lack it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use burn::module::Module;
use burn::tensor::Device;
use kd_models::load::{CONFIG_FILE, LoadOptions, WEIGHTS_FILE, load_pretrained_with};
use kd_models::weights::{CheckpointListing, list_checkpoint};
use kd_models::{ModelConfig, ModelError, Tokenizer};

use crate::error::Input;

/// File name of the tokenizer in a model directory.
const TOKENIZER_FILE: &str = "tokenizer.json";

/// The side files listed when present.
const SIDE_FILES: [&str; 3] =
    ["tokenizer_config.json", "generation_config.json", "special_tokens_map.json"];

/// Runs `kd inspect`: prints the summary of `dir` to stdout.
///
/// # Errors
/// An input error (exit 2) naming the file and the problem.
pub fn cmd_inspect(dir: &Path) -> Result<()> {
    let summary = inspect(dir).input()?;
    print!("{summary}");
    Ok(())
}

/// The summary of the model directory `dir`, or the first problem found.
fn inspect(dir: &Path) -> Result<String> {
    if !dir.is_dir() {
        return Err(anyhow!("{}: not a directory", dir.display()));
    }
    let config_path = dir.join(CONFIG_FILE);
    let config = ModelConfig::from_file(&config_path).map_err(|e| in_file(e, &config_path))?;
    let listing = list_checkpoint(dir).map_err(|e| in_file(e, &dir.join(WEIGHTS_FILE)))?;
    let weights_file = listing.index.clone().unwrap_or_else(|| dir.join(WEIGHTS_FILE));
    let model = load_pretrained_with(dir, &LoadOptions::default(), &Device::flex())
        .map_err(|e| in_file(e, &weights_file))?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = if tokenizer_path.exists() {
        let tok = Tokenizer::from_dir(dir).map_err(|e| in_file(e, &tokenizer_path))?;
        tok.check_vocab_size(config.vocab_size()).map_err(|e| in_file(e, &tokenizer_path))?;
        Some(tok)
    } else {
        None
    };
    Ok(summary(dir, &config, model.num_params(), &listing, tokenizer.as_ref()))
}

/// `error` with `path` in front when its message does not name a file already.
fn in_file(error: ModelError, path: &Path) -> anyhow::Error {
    let names_a_file = matches!(
        error,
        ModelError::Io { .. }
            | ModelError::Json { .. }
            | ModelError::Safetensors { .. }
            | ModelError::InvalidFile { .. }
            | ModelError::Tokenizer { path: Some(_), .. }
    );
    // The message alone: `{:#}` of the error itself would repeat its I/O or JSON source.
    if names_a_file { anyhow!("{error}") } else { anyhow!("{}: {error}", path.display()) }
}

/// The printed summary.
fn summary(
    dir: &Path,
    config: &ModelConfig,
    params: usize,
    listing: &CheckpointListing,
    tokenizer: Option<&Tokenizer>,
) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<16} {value}");
    };
    line("directory", dir.display().to_string());
    line("architecture", config.model_type().to_string());
    line("parameters", params.to_string());
    line("layers", config.num_hidden_layers().to_string());
    line("hidden size", config.hidden_size().to_string());
    line("heads", heads(config));
    line("max positions", config.max_position_embeddings().to_string());
    line("tied embeddings", config.tie_word_embeddings().to_string());
    let vocab = match tokenizer {
        Some(tok) => format!("model {}, tokenizer {}", config.vocab_size(), tok.vocab_size()),
        None => format!("model {}, no tokenizer ({TOKENIZER_FILE} absent)", config.vocab_size()),
    };
    line("vocabulary", vocab);
    let mut dtypes: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &listing.tensors {
        *dtypes.entry(t.dtype.as_str()).or_default() += 1;
    }
    let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} {n}")).collect();
    line("stored tensors", format!("{} ({})", listing.tensors.len(), dtypes.join(", ")));
    let mut files: Vec<PathBuf> = vec![dir.join(CONFIG_FILE)];
    files.extend(listing.index.iter().cloned());
    files.extend(listing.files.iter().cloned());
    files.extend(
        std::iter::once(TOKENIZER_FILE)
            .chain(SIDE_FILES)
            .map(|name| dir.join(name))
            .filter(|p| p.is_file()),
    );
    let _ = writeln!(out, "files");
    for path in files {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        let _ = writeln!(out, "  {name:<40} {size:>12} bytes");
    }
    out
}

/// `4` or `32 (8 key/value)`.
fn heads(config: &ModelConfig) -> String {
    match config {
        ModelConfig::Gpt2(c) => c.n_head.to_string(),
        ModelConfig::Llama(c) if c.num_key_value_heads != c.num_attention_heads => {
            format!(
                "{} ({} key/value, head_dim {})",
                c.num_attention_heads, c.num_key_value_heads, c.head_dim
            )
        }
        ModelConfig::Llama(c) => format!("{} (head_dim {})", c.num_attention_heads, c.head_dim),
    }
}
