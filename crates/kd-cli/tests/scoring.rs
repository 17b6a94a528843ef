//! `kd score-distill` end to end on a tiny budget (the shipped data capped to a few rows, two
//! steps per model), and its input errors.

mod common;

use common::{assert_input_error, assets, kd_raw, scratch, stderr};

#[test]
fn score_distill_writes_parseable_results() {
    let dir = scratch("score-distill");
    let out = dir.join("run");
    let o = kd_raw(&[
        "score-distill",
        "--out",
        out.to_str().unwrap(),
        "--max-train",
        "16",
        "--max-eval",
        "8",
        "--steps",
        "2",
        "--teacher-steps",
        "2",
        "--warmup-steps",
        "1",
        "--batch-size",
        "4",
        "--seeds",
        "0,1",
        "--lambda",
        "0.5",
        "--temperature",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{stdout}\n{}", stderr(&o));
    assert!(stdout.contains("| model | runs | macro-F1 | accuracy | QWK |"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["train_rows"], 16);
    assert_eq!(json["eval_rows"], 8);
    assert_eq!(json["student_config"]["loss"]["lambda"], 0.5);
    let runs = json["runs"].as_array().unwrap();
    // The teacher, then label-only and KD at each of the two seeds.
    let arms: Vec<&str> = runs.iter().map(|r| r["arm"].as_str().unwrap()).collect();
    assert_eq!(arms, ["teacher", "label_only", "kd", "label_only", "kd"]);
    for r in runs {
        let m = &r["metrics"];
        assert_eq!(m["examples"], 8);
        let acc = m["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r}");
        let counted: u64 = m["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(counted, 8, "{r}");
        assert!(m["qwk"].as_f64().unwrap().is_finite(), "{r}");
    }
    let summary = json["summary"].as_array().unwrap();
    assert_eq!(summary[1]["arm"], "label_only");
    assert_eq!(summary[1]["runs"], 2);

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "arm,seed,steps,train_secs,final_loss,accuracy,macro_f1,qwk,f1_0,f1_1,f1_2,f1_3"
    );
    assert_eq!(lines.len(), 6, "{csv}");
    for line in &lines[1..] {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 12, "{line}");
        assert!(fields[5..].iter().all(|f| f.parse::<f64>().is_ok()), "{line}");
    }

    // A second run reuses the first one's teacher: same teacher row, no teacher training.
    let again = dir.join("again");
    let stored = out.join("teacher_soft_labels.json");
    let o = kd_raw(&[
        "score-distill",
        "--out",
        again.to_str().unwrap(),
        "--teacher-soft-labels",
        stored.to_str().unwrap(),
        "--max-train",
        "16",
        "--max-eval",
        "8",
        "--steps",
        "1",
        "--seeds",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("teacher: 2 steps"), "{}", stderr(&o));
    let json2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(json2["runs"][0], json["runs"][0]);
    assert_eq!(json2["runs"].as_array().unwrap().len(), 3);
    // Soft labels of another row count are refused.
    let o = kd_raw(&[
        "score-distill",
        "--out",
        again.to_str().unwrap(),
        "--teacher-soft-labels",
        stored.to_str().unwrap(),
        "--max-train",
        "12",
        "--steps",
        "1",
    ]);
    assert_input_error(&o, &["16 rows"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn score_distill_input_errors_exit_2() {
    let dir = scratch("score-distill-errors");
    let out = dir.join("run");
    let scoring = assets().join("scoring");
    let train = scoring.join("train.jsonl");
    let base =
        ["score-distill", "--out", out.to_str().unwrap(), "--steps", "1", "--teacher-steps", "1"];
    // The shipped data has scores up to 3: three classes cannot hold them.
    let mut args = base.to_vec();
    args.extend(["--num-classes", "3", "--train", train.to_str().unwrap()]);
    assert_input_error(&kd_raw(&args), &["score 3 outside 0..3", "line"]);
    // A missing file.
    let mut args = base.to_vec();
    args.extend(["--train", "no/such/file.jsonl"]);
    assert_input_error(&kd_raw(&args), &["no/such/file.jsonl"]);
    // Bad knobs.
    let mut args = base.to_vec();
    args.extend(["--temperature", "0"]);
    assert_input_error(&kd_raw(&args), &["temperature"]);
    let mut args = base.to_vec();
    args.extend(["--batch-size", "0"]);
    assert_input_error(&kd_raw(&args), &["batch_size"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
