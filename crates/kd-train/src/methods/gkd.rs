//! `gkd`: generalized knowledge distillation (on-policy), with TRL's `GKDTrainer` semantics.
//!
//! ```text
//! per micro-batch:  prompts x from the data
//!                   y = the data's responses;   with seq_kd: y ~ teacher(· | x)
//!                   with probability λ:          y ~ student(· | x)          (on-policy)
//!                   loss = Σ_{response t} JSD_β(p_t ‖ q_t) / #response tokens
//! JSD_β(p‖q) = β·KL(p‖m) + (1 − β)·KL(q‖m),  m = β·p + (1 − β)·q
//! ```
//!
//! `p` is the teacher's and `q` the student's next-token distribution on the same tokens
//! (kd-losses [`kd_losses::GeneralizedJsd`], golden-checked). Responses are
//! sampled with the KV cache at temperature 0.9 and at most 128 new tokens by default, stop at
//! EOS and stay within the block length. The coin for λ and the sampling use the trainer's
//! seeded RNG, so a resumed run draws the same batches.
//!
//! Paper: Agarwal et al., *On-Policy Distillation of Language Models: Learning from
//! Self-Generated Mistakes* (ICLR 2024), <https://arxiv.org/abs/2306.13649>. Reference
//! implementation: TRL's `GKDTrainer`
//! (<https://github.com/huggingface/trl/blob/main/trl/trainer/gkd_trainer.py>).

use kd_losses::{Divergence, GeneralizedJsd, GeneralizedJsdConfig, KdBatch, Reduction};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::methods::{MicroBatchLoss, Prompts, StepContext, TeacherUse, prompts_of};
use crate::model::LanguageModel;
use crate::rollout::{SamplingConfig, SequenceBatch, sample};

/// Config of [`Gkd`]; defaults are TRL's `GKDConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GkdConfig {
    /// Probability `λ ∈ [0, 1]` that a micro-batch uses student-sampled responses (default
    /// `0.5`; `0` = supervised KD on the data, `1` = fully on-policy).
    pub lmbda: f64,
    /// `β ∈ [0, 1]` of the generalized JSD (default `0.5`; `0` = forward KL, `1` = reverse KL).
    pub beta: f64,
    /// Temperature of the divergence (default `1`).
    pub loss_temperature: f64,
    /// Replace the data's responses by teacher-sampled ones (default `false`).
    pub seq_kd: bool,
    /// How responses are sampled (default temperature `0.9`, `128` new tokens).
    pub sampling: SamplingConfig,
}

impl Default for GkdConfig {
    fn default() -> Self {
        Self {
            lmbda: 0.5,
            beta: 0.5,
            loss_temperature: 1.0,
            seq_kd: false,
            sampling: SamplingConfig { temperature: 0.9, ..SamplingConfig::default() },
        }
    }
}

impl GkdConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key, or the loss's error.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.lmbda) {
            return Err(TrainError::config("lmbda", "a value in [0, 1]", self.lmbda));
        }
        self.sampling.validate()?;
        self.loss()?;
        Ok(())
    }

    fn loss(&self) -> Result<GeneralizedJsd> {
        Ok(GeneralizedJsdConfig::new()
            .with_beta(self.beta)
            .with_temperature(self.loss_temperature)
            .init()?)
    }

    /// The method.
    ///
    /// # Errors
    /// See [`GkdConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<Gkd> {
        self.validate()?;
        Ok(Gkd { loss: self.loss()?, config: self.clone() })
    }
}

/// On-policy GKD (see the module docs).
#[derive(Debug)]
pub struct Gkd {
    config: GkdConfig,
    loss: GeneralizedJsd,
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for Gkd {
    fn name(&self) -> &'static str {
        "gkd"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let teacher = cx.require_teacher("gkd")?;
        let plain = cx.plain_device();
        let idx = cx.next_indices();
        let Prompts { prompts, mut responses, caps } = prompts_of(cx.data, &idx)?;
        let sampling = &self.config.sampling;
        let none: Option<(&T, f64)> = None;
        if self.config.seq_kd {
            responses =
                sample(teacher, none, &prompts, &caps, sampling, cx.tokens, cx.rng, &plain)?
                    .responses;
        }
        let on_policy = cx.rng.next_f64() < self.config.lmbda;
        let mut metrics = Vec::new();
        if on_policy {
            let start = std::time::Instant::now();
            let student = cx.student.valid();
            let r = sample(&student, none, &prompts, &caps, sampling, cx.tokens, cx.rng, &plain)?;
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            metrics.push(("rollout_tokens_per_s", r.num_tokens() as f64 / secs));
            responses = r.responses;
        }
        let seqs = SequenceBatch::new(&prompts, &responses, cx.tokens.pad_id, cx.device);
        let (s, t) = cx.student_and_teacher_logits(teacher, seqs.input_ids.clone())?;
        let labels = seqs.labels.clone().flatten::<1>(0, 1);
        let tokens = seqs.num_tokens();
        let loss = if tokens == 0 {
            // Every sampled response was empty: nothing to learn from this micro-batch.
            s.sum().mul_scalar(0.0)
        } else {
            let batch = KdBatch::from_sequences(s, t).with_labels(labels);
            self.loss.forward(batch, Reduction::Mean)?.loss
        };
        metrics.push(("on_policy", if on_policy { 1.0 } else { 0.0 }));
        metrics.push(("response_len", tokens as f64 / prompts.len() as f64));
        Ok(MicroBatchLoss { loss, tokens: tokens as u64, metrics })
    }
}
