//! BalDistill: multi-stage balanced distillation for long-tailed domains.
//!
//! Zhou et al., *Multi-Stage Balanced Distillation: Addressing Long-Tail Challenges in
//! Sequence-Level Knowledge Distillation* (EMNLP 2024 Findings, arXiv 2406.13114). A fixed budget
//! of `B` teacher-annotated examples is spent over `S` stages. At stage `s`:
//!
//! 1. **Quotas.** The stage's share `B_s` of the budget ([`stage_budget`]) is split over the
//!    domains by a [`BalancePolicy`]: equally (`balanced`), or by the student's current weakness
//!    on a validation set (`adaptive`, `w_d ∝ 1 − acc_d + floor`), with largest-remainder
//!    rounding ([`quotas`]).
//! 2. **Head domains** — those whose unused pool still holds their quota — give their quota of
//!    examples ranked by the student's *instruction-following difficulty*
//!    ([`ifd`], Li et al. 2023): `IFD(Q, A) = PPL(A | Q) / PPL(A) = exp(ℓ(A | Q) − ℓ(A))`, with `ℓ`
//!    the mean token negative log-likelihood of the answer; the hardest (largest IFD) first.
//! 3. **Tail domains** — whose pool runs short — give every example they have left, and the
//!    teacher *synthesises* the shortfall: it writes new problems of that domain
//!    (a per-domain instruction, sampled), then answers them like any other example.
//! 4. **Annotation and filter.** The teacher writes a rationale and answer for every selected
//!    example; [`keep_rationale`] keeps those whose final answer matches the gold label (pool
//!    examples) or whose worked equations all hold (synthesised examples, which have no label).
//! 5. **Retraining.** The student is fine-tuned on everything kept so far.
//!
//! The baseline at the same budget is [`BalancePolicy::Random`]: `B_s` examples drawn uniformly
//! from the whole pool each stage (so as long-tailed as the pool), annotated, filtered and
//! trained on alike.
//!
//! This module holds the parts of the loop: reading a pool ([`read_pool`]), the quotas, the
//! per-stage selection with its state ([`StagePlanner`]), the IFD scores of a student
//! ([`ifd_scores`]), the rationale filter and per-domain exact match ([`DomainScores`]).
//! `kd baldistill` runs the stage loop on the shipped long-tailed arithmetic set and compares it
//! with random selection; `docs/methods/baldistill.md` has the conventions and the results.
//! No official code was released with the paper.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::data::{TextEncoder, prompt_ids, read_jsonl_values};
use crate::error::{Result, TrainError};
use crate::exact_match::final_number;
use crate::model::LanguageModel;

/// One example of a long-tailed pool: its domain, the question and the gold label (the final
/// answer). A `response` (a reference answer), when present, is what [`ifd_scores`] scores;
/// otherwise `The answer is {label}.`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolExample {
    /// The domain (task type) it belongs to.
    pub domain: String,
    /// The question, before any prompt template.
    pub instruction: String,
    /// The gold final answer.
    pub label: String,
    /// A reference answer, if the pool has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

impl PoolExample {
    /// The answer [`ifd_scores`] scores: the reference response, else `The answer is {label}.`
    pub fn answer_text(&self) -> String {
        self.response.clone().unwrap_or_else(|| format!("The answer is {}.", self.label))
    }
}

/// Reads a pool: JSONL objects with string fields `domain`, `instruction` and `label` (a number
/// is accepted as the label), and an optional `response`.
///
/// # Errors
/// [`TrainError::Io`] when the file cannot be read, [`TrainError::Data`] naming the line and
/// the missing field, [`TrainError::EmptyDataset`] when it holds no example.
pub fn read_pool(path: &Path) -> Result<Vec<PoolExample>> {
    let mut out = Vec::new();
    for (line, v) in read_jsonl_values(path)? {
        let bad = |reason: String| TrainError::Data { path: path.to_path_buf(), line, reason };
        let text = |key: &str| -> Option<String> {
            match v.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) if key == "label" => Some(n.to_string()),
                _ => None,
            }
        };
        let need = |key: &str| {
            text(key)
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| bad(format!("expected a non-empty string `{key}`")))
        };
        out.push(PoolExample {
            domain: need("domain")?,
            instruction: need("instruction")?,
            label: need("label")?,
            response: text("response"),
        });
    }
    if out.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: path.display().to_string(),
            reason: "no JSONL line".into(),
        });
    }
    Ok(out)
}

/// How a stage's budget is split over the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    /// The same quota for every domain (the paper's balanced policy).
    #[default]
    Balanced,
    /// Quotas proportional to `1 − acc_d + floor`, the student's error on each domain of a
    /// validation set plus [`BalDistillConfig::adaptive_floor`] (the paper's adaptive policy).
    /// The first stage, before any training, is balanced.
    Adaptive,
    /// No quotas: the stage's budget drawn uniformly from the whole unused pool, no synthesis
    /// (the random-selection baseline).
    Random,
}

/// How head-domain examples are chosen within their quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadSelection {
    /// The student's largest instruction-following difficulty first ([`ifd`]).
    #[default]
    Ifd,
    /// Uniformly at random (an ablation).
    Random,
}

/// The settings of a BalDistill run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalDistillConfig {
    /// Total teacher-annotated examples over all stages (`B`).
    pub budget: usize,
    /// Number of stages (`S`); each trains the student once.
    pub stages: usize,
    /// How a stage's budget is split over the domains.
    pub policy: BalancePolicy,
    /// How head-domain examples are picked.
    pub head_selection: HeadSelection,
    /// Whether the teacher writes new examples for domains whose pool runs short (else their
    /// quota stays partly unspent).
    pub synthesize_tail: bool,
    /// The instruction that asks the teacher for a new problem of each domain (needed for every
    /// domain that runs short when `synthesize_tail`).
    pub synthesis_prompts: BTreeMap<String, String>,
    /// Sampling temperature of synthesis (greedy would write one problem over and over).
    pub synthesis_temperature: f64,
    /// Synthesis attempts per missing example (rejected ones — duplicates, unparsable, or
    /// failing the filter — are retried up to this many times the shortfall).
    pub synthesis_attempts: usize,
    /// The floor added to every domain's error under [`BalancePolicy::Adaptive`], so that no
    /// domain's quota drops to zero.
    pub adaptive_floor: f64,
    /// Seed of every random choice (selection, synthesis sampling).
    pub seed: u64,
}

impl Default for BalDistillConfig {
    fn default() -> Self {
        Self {
            budget: 1000,
            stages: 3,
            policy: BalancePolicy::Balanced,
            head_selection: HeadSelection::Ifd,
            synthesize_tail: true,
            synthesis_prompts: BTreeMap::new(),
            synthesis_temperature: 1.0,
            synthesis_attempts: 4,
            adaptive_floor: 0.05,
            seed: 0,
        }
    }
}

impl BalDistillConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.stages == 0 {
            return Err(TrainError::config("baldistill.stages", "≥ 1", 0));
        }
        if self.budget < self.stages {
            return Err(TrainError::config(
                "baldistill.budget",
                "at least one example per stage (≥ stages)",
                self.budget,
            ));
        }
        if !self.synthesis_temperature.is_finite() || self.synthesis_temperature <= 0.0 {
            return Err(TrainError::config(
                "baldistill.synthesis_temperature",
                "a finite value > 0",
                self.synthesis_temperature,
            ));
        }
        if self.synthesis_attempts == 0 {
            return Err(TrainError::config("baldistill.synthesis_attempts", "≥ 1", 0));
        }
        if !self.adaptive_floor.is_finite() || self.adaptive_floor <= 0.0 {
            return Err(TrainError::config(
                "baldistill.adaptive_floor",
                "a finite value > 0",
                self.adaptive_floor,
            ));
        }
        Ok(())
    }
}

/// Stage `stage`'s (0-based) share of `budget` over `stages`: as even as possible, the
/// remainder to the earliest stages. The shares sum to `budget`.
///
/// ```
/// use kd_train::baldistill::stage_budget;
/// let shares: Vec<usize> = (0..3).map(|s| stage_budget(100, 3, s)).collect();
/// assert_eq!(shares, [34, 33, 33]);
/// ```
pub fn stage_budget(budget: usize, stages: usize, stage: usize) -> usize {
    if stages == 0 || stage >= stages {
        return 0;
    }
    budget / stages + usize::from(stage < budget % stages)
}

/// Splits `total` over `domains` by `policy`, by largest remainder (ties to the earlier
/// domain): equal weights for [`BalancePolicy::Balanced`], `max(0, 1 − acc_d) + floor` for
/// [`BalancePolicy::Adaptive`] with `accuracy` the student's validation accuracy per domain
/// (`None`, before any training: equal weights). The quotas sum to `total`.
///
/// # Errors
/// [`TrainError::InvalidConfig`] for [`BalancePolicy::Random`] (it has no quotas), no domain,
/// a non-positive floor, or an adaptive accuracy missing for a domain or outside `[0, 1]`.
///
/// ```
/// use std::collections::BTreeMap;
/// use kd_train::baldistill::{BalancePolicy, quotas};
/// let d = ["a".to_string(), "b".to_string(), "c".to_string()];
/// let q = quotas(BalancePolicy::Balanced, 10, &d, None, 0.05)?;
/// assert_eq!(q.values().copied().collect::<Vec<_>>(), [4, 3, 3]);
/// let acc = BTreeMap::from([("a".into(), 1.0), ("b".into(), 0.5), ("c".into(), 0.0)]);
/// let q = quotas(BalancePolicy::Adaptive, 33, &d, Some(&acc), 0.05)?;
/// // weights 0.05, 0.55, 1.05 (of 1.65) → 1, 11, 21 of 33
/// assert_eq!(q.values().copied().collect::<Vec<_>>(), [1, 11, 21]);
/// # Ok::<(), kd_train::TrainError>(())
/// ```
pub fn quotas(
    policy: BalancePolicy,
    total: usize,
    domains: &[String],
    accuracy: Option<&BTreeMap<String, f64>>,
    floor: f64,
) -> Result<BTreeMap<String, usize>> {
    if domains.is_empty() {
        return Err(TrainError::config("baldistill domains", "at least one domain", 0));
    }
    if !floor.is_finite() || floor <= 0.0 {
        return Err(TrainError::config("baldistill.adaptive_floor", "a finite value > 0", floor));
    }
    let weights: Vec<f64> = match (policy, accuracy) {
        (BalancePolicy::Random, _) => {
            return Err(TrainError::config(
                "baldistill.policy",
                "balanced or adaptive (random selection has no quotas)",
                "random",
            ));
        }
        (BalancePolicy::Balanced, _) | (BalancePolicy::Adaptive, None) => vec![1.0; domains.len()],
        (BalancePolicy::Adaptive, Some(acc)) => domains
            .iter()
            .map(|d| match acc.get(d) {
                Some(a) if (0.0..=1.0).contains(a) => Ok((1.0 - a).max(0.0) + floor),
                Some(a) => Err(TrainError::InvalidConfig {
                    name: "baldistill validation accuracy",
                    expected: "a value in [0, 1] per domain",
                    got: format!("{a} for domain `{d}`"),
                }),
                None => Err(TrainError::InvalidConfig {
                    name: "baldistill validation accuracy",
                    expected: "one accuracy per domain (every domain needs validation examples)",
                    got: format!("none for domain `{d}`"),
                }),
            })
            .collect::<Result<_>>()?,
    };
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut q: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = total - q.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..domains.len()).collect();
    // Largest remainder first; ties to the earlier domain (a stable sort keeps index order).
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal)
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        q[i] += 1;
        left -= 1;
    }
    Ok(domains.iter().cloned().zip(q).collect())
}

/// Instruction-following difficulty from the answer's mean token NLL with and without the
/// question: `IFD = PPL(A | Q) / PPL(A) = exp(ℓ(A | Q) − ℓ(A))`. Above 1 the question does not
/// help the model predict the answer at all; the larger, the harder the example for it.
///
/// ```
/// use kd_train::baldistill::ifd;
/// assert!((ifd(1.0, 1.0) - 1.0).abs() < 1e-12);
/// assert!((ifd(0.5, 2.0) - (-1.5f64).exp()).abs() < 1e-12);
/// ```
pub fn ifd(conditional_nll: f64, unconditional_nll: f64) -> f64 {
    (conditional_nll - unconditional_nll).exp()
}

/// The mean token negative log-likelihood (nats) of each `answer` after its `prefix` under
/// `model` (`prefix` must not be empty: it holds at least BOS), computed in batches of `batch`
/// right-padded rows; the answer's EOS is not scored.
///
/// # Errors
/// [`TrainError::InvalidConfig`] for an empty prefix or answer, or an id outside the
/// vocabulary.
pub fn answer_nll<M: LanguageModel>(
    model: &M,
    rows: &[(Vec<u32>, Vec<u32>)],
    batch: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    let vocab = model.vocab_size();
    for (p, a) in rows {
        if p.is_empty() || a.is_empty() {
            return Err(TrainError::config(
                "answer_nll rows",
                "a non-empty prefix (BOS at least) and answer",
                format!("prefix of {} ids, answer of {} ids", p.len(), a.len()),
            ));
        }
        if let Some(&id) = p.iter().chain(a).find(|&&id| id as usize >= vocab) {
            return Err(TrainError::config("answer_nll rows", "ids inside the vocabulary", id));
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        // Inputs are prefix + answer minus its last token; position t predicts token t + 1.
        let len = chunk.iter().map(|(p, a)| p.len() + a.len() - 1).max().unwrap_or(1);
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        for (p, a) in chunk {
            let seq: Vec<u32> = p.iter().chain(a).copied().collect();
            for t in 0..len {
                ids.push(seq.get(t).copied().unwrap_or(0) as i64);
                targets.push(seq.get(t + 1).copied().unwrap_or(0) as i64);
            }
        }
        let n = chunk.len();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, len]), device);
        let target = Tensor::<3, Int>::from_data(TensorData::new(targets, [n, len, 1]), device);
        let logp = log_softmax(model.logits(input), 2).gather(2, target);
        let values = logp.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| {
            TrainError::config("answer_nll logits", "f32-convertible data", format!("{e:?}"))
        })?;
        for (r, (p, a)) in chunk.iter().enumerate() {
            // Targets p.len()..p.len()+a.len() are the answer: positions p.len()-1 .. +a.len().
            let start = p.len() - 1;
            let sum: f64 =
                (start..start + a.len()).map(|t| -(values[r * len + t] as f64)).sum::<f64>();
            out.push(sum / a.len() as f64);
        }
    }
    Ok(out)
}

/// The student's [`ifd`] of each example: its [`PoolExample::answer_text`] scored after
/// `BOS prompt` (the prompt as `render` templates the instruction) and after `BOS` alone.
///
/// # Errors
/// When the tokenizer fails, an answer tokenizes to nothing, or as [`answer_nll`].
pub fn ifd_scores<M: LanguageModel>(
    model: &M,
    tok: &dyn TextEncoder,
    render: impl Fn(&str) -> Result<String>,
    examples: &[&PoolExample],
    batch: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    let bos: Vec<u32> = tok.bos_id().into_iter().collect();
    let bos = if bos.is_empty() { vec![0] } else { bos };
    let mut conditional = Vec::with_capacity(examples.len());
    let mut alone = Vec::with_capacity(examples.len());
    for ex in examples {
        let answer = tok.encode_text(&ex.answer_text())?;
        conditional.push((prompt_ids(&render(&ex.instruction)?, tok)?, answer.clone()));
        alone.push((bos.clone(), answer));
    }
    let c = answer_nll(model, &conditional, batch, device)?;
    let a = answer_nll(model, &alone, batch, device)?;
    Ok(c.iter().zip(&a).map(|(c, a)| ifd(*c, *a)).collect())
}

/// What a stage selected from the pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSelection {
    /// Indices into the pool of the examples the teacher annotates this stage.
    pub pool: Vec<usize>,
    /// Per domain: how many examples the teacher should synthesise (the shortfall of tail
    /// domains; empty without synthesis or under [`BalancePolicy::Random`]).
    pub synthesize: BTreeMap<String, usize>,
    /// The quota of each domain (empty under [`BalancePolicy::Random`]).
    pub quotas: BTreeMap<String, usize>,
}

/// The selection state of a BalDistill run: which pool examples are used, the random stream.
/// Serialisable, so a run can resume between stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagePlanner {
    config: BalDistillConfig,
    domains: Vec<String>,
    /// The pool's domain of each example.
    pool_domains: Vec<String>,
    used: Vec<bool>,
    rng_state: u64,
}

impl StagePlanner {
    /// A planner over `pool`. The domains are those of the pool and, when the teacher
    /// synthesises tail examples (and the policy has quotas), those of
    /// [`BalDistillConfig::synthesis_prompts`]: a domain with no pool example at all is a tail
    /// domain filled by synthesis alone.
    ///
    /// # Errors
    /// As [`BalDistillConfig::validate`]. (A short domain without a synthesis prompt is
    /// reported by [`Self::select`], when it runs short.)
    pub fn new(config: BalDistillConfig, pool: &[PoolExample]) -> Result<Self> {
        config.validate()?;
        let mut domains: BTreeSet<String> = pool.iter().map(|e| e.domain.clone()).collect();
        if config.synthesize_tail && config.policy != BalancePolicy::Random {
            domains.extend(config.synthesis_prompts.keys().cloned());
        }
        Ok(Self {
            rng_state: config.seed,
            config,
            domains: domains.into_iter().collect(),
            pool_domains: pool.iter().map(|e| e.domain.clone()).collect(),
            used: vec![false; pool.len()],
        })
    }

    /// The domains, sorted.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// The settings.
    pub fn config(&self) -> &BalDistillConfig {
        &self.config
    }

    /// Unused pool examples of `domain`.
    pub fn available(&self, domain: &str) -> usize {
        self.pool_domains.iter().zip(&self.used).filter(|(d, u)| !**u && *d == domain).count()
    }

    /// Stage `stage`'s selection. `accuracy` is the student's validation accuracy per domain
    /// (read by the adaptive policy); `difficulty` scores candidate pool indices (the student's
    /// [`ifd_scores`]; called only under [`HeadSelection::Ifd`], once per head domain). The
    /// chosen examples are marked used.
    ///
    /// # Errors
    /// As [`quotas`]; [`TrainError::InvalidConfig`] when a domain that runs short has no
    /// synthesis prompt while `synthesize_tail` is on, or `difficulty` returns the wrong count;
    /// whatever `difficulty` returns.
    pub fn select(
        &mut self,
        stage: usize,
        accuracy: Option<&BTreeMap<String, f64>>,
        mut difficulty: impl FnMut(&[usize]) -> Result<Vec<f64>>,
    ) -> Result<StageSelection> {
        let c = &self.config;
        let total = stage_budget(c.budget, c.stages, stage);
        let mut rng = Rng::new(self.rng_state);
        let mut out = StageSelection::default();
        if c.policy == BalancePolicy::Random {
            let mut free: Vec<usize> = (0..self.used.len()).filter(|&i| !self.used[i]).collect();
            shuffle(&mut free, &mut rng);
            free.truncate(total);
            free.sort_unstable();
            out.pool = free;
        } else {
            let accuracy = if stage == 0 { None } else { accuracy };
            out.quotas = quotas(c.policy, total, &self.domains, accuracy, c.adaptive_floor)?;
            for (domain, &quota) in &out.quotas {
                let mut free: Vec<usize> = (0..self.used.len())
                    .filter(|&i| !self.used[i] && self.pool_domains[i] == *domain)
                    .collect();
                if free.len() > quota {
                    // A head domain: its quota of the hardest (or random) examples.
                    match c.head_selection {
                        HeadSelection::Random => {
                            shuffle(&mut free, &mut rng);
                        }
                        HeadSelection::Ifd => {
                            let scores = difficulty(&free)?;
                            if scores.len() != free.len() {
                                return Err(TrainError::config(
                                    "baldistill difficulty scores",
                                    "one score per candidate",
                                    format!("{} for {} candidates", scores.len(), free.len()),
                                ));
                            }
                            let mut order: Vec<usize> = (0..free.len()).collect();
                            // Hardest first; NaN last; ties to the earlier pool index.
                            order.sort_by(|&a, &b| {
                                let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
                                key(scores[b]).total_cmp(&key(scores[a])).then(a.cmp(&b))
                            });
                            free = order.into_iter().map(|k| free[k]).collect();
                        }
                    }
                    free.truncate(quota);
                } else if quota > free.len() && c.synthesize_tail {
                    // A tail domain: all it has left, the rest synthesised.
                    if !c.synthesis_prompts.contains_key(domain) {
                        return Err(TrainError::InvalidConfig {
                            name: "baldistill.synthesis_prompts",
                            expected: "an instruction for every domain whose pool runs short",
                            got: format!("none for domain `{domain}`"),
                        });
                    }
                    out.synthesize.insert(domain.clone(), quota - free.len());
                }
                out.pool.extend(free);
            }
            out.pool.sort_unstable();
        }
        for &i in &out.pool {
            self.used[i] = true;
        }
        self.rng_state = rng.state();
        Ok(out)
    }
}

/// Fisher–Yates with the project's seeded generator.
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Whether every equation `a op b = c` (`op` one of `+ - * /`, integers) in `text` holds, there
/// is at least one, and the final answer ([`final_number`]) is the last equation's result. The
/// filter of synthesised examples, which have no gold label.
///
/// ```
/// use kd_train::baldistill::equations_hold;
/// assert!(equations_hold("3 * 4 = 12. 12 - 5 = 7. The answer is 7."));
/// assert!(!equations_hold("3 * 4 = 13. The answer is 13."));
/// assert!(!equations_hold("3 * 4 = 12. The answer is 7."));
/// assert!(!equations_hold("The answer is 7."));
/// ```
pub fn equations_hold(text: &str) -> bool {
    let tokens: Vec<&str> = text
        .split(|c: char| c.is_whitespace())
        .map(|t| t.trim_end_matches(['.', ',', ';']))
        .filter(|t| !t.is_empty())
        .collect();
    let mut last = None;
    let mut i = 0;
    while i + 4 < tokens.len() {
        let (a, op, b, eq, c) =
            (tokens[i], tokens[i + 1], tokens[i + 2], tokens[i + 3], tokens[i + 4]);
        if eq == "=" && ["+", "-", "*", "/", "×", "÷"].contains(&op) {
            let (Ok(a), Ok(b), Ok(c)) = (a.parse::<i64>(), b.parse::<i64>(), c.parse::<i64>())
            else {
                return false;
            };
            let value = match op {
                "+" => a.checked_add(b),
                "-" => a.checked_sub(b),
                "*" | "×" => a.checked_mul(b),
                _ => (b != 0 && a % b == 0).then(|| a / b),
            };
            if value != Some(c) {
                return false;
            }
            last = Some(c.to_string());
            i += 5;
        } else {
            i += 1;
        }
    }
    last.is_some() && final_number(text) == last
}

/// BalDistill's rationale filter: with a gold `label`, the teacher's final answer must equal it;
/// without one (a synthesised example), its equations must hold ([`equations_hold`]).
///
/// ```
/// use kd_train::baldistill::keep_rationale;
/// assert!(keep_rationale("2 + 3 = 5. The answer is 5.", Some("5")));
/// assert!(!keep_rationale("2 + 3 = 5. The answer is 5.", Some("6")));
/// assert!(keep_rationale("2 + 3 = 5. The answer is 5.", None));
/// assert!(!keep_rationale("2 + 3 = 6. The answer is 6.", None));
/// ```
pub fn keep_rationale(response: &str, label: Option<&str>) -> bool {
    match label {
        Some(l) => final_number(response).is_some_and(|n| Some(n) == final_number(l)),
        None => equations_hold(response),
    }
}

/// Exact match per domain, and their macro and micro averages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainScores {
    /// Per domain: `(correct, total)`.
    pub per_domain: BTreeMap<String, (usize, usize)>,
}

impl DomainScores {
    /// Counts one answer of `domain`.
    pub fn add(&mut self, domain: &str, correct: bool) {
        let e = self.per_domain.entry(domain.to_string()).or_default();
        e.0 += usize::from(correct);
        e.1 += 1;
    }

    /// The accuracy of each domain.
    pub fn accuracy(&self) -> BTreeMap<String, f64> {
        self.per_domain
            .iter()
            .map(|(d, (c, t))| (d.clone(), if *t == 0 { 0.0 } else { *c as f64 / *t as f64 }))
            .collect()
    }

    /// The mean of the per-domain accuracies (every domain weighs the same; `0` when empty).
    pub fn macro_accuracy(&self) -> f64 {
        let acc = self.accuracy();
        if acc.is_empty() { 0.0 } else { acc.values().sum::<f64>() / acc.len() as f64 }
    }

    /// Correct answers over all answers (`0` when empty).
    pub fn micro_accuracy(&self) -> f64 {
        let (c, t) = self.per_domain.values().fold((0, 0), |(c, t), (dc, dt)| (c + dc, t + dt));
        if t == 0 { 0.0 } else { c as f64 / t as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(counts: &[(&str, usize)]) -> Vec<PoolExample> {
        let mut out = Vec::new();
        for (d, n) in counts {
            for k in 0..*n {
                out.push(PoolExample {
                    domain: (*d).into(),
                    instruction: format!("{d} {k}"),
                    label: k.to_string(),
                    response: None,
                });
            }
        }
        out
    }

    fn config(policy: BalancePolicy) -> BalDistillConfig {
        BalDistillConfig {
            budget: 30,
            stages: 2,
            policy,
            synthesis_prompts: [("tail".to_string(), "Write one.".to_string())].into(),
            ..BalDistillConfig::default()
        }
    }

    #[test]
    fn quotas_sum_to_the_total_and_follow_the_weights() {
        let d: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        for total in [0, 1, 7, 10, 101] {
            let q = quotas(BalancePolicy::Balanced, total, &d, None, 0.05).unwrap();
            assert_eq!(q.values().sum::<usize>(), total);
            let (lo, hi) = (q.values().min().unwrap(), q.values().max().unwrap());
            assert!(hi - lo <= 1, "{q:?}");
        }
        let acc: BTreeMap<String, f64> = d.iter().cloned().zip([0.95, 0.95, 0.0, 0.45]).collect();
        let q = quotas(BalancePolicy::Adaptive, 100, &d, Some(&acc), 0.05).unwrap();
        // weights 0.1, 0.1, 1.05, 0.6 of 1.85
        assert_eq!(q.values().copied().collect::<Vec<_>>(), [5, 5, 57, 33]);
        assert!(quotas(BalancePolicy::Random, 10, &d, None, 0.05).is_err());
        let missing: BTreeMap<String, f64> = [("a".to_string(), 0.5)].into();
        let err = quotas(BalancePolicy::Adaptive, 10, &d, Some(&missing), 0.05).unwrap_err();
        assert!(err.to_string().contains("domain `b`"), "{err}");
    }

    #[test]
    fn balanced_selection_takes_the_hardest_head_and_synthesises_the_tail() {
        let p = pool(&[("head", 40), ("tail", 4)]);
        let mut planner = StagePlanner::new(config(BalancePolicy::Balanced), &p).unwrap();
        // Difficulty: the pool index itself, so the largest indices are the hardest.
        let s = planner.select(0, None, |c| Ok(c.iter().map(|&i| i as f64).collect())).unwrap();
        assert_eq!(s.quotas, [("head".into(), 8), ("tail".into(), 7)].into());
        let head: Vec<usize> = s.pool.iter().copied().filter(|&i| i < 40).collect();
        assert_eq!(head, (32..40).collect::<Vec<_>>());
        assert_eq!(s.pool.iter().filter(|&&i| i >= 40).count(), 4);
        assert_eq!(s.synthesize, [("tail".into(), 3)].into());
        // The next stage never reuses an example.
        let s2 = planner.select(1, None, |c| Ok(c.iter().map(|&i| i as f64).collect())).unwrap();
        assert!(s2.pool.iter().all(|i| !s.pool.contains(i)));
        assert_eq!(s2.pool, (24..32).collect::<Vec<_>>());
        assert_eq!(s2.synthesize, [("tail".into(), 7)].into());
        assert_eq!(planner.available("head"), 24);
    }

    #[test]
    fn random_policy_draws_uniformly_without_quotas_or_synthesis() {
        let p = pool(&[("head", 900), ("tail", 100)]);
        let mut c = config(BalancePolicy::Random);
        c.budget = 400;
        let mut planner = StagePlanner::new(c, &p).unwrap();
        let s = planner.select(0, None, |_| panic!("random selection scores nothing")).unwrap();
        assert_eq!(s.pool.len(), 200);
        assert!(s.synthesize.is_empty() && s.quotas.is_empty());
        let tail = s.pool.iter().filter(|&&i| i >= 900).count();
        // Binomial(200, 0.1): mean 20, sd 4.2.
        assert!((5..=35).contains(&tail), "{tail}");
        // Seeded: the same config selects the same examples.
        let mut again = StagePlanner::new(planner.config().clone(), &p).unwrap();
        assert_eq!(again.select(0, None, |_| Ok(vec![])).unwrap(), s);
    }

    #[test]
    fn a_domain_with_only_a_prompt_is_filled_by_synthesis() {
        let p = pool(&[("head", 40)]);
        let mut planner = StagePlanner::new(config(BalancePolicy::Balanced), &p).unwrap();
        assert_eq!(planner.domains(), ["head", "tail"]);
        let s = planner.select(0, None, |c| Ok(vec![0.0; c.len()])).unwrap();
        assert_eq!(s.synthesize, [("tail".into(), 7)].into());
        assert_eq!(s.pool.len(), 8);
        // Ties keep pool order.
        assert_eq!(s.pool, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_short_domain_without_a_prompt_is_an_error() {
        let p = pool(&[("head", 40), ("other", 2)]);
        let mut planner = StagePlanner::new(config(BalancePolicy::Balanced), &p).unwrap();
        let err = planner.select(0, None, |c| Ok(vec![0.0; c.len()])).unwrap_err();
        assert!(err.to_string().contains("domain `other`"), "{err}");
    }

    #[test]
    fn equations_and_labels_filter_rationales() {
        assert!(equations_hold("8 - 1 = 7. 7 - 4 = 3. The answer is 3."));
        assert!(equations_hold("12 / 3 = 4. The answer is 4."));
        assert!(!equations_hold("12 / 5 = 2. The answer is 2."));
        assert!(!equations_hold("8 - 1 = 7. 7 - 4 = 2. The answer is 2."));
        assert!(!equations_hold("8 - x = 7. The answer is 7."));
        assert!(keep_rationale("The answer is 12.", Some("12")));
        assert!(!keep_rationale("no number", Some("12")));
    }

    #[test]
    fn answer_nll_matches_a_per_sequence_host_computation() {
        use kd_models::{CausalLm, Gpt2Config, ModelConfig};
        let device = Device::flex();
        let config = ModelConfig::Gpt2(Gpt2Config {
            vocab_size: 11,
            n_positions: 16,
            n_embd: 8,
            n_layer: 1,
            n_head: 2,
            ..Default::default()
        });
        let model = CausalLm::init(&config, &device).unwrap();
        let rows = vec![
            (vec![1, 4, 5], vec![7, 8]),
            (vec![1], vec![3, 9, 2, 6]),
            (vec![1, 2, 3, 4, 5, 6], vec![10]),
        ];
        // Batched and padded (batch 2), against one unpadded sequence at a time in f64.
        let got = answer_nll(&model, &rows, 2, &device).unwrap();
        for ((p, a), got) in rows.iter().zip(&got) {
            let seq: Vec<i64> = p.iter().chain(a).map(|&t| t as i64).collect();
            let n = seq.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(seq.clone(), [1, n]), &device);
            let logits: Vec<f32> = model.logits(ids).into_data().try_to_vec().unwrap();
            let mut sum = 0.0f64;
            for t in p.len() - 1..n - 1 {
                let row = &logits[t * 11..(t + 1) * 11];
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                sum += lse - row[seq[t + 1] as usize] as f64;
            }
            let want = sum / a.len() as f64;
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        assert!(answer_nll(&model, &[(vec![], vec![1])], 2, &device).is_err());
        assert!(answer_nll(&model, &[(vec![1], vec![11])], 2, &device).is_err());
    }

    #[test]
    fn domain_scores_average_per_domain() {
        let mut s = DomainScores::default();
        for k in 0..10 {
            s.add("a", k < 9);
        }
        s.add("b", false);
        s.add("b", true);
        assert!((s.macro_accuracy() - (0.9 + 0.5) / 2.0).abs() < 1e-12);
        assert!((s.micro_accuracy() - 10.0 / 12.0).abs() < 1e-12);
    }
}
