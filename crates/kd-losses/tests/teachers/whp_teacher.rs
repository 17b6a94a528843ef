//! Runner of `whp_teacher.json`: the WHP generic teacher, the revisit paper's
//! causal-intervention teacher and WHP baseline, and the student loss of both.
//!
//! Dispatches on `config.construction`; every output of every case is compared (floats at the
//! README's f32 tolerances, the host `f64` teacher parts at `f64` tolerances, integers exactly),
//! and an output this runner does not know fails the case.

use burn::tensor::{Device, Tensor};
use kd_losses::teachers::whp::{
    NameFirstTokens, OriginalFirstToken, RevisitInputs, RevisitMethod, RevisitTeacherConfig,
    WhpGenericConfig, WhpLossConfig, WhpReduction, WhpTarget,
};
use serde_json::Value;

use crate::common::json::{flat, floats, host, mask, num};
use crate::{Report, Tol, int_values};

/// Host `f64` parts (softmaxes and moves of the revisit teacher) against the `f64` references.
const F64: Tol = Tol { rel: 1e-9, abs: 1e-15 };

/// Runs every case of the file.
pub fn check(doc: &Value, device: &Device, r: &mut Report) {
    let cases = doc["cases"].as_array().expect("`cases` array");
    for case in cases {
        let name = case["name"].as_str().unwrap_or("<unnamed>").to_string();
        if let Err(msg) = run_case(case, &name, device, r) {
            r.fail(&name, "run", msg);
        }
    }
}

/// An enum field of the config, through its serde name.
fn choice<T: serde::de::DeserializeOwned>(v: &Value, default: T) -> Result<T, String> {
    if v.is_null() {
        Ok(default)
    } else {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }
}

fn run_case(case: &Value, name: &str, device: &Device, r: &mut Report) -> Result<(), String> {
    let (cfg, inputs, outputs) = (&case["config"], &case["inputs"], &case["outputs"]);
    let mut handled: Vec<&str> = Vec::new();
    let floats_out = |r: &mut Report,
                      handled: &mut Vec<&str>,
                      field: &'static str,
                      got: Vec<f64>,
                      tol: Option<Tol>| {
        handled.push(field);
        match outputs.get(field) {
            Some(v) if !v.is_null() => {
                let want = flat(v).0;
                let tol = tol.unwrap_or_else(|| Tol::f32_scaled(&want));
                r.check(name, field, &got, &want, tol);
            }
            _ => {}
        }
    };
    let ints_out = |r: &mut Report, handled: &mut Vec<&str>, field: &'static str, got: Vec<i64>| {
        handled.push(field);
        if let Some(v) = outputs.get(field).filter(|v| !v.is_null()) {
            r.check_ints(name, field, &got, &int_values(v));
        }
    };

    let construction = cfg["construction"].as_str().ok_or("config.construction missing")?;
    let teacher: Tensor<3> = match construction {
        "whp_generic" => {
            let config = WhpGenericConfig {
                alpha: num(&cfg["alpha"]),
                target: choice(&cfg["target"], WhpTarget::Hard)?,
            };
            let whp = config.init().map_err(|e| e.to_string())?;
            let out = whp
                .teacher(
                    floats(&inputs["base_logits"], device),
                    floats(&inputs["reinforced_logits"], device),
                )
                .map_err(|e| e.to_string())?;
            floats_out(r, &mut handled, "generic_logits", host(out.generic_logits), None);
            let labels =
                out.generic_labels.into_data().convert::<i64>().try_into_vec::<i64>().unwrap();
            ints_out(r, &mut handled, "generic_labels", labels);
            floats_out(r, &mut handled, "teacher_probs", host(out.teacher_probs.clone()), None);
            out.teacher_probs
        }
        "revisit_intervention" | "revisit_whp_baseline" => {
            let fallback = if construction == "revisit_intervention" {
                RevisitMethod::Intervention
            } else {
                RevisitMethod::WhpBaseline
            };
            let d = RevisitTeacherConfig::new();
            let or = |key: &str, default: f64| {
                cfg.get(key).filter(|v| !v.is_null()).map(num).unwrap_or(default)
            };
            let config = RevisitTeacherConfig {
                method: choice(&cfg["method"], fallback)?,
                move_threshold: or("move_threshold", d.move_threshold),
                floor: or("floor", d.floor),
                change_name_back: cfg["change_name_back"].as_bool().unwrap_or(d.change_name_back),
                suppress_value: or("suppress_value", d.suppress_value),
            };
            let teacher = config.init().map_err(|e| e.to_string())?;
            let (logits, shape) = flat(&inputs["counterfactual_logits"]);
            let dims: [usize; 4] = shape.try_into().map_err(|s| format!("logits shape {s:?}"))?;
            let names: Vec<NameFirstTokens> =
                serde_json::from_value(inputs["replacement_first_tokens"].clone())
                    .map_err(|e| format!("replacement_first_tokens: {e}"))?;
            let original: OriginalFirstToken =
                serde_json::from_value(inputs["original_first_token"].clone())
                    .map_err(|e| format!("original_first_token: {e}"))?;
            let rows = dims[1] * dims[2];
            let flags = |key: &str| -> Option<Vec<bool>> {
                inputs
                    .get(key)
                    .filter(|v| !v.is_null())
                    .map(|v| int_values(v).iter().map(|&x| x == 1).collect())
            };
            let mut rv = RevisitInputs::new(names, original, rows);
            if let Some(v) = inputs.get("anchor_targets").filter(|v| !v.is_null()) {
                rv.anchor_targets = int_values(v);
            }
            if let Some(v) = flags("majority_allowed") {
                rv.majority_allowed = v;
            }
            if let Some(v) = flags("suppress_rows") {
                rv.suppress_rows = v;
            }
            let out = teacher.build_host(&logits, dims, &rv).map_err(|e| e.to_string())?;
            floats_out(
                r,
                &mut handled,
                "counterfactual_probs",
                out.counterfactual_probs.clone(),
                Some(F64),
            );
            ints_out(
                r,
                &mut handled,
                "anchor_moved",
                out.anchor_moved.iter().map(|&m| i64::from(m)).collect(),
            );
            ints_out(
                r,
                &mut handled,
                "majority_moved",
                out.majority_moved.iter().map(|m| m.code()).collect(),
            );
            if let Some(labels) = &out.labels {
                ints_out(r, &mut handled, "labels", labels.iter().map(|&y| y as i64).collect());
            }
            if let Some(soft) = &out.soft_teacher_probs {
                floats_out(r, &mut handled, "soft_teacher_probs", soft.clone(), Some(F64));
            }
            floats_out(r, &mut handled, "teacher_probs", out.teacher_probs.clone(), Some(F64));
            out.teacher_tensor(device)
        }
        other => return Err(format!("unknown config.construction `{other}`")),
    };

    // The student loss, with the configured reduction (its gradient) and both reductions' values.
    let reduction = choice(&cfg["reduction"], WhpReduction::SequenceMean)?;
    let loss = WhpLossConfig { reduction }.init().map_err(|e| e.to_string())?;
    let student = floats::<3>(&inputs["student_logits"], device).require_grad();
    let out = loss
        .forward(student.clone(), teacher, mask::<2>(&inputs["mask"], device))
        .map_err(|e| e.to_string())?;
    floats_out(r, &mut handled, "per_token", host(out.per_token.clone()), None);
    floats_out(r, &mut handled, "per_sequence", host(out.per_sequence.clone()), None);
    floats_out(r, &mut handled, "loss", host(out.loss.clone()), None);
    floats_out(r, &mut handled, "loss_sequence_mean", host(out.loss_sequence_mean.clone()), None);
    floats_out(r, &mut handled, "loss_token_mean", host(out.loss_token_mean.clone()), None);
    ints_out(r, &mut handled, "n_valid", vec![out.n_valid as i64]);
    let grads = out.loss.backward();
    match student.grad(&grads) {
        Some(g) => floats_out(r, &mut handled, "grad_student_logits", host(g), None),
        None => r.fail(name, "grad_student_logits", "no gradient"),
    }

    // Every output of the file must have been compared.
    for key in outputs.as_object().map(|o| o.keys().collect::<Vec<_>>()).unwrap_or_default() {
        if !handled.contains(&key.as_str()) {
            r.fail(name, key, "output not checked by the runner");
        }
    }
    Ok(())
}
