//! [`CausalLm`], the one type a training or generation loop needs: any supported architecture
//! behind the same forward signature.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::gpt2::Gpt2;
use crate::kv_cache::KvCache;
use crate::llama::Llama;
use crate::load::{self, NamedTensor};

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

/// A causal language model of any supported architecture.
///
/// It is a burn [`Module`]: move it with `to_device`, train it with an optimizer on an autodiff
/// device, count its parameters with `num_params`.
#[derive(Module, Debug)]
pub enum CausalLm {
    /// GPT-2.
    Gpt2(Gpt2),
    /// LLaMA, Mistral or Qwen2.
    Llama(Llama),
}

impl CausalLm {
    /// Loads a Hugging Face model directory (`config.json` + `model.safetensors`).
    ///
    /// # Errors
    /// See [`load::load_pretrained`].
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        load::load_pretrained(dir, device)
    }

    /// Writes the model as a Hugging Face directory that reloads to the same logits.
    ///
    /// # Errors
    /// See [`load::save_pretrained`].
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        load::save_pretrained(self, dir)
    }

    /// A freshly initialised model for training from scratch (HF initialisation: normal with
    /// std `initializer_range`, biases zero, norms one).
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] when the config is inconsistent.
    pub fn init(config: &ModelConfig, device: &Device) -> Result<Self> {
        Ok(match config {
            ModelConfig::Gpt2(c) => Self::Gpt2(Gpt2::init(c, device)?),
            ModelConfig::Llama(c) => Self::Llama(Llama::init(c, device)?),
        })
    }

    /// The model's config (owned; cheap).
    pub fn config(&self) -> ModelConfig {
        match self {
            Self::Gpt2(m) => ModelConfig::Gpt2(m.config.clone()),
            Self::Llama(m) => ModelConfig::Llama(m.config.clone()),
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.config.vocab_size,
            Self::Llama(m) => m.config.vocab_size,
        }
    }

    /// Number of transformer blocks (the number of layers a [`KvCache`] needs).
    pub fn num_layers(&self) -> usize {
        match self {
            Self::Gpt2(m) => m.h.len(),
            Self::Llama(m) => m.layers.len(),
        }
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.num_layers())
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`.
    ///
    /// - `attention_mask` `[batch, seq]`: `1` = real token, `0` = padding (left padding for
    ///   batched prompts); `None` = no padding.
    /// - `position_ids` `[batch, seq]`; `None` = `max(cumsum(mask) − 1, 0)` when a mask is
    ///   given (a left-padded row gets the same logits as unpadded), else `0..seq`.
    ///
    /// # Panics
    /// When the shapes of the mask or positions disagree with `input_ids`.
    ///
    /// # Example
    /// ```
    /// use burn::tensor::{Device, Int, Tensor};
    /// use kd_models::{CausalLm, Gpt2Config, ModelConfig};
    ///
    /// let device = Device::flex();
    /// let config = Gpt2Config { vocab_size: 50, n_positions: 16, n_embd: 16, n_layer: 1, n_head: 2,
    ///     ..Default::default() };
    /// let model = CausalLm::init(&ModelConfig::Gpt2(config), &device).unwrap();
    /// let ids = Tensor::<2, Int>::from_ints([[1, 2, 3], [4, 5, 6]], &device);
    /// assert_eq!(model.forward(ids, None, None).dims(), [2, 3, 50]);
    /// ```
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        self.forward_with(input_ids, attention_mask, position_ids, None, false).logits
    }

    /// The model computing its activations in `dtype` (`None`: in the dtype of its embedding
    /// table, which is how a model loaded in bf16 runs in bf16).
    ///
    /// Parameters stay in the dtype they are stored in and are cast where they are used, so a
    /// student with `f32` master weights can run its forward and backward in bf16 or f16: the
    /// casts are differentiable and the gradients come back to the `f32` parameters. Norms and
    /// the losses compute in `f32` whatever this is; the logits come out in `dtype`.
    pub fn with_compute_dtype(mut self, dtype: Option<FloatDType>) -> Self {
        match &mut self {
            Self::Gpt2(m) => m.compute_dtype = dtype,
            Self::Llama(m) => m.compute_dtype = dtype,
        }
        self
    }

    /// The model with every parameter cast to `dtype` (a teacher stored in `f32` served in bf16,
    /// say). Parameters keep their ids; the compute dtype is left as it was.
    pub fn cast_params(self, dtype: FloatDType) -> Self {
        /// Casts each float parameter.
        struct Cast(FloatDType);
        impl burn::module::ModuleMapper for Cast {
            fn map_float<const D: usize>(
                &mut self,
                param: burn::module::Param<Tensor<D>>,
            ) -> burn::module::Param<Tensor<D>> {
                let dtype = self.0;
                param.map(|t| t.cast(dtype))
            }
        }
        self.map(&mut Cast(dtype))
    }

    /// The dtype set by [`CausalLm::with_compute_dtype`], if any.
    pub fn compute_dtype(&self) -> Option<FloatDType> {
        match self {
            Self::Gpt2(m) => m.compute_dtype,
            Self::Llama(m) => m.compute_dtype,
        }
    }

    /// The dtype the parameters are stored in (that of the embedding table).
    pub fn param_dtype(&self) -> DType {
        match self {
            Self::Gpt2(m) => m.wte.weight.val().dtype(),
            Self::Llama(m) => m.embed_tokens.weight.val().dtype(),
        }
    }

    /// The full forward: optional KV cache and hidden states.
    ///
    /// With a cache, `input_ids` are the new tokens, `attention_mask` must cover
    /// `[batch, cached + new]`, the new keys/values are appended to the cache, and the default
    /// positions continue after the cached ones.
    ///
    /// # Panics
    /// As [`CausalLm::forward`].
    pub fn forward_with(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> ModelOutput {
        match self {
            Self::Gpt2(m) => {
                m.forward_with(input_ids, attention_mask, position_ids, cache, output_hidden_states)
            }
            Self::Llama(m) => {
                m.forward_with(input_ids, attention_mask, position_ids, cache, output_hidden_states)
            }
        }
    }

    /// The final hidden states `[batch, seq, hidden]` (after the final norm) without the output
    /// head: for losses that apply the head chunk by chunk ([`CausalLm::logits_from_hidden`]).
    /// Arguments as [`CausalLm::forward`].
    ///
    /// # Panics
    /// As [`CausalLm::forward`].
    pub fn last_hidden_state(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        match self {
            Self::Gpt2(m) => m.trunk(input_ids, attention_mask, position_ids, None, false).0,
            Self::Llama(m) => m.trunk(input_ids, attention_mask, position_ids, None, false).0,
        }
    }

    /// The output head as `(weight [vocab, hidden], bias [vocab])` (the embedding table when
    /// tied): `logits = hidden · weightᵀ (+ bias)`, what [`CausalLm::logits_from_hidden`]
    /// computes, for losses that apply the head chunk by chunk.
    pub fn output_head(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        let linear = |l: &burn::nn::Linear| {
            (l.weight.val().transpose(), l.bias.as_ref().map(burn::module::Param::val))
        };
        match self {
            Self::Gpt2(m) => match &m.lm_head {
                Some(head) => linear(head),
                None => (m.wte.weight.val(), None),
            },
            Self::Llama(m) => match &m.lm_head {
                Some(head) => linear(head),
                None => (m.embed_tokens.weight.val(), None),
            },
        }
    }

    /// Applies the output head (tied or not) to final hidden states.
    /// // [batch, seq, hidden] -> [batch, seq, vocab]
    pub fn logits_from_hidden(&self, hidden: Tensor<3>) -> Tensor<3> {
        match self {
            Self::Gpt2(m) => m.lm_head_forward(hidden),
            Self::Llama(m) => m.lm_head_forward(hidden),
        }
    }

    /// Every parameter under its `save_pretrained` key in the HF storage layout.
    pub(crate) fn named_tensors(&self) -> Vec<NamedTensor> {
        match self {
            Self::Gpt2(m) => m.named_tensors(),
            Self::Llama(m) => m.named_tensors(),
        }
    }

    /// Loads a Hugging Face model directory with its parameters in the dtype of `options`
    /// (bf16, say, with no `f32` copy of a bf16 checkpoint).
    ///
    /// # Errors
    /// See [`load::load_pretrained_with`].
    pub fn from_pretrained_with(
        dir: impl AsRef<Path>,
        options: &load::LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        load::load_pretrained_with(dir, options, device)
    }

    /// As [`CausalLm::save_pretrained`], every parameter converted to `dtype` as it is written.
    ///
    /// # Errors
    /// See [`load::save_pretrained_as`].
    pub fn save_pretrained_as(&self, dir: impl AsRef<Path>, dtype: FloatDType) -> Result<()> {
        load::save_pretrained_as(self, dir, dtype)
    }
}
