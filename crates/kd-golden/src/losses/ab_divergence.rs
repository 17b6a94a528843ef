//! `ab_divergence`: the alpha-beta divergence of ABKD, with its special cases.
//!
//! ```text
//! general: −(1/(a b)) Σ_v [p^a q^b − a/(a+b) p^(a+b) − b/(a+b) q^(a+b)]
//! a = b = 0: ½ Σ (log q − log p)²
//! a = 0:     (1/b) Σ [q^b log(q^b/p^b) − q^b + p^b]
//! b = 0:     (1/a) Σ [p^a log(p^a/q^a) − p^a + q^a]
//! a + b = 0: (1/a) Σ [log(q^a/p^a) + p^a/q^a − 1]
//! powers are exponentials of scaled log-probabilities: p^a q^b = exp(a log p + b log q)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, consts, finish, log_softmax};
use crate::tape::{Tape, Var};

/// The divergence of one row from its log-probabilities.
pub fn row<'t>(tape: &'t Tape, lp: &[Var<'t>], lq: &[Var<'t>], a: f64, b: f64) -> Var<'t> {
    let terms: Vec<Var<'t>> = lp
        .iter()
        .zip(lq)
        .map(|(&x, &y)| {
            if a == 0.0 && b == 0.0 {
                let d = y - x;
                d * d * 0.5
            } else if a == 0.0 {
                let qb = (y * b).exp();
                (qb * ((y - x) * b) - qb + (x * b).exp()) / b
            } else if b == 0.0 {
                let pa = (x * a).exp();
                (pa * ((x - y) * a) - pa + (y * a).exp()) / a
            } else if a + b == 0.0 {
                ((y - x) * a + ((x - y) * a).exp() - 1.0) / a
            } else {
                let s = a + b;
                ((x * a + y * b).exp() - (x * s).exp() * (a / s) - (y * s).exp() * (b / s))
                    * (-1.0 / (a * b))
            }
        })
        .collect();
    tape.sum(&terms)
}

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let rb = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let a = case.f64("config.alpha")?;
    let b = case.f64("config.beta")?;
    let tape = Tape::new();
    let student: Vec<_> = rb.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(rb.rows());
    for (i, s) in student.iter().enumerate() {
        if !rb.valid(i) {
            per_row.push(None);
            continue;
        }
        let lq = log_softmax(&tape, s, t);
        let lp = log_softmax(&tape, &consts(&tape, &rb.teacher[i]), t);
        per_row.push(Some(row(&tape, &lp, &lq, a, b)));
    }
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
