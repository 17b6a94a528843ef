//! `alpha_divergence`: Amari's alpha-divergence, with its two KL limits.
//!
//! ```text
//! per_row = (1 − Σ_v p_v^a q_v^(1−a)) / (a(1 − a)),   p^a q^(1−a) = exp(a log p + (1−a) log q)
//! a = 1 → KL(p‖q),  a = 0 → KL(q‖p)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;
use crate::rows::{RowBatch, finish, kl, valid_rows};
use crate::tape::{Tape, Var};

/// Recomputes the `outputs` of one case.
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    let b = RowBatch::read(case)?;
    let t = case.f64("config.temperature")?;
    let a = case.f64("config.alpha")?;
    let tape = Tape::new();
    let (student, per_row) = valid_rows(&tape, &b, t, |_, lp, lq| {
        if a == 1.0 {
            kl(&tape, lp, lq)
        } else if a == 0.0 {
            kl(&tape, lq, lp)
        } else {
            let terms: Vec<Var<'_>> =
                lp.iter().zip(lq).map(|(&x, &y)| (x * a + y * (1.0 - a)).exp()).collect();
            (1.0 - tape.sum(&terms)) / (a * (1.0 - a))
        }
    });
    Ok(finish(&tape, &student, &per_row, Vec::new()))
}
