//! The release rules applied to a vote histogram: official argmax, Algorithms 2 and 3 of hot
//! PATE, and Confident GNMax; their noise inputs and their output.

use serde::{Deserialize, Serialize};

use super::ID;
use super::sampling::invalid;
use crate::error::{KdError, Result};

/// How the vote histogram becomes a released token (or `⊥`).
///
/// ```text
/// c = vote histogram [V], T = Σ c, noise [V], ties → lowest index
/// argmax           j = argmax c;  statistic = c_j;  always released        (official MaxAggregator)
/// homogeneous      j = argmax(c + noise);  statistic = c_j + noise_j;
///                  released iff statistic > T/2 + L                          (Algorithm 2)
/// heterogeneous    j = min{ j : Σ_{l ≤ j} c_l > s·T },  s = selection_uniform ∈ [0, 1)
///                  (j drawn ∝ c_j);  statistic = c_j + noise_j;  released iff statistic > L
///                                                                            (Algorithm 3)
/// confident_gnmax  j = argmax(c + noise);  statistic = max c + threshold_noise;
///                  released iff statistic ≥ threshold                        (Papernot et al. 2018)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregationRule {
    /// The official repository's `MaxAggregator`: the most voted token, always released, no noise
    /// and therefore **no privacy** (a demonstration baseline).
    Argmax,
    /// Algorithm 2 (homogeneous ensembles): noisy argmax, released when its noisy count exceeds
    /// `T/2 + L`.
    Homogeneous,
    /// Algorithm 3 (heterogeneous ensembles): a token drawn with probability `c_j / T`, released
    /// when its noisy count exceeds `L`.
    Heterogeneous,
    /// Confident GNMax (Papernot et al., *Scalable Private Learning with PATE*, ICLR 2018): answer
    /// only when the noisy top count reaches `threshold`, then release the noisy argmax.
    ConfidentGnmax,
}

impl AggregationRule {
    /// The rule's name as in configs and golden files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Argmax => "argmax",
            Self::Homogeneous => "homogeneous",
            Self::Heterogeneous => "heterogeneous",
            Self::ConfidentGnmax => "confident_gnmax",
        }
    }

    /// Parses a rule name (`argmax`, `homogeneous`, `heterogeneous`, `confident_gnmax`).
    ///
    /// # Errors
    /// [`KdError::UnknownOption`] for any other name.
    pub fn parse(name: &str) -> Result<Self> {
        [Self::Argmax, Self::Homogeneous, Self::Heterogeneous, Self::ConfidentGnmax]
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| KdError::UnknownOption {
                loss: ID,
                name: "rule",
                expected: "argmax, homogeneous, heterogeneous, confident_gnmax",
                got: name.to_string(),
            })
    }

    /// Whether the rule adds noise to the histogram (every rule but `argmax`).
    pub fn is_noisy(self) -> bool {
        self != Self::Argmax
    }
}

/// The random inputs of one release: what [`AggregationRule`] needs beyond the histogram.
///
/// `histogram` (`[V]`) is added to the counts by every noisy rule; `selection_uniform` (in
/// `[0, 1)`) picks the token of `heterogeneous`; `threshold_noise` is added to the top count by
/// `confident_gnmax`. A field a rule does not use is ignored; [`super::HotPate::draw_noise`] fills
/// exactly the ones the configured rule needs.
///
/// # Example
/// ```
/// use kd_losses::teachers::hot_pate::RuleNoise;
///
/// let noise = RuleNoise::with_histogram(vec![0.3, -0.1, 0.0]).selection(0.25);
/// assert_eq!(noise.selection_uniform, Some(0.25));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleNoise {
    /// Noise added to every count (`[V]`).
    pub histogram: Option<Vec<f64>>,
    /// The uniform of the heterogeneous selection, in `[0, 1)`.
    pub selection_uniform: Option<f64>,
    /// The noise added to the top count by Confident GNMax.
    pub threshold_noise: Option<f64>,
}

impl RuleNoise {
    /// No noise at all (enough for [`AggregationRule::Argmax`]).
    pub fn none() -> Self {
        Self::default()
    }

    /// Histogram noise only (enough for [`AggregationRule::Homogeneous`]).
    pub fn with_histogram(noise: Vec<f64>) -> Self {
        Self { histogram: Some(noise), ..Self::default() }
    }

    /// Sets the heterogeneous selection uniform.
    pub fn selection(mut self, selection_uniform: f64) -> Self {
        self.selection_uniform = Some(selection_uniform);
        self
    }

    /// Sets the Confident GNMax threshold noise.
    pub fn threshold(mut self, threshold_noise: f64) -> Self {
        self.threshold_noise = Some(threshold_noise);
        self
    }
}

/// The outcome of aggregating one prompt position: the votes, their histogram, what the rule
/// computed and the released token (`None` = `⊥`, nothing released).
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    /// The teachers' votes `y_i` (`[T]`).
    pub votes: Vec<usize>,
    /// `c_j = #{i : y_i = j}` (`[V]`).
    pub histogram: Vec<usize>,
    /// `c + noise` (`[V]`); `None` for `argmax`.
    pub noisy_histogram: Option<Vec<f64>>,
    /// `max_j c_j`.
    pub max_count: usize,
    /// Top count minus second count of `c` (`max_count` when `V = 1`).
    pub margin: usize,
    /// The token the rule proposes (released or not).
    pub selected: usize,
    /// The number compared with the threshold (`c_j` for `argmax`).
    pub statistic: f64,
    /// The release threshold (`T/2 + L`, `L` or `threshold`); `None` for `argmax`.
    pub threshold: Option<f64>,
    /// The released token, or `None` for `⊥`.
    pub released_token: Option<usize>,
}

impl Aggregation {
    /// Whether a token was released.
    pub fn is_released(&self) -> bool {
        self.released_token.is_some()
    }
}

/// The rule's parameters, checked by the config.
#[derive(Debug, Clone, Copy)]
pub(super) struct RuleParams {
    pub rule: AggregationRule,
    /// `L`.
    pub margin: f64,
    /// Confident GNMax threshold.
    pub threshold: f64,
}

/// Applies the rule to the histogram `c` of `votes`.
pub(super) fn apply(
    p: RuleParams,
    votes: Vec<usize>,
    histogram: Vec<usize>,
    noise: &RuleNoise,
) -> Result<Aggregation> {
    let c = &histogram;
    let teachers = votes.len();
    let max_count = *c.iter().max().unwrap_or(&0);
    let top = argmax(c.iter().map(|&x| x as f64));
    let second = c.iter().enumerate().filter(|&(j, _)| j != top).map(|(_, &x)| x).max();
    let margin = max_count - second.unwrap_or(0);
    let noisy = if p.rule.is_noisy() { Some(noisy_histogram(c, noise)?) } else { None };
    let (selected, statistic, threshold, released) = match (p.rule, &noisy) {
        (AggregationRule::Argmax, _) => (top, max_count as f64, None, true),
        (AggregationRule::Homogeneous, Some(n)) => {
            let j = argmax(n.iter().copied());
            let t = teachers as f64 / 2.0 + p.margin;
            (j, n[j], Some(t), n[j] > t)
        }
        (AggregationRule::Heterogeneous, Some(n)) => {
            let s = noise
                .selection_uniform
                .ok_or(KdError::MissingInput { loss: ID, name: "selection_uniform" })?;
            if !(0.0..1.0).contains(&s) {
                return Err(invalid("selection_uniform", "a value in [0, 1)", s.to_string()));
            }
            // Weighted selection ∝ c_j: first j whose running count exceeds s·T.
            let target = s * teachers as f64;
            let mut run = 0usize;
            let j = c
                .iter()
                .position(|&x| {
                    run += x;
                    run as f64 > target
                })
                .expect("the total count T exceeds s·T for s < 1");
            (j, n[j], Some(p.margin), n[j] > p.margin)
        }
        (AggregationRule::ConfidentGnmax, Some(n)) => {
            let z = noise
                .threshold_noise
                .ok_or(KdError::MissingInput { loss: ID, name: "threshold_noise" })?;
            if !z.is_finite() {
                return Err(invalid("threshold_noise", "a finite value", z.to_string()));
            }
            let stat = max_count as f64 + z;
            (argmax(n.iter().copied()), stat, Some(p.threshold), stat >= p.threshold)
        }
        (_, None) => unreachable!("noisy rules have a noisy histogram"),
    };
    Ok(Aggregation {
        votes,
        histogram,
        noisy_histogram: noisy,
        max_count,
        margin,
        selected,
        statistic,
        threshold,
        released_token: released.then_some(selected),
    })
}

/// `c + noise`, the noise checked for shape and finiteness.
fn noisy_histogram(c: &[usize], noise: &RuleNoise) -> Result<Vec<f64>> {
    let n = noise.histogram.as_ref().ok_or(KdError::MissingInput { loss: ID, name: "noise" })?;
    if n.len() != c.len() {
        return Err(KdError::ShapeMismatch {
            what: "noise vs vocabulary".into(),
            expected: vec![c.len()],
            got: vec![n.len()],
        });
    }
    if let Some(k) = n.iter().position(|x| !x.is_finite()) {
        return Err(invalid("noise", "finite values", format!("{} at [{k}]", n[k])));
    }
    Ok(c.iter().zip(n).map(|(&cj, z)| cj as f64 + z).collect())
}

/// Index of the largest value, lowest index on exact ties.
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (j, x) in values.enumerate() {
        if x > best.1 {
            best = (j, x);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rule: AggregationRule, margin: f64, threshold: f64) -> RuleParams {
        RuleParams { rule, margin, threshold }
    }

    /// Votes giving the histogram `c`.
    fn votes_of(c: &[usize]) -> Vec<usize> {
        c.iter().enumerate().flat_map(|(j, &n)| std::iter::repeat_n(j, n)).collect()
    }

    fn run(p: RuleParams, c: &[usize], noise: &RuleNoise) -> Result<Aggregation> {
        apply(p, votes_of(c), c.to_vec(), noise)
    }

    #[test]
    fn argmax_rule_always_releases_lowest_on_ties() {
        let a = run(params(AggregationRule::Argmax, 0.0, 0.0), &[2, 3, 3, 0], &RuleNoise::none())
            .unwrap();
        assert_eq!((a.selected, a.released_token, a.max_count, a.margin), (1, Some(1), 3, 0));
        assert_eq!((a.statistic, a.threshold, a.noisy_histogram), (3.0, None, None));
        // One token: margin is the count itself.
        let a = run(params(AggregationRule::Argmax, 0.0, 0.0), &[4], &RuleNoise::none()).unwrap();
        assert_eq!((a.margin, a.released_token), (4, Some(0)));
    }

    #[test]
    fn homogeneous_threshold_is_strict() {
        // T = 6, L = 1: threshold 4. Noisy counts (1, 4, 1): statistic 4 is not > 4.
        let p = params(AggregationRule::Homogeneous, 1.0, 0.0);
        let c = [1, 4, 1];
        let a = run(p, &c, &RuleNoise::with_histogram(vec![0.0, 0.0, 0.0])).unwrap();
        assert_eq!((a.selected, a.statistic, a.threshold), (1, 4.0, Some(4.0)));
        assert_eq!(a.released_token, None);
        let a = run(p, &c, &RuleNoise::with_histogram(vec![0.0, 1e-9, 0.0])).unwrap();
        assert_eq!(a.released_token, Some(1));
        // Noise can move the argmax to a less voted token (and release it).
        let a = run(p, &c, &RuleNoise::with_histogram(vec![0.0, 0.0, 3.5])).unwrap();
        assert_eq!((a.selected, a.statistic, a.released_token), (2, 4.5, Some(2)));
        // Exact tie of noisy counts: lowest index.
        let a = run(p, &c, &RuleNoise::with_histogram(vec![3.0, 0.0, 0.0])).unwrap();
        assert_eq!(a.selected, 0);
        assert_eq!(a.noisy_histogram, Some(vec![4.0, 4.0, 1.0]));
    }

    #[test]
    fn heterogeneous_selection_follows_the_cumulative_counts() {
        // c = (2, 0, 3, 1), T = 6: s·T < 2 → 0, [2, 5) → 2, [5, 6) → 3; a zero count is never
        // selected.
        let p = params(AggregationRule::Heterogeneous, 1.5, 0.0);
        let c = [2, 0, 3, 1];
        let z = vec![0.0; 4];
        for (s, want) in [(0.0, 0), (0.3333, 0), (0.34, 2), (0.8, 2), (0.84, 3), (0.99, 3)] {
            let a = run(p, &c, &RuleNoise::with_histogram(z.clone()).selection(s)).unwrap();
            assert_eq!(a.selected, want, "s = {s}");
            assert_eq!(a.threshold, Some(1.5));
        }
        // Released iff c_j + noise_j > L (strict).
        let sel = |noise: Vec<f64>| {
            run(p, &c, &RuleNoise::with_histogram(noise).selection(0.9)).unwrap().released_token
        };
        assert_eq!(sel(vec![0.0, 0.0, 0.0, 0.5]), None);
        assert_eq!(sel(vec![0.0, 0.0, 0.0, 0.51]), Some(3));
    }

    #[test]
    fn confident_gnmax_releases_at_or_above_threshold() {
        let p = params(AggregationRule::ConfidentGnmax, 0.0, 5.0);
        let c = [1, 4, 1];
        let noise = |z: f64| RuleNoise::with_histogram(vec![0.0, -0.5, 3.0]).threshold(z);
        let a = run(p, &c, &noise(1.0)).unwrap();
        // Noisy argmax is token 2 (4.0 vs 3.5); statistic max c + z = 5 ≥ 5.
        assert_eq!((a.selected, a.statistic, a.released_token), (2, 5.0, Some(2)));
        let a = run(p, &c, &noise(0.999)).unwrap();
        assert_eq!((a.selected, a.released_token, a.threshold), (2, None, Some(5.0)));
    }

    #[test]
    fn missing_or_bad_noise_is_an_error() {
        let c = [1, 2];
        let hom = params(AggregationRule::Homogeneous, 1.0, 0.0);
        assert!(matches!(
            run(hom, &c, &RuleNoise::none()),
            Err(KdError::MissingInput { name: "noise", .. })
        ));
        assert!(matches!(
            run(hom, &c, &RuleNoise::with_histogram(vec![0.0])),
            Err(KdError::ShapeMismatch { .. })
        ));
        assert!(run(hom, &c, &RuleNoise::with_histogram(vec![0.0, f64::NAN])).is_err());
        let het = params(AggregationRule::Heterogeneous, 1.0, 0.0);
        let z = RuleNoise::with_histogram(vec![0.0, 0.0]);
        assert!(matches!(
            run(het, &c, &z),
            Err(KdError::MissingInput { name: "selection_uniform", .. })
        ));
        assert!(matches!(
            run(het, &c, &z.clone().selection(1.0)),
            Err(KdError::InvalidInput { name: "selection_uniform", .. })
        ));
        assert!(run(het, &c, &z.clone().selection(-0.1)).is_err());
        let gn = params(AggregationRule::ConfidentGnmax, 0.0, 1.0);
        assert!(matches!(
            run(gn, &c, &z),
            Err(KdError::MissingInput { name: "threshold_noise", .. })
        ));
        assert!(run(gn, &c, &z.clone().threshold(f64::INFINITY)).is_err());
    }

    #[test]
    fn rule_names_round_trip() {
        for r in [
            AggregationRule::Argmax,
            AggregationRule::Homogeneous,
            AggregationRule::Heterogeneous,
            AggregationRule::ConfidentGnmax,
        ] {
            assert_eq!(AggregationRule::parse(r.name()).unwrap(), r);
        }
        assert!(matches!(AggregationRule::parse("max"), Err(KdError::UnknownOption { .. })));
    }
}
