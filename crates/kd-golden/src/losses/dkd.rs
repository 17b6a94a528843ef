//! `dkd`: decoupled KD, target-class (TCKD) and non-target-class (NCKD) terms.
//!
//! ```text
//! y = labels[i], p = softmax(teacher/T), q = softmax(student/T)
//! TCKD = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])   (1 − p_y computed as Σ_{v≠y} p_v)
//! NCKD = KL(p̂‖q̂),  p̂, q̂ = softmax over the V − 1 non-target logits (at T)
//!        (the original's softmax(logits/T − 1000·onehot(y)) is the same in float64)
//! per_row = warmup_factor · (alpha·T²·TCKD + beta·T²·NCKD);  extras tckd, nckd (unscaled)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, finish, kl, log_softmax};
use crate::tape::{Tape, Var};

/// Binary KL between the target / non-target masses of two log-probability rows.
pub fn tckd<'t>(tape: &'t Tape, lp: &[Var<'t>], lq: &[Var<'t>], y: usize) -> Var<'t> {
    let mass = |l: &[Var<'t>]| {
        let probs: Vec<Var<'t>> = l.iter().map(|x| x.exp()).collect();
        let rest: Vec<Var<'t>> =
            probs.iter().enumerate().filter(|&(v, _)| v != y).map(|(_, &x)| x).collect();
        (probs[y], tape.sum(&rest))
    };
    let (p_y, p_rest) = mass(lp);
    let (q_y, q_rest) = mass(lq);
    p_y * (p_y.ln() - q_y.ln()) + p_rest * (p_rest.ln() - q_rest.ln())
}

/// KL between the teacher's and the student's distributions renormalised over the non-target
/// classes, each side at its own temperature.
pub fn nckd<'t>(
    tape: &'t Tape,
    teacher: &[Var<'t>],
    student: &[Var<'t>],
    y: usize,
    t_teacher: f64,
    t_student: f64,
) -> Var<'t> {
    let drop = |row: &[Var<'t>]| -> Vec<Var<'t>> {
        row.iter().enumerate().filter(|&(v, _)| v != y).map(|(_, &x)| x).collect()
    };
    let lp = log_softmax(tape, &drop(teacher), t_teacher);
    let lq = log_softmax(tape, &drop(student), t_student);
    kl(tape, &lp, &lq)
}

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed, or a valid row's label is out of range.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let alpha = case.f64("config.alpha")?;
    let beta = case.f64("config.beta")?;
    let warmup = case.f64("config.warmup_factor")?;
    let tape = Tape::new();
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(b.rows());
    let (mut tx, mut nx) = (RowExtra::new("tckd", b.rows()), RowExtra::new("nckd", b.rows()));
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let y = b.label(case, i)?;
        let teacher = tape.vars(&b.teacher[i]);
        let lq = log_softmax(&tape, s, t);
        let lp = log_softmax(&tape, &teacher, t);
        let tc = tckd(&tape, &lp, &lq, y);
        let nc = nckd(&tape, &teacher, s, y, t, t);
        tx.set(i, tc.val());
        nx.set(i, nc.val());
        per_row.push(Some((tc * (alpha * t * t) + nc * (beta * t * t)) * warmup));
    }
    Ok(finish(&tape, &student, &per_row, vec![tx.into_pair(), nx.into_pair()]))
}
