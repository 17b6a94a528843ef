//! Parity with the reference `transformers` implementation.
//!
//! One harness walks every model directory under `tests/fixtures/` (or under the directory named
//! by the `KD_FIXTURES_DIR` environment variable) and checks, for each:
//!
//! - `plain`: logits, every hidden state and the last hidden state of an unpadded batch;
//! - `padded`: logits and last hidden state at real-token positions of a left-padded batch, with
//!   the given position ids and with the default (mask-derived) ones, and each padded row
//!   against the same row run alone without padding;
//! - `generate`: greedy KV-cache decoding (tokens exactly, step logits within tolerance);
//! - `tokenizer_cases` of `expected.json`: ids, tokens and decoded text exactly;
//! - `greedy_ids_from_bos` (real-weight directories, `tests/fixtures-real/`): greedy ids exactly.
//!
//! Each check runs only when its expected data is present. Failures are collected and reported
//! together as `model / case: what`.

mod common;

use kd_models::ModelConfig;

#[test]
fn parity_with_transformers() {
    common::check_all(&common::fixtures_root());
}

/// llama2.c `stories260K` converted to `LlamaForCausalLM`: real (trained) weights, tied head,
/// transformers-5 `rope_parameters`; greedy ids equal llama2.c's reference run.
#[test]
fn real_weights_parity() {
    common::check_all(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-real"),
    );
}

#[test]
fn config_model_types_of_fixtures_parse() {
    for dir in common::model_dirs(&common::fixtures_root()) {
        let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
        assert!(["gpt2", "llama", "mistral", "qwen2"].contains(&config.model_type()));
    }
}
