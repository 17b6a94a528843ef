//! # kd-models
//!
//! GPT-2 and LLaMA-family (LLaMA 1/2/3, Mistral, Qwen2) causal language models for burn that load
//! Hugging Face checkpoints and match `transformers` to within `1e-4` on logits and hidden states.
//!
//! | piece | what |
//! | --- | --- |
//! | [`CausalLm`] | any supported model behind one `forward` (a burn [`Module`](burn::module::Module), trainable) |
//! | [`gpt2`] | GPT-2: its `config.json` keys and model; learned positions, `gelu_new`, `Conv1D` weights, tied head |
//! | [`llama`] | LLaMA/Mistral/Qwen2: their `config.json` keys and the shared decoder; RMSNorm, SwiGLU, rotate-half RoPE (+ llama3/linear scaling), GQA/MQA, tied or untied head, Qwen2 q/k/v biases, sliding-window attention |
//! | [`arch`] | what every architecture implements ([`CausalModel`], [`ArchConfig`]); [`CausalLm`] and [`ModelConfig`] only delegate |
//! | [`config`] | `config.json` → the architecture of its `model_type` (`serde`-derived per architecture; transformers 4 `rope_theta`/`rope_scaling` and 5 `rope_parameters`) |
//! | [`load`] | a model directory: `config.json` → architecture → weights (f32/f16/bf16, sharded or not, `save_pretrained` or hub layout); saving back |
//! | [`weights`] | safetensors reading and writing: memory map, shards and index, stored-dtype conversion |
//! | [`kv_cache`], [`sampling`] | incremental decoding; greedy / temperature / top-k / top-p generation, batched, seeded, streaming |
//! | [`tokenizer`] | `tokenizer.json` via the `tokenizers` crate, special tokens and BOS policy |
//! | [`ModelError`] | the one error type |
//!
//! Library code takes a [`Device`](burn::tensor::Device) and never names a backend; pick one in
//! the application (`Device::flex()` with the `flex` feature, `.autodiff()` for training).
//!
//! ## Semantics
//!
//! - `forward(input_ids [batch, seq], attention_mask, position_ids) -> logits [batch, seq, vocab]`.
//! - `attention_mask` is HF's: `1` = token, `0` = padding. Without explicit `position_ids`,
//!   positions are `max(cumsum(mask) − 1, 0)`, so a left-padded row gets the logits it has
//!   unpadded. Logits at padded positions are meaningless.
//! - `forward_with(.., output_hidden_states = true)` returns `num_hidden_layers + 1` hidden
//!   states like `transformers`: index 0 the embedding output, the last one after the final norm.
//!
//! # Example: load a checkpoint and generate
//!
//! ```no_run
//! use burn::tensor::Device;
//! use kd_models::{CausalLm, GenerationConfig, Tokenizer, generate};
//!
//! # fn main() -> kd_models::Result<()> {
//! let device = Device::flex();
//! let dir = "path/to/hf-model"; // config.json, model.safetensors, tokenizer.json
//! let model = CausalLm::from_pretrained(dir, &device)?;
//! let tokenizer = Tokenizer::from_dir(dir)?;
//! let prompt = tokenizer.encode_prompt("Once upon a time")?;
//! let config = GenerationConfig {
//!     max_new_tokens: 20,
//!     eos_token_ids: model.config().eos_token_ids().to_vec(),
//!     ..Default::default()
//! };
//! let out = generate(&model, &[prompt], &config, &device, |_, _| {})?;
//! println!("{}", tokenizer.decode(&out.sequences[0], true)?);
//! # Ok(())
//! # }
//! ```
//!
//! # Example: a fresh model for training, saved as a Hugging Face directory
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use kd_models::{CausalLm, LlamaConfig, ModelConfig};
//!
//! let device = Device::flex();
//! let config = ModelConfig::Llama(LlamaConfig {
//!     vocab_size: 64,
//!     hidden_size: 32,
//!     intermediate_size: 64,
//!     num_hidden_layers: 2,
//!     num_attention_heads: 4,
//!     num_key_value_heads: 2,
//!     head_dim: 8,
//!     ..Default::default()
//! });
//! let model = CausalLm::init(&config, &device).unwrap(); // N(0, initializer_range) weights
//! let ids = Tensor::<2, Int>::from_ints([[1, 5, 7, 9]], &device);
//! let logits = model.forward(ids, None, None);
//! assert_eq!(logits.dims(), [1, 4, 64]);
//!
//! let dir = std::env::temp_dir().join("kd-models-doc-example");
//! model.save_pretrained(&dir).unwrap(); // config.json + model.safetensors
//! let reloaded = CausalLm::from_pretrained(&dir, &device).unwrap();
//! assert_eq!(reloaded.config(), config);
//! ```
#![warn(missing_docs)]

pub mod arch;
mod checks;
pub mod config;
pub mod error;
#[cfg(feature = "flex")]
mod flex_view;
mod fused_act;
mod fused_norm;
pub mod gpt2;
mod hf_config;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod load;
mod mistral;
pub mod model;
mod qwen2;
mod registry;
pub mod rope;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

pub use arch::{ArchConfig, CausalModel};
pub use config::{Activation, Gpt2Config, LlamaConfig, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use gpt2::Gpt2;
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use load::{
    LoadOptions, load_pretrained, load_pretrained_with, save_pretrained, save_pretrained_as,
};
pub use model::{CausalLm, ModelOutput};
pub use sampling::{GenerationConfig, GenerationOutput, Sampling, generate};
pub use tokenizer::Tokenizer;
