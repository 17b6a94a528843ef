//! Universal Logit Distillation (ULD): a Wasserstein-1 style loss across different vocabularies.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, TokenInputs, TokenTerms};
use crate::error::{Result, check_temperature};
use crate::logspace::{f32_on, log_softmax, sum_rows};
use burn::tensor::Tensor;

loss_config! {
    /// Config of [`UniversalLogitDistillation`].
    pub struct UniversalLogitDistillationConfig, new: "Defaults: both temperatures 1." {
        /// Temperature of the student softmax (default `1`).
        student_temperature: f64 = 1.0,
        /// Temperature of the teacher softmax (default `1`).
        teacher_temperature: f64 = 1.0,
    }
}

impl UniversalLogitDistillationConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when a temperature is `≤ 0`.
    pub fn init(&self) -> Result<UniversalLogitDistillation> {
        check_temperature(
            UniversalLogitDistillation::ID,
            "student_temperature",
            self.student_temperature,
        )?;
        check_temperature(
            UniversalLogitDistillation::ID,
            "teacher_temperature",
            self.teacher_temperature,
        )?;
        Ok(UniversalLogitDistillation { config: self.clone() })
    }
}

/// ULD: compares the *sorted* probability vectors, so teacher and student need not share a
/// tokenizer; the shorter vector is padded with zeros.
///
/// ```text
/// per token:  Σ_k |sort↓(q)_k − sort↓(p)_k|,   vectors zero-padded to max(V_s, V_t)
/// gradient:   ∂/∂s_v = q_v (σ_v − Σ_u q_u σ_u) / T_s,  σ_v = sign of v's sorted difference
/// ```
///
/// # Shapes
/// `student_logits`: `[rows, vocab_s]`, `teacher_logits`: `[rows, vocab_t]` (any sizes).
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Boizard et al., *Towards Cross-Tokenizer Distillation: the Universal Logit Distillation
/// Loss for LLMs* (2024), <https://arxiv.org/abs/2402.12030>;
/// code <https://github.com/Nicolas-BZRD/llm-recipes>.
#[derive(Debug, Clone)]
pub struct UniversalLogitDistillation {
    config: UniversalLogitDistillationConfig,
}

/// Sorts probabilities descending (the order taken from detached values, the values gathered so
/// the gradient flows) and zero-pads to `width`.
fn sorted_padded(probs: Tensor<2>, width: usize) -> Tensor<2> {
    let [rows, vocab] = probs.dims();
    let (_, order) = probs.clone().detach().sort_descending_with_indices(1);
    let sorted = probs.gather(1, order);
    if vocab == width {
        sorted
    } else {
        let zeros = Tensor::<2>::zeros([rows, width - vocab], f32_on(&sorted.device()));
        Tensor::cat(vec![sorted, zeros], 1)
    }
}

impl Divergence for UniversalLogitDistillation {
    fn name(&self) -> &'static str {
        UniversalLogitDistillation::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings {
            student_temperature: self.config.student_temperature,
            teacher_temperature: self.config.teacher_temperature,
            cross_vocab: true,
            ..DriverSettings::at_temperature(1.0)
        }
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let q = log_softmax(inputs.student).exp(); // [rows, vocab_s]
        let p = log_softmax(inputs.teacher).exp(); // [rows, vocab_t]
        let width = q.dims()[1].max(p.dims()[1]);
        let diff = sorted_padded(q, width).sub(sorted_padded(p, width));
        Ok(TokenTerms::new(sum_rows(diff.abs())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss, rows};

    #[test]
    fn permuted_vocabularies_cost_nothing_and_padding_counts() {
        let loss = UniversalLogitDistillationConfig::new().init().unwrap();
        let (l, _) = grad_and_loss(&loss, rows(&[&[0.0, 1.0, 2.0]]), rows(&[&[2.0, 0.0, 1.0]]));
        assert!(l.abs() < 1e-6, "{l}");
        // Student one-hot-ish on 2 tokens vs teacher uniform on 4: Σ|(1,0,0,0) − ¼| = 1.5.
        let (l, _) = grad_and_loss(&loss, rows(&[&[60.0, 0.0]]), rows(&[&[0.0, 0.0, 0.0, 0.0]]));
        assert!((l - 1.5).abs() < 1e-5, "{l}");
    }
}
