//! `gkd_jsd` (and `js`, the same loss at `beta = 0.5`): the generalised Jensen–Shannon
//! divergence of GKD / TRL, with its two limits handled as special cases.
//!
//! ```text
//! p = softmax(teacher/T), q = softmax(student/T), m = beta·p + (1 − beta)·q
//! per_row = beta · KL(p‖m) + (1 − beta) · KL(q‖m)        (no T² factor)
//! beta = 0 → KL(p‖q),  beta = 1 → KL(q‖p)                (no extras then)
//! extras: kl_teacher_mix = KL(p‖m), kl_student_mix = KL(q‖m)
//! log m = logsumexp(log p + log beta, log q + log(1 − beta))
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, finish, kl, log_mix, valid_rows};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let beta = case.f64("config.beta")?;
    let special = beta == 0.0 || beta == 1.0;
    let tape = Tape::new();
    let mut kt = RowExtra::new("kl_teacher_mix", b.rows());
    let mut ks = RowExtra::new("kl_student_mix", b.rows());
    let (student, per_row) = valid_rows(&tape, &b, t, |i, lp, lq| {
        if beta == 0.0 {
            kl(&tape, lp, lq)
        } else if beta == 1.0 {
            kl(&tape, lq, lp)
        } else {
            let lm = log_mix(&tape, lp, beta, lq, 1.0 - beta);
            let a = kl(&tape, lp, &lm);
            let c = kl(&tape, lq, &lm);
            kt.set(i, a.val());
            ks.set(i, c.val());
            a * beta + c * (1.0 - beta)
        }
    });
    let extras = if special { Vec::new() } else { vec![kt.into_pair(), ks.into_pair()] };
    Ok(finish(&tape, &student, &per_row, extras))
}
