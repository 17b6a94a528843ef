//! Learning-rate schedules: linear warmup then cosine (or linear, or constant) decay.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecayKind {
    /// Half a cosine from the peak to the floor.
    #[default]
    Cosine,
    /// A straight line from the peak to the floor.
    Linear,
    /// Stay at the peak.
    Constant,
}

/// Warmup + decay learning-rate schedule over optimizer steps.
///
/// ```text
/// step s < W:   lr = peak · (s + 1) / W                          (linear warmup)
/// step s ≥ W:   p = (s − W) / max(1, N − W)   clamped to [0, 1]
///               cosine:  lr = floor + (peak − floor) · ½ (1 + cos(π p))
///               linear:  lr = floor + (peak − floor) · (1 − p)
///               floor  = peak · min_lr_ratio
/// ```
/// with `W = warmup_steps`, `N = total_steps`. Warmup starts at `peak / W` rather than 0 so that
/// no step is wasted; `min_lr_ratio = 0` gives the Hugging Face `cosine_with_warmup` decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub peak: f64,
    /// Warmup steps `W`.
    pub warmup_steps: u64,
    /// Total optimizer steps `N`.
    pub total_steps: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Decay shape.
    pub decay: DecayKind,
}

impl LrSchedule {
    /// The schedule in words (`lr 0.001, warmup 10, 100 steps, cosine to 0.1×`), for messages.
    pub fn describe(&self) -> String {
        let decay = match self.decay {
            DecayKind::Cosine => "cosine",
            DecayKind::Linear => "linear",
            DecayKind::Constant => "constant",
        };
        format!(
            "lr {}, warmup {}, {} steps, {decay} to {}×",
            self.peak, self.warmup_steps, self.total_steps, self.min_lr_ratio
        )
    }

    /// Checks the schedule.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the peak is not finite and positive or
    /// `min_lr_ratio ∉ [0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak.is_finite() && self.peak > 0.0) {
            return Err(TrainError::config("lr", "a finite value > 0", self.peak));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(TrainError::config("min_lr_ratio", "a value in [0, 1]", self.min_lr_ratio));
        }
        Ok(())
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let floor = self.peak * self.min_lr_ratio;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let p = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        match self.decay {
            DecayKind::Cosine => {
                floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            DecayKind::Linear => floor + (self.peak - floor) * (1.0 - p),
            DecayKind::Constant => self.peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(decay: DecayKind) -> LrSchedule {
        LrSchedule { peak: 1.0, warmup_steps: 4, total_steps: 14, min_lr_ratio: 0.1, decay }
    }

    #[test]
    fn warmup_is_linear_from_peak_over_w() {
        let s = sched(DecayKind::Cosine);
        let got: Vec<f64> = (0..4).map(|i| s.lr(i)).collect();
        assert_eq!(got, [0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn cosine_hits_peak_midpoint_and_floor() {
        let s = sched(DecayKind::Cosine);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!((s.lr(9) - 0.55).abs() < 1e-12); // half way: floor + ½(peak − floor)
        assert!((s.lr(14) - 0.1).abs() < 1e-12);
        assert!((s.lr(100) - 0.1).abs() < 1e-12); // stays at the floor past the end
        for i in 4..14 {
            assert!(s.lr(i + 1) <= s.lr(i), "non-increasing after warmup");
        }
    }

    #[test]
    fn linear_and_constant() {
        assert!((sched(DecayKind::Linear).lr(9) - 0.55).abs() < 1e-12);
        assert!((sched(DecayKind::Linear).lr(6) - 0.82).abs() < 1e-12);
        assert_eq!(sched(DecayKind::Constant).lr(13), 1.0);
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let s = LrSchedule { warmup_steps: 0, ..sched(DecayKind::Cosine) };
        assert_eq!(s.lr(0), 1.0);
    }

    #[test]
    fn validation() {
        let bad = LrSchedule { peak: 0.0, ..sched(DecayKind::Cosine) };
        assert!(matches!(bad.validate(), Err(TrainError::InvalidConfig { name: "lr", .. })));
        let bad = LrSchedule { min_lr_ratio: 1.5, ..sched(DecayKind::Cosine) };
        assert!(bad.validate().is_err());
        assert!(sched(DecayKind::Linear).validate().is_ok());
    }
}
