//! Hinton et al.'s knowledge distillation: soft `T²·KL` plus hard-label cross-entropy.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{kl_rows, log_softmax};

loss_config! {
    /// Config of [`HintonKd`].
    pub struct HintonKdConfig, new: "Defaults: `α = 0.5`, `T = 2`." {
        /// Weight `α ∈ [0, 1]` of the soft term; the hard CE gets `1 − α` (default `0.5`).
        alpha: f64 = 0.5 => with_alpha,
        /// Temperature `T > 0` of the soft term (default `2`); the CE is at `T = 1`.
        temperature: f64 = 2.0 => with_temperature,
    }
}

impl HintonKdConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `α ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<HintonKd> {
        check_range(HintonKd::ID, "alpha", self.alpha, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(HintonKd::ID, "temperature", self.temperature)?;
        Ok(HintonKd { config: self.clone() })
    }
}

/// Hinton-style distillation: a `T²`-scaled forward KL mixed with the hard-label cross-entropy.
///
/// ```text
/// per token:  α·T²·KL(p_T‖q_T) + (1 − α)·(−log softmax(s)[y])
/// gradient:   ∂/∂s_v = α·T·(q_T,v − p_T,v) + (1 − α)·(q_1,v − 1[v = y])
/// ```
///
/// Diagnostics `soft_term` (`T²·KL`) and `hard_term` (CE). Needs `labels`.
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`; `labels`: `[rows]`.
///
/// # Errors
/// [`crate::KdError::MissingInput`] without labels; see also [`Divergence::forward`].
///
/// Paper: Hinton, Vinyals, Dean, *Distilling the Knowledge in a Neural Network* (2015),
/// <https://arxiv.org/abs/1503.02531>.
#[derive(Debug, Clone)]
pub struct HintonKd {
    config: HintonKdConfig,
}

impl HintonKd {
    /// The validated config.
    pub fn config(&self) -> &HintonKdConfig {
        &self.config
    }
}

impl Divergence for HintonKd {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::ForwardKl)
    }
    fn name(&self) -> &'static str {
        HintonKd::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings {
            hard_label_weight: Some(1.0 - self.config.alpha),
            ..DriverSettings::at_temperature(self.config.temperature).scaled_by_t2(true)
        }
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let log_q = log_softmax(inputs.student);
        let log_p = log_softmax(inputs.teacher);
        Ok(TokenTerms::new(kl_rows(log_p, log_q)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss_with_labels, rows};

    #[test]
    fn alpha_zero_is_plain_cross_entropy() {
        // CE of softmax(0, ln 3) at label 1 = −ln 0.75; gradient q − onehot = (0.25, −0.25).
        let loss = HintonKdConfig::new().with_alpha(0.0).init().unwrap();
        let (l, g) = grad_and_loss_with_labels(
            &loss,
            rows(&[&[0.0, 3f32.ln()]]),
            rows(&[&[5.0, -5.0]]),
            &[1],
        );
        assert!((l + 0.75f64.ln()).abs() < 1e-6, "{l}");
        assert!((g[0] - 0.25).abs() < 1e-6 && (g[1] + 0.25).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn rejects_alpha_out_of_range() {
        assert!(HintonKdConfig::new().with_alpha(1.5).init().is_err());
    }
}
