//! `step_by_step`: distilling step-by-step. The student learns two tasks from the same input,
//! told apart by a prefix on the prompt: `[label] x` → the label, `[rationale] x` → the
//! rationale (the worked steps). Both tasks of an example are in the same micro-batch; only the
//! label task runs at inference (evaluation scores the `[label]` prompt).
//!
//! ```text
//! L = L_label + λ · L_rationale
//! L_label     = − Σ_t log q(y_t | [label] x, y_<t) / #label tokens
//! L_rationale = − Σ_t log q(r_t | [rationale] x, r_<t) / #rationale tokens
//! ```
//!
//! λ = 0 is standard fine-tuning on the labels (the rationale task is not even run); with the
//! teacher's labels it is the paper's "standard distillation" baseline.
//!
//! # Data layout
//! The training set is a [`TokenDataset`] of example *pairs* ([`pair_blocks`]): block `2i` is the
//! label task of example `i`, block `2i + 1` its rationale task. [`StepByStep`] splits it in
//! [`Method::prepare_data`](super::Method::prepare_data): the trainer's data order (and so the
//! checkpointed cursor, for an exact resume) runs over the label blocks, and each drawn example
//! brings its rationale block along. The held-out set holds label-task blocks only.
//!
//! Where rows, rationales and labels come from (the data's, or the teacher's few-shot
//! chain-of-thought answers) is decided by `kd distill` / `kd rationale-generate` from the
//! settings here ([`StepByStepConfig::labels`], [`StepByStepConfig::rationales`]); the helpers
//! [`read_rows`], [`teacher_prompt`] and [`parse_teacher_output`] are what they use.
//!
//! Paper: Hsieh et al., *Distilling Step-by-Step! Outperforming Larger Language Models with Less
//! Training Data and Smaller Model Sizes* (Findings of ACL 2023),
//! <https://arxiv.org/abs/2305.02301>; code <https://github.com/google-research/distilling-step-by-step>
//! (there the loss is written `α · L_label + (1 − α) · L_rationale` with α = 0.5, which is this
//! loss with λ = 1, halved).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{TokenBlock, TokenDataset};
use crate::error::{Result, TrainError};
use crate::exact_match::final_number;
use crate::methods::{MicroBatchLoss, SpecialTokens, StepContext, TeacherUse};
use crate::metrics::masked_cross_entropy_mean;
use crate::model::LanguageModel;

/// Where labels or rationales come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The training rows' own `label` / `rationale`.
    Data,
    /// The teacher's few-shot chain-of-thought answers ([`parse_teacher_output`]).
    Teacher,
}

/// Config of [`StepByStep`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepByStepConfig {
    /// λ, the weight of the rationale loss (default `1`, the paper's; `0` = labels only).
    pub rationale_weight: f64,
    /// Prefix of the label task's input (default `"[label] "`).
    pub label_prefix: String,
    /// Prefix of the rationale task's input (default `"[rationale] "`).
    pub rationale_prefix: String,
    /// Where the labels come from (default `data`, the paper's setting with human labels).
    pub labels: Source,
    /// Where the rationales come from (default `teacher`, the paper's).
    pub rationales: Source,
    /// Fraction of the training rows used: the first `ceil(fraction · n)` rows of the file
    /// (after the held-out tail is split off when there is no eval file). Default `1`.
    pub train_fraction: f64,
    /// Few-shot chain-of-thought exemplars in the teacher's prompt: the first `shots` rows of
    /// the training file (default `0`; see the method's doc page for why).
    pub shots: usize,
    /// Prompts per teacher generation batch (default `32`).
    pub generation_batch: usize,
    /// Most new tokens of a teacher answer (default `64`).
    pub max_new_tokens: usize,
    /// Where the teacher's rationales are written and, when their provenance matches, reused
    /// (default `<output_dir>/rationales.jsonl`).
    pub rationale_file: Option<PathBuf>,
}

impl Default for StepByStepConfig {
    fn default() -> Self {
        Self {
            rationale_weight: 1.0,
            label_prefix: "[label] ".into(),
            rationale_prefix: "[rationale] ".into(),
            labels: Source::Data,
            rationales: Source::Teacher,
            train_fraction: 1.0,
            shots: 0,
            generation_batch: 32,
            max_new_tokens: 64,
            rationale_file: None,
        }
    }
}

impl StepByStepConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key.
    pub fn validate(&self) -> Result<()> {
        let w = self.rationale_weight;
        if !(w.is_finite() && w >= 0.0) {
            return Err(TrainError::config("rationale_weight", "a finite value ≥ 0", w));
        }
        if self.label_prefix.trim().is_empty() {
            return Err(TrainError::config("label_prefix", "a non-empty prefix", "\"\""));
        }
        if self.rationale_prefix.trim() == self.label_prefix.trim() {
            return Err(TrainError::config(
                "rationale_prefix",
                "a prefix different from label_prefix (it tells the two tasks apart)",
                format!("{:?}", self.rationale_prefix),
            ));
        }
        let f = self.train_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(TrainError::config("train_fraction", "a value in (0, 1]", f));
        }
        if self.generation_batch == 0 {
            return Err(TrainError::config("generation_batch", "≥ 1", 0));
        }
        if self.max_new_tokens == 0 {
            return Err(TrainError::config("max_new_tokens", "≥ 1", 0));
        }
        Ok(())
    }

    /// The method.
    ///
    /// # Errors
    /// See [`StepByStepConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<StepByStep> {
        self.validate()?;
        Ok(StepByStep { config: self.clone(), rationales: None })
    }

    /// Whether anything comes from the teacher (then `kd distill` generates or reuses the
    /// rationale file before training).
    pub fn uses_teacher_outputs(&self) -> bool {
        self.labels == Source::Teacher || self.rationales == Source::Teacher
    }

    /// How many of `n` rows [`StepByStepConfig::train_fraction`] keeps: `ceil(fraction · n)`,
    /// at least 1 when there is a row.
    ///
    /// # Example
    /// ```
    /// let mut c = kd_train::methods::step_by_step::StepByStepConfig::default();
    /// c.train_fraction = 0.125;
    /// assert_eq!(c.rows_kept(3600), 450);
    /// assert_eq!(c.rows_kept(3), 1);
    /// ```
    pub fn rows_kept(&self, n: usize) -> usize {
        ((n as f64 * self.train_fraction).ceil() as usize).clamp(n.min(1), n)
    }
}

/// One step-by-step training row: an input with its label and (optionally) its rationale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepByStepRow {
    /// The input (the question).
    pub input: String,
    /// The worked steps, when the row has them.
    pub rationale: Option<String>,
    /// The label (the final answer).
    pub label: String,
}

/// Reads step-by-step rows from JSONL: `input` (or `instruction`), `label` (a string or a
/// number) and an optional `rationale`; other fields are ignored.
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be read, [`TrainError::Data`] naming the line when a
/// row lacks its input or label.
pub fn read_rows(path: &Path) -> Result<Vec<StepByStepRow>> {
    let mut rows = Vec::new();
    for (line, v) in crate::data::read_jsonl_values(path)? {
        let bad = |reason: String| TrainError::Data { path: path.to_path_buf(), line, reason };
        let text_of = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let input = text_of("input")
            .or_else(|| text_of("instruction"))
            .ok_or_else(|| bad("no string `input` (or `instruction`)".into()))?;
        let label = match v.get("label") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(bad("no `label` (a string or a number)".into())),
        };
        rows.push(StepByStepRow { input, rationale: text_of("rationale"), label });
    }
    Ok(rows)
}

/// The answer a chain-of-thought exemplar shows (and the teacher is parsed from):
/// `"{rationale} The answer is {label}."`.
pub fn cot_answer(rationale: &str, label: &str) -> String {
    format!("{} The answer is {label}.", rationale.trim()).trim_start().to_string()
}

/// The teacher's few-shot chain-of-thought prompt for `question`: each exemplar as
/// `question\n{answer}\n` ([`cot_answer`]), then the question's own prompt. `render` turns a
/// question into its prompt (the data template the teacher was trained with).
///
/// # Errors
/// The first error of `render`.
///
/// # Example
/// ```
/// use kd_train::methods::step_by_step::{StepByStepRow, teacher_prompt};
/// let ex = StepByStepRow { input: "1 + 1?".into(), rationale: Some("1 + 1 = 2.".into()), label: "2".into() };
/// let plain = |q: &str| Ok::<_, ()>(format!("{q}\n"));
/// let p = teacher_prompt(&[ex], "2 + 3?", plain).unwrap();
/// assert_eq!(p, "1 + 1?\n1 + 1 = 2. The answer is 2.\n2 + 3?\n");
/// assert_eq!(teacher_prompt(&[], "2 + 3?", plain).unwrap(), "2 + 3?\n");
/// ```
pub fn teacher_prompt<E>(
    exemplars: &[StepByStepRow],
    question: &str,
    render: impl Fn(&str) -> std::result::Result<String, E>,
) -> std::result::Result<String, E> {
    let mut p = String::new();
    for ex in exemplars {
        p.push_str(&render(&ex.input)?);
        p.push_str(&cot_answer(ex.rationale.as_deref().unwrap_or(""), &ex.label));
        p.push('\n');
    }
    p.push_str(&render(question)?);
    Ok(p)
}

/// Rationale and label of a teacher's answer: the text before the first "The answer is" is the
/// rationale, the number after it (else the last number, [`final_number`]) the label. A
/// generation that runs on into a next question is cut at its first newline.
///
/// # Example
/// ```
/// use kd_train::methods::step_by_step::parse_teacher_output;
/// let (r, l) = parse_teacher_output("6 - 4 = 2. 2 + 2 = 4. The answer is 4.\nTom had");
/// assert_eq!((r.as_str(), l.as_deref()), ("6 - 4 = 2. 2 + 2 = 4.", Some("4")));
/// assert_eq!(parse_teacher_output("no numbers").1, None);
/// ```
pub fn parse_teacher_output(text: &str) -> (String, Option<String>) {
    let first = text.trim_start().lines().next().unwrap_or("").trim();
    let rationale = match first.find(crate::exact_match::ANSWER_MARKER) {
        Some(p) => first[..p].trim(),
        None => first,
    };
    (rationale.to_string(), final_number(first))
}

/// The training set of [`StepByStep`]: label block `i` at `2i`, rationale block `i` at `2i + 1`.
///
/// # Errors
/// [`TrainError::InvalidConfig`] when the two lists differ in length, or see
/// [`TokenDataset::new`].
pub fn pair_blocks(label: Vec<TokenBlock>, rationale: Vec<TokenBlock>) -> Result<TokenDataset> {
    if label.len() != rationale.len() {
        return Err(TrainError::config(
            "data",
            "one rationale block per label block",
            format!("{} label and {} rationale blocks", label.len(), rationale.len()),
        ));
    }
    let blocks = label.into_iter().zip(rationale).flat_map(|(a, b)| [a, b]).collect();
    TokenDataset::new("step-by-step pairs", blocks)
}

/// Splits a [`pair_blocks`] set into its label blocks and rationale blocks.
///
/// # Errors
/// [`TrainError::InvalidConfig`] when the set has an odd number of blocks (not pairs).
pub fn unpair_blocks(data: &TokenDataset) -> Result<(TokenDataset, TokenDataset)> {
    if !data.len().is_multiple_of(2) {
        return Err(TrainError::config(
            "data",
            "step-by-step pairs (label block, rationale block) per example: an even number of \
             blocks (step_by_step::pair_blocks)",
            format!("{} blocks", data.len()),
        ));
    }
    let pick = |r: usize| data.blocks.iter().skip(r).step_by(2).cloned().collect::<Vec<_>>();
    Ok((TokenDataset::new("label task", pick(0))?, TokenDataset::new("rationale task", pick(1))?))
}

/// Distilling step-by-step (see the module docs).
#[derive(Debug)]
pub struct StepByStep {
    config: StepByStepConfig,
    /// Rationale block of each label block (set by `prepare_data`).
    rationales: Option<TokenDataset>,
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for StepByStep {
    fn name(&self) -> &'static str {
        "step_by_step"
    }

    fn teacher_use(&self) -> TeacherUse {
        // The teacher's rationales and labels are written into the data before training.
        TeacherUse::None
    }

    fn prepare_data(
        &mut self,
        _teacher: Option<&T>,
        data: &TokenDataset,
        _tokens: &SpecialTokens,
        _device: &Device,
    ) -> Result<Option<TokenDataset>> {
        let (label, rationale) = unpair_blocks(data)?;
        self.rationales = Some(rationale);
        Ok(Some(label))
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let rationales = self.rationales.as_ref().ok_or_else(|| {
            TrainError::config("data", "step-by-step pairs (prepare_data first)", "none")
        })?;
        let idx = cx.next_indices();
        // The label task of the drawn examples.
        let label = cx.data.batch(&idx, cx.device);
        let logits = cx.student.logits(label.input_ids); // [b, s, v]
        let label_loss = masked_cross_entropy_mean(logits, label.labels);
        let mut metrics = vec![("label_loss", f64::from(label_loss.clone().into_scalar::<f32>()))];
        let lambda = self.config.rationale_weight;
        if lambda == 0.0 {
            return Ok(MicroBatchLoss { loss: label_loss, tokens: label.counted as u64, metrics });
        }
        // The rationale task of the same examples.
        let rat = rationales.batch(&idx, cx.device);
        let logits = cx.student.logits(rat.input_ids); // [b, s, v]
        let rationale_loss = masked_cross_entropy_mean(logits, rat.labels);
        metrics.push(("rationale_loss", f64::from(rationale_loss.clone().into_scalar::<f32>())));
        Ok(MicroBatchLoss {
            loss: label_loss + rationale_loss * lambda,
            tokens: (label.counted + rat.counted) as u64,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::instruction_block;

    #[test]
    fn config_checks() {
        let ok = StepByStepConfig::default();
        ok.validate().unwrap();
        assert_eq!(ok.rationale_weight, 1.0);
        let bad = |f: fn(&mut StepByStepConfig), key: &str| {
            let mut c = StepByStepConfig::default();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        };
        bad(|c| c.rationale_weight = -1.0, "rationale_weight");
        bad(|c| c.rationale_weight = f64::NAN, "rationale_weight");
        bad(|c| c.label_prefix = " ".into(), "label_prefix");
        bad(|c| c.rationale_prefix = "[label]".into(), "rationale_prefix");
        bad(|c| c.train_fraction = 0.0, "train_fraction");
        bad(|c| c.train_fraction = 1.5, "train_fraction");
        bad(|c| c.generation_batch = 0, "generation_batch");
        bad(|c| c.max_new_tokens = 0, "max_new_tokens");
        let c: StepByStepConfig =
            serde_json::from_str(r#"{"labels": "teacher", "rationales": "data"}"#).unwrap();
        assert!(c.uses_teacher_outputs());
        assert!(serde_json::from_str::<StepByStepConfig>(r#"{"alpha": 0.5}"#).is_err());
        assert!(serde_json::from_str::<StepByStepConfig>(r#"{"labels": "llm"}"#).is_err());
    }

    #[test]
    fn rows_accept_input_or_instruction() {
        let dir = std::env::temp_dir().join(format!("kd-sbs-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("r.jsonl");
        std::fs::write(
            &p,
            "{\"input\":\"q1\",\"label\":\"3\",\"rationale\":\"1 + 2 = 3.\"}\n\n\
             {\"instruction\":\"q2\",\"label\":7,\"response\":\"x\"}\n",
        )
        .unwrap();
        let rows = read_rows(&p).unwrap();
        assert_eq!(rows[0].rationale.as_deref(), Some("1 + 2 = 3."));
        assert_eq!((rows[1].input.as_str(), rows[1].label.as_str()), ("q2", "7"));
        assert_eq!(rows[1].rationale, None);
        std::fs::write(&p, "{\"input\":\"q\"}\n").unwrap();
        let e = read_rows(&p).unwrap_err();
        assert!(matches!(e, TrainError::Data { line: 1, .. }) && e.to_string().contains("label"));
        std::fs::write(&p, "{\"label\":\"1\"}\n").unwrap();
        assert!(read_rows(&p).unwrap_err().to_string().contains("`input`"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn teacher_answers_parse() {
        let (r, l) = parse_teacher_output(" 8 + 5 = 13. 13 - 9 = 4. The answer is 4.");
        assert_eq!((r.as_str(), l.as_deref()), ("8 + 5 = 13. 13 - 9 = 4.", Some("4")));
        // No marker: the whole line is the rationale, its last number the label.
        let (r, l) = parse_teacher_output("8 + 5 = 13");
        assert_eq!((r.as_str(), l.as_deref()), ("8 + 5 = 13", Some("13")));
        assert_eq!(parse_teacher_output(""), (String::new(), None));
        assert_eq!(cot_answer("", "5"), "The answer is 5.");
    }

    #[test]
    fn pairs_round_trip_and_odd_sets_are_refused() {
        let b = |t: u32| instruction_block(&[1, t], &[t, 2], 6, 0);
        let pairs = pair_blocks(vec![b(10), b(11)], vec![b(20), b(21)]).unwrap();
        assert_eq!(pairs.len(), 4);
        let (l, r) = unpair_blocks(&pairs).unwrap();
        assert_eq!(l.blocks, [b(10), b(11)]);
        assert_eq!(r.blocks, [b(20), b(21)]);
        assert!(pair_blocks(vec![b(1)], vec![]).is_err());
        let odd = TokenDataset::new("x", vec![b(1), b(2), b(3)]).unwrap();
        assert!(unpair_blocks(&odd).unwrap_err().to_string().contains("even"));
    }
}
