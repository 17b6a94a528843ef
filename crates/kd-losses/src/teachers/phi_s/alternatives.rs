//! The feature normalisations PHI-S is compared against (paper section 2.2): raw features,
//! global and per-channel standardisation, PCA, ZCA and Hadamard (HCA) whitening.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{PhiSTransform, affine_rows, row_vector, transposed};
use crate::error::{KdError, Result};
use crate::logspace::to_f32;

/// Relative floor below which an eigenvalue (of `λ_max`) or a channel variance (of the largest)
/// makes a whitening or a standardisation undefined.
const EIGEN_FLOOR: f64 = 1e-10;

/// One of the compared normalisations (serde names = the golden files' `alternatives` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Raw teacher features (`W = I`, no centring): `baseline_mse`.
    #[serde(rename = "baseline_mse")]
    Baseline,
    /// `(t − μ_g)/σ_g` with scalars over all `N·C` fit entries (`σ_g` with ddof 1).
    GlobalStandardize,
    /// Per channel `(t_c − μ_c)/σ_c`, `σ_c = √Σ_cc`.
    Standardize,
    /// `W = Λ^(−1/2) Uᵀ`.
    PcaWhiten,
    /// `W = U Λ^(−1/2) Uᵀ`.
    Zca,
    /// `W = H Λ^(−1/2) Uᵀ` (Hadamard whitening).
    Hca,
}

impl Normalization {
    /// All six, in the paper's order.
    pub const ALL: [Normalization; 6] = [
        Self::Baseline,
        Self::GlobalStandardize,
        Self::Standardize,
        Self::PcaWhiten,
        Self::Zca,
        Self::Hca,
    ];

    /// The golden files' key: `baseline_mse`, `global_standardize`, `standardize`,
    /// `pca_whiten`, `zca`, `hca`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline_mse",
            Self::GlobalStandardize => "global_standardize",
            Self::Standardize => "standardize",
            Self::PcaWhiten => "pca_whiten",
            Self::Zca => "zca",
            Self::Hca => "hca",
        }
    }
}

/// A fitted normalisation from the paper's comparison, applied as `y = W (t − c)`.
///
/// ```text
/// baseline_mse        c = 0,          W = I
/// global_standardize  c = μ_g·1,      W = I/σ_g      μ_g, σ_g over all N·C fit entries (ddof 1)
/// standardize         c = μ,          W = diag(1/σ_c),  σ_c = √Σ_cc
/// pca_whiten          c = μ,          W = Λ^(−1/2) Uᵀ
/// zca                 c = μ,          W = U Λ^(−1/2) Uᵀ
/// hca                 c = μ,          W = H Λ^(−1/2) Uᵀ
/// ```
///
/// `U`, `Λ`, `H` are those of the [`PhiSTransform`] it is fitted from (same sign convention).
/// The paper writes "`W y − µ`"; the mean is subtracted before `W`, as every official code does.
///
/// # Errors
/// [`KdError::InvalidStatistics`] where the normalisation is undefined: `standardize` with a
/// zero-variance channel (`Σ_cc ≤ 1e-10·max Σ_cc`), the three whitenings with an eigenvalue
/// `≤ 1e-10·λ_max`, `global_standardize` with `σ_g = 0`. `apply*`: [`KdError::ShapeMismatch`].
///
/// Paper: PHI-S section 2.2, <https://arxiv.org/abs/2410.01680>.
///
/// # Example
/// ```
/// use kd_losses::teachers::phi_s::{FittedNormalization, Normalization, PhiSTransform, Rotation, RunningStats};
///
/// let x = [0.0, 1.0, 2.0, 1.0, 4.0, 4.0, 6.0, 2.0];
/// let mut stats = RunningStats::new(2);
/// stats.update(&x)?;
/// let phi_s = PhiSTransform::fit(&stats, Rotation::official(2, 0)?)?;
/// let zca = FittedNormalization::fit(Normalization::Zca, &phi_s)?;
/// let y = zca.apply_host(&x)?; // whitened: identity covariance
/// let mut s = RunningStats::new(2);
/// s.update(&y)?;
/// assert!((s.covariance()?[1]).abs() < 1e-12);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedNormalization {
    kind: Normalization,
    channels: usize,
    center: Vec<f64>,
    matrix: Vec<f64>,
    mu: Vec<f64>,
    sigma: Vec<f64>,
}

impl FittedNormalization {
    /// Fits `kind` from the statistics and eigen-decomposition of a PHI-S transform.
    ///
    /// # Errors
    /// See the type's docs.
    pub fn fit(kind: Normalization, t: &PhiSTransform) -> Result<Self> {
        let c = t.channels();
        let mean = t.mean().to_vec();
        let cov = t.covariance();
        let diag = |v: Vec<f64>| {
            let mut m = vec![0.0; c * c];
            v.iter().enumerate().for_each(|(i, x)| m[i * c + i] = *x);
            m
        };
        let undefined =
            |reason: String| Err(KdError::InvalidStatistics { what: "normalization", reason });
        let (center, matrix, mu, sigma) = match kind {
            Normalization::Baseline => (vec![0.0; c], diag(vec![1.0; c]), vec![], vec![]),
            Normalization::GlobalStandardize => {
                // Σ over all N·C entries of (x − μ_g)² = (N−1) Σ_c Σ_cc + N Σ_c (μ_c − μ_g)².
                let n = t.count() as f64;
                let mu_g = mean.iter().sum::<f64>() / c as f64;
                let within: f64 = (0..c).map(|i| cov[i * c + i]).sum::<f64>() * (n - 1.0);
                let between: f64 = mean.iter().map(|m| (m - mu_g) * (m - mu_g)).sum::<f64>() * n;
                let sigma_g = ((within + between) / (n * c as f64 - 1.0)).sqrt();
                if sigma_g.is_nan() || sigma_g <= 0.0 {
                    return undefined(format!("global_standardize needs σ_g > 0, got {sigma_g}"));
                }
                (vec![mu_g; c], diag(vec![1.0 / sigma_g; c]), vec![mu_g], vec![sigma_g])
            }
            Normalization::Standardize => {
                let var: Vec<f64> = (0..c).map(|i| cov[i * c + i]).collect();
                let max = var.iter().fold(0f64, |m, v| m.max(*v));
                if let Some(i) =
                    var.iter().position(|v| v.is_nan() || *v <= EIGEN_FLOOR * max || max <= 0.0)
                {
                    return undefined(format!(
                        "standardize: channel {i} has zero variance ({})",
                        var[i]
                    ));
                }
                let sigma: Vec<f64> = var.iter().map(|v| v.sqrt()).collect();
                (mean.clone(), diag(sigma.iter().map(|s| 1.0 / s).collect()), mean, sigma)
            }
            Normalization::PcaWhiten | Normalization::Zca | Normalization::Hca => {
                let e = t.eigenvalues();
                let (lo, hi) = (e[0], e[c - 1]);
                if hi.is_nan() || lo.is_nan() || hi <= 0.0 || lo <= EIGEN_FLOOR * hi {
                    return undefined(format!(
                        "{}: eigenvalue {lo:e} ≤ 1e-10·λ_max ({hi:e})",
                        kind.name()
                    ));
                }
                let u = t.eigenvectors();
                let h = t.rotation().matrix();
                let inv_sqrt: Vec<f64> = e.iter().map(|v| 1.0 / v.sqrt()).collect();
                let mut w = vec![0.0; c * c];
                for i in 0..c {
                    for j in 0..c {
                        w[i * c + j] = match kind {
                            // (Λ^(−1/2) Uᵀ)_ij = U_ji / √λ_i
                            Normalization::PcaWhiten => u[j * c + i] * inv_sqrt[i],
                            // (A Λ^(−1/2) Uᵀ)_ij = Σ_k A_ik U_jk / √λ_k, A = U or H
                            Normalization::Zca => {
                                (0..c).map(|k| u[i * c + k] * u[j * c + k] * inv_sqrt[k]).sum()
                            }
                            _ => (0..c).map(|k| h[i * c + k] * u[j * c + k] * inv_sqrt[k]).sum(),
                        };
                    }
                }
                (mean, w, vec![], vec![])
            }
        };
        Ok(Self { kind, channels: c, center, matrix, mu, sigma })
    }

    /// Which normalisation.
    pub fn kind(&self) -> Normalization {
        self.kind
    }

    /// The centre `c` subtracted before `W`, length `C`.
    pub fn center(&self) -> &[f64] {
        &self.center
    }

    /// `W`, row-major `C × C`.
    pub fn matrix(&self) -> &[f64] {
        &self.matrix
    }

    /// `μ_g` (one value) for `global_standardize`, `μ` (length `C`) for `standardize`,
    /// empty otherwise.
    pub fn mu(&self) -> &[f64] {
        &self.mu
    }

    /// `σ_g` (one value) for `global_standardize`, `σ` (length `C`) for `standardize`,
    /// empty otherwise.
    pub fn sigma(&self) -> &[f64] {
        &self.sigma
    }

    /// `W (t − c)` of row-major `[M, C]` rows, in `f64`.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `rows.len()` is not a multiple of `C`.
    pub fn apply_host(&self, rows: &[f64]) -> Result<Vec<f64>> {
        affine_rows(rows, self.channels, &self.center, None, &self.matrix)
    }

    /// `W (t − c)` of the rows of `features` (`[M, C]`, `f32` on its device).
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the tensor is not `[M, C]`.
    pub fn apply(&self, features: Tensor<2>) -> Result<Tensor<2>> {
        let [m, c] = features.dims();
        if c != self.channels {
            return Err(KdError::ShapeMismatch {
                what: "features vs normalization channels".into(),
                expected: vec![m, self.channels],
                got: vec![m, c],
            });
        }
        let x = to_f32(features);
        let device = x.device();
        let center = row_vector(&self.center, &device); // [1, C]
        Ok(x.sub(center).matmul(transposed(&self.matrix, c, &device)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Rotation, RunningStats};
    use super::*;

    fn transform(x: &[f64], c: usize) -> PhiSTransform {
        let mut s = RunningStats::new(c);
        s.update(x).unwrap();
        PhiSTransform::fit(&s, Rotation::official(c, 0).unwrap()).unwrap()
    }

    #[test]
    fn whitenings_give_identity_covariance() {
        let x: Vec<f64> = (0..120)
            .map(|k| ((k * 37 % 17) as f64) * (1.0 + (k % 4) as f64) + (k % 3) as f64)
            .collect();
        let t = transform(&x, 4);
        for kind in [Normalization::PcaWhiten, Normalization::Zca, Normalization::Hca] {
            let y = FittedNormalization::fit(kind, &t).unwrap().apply_host(&x).unwrap();
            let mut s = RunningStats::new(4);
            s.update(&y).unwrap();
            for (k, v) in s.covariance().unwrap().iter().enumerate() {
                let want = if k % 5 == 0 { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-10, "{kind:?}: {v}");
            }
        }
        let st = FittedNormalization::fit(Normalization::Standardize, &t).unwrap();
        let y = st.apply_host(&x).unwrap();
        let mut s = RunningStats::new(4);
        s.update(&y).unwrap();
        let cov = s.covariance().unwrap();
        assert!((0..4).all(|i| (cov[i * 5] - 1.0).abs() < 1e-12));
    }

    #[test]
    fn global_standardize_uses_all_entries() {
        // Rows (0, 2), (2, 6): entries 0, 2, 2, 6 → μ_g = 2.5, σ_g² = (6.25+0.25+0.25+12.25)/3.
        let t = transform(&[0.0, 2.0, 2.0, 6.0], 2);
        let g = FittedNormalization::fit(Normalization::GlobalStandardize, &t).unwrap();
        assert!((g.mu()[0] - 2.5).abs() < 1e-15);
        assert!((g.sigma()[0] - (19.0f64 / 3.0).sqrt()).abs() < 1e-14);
        let b = FittedNormalization::fit(Normalization::Baseline, &t).unwrap();
        assert_eq!(b.apply_host(&[1.0, -2.0]).unwrap(), vec![1.0, -2.0]);
    }

    #[test]
    fn undefined_where_the_statistics_are_degenerate() {
        // Channel 0 constant: standardize and the whitenings are undefined, the rest defined.
        let x = [2.0, 0.0, 1.0, 2.0, 1.0, 3.0, 2.0, 4.0, 0.5];
        let t = transform(&x, 3);
        for kind in Normalization::ALL {
            let r = FittedNormalization::fit(kind, &t);
            let defined =
                matches!(kind, Normalization::Baseline | Normalization::GlobalStandardize);
            assert_eq!(r.is_ok(), defined, "{kind:?}");
            if let Err(e) = r {
                assert!(matches!(e, KdError::InvalidStatistics { .. }), "{e}");
            }
        }
    }
}
