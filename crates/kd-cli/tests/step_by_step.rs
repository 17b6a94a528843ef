//! `kd distill --method step_by_step`, `kd rationale-generate`, `kd eval --task-prefix` and
//! `kd plot --csv` end to end on a tiny student, the shipped arithmetic teacher and a dozen
//! arithmetic rows.

mod common;

use std::path::{Path, PathBuf};

use common::{assets, kd_raw, scratch, tiny_model};

fn kd(args: &[&str]) -> String {
    let o = kd_raw(args);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "kd {args:?} failed:\n{out}\n{err}");
    format!("{out}{err}")
}

fn arithmetic() -> PathBuf {
    assets().join("arithmetic")
}

/// The first `n` lines of an arithmetic file, written into `dir`.
fn head(file: &str, n: usize, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(arithmetic().join(file)).unwrap();
    let p = dir.join(file);
    std::fs::write(&p, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    p
}

fn config(dir: &Path, method: &str) -> PathBuf {
    let text = format!(
        "{student}\n[teacher]\npretrained = \"{teacher}\"\n\n[data]\ntokenizer = \"{tok}\"\n\
         train = \"{train}\"\neval = \"{eval}\"\ntemplate = \"plain\"\nseq_len = 128\n\n\
         [train]\nsteps = 4\nbatch_size = 2\nlr = 3e-3\nwarmup_steps = 1\neval_every = 2\n\
         log_every = 1\ncheckpoint_every = 2\neval_rouge_prompts = 4\neval_exact_match = true\n\
         eval_max_new_tokens = 4\n\n[method]\n{method}\n",
        student = tiny_model("student", 128),
        teacher = arithmetic().join("teacher").display(),
        tok = assets().display(),
        train = head("train.jsonl", 12, dir).display(),
        eval = head("eval.jsonl", 4, dir).display(),
    );
    let p = dir.join("sbs.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn jsonl(p: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(p).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Data rationales: the training file holds the two tasks of each example side by side, the
/// held-out file the label task; both losses are logged and the label task is scored.
#[test]
fn step_by_step_trains_on_both_tasks_and_scores_the_label_task() {
    let dir = scratch("sbs-data");
    let cfg = config(&dir, "name = \"step_by_step\"\nlabels = \"data\"\nrationales = \"data\"");
    let out = dir.join("run");
    let text = kd(&["distill", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(text.contains("held-out loss"), "{text}");
    let train = jsonl(&out.join("step_by_step_train.jsonl"));
    assert_eq!(train.len(), 24, "a label row and a rationale row per example");
    let first = &train[0];
    assert!(first["prompt"].as_str().unwrap().starts_with("[label] Ben had 6 balls."));
    assert_eq!(first["response"], "4");
    assert!(train[1]["prompt"].as_str().unwrap().starts_with("[rationale] Ben had 6 balls."));
    assert_eq!(train[1]["response"], "6 - 4 = 2. 2 + 2 = 4.");
    let eval = jsonl(&out.join("step_by_step_eval.jsonl"));
    assert_eq!(eval.len(), 4);
    assert!(eval.iter().all(|e| e["prompt"].as_str().unwrap().starts_with("[label] ")));
    let metrics = common::metrics(&out);
    let step = metrics.iter().find(|m| m["kind"] == "train").unwrap();
    assert!(step["extra"]["label_loss"].is_number() && step["extra"]["rationale_loss"].is_number());
    assert!(metrics.iter().any(|m| m["exact_match"].is_number()), "{metrics:?}");
    assert!(!out.join("rationales.jsonl").exists(), "no teacher output was asked for");
    // Half the rows, λ = 0: labels only, no rationale loss.
    let half = dir.join("half");
    kd(&[
        "distill",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        half.to_str().unwrap(),
        "--set",
        "method.train_fraction=0.5",
        "--set",
        "method.rationale_weight=0.0",
    ]);
    assert_eq!(jsonl(&half.join("step_by_step_train.jsonl")).len(), 12);
    let step = common::metrics(&half).into_iter().find(|m| m["kind"] == "train").unwrap();
    assert!(step["extra"].get("rationale_loss").is_none(), "{step}");
    // The saved student on its label task, as the training loop scored it.
    let eval_out = kd(&[
        "eval",
        "--model",
        out.join("model").to_str().unwrap(),
        "--data",
        dir.join("eval.jsonl").to_str().unwrap(),
        "--template",
        "plain",
        "--task-prefix",
        "[label] ",
        "--rouge",
        "4",
        "--exact-match",
        "--max-new-tokens",
        "4",
    ]);
    assert!(
        eval_out.contains("exact-match accuracy") && eval_out.contains("(4 examples)"),
        "{eval_out}"
    );
    // Rows without a label are a clear input error.
    std::fs::write(dir.join("bad.jsonl"), "{\"instruction\": \"q\", \"response\": \"r\"}\n")
        .unwrap();
    let bad = kd_raw(&[
        "distill",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        dir.join("bad").to_str().unwrap(),
        "--set",
        &format!("data.train=\"{}\"", dir.join("bad.jsonl").display()),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("label"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Teacher rationales and labels: generated once with their provenance, reused by the next run,
/// and the same command standalone.
#[test]
fn teacher_rationales_are_generated_parsed_and_reused() {
    let dir = scratch("sbs-teacher");
    let cfg = config(&dir, "name = \"step_by_step\"\nlabels = \"teacher\"\nmax_new_tokens = 48");
    let out = dir.join("run");
    let args = ["distill", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
    kd(&args);
    let rows = jsonl(&out.join("rationales.jsonl"));
    assert_eq!(rows.len(), 12);
    assert!(out.join("rationales.provenance.json").is_file());
    // The shipped teacher answers in the data's form: most answers parse into rationale + label.
    let parsed: Vec<_> = rows.iter().filter(|r| r["parsed"] == true).collect();
    assert!(parsed.len() >= 8, "{rows:?}");
    for r in &parsed {
        let t = r["teacher_output"].as_str().unwrap();
        assert!(t.starts_with(r["rationale"].as_str().unwrap()), "{r}");
        assert!(t.contains(&format!("The answer is {}", r["label"].as_str().unwrap())), "{r}");
    }
    let train = jsonl(&out.join("step_by_step_train.jsonl"));
    assert_eq!(train.len(), 2 * parsed.len());
    assert_eq!(train[0]["response"], parsed[0]["label"]);
    assert_eq!(train[1]["response"], parsed[0]["rationale"]);
    // A second run reuses the file.
    let modified = || std::fs::metadata(out.join("rationales.jsonl")).unwrap().modified().unwrap();
    let before = modified();
    let text = kd(&args);
    assert!(text.contains("reusing the teacher's rationales"), "{text}");
    assert_eq!(modified(), before);
    // The command of its own, with one worked exemplar in the prompt.
    let generated = dir.join("rationales.jsonl");
    let text = kd(&[
        "rationale-generate",
        "--teacher",
        arithmetic().join("teacher").to_str().unwrap(),
        "--tokenizer",
        assets().to_str().unwrap(),
        "--template",
        "plain",
        "--data",
        dir.join("train.jsonl").to_str().unwrap(),
        "--limit",
        "3",
        "--shots",
        "1",
        "--max-new-tokens",
        "24",
        "--out",
        generated.to_str().unwrap(),
    ]);
    assert!(text.contains("3 questions"), "{text}");
    assert_eq!(jsonl(&generated).len(), 3);
    let provenance: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("rationales.provenance.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(provenance["shots"], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kd plot --csv`: one curve per series.
#[test]
fn plot_draws_curves_from_a_csv() {
    let dir = scratch("sbs-plot");
    let csv = dir.join("points.csv");
    std::fs::write(&csv, "series,x,y\nsft,12.5,0.1\nsft,100,0.3\nsbs,12.5,0.2\nsbs,100,0.5\n")
        .unwrap();
    let png = dir.join("curve.png");
    let text = kd(&[
        "plot",
        "--csv",
        csv.to_str().unwrap(),
        "--x-label",
        "% of the training set",
        "--metric",
        "exact_match",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(text.contains("2 curves"), "{text}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    std::fs::write(&csv, "x,y\n1,2\n").unwrap();
    let bad = kd_raw(&["plot", "--csv", csv.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("series,x,y"));
    std::fs::remove_dir_all(&dir).unwrap();
}
