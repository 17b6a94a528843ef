//! Running mean and covariance of teacher features (f64, mergeable), the refresh schedule of a
//! fitted transform, and the sorted, sign-fixed symmetric eigen-decomposition.

use burn::tensor::{Bool, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};

use crate::error::{KdError, Result};

/// Running count, mean and co-moment of feature rows, in `f64`.
///
/// ```text
/// batch b:   n_b, μ_b = Σ x / n_b,  M_b = Σ (x − μ_b)(x − μ_b)ᵀ        (two passes)
/// merge:     n = n_a + n_b,  δ = μ_b − μ_a
///            μ = μ_a + δ·n_b/n,  M = M_a + M_b + δδᵀ·n_a n_b / n    (Chan et al.)
/// covariance = M / (n − 1)                                           (unbiased, = torch.cov)
/// ```
///
/// The merge is exact in real arithmetic, so the batch order changes the result only by
/// rounding; one batch gives exactly the two-pass statistics. Serde-serialisable, to be stored
/// in checkpoints. This is what NVIDIA TAO's `WhitenNormState` accumulates, here in closed form.
///
/// # Errors
/// [`KdError::ShapeMismatch`] when a batch is not a whole number of `C`-wide rows;
/// [`KdError::InvalidStatistics`] on a non-finite feature or (for [`Self::covariance`]) fewer
/// than two rows.
///
/// # Example
/// ```
/// use kd_losses::teachers::phi_s::RunningStats;
///
/// let mut stats = RunningStats::new(2);
/// stats.update(&[1.0f32, 0.0, 3.0, 2.0])?; // two rows
/// stats.update(&[5.0f64, 4.0])?;           // a third
/// assert_eq!(stats.count(), 3);
/// assert_eq!(stats.mean(), &[3.0, 2.0]);
/// assert_eq!(stats.covariance()?, vec![4.0, 4.0, 4.0, 4.0]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    channels: usize,
    count: u64,
    mean: Vec<f64>,
    comoment: Vec<f64>,
}

impl RunningStats {
    /// Empty statistics over `channels` features.
    pub fn new(channels: usize) -> Self {
        Self {
            channels,
            count: 0,
            mean: vec![0.0; channels],
            comoment: vec![0.0; channels * channels],
        }
    }

    /// Number of features `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Number of rows seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean of the rows seen. Length `C` (zeros when empty).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// Co-moment `M = Σ (x − μ)(x − μ)ᵀ`, row-major `C × C`.
    pub fn comoment(&self) -> &[f64] {
        &self.comoment
    }

    /// Unbiased covariance `M / (n − 1)`, row-major `C × C`.
    ///
    /// # Errors
    /// [`KdError::InvalidStatistics`] with fewer than two rows.
    pub fn covariance(&self) -> Result<Vec<f64>> {
        if self.count < 2 {
            return Err(KdError::InvalidStatistics {
                what: "covariance",
                reason: format!("needs at least 2 rows, got {}", self.count),
            });
        }
        let d = (self.count - 1) as f64;
        Ok(self.comoment.iter().map(|m| m / d).collect())
    }

    /// Forgets every row.
    pub fn reset(&mut self) {
        *self = Self::new(self.channels);
    }

    /// Adds a batch of rows, row-major `[n, C]` (`f32` or `f64`).
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `rows.len()` is not a multiple of `C`;
    /// [`KdError::InvalidStatistics`] when a value is not finite (nothing is added then).
    pub fn update<T: Copy + Into<f64>>(&mut self, rows: &[T]) -> Result<()> {
        let c = self.channels;
        if c == 0 || !rows.len().is_multiple_of(c) {
            return Err(KdError::ShapeMismatch {
                what: "feature rows vs channels".into(),
                expected: vec![rows.len() / c.max(1), c],
                got: vec![rows.len()],
            });
        }
        let n = rows.len() / c;
        if n == 0 {
            return Ok(());
        }
        let x: Vec<f64> = rows.iter().map(|&v| v.into()).collect();
        if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
            return Err(KdError::InvalidStatistics {
                what: "feature rows",
                reason: format!("every value must be finite, got {bad}"),
            });
        }
        // Two passes over the batch: its mean, then its centred co-moment.
        let mut mean = vec![0.0; c];
        for row in x.chunks(c) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut comoment = vec![0.0; c * c];
        let mut centred = vec![0.0; c];
        for row in x.chunks(c) {
            centred.iter_mut().zip(row.iter().zip(&mean)).for_each(|(d, (v, m))| *d = v - m);
            for i in 0..c {
                let di = centred[i];
                for j in i..c {
                    comoment[i * c + j] += di * centred[j];
                }
            }
        }
        mirror_upper(&mut comoment, c);
        self.merge(&Self { channels: c, count: n as u64, mean, comoment })
    }

    /// Adds the rows of a `[n, C]` tensor (read to the host as `f64`); with a `mask` `[n]`,
    /// only the rows marked true.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the tensor is not `[n, C]` or the mask not `[n]`; see
    /// [`Self::update`].
    pub fn update_tensor(
        &mut self,
        features: Tensor<2>,
        mask: Option<Tensor<1, Bool>>,
    ) -> Result<()> {
        let [n, c] = features.dims();
        if c != self.channels {
            return Err(KdError::ShapeMismatch {
                what: "teacher features vs statistics channels".into(),
                expected: vec![n, self.channels],
                got: vec![n, c],
            });
        }
        let values = tensor_values(features);
        match mask {
            None => self.update(&values),
            Some(m) => {
                if m.dims() != [n] {
                    return Err(KdError::ShapeMismatch {
                        what: "mask vs feature rows".into(),
                        expected: vec![n],
                        got: m.dims().to_vec(),
                    });
                }
                let keep: Vec<bool> = m
                    .int()
                    .into_data()
                    .convert::<i64>()
                    .try_to_vec::<i64>()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| k != 0)
                    .collect();
                let rows: Vec<f64> = values
                    .chunks(c.max(1))
                    .zip(keep)
                    .filter(|(_, k)| *k)
                    .flat_map(|(r, _)| r.iter().copied())
                    .collect();
                self.update(&rows)
            }
        }
    }

    /// Merges another set of statistics over the same channels (Chan et al.'s pairwise update).
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the channel counts differ.
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        if other.channels != self.channels {
            return Err(KdError::ShapeMismatch {
                what: "merged statistics channels".into(),
                expected: vec![self.channels],
                got: vec![other.channels],
            });
        }
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 {
            *self = other.clone();
            return Ok(());
        }
        let c = self.channels;
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta: Vec<f64> = other.mean.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let w = na * nb / n;
        for i in 0..c {
            for j in 0..c {
                self.comoment[i * c + j] += other.comoment[i * c + j] + delta[i] * delta[j] * w;
            }
        }
        self.mean.iter_mut().zip(&delta).for_each(|(m, d)| *m += d * nb / n);
        self.count += other.count;
        Ok(())
    }
}

/// When to re-fit a PHI-S transform from its running statistics: every `every` updates, and
/// never after `freeze_after` updates (TAO's `update_period`, default 100).
///
/// ```text
/// refit after update k (k = 1, 2, …)  ⇔  k % every == 0  and  k ≤ freeze_after
/// ```
///
/// # Example
/// ```
/// use kd_losses::teachers::phi_s::RefreshSchedule;
///
/// let s = RefreshSchedule { every: 10, freeze_after: Some(30) };
/// assert!(s.should_refit(10) && s.should_refit(30));
/// assert!(!s.should_refit(15) && !s.should_refit(40));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshSchedule {
    /// Re-fit every this many updates (`0` = never re-fit).
    pub every: u64,
    /// Freeze the transform after this many updates (`None` = never freeze).
    pub freeze_after: Option<u64>,
}

impl Default for RefreshSchedule {
    fn default() -> Self {
        Self { every: 100, freeze_after: None }
    }
}

impl RefreshSchedule {
    /// Whether to re-fit right after the `updates`-th update.
    pub fn should_refit(&self, updates: u64) -> bool {
        self.every > 0
            && updates > 0
            && updates.is_multiple_of(self.every)
            && self.freeze_after.is_none_or(|f| updates <= f)
    }
}

/// Eigenvalues ascending (negatives clipped to 0) and eigenvectors as the columns of a
/// row-major `C × C` matrix, each column multiplied by the sign of its largest-magnitude entry
/// (lowest row index on an exact tie).
pub(crate) fn sorted_eigen(cov: &[f64], c: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if c == 1 {
        return Ok((vec![cov[0].max(0.0)], vec![1.0]));
    }
    // Symmetrised from the upper triangle, so the lower one read by nalgebra is exact.
    let m = DMatrix::from_fn(c, c, |i, j| if i <= j { cov[i * c + j] } else { cov[j * c + i] });
    let eig = SymmetricEigen::try_new(m, f64::EPSILON, 1000 * c).ok_or_else(|| {
        KdError::InvalidStatistics {
            what: "eigen-decomposition",
            reason: "the symmetric QR iteration did not converge".into(),
        }
    })?;
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    let values = order.iter().map(|&k| eig.eigenvalues[k].max(0.0)).collect();
    let mut vectors = vec![0.0; c * c];
    for (col, &k) in order.iter().enumerate() {
        let v = eig.eigenvectors.column(k);
        let mut best = 0;
        for i in 1..c {
            if v[i].abs() > v[best].abs() {
                best = i;
            }
        }
        let sign = if v[best] < 0.0 { -1.0 } else { 1.0 };
        for i in 0..c {
            vectors[i * c + col] = sign * v[i];
        }
    }
    Ok((values, vectors))
}

/// Copies the upper triangle of a row-major `c × c` matrix onto its lower one.
fn mirror_upper(m: &mut [f64], c: usize) {
    for i in 0..c {
        for j in 0..i {
            m[i * c + j] = m[j * c + i];
        }
    }
}

/// The values of a float tensor of any dtype, as `f64`.
pub(crate) fn tensor_values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random rows.
    fn rows(n: usize, c: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n * c)
            .map(|k| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * (1.0 + (k % c) as f64) + 3.0
            })
            .collect()
    }

    #[test]
    fn batches_in_any_order_equal_one_shot() {
        let (c, x) = (5, rows(37, 5, 1));
        let mut one = RunningStats::new(c);
        one.update(&x).unwrap();
        let mut parts = RunningStats::new(c);
        for chunk in [&x[..3 * c], &x[3 * c..20 * c], &x[20 * c..21 * c], &x[21 * c..]] {
            parts.update(chunk).unwrap();
        }
        let mut rev = RunningStats::new(c);
        for chunk in x.chunks(7 * c).rev() {
            rev.update(chunk).unwrap();
        }
        for s in [&parts, &rev] {
            assert_eq!(s.count(), 37);
            for (a, b) in s.mean().iter().zip(one.mean()) {
                assert!((a - b).abs() < 1e-13, "{a} {b}");
            }
            for (a, b) in s.covariance().unwrap().iter().zip(one.covariance().unwrap()) {
                assert!((a - b).abs() < 1e-12, "{a} {b}");
            }
        }
        // Two-pass reference.
        let mean: Vec<f64> =
            (0..c).map(|j| x.iter().skip(j).step_by(c).sum::<f64>() / 37.0).collect();
        let cov01: f64 =
            x.chunks(c).map(|r| (r[0] - mean[0]) * (r[1] - mean[1])).sum::<f64>() / 36.0;
        assert!((one.covariance().unwrap()[1] - cov01).abs() < 1e-14);
    }

    #[test]
    fn f32_rows_tensor_rows_and_serde_roundtrip() {
        use burn::tensor::{Device, TensorData};
        let x32: Vec<f32> = vec![1.0, 2.0, 0.5, -1.0, 3.0, 0.0];
        let mut a = RunningStats::new(2);
        a.update(&x32).unwrap();
        let mut b = RunningStats::new(2);
        let t = Tensor::<2>::from_data(TensorData::new(x32.clone(), [3, 2]), &Device::flex());
        b.update_tensor(t.clone(), None).unwrap();
        assert_eq!(a, b);
        let m = Tensor::<1, Bool>::from_data(
            TensorData::new(vec![true, false, true], [3]),
            &Device::flex(),
        );
        let mut c = RunningStats::new(2);
        c.update_tensor(t, Some(m)).unwrap();
        assert_eq!(c.count(), 2);
        assert_eq!(c.mean(), &[2.0, 1.0]);
        // serde_json's default float parsing may be off by one ulp.
        let json = serde_json::to_string(&a).unwrap();
        let back: RunningStats = serde_json::from_str(&json).unwrap();
        assert_eq!((back.channels(), back.count()), (2, 3));
        let pairs =
            back.mean().iter().zip(a.mean()).chain(back.comoment().iter().zip(a.comoment()));
        for (x, y) in pairs {
            assert!((x - y).abs() <= 1e-15 * y.abs().max(1.0), "{x} {y}");
        }
        a.reset();
        assert_eq!(a, RunningStats::new(2));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut s = RunningStats::new(3);
        assert!(matches!(s.update(&[1.0, 2.0]), Err(KdError::ShapeMismatch { .. })));
        assert!(matches!(s.update(&[1.0, f64::NAN, 0.0]), Err(KdError::InvalidStatistics { .. })));
        assert_eq!(s.count(), 0);
        s.update(&[1.0, 2.0, 3.0]).unwrap();
        assert!(matches!(s.covariance(), Err(KdError::InvalidStatistics { .. })));
        assert!(s.merge(&RunningStats::new(2)).is_err());
    }

    #[test]
    fn eigen_is_sorted_and_sign_fixed() {
        // [[2, 1], [1, 2]]: eigenvalues 1, 3; vectors (1, −1)/√2 and (1, 1)/√2, where the
        // tie between |entries| goes to row 0 (made positive).
        let (e, u) = sorted_eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        assert!((e[0] - 1.0).abs() < 1e-14 && (e[1] - 3.0).abs() < 1e-14, "{e:?}");
        let r = 0.5f64.sqrt();
        for (a, b) in u.iter().zip([r, r, -r, r]) {
            assert!((a - b).abs() < 1e-14, "{u:?}");
        }
        // A negative (rounding) eigenvalue is clipped to 0; max-magnitude entry made positive.
        let (e, u) = sorted_eigen(&[-1e-18, 0.0, 0.0, 4.0], 2).unwrap();
        assert_eq!(e, vec![0.0, 4.0]);
        assert_eq!(u, vec![1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn refresh_schedule() {
        let s = RefreshSchedule::default();
        assert!(!s.should_refit(0) && !s.should_refit(99) && s.should_refit(200));
        assert!(!RefreshSchedule { every: 0, freeze_after: None }.should_refit(5));
    }
}
