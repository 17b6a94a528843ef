//! Training methods: what one optimizer step computes.
//!
//! The [`Trainer`](crate::Trainer) keeps what every method shares (optimizer, schedule,
//! gradient accumulation, clipping, evaluation, checkpoint/resume, metrics). A [`Method`]
//! computes the loss of one micro-batch from a [`StepContext`]: it draws its own batch, runs the
//! student (with a graph) and the teacher (without), may sample rollouts, and reports its own
//! metrics. Its state (schedules, rollout buffers) goes into checkpoints as JSON.
//!
//! # Methods that own trainable parameters
//! A method may train parameters of its own beside the student (the `feature` method's learned
//! projections; PHI-S's per-teacher heads): it creates them in [`Method::init_params`] (a burn
//! [`Module`] on the autodiff device, any of them implements [`MethodParams`]) and hands them out
//! through [`Method::params`] / [`Method::params_mut`]. The trainer then treats them as part of
//! the model:
//!
//! - their gradients come from the same backward as the student's, are accumulated across
//!   micro-batches, and count in the global gradient norm (clipping, non-finite checks, f16
//!   loss-scale unscaling);
//! - they are updated by an AdamW with the same settings, learning rate and schedule;
//! - checkpoints store them (`method_params.safetensors`) with their AdamW moments
//!   (`method_optimizer.safetensors`), both covered by `checksums.json`, and a resume restores
//!   them bit for bit;
//! - [`Trainer::save_method_params`](crate::Trainer::save_method_params) writes them beside the
//!   exported student (`kd` does it as `model/<Method::params_file>`).
//!
//! | id | method | teacher | paper |
//! |---|---|---|---|
//! | `sft` | [`sft::Sft`]: next-token cross-entropy on the data's responses | no | — |
//! | `kd` | [`kd::Kd`]: any dense kd-losses divergence on the data's tokens (TAID schedule, hard-label mix, top-k teacher, DKD's warm-up), or Delta-KD with [`BaseModels`] | yes | Hinton et al. 2015 and the losses' papers |
//! | `seqkd` | [`seqkd::SeqKd`]: SFT on the teacher's answers to the training prompts | yes (before training) | Kim & Rush 2016 |
//! | `gkd` | [`gkd::Gkd`]: generalized JSD on student-sampled (or data) responses | yes | Agarwal et al. 2024 |
//! | `minillm` | [`minillm::MiniLlmMethod`]: policy-gradient reverse KL with teacher-mixed sampling, PPO clipping and a PT loss | yes | Gu et al. 2024 |
//! | `step_by_step` | [`step_by_step::StepByStep`]: label task + λ · rationale task from the same input, told apart by prefixes | its rationales/labels (before training) | Hsieh et al. 2023 |
//! | `cross_tokenizer` | [`cross_tokenizer::CrossTokenizer`]: ULD on text-aligned response positions of a teacher with its own tokenizer, plus the student's CE | yes (own tokens: [`crate::Trainer::with_teacher_data`]) | Boizard et al. 2024 |
//! | `feature` | [`feature::Feature`]: MSE / smooth-L1 / cosine between hidden states at chosen layer pairs through learned projections, plus any dense logit loss | yes | Romero et al. 2015 (FitNets), Jiao et al. 2020 (TinyBERT), Sanh et al. 2019 (DistilBERT) |
//! | `whp` | [`whp::Whp`]: unlearning towards WHP's generic prediction `v_base − α·ReLU(v_reinforced − v_base)` (hard or soft targets) on the documents to forget | reinforced model + baseline ([`BaseModels`]) | Eldan & Russinovich 2023 |
//! | `dnkd` | [`dnkd::DnkdMethod`]: decoupled KD (TCKD + NCKD) plus CE against a kNN teacher: a datastore of the teacher's hidden states over the training set, queried by its hidden state at each position, optionally mixed with its softmax | yes (builds the datastore before training; queries every step) | Zhang et al. 2023 (DNKD); kNN-KD, kNN-MT, DKD |
//!
//! # Adding a method
//! 1. One file `methods/<id>.rs` with the config (`#[serde(default, deny_unknown_fields)]`, the
//!    paper's defaults in `Default`, a `validate` and an `init` that returns the method) and a type
//!    that implements [`Method`] for every student and teacher type.
//! 2. One line in the `methods!` invocation below: `"<id>" => Variant(path::Config)`.
//! 3. Its doc page `docs/methods/<id>.md` (what it does, every knob, the paper and its official
//!    code) and an example config `crates/kd-cli/configs/<id>.toml`.
//! 4. Its tests, in `tests/method_<id>.rs` (or `tests/methods.rs`): a few steps on tiny models,
//!    an exact resume mid-run, and a check against an independent reference; the example config
//!    in `crates/kd-cli/src/assets.rs` (embedded) unless its models are repository-only.
//!
//! The `[method]` section of a `kd` run config is a [`MethodConfig`]:
//! `name = "gkd"` and the method's own keys.

use std::collections::BTreeMap;
use std::fmt;

use burn::module::Module;
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use kd_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Batch, BatchOrder, IGNORE_INDEX, TokenBlock, TokenDataset};
use crate::ensemble::TeacherEnsemble;
use crate::error::{Result, TrainError};
use crate::model::{LanguageModel, VocabAlignment, align_vocab};
use crate::offline::{SparseBlock, TeacherLogits};
use crate::optim::AdamW;
use crate::params::{GradAccumulator, load_param_values, param_values};
pub use crate::rollout::SpecialTokens;
use cross_tokenizer::TeacherDataset;

pub mod cross_tokenizer;
pub mod dnkd;
pub mod feature;
pub mod gkd;
pub mod kd;
pub mod minillm;
pub mod seqkd;
pub mod sft;
pub mod step_by_step;
pub mod whp;

/// Whether a method needs a teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeacherUse {
    /// The method never uses one (giving one is an error).
    None,
    /// The method needs one.
    Required,
}

/// What a method sees in one micro-batch.
#[derive(Debug)]
pub struct StepContext<'a, S, T> {
    /// The student, on the autodiff device.
    pub student: &'a S,
    /// The teacher, on the plain device, when the method uses one.
    pub teacher: Option<&'a T>,
    /// The student's autodiff device (the teacher lives on its own plain device:
    /// [`crate::model::logits_across`] moves its inputs and outputs).
    pub device: &'a Device,
    /// The training set.
    pub data: &'a TokenDataset,
    /// The data order (its cursor goes into checkpoints).
    pub order: &'a mut BatchOrder,
    /// Blocks per micro-batch.
    pub batch_size: usize,
    /// The sampling RNG (its state goes into checkpoints).
    pub rng: &'a mut Rng,
    /// How to align student and teacher vocabularies.
    pub vocab_alignment: VocabAlignment,
    /// EOS and padding ids for rollouts.
    pub tokens: &'a SpecialTokens,
    /// The plain-text corpus of language-modelling terms (MiniLLM's PT loss), if given.
    pub pt_data: Option<&'a TokenDataset>,
    /// The run's seed.
    pub seed: u64,
    /// `TrainConfig::chunked_head_rows`: apply the output head in chunks of this many rows.
    pub chunked_head_rows: Option<usize>,
    /// The teacher's own tokenization of the training set, block `i` beside the student's
    /// block `i` ([`crate::Trainer::with_teacher_data`]), for methods whose teacher has another
    /// tokenizer ([`Method::teacher_reads_own_tokens`]).
    pub teacher_data: Option<&'a TeacherDataset>,
    /// The teacher's stored top-k distributions ([`crate::offline`]), block `i` beside the
    /// training set's block `i`, when the run trains from them
    /// ([`crate::Trainer::with_teacher_logits`]); there is then no teacher model.
    pub teacher_logits: Option<&'a TeacherLogits>,
    /// Teachers beside the first (multi-teacher distillation, [`crate::ensemble`]); the
    /// first teacher and these combine in [`StepContext::student_and_teacher_logits`].
    pub extra_teachers: &'a [T],
    /// Stored teachers beside [`StepContext::teacher_logits`].
    pub extra_teacher_logits: &'a [TeacherLogits],
    /// How the teachers combine.
    pub ensemble: &'a TeacherEnsemble,
    /// The blocks of the last [`StepContext::next_indices`] (the rows of the micro-batch, for
    /// per-example routing).
    pub last_indices: Vec<usize>,
    /// Optimizer steps done before this one (`0` in the first step; restored on resume):
    /// per-step factors such as the KD warm-up read it.
    pub step: u64,
    /// The frozen base models (Delta-KD), when the trainer has them
    /// ([`Trainer::with_base_models`](crate::Trainer::with_base_models)).
    pub base: Option<&'a BaseModels<T>>,
}

/// Frozen base models: the teacher before its fine-tuning and the student's base, as
/// Delta-KD's target needs them ([`kd_losses::DeltaKd`]). Both run without a graph on the
/// teacher's device, in the teacher's precision; they have the teacher's type (for
/// [`kd_models::CausalLm`] runs every model has the same type).
#[derive(Debug, Clone)]
pub struct BaseModels<T> {
    /// The teacher's base (pre-fine-tuning) model: `z_tb`.
    pub teacher: T,
    /// The student's base model: `z_sb` (usually the student's starting weights).
    pub student: T,
}

impl<'a, S, T> StepContext<'a, S, T> {
    /// Indices of the next `batch_size` blocks of the data order.
    pub fn next_indices(&mut self) -> Vec<usize> {
        let idx = self.order.next_batch(self.batch_size);
        self.last_indices.clone_from(&idx);
        idx
    }

    /// The weight of each teacher for each row of the last micro-batch (`[teacher][row]`).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the rows are not the last drawn blocks (routing).
    pub fn teacher_weights(&self, teachers: usize, rows: usize) -> Result<Vec<Vec<f32>>> {
        if self.ensemble.routes.is_some() && rows != self.last_indices.len() {
            return Err(TrainError::InvalidConfig {
                name: "ensemble.routes",
                expected: "one row per drawn block (per-example routing)",
                got: format!("{rows} rows for {} blocks", self.last_indices.len()),
            });
        }
        let blocks =
            if self.last_indices.len() == rows { self.last_indices.clone() } else { vec![0; rows] };
        Ok(self.ensemble.row_weights(teachers, &blocks))
    }

    /// The next micro-batch of blocks as tensors on the autodiff device.
    pub fn next_batch(&mut self) -> Batch {
        let idx = self.next_indices();
        self.data.batch(&idx, self.device)
    }

    /// The stored teacher distributions of blocks `idx` into `blocks` (one per block): those of
    /// [`StepContext::teacher_logits`], or, with
    /// [`StepContext::extra_teacher_logits`], the mixture of all stored teachers under the
    /// ensemble's weights or routing ([`crate::ensemble::average_sparse`]).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the run has no stored teacher, or a routing error;
    /// [`TrainError::TeacherLogits`] for a corrupt record.
    pub fn read_stored_blocks(&self, idx: &[usize], blocks: &mut Vec<SparseBlock>) -> Result<()> {
        let stored = self
            .teacher_logits
            .ok_or_else(|| TrainError::config("teacher_logits", "stored teacher logits", "none"))?;
        blocks.resize_with(idx.len(), SparseBlock::default);
        for (&i, out) in idx.iter().zip(blocks.iter_mut()) {
            stored.read_block(i, out)?;
        }
        if self.extra_teacher_logits.is_empty() {
            return Ok(());
        }
        let weights = self.teacher_weights(1 + self.extra_teacher_logits.len(), idx.len())?;
        let mut theirs = vec![SparseBlock::default(); self.extra_teacher_logits.len()];
        for (row, (&i, out)) in idx.iter().zip(blocks.iter_mut()).enumerate() {
            for (extra, block) in self.extra_teacher_logits.iter().zip(theirs.iter_mut()) {
                extra.read_block(i, block)?;
            }
            let w: Vec<f32> = weights.iter().map(|per_row| per_row[row]).collect();
            let all: Vec<&SparseBlock> = std::iter::once(&*out).chain(theirs.iter()).collect();
            *out = crate::ensemble::average_sparse(&all, &w, stored.header().k);
        }
        Ok(())
    }

    /// The plain (no-autodiff) device.
    pub fn plain_device(&self) -> Device {
        self.device.clone().inner()
    }

    /// Student logits (with a graph) and teacher logits (computed without one on the plain
    /// device) of `input_ids`, brought to one vocabulary by the run's alignment.
    /// Shapes: `[batch, seq]` → both `[batch, seq, vocab]`.
    ///
    /// # Errors
    /// [`TrainError::VocabMismatch`] under [`VocabAlignment::Strict`].
    pub fn student_and_teacher_logits(
        &self,
        teacher: &T,
        input_ids: Tensor<2, Int>,
    ) -> Result<(Tensor<3>, Tensor<3>)>
    where
        S: LanguageModel,
        T: LanguageModel,
    {
        let s = self.student.logits(input_ids.clone()); // [b, s, v]
        let plain = input_ids.inner();
        let t = crate::model::logits_across(teacher, plain.clone());
        let t = if self.extra_teachers.is_empty() {
            t
        } else {
            let mut all = vec![t];
            all.extend(
                self.extra_teachers.iter().map(|x| crate::model::logits_across(x, plain.clone())),
            );
            let weights = self.teacher_weights(all.len(), s.dims()[0])?;
            crate::ensemble::combine_logits(all, &weights, self.ensemble.averaging)
        };
        align_vocab(s, t.autodiff(), self.vocab_alignment)
    }

    /// The teacher, or an error naming the method that needs it.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the trainer has no teacher.
    pub fn require_teacher(&self, method: &'static str) -> Result<&'a T> {
        self.teacher.ok_or_else(|| {
            TrainError::config("teacher", "a teacher (Trainer::with_teacher)", method)
        })
    }
}

/// The loss of one micro-batch.
#[derive(Debug, Clone)]
pub struct MicroBatchLoss {
    /// The loss to differentiate (a mean over the micro-batch's counted tokens). Shape: `[1]`.
    pub loss: Tensor<1>,
    /// Counted tokens.
    pub tokens: u64,
    /// Method metrics of this micro-batch (averaged over the micro-batches of a step).
    pub metrics: Vec<(&'static str, f64)>,
}

/// Trainable parameters a method owns (see the module docs, "Methods that own trainable
/// parameters"). Every burn [`Module`] implements it; parameters are keyed by their module path.
pub trait MethodParams: fmt::Debug {
    /// Adds the gradients of this backward pass (`grads`) to `acc`.
    fn accumulate(&self, acc: &mut GradAccumulator, grads: &Gradients);

    /// One AdamW update with the accumulated gradients multiplied by `grad_scale` first.
    fn update(&mut self, optim: &mut AdamW, grads: &GradAccumulator, lr: f64, grad_scale: f64);

    /// Every parameter's values (as `f32`) by module path.
    fn values(&self) -> BTreeMap<String, TensorData>;

    /// Replaces every parameter by the value stored under its path.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the missing or misshapen tensors.
    fn load_values(&mut self, values: &BTreeMap<String, TensorData>) -> Result<()>;
}

impl<M: Module> MethodParams for M {
    fn accumulate(&self, acc: &mut GradAccumulator, grads: &Gradients) {
        acc.add(self, grads);
    }

    fn update(&mut self, optim: &mut AdamW, grads: &GradAccumulator, lr: f64, grad_scale: f64) {
        *self = optim.step(self.clone(), grads, lr, grad_scale);
    }

    fn values(&self) -> BTreeMap<String, TensorData> {
        param_values(self)
    }

    fn load_values(&mut self, values: &BTreeMap<String, TensorData>) -> Result<()> {
        let loaded = load_param_values(self.clone(), values)
            .map_err(|errs| TrainError::checkpoint("method_params", errs.join("; ")))?;
        *self = loaded;
        Ok(())
    }
}

/// A training method: what one micro-batch computes.
pub trait Method<S: LanguageModel, T: LanguageModel>: fmt::Debug {
    /// The method id (`kd`, `gkd`, …).
    fn name(&self) -> &'static str;

    /// Whether it needs a teacher.
    fn teacher_use(&self) -> TeacherUse;

    /// Whether it can apply the output head chunk by chunk when `TrainConfig::chunked_head_rows`
    /// asks for it ([`StepContext::chunked_head_rows`]). Default: no (the trainer then refuses
    /// the setting rather than ignore it).
    fn supports_chunked_head(&self) -> bool {
        false
    }

    /// Whether it needs [`BaseModels`] (Delta-KD). Default: no (giving them is then an error).
    fn uses_base_models(&self) -> bool {
        false
    }

    /// Whether the teacher reads its own tokenization of the data (given with
    /// [`Trainer::with_teacher_data`](crate::Trainer::with_teacher_data)) rather than the
    /// student's tokens: its vocabulary may then differ under any [`VocabAlignment`], and
    /// [`Trainer::fit`](crate::Trainer::fit) requires that data. Default: no.
    fn teacher_reads_own_tokens(&self) -> bool {
        false
    }

    /// Whether it reads a second tokenization of the training set given with
    /// [`Trainer::with_teacher_data`](crate::Trainer::with_teacher_data) (block `i` beside block
    /// `i`, with row pairs), which [`Trainer::fit`](crate::Trainer::fit) then requires: the
    /// teacher's own tokens, or WHP's anchored-term translation for its baseline. Default: as
    /// [`Method::teacher_reads_own_tokens`].
    fn reads_teacher_data(&self) -> bool {
        self.teacher_reads_own_tokens()
    }

    /// How many blocks of the teacher data ([`Method::reads_teacher_data`]) belong to each
    /// training block: view `k` of block `i` is block `i·views + k` (WHP's causal intervention:
    /// one per replacement name). Default: 1.
    fn teacher_data_views(&self) -> usize {
        1
    }

    /// Whether several teachers may be combined for it ([`crate::ensemble`]): every teacher
    /// use then goes through [`StepContext::student_and_teacher_logits`] or reads
    /// [`StepContext::extra_teacher_logits`]. Default: no (the trainer refuses extra teachers).
    fn supports_teacher_ensemble(&self) -> bool {
        false
    }

    /// Whether it can train from a teacher's stored top-k distributions
    /// ([`Trainer::with_teacher_logits`](crate::Trainer::with_teacher_logits)) instead of a
    /// teacher model, and with how many entries per position (`Some(k)`). Default: `None`.
    fn reads_teacher_logits(&self) -> Option<usize> {
        None
    }

    /// Called once before the first step of [`Trainer::fit`](crate::Trainer::fit) (also after a
    /// resume): may replace the training set (SeqKD: the teacher's answers). Default: keep it.
    ///
    /// # Errors
    /// The method's own.
    fn prepare_data(
        &mut self,
        _teacher: Option<&T>,
        _data: &TokenDataset,
        _tokens: &SpecialTokens,
        _device: &Device,
    ) -> Result<Option<TokenDataset>> {
        Ok(None)
    }

    /// Creates the method's own trainable parameters ([`MethodParams`]) once the models are
    /// known: called by the trainer when it gets its teacher, on a restore and at the start of
    /// [`Trainer::fit`](crate::Trainer::fit), so it must do nothing once they exist (and may
    /// wait for the teacher when it needs one). Parameters go on `device` (the autodiff device)
    /// as gradient-tracking leaves ([`crate::params::make_trainable`]); `seed` is the run's.
    /// Default: none.
    ///
    /// # Errors
    /// Settings that do not fit the models (e.g. a layer index beyond a model's depth).
    fn init_params(
        &mut self,
        _student: &S,
        _teacher: Option<&T>,
        _device: &Device,
        _seed: u64,
    ) -> Result<()> {
        Ok(())
    }

    /// [`Method::init_params`] with every teacher: the first and those added beside it
    /// ([`crate::Trainer::with_extra_teachers`]), for methods with parameters per teacher (the
    /// `feature` method's projection heads). The trainer calls this one; the default ignores
    /// the extra teachers.
    ///
    /// # Errors
    /// As [`Method::init_params`].
    fn init_params_with(
        &mut self,
        student: &S,
        teacher: Option<&T>,
        _extra_teachers: &[T],
        device: &Device,
        seed: u64,
    ) -> Result<()> {
        self.init_params(student, teacher, device, seed)
    }

    /// The method's trainable parameters, once [`Method::init_params`] made them. Default: none.
    fn params(&self) -> Option<&dyn MethodParams> {
        None
    }

    /// Mutable access to [`Method::params`] (the trainer's update and restore).
    fn params_mut(&mut self) -> Option<&mut dyn MethodParams> {
        None
    }

    /// File name of [`Method::params`] beside an exported student
    /// ([`Trainer::save_method_params`](crate::Trainer::save_method_params)).
    /// Default: `<name>_params.safetensors`.
    fn params_file(&self) -> String {
        format!("{}_params.safetensors", self.name())
    }

    /// The loss of the next micro-batch.
    ///
    /// # Errors
    /// Loss errors, rollout errors.
    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss>;

    /// Called after each optimizer step with its 1-based number and loss (TAID's schedule
    /// moves here). Default: nothing.
    ///
    /// # Errors
    /// The method's own.
    fn end_step(&mut self, _step: u64, _loss: f64) -> Result<()> {
        Ok(())
    }

    /// Metrics of the step about to run (reported with it), e.g. TAID's `t`. Default: none.
    fn step_metrics(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// State for checkpoints (`null` when stateless).
    ///
    /// # Errors
    /// When the state does not serialise.
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Restores [`Method::state`].
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when the state does not fit.
    fn restore(&mut self, _state: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// Declares the method registry: the [`MethodConfig`] enum (serde tag `name`), its names and its
/// dispatch, from one line per method.
macro_rules! methods {
    ($($id:literal => $variant:ident($config:ty)),+ $(,)?) => {
        /// A method and its settings: the `[method]` section (`name = "<id>"` + the method's keys).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "name")]
        #[allow(clippy::large_enum_variant)]
        pub enum MethodConfig {
            $(
                #[doc = concat!("`", $id, "`: see [`", stringify!($config), "`].")]
                #[serde(rename = $id)]
                $variant($config),
            )+
        }

        impl MethodConfig {
            /// Every method id.
            pub const NAMES: &'static [&'static str] = &[$($id),+];

            /// The method id.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $id,)+
                }
            }

            /// Checks the settings (`steps` is the run's length, for schedules).
            ///
            /// # Errors
            /// [`TrainError::InvalidConfig`] naming the bad key, or a loss error.
            pub fn validate(&self) -> Result<()> {
                match self {
                    $(Self::$variant(c) => c.validate(),)+
                }
            }

            /// The method, built once per run.
            ///
            /// # Errors
            /// See [`MethodConfig::validate`].
            pub fn init<S: LanguageModel, T: LanguageModel>(
                &self,
                steps: u64,
            ) -> Result<Box<dyn Method<S, T>>> {
                match self {
                    $(Self::$variant(c) => Ok(Box::new(c.init(steps)?)),)+
                }
            }

            /// The default config of method `name`.
            ///
            /// # Errors
            /// [`TrainError::InvalidConfig`] for an unknown name.
            pub fn by_name(name: &str) -> Result<Self> {
                match name {
                    $($id => Ok(Self::$variant(<$config>::default())),)+
                    other => Err(TrainError::config(
                        "method",
                        concat!("one of" $(, " ", $id)+),
                        other,
                    )),
                }
            }
        }
    };
}

methods! {
    "sft" => Sft(sft::SftConfig),
    "kd" => Kd(kd::KdConfig),
    "seqkd" => SeqKd(seqkd::SeqKdConfig),
    "gkd" => Gkd(gkd::GkdConfig),
    "minillm" => MiniLlm(minillm::MiniLlmMethodConfig),
    "step_by_step" => StepByStep(step_by_step::StepByStepConfig),
    "cross_tokenizer" => CrossTokenizer(cross_tokenizer::CrossTokenizerConfig),
    "feature" => Feature(feature::FeatureConfig),
    "whp" => Whp(whp::WhpConfig),
    "dnkd" => Dnkd(dnkd::DnkdMethodConfig),
}

impl Default for MethodConfig {
    /// `sft`.
    fn default() -> Self {
        Self::Sft(sft::SftConfig::default())
    }
}

/// An instruction block split back into its prompt and its response.
///
/// The prompt is the inputs up to and including the position that predicts the first counted
/// label; the response is the counted labels from there on. `None` when no label counts (a
/// prompt that filled the whole block).
///
/// # Example
/// ```
/// use kd_train::data::instruction_block;
/// use kd_train::methods::split_block;
/// let block = instruction_block(&[10, 11], &[20, 21, 2], 8, 0);
/// assert_eq!(split_block(&block), Some((vec![10, 11], vec![20, 21, 2])));
/// ```
pub fn split_block(block: &TokenBlock) -> Option<(Vec<u32>, Vec<u32>)> {
    let first = block.labels.iter().position(|&l| l != IGNORE_INDEX)?;
    let prompt = block.input_ids[..=first].to_vec();
    let response = block.labels[first..]
        .iter()
        .take_while(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    Some((prompt, response))
}

/// Prompts of a micro-batch with their reference responses and rollout caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompts {
    /// Prompt ids per row.
    pub prompts: Vec<Vec<u32>>,
    /// The data's response per row.
    pub responses: Vec<Vec<u32>>,
    /// Most new tokens per row: `seq_len − prompt length` (at least 1).
    pub caps: Vec<usize>,
}

/// Prompts, reference responses and rollout caps (`seq_len − prompt length`) of the blocks at
/// `indices`; blocks without a counted label are skipped.
///
/// # Errors
/// [`TrainError::InvalidConfig`] when no block has a prompt and a response, or when a block's
/// prompt is a single token (plain-text data: on-policy methods need instruction data).
pub fn prompts_of(data: &TokenDataset, indices: &[usize]) -> Result<Prompts> {
    let seq = data.seq_len();
    let (mut prompts, mut responses, mut caps) = (Vec::new(), Vec::new(), Vec::new());
    for &i in indices {
        if let Some((p, r)) = split_block(&data.blocks[i]) {
            if p.len() < 2 && data.blocks[i].labels.iter().all(|&l| l != IGNORE_INDEX) {
                return Err(TrainError::config(
                    "data",
                    "instruction data (prompt/response JSONL) for a method that samples responses",
                    "plain text",
                ));
            }
            caps.push(seq.saturating_sub(p.len()).max(1));
            prompts.push(p);
            responses.push(r);
        }
    }
    if prompts.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: "train".into(),
            reason: "no block of this batch has a prompt and a counted response".into(),
        });
    }
    Ok(Prompts { prompts, responses, caps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_round_trips_and_names() {
        assert_eq!(
            MethodConfig::NAMES,
            [
                "sft",
                "kd",
                "seqkd",
                "gkd",
                "minillm",
                "step_by_step",
                "cross_tokenizer",
                "feature",
                "whp",
                "dnkd"
            ]
        );
        for name in MethodConfig::NAMES {
            let c = MethodConfig::by_name(name).unwrap();
            assert_eq!(c.name(), *name);
            c.validate().unwrap();
            let json = serde_json::to_value(&c).unwrap();
            assert_eq!(json["name"], *name);
            assert_eq!(serde_json::from_value::<MethodConfig>(json).unwrap(), c);
        }
        assert!(MethodConfig::by_name("ppo").is_err());
        let err = serde_json::from_str::<MethodConfig>(r#"{"name": "gkd", "lambda": 0.5}"#);
        assert!(err.is_err(), "unknown keys are errors");
    }

    #[test]
    fn plain_text_blocks_are_not_prompts() {
        let data = TokenDataset::new(
            "t",
            crate::data::pack_tokens(&(0..40).map(|i| i % 7).collect::<Vec<u32>>(), 8),
        )
        .unwrap();
        assert!(prompts_of(&data, &[0]).is_err());
    }
}
