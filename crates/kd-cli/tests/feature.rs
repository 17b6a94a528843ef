//! `kd distill` with the `feature` method: the example config runs from the repository root and
//! the learned projections are saved beside the student and in every checkpoint.

mod common;

use std::path::Path;
use std::process::Command;

use kd_train::checkpoint::{METHOD_OPTIMIZER_FILE, METHOD_PARAMS_FILE, read_tensors};
use kd_train::methods::feature::PROJECTIONS_FILE;

#[test]
fn the_example_config_runs_and_saves_the_projections() {
    let out = common::scratch("feature-example");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(env!("CARGO_BIN_EXE_kd"))
        .current_dir(&root)
        .args(["distill", "--config", "crates/kd-cli/configs/feature.toml", "--steps", "2"])
        .args(["--set", "train.batch_size=2", "--set", "train.eval_rouge_prompts=0"])
        .args(["--set", "train.eval_batches=1", "--set", "train.eval_every=0"])
        .args(["--out", out.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_layer_beyond_the_teacher_is_a_clean_error() {
    let out = common::scratch("feature-bad-layer");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(env!("CARGO_BIN_EXE_kd"))
        .current_dir(&root)
        .args(["distill", "--config", "crates/kd-cli/configs/feature.toml", "--steps", "1"])
        .args(["--set", "method.layers=[[2, 5]]", "--out", out.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("layers") && err.contains("the teacher has 4 layers: 0..=4"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
