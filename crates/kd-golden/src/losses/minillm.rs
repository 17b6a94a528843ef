//! `minillm`: MiniLLM's token-level PPO objective with the single-step reverse-KL regulariser.
//!
//! Inputs are `[B][L][V]` logits, `tokens [B][L]` (row `t` predicts `tokens[t]`), `mask [B][L]`
//! and optionally `old_student_logits` (default: `student_logits` as a constant). Per token,
//! everything multiplied by `mask`:
//!
//! ```text
//! logq_old = log_softmax(old/τ)[tok], logp_teacher_reward = log_softmax(teacher)[tok],
//! logp_teacher_tau = log_softmax(teacher/τ)[tok]
//! importance_weight w = e^logq_old / ((1−a) e^logq_old + a e^logp_teacher_tau)  (1 without mixing / masked)
//! reward r = (logp_teacher_reward − logq_old) / reward_scaling, clipped to ±cliprange_reward
//! discounted_return R_t = Σ_{t'≥t} γ^(t'−t) r_t'
//! remaining_length L_t = #valid tokens at positions ≥ t (0 → 1);  advantage_raw = R_t / L_t
//! advantage = (x − mean)/sqrt(var + 1e−8) over all B·L entries (padding included),
//!             var population or unbiased per whitening_variance; a constant
//! ratio = exp((logq_new − logq_old)·mask) · w,  logq_new from student/τ
//! pg_term = max(−A·ratio, −A·clip(ratio, 1 − cliprange, 1 + cliprange))
//! reg_term = KL(softmax(student/τ) ‖ softmax(teacher/τ))
//! loss = Σ pg_term / n_valid + [single_step_reg] · Σ reg_term / n_valid
//! per_row (B·L, row-major) = pg_term + [single_step_reg]·reg_term on valid tokens
//! ```

use serde_json::Value;

use crate::error::{GoldenError, Result};
use crate::json::{self, Case};
use crate::rows::{kl, log_softmax, log_softmax_f64};
use crate::tape::{Tape, Var};

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed, a token is out of range, or
/// `whitening_variance` is unknown.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let student = case.tensor3("inputs.student_logits")?;
    let teacher = case.tensor3("inputs.teacher_logits")?;
    let old = if case.has("inputs.old_student_logits") {
        case.tensor3("inputs.old_student_logits")?
    } else {
        student.clone()
    };
    let tokens = case.int_mat("inputs.tokens")?;
    let mask = case.int_mat("inputs.mask")?;
    let tau = case.f64("config.temperature")?;
    let gamma = case.f64("config.gamma")?;
    let cliprange = case.f64("config.cliprange")?;
    let reward_scaling = case.opt_f64("config.reward_scaling")?;
    let clip_reward = case.opt_f64("config.cliprange_reward")?.filter(|&c| c != 0.0);
    let mix = case.opt_f64("config.teacher_mixed_alpha")?;
    let reg_on = case.bool("config.single_step_reg")?;
    let unbiased = match case.str("config.whitening_variance")? {
        "population" => false,
        "unbiased" => true,
        other => {
            return Err(GoldenError::UnknownOption {
                case: case.name.to_string(),
                name: "whitening_variance",
                got: other.to_string(),
                expected: "population, unbiased",
            });
        }
    };
    let (nb, nl) = (student.len(), student.first().map_or(0, Vec::len));
    let grid = |f: f64| vec![vec![f; nl]; nb];
    let on = |b: usize, l: usize| mask[b][l] == 1;
    let (mut logq_old, mut lp_reward, mut lp_tau) = (grid(0.0), grid(0.0), grid(0.0));
    let (mut weight, mut reward) = (grid(1.0), grid(0.0));
    let mut tok = vec![vec![0usize; nl]; nb];
    for b in 0..nb {
        for l in 0..nl {
            if !on(b, l) {
                continue;
            }
            let v = student[b][l].len();
            tok[b][l] = usize::try_from(tokens[b][l]).ok().filter(|&x| x < v).ok_or_else(|| {
                case.invalid("inputs.tokens", "token ids below the vocabulary size")
            })?;
            let k = tok[b][l];
            logq_old[b][l] = log_softmax_f64(&old[b][l], tau)[k];
            lp_reward[b][l] = log_softmax_f64(&teacher[b][l], 1.0)[k];
            lp_tau[b][l] = log_softmax_f64(&teacher[b][l], tau)[k];
            if let Some(a) = mix {
                let q = logq_old[b][l].exp();
                weight[b][l] = q / ((1.0 - a) * q + a * lp_tau[b][l].exp());
            }
            let mut r = lp_reward[b][l] - logq_old[b][l];
            if let Some(s) = reward_scaling {
                r /= s;
            }
            if let Some(c) = clip_reward {
                r = r.clamp(-c, c);
            }
            reward[b][l] = r;
        }
    }
    // Discounted returns, remaining lengths and raw advantages, back to front.
    let (mut ret, mut adv_raw) = (grid(0.0), grid(0.0));
    let mut remaining = vec![vec![0i64; nl]; nb];
    for b in 0..nb {
        let (mut acc, mut count) = (0.0, 0i64);
        for l in (0..nl).rev() {
            acc = reward[b][l] + gamma * acc;
            count += i64::from(on(b, l));
            ret[b][l] = acc;
            remaining[b][l] = count.max(1);
            adv_raw[b][l] = acc / remaining[b][l] as f64;
        }
    }
    // Whitening over all B·L entries, padding included.
    let flat: Vec<f64> = adv_raw.iter().flatten().copied().collect();
    let m = flat.len() as f64;
    let mean = flat.iter().sum::<f64>() / m;
    let ss: f64 = flat.iter().map(|x| (x - mean) * (x - mean)).sum();
    let var = if unbiased { ss / (m - 1.0) } else { ss / m };
    let adv: Vec<Vec<f64>> = adv_raw
        .iter()
        .map(|r| r.iter().map(|x| (x - mean) / (var + 1e-8).sqrt()).collect())
        .collect();

    let tape = Tape::new();
    let svars: Vec<Vec<Vec<Var<'_>>>> =
        student.iter().map(|b| b.iter().map(|r| tape.vars(r)).collect()).collect();
    let (mut ratio, mut pg_t, mut reg_t) = (grid(1.0), grid(0.0), grid(0.0));
    let (mut pg_vars, mut reg_vars, mut per_row) = (Vec::new(), Vec::new(), Vec::new());
    let mut row_vals = Vec::with_capacity(nb * nl);
    for b in 0..nb {
        for l in 0..nl {
            if !on(b, l) {
                row_vals.push(0.0);
                continue;
            }
            let lq = log_softmax(&tape, &svars[b][l], tau);
            let lp = log_softmax(&tape, &tape.vars(&teacher[b][l]), tau);
            let r = (lq[tok[b][l]] - logq_old[b][l]).exp() * weight[b][l];
            let a = adv[b][l];
            let pg = (r * -a).max(r.clamp(1.0 - cliprange, 1.0 + cliprange) * -a);
            let reg = kl(&tape, &lq, &lp);
            ratio[b][l] = r.val();
            pg_t[b][l] = pg.val();
            reg_t[b][l] = reg.val();
            let row = if reg_on { pg + reg } else { pg };
            row_vals.push(row.val());
            pg_vars.push(pg);
            reg_vars.push(reg);
            per_row.push(row);
        }
    }
    let n_valid = per_row.len();
    let nv = n_valid.max(1) as f64;
    let pg_loss = tape.sum(&pg_vars) / nv;
    let reg_loss = tape.sum(&reg_vars) / nv;
    let loss_sum = tape.sum(&per_row);
    let loss = loss_sum / nv;
    let grads = tape.backward(loss);
    let grad: Vec<Value> = svars
        .iter()
        .map(|b| {
            let rows: Vec<Vec<f64>> =
                b.iter().map(|r| r.iter().map(|&x| grads.wrt(x)).collect()).collect();
            json::mat(&rows)
        })
        .collect();
    let per_token = json::object([
        ("logq_old", json::mat(&logq_old)),
        ("logp_teacher_reward", json::mat(&lp_reward)),
        ("logp_teacher_tau", json::mat(&lp_tau)),
        ("importance_weight", json::mat(&weight)),
        ("reward", json::mat(&reward)),
        ("discounted_return", json::mat(&ret)),
        ("remaining_length", json::int_mat(&remaining)),
        ("advantage_raw", json::mat(&adv_raw)),
        ("advantage", json::mat(&adv)),
        ("ratio", json::mat(&ratio)),
        ("pg_term", json::mat(&pg_t)),
        ("reg_term", json::mat(&reg_t)),
    ]);
    Ok(json::object([
        ("loss", json::num(loss.val())),
        ("per_row", json::arr(&row_vals)),
        ("loss_mean", json::num(loss.val())),
        ("loss_sum", json::num(loss_sum.val())),
        ("n_valid", Value::from(n_valid as i64)),
        ("grad_student_logits", Value::Array(grad)),
        ("per_token", per_token),
        ("pg_loss", json::num(pg_loss.val())),
        ("reg_loss", json::num(reg_loss.val())),
    ]))
}
