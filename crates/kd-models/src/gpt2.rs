//! GPT-2 (`GPT2LMHeadModel`), a port of the `transformers` implementation.
//!
//! ```text
//! h₀ = wte[ids] + wpe[positions]                          learned absolute positions
//! for each block:  h = h + c_proj(attn(ln_1(h)))          causal multi-head attention
//!                  h = h + mlp.c_proj(act(c_fc(ln_2(h))))  act = gelu_new (tanh approximation)
//! logits = ln_f(h) · wteᵀ                                  output head tied to the embedding
//! ```
//!
//! [`Gpt2Config`] is `transformers`' `GPT2Config`, read from `config.json` by `serde`.
//!
//! The HF `Conv1D` weights are stored `[in, out]`, which is already burn's `Linear` layout, so
//! they load without a transpose. Field names are the HF keys (`transformer.` prefix dropped).

use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::arch::{ArchConfig, Architecture, CausalModel};
use crate::error::{ModelError, Result};
use crate::hf_config::{from_object, positive, positive_f64, token_ids, tokens_json};
use crate::kv_cache::KvCache;
use crate::layers::{
    Activation, LayerNorm, activate, attention_mask_4d, default_position_ids, embed, float_dtype,
    fused_attention, init_embedding, init_linear, linear,
};
use crate::weights::{HfLinear, NamedTensor, Weights, export_linear};

/// GPT-2 hyper-parameters (`GPT2Config` in `transformers`, same key names), read from
/// `config.json` with `model_type: "gpt2"`.
///
/// A key that is absent (or `null`) takes the `transformers` default ([`Gpt2Config::default`]),
/// except the special tokens, which are then unset. `transformers`' alternative names
/// (`hidden_size`, `num_hidden_layers`, `num_attention_heads`, `max_position_embeddings`) are
/// read too.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Number of learned positions (maximum sequence length).
    #[serde(alias = "max_position_embeddings")]
    pub n_positions: usize,
    /// Width of the residual stream.
    #[serde(alias = "hidden_size")]
    pub n_embd: usize,
    /// Number of blocks.
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    /// Number of attention heads.
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    /// Inner MLP width; `None` means `4 * n_embd`.
    pub n_inner: Option<usize>,
    /// MLP activation (`activation_function`).
    pub activation_function: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_epsilon: f64,
    /// Scale attention scores by `1/√head_dim`.
    pub scale_attn_weights: bool,
    /// Additionally scale attention scores of block `i` by `1/(i+1)`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Output head tied to `wte` (GPT-2 checkpoints always are).
    pub tie_word_embeddings: bool,
    /// Standard deviation of the normal initializer.
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (`config.json` holds one id or a list).
    #[serde(default, deserialize_with = "token_ids")]
    pub eos_token_id: Vec<u32>,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl Default for Gpt2Config {
    /// The `transformers` defaults (GPT-2 small).
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: Activation::GeluTanh,
            layer_norm_epsilon: 1e-5,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: true,
            initializer_range: 0.02,
            bos_token_id: Some(50256),
            eos_token_id: vec![50256],
            pad_token_id: None,
        }
    }
}

impl Gpt2Config {
    /// Head width `n_embd / n_head`.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Inner MLP width (`n_inner`, default `4 * n_embd`).
    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Checks the sizes are consistent.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the first inconsistent key.
    pub fn validate(&self) -> Result<()> {
        positive("vocab_size", self.vocab_size)?;
        positive("n_positions", self.n_positions)?;
        positive("n_layer", self.n_layer)?;
        positive("n_head", self.n_head)?;
        if self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::config(
                "n_embd",
                format!("{} is not a positive multiple of n_head = {}", self.n_embd, self.n_head),
            ));
        }
        positive_f64("layer_norm_epsilon", self.layer_norm_epsilon)
    }

    /// The config as a `config.json` value (what `save_pretrained` writes).
    pub fn to_json(&self) -> Value {
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "activation_function": self.activation_function.hf_name(),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": tokens_json(&self.eos_token_id),
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
        })
    }
}

impl ArchConfig for Gpt2Config {
    fn model_type(&self) -> &str {
        "gpt2"
    }
    fn to_json(&self) -> Value {
        Gpt2Config::to_json(self)
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn hidden_size(&self) -> usize {
        self.n_embd
    }
    fn num_hidden_layers(&self) -> usize {
        self.n_layer
    }
    fn max_position_embeddings(&self) -> usize {
        self.n_positions
    }
    fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }
    fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_id
    }
    fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }
    fn initializer_range(&self) -> f64 {
        self.initializer_range
    }
    fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }
}

/// Causal self-attention with a fused query/key/value projection (`attn`).
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// Fused projection `[n_embd, 3 * n_embd]`, output split into q, k, v.
    pub c_attn: Linear,
    /// Output projection `[n_embd, n_embd]`.
    pub c_proj: Linear,
    /// Number of heads.
    pub n_head: usize,
    /// Multiplier of the attention scores (`1/√head_dim`, optionally `/(layer + 1)`).
    pub scale: f64,
}

impl Gpt2Attention {
    /// Attends over the cached and new positions. // [b, s, e] -> [b, s, e]
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let [b, s, e] = x.dims();
        let hd = e / self.n_head;
        let heads = |t: Tensor<3>| t.reshape([b, s, self.n_head, hd]).swap_dims(1, 2);
        let mut qkv = linear(&self.c_attn, x).chunk(3, 2); // 3 × [b, s, e]
        let v = heads(qkv.pop().expect("3 chunks")); // [b, h, s, hd]
        let k = heads(qkv.pop().expect("3 chunks"));
        let q = heads(qkv.pop().expect("3 chunks"));
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, k, v), // [b, h, past + s, hd]
            None => (k, v),
        };
        let out = fused_attention(q, k, v, mask, self.scale); // [b, h, s, hd]
        linear(&self.c_proj, out.swap_dims(1, 2).reshape([b, s, e]))
    }
}

/// The feed-forward network (`mlp`): `c_proj(act(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    /// Up projection `[n_embd, inner]`.
    pub c_fc: Linear,
    /// Down projection `[inner, n_embd]`.
    pub c_proj: Linear,
    /// The activation (`activation_function`).
    #[module(skip)]
    pub act: Activation,
}

impl Gpt2Mlp {
    /// // [b, s, e] -> [b, s, e]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        linear(&self.c_proj, activate(self.act, linear(&self.c_fc, x)))
    }
}

/// One pre-norm transformer block (`h.{i}`).
#[derive(Module, Debug)]
pub struct Gpt2Block {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Self-attention.
    pub attn: Gpt2Attention,
    /// Norm before the MLP.
    pub ln_2: LayerNorm,
    /// Feed-forward network.
    pub mlp: Gpt2Mlp,
}

impl Gpt2Block {
    /// // [b, s, e] -> [b, s, e]
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), mask, cache, layer);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

/// GPT-2 with its language-model head.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding `[vocab, n_embd]` (also the output head when tied).
    pub wte: Embedding,
    /// Learned position embedding `[n_positions, n_embd]`.
    pub wpe: Embedding,
    /// The blocks.
    pub h: Vec<Gpt2Block>,
    /// Final layer norm.
    pub ln_f: LayerNorm,
    /// Untied output head `[n_embd, vocab]`; `None` when tied to `wte` (every released GPT-2).
    pub lm_head: Option<Linear>,
    /// The config the model was built from.
    #[module(skip)]
    pub config: Gpt2Config,
    /// The dtype activations are computed in; `None`: the embedding table's dtype.
    #[module(skip)]
    pub compute_dtype: Option<FloatDType>,
}

impl Gpt2 {
    /// A freshly initialised model, as `transformers` initialises GPT-2: every weight
    /// `N(0, initializer_range)`, the residual output projections (`c_proj`) with the std divided by
    /// `√(2 · n_layer)`, biases zero, norms one.
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] when the config is inconsistent.
    pub fn init(config: &Gpt2Config, device: &Device) -> Result<Self> {
        config.validate()?;
        let (e, inner, std) = (config.n_embd, config.inner_dim(), config.initializer_range);
        let proj_std = std / (2.0 * config.n_layer as f64).sqrt();
        let h = (0..config.n_layer)
            .map(|layer| Gpt2Block {
                ln_1: LayerNorm::init(e, config.layer_norm_epsilon, device),
                attn: Gpt2Attention {
                    c_attn: init_linear(e, 3 * e, true, std, device),
                    c_proj: init_linear(e, e, true, proj_std, device),
                    n_head: config.n_head,
                    scale: attention_scale(config, layer),
                },
                ln_2: LayerNorm::init(e, config.layer_norm_epsilon, device),
                mlp: Gpt2Mlp {
                    c_fc: init_linear(e, inner, true, std, device),
                    c_proj: init_linear(inner, e, true, proj_std, device),
                    act: config.activation_function,
                },
            })
            .collect();
        Ok(Self {
            wte: init_embedding(config.vocab_size, e, std, device),
            wpe: init_embedding(config.n_positions, e, std, device),
            h,
            ln_f: LayerNorm::init(e, config.layer_norm_epsilon, device),
            lm_head: (!config.tie_word_embeddings)
                .then(|| init_linear(e, config.vocab_size, false, std, device)),
            config: config.clone(),
            compute_dtype: None,
        })
    }
}

impl Architecture for Gpt2 {
    type Config = Gpt2Config;
    const MODEL_TYPES: &'static [&'static str] = &["gpt2"];
    const KEY_PREFIX: &'static str = "transformer.";

    fn parse_config(_model_type: &str, obj: &Map<String, Value>) -> Result<Gpt2Config> {
        let config: Gpt2Config = from_object(obj, &[])?;
        config.validate()?;
        Ok(config)
    }

    fn init(config: &Gpt2Config, device: &Device) -> Result<Self> {
        Self::init(config, device)
    }

    fn from_weights(config: &Gpt2Config, w: &mut Weights) -> Result<Self> {
        config.validate()?;
        let (e, inner) = (config.n_embd, config.inner_dim());
        let eps = config.layer_norm_epsilon;
        let mut h = Vec::with_capacity(config.n_layer);
        for layer in 0..config.n_layer {
            let p = format!("transformer.h.{layer}");
            h.push(Gpt2Block {
                ln_1: w.layer_norm(&format!("{p}.ln_1"), e, eps)?,
                attn: Gpt2Attention {
                    c_attn: w.linear(
                        &format!("{p}.attn.c_attn"),
                        e,
                        3 * e,
                        true,
                        HfLinear::Conv1D,
                    )?,
                    c_proj: w.linear(&format!("{p}.attn.c_proj"), e, e, true, HfLinear::Conv1D)?,
                    n_head: config.n_head,
                    scale: attention_scale(config, layer),
                },
                ln_2: w.layer_norm(&format!("{p}.ln_2"), e, eps)?,
                mlp: Gpt2Mlp {
                    c_fc: w.linear(&format!("{p}.mlp.c_fc"), e, inner, true, HfLinear::Conv1D)?,
                    c_proj: w.linear(
                        &format!("{p}.mlp.c_proj"),
                        inner,
                        e,
                        true,
                        HfLinear::Conv1D,
                    )?,
                    act: config.activation_function,
                },
            });
        }
        let lm_head = if config.tie_word_embeddings {
            w.skip("lm_head.weight");
            None
        } else {
            Some(w.linear("lm_head", e, config.vocab_size, false, HfLinear::Linear)?)
        };
        Ok(Self {
            wte: w.embedding("transformer.wte", config.vocab_size, e)?,
            wpe: w.embedding("transformer.wpe", config.n_positions, e)?,
            h,
            ln_f: w.layer_norm("transformer.ln_f", e, eps)?,
            lm_head,
            config: config.clone(),
            compute_dtype: None,
        })
    }

    fn config(&self) -> &Gpt2Config {
        &self.config
    }

    fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = vec![
            NamedTensor::from_tensor("transformer.wte.weight", self.wte.weight.val()),
            NamedTensor::from_tensor("transformer.wpe.weight", self.wpe.weight.val()),
        ];
        for (i, block) in self.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            out.extend(block.ln_1.named_tensors(&format!("{p}.ln_1")));
            out.extend(export_linear(
                &format!("{p}.attn.c_attn"),
                &block.attn.c_attn,
                HfLinear::Conv1D,
            ));
            out.extend(export_linear(
                &format!("{p}.attn.c_proj"),
                &block.attn.c_proj,
                HfLinear::Conv1D,
            ));
            out.extend(block.ln_2.named_tensors(&format!("{p}.ln_2")));
            out.extend(export_linear(&format!("{p}.mlp.c_fc"), &block.mlp.c_fc, HfLinear::Conv1D));
            out.extend(export_linear(
                &format!("{p}.mlp.c_proj"),
                &block.mlp.c_proj,
                HfLinear::Conv1D,
            ));
        }
        out.extend(self.ln_f.named_tensors("transformer.ln_f"));
        if let Some(head) = &self.lm_head {
            out.extend(export_linear("lm_head", head, HfLinear::Linear));
        }
        out
    }
}

impl CausalModel for Gpt2 {
    fn num_layers(&self) -> usize {
        self.h.len()
    }

    fn token_embedding(&self) -> &Embedding {
        &self.wte
    }

    fn lm_head(&self) -> Option<&Linear> {
        self.lm_head.as_ref()
    }

    fn compute_dtype(&self) -> Option<FloatDType> {
        self.compute_dtype
    }

    fn set_compute_dtype(&mut self, dtype: Option<FloatDType>) {
        self.compute_dtype = dtype;
    }

    /// Hidden states follow `transformers`: index 0 is `wte + wpe`, index `i` the output of
    /// block `i`, the last one after `ln_f`. A position `≥ n_positions` panics.
    fn trunk(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Option<Tensor<2, Int>>,
        position_ids: Option<Tensor<2, Int>>,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> (Tensor<3>, Vec<Tensor<3>>) {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let positions = position_ids
            .unwrap_or_else(|| default_position_ids(attention_mask.as_ref(), b, s, past, &device));
        assert_eq!(positions.dims(), [b, s], "position_ids must be [batch, seq] = [{b}, {s}]");
        let mask = attention_mask_4d(attention_mask.as_ref(), b, s, past, None, &device);

        let mut h = embed(&self.wte, input_ids, self.compute_dtype); // [b, s, e]
        let h_dtype = float_dtype(&h);
        h = h + self.wpe.forward(positions).cast(h_dtype);
        let mut hidden = Vec::new();
        for (layer, block) in self.h.iter().enumerate() {
            if output_hidden_states {
                hidden.push(h.clone());
            }
            h = block.forward(h, mask.as_ref(), cache.as_deref_mut(), layer);
        }
        let h = self.ln_f.forward(h); // [b, s, e]
        if output_hidden_states {
            hidden.push(h.clone());
        }
        (h, hidden)
    }
}

fn attention_scale(config: &Gpt2Config, layer: usize) -> f64 {
    let mut scale = 1.0;
    if config.scale_attn_weights {
        scale /= (config.head_dim() as f64).sqrt();
    }
    if config.scale_attn_by_inverse_layer_idx {
        scale /= (layer + 1) as f64;
    }
    scale
}
