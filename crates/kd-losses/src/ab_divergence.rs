//! The αβ-divergence of ABKD, with its limiting special cases.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::logspace::{log_softmax, sum_rows};

loss_config! {
    /// Config of [`AbDivergence`].
    pub struct AbDivergenceConfig {
        /// `α` (finite; default `0.2`).
        alpha: f64 = 0.2,
        /// `β` (finite; default `0.7`).
        beta: f64 = 0.7,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
    }
}

impl AbDivergenceConfig {
    /// A config with the given `α`, `β` and `T = 1`.
    pub fn new(alpha: f64, beta: f64) -> Self {
        Self { alpha, beta, temperature: 1.0 }
    }

    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `α` or `β` is not finite or `T ≤ 0`.
    pub fn init(&self) -> Result<AbDivergence> {
        let inf = f64::INFINITY;
        check_range(AbDivergence::ID, "alpha", self.alpha, -inf, inf, "a finite value")?;
        check_range(AbDivergence::ID, "beta", self.beta, -inf, inf, "a finite value")?;
        check_temperature(AbDivergence::ID, "temperature", self.temperature)?;
        Ok(AbDivergence { config: self.clone() })
    }
}

/// Alpha-beta divergence: `α` trades off hardness-concentration, `β` confidence-concentration.
///
/// ```text
/// general:  −1/(αβ) Σ_v [p^α q^β − α/(α+β) p^(α+β) − β/(α+β) q^(α+β)]
/// α=β=0:    ½ Σ (log q − log p)²
/// α=0:      1/β Σ [q^β log(q^β/p^β) − q^β + p^β]
/// β=0:      1/α Σ [p^α log(p^α/q^α) − p^α + q^α]
/// α+β=0:    1/α Σ [log(q^α/p^α) + p^α/q^α − 1]
/// gradient: by autodiff (every power is exp of a multiple of a log-probability)
/// ```
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Wang et al., *ABKD: Pursuing a Proper Allocation of the Probability Mass in Knowledge
/// Distillation via α-β-Divergence* (ICML 2025), <https://arxiv.org/abs/2505.04560>;
/// code <https://github.com/ghwang-s/abkd>.
#[derive(Debug, Clone)]
pub struct AbDivergence {
    config: AbDivergenceConfig,
}

impl Divergence for AbDivergence {
    fn name(&self) -> &'static str {
        AbDivergence::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let (a, b) = (self.config.alpha, self.config.beta);
        let lq = log_softmax(inputs.student); // [rows, vocab]
        let lp = log_softmax(inputs.teacher); // [rows, vocab]
        let value = if a == 0.0 && b == 0.0 {
            sum_rows(lq.sub(lp).powi_scalar(2)).mul_scalar(0.5)
        } else if a == 0.0 {
            let qb = lq.clone().mul_scalar(b).exp();
            let pb = lp.clone().mul_scalar(b).exp();
            let t = qb.clone().mul(lq.sub(lp).mul_scalar(b)).sub(qb).add(pb);
            sum_rows(t).div_scalar(b)
        } else if b == 0.0 {
            let pa = lp.clone().mul_scalar(a).exp();
            let qa = lq.clone().mul_scalar(a).exp();
            let t = pa.clone().mul(lp.sub(lq).mul_scalar(a)).sub(pa).add(qa);
            sum_rows(t).div_scalar(a)
        } else if a + b == 0.0 {
            let d = lq.sub(lp); // log q − log p
            let t = d.clone().mul_scalar(a).add(d.mul_scalar(-a).exp()).sub_scalar(1.0);
            sum_rows(t).div_scalar(a)
        } else {
            let s = a + b;
            let cross = lp.clone().mul_scalar(a).add(lq.clone().mul_scalar(b)).exp();
            let pp = lp.mul_scalar(s).exp().mul_scalar(a / s);
            let qq = lq.mul_scalar(s).exp().mul_scalar(b / s);
            sum_rows(cross.sub(pp).sub(qq)).mul_scalar(-1.0 / (a * b))
        };
        Ok(TokenTerms::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn every_branch_is_zero_at_equal_inputs() {
        let x: &[f32] = &[0.3, -1.0, 2.0];
        for (a, b) in [(0.0, 0.0), (0.0, 0.6), (0.8, 0.0), (0.6, -0.6), (0.2, 0.7)] {
            let loss = AbDivergenceConfig::new(a, b).init().unwrap();
            let (l, g) = grad_and_loss(&loss, rows(&[x]), rows(&[x]));
            assert!(l.abs() < 1e-6 && g.iter().all(|v| v.abs() < 1e-6), "{a} {b}: {l}");
        }
    }
}
