//! Hot PATE: private aggregation of an ensemble of teachers' next-token distributions into one
//! released token (or `⊥`), with coordinated sampling that keeps the teachers' diversity.
//!
//! Each teacher sees a disjoint part of the sensitive data (in the official code, a prompt with
//! its own few-shot examples); at every position of a public prompt the `T` teachers' next-token
//! logits go through
//!
//! ```text
//! P[i]  = softmax(teacher_logits[i] / temperature)                 [T, V]
//! y_i   = argmax_j P[i, j] / u_j     u_j ~ Exp(1) shared            coordinated (Algorithm 1)
//!       = argmax_j P[i, j] / U[i, j] U[i, j] ~ Exp(1) per teacher   independent ("cold" PATE)
//! c_j   = #{i : y_i = j}                                            vote histogram [V]
//! token = rule(c, noise)  ∈ {0..V−1} ∪ {⊥}                          see AggregationRule
//! ```
//!
//! and a [`PrivacyAccountant`] adds up the privacy spent. Everything is host-side `f64`: votes,
//! histograms and the release are piecewise constant, so there is no gradient; the student
//! learns from the released tokens with ordinary next-token cross-entropy.
//!
//! The core functions take every random draw as an input ([`TeacherDistributions::coordinated_votes`],
//! [`TeacherDistributions::independent_votes`], [`HotPate::aggregate_votes`] with a
//! [`RuleNoise`]); the wrappers [`HotPate::release`] and [`HotPate::release_tensor`] draw them from
//! a seeded [`NoiseRng`].
//!
//! Paper: Cohen, Cohen-Wang, Lyu, Nelson, Sarlós & Stemmer, *Hot PATE: Private Aggregation of
//! Distributions for Diverse Tasks*, <https://arxiv.org/abs/2312.02132> (Algorithms 1-3);
//! official code <https://github.com/bencw99/hot-pate> (`samplers.py`, `aggregators.py`,
//! `utils.py`). Conventions: `docs/teachers/hot_pate.md`.

mod accountant;
mod rules;
mod sampling;

pub use super::rng::NoiseRng;
pub use accountant::{
    INTEGER_ORDERS, LaplaceEpsilon, Mechanism, PrivacyAccountant, PrivacyReport, ZcdpEpsilon,
    confident_gnmax_rho, gaussian_histogram_rho, laplace_epsilon, zcdp_epsilon,
};
pub use rules::{Aggregation, AggregationRule, RuleNoise};
pub use sampling::{Sampler, TeacherDistributions, histogram};

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::error::{KdError, Result, check_range, check_temperature};
use rules::RuleParams;
use sampling::invalid;

/// The construction's id, as in errors and the golden file `hot_pate.json`.
pub(crate) const ID: &str = "hot_pate";

/// The distribution of the histogram noise (what [`HotPate::draw_noise`] draws and what
/// [`HotPate::accountant`] accounts for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    /// `N(0, noise_scale²)` on every count (GNMax; zCDP accounting).
    Gaussian,
    /// `Lap(noise_scale)` on every count (LNMax; pure-DP accounting).
    Laplace,
}

loss_config! {
    /// Config of [`HotPate`]. Serde keys as in the golden file (`L` for the release margin,
    /// `noise_std` accepted for `noise_scale`).
    pub struct HotPateConfig, new: "Defaults: temperature 0.6 (official), homogeneous rule, `L = 0`, Gaussian noise σ = 1." {
        /// Softmax temperature `> 0` of the teachers (default `0.6`, the official default).
        temperature: f64 = 0.6 => with_temperature,
        /// Release rule (default [`AggregationRule::Homogeneous`]).
        rule: AggregationRule = AggregationRule::Homogeneous => with_rule,
        /// Margin `L ≥ 0` of Algorithms 2 and 3: released iff the noisy count exceeds `T/2 + L`
        /// (homogeneous) or `L` (heterogeneous). Default `0`; the paper takes `L` of the order of a
        /// few noise scales so that a token few teachers voted for is rarely released.
        #[serde(rename = "L", alias = "release_margin")]
        release_margin: f64 = 0.0 => with_release_margin,
        /// Confident GNMax threshold on the noisy top count (required by that rule).
        threshold: Option<f64> = None,
        /// Distribution of the histogram noise (default Gaussian).
        noise: NoiseKind = NoiseKind::Gaussian => with_noise,
        /// Scale `> 0` of the histogram noise: σ (σ2 of Confident GNMax) or the Laplace `b`
        /// (default `1`).
        #[serde(alias = "noise_std")]
        noise_scale: f64 = 1.0 => with_noise_scale,
        /// Standard deviation `σ1 > 0` of Confident GNMax's threshold noise (needed to draw it
        /// and to account for it).
        sigma1: Option<f64> = None,
    }
}

impl HotPateConfig {
    /// Sets the Confident GNMax `threshold`.
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = Some(threshold);
        self
    }

    /// Sets the Confident GNMax threshold-noise `sigma1`.
    pub fn with_sigma1(mut self, sigma1: f64) -> Self {
        self.sigma1 = Some(sigma1);
        self
    }

    /// Validates the config.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for a temperature or noise scale not finite and `> 0`,
    /// `L` not finite and `≥ 0`, a `sigma1` given but not `> 0`, or rule `confident_gnmax`
    /// without a finite `threshold`; [`KdError::UnknownOption`] for `confident_gnmax` with
    /// Laplace noise (GNMax is Gaussian).
    pub fn init(&self) -> Result<HotPate> {
        check_temperature(ID, "temperature", self.temperature)?;
        let inf = f64::INFINITY;
        check_range(ID, "L", self.release_margin, 0.0, inf, "a finite value ≥ 0")?;
        check_positive_param("noise_scale", self.noise_scale)?;
        if let Some(s) = self.sigma1 {
            check_positive_param("sigma1", s)?;
        }
        if self.rule == AggregationRule::ConfidentGnmax {
            let t = self.threshold.unwrap_or(f64::NAN);
            check_range(ID, "threshold", t, -inf, inf, "a finite threshold (confident_gnmax)")?;
            if self.noise == NoiseKind::Laplace {
                return Err(KdError::UnknownOption {
                    loss: ID,
                    name: "noise",
                    expected: "gaussian (Confident GNMax adds Gaussian noise)",
                    got: "laplace".into(),
                });
            }
        }
        Ok(HotPate { config: self.clone() })
    }
}

fn check_positive_param(name: &'static str, x: f64) -> Result<()> {
    check_range(ID, name, x, f64::MIN_POSITIVE, f64::INFINITY, "a finite value > 0")
}

/// Hot PATE aggregation: `T` teachers' next-token logits at one position → votes → histogram →
/// a released token or `⊥`.
///
/// ```text
/// P[i] = softmax(teacher_logits[i] / temperature)
/// y_i  = argmax_j P[i,j]/u_j (coordinated, u shared)  or  argmax_j P[i,j]/U[i,j] (independent)
/// c_j  = #{i : y_i = j}
/// argmax:          j = argmax c, always released (no privacy)
/// homogeneous:     j = argmax(c + z), released iff c_j + z_j > T/2 + L        (Algorithm 2)
/// heterogeneous:   j = min{j : Σ_{l≤j} c_l > s·T}, released iff c_j + z_j > L (Algorithm 3)
/// confident_gnmax: j = argmax(c + z), released iff max c + z' ≥ threshold     (Papernot 2018)
/// ties → lowest index
/// ```
///
/// No gradient (piecewise constant in the logits).
///
/// # Shapes
/// `teacher_logits`: `[T, V]` (row-major slice or a burn `Tensor<2>`); exponentials `[V]`
/// (coordinated) or `[T, V]` (independent); histogram noise `[V]`.
///
/// # Errors
/// [`KdError::InvalidInput`], [`KdError::ShapeMismatch`] and [`KdError::MissingInput`] for
/// inputs (see [`TeacherDistributions`] and [`RuleNoise`]); config errors at
/// [`HotPateConfig::init`].
///
/// Paper: Cohen et al., *Hot PATE*, <https://arxiv.org/abs/2312.02132>; code
/// <https://github.com/bencw99/hot-pate>.
///
/// # Example: every random draw given
/// ```
/// use kd_losses::teachers::hot_pate::{HotPateConfig, RuleNoise};
///
/// let pate = HotPateConfig::new().with_release_margin(0.5).init()?;
/// // Three teachers over four tokens.
/// let logits = [2.0, 1.0, 0.0, -1.0, 1.8, 1.2, 0.1, -2.0, 0.0, 2.0, 0.0, 0.0];
/// let p = pate.distributions(&logits, 3, 4)?;
/// let votes = p.coordinated_votes(&[0.9, 1.7, 0.4, 2.2])?;
/// let out = pate.aggregate_votes(votes, 4, &RuleNoise::with_histogram(vec![0.1, -0.2, 0.3, 0.0]))?;
/// // T/2 + L = 2: released iff the noisy top count exceeds 2.
/// assert_eq!(out.threshold, Some(2.0));
/// assert_eq!(out.released_token.is_some(), out.statistic > 2.0);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
///
/// # Example: seeded draws and accounting
/// ```
/// use kd_losses::teachers::hot_pate::{HotPateConfig, NoiseRng, Sampler};
///
/// let pate = HotPateConfig::new().with_release_margin(1.0).with_noise_scale(0.5).init()?;
/// let mut rng = NoiseRng::new(0);
/// let mut accountant = pate.accountant()?;
/// // Eight identical teachers: coordinated votes agree, so the token is released.
/// let logits: Vec<f64> = (0..8).flat_map(|_| [0.5, 2.0, 0.0]).collect();
/// let p = pate.distributions(&logits, 8, 3)?;
/// let out = pate.release(&p, Sampler::Coordinated, &mut rng)?;
/// accountant.record_aggregation(&out);
/// assert_eq!(out.max_count, 8);
/// assert!(out.released_token.is_some());
/// assert!(accountant.epsilon(1e-5)? > 0.0);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone)]
pub struct HotPate {
    config: HotPateConfig,
}

impl HotPate {
    /// The construction's id (`hot_pate`).
    pub const ID: &'static str = ID;

    /// The validated config.
    pub fn config(&self) -> &HotPateConfig {
        &self.config
    }

    /// The teachers' distributions at the configured temperature; `teacher_logits` is `[T, V]`
    /// row-major.
    ///
    /// # Errors
    /// See [`TeacherDistributions::from_logits`].
    pub fn distributions(
        &self,
        teacher_logits: &[f64],
        teachers: usize,
        vocab: usize,
    ) -> Result<TeacherDistributions> {
        TeacherDistributions::from_logits(teacher_logits, teachers, vocab, self.config.temperature)
    }

    /// [`Self::distributions`] from a burn tensor `[T, V]` of any float dtype and device (read
    /// back to the host as `f64`).
    ///
    /// # Errors
    /// [`KdError::InvalidInput`] when the tensor cannot be read back; otherwise as
    /// [`Self::distributions`].
    pub fn distributions_from_tensor(
        &self,
        teacher_logits: Tensor<2>,
    ) -> Result<TeacherDistributions> {
        let [teachers, vocab] = teacher_logits.dims();
        let values = teacher_logits.try_into_vec_as::<f64>().map_err(|e| {
            invalid("teacher_logits", "a tensor readable on the host", e.to_string())
        })?;
        self.distributions(&values, teachers, vocab)
    }

    /// Applies the configured rule to the teachers' `votes` (`[T]`, token ids `< vocab`).
    ///
    /// # Errors
    /// [`KdError::InvalidInput`] for no votes or a vote `≥ vocab`; the noise errors of
    /// [`RuleNoise`] ([`KdError::MissingInput`] when the rule needs a draw that is absent,
    /// [`KdError::ShapeMismatch`] for noise that is not `[V]`, [`KdError::InvalidInput`] for a
    /// non-finite draw or a selection uniform outside `[0, 1)`).
    pub fn aggregate_votes(
        &self,
        votes: Vec<usize>,
        vocab: usize,
        noise: &RuleNoise,
    ) -> Result<Aggregation> {
        let c = histogram(&votes, vocab)?;
        rules::apply(self.params(), votes, c, noise)
    }

    /// Draws the random inputs the configured rule needs for a vocabulary of `vocab` tokens:
    /// histogram noise (Gaussian or Laplace at `noise_scale`) for every noisy rule, a uniform in
    /// `[0, 1)` for `heterogeneous`, `N(0, sigma1²)` for `confident_gnmax`.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when the rule is `confident_gnmax` and `sigma1` is not
    /// set.
    pub fn draw_noise(&self, vocab: usize, rng: &mut NoiseRng) -> Result<RuleNoise> {
        let c = &self.config;
        if !c.rule.is_noisy() {
            return Ok(RuleNoise::none());
        }
        let scale = c.noise_scale;
        let hist = (0..vocab)
            .map(|_| match c.noise {
                NoiseKind::Gaussian => rng.gaussian(scale),
                NoiseKind::Laplace => rng.laplace(scale),
            })
            .collect();
        let mut noise = RuleNoise::with_histogram(hist);
        match c.rule {
            AggregationRule::Heterogeneous => {
                // The open uniform is in (0, 1) ⊂ [0, 1).
                noise.selection_uniform = Some(rng.uniform());
            }
            AggregationRule::ConfidentGnmax => {
                noise.threshold_noise = Some(rng.gaussian(self.sigma1()?));
            }
            _ => {}
        }
        Ok(noise)
    }

    /// One position end to end with seeded draws: votes by `sampler`, noise by
    /// [`Self::draw_noise`], then the rule.
    ///
    /// # Errors
    /// As [`Self::draw_noise`].
    pub fn release(
        &self,
        distributions: &TeacherDistributions,
        sampler: Sampler,
        rng: &mut NoiseRng,
    ) -> Result<Aggregation> {
        let votes = distributions.sample_votes(sampler, rng);
        let noise = self.draw_noise(distributions.vocab(), rng)?;
        self.aggregate_votes(votes, distributions.vocab(), &noise)
    }

    /// [`Self::release`] from the teachers' logits as a burn tensor `[T, V]`.
    ///
    /// # Errors
    /// As [`Self::distributions_from_tensor`] and [`Self::draw_noise`].
    pub fn release_tensor(
        &self,
        teacher_logits: Tensor<2>,
        sampler: Sampler,
        rng: &mut NoiseRng,
    ) -> Result<Aggregation> {
        let p = self.distributions_from_tensor(teacher_logits)?;
        self.release(&p, sampler, rng)
    }

    /// A [`PrivacyAccountant`] for the configured noise: Gaussian σ → [`Mechanism::GaussianHistogram`],
    /// Laplace b → [`Mechanism::Laplace`], `confident_gnmax` → [`Mechanism::ConfidentGnmax`]
    /// (σ1 = `sigma1`, σ2 = `noise_scale`).
    ///
    /// # Errors
    /// [`KdError::UnknownOption`] for rule `argmax` (no noise, no privacy);
    /// [`KdError::InvalidHyperparameter`] for `confident_gnmax` without `sigma1`.
    pub fn accountant(&self) -> Result<PrivacyAccountant> {
        let c = &self.config;
        let mechanism = match (c.rule, c.noise) {
            (AggregationRule::Argmax, _) => {
                return Err(KdError::UnknownOption {
                    loss: ID,
                    name: "rule",
                    expected: "a noisy rule (homogeneous, heterogeneous, confident_gnmax); \
                               argmax releases without noise and has no privacy guarantee",
                    got: "argmax".into(),
                });
            }
            (AggregationRule::ConfidentGnmax, _) => {
                Mechanism::ConfidentGnmax { sigma1: self.sigma1()?, sigma2: c.noise_scale }
            }
            (_, NoiseKind::Gaussian) => Mechanism::GaussianHistogram { sigma: c.noise_scale },
            (_, NoiseKind::Laplace) => Mechanism::Laplace { b: c.noise_scale },
        };
        PrivacyAccountant::new(mechanism)
    }

    fn sigma1(&self) -> Result<f64> {
        self.config.sigma1.ok_or(KdError::InvalidHyperparameter {
            loss: ID,
            name: "sigma1",
            expected: "a finite value > 0 (confident_gnmax threshold noise)",
            got: f64::NAN,
        })
    }

    fn params(&self) -> RuleParams {
        let c = &self.config;
        RuleParams {
            rule: c.rule,
            margin: c.release_margin,
            threshold: c.threshold.unwrap_or(f64::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks_at_init() {
        assert!(HotPateConfig::new().init().is_ok());
        assert_eq!(HotPateConfig::new().temperature, 0.6);
        for t in [0.0, -0.6, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                HotPateConfig::new().with_temperature(t).init(),
                Err(KdError::InvalidHyperparameter { name: "temperature", .. })
            ));
        }
        assert!(HotPateConfig::new().with_release_margin(-1.0).init().is_err());
        assert!(HotPateConfig::new().with_noise_scale(0.0).init().is_err());
        assert!(HotPateConfig::new().with_sigma1(-1.0).init().is_err());
        let gn = HotPateConfig::new().with_rule(AggregationRule::ConfidentGnmax);
        assert!(matches!(
            gn.clone().init(),
            Err(KdError::InvalidHyperparameter { name: "threshold", .. })
        ));
        assert!(gn.clone().with_threshold(3.0).init().is_ok());
        assert!(matches!(
            gn.with_threshold(3.0).with_noise(NoiseKind::Laplace).init(),
            Err(KdError::UnknownOption { .. })
        ));
    }

    #[test]
    fn config_reads_the_golden_keys() {
        let c: HotPateConfig = serde_json::from_str(
            r#"{"rule": "confident_gnmax", "temperature": 0.6, "threshold": 12.0,
                "sigma1": 2.0, "noise_std": 1.0}"#,
        )
        .unwrap();
        assert_eq!(c.rule, AggregationRule::ConfidentGnmax);
        assert_eq!((c.threshold, c.sigma1, c.noise_scale), (Some(12.0), Some(2.0), 1.0));
        let c: HotPateConfig =
            serde_json::from_str(r#"{"rule": "homogeneous", "L": 2.0}"#).unwrap();
        assert_eq!(c.release_margin, 2.0);
        assert!(serde_json::from_str::<HotPateConfig>(r#"{"rule": "max"}"#).is_err());
    }

    #[test]
    fn draw_noise_fills_what_the_rule_needs() {
        let mut rng = NoiseRng::new(1);
        let pate = HotPateConfig::new().with_rule(AggregationRule::Argmax).init().unwrap();
        assert_eq!(pate.draw_noise(5, &mut rng).unwrap(), RuleNoise::none());
        assert!(pate.accountant().is_err());
        let pate = HotPateConfig::new().with_rule(AggregationRule::Heterogeneous).init().unwrap();
        let n = pate.draw_noise(5, &mut rng).unwrap();
        assert_eq!(n.histogram.as_ref().map(Vec::len), Some(5));
        assert!(n.selection_uniform.is_some_and(|s| (0.0..1.0).contains(&s)));
        let gn =
            HotPateConfig::new().with_rule(AggregationRule::ConfidentGnmax).with_threshold(2.0);
        let pate = gn.clone().init().unwrap();
        assert!(pate.draw_noise(5, &mut rng).is_err());
        assert!(pate.accountant().is_err());
        let pate = gn.with_sigma1(3.0).init().unwrap();
        assert!(pate.draw_noise(5, &mut rng).unwrap().threshold_noise.is_some());
        assert_eq!(
            pate.accountant().unwrap().mechanism(),
            Mechanism::ConfidentGnmax { sigma1: 3.0, sigma2: 1.0 }
        );
        let lap = HotPateConfig::new().with_noise(NoiseKind::Laplace).with_noise_scale(2.0);
        let acc = lap.init().unwrap().accountant().unwrap();
        assert_eq!(acc.mechanism(), Mechanism::Laplace { b: 2.0 });
    }

    #[test]
    fn identical_teachers_release_their_token() {
        // Ten identical teachers, L = 1, σ = 0.5: all coordinated votes agree, c_j = 10 > 6 is
        // released unless the noise is below −4 (8 σ).
        let pate =
            HotPateConfig::new().with_release_margin(1.0).with_noise_scale(0.5).init().unwrap();
        let row = [0.3, 1.1, -0.4, 0.9, 0.0];
        let logits: Vec<f64> = (0..10).flat_map(|_| row).collect();
        let p = pate.distributions(&logits, 10, 5).unwrap();
        let mut rng = NoiseRng::new(8);
        let mut acc = pate.accountant().unwrap();
        for _ in 0..100 {
            let out = pate.release(&p, Sampler::Coordinated, &mut rng).unwrap();
            assert_eq!((out.max_count, out.margin), (10, 10));
            assert_eq!(out.released_token, Some(out.votes[0]));
            acc.record_aggregation(&out);
        }
        assert_eq!((acc.queries(), acc.answered()), (100, 100));
    }

    #[test]
    fn tensor_input_matches_the_slice() {
        use burn::tensor::{Device, TensorData};
        let device = Device::flex();
        let logits = [0.5f32, -1.0, 2.0, 0.0, 0.25, 1.5];
        let t = Tensor::<2>::from_data(TensorData::new(logits.to_vec(), [2, 3]), &device);
        let pate = HotPateConfig::new().init().unwrap();
        let from_tensor = pate.distributions_from_tensor(t.clone()).unwrap();
        let as_f64: Vec<f64> = logits.iter().map(|&x| f64::from(x)).collect();
        assert_eq!(from_tensor, pate.distributions(&as_f64, 2, 3).unwrap());
        let (mut a, mut b) = (NoiseRng::new(4), NoiseRng::new(4));
        assert_eq!(
            pate.release_tensor(t, Sampler::Independent, &mut a).unwrap(),
            pate.release(&from_tensor, Sampler::Independent, &mut b).unwrap()
        );
    }

    #[test]
    fn aggregate_votes_checks_votes() {
        let pate = HotPateConfig::new().with_rule(AggregationRule::Argmax).init().unwrap();
        assert!(matches!(
            pate.aggregate_votes(vec![0, 5], 3, &RuleNoise::none()),
            Err(KdError::InvalidInput { name: "votes", .. })
        ));
        assert!(pate.aggregate_votes(vec![], 3, &RuleNoise::none()).is_err());
        let out = pate.aggregate_votes(vec![2, 0, 2], 3, &RuleNoise::none()).unwrap();
        assert_eq!((out.histogram, out.released_token), (vec![1, 0, 2], Some(2)));
    }
}
