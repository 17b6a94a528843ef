//! One module per golden file: each recomputes a case's `outputs` from its `inputs` and
//! `config`, following the formula in its module docs. `taid` and `scaling_law` also carry the
//! file-level parts of their files (schedule replays, law points).

pub mod ab_divergence;
pub mod akl;
pub mod alpha_divergence;
pub mod atkd;
pub mod delta_kd;
pub mod dkd;
pub mod fdistill;
pub mod forward_kl;
pub mod gkd_jsd;
pub mod hinton_kd;
pub mod js;
pub mod minillm;
pub mod reverse_kl;
pub mod scaling_law;
pub mod skew_forward_kl;
pub mod skew_reverse_kl;
pub mod taid;
pub mod topk_kl;
pub mod tvd;
pub mod uld;

use serde_json::Value;

use crate::error::{GoldenError, Result};
use crate::json::Case;

/// Recomputes the `outputs` object of one case of the file whose `loss` is `loss`.
///
/// # Errors
/// When `loss` is unknown (or is `scaling_law`, which has no cases), or the case is malformed.
pub fn case_outputs(loss: &str, case: &Case<'_>) -> Result<Value> {
    match loss {
        "forward_kl" => forward_kl::outputs(case),
        "reverse_kl" => reverse_kl::outputs(case),
        "hinton_kd" => hinton_kd::outputs(case),
        "gkd_jsd" => gkd_jsd::outputs(case),
        "js" => js::outputs(case),
        "tvd" => tvd::outputs(case),
        "skew_forward_kl" => skew_forward_kl::outputs(case),
        "skew_reverse_kl" => skew_reverse_kl::outputs(case),
        "akl" => akl::outputs(case),
        "taid" => taid::outputs(case),
        "fdistill" => fdistill::outputs(case),
        "alpha_divergence" => alpha_divergence::outputs(case),
        "ab_divergence" => ab_divergence::outputs(case),
        "dkd" => dkd::outputs(case),
        "atkd" => atkd::outputs(case),
        "uld" => uld::outputs(case),
        "delta_kd" => delta_kd::outputs(case),
        "topk_kl" => topk_kl::outputs(case),
        "minillm" => minillm::outputs(case),
        other => Err(GoldenError::UnknownLoss { got: other.to_string() }),
    }
}
