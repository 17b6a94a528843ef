//! `tvd`: total variation distance at temperature `T`.
//!
//! ```text
//! per_row = ½ Σ_v |p_v − q_v|,  p = softmax(teacher/T), q = softmax(student/T)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, finish, valid_rows};
use crate::tape::{Tape, Var};

/// `½ Σ |p − q|` from log-probability rows.
pub fn half_l1<'t>(tape: &'t Tape, lp: &[Var<'t>], lq: &[Var<'t>]) -> Var<'t> {
    let terms: Vec<Var<'t>> = lp.iter().zip(lq).map(|(&a, &b)| (a.exp() - b.exp()).abs()).collect();
    tape.sum(&terms) * 0.5
}

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let tape = Tape::new();
    let (student, per_row) = valid_rows(&tape, &b, t, |_, lp, lq| half_l1(&tape, lp, lq));
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
