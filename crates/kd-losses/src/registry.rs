//! The one list of losses: every id, declared once in the [`losses!`] invocation below, and
//! what is generated from it: [`LOSSES`], [`LOSS_NAMES`], each loss type's `ID`, the
//! [`LossConfig`] enum and its name-based builders. The crate docs' loss table and the property
//! tests' loss lists are checked against (resp. taken from) [`LOSSES`].

use serde::{Deserialize, Serialize};

use crate::divergence::Divergence;
use crate::error::{KdError, Result};
use crate::{
    AbDivergence, AbDivergenceConfig, AdaptiveKl, AdaptiveKlConfig, AdaptiveTeachingKd,
    AdaptiveTeachingKdConfig, AlphaDivergence, AlphaDivergenceConfig, DecoupledKd,
    DecoupledKdConfig, DeltaKd, DistillationScalingLaw, FDistill, FDistillConfig, ForwardKl,
    ForwardKlConfig, GeneralizedJsd, GeneralizedJsdConfig, HintonKd, HintonKdConfig, JensenShannon,
    JensenShannonConfig, MiniLlm, ReverseKl, ReverseKlConfig, SkewForwardKl, SkewForwardKlConfig,
    SkewReverseKl, SkewReverseKlConfig, Taid, TaidConfig, TopKKl, Tvd, TvdConfig,
    UniversalLogitDistillation, UniversalLogitDistillationConfig,
};

/// What kd-losses knows about one loss, as declared in its one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossInfo {
    /// The id: the golden file name, [`Divergence::name`] and the `loss` key of [`LossConfig`].
    pub id: &'static str,
    /// A dense loss: a [`Divergence`] over a [`crate::KdBatch`], built by [`LossConfig`]. The
    /// others (`delta_kd`, `topk_kl`, `minillm`, `scaling_law`) take other inputs and have their
    /// own types.
    pub dense: bool,
    /// The value is a divergence: `≥ 0`, and `0` when the student's logits equal the teacher's
    /// (what the property tests check). `false` for losses that mix in labels or move their
    /// target (`hinton_kd`, `taid`) and for every loss that is not dense.
    pub divergence: bool,
    /// A row's value depends on other rows of the batch (a batch median, per-group means), so
    /// the loss cannot be computed a chunk of rows at a time. The loss type's `COUPLES_ROWS`
    /// const, which its [`Divergence::couples_rows`] answers.
    pub couples_rows: bool,
}

/// Generates the loss list and everything derived from it. Each dense entry is
/// `Variant(Config) => Type = "id", divergence: bool, couples_rows: bool;`, each other entry
/// `Type = "id";`.
macro_rules! losses {
    (
        dense {
            $( $variant:ident ($config:ident) => $loss:ident = $id:literal,
               divergence: $divergence:literal, couples_rows: $couples:literal; )*
        }
        other { $( $other:ident = $other_id:literal; )* }
    ) => {
        /// Every loss of kd-losses, dense ones first.
        pub const LOSSES: &[LossInfo] = &[
            $( LossInfo { id: $id, dense: true, divergence: $divergence, couples_rows: $couples }, )*
            $( LossInfo { id: $other_id, dense: false, divergence: false, couples_rows: false }, )*
        ];

        /// Ids of every loss in kd-losses (the golden file names), in the order of [`LOSSES`].
        /// The dense ones are in [`LossConfig`]; `delta_kd`, `topk_kl`, `minillm` and
        /// `scaling_law` take other inputs and have their own types.
        pub const LOSS_NAMES: &[&str] = &[$( $id, )* $( $other_id, )*];

        $(
            impl $loss {
                #[doc = concat!("The loss id, `", $id, "` (see [`crate::LOSSES`]).")]
                pub const ID: &'static str = $id;
                /// Whether a row's value depends on other rows of the batch (see
                /// [`Divergence::couples_rows`], which answers this).
                pub const COUPLES_ROWS: bool = $couples;
            }
        )*
        $(
            impl $other {
                #[doc = concat!("The loss id, `", $other_id, "` (see [`crate::LOSSES`]).")]
                pub const ID: &'static str = $other_id;
            }
        )*

        /// The config of any dense loss, tagged by its id: `{"loss": "gkd_jsd", "beta": 0.5}`.
        ///
        /// Keys are those of the golden files; missing keys take the original code's defaults
        /// and unknown keys are an error.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "loss")]
        pub enum LossConfig {
            $(
                #[doc = concat!("`", $id, "`: [`", stringify!($config), "`].")]
                #[serde(rename = $id)]
                $variant($config),
            )*
        }

        impl LossConfig {
            /// The default config of the dense loss `name`.
            ///
            /// # Errors
            /// [`KdError::UnknownLoss`] for a name that is not a dense loss id.
            pub fn by_name(name: &str) -> Result<Self> {
                match name {
                    $( $id => Ok(Self::$variant(Default::default())), )*
                    other => Err(KdError::UnknownLoss {
                        expected: &[$( $id, )*],
                        got: other.to_string(),
                    }),
                }
            }

            /// The loss id of this config.
            pub fn id(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $id, )*
                }
            }

            /// Validates the config and builds the loss.
            ///
            /// # Errors
            /// [`KdError::InvalidHyperparameter`] as for the loss's own `init`.
            pub fn init(&self) -> Result<Box<dyn Divergence>> {
                Ok(match self {
                    $( Self::$variant(c) => Box::new(c.init()?), )*
                })
            }
        }
    };
}

losses! {
    dense {
        ForwardKl(ForwardKlConfig) => ForwardKl = "forward_kl",
            divergence: true, couples_rows: false;
        ReverseKl(ReverseKlConfig) => ReverseKl = "reverse_kl",
            divergence: true, couples_rows: false;
        HintonKd(HintonKdConfig) => HintonKd = "hinton_kd",
            divergence: false, couples_rows: false;
        GkdJsd(GeneralizedJsdConfig) => GeneralizedJsd = "gkd_jsd",
            divergence: true, couples_rows: false;
        Js(JensenShannonConfig) => JensenShannon = "js",
            divergence: true, couples_rows: false;
        Tvd(TvdConfig) => Tvd = "tvd",
            divergence: true, couples_rows: false;
        SkewForwardKl(SkewForwardKlConfig) => SkewForwardKl = "skew_forward_kl",
            divergence: true, couples_rows: false;
        SkewReverseKl(SkewReverseKlConfig) => SkewReverseKl = "skew_reverse_kl",
            divergence: true, couples_rows: false;
        Akl(AdaptiveKlConfig) => AdaptiveKl = "akl",
            divergence: true, couples_rows: false;
        Taid(TaidConfig) => Taid = "taid",
            divergence: false, couples_rows: false;
        Fdistill(FDistillConfig) => FDistill = "fdistill",
            divergence: true, couples_rows: false;
        AlphaDivergence(AlphaDivergenceConfig) => AlphaDivergence = "alpha_divergence",
            divergence: true, couples_rows: false;
        AbDivergence(AbDivergenceConfig) => AbDivergence = "ab_divergence",
            divergence: true, couples_rows: false;
        Dkd(DecoupledKdConfig) => DecoupledKd = "dkd",
            divergence: true, couples_rows: false;
        Atkd(AdaptiveTeachingKdConfig) => AdaptiveTeachingKd = "atkd",
            divergence: true, couples_rows: true;
        Uld(UniversalLogitDistillationConfig) => UniversalLogitDistillation = "uld",
            divergence: true, couples_rows: false;
    }
    other {
        DeltaKd = "delta_kd";
        TopKKl = "topk_kl";
        MiniLlm = "minillm";
        DistillationScalingLaw = "scaling_law";
    }
}

/// The entry of `id` in [`LOSSES`], if it is a kd-losses id.
pub fn loss_info(id: &str) -> Option<&'static LossInfo> {
    LOSSES.iter().find(|l| l.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dense_name_round_trips() {
        for info in LOSSES {
            match LossConfig::by_name(info.id) {
                Ok(c) => {
                    assert!(info.dense, "{}", info.id);
                    assert_eq!(c.id(), info.id);
                    let loss = c.init().unwrap();
                    assert_eq!(loss.name(), info.id);
                    assert_eq!(loss.couples_rows(), info.couples_rows, "{}", info.id);
                }
                Err(e) => assert!(!info.dense, "{}: {e}", info.id),
            }
        }
        assert!(matches!(LossConfig::by_name("kl"), Err(KdError::UnknownLoss { .. })));
        assert_eq!(LOSS_NAMES, LOSSES.iter().map(|l| l.id).collect::<Vec<_>>());
    }

    #[test]
    fn config_keys_are_the_ids() {
        let c: LossConfig = serde_json::from_str(r#"{"loss": "gkd_jsd", "beta": 0.25}"#).unwrap();
        assert_eq!(c, LossConfig::GkdJsd(GeneralizedJsdConfig::new().with_beta(0.25)));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["loss"], "gkd_jsd");
        assert!(serde_json::from_str::<LossConfig>(r#"{"loss": "js", "bogus": 1}"#).is_err());
    }

    /// The crate docs' loss table (`lib.rs`) has one row per id.
    #[test]
    fn crate_docs_table_lists_every_loss() {
        let docs = include_str!("lib.rs");
        let table: Vec<&str> = docs
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        assert_eq!(table.len(), LOSS_NAMES.len(), "the loss table in lib.rs: {table:?}");
        for id in LOSS_NAMES {
            assert!(table.contains(id), "the loss table in lib.rs has no row for `{id}`");
        }
    }

    #[test]
    fn loss_info_finds_listed_ids_only() {
        assert!(loss_info("atkd").unwrap().couples_rows);
        assert!(!loss_info("forward_kl").unwrap().couples_rows);
        assert!(loss_info("nope").is_none());
    }
}
