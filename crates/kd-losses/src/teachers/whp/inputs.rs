//! Inputs and outputs of [`crate::teachers::whp::RevisitTeacher`]: the names' first tokens, the per-row
//! flags, and the host-side targets.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::logspace::f32_on;

/// First token ids of each word of one name, as the tokenizer writes the word after a space
/// (`w_prefix`) and at the start of a line (`wo_prefix`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NameFirstTokens {
    /// First token of each word with a leading space.
    pub w_prefix: Vec<usize>,
    /// First token of each word without a leading space.
    pub wo_prefix: Vec<usize>,
}

impl NameFirstTokens {
    /// Both lists.
    pub fn new(w_prefix: Vec<usize>, wo_prefix: Vec<usize>) -> Self {
        NameFirstTokens { w_prefix, wo_prefix }
    }

    /// The union of both lists, ascending, without repeats (the order the moves visit them).
    pub fn all(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.w_prefix.iter().chain(&self.wo_prefix).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// First token of the target (original) name with and without a leading space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OriginalFirstToken {
    /// With a leading space.
    pub w_prefix: usize,
    /// Without a leading space.
    pub wo_prefix: usize,
}

/// Everything [`crate::teachers::whp::RevisitTeacher`] needs besides the logits. Row vectors are `[batch·len]`,
/// row-major, aligned to the original text's positions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RevisitInputs {
    /// The K replacement names' first tokens, in the order of the counterfactual logits.
    pub replacement_first_tokens: Vec<NameFirstTokens>,
    /// The original (target) name's first tokens.
    pub original_first_token: OriginalFirstToken,
    /// Token id of the target-name token following row `(b, l)` in the original text, `-1` =
    /// none (intervention only).
    pub anchor_targets: Vec<i64>,
    /// Rows where a majority vote may move probability (in the official code: the text before
    /// the row already mentions the target; intervention only).
    pub majority_allowed: Vec<bool>,
    /// Rows whose replacement-name logits are lowered (in the official code: after the
    /// replacement name's first appearance; `whp_baseline` only).
    pub suppress_rows: Vec<bool>,
}

impl RevisitInputs {
    /// Inputs for `rows = batch·len` rows with no anchor, majority moves allowed everywhere
    /// and no suppressed row; set the row vectors that apply afterwards.
    pub fn new(
        replacement_first_tokens: Vec<NameFirstTokens>,
        original_first_token: OriginalFirstToken,
        rows: usize,
    ) -> Self {
        RevisitInputs {
            replacement_first_tokens,
            original_first_token,
            anchor_targets: vec![-1; rows],
            majority_allowed: vec![true; rows],
            suppress_rows: vec![false; rows],
        }
    }
}

/// Whether (and to which original token) the majority vote moved a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MajorityMove {
    /// No majority, or a majority where moves are not allowed.
    #[default]
    None,
    /// More than K/2 counterfactuals put `> move_threshold` on a `w_prefix` token.
    WithPrefix,
    /// Likewise for `wo_prefix` (and no `w_prefix` majority).
    WithoutPrefix,
}

impl MajorityMove {
    /// `0` none, `1` moved to `w_prefix`, `2` moved to `wo_prefix` (the golden file's codes).
    pub fn code(self) -> i64 {
        match self {
            MajorityMove::None => 0,
            MajorityMove::WithPrefix => 1,
            MajorityMove::WithoutPrefix => 2,
        }
    }
}

/// Output of [`crate::teachers::whp::RevisitTeacher::build`]: host `f64` vectors, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisitTargets {
    /// `[K, batch, len, vocab]`.
    pub dims: [usize; 4],
    /// `p_k` after the moves (`whp_baseline`: softmax of the lowered logits). Shape: `[K, batch, len, vocab]`.
    pub counterfactual_probs: Vec<f64>,
    /// Rows where step 1 (change name back) ran. Shape: `[batch·len]`.
    pub anchor_moved: Vec<bool>,
    /// What step 2 (majority vote) did. Shape: `[batch·len]`.
    pub majority_moved: Vec<MajorityMove>,
    /// `whp_baseline`: the argmax of `soft_teacher_probs` (lowest index on exact ties). Shape: `[batch·len]`.
    pub labels: Option<Vec<usize>>,
    /// `whp_baseline`: the distribution before the one-hot. Shape: `[batch, len, vocab]`.
    pub soft_teacher_probs: Option<Vec<f64>>,
    /// The student's targets. Shape: `[batch, len, vocab]`.
    pub teacher_probs: Vec<f64>,
}

impl RevisitTargets {
    /// `teacher_probs` as an `f32` tensor `[batch, len, vocab]` on `device`, for
    /// [`crate::teachers::whp::WhpLoss`].
    pub fn teacher_tensor(&self, device: &Device) -> Tensor<3> {
        let [_, batch, len, vocab] = self.dims;
        let data: Vec<f32> = self.teacher_probs.iter().map(|&p| p as f32).collect();
        Tensor::from_data(TensorData::new(data, [batch, len, vocab]), f32_on(device))
    }
}
