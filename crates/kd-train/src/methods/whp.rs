//! `whp`: approximate unlearning by distillation from the "Who's Harry Potter" generic-prediction
//! teacher (Eldan & Russinovich 2023). The teacher is the **reinforced** model (the baseline
//! fine-tuned further on the documents to forget), the base teacher is the **baseline**, and the
//! student (started from the baseline) is trained on those documents towards
//!
//! ```text
//! v_generic = v_base − α · ReLU(v_reinforced − v_base)                (WHP eq. 1, per position)
//! target    = one_hot(argmax v_generic)        (target = "hard", WHP's fine-tuning labels)
//!           = softmax(v_generic)               (target = "soft")
//! loss      = mean_b [ Σ_l m_bl · KL(target_bl ‖ softmax(s_bl)) / Σ_l m_bl ]   (sequence_mean)
//!           = Σ m · KL / Σ m                                                   (token_mean)
//! ```
//!
//! (`KL` of a one-hot target is the cross-entropy on the generic label.) Tokens the reinforced
//! model has learned to expect beyond the baseline, the content of the documents, are pushed
//! down; everything else follows the baseline. `m` marks the counted positions of the data.
//!
//! The recipe: `kd train` the baseline on the documents to forget → the reinforced model;
//! `kd distill --method whp` with `[teacher]` = the reinforced model, `[base_teacher]` = the
//! baseline, `[student]` = the baseline, `data.train` = the documents. The teacher and the base
//! teacher read the **same** text here: WHP's anchored-term translation (the baseline reads the
//! text with the idiosyncratic terms replaced by generic ones, its predictions aligned back to the
//! original tokens) is not part of this method; without it the generic prediction is WHP's
//! reinforcement-bootstrapping half. The construction and the loss are
//! [`kd_losses::teachers::whp`], checked against the golden file `whp_teacher.json`.
//!
//! Papers: Eldan & Russinovich, *Who's Harry Potter? Approximate Unlearning in LLMs*,
//! <https://arxiv.org/abs/2310.02238> (no official code); the student loss follows the revisit's
//! official code (Liu et al. 2024, <https://github.com/UCSB-NLP-Chang/causal_unlearn>,
//! `dataloader.py`).

use burn::tensor::{Bool, Int, Tensor, TensorData};
use kd_losses::teachers::whp::{WhpGenericConfig, WhpLossConfig, WhpReduction, WhpTarget};
use serde::{Deserialize, Serialize};

use crate::data::IGNORE_INDEX;
use crate::error::{Result, TrainError};
use crate::methods::{MicroBatchLoss, StepContext, TeacherUse};
use crate::model::{LanguageModel, logits_across};

/// Config of [`Whp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhpConfig {
    /// Strength `α ≥ 0` of the push away from the reinforced model (default `5`, as public
    /// re-implementations use; `0` distils the baseline itself).
    pub alpha: f64,
    /// `hard` (one-hot of the generic label, WHP; default) or `soft` (`softmax(v_generic)`).
    pub target: WhpTarget,
    /// `sequence_mean` (the official reduction; default) or `token_mean`.
    pub reduction: WhpReduction,
}

impl Default for WhpConfig {
    fn default() -> Self {
        Self { alpha: 5.0, target: WhpTarget::Hard, reduction: WhpReduction::SequenceMean }
    }
}

impl WhpConfig {
    /// Checks `alpha`.
    ///
    /// # Errors
    /// [`TrainError::Loss`] when `alpha` is negative or not finite.
    pub fn validate(&self) -> Result<()> {
        WhpGenericConfig::new().with_alpha(self.alpha).with_target(self.target).init()?;
        Ok(())
    }

    /// The method.
    ///
    /// # Errors
    /// As [`WhpConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<Whp> {
        self.validate()?;
        Ok(Whp { config: self.clone() })
    }
}

/// Distillation from WHP's generic-prediction teacher (see the module docs).
#[derive(Debug, Clone)]
pub struct Whp {
    config: WhpConfig,
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for Whp {
    fn name(&self) -> &'static str {
        "whp"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn uses_base_models(&self) -> bool {
        true
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let reinforced = cx.require_teacher("whp")?;
        let base = cx.base.ok_or_else(|| {
            TrainError::config(
                "base models",
                "the baseline model as the base teacher (Trainer::with_base_models) for whp",
                "none",
            )
        })?;
        let idx = cx.next_indices();
        // Blocks with a counted position (a sequence mean of an empty sequence is 0/0).
        let kept: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| cx.data.blocks[i].labels.iter().any(|&l| l != IGNORE_INDEX))
            .collect();
        if kept.is_empty() {
            let batch = cx.data.batch(&idx, cx.device);
            let zero = cx.student.logits(batch.input_ids).sum().mul_scalar(0.0);
            return Ok(MicroBatchLoss { loss: zero, tokens: 0, metrics: Vec::new() });
        }
        let batch = cx.data.batch(&kept, cx.device);
        let (student, reinforced_logits) =
            cx.student_and_teacher_logits(reinforced, batch.input_ids.clone())?; // [b, n, v]
        let [b, n, v] = student.dims();
        let plain = cx.plain_device();
        let base_logits = logits_across(&base.teacher, batch.input_ids.clone().inner());
        if base_logits.dims()[2] < v {
            return Err(TrainError::config(
                "base_teacher",
                "a baseline with the student's vocabulary",
                format!("{} tokens for the student's {v}", base_logits.dims()[2]),
            ));
        }
        let base_logits = base_logits.slice([0..b, 0..n, 0..v]);
        let generic = WhpGenericConfig::new()
            .with_alpha(self.config.alpha)
            .with_target(self.config.target)
            .init()?
            .teacher(base_logits, reinforced_logits.inner())?;
        let labels: Vec<i64> =
            kept.iter().flat_map(|&i| cx.data.blocks[i].labels.iter().copied()).collect();
        let mask = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, n]), &plain)
            .not_equal_elem(IGNORE_INDEX); // [b, n]
        let agree = agreement(&generic.generic_labels, &batch.labels.clone().inner(), &mask);
        let out = WhpLossConfig::new().with_reduction(self.config.reduction).init()?.forward(
            student,
            generic.teacher_probs.autodiff(),
            Tensor::<2, Bool>::from_data(mask.into_data(), cx.device),
        )?;
        Ok(MicroBatchLoss {
            loss: out.loss,
            tokens: out.n_valid as u64,
            metrics: vec![("generic_label_is_data", agree)],
        })
    }
}

/// Fraction of the counted positions whose generic label is the data's next token.
fn agreement(generic: &Tensor<2, Int>, labels: &Tensor<2, Int>, mask: &Tensor<2, Bool>) -> f64 {
    let same = generic.clone().equal(labels.clone()).bool_and(mask.clone());
    let counted = mask.clone().int().sum().into_scalar::<i64>();
    if counted == 0 {
        return 0.0;
    }
    same.int().sum().into_scalar::<i64>() as f64 / counted as f64
}
