//! Bad input to `kd` as a new user would give it: one clear error naming what is wrong, exit
//! status 2, nothing trained on it; and the settings that used to be silently misread.

use std::path::{Path, PathBuf};

use common::{assert_input_error, assets, kd_raw as kd, stderr, tiny_model, tinystories};

mod common;

fn scratch(name: &str) -> PathBuf {
    common::scratch(&format!("input-{name}"))
}

/// A 1-layer LLaMA over the 512-token tokenizer, trained for `steps` on TinyStories; `extra` is
/// appended to the `[train]` table.
fn config(dir: &Path, train_file: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"{student}
[data]
tokenizer = "{tok}"
train = "{train}"
seq_len = 32
eval_fraction = 0.05

[train]
steps = 4
batch_size = 2
eval_every = 0
eval_batches = 1
checkpoint_every = 2
{extra}
"#,
        student = tiny_model("student", 64),
        tok = assets().display(),
        train = train_file.display(),
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_resume_with_another_schedule_is_refused_unless_allowed() {
    let dir = scratch("schedule");
    let cfg = config(&dir, &tinystories(), "");
    let (cfg, out) = (cfg.to_str().unwrap(), dir.join("run"));
    let out = out.to_str().unwrap();
    let ok = kd(&["train", "--config", cfg, "--out", out, "--quiet"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // --steps 8 would stretch the cosine horizon of the steps already taken.
    let r = kd(&["train", "--config", cfg, "--out", out, "--steps", "8", "--resume", "--quiet"]);
    assert_input_error(&r, &["schedule", "4 steps", "8 steps", "--allow-schedule-change"]);
    let r = kd(&[
        "train",
        "--config",
        cfg,
        "--out",
        out,
        "--steps",
        "8",
        "--resume",
        "--allow-schedule-change",
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(String::from_utf8_lossy(&r.stdout).contains("after 8 steps"));
    // The same schedule resumes silently (nothing left to do at step 8 of 8).
    let r = kd(&["train", "--config", cfg, "--out", out, "--steps", "8", "--resume", "--quiet"]);
    assert!(r.status.success(), "{}", stderr(&r));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_errors_name_the_key_and_the_line() {
    let dir = scratch("keys");
    let data = tinystories();
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    for (extra, needles) in [
        ("lrr = 0.1", &["line 25", "lrr", "unknown field"][..]),
        ("warmup_steps = \"ten\"", &["line 25", "warmup_steps", "invalid type"]),
        ("max_grad_norm = \"of\"", &["line 25", "max_grad_norm", "\"off\""]),
    ] {
        let cfg = config(&dir, &data, extra);
        let r = kd(&["train", "--config", cfg.to_str().unwrap(), "--out", out, "--quiet"]);
        assert_input_error(&r, needles);
        assert!(!dir.join("run/metrics.jsonl").exists(), "nothing trained on `{extra}`");
    }
    // A wrong value from the command line names its dotted key.
    let cfg = config(&dir, &data, "");
    let cfg = cfg.to_str().unwrap();
    let r = kd(&["train", "--config", cfg, "--out", out, "--set", "train.batch_size=-3"]);
    assert_input_error(&r, &["train.batch_size"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gradient_clipping_switches_off_from_toml() {
    let dir = scratch("clip");
    let cfg = config(&dir, &tinystories(), "max_grad_norm = \"off\"");
    let out = dir.join("run");
    let (cfg, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let r = kd(&["train", "--config", cfg, "--out", o, "--steps", "2", "--quiet"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let written = std::fs::read_to_string(out.join("run.toml")).unwrap_or_default();
    assert!(written.contains("max_grad_norm = \"off\""), "{written}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_or_too_short_data_and_oversized_blocks_are_input_errors() {
    let dir = scratch("data");
    let out = dir.join("run");
    let out = out.to_str().unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let cfg = config(&dir, &empty, "");
    let r = kd(&["train", "--config", cfg.to_str().unwrap(), "--out", out, "--quiet"]);
    assert_input_error(&r, &["empty"]);

    let short = dir.join("short.txt");
    std::fs::write(&short, "Once upon a time.").unwrap();
    let cfg = config(&dir, &short, "");
    let r = kd(&["train", "--config", cfg.to_str().unwrap(), "--out", out, "--quiet"]);
    assert_input_error(&r, &["empty"]);

    // Blocks longer than the student's 64 positions.
    let cfg = config(&dir, &tinystories(), "");
    let cfg = cfg.to_str().unwrap();
    let r = kd(&["train", "--config", cfg, "--out", out, "--set", "data.seq_len=100", "--quiet"]);
    assert_input_error(&r, &["100", "64"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_teacher_with_another_tokenizer_of_the_same_size_is_refused() {
    let dir = scratch("tokenizer");
    let cfg = config(&dir, &tinystories(), "");
    let cfg = cfg.to_str().unwrap();
    let teacher = dir.join("teacher");
    let t = teacher.to_str().unwrap();
    let r = kd(&["train", "--config", cfg, "--out", t, "--steps", "1", "--quiet"]);
    assert!(r.status.success(), "{}", stderr(&r));
    // Same size, two tokens' ids swapped: the logits would be compared column by column
    // against the wrong tokens.
    let tok_file = teacher.join("model/tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok_file).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = {
        let mut keys = vocab.keys().skip(100);
        (keys.next().unwrap().clone(), keys.next().unwrap().clone())
    };
    let (ia, ib) = (vocab[&a].clone(), vocab[&b].clone());
    vocab.insert(a, ib);
    vocab.insert(b, ia);
    std::fs::write(&tok_file, serde_json::to_string(&tok).unwrap()).unwrap();
    let model = teacher.join("model");
    let out = dir.join("student");
    let r = kd(&[
        "distill",
        "--config",
        cfg,
        "--teacher",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "1",
        "--quiet",
    ]);
    assert_input_error(&r, &["teacher's tokenizer", "2 of its 512 tokens"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
