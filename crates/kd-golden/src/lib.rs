//! Float64 reference generator and checker for the kd-losses golden files.
//!
//! The files in `crates/kd-losses/tests/golden/` hold float64 values and gradients of every
//! distillation loss, produced by the original Python reference. This crate recomputes them
//! from nothing but each case's `inputs` and `config`, written plainly from the formulas (one
//! module per loss in [`losses`]) with gradients from a small reverse-mode tape ([`tape`]).
//! It depends on neither burn nor kd-losses: it is an independent reference.
//!
//! Two uses, also available as the `kd-golden` binary:
//!
//! * [`check_dir`]: recompute every output, gradient and extra of every case of every file
//!   and report the largest error per file (`kd-golden check DIR`);
//! * [`generate_dir`]: write a fresh set of files in the same format from a seeded generator
//!   (`kd-golden generate OUT_DIR --seed S`).
//!
//! # Example: check a directory
//! ```no_run
//! let reports = kd_golden::check_dir("crates/kd-losses/tests/golden".as_ref())?;
//! for r in &reports {
//!     assert!(r.comparison.passes(kd_golden::DEFAULT_TOLERANCE), "{}", r.file);
//! }
//! # Ok::<(), kd_golden::GoldenError>(())
//! ```
//!
//! # Example: generate and round-trip
//! ```no_run
//! let dir = std::env::temp_dir().join("kd-golden-example");
//! kd_golden::generate_dir(&dir, 7)?;
//! assert!(kd_golden::check_dir(&dir)?.iter().all(|r| r.comparison.passes(1e-12)));
//! # Ok::<(), kd_golden::GoldenError>(())
//! ```
#![warn(missing_docs)]

pub mod check;
pub mod error;
pub mod generate;
pub mod json;
pub mod losses;
pub mod rows;
pub mod tape;

use std::path::{Path, PathBuf};

pub use check::{Comparison, compare, recompute};
pub use error::{GoldenError, Result};
pub use generate::generate_dir;

pub use losses::LOSS_NAMES;

/// Default pass threshold of [`check_dir`]'s relative error (see [`Comparison::max_rel`]).
pub const DEFAULT_TOLERANCE: f64 = 1e-9;

/// The comparison of one file.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// File name within the checked directory.
    pub file: String,
    /// Number of cases in the file (0 for `scaling_law`).
    pub cases: usize,
    /// Recomputed against committed values.
    pub comparison: Comparison,
}

/// Reads and parses a JSON file.
///
/// # Errors
/// When the file cannot be read or is not valid JSON.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| GoldenError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map_err(|source| GoldenError::Json { path: path.to_path_buf(), source })
}

/// The `*.json` files of a directory, sorted by name.
///
/// # Errors
/// When the directory cannot be read.
pub fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| GoldenError::Io { path: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Recomputes every `*.json` golden file of `dir` and compares it with its committed values.
///
/// # Errors
/// When a file cannot be read or parsed, names an unknown loss, or has a malformed field.
/// Numerical differences are not errors: they are in each report's [`Comparison`].
pub fn check_dir(dir: &Path) -> Result<Vec<FileReport>> {
    json_files(dir)?
        .into_iter()
        .map(|path| {
            let doc = read_json(&path)?;
            let got = recompute(&doc)?;
            let cases = doc.get("cases").and_then(|c| c.as_array()).map_or(0, Vec::len);
            let file =
                path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            Ok(FileReport { file, cases, comparison: compare(&doc, &got) })
        })
        .collect()
}
