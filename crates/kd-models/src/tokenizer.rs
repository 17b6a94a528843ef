//! Tokenizers from a Hugging Face `tokenizer.json` (via the `tokenizers` crate), with the
//! special-token ids and BOS policy of the model directory.
//!
//! `encode(text, true)` applies the tokenizer's own post-processor, which is what
//! `transformers` does: LLaMA-2 style files prepend `<s>`, GPT-2 files add nothing. For prompts,
//! [`Tokenizer::encode_prompt`] additionally honours `add_bos_token` from
//! `tokenizer_config.json` when the post-processor does not add the BOS itself.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::checks::{self, Entries};
use crate::error::{ModelError, Result};

/// Token ids and the byte span `start..end` of the text each covers
/// ([`Tokenizer::encode_with_offsets`]).
pub type IdsAndSpans = (Vec<u32>, Vec<(usize, usize)>);

/// A tokenizer with the special tokens of its model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The `tokenizer.json` read.
    path: Option<PathBuf>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    add_bos_token: bool,
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file alone (no special-token metadata beyond the file's own).
    ///
    /// The file is checked more strictly than the `tokenizers` library does (see
    /// [`check_tokenizer_json`]) before that library parses it.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the file is missing or not a tokenizer,
    /// [`ModelError::InvalidFile`] when it is not a regular file, is larger than 1 GiB, or fails
    /// the checks of [`check_tokenizer_json`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tokenizer_error =
            |reason: String| ModelError::Tokenizer { path: Some(path.into()), reason };
        let text = checks::read_text(path, checks::MAX_TOKENIZER_BYTES).map_err(|e| match e {
            ModelError::Io { source, .. } => tokenizer_error(source.to_string()),
            other => other,
        })?;
        check_tokenizer_json(path, &text)?;
        let inner: tokenizers::Tokenizer =
            text.parse().map_err(|e: Box<dyn std::error::Error + Send + Sync>| {
                tokenizer_error(e.to_string())
            })?;
        Ok(Self {
            inner,
            path: Some(path.to_path_buf()),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            add_bos_token: false,
        })
    }

    /// Checks that every id of this tokenizer (added tokens included) is a row of a model whose
    /// `vocab_size` is `vocab_size`.
    ///
    /// A tokenizer may have fewer ids than the model has rows (checkpoints pad the embedding to
    /// a multiple of 64 or 128): only ids at or beyond `vocab_size` are an error, since the
    /// model has no embedding for them.
    ///
    /// # Errors
    /// [`ModelError::InvalidFile`] (naming `tokenizer.json`, or [`ModelError::InvalidArgument`]
    /// for a tokenizer not read from a file) with the largest id and its token.
    pub fn check_vocab_size(&self, vocab_size: usize) -> Result<()> {
        let vocab = self.inner.get_vocab(true);
        let Some((token, &id)) = vocab.iter().max_by_key(|(_, id)| **id) else {
            return Ok(());
        };
        if (id as usize) < vocab_size {
            return Ok(());
        }
        let reason = format!("id {id} (`{token}`) is beyond the model's vocab_size {vocab_size}");
        Err(match &self.path {
            Some(path) => checks::invalid(path, reason),
            None => ModelError::invalid("vocab_size", reason),
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

    /// Token ids of `text` with the byte span of `text` each token covers (`start..end`, as the
    /// `tokenizers` library reports it; special tokens added by the post-processor cover
    /// `0..0`). Cross-tokenizer distillation pairs two tokenizations of one text by these spans.
    ///
    /// # Example
    /// ```no_run
    /// # let tok = kd_models::Tokenizer::from_dir("gpt2-tokenizer")?;
    /// let (ids, spans) = tok.encode_with_offsets("Hello world", false)?;
    /// assert_eq!(ids.len(), spans.len());
    /// # Ok::<(), kd_models::ModelError>(())
    /// ```
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the tokenizer fails.
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<IdsAndSpans> {
        let enc = self.encoding(text, add_special_tokens)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
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
    if !path.exists() {
        return Ok(None);
    }
    checks::read_json(path).map(Some)
}

/// The parts of a `tokenizer.json` that [`check_tokenizer_json`] checks.
#[derive(Deserialize)]
struct RawTokenizer {
    model: RawModel,
    #[serde(default)]
    added_tokens: Vec<RawAdded>,
}

#[derive(Deserialize)]
struct RawModel {
    #[serde(default)]
    vocab: Option<RawVocab>,
    #[serde(default)]
    merges: Option<Vec<RawMerge>>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
}

/// `token → id` (BPE, WordPiece, WordLevel) or `[[piece, score], ...]` (Unigram).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawVocab {
    Ids(Entries<u64>),
    Scored(Vec<(String, f64)>),
}

/// A BPE merge: `"a b"` (older files) or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawMerge {
    Joined(String),
    Pair(String, String),
}

#[derive(Deserialize)]
struct RawAdded {
    id: u64,
    content: String,
}

/// Checks a `tokenizer.json` (the text of `path`) more strictly than the `tokenizers` library,
/// which keeps the last of two equal vocabulary keys and lets two tokens share an id:
///
/// - no token twice in `model.vocab`, no id given to two tokens;
/// - every BPE merge `a b` has both parts and the merged token in the vocabulary (with a
///   `continuing_subword_prefix`, `b` starts with it);
/// - an added token's id is not given to another added token, nor to a different token of the
///   vocabulary.
///
/// A file that is valid JSON but whose structure these checks do not recognise is left to the
/// `tokenizers` parser (which reports its own errors).
///
/// # Errors
/// [`ModelError::Json`] when `text` is not JSON or is nested deeper than 128 levels,
/// [`ModelError::InvalidFile`] naming `path`, the token and the id.
pub fn check_tokenizer_json(path: &Path, text: &str) -> Result<()> {
    // Keys the checks do not read are skipped without a depth limit: parse the whole file once
    // to refuse nesting deeper than serde_json's recursion limit (128).
    if let Err(e) = serde_json::from_str::<Value>(text) {
        return Err(ModelError::Json { path: path.to_path_buf(), source: e });
    }
    let raw = match serde_json::from_str::<RawTokenizer>(text) {
        Ok(raw) => raw,
        // Not JSON (or nested deeper than the recursion limit): an error here already.
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(ModelError::Json { path: path.to_path_buf(), source: e });
        }
        // JSON of another shape: the `tokenizers` parser says what it expected.
        Err(_) => return Ok(()),
    };
    let bad = |reason: String| checks::invalid(path, reason);
    let mut ids: HashMap<u64, &str> = HashMap::new();
    let mut tokens: HashSet<&str> = HashSet::new();
    match &raw.model.vocab {
        Some(RawVocab::Ids(entries)) => {
            for (token, id) in &entries.0 {
                if !tokens.insert(token) {
                    return Err(bad(format!("token `{token}` appears twice in model.vocab")));
                }
                if let Some(other) = ids.insert(*id, token) {
                    return Err(bad(format!(
                        "id {id} is given to both `{other}` and `{token}` in model.vocab"
                    )));
                }
            }
        }
        Some(RawVocab::Scored(pieces)) => {
            for (piece, _) in pieces {
                if !tokens.insert(piece) {
                    return Err(bad(format!("piece `{piece}` appears twice in model.vocab")));
                }
            }
        }
        None => {}
    }
    let prefix = raw.model.continuing_subword_prefix.as_deref().unwrap_or("");
    for (i, merge) in raw.model.merges.iter().flatten().enumerate() {
        let (a, b) = match merge {
            RawMerge::Pair(a, b) => (a.as_str(), b.as_str()),
            RawMerge::Joined(s) => s.split_once(' ').ok_or_else(|| {
                bad(format!("merge {i} `{s}` is not two tokens separated by a space"))
            })?,
        };
        for part in [a, b] {
            if !tokens.contains(part) {
                return Err(bad(format!("merge {i} `{a} {b}`: `{part}` is not in model.vocab")));
            }
        }
        let Some(rest) = b.strip_prefix(prefix) else {
            return Err(bad(format!(
                "merge {i} `{a} {b}`: `{b}` does not start with continuing_subword_prefix `{prefix}`"
            )));
        };
        let merged = format!("{a}{rest}");
        if !tokens.contains(merged.as_str()) {
            return Err(bad(format!(
                "merge {i} `{a} {b}`: the merged token `{merged}` is not in model.vocab"
            )));
        }
    }
    let mut added: HashMap<u64, &str> = HashMap::new();
    for token in &raw.added_tokens {
        let (id, content) = (token.id, token.content.as_str());
        if let Some(other) = added.insert(id, content) {
            return Err(bad(format!(
                "added_tokens: id {id} is given to both `{other}` and `{content}`"
            )));
        }
        if let Some(other) = ids.get(&id).filter(|other| **other != content) {
            return Err(bad(format!(
                "id {id} is `{content}` in added_tokens but `{other}` in model.vocab"
            )));
        }
    }
    Ok(())
}
