//! Training precision: the dtype the student computes in over its `f32` master weights, the
//! dtype the teacher is served in, and dynamic loss scaling for f16.
//!
//! ```text
//! f32   everything in f32 (the default)
//! bf16  student forward/backward in bf16 over f32 master weights (AdamW and its moments stay
//!       f32); teacher parameters and inference in bf16; losses in f32
//! f16   as bf16, plus dynamic loss scaling: the loss is multiplied by S before backward, the
//!       gradients divided by S; a step whose gradients overflow is skipped and S halves; after
//!       `growth_interval` clean steps S doubles (torch.amp.GradScaler's rule)
//! ```
//!
//! bf16 keeps f32's exponent range, so it needs no scaling; f16 tops out at 65504, so small
//! gradients underflow without it.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A floating-point precision for training or inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit IEEE floats (the default).
    #[default]
    F32,
    /// bfloat16: 8 exponent bits (f32's range), 7 mantissa bits.
    Bf16,
    /// IEEE half: 5 exponent bits (max 65504), 10 mantissa bits; needs loss scaling to train.
    F16,
}

impl Precision {
    /// Every precision, in the order of its names.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// The burn dtype.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }

    /// Whether this is a 16-bit precision.
    pub fn is_half(self) -> bool {
        self != Self::F32
    }

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s.to_ascii_lowercase())
            .ok_or_else(|| TrainError::config("dtype", "one of f32, bf16, f16", s))
    }
}

/// Dynamic loss scaling for f16 training (the defaults are `torch.amp.GradScaler`'s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScaleConfig {
    /// The first scale (default `65536` = 2¹⁶).
    pub init: f64,
    /// Multiplies the scale after `growth_interval` clean steps (default `2`).
    pub growth_factor: f64,
    /// Multiplies the scale after a step whose gradients overflowed (default `0.5`).
    pub backoff_factor: f64,
    /// Clean steps between growths (default `2000`).
    pub growth_interval: u64,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self { init: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl LossScaleConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the field when `init ≤ 0`, `growth_factor ≤ 1`,
    /// `backoff_factor ∉ (0, 1)` or `growth_interval = 0`.
    pub fn validate(&self) -> Result<()> {
        if !(self.init.is_finite() && self.init > 0.0) {
            return Err(TrainError::config("loss_scale.init", "a finite value > 0", self.init));
        }
        if !(self.growth_factor.is_finite() && self.growth_factor > 1.0) {
            return Err(TrainError::config(
                "loss_scale.growth_factor",
                "a finite value > 1",
                self.growth_factor,
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return Err(TrainError::config(
                "loss_scale.backoff_factor",
                "a value in (0, 1)",
                self.backoff_factor,
            ));
        }
        if self.growth_interval == 0 {
            return Err(TrainError::config("loss_scale.growth_interval", "at least 1", 0));
        }
        Ok(())
    }
}

/// The state of dynamic loss scaling; saved in checkpoints so a resumed run scales as the
/// uninterrupted one would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The current scale `S`.
    pub scale: f64,
    /// Clean steps since the last growth or overflow.
    pub clean_steps: u64,
}

impl LossScaler {
    /// A scaler at `config.init`.
    pub fn new(config: &LossScaleConfig) -> Self {
        Self { scale: config.init, clean_steps: 0 }
    }

    /// Records a step: an overflow (non-finite gradients) backs the scale off and restarts the
    /// count; `growth_interval` clean steps in a row grow it.
    pub fn update(&mut self, overflowed: bool, config: &LossScaleConfig) {
        if overflowed {
            self.scale *= config.backoff_factor;
            self.clean_steps = 0;
        } else {
            self.clean_steps += 1;
            if self.clean_steps >= config.growth_interval {
                self.scale *= config.growth_factor;
                self.clean_steps = 0;
            }
        }
    }
}

/// `module` with every float parameter cast to `dtype` (a teacher served in half precision).
/// Parameter ids are kept.
pub fn cast_params<M: Module>(module: M, dtype: FloatDType) -> M {
    /// Casts each float parameter.
    struct Cast(FloatDType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| t.cast(dtype))
        }
    }
    module.map(&mut Cast(dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.name()));
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        let e = "fp8".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("f32, bf16, f16") && e.contains("fp8"), "{e}");
    }

    #[test]
    fn the_scale_backs_off_on_overflow_and_grows_after_clean_steps() {
        let config = LossScaleConfig { growth_interval: 3, ..Default::default() };
        let mut s = LossScaler::new(&config);
        s.update(true, &config);
        assert_eq!(s.scale, 32768.0);
        s.update(false, &config);
        s.update(false, &config);
        assert_eq!(s.scale, 32768.0);
        s.update(true, &config); // resets the count
        s.update(false, &config);
        s.update(false, &config);
        assert_eq!(s.scale, 16384.0);
        s.update(false, &config);
        assert_eq!((s.scale, s.clean_steps), (32768.0, 0));
    }

    #[test]
    fn loss_scale_settings_are_validated() {
        assert!(LossScaleConfig::default().validate().is_ok());
        for bad in [
            LossScaleConfig { init: 0.0, ..Default::default() },
            LossScaleConfig { growth_factor: 1.0, ..Default::default() },
            LossScaleConfig { backoff_factor: 1.0, ..Default::default() },
            LossScaleConfig { growth_interval: 0, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
