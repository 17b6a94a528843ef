//! The demo's assets, compiled into the `kd` binary.
//!
//! `kd demo` needs the TinyStories slice, the 512-token tokenizer, the arithmetic word problems,
//! the shipped teacher and SFT student and the method configs. They are embedded with
//! `include_bytes!` (≈ 5.5 MB of the binary), so a `kd` installed with `cargo install` runs the
//! demo from any directory, with no source tree. [`materialize`] writes them out as files, the
//! layout the configs name (`crates/kd-cli/assets/…`, `crates/kd-cli/configs/…`), below a root
//! directory of the caller's choosing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One embedded file: its path relative to the repository root and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Path relative to the repository root, `/`-separated.
    pub path: &'static str,
    /// The file's contents.
    pub bytes: &'static [u8],
}

macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(Asset {
            path: concat!("crates/kd-cli/", $path),
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)),
        }),*]
    };
}

/// Every file under `assets/` (but `assets/fonts/`, which the chart renderer embeds itself, and
/// the repository-only model directories named in the tests below) and `configs/` (the test
/// `every_shipped_file_is_embedded` keeps this list complete).
pub const ASSETS: &[Asset] = embed![
    "assets/SOURCE.md",
    "assets/special_tokens_map.json",
    "assets/tinystories.txt",
    "assets/tokenizer.json",
    "assets/tokenizer_config.json",
    "assets/arithmetic/README.md",
    "assets/arithmetic/eval.jsonl",
    "assets/arithmetic/make_arithmetic.py",
    "assets/arithmetic/teacher.toml",
    "assets/arithmetic/train.jsonl",
    "assets/arithmetic/student-sft/config.json",
    "assets/arithmetic/student-sft/generation_config.json",
    "assets/arithmetic/student-sft/model.safetensors",
    "assets/arithmetic/student-sft/special_tokens_map.json",
    "assets/arithmetic/student-sft/tokenizer.json",
    "assets/arithmetic/student-sft/tokenizer_config.json",
    "assets/arithmetic/teacher/config.json",
    "assets/arithmetic/teacher/generation_config.json",
    "assets/arithmetic/teacher/model.safetensors",
    "assets/arithmetic/teacher/special_tokens_map.json",
    "assets/arithmetic/teacher/tokenizer.json",
    "assets/arithmetic/teacher/tokenizer_config.json",
    "assets/scoring/README.md",
    "assets/scoring/eval.jsonl",
    "assets/scoring/make_scoring.py",
    "assets/scoring/train.jsonl",
    "configs/delta_kd.toml",
    "assets/arithmetic/make_char_tokenizer.py",
    "assets/arithmetic/teacher-char.toml",
    "configs/cross_tokenizer.toml",
    "configs/distill_tinystories.toml",
    "configs/dkd.toml",
    "configs/dnkd.toml",
    "configs/feature.toml",
    "configs/gkd.toml",
    "configs/kd.toml",
    "configs/minillm.toml",
    "configs/seqkd.toml",
    "configs/sft.toml",
    "configs/sft_dolly.toml",
    "configs/step_by_step.toml",
    "configs/train_tinystories.toml",
    "configs/whp.toml",
    "configs/whp_book.toml",
    "configs/baldistill.toml",
];

/// Writes every embedded file below `root` (`root/crates/kd-cli/assets/…`), skipping files that
/// already hold the same bytes, and returns `root`. Paths in the shipped configs are relative to
/// the repository root, so they resolve against `root`.
///
/// # Errors
/// When a directory or file cannot be created or written.
pub fn materialize(root: &Path) -> Result<PathBuf> {
    for asset in ASSETS {
        let path = root.join(asset.path);
        if std::fs::read(&path).is_ok_and(|old| old == asset.bytes) {
            continue;
        }
        let parent = path.parent().expect("asset paths have a directory");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        std::fs::write(&path, asset.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(root.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.ends_with("assets/fonts") {
                continue; // the charts' font: `crate::plot` embeds it
            } else if path.is_dir() {
                files_under(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    /// Directories under `assets/` that stay in the repository: neither embedded nor in the
    /// published package (`exclude` in kd-cli's `Cargo.toml`). They hold the extra models of
    /// example configs that run from the repository root (`configs/delta_kd.toml`,
    /// `configs/cross_tokenizer.toml`, `configs/baldistill.toml`, `configs/whp_book.toml`), too
    /// large for the binary.
    const REPOSITORY_ONLY: &[&str] = &[
        "assets/delta/",
        "assets/arithmetic/teacher-char/",
        "assets/baldistill/",
        "assets/whp_book/",
    ];

    #[test]
    fn every_shipped_file_is_embedded() {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        files_under(&crate_dir.join("assets"), &mut files);
        files_under(&crate_dir.join("configs"), &mut files);
        let mut on_disk: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(crate_dir).unwrap().to_str().unwrap().replace('\\', "/"))
            .filter(|rel| !REPOSITORY_ONLY.iter().any(|dir| rel.starts_with(dir)))
            .map(|rel| format!("crates/kd-cli/{rel}"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "ASSETS must list exactly the files under assets/ and configs/"
        );
    }

    #[test]
    fn materializes_identical_files_once() {
        let root = std::env::temp_dir().join(format!("kd-assets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        materialize(&root).unwrap();
        for asset in ASSETS {
            assert_eq!(
                std::fs::read(root.join(asset.path)).unwrap(),
                asset.bytes,
                "{}",
                asset.path
            );
        }
        // A second call rewrites nothing: the modification times stay.
        let teacher = root.join("crates/kd-cli/assets/arithmetic/teacher/model.safetensors");
        let before = std::fs::metadata(&teacher).unwrap().modified().unwrap();
        materialize(&root).unwrap();
        assert_eq!(std::fs::metadata(&teacher).unwrap().modified().unwrap(), before);
        // A damaged file is restored.
        std::fs::write(&teacher, b"broken").unwrap();
        materialize(&root).unwrap();
        assert_eq!(
            std::fs::metadata(&teacher).unwrap().len() as usize,
            ASSETS
                .iter()
                .find(|a| a.path.ends_with("teacher/model.safetensors"))
                .unwrap()
                .bytes
                .len()
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
