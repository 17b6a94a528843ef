//! Forward KL, `KL(p‖q)`: the classic mass-covering distillation loss.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, Extra, TokenInputs, TokenTerms};
use crate::error::{Result, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{cross_entropy_rows, kl_rows, log_softmax};

loss_config! {
    /// Config of [`ForwardKl`].
    pub struct ForwardKlConfig, new: "Defaults: `T = 1`, no `T²` scaling." {
        /// Softmax temperature `T > 0` for both sides (default `1`).
        temperature: f64 = 1.0 => with_temperature,
        /// Multiply by `T²` so gradient magnitudes do not shrink with `T` (default `false`).
        scale_by_t2: bool = false => with_scale_by_t2,
    }
}

impl ForwardKlConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `T ≤ 0` or not finite.
    pub fn init(&self) -> Result<ForwardKl> {
        check_temperature(ForwardKl::ID, "temperature", self.temperature)?;
        Ok(ForwardKl { config: self.clone() })
    }
}

/// Forward KL divergence from the teacher to the student, the loss of Hinton-style distillation.
///
/// ```text
/// per token:  KL(p‖q) = Σ_v p_v (log p_v − log q_v),   p = softmax(t/T), q = softmax(s/T)
/// gradient:   ∂/∂s_v = (q_v − p_v) / T                  (times T² when scale_by_t2)
/// ```
///
/// Mass-covering: the student is pushed to put mass wherever the teacher does. Diagnostic
/// `per_row_cross_entropy_form` is `−Σ p log q` (same gradient, no teacher entropy).
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`; output per row `[rows]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Hinton, Vinyals, Dean, *Distilling the Knowledge in a Neural Network* (2015),
/// <https://arxiv.org/abs/1503.02531>.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::{Divergence, ForwardKlConfig, KdBatch, Reduction};
///
/// let device = Device::flex();
/// let student = Tensor::<2>::from_floats([[0.0, 1.0, 2.0]], &device);
/// let teacher = student.clone();
/// let loss = ForwardKlConfig::new().init()?;
/// let out = loss.forward(KdBatch::new(student, teacher), Reduction::Mean)?;
/// assert!(out.loss.into_scalar::<f32>().abs() < 1e-6);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ForwardKl {
    config: ForwardKlConfig,
}

impl ForwardKl {
    /// The validated config.
    pub fn config(&self) -> &ForwardKlConfig {
        &self.config
    }
}

impl Divergence for ForwardKl {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::ForwardKl)
    }
    fn name(&self) -> &'static str {
        ForwardKl::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
            .scaled_by_t2(self.config.scale_by_t2)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let log_q = log_softmax(inputs.student); // [rows, vocab]
        let log_p = log_softmax(inputs.teacher); // [rows, vocab]
        let ce = cross_entropy_rows(log_p.clone(), log_q.clone()).detach();
        let scale = self.settings().soft_scale;
        Ok(TokenTerms::new(kl_rows(log_p, log_q))
            .with(Extra::row(FusedKind::CROSS_ENTROPY_FORM[0], ce.mul_scalar(scale))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn hand_checked_two_class_case() {
        // p = (0.5, 0.5), q = softmax(0, ln 3) = (0.25, 0.75)
        // KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3); grad = q − p = (−0.25, 0.25).
        let (loss, grad) = grad_and_loss(
            &ForwardKlConfig::new().init().unwrap(),
            rows(&[&[0.0, 3f32.ln()]]),
            rows(&[&[0.0, 0.0]]),
        );
        assert!((loss - 0.5 * (4.0f64 / 3.0).ln()).abs() < 1e-6, "{loss}");
        assert!((grad[0] + 0.25).abs() < 1e-6 && (grad[1] - 0.25).abs() < 1e-6, "{grad:?}");
    }

    #[test]
    fn temperature_must_be_positive() {
        assert!(ForwardKlConfig::new().with_temperature(0.0).init().is_err());
        assert!(ForwardKlConfig::new().with_temperature(-1.0).init().is_err());
        assert!(ForwardKlConfig::new().with_temperature(f64::INFINITY).init().is_err());
    }
}
