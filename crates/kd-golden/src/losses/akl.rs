//! `akl`: adaptive KL, forward and reverse KL weighted by how far the student is from the
//! teacher on the teacher's head and tail.
//!
//! ```text
//! sort p descending, running sum c_i; token i is in the tail iff c_i > mu (top-1 always head)
//! g_head = Σ_head |p − q̄|, g_tail = Σ_tail |p − q̄|      (q̄ = q with stop-gradient)
//! w_head = g_head / (g_head + g_tail), w_tail = 1 − w_head      (constants)
//! per_row = w_head · KL(p‖q) + w_tail · KL(q‖p)
//! extras: head_weight, tail_weight, fkl = KL(p‖q), rkl = KL(q‖p), head_size (int)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, RowExtra, finish, kl, log_softmax_f64, valid_rows};
use crate::tape::Tape;

/// Head/tail weights and head size from teacher and (detached) student probabilities.
pub fn weights(p: &[f64], q: &[f64], mu: f64) -> (f64, f64, usize) {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let (mut g_head, mut g_tail, mut head, mut cum) = (0.0, 0.0, 0, 0.0);
    for (k, &v) in order.iter().enumerate() {
        cum += p[v];
        let err = (p[v] - q[v]).abs();
        if k == 0 || cum <= mu {
            g_head += err;
            head += 1;
        } else {
            g_tail += err;
        }
    }
    // The original code returns (g_head/(g_head+g_tail), g_tail/(g_head+g_tail)).
    let total = g_head + g_tail;
    (g_head / total, g_tail / total, head)
}

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let mu = case.f64("config.mu")?;
    let tape = Tape::new();
    let n = b.rows();
    let (mut hw, mut tw) = (RowExtra::new("head_weight", n), RowExtra::new("tail_weight", n));
    let (mut fx, mut rx) = (RowExtra::new("fkl", n), RowExtra::new("rkl", n));
    let mut hs = RowExtra::ints("head_size", n);
    let (student, per_row) = valid_rows(&tape, &b, t, |i, lp, lq| {
        let p: Vec<f64> = log_softmax_f64(&b.teacher[i], t).iter().map(|x| x.exp()).collect();
        let q: Vec<f64> = lq.iter().map(|x| x.val().exp()).collect();
        let (w_head, w_tail, head) = weights(&p, &q, mu);
        let fkl = kl(&tape, lp, lq);
        let rkl = kl(&tape, lq, lp);
        hw.set(i, w_head);
        tw.set(i, w_tail);
        fx.set(i, fkl.val());
        rx.set(i, rkl.val());
        hs.set(i, head as f64);
        fkl * w_head + rkl * w_tail
    });
    let extras =
        vec![hw.into_pair(), tw.into_pair(), fx.into_pair(), rx.into_pair(), hs.into_pair()];
    Ok(finish(&tape, &student, &per_row, extras))
}
