//! What every architecture implements, so that [`CausalLm`](crate::CausalLm) and
//! [`ModelConfig`](crate::ModelConfig) only delegate.
//!
//! - [`CausalModel`]: the forward side (blocks, output head, compute dtype), object safe;
//! - [`ArchConfig`]: what a config says about the model (sizes, special tokens) and how it is
//!   written back to `config.json`;
//! - `Architecture` (crate-private): the config type and its `model_type`s, building the model
//!   fresh or from checkpoint tensors, and exporting its tensors.
//!
//! Adding an architecture is one file implementing the three, plus one line in the crate's
//! architecture registry.

use burn::nn::{Embedding, Linear};
use burn::tensor::{DType, Device, FloatDType, Int, Tensor};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::layers::{linear, tied_logits};
use crate::weights::{NamedTensor, Weights};

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// Logits at every position, `[batch, seq, vocab]`.
    pub logits: Tensor<3>,
    /// With `output_hidden_states`: `num_hidden_layers + 1` tensors `[batch, seq, hidden]`;
    /// index 0 is the embedding output, index `i` the output of block `i`, and the last one has
    /// the final norm applied (exactly what `transformers` returns as `hidden_states`).
    pub hidden_states: Option<Vec<Tensor<3>>>,
}

/// The forward side of a causal language model: an embedding, blocks, a final norm and an output
/// head (tied to the embedding or not).
///
/// An architecture implements the required methods; the provided ones (the output head, the
/// full forward) are the same for all of them.
pub trait CausalModel {
    /// Number of transformer blocks (the number of layers a [`KvCache`] needs).
    fn num_layers(&self) -> usize;

    /// The token-embedding table `[vocab, hidden]` (also the output head when tied).
    fn token_embedding(&self) -> &Embedding;

    /// The untied output head (`lm_head`, burn layout `[hidden, vocab]`); `None` when tied.
    fn lm_head(&self) -> Option<&Linear>;

    /// The dtype activations are computed in; `None`: the embedding table's dtype.
    fn compute_dtype(&self) -> Option<FloatDType>;

    /// Sets [`CausalModel::compute_dtype`].
    fn set_compute_dtype(&mut self, dtype: Option<FloatDType>);

    /// Runs the embedding and all blocks; returns the final (normed) hidden state
    /// `[batch, seq, hidden]` and, when `output_hidden_states`, every hidden state (see
    /// [`ModelOutput::hidden_states`]; empty otherwise).
    ///
    /// - `input_ids` `[batch, seq]`: the new tokens (the whole sequence without a cache).
    /// - `attention_mask` `[batch, past + seq]`, `1` = real token, `0` = padding; `None` = no
    ///   padding.
    /// - `position_ids` `[batch, seq]`; `None` = `max(cumsum(mask) − 1, 0)` with a mask (so
    ///   left-padded rows match their unpadded logits), else `past .. past + seq`.
    /// - `cache`: appended to; `past` is its length before the call.
    ///
    /// # Panics
    /// When the mask or position shapes disagree with `input_ids` (or, for learned positions, a
    /// position is past the table).
    fn trunk(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> (Tensor<3>, Vec<Tensor<3>>);

    /// The output head: logits from final hidden states (after the final norm).
    /// // [b, s, hidden] -> [b, s, vocab]
    fn logits_from_hidden(&self, h: Tensor<3>) -> Tensor<3> {
        match self.lm_head() {
            Some(head) => linear(head, h),
            None => tied_logits(h, self.token_embedding().weight.val()),
        }
    }

    /// The output head as `(weight [vocab, hidden], bias [vocab])` (the embedding table when
    /// tied): `logits = hidden · weightᵀ (+ bias)`.
    fn output_head(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        match self.lm_head() {
            Some(head) => {
                (head.weight.val().transpose(), head.bias.as_ref().map(burn::module::Param::val))
            }
            None => (self.token_embedding().weight.val(), None),
        }
    }

    /// The dtype the parameters are stored in (that of the embedding table).
    fn param_dtype(&self) -> DType {
        self.token_embedding().weight.val().dtype()
    }

    /// Logits (and optionally every hidden state) for a batch; arguments as
    /// [`CausalModel::trunk`].
    ///
    /// # Panics
    /// As [`CausalModel::trunk`].
    fn forward_with(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> ModelOutput {
        let (h, hidden) =
            self.trunk(input_ids, attention_mask, position_ids, cache, output_hidden_states);
        let logits = self.logits_from_hidden(h); // [b, s, vocab]
        ModelOutput { logits, hidden_states: output_hidden_states.then_some(hidden) }
    }
}

/// What a config says about its model, whatever the architecture, and how it is written back.
pub trait ArchConfig {
    /// `model_type` as written in `config.json`.
    fn model_type(&self) -> &str;
    /// The config as a `config.json` value (what `save_pretrained` writes).
    fn to_json(&self) -> Value;
    /// Vocabulary size (rows of the embedding and of the output head).
    fn vocab_size(&self) -> usize;
    /// Width of the residual stream.
    fn hidden_size(&self) -> usize;
    /// Number of transformer blocks.
    fn num_hidden_layers(&self) -> usize;
    /// Longest sequence the model supports.
    fn max_position_embeddings(&self) -> usize;
    /// `bos_token_id`, when the config has one.
    fn bos_token_id(&self) -> Option<u32>;
    /// `eos_token_id` (a list: LLaMA-3 style configs have several).
    fn eos_token_ids(&self) -> &[u32];
    /// `pad_token_id`, when the config has one.
    fn pad_token_id(&self) -> Option<u32>;
    /// Standard deviation of the normal initializer (`initializer_range`).
    fn initializer_range(&self) -> f64;
    /// Whether the output head shares the token-embedding matrix.
    fn tie_word_embeddings(&self) -> bool;
}

/// An architecture: its config, the `model_type`s it serves, and how its model is built, loaded
/// and exported.
pub(crate) trait Architecture: CausalModel + Sized {
    /// The config, parsed from `config.json`.
    type Config: ArchConfig + Clone;

    /// The `model_type`s of `config.json` this architecture loads.
    const MODEL_TYPES: &'static [&'static str];

    /// Prefix of the `save_pretrained` keys (`transformer.`, `model.`) that the hub layout
    /// leaves out; the weight reader adds it back.
    const KEY_PREFIX: &'static str;

    /// Parses (and validates) the config of `model_type`, one of [`Architecture::MODEL_TYPES`].
    fn parse_config(model_type: &str, obj: &Map<String, Value>) -> Result<Self::Config>;

    /// A freshly initialised model, as `transformers` initialises it.
    fn init(config: &Self::Config, device: &Device) -> Result<Self>;

    /// The model built from checkpoint tensors (keys in the `save_pretrained` layout).
    fn from_weights(config: &Self::Config, weights: &mut Weights) -> Result<Self>;

    /// The config the model was built from.
    fn config(&self) -> &Self::Config;

    /// Every parameter under its `save_pretrained` key, in the HF storage layout.
    fn named_tensors(&self) -> Vec<NamedTensor>;
}
