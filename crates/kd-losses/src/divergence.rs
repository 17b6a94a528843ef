//! The [`Divergence`] trait, the inputs ([`KdBatch`]) and outputs ([`KdOutput`]) of every dense
//! loss, and the one driver that does temperature, `T²` scaling, masking, the hard-label mix and
//! the reduction.
//!
//! A loss only supplies its per-token term from temperature-scaled logits; everything shared lives
//! here, so a new loss cannot get masking or reductions subtly different from the others.

use std::fmt;

use burn::tensor::{Bool, Int, Tensor};

use crate::error::{KdError, Result, check_range};
use crate::fused::{self, ExpectedUpstream, FusedCall, FusedKind};
use crate::logspace::{gather_rows, log_softmax, mask_f32, scaled_logits, to_f32};
pub use crate::types::Extra;
use crate::types::HARD_LABEL_EXTRAS;

/// How per-row losses are combined into the returned `loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Sum over rows divided by the number of valid rows (`0` when no row is valid).
    #[default]
    Mean,
    /// Sum over rows.
    Sum,
    /// No reduction: `loss` is the per-row vector `[rows]` (zeros on ignored rows).
    None,
}

/// One batch of student and teacher logits, flattened to rows (`batch·seq` positions).
///
/// A row counts iff `mask[i]` is true **and** `labels[i] != -100` (each check applies only when the
/// tensor is given). Ignored rows get loss `0` and gradient `0`.
///
/// The logits may be of any float dtype (`f32`, `f64`, `bf16`, `f16`), student and teacher
/// alike or not: [`Divergence::forward`] casts both to `f32` first (see the crate docs,
/// "Precision").
#[derive(Debug, Clone)]
pub struct KdBatch {
    /// Student logits. Shape: `[rows, vocab]`.
    pub student_logits: Tensor<2>,
    /// Teacher logits; the vocabulary may differ only for cross-vocabulary losses. Shape: `[rows, vocab_t]`.
    pub teacher_logits: Tensor<2>,
    /// Target ids, `-100` = ignored row. Needed by label losses and the hard-label mix. Shape: `[rows]`.
    pub labels: Option<Tensor<1, Int>>,
    /// `true` = row counts. Shape: `[rows]`.
    pub mask: Option<Tensor<1, Bool>>,
}

impl KdBatch {
    /// A batch of rows with every row counted. Shape: `[rows, vocab], [rows, vocab_t]`.
    pub fn new(student_logits: Tensor<2>, teacher_logits: Tensor<2>) -> Self {
        Self { student_logits, teacher_logits, labels: None, mask: None }
    }

    /// A batch of sequences, flattened to `batch·seq` rows. Shape: `[batch, seq, vocab]`.
    pub fn from_sequences(student_logits: Tensor<3>, teacher_logits: Tensor<3>) -> Self {
        Self::new(student_logits.flatten(0, 1), teacher_logits.flatten(0, 1))
    }

    /// Adds target ids (`-100` = ignored). Sequence labels `[batch, seq]` can be passed as
    /// `labels.flatten(0, 1)`. Shape: `[rows]`.
    pub fn with_labels(mut self, labels: Tensor<1, Int>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// Adds a row mask (`true` = counted). Shape: `[rows]`.
    pub fn with_mask(mut self, mask: Tensor<1, Bool>) -> Self {
        self.mask = Some(mask);
        self
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.student_logits.dims()[0]
    }
}

/// What the driver hands to [`Divergence::per_token`]: temperature-scaled `f32` logits of valid
/// shapes.
#[derive(Debug, Clone)]
pub struct TokenInputs {
    /// `student_logits / T_student`, floored at [`crate::logspace::LOGIT_FLOOR`]. Shape: `[rows, vocab]`.
    pub student: Tensor<2>,
    /// `teacher_logits / T_teacher`, floored likewise. Shape: `[rows, vocab_t]`.
    pub teacher: Tensor<2>,
    /// Target ids with ignored rows replaced by `0` (safe to gather); `None` if not given. Shape: `[rows]`.
    pub labels: Option<Tensor<1, Int>>,
    /// `1.0` on valid rows, `0.0` on ignored ones. Shape: `[rows]`.
    pub valid: Tensor<1>,
}

impl TokenInputs {
    /// The labels, or the error naming the loss that needs them.
    pub fn labels(&self, loss: &'static str) -> Result<Tensor<1, Int>> {
        self.labels.clone().ok_or(KdError::MissingInput { loss, name: "labels" })
    }
}

/// The per-token term of a loss and its diagnostics.
#[derive(Debug, Clone)]
pub struct TokenTerms {
    /// Loss of each row before `T²` scaling, masking and mixing. Shape: `[rows]`.
    pub values: Tensor<1>,
    /// Diagnostics.
    pub extras: Vec<Extra>,
}

impl TokenTerms {
    /// Terms without diagnostics.
    pub fn new(values: Tensor<1>) -> Self {
        Self { values, extras: Vec::new() }
    }
    /// Adds a diagnostic.
    pub fn with(mut self, extra: Extra) -> Self {
        self.extras.push(extra);
        self
    }
}

/// What a loss asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriverSettings {
    /// Temperature dividing the student logits before the divergence.
    pub student_temperature: f64,
    /// Temperature dividing the teacher logits before the divergence.
    pub teacher_temperature: f64,
    /// Factor on the per-token term (`T²` for losses that scale, else `1`).
    pub soft_scale: f64,
    /// `Some(w)`: final row loss `(1 − w)·soft + w·CE(softmax(student), label)` at `T = 1`.
    pub hard_label_weight: Option<f64>,
    /// The per-token term reads the labels.
    pub needs_labels: bool,
    /// Student and teacher may have different vocabularies.
    pub cross_vocab: bool,
}

impl DriverSettings {
    /// One temperature for both sides, no scaling, no hard labels.
    pub fn at_temperature(temperature: f64) -> Self {
        Self {
            student_temperature: temperature,
            teacher_temperature: temperature,
            soft_scale: 1.0,
            hard_label_weight: None,
            needs_labels: false,
            cross_vocab: false,
        }
    }
    /// Multiplies the per-token term by `T²` when `scale` is true.
    pub fn scaled_by_t2(mut self, scale: bool) -> Self {
        if scale {
            self.soft_scale = self.student_temperature * self.student_temperature;
        }
        self
    }
}

/// The output of a loss call.
#[derive(Debug, Clone)]
pub struct KdOutput {
    /// The reduced loss: `[1]` for [`Reduction::Mean`] / [`Reduction::Sum`], `[rows]` for
    /// [`Reduction::None`]. Differentiable w.r.t. the student logits.
    pub loss: Tensor<1>,
    /// Loss of each row, `0` on ignored rows; differentiable. Shape: `[rows]`.
    pub per_row: Tensor<1>,
    /// Number of valid rows (as a float). Shape: `[1]`.
    pub n_valid: Tensor<1>,
    /// Diagnostics, detached.
    pub extras: Vec<Extra>,
}

impl KdOutput {
    /// The diagnostic called `name`, if this loss reports it.
    pub fn extra(&self, name: &str) -> Option<&Tensor<1>> {
        self.extras.iter().find(|e| e.name == name).map(|e| &e.value)
    }
}

/// A token-level divergence between a student and a teacher distribution.
///
/// Implementors supply [`per_token`](Divergence::per_token) (and their [`settings`](Divergence::settings));
/// [`forward`](Divergence::forward) is the one public call, shared by all losses.
pub trait Divergence: fmt::Debug + Send + Sync {
    /// The loss id, equal to its golden file name (e.g. `forward_kl`).
    fn name(&self) -> &'static str;

    /// Temperatures, scaling and input needs.
    fn settings(&self) -> DriverSettings;

    /// Per-row term from temperature-scaled logits.
    ///
    /// # Errors
    /// [`KdError::MissingInput`] when a needed input (labels) is absent.
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms>;

    /// The fused row kernel that computes the same per-token term, if any. The driver uses it for
    /// inputs on the flex backend, of any float dtype once cast to `f32` (see [`crate::fused`]);
    /// everything else runs [`per_token`](Divergence::per_token).
    fn fused_kind(&self) -> Option<FusedKind> {
        None
    }

    /// Whether a row's value depends on other rows of the batch (a batch median, per-group
    /// means), so that the loss cannot be computed a chunk of rows at a time
    /// (`ChunkedHeadLoss` refuses such losses). `false` unless the loss says otherwise; the
    /// kd-losses losses answer their `couples_rows` flag in [`crate::LOSSES`].
    fn couples_rows(&self) -> bool {
        false
    }

    /// Computes the loss of a batch.
    ///
    /// The logits may be `f32`, `f64`, `bf16` or `f16` (mixed too); they are cast to `f32` once,
    /// here, and everything after runs in `f32`. The returned tensors are `f32`; the gradient
    /// w.r.t. the student logits comes back in their dtype (the `f32` gradient, rounded).
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when teacher, labels or mask disagree with the student rows,
    /// [`KdError::VocabMismatch`] when vocabularies differ for a same-vocabulary loss, and
    /// [`KdError::MissingInput`] when labels are needed but absent.
    fn forward(&self, batch: KdBatch, reduction: Reduction) -> Result<KdOutput> {
        run(self, batch, reduction)
    }
}

impl<L: Divergence + ?Sized> Divergence for Box<L> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn settings(&self) -> DriverSettings {
        (**self).settings()
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        (**self).per_token(inputs)
    }
    fn fused_kind(&self) -> Option<FusedKind> {
        (**self).fused_kind()
    }
    fn couples_rows(&self) -> bool {
        (**self).couples_rows()
    }
}

/// Any divergence plus a hard-label cross-entropy term:
/// `(1 − w)·soft + w·CE(softmax(student), label)`, the CE at `T = 1`.
///
/// Diagnostics `soft_term` (the scaled divergence) and `hard_term` (the CE) are added.
#[derive(Debug, Clone)]
pub struct HardLabelMix<L> {
    inner: L,
    weight: f64,
}

impl<L: Divergence> HardLabelMix<L> {
    /// Mixes `loss` with the hard-label CE at weight `weight ∈ [0, 1]`.
    ///
    /// # Errors
    /// [`KdError::InvalidHyperparameter`] when `weight ∉ [0, 1]`.
    pub fn new(loss: L, weight: f64) -> Result<Self> {
        check_range(loss.name(), "hard_label_weight", weight, 0.0, 1.0, "a value in [0, 1]")?;
        Ok(Self { inner: loss, weight })
    }
}

impl<L: Divergence> Divergence for HardLabelMix<L> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn settings(&self) -> DriverSettings {
        DriverSettings { hard_label_weight: Some(self.weight), ..self.inner.settings() }
    }
    fn per_token(&self, inputs: TokenInputs) -> Result<TokenTerms> {
        self.inner.per_token(inputs)
    }
    fn fused_kind(&self) -> Option<FusedKind> {
        self.inner.fused_kind()
    }
    fn couples_rows(&self) -> bool {
        self.inner.couples_rows()
    }
}

fn check_rows(what: &str, expected: usize, got: &[usize]) -> Result<()> {
    if got.len() == 1 && got[0] == expected {
        Ok(())
    } else {
        Err(KdError::ShapeMismatch {
            what: what.into(),
            expected: vec![expected],
            got: got.to_vec(),
        })
    }
}

/// Row validity `[rows]` from the optional mask and labels, checking their shapes.
pub(crate) fn valid_rows(
    rows: usize,
    labels: Option<&Tensor<1, Int>>,
    mask: Option<&Tensor<1, Bool>>,
    device: &burn::tensor::Device,
) -> Result<Tensor<1, Bool>> {
    let mut valid = Tensor::<1, Bool>::ones([rows], device);
    if let Some(m) = mask {
        check_rows("mask vs student rows", rows, &m.dims())?;
        valid = valid.bool_and(m.clone());
    }
    if let Some(l) = labels {
        check_rows("labels vs student rows", rows, &l.dims())?;
        valid = valid.bool_and(l.clone().not_equal_elem(-100));
    }
    Ok(valid)
}

/// Checks that every label of a valid row lies in `[0, vocab)`; reads the labels to the host.
pub(crate) fn check_label_range(
    loss: &'static str,
    labels: &Tensor<1, Int>,
    valid: &Tensor<1, Bool>,
    vocab: usize,
) -> Result<()> {
    let ids = labels.clone().mask_fill(valid.clone().bool_not(), 0);
    let data = ids.into_data().convert::<i64>();
    let ids = data.as_slice::<i64>().unwrap_or(&[]);
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        return Err(KdError::InvalidHyperparameter {
            loss,
            name: "labels",
            expected: "ids in [0, vocab) or -100 on every row",
            got: *bad as f64,
        });
    }
    Ok(())
}

/// Masks per-row values, reduces them and packs the output. Shared by every loss family.
pub(crate) fn finish(
    per_row: Tensor<1>,
    valid: &Tensor<1, Bool>,
    extras: Vec<Extra>,
    reduction: Reduction,
) -> KdOutput {
    let invalid = valid.clone().bool_not();
    // Ignored rows are replaced (not multiplied) by zero, so a non-finite value there cannot leak.
    let per_row = per_row.mask_fill(invalid.clone(), 0.0);
    let n_valid = mask_f32(valid.clone()).sum(); // [1]
    let loss = match reduction {
        Reduction::Mean => per_row.clone().sum().div(n_valid.clone().clamp_min(1.0)),
        Reduction::Sum => per_row.clone().sum(),
        Reduction::None => per_row.clone(),
    };
    let extras = extras
        .into_iter()
        .map(|e| {
            let value = e.value.detach();
            let value = if e.per_row { value.mask_fill(invalid.clone(), 0.0) } else { value };
            Extra { value, ..e }
        })
        .collect();
    KdOutput { loss, per_row, n_valid, extras }
}

/// The driver behind [`Divergence::forward`].
pub(crate) fn run<L: Divergence + ?Sized>(
    loss: &L,
    batch: KdBatch,
    reduction: Reduction,
) -> Result<KdOutput> {
    let settings = loss.settings();
    let name = loss.name();
    let KdBatch { student_logits, teacher_logits, labels, mask } = batch;
    // The one cast point of every dense loss: any float dtype in, f32 math from here on (the
    // fused kernels included); the student's gradient goes back in its own dtype.
    let (student_logits, teacher_logits) = (to_f32(student_logits), to_f32(teacher_logits));
    let [rows, vocab] = student_logits.dims();
    let [t_rows, t_vocab] = teacher_logits.dims();
    if t_rows != rows {
        return Err(KdError::ShapeMismatch {
            what: "teacher_logits vs student_logits rows".into(),
            expected: vec![rows, t_vocab],
            got: vec![t_rows, t_vocab],
        });
    }
    if t_vocab != vocab && !settings.cross_vocab {
        return Err(KdError::VocabMismatch { loss: name, student: vocab, teacher: t_vocab });
    }
    let device = student_logits.device();
    let valid = valid_rows(rows, labels.as_ref(), mask.as_ref(), &device)?;
    let uses_labels = settings.needs_labels || settings.hard_label_weight.is_some();
    if uses_labels {
        match &labels {
            Some(l) => check_label_range(name, l, &valid, vocab)?,
            None => {
                return Err(KdError::MissingInput { loss: name, name: "labels" });
            }
        }
    }
    let safe_labels = labels.map(|l| l.mask_fill(valid.clone().bool_not(), 0));

    let fused = loss
        .fused_kind()
        .filter(|_| settings.student_temperature == settings.teacher_temperature)
        .and_then(|kind| {
            fused::soft_terms(FusedCall {
                kind,
                temperature: settings.student_temperature,
                scale: settings.soft_scale,
                student: &student_logits,
                teacher: &teacher_logits,
                valid: &valid,
                labels: safe_labels.as_ref(),
                hard_weight: settings.hard_label_weight,
                expected_upstream: ExpectedUpstream { mean: reduction == Reduction::Mean },
            })
        });
    if let Some(f) = fused {
        // The kernel already mixed in the hard-label term (and reports both parts).
        return Ok(finish(f.values, &valid, f.extras, reduction));
    }
    let inputs = TokenInputs {
        student: scaled_logits(student_logits.clone(), settings.student_temperature),
        teacher: scaled_logits(teacher_logits, settings.teacher_temperature).detach(),
        labels: safe_labels.clone(),
        valid: mask_f32(valid.clone()),
    };
    let TokenTerms { values, mut extras } = loss.per_token(inputs)?;
    let soft =
        if settings.soft_scale == 1.0 { values } else { values.mul_scalar(settings.soft_scale) };

    let per_row = match (settings.hard_label_weight, safe_labels) {
        (Some(w), Some(labels)) => {
            // Hard-label cross-entropy at T = 1: −log softmax(student)[label].
            let ce = gather_rows(log_softmax(scaled_logits(student_logits, 1.0)), labels).neg();
            let [soft_name, hard_name] = HARD_LABEL_EXTRAS;
            extras.push(Extra::row(soft_name, soft.clone()));
            extras.push(Extra::row(hard_name, ce.clone()));
            soft.mul_scalar(1.0 - w).add(ce.mul_scalar(w))
        }
        _ => soft,
    };
    Ok(finish(per_row, &valid, extras, reduction))
}
