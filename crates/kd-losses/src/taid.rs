//! TAID: temporally adaptive interpolated distillation, and its adaptive `t` schedule.

use serde::{Deserialize, Serialize};

use crate::config::loss_config;
use crate::divergence::{Divergence, DriverSettings, Extra, TokenInputs, TokenTerms};
use crate::error::{Result, check_range, check_temperature};
use crate::fused::FusedKind;
use crate::logspace::{cross_entropy_rows, kl_rows, log_softmax};

loss_config! {
    /// Config of [`Taid`] at a fixed interpolation `t`.
    pub struct TaidConfig, new: "Defaults: `t = 0.4`, `T = 1`." {
        /// Interpolation `t ∈ [0, 1]` from the student (`0`) to the teacher (`1`); kd-train sets it
        /// each step from a [`TaidSchedule`] (default `0.4`, the paper's start).
        t: f64 = 0.4 => with_t,
        /// Temperature `T > 0` (default `1`).
        temperature: f64 = 1.0,
    }
}

impl TaidConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `t ∉ [0, 1]` or `T ≤ 0`.
    pub fn init(&self) -> Result<Taid> {
        check_range(Taid::ID, "t", self.t, 0.0, 1.0, "a value in [0, 1]")?;
        check_temperature(Taid::ID, "temperature", self.temperature)?;
        Ok(Taid { config: self.clone() })
    }
}

/// TAID's interpolated distillation: the student learns from a target that moves from its own
/// (detached) distribution towards the teacher as `t` grows.
///
/// ```text
/// target:     p_t = softmax((1 − t)·sg(s/T) + t·(t_logits/T))
/// per token:  −Σ_v p_t,v log q_v          (cross-entropy form; KL(p_t‖q) in `per_row_kl_form`)
/// gradient:   ∂/∂s_v = (q_v − p_t,v) / T
/// ```
///
/// # Shapes
/// `student_logits`, `teacher_logits`: `[rows, vocab]`.
///
/// # Errors
/// See [`Divergence::forward`].
///
/// Paper: Shing et al., *TAID: Temporally Adaptive Interpolated Distillation for Efficient
/// Knowledge Transfer in Language Models* (ICLR 2025), <https://arxiv.org/abs/2501.16937>;
/// code <https://github.com/SakanaAI/TAID>.
#[derive(Debug, Clone)]
pub struct Taid {
    config: TaidConfig,
}

impl Taid {
    /// The same loss at another interpolation `t` (what a schedule does every step).
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `t ∉ [0, 1]`.
    pub fn at(&self, t: f64) -> Result<Taid> {
        TaidConfig { t, ..self.config.clone() }.init()
    }
}

impl Divergence for Taid {
    fn fused_kind(&self) -> Option<FusedKind> {
        Some(FusedKind::Taid { t: self.config.t })
    }
    fn name(&self) -> &'static str {
        Taid::ID
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings::at_temperature(self.config.temperature)
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        let t = self.config.t;
        let target =
            inputs.student.clone().detach().mul_scalar(1.0 - t).add(inputs.teacher.mul_scalar(t));
        let log_pt = log_softmax(target).detach(); // [rows, vocab]
        let log_q = log_softmax(inputs.student);
        let kl = kl_rows(log_pt.clone(), log_q.clone()).detach();
        Ok(TokenTerms::new(cross_entropy_rows(log_pt, log_q))
            .with(Extra::row(FusedKind::TAID_EXTRAS[0], kl)))
    }
}

loss_config! {
    /// Config of the adaptive `t` schedule of TAID.
    pub struct TaidScheduleConfig {
        /// Initial `t` (default `0.4`).
        t_start: f64 = 0.4,
        /// Final and maximal `t` (default `1`).
        t_end: f64 = 1.0,
        /// Step size of the adaptive increment (default `5e-4`).
        alpha: f64 = 5e-4,
        /// Momentum of the relative loss change (default `0.99`).
        beta: f64 = 0.99,
        /// Steps over which the linear floor goes from `t_start` to `t_end`.
        num_train_steps: u64 = 1000,
        /// Follow the linear floor only (default `false`).
        disable_adaptive: bool = false,
    }
}

impl TaidScheduleConfig {
    /// Validates the config.
    ///
    /// # Errors
    /// [`crate::KdError::InvalidHyperparameter`] when `t_start`, `t_end` or `beta` leave `[0, 1]`,
    /// `t_start > t_end`, `alpha < 0` or `num_train_steps = 0`.
    pub fn init(&self) -> Result<TaidSchedule> {
        check_range(Taid::ID, "t_start", self.t_start, 0.0, 1.0, "a value in [0, 1]")?;
        check_range(Taid::ID, "t_end", self.t_end, self.t_start, 1.0, "a value in [t_start, 1]")?;
        check_range(Taid::ID, "beta", self.beta, 0.0, 1.0, "a value in [0, 1]")?;
        check_range(Taid::ID, "alpha", self.alpha, 0.0, f64::INFINITY, "a value ≥ 0")?;
        check_range(
            Taid::ID,
            "num_train_steps",
            self.num_train_steps as f64,
            1.0,
            f64::INFINITY,
            "≥ 1",
        )?;
        Ok(TaidSchedule { config: self.clone(), state: TaidScheduleState::start(self.t_start) })
    }
}

/// The mutable part of a [`TaidSchedule`]: all a checkpoint needs to resume it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaidScheduleState {
    /// Current `t` (used for the next loss).
    pub t: f64,
    /// Loss of the previous update, if any.
    pub prev_loss: Option<f64>,
    /// Momentum of the relative loss change.
    pub momentum: f64,
}

impl TaidScheduleState {
    fn start(t: f64) -> Self {
        Self { t, prev_loss: None, momentum: 0.0 }
    }
}

/// What one [`TaidSchedule::update`] did (the golden `records`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaidRecord {
    /// Step passed to the update.
    pub global_step: u64,
    /// Loss passed to the update.
    pub loss: f64,
    /// Loss of the previous update.
    pub prev_loss: Option<f64>,
    /// `t` the loss was computed with.
    pub t_used: f64,
    /// `(prev − loss)/(prev + 1e-15)`; `None` on the first call.
    pub relative_change: Option<f64>,
    /// Momentum after the update.
    pub momentum: f64,
    /// Adaptive increment `α·σ(momentum)·(1 − t)`; `None` on the first call.
    pub delta_t: Option<f64>,
    /// Linear floor `t_start + (t_end − t_start)·step/num_train_steps`; `None` on the first call.
    pub t_target: Option<f64>,
    /// `t` after the update.
    pub t_after: f64,
}

/// TAID's adaptive interpolation schedule, a small state machine driven by the training loss.
///
/// ```text
/// first call:   prev_loss = loss
/// later calls:  rel = (prev − loss)/(prev + 1e-15);  momentum = β·momentum + (1 − β)·rel
///               Δt = α·sigmoid(momentum)·(1 − t);  t_target = t_start + (t_end − t_start)·step/N
///               t = min(t_end, max(t_target, t + Δt))   (t = t_target when disable_adaptive)
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TaidSchedule {
    config: TaidScheduleConfig,
    state: TaidScheduleState,
}

impl TaidSchedule {
    /// Current `t`.
    pub fn t(&self) -> f64 {
        self.state.t
    }

    /// State to checkpoint.
    pub fn state(&self) -> &TaidScheduleState {
        &self.state
    }

    /// Restores a checkpointed state.
    pub fn restore(&mut self, state: TaidScheduleState) {
        self.state = state;
    }

    /// Feeds the loss of step `global_step` (computed at [`t`](Self::t)) and moves `t`.
    pub fn update(&mut self, global_step: u64, loss: f64) -> TaidRecord {
        let c = &self.config;
        let s = &mut self.state;
        let t_used = s.t;
        let prev_loss = s.prev_loss;
        let mut record = TaidRecord {
            global_step,
            loss,
            prev_loss,
            t_used,
            relative_change: None,
            momentum: s.momentum,
            delta_t: None,
            t_target: None,
            t_after: t_used,
        };
        if let Some(prev) = prev_loss {
            let rel = (prev - loss) / (prev + 1e-15);
            s.momentum = c.beta * s.momentum + (1.0 - c.beta) * rel;
            let sigmoid = 1.0 / (1.0 + (-s.momentum).exp());
            let delta_t = c.alpha * sigmoid * (1.0 - s.t);
            let progress = global_step as f64 / c.num_train_steps as f64;
            let t_target = c.t_start + (c.t_end - c.t_start) * progress;
            s.t = if c.disable_adaptive {
                t_target
            } else {
                c.t_end.min(t_target.max(s.t + delta_t))
            };
            record.relative_change = Some(rel);
            record.momentum = s.momentum;
            record.delta_t = Some(delta_t);
            record.t_target = Some(t_target);
            record.t_after = s.t;
        }
        s.prev_loss = Some(loss);
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_monotone_and_bounded() {
        let mut s = TaidScheduleConfig { num_train_steps: 10, alpha: 0.5, ..Default::default() }
            .init()
            .unwrap();
        let mut last = s.t();
        for step in 0..30 {
            s.update(step, 5.0 / (step as f64 + 1.0));
            assert!(s.t() >= last && s.t() <= 1.0);
            last = s.t();
        }
        assert_eq!(s.t(), 1.0);
    }

    #[test]
    fn state_round_trips() {
        let mut a = TaidScheduleConfig::default().init().unwrap();
        a.update(0, 3.0);
        a.update(1, 2.5);
        let mut b = TaidScheduleConfig::default().init().unwrap();
        b.restore(a.state().clone());
        assert_eq!(a.update(2, 2.0), b.update(2, 2.0));
    }
}
