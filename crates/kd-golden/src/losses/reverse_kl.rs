//! `reverse_kl`: `KL(q‖p)` per row, times `T²` when `scale_by_t2`.
//!
//! ```text
//! p = softmax(teacher/T), q = softmax(student/T)
//! per_row = s · Σ_v q_v (log q_v − log p_v),    s = T² if scale_by_t2 else 1
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, finish, kl, valid_rows};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let scale = if case.bool("config.scale_by_t2")? { t * t } else { 1.0 };
    let tape = Tape::new();
    let (student, per_row) = valid_rows(&tape, &b, t, |_, lp, lq| kl(&tape, lq, lp) * scale);
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
