//! The supported architectures, registered in one list.
//!
//! Adding an architecture is one file (its config read by `serde`, its model implementing
//! [`CausalModel`] and `Architecture`) plus one line in the `architectures!` invocation at the
//! bottom: the line adds a variant to [`CausalLm`] and to [`ModelConfig`] and routes its
//! `model_type`s, its dispatch and its loading to the new type.

use burn::module::Module;
use burn::tensor::Device;
use serde_json::{Map, Value};

use crate::arch::{ArchConfig, Architecture, CausalModel};
use crate::error::Result;
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::llama::{Llama, LlamaConfig};
use crate::weights::{NamedTensor, Weights};

/// Defines [`CausalLm`] and [`ModelConfig`] with one variant per architecture, and the functions
/// that dispatch to it.
macro_rules! architectures {
    ($($(#[$doc:meta])* $variant:ident($model:ty, $config:ty),)+) => {
        /// A causal language model of any supported architecture.
        ///
        /// It is a burn [`Module`]: move it with `to_device`, train it with an optimizer on an
        /// autodiff device, count its parameters with `num_params`.
        #[derive(Module, Debug)]
        pub enum CausalLm {
            $($(#[$doc])* $variant($model),)+
        }

        /// The config of any supported architecture, as read from `config.json`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ModelConfig {
            $($(#[$doc])* $variant($config),)+
        }

        /// Every `model_type` a registered architecture loads.
        pub(crate) const MODEL_TYPES: &[&[&str]] =
            &[$(<$model as Architecture>::MODEL_TYPES,)+];

        impl CausalLm {
            /// The model behind the forward-side trait.
            pub(crate) fn model(&self) -> &dyn CausalModel {
                match self {
                    $(Self::$variant(m) => m,)+
                }
            }

            /// As [`CausalLm::model`], mutably.
            pub(crate) fn model_mut(&mut self) -> &mut dyn CausalModel {
                match self {
                    $(Self::$variant(m) => m,)+
                }
            }

            /// The config of the model, borrowed.
            pub(crate) fn arch_config(&self) -> &dyn ArchConfig {
                match self {
                    $(Self::$variant(m) => Architecture::config(m),)+
                }
            }

            /// The config of the model, as a [`ModelConfig`].
            pub(crate) fn model_config(&self) -> ModelConfig {
                match self {
                    $(Self::$variant(m) => ModelConfig::$variant(Architecture::config(m).clone()),)+
                }
            }

            /// A freshly initialised model of the config's architecture.
            pub(crate) fn init_from(config: &ModelConfig, device: &Device) -> Result<Self> {
                match config {
                    $(ModelConfig::$variant(c) => {
                        Ok(Self::$variant(<$model as Architecture>::init(c, device)?))
                    })+
                }
            }

            /// The model of the config's architecture built from checkpoint tensors.
            pub(crate) fn from_weights(config: &ModelConfig, weights: &mut Weights) -> Result<Self> {
                match config {
                    $(ModelConfig::$variant(c) => {
                        Ok(Self::$variant(<$model as Architecture>::from_weights(c, weights)?))
                    })+
                }
            }

            /// Every parameter under its `save_pretrained` key in the HF storage layout.
            pub(crate) fn named_tensors(&self) -> Vec<NamedTensor> {
                match self {
                    $(Self::$variant(m) => Architecture::named_tensors(m),)+
                }
            }
        }

        impl ModelConfig {
            /// The config behind the trait every architecture's config implements.
            pub(crate) fn arch(&self) -> &dyn ArchConfig {
                match self {
                    $(Self::$variant(c) => c,)+
                }
            }

            /// Parses the config of the architecture that serves `model_type`; `None` when none
            /// does.
            pub(crate) fn parse(model_type: &str, obj: &Map<String, Value>) -> Option<Result<Self>> {
                $(if <$model as Architecture>::MODEL_TYPES.contains(&model_type) {
                    return Some(<$model as Architecture>::parse_config(model_type, obj).map(Self::$variant));
                })+
                None
            }

            /// Prefix of the architecture's `save_pretrained` weight keys.
            pub(crate) fn key_prefix(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$model as Architecture>::KEY_PREFIX,)+
                }
            }
        }
    };
}

architectures! {
    /// GPT-2 (`model_type: "gpt2"`).
    Gpt2(Gpt2, Gpt2Config),
    /// LLaMA, Mistral or Qwen2 (`model_type` `"llama"`, `"mistral"` or `"qwen2"`).
    Llama(Llama, LlamaConfig),
}
