//! Adaptive-teaching KD (ATKD): easy tokens get only NCKD, hard tokens get TCKD + NCKD.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, Extra, TokenInputs, TokenTerms};
use crate::dkd::decoupled;
use crate::error::{Result, check_range, check_temperature};
use crate::logspace::{f32_on, mask_f32};
use burn::tensor::{Int, Tensor};

loss_config! {
    /// Config of [`AdaptiveTeachingKd`].
    pub struct AdaptiveTeachingKdConfig, new: "Defaults: `α = 0.2`, both temperatures 1." {
        /// Weight `α ∈ [0, 1]` of the easy group; the hard group gets `1 − α` (default `0.2`).
        alpha: f64 = 0.2,
        /// Temperature of the student side (default `1`).
        student_temperature: f64 = 1.0,
        /// Temperature of the teacher side (default `1`).
        teacher_temperature: f64 = 1.0,
    }
}

impl AdaptiveTeachingKdConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `α ∉ [0, 1]` or a temperature is `≤ 0`.
    pub fn init(&self) -> Result<AdaptiveTeachingKd> {
        check_range(AdaptiveTeachingKd::ID, "alpha", self.alpha, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(AdaptiveTeachingKd::ID, "student_temperature", self.student_temperature)?;
        check_temperature(AdaptiveTeachingKd::ID, "teacher_temperature", self.teacher_temperature)?;
        Ok(AdaptiveTeachingKd { config: self.clone() })
    }
}

/// ATKD: rows are split by the teacher's uncertainty on the target at its batch median; easy rows
/// learn only the non-target distribution, hard rows the full decoupled KL.
///
/// ```text
/// u_i = 1 − p_{y_i}             (teacher temperature)
/// med = lower median of u over valid rows;  hard iff u_i ≥ med
/// loss = α·mean_easy(NCKD) + (1 − α)·(mean_hard(TCKD) + mean_hard(NCKD))
/// per_row[i] = n_valid·w_i·term_i,  w = α/n_easy (easy) or (1 − α)/n_hard (hard)
/// ```
///
/// TCKD and NCKD as in [`crate::DecoupledKd`], without `T²`. The per-row values are scaled so
/// that their mean over valid rows is the loss. Needs `labels`. Diagnostics: `uncertainty`,
/// `is_hard`, `median_uncertainty`, `tckd`, `nckd`, `n_easy`, `n_hard`.
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`; `labels`: `[rows]`.
///
/// # Errors
/// [`crate::KdError::MissingInput`] without labels; see [`Divergence::forward`].
///
/// Paper: Zhong et al., *Revisiting Knowledge Distillation for Autoregressive Language Models*
/// (ACL 2024), <https://arxiv.org/abs/2402.11890>; code <https://github.com/WHU-ZQH/ATKD>.
#[derive(Debug, Clone)]
pub struct AdaptiveTeachingKd {
    config: AdaptiveTeachingKdConfig,
}

impl Divergence for AdaptiveTeachingKd {
    fn name(&self) -> &'static str {
        AdaptiveTeachingKd::ID
    }
    fn couples_rows(&self) -> bool {
        // The easy/hard split is a batch statistic.
        Self::COUPLES_ROWS
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings {
            student_temperature: self.config.student_temperature,
            teacher_temperature: self.config.teacher_temperature,
            needs_labels: true,
            ..DriverSettings::at_temperature(1.0)
        }
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let labels = inputs.labels(AdaptiveTeachingKd::ID)?;
        let alpha = self.config.alpha;
        let valid = inputs.valid; // [rows]
        let rows = valid.dims()[0];
        let device = valid.device();
        let d = decoupled(inputs.student, inputs.teacher, labels);
        let uncertainty = d.teacher_log_rest.exp().detach(); // [rows]

        // Lower median of u over valid rows, found on log p_y (u ≥ med ⇔ log p_y ≤ log p_med):
        // u rounds to 1 in f32 when the teacher gives the target almost no mass, log p_y does
        // not. Ignored rows are pushed past every real value; element floor((n_valid − 1)/2) of
        // the descending log p_y is the median row.
        let is_valid = valid.clone().greater_elem(0.5);
        let key = d.teacher_log_target.detach(); // [rows]
        let pushed = key.clone().mask_fill(is_valid.clone().bool_not(), -1e30);
        let sorted = pushed.sort_descending(0);
        let n_valid_int = is_valid.clone().int().sum(); // [1]
        let k: Tensor<1, Int> = n_valid_int.sub_scalar(1).clamp_min(0).div_scalar(2);
        let k = k.clamp_max(rows.saturating_sub(1) as i64);
        let median_key =
            if rows == 0 { Tensor::<1>::zeros([1], f32_on(&device)) } else { sorted.gather(0, k) };
        let median = median_key.clone().exp().neg().add_scalar(1.0);

        let hard = key.lower_equal(median_key.expand([rows])).bool_and(is_valid.clone());
        let easy = hard.clone().bool_not().bool_and(is_valid);
        let (hard_f, easy_f) = (mask_f32(hard), mask_f32(easy));
        let n_valid = valid.sum();
        let n_hard = hard_f.clone().sum();
        let n_easy = easy_f.clone().sum();
        // Row weights, constants w.r.t. the student.
        let w_easy = easy_f
            .mul(n_valid.clone().div(n_easy.clone().clamp_min(1.0)).expand([rows]))
            .mul_scalar(alpha);
        let w_hard = hard_f
            .clone()
            .mul(n_valid.div(n_hard.clone().clamp_min(1.0)).expand([rows]))
            .mul_scalar(1.0 - alpha);
        let value = d.nckd.clone().mul(w_easy).add(d.tckd.clone().add(d.nckd.clone()).mul(w_hard));
        Ok(TokenTerms::new(value)
            .with(Extra::row("uncertainty", uncertainty))
            .with(Extra::row("is_hard", hard_f))
            .with(Extra::scalar("median_uncertainty", median))
            .with(Extra::row("tckd", d.tckd))
            .with(Extra::row("nckd", d.nckd))
            .with(Extra::scalar("n_easy", n_easy))
            .with(Extra::scalar("n_hard", n_hard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::rows;
    use crate::{KdBatch, Reduction};
    use burn::tensor::Device;

    #[test]
    fn groups_split_at_the_lower_median() {
        let d = Device::flex();
        // Teacher confidence on label 0 falls row by row: uncertainties rise.
        let teacher =
            rows(&[&[4.0, 0.0, 0.0], &[2.0, 0.0, 0.0], &[1.0, 0.0, 0.0], &[0.0, 0.0, 0.0]]);
        let s: &[f32] = &[0.0, 1.0, 0.0];
        let student = rows(&[s, s, s, s]);
        let labels = Tensor::<1, Int>::from_ints([0, 0, 0, 0], &d);
        let out = AdaptiveTeachingKdConfig::new()
            .init()
            .unwrap()
            .forward(KdBatch::new(student, teacher).with_labels(labels), Reduction::Mean)
            .unwrap();
        let hard = out.extra("is_hard").unwrap().to_data().try_to_vec::<f32>().unwrap();
        assert_eq!(hard, vec![0.0, 1.0, 1.0, 1.0]);
        assert_eq!(out.extra("n_easy").unwrap().to_data().try_to_vec::<f32>().unwrap(), vec![1.0]);
    }
}
