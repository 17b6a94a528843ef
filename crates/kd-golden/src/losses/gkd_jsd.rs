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
use crate::rows::{RowBatch, RowExtra, consts, finish, kl, log_mix, log_softmax};
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
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(b.rows());
    let mut kt = RowExtra::new("kl_teacher_mix", b.rows());
    let mut ks = RowExtra::new("kl_student_mix", b.rows());
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let lq = log_softmax(&tape, s, t);
        let lp = log_softmax(&tape, &consts(&tape, &b.teacher[i]), t);
        let v = if beta == 0.0 {
            kl(&tape, &lp, &lq)
        } else if beta == 1.0 {
            kl(&tape, &lq, &lp)
        } else {
            let lm = log_mix(&tape, &lp, beta, &lq, 1.0 - beta);
            let a = kl(&tape, &lp, &lm);
            let c = kl(&tape, &lq, &lm);
            kt.set(i, a.val());
            ks.set(i, c.val());
            a * beta + c * (1.0 - beta)
        };
        per_row.push(Some(v));
    }
    let extras = if special { Vec::new() } else { vec![kt.into_pair(), ks.into_pair()] };
    Ok(finish(&tape, &student, &per_row, extras))
}
