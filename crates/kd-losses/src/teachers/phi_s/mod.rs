//! PHI-S: PCA-Hadamard isotropic standardisation of teacher features, and the feature loss a
//! student is trained with in that standardised space.
//!
//! Multi-teacher feature distillation (AM-RADIO) regresses the student's projected features
//! onto each teacher's features; teachers whose activations have very different scales then
//! dominate the loss. PHI-S fits each teacher's mean and covariance, rotates its features into
//! the eigenbasis, then by a normalised Hadamard matrix `H`, and scales by one scalar, so every
//! standardised channel has the same (unit) variance while the transform stays a scaled
//! rotation (distances are preserved up to one factor, and it is invertible).
//!
//! Pieces: [`RunningStats`] (mergeable f64 mean / covariance over batches, serde for
//! checkpoints) and [`RefreshSchedule`]; [`Rotation`] (Hadamard constructions and fallbacks);
//! [`PhiSTransform`] (the fitted transform: `standardize`, `denormalize`, host and device);
//! [`PhiS`] / [`PhiSConfig`] (the loss, via
//! [`FeatureDistance`]); [`FittedNormalization`]
//! (the normalisations the paper compares against).
//!
//! Paper: Ranzinger et al., *PHI-S: Distribution Balancing for Label-Free Multi-Teacher
//! Distillation*, <https://arxiv.org/abs/2410.01680>; code <https://github.com/NVlabs/RADIO>
//! (`examples/common/phi_s.py`, `hadamard.py`).

mod alternatives;
mod hadamard;
mod stats;

pub use alternatives::{FittedNormalization, Normalization};
pub use hadamard::{HadamardConstruction, Rotation};
pub use stats::{RefreshSchedule, RunningStats};

use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::feature_distance::{
    FeatureDistance, FeatureDistanceConfig, FeatureDistanceOutput, FeatureLoss,
};
use crate::config::loss_config;
use crate::error::{KdError, Result};
use crate::logspace::{f32_on, to_f32};
use stats::sorted_eigen;

/// Covariance estimator of [`PhiSConfig`]: only `unbiased` (`M / (n − 1)`, `torch.cov`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CovarianceEstimator {
    /// `Σ (x − μ)(x − μ)ᵀ / (n − 1)`.
    #[default]
    Unbiased,
}

/// Eigenvalue order of [`PhiSConfig`]: only `ascending` (as `torch.linalg.eigh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EigenOrder {
    /// Smallest eigenvalue first.
    #[default]
    Ascending,
}

/// Eigenvector sign rule of [`PhiSConfig`]: only `max_abs_positive` (each column's entry of
/// largest magnitude made positive; lowest row index on an exact tie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignConvention {
    /// Largest-magnitude entry positive.
    #[default]
    MaxAbsPositive,
}

/// Where the rotation `H` of [`PhiS::fit`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotationChoice {
    /// The official Hadamard search ([`Rotation::official`]) with the random fallback seeded
    /// by `seed`.
    #[default]
    OfficialHadamard,
    /// A user matrix, passed to [`PhiS::fit_with`] ([`Rotation::given`]).
    Given,
}

loss_config! {
    /// Config of [`PhiS`]; keys as in the golden configs.
    pub struct PhiSConfig, new: "Defaults: `mse` (the paper's loss), `β = 1`, `w = 0.9`, `eps = 1e-8`, official Hadamard, seed 0." {
        /// The feature distance (default `mse`).
        loss: FeatureLoss = FeatureLoss::Mse => with_loss,
        /// Smooth-L1 threshold `β ≥ 0` (`0` = plain L1; default `1`).
        smooth_l1_beta: f64 = 1.0 => with_smooth_l1_beta,
        /// Cosine weight `w ∈ [0, 1]` of the hybrid losses (default `0.9`).
        cos_weight: f64 = 0.9 => with_cos_weight,
        /// Norm floor `eps > 0` of the cosine (default `1e-8`).
        cosine_eps: f64 = 1e-8 => with_cosine_eps,
        /// Covariance estimator (only `unbiased`).
        covariance: CovarianceEstimator = CovarianceEstimator::Unbiased,
        /// Eigenvalue order (only `ascending`).
        eigen_order: EigenOrder = EigenOrder::Ascending,
        /// Eigenvector signs (only `max_abs_positive`).
        sign_convention: SignConvention = SignConvention::MaxAbsPositive,
        /// Rotation source (default `official_hadamard`).
        rotation: RotationChoice = RotationChoice::OfficialHadamard => with_rotation,
        /// Seed of the random orthogonal fallback (default `0`).
        seed: u64 = 0 => with_seed,
    }
}

impl PhiSConfig {
    /// The feature-distance part of the config.
    pub fn distance(&self) -> FeatureDistanceConfig {
        FeatureDistanceConfig {
            loss: self.loss,
            smooth_l1_beta: self.smooth_l1_beta,
            cos_weight: self.cos_weight,
            cosine_eps: self.cosine_eps,
        }
    }

    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] as [`FeatureDistanceConfig::init`].
    pub fn init(&self) -> Result<PhiS> {
        Ok(PhiS { distance: self.distance().init()?, config: self.clone() })
    }
}

/// PHI-S distillation loss: the student's features (already in the standardised space)
/// regressed onto the PHI-S-standardised teacher features.
///
/// ```text
/// fit (per teacher, f64):  μ = mean(X),  Σ = cov(X) (unbiased),  Σ = U diag(e) Uᵀ
///                          φ = √mean(e),  α = 1/φ,  W = α H Uᵀ,  W⁻¹ = φ U Hᵀ
/// target:                  y = W (t − μ)                      (teacher side, detached)
/// per row:                 distance(s, y)  — mse | smooth_l1 | cosine | hyb_mse | hyb_smooth_l1
/// loss_mean:               Σ_valid per_row / n_valid
/// gradient:                by autodiff w.r.t. s
/// ```
///
/// `W Σ Wᵀ = H diag(e) Hᵀ / φ²` has a unit diagonal when `H` is a Hadamard matrix: every
/// standardised channel has the same variance. Predictions go back to the teacher's space with
/// [`PhiSTransform::denormalize`].
///
/// # Shapes
/// `student_features`, `teacher_features`: `[rows, C]`; `mask`: `[rows]` (true = counted).
///
/// # Errors
/// [`KdError::ShapeMismatch`] when the shapes disagree with each other or with the transform;
/// [`KdError::MissingInput`] from [`Self::fit`] with `rotation = given`; fitting errors of
/// [`PhiSTransform::fit`].
///
/// Paper: Ranzinger et al., *PHI-S* (2024), <https://arxiv.org/abs/2410.01680>, eqs. 1–4;
/// code <https://github.com/NVlabs/RADIO> (`examples/common/phi_s.py`); training-side use in
/// NVIDIA TAO (`distillation/loss.py`, `PHIStandardization`).
///
/// # Example
/// ```
/// use burn::tensor::{Device, Tensor, TensorData};
/// use kd_losses::teachers::phi_s::{PhiSConfig, RunningStats};
///
/// let device = Device::flex().autodiff();
/// // Fit the teacher statistics (4 channels) from a few rows.
/// let fit: Vec<f32> = (0..40).map(|k| ((k * 7 % 11) as f32) * (1.0 + (k % 4) as f32)).collect();
/// let mut stats = RunningStats::new(4);
/// stats.update(&fit)?;
/// let phi_s = PhiSConfig::new().init()?;
/// let transform = phi_s.fit(&stats)?; // Sylvester H for C = 4
///
/// let teacher = Tensor::<2>::from_data(TensorData::new(fit[..8].to_vec(), [2, 4]), &device);
/// let student = Tensor::<2>::zeros([2, 4], &device).require_grad();
/// let out = phi_s.forward(&transform, student.clone(), teacher, None)?;
/// let grads = out.distance.loss_mean.backward();
/// assert_eq!(student.grad(&grads).unwrap().dims(), [2, 4]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PhiS {
    config: PhiSConfig,
    distance: FeatureDistance,
}

/// What [`PhiS::forward`] returns.
#[derive(Debug, Clone)]
pub struct PhiSOutput {
    /// Per-row values, reductions and extras (`mse`, `smooth_l1`, `cosine`) of the distance.
    pub distance: FeatureDistanceOutput,
    /// The standardised (detached) teacher features `(T − μ) Wᵀ`. Shape `[rows, C]`.
    pub teacher_standardized: Tensor<2>,
}

impl PhiS {
    /// Identifier used in errors.
    pub const ID: &'static str = "phi_s";

    /// The validated config.
    pub fn config(&self) -> &PhiSConfig {
        &self.config
    }

    /// The rotation for `channels` features under `rotation = official_hadamard`.
    ///
    /// # Errors
    /// [`KdError::MissingInput`] under `rotation = given` (use [`Self::fit_with`]);
    /// [`KdError::InvalidHyperparameter`] for `channels = 0`.
    pub fn rotation(&self, channels: usize) -> Result<Rotation> {
        match self.config.rotation {
            RotationChoice::OfficialHadamard => Rotation::official(channels, self.config.seed),
            RotationChoice::Given => {
                Err(KdError::MissingInput { loss: Self::ID, name: "rotation" })
            }
        }
    }

    /// Fits the transform from `stats` with the configured rotation.
    ///
    /// # Errors
    /// See [`Self::rotation`] and [`PhiSTransform::fit`].
    pub fn fit(&self, stats: &RunningStats) -> Result<PhiSTransform> {
        PhiSTransform::fit(stats, self.rotation(stats.channels())?)
    }

    /// Fits the transform from `stats` with the rotation given.
    ///
    /// # Errors
    /// See [`PhiSTransform::fit`].
    pub fn fit_with(&self, stats: &RunningStats, rotation: Rotation) -> Result<PhiSTransform> {
        PhiSTransform::fit(stats, rotation)
    }

    /// The loss of `student_features` against the standardised `teacher_features`.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the features are not both `[rows, C]` with the
    /// transform's `C`, or the mask is not `[rows]`.
    pub fn forward(
        &self,
        transform: &PhiSTransform,
        student_features: Tensor<2>,
        teacher_features: Tensor<2>,
        mask: Option<Tensor<1, Bool>>,
    ) -> Result<PhiSOutput> {
        if teacher_features.dims() != student_features.dims() {
            return Err(KdError::ShapeMismatch {
                what: "teacher_features vs student_features".into(),
                expected: student_features.dims().to_vec(),
                got: teacher_features.dims().to_vec(),
            });
        }
        let target = transform.standardize(teacher_features.detach())?.detach(); // [rows, C]
        let distance = self.distance.forward(student_features, target.clone(), mask)?;
        Ok(PhiSOutput { distance, teacher_standardized: target })
    }
}

/// A fitted PHI-S transform: the teacher statistics, their eigen-decomposition, the rotation
/// and the whitening matrices, all `f64` (matrices row-major `C × C`).
///
/// ```text
/// mean μ, covariance Σ = M/(n−1);  e, U = eigh(Σ), e ascending, e < 0 → 0
/// U's columns signed so each one's largest-|entry| is positive (lowest row on a tie)
/// φ = √mean(e),  α = 1/φ
/// whiten      W  = α H Uᵀ
/// inv_whiten  W⁻¹ = φ U Hᵀ
/// standardize       Y = (T − μ) Wᵀ
/// denormalize       T̂ = S W⁻ᵀ + μ
/// standardized_covariance = W Σ Wᵀ = H diag(e) Hᵀ / φ²
/// ```
///
/// Serde-serialisable (for checkpoints). Device methods compute in `f32` with the `f64`
/// matrices cast once; the `_host` methods stay in `f64`.
///
/// # Errors
/// [`PhiSTransform::fit`]: [`KdError::ShapeMismatch`] when the rotation's size differs from
/// the statistics'; [`KdError::InvalidStatistics`] with fewer than two rows or when every
/// eigenvalue is 0 (`φ = 0`: constant features).
///
/// Code: `get_phi_s_matrix` in <https://github.com/NVlabs/RADIO> `examples/common/phi_s.py`.
///
/// # Example
/// ```
/// use kd_losses::teachers::phi_s::{PhiSTransform, Rotation, RunningStats};
///
/// let x = [0.0, 0.0, 2.0, 1.0, 4.0, 0.0, 6.0, 3.0]; // four rows of two channels
/// let mut stats = RunningStats::new(2);
/// stats.update(&x)?;
/// let t = PhiSTransform::fit(&stats, Rotation::official(2, 0)?)?;
/// let y = t.standardize_host(&x)?;
/// let back = t.denormalize_host(&y)?;
/// assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-12));
/// let s = t.standardized_covariance(); // unit diagonal for a Hadamard H
/// assert!((s[0] - 1.0).abs() < 1e-12 && (s[3] - 1.0).abs() < 1e-12);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhiSTransform {
    channels: usize,
    count: u64,
    mean: Vec<f64>,
    covariance: Vec<f64>,
    eigenvalues: Vec<f64>,
    eigenvectors: Vec<f64>,
    rotation: Rotation,
    phi: f64,
    whiten: Vec<f64>,
    inv_whiten: Vec<f64>,
}

impl PhiSTransform {
    /// Fits the transform from running statistics and a rotation.
    ///
    /// # Errors
    /// See the type's docs.
    pub fn fit(stats: &RunningStats, rotation: Rotation) -> Result<Self> {
        let c = stats.channels();
        if rotation.channels() != c {
            return Err(KdError::ShapeMismatch {
                what: "rotation vs feature channels".into(),
                expected: vec![c, c],
                got: vec![rotation.channels(), rotation.channels()],
            });
        }
        let covariance = stats.covariance()?;
        let (eigenvalues, u) = sorted_eigen(&covariance, c)?;
        let phi = (eigenvalues.iter().sum::<f64>() / c as f64).sqrt();
        if !(phi.is_finite() && phi > 0.0) {
            return Err(KdError::InvalidStatistics {
                what: "PHI-S scale φ = √mean(eigenvalues)",
                reason: format!("needs a non-zero covariance, got φ = {phi}"),
            });
        }
        let h = rotation.matrix();
        let alpha = 1.0 / phi;
        let mut whiten = vec![0.0; c * c];
        let mut inv_whiten = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                // (H Uᵀ)_ij = Σ_k H_ik U_jk;  (U Hᵀ)_ij = Σ_k U_ik H_jk.
                let hu: f64 = (0..c).map(|k| h[i * c + k] * u[j * c + k]).sum();
                let uh: f64 = (0..c).map(|k| u[i * c + k] * h[j * c + k]).sum();
                whiten[i * c + j] = alpha * hu;
                inv_whiten[i * c + j] = phi * uh;
            }
        }
        Ok(Self {
            channels: c,
            count: stats.count(),
            mean: stats.mean().to_vec(),
            covariance,
            eigenvalues,
            eigenvectors: u,
            rotation,
            phi,
            whiten,
            inv_whiten,
        })
    }

    /// Number of channels `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Number of rows the statistics were fitted on.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean `μ`, length `C`.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Unbiased covariance `Σ`.
    pub fn covariance(&self) -> &[f64] {
        &self.covariance
    }

    /// Eigenvalues `e`, ascending, negatives clipped to 0.
    pub fn eigenvalues(&self) -> &[f64] {
        &self.eigenvalues
    }

    /// Eigenvectors `U` (column `k` belongs to `e_k`), sign-fixed.
    pub fn eigenvectors(&self) -> &[f64] {
        &self.eigenvectors
    }

    /// The rotation `H`.
    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    /// `φ = √mean(e)`.
    pub fn phi(&self) -> f64 {
        self.phi
    }

    /// `α = 1/φ`.
    pub fn alpha(&self) -> f64 {
        1.0 / self.phi
    }

    /// `W = α H Uᵀ`.
    pub fn whiten(&self) -> &[f64] {
        &self.whiten
    }

    /// `W⁻¹ = φ U Hᵀ`.
    pub fn inv_whiten(&self) -> &[f64] {
        &self.inv_whiten
    }

    /// `W Σ Wᵀ = H diag(e) Hᵀ / φ²` (unit diagonal for a Hadamard `H`).
    pub fn standardized_covariance(&self) -> Vec<f64> {
        let (c, h, e) = (self.channels, self.rotation.matrix(), &self.eigenvalues);
        let phi2 = self.phi * self.phi;
        let mut out = vec![0.0; c * c];
        for i in 0..c {
            for j in 0..c {
                out[i * c + j] =
                    (0..c).map(|k| h[i * c + k] * e[k] * h[j * c + k]).sum::<f64>() / phi2;
            }
        }
        out
    }

    /// `(T − μ) Wᵀ` of row-major `[M, C]` rows, in `f64`.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `rows.len()` is not a multiple of `C`.
    pub fn standardize_host(&self, rows: &[f64]) -> Result<Vec<f64>> {
        affine_rows(rows, self.channels, &self.mean, None, &self.whiten)
    }

    /// `S W⁻ᵀ + μ` of row-major `[M, C]` rows, in `f64`.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `rows.len()` is not a multiple of `C`.
    pub fn denormalize_host(&self, rows: &[f64]) -> Result<Vec<f64>> {
        affine_rows(rows, self.channels, &[], Some(&self.mean), &self.inv_whiten)
    }

    /// `(T − μ) Wᵀ` on the device of `teacher_features` (`[M, C]`, computed in `f32`).
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the tensor is not `[M, C]`.
    pub fn standardize(&self, teacher_features: Tensor<2>) -> Result<Tensor<2>> {
        let x = self.checked(teacher_features, "teacher_features")?;
        let device = x.device();
        let mean = row_vector(&self.mean, &device); // [1, C]
        let wt = transposed(&self.whiten, self.channels, &device); // [C, C]
        Ok(x.sub(mean).matmul(wt))
    }

    /// `S W⁻ᵀ + μ` on the device of `student_features` (`[M, C]`, `f32`, differentiable):
    /// the student's estimate of the teacher's original features.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the tensor is not `[M, C]`.
    pub fn denormalize(&self, student_features: Tensor<2>) -> Result<Tensor<2>> {
        let x = self.checked(student_features, "student_features")?;
        let device = x.device();
        let mean = row_vector(&self.mean, &device); // [1, C]
        let wt = transposed(&self.inv_whiten, self.channels, &device); // [C, C]
        Ok(x.matmul(wt).add(mean))
    }

    /// Casts to `f32` after checking the channel count.
    fn checked(&self, x: Tensor<2>, what: &str) -> Result<Tensor<2>> {
        let [m, c] = x.dims();
        if c != self.channels {
            return Err(KdError::ShapeMismatch {
                what: format!("{what} vs PHI-S channels"),
                expected: vec![m, self.channels],
                got: vec![m, c],
            });
        }
        Ok(to_f32(x))
    }
}

/// `out_r = W (x_r − sub) + add` for each row `x_r` of a row-major `[M, c]` slice (an empty
/// `sub` / `None` `add` is zero).
pub(crate) fn affine_rows(
    rows: &[f64],
    c: usize,
    sub: &[f64],
    add: Option<&[f64]>,
    w: &[f64],
) -> Result<Vec<f64>> {
    if c == 0 || !rows.len().is_multiple_of(c) {
        return Err(KdError::ShapeMismatch {
            what: "feature rows vs channels".into(),
            expected: vec![rows.len() / c.max(1), c],
            got: vec![rows.len()],
        });
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut centred = vec![0.0; c];
    for row in rows.chunks(c) {
        for j in 0..c {
            centred[j] = row[j] - sub.get(j).copied().unwrap_or(0.0);
        }
        for i in 0..c {
            let v: f64 = (0..c).map(|j| w[i * c + j] * centred[j]).sum();
            out.push(v + add.map_or(0.0, |a| a[i]));
        }
    }
    Ok(out)
}

/// `[1, C]` `f32` tensor of `v`.
pub(crate) fn row_vector(v: &[f64], device: &burn::tensor::Device) -> Tensor<2> {
    let data: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Tensor::from_data(TensorData::new(data, [1, v.len()]), f32_on(device))
}

/// `Wᵀ` of a row-major `c × c` matrix, as an `f32` tensor `[c, c]`.
pub(crate) fn transposed(w: &[f64], c: usize, device: &burn::tensor::Device) -> Tensor<2> {
    let data: Vec<f32> = (0..c * c).map(|k| w[(k % c) * c + k / c] as f32).collect();
    Tensor::from_data(TensorData::new(data, [c, c]), f32_on(device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Correlated deterministic rows `[n, c]`.
    fn rows(n: usize, c: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut out = Vec::new();
        for _ in 0..n {
            let z: Vec<f64> = (0..c).map(|_| next()).collect();
            for j in 0..c {
                // Channel j mixes z_j and z_{j+1} with growing scales, plus an offset.
                out.push((1.0 + j as f64) * z[j] + 0.5 * z[(j + 1) % c] + j as f64);
            }
        }
        out
    }

    fn fitted(c: usize) -> (PhiSTransform, Vec<f64>) {
        let x = rows(200, c, 3);
        let mut stats = RunningStats::new(c);
        stats.update(&x).unwrap();
        (PhiSTransform::fit(&stats, Rotation::official(c, 1).unwrap()).unwrap(), x)
    }

    #[test]
    fn hadamard_gives_unit_standardized_variance() {
        for c in [4, 8, 12, 20, 24, 28] {
            let (t, x) = fitted(c);
            let s = t.standardized_covariance();
            for i in 0..c {
                assert!((s[i * c + i] - 1.0).abs() < 1e-10, "C = {c}: {}", s[i * c + i]);
            }
            // Empirical covariance of the standardised fit rows agrees.
            let y = t.standardize_host(&x).unwrap();
            let mut st = RunningStats::new(c);
            st.update(&y).unwrap();
            let cov = st.covariance().unwrap();
            for (a, b) in cov.iter().zip(&s) {
                assert!((a - b).abs() < 1e-9, "C = {c}: {a} vs {b}");
            }
            assert!(st.mean().iter().all(|m| m.abs() < 1e-12));
        }
    }

    #[test]
    fn denormalize_inverts_standardize() {
        for c in [6, 8, 12] {
            let (t, x) = fitted(c);
            let back = t.denormalize_host(&t.standardize_host(&x).unwrap()).unwrap();
            for (a, b) in back.iter().zip(&x) {
                assert!((a - b).abs() < 1e-11, "C = {c}");
            }
            // W W⁻¹ = I.
            let (w, wi) = (t.whiten(), t.inv_whiten());
            for i in 0..c {
                for j in 0..c {
                    let v: f64 = (0..c).map(|k| w[i * c + k] * wi[k * c + j]).sum();
                    assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
                }
            }
            // Device (f32) path agrees with the host one.
            let device = Device::flex();
            let tx = Tensor::<2>::from_data(
                TensorData::new(x[..5 * c].to_vec(), [5, c]),
                (&device, burn::tensor::DType::F64),
            );
            let y = t.standardize(tx).unwrap();
            let back = stats::tensor_values(t.denormalize(y.clone()).unwrap());
            let y = stats::tensor_values(y);
            let yh = t.standardize_host(&x[..5 * c]).unwrap();
            for (a, b) in y.iter().zip(&yh) {
                assert!((a - b).abs() < 1e-4, "{a} {b}");
            }
            for (a, b) in back.iter().zip(&x[..5 * c]) {
                assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} {b}");
            }
        }
    }

    #[test]
    fn transform_serde_roundtrip_and_errors() {
        let (t, _) = fitted(4);
        // serde_json's default float parsing may be off by one ulp.
        let json = serde_json::to_string(&t).unwrap();
        let back: PhiSTransform = serde_json::from_str(&json).unwrap();
        assert_eq!(back.rotation(), t.rotation());
        assert_eq!((back.channels(), back.count()), (t.channels(), t.count()));
        let (x, y) = (back.standardize_host(t.mean()).unwrap(), vec![0.0; 4]);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-14), "{x:?}");
        for (a, b) in back
            .whiten()
            .iter()
            .zip(t.whiten())
            .chain(back.eigenvalues().iter().zip(t.eigenvalues()))
        {
            assert!((a - b).abs() <= 1e-15 * b.abs().max(1.0), "{a} {b}");
        }
        // Constant features: φ = 0.
        let mut s = RunningStats::new(2);
        s.update(&[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]).unwrap();
        let e = PhiSTransform::fit(&s, Rotation::official(2, 0).unwrap()).unwrap_err();
        assert!(matches!(e, KdError::InvalidStatistics { .. }), "{e}");
        // Rotation of the wrong size.
        assert!(PhiSTransform::fit(&s, Rotation::official(4, 0).unwrap()).is_err());
        assert!(t.standardize_host(&[1.0; 3]).is_err());
        let bad = Tensor::<2>::zeros([2, 3], &Device::flex());
        assert!(matches!(t.standardize(bad), Err(KdError::ShapeMismatch { .. })));
    }

    #[test]
    fn loss_on_standardized_targets() {
        let (t, x) = fitted(8);
        let device = Device::flex().autodiff();
        let phi_s = PhiSConfig::new().init().unwrap();
        let teacher = Tensor::<2>::from_data(
            TensorData::new(x[..16].to_vec(), [2, 8]),
            (&device, burn::tensor::DType::F64),
        );
        // Student = the exact standardised targets → zero loss and zero gradient.
        let y = t.standardize_host(&x[..16]).unwrap();
        let student = Tensor::<2>::from_data(
            TensorData::new(y.iter().map(|v| *v as f32).collect::<Vec<_>>(), [2, 8]),
            &device,
        )
        .require_grad();
        let out = phi_s.forward(&t, student.clone(), teacher.clone(), None).unwrap();
        assert!(out.distance.loss_mean.clone().into_scalar::<f32>().abs() < 1e-9);
        let g = stats::tensor_values(student.grad(&out.distance.loss_mean.backward()).unwrap());
        assert!(g.iter().all(|v| v.abs() < 1e-5));
        // Wrong student width.
        let bad = Tensor::<2>::zeros([2, 4], &device);
        assert!(phi_s.forward(&t, bad, teacher, None).is_err());
        // `given` needs an explicit rotation.
        let given = PhiSConfig::new().with_rotation(RotationChoice::Given).init().unwrap();
        let mut s = RunningStats::new(8);
        s.update(&x).unwrap();
        assert!(matches!(given.fit(&s), Err(KdError::MissingInput { name: "rotation", .. })));
        assert!(PhiSConfig::new().with_cos_weight(2.0).init().is_err());
    }

    #[test]
    fn golden_config_deserializes() {
        let c: PhiSConfig = serde_json::from_str(
            r#"{"loss": "mse", "smooth_l1_beta": 1.0, "cos_weight": 0.9, "cosine_eps": 1e-08,
                "covariance": "unbiased", "eigen_order": "ascending",
                "sign_convention": "max_abs_positive", "rotation": "official_hadamard"}"#,
        )
        .unwrap();
        assert_eq!(c, PhiSConfig::new());
        assert!(serde_json::from_str::<PhiSConfig>(r#"{"covariance": "biased"}"#).is_err());
    }
}
