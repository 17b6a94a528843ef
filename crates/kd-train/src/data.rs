//! Training data: fixed-length token blocks, with labels that say which tokens count.
//!
//! - Plain text is tokenised document by document, joined with the end-of-sequence id and
//!   packed into blocks of `seq_len + 1` tokens; every next token counts.
//! - Instruction JSONL in the Dolly (`instruction`, `context`, `response`) or Alpaca
//!   (`instruction`, `input`, `output`) dialect, or with a ready `prompt`, gives one block per
//!   example: the prompt ([`crate::template`]: the instruction and its context in a template)
//!   gets label `-100`, so the loss and the metrics count response tokens only; padding is
//!   `-100` too.
//!
//! Batches are drawn in a deterministic order: a seeded Fisher–Yates permutation per epoch, and
//! a [`DataCursor`] (epoch, position) that a checkpoint stores to resume at the same example.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::template::{InstructionRow, PromptRenderer};

/// Label of a token that does not count in the loss.
pub const IGNORE_INDEX: i64 = -100;

/// One training example: `input_ids[i]` predicts `labels[i]` (`-100` = not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBlock {
    /// Input token ids. Length: `seq_len`.
    pub input_ids: Vec<u32>,
    /// Next-token targets, `-100` where the loss ignores the position. Length: `seq_len`.
    pub labels: Vec<i64>,
}

impl TokenBlock {
    /// Number of positions whose label counts.
    pub fn counted(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Packs a token stream into blocks of `seq_len` inputs with their next-token labels; the tail
/// that does not fill a block is dropped. Consecutive blocks share no tokens except that the
/// last label of one block is the first input of the next.
///
/// # Example
/// ```
/// let blocks = kd_train::data::pack_tokens(&[1, 2, 3, 4, 5, 6, 7, 8], 3);
/// assert_eq!(blocks.len(), 2);
/// assert_eq!(blocks[0].input_ids, [1, 2, 3]);
/// assert_eq!(blocks[0].labels, [2, 3, 4]);
/// assert_eq!(blocks[1].input_ids, [4, 5, 6]);
/// assert_eq!(blocks[1].labels, [5, 6, 7]);
/// ```
pub fn pack_tokens(tokens: &[u32], seq_len: usize) -> Vec<TokenBlock> {
    if seq_len == 0 || tokens.len() < seq_len + 1 {
        return Vec::new();
    }
    let n = (tokens.len() - 1) / seq_len;
    (0..n)
        .map(|b| {
            let w = &tokens[b * seq_len..b * seq_len + seq_len + 1];
            TokenBlock {
                input_ids: w[..seq_len].to_vec(),
                labels: w[1..].iter().map(|&t| i64::from(t)).collect(),
            }
        })
        .collect()
}

/// One prompt/response example as a block: inputs are `prompt ++ response`, truncated or padded
/// (with `pad_id`) to `seq_len`; only targets that are response tokens count.
///
/// # Example
/// ```
/// // prompt [10, 11], response [20, 21] (ending with EOS 2), seq_len 5, pad 0
/// let b = kd_train::data::instruction_block(&[10, 11], &[20, 21, 2], 5, 0);
/// assert_eq!(b.input_ids, [10, 11, 20, 21, 2]); // the last input has no target
/// let b = kd_train::data::instruction_block(&[10, 11], &[20, 21, 2], 6, 0);
/// assert_eq!(b.input_ids, [10, 11, 20, 21, 2, 0]);
/// assert_eq!(b.labels, [-100, 20, 21, 2, -100, -100]);
/// let b = kd_train::data::instruction_block(&[10, 11], &[20, 21, 2], 5, 0);
/// assert_eq!(b.labels, [-100, 20, 21, 2, -100]);
/// ```
pub fn instruction_block(
    prompt: &[u32],
    response: &[u32],
    seq_len: usize,
    pad_id: u32,
) -> TokenBlock {
    let full: Vec<u32> = prompt.iter().chain(response).copied().collect();
    let mut input_ids = vec![pad_id; seq_len];
    let mut labels = vec![IGNORE_INDEX; seq_len];
    for i in 0..seq_len.min(full.len()) {
        input_ids[i] = full[i];
        // Position i predicts token i + 1; it counts when that token is in the response.
        if i + 1 < full.len() && i + 1 >= prompt.len() {
            labels[i] = i64::from(full[i + 1]);
        }
    }
    TokenBlock { input_ids, labels }
}

/// A tokenizer, as far as the data pipeline needs one.
pub trait TextEncoder {
    /// Token ids of `text` without special tokens.
    ///
    /// # Errors
    /// When the tokenizer fails.
    fn encode_text(&self, text: &str) -> Result<Vec<u32>>;
    /// Beginning-of-sequence id, if any.
    fn bos_id(&self) -> Option<u32>;
    /// End-of-sequence id, if any.
    fn eos_id(&self) -> Option<u32>;
    /// The text of the beginning-of-sequence token (`<s>`), if known; a prompt that starts with
    /// it gets no second BOS id from [`prompt_ids`].
    fn bos_text(&self) -> Option<String> {
        None
    }
}

/// Turns generated ids back into text (for scoring generations against references).
pub trait TextDecoder {
    /// Text of `ids`, special tokens (EOS, BOS, padding) left out.
    ///
    /// # Errors
    /// When an id is unknown to the tokenizer.
    fn decode_text(&self, ids: &[u32]) -> Result<String>;
}

impl TextDecoder for kd_models::Tokenizer {
    fn decode_text(&self, ids: &[u32]) -> Result<String> {
        Ok(self.decode(ids, true)?)
    }
}

impl TextEncoder for kd_models::Tokenizer {
    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode(text, false)?)
    }
    fn bos_id(&self) -> Option<u32> {
        self.bos_token_id()
    }
    fn eos_id(&self) -> Option<u32> {
        self.eos_token_id()
    }
    fn bos_text(&self) -> Option<String> {
        self.bos_token_id().and_then(|id| self.id_to_token(id))
    }
}

/// Splits plain text into documents at blank lines (TinyStories' layout): each non-empty
/// paragraph is one document.
pub fn split_documents(text: &str) -> Vec<&str> {
    text.split("\n\n").map(str::trim).filter(|d| !d.is_empty()).collect()
}

/// Tokenises documents as `BOS doc EOS` (each id when the tokenizer has it) into one stream.
///
/// # Errors
/// When the tokenizer fails.
pub fn tokenize_documents(docs: &[&str], tok: &dyn TextEncoder) -> Result<Vec<u32>> {
    let mut stream = Vec::new();
    for doc in docs {
        stream.extend(tok.bos_id());
        stream.extend(tok.encode_text(doc)?);
        stream.extend(tok.eos_id());
    }
    Ok(stream)
}

/// One prompt/response pair of an instruction data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionExample {
    /// The prompt (template included).
    pub prompt: String,
    /// The response the model should learn.
    pub response: String,
}

/// The non-empty lines of a JSONL file, each parsed as JSON with its 1-based line number.
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be read, [`TrainError::Data`] naming the line that is
/// not JSON.
pub fn read_jsonl_values(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|e| TrainError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// Reads instruction JSONL rows in any supported dialect:
///
/// - Dolly: `instruction`, `context` (optional), `response`;
/// - Alpaca: `instruction`, `input` (optional), `output`;
/// - ready prompts: `prompt` (already templated, used as is) and `response`, `answer` or
///   `output`.
///
/// Other fields (e.g. `rationale`, `label`) are ignored; an empty context counts as none.
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be read, [`TrainError::Data`] naming the line when it
/// is not such an object.
pub fn read_instruction_rows(path: &Path) -> Result<Vec<InstructionRow>> {
    let mut out = Vec::new();
    for (line, v) in read_jsonl_values(path)? {
        let bad = |reason: String| TrainError::Data { path: path.to_path_buf(), line, reason };
        if !v.is_object() {
            return Err(bad("expected a JSON object".into()));
        }
        let field = |keys: &[&str]| -> Option<String> {
            keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(str::to_string))
        };
        let response = field(&["response", "output", "answer"])
            .ok_or_else(|| bad("no string `response`, `output` or `answer`".into()))?;
        let row = match (field(&["prompt"]), field(&["instruction"])) {
            (Some(prompt), _) => {
                InstructionRow { instruction: prompt, context: None, response, templated: true }
            }
            (None, Some(instruction)) => InstructionRow {
                instruction,
                context: field(&["context", "input"]).filter(|c| !c.trim().is_empty()),
                response,
                templated: false,
            },
            (None, None) => {
                return Err(bad("no string `instruction` (Dolly, Alpaca) or `prompt`".into()));
            }
        };
        out.push(row);
    }
    Ok(out)
}

/// Reads instruction JSONL ([`read_instruction_rows`]) and renders each prompt with `template`.
///
/// # Errors
/// See [`read_instruction_rows`] and [`PromptRenderer::render`].
pub fn read_instruction_jsonl(
    path: &Path,
    template: &PromptRenderer,
) -> Result<Vec<InstructionExample>> {
    read_instruction_rows(path)?
        .iter()
        .map(|row| {
            Ok(InstructionExample { prompt: template.render(row)?, response: row.response.clone() })
        })
        .collect()
}

/// The ids of an instruction prompt as training sees them: `BOS prompt` (BOS when the tokenizer
/// has one and the prompt does not already start with its text, as chat templates write it).
/// Training blocks, rollouts and generation evaluation all start from these ids.
///
/// # Errors
/// When the tokenizer fails.
pub fn prompt_ids(prompt: &str, tok: &dyn TextEncoder) -> Result<Vec<u32>> {
    let has_bos = tok.bos_text().is_some_and(|b| !b.is_empty() && prompt.starts_with(&b));
    let mut ids: Vec<u32> = if has_bos { Vec::new() } else { tok.bos_id().into_iter().collect() };
    ids.extend(tok.encode_text(prompt)?);
    Ok(ids)
}

/// Instruction examples as blocks: `BOS prompt` / `response EOS`.
///
/// # Errors
/// When the tokenizer fails.
pub fn instruction_blocks(
    examples: &[InstructionExample],
    tok: &dyn TextEncoder,
    seq_len: usize,
) -> Result<Vec<TokenBlock>> {
    let pad = tok.eos_id().unwrap_or(0);
    examples
        .iter()
        .map(|ex| {
            let prompt = prompt_ids(&ex.prompt, tok)?;
            let mut response = tok.encode_text(&ex.response)?;
            response.extend(tok.eos_id());
            Ok(instruction_block(&prompt, &response, seq_len, pad))
        })
        .collect()
}

/// A set of equal-length blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenDataset {
    /// The blocks.
    pub blocks: Vec<TokenBlock>,
}

impl TokenDataset {
    /// A dataset of `blocks` (all of one length).
    ///
    /// # Errors
    /// [`TrainError::EmptyDataset`] when there is no block or no counted token;
    /// [`TrainError::InvalidConfig`] when lengths differ.
    pub fn new(what: &str, blocks: Vec<TokenBlock>) -> Result<Self> {
        let Some(first) = blocks.first() else {
            return Err(TrainError::EmptyDataset {
                what: what.into(),
                reason: "no block (text shorter than seq_len + 1?)".into(),
            });
        };
        let len = first.input_ids.len();
        if let Some(b) = blocks.iter().find(|b| b.input_ids.len() != len || b.labels.len() != len) {
            return Err(TrainError::config(
                "seq_len",
                "blocks of one length",
                format!("{} and {}", len, b.input_ids.len()),
            ));
        }
        if blocks.iter().all(|b| b.counted() == 0) {
            return Err(TrainError::EmptyDataset {
                what: what.into(),
                reason: "no position has a counted label".into(),
            });
        }
        Ok(Self { blocks })
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there is no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Block length.
    pub fn seq_len(&self) -> usize {
        self.blocks.first().map_or(0, |b| b.input_ids.len())
    }

    /// Splits off the last `fraction` of the blocks (at least one) as a held-out set.
    pub fn split_off_tail(mut self, fraction: f64) -> (Self, Self) {
        let n = tail_len(self.len(), fraction);
        let tail = self.blocks.split_off(self.blocks.len() - n);
        (self, Self { blocks: tail })
    }

    /// The blocks at `indices` as tensors on `device`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Batch {
        let s = self.seq_len();
        let mut ids = Vec::with_capacity(indices.len() * s);
        let mut labels = Vec::with_capacity(indices.len() * s);
        let mut counted = 0;
        for &i in indices {
            let b = &self.blocks[i];
            ids.extend(b.input_ids.iter().map(|&t| i64::from(t)));
            labels.extend(b.labels.iter().copied());
            counted += b.counted();
        }
        let shape = [indices.len(), s];
        Batch {
            input_ids: Tensor::from_data(TensorData::new(ids, shape), device),
            labels: Tensor::from_data(TensorData::new(labels, shape), device),
            counted,
        }
    }
}

/// How many of `len` items [`TokenDataset::split_off_tail`] holds out at `fraction`:
/// `round(len · fraction)`, at least 1 (when there is one) and at most `len`.
pub fn tail_len(len: usize, fraction: f64) -> usize {
    ((len as f64 * fraction).round() as usize).clamp(len.min(1), len)
}

/// A batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Shape: `[batch, seq]`.
    pub input_ids: Tensor<2, Int>,
    /// `-100` where not counted. Shape: `[batch, seq]`.
    pub labels: Tensor<2, Int>,
    /// Number of counted positions.
    pub counted: usize,
}

/// Where the data order stands: a checkpoint stores it to resume at the same example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataCursor {
    /// Epoch (each has its own permutation).
    pub epoch: u64,
    /// Position in the epoch's permutation.
    pub position: usize,
}

/// The permutation of `0..n` for `epoch` under `seed` (Fisher–Yates).
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Deterministic shuffled batches over a dataset of `len` blocks, forever (epoch after epoch);
/// a batch never straddles two epochs (the short tail of an epoch is skipped).
#[derive(Debug, Clone)]
pub struct BatchOrder {
    len: usize,
    seed: u64,
    cursor: DataCursor,
    order: Vec<usize>,
}

impl BatchOrder {
    /// Starts at `cursor`.
    pub fn new(len: usize, seed: u64, cursor: DataCursor) -> Self {
        let order = epoch_permutation(len, seed, cursor.epoch);
        Self { len, seed, cursor, order }
    }

    /// Where the next batch starts.
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// Indices of the next `batch_size` blocks (`min(batch_size, len)` of them).
    pub fn next_batch(&mut self, batch_size: usize) -> Vec<usize> {
        let b = batch_size.min(self.len).max(1);
        if self.cursor.position + b > self.len {
            self.cursor = DataCursor { epoch: self.cursor.epoch + 1, position: 0 };
            self.order = epoch_permutation(self.len, self.seed, self.cursor.epoch);
        }
        let p = self.cursor.position;
        self.cursor.position += b;
        self.order[p..p + b].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{PromptTemplate, TemplateName};

    #[test]
    fn packing_drops_the_short_tail() {
        assert!(pack_tokens(&[1, 2, 3], 3).is_empty());
        let b = pack_tokens(&[1, 2, 3, 4, 5], 2);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].input_ids, [3, 4]);
        assert_eq!(b[1].labels, [4, 5]);
        assert!(b.iter().all(|x| x.counted() == 2));
    }

    #[test]
    fn instruction_masks_prompt_and_padding() {
        let b = instruction_block(&[1, 2, 3], &[7, 8], 6, 0);
        assert_eq!(b.input_ids, [1, 2, 3, 7, 8, 0]);
        // positions 0,1 predict prompt tokens (ignored); 2→7, 3→8 count; 4, 5 are past the end.
        assert_eq!(b.labels, [-100, -100, 7, 8, -100, -100]);
        assert_eq!(b.counted(), 2);
        // Truncation keeps the counted targets that fit.
        let t = instruction_block(&[1, 2], &[7, 8, 9], 3, 0);
        assert_eq!(t.input_ids, [1, 2, 7]);
        assert_eq!(t.labels, [-100, 7, 8]);
    }

    #[test]
    fn permutations_are_deterministic_and_differ_by_epoch() {
        let a = epoch_permutation(50, 7, 0);
        assert_eq!(a, epoch_permutation(50, 7, 0));
        assert_ne!(a, epoch_permutation(50, 7, 1));
        assert_ne!(a, epoch_permutation(50, 8, 0));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn batch_order_resumes_from_cursor() {
        let mut a = BatchOrder::new(10, 3, DataCursor::default());
        let first: Vec<Vec<usize>> = (0..4).map(|_| a.next_batch(3)).collect();
        assert_eq!(a.cursor(), DataCursor { epoch: 1, position: 3 });
        let mut b = BatchOrder::new(10, 3, DataCursor::default());
        b.next_batch(3);
        b.next_batch(3);
        let mut c = BatchOrder::new(10, 3, b.cursor());
        assert_eq!(c.next_batch(3), first[2]);
        assert_eq!(c.next_batch(3), first[3]);
        assert_eq!(a.next_batch(3), c.next_batch(3));
    }

    #[test]
    fn dataset_checks() {
        assert!(matches!(TokenDataset::new("x", vec![]), Err(TrainError::EmptyDataset { .. })));
        let ignored = TokenBlock { input_ids: vec![1, 2], labels: vec![-100, -100] };
        assert!(TokenDataset::new("x", vec![ignored]).is_err());
        let d = TokenDataset::new("x", pack_tokens(&(0..21).collect::<Vec<_>>(), 4)).unwrap();
        let (train, eval) = d.split_off_tail(0.2);
        assert_eq!((train.len(), eval.len()), (4, 1));
        let batch = train.batch(&[0, 2], &Device::flex());
        assert_eq!(batch.input_ids.dims(), [2, 4]);
        assert_eq!(batch.counted, 8);
    }

    /// Characters as ids (`<s>` = 1 as one token), for prompt tests.
    struct Chars;
    impl TextEncoder for Chars {
        fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
            let t = text.strip_prefix("<s>").map_or(text.to_string(), |r| format!("\u{1}{r}"));
            Ok(t.chars().map(|c| c as u32).collect())
        }
        fn bos_id(&self) -> Option<u32> {
            Some(1)
        }
        fn eos_id(&self) -> Option<u32> {
            Some(2)
        }
        fn bos_text(&self) -> Option<String> {
            Some("<s>".into())
        }
    }

    #[test]
    fn context_is_prompt_and_only_the_response_counts() {
        let row = InstructionRow {
            instruction: "ab".into(),
            context: Some("cd".into()),
            response: "xy".into(),
            templated: false,
        };
        let plain = PromptRenderer::new(&PromptTemplate::Named(TemplateName::Plain), None).unwrap();
        let ex = InstructionExample { prompt: plain.render(&row).unwrap(), response: "xy".into() };
        let blocks = instruction_blocks(&[ex], &Chars, 12).unwrap();
        // BOS a b \n c d \n | x y EOS: only x, y and EOS are targets.
        let counted: Vec<i64> =
            blocks[0].labels.iter().copied().filter(|&l| l != IGNORE_INDEX).collect();
        assert_eq!(counted, [i64::from(b'x'), i64::from(b'y'), 2]);
        assert_eq!(&blocks[0].input_ids[..7], &[1, 97, 98, 10, 99, 100, 10]);
    }

    #[test]
    fn bos_is_not_doubled_when_the_template_writes_it() {
        assert_eq!(prompt_ids("ab", &Chars).unwrap(), [1, 97, 98]);
        assert_eq!(prompt_ids("<s>ab", &Chars).unwrap(), [1, 97, 98]);
    }

    /// With a real tokenizer (the tiny Llama fixture, `<s>` = 1): a chat template that writes
    /// `{{ bos_token }}` gives the same single BOS id as a template that does not.
    #[test]
    fn bos_is_not_doubled_by_a_chat_template_with_a_real_tokenizer() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../kd-models/tests/fixtures/hf-tiny-llama");
        let tok = kd_models::Tokenizer::from_dir(&dir).unwrap();
        let bos = tok.bos_id().unwrap();
        let chat = PromptRenderer::from_chat_template(
            "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let row = InstructionRow {
            instruction: "Name a color.".into(),
            context: None,
            response: "Red.".into(),
            templated: false,
        };
        let prompt = chat.render(&row).unwrap();
        assert!(prompt.starts_with("<s>[INST]"));
        let ids = prompt_ids(&prompt, &tok).unwrap();
        assert_eq!(ids[0], bos);
        assert_eq!(ids.iter().filter(|&&t| t == bos).count(), 1, "{ids:?}");
        // The same prompt without the BOS text gets the BOS id prepended: identical ids.
        let bare = prompt_ids(prompt.strip_prefix("<s>").unwrap(), &tok).unwrap();
        assert_eq!(bare, ids);
        // Training blocks start from exactly these ids.
        let ex = InstructionExample { prompt, response: row.response };
        let block = &instruction_blocks(&[ex], &tok, 64).unwrap()[0];
        assert_eq!(&block.input_ids[..ids.len()], &ids[..]);
    }

    #[test]
    fn jsonl_reading() {
        let dir = std::env::temp_dir().join(format!("kd-train-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\":\"Q\",\"answer\":\"A\"}\n\n{\"instruction\":\"q\",\"output\":\"a\"}\n",
        )
        .unwrap();
        let dolly = PromptRenderer::new(&PromptTemplate::default(), None).unwrap();
        let ex = read_instruction_jsonl(&p, &dolly).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].prompt, "Q", "a ready prompt is used as is");
        assert_eq!(ex[1].response, "a");
        assert!(ex[1].prompt.contains("### Instruction:\nq\n\n### Response:\n"));
        std::fs::write(&p, "{\"prompt\":\"Q\"}\n").unwrap();
        let err = read_instruction_jsonl(&p, &dolly).unwrap_err();
        assert!(matches!(err, TrainError::Data { line: 1, .. }));
        assert!(err.to_string().contains("`response`, `output` or `answer`"), "{err}");
        std::fs::write(&p, "{\"response\":\"R\"}\n").unwrap();
        assert!(
            read_instruction_jsonl(&p, &dolly).unwrap_err().to_string().contains("instruction")
        );
        // Dolly and Alpaca rows keep their context; extra fields are ignored.
        std::fs::write(
            &p,
            "{\"instruction\":\"i\",\"context\":\"c\",\"response\":\"r\",\"category\":\"qa\"}\n\
             {\"instruction\":\"i\",\"input\":\"x\",\"output\":\"o\"}\n\
             {\"instruction\":\"i\",\"input\":\"\",\"output\":\"o\",\"rationale\":\"z\"}\n",
        )
        .unwrap();
        let rows = read_instruction_rows(&p).unwrap();
        assert_eq!(rows[0].context.as_deref(), Some("c"));
        assert_eq!((rows[1].context.as_deref(), rows[1].response.as_str()), (Some("x"), "o"));
        assert_eq!(rows[2].context, None, "an empty input is no context");
        let ex = read_instruction_jsonl(&p, &dolly).unwrap();
        assert!(ex[0].prompt.contains("### Input:\nc\n\n"));
        assert!(!ex[2].prompt.contains("### Input:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
