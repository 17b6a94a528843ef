//! `kd distill` with Delta-KD's base models and with DKD's warm-up, end to end on tiny models:
//! the flags and config sections reach the trainer, and the missing or misplaced base models
//! are input errors (exit 2) before anything trains.

use std::path::Path;

use common::{
    assert_input_error, kd_raw as kd, metrics, scratch, stderr, tiny_run_config, train_model,
};

mod common;

/// The step records of a run's metrics (not its evaluations).
fn steps(out: &Path) -> Vec<serde_json::Value> {
    metrics(out).into_iter().filter(|r| r.get("grad_norm").is_some()).collect()
}

#[test]
fn delta_kd_runs_with_base_models_and_refuses_without_them() {
    let dir = scratch("delta-kd");
    let cfg = tiny_run_config(&dir, 2, 0);
    let base = train_model(&dir, "base", &cfg, &["--steps", "1"]);
    let teacher = train_model(&dir, "teacher", &cfg, &["--steps", "3"]);
    let out = dir.join("student");
    let out = out.to_str().unwrap();
    let distill = |extra: &[&str]| {
        let mut args =
            vec!["distill", "--config", &cfg, "--teacher", &teacher, "--out", out, "--quiet"];
        args.extend_from_slice(extra);
        kd(&args)
    };
    // The base student defaults to the student's starting weights.
    let r = distill(&[
        "--student",
        &base,
        "--base-teacher",
        &base,
        "--loss",
        "delta_kd",
        "--temperature",
        "2",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let run = std::fs::read_to_string(dir.join("student/run.toml")).unwrap();
    assert!(run.contains("delta_kd") && run.contains("temperature = 2.0"), "{run}");
    let m = steps(&dir.join("student"));
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));

    // No base teacher; no base student; base models for another loss: input errors.
    let r = distill(&["--student", &base, "--loss", "delta_kd"]);
    assert_input_error(&r, &["delta_kd", "base_teacher"]);
    let r = distill(&["--base-teacher", &base, "--loss", "delta_kd"]);
    assert_input_error(&r, &["base_student"]);
    let r = distill(&["--base-teacher", &base, "--base-student", &base]);
    assert_input_error(&r, &["base_teacher", "delta_kd"]);
    let r = distill(&[
        "--student",
        &base,
        "--base-teacher",
        &base,
        "--loss",
        "delta_kd",
        "--set",
        "method.hard_label_weight=0.5",
    ]);
    assert_input_error(&r, &["hard_label_weight", "lambda_sft"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dkd_warmup_ramps_the_kd_factor_in_the_metrics() {
    let dir = scratch("dkd-warmup");
    let cfg = tiny_run_config(&dir, 2, 0);
    let teacher = train_model(&dir, "teacher", &cfg, &["--steps", "1"]);
    let out = dir.join("student");
    let r = kd(&[
        "distill",
        "--config",
        &cfg,
        "--teacher",
        &teacher,
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "3",
        "--loss",
        "dkd",
        "--set",
        "method.kd_warmup_steps=2",
        "--set",
        "method.hard_label_weight=0.5",
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let factors: Vec<f64> =
        steps(&out).iter().map(|r| r["extra"]["kd_factor"].as_f64().unwrap()).collect();
    assert_eq!(factors, [0.5, 1.0, 1.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}
