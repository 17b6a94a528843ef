//! Row-wise distances between student and target feature vectors: MSE, smooth L1, cosine and
//! their hybrids, with an optional row mask. Used by [PHI-S](super::phi_s) and by feature
//! distillation in general.

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::error::{KdError, Result, check_range};
use crate::logspace::{f32_on, mask_f32, to_f32};

/// Which per-row distance [`FeatureDistance`] computes (serde: `snake_case`, as the golden
/// configs' `loss` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLoss {
    /// `mean_c d²` (PyTorch `nn.MSELoss`; the PHI-S paper's loss).
    #[default]
    Mse,
    /// `mean_c huber_β(d)/β`: PyTorch `nn.SmoothL1Loss(beta)` (`β = 0`: `mean_c |d|`, as PyTorch).
    SmoothL1,
    /// `1 − cos(s, y)` with norms floored at `cosine_eps`.
    Cosine,
    /// `w·cosine + (1 − w)·mse`.
    HybMse,
    /// `w·cosine + (1 − w)·smooth_l1` (AM-RADIO's feature loss).
    HybSmoothL1,
}

/// Smallest accepted non-zero `smooth_l1_beta`: a normal `f32`, so `m/β` stays finite
/// (`β = 0` itself is accepted: plain L1).
const MIN_BETA: f64 = 1e-30;
/// Smallest accepted `cosine_eps`: `eps²` a normal `f32`.
const MIN_EPS: f64 = 1e-18;

loss_config! {
    /// Config of [`FeatureDistance`]. Keys as in the golden configs.
    pub struct FeatureDistanceConfig, new: "Defaults: `mse`, `β = 1` (PyTorch), `w = 0.9` (AM-RADIO), `eps = 1e-8` (PyTorch)." {
        /// The distance (default `mse`).
        loss: FeatureLoss = FeatureLoss::Mse => with_loss,
        /// Smooth-L1 threshold: `β = 0` (plain L1, PyTorch's semantics) or `β ≥ 1e-30` (default
        /// `1`, PyTorch's; NVIDIA TAO's `FD` uses `2`).
        smooth_l1_beta: f64 = 1.0 => with_smooth_l1_beta,
        /// Cosine weight `w ∈ [0, 1]` of the hybrids (default `0.9`).
        cos_weight: f64 = 0.9 => with_cos_weight,
        /// Norm floor `eps > 0` of the cosine (default `1e-8`).
        cosine_eps: f64 = 1e-8 => with_cosine_eps,
    }
}

impl FeatureDistanceConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `smooth_l1_beta < 0` or in `(0, 1e-30)`,
    /// `cos_weight ∉ [0, 1]` or `cosine_eps ≤ 0` (below `1e-18`), or any of them is not finite.
    pub fn init(&self) -> Result<FeatureDistance> {
        // The loss runs in f32: β must stay a normal f32 and eps² too (the norm floor is
        // applied to the squared norm), else a division by an underflowed 0 gives NaN.
        // β = 0 is exactly L1 (no division by β then).
        if self.smooth_l1_beta != 0.0 {
            check_range(
                FeatureDistance::ID,
                "smooth_l1_beta",
                self.smooth_l1_beta,
                MIN_BETA,
                f64::MAX,
                "0 (plain L1) or a finite value ≥ 1e-30 (a normal f32)",
            )?;
        }
        check_range(
            FeatureDistance::ID,
            "cos_weight",
            self.cos_weight,
            0.0,
            1.0,
            "a value in [0, 1]",
        )?;
        check_range(
            FeatureDistance::ID,
            "cosine_eps",
            self.cosine_eps,
            MIN_EPS,
            f64::MAX,
            "a finite value ≥ 1e-18 (> 0, with eps² a normal f32)",
        )?;
        Ok(FeatureDistance { config: self.clone() })
    }
}

/// A per-row distance between student feature vectors `s` and target vectors `y` (rows of
/// `[rows, C]`), reduced over the valid rows.
///
/// ```text
/// d = s − y                                           per row, over the C features
/// mse        = mean_c d²
/// smooth_l1  = mean_c (|d| < β ? ½ d²/β : |d| − ½β)      (β = 0: mean_c |d|, PyTorch's L1)
/// cosine     = 1 − (s / max(‖s‖, eps)) · (y / max(‖y‖, eps))
/// hyb_mse    = w·cosine + (1 − w)·mse
/// hyb_smooth_l1 = w·cosine + (1 − w)·smooth_l1
/// loss_mean  = Σ_valid per_row / n_valid   (0 when no row is valid)
/// loss_sum   = Σ_valid per_row
/// gradient:  by autodiff w.r.t. s (y is detached)
/// ```
///
/// `per_row` and the three extras are exactly 0 on masked rows, and so is their gradient.
/// The norm floor is applied as `sqrt(max(‖s‖², eps²))`, equal in value to `max(‖s‖, eps)`,
/// so an all-zero row has a zero (not NaN) gradient.
///
/// # Shapes
/// `student`, `target`: `[rows, C]`; `mask`: `[rows]` (true = counted).
///
/// # Errors
/// [`KdError::ShapeMismatch`] when the shapes disagree; hyperparameters are checked by
/// [`FeatureDistanceConfig::init`].
///
/// Paper: PHI-S, Ranzinger et al. 2024, eqs. 1, 3, 4, <https://arxiv.org/abs/2410.01680>;
/// AM-RADIO, Ranzinger et al. 2024, <https://arxiv.org/abs/2312.06709>; code
/// <https://github.com/NVlabs/RADIO>.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor};
/// use kd_losses::teachers::feature_distance::{FeatureDistanceConfig, FeatureLoss};
///
/// let device = Device::flex().autodiff();
/// let s = Tensor::<2>::from_floats([[1.0, 2.0], [0.0, 1.0]], &device).require_grad();
/// let y = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
/// let fd = FeatureDistanceConfig::new().with_loss(FeatureLoss::Mse).init()?;
/// let out = fd.forward(s.clone(), y, None)?;
/// // row 0: (0² + 2²)/2 = 2, row 1: 0; mean over the 2 rows = 1
/// assert!((out.loss_mean.clone().into_scalar::<f32>() - 1.0).abs() < 1e-6);
/// let g = s.grad(&out.loss_mean.backward()).unwrap(); // 2 d / (C · rows)
/// assert!((g.slice([0..1, 1..2]).into_scalar::<f32>() - 1.0).abs() < 1e-6);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FeatureDistance {
    config: FeatureDistanceConfig,
}

/// What [`FeatureDistance::forward`] returns.
#[derive(Debug, Clone)]
pub struct FeatureDistanceOutput {
    /// The configured distance per row, 0 on masked rows. Shape `[rows]`.
    pub per_row: Tensor<1>,
    /// `Σ_valid per_row / n_valid` (0 when no row is valid). Shape `[1]`.
    pub loss_mean: Tensor<1>,
    /// `Σ_valid per_row`. Shape `[1]`.
    pub loss_sum: Tensor<1>,
    /// Number of valid rows, as a float. Shape `[1]`.
    pub n_valid: Tensor<1>,
    /// The `mse` term per row (detached, 0 on masked rows). Shape `[rows]`.
    pub mse: Tensor<1>,
    /// The `smooth_l1` term per row (detached, 0 on masked rows). Shape `[rows]`.
    pub smooth_l1: Tensor<1>,
    /// The `cosine` term per row (detached, 0 on masked rows). Shape `[rows]`.
    pub cosine: Tensor<1>,
}

/// The three row terms, before masking.
struct Terms {
    mse: Tensor<1>,
    smooth_l1: Tensor<1>,
    cosine: Tensor<1>,
}

impl FeatureDistance {
    /// Identifier used in errors.
    pub const ID: &'static str = "feature_distance";

    /// The validated config.
    pub fn config(&self) -> &FeatureDistanceConfig {
        &self.config
    }

    /// Per-row distances of `student` to `target` and their reductions over the valid rows.
    ///
    /// Both inputs are cast to `f32`; `target` is detached.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `target` or `mask` does not match `student`.
    pub fn forward(
        &self,
        student: Tensor<2>,
        target: Tensor<2>,
        mask: Option<Tensor<1, Bool>>,
    ) -> Result<FeatureDistanceOutput> {
        let dims = student.dims();
        if target.dims() != dims {
            return Err(KdError::ShapeMismatch {
                what: "target vs student features".into(),
                expected: dims.to_vec(),
                got: target.dims().to_vec(),
            });
        }
        let [rows, _] = dims;
        let device = student.device();
        let valid = match mask {
            Some(m) => {
                if m.dims() != [rows] {
                    return Err(KdError::ShapeMismatch {
                        what: "mask vs student rows".into(),
                        expected: vec![rows],
                        got: m.dims().to_vec(),
                    });
                }
                m
            }
            None => Tensor::<1, Bool>::ones([rows], &device),
        };
        let s = to_f32(student); // [rows, C]
        let y = to_f32(target).detach(); // [rows, C]
        let terms = self.terms(s, y);
        let c = &self.config;
        let w = c.cos_weight;
        let value = match c.loss {
            FeatureLoss::Mse => terms.mse.clone(),
            FeatureLoss::SmoothL1 => terms.smooth_l1.clone(),
            FeatureLoss::Cosine => terms.cosine.clone(),
            FeatureLoss::HybMse => {
                terms.cosine.clone().mul_scalar(w).add(terms.mse.clone().mul_scalar(1.0 - w))
            }
            FeatureLoss::HybSmoothL1 => {
                terms.cosine.clone().mul_scalar(w).add(terms.smooth_l1.clone().mul_scalar(1.0 - w))
            }
        };
        // Masked rows are replaced (not multiplied) by 0, so nothing computed there can leak.
        let invalid = valid.clone().bool_not();
        let per_row = value.mask_fill(invalid.clone(), 0.0); // [rows]
        let n_valid = if rows == 0 {
            Tensor::<1>::zeros([1], f32_on(&device))
        } else {
            mask_f32(valid).sum() // [1]
        };
        let loss_sum = if rows == 0 {
            Tensor::<1>::zeros([1], f32_on(&device))
        } else {
            per_row.clone().sum()
        };
        let loss_mean = loss_sum.clone().div(n_valid.clone().clamp_min(1.0));
        let extra = |t: Tensor<1>| t.detach().mask_fill(invalid.clone(), 0.0);
        Ok(FeatureDistanceOutput {
            per_row,
            loss_mean,
            loss_sum,
            n_valid,
            mse: extra(terms.mse),
            smooth_l1: extra(terms.smooth_l1),
            cosine: extra(terms.cosine),
        })
    }

    /// The unmasked row terms of `s` against `y` (both `[rows, C]`, `f32`).
    fn terms(&self, s: Tensor<2>, y: Tensor<2>) -> Terms {
        let c = &self.config;
        let channels = s.dims()[1].max(1) as f64;
        let d = s.clone().sub(y.clone()); // [rows, C]
        let mse = row_sum(d.clone().mul(d.clone())).div_scalar(channels);
        // Branch-free smooth L1: with m = min(|d|, β), ½m²/β + (|d| − m) is ½d²/β below β and
        // |d| − ½β above it, with the same gradient (d/β resp. sign d).
        let beta = c.smooth_l1_beta;
        let a = d.abs();
        let smooth = if beta == 0.0 {
            // PyTorch's smooth_l1_loss with beta = 0 is l1_loss: |d|, gradient sign(d).
            a
        } else {
            let m = a.clone().clamp_max(beta);
            m.clone().mul(m.clone().div_scalar(beta)).mul_scalar(0.5).add(a.sub(m))
        };
        let smooth_l1 = row_sum(smooth).div_scalar(channels);
        // cos = s·y / (max(‖s‖, eps) max(‖y‖, eps)), the floor taken on the squared norm.
        let eps2 = c.cosine_eps * c.cosine_eps;
        let ns = row_sum(s.clone().mul(s.clone())).clamp_min(eps2).sqrt();
        let ny = row_sum(y.clone().mul(y.clone())).clamp_min(eps2).sqrt();
        let cos = row_sum(s.mul(y)).div(ns.mul(ny));
        let cosine = cos.neg().add_scalar(1.0);
        Terms { mse, smooth_l1, cosine }
    }
}

/// `Σ_c x[r, c]` for each row. `[rows, C]` → `[rows]`.
fn row_sum(x: Tensor<2>) -> Tensor<1> {
    x.sum_dim(1).squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn rows(data: &[&[f32]]) -> Tensor<2> {
        let c = data[0].len();
        let flat: Vec<f32> = data.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [data.len(), c]), &Device::flex().autodiff())
    }

    fn vals(t: Tensor<1>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    fn run(
        loss: FeatureLoss,
        beta: f64,
        s: &[&[f32]],
        y: &[&[f32]],
        mask: Option<&[bool]>,
    ) -> (FeatureDistanceOutput, Vec<f64>) {
        let fd = FeatureDistanceConfig::new()
            .with_loss(loss)
            .with_smooth_l1_beta(beta)
            .with_cos_weight(0.25)
            .init()
            .unwrap();
        let s = rows(s).require_grad();
        let device = s.device();
        let m = mask
            .map(|m| Tensor::<1, Bool>::from_data(TensorData::new(m.to_vec(), [m.len()]), &device));
        let out = fd.forward(s.clone(), rows(y), m).unwrap();
        let g = s.grad(&out.loss_mean.backward()).unwrap();
        let g = g.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
        (out, g)
    }

    #[test]
    fn hand_values_of_every_term() {
        // d = (3, 0.5): mse = (9 + 0.25)/2, smooth_l1(β=1) = (2.5 + 0.125)/2;
        // s = (3, 0.5) ⟂? y = (0, 0) → cosine floors y's norm: cos = 0 → 1.
        let (out, _) = run(FeatureLoss::Mse, 1.0, &[&[3.0, 0.5]], &[&[0.0, 0.0]], None);
        close(&vals(out.mse), &[4.625], 1e-6);
        close(&vals(out.smooth_l1), &[1.3125], 1e-6);
        close(&vals(out.cosine), &[1.0], 1e-6);
        // s = (1, 1), y = (2, 0): cos = 2 / (√2 · 2) = 1/√2.
        let (out, _) = run(FeatureLoss::Cosine, 1.0, &[&[1.0, 1.0]], &[&[2.0, 0.0]], None);
        close(&vals(out.per_row), &[1.0 - 0.5f64.sqrt()], 1e-6);
        // Hybrids with w = 0.25.
        let (out, _) = run(FeatureLoss::HybMse, 1.0, &[&[1.0, 1.0]], &[&[2.0, 0.0]], None);
        close(&vals(out.per_row), &[0.25 * (1.0 - 0.5f64.sqrt()) + 0.75 * 1.0], 1e-6);
        let (out, _) = run(FeatureLoss::HybSmoothL1, 2.0, &[&[1.0, 1.0]], &[&[2.0, 0.0]], None);
        // smooth_l1(β=2): |d| = 1 < 2 → ½·1/2 = 0.25 each, mean 0.25.
        close(&vals(out.per_row), &[0.25 * (1.0 - 0.5f64.sqrt()) + 0.75 * 0.25], 1e-6);
    }

    #[test]
    fn equal_inputs_give_zero_and_zero_gradient() {
        for loss in [FeatureLoss::Mse, FeatureLoss::SmoothL1, FeatureLoss::HybSmoothL1] {
            let (out, g) = run(loss, 1.0, &[&[1.0, -2.0, 0.5]], &[&[1.0, -2.0, 0.5]], None);
            close(&vals(out.loss_mean), &[0.0], 1e-6);
            close(&g, &[0.0; 3], 1e-6);
        }
    }

    #[test]
    fn gradients_by_hand() {
        // mse: ∂/∂s = 2 d / (C · n_valid); smooth_l1 above β: sign(d) / (C · n_valid).
        let (_, g) = run(
            FeatureLoss::Mse,
            1.0,
            &[&[1.0, 0.0], &[0.0, 0.0]],
            &[&[0.0, 0.0], &[0.0, 3.0]],
            None,
        );
        close(&g, &[0.5, 0.0, 0.0, -1.5], 1e-6);
        let (_, g) = run(FeatureLoss::SmoothL1, 0.5, &[&[2.0, 0.25]], &[&[0.0, 0.0]], None);
        // d = 2 > β: 1/2; d = 0.25 < β: (d/β)/2 = 0.25.
        close(&g, &[0.5, 0.25], 1e-6);
        // A zero student row has a finite (zero) cosine gradient.
        let (_, g) = run(FeatureLoss::Cosine, 1.0, &[&[0.0, 0.0]], &[&[1.0, 2.0]], None);
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    }

    #[test]
    fn masked_rows_are_zero_and_excluded_from_the_mean() {
        let s: &[&[f32]] = &[&[1.0, 0.0], &[5.0, 5.0], &[0.0, 2.0]];
        let y: &[&[f32]] = &[&[0.0, 0.0], &[0.0, 0.0], &[0.0, 0.0]];
        let (out, g) = run(FeatureLoss::Mse, 1.0, s, y, Some(&[true, false, true]));
        close(&vals(out.per_row), &[0.5, 0.0, 2.0], 1e-6);
        // y = 0: its norm is floored, cos = 0, cosine = 1; the masked row is 0.
        close(&vals(out.cosine), &[1.0, 0.0, 1.0], 1e-6);
        close(&vals(out.loss_sum), &[2.5], 1e-6);
        close(&vals(out.loss_mean), &[1.25], 1e-6);
        close(&g[2..4], &[0.0, 0.0], 0.0);
        // Nothing valid: mean 0, no NaN.
        let (out, g) = run(FeatureLoss::Mse, 1.0, s, y, Some(&[false, false, false]));
        close(&vals(out.loss_mean), &[0.0], 0.0);
        assert!(g.iter().all(|x| *x == 0.0));
    }

    #[test]
    fn hyperparameters_and_shapes_are_checked() {
        let bad = [
            FeatureDistanceConfig::new().with_smooth_l1_beta(-1.0),
            FeatureDistanceConfig::new().with_smooth_l1_beta(f64::NAN),
            FeatureDistanceConfig::new().with_cos_weight(1.5),
            FeatureDistanceConfig::new().with_cos_weight(-0.1),
            FeatureDistanceConfig::new().with_cosine_eps(0.0),
            FeatureDistanceConfig::new().with_cosine_eps(1e-20),
            FeatureDistanceConfig::new().with_smooth_l1_beta(1e-31),
            FeatureDistanceConfig::new().with_smooth_l1_beta(f64::INFINITY),
        ];
        for c in bad {
            let e = c.init().unwrap_err();
            assert!(matches!(e, KdError::InvalidHyperparameter { .. }), "{e}");
        }
        let fd = FeatureDistanceConfig::new().init().unwrap();
        let e = fd.forward(rows(&[&[1.0, 2.0]]), rows(&[&[1.0, 2.0, 3.0]]), None).unwrap_err();
        assert!(e.to_string().contains("[1, 2]") && e.to_string().contains("[1, 3]"), "{e}");
        let m = Tensor::<1, Bool>::ones([2], &Device::flex().autodiff());
        assert!(fd.forward(rows(&[&[1.0]]), rows(&[&[1.0]]), Some(m)).is_err());
    }

    #[test]
    fn beta_zero_is_plain_l1() {
        // PyTorch: smooth_l1_loss(beta=0) = l1_loss. d = (2, −0.25, 0): mean |d| = 2.25/3;
        // gradient sign(d)/(C · rows) = (1, −1, 0)/3 (sign(0) = 0).
        let (out, g) =
            run(FeatureLoss::SmoothL1, 0.0, &[&[2.0, -0.25, 1.0]], &[&[0.0, 0.0, 1.0]], None);
        close(&vals(out.per_row), &[2.25 / 3.0], 1e-6);
        close(&vals(out.smooth_l1), &[2.25 / 3.0], 1e-6);
        close(&g, &[1.0 / 3.0, -1.0 / 3.0, 0.0], 1e-6);
        // The hybrid with β = 0: w·cosine + (1 − w)·L1, finite.
        let (out, g) = run(FeatureLoss::HybSmoothL1, 0.0, &[&[1.0, 1.0]], &[&[2.0, 0.0]], None);
        close(&vals(out.per_row), &[0.25 * (1.0 - 0.5f64.sqrt()) + 0.75 * 1.0], 1e-6);
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    }

    #[test]
    fn extreme_valid_hyperparameters_stay_finite() {
        let fd = FeatureDistanceConfig::new()
            .with_loss(FeatureLoss::HybSmoothL1)
            .with_smooth_l1_beta(1e-30)
            .with_cosine_eps(1e-18)
            .init()
            .unwrap();
        let s = rows(&[&[0.0, 0.0], &[1e-3, -2.0]]).require_grad();
        let out = fd.forward(s.clone(), rows(&[&[0.0, 0.0], &[0.0, 1.0]]), None).unwrap();
        let g = s.grad(&out.loss_mean.backward()).unwrap();
        let g = g.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
        assert!(vals(out.per_row).iter().chain(&g).all(|x| x.is_finite()), "{g:?}");
    }

    #[test]
    fn config_keys_are_snake_case() {
        let c: FeatureDistanceConfig = serde_json::from_str(
            r#"{"loss": "hyb_smooth_l1", "smooth_l1_beta": 2.0, "cos_weight": 0.9, "cosine_eps": 1e-8}"#,
        )
        .unwrap();
        assert_eq!(c.loss, FeatureLoss::HybSmoothL1);
        assert_eq!(c.smooth_l1_beta, 2.0);
    }
}
