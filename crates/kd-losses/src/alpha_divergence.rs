//! Amari's α-divergence between teacher and student.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::logspace::{kl_rows, log_softmax, sum_rows};

loss_config! {
    /// Config of [`AlphaDivergence`].
    pub struct AlphaDivergenceConfig, new: "Defaults: `α = 0.5`, `T = 1`." {
        /// Order `α` (any finite real; default `0.5`). `1` = forward KL, `0` = reverse KL.
        alpha: f64 = 0.5 => with_alpha,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
    }
}

impl AlphaDivergenceConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `α` is not finite or `T ≤ 0`.
    pub fn init(&self) -> Result<AlphaDivergence> {
        let inf = f64::INFINITY;
        check_range(AlphaDivergence::ID, "alpha", self.alpha, -inf, inf, "a finite value")?;
        check_temperature(AlphaDivergence::ID, "temperature", self.temperature)?;
        Ok(AlphaDivergence { config: self.clone() })
    }
}

/// Amari α-divergence, a family through forward KL (`α = 1`) and reverse KL (`α = 0`).
///
/// ```text
/// per token:  D_α(p‖q) = (1 − Σ_v p_v^α q_v^(1−α)) / (α(1 − α))
///             α = 1 → KL(p‖q),  α = 0 → KL(q‖p)   (exact limits)
/// gradient:   ∂/∂s_v = −(1/α)·(w_v − q_v Σ_u w_u) / T,   w_v = p_v^α q_v^(1−α)
/// ```
///
/// `p^α q^(1−α)` is computed as `exp(α log p + (1 − α) log q)`.
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Amari, *Differential-Geometrical Methods in Statistics* (1985); in distillation
/// Wang et al., *Alpha-Beta Divergence for Knowledge Distillation* (ABKD, ICML 2025),
/// <https://arxiv.org/abs/2505.04560>; code <https://github.com/ghwang-s/abkd>.
#[derive(Debug, Clone)]
pub struct AlphaDivergence {
    config: AlphaDivergenceConfig,
}

impl Divergence for AlphaDivergence {
    fn name(&self) -> &'static str {
        AlphaDivergence::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let a = self.config.alpha;
        let log_q = log_softmax(inputs.student);
        let log_p = log_softmax(inputs.teacher);
        let value = if a == 1.0 {
            kl_rows(log_p, log_q)
        } else if a == 0.0 {
            kl_rows(log_q, log_p)
        } else {
            let mixed = sum_rows(log_p.mul_scalar(a).add(log_q.mul_scalar(1.0 - a)).exp());
            mixed.neg().add_scalar(1.0).div_scalar(a * (1.0 - a))
        };
        Ok(TokenTerms::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn approaches_forward_kl_near_alpha_one() {
        let s: &[f32] = &[0.3, -1.0, 2.0];
        let t: &[f32] = &[1.0, 0.5, -0.5];
        let near = AlphaDivergenceConfig::new().with_alpha(0.999).init().unwrap();
        let fkl = crate::ForwardKlConfig::new().init().unwrap();
        let (a, _) = grad_and_loss(&near, rows(&[s]), rows(&[t]));
        let (b, _) = grad_and_loss(&fkl, rows(&[s]), rows(&[t]));
        assert!((a - b).abs() < 5e-3 * b.max(1e-3), "{a} {b}");
    }
}
