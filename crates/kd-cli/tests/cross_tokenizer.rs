//! `kd distill` with method `cross_tokenizer`: a teacher with its own (character-level)
//! tokenizer end to end, and the tokenizer checks around it.

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{assert_input_error, assets, kd_raw as kd, metrics, stderr, tiny_model};

mod common;

fn char_tokenizer() -> PathBuf {
    assets().join("arithmetic/teacher-char")
}

/// The first 24 arithmetic problems (a quick data set).
fn rows(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(assets().join("arithmetic/train.jsonl")).unwrap();
    let path = dir.join("rows.jsonl");
    std::fs::write(&path, text.lines().take(24).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    path
}

/// A tiny student over the 512-token tokenizer, `teacher` as its `[teacher]` table(s), and
/// `method` as `[method]`.
fn config(dir: &Path, teacher: &str, method: &str) -> PathBuf {
    let text = format!(
        r#"{student}
{teacher}
[data]
tokenizer = "{tok}"
train = "{train}"
format = "instruction"
template = "plain"
seq_len = 128
eval_fraction = 0.25

[train]
steps = 4
batch_size = 3
lr = 1e-2
eval_every = 0
checkpoint_every = 2
eval_rouge_prompts = 0
{method}
"#,
        student = tiny_model("student", 128),
        tok = assets().display(),
        train = rows(dir).display(),
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A 1-layer character-level teacher (99 tokens) with 192 positions.
fn char_teacher(tokenizer: Option<&Path>) -> String {
    let mut t = "[teacher.init]\nmodel_type = \"llama\"\nvocab_size = 99\nhidden_size = 16\n\
                 intermediate_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
                 num_key_value_heads = 1\nmax_position_embeddings = 192\nbos_token_id = 1\n\
                 eos_token_id = 2\n"
        .to_string();
    if let Some(p) = tokenizer {
        t = format!("[teacher]\ntokenizer = \"{}\"\n{t}", p.display());
    }
    t
}

const METHOD: &str = "[method]\nname = \"cross_tokenizer\"\nteacher_seq_len = 192\n";

fn distill(cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["distill", "--config", cfg.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap(), "--quiet"]);
    args.extend(extra);
    kd(&args)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_character_level_teacher_distils_and_resumes_exactly() {
    let dir = common::scratch("xtok-run");
    let cfg = config(&dir, &char_teacher(Some(&char_tokenizer())), METHOD);
    let straight = dir.join("straight");
    let r = distill(&cfg, &straight, &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let m = metrics(&straight);
    let steps: Vec<_> = m.iter().filter(|l| l.get("grad_norm").is_some()).collect();
    assert_eq!(steps.len(), 4, "{m:?}");
    for s in &steps {
        let aligned = s["extra"]["aligned"].as_f64().unwrap();
        assert!(aligned > 0.5 && aligned <= 1.0, "{s}");
        assert!(s["extra"]["uld"].as_f64().unwrap() > 0.0, "{s}");
    }
    assert!(straight.join("model/model.safetensors").is_file());
    // The run again from its step-2 checkpoint (the final one removed): the same records.
    let resumed = dir.join("resumed");
    copy_dir(&straight, &resumed);
    std::fs::remove_dir_all(resumed.join("checkpoint-000004")).unwrap();
    let r = distill(&cfg, &resumed, &["--resume"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(metrics(&resumed), m, "a resumed cross_tokenizer run differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn teacher_tokenizers_are_checked() {
    let dir = common::scratch("xtok-checks");
    let out = dir.join("out");
    // cross_tokenizer without any tokenizer for the teacher.
    let cfg = config(&dir, &char_teacher(None), METHOD);
    assert_input_error(
        &distill(&cfg, &out, &[]),
        &["teacher's own tokenizer", "teacher.tokenizer"],
    );
    // teacher.tokenizer with another method.
    let cfg = config(&dir, &char_teacher(Some(&char_tokenizer())), "[method]\nname = \"kd\"\n");
    assert_input_error(&distill(&cfg, &out, &[]), &["teacher.tokenizer", "cross_tokenizer only"]);
    // A teacher directory whose tokenizer differs, with kd: refused, naming the way out.
    let teacher_dir = dir.join("teacher");
    std::fs::create_dir_all(&teacher_dir).unwrap();
    std::fs::copy(char_tokenizer().join("tokenizer.json"), teacher_dir.join("tokenizer.json"))
        .unwrap();
    let table = format!("[teacher]\npretrained = \"{}\"\n", teacher_dir.display());
    let cfg = config(&dir, &table, "[method]\nname = \"kd\"\n");
    assert_input_error(&distill(&cfg, &out, &[]), &["teacher's tokenizer", "cross_tokenizer"]);
    // Plain-text data has no response to align.
    let cfg = config(&dir, &char_teacher(Some(&char_tokenizer())), METHOD);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("format = \"instruction\"", "format = \"text\"");
    std::fs::write(&cfg, text).unwrap();
    assert_input_error(&distill(&cfg, &out, &[]), &["cross_tokenizer", "not instruction data"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
