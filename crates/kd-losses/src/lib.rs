//! # kd-losses
//!
//! Token-level knowledge-distillation divergences for language models on [burn], exact in value
//! and gradient on any burn device. Every loss is one call over flattened rows of student and
//! teacher logits; one shared driver applies temperature, `T²` scaling, masking (a row mask and
//! labels of `-100`), the optional hard-label cross-entropy mix and the reduction. All math is
//! in log space (log-softmax, log-sum-exp mixtures); teacher logits of `-inf` (padded
//! vocabularies) and fully masked batches give finite values and zero gradients where due.
//!
//! The crate names no backend: build it with no backend feature and pick a device in your
//! application (`flex`, `ndarray`, `wgpu` or `cuda` features forward to burn).
//!
//! ## The losses
//!
//! | id | type | per-token value (p = teacher, q = student, at T) | paper |
//! |---|---|---|---|
//! | `forward_kl` | [`ForwardKl`] | `KL(p‖q)` (× T²) | Hinton et al. 2015 |
//! | `reverse_kl` | [`ReverseKl`] | `KL(q‖p)` (× T²) | MiniLLM, Gu et al. 2024 |
//! | `hinton_kd` | [`HintonKd`] | `α T² KL(p‖q) + (1−α) CE(y)` | Hinton et al. 2015 |
//! | `gkd_jsd` | [`GeneralizedJsd`] | `β KL(p‖m) + (1−β) KL(q‖m)`, `m = βp + (1−β)q` | GKD, Agarwal et al. 2024 |
//! | `js` | [`JensenShannon`] | JSD at β = ½ | Lin 1991 |
//! | `tvd` | [`Tvd`] | `½ Σ |p − q|` | f-DISTILL, Wen et al. 2023 |
//! | `skew_forward_kl` | [`SkewForwardKl`] | `KL(p‖αp + (1−α)q)` | DistiLLM, Ko et al. 2024 |
//! | `skew_reverse_kl` | [`SkewReverseKl`] | `KL(q‖(1−α)p + αq)` | DistiLLM, Ko et al. 2024 |
//! | `akl` | [`AdaptiveKl`] | head/tail-weighted FKL + RKL | AKL, Wu et al. 2025 |
//! | `taid` | [`Taid`] + [`TaidSchedule`] | `−Σ p_t log q`, `p_t` interpolates student → teacher | TAID, Shing et al. 2025 |
//! | `fdistill` | [`FDistill`] | KL / RKL / JS(β) / TVD | f-DISTILL, Wen et al. 2023 |
//! | `alpha_divergence` | [`AlphaDivergence`] | `(1 − Σ p^α q^(1−α)) / (α(1−α))` | Amari 1985; ABKD |
//! | `ab_divergence` | [`AbDivergence`] | αβ-divergence and its limits | ABKD, Wang et al. 2025 |
//! | `dkd` | [`DecoupledKd`] | `α T² TCKD + β T² NCKD` | DKD, Zhao et al. 2022 |
//! | `atkd` | [`AdaptiveTeachingKd`] | easy: NCKD, hard: TCKD + NCKD | ATKD, Zhong et al. 2024 |
//! | `delta_kd` | [`DeltaKd`] | `KL(softmax(z_sb + α(z_t − z_tb))‖q)` | Delta-KD 2025 |
//! | `uld` | [`UniversalLogitDistillation`] | `Σ |sort↓q − sort↓p|` across vocabularies | ULD, Boizard et al. 2024 |
//! | `topk_kl` | [`TopKKl`] | KL from a top-k sparse teacher (3 conventions) | sparse / offline KD |
//! | `minillm` | [`MiniLlm`] | clipped policy gradient + single-step RKL | MiniLLM, Gu et al. 2024 |
//! | `scaling_law` | [`DistillationScalingLaw`] | predicted student loss | Busbridge et al. 2025 |
//!
//! Each type's docs give the formula, the gradient w.r.t. the student logits, shapes, errors and
//! the paper with its official code. `docs/` in the repository derives each family.
//!
//! ## Precision
//!
//! Every loss takes its float inputs (logits, log-probabilities, hidden states, heads) in `f32`,
//! `f64`, `bf16` or `f16`, in any mix, and computes, accumulates and returns in `f32`: each
//! entry point casts its inputs to `f32` once, on entry ([`logspace::to_f32`]; a no-op on `f32`),
//! and builds its own constants in `f32` whatever the device's default float dtype. Under
//! autodiff the cast is differentiable, so the gradient w.r.t. a `bf16` student comes back in
//! `bf16`: the `f32` gradient, rounded. `ChunkedHeadLoss` is the one place that computes in
//! the inputs' dtype: its head matmuls, while each chunk's log-softmax and divergence are `f32`.
//!
//! ## Speed and memory
//!
//! On flex (any float dtype, once cast to `f32`) most row-wise losses (FKL, RKL, JSD, skew KL/RKL, TVD, AKL, TAID,
//! top-k, with or without the hard-label mix) run as one fused forward+backward kernel that
//! allocates a single pooled `rows × vocab` gradient buffer; everything else runs the
//! op-composed path, with the same results (see the `fused` module). With the `flex` or
//! `autodiff` feature, `ChunkedHeadLoss` computes any row-wise loss from hidden states and the
//! LM head a chunk of rows at a time, never holding the full `[rows, vocab]` logits.
//!
//! ## Quick start
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor};
//! use kd_losses::{Divergence, GeneralizedJsdConfig, KdBatch, Reduction};
//!
//! let device = Device::flex().autodiff();
//! // Two positions of a 4-token vocabulary; position 1 is padding (label -100).
//! let student = Tensor::<2>::from_floats([[0.1, 2.0, -1.0, 0.3], [0.0, 0.0, 0.0, 0.0]], &device)
//!     .require_grad();
//! let teacher = Tensor::<2>::from_floats([[1.0, 1.5, -2.0, 0.0], [5.0, 0.0, 0.0, 0.0]], &device);
//! let labels = Tensor::<1, Int>::from_ints([1, -100], &device);
//!
//! let jsd = GeneralizedJsdConfig::new().with_beta(0.5).init()?;
//! let out = jsd.forward(KdBatch::new(student.clone(), teacher).with_labels(labels), Reduction::Mean)?;
//! let grads = out.loss.backward();
//! let g = student.grad(&grads).unwrap(); // [2, 4]; the padded row's gradient is exactly 0
//! assert_eq!(g.slice([1..2, 0..4]).abs().sum().into_scalar::<f32>(), 0.0);
//! # Ok::<(), kd_losses::KdError>(())
//! ```
//!
//! ## Losses by name
//!
//! Every loss is declared once, in one list ([`LOSSES`]: its id, whether it is dense, whether
//! its value is a divergence, whether its rows are coupled); [`LOSS_NAMES`], each loss type's
//! `ID` and [`LossConfig`] come from that list, and a test checks the table above against it.
//! [`LossConfig`] deserialises `{"loss": "<id>", ...keys}` (JSON, TOML, …) into any dense loss,
//! for training configs and command lines:
//!
//! ```
//! use kd_losses::LossConfig;
//! let config = LossConfig::by_name("gkd_jsd")?; // defaults of the original code
//! let loss = config.init()?;
//! assert_eq!(loss.name(), "gkd_jsd");
//! # Ok::<(), kd_losses::KdError>(())
//! ```
#![warn(missing_docs)]

pub mod ab_divergence;
pub mod akl;
pub mod alpha_divergence;
pub mod atkd;
#[cfg(any(feature = "autodiff", feature = "flex"))]
pub mod chunked;
mod config;
pub mod delta_kd;
pub mod divergence;
pub mod dkd;
pub mod error;
pub mod fdistill;
pub mod forward_kl;
pub mod fused;
pub mod gkd_jsd;
pub mod hinton_kd;
pub mod js;
pub mod logspace;
pub mod minillm;
pub mod reverse_kl;
pub mod scaling_law;
pub mod skew_forward_kl;
pub mod skew_reverse_kl;
pub mod taid;
pub mod teachers;
pub mod topk_kl;
pub mod tvd;
mod types;
pub mod uld;

mod registry;

pub use ab_divergence::{AbDivergence, AbDivergenceConfig};
pub use akl::{AdaptiveKl, AdaptiveKlConfig};
pub use alpha_divergence::{AlphaDivergence, AlphaDivergenceConfig};
pub use atkd::{AdaptiveTeachingKd, AdaptiveTeachingKdConfig};
#[cfg(any(feature = "autodiff", feature = "flex"))]
pub use chunked::{ChunkedHeadBatch, ChunkedHeadLoss, ChunkedHeadOutput, ChunkedTeacher};
pub use delta_kd::{DeltaKd, DeltaKdConfig};
pub use divergence::{
    Divergence, DriverSettings, Extra, HardLabelMix, KdBatch, KdOutput, Reduction, TokenInputs,
    TokenTerms,
};
pub use dkd::{DecoupledKd, DecoupledKdConfig};
pub use error::{KdError, Result};
pub use fdistill::{FDistill, FDistillConfig, FDivergenceKind};
pub use forward_kl::{ForwardKl, ForwardKlConfig};
pub use gkd_jsd::{GeneralizedJsd, GeneralizedJsdConfig};
pub use hinton_kd::{HintonKd, HintonKdConfig};
pub use js::{JensenShannon, JensenShannonConfig};
pub use minillm::{MiniLlm, MiniLlmBatch, MiniLlmConfig, MiniLlmOutput, WhiteningVariance};
pub use registry::{LOSS_NAMES, LOSSES, LossConfig, LossInfo, loss_info};
pub use reverse_kl::{ReverseKl, ReverseKlConfig};
pub use scaling_law::{DistillationScalingLaw, ScalingLawCoefficients};
pub use skew_forward_kl::{SkewForwardKl, SkewForwardKlConfig};
pub use skew_reverse_kl::{SkewReverseKl, SkewReverseKlConfig};
pub use taid::{Taid, TaidConfig, TaidRecord, TaidSchedule, TaidScheduleConfig, TaidScheduleState};
pub use topk_kl::{SparseKdBatch, TopKConvention, TopKKl, TopKKlConfig};
pub use tvd::{Tvd, TvdConfig};
pub use uld::{UniversalLogitDistillation, UniversalLogitDistillationConfig};

#[cfg(test)]
pub(crate) mod test_util {
    use burn::tensor::{Device, Int, Tensor, TensorData};

    use crate::{Divergence, KdBatch, Reduction};

    /// Rows of logits on the flex autodiff device.
    pub fn rows(data: &[&[f32]]) -> Tensor<2> {
        let v = data[0].len();
        let flat: Vec<f32> = data.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [data.len(), v]), &Device::flex().autodiff())
    }

    fn run(loss: &dyn Divergence, batch: KdBatch, student: Tensor<2>) -> (f64, Vec<f64>) {
        let out = loss.forward(batch, Reduction::Mean).unwrap();
        let grads = out.loss.backward();
        let g = student.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let l = out.loss.into_scalar::<f32>() as f64;
        (l, g.into_iter().map(f64::from).collect())
    }

    /// Mean loss and flattened student gradient.
    pub fn grad_and_loss(
        loss: &dyn Divergence,
        student: Tensor<2>,
        teacher: Tensor<2>,
    ) -> (f64, Vec<f64>) {
        let student = student.require_grad();
        run(loss, KdBatch::new(student.clone(), teacher), student)
    }

    /// Same with labels.
    pub fn grad_and_loss_with_labels(
        loss: &dyn Divergence,
        student: Tensor<2>,
        teacher: Tensor<2>,
        labels: &[i64],
    ) -> (f64, Vec<f64>) {
        let student = student.require_grad();
        let l = Tensor::<1, Int>::from_data(
            TensorData::new(labels.to_vec(), [labels.len()]),
            &student.device(),
        );
        run(loss, KdBatch::new(student.clone(), teacher).with_labels(l), student)
    }
}
