//! Knowledge distillation for automatic scoring: a small classifier student learns rubric scores
//! from hard labels plus a fine-tuned teacher classifier's soft labels (Latif, Fang, Ma & Zhai,
//! "Knowledge Distillation of LLM for Automatic Scoring of Science Education Assessments",
//! arXiv 2312.15842).
//!
//! ```text
//! loss = CE(y, q) + λ · T² · CE(p_T, q_T)
//!      = mean_i [ −log q_{i,y_i} ] + λ T² · mean_i [ −Σ_k p_{i,k} log q_{i,k}^T ]
//! q   = softmax(s),  q^T = softmax(s / T),  p_T = softmax(t / T)
//! s, t: student and teacher class logits of row i; y_i its (human) score
//! ```
//!
//! At `T = 1` this is the paper's `L^KD = L + λ L̃`, `L̃ = (1/N) Σ_i CE(p_i, f(x_i; θ))` with the
//! teacher's probabilities `p_i` as soft labels ([`scoring_kd_loss`]). `λ = 0` is label-only
//! training.
//!
//! - [`ScoringClassifier`]: a [`CausalLm`] body and a linear head over the final hidden state of
//!   each row's last real token (Hugging Face's `LlamaForSequenceClassification` pooling);
//! - [`read_scored_jsonl`] / [`ScoringSet`]: `{"question", "answer", "score"}` rows, checked and
//!   tokenized as `<bos>question\nanswer`;
//! - [`train_classifier`]: AdamW, warmup + cosine, seeded shuffling, gradient accumulation and
//!   clipping, label-only or with the teacher's logits ([`predict_logits`], computed once);
//! - [`ScoringMetrics`]: accuracy, macro-F1, per-class F1, quadratic weighted kappa (QWK) and the
//!   confusion matrix ([`scoring_metrics`]).
//!
//! `kd score-distill` runs the whole recipe on the shipped synthetic data
//! (`docs/methods/scoring.md`).

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use kd_models::sampling::Rng;
use kd_models::{CausalLm, ModelConfig, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::{AdamW, AdamWConfig, clip_factor};
use crate::params::{GradAccumulator, make_trainable};
use crate::schedule::{DecayKind, LrSchedule};

/// One scored answer: the question, the (student's) written answer and its rubric score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoredAnswer {
    /// The question (here an arithmetic word problem).
    pub question: String,
    /// The written answer to score.
    pub answer: String,
    /// The rubric score, `0..num_classes`.
    pub score: usize,
}

impl ScoredAnswer {
    /// The text the classifier reads: `question`, a newline, `answer` (the tokenizer adds BOS).
    pub fn text(&self) -> String {
        format!("{}\n{}", self.question, self.answer)
    }
}

/// Reads a JSONL file of `{"question": str, "answer": str, "score": int}` lines (other keys are
/// ignored; blank lines are skipped).
///
/// # Errors
/// [`TrainError::InvalidConfig`] when `num_classes < 2`; [`TrainError::Io`] when the file cannot
/// be read; [`TrainError::Data`] (with the line) for bad JSON, a missing or mistyped key or a
/// score outside `0..num_classes`; [`TrainError::EmptyDataset`] when no row is left.
pub fn read_scored_jsonl(path: &Path, num_classes: usize) -> Result<Vec<ScoredAnswer>> {
    if num_classes < 2 {
        return Err(TrainError::config("num_classes", "at least 2", num_classes));
    }
    let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |line: usize, reason: String| TrainError::Data { path: path.into(), line, reason };
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(i + 1, e.to_string()))?;
        let text = |key: &str| {
            value
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| bad(i + 1, format!("expected a string `{key}`")))
        };
        let (question, answer) = (text("question")?, text("answer")?);
        let score = value
            .get("score")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad(i + 1, "expected a non-negative integer `score`".into()))?;
        if score >= num_classes as u64 {
            return Err(bad(i + 1, format!("score {score} outside 0..{num_classes}")));
        }
        rows.push(ScoredAnswer { question, answer, score: score as usize });
    }
    if rows.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: path.display().to_string(),
            reason: "no scored answer in the file".into(),
        });
    }
    Ok(rows)
}

/// Tokenized scored answers: one id sequence (BOS + text, no padding) and one label per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoringSet {
    /// Token ids of each row, unpadded.
    pub ids: Vec<Vec<u32>>,
    /// The score of each row, `0..num_classes`.
    pub labels: Vec<usize>,
    /// Number of score classes.
    pub num_classes: usize,
}

impl ScoringSet {
    /// Tokenizes `rows` ([`ScoredAnswer::text`] with the tokenizer's BOS).
    ///
    /// # Errors
    /// [`TrainError::EmptyDataset`] for no rows; [`TrainError::Scoring`] for a score outside
    /// `0..num_classes` or a row longer than `max_len` tokens; [`TrainError::Model`] when the
    /// tokenizer fails.
    pub fn encode(
        rows: &[ScoredAnswer],
        tokenizer: &Tokenizer,
        num_classes: usize,
        max_len: usize,
    ) -> Result<Self> {
        if rows.is_empty() {
            return Err(TrainError::EmptyDataset {
                what: "scoring".into(),
                reason: "no rows".into(),
            });
        }
        let mut ids = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if row.score >= num_classes {
                return Err(TrainError::Scoring {
                    what: format!("row {i} score"),
                    expected: format!("0..{num_classes}"),
                    got: row.score.to_string(),
                });
            }
            let row_ids = tokenizer.encode_prompt(&row.text())?;
            if row_ids.is_empty() || row_ids.len() > max_len {
                return Err(TrainError::Scoring {
                    what: format!("row {i} length in tokens"),
                    expected: format!("1..={max_len} (the model's positions)"),
                    got: row_ids.len().to_string(),
                });
            }
            ids.push(row_ids);
        }
        Ok(Self { ids, labels: rows.iter().map(|r| r.score).collect(), num_classes })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The longest row, in tokens.
    pub fn max_len(&self) -> usize {
        self.ids.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The first `n` rows (all when `n ≥ len`).
    pub fn head(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            ids: self.ids[..n].to_vec(),
            labels: self.labels[..n].to_vec(),
            num_classes: self.num_classes,
        }
    }

    /// The rows at `indices`, right-padded with `PAD_ID` to the longest of them:
    /// `(input_ids [batch, seq], lengths)`.
    fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<2, Int>, Vec<usize>) {
        let lengths: Vec<usize> = indices.iter().map(|&i| self.ids[i].len()).collect();
        let seq = lengths.iter().copied().max().unwrap_or(1);
        let mut flat = Vec::with_capacity(indices.len() * seq);
        for &i in indices {
            let row = &self.ids[i];
            flat.extend(row.iter().map(|&t| i64::from(t)));
            flat.extend(std::iter::repeat_n(i64::from(PAD_ID), seq - row.len()));
        }
        let ids = Tensor::from_data(TensorData::new(flat, [indices.len(), seq]), device);
        (ids, lengths)
    }
}

/// The id right padding uses. Any id serves: with causal attention no real token attends to a
/// later position, and the pooled position is the last real one.
pub const PAD_ID: u32 = 0;

/// A sequence classifier: a causal LM body (its LM head unused) and a linear score head on the
/// final (normed) hidden state of each row's last real token.
///
/// ```text
/// h      = body.last_hidden_state(ids)            [batch, seq, hidden]
/// pooled = h[i, len_i − 1, :]                     [batch, hidden]
/// logits = pooled · W                             [batch, classes]   (W: no bias, N(0, σ_init))
/// ```
/// This is Hugging Face's `LlamaForSequenceClassification` (the `score` head, last non-pad
/// token) with right padding. The padding needs no attention mask: attention is causal, so the
/// pooled position never sees the padding after it (a test checks it).
#[derive(Module, Debug)]
pub struct ScoringClassifier {
    /// The transformer body (its LM head is kept but unused).
    pub body: CausalLm,
    /// The classification head, burn layout `[hidden, classes]`, no bias.
    pub score: Linear,
}

impl ScoringClassifier {
    /// A classifier on `body` with a fresh head of `num_classes` outputs (`N(0, σ)`,
    /// `σ = initializer_range` of the body's config; drawn from `device`'s seeded RNG).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when `num_classes < 2`.
    pub fn new(body: CausalLm, num_classes: usize, device: &Device) -> Result<Self> {
        if num_classes < 2 {
            return Err(TrainError::config("num_classes", "at least 2", num_classes));
        }
        let config = body.config();
        let std = config.initializer_range();
        let score =
            kd_models::layers::init_linear(config.hidden_size(), num_classes, false, std, device);
        Ok(Self { body, score })
    }

    /// A classifier whose body is the causal LM of a Hugging Face directory (`config.json` +
    /// safetensors), with a fresh head.
    ///
    /// # Errors
    /// The loading errors of [`kd_models::load_pretrained`] as [`TrainError::Model`]; as
    /// [`ScoringClassifier::new`].
    pub fn from_pretrained(dir: &Path, num_classes: usize, device: &Device) -> Result<Self> {
        let body = kd_models::load_pretrained(dir, device)?;
        Self::new(body, num_classes, device)
    }

    /// A classifier with a freshly initialised body of `config` (training from scratch).
    ///
    /// # Errors
    /// [`TrainError::Model`] for an inconsistent config; as [`ScoringClassifier::new`].
    pub fn init(config: &ModelConfig, num_classes: usize, device: &Device) -> Result<Self> {
        Self::new(CausalLm::init(config, device)?, num_classes, device)
    }

    /// Number of score classes (outputs of the head).
    pub fn num_classes(&self) -> usize {
        self.score.weight.dims()[1]
    }

    /// The longest row the body takes (its positions).
    pub fn max_positions(&self) -> usize {
        self.body.config().max_position_embeddings()
    }

    /// Class logits of right-padded rows: `input_ids [batch, seq]`, `lengths[i]` the number of
    /// real tokens of row `i` → `[batch, classes]` in `f32`.
    ///
    /// # Panics
    /// When `lengths.len()` differs from the batch or a length is `0` or exceeds `seq`.
    pub fn forward(&self, input_ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        let [b, s] = input_ids.dims();
        assert_eq!(lengths.len(), b, "{} lengths for a batch of {b} rows", lengths.len());
        let hidden = self.body.last_hidden_state(input_ids, None, None); // [b, s, d]
        let d = hidden.dims()[2];
        let rows: Vec<i64> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                assert!((1..=s).contains(&n), "row {i}: length {n} outside 1..={s}");
                (i * s + n - 1) as i64
            })
            .collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &hidden.device());
        // The last real token of each row.
        let pooled = hidden.reshape([b * s, d]).select(0, rows).cast(FloatDType::F32); // [b, d]
        let weight = self.score.weight.val().cast(FloatDType::F32); // [d, classes]
        pooled.matmul(weight) // [b, classes]
    }
}

/// The two knobs of [`scoring_kd_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoringLossConfig {
    /// Weight `λ ≥ 0` of the soft-label term (`0`: label-only; default `1`).
    pub lambda: f64,
    /// Temperature `T > 0` of teacher and student in the soft term (default `1`, the paper's).
    pub temperature: f64,
}

impl Default for ScoringLossConfig {
    fn default() -> Self {
        Self { lambda: 1.0, temperature: 1.0 }
    }
}

impl ScoringLossConfig {
    /// Checks the knobs.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when `λ` is negative or not finite, or `T` is not finite
    /// and positive.
    pub fn validate(&self) -> Result<()> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(TrainError::config("lambda", "a finite value ≥ 0", self.lambda));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TrainError::config("temperature", "a finite value > 0", self.temperature));
        }
        Ok(())
    }
}

/// Hard-label cross-entropy plus `λ · T²` times the cross-entropy against the teacher's soft
/// labels, averaged over the batch; a one-element tensor.
///
/// ```text
/// loss = (1/B) Σ_i [ −log q_{i,y_i} ]  +  λ T² (1/B) Σ_i [ −Σ_k p_{i,k} log q^T_{i,k} ]
/// q = softmax(s_i),  q^T = softmax(s_i / T),  p = softmax(t_i / T)
/// ```
/// Gradient w.r.t. the student logits of row `i`:
/// ```text
/// ∂loss/∂s_{i,k} = [ (q_{i,k} − 1{k = y_i}) + λ T (q^T_{i,k} − p_{i,k}) ] / B
/// ```
/// The soft term is the cross-entropy, not the KL divergence: they differ by the teacher's
/// entropy, a constant, so the gradient is the same (the value is the paper's). `T²` keeps the
/// soft gradient's scale independent of `T` (Hinton et al.); at `T = 1` this is exactly the
/// paper's `L + λ L̃`. With `λ = 0` the teacher is not used (it may be `None`) and the result is
/// the plain cross-entropy.
///
/// # Shapes
/// `student_logits [batch, classes]`, `labels [batch]` (each in `0..classes`),
/// `teacher_logits [batch, classes]`.
///
/// # Errors
/// [`TrainError::InvalidConfig`] from [`ScoringLossConfig::validate`]; [`TrainError::Scoring`]
/// when the shapes disagree, `λ > 0` without teacher logits, or the batch is empty.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_train::scoring::{ScoringLossConfig, scoring_kd_loss};
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[2.0, 0.0, -1.0]], &device);
/// let t = Tensor::<2>::from_floats([[1.0, 1.0, -2.0]], &device);
/// let y = Tensor::<1, Int>::from_ints([0], &device);
/// let label_only = ScoringLossConfig { lambda: 0.0, temperature: 1.0 };
/// let ce = scoring_kd_loss(s.clone(), y.clone(), None, &label_only)?.into_scalar::<f32>();
/// let kd = scoring_kd_loss(s, y, Some(t), &ScoringLossConfig::default())?.into_scalar::<f32>();
/// assert!(kd > ce);
/// # Ok::<(), kd_train::TrainError>(())
/// ```
pub fn scoring_kd_loss(
    student_logits: Tensor<2>,
    labels: Tensor<1, Int>,
    teacher_logits: Option<Tensor<2>>,
    config: &ScoringLossConfig,
) -> Result<Tensor<1>> {
    config.validate()?;
    let [b, k] = student_logits.dims();
    let shape_error = |what: &str, expected: String, got: String| TrainError::Scoring {
        what: what.to_string(),
        expected,
        got,
    };
    if b == 0 || k == 0 {
        return Err(shape_error(
            "student logits",
            "[batch ≥ 1, classes ≥ 1]".into(),
            format!("{:?}", [b, k]),
        ));
    }
    if labels.dims() != [b] {
        return Err(shape_error("labels", format!("[{b}]"), format!("{:?}", labels.dims())));
    }
    // Hard labels: −log q_{y}.
    let log_q = log_softmax(student_logits.clone(), 1); // [b, k]
    let hard = log_q.gather(1, labels.reshape([b, 1])).neg().mean(); // [1]
    if config.lambda == 0.0 {
        return Ok(hard);
    }
    let teacher = teacher_logits.ok_or_else(|| {
        shape_error("teacher logits", "logits when lambda > 0".into(), "none".into())
    })?;
    if teacher.dims() != [b, k] {
        return Err(shape_error(
            "teacher logits",
            format!("{:?} (the student's)", [b, k]),
            format!("{:?}", teacher.dims()),
        ));
    }
    let t = config.temperature;
    // Soft labels: −Σ_k p_k log q^T_k with both at temperature T.
    let p = softmax(teacher.div_scalar(t), 1); // [b, k]
    let log_q_t = log_softmax(student_logits.div_scalar(t), 1); // [b, k]
    let soft = p.mul(log_q_t).sum_dim(1).neg().mean(); // [1]
    Ok(hard.add(soft.mul_scalar(config.lambda * t * t)))
}

/// Class logits of every row of `set` (`[len][classes]`), a batch of rows at a time, without
/// gradients. The teacher's soft labels are these logits at temperature `T` (computed once,
/// before the student trains).
///
/// # Errors
/// [`TrainError::Scoring`] when the model's classes differ from the set's, a token id is
/// outside its vocabulary, a row is longer than its positions, or a logit is not finite.
pub fn predict_logits(
    model: &ScoringClassifier,
    set: &ScoringSet,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    check_fits(model, set, "model")?;
    let indices: Vec<usize> = (0..set.len()).collect();
    let mut out = Vec::with_capacity(set.len());
    for chunk in indices.chunks(batch_size.max(1)) {
        let (ids, lengths) = set.batch(chunk, device);
        let logits = model.forward(ids, &lengths); // [b, k]
        let values = logits.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| {
            TrainError::Scoring {
                what: "logits".into(),
                expected: "f32 values".into(),
                got: format!("{e:?}"),
            }
        })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::Scoring {
                what: "class logits".into(),
                expected: "finite values".into(),
                got: "NaN or infinity (a diverged model)".into(),
            });
        }
        out.extend(values.chunks(set.num_classes).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// The set is consistent and the model fits it: same classes, ids within its vocabulary, rows
/// within its positions.
fn check_fits(model: &ScoringClassifier, set: &ScoringSet, who: &str) -> Result<()> {
    if model.num_classes() != set.num_classes {
        return Err(TrainError::Scoring {
            what: format!("{who} classes"),
            expected: format!("{} (the data's)", set.num_classes),
            got: model.num_classes().to_string(),
        });
    }
    // The fields are public: a set built by hand gets the checks `encode` makes.
    if set.is_empty() {
        return Err(TrainError::EmptyDataset { what: "scoring".into(), reason: "no rows".into() });
    }
    if set.labels.len() != set.len() || set.ids.iter().any(Vec::is_empty) {
        return Err(TrainError::Scoring {
            what: "scoring set".into(),
            expected: "one label per row and no empty row".into(),
            got: format!("{} rows, {} labels", set.len(), set.labels.len()),
        });
    }
    if let Some(&label) = set.labels.iter().find(|&&l| l >= set.num_classes) {
        return Err(TrainError::Scoring {
            what: "score".into(),
            expected: format!("0..{}", set.num_classes),
            got: label.to_string(),
        });
    }
    let vocab = model.body.vocab_size();
    if let Some(&id) = set.ids.iter().flatten().max()
        && id as usize >= vocab
    {
        return Err(TrainError::Scoring {
            what: "token ids".into(),
            expected: format!("< {vocab} (the {who}'s vocabulary: use its tokenizer)"),
            got: id.to_string(),
        });
    }
    if set.max_len() > model.max_positions() {
        return Err(TrainError::Scoring {
            what: "longest row in tokens".into(),
            expected: format!("≤ {} (the {who}'s positions)", model.max_positions()),
            got: set.max_len().to_string(),
        });
    }
    Ok(())
}

/// Settings of [`train_classifier`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringTrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradients summed, then divided by this).
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps, then a cosine to `min_lr_ratio · lr`.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// AdamW weight decay (matrices outside embeddings).
    pub weight_decay: f64,
    /// Global gradient-norm clipping (`None`: off).
    pub max_grad_norm: Option<f64>,
    /// Seed of the shuffling.
    pub seed: u64,
    /// `λ` and `T`.
    pub loss: ScoringLossConfig,
}

impl Default for ScoringTrainConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_size: 16,
            grad_accum: 1,
            lr: 1e-3,
            warmup_steps: 20,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            seed: 0,
            loss: ScoringLossConfig::default(),
        }
    }
}

impl ScoringTrainConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(TrainError::config("steps", "at least 1", self.steps));
        }
        if self.batch_size == 0 {
            return Err(TrainError::config("batch_size", "at least 1", self.batch_size));
        }
        if self.grad_accum == 0 {
            return Err(TrainError::config("grad_accum", "at least 1", self.grad_accum));
        }
        if let Some(m) = self.max_grad_norm
            && !(m.is_finite() && m > 0.0)
        {
            return Err(TrainError::config("max_grad_norm", "a finite value > 0", m));
        }
        self.schedule().validate()?;
        AdamWConfig { weight_decay: self.weight_decay, ..AdamWConfig::default() }.validate()?;
        self.loss.validate()
    }

    /// The learning-rate schedule: warmup, then a cosine over the run.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            min_lr_ratio: self.min_lr_ratio,
            decay: DecayKind::Cosine,
        }
    }
}

/// What [`train_classifier`] reports besides the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringTrainReport {
    /// The loss of each optimizer step (mean over its micro-batches).
    pub losses: Vec<f64>,
    /// Wall-clock seconds.
    pub secs: f64,
}

/// Trains `model` on `train`: label-only when `config.loss.lambda = 0`, else with the teacher's
/// logits of each training row (`teacher_logits[i]` for row `i`, from [`predict_logits`]).
///
/// Each optimizer step takes `grad_accum` micro-batches of `batch_size` rows from a seeded
/// permutation of the rows (a new one each epoch), sums their gradients, divides by
/// `grad_accum`, clips the global norm and applies AdamW at the step's learning rate.
/// `on_step(step, loss)` is called after each step (1-based). The model trains on `device`'s
/// autodiff form and comes back on the plain `device`, without gradients.
///
/// # Errors
/// [`ScoringTrainConfig::validate`]; [`TrainError::Scoring`] when the model's classes differ
/// from the data's, a token id is outside its vocabulary, a row is longer than its positions,
/// or the teacher logits do not match the rows (count or classes), are not finite, or are
/// missing with `λ > 0`; [`TrainError::NonFiniteLoss`] / [`TrainError::NonFiniteGradient`] when
/// training diverges.
pub fn train_classifier(
    model: ScoringClassifier,
    train: &ScoringSet,
    teacher_logits: Option<&[Vec<f32>]>,
    config: &ScoringTrainConfig,
    device: &Device,
    mut on_step: impl FnMut(u64, f64),
) -> Result<(ScoringClassifier, ScoringTrainReport)> {
    config.validate()?;
    check_fits(&model, train, "student")?;
    let k = train.num_classes;
    let teacher = if config.loss.lambda > 0.0 {
        let t = teacher_logits.ok_or_else(|| TrainError::Scoring {
            what: "teacher logits".into(),
            expected: "one row per training row when lambda > 0".into(),
            got: "none".into(),
        })?;
        if t.len() != train.len() {
            return Err(TrainError::Scoring {
                what: "teacher logits rows".into(),
                expected: train.len().to_string(),
                got: t.len().to_string(),
            });
        }
        if let Some(row) = t.iter().find(|r| r.len() != k) {
            return Err(TrainError::Scoring {
                what: "teacher classes".into(),
                expected: format!("{k} (the data's)"),
                got: row.len().to_string(),
            });
        }
        if t.iter().flatten().any(|v| !v.is_finite()) {
            return Err(TrainError::Scoring {
                what: "teacher logits".into(),
                expected: "finite values".into(),
                got: "NaN or infinity".into(),
            });
        }
        Some(t)
    } else {
        None
    };
    let start = Instant::now();
    let plain = device.clone().inner();
    let device = device.clone().autodiff();
    let mut model = make_trainable(model, &device);
    let mut optim =
        AdamW::new(AdamWConfig { weight_decay: config.weight_decay, ..AdamWConfig::default() })?;
    let schedule = config.schedule();
    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut losses = Vec::with_capacity(config.steps as usize);
    for step in 0..config.steps {
        let mut acc = GradAccumulator::new();
        let mut loss_sum = 0.0;
        for _ in 0..config.grad_accum {
            let mut rows = Vec::with_capacity(config.batch_size);
            while rows.len() < config.batch_size {
                if order.is_empty() {
                    order = permutation(train.len(), &mut rng);
                }
                rows.push(order.pop().expect("a non-empty permutation"));
            }
            let (ids, lengths) = train.batch(&rows, &device);
            let labels: Vec<i64> = rows.iter().map(|&i| train.labels[i] as i64).collect();
            let labels =
                Tensor::<1, Int>::from_data(TensorData::new(labels, [rows.len()]), &device);
            let teacher = teacher.map(|t| {
                let flat: Vec<f32> = rows.iter().flat_map(|&i| t[i].iter().copied()).collect();
                Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), k]), &device)
            });
            let logits = model.forward(ids, &lengths); // [b, k]
            let loss = scoring_kd_loss(logits, labels, teacher, &config.loss)?;
            loss_sum += f64::from(loss.clone().inner().into_scalar::<f32>());
            let grads = loss.backward();
            acc.add(&model, &grads);
        }
        let loss = loss_sum / config.grad_accum as f64;
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss { step: step + 1, loss });
        }
        acc.scale(1.0 / config.grad_accum as f64);
        let norm = acc.global_norm();
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteGradient { step: step + 1 });
        }
        let scale = clip_factor(norm, config.max_grad_norm);
        model = optim.step(model, &acc, schedule.lr(step), scale);
        losses.push(loss);
        on_step(step + 1, loss);
    }
    let model = model.valid().to_device(&plain).no_grad();
    Ok((model, ScoringTrainReport { losses, secs: start.elapsed().as_secs_f64() }))
}

/// A seeded Fisher–Yates permutation of `0..n`.
fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// How well predicted scores agree with the reference scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringMetrics {
    /// Rows scored.
    pub examples: usize,
    /// Share of rows whose predicted score is the reference score.
    pub accuracy: f64,
    /// Mean of the per-class F1 over the classes that occur in the references or the
    /// predictions (scikit-learn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    /// Quadratic weighted kappa (Cohen's κ with weights `(i − j)² / (K − 1)²`).
    pub qwk: f64,
    /// F1 of each class `0..K` (`0` for a class never predicted or never present).
    pub per_class_f1: Vec<f64>,
    /// `confusion[reference][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// [`ScoringMetrics`] of `predicted` against `reference` scores in `0..num_classes`.
///
/// ```text
/// F1_k     = 2 TP_k / (2 TP_k + FP_k + FN_k)         (0 when the denominator is 0)
/// macro-F1 = mean of F1_k over classes with TP_k + FP_k + FN_k > 0
/// QWK      = 1 − Σ w_ij O_ij / Σ w_ij E_ij,  w_ij = (i − j)² / (K − 1)²,
///            O = confusion counts, E_ij = (row_i · col_j) / N
/// ```
/// A class that occurs but is never predicted has precision `0/0`, taken as `0` (scikit-learn's
/// `zero_division=0`), so its F1 is `0` and it pulls the macro average down. When chance
/// agreement is already perfect (`Σ w E = 0`: both sides a single, identical class) QWK is
/// taken as `0` (no agreement beyond chance) where scikit-learn returns NaN.
///
/// # Errors
/// [`TrainError::Scoring`] when the lengths differ, there are no rows, `num_classes < 2`, or a
/// score is outside `0..num_classes`.
pub fn scoring_metrics(
    reference: &[usize],
    predicted: &[usize],
    num_classes: usize,
) -> Result<ScoringMetrics> {
    let err = |what: &str, expected: String, got: String| TrainError::Scoring {
        what: what.into(),
        expected,
        got,
    };
    if reference.len() != predicted.len() {
        return Err(err(
            "predicted scores",
            format!("{} (one per reference)", reference.len()),
            predicted.len().to_string(),
        ));
    }
    if reference.is_empty() {
        return Err(err("scored rows", "at least 1".into(), "0".into()));
    }
    if num_classes < 2 {
        return Err(err("num_classes", "at least 2".into(), num_classes.to_string()));
    }
    if let Some(&s) = reference.iter().chain(predicted).find(|&&s| s >= num_classes) {
        return Err(err("score", format!("0..{num_classes}"), s.to_string()));
    }
    let mut confusion = vec![vec![0u64; num_classes]; num_classes];
    for (&r, &p) in reference.iter().zip(predicted) {
        confusion[r][p] += 1;
    }
    let n = reference.len() as f64;
    let correct: u64 = (0..num_classes).map(|k| confusion[k][k]).sum();
    let (macro_f1, per_class_f1) = macro_f1(&confusion);
    Ok(ScoringMetrics {
        examples: reference.len(),
        accuracy: correct as f64 / n,
        macro_f1,
        qwk: quadratic_weighted_kappa(&confusion),
        per_class_f1,
        confusion,
    })
}

/// `confusion[r][c]`, `0` outside a ragged matrix.
fn cell(confusion: &[Vec<u64>], r: usize, c: usize) -> u64 {
    confusion.get(r).and_then(|row| row.get(c)).copied().unwrap_or(0)
}

/// Macro-F1 and the per-class F1 of a square confusion matrix `[reference][predicted]` (see
/// [`scoring_metrics`] for the conventions). `(0, [])` for an empty matrix.
pub fn macro_f1(confusion: &[Vec<u64>]) -> (f64, Vec<f64>) {
    let k = confusion.len();
    let mut per_class = Vec::with_capacity(k);
    let (mut sum, mut counted) = (0.0, 0usize);
    for (c, row) in confusion.iter().enumerate() {
        let tp = cell(confusion, c, c) as f64;
        let fn_: f64 = row.iter().sum::<u64>() as f64 - tp;
        let fp: f64 = (0..k).map(|r| cell(confusion, r, c)).sum::<u64>() as f64 - tp;
        let denominator = 2.0 * tp + fp + fn_;
        let f1 = if denominator > 0.0 { 2.0 * tp / denominator } else { 0.0 };
        if denominator > 0.0 {
            sum += f1;
            counted += 1;
        }
        per_class.push(f1);
    }
    (if counted == 0 { 0.0 } else { sum / counted as f64 }, per_class)
}

/// Quadratic weighted kappa of a square confusion matrix `[reference][predicted]` (see
/// [`scoring_metrics`]); `0` when chance agreement is perfect or the matrix is empty.
pub fn quadratic_weighted_kappa(confusion: &[Vec<u64>]) -> f64 {
    let k = confusion.len();
    let rows: Vec<f64> =
        (0..k).map(|i| (0..k).map(|j| cell(confusion, i, j)).sum::<u64>() as f64).collect();
    let n: f64 = rows.iter().sum();
    if k < 2 || n == 0.0 {
        return 0.0;
    }
    let cols: Vec<f64> =
        (0..k).map(|j| (0..k).map(|i| cell(confusion, i, j)).sum::<u64>() as f64).collect();
    let (mut observed, mut expected) = (0.0, 0.0);
    for (i, row) in rows.iter().enumerate() {
        for (j, col) in cols.iter().enumerate() {
            let w = ((i as f64 - j as f64) / (k as f64 - 1.0)).powi(2);
            observed += w * cell(confusion, i, j) as f64;
            expected += w * row * col / n;
        }
    }
    if expected == 0.0 { 0.0 } else { 1.0 - observed / expected }
}

/// The predicted score of each row: the first maximal logit (`0` for an empty row; NaN never
/// wins).
pub fn argmax_rows(logits: &[Vec<f32>]) -> Vec<usize> {
    logits
        .iter()
        .map(|row| {
            let mut best = 0;
            for (k, v) in row.iter().enumerate() {
                if *v > row[best] || row[best].is_nan() && !v.is_nan() {
                    best = k;
                }
            }
            best
        })
        .collect()
}

/// [`ScoringMetrics`] of `model` on `set` (greedy: the highest logit).
///
/// # Errors
/// As [`predict_logits`] and [`scoring_metrics`].
pub fn evaluate_classifier(
    model: &ScoringClassifier,
    set: &ScoringSet,
    batch_size: usize,
    device: &Device,
) -> Result<ScoringMetrics> {
    let logits = predict_logits(model, set, batch_size, device)?;
    scoring_metrics(&set.labels, &argmax_rows(&logits), set.num_classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_seeded_shuffle() {
        let a = permutation(20, &mut Rng::new(3));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(a, permutation(20, &mut Rng::new(3)));
        assert_ne!(a, permutation(20, &mut Rng::new(4)));
    }

    #[test]
    fn config_edges() {
        assert!(ScoringLossConfig { lambda: -1.0, temperature: 1.0 }.validate().is_err());
        assert!(ScoringLossConfig { lambda: 1.0, temperature: 0.0 }.validate().is_err());
        assert!(ScoringLossConfig { lambda: f64::NAN, temperature: 1.0 }.validate().is_err());
        assert!(ScoringTrainConfig { batch_size: 0, ..Default::default() }.validate().is_err());
        assert!(ScoringTrainConfig { steps: 0, ..Default::default() }.validate().is_err());
        assert!(ScoringTrainConfig::default().validate().is_ok());
    }
}
