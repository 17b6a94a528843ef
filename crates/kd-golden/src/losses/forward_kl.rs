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
use crate::rows::{RowBatch, RowExtra, consts, cross_entropy, finish, kl, log_softmax};
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
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(b.rows());
    let mut ce = RowExtra::new("per_row_cross_entropy_form", b.rows());
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let lq = log_softmax(&tape, s, t);
        let lp = log_softmax(&tape, &consts(&tape, &b.teacher[i]), t);
        per_row.push(Some(kl(&tape, &lp, &lq) * scale));
        ce.set(i, cross_entropy(&tape, &lp, &lq).val() * scale);
    }
    Ok(finish(&tape, &student, &per_row, vec![ce.into_pair()]))
}
