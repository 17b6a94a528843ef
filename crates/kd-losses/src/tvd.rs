//! Total variation distance `½ Σ |p − q|`.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{log_softmax, sum_rows};

loss_config! {
    /// Config of [`Tvd`].
    pub struct TvdConfig, new: "Defaults: `T = 1`." {
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0 => with_temperature,
    }
}

impl TvdConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `T ≤ 0`.
    pub fn init(&self) -> Result<Tvd> {
        check_temperature(Tvd::ID, "temperature", self.temperature)?;
        Ok(Tvd { config: self.clone() })
    }
}

/// Total variation distance between teacher and student, bounded in `[0, 1]`.
///
/// ```text
/// per token:  TVD = ½ Σ_v |p_v − q_v|
/// gradient:   ∂/∂s_v = ½·q_v (σ_v − Σ_u q_u σ_u) / T,   σ_v = sign(q_v − p_v)
/// ```
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Wen et al., *f-Divergence Minimization for Sequence-Level Knowledge Distillation*
/// (ACL 2023), <https://arxiv.org/abs/2307.15190>; code <https://github.com/MANGA-UOFA/fdistill>.
#[derive(Debug, Clone)]
pub struct Tvd {
    config: TvdConfig,
}

/// `½ Σ |p − q|` per row from log-probabilities.
pub(crate) fn tvd_rows(
    log_p: burn::tensor::Tensor<2>,
    log_q: burn::tensor::Tensor<2>,
) -> burn::tensor::Tensor<1> {
    sum_rows(log_p.exp().sub(log_q.exp()).abs()).mul_scalar(0.5)
}

impl Divergence for Tvd {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::Tvd)
    }
    fn name(&self) -> &'static str {
        Tvd::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        Ok(TokenTerms::new(tvd_rows(log_softmax(inputs.teacher), log_softmax(inputs.student))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn hand_checked() {
        // p = (0.5, 0.5), q = (0.25, 0.75): TVD = 0.25.
        let (l, g) = grad_and_loss(
            &TvdConfig::new().init().unwrap(),
            rows(&[&[0.0, 3f32.ln()]]),
            rows(&[&[0.0, 0.0]]),
        );
        assert!((l - 0.25).abs() < 1e-6, "{l}");
        // σ = (−1, +1); Σ q σ = 0.5; ∂/∂s_0 = ½·0.25·(−1 − 0.5) = −0.1875.
        assert!((g[0] + 0.1875).abs() < 1e-6 && (g[1] - 0.1875).abs() < 1e-6, "{g:?}");
    }
}
