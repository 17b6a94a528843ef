//! Skew forward KL `KL(p‖αp + (1−α)q)` of DistiLLM.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, Extra, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{cross_entropy_rows, kl_rows, log_mix, log_softmax};

loss_config! {
    /// Config of [`SkewForwardKl`].
    pub struct SkewForwardKlConfig, new: "Defaults: `α = 0.1`, `T = 1`." {
        /// Skew `α ∈ [0, 1)`: teacher weight inside the mixture (default `0.1`).
        alpha: f64 = 0.1 => with_alpha,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
    }
}

impl SkewForwardKlConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `α ∉ [0, 1)` or `T ≤ 0`.
    pub fn init(&self) -> Result<SkewForwardKl> {
        check_range(
            SkewForwardKl::ID,
            "alpha",
            self.alpha,
            0.0,
            // α = 1 makes m = p: the loss is identically 0 and independent of the student.
            1.0 - f64::EPSILON,
            "a value in [0, 1)",
        )?;
        check_temperature(SkewForwardKl::ID, "temperature", self.temperature)?;
        Ok(SkewForwardKl { config: self.clone() })
    }
}

/// Skew forward KL: forward KL against a teacher–student mixture, which keeps the gradient
/// bounded when the student puts almost no mass where the teacher does.
///
/// ```text
/// per token:  KL(p‖m) = Σ_v p_v (log p_v − log m_v),   m = α·p + (1 − α)·q
/// gradient:   ∂/∂s_v = (1 − α)·(q_v Σ_u r_u − r_v) / T,   r_u = p_u q_u / m_u
/// ```
///
/// The gradient flows through `m`. Diagnostic `per_row_cross_entropy_form` = `−Σ p log m`.
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Ko et al., *DistiLLM: Towards Streamlined Distillation for Large Language Models*
/// (ICML 2024), <https://arxiv.org/abs/2402.03898>; code <https://github.com/jongwooko/distillm>.
#[derive(Debug, Clone)]
pub struct SkewForwardKl {
    config: SkewForwardKlConfig,
}

impl Divergence for SkewForwardKl {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::SkewForwardKl { alpha: self.config.alpha })
    }
    fn name(&self) -> &'static str {
        SkewForwardKl::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let a = self.config.alpha;
        let log_q = log_softmax(inputs.student);
        let log_p = log_softmax(inputs.teacher);
        let log_m = log_mix(log_p.clone(), a, log_q, 1.0 - a); // [rows, vocab]
        let ce = cross_entropy_rows(log_p.clone(), log_m.clone()).detach();
        Ok(TokenTerms::new(kl_rows(log_p, log_m))
            .with(Extra::row(FusedKind::CROSS_ENTROPY_FORM[0], ce)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn alpha_one_is_rejected_and_alpha_zero_is_forward_kl() {
        let s: &[f32] = &[0.3, -1.0, 2.0];
        let t: &[f32] = &[1.0, 0.5, -0.5];
        assert!(SkewForwardKlConfig::new().with_alpha(1.0).init().is_err());
        let zero = SkewForwardKlConfig::new().with_alpha(0.0).init().unwrap();
        let fkl = crate::ForwardKlConfig::new().init().unwrap();
        let (l0, _) = grad_and_loss(&zero, rows(&[s]), rows(&[t]));
        let (lf, _) = grad_and_loss(&fkl, rows(&[s]), rows(&[t]));
        assert!((l0 - lf).abs() < 1e-6);
    }
}
