//! The one seeded generator of the teacher constructions: SplitMix64 with the distributions they
//! draw from (hot PATE's noise: uniform, exponential, Gaussian, Laplace; DNKD's IVF k-means
//! sampling; PHI-S's random orthogonal fallback).

/// A small seeded pseudo-random generator (SplitMix64), shared by the teacher constructions.
///
/// kd-losses has no `rand` dependency; hot PATE's core functions take every random draw as an
/// input, and this generator only feeds its wrappers
/// ([`HotPate::release`](super::hot_pate::HotPate::release),
/// [`TeacherDistributions::sample_votes`](super::hot_pate::TeacherDistributions::sample_votes),
/// [`HotPate::draw_noise`](super::hot_pate::HotPate::draw_noise)); DNKD's IVF index samples
/// and seeds its k-means with it and PHI-S draws its random ±1 fallback matrix from it. The same
/// seed gives the same stream on every platform.
///
/// ```text
/// state ← state + 0x9E3779B97F4A7C15
/// z ← (state ⊕ state≫30)·0xBF58476D1CE4E5B9;  z ← (z ⊕ z≫27)·0x94D049BB133111EB;  out = z ⊕ z≫31
/// open uniform   U = (⌊out / 2^11⌋ + ½) / 2^53              ∈ (0, 1), never 0 or 1
/// Exp(1)         −ln U                                        > 0 and finite
/// N(0, σ²)       σ·√(−2 ln U₁)·cos(2π U₂)                     (Box–Muller, one value per two draws)
/// Laplace(b)     −b·sgn(U − ½)·ln(1 − 2|U − ½|)               (inverse CDF)
/// ```
///
/// SplitMix64 is the generator of Steele, Lea & Flood, *Fast splittable pseudorandom number
/// generators* (OOPSLA 2014); it passes BigCrush and is plenty for noise in tests and
/// simulations. It is **not** a cryptographically secure generator: a deployment whose privacy
/// guarantee must hold against an adversary should draw the noise from a CSPRNG and call the core
/// functions with it.
///
/// # Example
/// ```
/// use kd_losses::teachers::hot_pate::NoiseRng;
///
/// let mut a = NoiseRng::new(7);
/// let mut b = NoiseRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.uniform();
/// assert!(u > 0.0 && u < 1.0);
/// assert!(a.exponential() > 0.0);
/// ```
#[derive(Debug, Clone)]
pub struct NoiseRng {
    state: u64,
}

impl NoiseRng {
    /// A generator whose stream depends only on `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from the open interval `(0, 1)` (53 random bits, offset by half a step).
    pub fn uniform(&mut self) -> f64 {
        const STEP: f64 = 1.0 / (1u64 << 53) as f64;
        ((self.next_u64() >> 11) as f64 + 0.5) * STEP
    }

    /// A uniform draw from the half-open interval `[0, 1)` (53 random bits).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index in `0..n` (`n ≥ 1`; `0` for `n = 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// A draw of `Exp(1)` (mean 1), always finite and `> 0`.
    pub fn exponential(&mut self) -> f64 {
        -self.uniform().ln()
    }

    /// A draw of `N(0, sigma²)`.
    pub fn gaussian(&mut self, sigma: f64) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A draw of `Laplace(0, b)` (density `exp(−|x|/b) / 2b`).
    pub fn laplace(&mut self, b: f64) -> f64 {
        let u = self.uniform() - 0.5;
        -b * u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }

    /// `n` draws of `Exp(1)`.
    pub fn exponentials(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.exponential()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample mean and variance of `n` draws.
    fn moments(n: usize, mut draw: impl FnMut() -> f64) -> (f64, f64) {
        let xs: Vec<f64> = (0..n).map(|_| draw()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (mean, var)
    }

    #[test]
    fn splitmix64_reference_stream() {
        // First outputs of SplitMix64 from seed 1234567, computed independently with Python's
        // arbitrary-precision integers from the algorithm's published constants.
        let mut r = NoiseRng::new(1_234_567);
        let want: [u64; 5] = [
            6_457_827_717_110_365_317,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
            4_593_380_528_125_082_431,
            16_408_922_859_458_223_821,
        ];
        for w in want {
            assert_eq!(r.next_u64(), w);
        }
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let (mut a, mut b, mut c) = (NoiseRng::new(0), NoiseRng::new(0), NoiseRng::new(1));
        let xa: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn distributions_have_their_moments() {
        let n = 200_000;
        let mut r = NoiseRng::new(42);
        // Uniform(0,1): mean 1/2, variance 1/12; 5 standard errors.
        let (m, v) = moments(n, || r.uniform());
        assert!((m - 0.5).abs() < 5.0 * (1.0 / 12.0 / n as f64).sqrt(), "{m}");
        assert!((v - 1.0 / 12.0).abs() < 0.002, "{v}");
        // Exp(1): mean 1, variance 1.
        let (m, v) = moments(n, || r.exponential());
        assert!((m - 1.0).abs() < 5.0 / (n as f64).sqrt(), "{m}");
        assert!((v - 1.0).abs() < 0.05, "{v}");
        // N(0, 4): mean 0, variance 4.
        let (m, v) = moments(n, || r.gaussian(2.0));
        assert!(m.abs() < 5.0 * 2.0 / (n as f64).sqrt(), "{m}");
        assert!((v - 4.0).abs() < 0.1, "{v}");
        // Laplace(b = 3): mean 0, variance 2b² = 18.
        let (m, v) = moments(n, || r.laplace(3.0));
        assert!(m.abs() < 5.0 * 18f64.sqrt() / (n as f64).sqrt(), "{m}");
        assert!((v - 18.0).abs() < 0.8, "{v}");
    }

    #[test]
    fn draws_stay_in_their_domain() {
        let mut r = NoiseRng::new(3);
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!(u > 0.0 && u < 1.0);
            let e = r.exponential();
            assert!(e > 0.0 && e.is_finite());
            assert!(r.gaussian(1.0).is_finite() && r.laplace(1.0).is_finite());
        }
    }
}
