//! The hostile corpus (`tests/hostile/`, made by `tests/hostile/generate.rs`): every broken model
//! directory loads to a [`ModelError`] with the expected message, never a panic, and no single
//! allocation is larger than the files justify.
//!
//! `KD_WRITE_HOSTILE=1 cargo test -p kd-models --test hostile` rewrites the corpus.

#[path = "hostile/alloc.rs"]
mod alloc;
#[path = "hostile/generate.rs"]
mod generate;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kd_models::load::{LoadOptions, load_pretrained_with};
use kd_models::weights::list_checkpoint;
use kd_models::{ModelConfig, ModelError, Tokenizer};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// Loads `dir` as `kd inspect` does: config, weight headers, the model, the tokenizer (checked
/// against the model's vocabulary).
fn load(dir: &Path) -> Result<u64, ModelError> {
    let config = ModelConfig::from_file(dir.join("config.json"))?;
    list_checkpoint(dir)?;
    let model = load_pretrained_with(dir, &LoadOptions::default(), &Device::flex())?;
    if dir.join("tokenizer.json").exists() {
        Tokenizer::from_dir(dir)?.check_vocab_size(config.vocab_size())?;
    }
    Ok(burn::module::Module::num_params(&model) as u64)
}

/// The README of the corpus: one line per case.
fn readme(cases: &[generate::Case]) -> String {
    let mut out = String::from(
        "# Hostile model directories\n\nMade by `generate.rs` (rewrite with `KD_WRITE_HOSTILE=1 cargo test -p kd-models --test hostile`).\n`tests/hostile.rs` loads each one and expects an error containing the quoted text; `ok-*` load.\n\n",
    );
    for c in cases {
        if c.expected.is_empty() {
            out.push_str(&format!("- `{}`: valid\n", c.name));
        } else {
            out.push_str(&format!("- `{}`: {} — expect `{}`\n", c.name, c.broken, c.expected));
        }
    }
    out
}

fn files_on_disk(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap())
                .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn corpus_on_disk_is_what_the_generator_makes() {
    let cases = generate::corpus();
    let root = corpus_dir();
    if std::env::var_os("KD_WRITE_HOSTILE").is_some() {
        for c in &cases {
            let dir = root.join(c.name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &c.files {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
        std::fs::write(root.join("README.md"), readme(&cases)).unwrap();
    }
    for c in &cases {
        assert!(
            files_on_disk(&root.join(c.name)) == c.files,
            "{} differs from generate.rs",
            c.name
        );
    }
    let text = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert_eq!(text, readme(&cases), "README.md differs from generate.rs");
    let total: usize = cases.iter().flat_map(|c| c.files.values()).map(Vec::len).sum();
    assert!(total < 200 << 10, "the corpus is {total} bytes");
}

#[test]
fn every_hostile_directory_is_a_clear_error() {
    let mut failures = Vec::new();
    let cases = generate::corpus();
    for c in &cases {
        let dir = corpus_dir().join(c.name);
        let result = catch_unwind(AssertUnwindSafe(|| load(&dir)));
        let message = match (result, c.expected) {
            (Err(_), _) => format!("{}: panicked", c.name),
            (Ok(Ok(_)), "") => continue,
            (Ok(Err(e)), "") => format!("{}: should load, got `{e}`", c.name),
            (Ok(Ok(n)), want) => format!("{}: loaded ({n} parameters), expected `{want}`", c.name),
            (Ok(Err(e)), want) => {
                let text = e.to_string();
                let names_file = text.contains(dir.to_str().unwrap())
                    || matches!(
                        e,
                        ModelError::Config { .. }
                            | ModelError::UnsupportedModelType { .. }
                            | ModelError::MissingTensor { .. }
                            | ModelError::ShapeMismatch { .. }
                            | ModelError::UnsupportedDtype { .. }
                    );
                if text.contains(want) && names_file {
                    continue;
                }
                format!("{}: expected `{want}` and a file name, got `{text}`", c.name)
            }
        };
        failures.push(message);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let largest = alloc::largest();
    assert!(largest < 16 << 20, "largest single allocation {largest} bytes");
    eprintln!("{} hostile directories, largest allocation {largest} bytes", cases.len());
}
