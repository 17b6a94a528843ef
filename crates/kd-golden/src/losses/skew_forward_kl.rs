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
use crate::rows::{RowBatch, RowExtra, cross_entropy, finish, kl, log_mix, valid_rows};
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
    let mut ce = RowExtra::new("per_row_cross_entropy_form", b.rows());
    let (student, per_row) = valid_rows(&tape, &b, t, |i, lp, lq| {
        let lm = log_mix(&tape, lp, alpha, lq, 1.0 - alpha);
        ce.set(i, cross_entropy(&tape, lp, &lm).val());
        kl(&tape, lp, &lm)
    });
    Ok(finish(&tape, &student, &per_row, vec![ce.into_pair()]))
}
