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
use kd_models::sampling::Rng;
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
    pub fn validate(&self, prefix: &'static str) -> Result<()> {
        let _ = prefix;
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
            out.push(self.model.logits(x).slice([0..1, len - 1..len, 0..v]).reshape([1, v]));
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
        let out = self.model.forward_with(ids, Some(mask), None, Some(&mut self.cache), false);
        out.logits.slice([0..b, n - 1..n, 0..v]).reshape([b, v]) // [b, vocab]
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

/// Draws a token from `probs` (a distribution) after top-k / top-p truncation and
/// renormalisation; returns it with its log-probability under the truncated distribution.
///
/// # Example
/// ```
/// use kd_models::sampling::Rng;
/// let mut rng = Rng::new(3);
/// let (token, logprob) = kd_train::rollout::draw(&[0.1, 0.6, 0.3], Some(1), None, &mut rng);
/// assert_eq!((token, logprob), (1, 0.0));
/// ```
pub fn draw(probs: &[f64], top_k: Option<usize>, top_p: Option<f64>, rng: &mut Rng) -> (u32, f64) {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    if top_k.is_some() || top_p.is_some() {
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        if let Some(k) = top_k {
            order.truncate(k.max(1));
        }
        if let Some(p) = top_p {
            let mut cum = 0.0;
            let mut keep = order.len();
            for (n, &i) in order.iter().enumerate() {
                cum += probs[i];
                if cum >= p {
                    keep = n + 1;
                    break;
                }
            }
            order.truncate(keep);
        }
    }
    let total: f64 = order.iter().map(|&i| probs[i]).sum();
    let mut r = rng.next_f64() * total;
    let mut chosen = *order.last().expect("a non-empty vocabulary");
    for &i in &order {
        if r < probs[i] {
            chosen = i;
            break;
        }
        r -= probs[i];
    }
    (chosen as u32, (probs[chosen] / total).ln())
}

fn argmax(p: &[f64]) -> u32 {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best as u32
}

/// Samples one response per prompt from `policy` (a model on a plain device), or from the
/// teacher-mixed policy `(1 − α)·policy + α·teacher` when `mix = Some((teacher, α))`.
///
/// Row `r` gets at most `min(config.max_new_tokens, caps[r])` tokens and stops after an id in
/// `eos_ids`. Prompts are left-padded with `pad_id` inside (masked out). The models see the same
/// ids; with different vocabulary sizes the mixture uses the shared first `min` ids.
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
    eos_ids: &[u32],
    pad_id: u32,
    rng: &mut Rng,
    device: &Device,
) -> Result<Rollout> {
    config.validate("sampling")?;
    if prompts.is_empty() {
        return Err(TrainError::config("prompts", "at least one prompt", 0));
    }
    if caps.len() != prompts.len() {
        return Err(TrainError::config("caps", "one cap per prompt", caps.len()));
    }
    let vs = policy.vocab_size();
    let vocab = match mix {
        Some((t, _)) => vs.min(t.vocab_size()),
        None => vs,
    };
    for p in prompts {
        if p.is_empty() {
            return Err(TrainError::config("prompts", "non-empty prompts", "an empty one"));
        }
        if let Some(bad) = p.iter().find(|&&t| t as usize >= vocab) {
            return Err(TrainError::config("prompts", "ids below the vocabulary size", bad));
        }
    }
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
    let mut student = policy.decoder();
    let mut teacher = mix.map(|(t, a)| (t.decoder(), a));
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
    /// Response length of each row.
    pub response_lens: Vec<usize>,
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
            response_lens: responses.iter().map(Vec::len).collect(),
            width,
            responses: responses.to_vec(),
        }
    }

    /// Number of response tokens.
    pub fn num_tokens(&self) -> usize {
        self.response_lens.iter().sum()
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
        for (r, &n) in self.response_lens.iter().enumerate() {
            m[r * self.width..r * self.width + n].iter_mut().for_each(|x| *x = true);
        }
        Tensor::from_data(TensorData::new(m, [b, self.width]), device)
    }
}

/// `log softmax(logits / temperature)` of `model` at each response token, in one forward over
/// the whole batch (a teacher scoring sampled sequences, or the old policy of MiniLLM).
/// Shape: `[batch, width]`, `0` after each row's end.
pub fn score<M: LanguageModel>(model: &M, batch: &SequenceBatch, temperature: f64) -> Tensor<2> {
    let device = batch.input_ids.device();
    let logits = batch.response_logits(model.logits(batch.input_ids.clone())); // [b, w, v]
    let lp = activation::log_softmax(logits.div_scalar(temperature), 2);
    let tokens = batch.response_tokens(&device).unsqueeze_dim::<3>(2);
    let mask = batch.response_mask(&device).float();
    lp.gather(2, tokens).squeeze_dim::<2>(2).mul(mask) // [b, w]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_follows_the_truncated_distribution() {
        let probs = [0.5, 0.3, 0.2];
        let mut rng = Rng::new(11);
        let mut counts = [0usize; 3];
        for _ in 0..6000 {
            let (t, lp) = draw(&probs, None, Some(0.7), &mut rng);
            counts[t as usize] += 1;
            // top-p 0.7 keeps {0, 1}: renormalised 0.625 / 0.375.
            let want = [0.625f64, 0.375][t as usize].ln();
            assert!((lp - want).abs() < 1e-12);
        }
        assert_eq!(counts[2], 0);
        let f0 = counts[0] as f64 / 6000.0;
        assert!((f0 - 0.625).abs() < 0.03, "{f0}");
    }

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
