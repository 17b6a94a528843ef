//! `skew_reverse_kl`: KL from the student to a student–teacher mixture (DistiLLM's SRKL).
//!
//! ```text
//! m = (1 − alpha)·p + alpha·q     (the gradient flows through m)
//! per_row = KL(q‖m) = Σ_v q_v (log q_v − log m_v)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, consts, finish, kl, log_mix, log_softmax};
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
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let lq = log_softmax(&tape, s, t);
        let lp = log_softmax(&tape, &consts(&tape, &b.teacher[i]), t);
        let lm = log_mix(&tape, &lp, 1.0 - alpha, &lq, alpha);
        per_row.push(Some(kl(&tape, &lq, &lm)));
    }
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
