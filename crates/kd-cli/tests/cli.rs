//! The `kd` binary end to end on tiny models: train, resume, distil, export, eval, generate;
//! its help, version, exit codes and progress lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assets, kd_raw};

mod common;

/// The `[student.init]` table of the tiny model.
fn tiny_student(max_positions: usize) -> String {
    common::tiny_model("student", max_positions)
}

fn kd(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("the kd binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kd {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn write_config(dir: &Path) -> PathBuf {
    let a = assets();
    let text = format!(
        r#"
{student}
[data]
tokenizer = "{tok}"
train = "{train}"
seq_len = 32
eval_fraction = 0.05

[train]
steps = 4
batch_size = 2
eval_every = 2
eval_batches = 2
checkpoint_every = 2
log_every = 1
"#,
        student = tiny_student(64),
        tok = a.display(),
        train = a.join("tinystories.txt").display(),
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn train_resume_distill_export_eval_generate() {
    let dir = std::env::temp_dir().join(format!("kd-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = write_config(&dir);
    let cfg = cfg.to_str().unwrap();
    let teacher_out = dir.join("teacher");
    let t = teacher_out.to_str().unwrap();

    // Train alone, then continue to 6 steps from the latest checkpoint.
    let out = kd(&["train", "--config", cfg, "--out", t]);
    assert!(out.contains("after 4 steps"), "{out}");
    let out = kd(&[
        "train",
        "--config",
        cfg,
        "--out",
        t,
        "--steps",
        "6",
        "--resume",
        "--allow-schedule-change",
    ]);
    assert!(out.contains("after 6 steps"), "{out}");
    assert!(teacher_out.join("model/config.json").is_file());
    assert!(teacher_out.join("loss.png").is_file());
    let metrics = std::fs::read_to_string(teacher_out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"train\"")).count(), 6);

    // Distil it into a student with a padded vocabulary slice and TAID, by flags.
    let student_out = dir.join("student");
    let s = student_out.to_str().unwrap();
    let teacher_model = teacher_out.join("model");
    let out = kd(&[
        "distill",
        "--config",
        cfg,
        "--teacher",
        teacher_model.to_str().unwrap(),
        "--loss",
        "taid",
        "--set",
        "method.hard_label_weight=0.2",
        "--out",
        s,
    ]);
    assert!(out.contains("held-out loss"), "{out}");

    // Export a checkpoint, evaluate it and generate from it.
    let exported = dir.join("exported");
    let e = exported.to_str().unwrap();
    let ck = student_out.join("checkpoint-000004");
    let tok = assets();
    kd(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        e,
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    let data = tok.join("tinystories.txt");
    let out = kd(&["eval", "--model", e, "--data", data.to_str().unwrap(), "--seq-len", "32"]);
    assert!(out.contains("perplexity"), "{out}");
    let out =
        kd(&["generate", "--model", e, "--prompt", "Once upon a time", "--max-new-tokens", "5"]);
    assert!(out.starts_with("Once upon a time"), "{out}");

    // Instruction data: loss on responses, ROUGE-L of greedy answers.
    let jsonl = dir.join("sft.jsonl");
    std::fs::write(
        &jsonl,
        "{\"prompt\": \"Who is Lily?\", \"response\": \"Lily is a girl.\"}\n\
         {\"prompt\": \"What did Tom see?\", \"answer\": \"Tom saw a dog.\"}\n",
    )
    .unwrap();
    let out = kd(&[
        "eval",
        "--model",
        e,
        "--data",
        jsonl.to_str().unwrap(),
        "--seq-len",
        "32",
        "--rouge",
        "2",
        "--max-new-tokens",
        "4",
    ]);
    assert!(out.contains("ROUGE-L F1"), "{out}");

    // Training on instruction data reports ROUGE-L at every evaluation: metrics, output, plot.
    let sft: String = (0..8)
        .map(|i| {
            format!(
                "{{\"prompt\": \"Who is friend {i}?\", \"response\": \"Friend {i} is Lily.\"}}\n"
            )
        })
        .collect();
    std::fs::write(&jsonl, sft).unwrap();
    let sft_out = dir.join("sft");
    let out = kd(&[
        "train",
        "--config",
        cfg,
        "--data",
        jsonl.to_str().unwrap(),
        "--steps",
        "2",
        "--set",
        "data.eval_fraction=0.25",
        "--set",
        "train.eval_rouge_prompts=2",
        "--set",
        "train.eval_max_new_tokens=4",
        "--out",
        sft_out.to_str().unwrap(),
    ]);
    assert!(out.contains("ROUGE-L"), "{out}");
    let metrics = std::fs::read_to_string(sft_out.join("metrics.jsonl")).unwrap();
    let evals: Vec<&str> = metrics.lines().filter(|l| l.contains("\"eval\"")).collect();
    assert_eq!(evals.len(), 2, "{metrics}");
    assert!(evals.iter().all(|l| l.contains("\"rouge_l\":")), "{metrics}");
    // loss.png: the 800 × 500 loss chart with the 800 × 300 ROUGE-L chart below.
    let png = std::fs::read(sft_out.join("loss.png")).unwrap();
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (800, 800));

    // Bad input is a clear error (exit status 2), not a panic.
    let bad = kd_raw(&["train", "--config", cfg, "--set", "train.stepz=3"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("stepz"));

    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tiny instruction config over the first lines of the shipped arithmetic problems.
fn write_method_config(dir: &Path, teacher: &Path) -> PathBuf {
    let a = assets();
    let arith = a.join("arithmetic");
    let take = |name: &str, n: usize| {
        let text = std::fs::read_to_string(arith.join(name)).unwrap();
        let lines: Vec<&str> = text.lines().take(n).collect();
        let p = dir.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };
    let (train, eval) = (take("train.jsonl", 24), take("eval.jsonl", 6));
    let text = format!(
        r#"
{student}
[teacher]
pretrained = "{teacher}"

[data]
tokenizer = "{tok}"
train = "{train}"
eval = "{eval}"
seq_len = 128
template = "plain"

[train]
steps = 2
batch_size = 3
log_every = 1
checkpoint_every = 1
eval_rouge_prompts = 2
eval_exact_match = true
eval_max_new_tokens = 4
"#,
        student = tiny_student(128),
        teacher = teacher.display(),
        tok = a.display(),
        train = train.display(),
        eval = eval.display(),
    );
    let p = dir.join("methods.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_method_runs_through_kd_distill_and_resumes() {
    let dir = std::env::temp_dir().join(format!("kd-cli-methods-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A tiny teacher: 2 SFT steps of the same architecture.
    let base = write_method_config(&dir, Path::new("unused"));
    let teacher_out = dir.join("teacher");
    kd(&[
        "train",
        "--config",
        base.to_str().unwrap(),
        "--set",
        "method={name = \"sft\"}",
        "--out",
        teacher_out.to_str().unwrap(),
    ]);
    let cfg = write_method_config(&dir, &teacher_out.join("model"));
    let cfg = cfg.to_str().unwrap();
    for method in ["sft", "kd", "seqkd", "gkd", "minillm"] {
        let out = dir.join(method);
        let o = out.to_str().unwrap();
        let mut args = vec!["distill", "--config", cfg, "--method", method, "--out", o];
        let sampling = "method.sampling={max_new_tokens = 6}";
        let pt = format!("data.pt=\"{}\"", assets().join("tinystories.txt").display());
        match method {
            "sft" | "kd" => {}
            "minillm" => args.extend([
                "--set",
                sampling,
                "--set",
                &pt,
                "--set",
                "method.rollout_batches=1",
                "--set",
                "method.ppo_epochs=1",
            ]),
            _ => args.extend(["--set", sampling]),
        }
        let text = kd(&args);
        assert!(text.contains("held-out loss"), "{method}: {text}");
        // Resume one step further from the last checkpoint.
        let mut more = args.clone();
        more.extend(["--steps", "3", "--resume", "--allow-schedule-change"]);
        kd(&more);
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let steps = metrics.lines().filter(|l| l.contains("\"train\"")).count();
        assert_eq!(steps, 3, "{method}: {metrics}");
        assert!(metrics.contains("\"exact_match\":"), "{method}: {metrics}");
        let run = std::fs::read_to_string(out.join("run.toml")).unwrap();
        assert!(run.contains(method), "{method}: {run}");
    }
    // The held-out curves of every method in one chart.
    let runs: Vec<String> = ["sft", "kd", "seqkd", "gkd", "minillm"]
        .iter()
        .map(|m| dir.join(m).display().to_string())
        .collect();
    let png = dir.join("methods.png");
    let out = kd(&[
        "plot",
        "--runs",
        &runs.join(","),
        "--metric",
        "exact_match",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(out.contains("5 curves"), "{out}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // SeqKD wrote the teacher's answers with their provenance.
    let answers = std::fs::read_to_string(dir.join("seqkd").join("seqkd_train.jsonl")).unwrap();
    assert_eq!(answers.lines().count(), 24);
    assert!(answers.contains("\"source\":\"teacher\""));
    assert!(dir.join("seqkd").join("seqkd_train.provenance.json").is_file());
    // ... and the command of its own.
    let generated = dir.join("answers.jsonl");
    let out = kd(&[
        "seqkd-generate",
        "--teacher",
        teacher_out.join("model").to_str().unwrap(),
        "--data",
        dir.join("train.jsonl").to_str().unwrap(),
        "--seq-len",
        "128",
        "--max-new-tokens",
        "5",
        "--out",
        generated.to_str().unwrap(),
    ]);
    assert!(out.contains("24 examples"), "{out}");
    // A method name that does not exist, or kd train with a teacher method, is a clear error.
    for bad in [
        vec!["distill", "--config", cfg, "--method", "ppo"],
        vec!["train", "--config", cfg, "--method", "gkd"],
    ] {
        let r = Command::new(env!("CARGO_BIN_EXE_kd")).args(&bad).output().unwrap();
        assert!(!r.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("method") || err.contains("ppo"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The devices `kd distill` is tested on: `cpu` always, and the GPU backends built in (the wgpu
/// CI lane runs them on Mesa's CPU drivers), each in bf16 where the device computes in it, else
/// f16.
fn devices_under_test() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = vec!["cpu"];
    #[cfg(feature = "wgpu")]
    v.push("wgpu");
    #[cfg(feature = "vulkan")]
    v.push("vulkan");
    v
}

/// `kd distill --device D --dtype bf16|f16` end to end: the run records where and in what it
/// ran, the student is exported in that precision and loads back for `kd eval`, and a dtype the
/// device cannot compute in (or an unbuilt device) is a clear error.
#[test]
fn distill_on_a_device_in_half_precision() {
    let dir = std::env::temp_dir().join(format!("kd-cli-device-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = write_config(&dir);
    let teacher = dir.join("teacher");
    kd(&["train", "--config", cfg.to_str().unwrap(), "--out", teacher.to_str().unwrap()]);
    for device in devices_under_test() {
        let out = dir.join(format!("student-{device}"));
        let mut last_error = String::new();
        let mut ran = None;
        for dtype in ["bf16", "f16"] {
            let r = Command::new(env!("CARGO_BIN_EXE_kd"))
                .args(["distill", "--config", cfg.to_str().unwrap()])
                .args(["--teacher", teacher.join("model").to_str().unwrap()])
                .args(["--device", device, "--dtype", dtype, "--steps", "2"])
                .args(["--set", "train.checkpoint_every=0", "--set", "train.eval_every=0"])
                .args(["--out", out.to_str().unwrap(), "--quiet"])
                .output()
                .unwrap();
            if r.status.success() {
                ran = Some(dtype);
                break;
            }
            last_error = String::from_utf8_lossy(&r.stderr).to_string();
            assert!(last_error.contains("dtype"), "{device} {dtype}: {last_error}");
        }
        let dtype =
            ran.unwrap_or_else(|| panic!("{device}: neither bf16 nor f16 ran: {last_error}"));
        let env: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("environment.json")).unwrap())
                .unwrap();
        assert_eq!(env["dtype"], dtype, "{env}");
        assert_eq!(env["teacher_dtype"], dtype, "{env}");
        let config = std::fs::read_to_string(out.join("model/config.json")).unwrap();
        let torch = if dtype == "bf16" { "bfloat16" } else { "float16" };
        assert!(config.contains(&format!("\"torch_dtype\": \"{torch}\"")), "{config}");
        let data = assets().join("tinystories.txt");
        let model = out.join("model");
        let args = ["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
        let report = kd(&[&args[..], &["--seq-len", "32"]].concat());
        assert!(report.contains("perplexity"), "{report}");
        // The inference commands on the device, in the precision it trained in.
        let on = ["--device", device, "--dtype", dtype];
        let report = kd(&[&args[..], &["--seq-len", "32"], &on[..]].concat());
        assert!(report.contains("perplexity"), "{report}");
        let generate = ["generate", "--model", model.to_str().unwrap(), "--prompt", "Once upon"];
        let text = kd(&[&generate[..], &["--max-new-tokens", "3"], &on[..]].concat());
        assert!(text.starts_with("Once upon"), "{text}");
    }
    let r = kd_raw(&["distill", "--config", cfg.to_str().unwrap(), "--device", "tpu"]);
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown device `tpu`"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_and_help_are_generated() {
    let v = kd_raw(&["--version"]);
    assert!(v.status.success(), "{v:?}");
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        concat!("kd ", env!("CARGO_PKG_VERSION"))
    );

    let help = kd_raw(&["--help"]);
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["demo", "train", "distill", "seqkd-generate", "eval", "export", "plot"] {
        assert!(text.contains(command), "{command}: {text}");
    }
    assert!(text.contains("Exit status") && text.contains("RUST_LOG"), "{text}");

    let help = kd_raw(&["train", "--help"]);
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config <FILE>",
        "--set <KEY=VALUE>",
        "--steps <N>",
        "--lr <X>",
        "--teacher-device <D>",
        "--dtype <P>",
        "--resume",
        "--quiet",
    ] {
        assert!(text.contains(flag), "{flag}: {text}");
    }
    for (command, flag) in [
        ("eval", "--rouge <N>"),
        ("generate", "--top-p <P>"),
        ("seqkd-generate", "--original-fraction <R>"),
        ("plot", "--metric <METRIC>"),
        ("demo", "--quick"),
    ] {
        let help = kd_raw(&[command, "--help"]);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(help.status.success() && text.contains(flag), "{command} {flag}: {text}");
    }
}

#[test]
fn usage_errors_exit_2_and_failed_runs_exit_1() {
    // Usage errors: clap's message and its pointer to --help, exit status 2.
    for args in [
        &["train", "--stepz", "3"][..],
        &["train", "--steps", "many"],
        &["eval", "--data", "x.txt"],
        &["plot", "--runs", "a", "--out", "b.png", "--metric", "bleu"],
        &["fly"],
    ] {
        let r = kd_raw(args);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {r:?}");
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.contains("error:") && err.contains("--help"), "{args:?}: {err}");
    }
    let dir = std::env::temp_dir().join(format!("kd-cli-exit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Input errors: exit status 2, no backtrace.
    let missing = dir.join("no-model");
    let data = assets().join("tinystories.txt");
    let r =
        kd_raw(&["eval", "--model", missing.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("no-model") && !err.contains("backtrace"), "{err}");

    // Without a terminal, training logs its plain progress lines (with an ETA) on stderr.
    let cfg = write_config(&dir);
    let cfg = cfg.to_str().unwrap();
    let out = dir.join("ok");
    let ok = kd_raw(&["train", "--config", cfg, "--steps", "2", "--out", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{ok:?}");
    let log = String::from_utf8_lossy(&ok.stderr);
    assert!(log.contains("step 2/2  loss ") && log.contains(" eta "), "{log}");
    assert!(log.contains("eval step 2: loss ") && log.contains("checkpoint "), "{log}");
    assert!(!log.contains('\r'), "{log}");

    // A run that fails once started (its student cannot be exported: `model` is a file there):
    // exit status 1, after the training steps ran.
    let out = dir.join("blocked");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model"), "not a directory").unwrap();
    let r = kd_raw(&["train", "--config", cfg, "--steps", "2", "--out", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("step 2/2") && err.contains("error: exporting the student"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `kd scaling-law` on runs made from a known law: the fit predicts held-out students, the
/// compute-optimal split is reported, `fit.json` and the chart are written; a bad table is an
/// input error naming its line.
#[test]
fn scaling_law_fits_a_table_predicts_and_splits_a_budget() {
    use kd_losses::{DistillationScalingLaw, ScalingLawCoefficients};
    let truth = ScalingLawCoefficients {
        E: 1.7,
        A: 400.0,
        B: 1800.0,
        alpha: 0.34,
        beta: 0.28,
        gamma: 1.0,
        A_prime: 3200.0,
        B_prime: 4500.0,
        alpha_prime: 0.42,
        beta_prime: 0.36,
        gamma_prime: 1.0,
        c0: 1.0,
        c1: 0.4,
        d1: 1.2,
        f1: 1.1,
    };
    let law = DistillationScalingLaw::new(truth);
    let dir = common::scratch("scaling-law");
    let mut csv = String::from("n_student,d_student,teacher_loss,student_loss\n");
    for n in [1e7, 3e7, 1e8, 3e8, 1e9] {
        for d in [5e8, 2e9, 8e9, 3.2e10] {
            csv += &format!("{n},{d},,{}\n", law.supervised_loss(n, d));
            for lt in [2.0, 2.5, 3.0] {
                csv += &format!("{n},{d},{lt},{}\n", law.student_loss(n, d, lt));
            }
        }
    }
    let runs = dir.join("runs.csv");
    std::fs::write(&runs, csv).unwrap();
    let out = dir.join("out");
    let stdout = kd(&[
        "scaling-law",
        "--runs",
        runs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--predict",
        "2e8,2e10,2.4",
        "--budget",
        "1e21",
        "--teacher-params",
        "7e9",
        "--teacher-loss",
        "2.1",
    ]);
    assert!(stdout.contains("compute-optimal for 1.000e21 FLOPs"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("fit.json")).unwrap()).unwrap();
    let predicted = report["predictions"][0]["student_loss"].as_f64().unwrap();
    let want = law.student_loss(2e8, 2e10, 2.4);
    assert!((predicted / want - 1.0).abs() < 1e-3, "{predicted} vs {want}");
    let best = &report["compute_optimal"];
    let (n, d) = (best["n_student"].as_f64().unwrap(), best["d_student"].as_f64().unwrap());
    assert!(((6.0 * n + 2.0 * 7e9) * d / 1e21 - 1.0).abs() < 1e-9, "{best}");
    assert!(std::fs::metadata(out.join("scaling_law.png")).unwrap().len() > 1000);

    std::fs::write(&runs, "n_student,d_student,teacher_loss,student_loss\n1e7,abc,,2.0\n").unwrap();
    let bad =
        kd_raw(&["scaling-law", "--runs", runs.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    common::assert_input_error(&bad, &["runs.csv line 2"]);
}

/// `kd partition` deals lines into disjoint parts; `kd hot-pate-label` lets several teachers
/// answer prompts through the private aggregation and writes answers with the ε spent.
#[test]
fn partition_and_hot_pate_label_write_disjoint_parts_and_private_answers() {
    let dir = common::scratch("hot-pate");
    let rows: Vec<String> =
        (0..7).map(|i| format!(r#"{{"instruction": "Say {i}", "response": "{i}"}}"#)).collect();
    let data = dir.join("data.jsonl");
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let parts = dir.join("parts");
    let out = kd(&[
        "partition",
        "--data",
        data.to_str().unwrap(),
        "--parts",
        "3",
        "--out",
        parts.to_str().unwrap(),
    ]);
    assert!(out.contains("part-0.jsonl: 3 lines"), "{out}");
    let mut all: Vec<String> = (0..3)
        .flat_map(|p| {
            let text = std::fs::read_to_string(parts.join(format!("part-{p}.jsonl"))).unwrap();
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    all.sort();
    let mut want = rows.clone();
    want.sort();
    assert_eq!(all, want, "the parts are disjoint and cover the data");

    // Three copies of one tiny model agree everywhere: coordinated votes are unanimous.
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../kd-models/tests/fixtures/hf-tiny-llama");
    let m = model.to_str().unwrap();
    let answers = dir.join("answers.jsonl");
    let teachers = format!("{m},{m},{m}");
    let out = kd(&[
        "hot-pate-label",
        "--teachers",
        &teachers,
        "--prompts",
        data.to_str().unwrap(),
        "--out",
        answers.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--template",
        "plain",
        "--noise-scale",
        "0.1",
    ]);
    assert!(out.contains("7 prompts"), "{out}");
    assert!(out.contains("privacy: ε ="), "{out}");
    let text = std::fs::read_to_string(&answers).unwrap();
    assert_eq!(text.lines().count(), 7);
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["source"], "hot_pate");
        // Unanimous teachers with little noise release every token: the cap or EOS ends it.
        assert!(row["end"] == "length" || row["end"] == "eos", "{row}");
    }
    let provenance: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("answers.provenance.json")).unwrap(),
    )
    .unwrap();
    assert!(provenance["epsilon"].as_f64().unwrap() > 0.0, "{provenance}");
    assert_eq!(provenance["queries"], provenance["released"]);

    let one = kd_raw(&[
        "hot-pate-label",
        "--teachers",
        m,
        "--prompts",
        data.to_str().unwrap(),
        "--out",
        answers.to_str().unwrap(),
    ]);
    common::assert_input_error(&one, &["at least two"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
