//! The distillation scaling law: predicted student loss from student size, data and teacher loss.

use serde::{Deserialize, Serialize};

/// Coefficients of [`DistillationScalingLaw`] (all user supplied; no fit ships with kd-losses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct ScalingLawCoefficients {
    /// Irreducible loss `E` of the supervised law.
    pub E: f64,
    /// Parameter term scale `A`.
    pub A: f64,
    /// Data term scale `B`.
    pub B: f64,
    /// Parameter exponent `α`.
    pub alpha: f64,
    /// Data exponent `β`.
    pub beta: f64,
    /// Outer exponent `γ` of the supervised law.
    pub gamma: f64,
    /// Parameter term scale `A′` of the distillation law.
    pub A_prime: f64,
    /// Data term scale `B′` of the distillation law.
    pub B_prime: f64,
    /// Parameter exponent `α′`.
    pub alpha_prime: f64,
    /// Data exponent `β′`.
    pub beta_prime: f64,
    /// Outer exponent `γ′`.
    pub gamma_prime: f64,
    /// Teacher-loss exponent `c₀`.
    pub c0: f64,
    /// Transition exponent `c₁`.
    pub c1: f64,
    /// Capacity-gap ratio scale `d₁`.
    pub d1: f64,
    /// Transition sharpness `f₁`.
    pub f1: f64,
}

/// The functional form of the distillation scaling law (Busbridge et al., 2025).
///
/// ```text
/// supervised:  L_S^sup(N, D) = E + (A/N^α + B/D^β)^γ
/// distilled:   L_S = L_T + L_T^(−c₀) · (1 + (L_T / (L_S^sup·d₁))^(1/f₁))^(−c₁·f₁)
///                        · (A′/N^α′ + B′/D^β′)^γ′
/// ```
///
/// `N` = student parameters, `D` = distillation tokens, `L_T` = teacher cross-entropy.
///
/// Paper: Busbridge et al., *Distillation Scaling Laws* (ICML 2025),
/// <https://arxiv.org/abs/2502.08606>.
///
/// # Example
/// ```
/// use kd_losses::{DistillationScalingLaw, ScalingLawCoefficients};
/// let c = ScalingLawCoefficients {
///     E: 1.2, A: 480.0, B: 2100.0, alpha: 0.38, beta: 0.42, gamma: 1.0,
///     A_prime: 520.0, B_prime: 1900.0, alpha_prime: 0.37, beta_prime: 0.41, gamma_prime: 1.0,
///     c0: 2.5, c1: 0.6, d1: 1.3, f1: 1.2,
/// };
/// let law = DistillationScalingLaw::new(c);
/// let l = law.student_loss(143e6, 2.86e9, 2.2);
/// assert!(l > 2.2); // a student never beats its teacher's loss in this form
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillationScalingLaw {
    c: ScalingLawCoefficients,
}

impl DistillationScalingLaw {
    /// A law with the given coefficients.
    pub fn new(coefficients: ScalingLawCoefficients) -> Self {
        Self { c: coefficients }
    }

    /// Supervised loss `E + (A/N^α + B/D^β)^γ` of a student trained without a teacher.
    pub fn supervised_loss(&self, n_student: f64, d_student: f64) -> f64 {
        let c = &self.c;
        c.E + (c.A / n_student.powf(c.alpha) + c.B / d_student.powf(c.beta)).powf(c.gamma)
    }

    /// Predicted distilled student loss for `n_student` parameters, `d_student` tokens and a
    /// teacher of loss `teacher_loss`.
    pub fn student_loss(&self, n_student: f64, d_student: f64, teacher_loss: f64) -> f64 {
        let c = &self.c;
        let sup = self.supervised_loss(n_student, d_student);
        let transition = (1.0 + (teacher_loss / (sup * c.d1)).powf(1.0 / c.f1)).powf(-c.c1 * c.f1);
        let capacity = (c.A_prime / n_student.powf(c.alpha_prime)
            + c.B_prime / d_student.powf(c.beta_prime))
        .powf(c.gamma_prime);
        teacher_loss + teacher_loss.powf(-c.c0) * transition * capacity
    }
}
