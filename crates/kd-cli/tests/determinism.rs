//! The same seed and config give bit-identical results on flex: across runs, and across rayon
//! thread counts (flex's kernels and the fused losses split work by rows and reduce each row in
//! a fixed order, so the thread count does not change any sum).

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assets, metrics, tiny_model};

mod common;

/// Runs `kd` with `RAYON_NUM_THREADS=threads` (`None`: rayon's default).
fn kd(args: &[&str], threads: Option<usize>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kd"));
    cmd.args(args).arg("--quiet");
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let out = cmd.output().expect("the kd binary runs");
    assert!(out.status.success(), "kd {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn write_config(dir: &Path) -> PathBuf {
    let text = format!(
        r#"{student}
[data]
tokenizer = "{tok}"
train = "{train}"
seq_len = 32
eval_fraction = 0.05

[train]
steps = 3
batch_size = 4
eval_every = 0
eval_batches = 2
"#,
        student = tiny_model("student", 64),
        tok = assets().display(),
        train = assets().join("tinystories.txt").display(),
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// What a run produced that must not depend on threads: the exported weights' bytes and every
/// value of `metrics.jsonl` except wall-clock throughputs.
fn outcome(run: &Path) -> (Vec<u8>, Vec<serde_json::Value>) {
    (std::fs::read(run.join("model/model.safetensors")).unwrap(), metrics(run))
}

#[test]
fn same_seed_same_bits_across_runs_and_thread_counts() {
    let dir = std::env::temp_dir().join(format!("kd-determinism-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = write_config(&dir);
    let cfg = cfg.to_str().unwrap();
    let teacher = dir.join("teacher");
    kd(&["train", "--config", cfg, "--out", teacher.to_str().unwrap()], None);
    let teacher_model = teacher.join("model");
    let distill = |name: &str, threads: Option<usize>| {
        let out = dir.join(name);
        kd(
            &[
                "distill",
                "--config",
                cfg,
                "--teacher",
                teacher_model.to_str().unwrap(),
                "--loss",
                "js",
                "--seed",
                "4",
                "--out",
                out.to_str().unwrap(),
            ],
            threads,
        );
        outcome(&out)
    };
    let one = distill("t1", Some(1));
    let again = distill("t1-again", Some(1));
    let four = distill("t4", Some(4));
    assert!(one.1.iter().any(|l| l.to_string().contains("loss")), "{:?}", one.1);
    assert!(one == again, "two runs with one thread differ");
    assert!(one.0 == four.0, "weights differ between 1 and 4 threads");
    assert_eq!(one.1, four.1, "metrics differ between 1 and 4 threads");
    std::fs::remove_dir_all(&dir).unwrap();
}
