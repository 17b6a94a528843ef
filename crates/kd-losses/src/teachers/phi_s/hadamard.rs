//! The orthogonal rotation `H` of PHI-S: normalised Hadamard matrices (Sylvester, Paley I,
//! Paley II and their Kronecker products, searched as the official code does), the random
//! orthogonal fallback, and a user-given rotation.

use std::fmt;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::error::{KdError, Result};
use crate::teachers::rng::NoiseRng;

/// How a [`Rotation`] was built; its `Display` is the golden files' `hadamard_construction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HadamardConstruction {
    /// Sylvester's doubling `A_2m = [[A, A], [A, −A]]` (`C` a power of two): `sylvester`.
    Sylvester,
    /// `kron(Sylvester(s), Paley(p))` with `s·p = C`; `s = 1` is the Paley matrix alone:
    /// `paley{kind}_{p}` or `sylvester{s}_x_paley{kind}_{p}`.
    Paley {
        /// Size of the Sylvester factor (a power of two, 1 for none).
        sylvester: usize,
        /// Paley construction 1 or 2.
        kind: u8,
        /// Size of the Paley factor.
        size: usize,
    },
    /// Random orthogonal matrix (QR of a seeded random ±1 matrix): `bernoulli`. Not a
    /// Hadamard matrix: the standardised covariance loses its unit diagonal.
    Bernoulli {
        /// The seed it was drawn with.
        seed: u64,
    },
    /// A rotation passed by the user: `given`.
    Given,
}

impl fmt::Display for HadamardConstruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sylvester => write!(f, "sylvester"),
            Self::Paley { sylvester: 1, kind, size } => write!(f, "paley{kind}_{size}"),
            Self::Paley { sylvester, kind, size } => {
                write!(f, "sylvester{sylvester}_x_paley{kind}_{size}")
            }
            Self::Bernoulli { .. } => write!(f, "bernoulli"),
            Self::Given => write!(f, "given"),
        }
    }
}

/// An orthogonal `C × C` matrix `H` (`H Hᵀ = I`), row-major, with how it was built.
///
/// ```text
/// official (C > 0):  C = 2^k                 → Sylvester, rows / √C
///                    C % 4 ≠ 0 (and C > 2)    → random orthogonal (Bernoulli + QR)
///                    else, s = 2^i for i = n₂−1 … 0, p = C/s:
///                      p−1 prime ≡ 3 (mod 4)    → kron(Sylvester(s), Paley I(p))
///                      p/2−1 prime ≡ 1 (mod 4)  → kron(Sylvester(s), Paley II(p))
///                    none applies (C = 52, 92, 100, 116, …) → random orthogonal
/// ```
///
/// The random fallback draws a ±1 matrix from a SplitMix64 stream of `seed`, takes `Q` of its
/// QR decomposition, negates the columns whose diagonal entry is not positive and transposes,
/// as the official `get_bernoulli_matrix` does (with its own RNG, so the values differ). It is
/// orthogonal but **not** a Hadamard matrix: PHI-S then loses its equal-variance property.
///
/// # Errors
/// [`KdError::InvalidHyperparameter`] for `C = 0`; [`Rotation::given`]:
/// [`KdError::ShapeMismatch`] or [`KdError::InvalidHyperparameter`] when the matrix is not
/// `C × C` orthogonal.
///
/// Code: `NVlabs/RADIO` `examples/common/hadamard.py`, <https://github.com/NVlabs/RADIO>.
///
/// # Example
/// ```
/// use kd_losses::teachers::phi_s::Rotation;
///
/// let h = Rotation::official(12, 0)?;
/// assert_eq!(h.construction().to_string(), "paley1_12");
/// assert!((h.matrix()[0].abs() - 1.0 / 12f64.sqrt()).abs() < 1e-15);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rotation {
    channels: usize,
    construction: HadamardConstruction,
    matrix: Vec<f64>,
}

impl Rotation {
    /// The official construction for `channels` features (`seed` only feeds the random
    /// fallback).
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `channels == 0`.
    pub fn official(channels: usize, seed: u64) -> Result<Self> {
        if channels == 0 {
            return Err(KdError::InvalidHyperparameter {
                loss: super::PhiS::ID,
                name: "channels",
                expected: "at least 1 feature channel",
                got: 0.0,
            });
        }
        let (construction, raw) = match official_raw(channels) {
            Some(found) => found,
            None => return Ok(Self::bernoulli(channels, seed)),
        };
        Ok(Self::from_raw(channels, construction, raw))
    }

    /// The random orthogonal fallback for `channels` features, drawn from `seed`.
    pub fn bernoulli(channels: usize, seed: u64) -> Self {
        let mut rng = NoiseRng::new(seed);
        let a = DMatrix::from_fn(channels, channels, |_, _| {
            if rng.next_u64() >> 63 == 1 { 1.0 } else { -1.0 }
        });
        let q = a.qr().q();
        // Columns with a non-positive diagonal entry negated, then transposed.
        let mut m = vec![0.0; channels * channels];
        for j in 0..channels {
            let flip = if q[(j, j)] > 0.0 { 1.0 } else { -1.0 };
            for i in 0..channels {
                m[j * channels + i] = flip * q[(i, j)]; // row j of Qᵀ
            }
        }
        Self::from_raw(channels, HadamardConstruction::Bernoulli { seed }, m)
    }

    /// A user-given rotation (row-major `channels × channels`), used as is.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `matrix.len() != channels²`;
    /// [`KdError::InvalidHyperparameter`] (`rotation`) when it is not finite or
    /// `max |R Rᵀ − I| > 1e-6`.
    pub fn given(matrix: Vec<f64>, channels: usize) -> Result<Self> {
        if matrix.len() != channels * channels || channels == 0 {
            return Err(KdError::ShapeMismatch {
                what: "rotation".into(),
                expected: vec![channels, channels],
                got: vec![matrix.len()],
            });
        }
        let err = orthogonality_error(&matrix, channels);
        if !err.is_finite() || err > 1e-6 {
            return Err(KdError::InvalidHyperparameter {
                loss: super::PhiS::ID,
                name: "rotation",
                expected: "an orthogonal matrix (max |R Rᵀ − I| ≤ 1e-6)",
                got: err,
            });
        }
        Ok(Self { channels, construction: HadamardConstruction::Given, matrix })
    }

    /// Divides each row of `raw` by its norm.
    fn from_raw(channels: usize, construction: HadamardConstruction, mut raw: Vec<f64>) -> Self {
        for row in raw.chunks_mut(channels) {
            let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        Self { channels, construction, matrix: raw }
    }

    /// Number of channels `C`.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// How it was built.
    pub fn construction(&self) -> HadamardConstruction {
        self.construction
    }

    /// `H`, row-major `C × C`.
    pub fn matrix(&self) -> &[f64] {
        &self.matrix
    }

    /// Whether `H` is a (normalised) Hadamard matrix: every entry `±1/√C`.
    pub fn is_hadamard(&self) -> bool {
        let v = 1.0 / (self.channels as f64).sqrt();
        self.matrix.iter().all(|x| (x.abs() - v).abs() <= 1e-12)
    }
}

/// `max |M Mᵀ − I|` of a row-major `c × c` matrix.
pub(crate) fn orthogonality_error(m: &[f64], c: usize) -> f64 {
    let mut worst = 0f64;
    for i in 0..c {
        for j in 0..c {
            let dot: f64 = (0..c).map(|k| m[i * c + k] * m[j * c + k]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            worst = worst.max((dot - want).abs());
            if dot.is_nan() {
                return f64::NAN;
            }
        }
    }
    worst
}

/// The official ±1 Hadamard matrix (row-major) and its construction, or `None` where the
/// official code falls back to a random matrix.
pub(crate) fn official_raw(c: usize) -> Option<(HadamardConstruction, Vec<f64>)> {
    if c == 0 || (c > 2 && !c.is_multiple_of(4)) {
        return None;
    }
    if c.is_power_of_two() {
        return Some((HadamardConstruction::Sylvester, sylvester(c)));
    }
    let n2 = c.trailing_zeros();
    // Smallest Paley factor first: s = 2^(n₂−1), …, 1.
    for i in (0..n2).rev() {
        let s = 1usize << i;
        let p = c / s;
        let (kind, paley) = if is_paley(p.saturating_sub(1), 3) {
            (1, paley1(p))
        } else if is_paley((p / 2).saturating_sub(1), 1) {
            (2, paley2(p))
        } else {
            continue;
        };
        let construction = HadamardConstruction::Paley { sylvester: s, kind, size: p };
        let h = if s > 1 { kron(&sylvester(s), s, &paley, p) } else { paley };
        return Some((construction, h));
    }
    None
}

/// Sylvester's ±1 Hadamard matrix of size `n` (a power of two), row-major.
pub(crate) fn sylvester(n: usize) -> Vec<f64> {
    assert!(n.is_power_of_two(), "Sylvester needs a power of two, got {n}");
    // Entry (i, j) = (−1)^popcount(i & j): the doubling [[A, A], [A, −A]] unrolled.
    (0..n * n)
        .map(|k| if ((k / n) & (k % n)).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 })
        .collect()
}

/// Paley construction I of size `p` (`q = p − 1` prime, `q ≡ 3 mod 4`):
/// `H = I + [[0, 1ᵀ], [−1, Q]]`, `Q_ij = χ(i − j)`.
pub(crate) fn paley1(p: usize) -> Vec<f64> {
    let q = p - 1;
    let chi = quadratic_character(q);
    let mut h = vec![0.0; p * p];
    for i in 0..p {
        for j in 0..p {
            let v = match (i, j) {
                (0, _) => 1.0,
                (_, 0) => -1.0,
                _ => chi[(i + q - j) % q] + if i == j { 1.0 } else { 0.0 },
            };
            h[i * p + j] = v;
        }
    }
    h
}

/// Paley construction II of size `p` (`q = p/2 − 1` prime, `q ≡ 1 mod 4`): each entry of
/// `S = [[0, 1ᵀ], [1, Q]]` becomes a 2×2 block, `0 → [[1, −1], [−1, −1]]`,
/// `±1 → ±[[1, 1], [1, −1]]`.
pub(crate) fn paley2(p: usize) -> Vec<f64> {
    let q = p / 2 - 1;
    let chi = quadratic_character(q);
    let n = q + 1;
    let mut h = vec![0.0; p * p];
    for i in 0..n {
        for j in 0..n {
            let s = match (i, j) {
                (0, 0) => 0.0,
                (0, _) | (_, 0) => 1.0,
                _ => chi[(i + q - j) % q],
            };
            let block: [[f64; 2]; 2] =
                if s == 0.0 { [[1.0, -1.0], [-1.0, -1.0]] } else { [[s, s], [s, -s]] };
            for (a, row) in block.iter().enumerate() {
                for (b, v) in row.iter().enumerate() {
                    h[(2 * i + a) * p + 2 * j + b] = *v;
                }
            }
        }
    }
    h
}

/// `kron(A, B)` of a row-major `n × n` and an `m × m` matrix.
fn kron(a: &[f64], n: usize, b: &[f64], m: usize) -> Vec<f64> {
    let size = n * m;
    let mut out = vec![0.0; size * size];
    for i in 0..size {
        for j in 0..size {
            out[i * size + j] = a[(i / m) * n + j / m] * b[(i % m) * m + j % m];
        }
    }
    out
}

/// `χ(a)` for `a = 0 … q−1`: 0 at 0, 1 for a non-zero square mod `q`, −1 otherwise.
fn quadratic_character(q: usize) -> Vec<f64> {
    let mut chi = vec![-1.0; q];
    chi[0] = 0.0;
    for k in 1..q {
        chi[(k * k) % q] = 1.0;
    }
    chi
}

/// The official test: `q` prime and `q^z mod 4 = modulo` for some `z ∈ 1..=10`.
fn is_paley(q: usize, modulo: usize) -> bool {
    if !is_prime(q) {
        return false;
    }
    let mut qz = 1usize;
    (1..=10).any(|_| {
        qz = (qz * (q % 4)) % 4;
        qz == modulo
    })
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw ±1 matrix: entries ±1 and `H Hᵀ = C·I` exactly.
    fn assert_raw_hadamard(h: &[f64], c: usize) {
        assert!(h.iter().all(|x| *x == 1.0 || *x == -1.0), "C = {c}: not ±1");
        for i in 0..c {
            for j in 0..c {
                let dot: f64 = (0..c).map(|k| h[i * c + k] * h[j * c + k]).sum();
                assert_eq!(dot, if i == j { c as f64 } else { 0.0 }, "C = {c}, rows {i}, {j}");
            }
        }
    }

    #[test]
    fn every_construction_kind_is_hadamard() {
        let sizes = [
            1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 60, 64, 68, 72, 76, 80, 84, 88,
            96, 108, 120, 124, 128, 136, 144, 148, 164, 200, 256,
        ];
        for c in sizes {
            let (kind, raw) = official_raw(c).unwrap_or_else(|| panic!("C = {c}: no Hadamard"));
            assert_raw_hadamard(&raw, c);
            let r = Rotation::official(c, 0).unwrap();
            assert_eq!(r.construction(), kind);
            assert!(r.is_hadamard());
            assert!(orthogonality_error(r.matrix(), c) < 1e-12, "C = {c}");
        }
    }

    #[test]
    fn construction_names_follow_the_golden_files() {
        let name = |c| Rotation::official(c, 0).unwrap().construction().to_string();
        assert_eq!(name(8), "sylvester");
        assert_eq!(name(12), "paley1_12");
        assert_eq!(name(28), "paley2_28");
        assert_eq!(name(24), "sylvester2_x_paley1_12");
        assert_eq!(name(36), "paley2_36");
        assert_eq!(name(48), "sylvester4_x_paley1_12");
        assert_eq!(name(6), "bernoulli");
        for c in [52, 92, 100, 116, 172, 184, 232] {
            assert_eq!(name(c), "bernoulli", "C = {c}");
        }
    }

    #[test]
    fn sylvester_is_the_doubling() {
        let h4 = sylvester(4);
        #[rustfmt::skip]
        let want = [1.0, 1.0, 1.0, 1.0,  1.0, -1.0, 1.0, -1.0,  1.0, 1.0, -1.0, -1.0,  1.0, -1.0, -1.0, 1.0];
        assert_eq!(h4, want);
    }

    #[test]
    fn bernoulli_fallback_is_orthogonal_seeded_and_not_hadamard() {
        for c in [3, 6, 10, 52] {
            let a = Rotation::official(c, 7).unwrap();
            assert!(orthogonality_error(a.matrix(), c) < 1e-12, "C = {c}");
            assert!(!a.is_hadamard());
            assert_eq!(a, Rotation::official(c, 7).unwrap());
            assert_ne!(a.matrix(), Rotation::official(c, 8).unwrap().matrix());
            // Qᵀ with Q's diagonal made positive: H's diagonal is positive.
            assert!((0..c).all(|i| a.matrix()[i * c + i] > 0.0));
        }
    }

    #[test]
    fn given_rotation_is_checked() {
        assert!(Rotation::given(vec![0.0, 1.0, 1.0, 0.0], 2).is_ok());
        let e = Rotation::given(vec![1.0, 1.0, 0.0, 1.0], 2).unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: "rotation", .. }), "{e}");
        assert!(Rotation::given(vec![1.0; 3], 2).is_err());
        assert!(Rotation::official(0, 0).is_err());
    }
}
