//! # kd-train
//!
//! The teacher→student training loop of kd-rs, on any burn device.
//!
//! - [`LanguageModel`]: what a student or teacher must provide (logits and vocabulary size);
//!   implemented for [`kd_models::CausalLm`] and easy to implement for your own burn model.
//! - [`Trainer`]: the loop every method shares (optimizer, schedule, accumulation, clipping,
//!   evaluation, checkpoint/resume, metrics) around one [`Method`] chosen by
//!   [`MethodConfig`]: [`methods`] `sft`, `kd` (any dense [`kd_losses`] divergence by name, TAID's
//!   schedule, the hard-label mix, a top-k teacher, DKD's warm-up, Delta-KD), `seqkd`, `gkd`
//!   (on-policy), `minillm` (policy gradient with teacher-mixed sampling), `step_by_step`,
//!   `cross_tokenizer` and `feature`. The student trains on an autodiff device, the teacher runs
//!   without a graph on the same device or its own ([`Trainer::with_teacher_on`]: another GPU,
//!   or the CPU), in the same process.
//! - [`offline`]: a teacher's top-k distributions computed once ([`offline::precompute_teacher`],
//!   sharded) into a compact checksummed file that students train from with no teacher loaded
//!   ([`Trainer::with_teacher_logits`]); [`ensemble`]: several teachers, online or stored, at
//!   the logit or probability level, with fixed weights or routing.
//! - [`precision`]: `TrainConfig::dtype` trains in bf16 or f16 over `f32` master weights (f16 with
//!   dynamic loss scaling) and serves the teacher in half precision; `chunked_head_rows` applies
//!   the output heads chunk by chunk so the `[tokens, vocab]` logits are never formed.
//! - [`rollout`]: seeded batched sampling with the KV cache (temperature, top-k, top-p, EOS,
//!   teacher mixing) that returns tokens, sampling log-probabilities and masks; scoring of
//!   sampled sequences in one forward.
//! - Vocabularies that differ by padding are sliced to the shared ids on request
//!   ([`VocabAlignment`]), else [`TrainError::VocabMismatch`].
//! - [`AdamW`] with Hugging Face decay groups (no decay on biases, norms, embeddings), warmup +
//!   cosine [`LrSchedule`], gradient accumulation, global-norm clipping.
//! - [`data`]: plain text packed into blocks, instruction JSONL (Dolly, Alpaca, ready prompts)
//!   with the loss on response tokens only, deterministic seeded shuffling with a resumable
//!   cursor; [`template`]: prompt templates (MiniLLM's Dolly template, plain, the model's chat
//!   template, custom).
//! - [`metrics`]: held-out loss and perplexity, a JSONL log; [`rouge`]: ROUGE-L (and, with
//!   [`exact_match`], the exact match of the final number) of greedy answers to held-out
//!   instruction prompts at every evaluation (`kd` draws the curves as PNG charts).
//! - [`events`]: the run reports [`TrainEvent`]s (steps, evaluations, checkpoints, resumes) to an
//!   observer ([`Trainer::on_event`]), by default as plain `log` lines; rendering (progress bars,
//!   ETAs) is the caller's.
//! - [`scoring`]: knowledge distillation for automatic scoring (Latif et al. 2023): a
//!   classifier student (causal LM body, last-token pooling, linear head) trained on rubric
//!   scores with `CE + λ·T²·CE(teacher soft labels)`, evaluated by accuracy, macro-F1 and QWK.
//! - [`checkpoint`]: weights, optimizer moments, schedule, data position, sampling RNG and the
//!   method's state (TAID's schedule, MiniLLM's rollouts), written atomically; a resumed run
//!   reproduces the uninterrupted one exactly.
//! - [`baldistill`]: the parts of BalDistill's multi-stage balanced distillation for long-tailed
//!   domains (per-domain quotas, the student's instruction-following difficulty, the stage
//!   planner, the rationale filter, per-domain exact match); `kd baldistill` runs its loop.
//!
//! ## Quick start
//!
//! ```
//! use burn::tensor::Device;
//! use kd_models::{CausalLm, Gpt2Config, ModelConfig};
//! use kd_train::data::{TokenDataset, pack_tokens};
//! use kd_train::methods::kd::KdConfig;
//! use kd_train::{MethodConfig, TrainConfig, Trainer};
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
//!     method: MethodConfig::Kd(KdConfig::with_loss("reverse_kl")?),
//!     ..Default::default()
//! };
//! let mut trainer = Trainer::new(config, student, &device)?.with_teacher(teacher)?;
//! let report = trainer.fit(&data, Some(&data))?;
//! assert_eq!(report.history.len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod baldistill;
pub mod checkpoint;
pub mod data;
pub mod ensemble;
pub mod error;
pub mod events;
pub mod exact_match;
pub mod hot_pate;
pub mod methods;
pub mod metrics;
pub mod model;
pub mod offline;
pub mod optim;
pub mod params;
pub mod precision;
pub mod rollout;
pub mod rouge;
pub mod scaling_fit;
pub mod schedule;
pub mod scoring;
pub mod template;
pub mod text_views;
pub mod trainer;

pub use checkpoint::{Checkpoint, TrainState};
pub use error::{Result, TrainError};
pub use events::TrainEvent;
pub use kd_losses;
pub use methods::{Method, MethodConfig};
pub use metrics::{EvalRecord, MetricsLine, StepRecord, evaluate, evaluate_with};
pub use model::{HiddenAndHead, HiddenStates, LanguageModel, VocabAlignment, align_vocab};
pub use optim::{AdamW, AdamWConfig};
pub use precision::{LossScaleConfig, Precision};
pub use rouge::RougeEval;
pub use schedule::{DecayKind, LrSchedule};
pub use trainer::{NonFinitePolicy, TrainConfig, TrainReport, Trainer, latest_checkpoint};

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`, in mimalloc 2 and 3).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Stops mimalloc from returning freed memory to the OS (its `purge_delay` option set to −1),
/// unless the environment sets `MIMALLOC_PURGE_DELAY`. Call it first thing in a binary whose
/// global allocator is mimalloc (the `kd` binary and `cargo bench --bench step` do).
///
/// A distillation step frees and reallocates several buffers of hundreds of MB (logits, their
/// gradients); by default mimalloc gives freed memory back after a delay (10 ms in mimalloc 2,
/// 1 s in 3), and the next step
/// page-faults every page in again and the kernel zeroes it (17 % of a step's profile at vocab
/// 50257, `docs/performance.md`). Keeping it holds the resident set at the step's peak instead,
/// as PyTorch's allocators do.
#[cfg(feature = "mimalloc")]
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is allowed at any time; the option index is checked by the
        // test below against mimalloc's documented defaults.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod mimalloc_tests {
    #[test]
    fn purge_delay_is_the_option_we_set() {
        // SAFETY: reading and setting options is allowed at any time.
        unsafe {
            let before = libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY);
            // mimalloc's documented defaults: 10 ms (v2), 1000 ms (v3); -1 if already set.
            assert!(
                [10, 1000, -1].contains(&before),
                "purge_delay defaults to 10 ms (mimalloc 2) or 1000 ms (3), got {before}"
            );
            super::keep_freed_memory();
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY), -1);
            }
        }
    }
}
