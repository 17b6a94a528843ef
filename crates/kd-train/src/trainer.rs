//! The training loop: [`TrainConfig`] and [`Trainer`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, FloatDType};
use kd_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, TrainState};
use crate::data::{BatchOrder, DataCursor, TokenDataset};
use crate::ensemble::TeacherEnsemble;
use crate::error::{Result, TrainError};
use crate::events::{Observer, TrainEvent};
use crate::methods::cross_tokenizer::TeacherDataset;
use crate::methods::{BaseModels, Method, MethodConfig, SpecialTokens, StepContext, TeacherUse};
use crate::metrics::{EvalRecord, MetricsLine, StepRecord, append_jsonl, evaluate, rewrite_jsonl};
use crate::model::{LanguageModel, VocabAlignment};
use crate::offline::TeacherLogits;
use crate::optim::{AdamW, AdamWConfig, clip_factor};
use crate::params::{GradAccumulator, load_param_values, make_trainable, param_values};
use crate::precision::{LossScaleConfig, LossScaler, Precision, cast_params};
use crate::rouge::RougeEval;
use crate::schedule::{DecayKind, LrSchedule};

/// Name of the metrics file in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Everything a run needs besides the models and the data. Deserialises from TOML/JSON with
/// defaults for every missing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps (default `100`).
    pub steps: u64,
    /// Blocks per micro-batch (default `8`).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (default `1`); each micro-batch's mean loss is divided
    /// by this count, so the step sees the mean of micro-batch means.
    pub grad_accum: usize,
    /// Peak learning rate (default `1e-3`).
    pub lr: f64,
    /// Linear warmup steps (default `10`).
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak (default `0.1`).
    pub min_lr_ratio: f64,
    /// Decay after warmup (default cosine).
    pub decay: DecayKind,
    /// AdamW settings.
    pub optimizer: AdamWConfig,
    /// Clip the global gradient norm to this (default `Some(1.0)`); `None` = no clipping,
    /// written `max_grad_norm = "off"` (or `false`) in TOML/JSON, which have no null.
    #[serde(with = "off_or_number")]
    pub max_grad_norm: Option<f64>,
    /// Seed of the data order (default `0`); seed model initialisation yourself.
    pub seed: u64,
    /// Evaluate every this many steps (and after the last one); `0` = only after the last one.
    pub eval_every: u64,
    /// Evaluate on at most this many batches (`None` = the whole held-out set).
    pub eval_batches: Option<usize>,
    /// At every evaluation, answer this many held-out instruction prompts greedily and report
    /// their mean ROUGE-L against the reference responses (default `32`; `0` = off). Needs the
    /// prompts: [`Trainer::with_rouge_eval`] (`kd` does it for instruction data).
    pub eval_rouge_prompts: usize,
    /// Also report the exact-match accuracy of the final number of those answers (default
    /// `false`; for tasks with numeric answers such as the arithmetic word problems).
    pub eval_exact_match: bool,
    /// Most new tokens per answer in that evaluation (default `64`; prompt and answer stay
    /// within the held-out block length, see [`crate::rouge`]).
    pub eval_max_new_tokens: usize,
    /// Mark every this many steps as periodic in [`TrainEvent::Step`] (default `10`): the
    /// steps the default observer logs a progress line for.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (and after the last one, when `output_dir` is
    /// set); `0` = only after the last one.
    pub checkpoint_every: u64,
    /// Keep this many most recent checkpoints (default `2`).
    pub keep_checkpoints: usize,
    /// Where `metrics.jsonl` and `checkpoint-<step>/` go (`None` = nowhere; `kd` writes its charts
    /// there too).
    pub output_dir: Option<PathBuf>,
    /// The method and its settings (default `sft`; see [`crate::methods`]).
    pub method: MethodConfig,
    /// What to do when student and teacher vocabularies differ.
    pub vocab_alignment: VocabAlignment,
    /// The student's compute precision (default `f32`): `bf16` / `f16` run its forward and
    /// backward in half precision over `f32` master weights ([`crate::precision`]).
    pub dtype: Precision,
    /// The teacher's precision (default: `dtype`); its parameters are cast to it.
    pub teacher_dtype: Option<Precision>,
    /// Dynamic loss scaling, used when `dtype` is `f16`.
    pub loss_scale: LossScaleConfig,
    /// Run the distillation loss through [`kd_losses::ChunkedHeadLoss`] with chunks of this many
    /// rows, so neither model's full `[tokens, vocab]` logits are formed (default `None`; methods
    /// that support it: `kd`, where `method.chunk_rows` overrides it).
    pub chunked_head_rows: Option<usize>,
    /// What a step whose loss or gradients are NaN/infinite does (default `stop`): `stop` ends
    /// the run with [`TrainError::NonFiniteLoss`] / [`TrainError::NonFiniteGradient`]; `skip`
    /// leaves the weights as they were, records the step with `extra.non_finite = 1` (its loss
    /// and gradient norm as 0) and goes on. f16 gradient overflows are always skipped by the loss
    /// scaler instead.
    pub on_non_finite: NonFinitePolicy,
    /// Let a resumed run use a learning-rate schedule (`lr`, `warmup_steps`, `steps`,
    /// `min_lr_ratio`, `decay`) other than the one its checkpoint was written under (default
    /// `false`: such a resume is [`TrainError::ScheduleMismatch`], because changing `steps`
    /// silently moves the cosine horizon of the steps still to come).
    pub allow_schedule_change: bool,
}

/// Serde for an optional number that config files switch off with `"off"` or `false` (TOML
/// has no null; a missing key keeps the default).
mod off_or_number {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Flag(bool),
        Text(String),
        Null(()),
    }

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_f64(*v),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Raw::deserialize(d) {
            Ok(Raw::Number(v)) => Ok(Some(v)),
            Ok(Raw::Flag(false) | Raw::Null(())) => Ok(None),
            Ok(Raw::Text(t)) if t == "off" => Ok(None),
            Ok(Raw::Flag(true)) => Err(D::Error::custom("expected a number or \"off\", got true")),
            Ok(Raw::Text(t)) => {
                Err(D::Error::custom(format!("expected a number or \"off\", got \"{t}\"")))
            }
            Err(_) => Err(D::Error::custom("expected a number or \"off\"")),
        }
    }
}

/// See [`TrainConfig::on_non_finite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// End the run with an error naming the step (the default).
    #[default]
    Stop,
    /// Skip the update, count the step, go on.
    Skip,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-3,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            decay: DecayKind::Cosine,
            optimizer: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            seed: 0,
            eval_every: 0,
            eval_batches: None,
            eval_rouge_prompts: 32,
            eval_exact_match: false,
            eval_max_new_tokens: 64,
            log_every: 10,
            checkpoint_every: 0,
            keep_checkpoints: 2,
            output_dir: None,
            method: MethodConfig::default(),
            vocab_alignment: VocabAlignment::Strict,
            dtype: Precision::F32,
            teacher_dtype: None,
            loss_scale: LossScaleConfig::default(),
            chunked_head_rows: None,
            on_non_finite: NonFinitePolicy::Stop,
            allow_schedule_change: false,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule of this config.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak: self.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            min_lr_ratio: self.min_lr_ratio,
            decay: self.decay,
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the first bad key, or the loss's own
    /// [`kd_losses::KdError`].
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(TrainError::config("batch_size", "≥ 1", 0));
        }
        if self.grad_accum == 0 {
            return Err(TrainError::config("grad_accum", "≥ 1", 0));
        }
        if let Some(m) = self.max_grad_norm
            && (m.is_nan() || m <= 0.0)
        {
            return Err(TrainError::config("max_grad_norm", "a value > 0", m));
        }
        if self.eval_rouge_prompts > 0 && self.eval_max_new_tokens == 0 {
            return Err(TrainError::config(
                "eval_max_new_tokens",
                "≥ 1 (or eval_rouge_prompts = 0)",
                0,
            ));
        }
        if self.chunked_head_rows == Some(0) {
            return Err(TrainError::config("chunked_head_rows", "≥ 1 row per chunk", 0));
        }
        self.loss_scale.validate()?;
        self.schedule().validate()?;
        self.optimizer.validate()?;
        self.method.validate()
    }
}

/// What a finished [`Trainer::fit`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Every step of the run (including those before a resume).
    pub history: Vec<StepRecord>,
    /// Every evaluation.
    pub evals: Vec<EvalRecord>,
    /// Wall-clock seconds of this call.
    pub seconds: f64,
}

/// Trains a student, alone (next-token cross-entropy) or from a teacher (any kd-losses
/// divergence), with AdamW, warmup + decay, gradient accumulation and clipping, periodic
/// evaluation, metrics and checkpoints.
///
/// The student must live on an autodiff device (`Device::flex().autodiff()`); the teacher is
/// moved to the matching plain device and runs without a graph. Both may differ in depth, width
/// and (with [`VocabAlignment::SliceToShared`]) vocabulary size.
///
/// Progress goes to an observer as [`TrainEvent`]s ([`Trainer::on_event`]); without one, each
/// event is logged as a plain line ([`crate::events::log_event`]).
///
/// # Example
/// See `tests/end_to_end.rs`: a few steps of distillation, checkpoint, exact resume.
#[derive(Debug)]
pub struct Trainer<S: LanguageModel, T: LanguageModel = S> {
    config: TrainConfig,
    student: S,
    teacher: Option<T>,
    base: Option<BaseModels<T>>,
    device: Device,
    optim: AdamW,
    /// AdamW (same settings) over the method's own parameters ([`Method::params`]).
    method_optim: AdamW,
    /// A checkpoint's method parameters waiting for [`Method::init_params`] to create them.
    pending_method_params: Option<std::collections::BTreeMap<String, burn::tensor::TensorData>>,
    schedule: LrSchedule,
    method: Box<dyn Method<S, T>>,
    rng: Rng,
    tokens: SpecialTokens,
    pt_data: Option<TokenDataset>,
    teacher_data: Option<TeacherDataset>,
    teacher_logits: Option<TeacherLogits>,
    /// Teachers beside the first (multi-teacher distillation), online or stored.
    extra_teachers: Vec<T>,
    extra_teacher_logits: Vec<TeacherLogits>,
    ensemble: TeacherEnsemble,
    state: TrainState,
    rouge: Option<RougeEval>,
    observer: Observer,
}

impl<S: LanguageModel, T: LanguageModel> Trainer<S, T> {
    /// A trainer for `student` on `device` (an autodiff device; the student is moved there).
    ///
    /// # Errors
    /// See [`TrainConfig::validate`].
    pub fn new(config: TrainConfig, student: S, device: &Device) -> Result<Self> {
        config.validate()?;
        let device = device.clone().autodiff();
        let mut student = make_trainable(student, &device);
        if !device.supports_dtype(config.dtype.float_dtype()) {
            return Err(TrainError::config(
                "dtype",
                "a precision this device computes in (e.g. f16 where bf16 has no arithmetic)",
                config.dtype,
            ));
        }
        if config.dtype.is_half() {
            student = student.computing_in(config.dtype.float_dtype()).ok_or_else(|| {
                TrainError::config(
                    "dtype",
                    "f32 for a model that does not implement LanguageModel::computing_in",
                    config.dtype,
                )
            })?;
        }
        let method = config.method.init::<S, T>(config.steps)?;
        if config.chunked_head_rows.is_some() && !method.supports_chunked_head() {
            return Err(TrainError::config(
                "chunked_head_rows",
                "a method that applies the output head chunk by chunk (kd)",
                config.method.name(),
            ));
        }
        let rng = Rng::new(config.seed ^ 0x524F_4C4C);
        let mut trainer = Self {
            optim: AdamW::new(config.optimizer.clone())?,
            method_optim: AdamW::new(config.optimizer.clone())?,
            pending_method_params: None,
            schedule: config.schedule(),
            state: TrainState {
                step: 0,
                optimizer_steps: 0,
                cursor: DataCursor::default(),
                seed: config.seed,
                rng: rng.state(),
                method: serde_json::Value::Null,
                non_finite_steps: 0,
                loss_scaler: (config.dtype == Precision::F16)
                    .then(|| LossScaler::new(&config.loss_scale)),
                tokens_seen: 0,
                schedule: Some(config.schedule()),
                history: Vec::new(),
                evals: Vec::new(),
            },
            method,
            rng,
            tokens: SpecialTokens::default(),
            pt_data: None,
            teacher_data: None,
            teacher_logits: None,
            extra_teachers: Vec::new(),
            extra_teacher_logits: Vec::new(),
            ensemble: TeacherEnsemble::default(),
            config,
            student,
            teacher: None,
            base: None,
            device,
            rouge: None,
            observer: Observer::logging(),
        };
        trainer.setup_method_params()?;
        Ok(trainer)
    }

    /// Lets the method create its own parameters ([`Method::init_params`]) and loads those of a
    /// restored checkpoint into them once they exist.
    fn setup_method_params(&mut self) -> Result<()> {
        let (student, teacher) = (&self.student, self.teacher.as_ref());
        let extra = &self.extra_teachers;
        self.method.init_params_with(student, teacher, extra, &self.device, self.config.seed)?;
        if let (Some(values), Some(params)) =
            (self.pending_method_params.as_ref(), self.method.params_mut())
        {
            params.load_values(values)?;
            self.pending_method_params = None;
        }
        Ok(())
    }

    /// Writes the method's own trainable parameters ([`Method::params`], e.g. the `feature`
    /// method's projections) into `dir` as `<Method::params_file>` (safetensors, `f32`, keyed by
    /// module path). Returns the file written, `None` when the method has no parameters.
    ///
    /// # Errors
    /// [`TrainError::Io`] or [`TrainError::Checkpoint`].
    pub fn save_method_params(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let Some(params) = self.method.params() else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join(self.method.params_file());
        crate::checkpoint::write_tensors(&path, &params.values())?;
        Ok(Some(path))
    }

    /// The method's own trainable parameters by module path (empty when it has none).
    pub fn method_param_values(
        &self,
    ) -> std::collections::BTreeMap<String, burn::tensor::TensorData> {
        self.method.params().map(|p| p.values()).unwrap_or_default()
    }

    /// Adds the teacher (moved to the student's plain device, no gradients, its parameters cast to
    /// [`Trainer::teacher_precision`]).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the method uses no teacher (e.g. `sft`);
    /// [`TrainError::VocabMismatch`] when the vocabularies differ under
    /// [`VocabAlignment::Strict`].
    pub fn with_teacher(self, teacher: T) -> Result<Self> {
        let plain = self.device.clone().inner();
        self.with_teacher_on(teacher, &plain)
    }

    /// Adds the teacher on its own device (another GPU, or the CPU while the student trains on
    /// a GPU): its inputs are sent there and its outputs brought back to the student's device.
    ///
    /// # Errors
    /// As [`Trainer::with_teacher`].
    pub fn with_teacher_on(mut self, teacher: T, device: &Device) -> Result<Self> {
        if self.method.teacher_use() == TeacherUse::None {
            return Err(TrainError::config(
                "method",
                "a method that uses a teacher (e.g. kd, gkd) when a teacher is given",
                self.method.name(),
            ));
        }
        let (vs, vt) = (self.student.vocab_size(), teacher.vocab_size());
        let own_tokens = self.method.teacher_reads_own_tokens();
        if vs != vt && self.config.vocab_alignment == VocabAlignment::Strict && !own_tokens {
            return Err(TrainError::VocabMismatch { student: vs, teacher: vt });
        }
        let precision = self.teacher_precision();
        if !device.supports_dtype(precision.float_dtype()) {
            return Err(TrainError::config(
                "teacher_dtype",
                "a precision the teacher's device computes in",
                precision,
            ));
        }
        self.teacher = Some(frozen(teacher, device, precision));
        self.setup_method_params()?;
        Ok(self)
    }

    /// Adds the frozen base models of Delta-KD (`kd` with the `delta_kd` divergence): the
    /// teacher's base (pre-fine-tuning) model and the student's base, on the student's plain
    /// device. See [`Trainer::with_base_models_on`].
    ///
    /// # Errors
    /// As [`Trainer::with_base_models_on`].
    pub fn with_base_models(self, base_teacher: T, base_student: T) -> Result<Self> {
        let plain = self.device.clone().inner();
        self.with_base_models_on(base_teacher, base_student, &plain)
    }

    /// Adds the frozen base models on `device` (usually the teacher's): no gradients, their
    /// parameters cast to [`Trainer::teacher_precision`]. Their logits form Delta-KD's target
    /// `z_sb + α·(z_t − z_tb)` with the fine-tuned teacher's `z_t`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the method uses no base models;
    /// [`TrainError::VocabMismatch`] when the base student's vocabulary differs from the
    /// student's or the base teacher's from the teacher's (when the teacher is already set).
    pub fn with_base_models_on(
        mut self,
        base_teacher: T,
        base_student: T,
        device: &Device,
    ) -> Result<Self> {
        if !self.method.uses_base_models() {
            return Err(TrainError::config(
                "base models",
                "a method that uses them (kd with the delta_kd divergence)",
                self.method.name(),
            ));
        }
        let (vs, vb) = (self.student.vocab_size(), base_student.vocab_size());
        if vs != vb {
            return Err(TrainError::VocabMismatch { student: vs, teacher: vb });
        }
        if let Some(t) = &self.teacher
            && t.vocab_size() != base_teacher.vocab_size()
        {
            return Err(TrainError::VocabMismatch {
                student: base_teacher.vocab_size(),
                teacher: t.vocab_size(),
            });
        }
        let precision = self.teacher_precision();
        let (teacher, student) =
            (frozen(base_teacher, device, precision), frozen(base_student, device, precision));
        self.base = Some(BaseModels { teacher, student });
        Ok(self)
    }

    /// Trains from a teacher's stored top-k distributions ([`crate::offline`]) instead of a
    /// teacher model: the method reads block `i`'s distributions beside the training set's
    /// block `i` ([`StepContext::teacher_logits`]). [`Trainer::fit`] checks the file against the
    /// training set (every block's tokens) before the first step.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the method does not read stored logits (only `kd` with
    /// `teacher_top_k` does), a teacher is already set, or the method's `k` exceeds the file's;
    /// [`TrainError::TeacherLogits`] when the file's vocabulary is not the student's.
    pub fn with_teacher_logits(mut self, logits: TeacherLogits) -> Result<Self> {
        let Some(k) = self.method.reads_teacher_logits() else {
            return Err(TrainError::config(
                "teacher_logits",
                "a method that reads stored teacher logits (kd with teacher_top_k)",
                self.method.name(),
            ));
        };
        if self.teacher.is_some() {
            return Err(TrainError::config(
                "teacher_logits",
                "either a teacher model or its stored logits, not both",
                "both",
            ));
        }
        let h = logits.header();
        if k > h.k {
            return Err(TrainError::InvalidConfig {
                name: "teacher_top_k.k",
                expected: "at most the k the teacher logits were stored with",
                got: format!("{k} (the file holds {})", h.k),
            });
        }
        if h.vocab_size != self.student.vocab_size() {
            return Err(TrainError::TeacherLogits {
                path: logits.files()[0].path().to_path_buf(),
                reason: format!(
                    "written for a vocabulary of {}, the student's has {}",
                    h.vocab_size,
                    self.student.vocab_size()
                ),
            });
        }
        self.teacher_logits = Some(logits);
        Ok(self)
    }

    /// Adds teachers beside the first (multi-teacher distillation), on the first teacher's
    /// device (the student's plain device unless [`Trainer::with_teacher_on`] chose another):
    /// frozen, in [`Trainer::teacher_precision`]. [`Trainer::with_ensemble`] says how they
    /// combine (default: the mean of the logits, equal weights). See [`crate::ensemble`].
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] without a first teacher ([`Trainer::with_teacher`]);
    /// [`TrainError::VocabMismatch`] when a vocabulary differs from the first teacher's.
    pub fn with_extra_teachers(mut self, extra: Vec<T>) -> Result<Self> {
        let Some(first) = &self.teacher else {
            return Err(TrainError::config(
                "teachers",
                "the first teacher (Trainer::with_teacher) before extra ones",
                "none",
            ));
        };
        let device =
            crate::model::model_device(first).unwrap_or_else(|| self.device.clone().inner());
        let precision = self.teacher_precision();
        for t in extra {
            if t.vocab_size() != first.vocab_size() {
                return Err(TrainError::VocabMismatch {
                    student: t.vocab_size(),
                    teacher: first.vocab_size(),
                });
            }
            self.extra_teachers.push(frozen(t, &device, precision));
        }
        // Methods with parameters per teacher make those of the new teachers.
        self.setup_method_params()?;
        Ok(self)
    }

    /// Adds stored teachers beside the first stored one ([`Trainer::with_teacher_logits`]):
    /// each is checked against the training set like the first, and they combine at the
    /// probability level ([`crate::ensemble::average_sparse`]).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] without a first stored teacher, or when a file's `k`
    /// differs from the first's.
    pub fn with_extra_teacher_logits(mut self, extra: Vec<TeacherLogits>) -> Result<Self> {
        let Some(first) = &self.teacher_logits else {
            return Err(TrainError::config(
                "teacher_logits",
                "the first stored teacher (Trainer::with_teacher_logits) before extra ones",
                "none",
            ));
        };
        for t in extra {
            if t.header().k != first.header().k
                || t.header().vocab_size != first.header().vocab_size
            {
                return Err(TrainError::InvalidConfig {
                    name: "teacher_logits",
                    expected: "stored teachers with one k and one vocabulary",
                    got: format!(
                        "k = {} / vocabulary {} beside k = {} / vocabulary {}",
                        t.header().k,
                        t.header().vocab_size,
                        first.header().k,
                        first.header().vocab_size
                    ),
                });
            }
            self.extra_teacher_logits.push(t);
        }
        Ok(self)
    }

    /// How several teachers combine (weights, logit or probability level, routing); checked
    /// against the teachers and the training set by [`Trainer::fit`].
    pub fn with_ensemble(mut self, ensemble: TeacherEnsemble) -> Self {
        self.ensemble = ensemble;
        self
    }

    /// The stored teacher logits, when training from them.
    pub fn teacher_logits(&self) -> Option<&TeacherLogits> {
        self.teacher_logits.as_ref()
    }

    /// The precision the teacher runs in (`teacher_dtype`, else `dtype`).
    pub fn teacher_precision(&self) -> Precision {
        self.config.teacher_dtype.unwrap_or(self.config.dtype)
    }

    /// Adds held-out instruction prompts: every evaluation then also reports the mean ROUGE-L of
    /// the student's greedy answers to the first `eval_rouge_prompts` of them.
    pub fn with_rouge_eval(mut self, prompts: RougeEval) -> Self {
        self.rouge = Some(prompts);
        self
    }

    /// Sets the EOS ids that end sampled responses and the padding id (methods that sample:
    /// `gkd`, `minillm`, `seqkd`). Default: no EOS (responses run to their length cap), pad `0`.
    pub fn with_special_tokens(mut self, eos_ids: Vec<u32>, pad_id: u32) -> Self {
        self.tokens = SpecialTokens { eos_ids, pad_id };
        self
    }

    /// Sends every [`TrainEvent`] (steps, evaluations, checkpoints, resumes, skipped steps) to
    /// `observer` instead of logging it: a caller that renders progress itself (a progress bar,
    /// an ETA) sets one; call [`crate::events::log_event`] in it to keep the default lines.
    ///
    /// # Example
    /// ```
    /// # use burn::tensor::Device;
    /// # use kd_models::{CausalLm, Gpt2Config, ModelConfig};
    /// # use kd_train::data::{TokenDataset, pack_tokens};
    /// use kd_train::events::TrainEvent;
    /// use kd_train::{TrainConfig, Trainer};
    /// use std::sync::mpsc;
    ///
    /// # let device = Device::flex().autodiff();
    /// # let config = ModelConfig::Gpt2(Gpt2Config {
    /// #     vocab_size: 16, n_positions: 8, n_embd: 8, n_layer: 1, n_head: 2, ..Default::default()
    /// # });
    /// # let student = CausalLm::init(&config, &device)?;
    /// # let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % 16) as u32).collect();
    /// # let data = TokenDataset::new("train", pack_tokens(&tokens, 8))?;
    /// let (send, steps) = mpsc::channel();
    /// let config = TrainConfig { steps: 2, batch_size: 2, ..Default::default() };
    /// let trainer = Trainer::<CausalLm>::new(config, student, &device)?;
    /// let mut trainer = trainer.on_event(move |e| {
    ///     if let TrainEvent::Step { step, total_steps, .. } = e {
    ///         send.send((*step, *total_steps)).unwrap();
    ///     }
    /// });
    /// trainer.fit(&data, None)?;
    /// assert_eq!(steps.try_iter().collect::<Vec<_>>(), [(1, 2), (2, 2)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_event(mut self, observer: impl FnMut(&TrainEvent) + Send + 'static) -> Self {
        self.observer = Observer::calling(observer);
        self
    }

    /// Adds the plain-text corpus of language-modelling terms (MiniLLM's PT loss).
    pub fn with_pt_data(mut self, data: TokenDataset) -> Self {
        self.pt_data = Some(data);
        self
    }

    /// Adds the teacher's own tokenization of the training set (block `i` beside the student's
    /// block `i` of the set given to [`Trainer::fit`]), for a method whose teacher has another
    /// tokenizer (`cross_tokenizer`; [`crate::methods::cross_tokenizer::cross_tokenizer_data`]
    /// makes both sides).
    pub fn with_teacher_data(mut self, data: TeacherDataset) -> Self {
        self.teacher_data = Some(data);
        self
    }

    /// The method's id.
    pub fn method_name(&self) -> &'static str {
        self.method.name()
    }

    /// Whether the method needs a teacher ([`Trainer::with_teacher`]).
    pub fn uses_teacher(&self) -> bool {
        self.method.teacher_use() == TeacherUse::Required
    }

    /// The student as it is now (on the autodiff device).
    pub fn student(&self) -> &S {
        &self.student
    }

    /// The student, consuming the trainer.
    pub fn into_student(self) -> S {
        self.student
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps done so far.
    pub fn history(&self) -> &[StepRecord] {
        &self.state.history
    }

    /// Evaluations done so far.
    pub fn evals(&self) -> &[EvalRecord] {
        &self.state.evals
    }

    /// The current state as a checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        let (optimizer, optimizer_steps) = self.optim.state();
        let (method_params, method_optimizer) = match self.method.params() {
            Some(p) => (p.values(), self.method_optim.state().0),
            None => Default::default(),
        };
        Checkpoint {
            model: param_values(&self.student),
            optimizer,
            method_params,
            method_optimizer,
            state: TrainState {
                optimizer_steps,
                rng: self.rng.state(),
                method: self.method.state().unwrap_or(serde_json::Value::Null),
                ..self.state.clone()
            },
        }
    }

    /// Restores a checkpoint: student weights, optimizer moments, schedule, data position, TAID
    /// state and history. The run then continues exactly as if it had not stopped.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when the checkpoint does not fit the student.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        if let Some(saved) = checkpoint.state.schedule
            && saved != self.schedule
        {
            if !self.config.allow_schedule_change {
                return Err(TrainError::ScheduleMismatch {
                    saved: saved.describe(),
                    requested: self.schedule.describe(),
                });
            }
            log::warn!(
                "resuming with a changed learning-rate schedule: checkpoint {}, now {}",
                saved.describe(),
                self.schedule.describe()
            );
        }
        let student = load_param_values(self.student.clone(), &checkpoint.model)
            .map_err(|errs| TrainError::checkpoint("model", errs.join("; ")))?;
        self.optim.restore(
            &checkpoint.optimizer,
            checkpoint.state.optimizer_steps,
            &self.device,
        )?;
        self.method_optim.restore(
            &checkpoint.method_optimizer,
            checkpoint.state.optimizer_steps,
            &self.device,
        )?;
        self.method.restore(&checkpoint.state.method)?;
        self.pending_method_params =
            (!checkpoint.method_params.is_empty()).then(|| checkpoint.method_params.clone());
        if self.pending_method_params.is_none() && self.method.params().is_some() {
            return Err(TrainError::checkpoint(
                crate::checkpoint::METHOD_PARAMS_FILE,
                format!("missing: method `{}` trains parameters of its own", self.method.name()),
            ));
        }
        self.setup_method_params()?;
        self.rng = Rng::new(checkpoint.state.rng);
        self.student = student;
        self.state = checkpoint.state.clone();
        self.state.schedule = Some(self.schedule);
        // A run resumed in another precision starts (or drops) its loss scaling.
        match self.config.dtype {
            Precision::F16 => {
                let fresh = || LossScaler::new(&self.config.loss_scale);
                self.state.loss_scaler = Some(self.state.loss_scaler.take().unwrap_or_else(fresh));
            }
            _ => self.state.loss_scaler = None,
        }
        if let Some(dir) = &self.config.output_dir {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
            let lines: Vec<MetricsLine> = merged_lines(&self.state.history, &self.state.evals);
            rewrite_jsonl(&dir.join(METRICS_FILE), &lines)?;
        }
        Ok(())
    }

    /// Loads and restores the checkpoint in `dir`.
    ///
    /// # Errors
    /// See [`Checkpoint::load`] and [`Trainer::restore`].
    pub fn resume_from(&mut self, dir: &Path) -> Result<()> {
        let ck = Checkpoint::load(dir)?;
        self.resume_with(dir, &ck)
    }

    /// Restores the newest checkpoint in `dir` that loads (see [`latest_checkpoint`], which
    /// only finds it): damaged ones are skipped with a warning, and each file is read and
    /// checked once. Returns the checkpoint used, `None` when `dir` holds none.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] when checkpoints exist but none loads; [`Trainer::restore`]'s
    /// errors for the one that loaded (a schedule or model that does not fit is not skipped).
    pub fn resume_latest(&mut self, dir: &Path) -> Result<Option<PathBuf>> {
        let mut skipped = Vec::new();
        for (_, path) in list_checkpoints(dir)?.into_iter().rev() {
            match Checkpoint::load(&path) {
                Ok(ck) => {
                    self.resume_with(&path, &ck)?;
                    return Ok(Some(path));
                }
                Err(e) => skip_checkpoint(&path, e, &mut skipped),
            }
        }
        none_usable(dir, skipped)
    }

    /// [`Trainer::restore`] of the checkpoint loaded from `dir`, errors naming `dir`.
    fn resume_with(&mut self, dir: &Path, ck: &Checkpoint) -> Result<()> {
        self.restore(ck).map_err(|e| match e {
            TrainError::Checkpoint { reason, .. } => TrainError::checkpoint(dir, reason),
            other => other,
        })?;
        let event = TrainEvent::Resumed { step: self.state.step, path: dir.to_path_buf() };
        self.observer.emit(&event);
        Ok(())
    }

    /// One optimizer step (all its micro-batches).
    fn train_step(&mut self, data: &TokenDataset, order: &mut BatchOrder) -> Result<StepRecord> {
        let start = Instant::now();
        let lr = self.schedule.lr(self.state.step);
        let accum = self.config.grad_accum;
        let mut extra: BTreeMap<String, f64> = BTreeMap::new();
        for (k, v) in self.method.step_metrics() {
            extra.insert(k.to_string(), v);
        }
        let mut acc = GradAccumulator::new();
        let mut method_acc = GradAccumulator::new();
        let mut loss_sum = 0.0;
        let mut tokens = 0u64;
        let mut sums: BTreeMap<&'static str, (f64, usize)> = BTreeMap::new();
        for _ in 0..accum {
            let mut cx = StepContext {
                student: &self.student,
                teacher: self.teacher.as_ref(),
                device: &self.device,
                data,
                order,
                batch_size: self.config.batch_size,
                rng: &mut self.rng,
                vocab_alignment: self.config.vocab_alignment,
                tokens: &self.tokens,
                pt_data: self.pt_data.as_ref(),
                teacher_data: self.teacher_data.as_ref(),
                teacher_logits: self.teacher_logits.as_ref(),
                extra_teachers: &self.extra_teachers,
                extra_teacher_logits: &self.extra_teacher_logits,
                ensemble: &self.ensemble,
                last_indices: Vec::new(),
                seed: self.config.seed,
                chunked_head_rows: self.config.chunked_head_rows,
                step: self.state.step,
                base: self.base.as_ref(),
            };
            let out = self.method.micro_batch(&mut cx)?;
            for (k, v) in out.metrics {
                let e = sums.entry(k).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
            let loss = out.loss.cast(FloatDType::F32).div_scalar(accum as f64);
            loss_sum += f64::from(loss.clone().inner().into_scalar::<f32>());
            // f16: the loss scaled by S so small gradients survive the half-precision backward.
            let grads = match &self.state.loss_scaler {
                Some(scaler) => loss.mul_scalar(scaler.scale).backward(),
                None => loss.backward(),
            };
            acc.add(&self.student, &grads);
            if let Some(p) = self.method.params() {
                p.accumulate(&mut method_acc, &grads);
            }
            tokens += out.tokens;
        }
        for (k, (sum, n)) in sums {
            extra.insert(k.to_string(), sum / n as f64);
        }
        let skip = self.config.on_non_finite == NonFinitePolicy::Skip;
        let step = self.state.step + 1;
        let bad_loss = !loss_sum.is_finite();
        if bad_loss && !skip {
            return Err(TrainError::NonFiniteLoss { step, loss: loss_sum });
        }
        let loss_scale = self.state.loss_scaler.as_ref().map_or(1.0, |s| s.scale);
        // One global norm over the student's and the method's parameters.
        let norm = || match method_acc.is_empty() {
            true => acc.global_norm(),
            false => (acc.global_norm().powi(2) + method_acc.global_norm().powi(2)).sqrt(),
        };
        let grad_norm = if bad_loss { f64::NAN } else { norm() / loss_scale };
        let overflowed = !grad_norm.is_finite();
        if let Some(scaler) = self.state.loss_scaler.as_mut()
            && !bad_loss
        {
            extra.insert("loss_scale".into(), loss_scale);
            extra.insert("overflow".into(), if overflowed { 1.0 } else { 0.0 });
            scaler.update(overflowed, &self.config.loss_scale);
        } else if overflowed {
            if !skip {
                return Err(TrainError::NonFiniteGradient { step });
            }
            self.observer.emit(&TrainEvent::NonFinite { step });
            extra.insert("non_finite".into(), 1.0);
            self.state.non_finite_steps += 1;
        }
        if !overflowed {
            // Unscale and clip in one factor.
            let scale = clip_factor(grad_norm, self.config.max_grad_norm) / loss_scale;
            self.student = self.optim.step(self.student.clone(), &acc, lr, scale);
            if let Some(p) = self.method.params_mut() {
                p.update(&mut self.method_optim, &method_acc, lr, scale);
            }
        }
        self.state.step += 1;
        if !overflowed {
            self.method.end_step(self.state.step, loss_sum)?;
        }
        self.state.tokens_seen += tokens;
        self.state.cursor = order.cursor();
        let secs = start.elapsed().as_secs_f64();
        Ok(StepRecord {
            step: self.state.step,
            // A skipped step (f16 overflow, or a non-finite step under `skip`) records its norm
            // as 0, and its loss as 0 when that was not finite (metrics are JSON: no NaN).
            loss: if bad_loss { 0.0 } else { loss_sum },
            lr,
            grad_norm: if overflowed { 0.0 } else { grad_norm },
            tokens,
            tokens_per_s: if secs > 0.0 { tokens as f64 / secs } else { 0.0 },
            extra,
        })
    }

    /// Evaluates the student on `data` now: held-out loss and perplexity, and ROUGE-L of greedy
    /// answers when the trainer has a [`RougeEval`] (prompt and answer within `data`'s block
    /// length).
    ///
    /// # Errors
    /// When generating or decoding the answers fails.
    pub fn evaluate(&self, data: &TokenDataset) -> Result<EvalRecord> {
        let plain = self.device.clone().inner();
        let model = self.student.valid();
        let batch = self.config.batch_size;
        let mut r = evaluate(&model, data, batch, self.config.eval_batches, &plain);
        r.step = self.state.step;
        if let Some(rouge) = &self.rouge {
            let (n, max_new) = (self.config.eval_rouge_prompts, self.config.eval_max_new_tokens);
            if let Some(g) = rouge.scores(&model, n, max_new, data.seq_len(), batch, &plain)? {
                r.rouge_l = Some(g.rouge_l);
                r.exact_match = self.config.eval_exact_match.then_some(g.exact_match);
            }
        }
        Ok(r)
    }

    /// Trains until `config.steps`, from wherever the trainer stands (0, or a restored step).
    ///
    /// Before the first step (when `eval_every > 0`), every `eval_every` steps and after the last
    /// one it evaluates on `eval` ([`Trainer::evaluate`]: loss, perplexity and, with a
    /// [`RougeEval`], ROUGE-L); every `checkpoint_every` steps and after the last one it writes
    /// `checkpoint-<step>` into `output_dir`; every step and evaluation goes to `metrics.jsonl`.
    ///
    /// # Errors
    /// Loss errors (e.g. [`TrainError::VocabMismatch`]), [`TrainError::NonFiniteLoss`], or I/O
    /// errors writing metrics and checkpoints.
    pub fn fit(
        &mut self,
        train: &TokenDataset,
        eval: Option<&TokenDataset>,
    ) -> Result<TrainReport> {
        let start = Instant::now();
        if self.method.teacher_use() == TeacherUse::Required
            && self.teacher.is_none()
            && self.teacher_logits.is_none()
        {
            return Err(TrainError::config(
                "teacher",
                "a teacher (Trainer::with_teacher) or its stored logits \
                 (Trainer::with_teacher_logits) for this method",
                self.method.name(),
            ));
        }
        if let Some(logits) = &self.teacher_logits {
            logits.check_matches(train, self.student.vocab_size())?;
        }
        for logits in &self.extra_teacher_logits {
            logits.check_matches(train, self.student.vocab_size())?;
        }
        let teachers = 1 + self.extra_teachers.len() + self.extra_teacher_logits.len();
        if teachers > 1 && !self.method.supports_teacher_ensemble() {
            return Err(TrainError::config(
                "teachers",
                "one teacher for this method (several: kd with a dense divergence or teacher_top_k, or feature)",
                format!("{teachers} teachers for {}", self.method.name()),
            ));
        }
        if teachers > 1 || self.ensemble != TeacherEnsemble::default() {
            self.ensemble.validate(teachers, train.len())?;
        }
        if self.method.uses_base_models() && self.base.is_none() {
            return Err(TrainError::config(
                "base models",
                "the base models (Trainer::with_base_models): base teacher and base student for \
                 delta_kd, the baseline as base teacher for whp",
                "none",
            ));
        }
        let own_tokens = self.method.teacher_reads_own_tokens();
        let teacher_max = self.teacher.as_ref().and_then(LanguageModel::max_positions);
        if self.method.reads_teacher_data() {
            // The teacher's own tokens, or the base teacher's translation (whp's anchors).
            let reader_max = match (&self.base, own_tokens) {
                (Some(b), false) => b.teacher.max_positions(),
                _ => teacher_max,
            };
            self.check_teacher_data(train, reader_max)?;
        }
        for (what, data) in [("train", Some(train)), ("eval", eval)] {
            let Some(data) = data else { continue };
            let base = self.base.as_ref();
            let limits = [
                ("student", self.student.max_positions()),
                ("teacher", if own_tokens { None } else { teacher_max }),
                ("base teacher", base.and_then(|b| b.teacher.max_positions())),
                ("base student", base.and_then(|b| b.student.max_positions())),
            ];
            for (model, max) in limits {
                if let Some(max) = max
                    && data.seq_len() > max
                {
                    let seq_len = data.seq_len();
                    return Err(TrainError::SequenceTooLong { what, seq_len, model, max });
                }
            }
        }
        self.setup_method_params()?;
        if self.pending_method_params.is_some() {
            return Err(TrainError::checkpoint(
                crate::checkpoint::METHOD_PARAMS_FILE,
                format!("method `{}` has no parameters of its own to restore", self.method.name()),
            ));
        }
        let plain = self.device.clone().inner();
        let prepared =
            self.method.prepare_data(self.teacher.as_ref(), train, &self.tokens, &plain)?;
        let train = prepared.as_ref().unwrap_or(train);
        let total = self.config.steps;
        let mut order = BatchOrder::new(train.len(), self.config.seed, self.state.cursor);
        let metrics = match &self.config.output_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
                let p = dir.join(METRICS_FILE);
                if self.state.step == 0 {
                    rewrite_jsonl(&p, &[])?;
                }
                Some(p)
            }
            None => None,
        };
        let first = self.state.step;
        self.observer.emit(&TrainEvent::Started { first_step: first, total_steps: total });
        if let (0, true, Some(data)) = (self.state.step, self.config.eval_every > 0, eval) {
            // The starting point of the held-out curve.
            let e = self.evaluate(data)?;
            self.observer.emit(&TrainEvent::Eval { record: e.clone() });
            if let Some(p) = &metrics {
                append_jsonl(p, &[MetricsLine::Eval(e.clone())])?;
            }
            self.state.evals.push(e);
        }
        while self.state.step < total {
            let rec = self.train_step(train, &mut order)?;
            let step = rec.step;
            let mut lines = vec![MetricsLine::Train(rec.clone())];
            let last = step == total;
            self.observer.emit(&TrainEvent::Step {
                step,
                total_steps: total,
                first_step: first,
                loss: rec.loss,
                lr: rec.lr,
                grad_norm: rec.grad_norm,
                tokens: rec.tokens,
                tokens_per_sec: rec.tokens_per_s,
                elapsed: start.elapsed(),
                periodic: self.config.log_every > 0 && (step % self.config.log_every == 0 || last),
            });
            self.state.history.push(rec);
            let eval_now =
                last || (self.config.eval_every > 0 && step % self.config.eval_every == 0);
            if let (true, Some(data)) = (eval_now, eval) {
                let e = self.evaluate(data)?;
                self.observer.emit(&TrainEvent::Eval { record: e.clone() });
                lines.push(MetricsLine::Eval(e.clone()));
                self.state.evals.push(e);
            }
            if let Some(p) = &metrics {
                append_jsonl(p, &lines)?;
            }
            let ckpt_now = last
                || (self.config.checkpoint_every > 0 && step % self.config.checkpoint_every == 0);
            if let (true, Some(dir)) = (ckpt_now, self.config.output_dir.clone()) {
                let path = self.save_checkpoint(&dir)?;
                self.observer.emit(&TrainEvent::Checkpoint { step, path });
            }
        }
        let steps = self.state.step;
        self.observer.emit(&TrainEvent::Finished { steps, elapsed: start.elapsed() });
        Ok(TrainReport {
            history: self.state.history.clone(),
            evals: self.state.evals.clone(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Checks the teacher's own tokenization of `train` ([`Trainer::with_teacher_data`]): given,
    /// one block per training block, within the teacher's positions.
    fn check_teacher_data(&self, train: &TokenDataset, teacher_max: Option<usize>) -> Result<()> {
        let Some(td) = &self.teacher_data else {
            return Err(TrainError::config(
                "teacher_data",
                "the teacher's own tokenization of the training set (Trainer::with_teacher_data)",
                self.method.name(),
            ));
        };
        let views = self.method.teacher_data_views();
        if td.len() != views * train.len() {
            return Err(TrainError::config(
                "teacher_data",
                if views == 1 {
                    "one teacher block per training block"
                } else {
                    "one view per replacement name and training block (block i·K + k)"
                },
                format!("{} teacher blocks for {} training blocks", td.len(), train.len()),
            ));
        }
        if let Some(max) = teacher_max
            && td.seq_len() > max
        {
            let seq_len = td.seq_len();
            return Err(TrainError::SequenceTooLong {
                what: "train",
                seq_len,
                model: "teacher",
                max,
            });
        }
        Ok(())
    }

    /// Writes `checkpoint-<step>` into `dir` (atomically and durably, [`Checkpoint::save`]),
    /// then prunes the oldest ones beyond `keep_checkpoints` and removes the temporary
    /// directories a killed run may have left (`checkpoint-<step>.tmp`, `.old`).
    ///
    /// Only checkpoints up to this step count: ones after it (left behind when a resume fell back
    /// past a damaged checkpoint) stay until this run reaches and replaces them. With the default
    /// `keep_checkpoints = 2` there is always a previous checkpoint to fall back to.
    ///
    /// # Errors
    /// See [`Checkpoint::save`].
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        let step = self.state.step;
        let path = dir.join(checkpoint_name(step));
        self.checkpoint().save(&path)?;
        let mut all: Vec<_> =
            list_checkpoints(dir)?.into_iter().filter(|(s, _)| *s <= step).collect();
        let keep = self.config.keep_checkpoints.max(1);
        while all.len() > keep {
            let (_, old) = all.remove(0);
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
            let entry = entry.map_err(|e| TrainError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let stale = name.strip_prefix("checkpoint-").is_some_and(|rest| {
                rest.strip_suffix(".tmp").or_else(|| rest.strip_suffix(".old")).is_some()
            });
            if stale && entry.path().is_dir() {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
        Ok(path)
    }
}

/// A model that only serves targets: on `device`'s plain form, without gradients, its
/// parameters cast to `precision` when that is half (the teacher, the base models).
fn frozen<M: burn::module::Module>(model: M, device: &Device, precision: Precision) -> M {
    let model = model.valid().to_device(&device.clone().inner()).no_grad();
    if precision.is_half() { cast_params(model, precision.float_dtype()) } else { model }
}

/// Directory name of the checkpoint after `step`.
pub fn checkpoint_name(step: u64) -> String {
    format!("checkpoint-{step:06}")
}

/// Checkpoints in `dir`, oldest first (complete or not: see [`latest_checkpoint`]).
///
/// # Errors
/// [`TrainError::Io`] when `dir` cannot be listed.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let entry = entry.map_err(|e| TrainError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<u64>().ok())
            && entry.path().is_dir()
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The most recent good checkpoint in `dir`, if any.
///
/// Each checkpoint, newest first, is checked with [`Checkpoint::verify`] (every file against
/// its checksum, `state.json` parsed); a truncated, damaged or incomplete one is skipped with a
/// `log::warn!` naming it and why, and the previous one is tried. A half-written checkpoint
/// never appears here (it is `checkpoint-<step>.tmp` until complete).
///
/// # Errors
/// [`TrainError::Io`] when `dir` cannot be listed; [`TrainError::Checkpoint`] naming `dir` and
/// every reason when there are checkpoints but none is usable (rather than silently starting
/// over).
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    let mut skipped = Vec::new();
    for (_, path) in list_checkpoints(dir)?.into_iter().rev() {
        match Checkpoint::verify(&path) {
            Ok(()) => return Ok(Some(path)),
            Err(e) => skip_checkpoint(&path, e, &mut skipped),
        }
    }
    none_usable(dir, skipped)
}

/// Logs a checkpoint that [`latest_checkpoint`] / [`Trainer::resume_latest`] pass over.
fn skip_checkpoint(path: &Path, e: TrainError, skipped: &mut Vec<String>) {
    log::warn!("skipping checkpoint {}: {e}", path.display());
    skipped.push(e.to_string());
}

/// `None` when nothing was skipped (no checkpoint at all), else the error listing why each was.
fn none_usable(dir: &Path, skipped: Vec<String>) -> Result<Option<PathBuf>> {
    if skipped.is_empty() {
        return Ok(None);
    }
    Err(TrainError::checkpoint(
        dir,
        format!("no usable checkpoint ({}); delete them to start over", skipped.join("; ")),
    ))
}

fn merged_lines(history: &[StepRecord], evals: &[EvalRecord]) -> Vec<MetricsLine> {
    let mut lines = Vec::with_capacity(history.len() + evals.len());
    let mut e = evals.iter().peekable();
    for h in history {
        while let Some(ev) = e.next_if(|ev| ev.step < h.step) {
            lines.push(MetricsLine::Eval(ev.clone()));
        }
        lines.push(MetricsLine::Train(h.clone()));
        while let Some(ev) = e.next_if(|ev| ev.step == h.step) {
            lines.push(MetricsLine::Eval(ev.clone()));
        }
    }
    lines.extend(e.cloned().map(MetricsLine::Eval));
    lines
}

/// `loss 2.1234  ppl 8.362` and, when measured, `  rouge-L 0.1875`.
pub fn eval_summary(e: &EvalRecord) -> String {
    let mut s = format!("loss {:.4}  ppl {:.3}", e.loss, e.perplexity);
    if let Some(r) = e.rouge_l {
        s.push_str(&format!("  rouge-L {r:.4}"));
    }
    if let Some(x) = e.exact_match {
        s.push_str(&format!("  exact-match {x:.4}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_grad_norm_switches_off_with_off_or_false_and_round_trips() {
        let parse = |text: &str| serde_json::from_str::<TrainConfig>(text);
        assert_eq!(parse(r#"{"max_grad_norm": "off"}"#).unwrap().max_grad_norm, None);
        assert_eq!(parse(r#"{"max_grad_norm": false}"#).unwrap().max_grad_norm, None);
        assert_eq!(parse(r#"{"max_grad_norm": 0.5}"#).unwrap().max_grad_norm, Some(0.5));
        assert_eq!(parse("{}").unwrap().max_grad_norm, Some(1.0));
        for bad in [r#""of""#, "true", "[1]"] {
            let err = parse(&format!(r#"{{"max_grad_norm": {bad}}}"#)).unwrap_err().to_string();
            assert!(err.contains("\"off\""), "{bad}: {err}");
        }
        let off = TrainConfig { max_grad_norm: None, ..TrainConfig::default() };
        let text = serde_json::to_string(&off).unwrap();
        assert!(text.contains(r#""max_grad_norm":"off""#), "{text}");
        assert_eq!(parse(&text).unwrap(), off);
    }

    #[test]
    fn eval_summaries() {
        let mut e = EvalRecord {
            step: 3,
            loss: 2.0,
            perplexity: 2f64.exp(),
            tokens: 9,
            rouge_l: None,
            exact_match: None,
        };
        assert_eq!(eval_summary(&e), "loss 2.0000  ppl 7.389");
        e.rouge_l = Some(0.1875);
        assert_eq!(eval_summary(&e), "loss 2.0000  ppl 7.389  rouge-L 0.1875");
    }

    #[test]
    fn fit_and_resume_report_their_events_in_order() {
        use crate::data::pack_tokens;
        use kd_models::{CausalLm, Gpt2Config, ModelConfig};
        let device = Device::flex().autodiff();
        let model = ModelConfig::Gpt2(Gpt2Config {
            vocab_size: 16,
            n_positions: 8,
            n_embd: 8,
            n_layer: 1,
            n_head: 2,
            ..Default::default()
        });
        let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % 16) as u32).collect();
        let data = TokenDataset::new("train", pack_tokens(&tokens, 8)).unwrap();
        let dir = std::env::temp_dir().join(format!("kd-train-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = TrainConfig {
            steps: 3,
            batch_size: 2,
            eval_every: 2,
            eval_batches: Some(1),
            log_every: 2,
            checkpoint_every: 2,
            output_dir: Some(dir.clone()),
            ..Default::default()
        };
        let name = |e: TrainEvent| match e {
            TrainEvent::Started { first_step, total_steps } => {
                format!("start {first_step}/{total_steps}")
            }
            TrainEvent::Step { step, first_step, periodic, .. } => {
                format!("step {step} from {first_step}{}", if periodic { " *" } else { "" })
            }
            TrainEvent::Eval { record } => format!("eval {}", record.step),
            TrainEvent::Checkpoint { step, path } => {
                assert!(path.ends_with(checkpoint_name(step)), "{}", path.display());
                format!("checkpoint {step}")
            }
            TrainEvent::Resumed { step, .. } => format!("resumed {step}"),
            TrainEvent::Finished { steps, .. } => format!("finished {steps}"),
            other => format!("{other:?}"),
        };
        let run = |config: TrainConfig, resume: bool| {
            let (send, events) = std::sync::mpsc::channel();
            let student = CausalLm::init(&model, &device).unwrap();
            let mut t = Trainer::<CausalLm>::new(config, student, &device)
                .unwrap()
                .on_event(move |e| send.send(e.clone()).unwrap());
            if resume {
                t.resume_from(&latest_checkpoint(&dir).unwrap().unwrap()).unwrap();
            }
            t.fit(&data, Some(&data)).unwrap();
            drop(t);
            events.into_iter().map(name).collect::<Vec<_>>()
        };
        assert_eq!(
            run(config.clone(), false),
            [
                "start 0/3",
                "eval 0",
                "step 1 from 0",
                "step 2 from 0 *",
                "eval 2",
                "checkpoint 2",
                "step 3 from 0 *",
                "eval 3",
                "checkpoint 3",
                "finished 3"
            ]
        );
        assert_eq!(
            run(TrainConfig { steps: 4, allow_schedule_change: true, ..config }, true),
            ["resumed 3", "start 3/4", "step 4 from 3 *", "eval 4", "checkpoint 4", "finished 4"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_from_toml_like_json_and_validation() {
        let c: TrainConfig = serde_json::from_str(
            r#"{"steps": 5, "method": {"name": "kd", "divergence": {"loss": "reverse_kl", "temperature": 2.0}}}"#,
        )
        .unwrap();
        assert_eq!(c.steps, 5);
        assert!(c.validate().is_ok());
        let bad = TrainConfig { grad_accum: 0, ..Default::default() };
        assert!(matches!(
            bad.validate(),
            Err(TrainError::InvalidConfig { name: "grad_accum", .. })
        ));
        assert!(serde_json::from_str::<TrainConfig>(r#"{"stepz": 5}"#).is_err());
        let c: TrainConfig =
            serde_json::from_str(r#"{"eval_rouge_prompts": 4, "eval_max_new_tokens": 16}"#)
                .unwrap();
        assert_eq!((c.eval_rouge_prompts, c.eval_max_new_tokens), (4, 16));
        let no_tokens = TrainConfig { eval_max_new_tokens: 0, ..Default::default() };
        assert!(matches!(
            no_tokens.validate(),
            Err(TrainError::InvalidConfig { name: "eval_max_new_tokens", .. })
        ));
        let off =
            TrainConfig { eval_rouge_prompts: 0, eval_max_new_tokens: 0, ..Default::default() };
        assert!(off.validate().is_ok());
    }
}
