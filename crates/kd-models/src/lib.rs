//! # kd-models
//!
//! GPT-2 and LLaMA-family (LLaMA, Mistral, Qwen2) ports for burn that load Hugging Face
//! checkpoints.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod gpt2;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod load;
pub mod model;
pub mod sampling;
pub mod tokenizer;

pub use config::{Activation, Gpt2Config, LlamaConfig, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use gpt2::Gpt2;
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use load::{load_pretrained, save_pretrained};
pub use model::{CausalLm, ModelOutput};
pub use sampling::{GenerationConfig, GenerationOutput, Sampling, generate};
pub use tokenizer::Tokenizer;
