//! `kd baldistill` with the example config, from the repository root, on a small slice of the
//! shipped long-tailed pool: BalDistill balances every stage and synthesises the short domain,
//! random selection does neither, a rerun continues from the finished stages, and a bad arm is
//! an input error.

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// The first `n` lines of a shipped BalDistill file, written to `dir/name`.
fn slice(dir: &Path, file: &str, n: usize) -> String {
    let text = std::fs::read_to_string(common::assets().join("baldistill").join(file)).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>())
        .unwrap();
    path.display().to_string()
}

fn baldistill(dir: &Path, args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // 60 pool problems: `change` and `compare` can fill their quotas, the rest cannot.
    let pool = slice(dir, "pool.jsonl", 60);
    // Held-out: 2 problems of each domain (the file is grouped by domain, 60 each).
    let eval_text =
        std::fs::read_to_string(common::assets().join("baldistill/eval.jsonl")).unwrap();
    let eval: String = eval_text
        .lines()
        .enumerate()
        .filter(|(i, _)| i % 60 < 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let eval_path = dir.join("eval.jsonl");
    std::fs::write(&eval_path, eval).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kd"))
        .current_dir(&root)
        .args(["baldistill", "--config", "crates/kd-cli/configs/baldistill.toml"])
        .args(["--set", &format!("baldistill.pool=\"{pool}\"")])
        .args(["--set", &format!("data.eval=\"{}\"", eval_path.display())])
        .args(["--set", "baldistill.budget=20", "--set", "baldistill.stages=2"])
        .args(["--set", "baldistill.synthesis_attempts=2", "--set", "train.steps=2"])
        .args(["--set", "train.batch_size=2", "--set", "train.log_every=1"])
        .args(["--out", dir.join("out").to_str().unwrap(), "--quiet"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn baldistill_balances_and_random_does_not_and_a_rerun_continues() {
    let dir = common::scratch("baldistill");
    let o = baldistill(&dir, &["--arms", "baldistill,random"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/summary.json")).unwrap())
            .unwrap();
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let pool = std::fs::read_to_string(dir.join("pool.jsonl")).unwrap();
    let count =
        |d: &str| pool.lines().filter(|l| l.contains(&format!("\"domain\": \"{d}\""))).count();
    for run in runs {
        let stages = run["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 2);
        for (s, stage) in stages.iter().enumerate() {
            let selected: u64 =
                stage["selected"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
            let synth: u64 = stage["synthesis_attempts"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            if run["arm"] == "random" {
                // The whole stage budget from the pool, nothing written by the teacher.
                assert_eq!(selected, 10, "stage {s}");
                assert_eq!(synth, 0);
                assert!(stage["quotas"].as_object().unwrap().is_empty());
            } else {
                // Five domains, 2 each; short domains are topped up by synthesis (2 attempts
                // per missing example).
                let quotas = stage["quotas"].as_object().unwrap();
                assert_eq!(quotas.len(), 5);
                assert!(quotas.values().all(|q| q == 2), "{quotas:?}");
                let short: u64 = quotas
                    .keys()
                    .map(|d| {
                        let left = count(d).saturating_sub(2 * s);
                        2u64.saturating_sub(left.min(2) as u64)
                    })
                    .sum();
                assert_eq!(selected + short, 10, "stage {s}");
                assert_eq!(synth, 2 * short, "stage {s}");
            }
            assert!(stage["eval_macro"].as_f64().unwrap() >= 0.0);
            assert_eq!(stage["eval"].as_object().unwrap().len(), 5);
        }
    }
    assert!(dir.join("out/baldistill.png").is_file());
    assert!(dir.join("out/summary.csv").is_file());
    let kept =
        std::fs::read_to_string(dir.join("out/baldistill-seed0/stage1/train.jsonl")).unwrap();
    assert!(kept.lines().count() > 0);

    // A rerun finds both stages done and reproduces the summary without training.
    let o = baldistill(&dir, &["--arms", "baldistill,random"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(again, summary);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already done"));

    let o = baldistill(&dir, &["--arms", "balanced"]);
    common::assert_input_error(&o, &["unknown arm `balanced`"]);
    let _ = std::fs::remove_dir_all(&dir);
}
