//! Runner of `hot_pate.json`: coordinated / independent votes, histograms and release rules of
//! every case, and every entry of the top-level `accounting` array.
//!
//! Host-side `f64` math: floats at relative 1e-9 (the README's float64 tolerance), integers
//! (votes, histograms, counts, token ids, orders) exactly. The teachers' logits also go through
//! the burn-tensor entry point on the test's device (as `f32`, checked at the f32 tolerance).
//! Every output key must be known to the runner: a new field fails instead of going unchecked.

use burn::tensor::Device;
use serde_json::Value;

use super::common::json::{flat, floats, num};
use super::{Report, Tol, int_values};
use kd_losses::teachers::hot_pate::{
    AggregationRule, HotPate, HotPateConfig, Mechanism, PrivacyAccountant, PrivacyReport,
    RuleNoise, confident_gnmax_rho, gaussian_histogram_rho, laplace_epsilon, zcdp_epsilon,
};

/// The README's float64 tolerance.
const F64: Tol = Tol { rel: 1e-9, abs: 0.0 };

/// The fields of each sampler's output object.
const SAMPLER_FIELDS: &[&str] = &[
    "votes",
    "histogram",
    "noisy_histogram",
    "max_count",
    "margin",
    "selected",
    "statistic",
    "threshold",
    "released_token",
];

pub fn check(doc: &Value, device: &Device, r: &mut Report) {
    let cases = doc["cases"].as_array().expect("`cases` array");
    assert!(!cases.is_empty(), "no case");
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        if let Err(msg) = check_case(case, name, device, r) {
            r.fail(name, "run", msg);
        }
    }
    match doc["accounting"].as_array() {
        Some(entries) if !entries.is_empty() => {
            for (k, entry) in entries.iter().enumerate() {
                let at = format!("accounting[{k}] {}", entry["mechanism"].as_str().unwrap_or("?"));
                if let Err(msg) = check_accounting(entry, &at, r) {
                    r.fail(&at, "run", msg);
                }
            }
        }
        _ => r.fail("accounting", "accounting", "missing or empty top-level `accounting` array"),
    }
}

/// Optional number of a JSON object.
fn opt_num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).filter(|x| !x.is_null()).map(num)
}

fn config_of(c: &Value) -> Result<HotPate, String> {
    let rule = c["rule"].as_str().ok_or("config.rule missing")?;
    let rule = AggregationRule::parse(rule).map_err(|e| e.to_string())?;
    let mut config = HotPateConfig::new()
        .with_rule(rule)
        .with_temperature(opt_num(c, "temperature").ok_or("config.temperature missing")?);
    if let Some(l) = opt_num(c, "L") {
        config = config.with_release_margin(l);
    }
    if let Some(t) = opt_num(c, "threshold") {
        config = config.with_threshold(t);
    }
    if let Some(s) = opt_num(c, "noise_std") {
        config = config.with_noise_scale(s);
    }
    if let Some(s) = opt_num(c, "sigma1") {
        config = config.with_sigma1(s);
    }
    config.init().map_err(|e| e.to_string())
}

fn check_case(case: &Value, name: &str, device: &Device, r: &mut Report) -> Result<(), String> {
    let pate = config_of(&case["config"])?;
    let inputs = &case["inputs"];
    let out = &case["outputs"];
    let (logits, shape) = flat(&inputs["teacher_logits"]);
    let [teachers, vocab] = shape[..] else {
        return Err(format!("teacher_logits shape {shape:?}"));
    };
    let p = pate.distributions(&logits, teachers, vocab).map_err(|e| e.to_string())?;

    // The RuleNoise of the case: every random input that is given.
    let mut noise = RuleNoise::none();
    if let Some(z) = inputs.get("noise").filter(|z| !z.is_null()) {
        noise.histogram = Some(flat(z).0);
    }
    noise.selection_uniform = opt_num(inputs, "selection_uniform");
    noise.threshold_noise = opt_num(inputs, "threshold_noise");

    let obj = out.as_object().ok_or("outputs is not an object")?;
    for (key, want) in obj {
        match key.as_str() {
            "teacher_probs" => r.check(name, key, p.probs(), &flat(want).0, F64),
            "expected_counts" => r.check(name, key, &p.expected_counts(), &flat(want).0, F64),
            "weighted_jaccard" => r.check(name, key, &p.weighted_jaccard(), &flat(want).0, F64),
            "coordinated" | "independent" => {
                let votes = if key == "coordinated" {
                    p.coordinated_votes(&flat(&inputs["shared_exponentials"]).0)
                } else {
                    p.independent_votes(&flat(&inputs["independent_exponentials"]).0)
                };
                let agg = votes
                    .and_then(|v| pate.aggregate_votes(v, vocab, &noise))
                    .map_err(|e| format!("{key}: {e}"))?;
                check_sampler(name, key, &agg, want, r);
            }
            other => r.fail(name, other, "output field unknown to the runner"),
        }
    }

    // The burn-tensor entry point on this device (f32 logits) against the f64 path.
    let tensor = floats::<2>(&inputs["teacher_logits"], device);
    let from_tensor = pate.distributions_from_tensor(tensor).map_err(|e| e.to_string())?;
    let want = p.probs();
    r.check(name, "teacher_probs[tensor f32]", from_tensor.probs(), want, Tol::f32_scaled(want));
    Ok(())
}

fn ints_of(got: &[usize]) -> Vec<i64> {
    got.iter().map(|&x| x as i64).collect()
}

fn check_sampler(
    name: &str,
    sampler: &str,
    agg: &kd_losses::teachers::hot_pate::Aggregation,
    want: &Value,
    r: &mut Report,
) {
    let Some(obj) = want.as_object() else {
        r.fail(name, sampler, "not an object");
        return;
    };
    for f in SAMPLER_FIELDS {
        if !obj.contains_key(*f) {
            r.fail(name, &format!("{sampler}.{f}"), "missing from the golden file");
        }
    }
    for (key, w) in obj {
        let field = format!("{sampler}.{key}");
        match key.as_str() {
            "votes" => r.check_ints(name, &field, &ints_of(&agg.votes), &int_values(w)),
            "histogram" => r.check_ints(name, &field, &ints_of(&agg.histogram), &int_values(w)),
            "max_count" => r.check_ints(name, &field, &[agg.max_count as i64], &int_values(w)),
            "margin" => r.check_ints(name, &field, &[agg.margin as i64], &int_values(w)),
            "selected" => r.check_ints(name, &field, &[agg.selected as i64], &int_values(w)),
            "released_token" => {
                let got = agg.released_token.map_or(-1, |t| t as i64);
                r.check_ints(name, &field, &[got], &int_values(w));
            }
            "statistic" => r.check(name, &field, &[agg.statistic], &[num(w)], F64),
            "noisy_histogram" => check_optional(name, &field, agg.noisy_histogram.as_deref(), w, r),
            "threshold" => {
                check_optional(name, &field, agg.threshold.as_ref().map(std::slice::from_ref), w, r)
            }
            other => r.fail(name, &format!("{sampler}.{other}"), "field unknown to the runner"),
        }
    }
}

/// A float array that is `null` where the rule has none.
fn check_optional(name: &str, field: &str, got: Option<&[f64]>, want: &Value, r: &mut Report) {
    match (got, want.is_null()) {
        (None, true) => r.checked += 1,
        (Some(g), false) => r.check(name, field, g, &flat(want).0, F64),
        (Some(_), true) => r.fail(name, field, "got a value, expected null"),
        (None, false) => r.fail(name, field, "got null, expected a value"),
    }
}

fn check_accounting(entry: &Value, at: &str, r: &mut Report) -> Result<(), String> {
    let params = &entry["params"];
    let values = entry["values"].as_object().ok_or("values is not an object")?;
    let p = |k: &str| opt_num(params, k).ok_or(format!("params.{k} missing"));
    let q = p("queries")? as u64;
    let delta = p("delta")?;
    let mechanism = entry["mechanism"].as_str().ok_or("mechanism missing")?;
    // The closed forms, every field the entry gives.
    let mut got: Vec<(&str, f64)> = Vec::new();
    let mut order = None;
    let (mech, answered) = match mechanism {
        "laplace" => {
            let b = p("b")?;
            let e = laplace_epsilon(b, q, delta).map_err(|e| e.to_string())?;
            got.extend([
                ("eps_per_query", e.eps_per_query),
                ("eps_basic", e.eps_basic),
                ("eps_advanced", e.eps_advanced),
            ]);
            (Mechanism::Laplace { b }, q)
        }
        "gaussian_histogram" | "confident_gnmax_data_independent" => {
            let (mech, answered, rho) = if mechanism == "gaussian_histogram" {
                if let Some(s) = params.get("sensitivity").and_then(Value::as_str)
                    && s != "sqrt(2)"
                {
                    return Err(format!("sensitivity {s}: only sqrt(2) is implemented"));
                }
                let sigma = p("sigma")?;
                let per = gaussian_histogram_rho(sigma).map_err(|e| e.to_string())?;
                got.push(("rho_per_query", per));
                (Mechanism::GaussianHistogram { sigma }, q, q as f64 * per)
            } else {
                let (s1, s2) = (p("sigma1")?, p("sigma2")?);
                let answered = p("answered")? as u64;
                let rho = confident_gnmax_rho(s1, s2, q, answered).map_err(|e| e.to_string())?;
                (Mechanism::ConfidentGnmax { sigma1: s1, sigma2: s2 }, answered, rho)
            };
            let z = zcdp_epsilon(rho, delta).map_err(|e| e.to_string())?;
            got.extend([
                ("rho_total", z.rho_total),
                ("eps_continuous", z.eps_continuous),
                ("lambda_star", z.lambda_star),
                ("eps_integer_orders", z.eps_integer_orders),
            ]);
            order = Some(z.best_integer_order);
            (mech, answered)
        }
        other => return Err(format!("mechanism `{other}` unknown to the runner")),
    };
    for (key, want) in values {
        if key == "best_integer_order" {
            let o = order.map_or(-1, i64::from);
            r.check_ints(at, key, &[o], &int_values(want));
        } else if let Some((_, g)) = got.iter().find(|(k, _)| k == key) {
            r.check(at, key, &[*g], &[num(want)], F64);
        } else {
            r.fail(at, key, "value unknown to the runner");
        }
    }

    // The accountant object, fed query by query, reports the same numbers.
    let mut acc = PrivacyAccountant::new(mech).map_err(|e| e.to_string())?;
    for i in 0..q {
        acc.record(i < answered);
    }
    let report = acc.report(delta).map_err(|e| e.to_string())?;
    let (field, want) = match report {
        PrivacyReport::Laplace(_) => {
            let (basic, adv) = (num(&values["eps_basic"]), num(&values["eps_advanced"]));
            ("accountant epsilon = min(basic, advanced)", basic.min(adv))
        }
        PrivacyReport::Zcdp(_) => {
            ("accountant epsilon = eps_continuous", num(&values["eps_continuous"]))
        }
    };
    let eps = acc.epsilon(delta).map_err(|e| e.to_string())?;
    r.check(at, field, &[eps], &[want], F64);
    Ok(())
}
