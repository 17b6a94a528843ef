//! Recomputing a golden document and comparing it, number by number, with the original.

use std::path::Path;

use serde_json::Value;

use crate::error::{GoldenError, Result};
use crate::json::Case;
use crate::losses;

/// Magnitude below which errors are measured against `FLOOR` instead of the expected value
/// (see [`Comparison::max_rel`]).
///
/// Values far below 1 in these files (KL of near-identical rows, gradients of saturated
/// softmaxes, binary KL of a nearly certain target) are differences of O(1) terms: the
/// reference itself carries absolute rounding error of ~1e-16 × those terms, so their own
/// relative error can be large while both implementations are right to the last bit that
/// float64 can give. Below `FLOOR` the check is therefore absolute: `|Δ| ≤ tol × FLOOR`.
pub const FLOOR: f64 = 1e-3;

/// Returns a copy of a golden document with every computed part recomputed from the inputs:
/// each case's `outputs`, `taid`'s schedule `records`, `scaling_law`'s point losses.
///
/// # Errors
/// When the document's `loss` is unknown or a field is malformed.
pub fn recompute(doc: &Value) -> Result<Value> {
    let top = Case { name: "-", value: doc };
    let loss = top.str("loss")?;
    if !crate::LOSS_NAMES.contains(&loss) {
        return Err(GoldenError::UnknownLoss { got: loss.to_string() });
    }
    let mut out = doc.clone();
    if loss == "scaling_law" {
        out["points"] = losses::scaling_law::points(&top)?;
        return Ok(out);
    }
    let cases = top.get("cases")?.as_array().ok_or_else(|| top.invalid("cases", "an array"))?;
    let mut new_cases = Vec::with_capacity(cases.len());
    for c in cases {
        let case = Case::new(c);
        let mut c2 = c.clone();
        c2["outputs"] = losses::case_outputs(loss, &case)?;
        new_cases.push(c2);
    }
    out["cases"] = Value::Array(new_cases);
    if loss == "taid"
        && let Some(schedules) = doc.get("schedules").and_then(Value::as_array)
    {
        let mut new_s = Vec::with_capacity(schedules.len());
        for s in schedules {
            let mut s2 = s.clone();
            s2["records"] = losses::taid::replay(&Case::new(s))?;
            new_s.push(s2);
        }
        out["schedules"] = Value::Array(new_s);
    }
    Ok(out)
}

/// The result of comparing a recomputed document with the original.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Numbers compared.
    pub numbers: usize,
    /// Largest `|got − want|`.
    pub max_abs: f64,
    /// Largest `|got − want| / max(|want|, FLOOR)`: relative error for values of magnitude at
    /// least [`FLOOR`], absolute error divided by `FLOOR` below.
    pub max_rel: f64,
    /// Where `max_rel` occurred (a JSON path with case name).
    pub worst: String,
    /// Structural differences: missing or extra keys, lengths, types, unequal strings/integers.
    pub mismatches: Vec<String>,
}

impl Comparison {
    /// Whether there is no structural mismatch and `max_rel ≤ tolerance`.
    pub fn passes(&self, tolerance: f64) -> bool {
        self.mismatches.is_empty() && self.max_rel <= tolerance
    }

    fn number(&mut self, path: &str, want: f64, got: f64) {
        self.numbers += 1;
        let err = (got - want).abs();
        let rel = if err == 0.0 { 0.0 } else { err / want.abs().max(FLOOR) };
        if !err.is_finite() || !rel.is_finite() {
            self.mismatches.push(format!("{path}: got {got}, want {want}"));
            return;
        }
        self.max_abs = self.max_abs.max(err);
        if rel > self.max_rel {
            self.max_rel = rel;
            self.worst = path.to_string();
        }
    }
}

fn walk(cmp: &mut Comparison, path: &str, want: &Value, got: &Value) {
    match (want, got) {
        (Value::Number(w), Value::Number(g)) => {
            let (wf, gf) = (w.as_f64().unwrap_or(f64::NAN), g.as_f64().unwrap_or(f64::NAN));
            if (w.is_i64() || w.is_u64()) && (g.is_i64() || g.is_u64()) && wf != gf {
                cmp.mismatches.push(format!("{path}: integer {g} != {w}"));
            }
            cmp.number(path, wf, gf);
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                cmp.mismatches.push(format!("{path}: length {} != {}", g.len(), w.len()));
                return;
            }
            for (i, (wi, gi)) in w.iter().zip(g).enumerate() {
                // Cases and schedules are named by their `name` rather than their index.
                let at = match wi.get("name").and_then(Value::as_str) {
                    Some(name) => format!("{path}[{name}]"),
                    None => format!("{path}[{i}]"),
                };
                walk(cmp, &at, wi, gi);
            }
        }
        (Value::Object(w), Value::Object(g)) => {
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                cmp.mismatches.push(format!("{path}.{k}: computed but not in the file"));
            }
            for (k, wv) in w {
                let at = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match g.get(k) {
                    Some(gv) => walk(cmp, &at, wv, gv),
                    None => cmp.mismatches.push(format!("{at}: in the file but not computed")),
                }
            }
        }
        (w, g) if w == g => {}
        (w, g) => cmp.mismatches.push(format!("{path}: got {g}, want {w}")),
    }
}

/// Compares a recomputed document with the original.
pub fn compare(want: &Value, got: &Value) -> Comparison {
    let mut cmp = Comparison::default();
    walk(&mut cmp, "", want, got);
    cmp
}

/// Reads a golden file, recomputes it and compares.
///
/// # Errors
/// When the file cannot be read or parsed, or recomputation fails.
pub fn check_file(path: &Path) -> Result<Comparison> {
    let doc = crate::read_json(path)?;
    let got = recompute(&doc)?;
    Ok(compare(&doc, &got))
}
