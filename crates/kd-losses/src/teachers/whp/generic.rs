//! WHP's generic prediction: the baseline's logits pushed away from what the reinforced model
//! boosts, and the teacher targets built from them.

use burn::tensor::{Int, Tensor, activation};
use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::error::{KdError, Result, check_range};
use crate::logspace::{LOGIT_FLOOR, LOSS_DTYPE, to_f32};

/// What the student is trained towards at each position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhpTarget {
    /// `softmax(generic_logits)`.
    Soft,
    /// The one-hot of the generic label (WHP fine-tunes on the generic label).
    Hard,
}

loss_config! {
    /// Config of [`WhpGeneric`].
    pub struct WhpGenericConfig, new: "Defaults: `α = 5` (public re-implementations), hard targets (WHP)." {
        /// Strength `α ≥ 0` of the push away from the reinforced model (default `5`; `0` gives
        /// the baseline unchanged).
        alpha: f64 = 5.0 => with_alpha,
        /// `hard` (one-hot of the generic label, WHP's choice; default) or `soft`.
        target: WhpTarget = WhpTarget::Hard => with_target,
    }
}

impl WhpGenericConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `alpha` is negative or not finite.
    pub fn init(&self) -> Result<WhpGeneric> {
        check_range(WhpGeneric::ID, "alpha", self.alpha, 0.0, f64::INFINITY, "a finite value ≥ 0")?;
        Ok(WhpGeneric { config: self.clone() })
    }
}

/// The generic-prediction teacher of *Who's Harry Potter?*: the baseline model's logits (on the
/// anchor-translated text) lowered wherever the reinforced model (on the original text) is more
/// confident than the baseline.
///
/// ```text
/// generic_logits = base − α·ReLU(reinforced − base)                 (WHP eq. 1)
/// generic_labels = argmax_v generic_logits                           lowest index on exact ties
/// teacher_probs  = softmax(generic_logits)        target = soft
///                = one_hot(generic_labels)        target = hard
/// ```
///
/// Both inputs are teacher-side: the outputs are detached (never differentiated). Inputs may be
/// of any float dtype; they are cast to `f32`, and logits below `-1e4` (e.g. `-inf` padding) are
/// raised to `-1e4` first so that every output stays finite. Train the student on
/// `teacher_probs` with [`crate::teachers::whp::WhpLoss`].
///
/// # Shapes
/// `base_logits`, `reinforced_logits`: `[batch, len, vocab]`, row `(b, l)` predicting the token
/// at `l + 1`, both aligned to the original text's positions. Outputs: `generic_logits` and
/// `teacher_probs` `[batch, len, vocab]`, `generic_labels` `[batch, len]`.
///
/// # Errors
/// [`KdError::ShapeMismatch`] when the two shapes differ or the vocabulary is empty.
///
/// Paper: Eldan & Russinovich, *Who's Harry Potter? Approximate Unlearning in LLMs*,
/// <https://arxiv.org/abs/2310.02238> (no official training code).
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::teachers::whp::{WhpGenericConfig, WhpTarget};
///
/// let device = Device::flex();
/// let base = Tensor::<3>::from_floats([[[2.0, 1.0, 0.0]]], &device);
/// let reinforced = Tensor::<3>::from_floats([[[3.0, 1.0, 0.5]]], &device);
/// let whp = WhpGenericConfig::new().with_alpha(1.0).with_target(WhpTarget::Hard).init()?;
/// let out = whp.teacher(base, reinforced)?;
/// // token 0: 2 − 1·(3 − 2) = 1; token 1: 1; token 2: 0 − 0.5 = −0.5 → tie 0/1, lowest wins
/// let labels = out.generic_labels.into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
/// assert_eq!(labels, vec![0]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct WhpGeneric {
    config: WhpGenericConfig,
}

/// Output of [`WhpGeneric::teacher`]; all detached.
#[derive(Debug, Clone)]
pub struct GenericPrediction {
    /// `base − α·ReLU(reinforced − base)`, `f32`. Shape: `[batch, len, vocab]`.
    pub generic_logits: Tensor<3>,
    /// Argmax of `generic_logits`, lowest index on exact ties. Shape: `[batch, len]`.
    pub generic_labels: Tensor<2, Int>,
    /// The student's targets (soft or one-hot), `f32`. Shape: `[batch, len, vocab]`.
    pub teacher_probs: Tensor<3>,
}

impl WhpGeneric {
    /// Identifier used in error messages.
    pub const ID: &'static str = "whp_generic";

    /// The validated config.
    pub fn config(&self) -> &WhpGenericConfig {
        &self.config
    }

    /// `base − α·ReLU(reinforced − base)`, detached, `f32`.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the shapes differ or the vocabulary is empty.
    pub fn generic_logits(
        &self,
        base_logits: Tensor<3>,
        reinforced_logits: Tensor<3>,
    ) -> Result<Tensor<3>> {
        let (b, r) = (base_logits.dims(), reinforced_logits.dims());
        if b != r || b[2] == 0 {
            return Err(KdError::ShapeMismatch {
                what: "reinforced_logits vs base_logits".into(),
                expected: b.to_vec(),
                got: r.to_vec(),
            });
        }
        let base = to_f32(base_logits.detach()).clamp_min(LOGIT_FLOOR); // [batch, len, vocab]
        let reinforced = to_f32(reinforced_logits.detach()).clamp_min(LOGIT_FLOOR);
        // Lower every token the reinforced model prefers over the baseline by α times the gap.
        let boost = activation::relu(reinforced.sub(base.clone()));
        Ok(base.sub(boost.mul_scalar(self.config.alpha)))
    }

    /// The generic logits, labels and the student's targets.
    ///
    /// # Errors
    /// As [`WhpGeneric::generic_logits`].
    pub fn teacher(
        &self,
        base_logits: Tensor<3>,
        reinforced_logits: Tensor<3>,
    ) -> Result<GenericPrediction> {
        let generic_logits = self.generic_logits(base_logits, reinforced_logits)?;
        let generic_labels = argmax_lowest(generic_logits.clone());
        let vocab = generic_logits.dims()[2];
        let teacher_probs = match self.config.target {
            WhpTarget::Soft => activation::softmax(generic_logits.clone(), 2),
            WhpTarget::Hard => generic_labels.clone().one_hot::<3>(vocab).cast(LOSS_DTYPE),
        };
        Ok(GenericPrediction { generic_logits, generic_labels, teacher_probs })
    }
}

/// Argmax over the last dimension with the lowest index on exact ties (whatever the backend's own
/// `argmax` does with ties). Shape: `[batch, len, vocab] -> [batch, len]`.
pub(crate) fn argmax_lowest(x: Tensor<3>) -> Tensor<2, Int> {
    let [batch, len, vocab] = x.dims();
    let max = x.clone().max_dim(2).expand([batch, len, vocab]); // [batch, len, vocab]
    let not_max = x.equal(max).bool_not();
    let index = Tensor::<1, Int>::arange(0..vocab as i64, &not_max.device())
        .reshape([1, 1, vocab])
        .expand([batch, len, vocab]);
    // Non-maxima get `vocab`, so the smallest remaining index is the first maximum. A row without
    // any maximum (NaN logits) is clamped to a valid id rather than left out of range.
    index
        .mask_fill(not_max, vocab as i64)
        .min_dim(2)
        .squeeze_dim::<2>(2)
        .clamp_max(vocab as i64 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t3(data: &[f32], shape: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(data.to_vec(), shape), &Device::flex())
    }

    fn vals(t: Tensor<3>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    fn labels(t: Tensor<2, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().try_into_vec::<i64>().unwrap()
    }

    #[test]
    fn hand_computed_generic_logits() {
        // base [1, 2, 0], reinforced [3, 1, 0.5], α = 2:
        // [1 − 2·2, 2 − 0, 0 − 2·0.5] = [−3, 2, −1]
        let w = WhpGenericConfig::new().with_alpha(2.0).init().unwrap();
        let g = w.generic_logits(t3(&[1.0, 2.0, 0.0], [1, 1, 3]), t3(&[3.0, 1.0, 0.5], [1, 1, 3]));
        assert_eq!(vals(g.unwrap()), vec![-3.0, 2.0, -1.0]);
    }

    #[test]
    fn alpha_zero_and_reinforced_below_base_give_the_base() {
        let base = [0.5f32, -1.0, 2.0, 0.25, 3.0, -2.0];
        let reinforced = [4.0f32, 0.0, 2.5, 1.0, -3.0, 7.0];
        let w = WhpGenericConfig::new().with_alpha(0.0).init().unwrap();
        let g = w.generic_logits(t3(&base, [1, 2, 3]), t3(&reinforced, [1, 2, 3])).unwrap();
        assert_eq!(vals(g), base.to_vec());
        // reinforced ≤ base everywhere: ReLU term is 0 whatever α is.
        let below: Vec<f32> = base.iter().map(|x| x - 0.75).collect();
        let w = WhpGenericConfig::new().with_alpha(5.0).init().unwrap();
        let g = w.generic_logits(t3(&base, [2, 1, 3]), t3(&below, [2, 1, 3])).unwrap();
        assert_eq!(vals(g), base.to_vec());
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        let x = t3(&[1.0, 3.0, 3.0, 0.0, 5.0, 5.0, 5.0, 5.0, -1.0, 2.0, -1.0, 2.0], [1, 3, 4]);
        assert_eq!(labels(argmax_lowest(x)), vec![1, 0, 1]);
    }

    #[test]
    fn soft_and_hard_targets() {
        let base = t3(&[0.0, 1.0, 2.0], [1, 1, 3]);
        let hard = WhpGenericConfig::new().with_alpha(0.0).init().unwrap();
        let out = hard.teacher(base.clone(), base.clone()).unwrap();
        assert_eq!(vals(out.teacher_probs), vec![0.0, 0.0, 1.0]);
        assert_eq!(labels(out.generic_labels), vec![2]);
        let soft =
            WhpGenericConfig::new().with_alpha(0.0).with_target(WhpTarget::Soft).init().unwrap();
        let p = vals(soft.teacher(base.clone(), base).unwrap().teacher_probs);
        let z: f64 = (0..3).map(|i| (i as f64).exp()).sum();
        for (i, pi) in p.iter().enumerate() {
            assert!((*pi as f64 - (i as f64).exp() / z).abs() < 1e-6, "{p:?}");
        }
    }

    #[test]
    fn minus_infinity_stays_finite() {
        let base = t3(&[f32::NEG_INFINITY, 0.0], [1, 1, 2]);
        let reinforced = t3(&[f32::NEG_INFINITY, 1.0], [1, 1, 2]);
        let w = WhpGenericConfig::new().with_target(WhpTarget::Soft).init().unwrap();
        let out = w.teacher(base, reinforced).unwrap();
        assert!(vals(out.generic_logits).iter().all(|x| x.is_finite()));
        assert!(vals(out.teacher_probs).iter().all(|x| x.is_finite()));
    }

    #[test]
    fn errors() {
        for alpha in [-0.1, f64::NAN, f64::INFINITY] {
            let e = WhpGenericConfig::new().with_alpha(alpha).init().unwrap_err();
            assert!(matches!(e, KdError::InvalidHyperparameter { name: "alpha", .. }), "{e}");
        }
        let w = WhpGenericConfig::new().init().unwrap();
        let e = w.teacher(t3(&[0.0; 6], [1, 2, 3]), t3(&[0.0; 6], [1, 3, 2])).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        let c: WhpGenericConfig =
            serde_json::from_str(r#"{"alpha": 2.0, "target": "soft"}"#).unwrap();
        assert_eq!(c, WhpGenericConfig::new().with_alpha(2.0).with_target(WhpTarget::Soft));
    }
}
