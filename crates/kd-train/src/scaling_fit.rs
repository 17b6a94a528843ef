//! Fitting the distillation scaling law to your own runs, predicting a student's loss and the
//! compute-optimal student size for a FLOP budget.
//!
//! The law is [`kd_losses::DistillationScalingLaw`] (Busbridge et al., *Distillation Scaling
//! Laws*, ICML 2025, <https://arxiv.org/abs/2502.08606>):
//!
//! ```text
//! supervised:  L̃_S(N, D) = E + (A/N^α + B/D^β)^γ
//! distilled:   L_S(N, D, L_T) = L_T + L_T^(−c₀) · (1 + (L_T / (L̃_S·d₁))^(1/f₁))^(−c₁·f₁)
//!                                   · (A′/N^α′ + B′/D^β′)^γ′
//! ```
//!
//! `N` = student parameters, `D` = training (distillation) tokens, `L_T` = the teacher's
//! cross-entropy on the evaluation data, `L_S` = the student's.
//!
//! # Fitting
//! A table of runs ([`ScalingRun`]: `n_student, d_student, teacher_loss, student_loss`; a run
//! without a teacher is a supervised run) is fitted in two stages, as in the paper: the
//! supervised law on the supervised runs, then the nine distillation coefficients on the
//! distilled runs with the supervised law held fixed (pass known supervised coefficients
//! instead when you have no supervised runs). Each stage minimises
//!
//! ```text
//! Σ_runs Huber_δ( ln L̂(run) − ln L(run) )          (δ = 1e-3 by default)
//! ```
//!
//! with L-BFGS ([`argmin`]) from every point of a grid of starting values, keeping the best:
//! the procedure of Hoffmann et al. 2022 (Chinchilla, approach 3), which the distillation paper
//! follows for its supervised law. Positive coefficients (`E, A, B, A′, B′, d₁, f₁`) are
//! optimised as logarithms. The gradient is a central finite difference (the objective is a
//! sum over at most a few hundred runs, so this is cheap and keeps the law in one place).
//!
//! # Compute-optimal split
//! For a fixed teacher, [`compute_optimal`] spends a budget of `C` FLOPs on a student of `N`
//! parameters trained on `D` tokens, with the usual cost model `6·N·D` for the student, plus
//! `2·N_T·D` when the teacher's logits are computed online, plus `6·N_T·D_T` when the teacher's
//! pretraining is charged to the same budget, and returns the `N` (and so `D`) of least
//! predicted student loss.
//!
//! # Example
//! ```
//! use kd_train::scaling_fit::{FitOptions, ScalingRun, fit};
//! use kd_losses::{DistillationScalingLaw, ScalingLawCoefficients};
//!
//! // Runs made from a known law (in practice: your own measured runs).
//! let truth = ScalingLawCoefficients {
//!     E: 1.7, A: 400.0, B: 1800.0, alpha: 0.34, beta: 0.28, gamma: 1.0,
//!     A_prime: 3200.0, B_prime: 4500.0, alpha_prime: 0.42, beta_prime: 0.36, gamma_prime: 1.0,
//!     c0: 1.0, c1: 0.4, d1: 1.2, f1: 1.1,
//! };
//! let law = DistillationScalingLaw::new(truth);
//! let mut runs = Vec::new();
//! for n in [1e7, 3e7, 1e8, 3e8, 1e9] {
//!     for d in [1e9, 4e9, 1.6e10, 6.4e10] {
//!         runs.push(ScalingRun::supervised(n, d, law.supervised_loss(n, d)));
//!         for lt in [2.0, 2.4, 2.8, 3.2] {
//!             runs.push(ScalingRun::distilled(n, d, lt, law.student_loss(n, d, lt)));
//!         }
//!     }
//! }
//! let fitted = fit(&runs, &FitOptions::default())?;
//! let predicted = fitted.law().student_loss(2e8, 2e10, 2.5);
//! assert!((predicted / law.student_loss(2e8, 2e10, 2.5) - 1.0).abs() < 1e-3);
//! # Ok::<(), kd_train::TrainError>(())
//! ```

use argmin::core::{CostFunction, Error as ArgminError, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use kd_losses::{DistillationScalingLaw, ScalingLawCoefficients};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One training run of a table to fit: a student of `n_student` parameters trained on
/// `d_student` tokens reached `student_loss`; `teacher_loss` is the teacher's loss for a
/// distilled run and `None` for a supervised (no teacher) run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalingRun {
    /// Student parameters `N_S` (non-embedding, as in the paper; be consistent).
    pub n_student: f64,
    /// Training tokens `D_S`.
    pub d_student: f64,
    /// Teacher cross-entropy `L_T` (nats per token); `None` for a supervised run.
    pub teacher_loss: Option<f64>,
    /// Student cross-entropy `L_S` (nats per token) on the same evaluation data.
    pub student_loss: f64,
}

impl ScalingRun {
    /// A supervised run (no teacher).
    pub fn supervised(n_student: f64, d_student: f64, student_loss: f64) -> Self {
        Self { n_student, d_student, teacher_loss: None, student_loss }
    }

    /// A distilled run with a teacher of loss `teacher_loss`.
    pub fn distilled(n_student: f64, d_student: f64, teacher_loss: f64, student_loss: f64) -> Self {
        Self { n_student, d_student, teacher_loss: Some(teacher_loss), student_loss }
    }

    fn validate(&self, index: usize) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(format!("runs[{index}].{name}"), "a finite number > 0", v))
            }
        };
        positive("n_student", self.n_student)?;
        positive("d_student", self.d_student)?;
        positive("student_loss", self.student_loss)?;
        if let Some(lt) = self.teacher_loss {
            positive("teacher_loss", lt)?;
        }
        Ok(())
    }
}

/// Options of [`fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitOptions {
    /// Huber threshold on log-residuals (default 1e-3, as Hoffmann et al. 2022).
    pub huber_delta: f64,
    /// L-BFGS iterations per starting point (default 300).
    pub max_iters: u64,
    /// Known supervised coefficients (`E, A, B, alpha, beta, gamma`); when set, the supervised
    /// runs of the table are not needed and the supervised stage is skipped.
    pub supervised: Option<SupervisedCoefficients>,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self { huber_delta: 1e-3, max_iters: 300, supervised: None }
    }
}

/// The six coefficients of the supervised law `E + (A/N^α + B/D^β)^γ`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct SupervisedCoefficients {
    /// Irreducible loss `E`.
    pub E: f64,
    /// Parameter term scale `A`.
    pub A: f64,
    /// Data term scale `B`.
    pub B: f64,
    /// Parameter exponent `α`.
    pub alpha: f64,
    /// Data exponent `β`.
    pub beta: f64,
    /// Outer exponent `γ`.
    pub gamma: f64,
}

/// A fitted law with how well it fits its table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingFit {
    /// All fifteen coefficients.
    pub coefficients: ScalingLawCoefficients,
    /// Supervised runs used by the supervised stage (0 when the coefficients were given).
    pub supervised_runs: usize,
    /// Distilled runs used by the distillation stage.
    pub distilled_runs: usize,
    /// Root mean square of `ln L̂ − ln L` over the supervised runs (0 when none).
    pub supervised_rmse_log: f64,
    /// Root mean square of `ln L̂ − ln L` over the distilled runs.
    pub distilled_rmse_log: f64,
    /// The prediction for every run of the table, in table order.
    pub predictions: Vec<f64>,
}

impl ScalingFit {
    /// The fitted law.
    pub fn law(&self) -> DistillationScalingLaw {
        DistillationScalingLaw::new(self.coefficients)
    }
}

/// Fits the supervised law (unless given in `options`), then the distillation law, to `runs`.
///
/// # Errors
/// [`TrainError::ScalingLaw`] when a run has a non-positive or non-finite entry, when there
/// are fewer supervised runs than the 6 supervised coefficients (and none were given) or fewer
/// distilled runs than the 9 distillation coefficients, or when no starting point converged to
/// a finite fit.
pub fn fit(runs: &[ScalingRun], options: &FitOptions) -> Result<ScalingFit> {
    for (i, r) in runs.iter().enumerate() {
        r.validate(i)?;
    }
    if !(options.huber_delta > 0.0 && options.huber_delta.is_finite()) {
        return Err(invalid("huber_delta", "a finite number > 0", options.huber_delta));
    }
    let supervised: Vec<ScalingRun> =
        runs.iter().copied().filter(|r| r.teacher_loss.is_none()).collect();
    let distilled: Vec<ScalingRun> =
        runs.iter().copied().filter(|r| r.teacher_loss.is_some()).collect();
    let (sup, sup_runs) = match options.supervised {
        Some(s) => (s, 0),
        None => {
            if supervised.len() < 6 {
                return Err(invalid(
                    "runs",
                    "at least 6 supervised runs (no teacher_loss) to fit the supervised law, \
                     or known supervised coefficients",
                    format!("{} supervised runs", supervised.len()),
                ));
            }
            (fit_supervised(&supervised, options)?, supervised.len())
        }
    };
    if distilled.len() < 9 {
        return Err(invalid(
            "runs",
            "at least 9 distilled runs (with teacher_loss)",
            format!("{} distilled runs", distilled.len()),
        ));
    }
    let coefficients = fit_distilled(&distilled, sup, options)?;
    let law = DistillationScalingLaw::new(coefficients);
    let predict = |r: &ScalingRun| match r.teacher_loss {
        Some(lt) => law.student_loss(r.n_student, r.d_student, lt),
        None => law.supervised_loss(r.n_student, r.d_student),
    };
    let rmse = |rs: &[ScalingRun]| {
        if rs.is_empty() {
            return 0.0;
        }
        let s: f64 = rs.iter().map(|r| (predict(r).ln() - r.student_loss.ln()).powi(2)).sum();
        (s / rs.len() as f64).sqrt()
    };
    Ok(ScalingFit {
        coefficients,
        supervised_runs: sup_runs,
        distilled_runs: distilled.len(),
        supervised_rmse_log: if sup_runs > 0 { rmse(&supervised) } else { 0.0 },
        distilled_rmse_log: rmse(&distilled),
        predictions: runs.iter().map(predict).collect(),
    })
}

fn invalid(
    what: impl Into<String>,
    expected: impl Into<String>,
    got: impl std::fmt::Display,
) -> TrainError {
    TrainError::ScalingLaw { what: what.into(), expected: expected.into(), got: got.to_string() }
}

/// Huber loss of a residual.
fn huber(r: f64, delta: f64) -> f64 {
    if r.abs() <= delta { 0.5 * r * r } else { delta * (r.abs() - 0.5 * delta) }
}

/// The objective of one stage: Σ Huber(ln predict(θ, run) − ln L(run)).
struct Objective<'a> {
    runs: &'a [ScalingRun],
    delta: f64,
    predict: &'a (dyn Fn(&[f64], &ScalingRun) -> f64 + Sync),
}

impl Objective<'_> {
    fn value(&self, theta: &[f64]) -> f64 {
        let mut total = 0.0;
        for r in self.runs {
            let p = (self.predict)(theta, r);
            if !(p.is_finite() && p > 0.0) {
                return f64::INFINITY;
            }
            total += huber(p.ln() - r.student_loss.ln(), self.delta);
        }
        total
    }
}

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, theta: &Vec<f64>) -> std::result::Result<f64, ArgminError> {
        Ok(self.value(theta))
    }
}

impl Gradient for Objective<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, theta: &Vec<f64>) -> std::result::Result<Vec<f64>, ArgminError> {
        let mut g = vec![0.0; theta.len()];
        let mut x = theta.clone();
        for i in 0..theta.len() {
            let h = 1e-6 * theta[i].abs().max(1.0);
            x[i] = theta[i] + h;
            let up = self.value(&x);
            x[i] = theta[i] - h;
            let down = self.value(&x);
            x[i] = theta[i];
            g[i] = (up - down) / (2.0 * h);
            if !g[i].is_finite() {
                return Err(ArgminError::msg("non-finite objective near the current point"));
            }
        }
        Ok(g)
    }
}

/// Runs L-BFGS from every start and returns the best finite end point and its objective.
fn minimise(
    objective: &Objective<'_>,
    starts: Vec<Vec<f64>>,
    iters: u64,
) -> Option<(Vec<f64>, f64)> {
    let mut best: Option<(Vec<f64>, f64)> = None;
    for start in starts {
        let start_value = objective.value(&start);
        if !start_value.is_finite() {
            continue;
        }
        let Ok(linesearch) = MoreThuenteLineSearch::new().with_c(1e-4, 0.9) else {
            continue;
        };
        let solver = LBFGS::new(linesearch, 10)
            .with_tolerance_grad(1e-12)
            .and_then(|s| s.with_tolerance_cost(1e-16));
        let Ok(solver) = solver else { continue };
        let problem =
            Objective { runs: objective.runs, delta: objective.delta, predict: objective.predict };
        let result = Executor::new(problem, solver)
            .configure(|state| state.param(start.clone()).max_iters(iters))
            .run();
        // A start whose line search fails is skipped; its best point so far still counts.
        let (theta, value) = match result {
            Ok(res) => match res.state().get_best_param() {
                Some(p) => (p.clone(), res.state().get_best_cost()),
                None => (start.clone(), start_value),
            },
            Err(_) => (start.clone(), start_value),
        };
        if value.is_finite() && best.as_ref().is_none_or(|(_, b)| value < *b) {
            best = Some((theta, value));
        }
    }
    best
}

/// Cartesian product of value lists.
fn grid(axes: &[&[f64]]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new()];
    for axis in axes {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                axis.iter().map(move |&v| {
                    let mut p = prefix.clone();
                    p.push(v);
                    p
                })
            })
            .collect();
    }
    out
}

fn supervised_of(theta: &[f64]) -> SupervisedCoefficients {
    SupervisedCoefficients {
        E: theta[0].exp(),
        A: theta[1].exp(),
        B: theta[2].exp(),
        alpha: theta[3],
        beta: theta[4],
        gamma: theta[5],
    }
}

fn fit_supervised(runs: &[ScalingRun], options: &FitOptions) -> Result<SupervisedCoefficients> {
    let predict = |theta: &[f64], r: &ScalingRun| {
        // The supervised part of the law only reads E, A, B, α, β, γ.
        DistillationScalingLaw::new(distilled_of(&[0.0; 9], supervised_of(theta)))
            .supervised_loss(r.n_student, r.d_student)
    };
    let objective = Objective { runs, delta: options.huber_delta, predict: &predict };
    // ln E, ln A, ln B, α, β, γ.
    let min_loss = runs.iter().map(|r| r.student_loss).fold(f64::INFINITY, f64::min);
    let e0: Vec<f64> = [0.5, 0.8].iter().map(|f| (f * min_loss).ln()).collect();
    let starts =
        grid(&[&e0, &[2.0, 6.0, 10.0], &[2.0, 6.0, 10.0], &[0.2, 0.5], &[0.2, 0.5], &[0.5, 1.0]]);
    let (theta, _) = minimise(&objective, starts, options.max_iters).ok_or_else(|| {
        invalid("runs", "a finite supervised fit", "none from any starting point")
    })?;
    Ok(supervised_of(&theta))
}

fn distilled_of(theta: &[f64], s: SupervisedCoefficients) -> ScalingLawCoefficients {
    ScalingLawCoefficients {
        E: s.E,
        A: s.A,
        B: s.B,
        alpha: s.alpha,
        beta: s.beta,
        gamma: s.gamma,
        A_prime: theta[0].exp(),
        B_prime: theta[1].exp(),
        alpha_prime: theta[2],
        beta_prime: theta[3],
        gamma_prime: theta[4],
        c0: theta[5],
        c1: theta[6],
        d1: theta[7].exp(),
        f1: theta[8].exp(),
    }
}

fn fit_distilled(
    runs: &[ScalingRun],
    sup: SupervisedCoefficients,
    options: &FitOptions,
) -> Result<ScalingLawCoefficients> {
    let predict = |theta: &[f64], r: &ScalingRun| {
        DistillationScalingLaw::new(distilled_of(theta, sup)).student_loss(
            r.n_student,
            r.d_student,
            r.teacher_loss.unwrap_or(f64::NAN),
        )
    };
    let objective = Objective { runs, delta: options.huber_delta, predict: &predict };
    // ln A′, ln B′, α′, β′, γ′, c₀, c₁, ln d₁, ln f₁.
    let starts = grid(&[
        &[4.0, 8.0],
        &[4.0, 8.0],
        &[0.3, 0.6],
        &[0.3, 0.6],
        &[1.0],
        &[0.5, 1.5],
        &[0.5],
        &[0.0],
        &[0.0],
    ]);
    let (theta, _) = minimise(&objective, starts, options.max_iters).ok_or_else(|| {
        invalid("runs", "a finite distillation fit", "none from any starting point")
    })?;
    Ok(distilled_of(&theta, sup))
}

/// The teacher side of a compute budget for [`compute_optimal`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TeacherCost {
    /// Teacher parameters `N_T`.
    pub params: f64,
    /// Teacher cross-entropy `L_T`.
    pub loss: f64,
    /// Charge the teacher's forward passes on the student's tokens (`2·N_T·D`): true for
    /// online distillation, false when the logits already exist.
    pub inference: bool,
    /// Charge the teacher's pretraining (`6·N_T·D_T`) to the budget: its tokens `D_T`.
    pub pretraining_tokens: Option<f64>,
}

impl TeacherCost {
    /// FLOPs charged to the teacher before any student token: `6·N_T·D_T` when its
    /// pretraining is charged, else 0.
    pub fn fixed_flops(&self) -> f64 {
        self.pretraining_tokens.map_or(0.0, |dt| 6.0 * self.params * dt)
    }

    /// FLOPs per student training token on the teacher's side: `2·N_T` when its inference is
    /// charged, else 0.
    pub fn flops_per_token(&self) -> f64 {
        if self.inference { 2.0 * self.params } else { 0.0 }
    }

    /// Tokens a student of `n_student` parameters trains on within `flops`:
    /// `(flops − fixed) / (6·N + per-token teacher FLOPs)` (negative when the budget does not
    /// cover the fixed part).
    pub fn student_tokens(&self, flops: f64, n_student: f64) -> f64 {
        (flops - self.fixed_flops()) / (6.0 * n_student + self.flops_per_token())
    }
}

/// The best split of a budget: see [`compute_optimal`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComputeOptimal {
    /// Student parameters.
    pub n_student: f64,
    /// Student training tokens.
    pub d_student: f64,
    /// Predicted distilled student loss.
    pub student_loss: f64,
    /// FLOPs spent on the student's training (`6·N·D`).
    pub student_flops: f64,
    /// FLOPs spent on the teacher (inference, and pretraining when charged).
    pub teacher_flops: f64,
}

/// The student size of least predicted loss for a budget of `flops`, searched over
/// `n_range` (parameters, both ends inclusive): a 241-point grid in `ln N`, refined by golden
/// section around the best grid point.
///
/// # Errors
/// [`TrainError::ScalingLaw`] when the budget does not cover the teacher's charged cost,
/// when an input is not finite and positive, or when no student in `n_range` gets a token.
pub fn compute_optimal(
    law: &DistillationScalingLaw,
    flops: f64,
    teacher: TeacherCost,
    n_range: (f64, f64),
) -> Result<ComputeOptimal> {
    for (key, v) in [
        ("flops", flops),
        ("teacher.params", teacher.params),
        ("teacher.loss", teacher.loss),
        ("n_min", n_range.0),
        ("n_max", n_range.1),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(invalid(key, "a finite number > 0", v));
        }
    }
    if n_range.0 > n_range.1 {
        return Err(invalid("n_range", "min <= max", format!("({}, {})", n_range.0, n_range.1)));
    }
    let pretraining = teacher.fixed_flops();
    let left = flops - pretraining;
    if left <= 0.0 {
        return Err(invalid(
            "flops",
            format!("a budget above the teacher's pretraining cost {pretraining:e}"),
            format!("{flops:e}"),
        ));
    }
    let tokens = |n: f64| teacher.student_tokens(flops, n);
    let loss = |ln_n: f64| {
        let n = ln_n.exp();
        let l = law.student_loss(n, tokens(n), teacher.loss);
        if l.is_finite() { l } else { f64::INFINITY }
    };
    let (a, b) = (n_range.0.ln(), n_range.1.ln());
    let steps = 240;
    let xs: Vec<f64> = (0..=steps).map(|i| a + (b - a) * i as f64 / steps as f64).collect();
    let (best_i, _) = xs
        .iter()
        .map(|&x| loss(x))
        .enumerate()
        .fold((0, f64::INFINITY), |(bi, bv), (i, v)| if v < bv { (i, v) } else { (bi, bv) });
    if !loss(xs[best_i]).is_finite() {
        return Err(invalid("n_range", "a student size with a finite predicted loss", "none"));
    }
    // Golden-section search between the neighbours of the best grid point.
    let (mut lo, mut hi) = (xs[best_i.saturating_sub(1)], xs[(best_i + 1).min(steps)]);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..100 {
        let (c, d) = (hi - g * (hi - lo), lo + g * (hi - lo));
        if loss(c) < loss(d) { hi = d } else { lo = c }
    }
    let x = if loss(0.5 * (lo + hi)) <= loss(xs[best_i]) { 0.5 * (lo + hi) } else { xs[best_i] };
    let n = x.exp();
    let d = tokens(n);
    Ok(ComputeOptimal {
        n_student: n,
        d_student: d,
        student_loss: law.student_loss(n, d, teacher.loss),
        student_flops: 6.0 * n * d,
        teacher_flops: teacher.flops_per_token() * d + pretraining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth() -> ScalingLawCoefficients {
        ScalingLawCoefficients {
            E: 1.7,
            A: 400.0,
            B: 1800.0,
            alpha: 0.34,
            beta: 0.28,
            gamma: 1.0,
            A_prime: 3200.0,
            B_prime: 4500.0,
            alpha_prime: 0.42,
            beta_prime: 0.36,
            gamma_prime: 1.0,
            c0: 1.0,
            c1: 0.4,
            d1: 1.2,
            f1: 1.1,
        }
    }

    fn synthetic(law: &DistillationScalingLaw) -> Vec<ScalingRun> {
        let mut runs = Vec::new();
        for n in [1e7, 3e7, 1e8, 3e8, 1e9, 3e9] {
            for d in [5e8, 2e9, 8e9, 3.2e10, 1.28e11] {
                runs.push(ScalingRun::supervised(n, d, law.supervised_loss(n, d)));
                for lt in [1.9, 2.2, 2.6, 3.0, 3.5] {
                    runs.push(ScalingRun::distilled(n, d, lt, law.student_loss(n, d, lt)));
                }
            }
        }
        runs
    }

    #[test]
    fn recovers_known_coefficients_from_noise_free_runs() {
        let law = DistillationScalingLaw::new(truth());
        let runs = synthetic(&law);
        let fitted = fit(&runs, &FitOptions::default()).unwrap();
        assert!(fitted.supervised_rmse_log < 1e-5, "{fitted:?}");
        assert!(fitted.distilled_rmse_log < 1e-5, "{fitted:?}");
        // Predictions away from the table: other sizes, more data, another teacher.
        for (n, d, lt) in [(5e8, 5e10, 2.4), (2e7, 1e9, 3.2), (2e9, 2e11, 2.0)] {
            let got = fitted.law().student_loss(n, d, lt);
            let want = law.student_loss(n, d, lt);
            assert!((got / want - 1.0).abs() < 1e-4, "({n}, {d}, {lt}): {got} vs {want}");
        }
        // The exponents, which fix the law's behaviour, come back.
        let c = fitted.coefficients;
        let t = truth();
        for (name, got, want) in [
            ("alpha", c.alpha, t.alpha),
            ("beta", c.beta, t.beta),
            ("E", c.E, t.E),
            ("alpha_prime", c.alpha_prime, t.alpha_prime),
            ("beta_prime", c.beta_prime, t.beta_prime),
        ] {
            assert!((got - want).abs() < 0.02 * want.abs(), "{name}: {got} vs {want}; {c:?}");
        }
    }

    #[test]
    fn fits_through_noise_and_with_given_supervised_coefficients() {
        let law = DistillationScalingLaw::new(truth());
        // Deterministic ±0.5 % multiplicative "noise".
        let runs: Vec<ScalingRun> = synthetic(&law)
            .into_iter()
            .filter(|r| r.teacher_loss.is_some())
            .enumerate()
            .map(|(i, mut r)| {
                r.student_loss *= 1.0 + 0.005 * ((i as f64 * 2.399).sin());
                r
            })
            .collect();
        let t = truth();
        let options = FitOptions {
            supervised: Some(SupervisedCoefficients {
                E: t.E,
                A: t.A,
                B: t.B,
                alpha: t.alpha,
                beta: t.beta,
                gamma: t.gamma,
            }),
            ..FitOptions::default()
        };
        let fitted = fit(&runs, &options).unwrap();
        assert_eq!(fitted.supervised_runs, 0);
        assert!(fitted.distilled_rmse_log < 0.005, "{}", fitted.distilled_rmse_log);
        let got = fitted.law().student_loss(3e8, 2e10, 2.4);
        let want = law.student_loss(3e8, 2e10, 2.4);
        assert!((got / want - 1.0).abs() < 0.01, "{got} vs {want}");
    }

    #[test]
    fn too_few_runs_and_bad_entries_are_errors() {
        let law = DistillationScalingLaw::new(truth());
        let runs = synthetic(&law);
        let few: Vec<_> =
            runs.iter().copied().filter(|r| r.teacher_loss.is_some()).take(8).collect();
        let err = fit(&few, &FitOptions::default()).unwrap_err().to_string();
        assert!(err.contains("supervised"), "{err}");
        let mut bad = runs.clone();
        bad[3].student_loss = f64::NAN;
        let err = fit(&bad, &FitOptions::default()).unwrap_err().to_string();
        assert!(err.contains("runs[3].student_loss"), "{err}");
    }

    #[test]
    fn compute_optimal_is_the_minimum_along_the_budget() {
        let law = DistillationScalingLaw::new(truth());
        let teacher =
            TeacherCost { params: 7e9, loss: 2.1, inference: true, pretraining_tokens: None };
        let flops = 1e21;
        let best = compute_optimal(&law, flops, teacher, (1e6, 1e12)).unwrap();
        // The budget is spent exactly.
        let spent = best.student_flops + best.teacher_flops;
        assert!((spent / flops - 1.0).abs() < 1e-9, "{spent:e}");
        // No other split of the same budget is better (a dense check, independent of the search).
        for i in 0..=400 {
            let n = (1e6f64.ln() + (1e12f64.ln() - 1e6f64.ln()) * i as f64 / 400.0).exp();
            let d = flops / (6.0 * n + 2.0 * 7e9);
            assert!(law.student_loss(n, d, 2.1) >= best.student_loss - 1e-12, "n = {n:e}");
        }
        // Charging the teacher's pretraining leaves fewer tokens and a worse student.
        let charged = TeacherCost { pretraining_tokens: Some(1e10), ..teacher };
        let worse = compute_optimal(&law, flops, charged, (1e6, 1e12)).unwrap();
        assert!(worse.student_loss > best.student_loss);
        let too_small = TeacherCost { pretraining_tokens: Some(1e13), ..teacher };
        assert!(compute_optimal(&law, flops, too_small, (1e6, 1e12)).is_err());
    }
}
