//! Rollouts for on-policy methods: batched sampling with a KV cache that returns the tokens,
//! the per-token log-probabilities of the sampling policy and the masks; teacher-mixed sampling
//! (MiniLLM); scoring a batch of sampled sequences in one forward; and the layout that turns
//! prompts + responses into training tensors.
//!
//! ```text
//! policy at step t:   π(v) = (1 − α)·softmax(s_t/T)_v + α·softmax(u_t/T)_v     (α = 0: the student)
//!                     then top-k / top-p, renormalised;  y_t ~ π,  logprob_t = log π(y_t)
//! T = 0:              greedy (arg-max of π), logprob_t = 0
//! ```
//!
//! `s_t` are the student's logits, `u_t` the teacher's. Sampling is seeded with
//! [`kd_models::sampling::Rng`]; a trainer keeps its state in checkpoints so that a resumed
//! on-policy run draws the same tokens as an uninterrupted one.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData, activation};
use kd_models::sampling::{Rng, argmax, draw};
use serde::{Deserialize, Serialize};

use crate::data::IGNORE_INDEX;
use crate::error::{Result, TrainError};
use crate::model::LanguageModel;

/// How responses are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Divides the logits; `0` = greedy (default `1`).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (`None` = all).
    pub top_k: Option<usize>,
    /// Keep the smallest most-likely set with probability `≥ top_p` (`None` = all).
    pub top_p: Option<f64>,
    /// Most new tokens per response (default `128`); a response also stops at EOS and never
    /// runs past the training block length.
    pub max_new_tokens: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: None, top_p: None, max_new_tokens: 128 }
    }
}

impl SamplingConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(TrainError::config("temperature", "a finite value ≥ 0", self.temperature));
        }
        if self.top_k == Some(0) {
            return Err(TrainError::config("top_k", "≥ 1 (or unset)", 0));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(TrainError::config("top_p", "a value in (0, 1] (or unset)", p));
        }
        if self.max_new_tokens == 0 {
            return Err(TrainError::config("max_new_tokens", "≥ 1", 0));
        }
        Ok(())
    }
}

/// Token ids that rollouts need.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// A sampled response stops after any of these.
    pub eos_ids: Vec<u32>,
    /// Padding id (never attended to or counted).
    pub pad_id: u32,
}

impl SpecialTokens {
    /// The EOS id of `tok`, and its padding id (else the EOS id, else 0).
    pub fn of(tok: &kd_models::Tokenizer) -> Self {
        Self {
            eos_ids: tok.eos_token_id().into_iter().collect(),
            pad_id: tok.pad_token_id().or(tok.eos_token_id()).unwrap_or(0),
        }
    }
}

/// An incremental decoder: feed new tokens, get the logits of the last position.
pub trait IncrementalDecoder {
    /// Feeds `ids` `[batch, n]` (the first call: the left-padded prompts; then one token per
    /// row) with the attention mask of everything fed so far, `[batch, total]` (`1` = token,
    /// `0` = left padding). Returns the logits of the last position. Shape: `[batch, vocab]`.
    fn feed(&mut self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<2>;
}

/// The decoder of any [`LanguageModel`]: recomputes each row's unpadded sequence at every step
/// (no cache, no padding inside the model). [`kd_models::CausalLm`] uses its KV cache instead.
#[derive(Debug)]
pub struct RecomputeDecoder<'a, M: LanguageModel> {
    model: &'a M,
    rows: Vec<Vec<i64>>,
}

impl<'a, M: LanguageModel> RecomputeDecoder<'a, M> {
    /// A decoder over `model`.
    pub fn new(model: &'a M) -> Self {
        Self { model, rows: Vec::new() }
    }
}

impl<M: LanguageModel> IncrementalDecoder for RecomputeDecoder<'_, M> {
    fn feed(&mut self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<2> {
        let [b, n] = ids.dims();
        let device = ids.device();
        let ids: Vec<i64> = ids.into_data().try_to_vec_as::<i64>().expect("int ids");
        let mask: Vec<i64> = mask.into_data().try_to_vec_as::<i64>().expect("int mask");
        let total = mask.len() / b.max(1);
        if self.rows.is_empty() {
            self.rows = vec![Vec::new(); b];
        }
        let mut out = Vec::with_capacity(b);
        for (r, row) in self.rows.iter_mut().enumerate() {
            for j in 0..n {
                // The mask's last n columns belong to the fed ids.
                if mask[r * total + total - n + j] != 0 {
                    row.push(ids[r * n + j]);
                }
            }
            let len = row.len().max(1);
            let seq = if row.is_empty() { vec![0] } else { row.clone() };
            let x = Tensor::<2, Int>::from_data(TensorData::new(seq, [1, len]), &device);
            let v = self.model.vocab_size();
            let logits = crate::model::logits_across(self.model, x);
            out.push(logits.slice([0..1, len - 1..len, 0..v]).reshape([1, v]));
        }
        Tensor::cat(out, 0)
    }
}

/// The KV-cache decoder of a [`kd_models::CausalLm`].
#[derive(Debug)]
pub struct CacheDecoder<'a> {
    model: &'a kd_models::CausalLm,
    cache: kd_models::KvCache,
}

impl<'a> CacheDecoder<'a> {
    /// A decoder with an empty cache.
    pub fn new(model: &'a kd_models::CausalLm) -> Self {
        Self { model, cache: model.new_cache() }
    }
}

impl IncrementalDecoder for CacheDecoder<'_> {
    fn feed(&mut self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<2> {
        let [b, n] = ids.dims();
        let v = self.model.vocab_size();
        // Fed on the caller's device, run on the model's (a teacher on another device).
        let here = ids.device();
        let there = crate::model::model_device(self.model).unwrap_or_else(|| here.clone());
        let (ids, mask) = (ids.to_device(&there), mask.to_device(&there));
        let out = self.model.forward_with(ids, Some(mask), None, Some(&mut self.cache), false);
        let last = out.logits.slice([0..b, n - 1..n, 0..v]).reshape([b, v]); // [b, vocab]
        last.cast(burn::tensor::FloatDType::F32).to_device(&here)
    }
}

/// Sampled responses to a batch of prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The prompts, as given.
    pub prompts: Vec<Vec<u32>>,
    /// Per row: the sampled tokens (ending with an EOS id when the row stopped early).
    pub responses: Vec<Vec<u32>>,
    /// Per row and token: `log π(y_t)` under the sampling policy (`0` for greedy decoding).
    pub logprobs: Vec<Vec<f64>>,
}

impl Rollout {
    /// Number of sampled tokens.
    pub fn num_tokens(&self) -> usize {
        self.responses.iter().map(Vec::len).sum()
    }
}

/// Softmax of `logits / temperature` in f64.
fn softmax_at(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let mut p: Vec<f64> = logits.iter().map(|&x| ((x as f64 - max) / temperature).exp()).collect();
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
    p
}

/// Samples one response per prompt from `policy` (a model on a plain device), or from the
/// teacher-mixed policy `(1 − α)·policy + α·teacher` when `mix = Some((teacher, α))`.
///
/// Row `r` gets at most `min(config.max_new_tokens, caps[r])` tokens and stops after an id in
/// `tokens.eos_ids`. Prompts are left-padded with `tokens.pad_id` inside (masked out). The
/// models see the same ids; with different vocabulary sizes the mixture uses the shared first
/// `min` ids.
///
/// # Errors
/// [`TrainError::InvalidConfig`] for no prompts, an empty prompt, `caps` of another length, an
/// id outside the vocabulary, or bad sampling settings.
#[allow(clippy::too_many_arguments)]
pub fn sample<S: LanguageModel, T: LanguageModel>(
    policy: &S,
    mix: Option<(&T, f64)>,
    prompts: &[Vec<u32>],
    caps: &[usize],
    config: &SamplingConfig,
    tokens: &SpecialTokens,
    rng: &mut Rng,
    device: &Device,
) -> Result<Rollout> {
    let vocab = match mix {
        Some((t, _)) => policy.vocab_size().min(t.vocab_size()),
        None => policy.vocab_size(),
    };
    let mix = mix.map(|(t, a)| (t.decoder(), a));
    decode(policy.decoder(), mix, vocab, prompts, caps, config, tokens, rng, device)
}

/// The decoding loop of [`sample`] over given decoders (`vocab`: the ids they share).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode(
    mut student: Box<dyn IncrementalDecoder + '_>,
    mut teacher: Option<(Box<dyn IncrementalDecoder + '_>, f64)>,
    vocab: usize,
    prompts: &[Vec<u32>],
    caps: &[usize],
    config: &SamplingConfig,
    tokens: &SpecialTokens,
    rng: &mut Rng,
    device: &Device,
) -> Result<Rollout> {
    config.validate()?;
    if prompts.is_empty() {
        return Err(TrainError::config("prompts", "at least one prompt", 0));
    }
    if caps.len() != prompts.len() {
        return Err(TrainError::config("caps", "one cap per prompt", caps.len()));
    }
    for p in prompts {
        if p.is_empty() {
            return Err(TrainError::config("prompts", "non-empty prompts", "an empty one"));
        }
        if let Some(bad) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(TrainError::config("prompts", "ids below the vocabulary size", bad));
        }
    }
    let (eos_ids, pad_id) = (&tokens.eos_ids, tokens.pad_id);
    let b = prompts.len();
    let limit: Vec<usize> = caps.iter().map(|&c| c.min(config.max_new_tokens)).collect();
    let steps = limit.iter().copied().max().unwrap_or(0);
    let mut responses = vec![Vec::new(); b];
    let mut logprobs = vec![Vec::new(); b];
    if steps == 0 {
        return Ok(Rollout { prompts: prompts.to_vec(), responses, logprobs });
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * width);
    let mut mask: Vec<Vec<i64>> = Vec::with_capacity(b);
    for p in prompts {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(i64::from(pad_id), pad));
        ids.extend(p.iter().map(|&t| i64::from(t)));
        mask.push(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, p.len())).collect());
    }
    let mut input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, width]), device);
    let mut done: Vec<bool> = limit.iter().map(|&l| l == 0).collect();
    for _ in 0..steps {
        let total = mask[0].len();
        let flat: Vec<i64> = mask.iter().flatten().copied().collect();
        let m = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, total]), device);
        let s_logits = to_rows(student.feed(input.clone(), m.clone()), vocab);
        let t_logits =
            teacher.as_mut().map(|(d, a)| (to_rows(d.feed(input.clone(), m), vocab), *a));
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            if done[r] {
                next.push(i64::from(pad_id));
                continue;
            }
            let row = &s_logits[r * vocab..(r + 1) * vocab];
            let (token, lp) = if config.temperature == 0.0 {
                let probs = match &t_logits {
                    Some((t, a)) => mixture(row, &t[r * vocab..(r + 1) * vocab], *a, 1.0),
                    None => row.iter().map(|&x| f64::from(x)).collect(),
                };
                (argmax(&probs), 0.0)
            } else {
                let probs = match &t_logits {
                    Some((t, a)) => {
                        mixture(row, &t[r * vocab..(r + 1) * vocab], *a, config.temperature)
                    }
                    None => softmax_at(row, config.temperature),
                };
                draw(&probs, config.top_k, config.top_p, rng)
            };
            responses[r].push(token);
            logprobs[r].push(lp);
            done[r] = eos_ids.contains(&token) || responses[r].len() >= limit[r];
            next.push(i64::from(token));
        }
        if done.iter().all(|&d| d) {
            break;
        }
        mask.iter_mut().for_each(|m| m.push(1));
        input = Tensor::<2, Int>::from_data(TensorData::new(next, [b, 1]), device);
    }
    Ok(Rollout { prompts: prompts.to_vec(), responses, logprobs })
}

/// `[batch, vocab']` logits as row-major f32 over the first `vocab` ids.
fn to_rows(logits: Tensor<2>, vocab: usize) -> Vec<f32> {
    let [b, v] = logits.dims();
    let logits = if v == vocab { logits } else { logits.slice([0..b, 0..vocab]) };
    logits.into_data().try_to_vec_as::<f32>().expect("f32 logits")
}

/// `(1 − α)·softmax(s/T) + α·softmax(u/T)`.
fn mixture(student: &[f32], teacher: &[f32], alpha: f64, temperature: f64) -> Vec<f64> {
    let q = softmax_at(student, temperature);
    let p = softmax_at(teacher, temperature);
    q.iter().zip(&p).map(|(q, p)| (1.0 - alpha) * q + alpha * p).collect()
}

/// Prompts and responses laid out for one training forward.
///
/// Each row is `prompt ++ response`, right-padded to `seq = max(prompt_r + width)` where
/// `width` = the longest response; labels are the response tokens at the positions that predict
/// them (`-100` elsewhere). [`SequenceBatch::response_logits`] cuts out, per row, the `width`
/// positions that predict the response, so that on-policy losses see aligned
/// `[batch, width, vocab]` tensors as in MiniLLM's and TRL's layouts.
#[derive(Debug, Clone)]
pub struct SequenceBatch {
    /// Shape: `[batch, seq]`.
    pub input_ids: Tensor<2, Int>,
    /// Next-token targets, `-100` outside the responses. Shape: `[batch, seq]`.
    pub labels: Tensor<2, Int>,
    /// Prompt length of each row.
    pub prompt_lens: Vec<usize>,
    /// The longest response.
    pub width: usize,
    responses: Vec<Vec<u32>>,
}

impl SequenceBatch {
    /// Lays out `prompts[r] ++ responses[r]`, padding with `pad_id`.
    ///
    /// # Panics
    /// When the lengths of `prompts` and `responses` differ or a prompt is empty.
    pub fn new(prompts: &[Vec<u32>], responses: &[Vec<u32>], pad_id: u32, device: &Device) -> Self {
        assert_eq!(prompts.len(), responses.len(), "one response per prompt");
        assert!(prompts.iter().all(|p| !p.is_empty()), "prompts must not be empty");
        let b = prompts.len();
        let width = responses.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let seq = prompts.iter().map(|p| p.len() + width).max().unwrap_or(1);
        let mut ids = vec![i64::from(pad_id); b * seq];
        let mut labels = vec![IGNORE_INDEX; b * seq];
        for (r, (p, y)) in prompts.iter().zip(responses).enumerate() {
            for (i, &t) in p.iter().chain(y).enumerate() {
                ids[r * seq + i] = i64::from(t);
            }
            for (j, &t) in y.iter().enumerate() {
                labels[r * seq + p.len() - 1 + j] = i64::from(t);
            }
        }
        Self {
            input_ids: Tensor::from_data(TensorData::new(ids, [b, seq]), device),
            labels: Tensor::from_data(TensorData::new(labels, [b, seq]), device),
            prompt_lens: prompts.iter().map(Vec::len).collect(),
            width,
            responses: responses.to_vec(),
        }
    }

    /// Number of response tokens.
    pub fn num_tokens(&self) -> usize {
        self.responses.iter().map(Vec::len).sum()
    }

    /// The logits at the positions that predict each row's response. Shape:
    /// `[batch, seq, vocab]` → `[batch, width, vocab]`.
    pub fn response_logits(&self, logits: Tensor<3>) -> Tensor<3> {
        let [b, _, v] = logits.dims();
        let rows: Vec<Tensor<3>> = (0..b)
            .map(|r| {
                let start = self.prompt_lens[r] - 1;
                logits.clone().slice([r..r + 1, start..start + self.width, 0..v])
            })
            .collect();
        Tensor::cat(rows, 0)
    }

    /// The response tokens, `0` after a row's end. Shape: `[batch, width]`.
    pub fn response_tokens(&self, device: &Device) -> Tensor<2, Int> {
        let b = self.responses.len();
        let mut t = vec![0i64; b * self.width];
        for (r, y) in self.responses.iter().enumerate() {
            for (j, &x) in y.iter().enumerate() {
                t[r * self.width + j] = i64::from(x);
            }
        }
        Tensor::from_data(TensorData::new(t, [b, self.width]), device)
    }

    /// `true` on response tokens. Shape: `[batch, width]`.
    pub fn response_mask(&self, device: &Device) -> Tensor<2, Bool> {
        let b = self.responses.len();
        let mut m = vec![false; b * self.width];
        for (r, y) in self.responses.iter().enumerate() {
            m[r * self.width..r * self.width + y.len()].iter_mut().for_each(|x| *x = true);
        }
        Tensor::from_data(TensorData::new(m, [b, self.width]), device)
    }
}

/// `log softmax(logits / temperature)` of `model` at each response token, in one forward over
/// the whole batch (a teacher scoring sampled sequences, or the old policy of MiniLLM).
/// Shape: `[batch, width]`, `0` after each row's end.
pub fn score<M: LanguageModel>(model: &M, batch: &SequenceBatch, temperature: f64) -> Tensor<2> {
    let device = batch.input_ids.device();
    let logits = crate::model::logits_across(model, batch.input_ids.clone()); // [b, t, v]
    let logits = batch.response_logits(logits); // [b, w, v]
    let lp = activation::log_softmax(logits.div_scalar(temperature), 2);
    let tokens = batch.response_tokens(&device).unsqueeze_dim::<3>(2);
    let mask = batch.response_mask(&device).float();
    lp.gather(2, tokens).squeeze_dim::<2>(2).mul(mask) // [b, w]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_layout_aligns_responses() {
        let d = Device::flex();
        let b = SequenceBatch::new(&[vec![5, 6, 7], vec![8]], &[vec![1, 2], vec![3]], 0, &d);
        assert_eq!(b.input_ids.dims(), [2, 5]);
        let labels: Vec<i64> = b.labels.to_data().try_to_vec_as::<i64>().unwrap();
        assert_eq!(labels, [-100, -100, 1, 2, -100, 3, -100, -100, -100, -100]);
        // Logits equal to the position index: row 0 predicts from positions 2, 3; row 1 from 0, 1.
        let pos = Tensor::<1, Int>::arange(0..5, &d).float().reshape([1, 5, 1]).expand([2, 5, 4]);
        let got: Vec<f32> =
            b.response_logits(pos).slice([0..2, 0..2, 0..1]).to_data().try_to_vec().unwrap();
        assert_eq!(got, [2.0, 3.0, 0.0, 1.0]);
        let mask: Vec<bool> = b.response_mask(&d).to_data().try_to_vec().unwrap();
        assert_eq!(mask, [true, true, true, false]);
    }
}
