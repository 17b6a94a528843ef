//! `sft`: supervised fine-tuning, next-token cross-entropy on the counted tokens of the data
//! (the responses of instruction data, every token of plain text). No teacher.
//!
//! ```text
//! loss = − Σ_{counted t} log q(y_t | y_<t) / #counted
//! ```

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::{MicroBatchLoss, StepContext, TeacherUse};
use crate::metrics::masked_cross_entropy_mean;
use crate::model::LanguageModel;

/// Config of [`Sft`] (no settings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {}

impl SftConfig {
    /// Nothing to check.
    ///
    /// # Errors
    /// Never.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The method.
    ///
    /// # Errors
    /// Never.
    pub fn init(&self, _steps: u64) -> Result<Sft> {
        Ok(Sft)
    }
}

/// Next-token cross-entropy on the data (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Sft;

/// The cross-entropy micro-batch shared by `sft` and `seqkd`.
pub(crate) fn cross_entropy_batch<S: LanguageModel, T>(
    cx: &mut StepContext<'_, S, T>,
) -> MicroBatchLoss {
    let batch = cx.next_batch();
    let logits = cx.student.logits(batch.input_ids); // [b, s, v]
    MicroBatchLoss {
        loss: masked_cross_entropy_mean(logits, batch.labels),
        tokens: batch.counted as u64,
        metrics: Vec::new(),
    }
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for Sft {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::None
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        Ok(cross_entropy_batch(cx))
    }
}
