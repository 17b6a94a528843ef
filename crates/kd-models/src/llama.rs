//! LLaMA (`LlamaForCausalLM`), the decoder shared by the family: LLaMA 1/2/3, Mistral and Qwen2
//! checkpoints; a port of the `transformers` implementation.
//!
//! [`LlamaConfig`] holds the family's hyper-parameters. `config.json` is read by `serde`: the
//! LLaMA keys here, the keys Mistral and Qwen2 add in their own files (`mistral.rs`,
//! `qwen2.rs`), both transformers-4 (`rope_theta` + `rope_scaling`) and transformers-5
//! (`rope_parameters`) RoPE layouts.
//!
//! ```text
//! h₀ = embed_tokens[ids]                                        no absolute positions
//! for each layer:  h = h + o_proj(attn(rope(q), rope(k), v))     on input_layernorm(h)
//!                  h = h + down_proj(silu(gate_proj(x)) ⊙ up_proj(x)),  x = post_attention_layernorm(h)
//! logits = lm_head(norm(h))                                      lm_head tied to embed_tokens or not
//!
//! rope(x) = x · cos(p·ω) + rotate_half(x) · sin(p·ω),  rotate_half([x₁, x₂]) = [−x₂, x₁]
//! ω_i = θ^(−2i/d) for i < d/2, each used for dims i and i + d/2, optionally llama3/linear-scaled
//! ```
//!
//! Grouped-query attention: `num_key_value_heads` key/value heads, query head `h` reads kv head
//! `h / (num_attention_heads / num_key_value_heads)`. Qwen2 adds biases to q/k/v. Mistral and
//! Qwen2 may use sliding-window attention (`sliding_window`; Qwen2 on layers
//! `≥ max_window_layers`): a query at cache index `i` sees keys `j` with `i − window < j ≤ i`.
//! The KV cache keeps every key; the mask hides the ones outside the window.

use burn::module::Module;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::arch::{ArchConfig, Architecture, CausalModel};
use crate::error::{ModelError, Result};
use crate::hf_config::{from_object, int, positive, positive_f64, token_ids, tokens_json};
use crate::kv_cache::KvCache;
use crate::layers::{
    Activation, RmsNorm, activate, attention_mask_4d, default_position_ids, embed, fused_attention,
    init_embedding, init_linear, linear, repeat_kv,
};
use crate::mistral::{self, MistralKeys};
use crate::qwen2::{self, Qwen2Keys};
pub use crate::rope::{RopeScaling, RotaryEmbedding, apply_rope, inverse_frequencies};
use crate::weights::{HfLinear, NamedTensor, Weights, export_linear};

/// LLaMA-family hyper-parameters (`LlamaConfig`; Mistral and Qwen2 configs map onto it).
///
/// Read from `config.json` by `serde` per `model_type`: the LLaMA keys plus Mistral's window
/// (`mistral.rs`) or Qwen2's biases and windowed layers (`qwen2.rs`). An absent or `null` key takes the `transformers` `LlamaConfig` default
/// ([`LlamaConfig::default`]), the special tokens are then unset.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2` (written back unchanged on save).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Inner width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA; `1` is MQA, `num_attention_heads` is plain MHA).
    pub num_key_value_heads: usize,
    /// Head width (default `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base `θ`.
    pub rope_theta: f64,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Sliding-window attention: on the windowed layers a query at index `i` attends only to
    /// keys `j` with `i − window < j ≤ i` (itself and the `window − 1` tokens before it), as
    /// `transformers` masks it. `None`: full causal attention on every layer (LLaMA; Qwen2
    /// without `use_sliding_window`; Mistral with `sliding_window: null`).
    pub sliding_window: Option<usize>,
    /// With a window, layers `i ≥ max_window_layers` use it and the ones below attend fully
    /// (Qwen2's `max_window_layers`; `0`, every layer windowed, for Mistral).
    pub max_window_layers: usize,
    /// Output head tied to `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// MLP activation (`hidden_act`, `silu` for all of these families).
    pub hidden_act: Activation,
    /// Bias on `q_proj`, `k_proj`, `v_proj` (true for Qwen2, `attention_bias` for LLaMA).
    pub qkv_bias: bool,
    /// Bias on `o_proj` (`attention_bias` for LLaMA, false for Qwen2).
    pub o_bias: bool,
    /// Bias on the MLP projections (`mlp_bias`).
    pub mlp_bias: bool,
    /// Standard deviation of the normal initializer.
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids.
    pub eos_token_id: Vec<u32>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
}

impl Default for LlamaConfig {
    /// The `transformers` `LlamaConfig` defaults (LLaMA-2 7B sizes).
    fn default() -> Self {
        Self {
            model_type: "llama".into(),
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            head_dim: 128,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Default,
            sliding_window: None,
            max_window_layers: 0,
            tie_word_embeddings: false,
            hidden_act: Activation::Silu,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            initializer_range: 0.02,
            bos_token_id: Some(1),
            eos_token_id: vec![2],
            pad_token_id: None,
        }
    }
}

impl LlamaConfig {
    /// Checks the sizes are consistent.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the first inconsistent key.
    pub fn validate(&self) -> Result<()> {
        positive("vocab_size", self.vocab_size)?;
        positive("hidden_size", self.hidden_size)?;
        positive("intermediate_size", self.intermediate_size)?;
        positive("num_hidden_layers", self.num_hidden_layers)?;
        positive("num_attention_heads", self.num_attention_heads)?;
        positive("num_key_value_heads", self.num_key_value_heads)?;
        positive("max_position_embeddings", self.max_position_embeddings)?;
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                "head_dim",
                format!("{} must be a positive even number (RoPE rotates pairs)", self.head_dim),
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        positive_f64("rms_norm_eps", self.rms_norm_eps)?;
        positive_f64("rope_theta", self.rope_theta)?;
        if self.sliding_window == Some(0) {
            return Err(ModelError::config("sliding_window", "must be > 0 (or null)"));
        }
        Ok(())
    }

    /// The attention window of layer `layer` (`None`: full causal attention).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| layer >= self.max_window_layers)
    }

    /// Parses the `config.json` object of `model_type` `llama`, `mistral` or `qwen2`.
    fn from_object(model_type: &str, obj: &Map<String, Value>) -> Result<Self> {
        let keys: LlamaKeys = from_object(obj, &[])?;
        positive("num_attention_heads", keys.num_attention_heads)?;
        if keys.head_dim.is_none() && !keys.hidden_size.is_multiple_of(keys.num_attention_heads) {
            return Err(ModelError::config(
                "hidden_size",
                format!(
                    "{} is not a multiple of num_attention_heads = {} (and no head_dim is given)",
                    keys.hidden_size, keys.num_attention_heads
                ),
            ));
        }
        let (rope_theta, rope_scaling) = keys.rope()?;
        let ((sliding_window, max_window_layers), (qkv_bias, o_bias)) = match model_type {
            "mistral" => {
                (MistralKeys::parse(obj)?.windows(), (keys.attention_bias, keys.attention_bias))
            }
            "qwen2" => (Qwen2Keys::parse(obj)?.windows(keys.num_hidden_layers)?, qwen2::BIASES),
            _ => ((None, 0), (keys.attention_bias, keys.attention_bias)),
        };
        let config = Self {
            model_type: model_type.to_string(),
            vocab_size: keys.vocab_size,
            hidden_size: keys.hidden_size,
            intermediate_size: keys.intermediate_size,
            num_hidden_layers: keys.num_hidden_layers,
            num_attention_heads: keys.num_attention_heads,
            num_key_value_heads: keys.num_key_value_heads.unwrap_or(keys.num_attention_heads),
            head_dim: keys.head_dim.unwrap_or(keys.hidden_size / keys.num_attention_heads),
            max_position_embeddings: keys.max_position_embeddings,
            rms_norm_eps: keys.rms_norm_eps,
            rope_theta,
            rope_scaling,
            sliding_window,
            max_window_layers,
            tie_word_embeddings: keys.tie_word_embeddings,
            hidden_act: keys.hidden_act,
            qkv_bias,
            o_bias,
            mlp_bias: keys.mlp_bias,
            initializer_range: keys.initializer_range,
            bos_token_id: keys.bos_token_id,
            eos_token_id: keys.eos_token_id,
            pad_token_id: keys.pad_token_id,
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as a `config.json` value (transformers-4 layout: `rope_theta` +
    /// `rope_scaling`, which transformers 5 also reads).
    pub fn to_json(&self) -> Value {
        let rope_scaling = match self.rope_scaling {
            RopeScaling::Default => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let architecture = match self.model_type.as_str() {
            "mistral" => mistral::ARCHITECTURE,
            "qwen2" => qwen2::ARCHITECTURE,
            _ => ARCHITECTURE,
        };
        let mut value = json!({
            "architectures": [architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act.hf_name(),
            "mlp_bias": self.mlp_bias,
            "initializer_range": self.initializer_range,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": tokens_json(&self.eos_token_id),
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
        });
        if self.model_type != "qwen2" {
            value["attention_bias"] = json!(self.qkv_bias);
        }
        match self.model_type.as_str() {
            "mistral" => mistral::write_keys(&mut value, self.sliding_window),
            "qwen2" => qwen2::write_keys(
                &mut value,
                self.sliding_window,
                self.max_window_layers,
                self.num_hidden_layers,
            ),
            _ => {}
        }
        value
    }
}

/// The `architectures` entry `save_pretrained` writes for `model_type: "llama"`.
const ARCHITECTURE: &str = "LlamaForCausalLM";

/// The keys of `transformers`' `LlamaConfig`, shared by the family (Mistral and Qwen2 read the
/// same names), with its defaults.
#[derive(Debug, Deserialize)]
struct LlamaKeys {
    #[serde(default = "int::<32000>")]
    vocab_size: usize,
    #[serde(default = "int::<4096>")]
    hidden_size: usize,
    #[serde(default = "int::<11008>")]
    intermediate_size: usize,
    #[serde(default = "int::<32>")]
    num_hidden_layers: usize,
    #[serde(default = "int::<32>")]
    num_attention_heads: usize,
    /// Default: `num_attention_heads` (plain multi-head attention).
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    /// Default: `hidden_size / num_attention_heads`.
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "int::<2048>")]
    max_position_embeddings: usize,
    #[serde(default = "rms_norm_eps")]
    rms_norm_eps: f64,
    /// transformers 4: `rope_theta` at the top level (default 10000) ...
    #[serde(default)]
    rope_theta: Option<f64>,
    /// ... and an optional `rope_scaling` dict;
    #[serde(default)]
    rope_scaling: Option<RopeKeys>,
    /// transformers 5: everything in `rope_parameters` (wins over the other two).
    #[serde(default)]
    rope_parameters: Option<RopeKeys>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "silu")]
    hidden_act: Activation,
    /// Bias on q/k/v/o (LLaMA, Mistral).
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "initializer_range")]
    initializer_range: f64,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "token_ids")]
    eos_token_id: Vec<u32>,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

fn rms_norm_eps() -> f64 {
    1e-6
}

fn silu() -> Activation {
    Activation::Silu
}

fn initializer_range() -> f64 {
    0.02
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5).
#[derive(Debug, Deserialize)]
struct RopeKeys {
    /// `rope_parameters` holds the base too.
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_type: Option<RopeType>,
    /// The name older configs use for `rope_type`.
    #[serde(default, rename = "type")]
    legacy_type: Option<RopeType>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    low_freq_factor: Option<f64>,
    #[serde(default)]
    high_freq_factor: Option<f64>,
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
}

/// The RoPE types this port implements (any other name is unsupported).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RopeType {
    Default,
    Linear,
    Llama3,
}

impl LlamaKeys {
    /// `rope_theta` and the scaling, from either config layout.
    fn rope(&self) -> Result<(f64, RopeScaling)> {
        let (name, p) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) => ("rope_parameters", p),
            (None, Some(p)) => ("rope_scaling", p),
            (None, None) => return Ok((self.rope_theta.unwrap_or(10000.0), RopeScaling::Default)),
        };
        let theta = p.rope_theta.or(self.rope_theta).unwrap_or(10000.0);
        let need = |value: Option<f64>, key: &str| {
            value.ok_or_else(|| {
                ModelError::config(&format!("{name}.{key}"), "missing for this rope_type")
            })
        };
        let scaling = match p.rope_type.or(p.legacy_type).unwrap_or(RopeType::Default) {
            RopeType::Default => RopeScaling::Default,
            RopeType::Linear => RopeScaling::Linear { factor: need(p.factor, "factor")? },
            RopeType::Llama3 => RopeScaling::Llama3 {
                factor: need(p.factor, "factor")?,
                low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: p.original_max_position_embeddings.ok_or_else(
                    || {
                        ModelError::config(
                            &format!("{name}.original_max_position_embeddings"),
                            "missing for rope_type llama3",
                        )
                    },
                )?,
            },
        };
        Ok((theta, scaling))
    }
}

impl ArchConfig for LlamaConfig {
    fn model_type(&self) -> &str {
        &self.model_type
    }
    fn to_json(&self) -> Value {
        LlamaConfig::to_json(self)
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    fn num_hidden_layers(&self) -> usize {
        self.num_hidden_layers
    }
    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
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

/// Grouped-query self-attention with RoPE (`self_attn`).
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `[hidden, heads * head_dim]`.
    pub q_proj: Linear,
    /// `[hidden, kv_heads * head_dim]`.
    pub k_proj: Linear,
    /// `[hidden, kv_heads * head_dim]`.
    pub v_proj: Linear,
    /// `[heads * head_dim, hidden]`.
    pub o_proj: Linear,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl LlamaAttention {
    /// // [b, s, hidden] -> [b, s, hidden]
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<4>, &Tensor<4>),
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let hd = self.head_dim;
        let q = linear(&self.q_proj, x.clone()).reshape([b, s, self.num_heads, hd]).swap_dims(1, 2);
        let k =
            linear(&self.k_proj, x.clone()).reshape([b, s, self.num_kv_heads, hd]).swap_dims(1, 2);
        let v = linear(&self.v_proj, x).reshape([b, s, self.num_kv_heads, hd]).swap_dims(1, 2);
        let (cos, sin) = rope;
        let q = apply_rope(q, cos, sin); // [b, heads, s, hd]
        let k = apply_rope(k, cos, sin); // [b, kv_heads, s, hd]
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, k, v), // [b, kv_heads, past + s, hd]
            None => (k, v),
        };
        let n_rep = self.num_heads / self.num_kv_heads;
        let (k, v) = (repeat_kv(k, n_rep), repeat_kv(v, n_rep)); // [b, heads, past + s, hd]
        let scale = 1.0 / (hd as f64).sqrt();
        let out = fused_attention(q, k, v, mask, scale); // [b, heads, s, hd]
        linear(&self.o_proj, out.swap_dims(1, 2).reshape([b, s, self.num_heads * hd]))
    }
}

/// The SwiGLU feed-forward network (`mlp`).
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `[hidden, intermediate]`, through the activation.
    pub gate_proj: Linear,
    /// `[hidden, intermediate]`, linear branch.
    pub up_proj: Linear,
    /// `[intermediate, hidden]`.
    pub down_proj: Linear,
    /// The activation of the gate (`hidden_act`, silu).
    #[module(skip)]
    pub act: Activation,
}

impl LlamaMlp {
    /// `down(act(gate(x)) ⊙ up(x))`. // [b, s, hidden] -> [b, s, hidden]
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = activate(self.act, linear(&self.gate_proj, x.clone()));
        linear(&self.down_proj, gate.mul(linear(&self.up_proj, x)))
    }
}

/// One decoder layer (`model.layers.{i}`).
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer {
    /// RMSNorm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: LlamaAttention,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward network.
    pub mlp: LlamaMlp,
}

impl LlamaDecoderLayer {
    /// // [b, s, hidden] -> [b, s, hidden]
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: (&Tensor<4>, &Tensor<4>),
        mask: Option<&Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
        layer: usize,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            rope,
            mask,
            cache,
            layer,
        );
        let x = x + attn;
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// LLaMA / Mistral / Qwen2 with its language-model head.
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding `[vocab, hidden]` (`model.embed_tokens`).
    pub embed_tokens: Embedding,
    /// Decoder layers (`model.layers`).
    pub layers: Vec<LlamaDecoderLayer>,
    /// Final RMSNorm (`model.norm`).
    pub norm: RmsNorm,
    /// Output head `[hidden, vocab]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
    /// RoPE frequencies.
    pub rotary_emb: RotaryEmbedding,
    /// The config the model was built from.
    #[module(skip)]
    pub config: LlamaConfig,
    /// The dtype activations are computed in; `None`: the embedding table's dtype.
    #[module(skip)]
    pub compute_dtype: Option<FloatDType>,
}

impl Llama {
    /// A freshly initialised model, as `transformers` initialises LLaMA: linear and embedding
    /// weights `N(0, initializer_range)`, biases zero, norms one.
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] when the config is inconsistent.
    pub fn init(config: &LlamaConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let c = config;
        let std = c.initializer_range;
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let layers = (0..c.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                input_layernorm: RmsNorm::init(hidden, c.rms_norm_eps, device),
                self_attn: LlamaAttention {
                    q_proj: init_linear(
                        hidden,
                        c.num_attention_heads * hd,
                        c.qkv_bias,
                        std,
                        device,
                    ),
                    k_proj: init_linear(
                        hidden,
                        c.num_key_value_heads * hd,
                        c.qkv_bias,
                        std,
                        device,
                    ),
                    v_proj: init_linear(
                        hidden,
                        c.num_key_value_heads * hd,
                        c.qkv_bias,
                        std,
                        device,
                    ),
                    o_proj: init_linear(c.num_attention_heads * hd, hidden, c.o_bias, std, device),
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: RmsNorm::init(hidden, c.rms_norm_eps, device),
                mlp: LlamaMlp {
                    gate_proj: init_linear(hidden, c.intermediate_size, c.mlp_bias, std, device),
                    up_proj: init_linear(hidden, c.intermediate_size, c.mlp_bias, std, device),
                    down_proj: init_linear(c.intermediate_size, hidden, c.mlp_bias, std, device),
                    act: c.hidden_act,
                },
            })
            .collect();
        Ok(Self {
            embed_tokens: init_embedding(c.vocab_size, hidden, std, device),
            layers,
            norm: RmsNorm::init(hidden, c.rms_norm_eps, device),
            lm_head: (!c.tie_word_embeddings)
                .then(|| init_linear(hidden, c.vocab_size, false, std, device)),
            rotary_emb: RotaryEmbedding::new(c.head_dim, c.rope_theta, c.rope_scaling),
            config: c.clone(),
            compute_dtype: None,
        })
    }
}

impl Architecture for Llama {
    type Config = LlamaConfig;
    const MODEL_TYPES: &'static [&'static str] = &["llama", "mistral", "qwen2"];
    const KEY_PREFIX: &'static str = "model.";

    fn parse_config(model_type: &str, obj: &Map<String, Value>) -> Result<LlamaConfig> {
        LlamaConfig::from_object(model_type, obj)
    }

    fn init(config: &LlamaConfig, device: &Device) -> Result<Self> {
        Llama::init(config, device)
    }

    fn from_weights(config: &LlamaConfig, w: &mut Weights) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (hidden, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |w: &mut Weights, name: &str, d_in, d_out, bias| {
                w.linear(&format!("{p}.{name}"), d_in, d_out, bias, HfLinear::Linear)
            };
            w.skip(&format!("{p}.self_attn.rotary_emb.inv_freq"));
            layers.push(LlamaDecoderLayer {
                input_layernorm: w.rms_norm(
                    &format!("{p}.input_layernorm"),
                    hidden,
                    c.rms_norm_eps,
                )?,
                self_attn: LlamaAttention {
                    q_proj: lin(w, "self_attn.q_proj", hidden, q_out, c.qkv_bias)?,
                    k_proj: lin(w, "self_attn.k_proj", hidden, kv_out, c.qkv_bias)?,
                    v_proj: lin(w, "self_attn.v_proj", hidden, kv_out, c.qkv_bias)?,
                    o_proj: lin(w, "self_attn.o_proj", q_out, hidden, c.o_bias)?,
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: w.rms_norm(
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    c.rms_norm_eps,
                )?,
                mlp: LlamaMlp {
                    gate_proj: lin(w, "mlp.gate_proj", hidden, inter, c.mlp_bias)?,
                    up_proj: lin(w, "mlp.up_proj", hidden, inter, c.mlp_bias)?,
                    down_proj: lin(w, "mlp.down_proj", inter, hidden, c.mlp_bias)?,
                    act: c.hidden_act,
                },
            });
        }
        let lm_head = if c.tie_word_embeddings {
            w.skip("lm_head.weight");
            None
        } else {
            Some(w.linear("lm_head", hidden, c.vocab_size, false, HfLinear::Linear)?)
        };
        Ok(Self {
            embed_tokens: w.embedding("model.embed_tokens", c.vocab_size, hidden)?,
            layers,
            norm: w.rms_norm("model.norm", hidden, c.rms_norm_eps)?,
            lm_head,
            rotary_emb: RotaryEmbedding::new(c.head_dim, c.rope_theta, c.rope_scaling),
            config: c.clone(),
            compute_dtype: None,
        })
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut out = vec![NamedTensor::from_tensor(
            "model.embed_tokens.weight",
            self.embed_tokens.weight.val(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &l.self_attn;
            out.extend(l.input_layernorm.named_tensors(&format!("{p}.input_layernorm")));
            for (name, lin) in [
                ("q_proj", &a.q_proj),
                ("k_proj", &a.k_proj),
                ("v_proj", &a.v_proj),
                ("o_proj", &a.o_proj),
            ] {
                out.extend(export_linear(&format!("{p}.self_attn.{name}"), lin, HfLinear::Linear));
            }
            out.extend(
                l.post_attention_layernorm.named_tensors(&format!("{p}.post_attention_layernorm")),
            );
            for (name, lin) in [
                ("gate_proj", &l.mlp.gate_proj),
                ("up_proj", &l.mlp.up_proj),
                ("down_proj", &l.mlp.down_proj),
            ] {
                out.extend(export_linear(&format!("{p}.mlp.{name}"), lin, HfLinear::Linear));
            }
        }
        out.extend(self.norm.named_tensors("model.norm"));
        if let Some(head) = &self.lm_head {
            out.extend(export_linear("lm_head", head, HfLinear::Linear));
        }
        out
    }
}

impl CausalModel for Llama {
    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn token_embedding(&self) -> &Embedding {
        &self.embed_tokens
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

    /// Hidden states: index 0 the embeddings, index `i` the output of layer `i`, the last one
    /// after `model.norm`.
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
        let window = self.config.sliding_window;
        let windowed = (0..self.layers.len()).any(|i| self.config.layer_window(i).is_some());
        let window_mask = match windowed {
            true => attention_mask_4d(attention_mask.as_ref(), b, s, past, window, &device),
            false => None,
        };
        let (cos, sin) = self.rotary_emb.cos_sin(positions); // [b, 1, s, hd] each

        let mut h = embed(&self.embed_tokens, input_ids, self.compute_dtype); // [b, s, hidden]
        let mut hidden = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if output_hidden_states {
                hidden.push(h.clone());
            }
            let mask = match self.config.layer_window(i) {
                Some(_) => window_mask.as_ref(),
                None => mask.as_ref(),
            };
            h = layer.forward(h, (&cos, &sin), mask, cache.as_deref_mut(), i);
        }
        let h = self.norm.forward(h);
        if output_hidden_states {
            hidden.push(h.clone());
        }
        (h, hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(values: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::<1, Int>::from_ints(values, device).reshape([1, values.len()])
    }

    fn logits(model: &Llama, ids: &[i64], positions: Option<&[i64]>, d: &Device) -> Vec<f32> {
        let positions = positions.map(|p| ints(p, d));
        let out = model.forward_with(ints(ids, d), None, positions, None, false);
        out.logits.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn windowed_config(layers: usize, window: Option<usize>) -> LlamaConfig {
        LlamaConfig {
            model_type: "mistral".into(),
            vocab_size: 24,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: layers,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            sliding_window: window,
            initializer_range: 0.5,
            ..LlamaConfig::default()
        }
    }

    #[test]
    fn window_two_equals_running_each_pair_alone() {
        // One layer with window 2: position i sees tokens i − 1 and i only, so its logits equal
        // those of the two-token input [t(i−1), t(i)] at positions [i − 1, i].
        let d = Device::flex();
        let ids = [3, 17, 5, 9, 22, 1, 12];
        let model = Llama::init(&windowed_config(1, Some(2)), &d).unwrap();
        let vocab = 24;
        let full = logits(&model, &ids, None, &d);
        for i in 1..ids.len() {
            let pos = [i as i64 - 1, i as i64];
            let pair = logits(&model, &ids[i - 1..=i], Some(&pos), &d);
            let diff = max_diff(&full[i * vocab..(i + 1) * vocab], &pair[vocab..]);
            assert!(diff < 1e-5, "position {i}: {diff}");
        }
        // And the window matters: full attention gives different logits from position 2 on.
        let mut unwindowed = Llama::init(&windowed_config(1, None), &d).unwrap();
        unwindowed.layers = model.layers.clone();
        unwindowed.embed_tokens = model.embed_tokens.clone();
        unwindowed.lm_head = model.lm_head.clone();
        let plain = logits(&unwindowed, &ids, None, &d);
        assert!(max_diff(&full[..2 * vocab], &plain[..2 * vocab]) < 1e-6);
        assert!(max_diff(&full[2 * vocab..], &plain[2 * vocab..]) > 1e-2);
    }

    #[test]
    fn windowed_cache_decoding_matches_the_full_forward() {
        // Two layers, window 3, Qwen2-style (only layer 1 windowed): the prompt then one token
        // at a time through the KV cache gives the logits of the whole sequence at once.
        let d = Device::flex();
        let config = LlamaConfig {
            model_type: "qwen2".into(),
            max_window_layers: 1,
            qkv_bias: true,
            ..windowed_config(2, Some(3))
        };
        let model = Llama::init(&config, &d).unwrap();
        let ids = [3, 17, 5, 9, 22, 1, 12, 7];
        let vocab = 24;
        let full = logits(&model, &ids, None, &d);
        let mut cache = KvCache::new(2);
        let prompt = model.forward_with(ints(&ids[..2], &d), None, None, Some(&mut cache), false);
        let prompt = prompt.logits.into_data().try_into_vec_as::<f32>().unwrap();
        assert!(max_diff(&full[..2 * vocab], &prompt) < 1e-5);
        for i in 2..ids.len() {
            let step =
                model.forward_with(ints(&ids[i..=i], &d), None, None, Some(&mut cache), false);
            let step = step.logits.into_data().try_into_vec_as::<f32>().unwrap();
            let diff = max_diff(&full[i * vocab..(i + 1) * vocab], &step);
            assert!(diff < 1e-5, "step {i}: {diff}");
        }
        // Layer 0 attends fully: windowing every layer changes the logits.
        let mut all = Llama::init(&LlamaConfig { max_window_layers: 0, ..config }, &d).unwrap();
        all.layers = model.layers.clone();
        all.embed_tokens = model.embed_tokens.clone();
        all.lm_head = model.lm_head.clone();
        let windowed_everywhere = logits(&all, &ids, None, &d);
        assert!(max_diff(&full[4 * vocab..], &windowed_everywhere[4 * vocab..]) > 1e-2);
    }
}
