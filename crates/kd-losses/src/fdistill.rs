//! f-DISTILL's step-wise divergences: KL, reverse KL, JS(β) and TVD in one config.

use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{kl_rows, log_mix, log_softmax};
use crate::tvd::tvd_rows;

/// Which f-divergence [`FDistill`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FDivergenceKind {
    /// `T²·KL(p‖q)`.
    Kl,
    /// `T²·KL(q‖p)`.
    Rkl,
    /// `T²·[β·KL(q‖m) + (1 − β)·KL(p‖m)]`, `m = β·q + (1 − β)·p`.
    Js,
    /// `½ Σ |p − q|` at `T = 1` (the temperature is ignored, as in the original code).
    Tvd,
}

loss_config! {
    /// Config of [`FDistill`].
    pub struct FDistillConfig {
        /// The divergence (default `kl`).
        divergence: FDivergenceKind = FDivergenceKind::Kl,
        /// Student weight `β ∈ [0, 1]` of the JS mixture (default `0.5`).
        beta: f64 = 0.5,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
    }
}

impl FDistillConfig {
    /// A config for `divergence` with the other defaults.
    pub fn new(divergence: FDivergenceKind) -> Self {
        Self { divergence, ..Self::default() }
    }

    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `β ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<FDistill> {
        check_range(FDistill::ID, "beta", self.beta, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(FDistill::ID, "temperature", self.temperature)?;
        Ok(FDistill { config: self.clone() })
    }
}

/// The token-level f-divergences of f-DISTILL, with its scaling conventions.
///
/// ```text
/// kl:   T²·KL(p‖q)                 gradient T·(q − p)
/// rkl:  T²·KL(q‖p)                 gradient T·q ⊙ (log q − log p − KL(q‖p))
/// js:   T²·[β KL(q‖m) + (1−β) KL(p‖m)],  m = β q + (1 − β) p
/// tvd:  ½ Σ |p − q|  at T = 1      gradient ½ q ⊙ (σ − Σ q σ),  σ = sign(q − p)
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
pub struct FDistill {
    config: FDistillConfig,
}

impl Divergence for FDistill {
    fn fused_kind(&self) -> Option<FusedKind> {
        match self.config.divergence {
            FDivergenceKind::Kl => Some(FusedKind::ForwardKl),
            FDivergenceKind::Rkl => Some(FusedKind::ReverseKl),
            // m = βq + (1 − β)p: generalized JSD with teacher weight 1 − β (edges differ).
            FDivergenceKind::Js if self.config.beta > 0.0 && self.config.beta < 1.0 => {
                Some(FusedKind::Jsd { beta: 1.0 - self.config.beta })
            }
            FDivergenceKind::Tvd => Some(FusedKind::Tvd),
            _ => None,
        }
    }
    fn name(&self) -> &'static str {
        FDistill::ID
    }
    fn settings(&self) -> DriverSettings {
        match self.config.divergence {
            FDivergenceKind::Tvd => DriverSettings::at_temperature(1.0),
            _ => DriverSettings::at_temperature(self.config.temperature).scaled_by_t2(true),
        }
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let log_q = log_softmax(inputs.student);
        let log_p = log_softmax(inputs.teacher);
        let beta = self.config.beta;
        let value = match self.config.divergence {
            FDivergenceKind::Kl => kl_rows(log_p, log_q),
            FDivergenceKind::Rkl => kl_rows(log_q, log_p),
            FDivergenceKind::Tvd => tvd_rows(log_p, log_q),
            FDivergenceKind::Js => {
                let log_m = log_mix(log_q.clone(), beta, log_p.clone(), 1.0 - beta);
                let kl_qm = kl_rows(log_q, log_m.clone()).mul_scalar(beta);
                kl_qm.add(kl_rows(log_p, log_m).mul_scalar(1.0 - beta))
            }
        };
        Ok(TokenTerms::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn kl_is_t2_scaled_forward_kl() {
        let s: &[f32] = &[0.3, -1.0, 2.0];
        let t: &[f32] = &[1.0, 0.5, -0.5];
        let f = FDistillConfig { temperature: 2.0, ..FDistillConfig::new(FDivergenceKind::Kl) };
        let fkl = crate::ForwardKlConfig::new().with_temperature(2.0).with_scale_by_t2(true);
        let (a, ga) = grad_and_loss(&f.init().unwrap(), rows(&[s]), rows(&[t]));
        let (b, gb) = grad_and_loss(&fkl.init().unwrap(), rows(&[s]), rows(&[t]));
        assert!((a - b).abs() < 1e-6);
        assert!(ga.iter().zip(&gb).all(|(x, y)| (x - y).abs() < 1e-6));
    }
}
