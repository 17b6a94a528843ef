//! The student loss of both WHP-style teachers: KL from the teacher's targets to the student,
//! averaged per sequence (official) or per token.

use burn::tensor::{Bool, Tensor, activation};
use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::error::{KdError, Result};
use crate::logspace::{LOGIT_FLOOR, mask_f32, to_f32};

/// Smallest teacher probability whose logarithm is taken: `0·log 0` then reads `0·log(tiny) = 0`.
const PROB_FLOOR: f64 = f32::MIN_POSITIVE as f64;

/// How the per-token terms become one loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhpReduction {
    /// Mean over each sequence's valid positions, then mean over sequences (official code).
    SequenceMean,
    /// Sum over all valid positions divided by their number.
    TokenMean,
}

loss_config! {
    /// Config of [`WhpLoss`].
    pub struct WhpLossConfig, new: "Default: `sequence_mean`, the official reduction." {
        /// `sequence_mean` (official; default) or `token_mean`.
        reduction: WhpReduction = WhpReduction::SequenceMean => with_reduction,
    }
}

impl WhpLossConfig {
    /// Builds the loss (there is nothing to validate; kept for the `Config::init` pattern).
    ///
    /// # Errors
    /// None today.
    pub fn init(&self) -> Result<WhpLoss> {
        Ok(WhpLoss { config: self.clone() })
    }
}

/// The student loss of the WHP generic teacher and of the causal-intervention teacher of
/// *Revisiting Who's Harry Potter*: KL from the teacher's target distribution to the student at
/// every trained position.
///
/// ```text
/// per_token[b,l]  = mask[b,l] · Σ_v t_v (log t_v − log_softmax(s)_v)      0·log 0 = 0
///                 = −log q[label]                                           for one-hot t
/// per_sequence[b] = Σ_l per_token[b,l] / Σ_l mask[b,l]
/// sequence_mean   = mean_b per_sequence[b]                                  (official)
/// token_mean      = Σ per_token / Σ mask
/// gradient:       ∂sequence_mean/∂s[b,l,v] = mask[b,l]·(q_v − t_v) / (B·n_b)
///                 ∂token_mean/∂s[b,l,v]    = mask[b,l]·(q_v − t_v) / n_valid     (rows of t sum to 1)
/// ```
///
/// `t` is the teacher's probabilities (soft or one-hot; from
/// [`crate::teachers::whp::WhpGeneric`] or [`crate::teachers::whp::RevisitTeacher`]), a constant:
/// it is detached. The student is cast to `f32` (logits below `-1e4` raised to `-1e4`); the
/// gradient comes back in the student's dtype.
///
/// # Shapes
/// `student_logits`, `teacher_probs`: `[batch, len, vocab]`; `mask`: `[batch, len]`
/// (`true` = trained position).
///
/// # Errors
/// [`KdError::ShapeMismatch`] when the shapes disagree; [`KdError::EmptySequence`] when a
/// sequence has no valid position (its per-sequence mean is `0/0`; the official code returns NaN),
/// under either reduction.
///
/// Paper: Liu et al., *Revisiting Who's Harry Potter: Towards Targeted Unlearning from a Causal
/// Intervention Perspective*, <https://arxiv.org/abs/2407.16997>; code
/// <https://github.com/UCSB-NLP-Chang/causal_unlearn> (`dataloader.py`,
/// `CustomTrainerForgetting.compute_loss`).
///
/// # Example
/// ```
/// use burn::tensor::{Bool, Device, Tensor};
/// use kd_losses::teachers::whp::WhpLossConfig;
///
/// let device = Device::flex().autodiff();
/// let student = Tensor::<3>::from_floats([[[1.0, 0.0], [0.0, 0.0]]], &device).require_grad();
/// let teacher = Tensor::<3>::from_floats([[[1.0, 0.0], [0.5, 0.5]]], &device);
/// let mask = Tensor::<2, Bool>::from_bool([[true, false]], &device);
/// let out = WhpLossConfig::new().init()?.forward(student.clone(), teacher, mask)?;
/// // one valid position, one-hot target 0: −log softmax([1, 0])_0 = log(1 + e⁻¹)
/// let loss = out.loss.clone().into_scalar::<f32>();
/// assert!((loss - (1.0 + (-1.0f32).exp()).ln()).abs() < 1e-6);
/// let grads = out.loss.backward();
/// assert!(student.grad(&grads).is_some());
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct WhpLoss {
    config: WhpLossConfig,
}

/// Output of [`WhpLoss::forward`].
#[derive(Debug, Clone)]
pub struct WhpLossOutput {
    /// The configured reduction; differentiable. Shape: `[1]`.
    pub loss: Tensor<1>,
    /// `mean_b per_sequence[b]`; differentiable. Shape: `[1]`.
    pub loss_sequence_mean: Tensor<1>,
    /// `Σ per_token / Σ mask`; differentiable. Shape: `[1]`.
    pub loss_token_mean: Tensor<1>,
    /// KL per position, 0 where masked. Shape: `[batch, len]`.
    pub per_token: Tensor<2>,
    /// Mean over each sequence's valid positions. Shape: `[batch]`.
    pub per_sequence: Tensor<1>,
    /// Number of valid positions.
    pub n_valid: usize,
}

impl WhpLoss {
    /// Identifier used in error messages.
    pub const ID: &'static str = "whp_loss";

    /// The config.
    pub fn config(&self) -> &WhpLossConfig {
        &self.config
    }

    /// Computes the loss of the student against the teacher's targets.
    ///
    /// # Errors
    /// See [`WhpLoss`].
    pub fn forward(
        &self,
        student_logits: Tensor<3>,
        teacher_probs: Tensor<3>,
        mask: Tensor<2, Bool>,
    ) -> Result<WhpLossOutput> {
        let [batch, len, vocab] = student_logits.dims();
        let shape_err = |what: &str, expected: Vec<usize>, got: Vec<usize>| {
            Err(KdError::ShapeMismatch { what: what.into(), expected, got })
        };
        if teacher_probs.dims() != [batch, len, vocab] {
            return shape_err(
                "teacher_probs vs student_logits",
                vec![batch, len, vocab],
                teacher_probs.dims().to_vec(),
            );
        }
        if mask.dims() != [batch, len] {
            return shape_err("mask vs student_logits", vec![batch, len], mask.dims().to_vec());
        }
        if batch == 0 || vocab == 0 {
            return shape_err(
                "student_logits (needs batch ≥ 1 and vocab ≥ 1)",
                vec![batch.max(1), len.max(1), vocab.max(1)],
                vec![batch, len, vocab],
            );
        }
        // Valid positions per sequence, read on the host: an empty sequence is an error.
        let counts: Vec<i64> = mask
            .clone()
            .int()
            .sum_dim(1)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_default();
        if let Some(sequence) = counts.iter().position(|&n| n == 0) {
            return Err(KdError::EmptySequence { loss: Self::ID, sequence });
        }
        let n_valid = counts.iter().sum::<i64>() as usize;

        let log_q = activation::log_softmax(to_f32(student_logits).clamp_min(LOGIT_FLOOR), 2); // [batch, len, vocab]
        let t = to_f32(teacher_probs.detach()); // [batch, len, vocab]
        // KL(t ‖ q) per row; log t of a zero probability is floored, so the product is 0.
        let log_t = t.clone().clamp_min(PROB_FLOOR).log();
        let kl = t.mul(log_t.sub(log_q)).sum_dim(2).squeeze_dim::<2>(2); // [batch, len]
        let m = mask_f32(mask); // [batch, len]
        let per_token = kl.mul(m.clone()); // [batch, len]
        let n_b = m.clone().sum_dim(1).squeeze_dim::<1>(1); // [batch]
        let per_sequence = per_token.clone().sum_dim(1).squeeze_dim::<1>(1).div(n_b); // [batch]
        let loss_sequence_mean = per_sequence.clone().mean();
        let loss_token_mean = per_token.clone().sum().div_scalar(n_valid as f64);
        let loss = match self.config.reduction {
            WhpReduction::SequenceMean => loss_sequence_mean.clone(),
            WhpReduction::TokenMean => loss_token_mean.clone(),
        };
        Ok(WhpLossOutput {
            loss,
            loss_sequence_mean,
            loss_token_mean,
            per_token,
            per_sequence,
            n_valid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t3(data: &[f32], shape: [usize; 3], device: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
    }

    fn mask(data: &[bool], shape: [usize; 2], device: &Device) -> Tensor<2, Bool> {
        Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
    }

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }

    fn softmax(x: &[f32]) -> Vec<f32> {
        let z: f32 = x.iter().map(|v| v.exp()).sum();
        x.iter().map(|v| v.exp() / z).collect()
    }

    #[test]
    fn zero_when_student_matches_soft_targets() {
        let d = Device::flex().autodiff();
        let s = [0.3f32, -1.2, 2.0, 0.0, 0.5, 0.5];
        let t: Vec<f32> = s.chunks(3).flat_map(softmax).collect();
        let student = t3(&s, [1, 2, 3], &d).require_grad();
        let out = WhpLossConfig::new()
            .init()
            .unwrap()
            .forward(student.clone(), t3(&t, [1, 2, 3], &d), mask(&[true, true], [1, 2], &d))
            .unwrap();
        assert!(scalar(out.loss.clone()).abs() < 1e-6);
        let g = student.grad(&out.loss.backward()).unwrap();
        let g = g.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        assert!(g.iter().all(|x| x.abs() < 1e-6), "{g:?}");
    }

    #[test]
    fn hand_computed_reductions_and_gradient() {
        // Sequence 0: two valid positions, sequence 1: one (its second is masked).
        // One-hot targets → per_token = −log q[label].
        let d = Device::flex().autodiff();
        let s = [0.0f32, 0.0, 1.0, 0.0, 0.0, 2.0, 5.0, 5.0];
        let t = [1.0f32, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let student = t3(&s, [2, 2, 2], &d).require_grad();
        let m = mask(&[true, true, true, false], [2, 2], &d);
        let out = WhpLossConfig::new()
            .init()
            .unwrap()
            .forward(student.clone(), t3(&t, [2, 2, 2], &d), m)
            .unwrap();
        let ln2 = 2f64.ln();
        let l1 = (1.0 + 1f64.exp()).ln(); // −log softmax([1, 0])_1
        let l2 = (1.0 + (-2f64).exp()).ln(); // −log softmax([0, 2])_1
        let seq = ((ln2 + l1) / 2.0 + l2) / 2.0;
        let tok = (ln2 + l1 + l2) / 3.0;
        assert!((scalar(out.loss_sequence_mean) - seq).abs() < 1e-6);
        assert!((scalar(out.loss_token_mean) - tok).abs() < 1e-6);
        assert_eq!(out.n_valid, 3);
        let pt = out.per_token.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        assert_eq!(pt[3], 0.0);
        let g = student.grad(&out.loss.backward()).unwrap();
        let g = g.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        // Row (0, 0): q = [½, ½], t = [1, 0], weight 1/(B·n_0) = 1/4.
        assert!((g[0] as f64 + 0.125).abs() < 1e-6 && (g[1] as f64 - 0.125).abs() < 1e-6, "{g:?}");
        // The masked row gets no gradient.
        assert_eq!(&g[6..], &[0.0, 0.0]);
    }

    #[test]
    fn zero_teacher_probabilities_are_finite() {
        let d = Device::flex();
        let out = WhpLossConfig::new()
            .with_reduction(WhpReduction::TokenMean)
            .init()
            .unwrap()
            .forward(
                t3(&[1.0, 2.0, 3.0], [1, 1, 3], &d),
                t3(&[0.0, 0.0, 1.0], [1, 1, 3], &d),
                mask(&[true], [1, 1], &d),
            )
            .unwrap();
        let want = -(3f64 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln());
        assert!((scalar(out.loss) - want).abs() < 1e-6);
    }

    #[test]
    fn errors() {
        let d = Device::flex();
        let loss = WhpLossConfig::new().init().unwrap();
        let s = t3(&[0.0; 12], [2, 2, 3], &d);
        let e = loss
            .forward(s.clone(), t3(&[0.0; 12], [2, 3, 2], &d), mask(&[true; 4], [2, 2], &d))
            .unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        let e = loss.forward(s.clone(), s.clone(), mask(&[true; 2], [1, 2], &d)).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        let e =
            loss.forward(s.clone(), s, mask(&[true, false, false, false], [2, 2], &d)).unwrap_err();
        assert_eq!(e, KdError::EmptySequence { loss: WhpLoss::ID, sequence: 1 });
        let c: WhpLossConfig = serde_json::from_str(r#"{"reduction": "token_mean"}"#).unwrap();
        assert_eq!(c.reduction, WhpReduction::TokenMean);
    }
}
