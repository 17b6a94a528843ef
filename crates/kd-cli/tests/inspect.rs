//! `kd inspect` on good model directories (the tiny HF fixtures, a sharded one, one without a
//! tokenizer) and on the hostile corpus of kd-models: a summary and exit 0, or one error line
//! naming the file and exit 2, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn inspect(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kd"))
        .arg("inspect")
        .arg(dir)
        .output()
        .expect("the kd binary runs")
}

fn models_tests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kd-models/tests")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn a_good_directory_prints_its_summary() {
    let out = inspect(&models_tests().join("fixtures/hf-tiny-gpt2"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for want in [
        "architecture     gpt2",
        "parameters       141056",
        "layers           2",
        "hidden size      64",
        "heads            4",
        "vocabulary       model 512, tokenizer 512",
        "stored tensors   ",
        "F32 ",
        "model.safetensors",
        "tokenizer.json",
    ] {
        assert!(stdout.contains(want), "`{want}` missing from\n{stdout}");
    }
}

#[test]
fn sharded_and_tokenizer_less_directories_are_fine() {
    let out = inspect(&models_tests().join("hostile/ok-llama-sharded"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for want in [
        "architecture     llama",
        "parameters       220",
        "heads            2 (1 key/value, head_dim 2)",
        "no tokenizer (tokenizer.json absent)",
        "stored tensors   12 (F32 12)",
        "model.safetensors.index.json",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(stdout.contains(want), "`{want}` missing from\n{stdout}");
    }
    let out = inspect(&models_tests().join("hostile/ok-gpt2-no-tokenizer"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no tokenizer"));
}

/// `(case, expected substring)` from the corpus README: `- \`case\`: what — expect \`text\``.
fn hostile_cases() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(models_tests().join("hostile/README.md")).unwrap();
    readme
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("- `")?;
            let (name, rest) = rest.split_once('`')?;
            let expected = rest.split_once("— expect `")?.1.strip_suffix('`')?;
            Some((name.to_string(), expected.to_string()))
        })
        .collect()
}

#[test]
fn every_hostile_directory_is_one_error_line_and_exit_2() {
    let cases = hostile_cases();
    assert!(cases.len() >= 40, "{} cases read from the README", cases.len());
    let mut failures = Vec::new();
    for (name, expected) in &cases {
        let dir = models_tests().join("hostile").join(name);
        let out = inspect(&dir);
        let stderr = text(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        let names_file = stderr.contains(dir.to_str().unwrap());
        let ok = out.status.code() == Some(2)
            && lines.len() == 1
            && stderr.contains(expected.as_str())
            && names_file
            && !stderr.contains("panicked");
        if !ok {
            failures.push(format!("{name}: status {:?}, stderr:\n{stderr}", out.status.code()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_missing_directory_is_an_input_error() {
    let out = inspect(Path::new("/nonexistent/model"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/model: not a directory"));
}
