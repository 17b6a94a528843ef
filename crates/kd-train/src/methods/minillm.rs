//! `minillm`: MiniLLM's policy-gradient optimisation of the sequence-level reverse KL
//! `KL(q_θ ‖ p)`, the full algorithm of the paper.
//!
//! ```text
//! rollout phase (every rollout_batches × ppo_epochs micro-batches):
//!     y ~ p̃(· | x) = α·p(· | x) + (1 − α)·q_θ(· | x)       teacher-mixed sampling, α = 0.2
//!     keep x, y and logq_old_t = log q_θ_old(y_t | x, y_<t)  (the student at sampling time)
//! each micro-batch (one stored mini-batch; ppo_epochs passes over the rollouts):
//!     r_t = log p(y_t) − logq_old_t      ÷ reward_scaling, clipped to ±cliprange_reward
//!     A_t = whiten( Σ_{t'≥t} γ^(t'−t) r_t' / L_t )         length-normalised long-term return
//!     w_t = q_old(y_t) / p̃(y_t),  ratio_t = exp(logq_t − logq_old_t)·w_t
//!     L_pg  = mean_t max(−A_t·ratio_t, −A_t·clip(ratio_t, 1 ± ε))          ε = 0.2
//!     L_reg = mean_t KL(q_θ(·|y_<t) ‖ p(·|y_<t))     single-step part, exact over the vocabulary
//!     L     = L_pg + L_reg + pt_weight · L_PT         L_PT: next-token CE on a plain-text corpus
//! ```
//!
//! Every term of `L_pg + L_reg` goes through kd-losses' golden-checked
//! [`kd_losses::MiniLlm`]; this file does the sampling, the rollout store and the
//! language-modelling loss. The rollout store (prompts, responses, old log-probabilities) and the
//! position in it are checkpointed, so a resumed run continues inside a rollout phase exactly.
//! MiniLLM starts from a student fine-tuned on the task (SFT); start the run from such a
//! checkpoint (`student.pretrained`).
//!
//! Paper: Gu et al., *MiniLLM: Knowledge Distillation of Large Language Models* (ICLR 2024),
//! <https://arxiv.org/abs/2306.08543>; code
//! <https://github.com/microsoft/LMOps/tree/main/minillm>.

use burn::tensor::{Tensor, TensorData};
use kd_losses::{MiniLlm, MiniLlmBatch, MiniLlmConfig};
use serde::{Deserialize, Serialize};

use crate::data::{BatchOrder, DataCursor};
use crate::error::{Result, TrainError};
use crate::methods::{MicroBatchLoss, Prompts, StepContext, TeacherUse, prompts_of};
use crate::metrics::masked_cross_entropy_mean;
use crate::model::LanguageModel;
use crate::rollout::{SamplingConfig, SequenceBatch, sample, score};

/// Config of [`MiniLlmMethod`]; defaults are the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiniLlmMethodConfig {
    /// The objective (kd-losses [`MiniLlmConfig`]): `temperature`, `gamma` (0.95), `cliprange`
    /// (0.2), `reward_scaling`, `cliprange_reward`, `teacher_mixed_alpha` (0.2 here),
    /// `single_step_reg` (true), `whitening_variance`.
    pub loss: MiniLlmConfig,
    /// Sampling of the rollouts (default temperature 1, no top-k/top-p, 128 new tokens). With
    /// teacher mixing the temperature must equal `loss.temperature` and top-k/top-p stay unset,
    /// so that the importance weights are those of the sampling policy.
    pub sampling: SamplingConfig,
    /// Micro-batches of prompts sampled per rollout phase (default `4`).
    pub rollout_batches: usize,
    /// Passes over each rollout phase (PPO inner epochs, default `4`).
    pub ppo_epochs: usize,
    /// Weight of the language-modelling loss on the plain-text corpus
    /// ([`Trainer::with_pt_data`](crate::Trainer::with_pt_data); `data.pt` in a `kd` config);
    /// default `1`, `0` = off.
    pub pt_weight: f64,
}

impl Default for MiniLlmMethodConfig {
    fn default() -> Self {
        Self {
            loss: MiniLlmConfig { teacher_mixed_alpha: Some(0.2), ..MiniLlmConfig::default() },
            sampling: SamplingConfig::default(),
            rollout_batches: 4,
            ppo_epochs: 4,
            pt_weight: 1.0,
        }
    }
}

impl MiniLlmMethodConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key, or the loss's error.
    pub fn validate(&self) -> Result<()> {
        self.loss.init()?;
        self.sampling.validate()?;
        if self.loss.teacher_mixed_alpha.is_some_and(|a| a > 0.0) {
            if self.sampling.temperature != self.loss.temperature {
                return Err(TrainError::config(
                    "sampling.temperature",
                    "equal to loss.temperature under teacher-mixed sampling",
                    self.sampling.temperature,
                ));
            }
            if self.sampling.top_k.is_some() || self.sampling.top_p.is_some() {
                return Err(TrainError::config(
                    "sampling.top_k",
                    "unset (and top_p unset) under teacher-mixed sampling",
                    "a truncation",
                ));
            }
        }
        if self.rollout_batches == 0 {
            return Err(TrainError::config("rollout_batches", "≥ 1", 0));
        }
        if self.ppo_epochs == 0 {
            return Err(TrainError::config("ppo_epochs", "≥ 1", 0));
        }
        if !(self.pt_weight >= 0.0 && self.pt_weight.is_finite()) {
            return Err(TrainError::config("pt_weight", "a finite value ≥ 0", self.pt_weight));
        }
        Ok(())
    }

    /// The method.
    ///
    /// # Errors
    /// See [`MiniLlmMethodConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<MiniLlmMethod> {
        self.validate()?;
        Ok(MiniLlmMethod {
            loss: self.loss.init()?,
            config: self.clone(),
            store: RolloutStore::default(),
            pt_order: None,
        })
    }
}

/// One stored mini-batch of a rollout phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    prompts: Vec<Vec<u32>>,
    responses: Vec<Vec<u32>>,
    /// `log softmax(q_old/τ)[y_t]` per row, over the response tokens.
    old_logprobs: Vec<Vec<f32>>,
}

/// The rollouts of the current phase and where the inner epochs stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RolloutStore {
    batches: Vec<Stored>,
    epoch: usize,
    position: usize,
    pt_cursor: DataCursor,
    phases: u64,
}

/// MiniLLM (see the module docs).
#[derive(Debug)]
pub struct MiniLlmMethod {
    config: MiniLlmMethodConfig,
    loss: MiniLlm,
    store: RolloutStore,
    /// The PT corpus order at `store.pt_cursor` (not stored: rebuilt from the cursor).
    pt_order: Option<BatchOrder>,
}

impl MiniLlmMethod {
    fn rollout_phase<S: LanguageModel, T: LanguageModel>(
        &mut self,
        cx: &mut StepContext<'_, S, T>,
    ) -> Result<(f64, usize)> {
        let teacher = cx.require_teacher("minillm")?;
        let plain = cx.plain_device();
        let student = cx.student.valid();
        let alpha = self.config.loss.teacher_mixed_alpha.filter(|&a| a > 0.0);
        let start = std::time::Instant::now();
        let mut batches = Vec::with_capacity(self.config.rollout_batches);
        let mut sampled = 0;
        for _ in 0..self.config.rollout_batches {
            let idx = cx.next_indices();
            let Prompts { prompts, caps, .. } = prompts_of(cx.data, &idx)?;
            let r = sample(
                &student,
                alpha.map(|a| (teacher, a)),
                &prompts,
                &caps,
                &self.config.sampling,
                cx.tokens,
                cx.rng,
                &plain,
            )?;
            sampled += r.num_tokens();
            let seqs = SequenceBatch::new(&r.prompts, &r.responses, cx.tokens.pad_id, &plain);
            let lp = score(&student, &seqs, self.config.loss.temperature);
            let w = seqs.width;
            let flat: Vec<f32> = lp.into_data().try_to_vec_as::<f32>().expect("f32");
            let old_logprobs = r
                .responses
                .iter()
                .enumerate()
                .map(|(i, y)| flat[i * w..i * w + y.len()].to_vec())
                .collect();
            batches.push(Stored { prompts: r.prompts, responses: r.responses, old_logprobs });
        }
        self.store.batches = batches;
        self.store.epoch = 0;
        self.store.position = 0;
        self.store.phases += 1;
        Ok((start.elapsed().as_secs_f64(), sampled))
    }

    fn pt_loss<S: LanguageModel, T: LanguageModel>(
        &mut self,
        cx: &mut StepContext<'_, S, T>,
    ) -> Result<Option<(Tensor<1>, u64)>> {
        if self.config.pt_weight == 0.0 {
            return Ok(None);
        }
        let pt = cx.pt_data.ok_or_else(|| {
            TrainError::config(
                "pt_data",
                "a plain-text corpus for the PT loss (data.pt, Trainer::with_pt_data), or pt_weight = 0",
                "none",
            )
        })?;
        // The order's permutation is built once (and again after a restore) from its cursor.
        let cursor = self.store.pt_cursor;
        let order = self
            .pt_order
            .get_or_insert_with(|| BatchOrder::new(pt.len(), cx.seed ^ 0x5054, cursor));
        let idx = order.next_batch(cx.batch_size);
        self.store.pt_cursor = order.cursor();
        let batch = pt.batch(&idx, cx.device);
        let logits = cx.student.logits(batch.input_ids); // [b, s, v]
        Ok(Some((masked_cross_entropy_mean(logits, batch.labels), batch.counted as u64)))
    }
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for MiniLlmMethod {
    fn name(&self) -> &'static str {
        "minillm"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let mut metrics = Vec::new();
        if self.store.batches.is_empty() || self.store.epoch >= self.config.ppo_epochs {
            let (secs, sampled) = self.rollout_phase(cx)?;
            metrics.push(("rollout_tokens_per_s", sampled as f64 / secs.max(1e-9)));
        }
        let stored = self.store.batches[self.store.position].clone();
        self.store.position += 1;
        if self.store.position == self.store.batches.len() {
            self.store.position = 0;
            self.store.epoch += 1;
        }
        let teacher = cx.require_teacher("minillm")?;
        let seqs =
            SequenceBatch::new(&stored.prompts, &stored.responses, cx.tokens.pad_id, cx.device);
        let (b, w) = (stored.prompts.len(), seqs.width);
        let (s, t) = cx.student_and_teacher_logits(teacher, seqs.input_ids.clone())?;
        let mut old = vec![0f32; b * w];
        for (i, lp) in stored.old_logprobs.iter().enumerate() {
            old[i * w..i * w + lp.len()].copy_from_slice(lp);
        }
        let batch = MiniLlmBatch {
            student_logits: seqs.response_logits(s),
            teacher_logits: seqs.response_logits(t),
            tokens: seqs.response_tokens(cx.device),
            mask: seqs.response_mask(cx.device),
            old_student_logits: None,
            old_logprobs: Some(Tensor::from_data(TensorData::new(old, [b, w]), cx.device)),
        };
        let out = self.loss.forward(batch)?;
        let scalar = |t: &Tensor<1>| f64::from(t.clone().inner().into_scalar::<f32>());
        metrics.push(("pg_loss", scalar(&out.pg_loss)));
        metrics.push(("reg_loss", scalar(&out.reg_loss)));
        if let Some(r) = out.token("reward") {
            let n = seqs.num_tokens().max(1) as f64;
            metrics.push(("reward", f64::from(r.clone().sum().inner().into_scalar::<f32>()) / n));
        }
        metrics.push(("response_len", seqs.num_tokens() as f64 / b as f64));
        let mut loss = out.loss;
        let tokens = seqs.num_tokens() as u64;
        if let Some((pt, _)) = self.pt_loss(cx)? {
            metrics.push(("pt_loss", scalar(&pt)));
            loss = loss.add(pt.mul_scalar(self.config.pt_weight));
        }
        Ok(MicroBatchLoss { loss, tokens, metrics })
    }

    fn state(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&self.store)
            .map_err(|e| TrainError::checkpoint("state.json", format!("minillm: {e}")))
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if !state.is_null() {
            self.store = serde_json::from_value(state.clone())
                .map_err(|e| TrainError::checkpoint("state.json", format!("minillm: {e}")))?;
            self.pt_order = None;
        }
        Ok(())
    }
}
