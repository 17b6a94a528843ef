//! ROUGE-L of greedy answers to held-out instruction prompts: the generation metric MiniLLM and
//! DistiLLM report, run by the trainer at every evaluation when it has a [`RougeEval`].
//!
//! ```text
//! score = mean over the first n examples of rouge_l(decode(greedy(prompt)), reference)
//! ```
//!
//! Prompts are encoded as training encodes them (`BOS prompt`, [`prompt_ids`]). Prompt and
//! answer stay within `max_len` tokens (the block length the model trains on): the answer gets
//! `min(max_new_tokens, max_len − 1)` tokens and a longer prompt keeps its last tokens, the ones
//! right before the answer.

use std::fmt;

use burn::tensor::Device;

use crate::data::{InstructionExample, TextDecoder, TextEncoder, prompt_ids};
use crate::error::Result;
use crate::exact_match::exact_match;
use crate::metrics::rouge_l;
use crate::model::LanguageModel;

/// Held-out prompts, their reference responses and the tokenizer to read answers back.
///
/// # Example
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kd_train::data::read_instruction_jsonl;
/// use kd_train::rouge::RougeEval;
/// use kd_train::template::{PromptRenderer, PromptTemplate};
///
/// let tok = kd_models::Tokenizer::from_dir("path/to/tokenizer-dir")?;
/// let template = PromptRenderer::new(&PromptTemplate::default(), None)?;
/// let held_out = read_instruction_jsonl("dolly_eval.jsonl".as_ref(), &template)?;
/// let rouge = RougeEval::new(&held_out, tok)?;
/// // trainer = trainer.with_rouge_eval(rouge);
/// # Ok(())
/// # }
/// ```
pub struct RougeEval {
    prompts: Vec<Vec<u32>>,
    references: Vec<String>,
    eos_ids: Vec<u32>,
    decoder: Box<dyn TextDecoder + Send + Sync>,
}

impl fmt::Debug for RougeEval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RougeEval")
            .field("examples", &self.prompts.len())
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

impl RougeEval {
    /// Encodes the prompts of `examples` with `tokenizer`, which also decodes the answers;
    /// generation stops at its EOS id. Examples whose prompt encodes to no token are left out.
    ///
    /// # Errors
    /// When the tokenizer fails.
    pub fn new<T>(examples: &[InstructionExample], tokenizer: T) -> Result<Self>
    where
        T: TextEncoder + TextDecoder + Send + Sync + 'static,
    {
        let mut prompts = Vec::with_capacity(examples.len());
        let mut references = Vec::with_capacity(examples.len());
        for ex in examples {
            let ids = prompt_ids(&ex.prompt, &tokenizer)?;
            if !ids.is_empty() {
                prompts.push(ids);
                references.push(ex.response.clone());
            }
        }
        Ok(Self {
            prompts,
            references,
            eos_ids: tokenizer.eos_id().into_iter().collect(),
            decoder: Box::new(tokenizer),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Greedy answers of `model` to the first `n` prompts, decoded, in order, generated
    /// `batch_size` prompts at a time (see the module docs for the length rule). Empty when
    /// `max_len < 2` (no room for prompt and answer).
    ///
    /// # Errors
    /// When generation or decoding fails.
    pub fn answers<M: LanguageModel>(
        &self,
        model: &M,
        n: usize,
        max_new_tokens: usize,
        max_len: usize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<String>> {
        if max_len < 2 {
            return Ok(Vec::new());
        }
        let new = max_new_tokens.min(max_len - 1);
        let keep = max_len - new;
        let prompts: Vec<Vec<u32>> = self
            .prompts
            .iter()
            .take(n)
            .map(|p| p[p.len().saturating_sub(keep)..].to_vec())
            .collect();
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(batch_size.max(1)) {
            for ids in model.generate_greedy(chunk, new, &self.eos_ids, device)? {
                out.push(self.decoder.decode_text(&ids)?);
            }
        }
        Ok(out)
    }

    /// Mean ROUGE-L F1 of the greedy answers to the first `n` prompts against their references
    /// (`None` when nothing is scored: `n = 0`, no example, or `max_len < 2`).
    ///
    /// # Errors
    /// When generation or decoding fails.
    pub fn score<M: LanguageModel>(
        &self,
        model: &M,
        n: usize,
        max_new_tokens: usize,
        max_len: usize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Option<f64>> {
        let scores = self.scores(model, n, max_new_tokens, max_len, batch_size, device)?;
        Ok(scores.map(|s| s.rouge_l))
    }

    /// Mean ROUGE-L F1 and exact-match accuracy of the final number
    /// ([`crate::exact_match::exact_match`]) of the greedy answers to the first `n` prompts,
    /// from one generation pass (`None` when nothing is scored).
    ///
    /// # Errors
    /// When generation or decoding fails.
    pub fn scores<M: LanguageModel>(
        &self,
        model: &M,
        n: usize,
        max_new_tokens: usize,
        max_len: usize,
        batch_size: usize,
        device: &Device,
    ) -> Result<Option<GenerationScores>> {
        let answers = self.answers(model, n, max_new_tokens, max_len, batch_size, device)?;
        if answers.is_empty() {
            return Ok(None);
        }
        let n = answers.len() as f64;
        let pairs = || answers.iter().zip(&self.references);
        Ok(Some(GenerationScores {
            rouge_l: pairs().map(|(a, r)| rouge_l(a, r)).sum::<f64>() / n,
            exact_match: pairs().filter(|(a, r)| exact_match(a, r)).count() as f64 / n,
        }))
    }
}

/// What [`RougeEval::scores`] measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationScores {
    /// Mean ROUGE-L F1.
    pub rouge_l: f64,
    /// Fraction of answers whose final number equals the reference's.
    pub exact_match: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TrainError;
    use burn::module::Module;
    use burn::nn::{Embedding, EmbeddingConfig};
    use burn::tensor::{Int, Tensor, TensorData};

    /// Words `w0`..`w9` as ids 0..9, id 10 = EOS; no BOS.
    #[derive(Debug, Clone)]
    struct Words;

    impl TextEncoder for Words {
        fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
            text.split_whitespace()
                .map(|w| {
                    w.strip_prefix('w')
                        .and_then(|d| d.parse().ok())
                        .ok_or_else(|| TrainError::config("text", "words w0..w9", w))
                })
                .collect()
        }
        fn bos_id(&self) -> Option<u32> {
            None
        }
        fn eos_id(&self) -> Option<u32> {
            Some(10)
        }
    }

    impl TextDecoder for Words {
        fn decode_text(&self, ids: &[u32]) -> Result<String> {
            let words: Vec<String> =
                ids.iter().filter(|&&i| i != 10).map(|i| format!("w{i}")).collect();
            Ok(words.join(" "))
        }
    }

    /// Predicts `next[token]` with certainty: a bigram table of one-hot rows.
    #[derive(Module, Debug)]
    struct Successor {
        table: Embedding,
    }

    impl Successor {
        fn new(next: [u32; 11], device: &Device) -> Self {
            let mut table = EmbeddingConfig::new(11, 11).init(device);
            let mut w = vec![0f32; 11 * 11];
            for (from, to) in next.iter().enumerate() {
                w[from * 11 + *to as usize] = 10.0;
            }
            let weight = Tensor::<2>::from_data(TensorData::new(w, [11, 11]), device);
            table.weight = table.weight.map(|_| weight);
            Self { table }
        }
    }

    impl LanguageModel for Successor {
        fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
            self.table.forward(input_ids)
        }
        fn vocab_size(&self) -> usize {
            11
        }
    }

    fn example(prompt: &str, response: &str) -> InstructionExample {
        InstructionExample { prompt: prompt.into(), response: response.into() }
    }

    #[test]
    fn scores_greedy_answers_against_references() {
        let device = Device::flex();
        // w0 → w1 → w2 → EOS; w5 → w6 → w5 → ... (never stops); EOS → w0.
        let model = Successor::new([1, 2, 10, 0, 0, 6, 5, 0, 0, 0, 0], &device);
        let set = RougeEval::new(
            &[example("w3 w0", "w1 w2"), example("w5", "w6 w5 w9"), example("w4", "w7")],
            Words,
        )
        .unwrap();
        assert_eq!(set.len(), 3);
        let answers = set.answers(&model, 2, 3, 16, 8, &device).unwrap();
        assert_eq!(answers, ["w1 w2", "w6 w5 w6"]);
        // Exact answer: 1. Second: LCS("w6 w5 w6", "w6 w5 w9") = 2, P = R = 2/3, F = 2/3.
        let score = set.score(&model, 2, 3, 16, 1, &device).unwrap().unwrap();
        assert!((score - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12, "{score}");
        // Third: w4 → w0 → w1 → w2: "w0 w1 w2" vs "w7" scores 0.
        let all = set.score(&model, 10, 3, 16, 2, &device).unwrap().unwrap();
        assert!((all - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12, "{all}");
        assert_eq!(set.score(&model, 0, 3, 16, 2, &device).unwrap(), None);
    }

    /// Answers `[prompt length, new-token budget, first prompt id]` to show what it was given.
    #[derive(Module, Debug)]
    struct Probe {
        table: Embedding,
    }

    impl LanguageModel for Probe {
        fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
            self.table.forward(input_ids)
        }
        fn vocab_size(&self) -> usize {
            11
        }
        fn generate_greedy(
            &self,
            prompts: &[Vec<u32>],
            max_new_tokens: usize,
            _: &[u32],
            _: &Device,
        ) -> Result<Vec<Vec<u32>>> {
            Ok(prompts.iter().map(|p| vec![p.len() as u32, max_new_tokens as u32, p[0]]).collect())
        }
    }

    #[test]
    fn prompt_and_answer_stay_within_max_len() {
        let device = Device::flex();
        let model = Probe { table: EmbeddingConfig::new(11, 11).init(&device) };
        let set = RougeEval::new(&[example("w5 w6 w5 w7 w0", "w1 w2")], Words).unwrap();
        // max_len 9: the 5-token prompt whole, 4 new tokens.
        assert_eq!(set.answers(&model, 1, 4, 9, 1, &device).unwrap(), ["w5 w4 w5"]);
        // max_len 4: the answer keeps its budget (capped at 3), the prompt its last tokens.
        assert_eq!(set.answers(&model, 1, 8, 4, 1, &device).unwrap(), ["w1 w3 w0"]);
        assert_eq!(set.answers(&model, 1, 2, 4, 1, &device).unwrap(), ["w2 w2 w7"]);
        assert_eq!(set.answers(&model, 1, 1, 4, 1, &device).unwrap(), ["w3 w1 w5"]);
        assert!(set.answers(&model, 1, 8, 1, 1, &device).unwrap().is_empty());
    }
}
