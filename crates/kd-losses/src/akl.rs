//! Adaptive KL (AKL): forward and reverse KL weighted by where the student's errors lie.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, Extra, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{f32_on, kl_rows, log_softmax, mask_f32, sum_rows};
use burn::tensor::{IndexingUpdateOp, Tensor};

loss_config! {
    /// Config of [`AdaptiveKl`].
    pub struct AdaptiveKlConfig, new: "Defaults: `μ = 0.5`, `T = 1`." {
        /// Cumulative teacher mass `μ ∈ [0, 1]` that defines the head (default `0.5`).
        mu: f64 = 0.5 => with_mu,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
    }
}

impl AdaptiveKlConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `μ ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<AdaptiveKl> {
        check_range(AdaptiveKl::ID, "mu", self.mu, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(AdaptiveKl::ID, "temperature", self.temperature)?;
        Ok(AdaptiveKl { config: self.clone() })
    }
}

/// Adaptive Kullback–Leibler divergence: forward KL where the student misses the teacher's head,
/// reverse KL where it misses the tail, mixed by how large each error is.
///
/// ```text
/// head/tail:  sort p descending, c_i = running sum; token in the tail iff c_i > μ
///             (the top-1 token is always in the head)
/// weights:    g_head = Σ_head |p − sg(q)|, g_tail = Σ_tail |p − sg(q)|,
///             w_head = g_head / (g_head + g_tail), w_tail = 1 − w_head   (no gradient)
/// per token:  w_head·KL(p‖q) + w_tail·KL(q‖p)
/// gradient:   w_head·(q − p)/T + w_tail·∂KL(q‖p)/∂s   (weights are constants)
/// ```
///
/// When `p = q` exactly, both gaps are 0 and the weights are `(0, 1)`; the loss is 0 either way.
/// Diagnostics: `head_weight`, `tail_weight`, `fkl`, `rkl`, `head_size`.
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Wu et al., *Rethinking Kullback-Leibler Divergence in Knowledge Distillation for Large
/// Language Models* (COLING 2025), <https://arxiv.org/abs/2404.02657>;
/// code <https://github.com/wutaiqiang/LLM_KD_AKL>.
#[derive(Debug, Clone)]
pub struct AdaptiveKl {
    config: AdaptiveKlConfig,
}

impl Divergence for AdaptiveKl {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::Akl { mu: self.config.mu })
    }
    fn name(&self) -> &'static str {
        AdaptiveKl::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let log_q = log_softmax(inputs.student); // [rows, vocab]
        let log_p = log_softmax(inputs.teacher); // [rows, vocab]
        let p = log_p.clone().exp();
        let [rows, vocab] = p.dims();

        // Tail membership in sorted order, then scattered back to vocabulary order.
        let (sorted, order) = p.clone().sort_descending_with_indices(1); // [rows, vocab]
        let cumulative = sorted.cumsum(1);
        let mut tail_sorted = mask_f32(cumulative.greater_elem(self.config.mu));
        if vocab > 0 {
            tail_sorted = tail_sorted.slice_fill([0..rows, 0..1], 0.0);
        }
        let tail = Tensor::<2>::zeros([rows, vocab], f32_on(&p.device())).scatter(
            1,
            order,
            tail_sorted,
            IndexingUpdateOp::Add,
        );
        let head = tail.clone().neg().add_scalar(1.0);

        // Error gaps with the student as a constant.
        let gap = p.sub(log_q.clone().detach().exp()).abs();
        let g_head = sum_rows(gap.clone().mul(head.clone()));
        let g_tail = sum_rows(gap.mul(tail));
        let w_head = g_head.clone().div(g_head.add(g_tail).clamp_min(1e-30));
        let w_tail = w_head.clone().neg().add_scalar(1.0);

        let fkl = kl_rows(log_p.clone(), log_q.clone());
        let rkl = kl_rows(log_q, log_p);
        let value = fkl.clone().mul(w_head.clone()).add(rkl.clone().mul(w_tail.clone()));
        let [head_weight, tail_weight, fkl_name, rkl_name, head_size] = FusedKind::AKL_EXTRAS;
        Ok(TokenTerms::new(value)
            .with(Extra::row(head_weight, w_head))
            .with(Extra::row(tail_weight, w_tail))
            .with(Extra::row(fkl_name, fkl))
            .with(Extra::row(rkl_name, rkl))
            .with(Extra::row(head_size, sum_rows(head))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn lies_between_forward_and_reverse_kl() {
        let s: &[f32] = &[0.3, -1.0, 2.0, 0.0];
        let t: &[f32] = &[1.0, 0.5, -0.5, 3.0];
        let (akl, _) =
            grad_and_loss(&AdaptiveKlConfig::new().init().unwrap(), rows(&[s]), rows(&[t]));
        let (f, _) =
            grad_and_loss(&crate::ForwardKlConfig::new().init().unwrap(), rows(&[s]), rows(&[t]));
        let (r, _) =
            grad_and_loss(&crate::ReverseKlConfig::new().init().unwrap(), rows(&[s]), rows(&[t]));
        assert!(akl >= f.min(r) - 1e-6 && akl <= f.max(r) + 1e-6, "{akl} {f} {r}");
    }
}
