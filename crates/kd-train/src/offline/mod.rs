//! Offline teachers: run a teacher over a data set once, store its top-k distributions in a
//! compact checksummed file, and train students from the file with no teacher loaded.
//!
//! - [`precompute_teacher`] writes one shard ([`Shard`]: a deterministic slice of the blocks,
//!   so shards can be computed on different machines with no coordination);
//! - [`TeacherLogits::open`] opens a directory of shards as one logical file ordered by block,
//!   refusing a missing, duplicated or foreign shard and checking every checksum;
//! - [`Trainer::with_teacher_logits`](crate::Trainer::with_teacher_logits) trains the `kd`
//!   method's top-k loss ([`kd_losses::TopKKl`]) from it after
//!   [`TeacherLogits::check_matches`] has checked every training block's tokens against the
//!   file's, so nothing is trained on distributions of other tokens.
//!
//! The byte layout is in [`mod@file`], the per-position encoding in [`codec`]; `docs/offline.md`
//! has the specification and the measured size, error and throughput.

pub mod codec;
pub mod file;

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, activation};

use crate::data::TokenDataset;
use crate::error::{Result, TrainError};
use crate::model::{LanguageModel, logits_across};
pub use codec::Quantizer;
pub use file::{
    DatasetPosition, Header, Shard, SparseBlock, TeacherIdentity, TeacherLogits, TeacherLogitsFile,
    TeacherLogitsStream, TeacherLogitsWriter, dataset_fingerprint,
};

/// Settings of [`precompute_teacher`].
#[derive(Debug, Clone, PartialEq)]
pub struct PrecomputeConfig {
    /// Entries stored per position (capped at the vocabulary size).
    pub k: usize,
    /// Temperature of the stored distribution `softmax(z / T)` (default `1`: students apply
    /// their loss's temperature on top).
    pub temperature: f64,
    /// Log-probability quantisation.
    pub quantizer: Quantizer,
    /// Blocks per teacher forward pass.
    pub batch_size: usize,
    /// Which slice of the data to compute.
    pub shard: Shard,
}

impl Default for PrecomputeConfig {
    fn default() -> Self {
        Self {
            k: 128,
            temperature: 1.0,
            quantizer: Quantizer::default(),
            batch_size: 8,
            shard: Shard::WHOLE,
        }
    }
}

/// What [`precompute_teacher`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PrecomputeReport {
    /// Blocks written.
    pub blocks: usize,
    /// Token positions written.
    pub positions: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Seconds from the first teacher pass to the renamed file.
    pub seconds: f64,
}

impl PrecomputeReport {
    /// Bytes per token position (header and index included).
    pub fn bytes_per_token(&self) -> f64 {
        self.bytes as f64 / self.positions.max(1) as f64
    }
}

/// The identity fields of a run (written into every shard's header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// The teacher.
    pub teacher: TeacherIdentity,
    /// `sha256:` of the tokenizer ([`file::fingerprint_bytes`] of its `tokenizer.json`).
    pub tokenizer: String,
}

/// Runs `teacher` (without a graph, on its own device) over shard `config.shard` of `data`
/// and writes its top-`k` log-probabilities, ids and tail masses to `out` (a file, written as
/// `out.partial` until complete). `progress(done, total)` is called after each batch.
///
/// # Errors
/// [`TrainError::InvalidConfig`] for `k = 0`, a temperature `≤ 0`, an invalid quantiser or an
/// empty shard; [`TrainError::Io`].
pub fn precompute_teacher<T: LanguageModel>(
    teacher: &T,
    device: &Device,
    data: &TokenDataset,
    identity: &RunIdentity,
    config: &PrecomputeConfig,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<PrecomputeReport> {
    if config.k == 0 {
        return Err(TrainError::config("top_k", "≥ 1", 0));
    }
    if !(config.temperature.is_finite() && config.temperature > 0.0) {
        return Err(TrainError::config("temperature", "finite and > 0", config.temperature));
    }
    if !config.quantizer.is_valid() {
        return Err(TrainError::config(
            "quantizer",
            "a step > 0 and 1–15 bits",
            format!("{:?}", config.quantizer),
        ));
    }
    if config.batch_size == 0 {
        return Err(TrainError::config("batch_size", "≥ 1", 0));
    }
    let vocab = teacher.vocab_size();
    let k = config.k.min(vocab);
    let range = config.shard.range(data.len());
    if range.is_empty() {
        return Err(TrainError::config(
            "shard",
            "a shard with at least one block (fewer shards than blocks)",
            format!("{}/{} of {} blocks", config.shard.index, config.shard.count, data.len()),
        ));
    }
    let seq_len = data.seq_len();
    let header = Header {
        format: "kd-teacher-logits".into(),
        version: file::FORMAT_VERSION,
        vocab_size: vocab,
        k,
        temperature: config.temperature,
        logprob_step: config.quantizer.step,
        logprob_bits: config.quantizer.bits,
        tokenizer: identity.tokenizer.clone(),
        teacher: identity.teacher.clone(),
        dataset: DatasetPosition {
            blocks: data.len(),
            seq_len,
            fingerprint: dataset_fingerprint(data),
            shard: config.shard,
            first_block: range.start,
            num_blocks: range.len(),
        },
        created_by: format!("kd-train {}", env!("CARGO_PKG_VERSION")),
    };
    let start = Instant::now();
    let writer = TeacherLogitsWriter::create(out, header)?;
    let partial = writer.partial_path().to_path_buf();
    let written = write_shard(teacher, device, data, config, writer, &mut progress);
    if written.is_err() {
        // Nothing half-written stays behind.
        let _ = std::fs::remove_file(&partial);
    }
    let (blocks, positions, bytes) = written?;
    Ok(PrecomputeReport { blocks, positions, bytes, seconds: start.elapsed().as_secs_f64() })
}

/// The teacher passes and records of [`precompute_teacher`] (the blocks and `k` of the
/// writer's header): blocks, positions and bytes.
fn write_shard<T: LanguageModel>(
    teacher: &T,
    device: &Device,
    data: &TokenDataset,
    config: &PrecomputeConfig,
    mut writer: TeacherLogitsWriter,
    progress: &mut impl FnMut(usize, usize),
) -> Result<(usize, u64, u64)> {
    let (seq_len, k) = (data.seq_len(), writer.header().k);
    let d = &writer.header().dataset;
    let blocks: Vec<usize> = (d.first_block..d.first_block + d.num_blocks).collect();
    let mut done = 0;
    for chunk in blocks.chunks(config.batch_size) {
        let batch = data.batch(chunk, device);
        let (ids, lps) = top_k_of(teacher, batch.input_ids, config.temperature, k);
        let per_block = seq_len * k;
        for (j, &b) in chunk.iter().enumerate() {
            let (ids, lps) = (
                &ids[j * per_block..(j + 1) * per_block],
                &lps[j * per_block..(j + 1) * per_block],
            );
            if lps.iter().any(|v| v.is_nan() || *v > 0.0) {
                return Err(TrainError::TeacherLogits {
                    path: writer.partial_path().to_path_buf(),
                    reason: format!(
                        "the teacher's log-probabilities of block {b} are not finite \
                         (NaN or overflow in its forward pass): nothing written"
                    ),
                });
            }
            let tails: Vec<f32> = lps
                .chunks_exact(k)
                .map(|row| {
                    let mass: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
                    (1.0 - mass).clamp(0.0, 1.0 - f64::EPSILON) as f32
                })
                .collect();
            writer.write_block(&data.blocks[b].input_ids, ids, lps, &tails)?;
        }
        done += chunk.len();
        progress(done, blocks.len());
    }
    let (positions, bytes) = writer.finish()?;
    Ok((blocks.len(), positions, bytes))
}

/// The teacher's top-`k` ids and log-probabilities of `softmax(z / T)` for every position of
/// `input_ids`, row-major `[batch · seq, k]`, on the host.
fn top_k_of<T: LanguageModel>(
    teacher: &T,
    input_ids: Tensor<2, Int>,
    temperature: f64,
    k: usize,
) -> (Vec<u32>, Vec<f32>) {
    let logits = logits_across(teacher, input_ids);
    let [b, n, v] = logits.dims();
    let mut z = logits.reshape([b * n, v]);
    if temperature != 1.0 {
        z = z.div_scalar(temperature);
    }
    let lp = activation::log_softmax(z, 1);
    let (values, ids) = lp.topk_with_indices(k, 1);
    let values = values.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
    let ids = ids.into_data().convert::<i64>().try_to_vec::<i64>().expect("int data");
    (ids.into_iter().map(|i| i as u32).collect(), values)
}

/// Keeps the `k` most likely of each row's entries (`[rows, k_file]` → `[rows, k]`), the
/// tensors a top-k loss takes: ids `[rows, k]` and log-probabilities `[rows, k]`.
pub fn block_tensors(
    blocks: &[SparseBlock],
    k_file: usize,
    k: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2>) {
    let rows: usize = blocks.iter().map(|b| b.tails.len()).sum();
    let (mut ids, mut lps) = (Vec::with_capacity(rows * k), Vec::with_capacity(rows * k));
    let mut order: Vec<usize> = Vec::with_capacity(k_file);
    for b in blocks {
        for (row_ids, row_lps) in b.ids.chunks_exact(k_file).zip(b.logprobs.chunks_exact(k_file)) {
            if k == k_file {
                ids.extend(row_ids.iter().map(|&i| i64::from(i)));
                lps.extend_from_slice(row_lps);
            } else {
                order.clear();
                order.extend(0..k_file);
                order.select_nth_unstable_by(k - 1, |&a, &b| row_lps[b].total_cmp(&row_lps[a]));
                for &j in &order[..k] {
                    ids.push(i64::from(row_ids[j]));
                    lps.push(row_lps[j]);
                }
            }
        }
    }
    let ids = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(ids, [rows, k]), device);
    let lps = Tensor::<2>::from_data(burn::tensor::TensorData::new(lps, [rows, k]), device);
    (ids, lps)
}
