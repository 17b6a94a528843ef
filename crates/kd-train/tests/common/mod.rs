//! Shared helpers of kd-train's method tests: scratch directories, seeded tiny LLaMA models, the
//! short run every method test trains and step records without their wall-clock fields.

#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kd_models::{CausalLm, LlamaConfig, ModelConfig};
use kd_train::params::param_values;
use kd_train::{MethodConfig, StepRecord, TrainConfig};

/// The tiny models' vocabulary.
pub const VOCAB: usize = 24;
/// Block length of the tiny data sets.
pub const SEQ: usize = 14;

/// A fresh directory `kd-train-<name>-<pid>` in the temp dir (removed first if a run left it).
pub fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kd-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// An unseeded `layers` × `hidden` LLaMA over [`VOCAB`] tokens.
pub fn llama(hidden: usize, layers: usize, device: &Device) -> CausalLm {
    let config = ModelConfig::Llama(LlamaConfig {
        vocab_size: VOCAB,
        hidden_size: hidden,
        intermediate_size: 2 * hidden,
        num_hidden_layers: layers,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        head_dim: hidden / 2,
        max_position_embeddings: 32,
        ..Default::default()
    });
    CausalLm::init(&config, device).unwrap()
}

/// [`llama`] from `seed`. Tests run in parallel threads and burn's device RNG is global:
/// seeding and initialising happen under one lock, and the lazily initialised parameters are
/// materialised before it is released, so that a seed always gives the same model.
pub fn seeded(seed: u64, hidden: usize, layers: usize, device: &Device) -> CausalLm {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(seed);
    let model = llama(hidden, layers, device);
    let _ = param_values(&model);
    model
}

/// 6 steps of batch 4 with a checkpoint every 3 (into `out`, when given), seed 5.
pub fn config(method: MethodConfig, out: Option<&Path>) -> TrainConfig {
    TrainConfig {
        steps: 6,
        batch_size: 4,
        lr: 5e-3,
        warmup_steps: 1,
        log_every: 0,
        eval_rouge_prompts: 0,
        checkpoint_every: 3,
        keep_checkpoints: 5,
        output_dir: out.map(Path::to_path_buf),
        seed: 5,
        method,
        ..Default::default()
    }
}

/// A step record as bits, without its throughputs (the only fields that are not reproducible).
pub fn det(r: &StepRecord) -> (u64, u64, u64, u64, Vec<(String, u64)>) {
    let extra = r
        .extra
        .iter()
        .filter(|(k, _)| !k.ends_with("per_s"))
        .map(|(k, v)| (k.clone(), v.to_bits()));
    (r.step, r.loss.to_bits(), r.grad_norm.to_bits(), r.tokens, extra.collect())
}
