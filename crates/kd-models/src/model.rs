//! [`CausalLm`], the one type a training or generation loop needs: any supported architecture
//! behind the same forward signature. Every method delegates to the architecture through the
//! [`CausalModel`](crate::arch::CausalModel) trait; loading and saving are in [`crate::load`].

use burn::module::Module;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor};

use crate::config::ModelConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;

pub use crate::arch::ModelOutput;
pub use crate::registry::CausalLm;

impl CausalLm {
    /// A freshly initialised model for training from scratch (HF initialisation: normal with
    /// std `initializer_range`, biases zero, norms one).
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] when the config is inconsistent.
    pub fn init(config: &ModelConfig, device: &Device) -> Result<Self> {
        Self::init_from(config, device)
    }

    /// The model's config (owned; cheap).
    pub fn config(&self) -> ModelConfig {
        self.model_config()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.arch_config().vocab_size()
    }

    /// Number of transformer blocks (the number of layers a [`KvCache`] needs).
    pub fn num_layers(&self) -> usize {
        self.model().num_layers()
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
        self.model_mut().set_compute_dtype(dtype);
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
        self.model().compute_dtype()
    }

    /// The dtype the parameters are stored in (that of the embedding table).
    pub fn param_dtype(&self) -> DType {
        self.model().param_dtype()
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
        self.model().forward_with(
            input_ids,
            attention_mask,
            position_ids,
            cache,
            output_hidden_states,
        )
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
        self.model().trunk(input_ids, attention_mask, position_ids, None, false).0
    }

    /// The output head as `(weight [vocab, hidden], bias [vocab])` (the embedding table when
    /// tied): `logits = hidden · weightᵀ (+ bias)`, what [`CausalLm::logits_from_hidden`]
    /// computes, for losses that apply the head chunk by chunk.
    pub fn output_head(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        self.model().output_head()
    }

    /// Applies the output head (tied or not) to final hidden states.
    /// // [batch, seq, hidden] -> [batch, seq, vocab]
    pub fn logits_from_hidden(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.model().logits_from_hidden(hidden)
    }
}
