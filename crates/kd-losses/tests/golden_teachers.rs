//! Golden-vector harness for the teacher constructions: PHI-S, the WHP / causal-intervention
//! teachers, DNKD and hot PATE.
//!
//! Reads `tests/golden_teachers/<file>.json` (float64 references; `tests/golden_teachers/README.md`
//! gives every formula and convention), or the directory named by `KD_GOLDEN_TEACHERS_DIR` when that
//! variable is set. One test per file runs every case of it on every enabled backend; the runner
//! of each file lives in `tests/teachers/<file>.rs` and checks values, gradients where given,
//! and extras. All mismatches of a file are collected and reported together, each with file,
//! case, field and index.

mod common;
#[path = "teachers/dnkd.rs"]
mod dnkd_runner;
#[path = "teachers/hot_pate.rs"]
mod hot_pate_runner;
#[path = "teachers/phi_s.rs"]
mod phi_s_runner;
#[path = "teachers/whp_teacher.rs"]
mod whp_teacher_runner;

use std::path::PathBuf;

use burn::tensor::Device;
use serde_json::Value;

/// The golden directory: `KD_GOLDEN_TEACHERS_DIR` when set, else the repository's copy.
fn teachers_dir() -> (PathBuf, bool) {
    match std::env::var_os("KD_GOLDEN_TEACHERS_DIR") {
        Some(d) => (PathBuf::from(d), true),
        None => (PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden_teachers"), false),
    }
}

/// A comparison tolerance: `|got − want| ≤ abs + rel·|want|`.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    /// Relative part.
    pub rel: f64,
    /// Absolute part.
    pub abs: f64,
}

impl Tol {
    /// `rel` relative, `abs` absolute.
    pub fn new(rel: f64, abs: f64) -> Self {
        Tol { rel, abs }
    }

    /// The golden README's f32 tolerance (relative 1e-4, absolute 1e-5), with the absolute part
    /// scaled by the largest reference entry when that exceeds 1 (its `peaked` / `large` rule).
    pub fn f32_scaled(want: &[f64]) -> Self {
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        Tol { rel: 1e-4, abs: 1e-5 * scale.max(1.0) }
    }
}

/// Collects the mismatches of one file.
#[derive(Debug)]
pub struct Report {
    /// `<file> [<backend>]`, the prefix of every message.
    pub at: String,
    /// The mismatches so far.
    pub failures: Vec<String>,
    /// How many fields were compared.
    pub checked: usize,
}

impl Report {
    /// Compares floats element-wise; records the first mismatching index of the field.
    pub fn check(&mut self, case: &str, field: &str, got: &[f64], want: &[f64], tol: Tol) {
        self.checked += 1;
        if got.len() != want.len() {
            self.fail(case, field, format!("length {} vs expected {}", got.len(), want.len()));
            return;
        }
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            if !g.is_finite() || (g - w).abs() > tol.abs + tol.rel * w.abs() {
                self.fail(case, field, format!("[{i}]: got {g:e}, expected {w:e}"));
                return;
            }
        }
    }

    /// Compares integers exactly (ids, votes, histograms, released tokens, neighbour indices).
    pub fn check_ints(&mut self, case: &str, field: &str, got: &[i64], want: &[i64]) {
        self.checked += 1;
        if got != want {
            let first = got.iter().zip(want).position(|(g, w)| g != w);
            self.fail(
                case,
                field,
                format!("got {got:?}, expected {want:?} (first difference at {first:?})"),
            );
        }
    }

    /// Records a failure that is not a comparison (an error returned, a missing field).
    pub fn fail(&mut self, case: &str, field: &str, msg: impl std::fmt::Display) {
        self.failures.push(format!("{}: {case}: {field}: {msg}", self.at));
    }
}

/// Integers of a (nested) JSON array, flattened.
pub fn int_values(v: &Value) -> Vec<i64> {
    fn walk(v: &Value, out: &mut Vec<i64>) {
        match v {
            Value::Array(items) => items.iter().for_each(|x| walk(x, out)),
            _ => out.push(v.as_i64().unwrap_or_else(|| panic!("expected an integer, got {v}"))),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// Runs `check` on `<file>.json` and fails with every mismatch.
fn run_file(file: &str, backend: &str, device: &Device, check: fn(&Value, &Device, &mut Report)) {
    let (dir, custom) = teachers_dir();
    let path = dir.join(format!("{file}.json"));
    if custom && !path.exists() {
        eprintln!("{}: not in KD_GOLDEN_TEACHERS_DIR, skipped", path.display());
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(doc["loss"].as_str(), Some(file), "{}: `loss` field", path.display());
    let mut r = Report { at: format!("{file} [{backend}]"), failures: Vec::new(), checked: 0 };
    check(&doc, device, &mut r);
    assert!(r.checked > 0, "{}: no field was checked", path.display());
    assert!(
        r.failures.is_empty(),
        "{} of {} checks failed:\n{}",
        r.failures.len(),
        r.checked,
        r.failures.join("\n")
    );
    eprintln!("{}: {} fields checked", r.at, r.checked);
}

/// The files this harness knows; every `*.json` of the directory must be one of them.
const FILES: &[&str] = &["dnkd", "hot_pate", "phi_s", "whp_teacher"];

#[test]
fn every_file_has_a_runner() {
    let (dir, _) = teachers_dir();
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            assert!(FILES.contains(&stem), "{}: no runner for this file", path.display());
            found += 1;
        }
    }
    assert!(found > 0, "{}: no golden file", dir.display());
}

/// One test per golden file and backend: `<file>::flex` (and `wgpu` / `ndarray` / `vulkan`
/// with those features).
macro_rules! golden_teacher_tests {
    ($($file:ident => $check:path;)*) => {
        $(
            mod $file {
                #[test]
                fn flex() {
                    super::run_file(stringify!($file), "flex",
                        &burn::tensor::Device::flex().autodiff(), $check);
                }
                #[cfg(feature = "wgpu")]
                #[test]
                fn wgpu() {
                    super::run_file(stringify!($file), "wgpu",
                        &burn::tensor::Device::wgpu(burn::tensor::DeviceKind::default()).autodiff(),
                        $check);
                }
            }
        )*
    };
}

golden_teacher_tests! {
    hot_pate => crate::hot_pate_runner::check;
    whp_teacher => crate::whp_teacher_runner::check;
    phi_s => crate::phi_s_runner::check;
    dnkd => crate::dnkd_runner::check;
}
