//! `kd`: online, off-policy distillation. Student and teacher read the same tokens of the data;
//! a dense kd-losses divergence between their next-token distributions is minimised on the
//! counted positions, optionally mixed with the hard-label cross-entropy.
//!
//! ```text
//! loss = (1 − w)·Σ_{counted t} D(p_t ‖ q_t) / #counted + w·CE        (w = hard_label_weight)
//! ```
//!
//! - `divergence`: any dense loss by name ([`kd_losses::LossConfig`]), default `forward_kl`.
//! - `taid`: its `t` follows TAID's adaptive schedule ([`kd_losses::TaidSchedule`]), whose state
//!   is checkpointed.
//! - `teacher_top_k`: the teacher is cut to its `k` most likely tokens per position and the loss
//!   is [`kd_losses::TopKKl`] (any of its conventions), as with a stored sparse teacher; with
//!   [`Trainer::with_teacher_logits`](crate::Trainer::with_teacher_logits) the `k` entries come
//!   from a file written once by [`crate::offline::precompute_teacher`] and no teacher runs.
//! - `divergence = {loss = "delta_kd"}`: Delta-KD ([`kd_losses::DeltaKd`]); the target is the
//!   frozen base student shifted by the teacher's fine-tuning delta, from the trainer's
//!   [`BaseModels`], whose logits can be cached
//!   (`base_logits_cache_mb`).
//! - `kd_warmup_steps = W`: DKD's warm-up; the KD term's factor ramps linearly from `1/W` at the
//!   first step to `1` at step `W` (the hard-label term keeps its weight):
//!
//! ```text
//! loss_step = f·(1 − w)·KD + w·CE,   f = min(step / W, 1),  step = 1, 2, …
//! ```
//!
//! The loss is built once per run ([`KdConfig::init`]); TAID re-parameterises its `t` per step.

use std::collections::HashMap;

use burn::tensor::{Int, Tensor, TensorData, activation};
use kd_losses::{
    ChunkedHeadBatch, ChunkedHeadLoss, ChunkedTeacher, DeltaKd, DeltaKdConfig, Divergence,
    HardLabelMix, KdBatch, LossConfig, Reduction, SparseKdBatch, Taid, TaidSchedule,
    TaidScheduleConfig, TopKKl, TopKKlConfig,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::data::{Batch, IGNORE_INDEX};
use crate::error::{Result, TrainError};
use crate::methods::{BaseModels, MicroBatchLoss, StepContext, TeacherUse};
use crate::metrics::masked_cross_entropy_mean;
use crate::model::{LanguageModel, logits_across};
use crate::offline::{self, SparseBlock, TeacherLogits};

/// The divergence of [`Kd`]: any dense kd-losses loss ([`LossConfig`]), or `delta_kd`, whose
/// target also needs the frozen base models. In a config both are a table tagged by `loss`:
/// `{loss = "reverse_kl", temperature = 2.0}`, `{loss = "delta_kd", alpha = 1.0}`.
#[derive(Debug, Clone, PartialEq)]
pub enum KdDivergence {
    /// A dense loss.
    Dense(LossConfig),
    /// Delta-KD ([`kd_losses::DeltaKd`]): needs
    /// [`Trainer::with_base_models`](crate::Trainer::with_base_models).
    DeltaKd(DeltaKdConfig),
}

impl KdDivergence {
    /// The default config of the loss `name` (a dense id or `delta_kd`).
    ///
    /// # Errors
    /// [`TrainError::Loss`] for an unknown name.
    pub fn by_name(name: &str) -> Result<Self> {
        if name == DeltaKd::ID {
            return Ok(Self::DeltaKd(DeltaKdConfig::default()));
        }
        Ok(Self::Dense(LossConfig::by_name(name)?))
    }

    /// The loss id.
    pub fn id(&self) -> &'static str {
        match self {
            Self::Dense(c) => c.id(),
            Self::DeltaKd(_) => DeltaKd::ID,
        }
    }
}

impl From<LossConfig> for KdDivergence {
    fn from(c: LossConfig) -> Self {
        Self::Dense(c)
    }
}

impl Serialize for KdDivergence {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Dense(c) => c.serialize(s),
            Self::DeltaKd(c) => {
                #[derive(Serialize)]
                struct Tagged<'a> {
                    loss: &'static str,
                    #[serde(flatten)]
                    config: &'a DeltaKdConfig,
                }
                Tagged { loss: DeltaKd::ID, config: c }.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for KdDivergence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Value::deserialize(d)?;
        let loss = value.get("loss").and_then(serde_json::Value::as_str).map(str::to_string);
        match loss.as_deref() {
            Some(id) if id == DeltaKd::ID => {
                if let Some(map) = value.as_object_mut() {
                    map.remove("loss");
                }
                DeltaKdConfig::deserialize(value).map(Self::DeltaKd).map_err(D::Error::custom)
            }
            Some(id) if LossConfig::by_name(id).is_err() => Err(D::Error::custom(format!(
                "unknown loss `{id}`: expected a dense kd-losses id ({}) or `delta_kd`",
                kd_losses::LOSSES
                    .iter()
                    .filter(|l| l.dense)
                    .map(|l| l.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => LossConfig::deserialize(value).map(Self::Dense).map_err(D::Error::custom),
        }
    }
}

/// The teacher cut to its top `k` tokens per position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopKTeacher {
    /// Tokens kept per position (`≥ 1`).
    pub k: usize,
    /// The sparse loss: convention (`renorm_teacher`, `renorm_both`, `tail_bucket`),
    /// temperature, `T²` scaling.
    #[serde(default)]
    pub loss: TopKKlConfig,
}

/// Config of [`Kd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KdConfig {
    /// The divergence (`{loss = "forward_kl", temperature = 2.0}`): any dense kd-losses loss,
    /// or `delta_kd` with base models; default `forward_kl`.
    pub divergence: KdDivergence,
    /// Weight of the hard-label cross-entropy, in `[0, 1]` (default `0`).
    pub hard_label_weight: f64,
    /// TAID's adaptive schedule when `divergence` is `taid` (default: the paper's, over the
    /// run's steps).
    pub taid_schedule: Option<TaidScheduleConfig>,
    /// Distil from the teacher's top-k tokens only (the `divergence` is then unused).
    pub teacher_top_k: Option<TopKTeacher>,
    /// Run the divergence through [`kd_losses::ChunkedHeadLoss`] with chunks of this many
    /// token rows: neither model's `[tokens, vocab]` logits are formed in full (both models
    /// must expose [`LanguageModel::hidden_and_head`] and share one vocabulary).
    pub chunk_rows: Option<usize>,
    /// DKD's warm-up: the KD term's factor ramps linearly from `1/W` at the first step to `1`
    /// at step `W` (default `0`: no warm-up). DKD warms up over 20 of 240 epochs on CIFAR-100
    /// (1 of 100 on ImageNet): about 8 % of the run.
    pub kd_warmup_steps: u64,
    /// `delta_kd`: keep the base models' part of the target (`z_sb − α·z_tb` on the counted
    /// positions of each block, `f32`) in host memory up to this many MiB, so later epochs
    /// skip the two base forwards (default `0`: no cache). Cached blocks are computed one at a
    /// time, so a block's target does not depend on the batch it first came in.
    pub base_logits_cache_mb: u64,
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            divergence: LossConfig::by_name("forward_kl").expect("forward_kl is registered").into(),
            hard_label_weight: 0.0,
            taid_schedule: None,
            teacher_top_k: None,
            chunk_rows: None,
            kd_warmup_steps: 0,
            base_logits_cache_mb: 0,
        }
    }
}

impl KdConfig {
    /// A config for the divergence `loss` (by name, default settings; `delta_kd` too).
    ///
    /// # Errors
    /// [`TrainError::Loss`] for an unknown name.
    pub fn with_loss(loss: &str) -> Result<Self> {
        Ok(Self { divergence: KdDivergence::by_name(loss)?, ..Self::default() })
    }

    /// Whether the divergence is `delta_kd` (the run then needs base models).
    pub fn is_delta_kd(&self) -> bool {
        matches!(self.divergence, KdDivergence::DeltaKd(_))
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key, or the loss's own error.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.hard_label_weight) {
            return Err(TrainError::config(
                "hard_label_weight",
                "a value in [0, 1]",
                self.hard_label_weight,
            ));
        }
        match &self.divergence {
            KdDivergence::Dense(c) => drop(c.init()?),
            KdDivergence::DeltaKd(c) => {
                c.init()?;
                if self.hard_label_weight > 0.0 {
                    return Err(TrainError::config(
                        "hard_label_weight",
                        "0 with delta_kd (its own divergence.lambda_sft weighs the hard labels)",
                        self.hard_label_weight,
                    ));
                }
                for (key, set) in [
                    ("teacher_top_k", self.teacher_top_k.is_some()),
                    ("chunk_rows", self.chunk_rows.is_some()),
                    ("taid_schedule", self.taid_schedule.is_some()),
                ] {
                    if set {
                        return Err(TrainError::config(key, "unset with delta_kd", "a value"));
                    }
                }
            }
        }
        if self.base_logits_cache_mb > 0 && !self.is_delta_kd() {
            return Err(TrainError::config(
                "base_logits_cache_mb",
                "0 unless the divergence is delta_kd (only its base models' logits are cached)",
                self.base_logits_cache_mb,
            ));
        }
        if let Some(t) = &self.teacher_top_k {
            if t.k == 0 {
                return Err(TrainError::config("teacher_top_k.k", "≥ 1", 0));
            }
            t.loss.init()?;
        }
        if let Some(s) = &self.taid_schedule {
            s.init()?;
        }
        if let Some(rows) = self.chunk_rows {
            ChunkedHeadLoss::new(rows)?;
            if self.teacher_top_k.is_some() {
                return Err(TrainError::config(
                    "chunk_rows",
                    "unset with teacher_top_k (the sparse loss forms no teacher logits)",
                    rows,
                ));
            }
        }
        Ok(())
    }

    /// The method for a run of `steps` optimizer steps.
    ///
    /// # Errors
    /// See [`KdConfig::validate`].
    pub fn init(&self, steps: u64) -> Result<Kd> {
        self.validate()?;
        let (loss, taid) = match &self.divergence {
            KdDivergence::Dense(LossConfig::Taid(c)) => {
                let schedule = self.taid_schedule.clone().unwrap_or(TaidScheduleConfig {
                    num_train_steps: steps.max(1),
                    ..Default::default()
                });
                (KdLoss::Taid(c.init()?), Some(schedule.init()?))
            }
            KdDivergence::Dense(other) => {
                let built = mixed(other.init()?, self.hard_label_weight)?;
                (KdLoss::Dense(built, other.clone()), None)
            }
            KdDivergence::DeltaKd(c) => (KdLoss::Delta(c.clone()), None),
        };
        let loss = match &self.teacher_top_k {
            Some(t) => KdLoss::TopK(t.loss.init()?, t.k),
            None => loss,
        };
        let chunked = self.chunk_rows.map(ChunkedHeadLoss::new).transpose()?;
        Ok(Kd {
            loss,
            taid,
            hard_label_weight: self.hard_label_weight,
            chunked,
            warmup_steps: self.kd_warmup_steps,
            cache: BaseCache::new(self.base_logits_cache_mb),
            blocks: Vec::new(),
        })
    }
}

#[derive(Debug)]
enum KdLoss {
    /// The divergence mixed with the hard labels at the run's weight, and its config (rebuilt
    /// at another mixing weight during the warm-up).
    Dense(Box<dyn Divergence>, LossConfig),
    Taid(Taid),
    TopK(TopKKl, usize),
    Delta(DeltaKdConfig),
}

/// Online off-policy distillation (see the module docs).
#[derive(Debug)]
pub struct Kd {
    loss: KdLoss,
    taid: Option<TaidSchedule>,
    hard_label_weight: f64,
    chunked: Option<ChunkedHeadLoss>,
    warmup_steps: u64,
    cache: BaseCache,
    /// Decoding buffers of stored teacher blocks (one per block of a micro-batch).
    blocks: Vec<SparseBlock>,
}

/// The weights of one step: `loss = scale·((1 − mix)·KD + mix·CE) = f·(1 − w)·KD + w·CE`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StepWeights {
    /// The warm-up factor `f` of the KD term.
    factor: f64,
    /// `mix = w / (f·(1 − w) + w)`, the convex mixing weight the losses take.
    mix: f64,
    /// `scale = f·(1 − w) + w`.
    scale: f64,
}

impl StepWeights {
    /// The weights of 1-based step `step` under a warm-up of `warmup` steps (`0` = none) and
    /// the hard-label weight `w`.
    fn at(step: u64, warmup: u64, w: f64) -> Self {
        let factor = if warmup == 0 { 1.0 } else { (step as f64 / warmup as f64).min(1.0) };
        let scale = factor * (1.0 - w) + w;
        // `scale > 0`: `factor ≥ 1/W > 0` and `w < 1`, or `w = 1`.
        Self { factor, mix: w / scale, scale }
    }

    fn is_plain(&self) -> bool {
        self.factor == 1.0
    }
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for Kd {
    fn name(&self) -> &'static str {
        "kd"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn uses_base_models(&self) -> bool {
        matches!(self.loss, KdLoss::Delta(_))
    }

    fn supports_teacher_ensemble(&self) -> bool {
        // Delta-KD's target and the chunked head take one teacher's logits.
        matches!(self.loss, KdLoss::Dense(..) | KdLoss::Taid(_) | KdLoss::TopK(..))
            && self.chunked.is_none()
    }

    fn reads_teacher_logits(&self) -> Option<usize> {
        match self.loss {
            KdLoss::TopK(_, k) => Some(k),
            _ => None,
        }
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let weights = StepWeights::at(cx.step + 1, self.warmup_steps, self.hard_label_weight);
        let mut out = match (cx.teacher_logits, &self.loss) {
            (Some(stored), KdLoss::TopK(loss, k)) => {
                stored_micro_batch(cx, stored, loss, *k, weights, &mut self.blocks)?
            }
            _ => {
                let teacher = cx.require_teacher("kd")?;
                self.weighted_micro_batch(cx, teacher, weights)?
            }
        };
        if self.warmup_steps > 0 {
            out.metrics.push(("kd_factor", weights.factor));
        }
        Ok(out)
    }

    fn supports_chunked_head(&self) -> bool {
        // The sparse loss forms no teacher logits; Delta-KD needs the base models' full logits.
        !matches!(self.loss, KdLoss::TopK(..) | KdLoss::Delta(_))
    }

    fn step_metrics(&self) -> Vec<(&'static str, f64)> {
        self.taid.as_ref().map(|t| vec![("taid_t", t.t())]).unwrap_or_default()
    }

    fn end_step(&mut self, step: u64, loss: f64) -> Result<()> {
        if let Some(t) = self.taid.as_mut() {
            t.update(step, loss);
        }
        Ok(())
    }

    fn state(&self) -> Result<serde_json::Value> {
        Ok(match &self.taid {
            Some(t) => serde_json::json!({ "taid": t.state() }),
            None => serde_json::Value::Null,
        })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if let (Some(t), Some(s)) = (self.taid.as_mut(), state.get("taid")) {
            let s = serde_json::from_value(s.clone())
                .map_err(|e| TrainError::checkpoint("state.json", format!("kd.taid: {e}")))?;
            t.restore(s);
        }
        Ok(())
    }
}

impl Kd {
    /// The micro-batch's loss under this step's weights.
    fn weighted_micro_batch<S: LanguageModel, T: LanguageModel>(
        &mut self,
        cx: &mut StepContext<'_, S, T>,
        teacher: &T,
        weights: StepWeights,
    ) -> Result<MicroBatchLoss> {
        if let KdLoss::Delta(c) = &self.loss {
            let c = DeltaKdConfig { lambda_sft: weights.mix, ..c.clone() };
            return self.delta_micro_batch(cx, teacher, &c, weights.scale);
        }
        let batch = cx.next_batch();
        let labels = batch.labels.clone().flatten::<1>(0, 1);
        let w = weights.mix;
        let rebuilt; // the divergence at this step's mixing weight (warm-up), or TAID's at its t
        let dense: &dyn Divergence = match &self.loss {
            KdLoss::Dense(d, _) if weights.is_plain() => d.as_ref(),
            KdLoss::Dense(_, config) => {
                rebuilt = mixed(config.init()?, w)?;
                rebuilt.as_ref()
            }
            KdLoss::Taid(taid) => {
                let t_now = self.taid.as_ref().map_or(0.0, TaidSchedule::t);
                rebuilt = mixed(Box::new(taid.at(t_now)?), w)?;
                rebuilt.as_ref()
            }
            KdLoss::Delta(_) => unreachable!("handled above"),
            KdLoss::TopK(loss, k) => {
                let (s, t) = cx.student_and_teacher_logits(teacher, batch.input_ids.clone())?;
                let [b, n, v] = s.dims();
                let lp = activation::log_softmax(t.reshape([b * n, v]), 1); // [rows, v]
                let (values, ids) = lp.topk_with_indices((*k).min(v), 1); // [rows, k]
                let loss = sparse_loss(loss, s, ids, values, &batch, weights)?;
                return Ok(MicroBatchLoss { loss, tokens: batch.counted as u64, metrics: vec![] });
            }
        };
        let chunked = match (&self.chunked, cx.chunked_head_rows) {
            (Some(c), _) => Some(*c),
            (None, Some(rows)) => Some(ChunkedHeadLoss::new(rows)?),
            (None, None) => None,
        };
        let loss = match &chunked {
            Some(chunked) => chunked_forward(chunked, dense, cx, teacher, &batch)?,
            None => {
                let (s, t) = cx.student_and_teacher_logits(teacher, batch.input_ids.clone())?;
                let kd = KdBatch::from_sequences(s, t).with_labels(labels);
                dense.forward(kd, Reduction::Mean)?.loss
            }
        };
        let loss = scaled(loss, weights.scale);
        Ok(MicroBatchLoss { loss, tokens: batch.counted as u64, metrics: Vec::new() })
    }

    /// Delta-KD on the counted positions of the next micro-batch, times `scale`.
    fn delta_micro_batch<S: LanguageModel, T: LanguageModel>(
        &mut self,
        cx: &mut StepContext<'_, S, T>,
        teacher: &T,
        config: &DeltaKdConfig,
        scale: f64,
    ) -> Result<MicroBatchLoss> {
        let base = cx.base.ok_or_else(|| {
            TrainError::config(
                "base models",
                "the base teacher and base student (Trainer::with_base_models) for delta_kd",
                "none",
            )
        })?;
        let idx = cx.next_indices();
        let batch = cx.data.batch(&idx, cx.device);
        let (s, t) = cx.student_and_teacher_logits(teacher, batch.input_ids.clone())?;
        let [b, n, v] = s.dims();
        // Rows of the counted positions, block by block: [rows]
        let rows: Vec<i64> = idx
            .iter()
            .enumerate()
            .flat_map(|(j, &i)| {
                let labels = &cx.data.blocks[i].labels;
                (0..n).filter(move |&p| labels[p] != IGNORE_INDEX).map(move |p| (j * n + p) as i64)
            })
            .collect();
        let tokens = rows.len() as u64;
        if rows.is_empty() {
            let zero = s.sum().mul_scalar(0.0);
            return Ok(MicroBatchLoss { loss: zero, tokens: 0, metrics: Vec::new() });
        }
        let rows_t =
            Tensor::<1, Int>::from_data(TensorData::new(rows.clone(), [rows.len()]), cx.device);
        let pick = |x: Tensor<3>| x.reshape([b * n, v]).select(0, rows_t.clone()); // [rows, v]
        let labels = batch.labels.flatten::<1>(0, 1).select(0, rows_t.clone()); // [rows]
        let (s, t) = (pick(s), pick(t));
        let plain = cx.plain_device();
        // The base part of the target: z_sb and z_tb, or their cached combination z_sb − α·z_tb
        // with a zero z_tb (the loss forms z_sb + α·(z_t − z_tb)).
        let (student_base, teacher_base) = if self.cache.enabled() {
            let offset = self.cache.offsets(base, cx.data, &idx, v, config.alpha, &plain)?;
            let zeros = Tensor::<2>::zeros(offset.dims(), &plain);
            (offset.autodiff(), zeros.autodiff())
        } else {
            let ids = batch.input_ids.inner();
            let sb = vocab_prefix(logits_across(&base.student, ids.clone()), v); // [b, n, v]
            let tb = vocab_prefix(logits_across(&base.teacher, ids), v);
            let rows_p = rows_t.clone().inner();
            let pick_p = |x: Tensor<3>| x.reshape([b * n, v]).select(0, rows_p.clone());
            (pick_p(sb).autodiff(), pick_p(tb).autodiff())
        };
        let loss = config.init()?.forward(
            KdBatch::new(s, t).with_labels(labels),
            teacher_base,
            student_base,
            Reduction::Mean,
        )?;
        let loss = scaled(loss.loss, scale);
        // (No cache metric: a resumed run starts with an empty cache, and step records must
        // not depend on where a run resumed.)
        Ok(MicroBatchLoss { loss, tokens, metrics: Vec::new() })
    }
}

/// `loss · scale` (unchanged at `1`).
/// The top-k loss of student logits `s` (`[b, n, v]`) against a sparse teacher (`ids`,
/// `logprobs`: `[b·n, k]`) on `batch`'s counted positions, mixed with the hard labels and scaled
/// by this step's weights.
fn sparse_loss(
    loss: &TopKKl,
    s: Tensor<3>,
    ids: Tensor<2, Int>,
    logprobs: Tensor<2>,
    batch: &Batch,
    weights: StepWeights,
) -> Result<Tensor<1>> {
    let [b, n, v] = s.dims();
    let sparse = SparseKdBatch {
        student_logits: s.clone().reshape([b * n, v]),
        teacher_topk_ids: ids,
        teacher_topk_logprobs: logprobs,
        labels: Some(batch.labels.clone().flatten::<1>(0, 1)),
        mask: None,
    };
    let mut out = loss.forward(sparse, Reduction::Mean)?.loss;
    let w = weights.mix;
    if w > 0.0 {
        let ce = masked_cross_entropy_mean(s, batch.labels.clone());
        out = out.mul_scalar(1.0 - w).add(ce.mul_scalar(w));
    }
    Ok(scaled(out, weights.scale))
}

/// `kd` from a teacher's stored top-k distributions ([`crate::offline`]): the next
/// micro-batch's blocks and, beside each, its stored block (the `k` most likely entries of it).
fn stored_micro_batch<S: LanguageModel, T: LanguageModel>(
    cx: &mut StepContext<'_, S, T>,
    stored: &TeacherLogits,
    loss: &TopKKl,
    k: usize,
    weights: StepWeights,
    blocks: &mut Vec<SparseBlock>,
) -> Result<MicroBatchLoss> {
    let idx = cx.next_indices();
    let batch = cx.data.batch(&idx, cx.device);
    cx.read_stored_blocks(&idx, blocks)?;
    let (ids, lps) = offline::block_tensors(blocks, stored.header().k, k, cx.device);
    let s = cx.student.logits(batch.input_ids.clone());
    let loss = sparse_loss(loss, s, ids, lps, &batch, weights)?;
    Ok(MicroBatchLoss { loss, tokens: batch.counted as u64, metrics: Vec::new() })
}

fn scaled(loss: Tensor<1>, scale: f64) -> Tensor<1> {
    if scale == 1.0 { loss } else { loss.mul_scalar(scale) }
}

/// The first `v` vocabulary columns of `logits` (a base model's logits brought to the run's
/// aligned vocabulary). Shape: `[batch, seq, vocab ≥ v]` → `[batch, seq, v]`.
fn vocab_prefix(logits: Tensor<3>, v: usize) -> Tensor<3> {
    let [b, n, vl] = logits.dims();
    if vl == v { logits } else { logits.slice([0..b, 0..n, 0..v]) }
}

/// Delta-KD's cache: per block, `z_sb − α·z_tb` at its counted positions (`f32`, host memory),
/// filled until `limit` bytes.
#[derive(Debug, Default)]
struct BaseCache {
    limit: u64,
    bytes: u64,
    full: bool,
    blocks: HashMap<usize, Vec<f32>>,
}

impl BaseCache {
    fn new(limit_mb: u64) -> Self {
        Self { limit: limit_mb.saturating_mul(1 << 20), ..Self::default() }
    }

    fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// `z_sb − α·z_tb` at the counted positions of blocks `idx`, in order. Shape: `[rows, v]`.
    fn offsets<T: LanguageModel>(
        &mut self,
        base: &BaseModels<T>,
        data: &crate::data::TokenDataset,
        idx: &[usize],
        v: usize,
        alpha: f64,
        plain: &burn::tensor::Device,
    ) -> Result<Tensor<2>> {
        let mut all: Vec<f32> = Vec::new();
        for &i in idx {
            if let Some(cached) = self.blocks.get(&i) {
                all.extend_from_slice(cached);
                continue;
            }
            // One block at a time: its values do not depend on the batch it came in.
            let block = &data.blocks[i];
            let n = block.input_ids.len();
            let ids: Vec<i64> = block.input_ids.iter().map(|&t| i64::from(t)).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), plain);
            let sb = vocab_prefix(logits_across(&base.student, ids.clone()), v);
            let tb = vocab_prefix(logits_across(&base.teacher, ids), v);
            let f32_ = burn::tensor::FloatDType::F32;
            let offset = sb.cast(f32_).sub(tb.cast(f32_).mul_scalar(alpha)).reshape([n, v]); // [n, v]
            let values =
                offset.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| {
                    TrainError::config("base models", "float logits", format!("{e:?}"))
                })?;
            let mut counted = Vec::with_capacity(block.counted() * v);
            for (p, &l) in block.labels.iter().enumerate() {
                if l != IGNORE_INDEX {
                    counted.extend_from_slice(&values[p * v..(p + 1) * v]);
                }
            }
            all.extend_from_slice(&counted);
            let size = (counted.len() * 4) as u64;
            if self.bytes + size <= self.limit {
                self.bytes += size;
                self.blocks.insert(i, counted);
            } else if !self.full {
                self.full = true;
                log::info!(
                    "delta_kd: the base-logits cache is full ({} blocks, {:.1} MiB); other \
                     blocks run the base models every time",
                    self.blocks.len(),
                    self.bytes as f64 / f64::from(1 << 20)
                );
            }
        }
        let rows = all.len() / v.max(1);
        Ok(Tensor::from_data(TensorData::new(all, [rows, v]), plain))
    }
}

/// The divergence through the chunked head: student (and teacher) hidden states and heads.
fn chunked_forward<S: LanguageModel, T: LanguageModel>(
    chunked: &ChunkedHeadLoss,
    d: &dyn Divergence,
    cx: &StepContext<'_, S, T>,
    teacher: &T,
    batch: &Batch,
) -> Result<Tensor<1>> {
    let missing = || {
        TrainError::config(
            "chunk_rows",
            "models that expose hidden states and output head (LanguageModel::hidden_and_head)",
            "a model without them",
        )
    };
    let s = cx.student.hidden_and_head(batch.input_ids.clone()).ok_or_else(missing)?;
    let plain = cx.plain_device();
    let there = crate::model::model_device(teacher).unwrap_or_else(|| plain.clone());
    let t = teacher.hidden_and_head(batch.input_ids.clone().inner().to_device(&there));
    let t = t.ok_or_else(missing)?;
    let t = crate::model::HiddenAndHead {
        hidden: t.hidden.to_device(&plain),
        weight: t.weight.to_device(&plain),
        bias: t.bias.map(|b| b.to_device(&plain)),
    };
    let (vs, vt) = (s.weight.dims()[0], t.weight.dims()[0]);
    if vs != vt {
        return Err(TrainError::VocabMismatch { student: vs, teacher: vt });
    }
    let [b, n, h] = s.hidden.dims();
    let th = t.hidden.dims()[2];
    let teacher = ChunkedTeacher::Hidden {
        hidden: t.hidden.reshape([b * n, th]).autodiff(),
        weight: t.weight.autodiff(),
        bias: t.bias.map(Tensor::autodiff),
    };
    let mut input = ChunkedHeadBatch::new(s.hidden.reshape([b * n, h]), s.weight, teacher)
        .with_labels(batch.labels.clone().flatten(0, 1));
    if let Some(bias) = s.bias {
        input = input.with_bias(bias);
    }
    Ok(chunked.forward(d, input, Reduction::Mean)?.loss)
}

/// `d` mixed with the hard-label cross-entropy at `weight` (unchanged at `0`).
fn mixed(d: Box<dyn Divergence>, weight: f64) -> Result<Box<dyn Divergence>> {
    if weight > 0.0 { Ok(Box::new(HardLabelMix::new(d, weight)?)) } else { Ok(d) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{TokenDataset, instruction_block};
    use kd_models::{CausalLm, LlamaConfig, ModelConfig};

    fn tiny(seed: u64, device: &burn::tensor::Device) -> CausalLm {
        device.seed(seed);
        let config = ModelConfig::Llama(LlamaConfig {
            vocab_size: 16,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 2,
            head_dim: 4,
            max_position_embeddings: 16,
            ..Default::default()
        });
        CausalLm::init(&config, device).unwrap()
    }

    #[test]
    fn warmup_weights_give_the_ramped_kd_term_and_the_fixed_hard_labels() {
        for (step, warmup, w) in [(1, 4, 0.4), (3, 4, 0.0), (9, 4, 0.3), (1, 1, 1.0), (5, 0, 0.2)] {
            let sw = StepWeights::at(step, warmup, w);
            let f = if warmup == 0 { 1.0 } else { (step as f64 / warmup as f64).min(1.0) };
            assert_eq!(sw.factor, f);
            // scale·(1 − mix) is the KD weight, scale·mix the CE weight.
            assert!((sw.scale * (1.0 - sw.mix) - f * (1.0 - w)).abs() < 1e-15);
            assert!((sw.scale * sw.mix - w).abs() < 1e-15);
        }
        assert!(StepWeights::at(4, 4, 0.5).is_plain() && !StepWeights::at(3, 4, 0.5).is_plain());
    }

    #[test]
    fn the_base_cache_keeps_counted_rows_until_its_budget() {
        let plain = burn::tensor::Device::flex();
        let base = BaseModels { teacher: tiny(1, &plain), student: tiny(2, &plain) };
        // Prompts of 3 tokens, responses of 2: 2 counted rows per block.
        let blocks = (0..4).map(|i| instruction_block(&[1, 3 + i, 4], &[5 + i, 2], 8, 0)).collect();
        let data = TokenDataset::new("t", blocks).unwrap();
        let row_bytes = 16 * 4;
        let mut cache = BaseCache { limit: 3 * 2 * row_bytes, ..BaseCache::default() };
        let first = cache.offsets(&base, &data, &[0, 1, 2, 3], 16, 0.5, &plain).unwrap();
        assert_eq!(first.dims(), [8, 16]);
        assert_eq!(cache.blocks.len(), 3, "the fourth block is past the budget");
        assert_eq!(cache.bytes, 3 * 2 * row_bytes);
        // Served from the cache (and recomputed for block 3): the same values.
        let again = cache.offsets(&base, &data, &[3, 2, 1, 0], 16, 0.5, &plain).unwrap();
        let rows = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
        let (a, b) = (rows(first), rows(again));
        for (i, j) in [(0, 3), (1, 2), (2, 1), (3, 0)] {
            assert_eq!(a[i * 32..(i + 1) * 32], b[j * 32..(j + 1) * 32], "block {i}");
        }
        // Block 0's rows equal z_sb − α·z_tb at its counted positions (2 and 3).
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(
                data.blocks[0].input_ids.iter().map(|&t| i64::from(t)).collect(),
                [1, 8],
            ),
            &plain,
        );
        let sb = base.student.logits(ids.clone()).reshape([8, 16]);
        let tb = base.teacher.logits(ids).reshape([8, 16]);
        let want = rows(sb.sub(tb.mul_scalar(0.5)).slice([2..4, 0..16]));
        for (x, y) in a[..32].iter().zip(&want) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }
}
