//! Generalized Jensen–Shannon divergence JSD(β) of GKD (TRL's `generalized_jsd_loss`).

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, Extra, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{kl_rows, log_mix, log_softmax};

loss_config! {
    /// Config of [`GeneralizedJsd`].
    pub struct GeneralizedJsdConfig, new: "Defaults: `β = 0.5`, `T = 1`." {
        /// Interpolation `β ∈ [0, 1]` (default `0.5`); `0` = forward KL, `1` = reverse KL.
        beta: f64 = 0.5 => with_beta,
        /// Temperature `T > 0` (default `1`); no `T²` factor.
        temperature: f64 = 1.0 => with_temperature,
    }
}

impl GeneralizedJsdConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `β ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<GeneralizedJsd> {
        self.init_named(GeneralizedJsd::ID)
    }

    pub(crate) fn init_named(&self, name: &'static str) -> Result<GeneralizedJsd> {
        check_range(name, "beta", self.beta, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(name, "temperature", self.temperature)?;
        Ok(GeneralizedJsd { config: self.clone(), name })
    }
}

/// Generalized JSD(β), the divergence of on-policy GKD.
///
/// ```text
/// per token:  β·KL(p‖m) + (1 − β)·KL(q‖m),   m = β·p + (1 − β)·q
///             β = 0 → KL(p‖q),  β = 1 → KL(q‖p)   (exact special cases)
/// gradient:   ∂/∂s_v = (1 − β)·q_v (log q_v − log m_v − KL(q‖m)) / T
/// ```
///
/// `log m` is a log-sum-exp of the two log-probabilities, so it never underflows to `-inf`.
/// Diagnostics `kl_teacher_mix = KL(p‖m)` and `kl_student_mix = KL(q‖m)` (for `0 < β < 1`).
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Agarwal et al., *On-Policy Distillation of Language Models: Learning from
/// Self-Generated Mistakes* (ICLR 2024), <https://arxiv.org/abs/2306.13649>; code: TRL
/// `GKDTrainer.generalized_jsd_loss`, <https://github.com/huggingface/trl>.
#[derive(Debug, Clone)]
pub struct GeneralizedJsd {
    config: GeneralizedJsdConfig,
    name: &'static str,
}

impl GeneralizedJsd {
    /// The validated config.
    pub fn config(&self) -> &GeneralizedJsdConfig {
        &self.config
    }
}

impl Divergence for GeneralizedJsd {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(match self.config.beta {
            0.0 => FusedKind::ForwardKl,
            1.0 => FusedKind::ReverseKl,
            beta => FusedKind::Jsd { beta },
        })
    }
    fn name(&self) -> &'static str {
        self.name
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let beta = self.config.beta;
        let log_q = log_softmax(inputs.student);
        let log_p = log_softmax(inputs.teacher);
        if beta == 0.0 {
            return Ok(TokenTerms::new(kl_rows(log_p, log_q)));
        }
        if beta == 1.0 {
            return Ok(TokenTerms::new(kl_rows(log_q, log_p)));
        }
        let log_m = log_mix(log_p.clone(), beta, log_q.clone(), 1.0 - beta); // [rows, vocab]
        let kl_pm = kl_rows(log_p, log_m.clone());
        let kl_qm = kl_rows(log_q, log_m);
        let value = kl_pm.clone().mul_scalar(beta).add(kl_qm.clone().mul_scalar(1.0 - beta));
        let [teacher_mix, student_mix] = FusedKind::JSD_EXTRAS;
        Ok(TokenTerms::new(value)
            .with(Extra::row(teacher_mix, kl_pm))
            .with(Extra::row(student_mix, kl_qm)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn symmetric_js_of_disjoint_peaks_is_ln2() {
        // Two nearly disjoint one-hot distributions: JS → ln 2.
        let loss = GeneralizedJsdConfig::new().init().unwrap();
        let (l, _) = grad_and_loss(&loss, rows(&[&[50.0, 0.0]]), rows(&[&[0.0, 50.0]]));
        assert!((l - 2f64.ln()).abs() < 1e-5, "{l}");
    }

    #[test]
    fn rejects_beta_out_of_range() {
        assert!(GeneralizedJsdConfig::new().with_beta(-0.1).init().is_err());
        assert!(GeneralizedJsdConfig::new().with_beta(1.1).init().is_err());
    }
}
