//! Data-independent privacy accounting of the noisy-histogram releases: Laplace (pure DP, basic
//! and advanced composition) and Gaussian (zCDP / RDP), plus Confident GNMax.

use crate::error::{KdError, Result, check_range};

use super::ID;
use super::rules::Aggregation;

/// The RDP orders `λ` searched by [`zcdp_epsilon`]: the integers `2..=256`.
pub const INTEGER_ORDERS: std::ops::RangeInclusive<u32> = 2..=256;

/// ε of `queries` Laplace-noised histograms (pure DP).
///
/// ```text
/// Lap(b) on every count; replacing one teacher's data moves one vote: L1 sensitivity 2
/// eps_per_query = 2/b
/// eps_basic     = Q·eps0                                   (ε, 0)-DP, basic composition
/// eps_advanced  = eps0·sqrt(2Q ln(1/δ)) + Q·eps0·(e^eps0 − 1)   (ε, δ)-DP, advanced composition
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaplaceEpsilon {
    /// `2/b`.
    pub eps_per_query: f64,
    /// `Q·2/b`.
    pub eps_basic: f64,
    /// Advanced composition (Dwork, Rothblum & Vadhan 2010) at `δ`.
    pub eps_advanced: f64,
}

impl LaplaceEpsilon {
    /// The better of the two bounds, `min(eps_basic, eps_advanced)` (both hold at `δ`).
    pub fn epsilon(&self) -> f64 {
        self.eps_basic.min(self.eps_advanced)
    }
}

/// ε of a zCDP budget `ρ` at `δ`, two ways.
///
/// ```text
/// RDP(λ) = ρ·λ   (ρ-zCDP);   (λ, RDP(λ)) → (RDP(λ) + ln(1/δ)/(λ − 1), δ)-DP
/// eps_continuous     = ρ + 2·sqrt(ρ·ln(1/δ))    at lambda_star = 1 + sqrt(ln(1/δ)/ρ)   (the optimum over real λ > 1)
/// eps_integer_orders = min_{λ ∈ 2..=256} ρ·λ + ln(1/δ)/(λ − 1)   at best_integer_order (lowest on ties)
/// ```
/// `eps_continuous ≤ eps_integer_orders` always; for `ρ = 0`, `eps_continuous = 0` and
/// `lambda_star = ∞`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZcdpEpsilon {
    /// The zCDP parameter `ρ` spent so far.
    pub rho_total: f64,
    /// `ρ + 2·sqrt(ρ ln(1/δ))`.
    pub eps_continuous: f64,
    /// The real order at which `eps_continuous` is attained.
    pub lambda_star: f64,
    /// The best conversion over the integer orders `2..=256` (what RDP accountants on a grid of
    /// orders report).
    pub eps_integer_orders: f64,
    /// The order attaining `eps_integer_orders`.
    pub best_integer_order: u32,
}

/// [`LaplaceEpsilon`] for `queries` releases with `Lap(b)` noise on every count.
///
/// # Errors
/// [`KdError::InvalidHyperparameter`] for `b` not finite and `> 0`, or `δ ∉ (0, 1)`.
///
/// # Example
/// ```
/// use kd_losses::teachers::hot_pate::laplace_epsilon;
///
/// let e = laplace_epsilon(2.0, 100, 1e-5)?;
/// assert_eq!((e.eps_per_query, e.eps_basic), (1.0, 100.0));
/// assert!((e.eps_advanced - 219.8134419677853).abs() < 1e-9);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
pub fn laplace_epsilon(b: f64, queries: u64, delta: f64) -> Result<LaplaceEpsilon> {
    check_positive("b", b)?;
    let log_inv_delta = log_inv_delta(delta)?;
    let q = queries as f64;
    let eps0 = 2.0 / b;
    Ok(LaplaceEpsilon {
        eps_per_query: eps0,
        eps_basic: q * eps0,
        eps_advanced: eps0 * (2.0 * q * log_inv_delta).sqrt() + q * eps0 * eps0.exp_m1(),
    })
}

/// [`ZcdpEpsilon`] of a total zCDP budget `rho_total ≥ 0` at `δ`.
///
/// # Errors
/// [`KdError::InvalidHyperparameter`] for a negative or non-finite `ρ`, or `δ ∉ (0, 1)`.
///
/// # Example
/// ```
/// use kd_losses::teachers::hot_pate::{gaussian_histogram_rho, zcdp_epsilon};
///
/// // 1000 Gaussian histograms with σ = 40: ρ = 1000/40².
/// let e = zcdp_epsilon(1000.0 * gaussian_histogram_rho(40.0)?, 1e-5)?;
/// assert!((e.eps_continuous - 5.989915065723369).abs() < 1e-9);
/// assert_eq!(e.best_integer_order, 5);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
pub fn zcdp_epsilon(rho_total: f64, delta: f64) -> Result<ZcdpEpsilon> {
    check_range(ID, "rho_total", rho_total, 0.0, f64::INFINITY, "a finite value ≥ 0")?;
    let l = log_inv_delta(delta)?;
    let (eps_continuous, lambda_star) = if rho_total > 0.0 {
        (rho_total + 2.0 * (rho_total * l).sqrt(), 1.0 + (l / rho_total).sqrt())
    } else {
        (0.0, f64::INFINITY)
    };
    let mut best = (f64::INFINITY, 0);
    for order in INTEGER_ORDERS {
        let lam = f64::from(order);
        let eps = rho_total * lam + l / (lam - 1.0);
        if eps < best.0 {
            best = (eps, order);
        }
    }
    Ok(ZcdpEpsilon {
        rho_total,
        eps_continuous,
        lambda_star,
        eps_integer_orders: best.0,
        best_integer_order: best.1,
    })
}

/// zCDP cost `ρ = 1/σ²` of one histogram with `N(0, σ²)` on every count (L2 sensitivity `√2`,
/// `ρ = Δ²/(2σ²)`; RDP(λ) = λ/σ²; the GNMax of Papernot et al. 2018).
///
/// # Errors
/// [`KdError::InvalidHyperparameter`] for `σ` not finite and `> 0`.
pub fn gaussian_histogram_rho(sigma: f64) -> Result<f64> {
    check_positive("sigma", sigma)?;
    Ok(1.0 / (sigma * sigma))
}

/// Data-independent zCDP cost of Confident GNMax after `queries` threshold checks of which
/// `answered` passed.
///
/// ```text
/// rho_total = Q/(2σ1²) + answered/σ2²
/// ```
/// The threshold check adds `N(0, σ1²)` to the top count (sensitivity 1); each answer is a GNMax
/// histogram with `N(0, σ2²)` (sensitivity `√2`). Papernot et al.'s data-dependent analysis is
/// tighter and not reproduced.
///
/// # Errors
/// [`KdError::InvalidHyperparameter`] for `σ1`, `σ2` not finite and `> 0`, or
/// `answered > queries`.
pub fn confident_gnmax_rho(sigma1: f64, sigma2: f64, queries: u64, answered: u64) -> Result<f64> {
    check_positive("sigma1", sigma1)?;
    check_positive("sigma2", sigma2)?;
    if answered > queries {
        return Err(KdError::InvalidHyperparameter {
            loss: ID,
            name: "answered",
            expected: "at most the number of queries",
            got: answered as f64,
        });
    }
    Ok(queries as f64 / (2.0 * sigma1 * sigma1) + answered as f64 / (sigma2 * sigma2))
}

/// The noise mechanism whose privacy cost [`PrivacyAccountant`] tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mechanism {
    /// `Lap(b)` on every count of every histogram.
    Laplace {
        /// Laplace scale `b > 0`.
        b: f64,
    },
    /// `N(0, σ²)` on every count of every histogram.
    GaussianHistogram {
        /// Noise standard deviation `σ > 0`.
        sigma: f64,
    },
    /// Confident GNMax: `N(0, σ1²)` threshold check on every query, `N(0, σ2²)` histogram on the
    /// answered ones.
    ConfidentGnmax {
        /// Threshold-check noise `σ1 > 0`.
        sigma1: f64,
        /// Histogram noise `σ2 > 0`.
        sigma2: f64,
    },
}

/// ε at a given δ, as the mechanism's accounting reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PrivacyReport {
    /// Laplace: pure-DP composition bounds.
    Laplace(LaplaceEpsilon),
    /// Gaussian and Confident GNMax: zCDP conversions.
    Zcdp(ZcdpEpsilon),
}

impl PrivacyReport {
    /// The best ε of the report: `min(basic, advanced)` for Laplace, `eps_continuous` for zCDP.
    pub fn epsilon(&self) -> f64 {
        match self {
            Self::Laplace(e) => e.epsilon(),
            Self::Zcdp(e) => e.eps_continuous,
        }
    }
}

/// Records the queries answered by a noisy aggregation and reports the `(ε, δ)` spent so far.
///
/// Every query costs the same data-independent amount, released or `⊥` (the whole noisy
/// histogram could have been published): `Q` queries of [`Mechanism::Laplace`] or
/// [`Mechanism::GaussianHistogram`] compose as in [`laplace_epsilon`] / [`zcdp_epsilon`] with
/// `ρ = Q/σ²`. For [`Mechanism::ConfidentGnmax`] only answered queries pay the histogram term
/// ([`confident_gnmax_rho`]). These are the standard closed forms; hot PATE's own
/// data-dependent analysis (and Algorithm 3's privacy amplification by the selection) is not
/// reproduced, so for the heterogeneous rule the report covers the noisy counts only.
///
/// # Errors
/// [`PrivacyAccountant::new`] rejects non-positive or non-finite scales; [`Self::epsilon`] and
/// [`Self::report`] reject `δ ∉ (0, 1)`.
///
/// # Example
/// ```
/// use kd_losses::teachers::hot_pate::{Mechanism, PrivacyAccountant};
///
/// let mut acc = PrivacyAccountant::new(Mechanism::ConfidentGnmax { sigma1: 150.0, sigma2: 40.0 })?;
/// for i in 0..1000 {
///     acc.record(i % 10 == 0); // 100 of 1000 queries answered
/// }
/// assert_eq!((acc.queries(), acc.answered()), (1000, 100));
/// assert!((acc.epsilon(1e-5)? - 2.059969679804273).abs() < 1e-9);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyAccountant {
    mechanism: Mechanism,
    queries: u64,
    answered: u64,
}

impl PrivacyAccountant {
    /// An accountant with nothing spent.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for a scale that is not finite and `> 0`.
    pub fn new(mechanism: Mechanism) -> Result<Self> {
        match mechanism {
            Mechanism::Laplace { b } => check_positive("b", b)?,
            Mechanism::GaussianHistogram { sigma } => check_positive("sigma", sigma)?,
            Mechanism::ConfidentGnmax { sigma1, sigma2 } => {
                check_positive("sigma1", sigma1)?;
                check_positive("sigma2", sigma2)?;
            }
        }
        Ok(Self { mechanism, queries: 0, answered: 0 })
    }

    /// The mechanism tracked.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Records one query; `released` says whether it produced a token.
    pub fn record(&mut self, released: bool) {
        self.queries += 1;
        self.answered += u64::from(released);
    }

    /// Records one aggregation ([`Aggregation::is_released`]).
    pub fn record_aggregation(&mut self, aggregation: &Aggregation) {
        self.record(aggregation.is_released());
    }

    /// Queries asked so far.
    pub fn queries(&self) -> u64 {
        self.queries
    }

    /// Queries that released a token.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// The full accounting at `δ`.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for `δ ∉ (0, 1)`.
    pub fn report(&self, delta: f64) -> Result<PrivacyReport> {
        let q = self.queries;
        Ok(match self.mechanism {
            Mechanism::Laplace { b } => PrivacyReport::Laplace(laplace_epsilon(b, q, delta)?),
            Mechanism::GaussianHistogram { sigma } => {
                PrivacyReport::Zcdp(zcdp_epsilon(q as f64 * gaussian_histogram_rho(sigma)?, delta)?)
            }
            Mechanism::ConfidentGnmax { sigma1, sigma2 } => PrivacyReport::Zcdp(zcdp_epsilon(
                confident_gnmax_rho(sigma1, sigma2, q, self.answered)?,
                delta,
            )?),
        })
    }

    /// The ε spent so far at `δ` ([`PrivacyReport::epsilon`]).
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] for `δ ∉ (0, 1)`.
    pub fn epsilon(&self, delta: f64) -> Result<f64> {
        Ok(self.report(delta)?.epsilon())
    }
}

/// `ln(1/δ)` for `δ ∈ (0, 1)`.
fn log_inv_delta(delta: f64) -> Result<f64> {
    if delta > 0.0 && delta < 1.0 {
        Ok(-delta.ln())
    } else {
        Err(KdError::InvalidHyperparameter {
            loss: ID,
            name: "delta",
            expected: "a value in (0, 1)",
            got: delta,
        })
    }
}

fn check_positive(name: &'static str, x: f64) -> Result<()> {
    if x.is_finite() && x > 0.0 {
        Ok(())
    } else {
        Err(KdError::InvalidHyperparameter {
            loss: ID,
            name,
            expected: "a finite value > 0",
            got: x,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn laplace_by_hand() {
        // b = 2: eps0 = 1; Q = 100, δ = 1e-5:
        // advanced = sqrt(200 ln 1e5) + 100 (e − 1).
        let e = laplace_epsilon(2.0, 100, 1e-5).unwrap();
        let want = (200.0 * 1e5f64.ln()).sqrt() + 100.0 * (std::f64::consts::E - 1.0);
        assert!(close(e.eps_advanced, want), "{} vs {want}", e.eps_advanced);
        assert_eq!((e.eps_per_query, e.eps_basic), (1.0, 100.0));
        // One query: advanced is worse than basic; the report takes the minimum.
        let e = laplace_epsilon(0.5, 1, 1e-5).unwrap();
        assert!(e.eps_advanced > e.eps_basic && e.epsilon() == 4.0);
        // No query: nothing spent.
        let e = laplace_epsilon(1.0, 0, 1e-5).unwrap();
        assert_eq!((e.eps_basic, e.eps_advanced), (0.0, 0.0));
    }

    #[test]
    fn zcdp_by_hand() {
        // ρ = 1, δ = e^{-4}: eps = 1 + 2·2 = 5 at λ* = 1 + 2 = 3; integer λ = 3 gives 3 + 4/2 = 5.
        let e = zcdp_epsilon(1.0, (-4f64).exp()).unwrap();
        assert!(close(e.eps_continuous, 5.0) && close(e.lambda_star, 3.0));
        assert!(close(e.eps_integer_orders, 5.0) && e.best_integer_order == 3);
        // ρ = 0: ε = 0 continuous; the grid ends at λ = 256: ln(1/δ)/255.
        let e = zcdp_epsilon(0.0, 1e-5).unwrap();
        assert_eq!((e.eps_continuous, e.lambda_star), (0.0, f64::INFINITY));
        assert_eq!(e.best_integer_order, 256);
        assert!(close(e.eps_integer_orders, 1e5f64.ln() / 255.0));
        // Huge ρ: λ* close to 1, the grid is stuck at 2.
        let e = zcdp_epsilon(1e4, 1e-5).unwrap();
        assert_eq!(e.best_integer_order, 2);
        assert!(e.eps_continuous <= e.eps_integer_orders);
    }

    #[test]
    fn continuous_never_beats_the_grid_from_below() {
        for rho in [1e-4, 0.01, 0.3, 1.0, 7.0, 100.0] {
            for delta in [1e-9, 1e-5, 0.1] {
                let e = zcdp_epsilon(rho, delta).unwrap();
                assert!(e.eps_continuous <= e.eps_integer_orders + 1e-12, "{rho} {delta}");
            }
        }
    }

    #[test]
    fn gnmax_costs() {
        assert!(close(gaussian_histogram_rho(40.0).unwrap(), 1.0 / 1600.0));
        let rho = confident_gnmax_rho(150.0, 40.0, 1000, 100).unwrap();
        assert!(close(rho, 1000.0 / 45000.0 + 100.0 / 1600.0));
        assert!(confident_gnmax_rho(1.0, 1.0, 3, 4).is_err());
    }

    #[test]
    fn accountant_counts_queries_and_answers() {
        let mut acc = PrivacyAccountant::new(Mechanism::GaussianHistogram { sigma: 5.0 }).unwrap();
        assert_eq!(acc.epsilon(1e-5).unwrap(), 0.0);
        for i in 0..10 {
            acc.record(i % 3 == 0);
        }
        assert_eq!((acc.queries(), acc.answered()), (10, 4));
        // Every query pays, released or not: ρ = 10/25.
        let PrivacyReport::Zcdp(z) = acc.report(1e-5).unwrap() else { panic!() };
        assert!(close(z.rho_total, 0.4));
        let mut lap = PrivacyAccountant::new(Mechanism::Laplace { b: 10.0 }).unwrap();
        (0..1000).for_each(|_| lap.record(false));
        assert!(close(lap.epsilon(1e-6).unwrap(), 77.52571435741618));
        // Confident GNMax: unanswered queries only pay the threshold check.
        let m = Mechanism::ConfidentGnmax { sigma1: 2.0, sigma2: 1.0 };
        let mut a = PrivacyAccountant::new(m).unwrap();
        let mut b = PrivacyAccountant::new(m).unwrap();
        a.record(false);
        b.record(true);
        let (ea, eb) = (a.epsilon(1e-5).unwrap(), b.epsilon(1e-5).unwrap());
        let rho_a = 1.0 / 8.0;
        assert!(close(ea, rho_a + 2.0 * (rho_a * 1e5f64.ln()).sqrt()) && eb > ea);
    }

    #[test]
    fn bad_parameters_are_errors() {
        for delta in [0.0, 1.0, -0.5, 2.0, f64::NAN] {
            assert!(
                matches!(
                    laplace_epsilon(1.0, 1, delta),
                    Err(KdError::InvalidHyperparameter { name: "delta", .. })
                ),
                "{delta}"
            );
            assert!(zcdp_epsilon(1.0, delta).is_err());
        }
        assert!(laplace_epsilon(0.0, 1, 0.1).is_err());
        assert!(zcdp_epsilon(-1.0, 0.1).is_err());
        assert!(zcdp_epsilon(f64::INFINITY, 0.1).is_err());
        assert!(gaussian_histogram_rho(0.0).is_err());
        assert!(PrivacyAccountant::new(Mechanism::Laplace { b: -1.0 }).is_err());
        assert!(PrivacyAccountant::new(Mechanism::GaussianHistogram { sigma: f64::NAN }).is_err());
        let m = Mechanism::ConfidentGnmax { sigma1: 1.0, sigma2: 0.0 };
        assert!(PrivacyAccountant::new(m).is_err());
        let acc = PrivacyAccountant::new(Mechanism::Laplace { b: 1.0 }).unwrap();
        assert!(acc.epsilon(0.0).is_err());
    }
}
