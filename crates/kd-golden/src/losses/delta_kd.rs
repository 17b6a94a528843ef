//! `delta_kd`: KL to a target shifted by the teacher's change from its base model, plus an
//! optional SFT cross-entropy.
//!
//! ```text
//! r = softmax((student_base + alpha·(teacher − teacher_base)) / T),  q = softmax(student/T)
//! kd_term  = KL(r‖q)
//! sft_term = −log softmax(student)[label]                 (reported when lambda_sft > 0)
//! per_row  = (1 − lambda_sft)·kd_term + lambda_sft·sft_term
//! ```
//!
//! Inputs besides the common ones: `teacher_base_logits [N][V]`, `student_base_logits [N][V]`.

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, consts, finish, kl, log_softmax, log_softmax_f64};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed, or a valid row's label is out of range.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let teacher_base = case.mat("inputs.teacher_base_logits")?;
    let student_base = case.mat("inputs.student_base_logits")?;
    let t = case.f64("config.temperature")?;
    let alpha = case.f64("config.alpha")?;
    let lambda = case.f64("config.lambda_sft")?;
    let tape = Tape::new();
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(b.rows());
    let (mut kx, mut sx) =
        (RowExtra::new("kd_term", b.rows()), RowExtra::new("sft_term", b.rows()));
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let target: Vec<f64> = (0..b.teacher[i].len())
            .map(|v| student_base[i][v] + alpha * (b.teacher[i][v] - teacher_base[i][v]))
            .collect();
        let lr = consts(&tape, &log_softmax_f64(&target, t));
        let lq = log_softmax(&tape, s, t);
        let kd = kl(&tape, &lr, &lq);
        kx.set(i, kd.val());
        let v = if lambda > 0.0 {
            let y = b.label(case, i)?;
            let sft = -log_softmax(&tape, s, 1.0)[y];
            sx.set(i, sft.val());
            kd * (1.0 - lambda) + sft * lambda
        } else {
            kd
        };
        per_row.push(Some(v));
    }
    let mut extras = vec![kx.into_pair()];
    if lambda > 0.0 {
        extras.push(sx.into_pair());
    }
    Ok(finish(&tape, &student, &per_row, extras))
}
