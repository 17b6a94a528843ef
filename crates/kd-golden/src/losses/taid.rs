//! `taid`: cross-entropy against the time-interpolated target of TAID, and the replay of its
//! adaptive `t` schedule.
//!
//! ```text
//! p_t = softmax(((1 − t)·stopgrad(student) + t·teacher) / T),  q = softmax(student/T)
//! per_row = −Σ_v p_t,v log q_v                 (cross-entropy form, no −H(p_t) term)
//! extras.per_row_kl_form = KL(p_t‖q)
//! ```
//!
//! Schedule replay (file-level `schedules`), per call `k` with loss `L_k` and `t_used = t`:
//!
//! ```text
//! first call:  prev_loss = L_0 (nothing else is computed)
//! later calls: rel = (prev − L)/(prev + 1e−15); momentum = beta·momentum + (1 − beta)·rel
//!              delta_t = alpha·sigmoid(momentum)·(1 − t)
//!              t_target = t_start + (t_end − t_start)·global_step/num_train_steps
//!              t = min(t_end, max(t_target, t + delta_t))   (t = t_target when disable_adaptive)
//!              prev_loss = L
//! initially t = t_start, momentum = 0
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::{self, Case};
use crate::rows::{
    RowBatch, RowExtra, consts, cross_entropy, finish, kl, log_softmax, log_softmax_f64,
};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let temp = case.f64("config.temperature")?;
    let t = case.f64("config.t")?;
    let tape = Tape::new();
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let mut per_row = Vec::with_capacity(b.rows());
    let mut klx = RowExtra::new("per_row_kl_form", b.rows());
    for (i, s) in student.iter().enumerate() {
        if !b.valid(i) {
            per_row.push(None);
            continue;
        }
        let mixed: Vec<f64> =
            b.student[i].iter().zip(&b.teacher[i]).map(|(x, te)| (1.0 - t) * x + t * te).collect();
        let lpt = consts(&tape, &log_softmax_f64(&mixed, temp));
        let lq = log_softmax(&tape, s, temp);
        klx.set(i, kl(&tape, &lpt, &lq).val());
        per_row.push(Some(cross_entropy(&tape, &lpt, &lq)));
    }
    Ok(finish(&tape, &student, &per_row, vec![klx.into_pair()]))
}

/// Replays one `schedules` entry: returns its `records` recomputed from `config` and `losses`.
///
/// # Errors
/// When the schedule's `config` or `losses` is missing or malformed.
pub fn replay(schedule: &Case<'_>) -> Result<Value> {
    let t_start = schedule.f64("config.t_start")?;
    let t_end = schedule.f64("config.t_end")?;
    let alpha = schedule.f64("config.alpha")?;
    let beta = schedule.f64("config.beta")?;
    let steps = schedule.f64("config.num_train_steps")?;
    let disabled =
        schedule.find("config.disable_adaptive").and_then(Value::as_bool).unwrap_or(false);
    let losses = schedule.vec("losses")?;
    let (mut t, mut momentum, mut prev): (f64, f64, Option<f64>) = (t_start, 0.0, None);
    let mut records = Vec::with_capacity(losses.len());
    for (step, &loss) in losses.iter().enumerate() {
        let t_used = t;
        let (mut rel, mut delta, mut target) = (Value::Null, Value::Null, Value::Null);
        let prev_field = prev.map_or(Value::Null, json::num);
        if let Some(p) = prev {
            let r = (p - loss) / (p + 1e-15);
            momentum = beta * momentum + (1.0 - beta) * r;
            let d = alpha * (1.0 / (1.0 + (-momentum).exp())) * (1.0 - t);
            let tt = t_start + (t_end - t_start) * step as f64 / steps;
            t = if disabled { tt } else { t_end.min(tt.max(t + d)) };
            rel = json::num(r);
            delta = json::num(d);
            target = json::num(tt);
        }
        prev = Some(loss);
        records.push(json::object([
            ("global_step", Value::from(step as i64)),
            ("loss", json::num(loss)),
            ("t_used", json::num(t_used)),
            ("relative_change", rel),
            ("momentum", json::num(momentum)),
            ("delta_t", delta),
            ("t_target", target),
            ("t_after", json::num(t)),
            ("prev_loss", prev_field),
        ]));
    }
    Ok(Value::Array(records))
}
