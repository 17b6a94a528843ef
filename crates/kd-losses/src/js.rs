//! Jensen–Shannon divergence: generalized JSD at `β = 0.5`.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::Result;
use crate::fused::FusedKind;
use crate::gkd_jsd::{GeneralizedJsd, GeneralizedJsdConfig};

loss_config! {
    /// Config of [`JensenShannon`]: the [`GeneralizedJsdConfig`] keys, `β` defaulting to `0.5`.
    pub struct JensenShannonConfig, new: "Defaults: `β = 0.5`, `T = 1`." {
        /// Mixture weight `β ∈ [0, 1]` (default and textbook value `0.5`).
        beta: f64 = 0.5,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0 => with_temperature,
    }
}

impl JensenShannonConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `β ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<JensenShannon> {
        let inner = GeneralizedJsdConfig { beta: self.beta, temperature: self.temperature };
        Ok(JensenShannon { inner: inner.init_named(JensenShannon::ID)? })
    }
}

/// The Jensen–Shannon divergence, symmetric and bounded by `ln 2`.
///
/// ```text
/// per token:  ½·KL(p‖m) + ½·KL(q‖m),   m = ½(p + q)
/// gradient:   ∂/∂s_v = ½·q_v (log q_v − log m_v − KL(q‖m)) / T
/// ```
///
/// Same diagnostics as [`GeneralizedJsd`]. Shapes and errors as there.
///
/// Paper: Lin, *Divergence measures based on the Shannon entropy* (1991); in distillation e.g.
/// Wen et al., *f-Divergence Minimization for Sequence-Level Knowledge Distillation* (ACL 2023),
/// <https://arxiv.org/abs/2307.15190>.
#[derive(Debug, Clone)]
pub struct JensenShannon {
    inner: GeneralizedJsd,
}

impl Divergence for JensenShannon {
    fn fused_kind(&self) -> Option<FusedKind> {
        self.inner.fused_kind()
    }
    fn name(&self) -> &'static str {
        JensenShannon::ID
    }
    fn settings(&self) -> DriverSettings {
        self.inner.settings()
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        self.inner.per_token(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn js_is_symmetric() {
        let loss = JensenShannonConfig::new().init().unwrap();
        let a: &[f32] = &[0.3, -1.0, 2.0];
        let b: &[f32] = &[1.0, 0.5, -0.5];
        let (ab, _) = grad_and_loss(&loss, rows(&[a]), rows(&[b]));
        let (ba, _) = grad_and_loss(&loss, rows(&[b]), rows(&[a]));
        assert!((ab - ba).abs() < 1e-6 && ab > 0.0, "{ab} {ba}");
    }
}
