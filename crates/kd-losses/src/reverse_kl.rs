//! Reverse KL, `KL(q‖p)`: the mode-seeking loss of MiniLLM-style distillation.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{kl_rows, log_softmax};

loss_config! {
    /// Config of [`ReverseKl`].
    pub struct ReverseKlConfig, new: "Defaults: `T = 1`, no `T²` scaling." {
        /// Softmax temperature `T > 0` for both sides (default `1`).
        temperature: f64 = 1.0 => with_temperature,
        /// Multiply by `T²` (default `false`).
        scale_by_t2: bool = false => with_scale_by_t2,
    }
}

impl ReverseKlConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `T ≤ 0` or not finite.
    pub fn init(&self) -> Result<ReverseKl> {
        check_temperature(ReverseKl::ID, "temperature", self.temperature)?;
        Ok(ReverseKl { config: self.clone() })
    }
}

/// Reverse KL divergence from the student to the teacher.
///
/// ```text
/// per token:  KL(q‖p) = Σ_v q_v (log q_v − log p_v),   p = softmax(t/T), q = softmax(s/T)
/// gradient:   ∂/∂s_v = q_v ((log q_v − log p_v) − KL(q‖p)) / T   (times T² when scale_by_t2)
/// ```
///
/// Mode-seeking: the student concentrates on the teacher's high-probability tokens instead of
/// covering its tail. Teacher entries of probability 0 (e.g. `-inf` logits of a padded vocabulary)
/// are floored at [`crate::logspace::LOGIT_FLOOR`], so student mass there is heavily but finitely
/// penalised.
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Gu et al., *MiniLLM: Knowledge Distillation of Large Language Models* (ICLR 2024),
/// <https://arxiv.org/abs/2306.08543>; code <https://github.com/microsoft/LMOps/tree/main/minillm>.
#[derive(Debug, Clone)]
pub struct ReverseKl {
    config: ReverseKlConfig,
}

impl ReverseKl {
    /// The validated config.
    pub fn config(&self) -> &ReverseKlConfig {
        &self.config
    }
}

impl Divergence for ReverseKl {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::ReverseKl)
    }
    fn name(&self) -> &'static str {
        ReverseKl::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
            .scaled_by_t2(self.config.scale_by_t2)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let log_q = log_softmax(inputs.student); // [rows, vocab]
        let log_p = log_softmax(inputs.teacher); // [rows, vocab]
        Ok(TokenTerms::new(kl_rows(log_q, log_p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn hand_checked_two_class_case() {
        // q = (0.25, 0.75), p = (0.5, 0.5): KL(q‖p) = 0.25 ln 0.5 + 0.75 ln 1.5.
        let (loss, grad) = grad_and_loss(
            &ReverseKlConfig::new().init().unwrap(),
            rows(&[&[0.0, 3f32.ln()]]),
            rows(&[&[0.0, 0.0]]),
        );
        let kl = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert!((loss - kl).abs() < 1e-6, "{loss}");
        let g0 = 0.25 * (0.5f64.ln() - kl);
        assert!((grad[0] - g0).abs() < 1e-6 && (grad[0] + grad[1]).abs() < 1e-6, "{grad:?}");
    }
}
