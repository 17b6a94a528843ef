//! `skew_reverse_kl`: KL from the student to a student–teacher mixture (DistiLLM's SRKL).
//!
//! ```text
//! m = (1 − alpha)·p + alpha·q     (the gradient flows through m)
//! per_row = KL(q‖m) = Σ_v q_v (log q_v − log m_v)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, finish, kl, log_mix, valid_rows};
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
    let (student, per_row) = valid_rows(&tape, &b, t, |_, lp, lq| {
        let lm = log_mix(&tape, lp, 1.0 - alpha, lq, alpha);
        kl(&tape, lq, &lm)
    });
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
