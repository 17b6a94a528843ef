//! The one error type of kd-train.

use std::path::PathBuf;

/// Result alias used throughout kd-train.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Everything that can go wrong when preparing data, training, evaluating or checkpointing.
///
/// Each variant names what was expected and what came; its docs say how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// Student and teacher vocabularies differ and the alignment is
    /// [`VocabAlignment::Strict`](crate::VocabAlignment::Strict). If one vocabulary is the other
    /// plus padding rows (e.g. 152064 vs 151936), set `vocab_alignment = "slice_to_shared"`;
    /// otherwise the two models do not share a tokenizer and cannot be distilled token by token.
    #[error(
        "student vocabulary {student} != teacher vocabulary {teacher}: set vocab_alignment = \"slice_to_shared\" if one is the other plus padding"
    )]
    VocabMismatch {
        /// Student vocabulary size (last logits dimension).
        student: usize,
        /// Teacher vocabulary size.
        teacher: usize,
    },
    /// A training setting is out of range. Fix the config key `name`.
    #[error("invalid config `{name}`: expected {expected}, got {got}")]
    InvalidConfig {
        /// Config key.
        name: &'static str,
        /// Valid range, in words.
        expected: &'static str,
        /// The value that was passed.
        got: String,
    },
    /// A dataset has no usable example (too short for one block, or empty).
    #[error("dataset `{what}` is empty: {reason}")]
    EmptyDataset {
        /// Which dataset (`train`, `eval`, a path).
        what: String,
        /// Why nothing was left.
        reason: String,
    },
    /// The training loss became NaN or infinite. Lower the learning rate, enable
    /// `max_grad_norm`, or check the data for empty batches.
    #[error("non-finite training loss {loss} at step {step}")]
    NonFiniteLoss {
        /// The step that produced it (1-based).
        step: u64,
        /// The loss value.
        loss: f64,
    },
    /// The gradients became NaN or infinite while the loss stayed finite (an overflow inside the
    /// backward pass). Lower the learning rate, or train in `f32`/`bf16`; `f16` training skips
    /// such steps and lowers its loss scale instead of stopping.
    #[error("non-finite gradients at step {step} (the loss was finite)")]
    NonFiniteGradient {
        /// The step that produced them (1-based).
        step: u64,
    },
    /// A resumed run asks for another learning-rate schedule than its checkpoint was trained
    /// under (e.g. `--steps` changed, which moves the cosine horizon). Resume with the original
    /// settings, or allow the change explicitly (`allow_schedule_change = true`, `kd train
    /// --allow-schedule-change`).
    #[error(
        "the checkpoint was trained with the schedule {saved}, this run asks for {requested}: resume with the same settings or pass --allow-schedule-change"
    )]
    ScheduleMismatch {
        /// The checkpoint's schedule, in words.
        saved: String,
        /// The requested schedule, in words.
        requested: String,
    },
    /// The data's blocks are longer than a model's positions. Lower `data.seq_len`, or use a
    /// model with more positions.
    #[error(
        "{what} blocks of {seq_len} tokens are longer than the {model}'s {max} positions: set data.seq_len ≤ {max}"
    )]
    SequenceTooLong {
        /// Which dataset (`train`, `eval`).
        what: &'static str,
        /// Its block length.
        seq_len: usize,
        /// `student`, `teacher`, `base teacher` or `base student`.
        model: &'static str,
        /// The model's positions.
        max: usize,
    },
    /// A data file could not be parsed (bad JSON, missing key).
    #[error("bad data in {path} line {line}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint does not fit the model or optimizer it is loaded into (missing tensor, shape
    /// mismatch, corrupt file). Resume with the same model config that wrote it.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// A checkpoint file does not match the size or SHA-256 its `checksums.json` recorded when
    /// it was written: it was truncated, changed or damaged since. Resume from an earlier
    /// checkpoint ([`crate::latest_checkpoint`] skips damaged ones by itself) or delete it.
    #[error("checkpoint file {path} is corrupt: expected {expected}, got {got}")]
    CorruptCheckpoint {
        /// The damaged file.
        path: PathBuf,
        /// What `checksums.json` recorded (size or SHA-256).
        expected: String,
        /// What the file holds now.
        got: String,
    },
    /// A teacher-logits file ([`crate::offline`]) is corrupt, truncated, incomplete, or does not
    /// fit the run (another vocabulary, tokenizer, data or block length). Recompute it with
    /// `kd precompute-teacher` for this run's data and tokenizer, or copy the damaged shard again.
    #[error("teacher-logits file {path}: {reason}")]
    TeacherLogits {
        /// The file (or directory of shards).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (state, metrics) could not be read or written.
    #[error("JSON error on {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A loss could not be built or called (bad hyperparameter, shape mismatch).
    #[error(transparent)]
    Loss(#[from] kd_losses::KdError),
    /// A model, tokenizer or generation call failed.
    #[error(transparent)]
    Model(#[from] kd_models::ModelError),
    /// A scaling-law table or budget cannot be fitted or solved
    /// ([`crate::scaling_fit`]): fix the entry named by `what`.
    #[error("scaling law: {what}: expected {expected}, got {got}")]
    ScalingLaw {
        /// The entry (`runs[3].student_loss`, `flops`, ...).
        what: String,
        /// What was needed, in words.
        expected: String,
        /// What came.
        got: String,
    },
    /// Automatic-scoring data or models do not fit together ([`crate::scoring`]): a score
    /// outside `0..num_classes`, a row longer than the model's positions, a teacher with another
    /// number of classes or missing soft labels. Fix the entry named by `what`.
    #[error("scoring: {what}: expected {expected}, got {got}")]
    Scoring {
        /// The entry (`teacher classes`, `row 3 length in tokens`, ...).
        what: String,
        /// What was needed, in words.
        expected: String,
        /// What came.
        got: String,
    },
}

impl TrainError {
    /// Whether the error is about what the caller passed in (a setting, the data, a checkpoint
    /// or model that does not fit) rather than something that went wrong while running; `kd`
    /// exits with status 2 for these, 1 for the others.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::VocabMismatch { .. }
                | Self::InvalidConfig { .. }
                | Self::EmptyDataset { .. }
                | Self::ScheduleMismatch { .. }
                | Self::SequenceTooLong { .. }
                | Self::Data { .. }
                | Self::Checkpoint { .. }
                | Self::CorruptCheckpoint { .. }
                | Self::TeacherLogits { .. }
                | Self::Scoring { .. }
        )
    }

    /// An [`TrainError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// A [`TrainError::Checkpoint`] for `path`.
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.into(), reason: reason.into() }
    }

    /// An [`TrainError::InvalidConfig`].
    pub(crate) fn config(name: &'static str, expected: &'static str, got: impl ToString) -> Self {
        Self::InvalidConfig { name, expected, got: got.to_string() }
    }
}
