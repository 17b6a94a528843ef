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
//!   is [`kd_losses::TopKKl`] (any of its conventions), as with a stored sparse teacher.
//!
//! The loss is built once per run ([`KdConfig::init`]); TAID re-parameterises its `t` per step.

use burn::tensor::{Tensor, activation};
use kd_losses::{
    ChunkedHeadBatch, ChunkedHeadLoss, ChunkedTeacher, Divergence, HardLabelMix, KdBatch,
    LossConfig, Reduction, SparseKdBatch, Taid, TaidSchedule, TaidScheduleConfig, TopKKl,
    TopKKlConfig,
};
use serde::{Deserialize, Serialize};

use crate::data::Batch;
use crate::error::{Result, TrainError};
use crate::methods::{MicroBatchLoss, StepContext, TeacherUse};
use crate::metrics::masked_cross_entropy_mean;
use crate::model::LanguageModel;

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
    /// The dense divergence (`{loss = "forward_kl", temperature = 2.0}`); default `forward_kl`.
    pub divergence: LossConfig,
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
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            divergence: LossConfig::by_name("forward_kl").expect("forward_kl is registered"),
            hard_label_weight: 0.0,
            taid_schedule: None,
            teacher_top_k: None,
            chunk_rows: None,
        }
    }
}

impl KdConfig {
    /// A config for the divergence `loss` (by name, default settings).
    ///
    /// # Errors
    /// [`TrainError::Loss`] for an unknown name.
    pub fn with_loss(loss: &str) -> Result<Self> {
        Ok(Self { divergence: LossConfig::by_name(loss)?, ..Self::default() })
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
        self.divergence.init()?;
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
            LossConfig::Taid(c) => {
                let schedule = self.taid_schedule.clone().unwrap_or(TaidScheduleConfig {
                    num_train_steps: steps.max(1),
                    ..Default::default()
                });
                (KdLoss::Taid(c.init()?), Some(schedule.init()?))
            }
            other => (KdLoss::Dense(mixed(other.init()?, self.hard_label_weight)?), None),
        };
        let loss = match &self.teacher_top_k {
            Some(t) => KdLoss::TopK(t.loss.init()?, t.k),
            None => loss,
        };
        let chunked = self.chunk_rows.map(ChunkedHeadLoss::new).transpose()?;
        Ok(Kd { loss, taid, hard_label_weight: self.hard_label_weight, chunked })
    }
}

#[derive(Debug)]
enum KdLoss {
    Dense(Box<dyn Divergence>),
    Taid(Taid),
    TopK(TopKKl, usize),
}

/// Online off-policy distillation (see the module docs).
#[derive(Debug)]
pub struct Kd {
    loss: KdLoss,
    taid: Option<TaidSchedule>,
    hard_label_weight: f64,
    chunked: Option<ChunkedHeadLoss>,
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for Kd {
    fn name(&self) -> &'static str {
        "kd"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let teacher = cx.require_teacher("kd")?;
        let batch = cx.next_batch();
        let labels = batch.labels.clone().flatten::<1>(0, 1);
        let w = self.hard_label_weight;
        let taid_now; // TAID's divergence at this step's t
        let dense: &dyn Divergence = match &self.loss {
            KdLoss::Dense(d) => d.as_ref(),
            KdLoss::Taid(taid) => {
                let t_now = self.taid.as_ref().map_or(0.0, TaidSchedule::t);
                taid_now = mixed(Box::new(taid.at(t_now)?), w)?;
                taid_now.as_ref()
            }
            KdLoss::TopK(loss, k) => {
                let (s, t) = cx.student_and_teacher_logits(teacher, batch.input_ids.clone())?;
                let [b, n, v] = s.dims();
                let lp = activation::log_softmax(t.reshape([b * n, v]), 1); // [rows, v]
                let (values, ids) = lp.topk_with_indices((*k).min(v), 1); // [rows, k]
                let sparse = SparseKdBatch {
                    student_logits: s.clone().reshape([b * n, v]),
                    teacher_topk_ids: ids,
                    teacher_topk_logprobs: values,
                    labels: Some(labels),
                    mask: None,
                };
                let mut loss = loss.forward(sparse, Reduction::Mean)?.loss;
                if w > 0.0 {
                    let ce = masked_cross_entropy_mean(s, batch.labels.clone());
                    loss = loss.mul_scalar(1.0 - w).add(ce.mul_scalar(w));
                }
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
        Ok(MicroBatchLoss { loss, tokens: batch.counted as u64, metrics: Vec::new() })
    }

    fn supports_chunked_head(&self) -> bool {
        !matches!(self.loss, KdLoss::TopK(..)) // the sparse loss forms no teacher logits
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
