//! Qwen2 (`Qwen2ForCausalLM`, `model_type: "qwen2"`): the LLaMA decoder of [`crate::llama`] with
//! biases on the q/k/v projections and, optionally, sliding-window attention on the upper
//! layers. This file holds the keys Qwen2 adds to LLaMA's `config.json`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{ModelError, Result};
use crate::hf_config::{from_object, int};

/// The `architectures` entry `save_pretrained` writes.
pub(crate) const ARCHITECTURE: &str = "Qwen2ForCausalLM";

/// `(qkv_bias, o_bias)`: Qwen2 always has q/k/v biases and never an `o_proj` bias (it has no
/// `attention_bias` key).
pub(crate) const BIASES: (bool, bool) = (true, false);

/// The attention of one layer in a transformers-5 `layer_types` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LayerType {
    FullAttention,
    SlidingAttention,
}

/// Qwen2's keys beyond LLaMA's (`Qwen2Config`).
#[derive(Debug, Deserialize)]
pub(crate) struct Qwen2Keys {
    /// Whether any layer is windowed.
    #[serde(default)]
    use_sliding_window: bool,
    /// The window (default 4096); `null`: none.
    #[serde(default = "window")]
    sliding_window: Option<usize>,
    /// With a window, the layers `i ≥ max_window_layers` use it.
    #[serde(default = "int::<28>")]
    max_window_layers: usize,
    /// transformers 5: which layers are windowed, instead of `max_window_layers`.
    #[serde(default)]
    layer_types: Option<Vec<LayerType>>,
}

fn window() -> Option<usize> {
    Some(int::<4096>())
}

impl Qwen2Keys {
    /// Reads the keys from a `config.json` object (`sliding_window: null` kept: no window).
    ///
    /// # Errors
    /// [`ModelError::Config`] for an ill-typed key, [`ModelError::UnsupportedConfig`] for an
    /// unknown layer type.
    pub(crate) fn parse(obj: &Map<String, Value>) -> Result<Self> {
        from_object(obj, &["sliding_window"])
    }

    /// `(window, first windowed layer)`: the window only with `use_sliding_window: true`, on
    /// layers `i ≥ max_window_layers`; a `layer_types` list, when present, decides which layers
    /// are windowed instead and must be full layers then windowed ones.
    ///
    /// # Errors
    /// [`ModelError::Config`] when `layer_types` has not `num_hidden_layers` entries,
    /// [`ModelError::UnsupportedConfig`] when a full-attention layer follows a windowed one.
    pub(crate) fn windows(&self, num_hidden_layers: usize) -> Result<(Option<usize>, usize)> {
        if !self.use_sliding_window {
            return Ok((None, self.max_window_layers));
        }
        let Some(types) = &self.layer_types else {
            return Ok((self.sliding_window, self.max_window_layers));
        };
        if types.len() != num_hidden_layers {
            return Err(ModelError::config(
                "layer_types",
                format!("{} entries for num_hidden_layers = {num_hidden_layers}", types.len()),
            ));
        }
        let first = types
            .iter()
            .position(|&t| t == LayerType::SlidingAttention)
            .unwrap_or(num_hidden_layers);
        if types[first..].contains(&LayerType::FullAttention) {
            return Err(ModelError::UnsupportedConfig {
                key: "layer_types".into(),
                value: "full-attention layers after sliding-window ones".into(),
            });
        }
        Ok((self.sliding_window, first))
    }
}

/// Writes Qwen2's keys into a `config.json` value, for `num_hidden_layers` layers windowed from
/// `max_window_layers` on when there is a window.
pub(crate) fn write_keys(
    value: &mut Value,
    sliding_window: Option<usize>,
    max_window_layers: usize,
    num_hidden_layers: usize,
) {
    value["use_sliding_window"] = json!(sliding_window.is_some());
    value["sliding_window"] = json!(sliding_window);
    value["max_window_layers"] = json!(max_window_layers);
    let layer_types: Vec<&str> = (0..num_hidden_layers)
        .map(|i| match sliding_window.is_some() && i >= max_window_layers {
            true => "sliding_attention",
            false => "full_attention",
        })
        .collect();
    value["layer_types"] = json!(layer_types);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(v: Value, layers: usize) -> Result<(Option<usize>, usize)> {
        Qwen2Keys::parse(v.as_object().unwrap())?.windows(layers)
    }

    #[test]
    fn window_only_with_use_sliding_window() {
        assert_eq!(windows(json!({"sliding_window": 8}), 4).unwrap(), (None, 28));
        let v = json!({"use_sliding_window": true, "max_window_layers": 2});
        assert_eq!(windows(v, 4).unwrap(), (Some(4096), 2));
    }

    #[test]
    fn layer_types_decide_the_windowed_layers() {
        let v = json!({"use_sliding_window": true, "sliding_window": 8, "layer_types":
            ["full_attention", "sliding_attention", "sliding_attention"]});
        assert_eq!(windows(v, 3).unwrap(), (Some(8), 1));
        let v = json!({"use_sliding_window": true, "layer_types": ["full_attention"]});
        let err = windows(v, 3).unwrap_err();
        assert!(matches!(&err, ModelError::Config { key, .. } if key == "layer_types"), "{err}");
        let v = json!({"use_sliding_window": true, "layer_types": ["banded_attention"]});
        let err = windows(v, 1).unwrap_err();
        assert!(
            matches!(&err, ModelError::UnsupportedConfig { key, value }
                if key.starts_with("layer_types") && value == "banded_attention"),
            "{err}"
        );
    }
}
