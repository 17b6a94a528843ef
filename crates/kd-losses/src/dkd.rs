//! Decoupled knowledge distillation (DKD): target-class and non-target-class KL, weighted apart.

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, Extra, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::logspace::{gather_rows, kl_rows, log_softmax, logsumexp, one_hot_rows};
use burn::tensor::{Int, Tensor};

/// Offset subtracted from the target logit to renormalise over the non-target classes, as in the
/// original code (`logits/T − 1000·onehot(y)`).
const TARGET_OFFSET: f64 = 1000.0;

/// Target-class and non-target-class KL terms of one side pair, shared with ATKD.
pub(crate) struct Decoupled {
    /// `KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])`. Shape: `[rows]`.
    pub tckd: Tensor<1>,
    /// KL of the distributions renormalised over the non-target classes. Shape: `[rows]`.
    pub nckd: Tensor<1>,
    /// Teacher's `log(1 − p_y)` (its non-target mass). Shape: `[rows]`.
    pub teacher_log_rest: Tensor<1>,
    /// Teacher's `log p_y`. Shape: `[rows]`.
    pub teacher_log_target: Tensor<1>,
}

/// Computes TCKD and NCKD from scaled logits and target ids.
pub(crate) fn decoupled(
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: Tensor<1, Int>,
) -> Decoupled {
    let vocab = student.dims()[1];
    let onehot = one_hot_rows(labels.clone(), vocab); // [rows, vocab]
    let log_q = log_softmax(student.clone());
    let log_p = log_softmax(teacher.clone());
    // Binary distributions [b_y, 1 − b_y], the rest taken as a log-sum-exp over non-targets.
    let away = onehot.clone().mul_scalar(TARGET_OFFSET);
    let lq_y = gather_rows(log_q.clone(), labels.clone());
    let lp_y = gather_rows(log_p.clone(), labels);
    let teacher_log_target = lp_y.clone();
    let lq_rest = logsumexp(log_q.sub(away.clone())).squeeze_dim(1);
    let lp_rest = logsumexp(log_p.sub(away.clone())).squeeze_dim(1);
    let tckd = lp_y
        .clone()
        .exp()
        .mul(lp_y.sub(lq_y))
        .add(lp_rest.clone().exp().mul(lp_rest.clone().sub(lq_rest)));
    // Non-target distributions: softmax of logits with the target pushed away.
    let nq = log_softmax(student.sub(away.clone()));
    let np = log_softmax(teacher.sub(away));
    let nckd = kl_rows(np, nq);
    Decoupled { tckd, nckd, teacher_log_rest: lp_rest, teacher_log_target }
}

loss_config! {
    /// Config of [`DecoupledKd`].
    pub struct DecoupledKdConfig, new: "Defaults of the original code: `α = 1`, `β = 8`, `T = 4`, warm-up 1." {
        /// Weight `α ≥ 0` of TCKD (default `1`).
        alpha: f64 = 1.0,
        /// Weight `β ≥ 0` of NCKD (default `8`).
        beta: f64 = 8.0,
        /// Temperature `T > 0` (default `4`); both terms are scaled by `T²`.
        temperature: f64 = 4.0,
        /// Warm-up factor in `[0, 1]` multiplying the whole loss (default `1`;
        /// the original code ramps it as `min(epoch / warmup, 1)`).
        warmup_factor: f64 = 1.0,
    }
}

impl DecoupledKdConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when a weight is negative, the warm-up factor
    /// leaves `[0, 1]`, or `T ≤ 0`.
    pub fn init(&self) -> Result<DecoupledKd> {
        let inf = f64::INFINITY;
        check_range(DecoupledKd::ID, "alpha", self.alpha, 0.0, inf, "a value ≥ 0")?;
        check_range(DecoupledKd::ID, "beta", self.beta, 0.0, inf, "a value ≥ 0")?;
        check_range(
            DecoupledKd::ID,
            "warmup_factor",
            self.warmup_factor,
            0.0,
            1.0,
            "a value in [0, 1]",
        )?;
        check_temperature(DecoupledKd::ID, "temperature", self.temperature)?;
        Ok(DecoupledKd { config: self.clone() })
    }
}

/// Decoupled KD: splits KL into the target-class binary term (TCKD) and the KL among the
/// non-target classes (NCKD), so NCKD is not suppressed when the teacher is confident.
///
/// ```text
/// TCKD:       KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])
/// NCKD:       KL(p̂ ‖ q̂),  p̂ = softmax(t/T − 1000·onehot(y)), q̂ likewise
/// per token:  warmup·(α·T²·TCKD + β·T²·NCKD)
/// gradient:   by autodiff
/// ```
///
/// Needs `labels` (the target class `y`). Diagnostics `tckd`, `nckd` (unscaled).
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`; `labels`: `[rows]`.
///
/// # Errors
/// [`crate::KdError::MissingInput`] without labels; see [`Divergence::forward`].
///
/// Paper: Zhao et al., *Decoupled Knowledge Distillation* (CVPR 2022),
/// <https://arxiv.org/abs/2203.08679>; code <https://github.com/megvii-research/mdistiller>.
#[derive(Debug, Clone)]
pub struct DecoupledKd {
    config: DecoupledKdConfig,
}

impl Divergence for DecoupledKd {
    fn name(&self) -> &'static str {
        DecoupledKd::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings {
            needs_labels: true,
            ..DriverSettings::at_temperature(self.config.temperature)
        }
        .scaled_by_t2(true)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let labels = inputs.labels(DecoupledKd::ID)?;
        let c = &self.config;
        let d = decoupled(inputs.student, inputs.teacher, labels);
        let value = d
            .tckd
            .clone()
            .mul_scalar(c.alpha * c.warmup_factor)
            .add(d.nckd.clone().mul_scalar(c.beta * c.warmup_factor));
        Ok(TokenTerms::new(value).with(Extra::row("tckd", d.tckd)).with(Extra::row("nckd", d.nckd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_and_loss_with_labels, rows};

    #[test]
    fn tckd_plus_nckd_weighting_recovers_kl_decomposition() {
        // KL(p‖q) = TCKD + (1 − p_y)·NCKD exactly; check with α = 1, β = 1 − p_y at T = 1.
        let s: &[f32] = &[0.3, -1.0, 2.0, 0.5];
        let t: &[f32] = &[1.0, 0.5, -0.5, 0.0];
        let p: Vec<f64> = {
            let z: f64 = t.iter().map(|x| (*x as f64).exp()).sum();
            t.iter().map(|x| (*x as f64).exp() / z).collect()
        };
        let loss = DecoupledKdConfig {
            alpha: 1.0,
            beta: 1.0 - p[2],
            temperature: 1.0,
            warmup_factor: 1.0,
        }
        .init()
        .unwrap();
        let (l, _) = grad_and_loss_with_labels(&loss, rows(&[s]), rows(&[t]), &[2]);
        let fkl = crate::ForwardKlConfig::new().init().unwrap();
        let (k, _) = crate::test_util::grad_and_loss(&fkl, rows(&[s]), rows(&[t]));
        assert!((l - k).abs() < 1e-5, "{l} {k}");
    }

    #[test]
    fn needs_labels() {
        let loss = DecoupledKdConfig::new().init().unwrap();
        let b = crate::KdBatch::new(rows(&[&[0.0, 1.0]]), rows(&[&[1.0, 0.0]]));
        let err = loss.forward(b, crate::Reduction::Mean).unwrap_err();
        assert!(matches!(err, crate::KdError::MissingInput { name: "labels", .. }), "{err}");
    }
}
