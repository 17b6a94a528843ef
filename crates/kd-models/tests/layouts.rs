//! The checked-in fixtures rewritten into the other layouts real checkpoints come in: the parity
//! checks must still pass (or, for lossy rewrites, give exactly the logits of the equally rounded
//! `f32` weights).

mod common;

use burn::tensor::Device;
use common::{
    RawTensor, assert_parity, copy_fixture, fixture, plain_logits, read_json, read_raw, write_json,
    write_raw,
};
use kd_models::CausalLm;
use safetensors::Dtype;
use serde_json::json;

/// The hub GPT-2 layout: no `transformer.` prefix, plus the legacy `attn.bias` /
/// `attn.masked_bias` buffers.
#[test]
fn gpt2_hub_layout_with_legacy_buffers() {
    let src = fixture("hf-tiny-gpt2");
    let dir = copy_fixture(&src, "gpt2-hub-layout");
    let mut tensors: Vec<RawTensor> = read_raw(&src.join("model.safetensors"))
        .into_iter()
        .map(|mut t| {
            t.name = t.name.strip_prefix("transformer.").unwrap_or(&t.name).to_string();
            t
        })
        .collect();
    assert!(tensors.iter().all(|t| !t.name.starts_with("transformer.")));
    let n = 128;
    let tril: Vec<f32> = (0..n * n).map(|i| if i % n <= i / n { 1.0 } else { 0.0 }).collect();
    for layer in 0..2 {
        tensors.push(RawTensor::f32(&format!("h.{layer}.attn.bias"), vec![1, 1, n, n], &tril));
        tensors.push(RawTensor::f32(&format!("h.{layer}.attn.masked_bias"), vec![], &[-1e4]));
    }
    write_raw(&dir.join("model.safetensors"), &tensors);
    assert_parity(&dir);
}

/// transformers-5 config (`rope_parameters`) and a sharded checkpoint with an index.
#[test]
fn llama_transformers5_config_and_sharded_weights() {
    let src = fixture("hf-tiny-llama");
    let dir = copy_fixture(&src, "llama-t5-sharded");
    let mut config = read_json(&src.join("config.json"));
    let obj = config.as_object_mut().unwrap();
    let theta = obj.remove("rope_theta").unwrap();
    obj.remove("rope_scaling");
    obj.insert("rope_parameters".into(), json!({"rope_theta": theta, "rope_type": "default"}));
    write_json(&dir.join("config.json"), &config);

    let tensors = read_raw(&src.join("model.safetensors"));
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    write_raw(&dir.join(shards[0]), first);
    write_raw(&dir.join(shards[1]), second);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in shards.iter().zip([first, second]) {
        for t in part {
            weight_map.insert(t.name.clone(), json!(shard));
        }
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {}, "weight_map": weight_map}),
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_parity(&dir);
}

/// `f16` and `bf16` stored weights load as the `f32` values they round to.
#[test]
fn half_precision_weights_convert_exactly() {
    let src = fixture("hf-tiny-llama");
    let device = Device::flex();
    let tensors = read_raw(&src.join("model.safetensors"));
    for (name, dtype) in [("f16", Dtype::F16), ("bf16", Dtype::BF16)] {
        let half_dir = copy_fixture(&src, &format!("llama-{name}"));
        let rounded_dir = copy_fixture(&src, &format!("llama-{name}-rounded-f32"));
        let mut half_tensors = Vec::new();
        let mut rounded = Vec::new();
        for t in &tensors {
            let values = t.values();
            let (bits, back): (Vec<u16>, Vec<f32>) = match dtype {
                Dtype::F16 => values
                    .iter()
                    .map(|v| {
                        let h = half::f16::from_f32(*v);
                        (h.to_bits(), h.to_f32())
                    })
                    .unzip(),
                _ => values
                    .iter()
                    .map(|v| {
                        let h = half::bf16::from_f32(*v);
                        (h.to_bits(), h.to_f32())
                    })
                    .unzip(),
            };
            let data = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            half_tensors.push(RawTensor {
                name: t.name.clone(),
                dtype,
                shape: t.shape.clone(),
                data,
            });
            rounded.push(RawTensor::f32(&t.name, t.shape.clone(), &back));
        }
        write_raw(&half_dir.join("model.safetensors"), &half_tensors);
        write_raw(&rounded_dir.join("model.safetensors"), &rounded);
        let half_model = CausalLm::from_pretrained(&half_dir, &device).unwrap();
        let rounded_model = CausalLm::from_pretrained(&rounded_dir, &device).unwrap();
        let full = CausalLm::from_pretrained(&src, &device).unwrap();
        let a = plain_logits(&half_model, &src, &device);
        let b = plain_logits(&rounded_model, &src, &device);
        assert_eq!(a, b, "{name} weights differ from their rounded f32 values");
        let c = plain_logits(&full, &src, &device);
        let worst = a.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 0.1, "{name}: logits moved by {worst} from the f32 model");
    }
}

/// An untied head holding a copy of the embedding gives the tied model's logits (both
/// architectures), and a stored-but-tied `lm_head.weight` is ignored.
#[test]
fn tied_and_untied_heads_agree() {
    let device = Device::flex();
    // GPT-2: tied in the fixture; untie it with a copy of wte.
    let src = fixture("hf-tiny-gpt2");
    let dir = copy_fixture(&src, "gpt2-untied");
    let mut config = read_json(&src.join("config.json"));
    config["tie_word_embeddings"] = json!(false);
    write_json(&dir.join("config.json"), &config);
    let mut tensors = read_raw(&src.join("model.safetensors"));
    let wte = tensors.iter().find(|t| t.name == "transformer.wte.weight").unwrap().clone();
    tensors.push(RawTensor { name: "lm_head.weight".into(), ..wte });
    write_raw(&dir.join("model.safetensors"), &tensors);
    assert_parity(&dir);

    // LLaMA: untied in the fixture; tie it (lm_head := embed_tokens) both ways.
    let src = fixture("hf-tiny-llama");
    let untied = copy_fixture(&src, "llama-head-is-embedding");
    let tied = copy_fixture(&src, "llama-tied");
    let mut tensors = read_raw(&src.join("model.safetensors"));
    let embed = tensors.iter().find(|t| t.name == "model.embed_tokens.weight").unwrap().clone();
    tensors.retain(|t| t.name != "lm_head.weight");
    tensors.push(RawTensor { name: "lm_head.weight".into(), ..embed });
    write_raw(&untied.join("model.safetensors"), &tensors);
    write_raw(&tied.join("model.safetensors"), &tensors);
    let mut config = read_json(&src.join("config.json"));
    config["tie_word_embeddings"] = json!(true);
    write_json(&tied.join("config.json"), &config);
    let a = plain_logits(&CausalLm::from_pretrained(&untied, &device).unwrap(), &src, &device);
    let b = plain_logits(&CausalLm::from_pretrained(&tied, &device).unwrap(), &src, &device);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "tied vs untied-copy logits differ by {worst}");
}
