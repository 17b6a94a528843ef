//! `kd distill` with the `dnkd` method: the example config runs from the repository root and
//! saves its datastore, a run loads it back and trains identically, `--method dnkd` starts from
//! the method's defaults, and a bad key is an input error.

mod common;

use std::path::Path;
use std::process::Command;

use kd_losses::teachers::dnkd::Datastore;

/// `kd distill --config crates/kd-cli/configs/dnkd.toml` from the repository root on the first
/// 8 training problems (train and held-out), 2 steps of batch 2, with `args` after it.
fn distill_example(dir: &Path, run: &str, args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let problems =
        std::fs::read_to_string(common::assets().join("arithmetic/train.jsonl")).unwrap();
    let few: String = problems.lines().take(8).map(|l| format!("{l}\n")).collect();
    let data = dir.join("few.jsonl");
    std::fs::write(&data, few).unwrap();
    let data = data.to_str().unwrap();
    Command::new(env!("CARGO_BIN_EXE_kd"))
        .current_dir(&root)
        .args(["distill", "--config", "crates/kd-cli/configs/dnkd.toml", "--data", data])
        .args(["--set", &format!("data.eval=\"{data}\""), "--set", "train.batch_size=2"])
        .args(["--set", "train.eval_rouge_prompts=0", "--set", "train.eval_every=0"])
        .args(["--set", "method.ivf.nlist=16", "--set", "method.ivf.nprobe=4", "--steps", "2"])
        .args(args)
        .args(["--out", dir.join(run).to_str().unwrap(), "--quiet"])
        .output()
        .unwrap()
}

fn train_records(out: &Path) -> Vec<serde_json::Value> {
    common::metrics(out).into_iter().filter(|r| r["kind"] == "train").collect()
}

#[test]
fn the_example_config_runs_and_its_saved_datastore_loads_back() {
    let dir = common::scratch("dnkd-example");
    let store = dir.join("store.kdnn");
    let save = format!("method.save_datastore=\"{}\"", store.display());
    let o = distill_example(&dir, "built", &["--set", &save]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let built = train_records(&dir.join("built"));
    assert_eq!(built.len(), 2);
    for key in ["tckd", "nckd", "ce", "knn_label_top1"] {
        assert!(built.iter().all(|r| r["extra"][key].as_f64().unwrap().is_finite()), "{key}");
    }
    // One entry per response token of the 8 problems, keys as wide as the 4 × 128 teacher.
    let s = Datastore::load(&store).unwrap();
    assert_eq!(s.dim(), 128);
    assert!(s.len() > 8 * 10, "{} entries", s.len());

    let load = format!("method.datastore=\"{}\"", store.display());
    let o = distill_example(&dir, "loaded", &["--set", &load]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(train_records(&dir.join("loaded")), built, "the loaded store trains identically");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn method_by_name_and_bad_keys() {
    let dir = common::scratch("dnkd-by-name");
    // `--method dnkd` replaces the example's [method] by the defaults (exact index, k = 8).
    let o = distill_example(&dir, "defaults", &["--method", "dnkd"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(train_records(&dir.join("defaults")).len(), 2);
    let o = distill_example(&dir, "k0", &["--set", "method.loss.k=0"]);
    common::assert_input_error(&o, &["`k` of dnkd", "≥ 1"]);
    let o = distill_example(&dir, "unknown", &["--set", "method.loss.kk=3"]);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("kk"), "{}", common::stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
