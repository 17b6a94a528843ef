//! Tokenizers from a Hugging Face `tokenizer.json` (via the `tokenizers` crate), with the
//! special-token ids and BOS policy of the model directory.
//!
//! `encode(text, true)` applies the tokenizer's own post-processor, which is what
//! `transformers` does: LLaMA-2 style files prepend `<s>`, GPT-2 files add nothing. For prompts,
//! [`Tokenizer::encode_prompt`] additionally honours `add_bos_token` from
//! `tokenizer_config.json` when the post-processor does not add the BOS itself.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{ModelError, Result};

/// A tokenizer with the special tokens of its model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    add_bos_token: bool,
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file alone (no special-token metadata beyond the file's own).
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the file is missing or not a tokenizer.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: Some(path.to_path_buf()),
            reason: e.to_string(),
        })?;
        Ok(Self {
            inner,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            add_bos_token: false,
        })
    }

    /// Loads `tokenizer.json` from a model directory, with the special tokens named in
    /// `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`, `add_bos_token`) and, as a
    /// fallback, the ids in `config.json`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when `tokenizer.json` is missing or invalid,
    /// [`ModelError::Json`] when a side file is not valid JSON.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut tok = Self::from_file(dir.join("tokenizer.json"))?;
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
        let model_config = read_json(&dir.join("config.json"))?;
        let special = |name: &str, id_key: &str| -> Option<u32> {
            let by_name = tok_config
                .as_ref()
                .and_then(|c| c.get(name))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(o) => o.get("content").and_then(Value::as_str),
                    _ => None,
                })
                .and_then(|s| tok.inner.token_to_id(s));
            by_name.or_else(|| {
                model_config
                    .as_ref()
                    .and_then(|c| c.get(id_key))
                    .and_then(|v| match v {
                        Value::Array(a) => a.first().and_then(Value::as_u64),
                        v => v.as_u64(),
                    })
                    .and_then(|u| u32::try_from(u).ok())
            })
        };
        tok.bos_token_id = special("bos_token", "bos_token_id");
        tok.eos_token_id = special("eos_token", "eos_token_id");
        tok.pad_token_id = special("pad_token", "pad_token_id");
        tok.add_bos_token = tok_config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(tok)
    }

    /// Token ids of `text`; `add_special_tokens` runs the post-processor (e.g. prepends `<s>`).
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the tokenizer fails.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.encoding(text, add_special_tokens)?.get_ids().to_vec())
    }

    /// Token strings of `text` (the vocabulary pieces, e.g. `Ġthe`, `▁the`).
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the tokenizer fails.
    pub fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<String>> {
        Ok(self.encoding(text, add_special_tokens)?.get_tokens().to_vec())
    }

    /// Ids for a generation prompt: the post-processor's special tokens, plus the BOS in front
    /// when `add_bos_token` is set and the post-processor did not add it.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the tokenizer fails.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, true)?;
        if let (true, Some(bos)) = (self.add_bos_token, self.bos_token_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids`; `skip_special_tokens` drops `<s>`, `<|endoftext|>`, ...
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when an id is unknown to the tokenizer.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer { path: None, reason: e.to_string() })
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence id (from `tokenizer_config.json` or `config.json`).
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// End-of-sequence id (from `tokenizer_config.json` or `config.json`).
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Padding id, if the model defines one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// The wrapped `tokenizers` tokenizer, for anything not exposed here.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn encoding(&self, text: &str, add_special_tokens: bool) -> Result<tokenizers::Encoding> {
        self.inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer { path: None, reason: e.to_string() })
    }
}

/// A JSON side file, `None` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|source| ModelError::Io { path: PathBuf::from(path), source })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ModelError::Json { path: PathBuf::from(path), source })
}
