//! Runner of `phi_s.json`: fits PHI-S from `fit_features` and checks every output of every
//! case: the f64 host statistics (mean, covariance, eigen-decomposition, Hadamard matrix, φ, α,
//! W, W⁻¹, standardised covariance, standardised / denormalised features) at the README's
//! float64 tolerances, the f32 device loss (per row, mean, sum, gradient, extras and the device
//! transforms) at its float32 ones, and the compared normalisations.
//!
//! Tolerances (README, "Suggested tolerances"):
//! * eigen-derived f64 outputs (eigenvectors, whiten, inv_whiten, standardized_covariance,
//!   host teacher_standardized / student_denormalized, pca_whiten / zca / hca): absolute
//!   `1e-9 × max|ref|`; eigenvalues: absolute `1e-12 × λ_max`;
//! * other f64 values: relative `1e-9`, plus `1e-12 × max|ref|` absolute so that entries
//!   that are 0 up to rounding (a mean of centred data) do not need 16 matching digits;
//! * f32 device outputs: relative `1e-4`, absolute `1e-5 × max(1, max|ref|)`.

use burn::tensor::{Bool, Device, Tensor};
use kd_losses::KdError;
use kd_losses::teachers::feature_distance::{FeatureDistanceConfig, FeatureLoss};
use kd_losses::teachers::phi_s::{
    FittedNormalization, Normalization, PhiSConfig, PhiSTransform, Rotation, RotationChoice,
    RunningStats,
};
use serde_json::Value;

use crate::common::json::{flat, floats, host, mask};
use crate::{Report, Tol};

/// Every output key this runner knows; any other key is reported, so none is skipped silently.
const KNOWN_OUTPUTS: &[&str] = &[
    "hadamard_construction",
    "mean",
    "covariance",
    "eigenvalues",
    "eigenvectors",
    "hadamard",
    "phi",
    "alpha",
    "whiten",
    "inv_whiten",
    "standardized_covariance",
    "teacher_standardized",
    "student_denormalized",
    "per_row",
    "loss_mean",
    "loss_sum",
    "grad_student_features",
    "extras",
    "alternatives",
];

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0f64, |m, x| m.max(x.abs()))
}

/// Plain f64 values: relative 1e-9 (+ 1e-12·max|ref| absolute).
fn f64_tol(want: &[f64]) -> Tol {
    Tol::new(1e-9, 1e-12 * max_abs(want))
}

/// Eigen-derived f64 values: absolute 1e-9·max|ref|.
fn eigen_tol(want: &[f64]) -> Tol {
    Tol::new(0.0, 1e-9 * max_abs(want))
}

/// `outputs[key]` as flat f64 values, or `None` when absent or null.
fn field(outputs: &Value, key: &str) -> Option<Vec<f64>> {
    outputs.get(key).filter(|v| !v.is_null()).map(|v| flat(v).0)
}

/// Checks `outputs[key]` (when present) against `got` with the tolerance built from it.
fn check_field(
    r: &mut Report,
    case: &str,
    outputs: &Value,
    key: &str,
    got: &[f64],
    tol: fn(&[f64]) -> Tol,
) {
    if let Some(want) = field(outputs, key) {
        r.check(case, key, got, &want, tol(&want));
    }
}

pub fn check(doc: &Value, device: &Device, r: &mut Report) {
    let cases = doc["cases"].as_array().expect("`cases` array");
    for case in cases {
        let name = case["name"].as_str().unwrap_or("<unnamed>");
        if let Err(e) = check_case(case, name, device, r) {
            r.fail(name, "error", e);
        }
    }
}

fn check_case(case: &Value, name: &str, device: &Device, r: &mut Report) -> Result<(), KdError> {
    let (config, inputs, outputs) = (&case["config"], &case["inputs"], &case["outputs"]);
    if let Some(keys) = outputs.as_object() {
        for key in keys.keys().filter(|k| !KNOWN_OUTPUTS.contains(&k.as_str())) {
            r.fail(name, key, "output not checked by this runner");
        }
    }
    let config: PhiSConfig = match serde_json::from_value(config.clone()) {
        Ok(c) => c,
        Err(e) => {
            r.fail(name, "config", e);
            return Ok(());
        }
    };
    let phi_s = config.init()?;

    // ---- fit (f64 host) ----
    let (fit, fit_shape) = flat(&inputs["fit_features"]);
    let c = fit_shape[1];
    let mut stats = RunningStats::new(c);
    stats.update(&fit)?;
    let rotation = match config.rotation {
        RotationChoice::Given => Rotation::given(flat(&inputs["rotation"]).0, c)?,
        _ => phi_s.rotation(c)?,
    };
    let t = phi_s.fit_with(&stats, rotation)?;

    if let Some(want) = outputs.get("hadamard_construction").and_then(Value::as_str) {
        r.checked += 1;
        let got = t.rotation().construction().to_string();
        if got != want {
            r.fail(name, "hadamard_construction", format!("got {got}, expected {want}"));
        }
    }
    check_field(r, name, outputs, "mean", t.mean(), f64_tol);
    check_field(r, name, outputs, "covariance", t.covariance(), f64_tol);
    if let Some(want) = field(outputs, "eigenvalues") {
        let tol = Tol::new(0.0, 1e-12 * max_abs(&want));
        r.check(name, "eigenvalues", t.eigenvalues(), &want, tol);
    }
    check_field(r, name, outputs, "eigenvectors", t.eigenvectors(), eigen_tol);
    check_field(r, name, outputs, "hadamard", t.rotation().matrix(), f64_tol);
    check_field(r, name, outputs, "phi", &[t.phi()], f64_tol);
    check_field(r, name, outputs, "alpha", &[t.alpha()], f64_tol);
    check_field(r, name, outputs, "whiten", t.whiten(), eigen_tol);
    check_field(r, name, outputs, "inv_whiten", t.inv_whiten(), eigen_tol);
    check_field(
        r,
        name,
        outputs,
        "standardized_covariance",
        &t.standardized_covariance(),
        eigen_tol,
    );

    let (teacher_host, _) = flat(&inputs["teacher_features"]);
    let (student_host, _) = flat(&inputs["student_features"]);
    check_field(
        r,
        name,
        outputs,
        "teacher_standardized",
        &t.standardize_host(&teacher_host)?,
        eigen_tol,
    );
    check_field(
        r,
        name,
        outputs,
        "student_denormalized",
        &t.denormalize_host(&student_host)?,
        eigen_tol,
    );

    // ---- loss (f32 device, autodiff) ----
    let teacher: Tensor<2> = floats(&inputs["teacher_features"], device);
    let student: Tensor<2> = floats::<2>(&inputs["student_features"], device).require_grad();
    let row_mask: Option<Tensor<1, Bool>> =
        inputs.get("mask").filter(|m| !m.is_null()).map(|m| mask::<1>(m, device));
    let out = phi_s.forward(&t, student.clone(), teacher.clone(), row_mask.clone())?;
    let f32_tol = Tol::f32_scaled;
    let dev = |key: &str| format!("{key} (device f32)");
    if let Some(want) = field(outputs, "teacher_standardized") {
        r.check(
            name,
            &dev("teacher_standardized"),
            &host(out.teacher_standardized.clone()),
            &want,
            f32_tol(&want),
        );
    }
    if let Some(want) = field(outputs, "student_denormalized") {
        let got = host(t.denormalize(student.clone().detach())?);
        r.check(name, &dev("student_denormalized"), &got, &want, f32_tol(&want));
    }
    let d = &out.distance;
    check_field(r, name, outputs, "per_row", &host(d.per_row.clone()), f32_tol);
    check_field(r, name, outputs, "loss_mean", &host(d.loss_mean.clone()), f32_tol);
    check_field(r, name, outputs, "loss_sum", &host(d.loss_sum.clone()), f32_tol);
    if let Some(want) = field(outputs, "grad_student_features") {
        let grads = d.loss_mean.backward();
        match student.grad(&grads) {
            Some(g) => r.check(name, "grad_student_features", &host(g), &want, f32_tol(&want)),
            None => r.fail(name, "grad_student_features", "no gradient reached the student"),
        }
    }
    if let Some(extras) = outputs.get("extras").and_then(Value::as_object) {
        for (key, want) in extras {
            let got = match key.as_str() {
                "mse" => &d.mse,
                "smooth_l1" => &d.smooth_l1,
                "cosine" => &d.cosine,
                other => {
                    r.fail(name, &format!("extras.{other}"), "unknown extra");
                    continue;
                }
            };
            let want = flat(want).0;
            r.check(name, &format!("extras.{key}"), &host(got.clone()), &want, f32_tol(&want));
        }
    }

    // ---- the compared normalisations ----
    if let Some(alts) = outputs.get("alternatives").and_then(Value::as_object) {
        for key in alts.keys() {
            if !Normalization::ALL.iter().any(|k| k.name() == key) {
                r.fail(name, &format!("alternatives.{key}"), "unknown normalisation");
            }
        }
        for kind in Normalization::ALL {
            if let Some(want) = alts.get(kind.name()) {
                check_alternative(
                    r,
                    name,
                    kind,
                    want,
                    &t,
                    &teacher_host,
                    &teacher,
                    &student.clone().detach(),
                    row_mask.clone(),
                )?;
            }
        }
    }
    Ok(())
}

/// Checks one entry of `outputs.alternatives`: undefined exactly where the reference is null,
/// else `mu` / `sigma` / `whiten` / `targets` (f64 host) and `per_row_mse` (f32 device).
#[allow(clippy::too_many_arguments)]
fn check_alternative(
    r: &mut Report,
    case: &str,
    kind: Normalization,
    want: &Value,
    t: &PhiSTransform,
    teacher_host: &[f64],
    teacher: &Tensor<2>,
    student: &Tensor<2>,
    row_mask: Option<Tensor<1, Bool>>,
) -> Result<(), KdError> {
    let at = |key: &str| format!("alternatives.{}.{key}", kind.name());
    r.checked += 1;
    let norm = match (FittedNormalization::fit(kind, t), want.is_null()) {
        (Err(KdError::InvalidStatistics { .. }), true) => return Ok(()),
        (Err(e), true) => return Err(e),
        (Ok(_), true) => {
            r.fail(case, &at("defined"), "fitted, but the reference says undefined (null)");
            return Ok(());
        }
        (Err(e), false) => {
            r.fail(case, &at("defined"), format!("undefined here ({e}), the reference has values"));
            return Ok(());
        }
        (Ok(n), false) => n,
    };
    let whitening =
        matches!(kind, Normalization::PcaWhiten | Normalization::Zca | Normalization::Hca);
    let host_tol = if whitening { eigen_tol } else { f64_tol };
    let Some(fields) = want.as_object() else {
        r.fail(case, &at("value"), format!("expected an object or null, got {want}"));
        return Ok(());
    };
    for (key, value) in fields {
        let values = flat(value).0;
        let (got, tol) = match key.as_str() {
            "mu" => (norm.mu().to_vec(), host_tol(&values)),
            "sigma" => (norm.sigma().to_vec(), host_tol(&values)),
            "whiten" => (norm.matrix().to_vec(), host_tol(&values)),
            "targets" => (norm.apply_host(teacher_host)?, host_tol(&values)),
            "per_row_mse" => {
                // The same student features against the device-side targets, rows masked.
                let targets = norm.apply(teacher.clone())?;
                let mse = FeatureDistanceConfig::new().with_loss(FeatureLoss::Mse).init()?;
                let out = mse.forward(student.clone(), targets, row_mask.clone())?;
                (host(out.per_row), Tol::f32_scaled(&values))
            }
            other => {
                r.fail(case, &at(other), "field not checked by this runner");
                continue;
            }
        };
        r.check(case, &at(key), &got, &values, tol);
    }
    Ok(())
}
