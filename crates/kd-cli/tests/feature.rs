//! `kd distill` with the `feature` method: the example config runs from the repository root and
//! the learned projections are saved beside the student and in every checkpoint.

mod common;

use std::path::Path;
use std::process::Command;

use kd_train::checkpoint::{METHOD_OPTIMIZER_FILE, METHOD_PARAMS_FILE, read_tensors};
use kd_train::methods::feature::PROJECTIONS_FILE;

/// `kd distill --config crates/kd-cli/configs/feature.toml` from the repository root on the first
/// 8 training problems (train and held-out), with `args` after it.
fn distill_example(out: &Path, args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let problems =
        std::fs::read_to_string(common::assets().join("arithmetic/train.jsonl")).unwrap();
    let few: String = problems.lines().take(8).map(|l| format!("{l}\n")).collect();
    let data = out.join("few.jsonl");
    std::fs::write(&data, few).unwrap();
    let data = data.to_str().unwrap();
    Command::new(env!("CARGO_BIN_EXE_kd"))
        .current_dir(&root)
        .args(["distill", "--config", "crates/kd-cli/configs/feature.toml", "--data", data])
        .args(["--set", &format!("data.eval=\"{data}\""), "--set", "train.batch_size=2"])
        .args(["--set", "train.eval_rouge_prompts=0", "--set", "train.eval_every=0"])
        .args(args)
        .args(["--out", out.join("run").to_str().unwrap(), "--quiet"])
        .output()
        .unwrap()
}

#[test]
fn the_example_config_runs_and_saves_the_projections() {
    let dir = common::scratch("feature-example");
    let o = distill_example(&dir, &["--steps", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("run");
    let steps: Vec<_> =
        common::metrics(&out).into_iter().filter(|r| r["kind"] == "train").collect();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|r| r["extra"]["feature_loss"].as_f64().unwrap() > 0.0));
    // The default pairs of a 2-layer student and a 4-layer teacher: (0, 0), (1, 2), (2, 4),
    // each through a 64 → 128 projection.
    let p = read_tensors(&out.join("model").join(PROJECTIONS_FILE)).unwrap();
    assert_eq!(p.len(), 6);
    for k in 0..3 {
        assert_eq!(p[&format!("proj.{k}.weight")].shape().to_vec(), [64, 128]);
        assert_eq!(p[&format!("proj.{k}.bias")].shape().to_vec(), [128]);
    }
    let ck = out.join("checkpoint-000002");
    assert_eq!(read_tensors(&ck.join(METHOD_PARAMS_FILE)).unwrap(), p);
    assert_eq!(read_tensors(&ck.join(METHOD_OPTIMIZER_FILE)).unwrap().len(), 12);
    // `--resume` one step further: the projections come back from the checkpoint and train on.
    let more = ["--steps", "3", "--resume", "--allow-schedule-change"];
    let o = distill_example(&dir, &more);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let steps = common::metrics(&out).into_iter().filter(|r| r["kind"] == "train").count();
    assert_eq!(steps, 3);
    let resumed = read_tensors(&out.join("model").join(PROJECTIONS_FILE)).unwrap();
    assert_ne!(resumed["proj.0.weight"], p["proj.0.weight"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_layer_beyond_the_teacher_is_a_clean_error() {
    let out = common::scratch("feature-bad-layer");
    let o = distill_example(&out, &["--steps", "1", "--set", "method.layers=[[2, 5]]"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("layers") && err.contains("the teacher has 4 layers: 0..=4"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Two teachers through `[ensemble]` with PHI-S: the shipped 4 × 128 teacher and the 2 × 64 SFT
/// student as a second teacher each get their own projection heads (3 pairs each: 64 → 128,
/// then 64 → 64) and PHI-S normalisers.
#[test]
fn a_second_teacher_gets_its_own_heads() {
    let dir = common::scratch("feature-two-teachers");
    let second = "crates/kd-cli/assets/arithmetic/student-sft";
    let o = distill_example(
        &dir,
        &[
            "--steps",
            "2",
            "--set",
            &format!("ensemble.teachers=[\"{second}\"]"),
            "--set",
            "ensemble.weights=[0.5, 0.5]",
            "--set",
            "method.normalize_teacher=\"phi_s\"",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("run");
    let p = read_tensors(&out.join("model").join(PROJECTIONS_FILE)).unwrap();
    assert_eq!(p.len(), 12);
    for k in 0..3 {
        assert_eq!(p[&format!("proj.{k}.weight")].shape().to_vec(), [64, 128]);
        assert_eq!(p[&format!("proj.{}.weight", k + 3)].shape().to_vec(), [64, 64]);
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint-000002/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["method"]["normalizers"].as_array().unwrap().len(), 6);
    let _ = std::fs::remove_dir_all(&dir);
}
