//! `feature`: hidden-state (feature) distillation. At chosen `[student_layer, teacher_layer]`
//! pairs the student's hidden states, through a learned linear projection when the widths differ
//! (FitNets' regressor), are pulled towards the teacher's by MSE, smooth-L1 or cosine distance,
//! optionally plus any dense logit loss.
//!
//! ```text
//! loss = weight · Σ_{(i, j) ∈ layers} F(W_k h_i^S + b_k, h_j^T) + logit_weight · L_logit
//! F    = mean over counted positions of   mean_d (x − y)²                    (mse)
//!                                          mean_d smooth_l1_β(x − y)          (smooth_l1; β = 0: L1)
//!                                          1 − x·y / (‖x‖ ‖y‖)                 (cosine)
//!                                          c·cosine + (1 − c)·mse             (hyb_mse)
//!                                          c·cosine + (1 − c)·smooth_l1       (hyb_smooth_l1)
//! L_logit = (1 − w)·D(p ‖ q) + w·CE          (w = hard_label_weight, D = divergence)
//! ```
//!
//! `k` indexes the pair (one projection each), `c` is `cos_weight`, `h^T` is optionally
//! normalised (`normalize_teacher`: per position, or per pair by PHI-S / global / per-channel
//! standardisation fitted on the teacher features seen in training, [`TeacherNormalizer`]),
//! and the counted positions are those of the logit loss (the responses of instruction data).
//! The distances are [`kd_losses::teachers::feature_distance`]'s.
//!
//! Hidden-state indices follow [`HiddenStates`]: `0` is the embedding output, `i` the output of
//! block `i` (1-based), the last (`num_layers`) has the final norm applied. The default `layers`
//! is TinyBERT's uniform mapping `m ↦ m·N/M` for `m = 0..=M` (M student blocks, N teacher
//! blocks; `⌊m·N/M⌋` when M does not divide N).
//!
//! The projections are the method's own trainable parameters ([`super::MethodParams`]): trained
//! with the student, checkpointed with their AdamW moments, and saved beside the exported
//! student as `feature_projections.safetensors` ([`PROJECTIONS_FILE`]).
//!
//! **Several teachers** (`[ensemble]`, [`crate::Trainer::with_extra_teachers`]; AM-RADIO's
//! multi-teacher distillation, with PHI-S to balance them): every teacher `t` gets its own layer
//! pairs (the same `layers`, or the uniform mapping over its own depth), its own projection head
//! per pair and its own fitted normaliser per pair, and the feature term sums over teachers:
//!
//! ```text
//! feature = Σ_t ŵ_t · Σ_k F_t,k      F_t,k over the counted positions of the rows with w_t > 0
//! ŵ_t     = mean over counted positions of the ensemble weight w_t of their row
//! ```
//!
//! With fixed weights (`ensemble.weights`, default equal) `ŵ_t = w_t / Σ w`; with per-example
//! routing (`ensemble.routes`) each row counts towards its own teacher only, so the term is the
//! mean over positions of the distance to their teacher. The logit term distils the teachers'
//! combined logits (`ensemble.averaging`). With several teachers, `projection = "auto"` gives
//! every teacher a projection head as soon as one teacher's width differs from the student's
//! (RADIO's heads). Teacher `t`'s head for pair `k` is entry `o_t + k` of the projections,
//! `o_t` the number of pairs of the teachers before it (the first teacher's entries are those
//! of a single-teacher run).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor, TensorData};
use kd_losses::teachers::feature_distance::{FeatureDistance, FeatureDistanceConfig};
use kd_losses::teachers::phi_s::{
    FittedNormalization, Normalization, PhiSTransform, RefreshSchedule, Rotation, RunningStats,
};
use kd_losses::{Divergence, HardLabelMix, KdBatch, LossConfig, Reduction};
use kd_models::sampling::Rng;
use serde::{Deserialize, Serialize};

use crate::data::IGNORE_INDEX;
use crate::error::{Result, TrainError};
use crate::methods::{MethodParams, MicroBatchLoss, StepContext, TeacherUse};
use crate::model::{HiddenStates, LanguageModel, align_vocab, hidden_states_across};
use crate::params::make_trainable;

/// File name of the projections beside an exported student: a safetensors file of `f32` tensors
/// `proj.<k>.weight` `[student_width, teacher_width]` and `proj.<k>.bias` `[teacher_width]`, one
/// `k` per entry of `layers` in order (`x ↦ x · weight + bias` maps a student hidden state to the
/// teacher's width). Absent when no projection is used (equal widths).
pub const PROJECTIONS_FILE: &str = "feature_projections.safetensors";

/// The distance between projected student and teacher hidden states: kd-losses'
/// [`kd_losses::teachers::feature_distance::FeatureLoss`] (`mse`, `smooth_l1`, `cosine`,
/// `hyb_mse`, `hyb_smooth_l1`).
pub use kd_losses::teachers::feature_distance::FeatureLoss;

/// Seed of the random orthogonal fallback of PHI-S's rotation ([`Rotation::official`]), used
/// only for widths without a Hadamard construction: fixed, so a run's normalisation does not
/// depend on its seed.
pub const ROTATION_SEED: u64 = 0;

/// How the teacher's hidden states are normalised before the distance (config key
/// `normalize_teacher`: a string, or `false` = `none` and `true` = `position` as before).
///
/// ```text
/// none                h^T
/// position            (h − mean_d h) / √(var_d h + 1e-5)       per position (standardize)
/// phi_s               φ⁻¹ H Uᵀ (h − μ)                        PHI-S, fitted per pair
/// global_standardize  (h − μ_g) / σ_g                         scalars over all entries, per pair
/// standardize         (h_c − μ_c) / σ_c                       per channel, per pair
/// ```
///
/// For the fitted modes `μ`, `Σ = U diag(e) Uᵀ` are the running mean and (unbiased) covariance
/// of the teacher features of the pair at the counted positions seen in training
/// ([`RunningStats`]), `φ = √mean(e)`, `H` a normalised Hadamard matrix; the transform is fitted
/// on the first micro-batch and re-fitted on the schedule of `normalizer_refit_every` /
/// `normalizer_freeze_after` ([`TeacherNormalizer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "NormRepr")]
pub enum TeacherNorm {
    /// The raw teacher hidden states (`false`).
    #[default]
    None,
    /// Each position standardised over the hidden dimension ([`standardize`]; `true`).
    Position,
    /// PHI-S (Ranzinger et al. 2024): PCA + Hadamard rotation and one scale per pair.
    PhiS,
    /// One mean and one standard deviation over all channels of the pair.
    GlobalStandardize,
    /// Per-channel mean and standard deviation of the pair.
    Standardize,
}

impl TeacherNorm {
    /// Whether the mode is fitted on running statistics ([`TeacherNormalizer`]).
    pub fn is_fitted(self) -> bool {
        matches!(self, Self::PhiS | Self::GlobalStandardize | Self::Standardize)
    }
}

/// What `normalize_teacher` may hold: a bool (backward compatible) or a mode name.
#[derive(Deserialize)]
#[serde(untagged)]
enum NormRepr {
    Flag(bool),
    Mode(String),
}

impl TryFrom<NormRepr> for TeacherNorm {
    type Error = String;

    fn try_from(r: NormRepr) -> std::result::Result<Self, String> {
        Ok(match r {
            NormRepr::Flag(false) => Self::None,
            NormRepr::Flag(true) => Self::Position,
            NormRepr::Mode(m) => match m.as_str() {
                "none" => Self::None,
                "position" => Self::Position,
                "phi_s" => Self::PhiS,
                "global_standardize" => Self::GlobalStandardize,
                "standardize" => Self::Standardize,
                other => {
                    return Err(format!(
                        "normalize_teacher: expected true, false, \"none\", \"position\", \"phi_s\", \"global_standardize\" or \"standardize\", got \"{other}\""
                    ));
                }
            },
        })
    }
}

/// When to put a learned linear projection between student and teacher hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// A projection when the widths differ, none when they are equal (the default).
    #[default]
    Auto,
    /// Always a projection (also at equal widths).
    Linear,
    /// Never: widths must be equal.
    None,
}

/// Config of [`Feature`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    /// `[student_layer, teacher_layer]` pairs of hidden-state indices (see the module docs);
    /// unset: TinyBERT's uniform mapping over every student layer.
    pub layers: Option<Vec<[usize; 2]>>,
    /// The feature distance (default `mse`).
    pub loss: FeatureLoss,
    /// Smooth-L1 threshold `β ≥ 0` (default `1.0`, PyTorch's; `0` is plain L1; a non-zero `β`
    /// must be `≥ 1e-30`).
    pub beta: f64,
    /// Cosine weight `c ∈ [0, 1]` of the hybrid losses `hyb_mse` / `hyb_smooth_l1` (default
    /// `0.9`, AM-RADIO's); unused by the others.
    pub cos_weight: f64,
    /// Weight of the feature term, `≥ 0` (default `1.0`).
    pub weight: f64,
    /// The learned projection (default `auto`).
    pub projection: Projection,
    /// Normalisation of the teacher hidden states before the distance ([`TeacherNorm`];
    /// default `false` = `none`; `true` = `position`: each position standardised over the
    /// hidden dimension, [`standardize`]; `"phi_s"`, `"global_standardize"`, `"standardize"`:
    /// fitted per layer pair on running statistics). Pre-norm transformers' residual streams
    /// grow with depth (root mean square ≈ 16 in the shipped 4 × 128 teacher's middle layers
    /// against ≈ 1.4 after its final norm), so a raw MSE is dominated by their scale; Wei et
    /// al. 2022's feature distillation whitens the teacher's features per position, PHI-S
    /// (Ranzinger et al. 2024) balances them per layer with one isotropic transform.
    pub normalize_teacher: TeacherNorm,
    /// Fitted modes: re-fit the transform after every this many optimizer steps, from all
    /// statistics so far (default `100`, NVIDIA TAO's `update_period`; `0` = keep the fit of
    /// the first micro-batch).
    pub normalizer_refit_every: u64,
    /// Fitted modes: no re-fit (and no more statistics) after this many optimizer steps
    /// (default unset = never frozen).
    pub normalizer_freeze_after: Option<u64>,
    /// The dense logit divergence (default `forward_kl` at `T = 1`); not `taid` (use `kd`).
    pub divergence: LossConfig,
    /// Weight of the logit term, `≥ 0` (default `1.0`; `0` = features only).
    pub logit_weight: f64,
    /// Weight `w ∈ [0, 1]` of the hard-label cross-entropy inside the logit term (default `0`).
    pub hard_label_weight: f64,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            layers: None,
            loss: FeatureLoss::Mse,
            beta: 1.0,
            cos_weight: 0.9,
            weight: 1.0,
            projection: Projection::Auto,
            normalize_teacher: TeacherNorm::None,
            normalizer_refit_every: 100,
            normalizer_freeze_after: None,
            divergence: LossConfig::by_name("forward_kl").expect("forward_kl is registered"),
            logit_weight: 1.0,
            hard_label_weight: 0.0,
        }
    }
}

impl FeatureConfig {
    /// Checks every setting that does not depend on the models (layer indices are checked
    /// against both models' depth when the trainer gets its teacher).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the key, or the divergence's own error.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [("weight", self.weight), ("logit_weight", self.logit_weight)] {
            if !v.is_finite() || v < 0.0 {
                return Err(TrainError::config(key, "a finite value ≥ 0", v));
            }
        }
        if self.weight == 0.0 && self.logit_weight == 0.0 {
            return Err(TrainError::config(
                "weight",
                "> 0 (or logit_weight > 0): both terms are off",
                0,
            ));
        }
        if !self.beta.is_finite() || self.beta < 0.0 || (self.beta > 0.0 && self.beta < 1e-30) {
            return Err(TrainError::config("beta", "0 or a finite value ≥ 1e-30", self.beta));
        }
        if !(0.0..=1.0).contains(&self.cos_weight) {
            return Err(TrainError::config("cos_weight", "a value in [0, 1]", self.cos_weight));
        }
        self.distance().init()?;
        if !(0.0..=1.0).contains(&self.hard_label_weight) {
            return Err(TrainError::config(
                "hard_label_weight",
                "a value in [0, 1]",
                self.hard_label_weight,
            ));
        }
        if matches!(self.divergence, LossConfig::Taid(_)) {
            return Err(TrainError::config(
                "divergence",
                "a divergence without a schedule (TAID's needs method `kd`)",
                "taid",
            ));
        }
        self.divergence.init()?;
        if let Some(layers) = &self.layers
            && layers.is_empty()
        {
            return Err(TrainError::config(
                "layers",
                "at least one [student_layer, teacher_layer] pair (or unset for the default)",
                "[]",
            ));
        }
        Ok(())
    }

    /// The kd-losses distance of `loss`, `beta` and `cos_weight` (cosine norm floor `1e-8`).
    pub fn distance(&self) -> FeatureDistanceConfig {
        FeatureDistanceConfig::new()
            .with_loss(self.loss)
            .with_smooth_l1_beta(self.beta)
            .with_cos_weight(self.cos_weight)
    }

    /// The refit schedule of the fitted normalisations.
    pub fn refresh_schedule(&self) -> RefreshSchedule {
        RefreshSchedule {
            every: self.normalizer_refit_every,
            freeze_after: self.normalizer_freeze_after,
        }
    }

    /// The method (`steps` is unused).
    ///
    /// # Errors
    /// See [`FeatureConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<Feature> {
        self.validate()?;
        let d = self.divergence.init()?;
        let logit = match self.hard_label_weight > 0.0 {
            true => Box::new(HardLabelMix::new(d, self.hard_label_weight)?) as Box<dyn Divergence>,
            false => d,
        };
        Ok(Feature {
            config: self.clone(),
            distance: self.distance().init()?,
            logit,
            pairs: Vec::new(),
            projections: None,
            normalizers: Vec::new(),
        })
    }
}

/// TinyBERT's uniform layer mapping: student hidden state `m` to teacher hidden state
/// `⌊m·N/M⌋` for `m = 0..=M`.
///
/// # Example
/// ```
/// use kd_train::methods::feature::uniform_layers;
/// assert_eq!(uniform_layers(2, 4), [[0, 0], [1, 2], [2, 4]]);
/// assert_eq!(uniform_layers(3, 4), [[0, 0], [1, 1], [2, 2], [3, 4]]);
/// ```
pub fn uniform_layers(student_layers: usize, teacher_layers: usize) -> Vec<[usize; 2]> {
    let m = student_layers.max(1);
    (0..=student_layers).map(|i| [i, i * teacher_layers / m]).collect()
}

/// The learned projections, one per layer pair: `x ↦ x · weight + bias`,
/// `[.., student_width] → [.., teacher_width]`.
#[derive(Module, Debug)]
pub struct Projections {
    /// One linear map per entry of `layers`.
    pub proj: Vec<Linear>,
}

impl Projections {
    /// `pairs` projections from `d_in` to `d_out`, initialised as PyTorch's `nn.Linear` (weight
    /// and bias uniform in `±1/√d_in`) from a generator seeded by `seed`, as trainable leaves
    /// on the autodiff `device`.
    pub fn init(pairs: usize, d_in: usize, d_out: usize, seed: u64, device: &Device) -> Self {
        Self::init_widths(&vec![d_out; pairs], d_in, seed, device)
    }

    /// One projection per entry of `d_out` (several teachers of different widths), from
    /// `d_in`, initialised as [`Projections::init`] from one generator: the first entries are
    /// those `init` makes for the same seed.
    pub fn init_widths(d_out: &[usize], d_in: usize, seed: u64, device: &Device) -> Self {
        let plain = device.clone().inner();
        let mut rng = Rng::new(seed ^ 0x4645_4154_5552_4553); // "FEATURES"
        let bound = 1.0 / (d_in as f32).sqrt();
        let mut uniform = |n: usize| -> Vec<f32> {
            (0..n).map(|_| (2.0 * rng.next_f32() - 1.0) * bound).collect()
        };
        let proj = d_out
            .iter()
            .map(|&d_out| {
                let w = TensorData::new(uniform(d_in * d_out), [d_in, d_out]);
                let b = TensorData::new(uniform(d_out), [d_out]);
                Linear {
                    weight: Param::from_tensor(Tensor::from_data(w, &plain)),
                    bias: Some(Param::from_tensor(Tensor::from_data(b, &plain))),
                }
            })
            .collect();
        make_trainable(Self { proj }, device)
    }
}

/// Per-position feature distance between `student` and `teacher` rows, averaged over the rows
/// where `mask` is true: [`FeatureDistance::forward`]'s `loss_mean`. Shapes: `[rows, d]`,
/// `[rows, d]`, `[rows]` → `[1]`.
///
/// ```text
/// mse:        mean_d (s − t)²
/// smooth_l1:  mean_d { ½(s − t)²/β  if |s − t| < β;  |s − t| − ½β  otherwise }   (β = 0: |s − t|)
/// cosine:     1 − s·t / (max(‖s‖, ε)·max(‖t‖, ε)),  ε = 1e-8
/// hyb_mse:    c·cosine + (1 − c)·mse;   hyb_smooth_l1: c·cosine + (1 − c)·smooth_l1
/// ```
///
/// # Errors
/// [`TrainError::Loss`] when the shapes differ.
pub fn feature_distance(
    distance: &FeatureDistance,
    student: Tensor<2>,
    teacher: Tensor<2>,
    mask: Tensor<1, Bool>,
) -> Result<Tensor<1>> {
    Ok(distance.forward(student, teacher, Some(mask))?.loss_mean)
}

/// The fitted teacher normalisation of one layer pair ([`TeacherNorm::is_fitted`] modes): the
/// running statistics of the teacher features at counted positions and the transform fitted
/// from them. Serialised into the method's checkpoint state, so a resumed run is exact.
///
/// ```text
/// observe(h):  stats ← stats ∪ {h_r : r counted}
/// refit:       T ← PhiSTransform::fit(stats, Rotation::official(C, 0))      (μ, Σ, U, e, H, φ)
///              phi_s: y = φ⁻¹ H Uᵀ (h − μ);   otherwise FittedNormalization::fit(kind, T)
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherNormalizer {
    stats: RunningStats,
    transform: Option<PhiSTransform>,
    alternative: Option<FittedNormalization>,
    fits: u64,
}

impl TeacherNormalizer {
    /// Empty statistics over `channels` teacher features, nothing fitted.
    pub fn new(channels: usize) -> Self {
        Self { stats: RunningStats::new(channels), transform: None, alternative: None, fits: 0 }
    }

    /// The running statistics.
    pub fn stats(&self) -> &RunningStats {
        &self.stats
    }

    /// The last fitted PHI-S transform (also the basis of the alternatives).
    pub fn transform(&self) -> Option<&PhiSTransform> {
        self.transform.as_ref()
    }

    /// The last fitted alternative normalisation (`global_standardize`, `standardize`).
    pub fn alternative(&self) -> Option<&FittedNormalization> {
        self.alternative.as_ref()
    }

    /// How many times the transform was fitted.
    pub fn fits(&self) -> u64 {
        self.fits
    }

    /// Adds the rows of `features` `[rows, C]` where `mask` `[rows]` is true.
    ///
    /// # Errors
    /// [`TrainError::Loss`] on a shape mismatch or a non-finite feature.
    pub fn observe(&mut self, features: Tensor<2>, mask: Tensor<1, Bool>) -> Result<()> {
        Ok(self.stats.update_tensor(features, Some(mask))?)
    }

    /// Fits the transform of `mode` from the statistics so far.
    ///
    /// # Errors
    /// [`TrainError::Loss`] when the statistics cannot define it (fewer than two counted rows,
    /// zero covariance, a zero-variance channel for `standardize`).
    pub fn refit(&mut self, mode: TeacherNorm) -> Result<()> {
        let c = self.stats.channels();
        let t = PhiSTransform::fit(&self.stats, Rotation::official(c, ROTATION_SEED)?)?;
        self.alternative = match mode {
            TeacherNorm::GlobalStandardize => {
                Some(FittedNormalization::fit(Normalization::GlobalStandardize, &t)?)
            }
            TeacherNorm::Standardize => {
                Some(FittedNormalization::fit(Normalization::Standardize, &t)?)
            }
            _ => None,
        };
        self.transform = Some(t);
        self.fits += 1;
        Ok(())
    }

    /// `features` `[rows, C]` through the fitted transform (unchanged before the first fit).
    ///
    /// # Errors
    /// [`TrainError::Loss`] when the width is not the fitted one.
    pub fn apply(&self, features: Tensor<2>) -> Result<Tensor<2>> {
        Ok(match (&self.alternative, &self.transform) {
            (Some(a), _) => a.apply(features)?,
            (None, Some(t)) => t.standardize(features)?,
            (None, None) => features,
        })
    }
}

/// Each row standardised: `(x − mean(x)) / √(var(x) + 1e-5)` over the last dimension, a layer
/// norm without gain or bias. Shape: `[rows, d]` → `[rows, d]`.
pub fn standardize(x: Tensor<2>) -> Tensor<2> {
    let centred = x.clone() - x.mean_dim(1); // [rows, d]
    let var = centred.clone().square().mean_dim(1); // [rows, 1]
    centred / var.add_scalar(1e-5).sqrt()
}

/// Hidden-state (feature) distillation (see the module docs).
#[derive(Debug)]
pub struct Feature {
    config: FeatureConfig,
    distance: FeatureDistance,
    logit: Box<dyn Divergence>,
    /// Resolved layer pairs per teacher, the first teacher first (empty until
    /// [`super::Method::init_params`]).
    pairs: Vec<Vec<[usize; 2]>>,
    /// One per pair of every teacher, in that order (teacher 0's pairs, then teacher 1's, …).
    projections: Option<Projections>,
    /// One per pair of every teacher in the fitted modes, in the order of the projections
    /// (empty until the first micro-batch or a restore).
    normalizers: Vec<TeacherNormalizer>,
}

/// The method's checkpoint state.
#[derive(Serialize, Deserialize)]
struct FeatureState {
    normalizers: Vec<TeacherNormalizer>,
}

impl Feature {
    /// The layer pairs in use with the first teacher (empty until the trainer has both models).
    pub fn pairs(&self) -> &[[usize; 2]] {
        self.pairs.first().map_or(&[], Vec::as_slice)
    }

    /// The layer pairs of every teacher, the first teacher first.
    pub fn teacher_pairs(&self) -> &[Vec<[usize; 2]>] {
        &self.pairs
    }

    /// The teacher normalisers, one per pair of every teacher in the fitted modes, in the order
    /// of [`Feature::teacher_pairs`] (empty before training).
    pub fn normalizers(&self) -> &[TeacherNormalizer] {
        &self.normalizers
    }
}

/// Every hidden state of `model` on one token (its depth and width), or an error naming `who`.
fn probe<M: LanguageModel>(
    model: &M,
    who: &'static str,
    device: &Device,
) -> Result<(usize, usize)> {
    let ids = Tensor::<2, Int>::from_ints([[0]], device);
    let states = hidden_states_across(model, ids).ok_or_else(|| {
        TrainError::config(
            "method",
            "models that expose every hidden state (LanguageModel::hidden_states)",
            format!("a {who} without them"),
        )
    })?;
    let width = states.hidden.first().map_or(0, |h| h.dims()[2]);
    Ok((states.hidden.len().saturating_sub(1), width))
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for Feature {
    fn name(&self) -> &'static str {
        "feature"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn init_params(
        &mut self,
        student: &S,
        teacher: Option<&T>,
        device: &Device,
        seed: u64,
    ) -> Result<()> {
        self.init_params_with(student, teacher, &[], device, seed)
    }

    fn init_params_with(
        &mut self,
        student: &S,
        teacher: Option<&T>,
        extra_teachers: &[T],
        device: &Device,
        seed: u64,
    ) -> Result<()> {
        let Some(first) = teacher else { return Ok(()) }; // waits for the teacher
        if self.pairs.len() == 1 + extra_teachers.len() {
            return Ok(());
        }
        let (ls, ds) = probe(student, "student", device)?;
        let plain = device.clone().inner();
        let (mut all_pairs, mut widths) = (Vec::new(), Vec::new());
        for (t, model) in std::iter::once(first).chain(extra_teachers).enumerate() {
            let (lt, dt) = probe(model, "teacher", &plain)?;
            let which = if t == 0 { "the teacher".to_string() } else { format!("teacher {t}") };
            let pairs = self.config.layers.clone().unwrap_or_else(|| uniform_layers(ls, lt));
            for [s, j] in &pairs {
                if *s > ls {
                    return Err(TrainError::config(
                        "layers",
                        "student hidden-state indices in 0..=num_layers (0 = embeddings)",
                        format!("{s} (the student has {ls} layers: 0..={ls})"),
                    ));
                }
                if *j > lt {
                    return Err(TrainError::config(
                        "layers",
                        "teacher hidden-state indices in 0..=num_layers (0 = embeddings)",
                        format!("{j} ({which} has {lt} layers: 0..={lt})"),
                    ));
                }
            }
            all_pairs.push(pairs);
            widths.push(dt);
        }
        let project = match self.config.projection {
            Projection::Auto => widths.iter().any(|&dt| dt != ds),
            Projection::Linear => true,
            Projection::None => {
                if let Some(dt) = widths.iter().find(|&&dt| dt != ds) {
                    return Err(TrainError::config(
                        "projection",
                        "\"auto\" or \"linear\" when student and teacher widths differ",
                        format!("\"none\" (student width {ds}, teacher width {dt})"),
                    ));
                }
                false
            }
        };
        let outs: Vec<usize> = all_pairs
            .iter()
            .zip(&widths)
            .flat_map(|(p, &dt)| std::iter::repeat_n(dt, p.len()))
            .collect();
        self.projections = project.then(|| Projections::init_widths(&outs, ds, seed, device));
        self.pairs = all_pairs;
        Ok(())
    }

    fn params(&self) -> Option<&dyn MethodParams> {
        self.projections.as_ref().map(|p| p as &dyn MethodParams)
    }

    fn params_mut(&mut self) -> Option<&mut dyn MethodParams> {
        self.projections.as_mut().map(|p| p as &mut dyn MethodParams)
    }

    fn params_file(&self) -> String {
        PROJECTIONS_FILE.to_string()
    }

    fn supports_teacher_ensemble(&self) -> bool {
        true
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let teacher = cx.require_teacher("feature")?;
        let extra = cx.extra_teachers;
        if self.pairs.len() != 1 + extra.len() {
            self.init_params_with(cx.student, Some(teacher), extra, cx.device, cx.seed)?;
        }
        let batch = cx.next_batch();
        let missing = || {
            TrainError::config(
                "method",
                "models that expose every hidden state (LanguageModel::hidden_states)",
                "a model without them",
            )
        };
        let s: HiddenStates =
            cx.student.hidden_states(batch.input_ids.clone()).ok_or_else(missing)?;
        let plain_ids = batch.input_ids.clone().inner();
        let teachers: Vec<HiddenStates> = std::iter::once(teacher)
            .chain(extra)
            .map(|m| hidden_states_across(m, plain_ids.clone()).ok_or_else(missing))
            .collect::<Result<_>>()?;
        let [b, n] = batch.input_ids.dims();
        let labels = batch.labels.clone().flatten::<1>(0, 1); // [rows]
        let mask = labels.clone().not_equal_elem(IGNORE_INDEX); // [rows]
        let mode = self.config.normalize_teacher;
        let total_pairs: usize = self.pairs.iter().map(Vec::len).sum();
        if mode.is_fitted() && self.normalizers.len() != total_pairs {
            self.normalizers = self
                .pairs
                .iter()
                .zip(&teachers)
                .flat_map(|(p, t)| p.iter().map(|[_, j]| t.hidden[*j].dims()[2]))
                .map(TeacherNormalizer::new)
                .collect();
        }
        // Several teachers: each one's positions (rows with a positive weight) and its share.
        let weights = match teachers.len() {
            1 => Vec::new(),
            k => cx.teacher_weights(k, b)?,
        };
        let counted: Vec<bool> = if weights.is_empty() {
            Vec::new()
        } else {
            let l = labels.clone().inner().into_data().convert::<i64>();
            l.iter::<i64>().map(|v| v != IGNORE_INDEX).collect()
        };
        let frozen = self.config.normalizer_freeze_after.is_some_and(|f| cx.step >= f);
        let plain_mask = mask.clone().inner(); // [rows]
        let mut feature: Option<Tensor<1>> = None;
        let mut offset = 0;
        for (t, (pairs, th)) in self.pairs.iter().zip(&teachers).enumerate() {
            let first = offset;
            offset += pairs.len();
            let (mask_t, share) = if weights.is_empty() {
                (mask.clone(), 1.0)
            } else {
                let w = &weights[t];
                let pos: Vec<bool> = (0..b * n).map(|r| counted[r] && w[r / n] > 0.0).collect();
                let all = counted.iter().filter(|c| **c).count().max(1);
                let wsum: f64 =
                    (0..b * n).filter(|&r| counted[r]).map(|r| f64::from(w[r / n])).sum();
                if !pos.iter().any(|p| *p) {
                    continue; // no row of this micro-batch is this teacher's
                }
                let m = Tensor::<1, Bool>::from_data(TensorData::new(pos, [b * n]), cx.device);
                (m, wsum / all as f64)
            };
            for (k, [i, j]) in pairs.iter().enumerate() {
                let idx = first + k;
                let hs = s.hidden[*i].clone().cast(FloatDType::F32); // [b, n, ds]
                let ds = hs.dims()[2];
                let mut hs = hs.reshape([b * n, ds]);
                if let Some(p) = &self.projections {
                    hs = p.proj[idx].forward(hs); // [rows, dt]
                }
                let ht = th.hidden[*j].clone().cast(FloatDType::F32); // [b, n, dt]
                let dt = ht.dims()[2];
                let mut ht = ht.reshape([b * n, dt]); // [rows, dt], no graph
                match mode {
                    TeacherNorm::None => {}
                    TeacherNorm::Position => ht = standardize(ht),
                    _ => {
                        // Statistics from this micro-batch's counted positions, a first fit
                        // on the first one; the target uses the current transform.
                        let norm = &mut self.normalizers[idx];
                        if !frozen || norm.transform.is_none() {
                            norm.observe(ht.clone(), plain_mask.clone())?;
                        }
                        if norm.transform.is_none() {
                            norm.refit(mode)?;
                        }
                        ht = norm.apply(ht)?;
                    }
                }
                let ht = ht.autodiff();
                let mut f = feature_distance(&self.distance, hs, ht, mask_t.clone())?;
                if share != 1.0 {
                    f = f.mul_scalar(share);
                }
                feature = Some(match feature {
                    Some(acc) => acc + f,
                    None => f,
                });
            }
        }
        let feature = feature.expect("at least one layer pair (validated) of a teacher with rows");
        let feature_value = f64::from(feature.clone().inner().into_scalar::<f32>());
        let mut loss = feature.mul_scalar(self.config.weight);
        let mut metrics = vec![("feature_loss", feature_value)];
        if self.config.logit_weight > 0.0 {
            let all: Vec<Tensor<3>> = teachers.into_iter().map(|t| t.logits).collect();
            let tl = if all.len() == 1 {
                all.into_iter().next().expect("one teacher")
            } else {
                crate::ensemble::combine_logits(all, &weights, cx.ensemble.averaging)
            };
            let (sl, tl) = align_vocab(s.logits, tl.autodiff(), cx.vocab_alignment)?;
            let kd = KdBatch::from_sequences(sl, tl).with_labels(labels);
            let logit = self.logit.forward(kd, Reduction::Mean)?.loss;
            metrics.push(("logit_loss", f64::from(logit.clone().inner().into_scalar::<f32>())));
            loss = loss.add(logit.mul_scalar(self.config.logit_weight));
        }
        Ok(MicroBatchLoss { loss, tokens: batch.counted as u64, metrics })
    }

    fn end_step(&mut self, step: u64, _loss: f64) -> Result<()> {
        if self.config.normalize_teacher.is_fitted()
            && self.config.refresh_schedule().should_refit(step)
        {
            for norm in &mut self.normalizers {
                norm.refit(self.config.normalize_teacher)?;
            }
        }
        Ok(())
    }

    fn state(&self) -> Result<serde_json::Value> {
        if self.normalizers.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::to_value(FeatureState { normalizers: self.normalizers.clone() })
            .map_err(|e| TrainError::checkpoint("state.json", format!("feature: {e}")))
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        if state.is_null() {
            self.normalizers.clear();
            return Ok(());
        }
        let s: FeatureState = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::checkpoint("state.json", format!("feature: {e}")))?;
        if !self.config.normalize_teacher.is_fitted() {
            return Err(TrainError::checkpoint(
                "state.json",
                "feature: the checkpoint has fitted teacher normalisers but normalize_teacher is not a fitted mode",
            ));
        }
        let total: usize = self.pairs.iter().map(Vec::len).sum();
        if !self.pairs.is_empty() && s.normalizers.len() != total {
            return Err(TrainError::checkpoint(
                "state.json",
                format!(
                    "feature: {} teacher normalisers for {total} layer pairs",
                    s.normalizers.len()
                ),
            ));
        }
        self.normalizers = s.normalizers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_settings_name_their_key() {
        FeatureConfig::default().validate().unwrap();
        let bad = |c: FeatureConfig| match c.validate() {
            Err(TrainError::InvalidConfig { name, .. }) => name,
            other => panic!("expected an InvalidConfig, got {other:?}"),
        };
        assert_eq!(bad(FeatureConfig { weight: -1.0, ..Default::default() }), "weight");
        assert_eq!(
            bad(FeatureConfig { logit_weight: f64::NAN, ..Default::default() }),
            "logit_weight"
        );
        assert_eq!(bad(FeatureConfig { beta: -0.5, ..Default::default() }), "beta");
        assert_eq!(bad(FeatureConfig { beta: 1e-31, ..Default::default() }), "beta");
        assert_eq!(bad(FeatureConfig { cos_weight: 1.5, ..Default::default() }), "cos_weight");
        FeatureConfig { beta: 0.0, loss: FeatureLoss::HybSmoothL1, ..Default::default() }
            .validate()
            .unwrap();
        assert_eq!(
            bad(FeatureConfig { hard_label_weight: 1.5, ..Default::default() }),
            "hard_label_weight"
        );
        assert_eq!(bad(FeatureConfig { layers: Some(vec![]), ..Default::default() }), "layers");
        assert_eq!(
            bad(FeatureConfig { weight: 0.0, logit_weight: 0.0, ..Default::default() }),
            "weight"
        );
        let taid = FeatureConfig {
            divergence: LossConfig::by_name("taid").unwrap(),
            ..Default::default()
        };
        assert_eq!(bad(taid), "divergence");
    }

    #[test]
    fn toml_keys_parse() {
        let c: FeatureConfig = serde_json::from_str(
            r#"{"layers": [[1, 2], [2, 4]], "loss": "smooth_l1", "beta": 0.5, "projection": "linear"}"#,
        )
        .unwrap();
        assert_eq!(c.layers, Some(vec![[1, 2], [2, 4]]));
        assert_eq!(
            (c.loss, c.beta, c.projection),
            (FeatureLoss::SmoothL1, 0.5, Projection::Linear)
        );
        assert!(serde_json::from_str::<FeatureConfig>(r#"{"loss": "l2"}"#).is_err());
        assert!(serde_json::from_str::<FeatureConfig>(r#"{"layer": [[1, 2]]}"#).is_err());
    }

    #[test]
    fn normalize_teacher_takes_a_bool_or_a_mode() {
        let norm = |v: &str| {
            serde_json::from_str::<FeatureConfig>(&format!(r#"{{"normalize_teacher": {v}}}"#))
                .map(|c| c.normalize_teacher)
        };
        assert_eq!(norm("false").unwrap(), TeacherNorm::None);
        assert_eq!(norm("true").unwrap(), TeacherNorm::Position);
        assert_eq!(norm(r#""none""#).unwrap(), TeacherNorm::None);
        assert_eq!(norm(r#""position""#).unwrap(), TeacherNorm::Position);
        assert_eq!(norm(r#""phi_s""#).unwrap(), TeacherNorm::PhiS);
        assert_eq!(norm(r#""global_standardize""#).unwrap(), TeacherNorm::GlobalStandardize);
        assert_eq!(norm(r#""standardize""#).unwrap(), TeacherNorm::Standardize);
        let e = norm(r#""zca""#).unwrap_err().to_string();
        assert!(e.contains("phi_s") && e.contains("zca"), "{e}");
        assert!(norm("1").is_err());
        // Written back as the mode's name, which reads back.
        let c = FeatureConfig { normalize_teacher: TeacherNorm::PhiS, ..Default::default() };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""normalize_teacher":"phi_s""#), "{text}");
        assert_eq!(serde_json::from_str::<FeatureConfig>(&text).unwrap(), c);
        let c: FeatureConfig = serde_json::from_str(
            r#"{"loss": "hyb_mse", "cos_weight": 0.5, "normalizer_refit_every": 7, "normalizer_freeze_after": 20}"#,
        )
        .unwrap();
        assert_eq!((c.loss, c.cos_weight), (FeatureLoss::HybMse, 0.5));
        assert_eq!(c.refresh_schedule(), RefreshSchedule { every: 7, freeze_after: Some(20) });
    }

    #[test]
    fn uniform_mapping_covers_both_ends() {
        assert_eq!(uniform_layers(2, 4), [[0, 0], [1, 2], [2, 4]]);
        assert_eq!(uniform_layers(4, 4), [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]]);
        assert_eq!(uniform_layers(0, 3), [[0, 0]]);
    }
}
