//! Mistral (`MistralForCausalLM`, `model_type: "mistral"`): the LLaMA decoder of
//! [`crate::llama`] with sliding-window attention on every layer. This file holds the keys Mistral
//! adds to LLaMA's `config.json`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::Result;
use crate::hf_config::{from_object, int};

/// The `architectures` entry `save_pretrained` writes.
pub(crate) const ARCHITECTURE: &str = "MistralForCausalLM";

/// Mistral's keys beyond LLaMA's (`MistralConfig`).
#[derive(Debug, Deserialize)]
pub(crate) struct MistralKeys {
    /// Attention window of every layer (default 4096); `null`: full causal attention.
    #[serde(default = "window")]
    sliding_window: Option<usize>,
}

fn window() -> Option<usize> {
    Some(int::<4096>())
}

impl MistralKeys {
    /// Reads the keys from a `config.json` object (`sliding_window: null` kept: no window).
    ///
    /// # Errors
    /// [`crate::ModelError::Config`] for an ill-typed key.
    pub(crate) fn parse(obj: &Map<String, Value>) -> Result<Self> {
        from_object(obj, &["sliding_window"])
    }

    /// `(window, first windowed layer)`: every layer is windowed.
    pub(crate) fn windows(&self) -> (Option<usize>, usize) {
        (self.sliding_window, 0)
    }
}

/// Writes Mistral's keys into a `config.json` value.
pub(crate) fn write_keys(value: &mut Value, sliding_window: Option<usize>) {
    value["sliding_window"] = json!(sliding_window);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(v: Value) -> (Option<usize>, usize) {
        MistralKeys::parse(v.as_object().unwrap()).unwrap().windows()
    }

    #[test]
    fn window_defaults_to_4096_and_null_disables_it() {
        assert_eq!(windows(json!({})), (Some(4096), 0));
        assert_eq!(windows(json!({"sliding_window": 8})), (Some(8), 0));
        assert_eq!(windows(json!({"sliding_window": null})), (None, 0));
    }
}
