//! `fdistill`: the step-wise terms of f-DISTILL, chosen by `divergence`.
//!
//! ```text
//! "kl":  T² · KL(p‖q)
//! "rkl": T² · KL(q‖p)
//! "js":  T² · [beta·KL(q‖m) + (1 − beta)·KL(p‖m)],  m = beta·q + (1 − beta)·p
//! "tvd": ½ Σ |p − q| at T = 1 (the temperature is ignored)
//! ```

use serde_json::Value;

use crate::error::{GoldenError, Result};
use crate::json::Case;
use crate::rows::{RowBatch, finish, kl, log_mix, valid_rows};
use crate::tape::Tape;

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed, or `divergence` is unknown.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let div = case.str("config.divergence")?;
    if !matches!(div, "kl" | "rkl" | "js" | "tvd") {
        return Err(GoldenError::UnknownOption {
            case: case.name.to_string(),
            name: "divergence",
            got: div.to_string(),
            expected: "kl, rkl, js, tvd",
        });
    }
    let t = if div == "tvd" { 1.0 } else { case.f64("config.temperature")? };
    let beta = if div == "js" { case.f64("config.beta")? } else { 0.0 };
    let tape = Tape::new();
    let (student, per_row) = valid_rows(&tape, &b, t, |_, lp, lq| match div {
        "kl" => kl(&tape, lp, lq) * (t * t),
        "rkl" => kl(&tape, lq, lp) * (t * t),
        "js" => {
            let lm = log_mix(&tape, lq, beta, lp, 1.0 - beta);
            (kl(&tape, lq, &lm) * beta + kl(&tape, lp, &lm) * (1.0 - beta)) * (t * t)
        }
        _ => super::tvd::half_l1(&tape, lp, lq),
    });
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
