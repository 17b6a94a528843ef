//! `topk_kl`: KL against a teacher known only by its top-K log-probabilities, in three
//! conventions for the mass outside the top K.
//!
//! ```text
//! inputs: student_logits [N][V], teacher_topk_ids [N][K], teacher_topk_logprobs [N][K]
//!         (full-vocabulary teacher log-probs at T = 1; P = Σ_K exp(lp) < 1)
//! log q = log_softmax(student/T) over V, q_i gathered at the ids
//! teacher at T: lp'_i = lp_i/T − log Z
//! renorm_teacher: Z = Σ_K exp(lp_i/T);  value Σ_K p'_i (lp'_i − log q_i)   (student not renormalised)
//! renorm_both:    Z as above; log q̃_i = log q_i − log Σ_K q_j;  value KL(p'‖q̃) over K
//! tail_bucket:    Z = Σ_K exp(lp_i/T) + (1 − P)^(1/T);  P'_tail = (1 − P)^(1/T)/Z;  Q_tail = 1 − Σ_K q_i
//!                 value Σ_K p'_i (lp'_i − log q_i) + P'_tail (log P'_tail − log Q_tail)
//!                 extras teacher_tail_mass = P'_tail, student_tail_mass = Q_tail
//! all times T² when scale_by_t2
//! ```

use serde_json::Value;

use crate::error::{GoldenError, Result};
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, finish, log_softmax};
use crate::tape::{Tape, Var};

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed, an id is out of range, or
/// `convention` is unknown.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let ids = case.int_mat("inputs.teacher_topk_ids")?;
    let lps = case.mat("inputs.teacher_topk_logprobs")?;
    let t = case.f64("config.temperature")?;
    let scale = if case.bool("config.scale_by_t2")? { t * t } else { 1.0 };
    let conv = case.str("config.convention")?;
    if !matches!(conv, "renorm_teacher" | "renorm_both" | "tail_bucket") {
        return Err(GoldenError::UnknownOption {
            case: case.name.to_string(),
            name: "convention",
            got: conv.to_string(),
            expected: "renorm_teacher, renorm_both, tail_bucket",
        });
    }
    let tail = conv == "tail_bucket";
    let tape = Tape::new();
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let n = b.rows();
    let mut per_row = Vec::with_capacity(n);
    let (mut tx, mut sx) =
        (RowExtra::new("teacher_tail_mass", n), RowExtra::new("student_tail_mass", n));
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let v = b.student[i].len();
        let idx: Vec<usize> = ids[i]
            .iter()
            .map(|&id| usize::try_from(id).ok().filter(|&id| id < v))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                case.invalid("inputs.teacher_topk_ids", "ids below the vocabulary size")
            })?;
        let lq_full = log_softmax(&tape, s, t);
        let lq: Vec<Var<'_>> = idx.iter().map(|&id| lq_full[id]).collect();
        // Teacher at temperature T, renormalised over K (plus the tail bucket).
        let mass: f64 = lps[i].iter().map(|lp| lp.exp()).sum();
        let tail_t = if tail { (1.0 - mass).powf(1.0 / t) } else { 0.0 };
        let z: f64 = lps[i].iter().map(|lp| (lp / t).exp()).sum::<f64>() + tail_t;
        let lpt: Vec<f64> = lps[i].iter().map(|lp| lp / t - z.ln()).collect();
        let value = match conv {
            "renorm_both" => {
                let lse = tape.logsumexp(&lq);
                let terms: Vec<Var<'_>> =
                    lpt.iter().zip(&lq).map(|(&p, &q)| (lse - q + p) * p.exp()).collect();
                tape.sum(&terms)
            }
            _ => {
                let terms: Vec<Var<'_>> =
                    lpt.iter().zip(&lq).map(|(&p, &q)| (p - q) * p.exp()).collect();
                let head = tape.sum(&terms);
                if tail {
                    let p_tail = tail_t / z;
                    let qs: Vec<Var<'_>> = lq.iter().map(|q| q.exp()).collect();
                    let q_tail = 1.0 - tape.sum(&qs);
                    tx.set(i, p_tail);
                    sx.set(i, q_tail.val());
                    head + (p_tail.ln() - q_tail.ln()) * p_tail
                } else {
                    head
                }
            }
        };
        per_row.push(Some(value * scale));
    }
    let extras = if tail { vec![tx.into_pair(), sx.into_pair()] } else { Vec::new() };
    Ok(finish(&tape, &student, &per_row, extras))
}
