//! # kd-train
//!
//! The teacher→student training loop of kd-rs, on any burn device.
//!
//! - [`LanguageModel`]: what a student or teacher must provide (logits and vocabulary size);
//!   implemented for [`kd_models::CausalLm`] and easy to implement for your own burn model.
//! - [`Trainer`]: trains a student alone (next-token cross-entropy) or from a teacher with any
//!   dense [`kd_losses`] divergence chosen by name ([`kd_losses::LossConfig`]), optionally mixed
//!   with hard-label cross-entropy; TAID's `t` follows its adaptive schedule. The student trains
//!   on an autodiff device, the teacher runs on the plain device without a graph, in the same
//!   process. Vocabularies that differ by padding are sliced to the shared ids on request
//!   ([`VocabAlignment`]), else [`TrainError::VocabMismatch`].
//! - [`AdamW`] with Hugging Face decay groups (no decay on biases, norms, embeddings), warmup +
//!   cosine [`LrSchedule`], gradient accumulation, global-norm clipping.
//! - [`data`]: plain text packed into blocks, instruction JSONL with the loss on response tokens
//!   only, deterministic seeded shuffling with a resumable cursor.
//! - [`metrics`]: held-out loss and perplexity, a JSONL log; [`rouge`]: ROUGE-L of greedy
//!   answers to held-out instruction prompts at every evaluation; [`plot`]: curves as PNG.
//! - [`checkpoint`]: weights, optimizer moments, schedule, data position and TAID state, written
//!   atomically; a resumed run reproduces the uninterrupted one exactly.
//!
//! ## Quick start
//!
//! ```
//! use burn::tensor::Device;
//! use kd_models::{CausalLm, Gpt2Config, ModelConfig};
//! use kd_train::data::{TokenDataset, pack_tokens};
//! use kd_train::{TrainConfig, Trainer};
//!
//! let device = Device::flex().autodiff();
//! let config = |n_layer| ModelConfig::Gpt2(Gpt2Config {
//!     vocab_size: 16, n_positions: 8, n_embd: 8, n_layer, n_head: 2, ..Default::default()
//! });
//! let teacher = CausalLm::init(&config(2), &device.clone().inner())?;
//! let student = CausalLm::init(&config(1), &device)?;
//! let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % 16) as u32).collect();
//! let data = TokenDataset::new("train", pack_tokens(&tokens, 8))?;
//!
//! let config = TrainConfig {
//!     steps: 3,
//!     batch_size: 2,
//!     divergence: Some(kd_losses::LossConfig::by_name("reverse_kl")?),
//!     ..Default::default()
//! };
//! let mut trainer = Trainer::new(config, student, &device)?.with_teacher(teacher)?;
//! let report = trainer.fit(&data, Some(&data))?;
//! assert_eq!(report.history.len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod plot;
pub mod rouge;
pub mod schedule;
pub mod trainer;

pub use checkpoint::{Checkpoint, TrainState};
pub use error::{Result, TrainError};
pub use kd_losses;
pub use metrics::{EvalRecord, MetricsLine, StepRecord, evaluate};
pub use model::{LanguageModel, VocabAlignment, align_vocab};
pub use optim::{AdamW, AdamWConfig};
pub use rouge::RougeEval;
pub use schedule::{DecayKind, LrSchedule};
pub use trainer::{TrainConfig, TrainReport, Trainer, latest_checkpoint};
