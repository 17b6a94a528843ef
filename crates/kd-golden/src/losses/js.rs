//! `js`: the Jensen–Shannon divergence, i.e. [`gkd_jsd`](super::gkd_jsd) with the case's
//! `beta` (0.5 in every committed case).
//!
//! ```text
//! m = beta·p + (1 − beta)·q,  per_row = beta·KL(p‖m) + (1 − beta)·KL(q‖m)
//! ```

use serde_json::Value;

use crate::error::Result;
use crate::json::Case;

/// Recomputes the `outputs` of one case (same rule and extras as `gkd_jsd`).
///
/// # Errors
/// When an input or config field is missing or malformed.
pub fn outputs(case: &Case<'_>) -> Result<Value> {
    super::gkd_jsd::outputs(case)
}
