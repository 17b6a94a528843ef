//! `cross_tokenizer`: distillation from a teacher with its own tokenizer (ULD, Boizard et al.
//! 2024). Each instruction row is tokenized by both tokenizers (the same prompt and response
//! text); the student's and the teacher's response positions are paired once, at data
//! preparation ([`cross_tokenizer_data`]); the Universal Logit Distillation loss compares the
//! sorted next-token distributions of each pair, and the student's cross-entropy stays on all
//! of its response tokens.
//!
//! ```text
//! loss = w_ce · CE(student, every counted response token)
//!      + w_uld · mean over the micro-batch's pairs (i, j) of Σ_k |sort↓(q_i)_k − sort↓(p_j)_k|
//! q_i = softmax(student logits at position i / T_s),  p_j = softmax(teacher logits at j / T_t)
//! (the shorter probability vector zero-padded to the longer vocabulary)
//! ```
//!
//! # What is paired
//! Response token `r` of a tokenizer covers bytes `start_r..end_r` of the response text (the
//! tokenizer's offsets; the EOS appended after the response starts at the response's length).
//! The position that predicts it is the one before it in the block (`prompt_len − 1 + r`).
//!
//! - [`TokenAlignment::Text`] (default): student token `a` and teacher token `b` are paired when
//!   they start at the same byte of the response text (a common token boundary) and each is the
//!   first of its tokenizer to start there. Both positions then predict the text that follows
//!   after reading exactly the same text (prompt + response up to that byte), so their
//!   next-token distributions answer the same question. The EOS tokens pair with each other.
//! - [`TokenAlignment::Position`]: the paper's official code: the `k`-th response token of each
//!   side, for `k` below the shorter response (EOS included).
//!
//! Unpaired student positions (a boundary the teacher does not share, e.g. inside one of its
//! longer tokens) keep only the cross-entropy term; unpaired teacher positions are not used.
//! Positions cut off by a block length are never paired. A micro-batch without a pair has the
//! cross-entropy term alone (metric `aligned = 0`); a training set without any pair is an error
//! at preparation.
//!
//! The official code averages ULD per example, then over the batch; here it is the mean over
//! every pair of the micro-batch (each paired position weighs the same, as the cross-entropy's
//! tokens do).
//!
//! Metrics per step: `ce`, `uld` (the unweighted terms) and `aligned` (paired positions per
//! counted student token).
//!
//! Paper: Boizard et al., *Towards Cross-Tokenizer Distillation: the Universal Logit
//! Distillation Loss for LLMs* (2024), <https://arxiv.org/abs/2402.12030>; official code
//! <https://github.com/Nicolas-BZRD/llm-recipes> (`models/distillation_model.py`).

use std::collections::BTreeMap;

use burn::tensor::{Int, Tensor, TensorData};
use kd_losses::{
    Divergence, KdBatch, Reduction, UniversalLogitDistillation, UniversalLogitDistillationConfig,
};
use kd_models::tokenizer::IdsAndSpans;
use serde::{Deserialize, Serialize};

use crate::data::{
    InstructionExample, TextEncoder, TokenDataset, instruction_block, prompt_ids, tail_len,
};
use crate::error::{Result, TrainError};
use crate::methods::{MicroBatchLoss, StepContext, TeacherUse};
use crate::metrics::masked_cross_entropy_mean;
use crate::model::{LanguageModel, logits_across};

/// How student and teacher response positions are paired (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAlignment {
    /// Tokens that start at the same byte of the response text (the default).
    #[default]
    Text,
    /// The `k`-th response token of each side, up to the shorter response (the official code).
    Position,
}

/// Config of [`CrossTokenizer`]. Defaults: the official code's (both weights and both
/// temperatures 1), with the text alignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrossTokenizerConfig {
    /// How positions are paired: `text` (default) or `position`.
    pub alignment: TokenAlignment,
    /// Weight of the student's cross-entropy on its response tokens (default `1`, `≥ 0`).
    pub crossentropy_weight: f64,
    /// Weight of the ULD term (default `1`, `≥ 0`).
    pub distillation_weight: f64,
    /// Temperature of the student softmax in ULD (default `1`).
    pub student_temperature: f64,
    /// Temperature of the teacher softmax in ULD (default `1`).
    pub teacher_temperature: f64,
    /// Block length of the teacher's tokenization (default: the data's `seq_len`); a
    /// finer-grained teacher tokenizer needs more positions for the same text.
    pub teacher_seq_len: Option<usize>,
}

impl Default for CrossTokenizerConfig {
    fn default() -> Self {
        Self {
            alignment: TokenAlignment::Text,
            crossentropy_weight: 1.0,
            distillation_weight: 1.0,
            student_temperature: 1.0,
            teacher_temperature: 1.0,
            teacher_seq_len: None,
        }
    }
}

impl CrossTokenizerConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key, or the loss's own error for a temperature.
    pub fn validate(&self) -> Result<()> {
        for (name, w) in [
            ("crossentropy_weight", self.crossentropy_weight),
            ("distillation_weight", self.distillation_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(TrainError::config(name, "a finite value ≥ 0", w));
            }
        }
        if self.crossentropy_weight == 0.0 && self.distillation_weight == 0.0 {
            return Err(TrainError::config(
                "distillation_weight",
                "> 0 when crossentropy_weight is 0 (the loss would be zero)",
                0,
            ));
        }
        if self.teacher_seq_len == Some(0) {
            return Err(TrainError::config("teacher_seq_len", "≥ 1 position", 0));
        }
        self.uld_config().init()?;
        Ok(())
    }

    fn uld_config(&self) -> UniversalLogitDistillationConfig {
        UniversalLogitDistillationConfig {
            student_temperature: self.student_temperature,
            teacher_temperature: self.teacher_temperature,
        }
    }

    /// The method (stateless; `steps` is unused).
    ///
    /// # Errors
    /// See [`CrossTokenizerConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<CrossTokenizer> {
        self.validate()?;
        Ok(CrossTokenizer {
            uld: self.uld_config().init()?,
            crossentropy_weight: self.crossentropy_weight,
            distillation_weight: self.distillation_weight,
        })
    }
}

/// A tokenizer that also reports which bytes of the text each token covers.
pub trait OffsetEncoder: TextEncoder {
    /// Token ids of `text` without special tokens (the same as
    /// [`TextEncoder::encode_text`]) and each token's byte span `start..end` in `text`.
    ///
    /// # Errors
    /// When the tokenizer fails.
    fn encode_with_offsets(&self, text: &str) -> Result<IdsAndSpans>;
}

impl OffsetEncoder for kd_models::Tokenizer {
    fn encode_with_offsets(&self, text: &str) -> Result<IdsAndSpans> {
        Ok(kd_models::Tokenizer::encode_with_offsets(self, text, false)?)
    }
}

/// A response as one tokenizer splits it: ids (EOS appended when the tokenizer has one) and the
/// byte of the response text where each starts (the EOS: the response's length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseTokens {
    /// Token ids, EOS last when the tokenizer has one.
    pub ids: Vec<u32>,
    /// Start byte of each token in the response text.
    pub starts: Vec<usize>,
}

impl ResponseTokens {
    /// `response` tokenized by `tok`.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn of(response: &str, tok: &dyn OffsetEncoder) -> Result<Self> {
        let (mut ids, spans) = tok.encode_with_offsets(response)?;
        let mut starts: Vec<usize> = spans.iter().map(|&(s, _)| s).collect();
        if let Some(eos) = tok.eos_id() {
            ids.push(eos);
            starts.push(response.len());
        }
        Ok(Self { ids, starts })
    }
}

/// Pairs `(student token, teacher token)` of two tokenizations of one response (indices into
/// their tokens), as `alignment` pairs them (see the module docs).
///
/// # Example
/// ```
/// use kd_train::methods::cross_tokenizer::{TokenAlignment, align_responses};
/// // "abcd": the student splits ab|cd, the teacher a|b|c|d; both append an EOS at byte 4.
/// let (student, teacher) = ([0, 2, 4], [0, 1, 2, 3, 4]);
/// assert_eq!(align_responses(&student, &teacher, TokenAlignment::Text), [(0, 0), (1, 2), (2, 4)]);
/// assert_eq!(
///     align_responses(&student, &teacher, TokenAlignment::Position),
///     [(0, 0), (1, 1), (2, 2)]
/// );
/// ```
pub fn align_responses(
    student_starts: &[usize],
    teacher_starts: &[usize],
    alignment: TokenAlignment,
) -> Vec<(usize, usize)> {
    match alignment {
        TokenAlignment::Position => {
            (0..student_starts.len().min(teacher_starts.len())).map(|k| (k, k)).collect()
        }
        TokenAlignment::Text => {
            // The first teacher token starting at each byte.
            let mut teacher_at: BTreeMap<usize, usize> = BTreeMap::new();
            for (b, &start) in teacher_starts.iter().enumerate() {
                teacher_at.entry(start).or_insert(b);
            }
            let mut seen = std::collections::BTreeSet::new();
            let mut pairs = Vec::new();
            for (a, &start) in student_starts.iter().enumerate() {
                if seen.insert(start)
                    && let Some(&b) = teacher_at.get(&start)
                {
                    pairs.push((a, b));
                }
            }
            pairs
        }
    }
}

/// The teacher's own tokenization of a training set: block `i` is the teacher's version of the
/// student's block `i`, with the `(student position, teacher position)` pairs of that block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeacherDataset {
    /// The teacher's blocks (input ids and labels in its vocabulary).
    pub blocks: TokenDataset,
    /// Per block: paired positions `(student, teacher)`, both within their blocks.
    pub pairs: Vec<Vec<(usize, usize)>>,
}

impl TeacherDataset {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there is no block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The teacher's block length.
    pub fn seq_len(&self) -> usize {
        self.blocks.seq_len()
    }

    /// Paired positions of all blocks.
    pub fn total_pairs(&self) -> usize {
        self.pairs.iter().map(Vec::len).sum()
    }

    /// Splits off the last `fraction` of the blocks, as [`TokenDataset::split_off_tail`] does
    /// with the student's blocks (the same count).
    pub fn split_off_tail(mut self, fraction: f64) -> (Self, Self) {
        let n = tail_len(self.len(), fraction);
        let tail_pairs = self.pairs.split_off(self.pairs.len() - n);
        let (head, tail) = self.blocks.split_off_tail(fraction);
        (Self { blocks: head, pairs: self.pairs }, Self { blocks: tail, pairs: tail_pairs })
    }
}

/// Both tokenizations of instruction examples: the student's blocks (exactly as
/// [`crate::data::instruction_blocks`] makes them, `seq_len` long) and the teacher's
/// (`teacher_seq_len` long) with the paired response positions of each block.
///
/// Positions are paired as `alignment` says (see the module docs); a pair counts only when the
/// student position and the teacher position both lie within their blocks.
///
/// # Errors
/// Tokenizer errors; [`TrainError::EmptyDataset`] (naming `what`) when there is no example, no
/// counted token, or no pair at all (tokenizers without a common boundary, or prompts that
/// fill the blocks).
pub fn cross_tokenizer_data(
    what: &str,
    examples: &[InstructionExample],
    student: &dyn OffsetEncoder,
    teacher: &dyn OffsetEncoder,
    seq_len: usize,
    teacher_seq_len: usize,
    alignment: TokenAlignment,
) -> Result<(TokenDataset, TeacherDataset)> {
    let (mut sb, mut tb, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for ex in examples {
        let sp = prompt_ids(&ex.prompt, student)?;
        let tp = prompt_ids(&ex.prompt, teacher)?;
        let sr = ResponseTokens::of(&ex.response, student)?;
        let tr = ResponseTokens::of(&ex.response, teacher)?;
        sb.push(instruction_block(&sp, &sr.ids, seq_len, student.eos_id().unwrap_or(0)));
        tb.push(instruction_block(&tp, &tr.ids, teacher_seq_len, teacher.eos_id().unwrap_or(0)));
        // Response token r is predicted at position prompt_len − 1 + r.
        let block_pairs = align_responses(&sr.starts, &tr.starts, alignment)
            .into_iter()
            .filter_map(|(a, b)| {
                let s = (sp.len() + a).checked_sub(1)?;
                let t = (tp.len() + b).checked_sub(1)?;
                (s < seq_len && t < teacher_seq_len).then_some((s, t))
            })
            .collect();
        pairs.push(block_pairs);
    }
    let student = TokenDataset::new(what, sb)?;
    let teacher = TeacherDataset { blocks: TokenDataset::new(what, tb)?, pairs };
    if teacher.total_pairs() == 0 {
        return Err(TrainError::EmptyDataset {
            what: what.into(),
            reason: format!(
                "no student response position pairs with a teacher position ({alignment:?} \
                 alignment): the tokenizers share no token boundary, or the prompts fill the blocks"
            ),
        });
    }
    Ok((student, teacher))
}

/// Cross-tokenizer distillation (see the module docs).
#[derive(Debug)]
pub struct CrossTokenizer {
    uld: UniversalLogitDistillation,
    crossentropy_weight: f64,
    distillation_weight: f64,
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for CrossTokenizer {
    fn name(&self) -> &'static str {
        "cross_tokenizer"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn teacher_reads_own_tokens(&self) -> bool {
        true
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let teacher = cx.require_teacher("cross_tokenizer")?;
        let td = cx.teacher_data.ok_or_else(|| {
            TrainError::config(
                "teacher_data",
                "the teacher's own tokenization of the training set (Trainer::with_teacher_data)",
                "cross_tokenizer",
            )
        })?;
        let idx = cx.next_indices();
        let batch = cx.data.batch(&idx, cx.device);
        let plain = cx.plain_device();
        let t_ids = td.blocks.batch(&idx, &plain).input_ids; // [b, n_t]
        let s = cx.student.logits(batch.input_ids.clone()); // [b, n, v_s]
        let t = logits_across(teacher, t_ids); // [b, n_t, v_t]
        let [b, n, vs] = s.dims();
        let [_, nt, vt] = t.dims();
        let ce = masked_cross_entropy_mean(s.clone(), batch.labels.clone()); // [1]
        let (mut s_rows, mut t_rows) = (Vec::new(), Vec::new());
        for (row, &i) in idx.iter().enumerate() {
            for &(sp, tp) in &td.pairs[i] {
                s_rows.push((row * n + sp) as i64);
                t_rows.push((row * nt + tp) as i64);
            }
        }
        let paired = s_rows.len();
        let ce_value = f64::from(ce.clone().inner().into_scalar::<f32>());
        let mut loss = ce.mul_scalar(self.crossentropy_weight);
        let mut uld_value = 0.0;
        if paired > 0 {
            let s_idx = Tensor::<1, Int>::from_data(TensorData::new(s_rows, [paired]), cx.device);
            let t_idx = Tensor::<1, Int>::from_data(TensorData::new(t_rows, [paired]), &plain);
            let q = s.reshape([b * n, vs]).select(0, s_idx); // [pairs, v_s]
            let p = t.reshape([b * nt, vt]).select(0, t_idx).autodiff(); // [pairs, v_t]
            let uld = self.uld.forward(KdBatch::new(q, p), Reduction::Mean)?.loss; // [1]
            uld_value = f64::from(uld.clone().inner().into_scalar::<f32>());
            loss = loss.add(uld.mul_scalar(self.distillation_weight));
        }
        let aligned = paired as f64 / batch.counted.max(1) as f64;
        Ok(MicroBatchLoss {
            loss,
            tokens: batch.counted as u64,
            metrics: vec![("ce", ce_value), ("uld", uld_value), ("aligned", aligned)],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer over bytes of fixed-width chunks (`width` bytes per token), EOS 2, BOS 1.
    struct Chunks(usize);

    impl TextEncoder for Chunks {
        fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
            Ok(self.encode_with_offsets(text)?.0)
        }
        fn bos_id(&self) -> Option<u32> {
            Some(1)
        }
        fn eos_id(&self) -> Option<u32> {
            Some(2)
        }
    }

    impl OffsetEncoder for Chunks {
        fn encode_with_offsets(&self, text: &str) -> Result<IdsAndSpans> {
            let spans: Vec<(usize, usize)> = (0..text.len())
                .step_by(self.0)
                .map(|s| (s, (s + self.0).min(text.len())))
                .collect();
            Ok((spans.iter().map(|&(s, _)| 10 + s as u32).collect(), spans))
        }
    }

    #[test]
    fn text_alignment_pairs_common_boundaries_and_eos_only() {
        // Student a|b|c|d|e (+EOS at 5), teacher ab|cd|e (+EOS at 5).
        let pairs = align_responses(&[0, 1, 2, 3, 4, 5], &[0, 2, 4, 5], TokenAlignment::Text);
        assert_eq!(pairs, [(0, 0), (2, 1), (4, 2), (5, 3)]);
        // A second token at the same byte (zero-width, byte fallback) is not paired again.
        let pairs = align_responses(&[0, 0, 3], &[0, 3, 3], TokenAlignment::Text);
        assert_eq!(pairs, [(0, 0), (2, 1)]);
        assert!(align_responses(&[], &[0], TokenAlignment::Text).is_empty());
    }

    #[test]
    fn blocks_match_instruction_blocks_and_positions_are_in_block() {
        let ex = [InstructionExample { prompt: "pq".into(), response: "abcde".into() }];
        let (s, t) =
            cross_tokenizer_data("t", &ex, &Chunks(1), &Chunks(2), 16, 16, TokenAlignment::Text)
                .unwrap();
        let expected = crate::data::instruction_blocks(&ex, &Chunks(1), 16).unwrap();
        assert_eq!(s.blocks, expected);
        // Student: BOS p q | a b c d e EOS → response token r predicted at 2 + r.
        // Teacher: BOS pq | ab cd e EOS → response token r predicted at 1 + r.
        // Common starts: a(0)↔ab(0), c(2)↔cd(2), e(4)↔e(4), EOS(5)↔EOS(5).
        assert_eq!(t.pairs[0], [(2, 1), (4, 2), (6, 3), (7, 4)]);
        // Ids are 10 + start byte on both sides: paired positions predict the same token.
        for &(sp, tp) in &t.pairs[0] {
            assert_eq!(s.blocks[0].labels[sp], t.blocks.blocks[0].labels[tp]);
        }
    }

    #[test]
    fn truncated_positions_are_dropped_and_a_teacher_side_without_tokens_is_an_error() {
        let ex = [InstructionExample { prompt: "pq".into(), response: "abcde".into() }];
        let (_, t) =
            cross_tokenizer_data("t", &ex, &Chunks(1), &Chunks(2), 5, 16, TokenAlignment::Text)
                .unwrap();
        assert_eq!(t.pairs[0], [(2, 1), (4, 2)]);
        // Teacher blocks of 1 position: the prompt fills them, no teacher token counts.
        let err =
            cross_tokenizer_data("t", &ex, &Chunks(1), &Chunks(2), 16, 1, TokenAlignment::Text);
        assert!(matches!(err, Err(TrainError::EmptyDataset { .. })), "{err:?}");
    }

    #[test]
    fn config_checks() {
        CrossTokenizerConfig::default().validate().unwrap();
        let bad = CrossTokenizerConfig { distillation_weight: -1.0, ..Default::default() };
        assert!(matches!(
            bad.validate(),
            Err(TrainError::InvalidConfig { name: "distillation_weight", .. })
        ));
        let zero = CrossTokenizerConfig {
            crossentropy_weight: 0.0,
            distillation_weight: 0.0,
            ..Default::default()
        };
        assert!(zero.validate().is_err());
        let t = CrossTokenizerConfig { teacher_temperature: 0.0, ..Default::default() };
        assert!(matches!(t.validate(), Err(TrainError::Loss(_))), "{:?}", t.validate());
        let parsed: CrossTokenizerConfig =
            serde_json::from_str(r#"{"alignment": "position", "teacher_seq_len": 64}"#).unwrap();
        assert_eq!(parsed.alignment, TokenAlignment::Position);
        assert!(serde_json::from_str::<CrossTokenizerConfig>(r#"{"alignmnt": "text"}"#).is_err());
    }
}
