//! Model configs parsed from (and written back to) Hugging Face `config.json`.
//!
//! [`ModelConfig`] dispatches on `model_type` to the architecture registered for it; each
//! architecture declares the keys it reads as a `serde`-derived struct in its own file
//! ([`Gpt2Config`] in [`gpt2`](crate::gpt2), [`LlamaConfig`] in [`llama`](crate::llama) with the
//! Mistral and Qwen2 additions beside it). Both the transformers-4 layout (`rope_theta` +
//! `rope_scaling`) and the transformers-5 layout (`rope_parameters`) are read. Keys this crate
//! does not use are ignored; keys it needs but that are absent (or `null`) take the default of
//! the reference `transformers` config class. A value of the wrong type is a
//! [`ModelError::Config`] naming the key (`rope_scaling.factor`) and what was expected.

use std::path::Path;

use serde_json::Value;

use crate::checks;
use crate::error::{ModelError, Result};
use crate::registry::MODEL_TYPES;

/// The most parameters a config may describe (2^40, about 1.1 trillion: more than any public
/// checkpoint). Larger sizes are a broken config, refused before anything is allocated.
pub const MAX_PARAMETERS: u64 = 1 << 40;

pub use crate::gpt2::Gpt2Config;
pub use crate::layers::Activation;
pub use crate::llama::{LlamaConfig, RopeScaling};
pub use crate::registry::ModelConfig;

impl ModelConfig {
    /// Parses a `config.json` file.
    ///
    /// # Errors
    /// [`ModelError::Io`], [`ModelError::InvalidFile`] for a file that is not a regular file or
    /// larger than 64 MiB, [`ModelError::Json`] (also for JSON nested deeper than 128 levels), or
    /// the errors of [`ModelConfig::from_json`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json(&checks::read_json(path)?)
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
        let model_type = match obj.get("model_type") {
            None | Some(Value::Null) => return Err(ModelError::config("model_type", "missing")),
            Some(Value::String(t)) => t.clone(),
            Some(v) => {
                return Err(ModelError::config(
                    "model_type",
                    format!("expected a string, got {v}"),
                ));
            }
        };
        let config = Self::parse(&model_type, obj)
            .unwrap_or(Err(ModelError::UnsupportedModelType { model_type }))?;
        match config.num_parameters() {
            Some(n) if n <= MAX_PARAMETERS => Ok(config),
            n => Err(ModelError::config(
                "<sizes>",
                format!(
                    "vocab_size, hidden_size, intermediate_size and num_hidden_layers give {} parameters, more than the {MAX_PARAMETERS} (2^40) this crate loads",
                    n.map_or("more than 2^64".into(), |n| n.to_string())
                ),
            )),
        }
    }

    /// The number of parameters of the model (weights and biases; a tied output head counted
    /// once), `None` when it does not fit in a `u64`.
    ///
    /// # Example
    ///
    /// ```
    /// use kd_models::{Gpt2Config, ModelConfig};
    ///
    /// let config = ModelConfig::Gpt2(Gpt2Config::default());
    /// assert_eq!(config.num_parameters(), Some(124_439_808)); // GPT-2 small
    /// ```
    pub fn num_parameters(&self) -> Option<u64> {
        // Checked sums of checked products: a config of absurd sizes gives `None`.
        fn sum(terms: &[Option<u64>]) -> Option<u64> {
            terms.iter().try_fold(0u64, |acc, t| acc.checked_add((*t)?))
        }
        let mul = |a: usize, b: usize| (a as u64).checked_mul(b as u64);
        let bias = |on: bool, n: usize| Some(if on { n as u64 } else { 0 });
        match self {
            Self::Gpt2(c) => {
                let (e, inner) = (c.n_embd, c.n_inner.unwrap_or(4usize.checked_mul(c.n_embd)?));
                let layer = sum(&[
                    mul(4, e),                                    // ln_1, ln_2
                    sum(&[mul(e, e.checked_mul(3)?), mul(3, e)]), // c_attn
                    sum(&[mul(e, e), Some(e as u64)]),            // attn.c_proj
                    sum(&[mul(e, inner), Some(inner as u64)]),    // c_fc
                    sum(&[mul(inner, e), Some(e as u64)]),        // mlp.c_proj
                ]);
                sum(&[
                    mul(c.vocab_size, e),
                    mul(c.n_positions, e),
                    layer?.checked_mul(c.n_layer as u64),
                    mul(2, e),
                    if c.tie_word_embeddings { Some(0) } else { mul(c.vocab_size, e) },
                ])
            }
            Self::Llama(c) => {
                let h = c.hidden_size;
                let q = c.num_attention_heads.checked_mul(c.head_dim)?;
                let kv = c.num_key_value_heads.checked_mul(c.head_dim)?;
                let i = c.intermediate_size;
                let layer = sum(&[
                    mul(2, h), // the two norms
                    mul(h, q),
                    mul(h, kv)?.checked_mul(2),
                    mul(q, h),
                    bias(c.qkv_bias, q.checked_add(kv.checked_mul(2)?)?),
                    bias(c.o_bias, h),
                    mul(h, i)?.checked_mul(3),
                    bias(c.mlp_bias, i.checked_mul(2)?.checked_add(h)?),
                ]);
                sum(&[
                    mul(c.vocab_size, h),
                    layer?.checked_mul(c.num_hidden_layers as u64),
                    Some(h as u64),
                    if c.tie_word_embeddings { Some(0) } else { mul(c.vocab_size, h) },
                ])
            }
        }
    }

    /// Every `model_type` this crate loads.
    pub fn supported_model_types() -> Vec<&'static str> {
        MODEL_TYPES.iter().flat_map(|types| types.iter().copied()).collect()
    }

    /// The config as a `config.json` value (what `save_pretrained` would write).
    pub fn to_json(&self) -> Value {
        self.arch().to_json()
    }

    /// `model_type` (`gpt2`, `llama`, `mistral` or `qwen2`).
    pub fn model_type(&self) -> &str {
        self.arch().model_type()
    }

    /// Vocabulary size (rows of the embedding and of the output head).
    pub fn vocab_size(&self) -> usize {
        self.arch().vocab_size()
    }

    /// Width of the residual stream.
    pub fn hidden_size(&self) -> usize {
        self.arch().hidden_size()
    }

    /// Number of transformer blocks.
    pub fn num_hidden_layers(&self) -> usize {
        self.arch().num_hidden_layers()
    }

    /// Longest sequence the model supports (GPT-2 `n_positions`, LLaMA `max_position_embeddings`).
    pub fn max_position_embeddings(&self) -> usize {
        self.arch().max_position_embeddings()
    }

    /// `bos_token_id`, when the config has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.arch().bos_token_id()
    }

    /// `eos_token_id` (a list: LLaMA-3 style configs have several).
    pub fn eos_token_ids(&self) -> &[u32] {
        self.arch().eos_token_ids()
    }

    /// `pad_token_id`, when the config has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.arch().pad_token_id()
    }

    /// Standard deviation of the normal initializer (`initializer_range`).
    pub fn initializer_range(&self) -> f64 {
        self.arch().initializer_range()
    }

    /// Whether the output head shares the token-embedding matrix.
    pub fn tie_word_embeddings(&self) -> bool {
        self.arch().tie_word_embeddings()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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

    #[test]
    fn absent_keys_take_the_transformers_defaults() {
        let c = ModelConfig::from_json(&json!({"model_type": "gpt2"})).unwrap();
        let d = Gpt2Config {
            bos_token_id: None,
            eos_token_id: vec![],
            pad_token_id: None,
            ..Default::default()
        };
        assert_eq!(c, ModelConfig::Gpt2(d));
        // `null` is "not set" too.
        let c = ModelConfig::from_json(&json!({"model_type": "gpt2", "n_embd": null})).unwrap();
        assert_eq!(c.hidden_size(), 768);
        let c = llama_of(json!({"model_type": "llama"}));
        let d = LlamaConfig {
            bos_token_id: None,
            eos_token_id: vec![],
            pad_token_id: None,
            ..Default::default()
        };
        assert_eq!(c, d);
    }

    #[test]
    fn gpt2_reads_the_transformers_alternative_names() {
        let v = json!({"model_type": "gpt2", "hidden_size": 32, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 64});
        let ModelConfig::Gpt2(c) = ModelConfig::from_json(&v).unwrap() else { panic!() };
        assert_eq!((c.n_embd, c.n_layer, c.n_head, c.n_positions), (32, 3, 4, 64));
    }

    #[test]
    fn typed_errors_name_the_key() {
        let config = |extra: Value| {
            let mut v = json!({"model_type": "llama", "hidden_size": 32,
                "num_attention_heads": 4});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            ModelConfig::from_json(&v).unwrap_err()
        };
        let is_config = |err: &ModelError, want: &str| matches!(err, ModelError::Config { key, .. } if key == want);
        let err = config(json!({"vocab_size": -3}));
        assert!(is_config(&err, "vocab_size"), "{err}");
        let err = config(json!({"rms_norm_eps": "small"}));
        assert!(is_config(&err, "rms_norm_eps"), "{err}");
        let err = config(json!({"eos_token_id": [1, "two"]}));
        assert!(is_config(&err, "eos_token_id"), "{err}");
        let err = config(json!({"rope_scaling": {"rope_type": "linear"}}));
        assert!(is_config(&err, "rope_scaling.factor"), "{err}");
        let err = config(json!({"rope_parameters": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0}}));
        assert!(is_config(&err, "rope_parameters.original_max_position_embeddings"), "{err}");
        let err = config(json!({"rope_scaling": "linear"}));
        assert!(is_config(&err, "rope_scaling"), "{err}");
        let err = config(json!({"num_attention_heads": 0}));
        assert!(is_config(&err, "num_attention_heads"), "{err}");
        let err = config(json!({"num_key_value_heads": 3}));
        assert!(is_config(&err, "num_key_value_heads"), "{err}");
        let err = config(json!({"hidden_act": "mish"}));
        assert!(
            matches!(&err, ModelError::UnsupportedConfig { key, value }
                if key == "hidden_act" && value == "mish"),
            "{err}"
        );
        let err = config(json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}));
        assert!(
            matches!(&err, ModelError::UnsupportedConfig { key, value }
                if key == "rope_scaling.type" && value == "dynamic"),
            "{err}"
        );
        let err = ModelConfig::from_json(&json!({"n_embd": 8})).unwrap_err();
        assert!(is_config(&err, "model_type"), "{err}");
        let err = ModelConfig::from_json(&json!({"model_type": 2})).unwrap_err();
        assert!(is_config(&err, "model_type"), "{err}");
        let err = ModelConfig::from_json(&json!([1])).unwrap_err();
        assert!(is_config(&err, "<root>"), "{err}");
    }

    #[test]
    fn rope_type_falls_back_to_the_legacy_type_key() {
        let c = llama_of(json!({"model_type": "llama", "hidden_size": 32,
            "num_attention_heads": 4, "rope_scaling": {"type": "linear", "factor": 2.0}}));
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let c = llama_of(json!({"model_type": "llama", "hidden_size": 32,
            "num_attention_heads": 4, "rope_theta": 7.0,
            "rope_scaling": {"rope_type": "default", "type": "linear"}}));
        assert_eq!((c.rope_theta, c.rope_scaling), (7.0, RopeScaling::Default));
    }

    #[test]
    fn every_registered_model_type_parses_and_is_named_in_the_error() {
        let types = ModelConfig::supported_model_types();
        assert_eq!(types, ["gpt2", "llama", "mistral", "qwen2"]);
        let message = ModelError::UnsupportedModelType { model_type: "x".into() }.to_string();
        for model_type in types {
            let config = ModelConfig::from_json(&json!({"model_type": model_type})).unwrap();
            assert_eq!(config.model_type(), model_type);
            assert!(message.contains(model_type), "{message} lacks {model_type}");
        }
    }
}
