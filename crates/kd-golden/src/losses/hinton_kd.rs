//! `hinton_kd`: soft KL at temperature `T` (times `T²`) mixed with hard cross-entropy at `T = 1`.
//!
//! ```text
//! soft_term = T² · KL(softmax(teacher/T) ‖ softmax(student/T))
//! hard_term = −log softmax(student)[label]
//! per_row   = alpha · soft_term + (1 − alpha) · hard_term
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, consts, finish, kl, log_softmax};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed, or a valid row's label is out of range.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let alpha = case.f64("config.alpha")?;
    let tape = Tape::new();
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(b.rows());
    let mut soft_x = RowExtra::new("soft_term", b.rows());
    let mut hard_x = RowExtra::new("hard_term", b.rows());
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let y = b.label(case, i)?;
        let lq = log_softmax(&tape, s, t);
        let lp = log_softmax(&tape, &consts(&tape, &b.teacher[i]), t);
        let soft = kl(&tape, &lp, &lq) * (t * t);
        let hard = -log_softmax(&tape, s, 1.0)[y];
        soft_x.set(i, soft.val());
        hard_x.set(i, hard.val());
        per_row.push(Some(soft * alpha + hard * (1.0 - alpha)));
    }
    Ok(finish(&tape, &student, &per_row, vec![soft_x.into_pair(), hard_x.into_pair()]))
}
