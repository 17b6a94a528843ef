//! Plain types shared by the driver, the sparse top-k loss and the fused kernels.
//!
//! This module depends on nothing else in the crate, so [`crate::divergence`],
//! [`crate::topk_kl`] and [`crate::fused`] can all use it without importing each other
//! (the items are re-exported from the modules that introduce them to users).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// A named diagnostic returned beside the loss (the golden files' `extras`).
#[derive(Debug, Clone)]
pub struct Extra {
    /// Name, as in the golden files (e.g. `tckd`, `head_weight`).
    pub name: &'static str,
    /// Values, detached from the graph: `[rows]` (0 on ignored rows) or `[1]` for scalars.
    pub value: Tensor<1>,
    /// `true` when the value has one entry per row.
    pub per_row: bool,
}

impl Extra {
    /// A per-row diagnostic. Shape: `[rows]`.
    pub fn row(name: &'static str, value: Tensor<1>) -> Self {
        Self { name, value, per_row: true }
    }
    /// A scalar diagnostic. Shape: `[1]`.
    pub fn scalar(name: &'static str, value: Tensor<1>) -> Self {
        Self { name, value, per_row: false }
    }
}

/// Names of the two diagnostics a hard-label mix adds: the scaled divergence alone and the
/// hard-label cross-entropy (see [`crate::HardLabelMix`]).
pub const HARD_LABEL_EXTRAS: [&str; 2] = ["soft_term", "hard_term"];

/// How the missing teacher mass outside the top-k is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopKConvention {
    /// Renormalise the teacher over its k ids; student not renormalised.
    RenormTeacher,
    /// Renormalise both teacher and student over the teacher's k ids.
    RenormBoth,
    /// Keep the teacher's leftover mass as one extra "tail" bucket on both sides.
    TailBucket,
}

impl TopKConvention {
    /// Names of the per-row diagnostics of `tail_bucket`: the teacher's tail `P'_tail` and
    /// the student's tail `Q_tail`.
    pub const TAIL_EXTRAS: [&'static str; 2] = ["teacher_tail_mass", "student_tail_mass"];

    /// The diagnostics this convention reports (`tail_bucket`: [`Self::TAIL_EXTRAS`]).
    pub fn extra_names(self) -> &'static [&'static str] {
        match self {
            Self::TailBucket => &Self::TAIL_EXTRAS,
            Self::RenormTeacher | Self::RenormBoth => &[],
        }
    }
}

/// Student tail masses `Q_tail` below this value are recomputed exactly by
/// [`crate::TopKKl`] (see its docs; also [`crate::TopKKl::EXACT_TAIL_BELOW`]).
///
/// Above it, the `f32` error of `1 − Σ_k q_i` (about `1e-7`) is at most `1e-4` relative.
pub const EXACT_TAIL_BELOW: f64 = 1e-3;
