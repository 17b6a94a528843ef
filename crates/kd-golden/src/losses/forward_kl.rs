//! `forward_kl`: `KL(p‖q)` per row, times `T²` when `scale_by_t2`.
//!
//! ```text
//! p = softmax(teacher/T), q = softmax(student/T)
//! per_row = s · Σ_v p_v (log p_v − log q_v),    s = T² if scale_by_t2 else 1
//! extras.per_row_cross_entropy_form = s · (−Σ_v p_v log q_v)   (same gradient)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, cross_entropy, finish, kl, valid_rows};
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
    let mut ce = RowExtra::new("per_row_cross_entropy_form", b.rows());
    let (student, per_row) = valid_rows(&tape, &b, t, |i, lp, lq| {
        let value = kl(&tape, lp, lq) * scale;
        ce.set(i, cross_entropy(&tape, lp, lq).val() * scale);
        value
    });
    Ok(finish(&tape, &student, &per_row, vec![ce.into_pair()]))
}
