//! Model configs parsed from (and written back to) Hugging Face `config.json`.
//!
//! Both the transformers-4 layout (`rope_theta` + `rope_scaling`) and the transformers-5 layout
//! (`rope_parameters`) are read. Keys this crate does not use are ignored; keys it needs but that
//! are absent take the default of the reference `transformers` config class.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{ModelError, Result};

/// The config of any supported architecture, as read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `model_type: "gpt2"`.
    Gpt2(Gpt2Config),
    /// `model_type` one of `"llama"`, `"mistral"`, `"qwen2"`.
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// Parses a `config.json` file.
    ///
    /// # Errors
    /// [`ModelError::Io`], [`ModelError::Json`], or the errors of [`ModelConfig::from_json`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
        Self::from_json(&value)
    }

    /// Parses a config from its JSON value, dispatching on `model_type`.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedModelType`] for an unknown `model_type`, [`ModelError::Config`]
    /// for a missing or ill-typed key, [`ModelError::UnsupportedConfig`] for a feature that is
    /// not implemented (an activation, a RoPE type).
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| ModelError::config("<root>", "config.json must be a JSON object"))?;
        let model_type = get_str(obj, "model_type")?
            .ok_or_else(|| ModelError::config("model_type", "missing"))?;
        match model_type.as_str() {
            "gpt2" => Ok(Self::Gpt2(Gpt2Config::from_json_map(obj)?)),
            "llama" | "mistral" | "qwen2" => Ok(Self::Llama(LlamaConfig::from_json_map(obj)?)),
            _ => Err(ModelError::UnsupportedModelType { model_type }),
        }
    }

    /// The config as a `config.json` value (what `save_pretrained` would write).
    pub fn to_json(&self) -> Value {
        match self {
            Self::Gpt2(c) => c.to_json(),
            Self::Llama(c) => c.to_json(),
        }
    }

    /// `model_type` (`gpt2`, `llama`, `mistral` or `qwen2`).
    pub fn model_type(&self) -> &str {
        match self {
            Self::Gpt2(_) => "gpt2",
            Self::Llama(c) => c.model_type.as_str(),
        }
    }

    /// Vocabulary size (rows of the embedding and of the output head).
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::Llama(c) => c.vocab_size,
        }
    }

    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_embd,
            Self::Llama(c) => c.hidden_size,
        }
    }

    /// Number of transformer blocks.
    pub fn num_hidden_layers(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_layer,
            Self::Llama(c) => c.num_hidden_layers,
        }
    }

    /// Longest sequence the model supports (GPT-2 `n_positions`, LLaMA `max_position_embeddings`).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_positions,
            Self::Llama(c) => c.max_position_embeddings,
        }
    }

    /// `bos_token_id`, when the config has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            Self::Gpt2(c) => c.bos_token_id,
            Self::Llama(c) => c.bos_token_id,
        }
    }

    /// `eos_token_id` (a list: LLaMA-3 style configs have several).
    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            Self::Gpt2(c) => &c.eos_token_id,
            Self::Llama(c) => &c.eos_token_id,
        }
    }

    /// `pad_token_id`, when the config has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            Self::Gpt2(c) => c.pad_token_id,
            Self::Llama(c) => c.pad_token_id,
        }
    }

    /// Standard deviation of the normal initializer (`initializer_range`).
    pub fn initializer_range(&self) -> f64 {
        match self {
            Self::Gpt2(c) => c.initializer_range,
            Self::Llama(c) => c.initializer_range,
        }
    }

    /// Whether the output head shares the token-embedding matrix.
    pub fn tie_word_embeddings(&self) -> bool {
        match self {
            Self::Gpt2(c) => c.tie_word_embeddings,
            Self::Llama(c) => c.tie_word_embeddings,
        }
    }
}

/// Feed-forward activation (`activation_function` / `hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: `0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))`.
    GeluTanh,
    /// `gelu`: the exact erf form `0.5 x (1 + erf(x/√2))`.
    Gelu,
    /// `relu`.
    Relu,
    /// `silu` / `swish`: `x · sigmoid(x)`.
    Silu,
}

impl Activation {
    /// Parses a `transformers` activation name.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedConfig`] naming `key` and the value.
    pub fn from_hf_name(key: &str, name: &str) -> Result<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            _ => Err(ModelError::UnsupportedConfig { key: key.into(), value: name.into() }),
        }
    }

    /// The canonical `transformers` name.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::GeluTanh => "gelu_new",
            Self::Gelu => "gelu",
            Self::Relu => "relu",
            Self::Silu => "silu",
        }
    }
}

/// GPT-2 hyper-parameters (`GPT2Config` in `transformers`, same key names).
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Number of learned positions (maximum sequence length).
    pub n_positions: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Number of attention heads.
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
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids.
    pub eos_token_id: Vec<u32>,
    /// Padding id.
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
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(ModelError::config("layer_norm_epsilon", "must be > 0"));
        }
        Ok(())
    }

    fn from_json_map(obj: &Map<String, Value>) -> Result<Self> {
        let d = Self::default();
        let activation_function = match get_str(obj, "activation_function")? {
            Some(name) => Activation::from_hf_name("activation_function", &name)?,
            None => d.activation_function,
        };
        let config = Self {
            vocab_size: get_usize(obj, "vocab_size")?.unwrap_or(d.vocab_size),
            n_positions: get_usize(obj, "n_positions")?.unwrap_or(d.n_positions),
            n_embd: get_usize(obj, "n_embd")?.unwrap_or(d.n_embd),
            n_layer: get_usize(obj, "n_layer")?.unwrap_or(d.n_layer),
            n_head: get_usize(obj, "n_head")?.unwrap_or(d.n_head),
            n_inner: get_usize(obj, "n_inner")?,
            activation_function,
            layer_norm_epsilon: get_f64(obj, "layer_norm_epsilon")?.unwrap_or(d.layer_norm_epsilon),
            scale_attn_weights: get_bool(obj, "scale_attn_weights")?.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: get_bool(obj, "scale_attn_by_inverse_layer_idx")?
                .unwrap_or(false),
            tie_word_embeddings: get_bool(obj, "tie_word_embeddings")?.unwrap_or(true),
            initializer_range: get_f64(obj, "initializer_range")?.unwrap_or(0.02),
            bos_token_id: get_token(obj, "bos_token_id")?,
            eos_token_id: get_tokens(obj, "eos_token_id")?,
            pad_token_id: get_token(obj, "pad_token_id")?,
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as a `config.json` value.
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

/// RoPE frequency scaling (`rope_scaling` in transformers 4, `rope_parameters` in 5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: "default"`: plain `θ^(-2i/d)` frequencies.
    Default,
    /// `rope_type: "linear"`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// Interpolation factor.
        factor: f64,
    },
    /// `rope_type: "llama3"`: low frequencies divided by `factor`, high frequencies kept,
    /// a smooth blend in between (LLaMA 3.1+).
    Llama3 {
        /// Scale of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length of the unscaled pre-training.
        original_max_position_embeddings: usize,
    },
}

/// LLaMA-family hyper-parameters (`LlamaConfig`; Mistral and Qwen2 configs map onto it).
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
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err(ModelError::config("rms_norm_eps", "must be > 0"));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(ModelError::config("rope_theta", "must be > 0"));
        }
        if self.sliding_window == Some(0) {
            return Err(ModelError::config("sliding_window", "must be > 0 (or null)"));
        }
        Ok(())
    }

    /// The attention window of layer `layer` (`None`: full causal attention).
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| layer >= self.max_window_layers)
    }

    fn from_json_map(obj: &Map<String, Value>) -> Result<Self> {
        let model_type = get_str(obj, "model_type")?.unwrap_or_else(|| "llama".into());
        let is_qwen2 = model_type == "qwen2";
        let d = Self::default();
        let hidden_size = get_usize(obj, "hidden_size")?.unwrap_or(d.hidden_size);
        let num_attention_heads =
            get_usize(obj, "num_attention_heads")?.unwrap_or(d.num_attention_heads);
        positive("num_attention_heads", num_attention_heads)?;
        let head_dim = match get_usize(obj, "head_dim")? {
            Some(h) => h,
            None => hidden_size / num_attention_heads,
        };
        let hidden_act = match get_str(obj, "hidden_act")? {
            Some(name) => Activation::from_hf_name("hidden_act", &name)?,
            None => Activation::Silu,
        };
        let attention_bias = get_bool(obj, "attention_bias")?.unwrap_or(false);
        let (rope_theta, rope_scaling) = parse_rope(obj)?;
        let num_hidden_layers = get_usize(obj, "num_hidden_layers")?.unwrap_or(d.num_hidden_layers);
        let (sliding_window, max_window_layers) =
            parse_sliding_window(obj, &model_type, num_hidden_layers)?;
        let config = Self {
            vocab_size: get_usize(obj, "vocab_size")?.unwrap_or(d.vocab_size),
            hidden_size,
            intermediate_size: get_usize(obj, "intermediate_size")?.unwrap_or(d.intermediate_size),
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: get_usize(obj, "num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            max_position_embeddings: get_usize(obj, "max_position_embeddings")?
                .unwrap_or(d.max_position_embeddings),
            rms_norm_eps: get_f64(obj, "rms_norm_eps")?.unwrap_or(d.rms_norm_eps),
            rope_theta,
            rope_scaling,
            sliding_window,
            max_window_layers,
            tie_word_embeddings: get_bool(obj, "tie_word_embeddings")?.unwrap_or(false),
            hidden_act,
            qkv_bias: is_qwen2 || attention_bias,
            o_bias: !is_qwen2 && attention_bias,
            mlp_bias: get_bool(obj, "mlp_bias")?.unwrap_or(false),
            initializer_range: get_f64(obj, "initializer_range")?.unwrap_or(0.02),
            bos_token_id: get_token(obj, "bos_token_id")?,
            eos_token_id: get_tokens(obj, "eos_token_id")?,
            pad_token_id: get_token(obj, "pad_token_id")?,
            model_type,
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
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
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
            "mistral" => value["sliding_window"] = json!(self.sliding_window),
            "qwen2" => {
                value["use_sliding_window"] = json!(self.sliding_window.is_some());
                value["sliding_window"] = json!(self.sliding_window);
                value["max_window_layers"] = json!(self.max_window_layers);
                let layer_types: Vec<&str> = (0..self.num_hidden_layers)
                    .map(|i| match self.layer_window(i) {
                        Some(_) => "sliding_attention",
                        None => "full_attention",
                    })
                    .collect();
                value["layer_types"] = json!(layer_types);
            }
            _ => {}
        }
        value
    }
}

/// Reads the sliding window as `transformers` configs define it; returns the window and the
/// first windowed layer.
///
/// - `llama`: no window (`LlamaConfig` has none).
/// - `mistral`: `sliding_window` (default 4096; `null` = none) on every layer.
/// - `qwen2`: `sliding_window` (default 4096) only with `use_sliding_window: true`, on layers
///   `i ≥ max_window_layers` (default 28). A transformers-5 `layer_types` list, when present,
///   decides which layers are windowed instead; it must be full layers then windowed ones.
fn parse_sliding_window(
    obj: &Map<String, Value>,
    model_type: &str,
    num_hidden_layers: usize,
) -> Result<(Option<usize>, usize)> {
    let window = || -> Result<Option<usize>> {
        match obj.get("sliding_window") {
            Some(Value::Null) => Ok(None),
            None => Ok(Some(4096)),
            Some(_) => get_usize(obj, "sliding_window"),
        }
    };
    match model_type {
        "mistral" => Ok((window()?, 0)),
        "qwen2" => {
            if get_bool(obj, "use_sliding_window")? != Some(true) {
                let max = get_usize(obj, "max_window_layers")?.unwrap_or(28);
                return Ok((None, max));
            }
            let window = window()?;
            let Some(types) = obj.get("layer_types").filter(|v| !v.is_null()) else {
                return Ok((window, get_usize(obj, "max_window_layers")?.unwrap_or(28)));
            };
            let bad = |reason: String| ModelError::config("layer_types", reason);
            let types = types.as_array().ok_or_else(|| bad("expected a list".into()))?;
            let sliding = types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(ModelError::UnsupportedConfig {
                        key: "layer_types".into(),
                        value: t.to_string(),
                    }),
                })
                .collect::<Result<Vec<bool>>>()?;
            if sliding.len() != num_hidden_layers {
                return Err(bad(format!(
                    "{} entries for num_hidden_layers = {num_hidden_layers}",
                    sliding.len()
                )));
            }
            let first = sliding.iter().position(|&s| s).unwrap_or(num_hidden_layers);
            if sliding[first..].iter().any(|&s| !s) {
                return Err(ModelError::UnsupportedConfig {
                    key: "layer_types".into(),
                    value: "full-attention layers after sliding-window ones".into(),
                });
            }
            Ok((window, first))
        }
        _ => Ok((None, 0)),
    }
}

/// Reads `rope_theta` and the scaling from either config layout.
fn parse_rope(obj: &Map<String, Value>) -> Result<(f64, RopeScaling)> {
    // transformers 5: everything in `rope_parameters`; transformers 4: `rope_theta` at the top
    // level and an optional `rope_scaling` dict.
    let params = match obj.get("rope_parameters") {
        Some(Value::Object(p)) => Some(("rope_parameters", p)),
        Some(Value::Null) | None => match obj.get("rope_scaling") {
            Some(Value::Object(p)) => Some(("rope_scaling", p)),
            Some(Value::Null) | None => None,
            Some(_) => return Err(ModelError::config("rope_scaling", "expected an object")),
        },
        Some(_) => return Err(ModelError::config("rope_parameters", "expected an object")),
    };
    let top_theta = get_f64(obj, "rope_theta")?;
    let Some((name, p)) = params else {
        return Ok((top_theta.unwrap_or(10000.0), RopeScaling::Default));
    };
    let theta = get_f64(p, "rope_theta")?.or(top_theta).unwrap_or(10000.0);
    let rope_type = match get_str(p, "rope_type")? {
        Some(t) => t,
        None => get_str(p, "type")?.unwrap_or_else(|| "default".into()),
    };
    let need = |key: &str| -> Result<f64> {
        get_f64(p, key)?.ok_or_else(|| {
            ModelError::config(&format!("{name}.{key}"), "missing for this rope_type")
        })
    };
    let scaling = match rope_type.as_str() {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: get_usize(p, "original_max_position_embeddings")?
                .ok_or_else(|| {
                    ModelError::config(
                        &format!("{name}.original_max_position_embeddings"),
                        "missing for rope_type llama3",
                    )
                })?,
        },
        other => {
            return Err(ModelError::UnsupportedConfig {
                key: format!("{name}.rope_type"),
                value: other.to_string(),
            });
        }
    };
    Ok((theta, scaling))
}

fn positive(key: &str, v: usize) -> Result<()> {
    if v == 0 { Err(ModelError::config(key, "must be > 0")) } else { Ok(()) }
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn get_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    present(obj, key)
        .map(|v| {
            v.as_u64().and_then(|u| usize::try_from(u).ok()).ok_or_else(|| {
                ModelError::config(key, format!("expected an unsigned integer, got {v}"))
            })
        })
        .transpose()
}

fn get_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    present(obj, key)
        .map(|v| {
            v.as_f64().ok_or_else(|| ModelError::config(key, format!("expected a number, got {v}")))
        })
        .transpose()
}

fn get_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    present(obj, key)
        .map(|v| {
            v.as_bool().ok_or_else(|| ModelError::config(key, format!("expected a bool, got {v}")))
        })
        .transpose()
}

fn get_str(obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    present(obj, key)
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| ModelError::config(key, format!("expected a string, got {v}")))
        })
        .transpose()
}

fn as_token(key: &str, v: &Value) -> Result<u32> {
    v.as_u64()
        .and_then(|u| u32::try_from(u).ok())
        .ok_or_else(|| ModelError::config(key, format!("expected a token id, got {v}")))
}

fn get_token(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>> {
    present(obj, key).map(|v| as_token(key, v)).transpose()
}

/// A token id or a list of them (LLaMA 3 has several `eos_token_id`s).
fn get_tokens(obj: &Map<String, Value>, key: &str) -> Result<Vec<u32>> {
    match present(obj, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| as_token(key, v)).collect(),
        Some(v) => Ok(vec![as_token(key, v)?]),
    }
}

fn tokens_json(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_transformers4_and_5_layouts_agree() {
        let v4 = json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100,
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let v5 = json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}});
        let a = ModelConfig::from_json(&v4).unwrap();
        let b = ModelConfig::from_json(&v5).unwrap();
        assert_eq!(a, b);
        let ModelConfig::Llama(c) = a else { panic!("not llama") };
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.num_key_value_heads, 4);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor: 8.0, .. }));
        // Round trip through to_json.
        assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), ModelConfig::Llama(c));
    }

    #[test]
    fn qwen2_has_qkv_bias_and_list_eos() {
        let v = json!({"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4,
            "num_key_value_heads": 1, "eos_token_id": [5, 7], "rope_theta": 1e6});
        let ModelConfig::Llama(c) = ModelConfig::from_json(&v).unwrap() else { panic!() };
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.eos_token_id, vec![5, 7]);
        assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), ModelConfig::Llama(c));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = ModelConfig::from_json(&json!({"model_type": "bert"})).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedModelType { ref model_type } if model_type == "bert")
        );
        let err = ModelConfig::from_json(&json!({"model_type": "llama",
            "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
        .unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
        let err =
            ModelConfig::from_json(&json!({"model_type": "gpt2", "n_embd": "x"})).unwrap_err();
        assert!(err.to_string().contains("n_embd"), "{err}");
        let err = ModelConfig::from_json(&json!({"model_type": "gpt2", "n_embd": 10, "n_head": 3}))
            .unwrap_err();
        assert!(err.to_string().contains("n_head"), "{err}");
    }

    fn llama_of(v: Value) -> LlamaConfig {
        match ModelConfig::from_json(&v).unwrap() {
            ModelConfig::Llama(c) => c,
            ModelConfig::Gpt2(_) => panic!("not llama"),
        }
    }

    #[test]
    fn sliding_window_semantics_per_model_type() {
        let base = json!({"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 4,
            "intermediate_size": 64, "vocab_size": 50});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            llama_of(v)
        };
        // LLaMA has no window even if the key is present.
        let c = with(json!({"model_type": "llama", "sliding_window": 8}));
        assert_eq!(c.sliding_window, None);
        // Mistral: every layer, default 4096, null disables it.
        let c = with(json!({"model_type": "mistral", "sliding_window": 8}));
        assert_eq!((0..4).map(|i| c.layer_window(i)).collect::<Vec<_>>(), [Some(8); 4]);
        assert_eq!(with(json!({"model_type": "mistral"})).sliding_window, Some(4096));
        let c = with(json!({"model_type": "mistral", "sliding_window": null}));
        assert_eq!(c.layer_window(0), None);
        // Qwen2: only with use_sliding_window, only on layers >= max_window_layers.
        let c = with(json!({"model_type": "qwen2", "sliding_window": 8, "max_window_layers": 2}));
        assert_eq!(c.sliding_window, None);
        let c = with(json!({"model_type": "qwen2", "use_sliding_window": true,
            "sliding_window": 8, "max_window_layers": 2}));
        let windows: Vec<_> = (0..4).map(|i| c.layer_window(i)).collect();
        assert_eq!(windows, [None, None, Some(8), Some(8)]);
        // transformers-5 `layer_types` decide the layers when present.
        let c = with(json!({"model_type": "qwen2", "use_sliding_window": true,
            "sliding_window": 8, "max_window_layers": 2, "layer_types": ["full_attention",
            "sliding_attention", "sliding_attention", "sliding_attention"]}));
        assert_eq!(c.max_window_layers, 1);
        let err = ModelConfig::from_json(&{
            let mut v = base.clone();
            v["model_type"] = json!("qwen2");
            v["use_sliding_window"] = json!(true);
            v["layer_types"] =
                json!(["sliding_attention", "full_attention", "full_attention", "full_attention"]);
            v
        })
        .unwrap_err();
        assert!(err.to_string().contains("layer_types"), "{err}");
        // Round trips keep the window and the windowed layers.
        for c in [c, with(json!({"model_type": "mistral", "sliding_window": 8}))] {
            assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), ModelConfig::Llama(c));
        }
        let err = ModelConfig::from_json(&{
            let mut v = base.clone();
            v["model_type"] = json!("mistral");
            v["sliding_window"] = json!(0);
            v
        })
        .unwrap_err();
        assert!(err.to_string().contains("sliding_window"), "{err}");
    }

    #[test]
    fn gpt2_round_trip() {
        let c =
            Gpt2Config { n_embd: 32, n_head: 4, n_layer: 2, vocab_size: 50, ..Default::default() };
        assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), ModelConfig::Gpt2(c));
    }
}
