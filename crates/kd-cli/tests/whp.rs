//! `kd distill` with the `whp` method and WHP's anchored terms: the example config runs from the
//! repository root on a few stories of the shipped book with its anchor dictionary (the
//! baseline reads the translated blocks), and bad anchors are input errors.

mod common;

use std::path::Path;
use std::process::Command;

/// `kd distill --config crates/kd-cli/configs/whp.toml` from the repository root on the first
/// stories of `assets/whp_book/book.txt` (plain text, blocks of 64), 2 steps of batch 2, with
/// `args` after it.
fn distill_book(dir: &Path, run: &str, args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let book = std::fs::read_to_string(common::assets().join("whp_book/book.txt")).unwrap();
    let few: Vec<&str> = book.split("\n\n").take(12).collect();
    let data = dir.join("few.txt");
    std::fs::write(&data, few.join("\n\n")).unwrap();
    let data = data.to_str().unwrap();
    Command::new(env!("CARGO_BIN_EXE_kd"))
        .current_dir(&root)
        .args(["distill", "--config", "crates/kd-cli/configs/whp.toml"])
        .args(["--data", data, "--set", "data.format=\"text\""])
        .args(["--set", &format!("data.eval=\"{data}\""), "--set", "data.seq_len=64"])
        .args(["--set", "train.batch_size=2", "--set", "train.eval_rouge_prompts=0"])
        .args(["--set", "train.eval_exact_match=false", "--set", "train.eval_every=0"])
        .args(["--steps", "2"])
        .args(args)
        .args(["--out", dir.join(run).to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn anchored_terms_run_from_the_book_and_bad_anchors_are_input_errors() {
    let dir = common::scratch("whp-anchors");
    let file = "method.anchors.file=\"crates/kd-cli/assets/whp_book/anchors.json\"";
    let o = distill_book(&dir, "anchors", &["--set", file]);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    // Every story names Hobbin: every block is translated, and most counted rows are paired.
    assert!(err.contains("whp anchors: 12 terms;"), "{err}");
    let train: Vec<_> = common::metrics(&dir.join("anchors"))
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .collect();
    assert_eq!(train.len(), 2);
    for r in &train {
        let aligned = r["extra"]["aligned"].as_f64().unwrap();
        assert!(aligned > 0.5 && aligned < 1.0, "{r}");
        assert!(r["extra"]["generic_label_is_data"].as_f64().unwrap().is_finite());
    }
    // Without anchors both teachers read the same text: no `aligned` metric.
    let o = distill_book(&dir, "plain", &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let plain = common::metrics(&dir.join("plain"));
    assert!(plain.iter().all(|r| r["extra"].get("aligned").is_none()));

    let missing = "method.anchors.file=\"no/such/anchors.json\"";
    let o = distill_book(&dir, "missing", &["--set", missing]);
    common::assert_input_error(&o, &["no/such/anchors.json"]);
    let o = distill_book(&dir, "empty", &["--set", "method.anchors.min_match=2"]);
    common::assert_input_error(&o, &["anchors", "terms"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_intervention_teacher_runs_from_the_book() {
    let dir = common::scratch("whp-intervention");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let book = std::fs::read_to_string(common::assets().join("whp_book/book.txt")).unwrap();
    let few: Vec<&str> = book.split("\n\n").take(12).collect();
    let data = dir.join("few.txt");
    std::fs::write(&data, few.join("\n\n")).unwrap();
    let config = dir.join("intervention.toml");
    let model = "crates/kd-cli/assets/delta/teacher-base";
    std::fs::write(
        &config,
        format!(
            "[student]\npretrained = \"{model}\"\n[teacher]\npretrained = \"{model}\"\n\
             [data]\ntokenizer = \"crates/kd-cli/assets\"\ntrain = \"{0}\"\neval = \"{0}\"\n\
             format = \"text\"\nseq_len = 64\n\
             [train]\nsteps = 2\nbatch_size = 2\neval_every = 0\n\
             [method]\nname = \"whp\"\n\
             [method.intervention]\ntarget = \"Hobbin\"\nnames = [\"Lily\", \"Tom\", \"Ben\"]\n",
            data.display()
        ),
    )
    .unwrap();
    let run = |out: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kd"))
            .current_dir(&root)
            .args(["distill", "--config", config.to_str().unwrap()])
            .args(args)
            .args(["--out", dir.join(out).to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = run("iv", &[]);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("whp intervention: Hobbin replaced by 3 names (Lily, Tom, Ben)"), "{err}");
    let train: Vec<_> =
        common::metrics(&dir.join("iv")).into_iter().filter(|r| r["kind"] == "train").collect();
    assert_eq!(train.len(), 2);
    for r in &train {
        let aligned = r["extra"]["aligned"].as_f64().unwrap();
        assert!(aligned > 0.5 && aligned < 1.0, "{r}");
        assert!(r["extra"]["anchor_moved"].as_f64().unwrap() > 0.0, "{r}");
    }
    // A baseline has no place in it; a name equal to the target is refused.
    let o = run("base", &["--base-teacher", model]);
    common::assert_input_error(&o, &["base_teacher"]);
    let o = run("same", &["--set", "method.intervention.names=[\"Hobbin\"]"]);
    common::assert_input_error(&o, &["names other than the target"]);
    let _ = std::fs::remove_dir_all(&dir);
}
