//! `feature`: hidden-state (feature) distillation. At chosen `[student_layer, teacher_layer]`
//! pairs the student's hidden states, through a learned linear projection when the widths differ
//! (FitNets' regressor), are pulled towards the teacher's by MSE, smooth-L1 or cosine distance,
//! optionally plus any dense logit loss.
//!
//! ```text
//! loss = weight · Σ_{(i, j) ∈ layers} F(W_k h_i^S + b_k, h_j^T) + logit_weight · L_logit
//! F    = mean over counted positions of   mean_d (x − y)²                    (mse)
//!                                          mean_d smooth_l1_β(x − y)          (smooth_l1)
//!                                          1 − x·y / (‖x‖ ‖y‖)                 (cosine)
//! L_logit = (1 − w)·D(p ‖ q) + w·CE          (w = hard_label_weight, D = divergence)
//! ```
//!
//! `k` indexes the pair (one projection each), `h^T` is optionally standardised per position
//! (`normalize_teacher`), and the counted positions are those of the logit loss (the responses
//! of instruction data).
//!
//! Hidden-state indices follow [`HiddenStates`]: `0` is the embedding output, `i` the output of
//! block `i` (1-based), the last (`num_layers`) has the final norm applied. The default `layers`
//! is TinyBERT's uniform mapping `m ↦ m·N/M` for `m = 0..=M` (M student blocks, N teacher
//! blocks; `⌊m·N/M⌋` when M does not divide N).
//!
//! The projections are the method's own trainable parameters ([`super::MethodParams`]): trained
//! with the student, checkpointed with their AdamW moments, and saved beside the exported
//! student as `feature_projections.safetensors` ([`PROJECTIONS_FILE`]).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor, TensorData};
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

/// The distance between projected student and teacher hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLoss {
    /// Mean squared error over the hidden dimension (FitNets' L2 hint loss; TinyBERT's MSE).
    #[default]
    Mse,
    /// Smooth-L1 (Huber with threshold `beta`) over the hidden dimension.
    SmoothL1,
    /// `1 − cosine similarity` per position (DistilBERT's cosine embedding loss).
    Cosine,
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
    /// Smooth-L1 threshold `β ≥ 0` (default `1.0`, PyTorch's; `0` is plain L1).
    pub beta: f64,
    /// Weight of the feature term, `≥ 0` (default `1.0`).
    pub weight: f64,
    /// The learned projection (default `auto`).
    pub projection: Projection,
    /// Standardise each teacher hidden state per position (zero mean, unit variance over the
    /// hidden dimension, no learned gain: [`standardize`]) before the distance (default
    /// `false`). Pre-norm transformers' residual streams grow with depth (root mean square
    /// ≈ 16 in the shipped 4 × 128 teacher's middle layers against ≈ 1.4 after its final norm),
    /// so a raw MSE is dominated by their scale; Wei et al. 2022's feature distillation whitens
    /// the teacher's features the same way.
    pub normalize_teacher: bool,
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
            weight: 1.0,
            projection: Projection::Auto,
            normalize_teacher: false,
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
        if !self.beta.is_finite() || self.beta < 0.0 {
            return Err(TrainError::config("beta", "a finite value ≥ 0", self.beta));
        }
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
        Ok(Feature { config: self.clone(), logit, pairs: Vec::new(), projections: None })
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
        let plain = device.clone().inner();
        let mut rng = Rng::new(seed ^ 0x4645_4154_5552_4553); // "FEATURES"
        let bound = 1.0 / (d_in as f32).sqrt();
        let mut uniform = |n: usize| -> Vec<f32> {
            (0..n).map(|_| (2.0 * rng.next_f32() - 1.0) * bound).collect()
        };
        let proj = (0..pairs)
            .map(|_| {
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
/// where `mask` is true. Shapes: `[rows, d]`, `[rows, d]`, `[rows]` → `[1]`.
///
/// ```text
/// mse:        mean_d (s − t)²
/// smooth_l1:  mean_d { ½(s − t)²/β  if |s − t| < β;  |s − t| − ½β  otherwise }   (β = 0: |s − t|)
/// cosine:     1 − s·t / (max(‖s‖, ε)·max(‖t‖, ε)),  ε = 1e-8
/// ```
///
/// # Panics
/// When the shapes differ.
pub fn feature_distance(
    loss: FeatureLoss,
    beta: f64,
    student: Tensor<2>,
    teacher: Tensor<2>,
    mask: Tensor<1, Bool>,
) -> Tensor<1> {
    assert_eq!(
        student.dims(),
        teacher.dims(),
        "student (projected) and teacher hidden states must have one shape"
    );
    let [rows, _] = student.dims();
    let per_row = match loss {
        FeatureLoss::Mse => (student - teacher).square().mean_dim(1), // [rows, 1]
        FeatureLoss::SmoothL1 => {
            let diff = student - teacher; // [rows, d]
            let abs = diff.clone().abs();
            let per = if beta > 0.0 {
                let far = abs.clone().greater_equal_elem(beta);
                let quad = diff.square().mul_scalar(0.5 / beta);
                quad.mask_where(far, abs.sub_scalar(0.5 * beta))
            } else {
                abs
            };
            per.mean_dim(1)
        }
        FeatureLoss::Cosine => {
            const EPS: f64 = 1e-8;
            // Norms clamped through their squares: no NaN gradient at a zero vector.
            let ns = student.clone().square().sum_dim(1).clamp_min(EPS * EPS).sqrt();
            let nt = teacher.clone().square().sum_dim(1).clamp_min(EPS * EPS).sqrt();
            let dot = (student * teacher).sum_dim(1); // [rows, 1]
            dot.div(ns * nt).neg().add_scalar(1.0)
        }
    }
    .reshape([rows]);
    let weights = mask.float(); // [rows]
    let count = weights.clone().sum().clamp_min(1.0);
    (per_row * weights).sum().div(count)
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
    logit: Box<dyn Divergence>,
    /// Resolved layer pairs (empty until [`super::Method::init_params`]).
    pairs: Vec<[usize; 2]>,
    projections: Option<Projections>,
}

impl Feature {
    /// The layer pairs in use (empty until the trainer has both models).
    pub fn pairs(&self) -> &[[usize; 2]] {
        &self.pairs
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
        let Some(teacher) = teacher else { return Ok(()) }; // waits for the teacher
        if !self.pairs.is_empty() {
            return Ok(());
        }
        let (ls, ds) = probe(student, "student", device)?;
        let (lt, dt) = probe(teacher, "teacher", &device.clone().inner())?;
        let pairs = self.config.layers.clone().unwrap_or_else(|| uniform_layers(ls, lt));
        for [s, t] in &pairs {
            if *s > ls {
                return Err(TrainError::config(
                    "layers",
                    "student hidden-state indices in 0..=num_layers (0 = embeddings)",
                    format!("{s} (the student has {ls} layers: 0..={ls})"),
                ));
            }
            if *t > lt {
                return Err(TrainError::config(
                    "layers",
                    "teacher hidden-state indices in 0..=num_layers (0 = embeddings)",
                    format!("{t} (the teacher has {lt} layers: 0..={lt})"),
                ));
            }
        }
        let project = match self.config.projection {
            Projection::Auto => ds != dt,
            Projection::Linear => true,
            Projection::None if ds != dt => {
                return Err(TrainError::config(
                    "projection",
                    "\"auto\" or \"linear\" when student and teacher widths differ",
                    format!("\"none\" (student width {ds}, teacher width {dt})"),
                ));
            }
            Projection::None => false,
        };
        self.projections = project.then(|| Projections::init(pairs.len(), ds, dt, seed, device));
        self.pairs = pairs;
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

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let teacher = cx.require_teacher("feature")?;
        if self.pairs.is_empty() {
            self.init_params(cx.student, Some(teacher), cx.device, cx.seed)?;
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
        let t =
            hidden_states_across(teacher, batch.input_ids.clone().inner()).ok_or_else(missing)?;
        let [b, n] = batch.input_ids.dims();
        let labels = batch.labels.clone().flatten::<1>(0, 1); // [rows]
        let mask = labels.clone().not_equal_elem(IGNORE_INDEX); // [rows]
        let mut feature: Option<Tensor<1>> = None;
        for (k, [i, j]) in self.pairs.iter().enumerate() {
            let hs = s.hidden[*i].clone().cast(FloatDType::F32); // [b, n, ds]
            let ds = hs.dims()[2];
            let mut hs = hs.reshape([b * n, ds]);
            if let Some(p) = &self.projections {
                hs = p.proj[k].forward(hs); // [rows, dt]
            }
            let ht = t.hidden[*j].clone().cast(FloatDType::F32); // [b, n, dt]
            let dt = ht.dims()[2];
            let mut ht = ht.reshape([b * n, dt]); // [rows, dt], no graph
            if self.config.normalize_teacher {
                ht = standardize(ht);
            }
            let ht = ht.autodiff();
            let f = feature_distance(self.config.loss, self.config.beta, hs, ht, mask.clone());
            feature = Some(match feature {
                Some(acc) => acc + f,
                None => f,
            });
        }
        let feature = feature.expect("at least one layer pair (validated)");
        let feature_value = f64::from(feature.clone().inner().into_scalar::<f32>());
        let mut loss = feature.mul_scalar(self.config.weight);
        let mut metrics = vec![("feature_loss", feature_value)];
        if self.config.logit_weight > 0.0 {
            let tl = t.logits.autodiff();
            let (sl, tl) = align_vocab(s.logits, tl, cx.vocab_alignment)?;
            let kd = KdBatch::from_sequences(sl, tl).with_labels(labels);
            let logit = self.logit.forward(kd, Reduction::Mean)?.loss;
            metrics.push(("logit_loss", f64::from(logit.clone().inner().into_scalar::<f32>())));
            loss = loss.add(logit.mul_scalar(self.config.logit_weight));
        }
        Ok(MicroBatchLoss { loss, tokens: batch.counted as u64, metrics })
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
    fn uniform_mapping_covers_both_ends() {
        assert_eq!(uniform_layers(2, 4), [[0, 0], [1, 2], [2, 4]]);
        assert_eq!(uniform_layers(4, 4), [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]]);
        assert_eq!(uniform_layers(0, 3), [[0, 0]]);
    }
}
