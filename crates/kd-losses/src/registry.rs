//! Dense losses by name: [`LossConfig`].

use serde::{Deserialize, Serialize};

use crate::divergence::Divergence;
use crate::error::{KdError, Result};
use crate::{
    AbDivergenceConfig, AdaptiveKlConfig, AdaptiveTeachingKdConfig, AlphaDivergenceConfig,
    DecoupledKdConfig, FDistillConfig, ForwardKlConfig, GeneralizedJsdConfig, HintonKdConfig,
    JensenShannonConfig, ReverseKlConfig, SkewForwardKlConfig, SkewReverseKlConfig, TaidConfig,
    TvdConfig, UniversalLogitDistillationConfig,
};

/// Ids of every loss in kd-losses (the golden file names). The dense ones are in [`LossConfig`];
/// `delta_kd`, `topk_kl`, `minillm` and `scaling_law` take other inputs and have their own types.
pub const LOSS_NAMES: &[&str] = &[
    "forward_kl",
    "reverse_kl",
    "hinton_kd",
    "gkd_jsd",
    "js",
    "tvd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "akl",
    "taid",
    "fdistill",
    "alpha_divergence",
    "ab_divergence",
    "dkd",
    "atkd",
    "uld",
    "delta_kd",
    "topk_kl",
    "minillm",
    "scaling_law",
];

/// The config of any dense loss, tagged by its id: `{"loss": "gkd_jsd", "beta": 0.5}`.
///
/// Keys are those of the golden files; missing keys take the original code's defaults and
/// unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "loss", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum LossConfig {
    ForwardKl(ForwardKlConfig),
    ReverseKl(ReverseKlConfig),
    HintonKd(HintonKdConfig),
    GkdJsd(GeneralizedJsdConfig),
    Js(JensenShannonConfig),
    Tvd(TvdConfig),
    SkewForwardKl(SkewForwardKlConfig),
    SkewReverseKl(SkewReverseKlConfig),
    Akl(AdaptiveKlConfig),
    Taid(TaidConfig),
    Fdistill(FDistillConfig),
    AlphaDivergence(AlphaDivergenceConfig),
    AbDivergence(AbDivergenceConfig),
    Dkd(DecoupledKdConfig),
    Atkd(AdaptiveTeachingKdConfig),
    Uld(UniversalLogitDistillationConfig),
}

impl LossConfig {
    /// The default config of the dense loss `name`.
    ///
    /// # Errors
    /// [`KdError::UnknownLoss`] for a name that is not a dense loss id.
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "forward_kl" => Self::ForwardKl(Default::default()),
            "reverse_kl" => Self::ReverseKl(Default::default()),
            "hinton_kd" => Self::HintonKd(Default::default()),
            "gkd_jsd" => Self::GkdJsd(Default::default()),
            "js" => Self::Js(Default::default()),
            "tvd" => Self::Tvd(Default::default()),
            "skew_forward_kl" => Self::SkewForwardKl(Default::default()),
            "skew_reverse_kl" => Self::SkewReverseKl(Default::default()),
            "akl" => Self::Akl(Default::default()),
            "taid" => Self::Taid(Default::default()),
            "fdistill" => Self::Fdistill(Default::default()),
            "alpha_divergence" => Self::AlphaDivergence(Default::default()),
            "ab_divergence" => Self::AbDivergence(Default::default()),
            "dkd" => Self::Dkd(Default::default()),
            "atkd" => Self::Atkd(Default::default()),
            "uld" => Self::Uld(Default::default()),
            other => {
                return Err(KdError::UnknownLoss { got: other.to_string() });
            }
        })
    }

    /// Validates the config and builds the loss.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] as for the loss's own `init`.
    pub fn init(&self) -> Result<Box<dyn Divergence>> {
        Ok(match self {
            Self::ForwardKl(c) => Box::new(c.init()?),
            Self::ReverseKl(c) => Box::new(c.init()?),
            Self::HintonKd(c) => Box::new(c.init()?),
            Self::GkdJsd(c) => Box::new(c.init()?),
            Self::Js(c) => Box::new(c.init()?),
            Self::Tvd(c) => Box::new(c.init()?),
            Self::SkewForwardKl(c) => Box::new(c.init()?),
            Self::SkewReverseKl(c) => Box::new(c.init()?),
            Self::Akl(c) => Box::new(c.init()?),
            Self::Taid(c) => Box::new(c.init()?),
            Self::Fdistill(c) => Box::new(c.init()?),
            Self::AlphaDivergence(c) => Box::new(c.init()?),
            Self::AbDivergence(c) => Box::new(c.init()?),
            Self::Dkd(c) => Box::new(c.init()?),
            Self::Atkd(c) => Box::new(c.init()?),
            Self::Uld(c) => Box::new(c.init()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dense_name_round_trips() {
        for name in LOSS_NAMES {
            match LossConfig::by_name(name) {
                Ok(c) => assert_eq!(c.init().unwrap().name(), *name),
                Err(e) => assert!(
                    ["delta_kd", "topk_kl", "minillm", "scaling_law"].contains(name),
                    "{name}: {e}"
                ),
            }
        }
        assert!(matches!(LossConfig::by_name("kl"), Err(KdError::UnknownLoss { .. })));
    }
}
