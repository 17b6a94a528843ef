//! The committed golden files are reproducible from the repository: every output, gradient
//! and extra of every case of every file in `crates/kd-losses/tests/golden` is recomputed by
//! the float64 reference, and freshly generated files round-trip through the checker.

use std::path::{Path, PathBuf};

use kd_golden::{
    DEFAULT_TOLERANCE, LOSS_NAMES, check_dir, compare, generate, generate_dir, read_json, recompute,
};
use serde_json::Value;

fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kd-losses/tests/golden")
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kd-golden-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn committed_files_are_reproduced() {
    let reports = check_dir(&committed_dir()).expect("check the committed golden files");
    let mut files: Vec<&str> = reports.iter().map(|r| r.file.trim_end_matches(".json")).collect();
    files.sort_unstable();
    let mut want = LOSS_NAMES.to_vec();
    want.sort_unstable();
    assert_eq!(files, want, "one committed file per loss");
    let mut failures = Vec::new();
    for r in &reports {
        let c = &r.comparison;
        eprintln!(
            "{:<22} {:>3} cases {:>6} numbers  max_abs {:.2e}  max_rel {:.2e}  {}",
            r.file, r.cases, c.numbers, c.max_abs, c.max_rel, c.worst
        );
        assert!(c.numbers > 0, "{}: nothing compared", r.file);
        if !c.passes(DEFAULT_TOLERANCE) {
            failures.push(format!(
                "{}: max_rel {:e} at {}; mismatches {:?}",
                r.file, c.max_rel, c.worst, c.mismatches
            ));
        }
    }
    assert!(failures.is_empty(), "not reproduced:\n{}", failures.join("\n"));
}

/// Names, configs and input/output fields of every case, without the numbers.
fn skeleton(doc: &Value) -> Vec<(String, Value, Vec<String>, Vec<String>)> {
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    doc["cases"]
        .as_array()
        .map(|cases| {
            cases
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("").to_string(),
                        c["config"].clone(),
                        keys(&c["inputs"]),
                        keys(&c["outputs"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn generated_files_round_trip_with_the_committed_layout() {
    let scratch = Scratch::new("roundtrip");
    let written = generate_dir(&scratch.0, 3).expect("generate");
    assert_eq!(written.len(), LOSS_NAMES.len());
    for r in check_dir(&scratch.0).expect("check the generated files") {
        // serde_json's default float parsing may be off by one ulp, hence not exactly 0.
        assert!(
            r.comparison.passes(1e-12),
            "{}: {:?} at {}",
            r.file,
            r.comparison.max_rel,
            r.comparison.worst
        );
    }
    for loss in LOSS_NAMES {
        let committed =
            read_json(&committed_dir().join(format!("{loss}.json"))).expect("committed file");
        let fresh = read_json(&scratch.0.join(format!("{loss}.json"))).expect("generated file");
        assert_eq!(
            skeleton(&fresh),
            skeleton(&committed),
            "{loss}: case names, configs or fields differ"
        );
        assert_eq!(fresh["loss"], committed["loss"]);
        assert_eq!(fresh["description"], committed["description"]);
    }
}

#[test]
fn generated_rows_have_no_ties() {
    let doc = generate::document("uld", 5).expect("generate");
    for case in doc["cases"].as_array().expect("cases") {
        for field in ["student_logits", "teacher_logits"] {
            for row in case["inputs"][field].as_array().expect("rows") {
                let mut bits: Vec<u64> = row
                    .as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("a number").to_bits())
                    .collect();
                let n = bits.len();
                bits.sort_unstable();
                bits.dedup();
                assert_eq!(bits.len(), n, "{}: tie in {field}", case["name"]);
            }
        }
    }
}

#[test]
fn generation_is_seeded() {
    let a = generate::document("forward_kl", 11).expect("generate");
    let b = generate::document("forward_kl", 11).expect("generate");
    let c = generate::document("forward_kl", 12).expect("generate");
    assert_eq!(a, b, "same seed, same file");
    assert_ne!(a["cases"][0]["inputs"], c["cases"][0]["inputs"], "another seed, other inputs");
}

#[test]
fn a_perturbed_value_or_missing_field_is_caught() {
    let doc = read_json(&committed_dir().join("dkd.json")).expect("committed file");
    let mut bad = doc.clone();
    let g = &mut bad["cases"][0]["outputs"]["grad_student_logits"][1][2];
    *g = Value::from(g.as_f64().expect("a number") * (1.0 + 1e-7));
    let got = recompute(&bad).expect("recompute");
    assert!(!compare(&bad, &got).passes(DEFAULT_TOLERANCE), "a 1e-7 relative change must fail");

    let mut missing = doc;
    missing["cases"][0]["outputs"]["extras"].as_object_mut().expect("extras").remove("tckd");
    let got = recompute(&missing).expect("recompute");
    let cmp = compare(&missing, &got);
    assert!(cmp.mismatches.iter().any(|m| m.contains("tckd")), "{:?}", cmp.mismatches);
}
