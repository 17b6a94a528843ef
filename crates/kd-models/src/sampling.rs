//! Text generation with the KV cache: greedy decoding or sampling with temperature, top-k and
//! top-p, a seeded reproducible RNG, batched prompts (left-padded internally), EOS stopping,
//! optional per-step logits and a streaming callback.
//!
//! Token choice happens on the CPU from the logits of the last position; the model runs on any
//! device.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::model::CausalLm;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The arg-max (the first one on ties), as `transformers`' greedy search.
    Greedy,
    /// A draw from `softmax(logits / temperature)`, restricted to the `top_k` most likely tokens
    /// and then to the smallest set whose probability reaches `top_p` (nucleus), renormalised.
    Sample {
        /// Divides the logits; `> 0` (below 1 sharpens, above 1 flattens).
        temperature: f64,
        /// Keep only this many most likely tokens (`None` = all); `≥ 1`.
        top_k: Option<usize>,
        /// Keep the smallest most-likely set with total probability `≥ top_p` (`None` = all);
        /// in `(0, 1]`.
        top_p: Option<f64>,
    },
}

impl Sampling {
    /// Checks the parameters.
    ///
    /// # Errors
    /// [`ModelError::InvalidArgument`] naming the parameter out of range.
    pub fn validate(&self) -> Result<()> {
        if let Self::Sample { temperature, top_k, top_p } = *self {
            if !temperature.is_finite() || temperature <= 0.0 {
                return Err(ModelError::invalid(
                    "temperature",
                    format!("{temperature} must be finite and > 0"),
                ));
            }
            if top_k == Some(0) {
                return Err(ModelError::invalid("top_k", "must be ≥ 1"));
            }
            if let Some(p) = top_p
                && !(p > 0.0 && p <= 1.0)
            {
                return Err(ModelError::invalid("top_p", format!("{p} must be in (0, 1]")));
            }
        }
        Ok(())
    }
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on the number of generated tokens per row.
    pub max_new_tokens: usize,
    /// Greedy or sampling.
    pub sampling: Sampling,
    /// A row stops after emitting any of these (the EOS token is kept in its output). Empty =
    /// never stop early.
    pub eos_token_ids: Vec<u32>,
    /// Id used for left padding of shorter prompts and after a row has stopped (never attended
    /// to, so any id in the vocabulary works).
    pub pad_token_id: u32,
    /// Seed of the sampling RNG; the same seed, prompts and model give the same tokens.
    pub seed: u64,
    /// Also return the logits of every step.
    pub output_step_logits: bool,
}

impl Default for GenerationConfig {
    /// 32 greedy tokens, no EOS, pad id 0, seed 0, no step logits.
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            eos_token_ids: Vec::new(),
            pad_token_id: 0,
            seed: 0,
            output_step_logits: false,
        }
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// Per row: the prompt followed by the generated tokens (no padding).
    pub sequences: Vec<Vec<u32>>,
    /// Per row: only the generated tokens (ending with an EOS id when the row stopped).
    pub new_tokens: Vec<Vec<u32>>,
    /// With `output_step_logits`: the raw logits that chose each token, `[batch, steps, vocab]`
    /// (rows that had stopped still get the logits computed for their padding token).
    pub step_logits: Option<Tensor<3>>,
}

/// The workspace's one seeded pseudo-random generator (SplitMix64): fast, reproducible across
/// platforms and versions (no dependency whose stream could change under us).
///
/// kd-models samples tokens with it; kd-train draws its data order, SeqKD's kept originals and
/// rollout sampling from it, and the benches and examples draw their synthetic data from it.
/// Its whole state is one `u64`, so checkpoints store it and resume the exact stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The internal state: `Rng::new(rng.state())` continues exactly where `rng` stands (what
    /// a checkpoint stores to resume sampling).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform draw from `[0, 1)` in single precision (24 random bits).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A uniform draw from `0..n`, unbiased (rejection of the last partial block of `u64`s).
    ///
    /// # Panics
    /// When `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below: empty range");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Chooses the next token from one row of logits `[vocab]`.
///
/// # Panics
/// When `logits` is empty.
pub fn choose_token(logits: &[f32], sampling: &Sampling, rng: &mut Rng) -> u32 {
    assert!(!logits.is_empty(), "choose_token: empty logits");
    match *sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample { temperature, top_k, top_p } => {
            // softmax(logits / T) up to its normaliser, shifted by the max for stability.
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let weights: Vec<f64> =
                logits.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
            draw(&weights, top_k, top_p, rng).0
        }
    }
}

/// Draws an index from non-negative `weights` (any scale: a distribution up to its normaliser)
/// restricted to the `top_k` largest and then to the smallest largest-first set whose share of
/// what is left reaches `top_p` (nucleus), renormalised; ties keep the lower index first.
/// Returns the index and its log-probability under that truncated distribution. Without
/// truncation the draw walks the indices in order.
///
/// # Panics
/// When `weights` is empty.
///
/// # Example
/// ```
/// use kd_models::sampling::{Rng, draw};
/// let mut rng = Rng::new(3);
/// assert_eq!(draw(&[0.1, 0.6, 0.3], Some(1), None, &mut rng), (1, 0.0));
/// ```
pub fn draw(
    weights: &[f64],
    top_k: Option<usize>,
    top_p: Option<f64>,
    rng: &mut Rng,
) -> (u32, f64) {
    assert!(!weights.is_empty(), "draw: no weights");
    let mut order: Vec<usize> = (0..weights.len()).collect();
    if top_k.is_some() || top_p.is_some() {
        order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
        if let Some(k) = top_k {
            order.truncate(k.max(1));
        }
        if let Some(p) = top_p {
            // Smallest prefix whose probability (within the top k) reaches p, at least one.
            let total: f64 = order.iter().map(|&i| weights[i]).sum();
            let mut cumulative = 0.0;
            let mut keep = order.len();
            for (n, &i) in order.iter().enumerate() {
                cumulative += weights[i] / total;
                if cumulative >= p {
                    keep = n + 1;
                    break;
                }
            }
            order.truncate(keep);
        }
    }
    let total: f64 = order.iter().map(|&i| weights[i]).sum();
    let mut r = rng.next_f64() * total;
    let mut chosen = *order.last().expect("at least one candidate");
    for &i in &order {
        if r < weights[i] {
            chosen = i;
            break;
        }
        r -= weights[i];
    }
    (chosen as u32, (weights[chosen] / total).ln())
}

/// The index of the first maximum.
///
/// # Panics
/// When `values` is empty.
pub fn argmax<T: PartialOrd>(values: &[T]) -> u32 {
    assert!(!values.is_empty(), "argmax: no values");
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates continuations of a batch of prompts (any lengths; they are left-padded).
///
/// `on_step(step, tokens)` is called after every step with the token chosen for each row, or
/// `None` for rows that had already stopped; use it to stream text.
///
/// # Errors
/// [`ModelError::InvalidArgument`] for no prompts, an empty prompt, a token id outside the
/// vocabulary, invalid sampling parameters, or (GPT-2) prompt + new tokens longer than
/// `n_positions`.
///
/// # Example
/// ```
/// use burn::tensor::Device;
/// use kd_models::sampling::{GenerationConfig, Sampling, generate};
/// use kd_models::{CausalLm, LlamaConfig, ModelConfig};
///
/// let device = Device::flex();
/// let config = LlamaConfig { vocab_size: 32, hidden_size: 16, intermediate_size: 32,
///     num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8,
///     ..Default::default() };
/// let model = CausalLm::init(&ModelConfig::Llama(config), &device).unwrap();
/// let settings = GenerationConfig {
///     max_new_tokens: 4,
///     sampling: Sampling::Sample { temperature: 0.8, top_k: Some(10), top_p: Some(0.9) },
///     seed: 7,
///     ..Default::default()
/// };
/// let out = generate(&model, &[vec![1, 2, 3], vec![4]], &settings, &device, |_, _| {}).unwrap();
/// assert_eq!(out.new_tokens[0].len(), 4);
/// assert_eq!(out.sequences[1][..1], [4]);
/// ```
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    mut on_step: impl FnMut(usize, &[Option<u32>]),
) -> Result<GenerationOutput> {
    config.sampling.validate()?;
    let vocab = model.vocab_size();
    if prompts.is_empty() {
        return Err(ModelError::invalid("prompts", "no prompts given"));
    }
    for (row, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ModelError::invalid("prompts", format!("prompt {row} is empty")));
        }
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::invalid(
                "prompts",
                format!("token id {bad} in prompt {row} ≥ vocab_size {vocab}"),
            ));
        }
    }
    if config.pad_token_id as usize >= vocab {
        return Err(ModelError::invalid(
            "pad_token_id",
            format!("{} ≥ vocab_size {vocab}", config.pad_token_id),
        ));
    }
    let batch = prompts.len();
    let prompt_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if let CausalLm::Gpt2(m) = model {
        let limit = m.config.n_positions;
        if prompt_len + config.max_new_tokens > limit {
            return Err(ModelError::invalid(
                "max_new_tokens",
                format!(
                    "prompt length {prompt_len} + {} new tokens exceeds n_positions {limit}",
                    config.max_new_tokens
                ),
            ));
        }
    }

    // Left-pad the prompts: [batch, prompt_len] ids and mask, row-major.
    let mut ids = Vec::with_capacity(batch * prompt_len);
    let mut mask: Vec<Vec<i64>> = Vec::with_capacity(batch);
    for prompt in prompts {
        let pad = prompt_len - prompt.len();
        ids.extend(std::iter::repeat_n(config.pad_token_id as i64, pad));
        ids.extend(prompt.iter().map(|&t| t as i64));
        mask.push(
            std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, prompt.len())).collect(),
        );
    }
    let mut input = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, prompt_len]), device);

    let mut cache = model.new_cache();
    let mut rng = Rng::new(config.seed);
    let mut new_tokens: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut finished = vec![false; batch];
    let mut step_logits = Vec::new();

    for step in 0..config.max_new_tokens {
        let flat_mask: Vec<i64> = mask.iter().flatten().copied().collect();
        let total = mask[0].len();
        let mask_tensor =
            Tensor::<2, Int>::from_data(TensorData::new(flat_mask, [batch, total]), device);
        let seq = input.dims()[1];
        let out = model.forward_with(input, Some(mask_tensor), None, Some(&mut cache), false);
        let last = out.logits.slice([0..batch, seq - 1..seq, 0..vocab]).reshape([batch, vocab]); // [b, vocab]
        let values: Vec<f32> =
            last.clone().into_data().try_into_vec_as::<f32>().expect("logits convert to f32");
        if config.output_step_logits {
            step_logits.push(last);
        }

        let mut chosen = vec![None; batch];
        let mut next = Vec::with_capacity(batch);
        for row in 0..batch {
            if finished[row] {
                next.push(config.pad_token_id as i64);
                continue;
            }
            let token =
                choose_token(&values[row * vocab..(row + 1) * vocab], &config.sampling, &mut rng);
            new_tokens[row].push(token);
            chosen[row] = Some(token);
            finished[row] = config.eos_token_ids.contains(&token);
            next.push(token as i64);
        }
        on_step(step, &chosen);
        if finished.iter().all(|&f| f) || step + 1 == config.max_new_tokens {
            break;
        }
        mask.iter_mut().for_each(|m| m.push(1));
        input = Tensor::<2, Int>::from_data(TensorData::new(next, [batch, 1]), device);
    }

    let sequences = prompts
        .iter()
        .zip(&new_tokens)
        .map(|(p, n)| p.iter().chain(n).copied().collect())
        .collect();
    let step_logits = (config.output_step_logits && !step_logits.is_empty())
        .then(|| Tensor::stack(step_logits, 1));
    Ok(GenerationOutput { sequences, new_tokens, step_logits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        let mut rng = Rng::new(0);
        assert_eq!(choose_token(&[0.0, 3.0, 3.0, -1.0], &Sampling::Greedy, &mut rng), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, -3.0];
        let mut rng = Rng::new(42);
        for _ in 0..50 {
            let k1 = Sampling::Sample { temperature: 2.0, top_k: Some(1), top_p: None };
            assert_eq!(choose_token(&logits, &k1, &mut rng), 1);
            let p0 = Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(1e-6) };
            assert_eq!(choose_token(&logits, &p0, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_is_seeded_and_follows_probabilities() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let s = Sampling::Sample { temperature: 1.0, top_k: None, top_p: None };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..4000).map(|_| choose_token(&logits, &s, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
        let ones = draw(9).iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        // top_p = 0.5 keeps only the 0.75 token.
        let mut rng = Rng::new(1);
        let nucleus = Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(0.5) };
        assert!((0..100).all(|_| choose_token(&logits, &nucleus, &mut rng) == 1));
    }

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
    fn top_p_applies_to_the_top_k_renormalised() {
        // top-k 2 keeps {0.4, 0.35}; within them 0.4 is 53 % < 0.6, so top-p 0.6 keeps both.
        let mut rng = Rng::new(5);
        let seen: std::collections::BTreeSet<u32> =
            (0..400).map(|_| draw(&[0.4, 0.35, 0.25], Some(2), Some(0.6), &mut rng).0).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1]);
        let (t, lp) = draw(&[4.0, 3.5, 2.5], Some(2), Some(0.6), &mut rng);
        let want = [4.0f64 / 7.5, 3.5 / 7.5][t as usize].ln();
        assert!((lp - want).abs() < 1e-12, "weights of any scale");
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let bad = Sampling::Sample { temperature: 0.0, top_k: None, top_p: None };
        assert!(bad.validate().unwrap_err().to_string().contains("temperature"));
        let bad = Sampling::Sample { temperature: 1.0, top_k: Some(0), top_p: None };
        assert!(bad.validate().unwrap_err().to_string().contains("top_k"));
        let bad = Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(1.5) };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
    }
}
