//! `seqkd`: sequence-level knowledge distillation. The teacher answers every training prompt
//! once (batched generation with the KV cache, greedy by default), and the student is trained
//! with next-token cross-entropy on those answers, optionally mixed with the data's own
//! responses.
//!
//! ```text
//! ŷ(x) = teacher's answer to x  (greedy ≈ the mode of p(y | x); or sampled)
//! loss = − Σ_t log q(ŷ_t | x, ŷ_<t) / #tokens        (on the original y for a fraction r)
//! ```
//!
//! Paper: Kim & Rush, *Sequence-Level Knowledge Distillation* (EMNLP 2016),
//! <https://arxiv.org/abs/1606.07947>; code <https://github.com/harvardnlp/seq2seq-attn>.
//! The `kd seqkd-generate` command writes the answers as a JSONL dataset with provenance;
//! [`SeqKd`] does the same at the token level inside [`Trainer::fit`](crate::Trainer::fit)
//! (before the first step, and again, identically, after a resume).

use burn::tensor::Device;
use kd_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::data::{TokenDataset, instruction_block};
use crate::error::{Result, TrainError};
use crate::methods::sft::cross_entropy_batch;
use crate::methods::{MicroBatchLoss, SpecialTokens, StepContext, TeacherUse, split_block};
use crate::model::LanguageModel;
use crate::rollout::{SamplingConfig, sample};

/// Config of [`SeqKd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeqKdConfig {
    /// How the teacher answers (default greedy, `temperature = 0`, at most 128 new tokens).
    pub sampling: SamplingConfig,
    /// Fraction `r ∈ [0, 1]` of the examples trained on their original response instead of
    /// the teacher's (default `0`); which ones is fixed by `seed`.
    pub original_fraction: f64,
    /// Seed of the sampling and of the mix (default `0`).
    pub seed: u64,
    /// Prompts per generation batch (default `16`).
    pub generation_batch: usize,
    /// A dataset of teacher answers written beforehand (`kd seqkd-generate`); when set, the
    /// training data given to the trainer already holds the answers and nothing is generated.
    pub dataset: Option<std::path::PathBuf>,
}

impl Default for SeqKdConfig {
    fn default() -> Self {
        Self {
            sampling: SamplingConfig { temperature: 0.0, ..SamplingConfig::default() },
            original_fraction: 0.0,
            seed: 0,
            generation_batch: 16,
            dataset: None,
        }
    }
}

impl SeqKdConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        if !(0.0..=1.0).contains(&self.original_fraction) {
            return Err(TrainError::config(
                "original_fraction",
                "a value in [0, 1]",
                self.original_fraction,
            ));
        }
        if self.generation_batch == 0 {
            return Err(TrainError::config("generation_batch", "≥ 1", 0));
        }
        Ok(())
    }

    /// The method.
    ///
    /// # Errors
    /// See [`SeqKdConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<SeqKd> {
        self.validate()?;
        Ok(SeqKd { config: self.clone() })
    }

    /// Whether example `index` keeps its original response (a seeded coin with probability
    /// `original_fraction`, the same for every run with this seed).
    pub fn keeps_original(&self, index: usize) -> bool {
        if self.original_fraction <= 0.0 {
            return false;
        }
        let mut r = Rng::new(self.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_f64() < self.original_fraction
    }
}

/// The teacher's answers to `prompts` (token ids; each at most `caps[i]` and
/// `sampling.max_new_tokens` tokens, ending at EOS), `batch` prompts at a time, seeded by `seed`.
///
/// # Errors
/// Rollout errors (empty prompt, id outside the vocabulary).
#[allow(clippy::too_many_arguments)]
pub fn teacher_answers<T: LanguageModel>(
    teacher: &T,
    prompts: &[Vec<u32>],
    caps: &[usize],
    sampling: &SamplingConfig,
    tokens: &SpecialTokens,
    seed: u64,
    batch: usize,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(prompts.len());
    for (chunk, cap) in prompts.chunks(batch.max(1)).zip(caps.chunks(batch.max(1))) {
        let none: Option<(&T, f64)> = None;
        let r = sample(teacher, none, chunk, cap, sampling, tokens, &mut rng, device)?;
        out.extend(r.responses);
        progress(out.len(), prompts.len());
    }
    Ok(out)
}

/// Sequence-level KD (see the module docs).
#[derive(Debug)]
pub struct SeqKd {
    config: SeqKdConfig,
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for SeqKd {
    fn name(&self) -> &'static str {
        "seqkd"
    }

    fn teacher_use(&self) -> TeacherUse {
        if self.config.dataset.is_some() { TeacherUse::None } else { TeacherUse::Required }
    }

    fn prepare_data(
        &mut self,
        teacher: Option<&T>,
        data: &TokenDataset,
        tokens: &SpecialTokens,
        device: &Device,
    ) -> Result<Option<TokenDataset>> {
        if self.config.dataset.is_some() {
            return Ok(None);
        }
        let teacher = teacher.ok_or_else(|| {
            TrainError::config("teacher", "a teacher (Trainer::with_teacher)", "seqkd")
        })?;
        let seq = data.seq_len();
        let (mut prompts, mut caps, mut which) = (Vec::new(), Vec::new(), Vec::new());
        for (i, b) in data.blocks.iter().enumerate() {
            if let Some((p, _)) = split_block(b)
                && !self.config.keeps_original(i)
            {
                caps.push(seq.saturating_sub(p.len()).max(1));
                prompts.push(p);
                which.push(i);
            }
        }
        let c = &self.config;
        log::info!("seqkd: the teacher answers {} training prompts", prompts.len());
        let answers = teacher_answers(
            teacher,
            &prompts,
            &caps,
            &c.sampling,
            tokens,
            c.seed,
            c.generation_batch,
            device,
            |done, all| log::debug!("seqkd: {done}/{all} answers"),
        )?;
        let mut blocks = data.blocks.clone();
        for ((i, p), a) in which.into_iter().zip(&prompts).zip(&answers) {
            blocks[i] = instruction_block(p, a, seq, tokens.pad_id);
        }
        Ok(Some(TokenDataset::new("seqkd answers", blocks)?))
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        Ok(cross_entropy_batch(cx))
    }
}
