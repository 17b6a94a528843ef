//! Delta-KD: distil the *change* the teacher's fine-tuning made, applied to the student's base.

use crate::config::loss_config;
use crate::divergence::{
    Divergence, DriverSettings, Extra, KdBatch, KdOutput, Reduction, TokenInputs, TokenTerms,
};
use crate::error::{KdError, Result, check_range, check_temperature};
use crate::logspace::{kl_rows, log_softmax, to_f32};
use burn::tensor::Tensor;

loss_config! {
    /// Config of [`DeltaKd`].
    pub struct DeltaKdConfig, new: "Defaults: `α = 1`, `T = 1`, `λ = 0`." {
        /// Scale `α ≥ 0` of the teacher's logit shift (default `1`).
        alpha: f64 = 1.0,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
        /// Weight `λ ∈ [0, 1]` of the hard-label SFT cross-entropy (default `0`).
        lambda_sft: f64 = 0.0,
    }
}

impl DeltaKdConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `α < 0`, `λ ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<DeltaKd> {
        check_range(DeltaKd::ID, "alpha", self.alpha, 0.0, f64::INFINITY, "a value ≥ 0")?;
        check_range(DeltaKd::ID, "lambda_sft", self.lambda_sft, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(DeltaKd::ID, "temperature", self.temperature)?;
        Ok(DeltaKd { config: self.clone() })
    }
}

/// Delta-KD: the target is the student's *base* model shifted by the teacher's fine-tuning delta.
///
/// ```text
/// target:     r = softmax((z_sb + α·(z_t − z_tb)) / T)
/// per token:  (1 − λ)·KL(r‖q) + λ·CE(softmax(s), y),   q = softmax(s/T)
/// gradient:   ∂/∂s_v = (1 − λ)(q_v − r_v)/T + λ(softmax(s)_v − 1[v = y])
/// ```
///
/// `z_t`/`z_tb` are the fine-tuned and base teacher logits, `z_sb` the frozen base student's.
/// Diagnostics `kd_term` (the KL) and, when `λ > 0`, `sft_term` (the CE). All four logits may
/// be of any float dtype; the target is formed and the loss computed in `f32`.
///
/// # Shapes
/// All logits `[rows, vocab]`; `labels` `[rows]` when `λ > 0`.
///
/// # Errors
/// [`KdError::ShapeMismatch`] when the base logits disagree with the teacher's; otherwise as
/// [`Divergence::forward`].
///
/// Paper: *Delta Knowledge Distillation for Large Language Models* (2025),
/// <https://arxiv.org/abs/2509.14526>.
#[derive(Debug, Clone)]
pub struct DeltaKd {
    config: DeltaKdConfig,
}

/// The KL part of Delta-KD with the shifted target already in `teacher_logits`.
#[derive(Debug, Clone)]
struct DeltaKdTerm {
    temperature: f64,
    lambda_sft: f64,
}

impl Divergence for DeltaKdTerm {
    fn name(&self) -> &'static str {
        DeltaKd::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings {
            hard_label_weight: (self.lambda_sft > 0.0).then_some(self.lambda_sft),
            ..DriverSettings::at_temperature(self.temperature)
        }
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let kl = kl_rows(log_softmax(inputs.teacher), log_softmax(inputs.student));
        Ok(TokenTerms::new(kl.clone()).with(Extra::row("kd_term", kl)))
    }
}

impl DeltaKd {
    /// Computes the loss; `batch.teacher_logits` are the fine-tuned teacher's.
    ///
    /// # Errors
    /// See the type docs.
    pub fn forward(
        &self,
        batch: KdBatch,
        teacher_base_logits: Tensor<2>,
        student_base_logits: Tensor<2>,
        reduction: Reduction,
    ) -> Result<KdOutput> {
        let dims = batch.teacher_logits.dims();
        for (what, t) in [
            ("teacher_base_logits vs teacher_logits", &teacher_base_logits),
            ("student_base_logits vs teacher_logits", &student_base_logits),
        ] {
            if t.dims() != dims {
                return Err(KdError::ShapeMismatch {
                    what: what.into(),
                    expected: dims.to_vec(),
                    got: t.dims().to_vec(),
                });
            }
        }
        // The shift is formed in f32 (inputs of any float dtype, mixed too); the student logits
        // are cast by the driver, the one cast point of every dense loss.
        let shifted = to_f32(student_base_logits).add(
            to_f32(batch.teacher_logits.clone())
                .sub(to_f32(teacher_base_logits))
                .mul_scalar(self.config.alpha),
        );
        let term = DeltaKdTerm {
            temperature: self.config.temperature,
            lambda_sft: self.config.lambda_sft,
        };
        let mut out =
            term.forward(KdBatch { teacher_logits: shifted.detach(), ..batch }, reduction)?;
        let [soft_name, hard_name] = crate::types::HARD_LABEL_EXTRAS;
        out.extras.retain(|e| e.name != soft_name);
        for e in &mut out.extras {
            if e.name == hard_name {
                e.name = "sft_term";
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::rows;

    #[test]
    fn zero_delta_distils_the_student_base() {
        // Teacher unchanged by fine-tuning: the target is the student's own base.
        let s = rows(&[&[0.3, -1.0, 2.0]]);
        let base = rows(&[&[1.0, 0.5, -0.5]]);
        let t = rows(&[&[4.0, 4.0, 4.0]]);
        let out = DeltaKdConfig::new()
            .init()
            .unwrap()
            .forward(KdBatch::new(s.clone(), t.clone()), t, base.clone(), Reduction::Mean)
            .unwrap();
        let fkl = crate::ForwardKlConfig::new().init().unwrap();
        let want = fkl.forward(KdBatch::new(s, base), Reduction::Mean).unwrap();
        let (a, b) = (out.loss.into_scalar::<f32>(), want.loss.into_scalar::<f32>());
        assert!((a - b).abs() < 1e-6, "{a} {b}");
    }
}
