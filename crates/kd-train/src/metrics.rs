//! Metrics records, the JSONL log, held-out evaluation (loss, perplexity) and the masked
//! cross-entropy both use.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{IGNORE_INDEX, TokenDataset};
use crate::error::{Result, TrainError};
use crate::model::{HiddenAndHead, LanguageModel};

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer step, 1-based (the number of updates done after it).
    pub step: u64,
    /// Training loss (mean over micro-batches of the per-token mean).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Counted tokens in this step.
    pub tokens: u64,
    /// Wall-clock throughput of this step (counted tokens per second); not reproducible.
    pub tokens_per_s: f64,
    /// The method's metrics of this step (`taid_t`, `on_policy`, `pg_loss`, `reward`, …).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, f64>,
}

/// A held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer step after which it ran.
    pub step: u64,
    /// Mean cross-entropy per counted token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Counted tokens evaluated.
    pub tokens: u64,
    /// Mean ROUGE-L F1 of greedy answers to held-out instruction prompts, when the trainer has
    /// them ([`crate::rouge::RougeEval`]); absent from the JSON otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rouge_l: Option<f64>,
    /// Exact-match accuracy of the final number of those answers, when asked for
    /// ([`crate::TrainConfig::eval_exact_match`]); absent from the JSON otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<f64>,
}

/// One line of the metrics JSONL file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsLine {
    /// A training step.
    Train(StepRecord),
    /// An evaluation.
    Eval(EvalRecord),
}

/// Appends lines to a JSONL file.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Json`].
pub fn append_jsonl(path: &Path, lines: &[MetricsLine]) -> Result<()> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    let mut text = String::new();
    for l in lines {
        text.push_str(
            &serde_json::to_string(l)
                .map_err(|source| TrainError::Json { path: path.to_path_buf(), source })?,
        );
        text.push('\n');
    }
    f.write_all(text.as_bytes()).map_err(|e| TrainError::io(path, e))
}

/// Replaces a JSONL file with `lines` (used on resume to drop lines past the checkpoint).
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Json`].
pub fn rewrite_jsonl(path: &Path, lines: &[MetricsLine]) -> Result<()> {
    if path.exists() {
        fs::remove_file(path).map_err(|e| TrainError::io(path, e))?;
    }
    append_jsonl(path, lines)
}

/// Reads a metrics JSONL file.
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::Data`] naming the bad line.
pub fn read_jsonl(path: &Path) -> Result<Vec<MetricsLine>> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Summed cross-entropy of the counted positions and their number.
///
/// ```text
/// CE = Σ_{i: label_i ≠ −100} −log softmax(logits_i)[label_i]
/// ```
/// Shapes: logits `[batch, seq, vocab]`, labels `[batch, seq]` → `[1]`, `[1]` (count, float).
pub fn masked_cross_entropy(logits: Tensor<3>, labels: Tensor<2, Int>) -> (Tensor<1>, Tensor<1>) {
    let [b, s, v] = logits.dims();
    let rows = b * s;
    let logp = log_softmax(logits.reshape([rows, v]), 1); // [rows, vocab]
    let labels = labels.reshape([rows]);
    let ignored = labels.clone().equal_elem(IGNORE_INDEX); // [rows]
    let safe = labels.mask_fill(ignored.clone(), 0);
    let picked = logp.gather(1, safe.reshape([rows, 1])).reshape([rows]); // [rows]
    let nll = picked.neg().mask_fill(ignored.clone(), 0.0);
    let count = ignored.bool_not().float().sum();
    (nll.sum(), count)
}

/// Mean cross-entropy over the counted positions (`0` when none counts).
pub fn masked_cross_entropy_mean(logits: Tensor<3>, labels: Tensor<2, Int>) -> Tensor<1> {
    let (sum, count) = masked_cross_entropy(logits, labels);
    sum.div(count.clamp_min(1.0))
}

/// Logits per evaluation chunk: above this many (`rows × vocab`), [`evaluate`] applies the output
/// head to the final hidden states a chunk of rows at a time instead of forming the batch's full
/// logits (64 Mi values, 256 MB in `f32`; a `[4 × 1024, 151936]` batch is 2.5 GB, more than a
/// wgpu/Vulkan device can allocate as one buffer).
pub const EVAL_CHUNK_LOGITS: usize = 64 << 20;

/// Held-out loss and perplexity of `model` on `data`, batch by batch in order.
///
/// `max_batches` bounds the cost (`None` = the whole set). Pass a model on a plain device (for a
/// student under training, `student.valid()`), so no graph is recorded. Batches whose logits
/// would exceed [`EVAL_CHUNK_LOGITS`] go through the output head chunk by chunk when the model
/// exposes it ([`LanguageModel::hidden_and_head`]), with the same result.
pub fn evaluate<M: LanguageModel>(
    model: &M,
    data: &TokenDataset,
    batch_size: usize,
    max_batches: Option<usize>,
    device: &Device,
) -> EvalRecord {
    evaluate_with(model, data, batch_size, max_batches, device, |_| {})
}

/// [`evaluate`] that calls `on_batch(blocks_done)` after each batch (a caller's progress bar).
pub fn evaluate_with<M: LanguageModel>(
    model: &M,
    data: &TokenDataset,
    batch_size: usize,
    max_batches: Option<usize>,
    device: &Device,
    on_batch: impl FnMut(usize),
) -> EvalRecord {
    evaluate_in_chunks(model, data, batch_size, max_batches, device, EVAL_CHUNK_LOGITS, on_batch)
}

/// [`evaluate_with`] with its chunking threshold as an argument (tests use small ones).
fn evaluate_in_chunks<M: LanguageModel>(
    model: &M,
    data: &TokenDataset,
    batch_size: usize,
    max_batches: Option<usize>,
    device: &Device,
    chunk_logits: usize,
    mut on_batch: impl FnMut(usize),
) -> EvalRecord {
    let b = batch_size.max(1);
    let mut total = 0.0f64;
    let mut tokens = 0u64;
    let indices: Vec<usize> = (0..data.len()).collect();
    for (k, chunk) in indices.chunks(b).enumerate() {
        if max_batches.is_some_and(|m| k >= m) {
            break;
        }
        let batch = data.batch(chunk, device);
        let [rows, seq] = batch.input_ids.dims();
        let large = rows * seq * model.vocab_size() > chunk_logits;
        total += match large.then(|| model.hidden_and_head(batch.input_ids.clone())).flatten() {
            Some(hh) => chunked_cross_entropy_sum(hh, batch.labels, chunk_logits),
            None => {
                let logits = model.logits(batch.input_ids);
                let (sum, _) = masked_cross_entropy(logits, batch.labels);
                f64::from(sum.into_scalar::<f32>())
            }
        };
        tokens += batch.counted as u64;
        on_batch(k * b + chunk.len());
    }
    let loss = if tokens == 0 { 0.0 } else { total / tokens as f64 };
    EvalRecord { step: 0, loss, perplexity: loss.exp(), tokens, rouge_l: None, exact_match: None }
}

/// The summed cross-entropy of `labels` under the head applied to `hh.hidden` a chunk of rows at
/// a time (each chunk's logits in `f32`, at most [`EVAL_CHUNK_LOGITS`] of them).
fn chunked_cross_entropy_sum(
    hh: HiddenAndHead,
    labels: Tensor<2, Int>,
    chunk_logits: usize,
) -> f64 {
    let [b, s, h] = hh.hidden.dims();
    let rows = b * s;
    let vocab = hh.weight.dims()[0];
    let hidden = hh.hidden.reshape([rows, h]);
    let labels = labels.reshape([rows]);
    let chunk = (chunk_logits / vocab).max(1);
    let mut total = 0.0;
    for start in (0..rows).step_by(chunk) {
        let end = (start + chunk).min(rows);
        let hc = hidden.clone().slice([start..end, 0..h]); // [n, hidden]
        // (W · hᵀ)ᵀ keeps the large head in its stored layout, as the models' tied head does.
        let mut logits = hh.weight.clone().matmul(hc.transpose()).transpose(); // [n, vocab]
        if let Some(bias) = &hh.bias {
            logits = logits.add(bias.clone().unsqueeze());
        }
        let logits = logits.cast(burn::tensor::FloatDType::F32).unsqueeze_dim::<3>(0);
        let labels = labels.clone().slice(start..end).unsqueeze_dim::<2>(0);
        let (sum, _) = masked_cross_entropy(logits, labels);
        total += f64::from(sum.into_scalar::<f32>());
    }
    total
}

/// ROUGE-L F1 between a generated text and a reference: the longest common subsequence of
/// their lower-cased whitespace tokens, as F = 2·P·R / (P + R) with P = LCS/|candidate| and
/// R = LCS/|reference| (Lin 2004; the sentence-level score MiniLLM and DistiLLM report).
///
/// # Example
/// ```
/// use kd_train::metrics::rouge_l;
/// assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
/// assert_eq!(rouge_l("a b", "c d"), 0.0);
/// // LCS("the cat sat on the mat", "the cat on a mat") = "the cat on mat" = 4
/// let f = rouge_l("the cat sat on the mat", "the cat on a mat");
/// assert!((f - 2.0 * (4.0 / 6.0) * (4.0 / 5.0) / (4.0 / 6.0 + 4.0 / 5.0)).abs() < 1e-12);
/// ```
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let tokens = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_lowercase).collect() };
    let (c, r) = (tokens(candidate), tokens(reference));
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    // LCS by dynamic programming over one row.
    let mut row = vec![0usize; r.len() + 1];
    for ci in &c {
        let mut diag = 0;
        for (j, rj) in r.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if ci == rj { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    let lcs = row[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, rec) = (lcs / c.len() as f64, lcs / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn cross_entropy_ignores_masked_positions() {
        let device = Device::flex();
        // Uniform logits over 4 tokens: CE = ln 4 per counted position.
        let logits = Tensor::<3>::zeros([1, 3, 4], &device);
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, -100, 3], [1, 3]), &device);
        let (sum, count) = masked_cross_entropy(logits.clone(), labels.clone());
        assert!((sum.into_scalar::<f32>() - 2.0 * 4f32.ln()).abs() < 1e-5);
        assert_eq!(count.into_scalar::<f32>(), 2.0);
        let mean = masked_cross_entropy_mean(logits, labels).into_scalar::<f32>();
        assert!((mean - 4f32.ln()).abs() < 1e-5);
    }

    /// Evaluation through the head chunk by chunk (chunks of 3 rows, so chunks straddle rows
    /// and sequences, the last one short) gives the dense evaluation's loss, for a tied head
    /// (LLaMA) and an untied one with its layout (GPT-2).
    #[test]
    fn chunked_evaluation_matches_the_dense_one() {
        use crate::data::pack_tokens;
        use kd_models::{CausalLm, Gpt2Config, LlamaConfig, ModelConfig};
        let device = Device::flex();
        let tokens: Vec<u32> = (0..90).map(|i| (i * 7 % 19) as u32).collect();
        let data = TokenDataset::new("t", pack_tokens(&tokens, 8)).unwrap();
        let configs = [
            ModelConfig::Llama(LlamaConfig {
                vocab_size: 20,
                hidden_size: 8,
                intermediate_size: 16,
                num_hidden_layers: 1,
                num_attention_heads: 2,
                num_key_value_heads: 1,
                head_dim: 4,
                max_position_embeddings: 16,
                ..Default::default()
            }),
            ModelConfig::Gpt2(Gpt2Config {
                vocab_size: 20,
                n_positions: 16,
                n_embd: 8,
                n_layer: 1,
                n_head: 2,
                tie_word_embeddings: false,
                ..Default::default()
            }),
        ];
        for config in configs {
            let model = CausalLm::init(&config, &device).unwrap();
            let dense = evaluate_in_chunks(&model, &data, 3, None, &device, usize::MAX, |_| {});
            let chunked = evaluate_in_chunks(&model, &data, 3, None, &device, 3 * 20, |_| {});
            assert_eq!(dense.tokens, chunked.tokens);
            assert!((dense.loss - chunked.loss).abs() < 1e-6 * dense.loss, "{dense:?} {chunked:?}");
        }
    }

    #[test]
    fn masked_positions_get_zero_gradient() {
        let device = Device::flex().autodiff();
        let logits = Tensor::<3>::from_floats([[[1.0, 2.0], [3.0, -1.0]]], &device).require_grad();
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, -100], [1, 2]), &device);
        let grads = masked_cross_entropy_mean(logits.clone(), labels).backward();
        let g = logits.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(&g[2..], &[0.0, 0.0]);
        assert!(g[0] < 0.0 && g[1] > 0.0);
    }

    #[test]
    fn rouge_l_lin_2004_examples() {
        // Lin (2004), section 3.1: reference S1 against candidates S2 and S3.
        let s1 = "police killed the gunman";
        // LCS(S2, S1) = "police the gunman" = 3 of 4 each way: F = 3/4.
        assert!((rouge_l("police kill the gunman", s1) - 0.75).abs() < 1e-12);
        // LCS(S3, S1) = "the gunman" = 2 of 4: F = 1/2.
        assert!((rouge_l("the gunman kill police", s1) - 0.5).abs() < 1e-12);
        // Repeated words count once per match: LCS("a a a", "a") = 1, P = 1/3, R = 1, F = 1/2.
        assert!((rouge_l("a a a", "a") - 0.5).abs() < 1e-12);
        // Symmetric in its arguments (F1 swaps P and R).
        let (x, y) = ("the cat sat on the mat", "a cat on the mat sat");
        assert_eq!(rouge_l(x, y), rouge_l(y, x));
    }

    #[test]
    fn rouge_l_edge_cases() {
        assert_eq!(rouge_l("", "a"), 0.0);
        assert_eq!(rouge_l("A B C", "a b c"), 1.0);
        // LCS 2 of 4 candidate and 2 reference tokens: P = 0.5, R = 1, F = 2/3.
        assert!((rouge_l("a x b y", "a b") - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn jsonl_round_trip() {
        let p = std::env::temp_dir().join(format!("kd-train-metrics-{}.jsonl", std::process::id()));
        let lines = vec![
            MetricsLine::Train(StepRecord {
                step: 1,
                loss: 2.5,
                lr: 1e-3,
                grad_norm: 0.5,
                tokens: 10,
                tokens_per_s: 100.0,
                extra: Default::default(),
            }),
            MetricsLine::Eval(EvalRecord {
                step: 1,
                loss: 2.0,
                perplexity: 2f64.exp(),
                tokens: 5,
                rouge_l: None,
                exact_match: None,
            }),
            MetricsLine::Eval(EvalRecord {
                step: 2,
                loss: 1.5,
                perplexity: 1.5f64.exp(),
                tokens: 5,
                rouge_l: Some(0.25),
                exact_match: None,
            }),
        ];
        rewrite_jsonl(&p, &lines).unwrap();
        assert_eq!(read_jsonl(&p).unwrap(), lines);
        // ROUGE-L is written only when measured.
        let text = fs::read_to_string(&p).unwrap();
        let evals: Vec<&str> = text.lines().filter(|l| l.contains("\"eval\"")).collect();
        assert!(!evals[0].contains("rouge_l") && evals[1].contains("\"rouge_l\":0.25"));
        fs::remove_file(&p).unwrap();
    }
}
