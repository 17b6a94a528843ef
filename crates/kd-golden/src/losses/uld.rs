//! `uld`: universal logit distillation, L1 between sorted probability vectors (cross-vocabulary).
//!
//! ```text
//! q = softmax(student/T_s) over V, p = softmax(teacher/T_t) over V_t (V_t may differ)
//! per_row = Σ_k |sort_desc(q)_k − sort_desc(p)_k|, the shorter vector zero-padded
//! ```
//!
//! The gradient flows through the sort as through a permutation.

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, finish, log_softmax};
use crate::tape::{Tape, Var};

fn sort_desc(mut xs: Vec<Var<'_>>) -> Vec<Var<'_>> {
    xs.sort_by(|a, b| b.val().total_cmp(&a.val()));
    xs
}

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let ts = case.f64("config.student_temperature")?;
    let tt = case.f64("config.teacher_temperature")?;
    let tape = Tape::new();
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(b.rows());
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let q = sort_desc(log_softmax(&tape, s, ts).into_iter().map(Var::exp).collect());
        let p = sort_desc(
            log_softmax(&tape, &tape.vars(&b.teacher[i]), tt).into_iter().map(Var::exp).collect(),
        );
        let zero = tape.var(0.0);
        let k = q.len().max(p.len());
        let terms: Vec<Var<'_>> = (0..k)
            .map(|j| (q.get(j).copied().unwrap_or(zero) - p.get(j).copied().unwrap_or(zero)).abs())
            .collect();
        per_row.push(Some(tape.sum(&terms)));
    }
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
