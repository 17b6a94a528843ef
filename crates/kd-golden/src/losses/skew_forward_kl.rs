//! `skew_forward_kl`: KL from the teacher to a teacher–student mixture (DistiLLM's SKL).
//!
//! ```text
//! m = alpha·p + (1 − alpha)·q     (the gradient flows through m)
//! per_row = KL(p‖m) = Σ_v p_v (log p_v − log m_v)
//! extras.per_row_cross_entropy_form = −Σ_v p_v log m_v
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, consts, cross_entropy, finish, kl, log_mix, log_softmax};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let alpha = case.f64("config.alpha")?;
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
        let lm = log_mix(&tape, &lp, alpha, &lq, 1.0 - alpha);
        ce.set(i, cross_entropy(&tape, &lp, &lm).val());
        per_row.push(Some(kl(&tape, &lp, &lm)));
    }
    Ok(finish(&tape, &student, &per_row, vec![ce.into_pair()]))
}
