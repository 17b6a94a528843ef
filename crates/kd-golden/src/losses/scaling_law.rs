//! `scaling_law`: the distillation scaling law's functional form (file-level `points`).
//!
//! ```text
//! L_S_supervised = E + (A/N_S^alpha + B/D_S^beta)^gamma
//! L_S = L_T + L_T^(−c0) · (1 + (L_T/(L_S_supervised·d1))^(1/f1))^(−c1·f1)
//!           · (A_prime/N_S^alpha_prime + B_prime/D_S^beta_prime)^gamma_prime
//! ```
//!
//! The coefficients are illustrative (not a published fit); the file checks the form only.

use serde_json::Value;

use crate::error::Result;
use crate::json::{self, Case};

/// `(L_S, L_S_supervised)` of one point.
pub fn point(c: &Case<'_>, n_s: f64, d_s: f64, l_t: f64) -> Result<(f64, f64)> {
    let k = |name: &str| c.f64(&format!("coefficients.{name}"));
    let sup = k("E")?
        + (k("A")? / n_s.powf(k("alpha")?) + k("B")? / d_s.powf(k("beta")?)).powf(k("gamma")?);
    let data = (k("A_prime")? / n_s.powf(k("alpha_prime")?)
        + k("B_prime")? / d_s.powf(k("beta_prime")?))
    .powf(k("gamma_prime")?);
    let (c0, c1, d1, f1) = (k("c0")?, k("c1")?, k("d1")?, k("f1")?);
    let l_s = l_t + l_t.powf(-c0) * (1.0 + (l_t / (sup * d1)).powf(1.0 / f1)).powf(-c1 * f1) * data;
    Ok((l_s, sup))
}

/// Recomputes every point's `L_S` and `L_S_supervised` from its `N_S`, `D_S`, `L_T`.
///
/// # Errors
/// When a coefficient or a point field is missing or malformed.
pub fn points(doc: &Case<'_>) -> Result<Value> {
    let pts = doc.get("points")?.as_array().ok_or_else(|| doc.invalid("points", "an array"))?;
    let mut out = Vec::with_capacity(pts.len());
    for p in pts {
        let pc = Case { name: doc.name, value: p };
        let (n_s, d_s, l_t) = (pc.f64("N_S")?, pc.f64("D_S")?, pc.f64("L_T")?);
        let (l_s, sup) = point(doc, n_s, d_s, l_t)?;
        out.push(json::object([
            ("N_S", json::num(n_s)),
            ("D_S", json::num(d_s)),
            ("L_T", json::num(l_t)),
            ("L_S", json::num(l_s)),
            ("L_S_supervised", json::num(sup)),
        ]));
    }
    Ok(Value::Array(out))
}
