//! Shared helpers of the `kd` binary's tests: the shipped assets, scratch directories, the tiny
//! model every run trains, and metrics without their wall-clock fields.

#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The demo assets: the 512-token tokenizer and `tinystories.txt`.
pub fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets")
}

/// The TinyStories slice of the assets.
pub fn tinystories() -> PathBuf {
    assets().join("tinystories.txt")
}

/// A fresh directory `kd-<name>-<pid>` in the temp dir (removed first if a run left it).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `kd` with `args` as they are, whatever its exit status.
pub fn kd_raw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kd")).args(args).output().expect("the kd binary runs")
}

/// The `[<role>.init]` table of a 1-layer × 16 LLaMA over the 512-token tokenizer.
pub fn tiny_model(role: &str, max_positions: usize) -> String {
    format!(
        "[{role}.init]\nmodel_type = \"llama\"\nvocab_size = 512\nhidden_size = 16\n\
         intermediate_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
         num_key_value_heads = 1\nmax_position_embeddings = {max_positions}\n\
         bos_token_id = 1\neos_token_id = 2\n"
    )
}

/// A step or evaluation record without its wall-clock throughputs (`tokens_per_s`,
/// `extra.rollout_tokens_per_s`: the only fields that are not reproducible).
pub fn without_timing(mut record: serde_json::Value) -> serde_json::Value {
    let timing = |k: &String, _: &mut serde_json::Value| !k.ends_with("_per_s");
    if let Some(o) = record.as_object_mut() {
        o.retain(timing);
        if let Some(extra) = o.get_mut("extra").and_then(|e| e.as_object_mut()) {
            extra.retain(timing);
        }
    }
    record
}

/// A run's `metrics.jsonl`, [`without_timing`].
pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| without_timing(serde_json::from_str(l).unwrap())).collect()
}

/// `kd`'s standard error as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Asserts an input error: exit 2, every `needles` in the message, no backtrace or panic.
pub fn assert_input_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in: {err}");
    }
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

/// Writes `dir/run.toml`: a [`tiny_model`] student (64 positions) on the TinyStories slice in
/// blocks of 32 tokens (5 % held out), `steps` steps of batch 2, no evaluation, a checkpoint
/// every `checkpoint_every` steps (`0`: none); returns its path.
pub fn tiny_run_config(dir: &Path, steps: u64, checkpoint_every: u64) -> String {
    let text = format!(
        r#"{student}
[data]
tokenizer = "{tok}"
train = "{train}"
seq_len = 32
eval_fraction = 0.05

[train]
steps = {steps}
batch_size = 2
eval_every = 0
eval_batches = 1
checkpoint_every = {checkpoint_every}
log_every = 1
"#,
        student = tiny_model("student", 64),
        tok = assets().display(),
        train = tinystories().display(),
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Trains a model with `kd train --config cfg` (plus `extra` flags, e.g. `--steps 2`) into
/// `dir/name` and returns its Hugging Face directory `dir/name/model`.
pub fn train_model(dir: &Path, name: &str, cfg: &str, extra: &[&str]) -> String {
    let out = dir.join(name);
    let mut args = vec!["train", "--config", cfg, "--out", out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    let r = kd_raw(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    out.join("model").to_str().unwrap().to_string()
}
