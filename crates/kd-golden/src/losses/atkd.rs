//! `atkd`: teacher-uncertainty-split DKD (ATKD): easy rows get NCKD only, hard rows TCKD + NCKD.
//!
//! ```text
//! u_i = 1 − p_{y_i}   (teacher at teacher_temperature)
//! med = lower median of u over valid rows = sorted(u)[⌊(n_valid − 1)/2⌋]
//! hard iff u_i ≥ med, else easy
//! TCKD_i as in dkd (p at teacher_temperature, q at student_temperature)
//! NCKD_i = KL over the V − 1 non-target entries (softmax of the remaining logits)
//! loss = alpha·mean_easy(NCKD) + (1 − alpha)·(mean_hard(TCKD) + mean_hard(NCKD))
//! per_row_i = n_valid · w_i · term_i,  w = alpha/n_easy (NCKD) or (1 − alpha)/n_hard (TCKD + NCKD)
//! extras: uncertainty, is_hard (int), median_uncertainty, tckd, nckd, n_easy, n_hard
//! ```

use serde_json::Value;

use super::dkd::{nckd, tckd};
use crate::error::Result;
use crate::json::{self, Case};
use crate::rows::{RowBatch, RowExtra, finish, log_softmax, log_softmax_f64};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed, or a valid row's label is out of range.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let alpha = case.f64("config.alpha")?;
    let ts = case.f64("config.student_temperature")?;
    let tt = case.f64("config.teacher_temperature")?;
    let n = b.rows();
    let n_valid = b.n_valid();
    let mut labels = vec![0usize; n];
    let mut u = vec![0.0; n];
    for i in (0..n).filter(|&i| b.valid(i)) {
        labels[i] = b.label(case, i)?;
        u[i] = 1.0 - log_softmax_f64(&b.teacher[i], tt)[labels[i]].exp();
    }
    let mut sorted: Vec<f64> = (0..n).filter(|&i| b.valid(i)).map(|i| u[i]).collect();
    sorted.sort_by(f64::total_cmp);
    let med = sorted.get(n_valid.saturating_sub(1) / 2).copied().unwrap_or(0.0);
    let hard: Vec<bool> = (0..n).map(|i| b.valid(i) && u[i] >= med).collect();
    let n_hard = hard.iter().filter(|&&h| h).count();
    let n_easy = n_valid - n_hard;

    let tape = Tape::new();
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(n);
    let (mut ux, mut hx) = (RowExtra::new("uncertainty", n), RowExtra::ints("is_hard", n));
    let (mut tx, mut nx) = (RowExtra::new("tckd", n), RowExtra::new("nckd", n));
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let y = labels[i];
        let teacher = tape.vars(&b.teacher[i]);
        let lp = log_softmax(&tape, &teacher, tt);
        let lq = log_softmax(&tape, s, ts);
        let tc = tckd(&tape, &lp, &lq, y);
        let nc = nckd(&tape, &teacher, s, y, tt, ts);
        ux.set(i, u[i]);
        hx.set(i, f64::from(u8::from(hard[i])));
        tx.set(i, tc.val());
        nx.set(i, nc.val());
        let v = if hard[i] {
            (tc + nc) * ((1.0 - alpha) / n_hard as f64)
        } else {
            nc * (alpha / n_easy as f64)
        };
        per_row.push(Some(v * n_valid as f64));
    }
    let extras = vec![
        ux.into_pair(),
        hx.into_pair(),
        ("median_uncertainty".to_string(), json::num(med)),
        tx.into_pair(),
        nx.into_pair(),
        ("n_easy".to_string(), Value::from(n_easy as i64)),
        ("n_hard".to_string(), Value::from(n_hard as i64)),
    ];
    Ok(finish(&tape, &student, &per_row, extras))
}
