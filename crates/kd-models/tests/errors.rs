//! Broken checkpoints give a [`ModelError`] naming the problem, never a panic.

mod common;

use burn::tensor::Device;
use common::{RawTensor, copy_fixture, fixture, read_json, read_raw, write_json, write_raw};
use kd_models::{CausalLm, ModelError};
use safetensors::Dtype;
use serde_json::json;

fn load_err(dir: &std::path::Path) -> ModelError {
    CausalLm::from_pretrained(dir, &Device::flex()).expect_err("loading should fail")
}

#[test]
fn truncated_safetensors_is_an_error() {
    let src = fixture("hf-tiny-gpt2");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    for (case, cut) in [
        ("half", bytes.len() / 2),
        ("header only", 100),
        ("empty", 0),
        ("one byte short", bytes.len() - 1),
    ] {
        let dir = copy_fixture(&src, &format!("truncated-{}", case.replace(' ', "-")));
        std::fs::write(dir.join("model.safetensors"), &bytes[..cut]).unwrap();
        let err = load_err(&dir);
        assert!(matches!(err, ModelError::Safetensors { .. }), "{case}: {err}");
        assert!(err.to_string().contains("model.safetensors"), "{case}: {err}");
    }
}

#[test]
fn garbage_safetensors_is_an_error() {
    let src = fixture("hf-tiny-llama");
    let dir = copy_fixture(&src, "garbage");
    let mut garbage = u64::MAX.to_le_bytes().to_vec();
    garbage.extend(b"{not json");
    std::fs::write(dir.join("model.safetensors"), garbage).unwrap();
    assert!(matches!(load_err(&dir), ModelError::Safetensors { .. }));
    std::fs::write(dir.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{\"a\": 1}        ").unwrap();
    assert!(matches!(load_err(&dir), ModelError::Safetensors { .. }));
}

#[test]
fn missing_tensor_names_the_key() {
    let src = fixture("hf-tiny-gpt2");
    let dir = copy_fixture(&src, "missing-tensor");
    let mut tensors = read_raw(&src.join("model.safetensors"));
    tensors.retain(|t| t.name != "transformer.h.1.mlp.c_fc.weight");
    write_raw(&dir.join("model.safetensors"), &tensors);
    match load_err(&dir) {
        ModelError::MissingTensor { key, expected } => {
            assert_eq!(key, "transformer.h.1.mlp.c_fc.weight");
            assert_eq!(expected, vec![64, 256]);
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn misshapen_tensor_names_key_and_both_shapes() {
    let src = fixture("hf-tiny-llama");
    let dir = copy_fixture(&src, "misshapen");
    let mut tensors = read_raw(&src.join("model.safetensors"));
    let t =
        tensors.iter_mut().find(|t| t.name == "model.layers.0.self_attn.k_proj.weight").unwrap();
    // [32, 64] stored as [64, 32] (same byte count).
    t.shape = vec![64, 32];
    write_raw(&dir.join("model.safetensors"), &tensors);
    let err = load_err(&dir);
    let msg = err.to_string();
    match err {
        ModelError::ShapeMismatch { key, expected, got } => {
            assert_eq!(key, "model.layers.0.self_attn.k_proj.weight");
            assert_eq!(expected, vec![32, 64]);
            assert_eq!(got, vec![64, 32]);
            assert!(
                msg.contains("k_proj") && msg.contains("[32, 64]") && msg.contains("[64, 32]"),
                "{msg}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn unsupported_dtype_names_the_key() {
    let src = fixture("hf-tiny-llama");
    let dir = copy_fixture(&src, "int-weights");
    let mut tensors = read_raw(&src.join("model.safetensors"));
    let t = tensors.iter_mut().find(|t| t.name == "model.norm.weight").unwrap();
    t.dtype = Dtype::I32;
    write_raw(&dir.join("model.safetensors"), &tensors);
    assert!(
        matches!(load_err(&dir), ModelError::UnsupportedDtype { key, .. } if key == "model.norm.weight")
    );
}

#[test]
fn unsupported_model_type_is_named() {
    let src = fixture("hf-tiny-gpt2");
    let dir = copy_fixture(&src, "bert");
    let mut config = read_json(&src.join("config.json"));
    config["model_type"] = json!("bert");
    write_json(&dir.join("config.json"), &config);
    let err = load_err(&dir);
    assert!(
        matches!(err, ModelError::UnsupportedModelType { ref model_type } if model_type == "bert"),
        "{err}"
    );
    assert!(err.to_string().contains("bert"));
}

#[test]
fn missing_files_are_io_errors() {
    let dir = common::scratch_dir("empty-model-dir");
    assert!(matches!(load_err(&dir), ModelError::Io { .. }));
    let src = fixture("hf-tiny-gpt2");
    let dir = copy_fixture(&src, "no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(err, ModelError::Io { .. }) && err.to_string().contains("model.safetensors"),
        "{err}"
    );
    std::fs::write(dir.join("config.json"), "{").unwrap();
    assert!(matches!(load_err(&dir), ModelError::Json { .. }));
}

#[test]
fn unused_stored_tensors_are_not_an_error() {
    let src = fixture("hf-tiny-llama");
    let dir = copy_fixture(&src, "extra-tensor");
    let mut tensors = read_raw(&src.join("model.safetensors"));
    tensors.push(RawTensor::f32(
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        vec![8],
        &[1.0; 8],
    ));
    tensors.push(RawTensor::f32("something.else", vec![1], &[0.0]));
    write_raw(&dir.join("model.safetensors"), &tensors);
    CausalLm::from_pretrained(&dir, &Device::flex()).unwrap();
}

#[test]
fn saving_into_a_file_path_is_an_io_error() {
    let device = Device::flex();
    let model = CausalLm::from_pretrained(fixture("hf-tiny-gpt2"), &device).unwrap();
    let dir = common::scratch_dir("save-onto-file");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(model.save_pretrained(&file), Err(ModelError::Io { .. })));
}
