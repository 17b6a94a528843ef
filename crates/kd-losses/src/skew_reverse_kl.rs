//! Skew reverse KL `KL(q‖(1−α)p + αq)` of DistiLLM.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{kl_rows, log_mix, log_softmax};

loss_config! {
    /// Config of [`SkewReverseKl`].
    pub struct SkewReverseKlConfig, new: "Defaults: `α = 0.1`, `T = 1`." {
        /// Skew `α ∈ [0, 1]`: student weight inside the mixture (default `0.1`).
        alpha: f64 = 0.1 => with_alpha,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
    }
}

impl SkewReverseKlConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `α ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<SkewReverseKl> {
        check_range(SkewReverseKl::ID, "alpha", self.alpha, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(SkewReverseKl::ID, "temperature", self.temperature)?;
        Ok(SkewReverseKl { config: self.clone() })
    }
}

/// Skew reverse KL: reverse KL against a teacher–student mixture (mode-seeking, but bounded
/// where the teacher has no mass).
///
/// ```text
/// per token:  KL(q‖m) = Σ_v q_v (log q_v − log m_v),   m = (1 − α)·p + α·q
/// gradient:   ∂/∂s_v = q_v (g_v − Σ_u q_u g_u) / T,   g_u = log q_u − log m_u − α q_u / m_u
/// ```
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Ko et al., *DistiLLM* (ICML 2024), <https://arxiv.org/abs/2402.03898>;
/// code <https://github.com/jongwooko/distillm>.
#[derive(Debug, Clone)]
pub struct SkewReverseKl {
    config: SkewReverseKlConfig,
}

impl Divergence for SkewReverseKl {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::SkewReverseKl { alpha: self.config.alpha })
    }
    fn name(&self) -> &'static str {
        SkewReverseKl::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let a = self.config.alpha;
        let log_q = log_softmax(inputs.student);
        let log_p = log_softmax(inputs.teacher);
        let log_m = log_mix(log_p, 1.0 - a, log_q.clone(), a); // [rows, vocab]
        Ok(TokenTerms::new(kl_rows(log_q, log_m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn alpha_zero_is_reverse_kl() {
        let s: &[f32] = &[0.3, -1.0, 2.0];
        let t: &[f32] = &[1.0, 0.5, -0.5];
        let skew = SkewReverseKlConfig::new().with_alpha(0.0).init().unwrap();
        let rkl = crate::ReverseKlConfig::new().init().unwrap();
        let (a, _) = grad_and_loss(&skew, rows(&[s]), rows(&[t]));
        let (b, _) = grad_and_loss(&rkl, rows(&[s]), rows(&[t]));
        assert!((a - b).abs() < 1e-6);
    }
}
