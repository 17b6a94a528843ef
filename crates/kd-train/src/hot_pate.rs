//! Private labelling with Hot PATE: teachers trained on disjoint partitions of sensitive data
//! answer a public prompt set token by token through a private aggregation, and the student
//! trains on the released answers (next-token cross-entropy, e.g. `kd train` on the written
//! JSONL).
//!
//! At every position of every prompt, each of the `T` teachers gives its next-token logits on
//! the answer so far; [`kd_losses::teachers::hot_pate::HotPate`] turns them into votes
//! (coordinated sampling by default), a noisy histogram and a released token or `⊥`; a
//! [`PrivacyAccountant`](kd_losses::teachers::hot_pate::PrivacyAccountant) charges every query. The answer ends at an EOS token, at `⊥` (no
//! token could be released privately: the answer so far is kept) or at its length cap.
//!
//! ```text
//! answer = []
//! repeat until EOS, ⊥ or cap:  logits_i = teacher_i(prompt ++ answer)[last]   i = 1..T
//!                              token    = HotPate(logits_1..T, shared randomness, noise)
//!                              answer  += token
//! ε = accountant.epsilon(δ)  after all queries
//! ```
//!
//! The privacy guarantee is with respect to the teachers' training data, at the granularity of
//! one partition (one teacher changes); it holds only if each partition trained exactly one
//! teacher and nothing else saw the sensitive data. The randomness (votes and noise) comes from
//! one [`NoiseRng`] seeded by [`PateLabelConfig::seed`], so a run is reproducible.
//!
//! Paper: Cohen et al., *Hot PATE: Private Aggregation of Distributions for Diverse Tasks*,
//! <https://arxiv.org/abs/2312.02132>; official code <https://github.com/bencw99/hot-pate>.

use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_losses::teachers::hot_pate::{
    HotPate, HotPateConfig, NoiseRng, PrivacyReport, Sampler, TeacherDistributions,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::methods::SpecialTokens;
use crate::model::{LanguageModel, logits_across};

/// Settings of [`hot_pate_answers`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PateLabelConfig {
    /// The aggregation (temperature, rule, margin `L`, noise): `[aggregation]` with the keys of
    /// [`HotPateConfig`].
    pub aggregation: HotPateConfig,
    /// `coordinated` (Hot PATE, default) or `independent` (cold PATE).
    pub sampler: Sampler,
    /// Seed of the votes' and the noise's randomness.
    pub seed: u64,
    /// The `δ` at which ε is reported (default 1e-6); `None` for rule `argmax` (no privacy).
    pub delta: Option<f64>,
}

impl Default for PateLabelConfig {
    fn default() -> Self {
        Self {
            aggregation: HotPateConfig::new(),
            sampler: Sampler::Coordinated,
            seed: 0,
            delta: Some(1e-6),
        }
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerEnd {
    /// The released token was an EOS id (it is part of the answer).
    Eos,
    /// The aggregation released nothing (`⊥`).
    Bottom,
    /// The length cap was reached.
    Length,
}

/// One prompt's privately released answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PateAnswer {
    /// The released tokens.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub end: AnswerEnd,
}

/// What [`hot_pate_answers`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct PateLabels {
    /// One answer per prompt, in order.
    pub answers: Vec<PateAnswer>,
    /// Queries made (positions aggregated), released or not.
    pub queries: u64,
    /// Queries that released a token.
    pub released: u64,
    /// ε at [`PateLabelConfig::delta`] over every query (`None` for rule `argmax`).
    pub privacy: Option<PrivacyReport>,
}

/// The teachers' private answers to `prompts` (token ids), at most `caps[i]` tokens each; see
/// the module docs. `progress(done, total)` is called after every prompt.
///
/// # Errors
/// [`TrainError::InvalidConfig`] for fewer than two teachers, `caps` of another length than
/// `prompts`, an empty prompt, or teachers of different vocabularies; [`TrainError::Loss`] for
/// a bad aggregation config, non-finite logits, or a `δ` outside `(0, 1)`.
#[allow(clippy::too_many_arguments)]
pub fn hot_pate_answers<T: LanguageModel>(
    teachers: &[T],
    prompts: &[Vec<u32>],
    caps: &[usize],
    config: &PateLabelConfig,
    tokens: &SpecialTokens,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<PateLabels> {
    if teachers.len() < 2 {
        return Err(TrainError::config(
            "teachers",
            "at least two teachers (one per disjoint partition)",
            teachers.len(),
        ));
    }
    if caps.len() != prompts.len() {
        return Err(TrainError::config(
            "caps",
            "one length cap per prompt",
            format!("{} caps for {} prompts", caps.len(), prompts.len()),
        ));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(TrainError::config(
            "prompts",
            "non-empty prompts",
            format!("prompt {i} is empty"),
        ));
    }
    let pate = config.aggregation.init()?;
    let mut accountant = match config.delta {
        Some(_) => Some(pate.accountant()?),
        None => None,
    };
    let mut rng = NoiseRng::new(config.seed);
    let (mut queries, mut released) = (0u64, 0u64);
    let mut answers = Vec::with_capacity(prompts.len());
    for (p, (prompt, &cap)) in prompts.iter().zip(caps).enumerate() {
        let mut seq = prompt.clone();
        let mut end = AnswerEnd::Length;
        for _ in 0..cap {
            let aggregation = next_token(teachers, &seq, &pate, config.sampler, &mut rng, device)?;
            queries += 1;
            if let Some(acc) = accountant.as_mut() {
                acc.record_aggregation(&aggregation);
            }
            let Some(token) = aggregation.released_token else {
                end = AnswerEnd::Bottom;
                break;
            };
            released += 1;
            let token = token as u32;
            seq.push(token);
            if tokens.eos_ids.contains(&token) {
                end = AnswerEnd::Eos;
                break;
            }
        }
        answers.push(PateAnswer { tokens: seq[prompt.len()..].to_vec(), end });
        progress(p + 1, prompts.len());
    }
    let privacy = match (accountant, config.delta) {
        (Some(acc), Some(delta)) => Some(acc.report(delta)?),
        _ => None,
    };
    Ok(PateLabels { answers, queries, released, privacy })
}

/// One aggregated position: every teacher's last-position logits of `seq`, then the release.
fn next_token<T: LanguageModel>(
    teachers: &[T],
    seq: &[u32],
    pate: &HotPate,
    sampler: Sampler,
    rng: &mut NoiseRng,
    device: &Device,
) -> Result<kd_losses::teachers::hot_pate::Aggregation> {
    let len = seq.len();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(seq.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(), [1, len]),
        device,
    );
    let mut logits = Vec::new();
    let mut vocab = None;
    for (i, teacher) in teachers.iter().enumerate() {
        let out = logits_across(teacher, ids.clone()); // [1, len, v]
        let v = out.dims()[2];
        match vocab {
            None => vocab = Some(v),
            Some(first) if first != v => {
                return Err(TrainError::config(
                    "teachers",
                    "teachers of one vocabulary",
                    format!("teacher 0 has {first} tokens, teacher {i} has {v}"),
                ));
            }
            _ => {}
        }
        let last = out.slice([0..1, len - 1..len, 0..v]).reshape([v]);
        let values = last
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .map_err(|e| TrainError::config("teachers", "f32 logits", format!("{e:?}")))?;
        logits.extend(values);
    }
    let vocab = vocab.unwrap_or(0);
    let dist = TeacherDistributions::from_logits(
        &logits,
        teachers.len(),
        vocab,
        pate.config().temperature,
    )?;
    Ok(pate.release(&dist, sampler, rng)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, Param};
    use burn::nn::Embedding;
    use kd_losses::teachers::hot_pate::AggregationRule;

    /// A bigram "model": the next-token logits are row `last token` of `table` (`[vocab, vocab]`).
    #[derive(Module, Debug)]
    struct Table {
        table: Embedding,
    }

    impl Table {
        fn new(rows: Vec<Vec<f32>>) -> Self {
            let v = rows.len();
            let flat: Vec<f32> = rows.into_iter().flatten().collect();
            let weight = Tensor::<2>::from_data(TensorData::new(flat, [v, v]), &Device::flex());
            Self { table: Embedding { weight: Param::from_tensor(weight) } }
        }
    }

    impl LanguageModel for Table {
        fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
            self.table.forward(input_ids)
        }
        fn vocab_size(&self) -> usize {
            self.table.weight.dims()[0]
        }
    }

    /// Every teacher puts (almost) all mass on `next(t) = t + 1`, and token 3 is EOS.
    fn confident(v: usize) -> Table {
        Table::new(
            (0..v)
                .map(|t| (0..v).map(|j| if j == (t + 1) % v { 20.0 } else { 0.0 }).collect())
                .collect(),
        )
    }

    fn tokens() -> SpecialTokens {
        SpecialTokens { eos_ids: vec![3], pad_id: 0 }
    }

    #[test]
    fn agreeing_teachers_release_their_answer_until_eos_and_privacy_is_charged() {
        let teachers: Vec<Table> = (0..8).map(|_| confident(5)).collect();
        let config = PateLabelConfig {
            aggregation: HotPateConfig::new().with_rule(AggregationRule::Homogeneous),
            ..PateLabelConfig::default()
        };
        let out = hot_pate_answers(
            &teachers,
            &[vec![0], vec![2]],
            &[10, 10],
            &config,
            &tokens(),
            &Device::flex(),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(out.answers[0], PateAnswer { tokens: vec![1, 2, 3], end: AnswerEnd::Eos });
        assert_eq!(out.answers[1], PateAnswer { tokens: vec![3], end: AnswerEnd::Eos });
        assert_eq!((out.queries, out.released), (4, 4));
        // Gaussian σ = 1 on 4 histograms: ρ = 4, ε = ρ + 2·sqrt(ρ·ln(1/δ)).
        let rho: f64 = 4.0;
        let want = rho + 2.0 * (rho * (1e6f64).ln()).sqrt();
        let got = out.privacy.unwrap().epsilon();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }

    #[test]
    fn disagreeing_teachers_release_nothing() {
        // Teacher i always proposes token i: no token gets more than T/2 votes.
        let v = 6;
        let teachers: Vec<Table> = (0..6)
            .map(|i| {
                Table::new(
                    (0..v)
                        .map(|_| (0..v).map(|j| if j == i { 30.0 } else { 0.0 }).collect())
                        .collect(),
                )
            })
            .collect();
        let out = hot_pate_answers(
            &teachers,
            &[vec![1]],
            &[5],
            &PateLabelConfig::default(),
            &tokens(),
            &Device::flex(),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(out.answers[0], PateAnswer { tokens: vec![], end: AnswerEnd::Bottom });
        assert_eq!((out.queries, out.released), (1, 0));
    }

    #[test]
    fn caps_seeds_and_bad_inputs() {
        let teachers: Vec<Table> = (0..4).map(|_| confident(50)).collect();
        let config = PateLabelConfig::default();
        let run = |seed: u64| {
            let c = PateLabelConfig { seed, ..config.clone() };
            hot_pate_answers(
                &teachers,
                &[vec![10]],
                &[3],
                &c,
                &tokens(),
                &Device::flex(),
                |_, _| {},
            )
            .unwrap()
        };
        let a = run(7);
        assert_eq!(a.answers[0], PateAnswer { tokens: vec![11, 12, 13], end: AnswerEnd::Length });
        assert_eq!(a, run(7));
        let one = hot_pate_answers(
            &teachers[..1],
            &[vec![1]],
            &[3],
            &config,
            &tokens(),
            &Device::flex(),
            |_, _| {},
        );
        assert!(one.unwrap_err().to_string().contains("at least two teachers"));
        let caps = hot_pate_answers(
            &teachers,
            &[vec![1]],
            &[],
            &config,
            &tokens(),
            &Device::flex(),
            |_, _| {},
        );
        assert!(caps.unwrap_err().to_string().contains("one length cap per prompt"));
        let mixed = vec![confident(50), confident(40)];
        let err = hot_pate_answers(
            &mixed,
            &[vec![1]],
            &[2],
            &config,
            &tokens(),
            &Device::flex(),
            |_, _| {},
        );
        assert!(err.unwrap_err().to_string().contains("one vocabulary"));
        let bad = PateLabelConfig { delta: Some(2.0), ..config.clone() };
        assert!(
            hot_pate_answers(
                &teachers,
                &[vec![1]],
                &[1],
                &bad,
                &tokens(),
                &Device::flex(),
                |_, _| {}
            )
            .is_err()
        );
    }
}
