//! Save/load round trips, models built from configs, training gradients, the KV cache and
//! generation (batching, sampling, EOS, streaming).

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use common::{fixture, plain_logits, scratch_dir};
use kd_models::{
    CausalLm, GenerationConfig, Gpt2Config, LlamaConfig, ModelConfig, RopeScaling, Sampling,
    generate,
};

fn flat<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn ids(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
    let cols = rows[0].len();
    let data: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), cols]), device)
}

/// A GPT-2 with an untied head and a LLaMA with everything optional switched on: Qwen2 biases,
/// multi-query attention, llama3 RoPE scaling (active at these positions), tied head.
fn random_configs() -> Vec<ModelConfig> {
    vec![
        ModelConfig::Gpt2(Gpt2Config {
            vocab_size: 40,
            n_positions: 32,
            n_embd: 16,
            n_layer: 2,
            n_head: 4,
            tie_word_embeddings: false,
            initializer_range: 0.2,
            ..Default::default()
        }),
        ModelConfig::Llama(LlamaConfig {
            model_type: "qwen2".into(),
            vocab_size: 40,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 1,
            head_dim: 4,
            max_position_embeddings: 32,
            rope_theta: 100.0,
            rope_scaling: RopeScaling::Llama3 {
                factor: 4.0,
                low_freq_factor: 1.0,
                high_freq_factor: 2.0,
                original_max_position_embeddings: 8,
            },
            tie_word_embeddings: true,
            qkv_bias: true,
            initializer_range: 0.2,
            ..Default::default()
        }),
        // Sliding window 3 on every layer, shorter than the 10-token test sequences.
        ModelConfig::Llama(LlamaConfig {
            model_type: "mistral".into(),
            vocab_size: 40,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            max_position_embeddings: 32,
            sliding_window: Some(3),
            initializer_range: 0.2,
            ..Default::default()
        }),
    ]
}

/// Every checked-in tiny checkpoint.
const FIXTURES: [&str; 4] = ["hf-tiny-gpt2", "hf-tiny-llama", "hf-tiny-mistral", "hf-tiny-qwen2"];

#[test]
fn save_and_reload_gives_identical_logits() {
    let device = Device::flex();
    for name in FIXTURES {
        let src = fixture(name);
        let model = CausalLm::from_pretrained(&src, &device).unwrap();
        let dir = scratch_dir(&format!("roundtrip-{name}"));
        model.save_pretrained(&dir).unwrap();
        let reloaded = CausalLm::from_pretrained(&dir, &device).unwrap();
        assert_eq!(
            plain_logits(&model, &src, &device),
            plain_logits(&reloaded, &src, &device),
            "{name}"
        );
        assert_eq!(reloaded.config(), model.config());
        let generation = common::read_json(&dir.join("generation_config.json"));
        assert_eq!(
            generation["bos_token_id"],
            common::read_json(&src.join("generation_config.json"))["bos_token_id"]
        );
        // Same tensor names and shapes as the original checkpoint.
        let names = |p: &std::path::Path| {
            common::read_raw(&p.join("model.safetensors"))
                .into_iter()
                .map(|t| (t.name, t.shape))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&dir), names(&src), "{name}");
    }
}

#[test]
fn fresh_models_save_reload_and_use_hf_init() {
    let device = Device::flex();
    for (i, config) in random_configs().into_iter().enumerate() {
        let model = CausalLm::init(&config, &device).unwrap();
        let dir = scratch_dir(&format!("fresh-{i}"));
        model.save_pretrained(&dir).unwrap();
        let reloaded = CausalLm::from_pretrained(&dir, &device).unwrap();
        assert_eq!(reloaded.config(), config);
        let input = ids(&[&[1, 2, 3, 4, 5], &[6, 7, 8, 9, 10]], &device);
        assert_eq!(
            flat(model.forward(input.clone(), None, None)),
            flat(reloaded.forward(input, None, None))
        );
    }
    // Embedding std ≈ initializer_range; norms start at one.
    let config =
        Gpt2Config { vocab_size: 500, n_embd: 64, n_layer: 1, n_head: 2, ..Default::default() };
    let CausalLm::Gpt2(model) = CausalLm::init(&ModelConfig::Gpt2(config), &device).unwrap() else {
        unreachable!()
    };
    let w = flat(model.wte.weight.val());
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!((std - 0.02).abs() < 0.002, "wte std {std}");
    assert!(flat(model.ln_f.weight.val()).iter().all(|&v| v == 1.0));
    assert!(flat(model.h[0].attn.c_attn.bias.as_ref().unwrap().val()).iter().all(|&v| v == 0.0));
}

#[test]
fn models_train_with_autodiff() {
    let device = Device::flex().autodiff();
    let mut models: Vec<CausalLm> =
        random_configs().iter().map(|c| CausalLm::init(c, &device).unwrap()).collect();
    models.push(CausalLm::from_pretrained(fixture("hf-tiny-llama"), &device).unwrap());
    for model in models {
        let input = ids(&[&[1, 2, 3, 4, 5, 6]], &device);
        let targets = ids(&[&[2, 3, 4, 5, 6, 7]], &device);
        let logits = model.forward(input, None, None); // [1, 6, vocab]
        let log_probs = activation::log_softmax(logits, 2);
        let loss = log_probs.gather(2, targets.unsqueeze_dim(2)).mean().neg();
        let grads = loss.backward();
        let weights: Vec<Tensor<2>> = match &model {
            CausalLm::Gpt2(m) => vec![
                m.wte.weight.val(),
                m.h[0].attn.c_attn.weight.val(),
                m.lm_head.as_ref().unwrap().weight.val(),
            ],
            CausalLm::Llama(m) => vec![
                m.embed_tokens.weight.val(),
                m.layers[0].self_attn.q_proj.weight.val(),
                m.layers[1].mlp.down_proj.weight.val(),
            ],
        };
        for w in weights {
            let g = w.grad(&grads).expect("parameter has a gradient");
            assert!(flat(g).iter().any(|v| *v != 0.0));
        }
    }
}

#[test]
fn kv_cache_matches_full_recomputation() {
    let device = Device::flex();
    for config in random_configs() {
        let model = CausalLm::init(&config, &device).unwrap();
        // Row 1 is left-padded by 3.
        let rows: [&[i64]; 2] =
            [&[5, 9, 2, 7, 1, 3, 8, 4, 6, 11], &[0, 0, 0, 7, 1, 3, 8, 4, 6, 11]];
        let mask_rows: [&[i64]; 2] = [&[1; 10], &[0, 0, 0, 1, 1, 1, 1, 1, 1, 1]];
        let full = model.forward(ids(&rows, &device), Some(ids(&mask_rows, &device)), None); // [2, 10, v]
        let mut cache = model.new_cache();
        let mut steps = Vec::new();
        let prefill = 6;
        let head: Vec<&[i64]> = rows.iter().map(|r| &r[..prefill]).collect();
        let head_mask: Vec<&[i64]> = mask_rows.iter().map(|r| &r[..prefill]).collect();
        let out = model.forward_with(
            ids(&head, &device),
            Some(ids(&head_mask, &device)),
            None,
            Some(&mut cache),
            false,
        );
        steps.push(out.logits);
        for t in prefill..10 {
            let step: Vec<&[i64]> = rows.iter().map(|r| &r[t..t + 1]).collect();
            let mask: Vec<&[i64]> = mask_rows.iter().map(|r| &r[..t + 1]).collect();
            let out = model.forward_with(
                ids(&step, &device),
                Some(ids(&mask, &device)),
                None,
                Some(&mut cache),
                false,
            );
            steps.push(out.logits);
        }
        assert_eq!(cache.seq_len(), 10);
        let incremental = Tensor::cat(steps, 1);
        let vocab = config.vocab_size();
        let (a, b) = (flat(full), flat(incremental));
        for row in 0..2 {
            let start = if row == 0 { 0 } else { 3 }; // padded positions are not meaningful
            let r = |v: &[f32]| v[(row * 10 + start) * vocab..(row + 1) * 10 * vocab].to_vec();
            let diff = max_diff(&r(&a), &r(&b));
            assert!(diff < 1e-5, "{} row {row}: cache vs full {diff}", config.model_type());
        }
    }
}

#[test]
fn batched_left_padded_generation_matches_single_rows() {
    let device = Device::flex();
    for name in FIXTURES {
        let model = CausalLm::from_pretrained(fixture(name), &device).unwrap();
        let prompts = vec![vec![46, 77, 344, 510, 261, 257, 256], vec![300, 270, 83], vec![13]];
        let config =
            GenerationConfig { max_new_tokens: 6, output_step_logits: true, ..Default::default() };
        let batched = generate(&model, &prompts, &config, &device, |_, _| {}).unwrap();
        let logits = flat(batched.step_logits.unwrap()); // [3, 6, vocab]
        let vocab = model.vocab_size();
        for (row, prompt) in prompts.iter().enumerate() {
            let single =
                generate(&model, std::slice::from_ref(prompt), &config, &device, |_, _| {})
                    .unwrap();
            assert_eq!(batched.sequences[row], single.sequences[0], "{name} row {row}");
            let alone = flat(single.step_logits.unwrap());
            let diff = max_diff(&logits[row * 6 * vocab..(row + 1) * 6 * vocab], &alone);
            assert!(diff < 1e-4, "{name} row {row}: step logits differ by {diff}");
        }
    }
}

#[test]
fn sampling_is_reproducible_and_eos_stops_rows() {
    let device = Device::flex();
    let model = CausalLm::from_pretrained(fixture("hf-tiny-llama"), &device).unwrap();
    let prompts = vec![vec![1, 403, 407], vec![1, 291]];
    let sample = |seed| {
        let config = GenerationConfig {
            max_new_tokens: 12,
            sampling: Sampling::Sample { temperature: 1.5, top_k: Some(50), top_p: Some(0.95) },
            seed,
            ..Default::default()
        };
        generate(&model, &prompts, &config, &device, |_, _| {}).unwrap().new_tokens
    };
    assert_eq!(sample(3), sample(3));
    assert_ne!(sample(3), sample(4));

    // Greedy with the first greedy token of row 0 as EOS: row 0 stops after it, row 1 goes on
    // (unless it happens to emit the same token), and the callback streams exactly the tokens.
    let greedy = GenerationConfig { max_new_tokens: 5, ..Default::default() };
    let free = generate(&model, &prompts, &greedy, &device, |_, _| {}).unwrap();
    let eos = free.new_tokens[0][0];
    let config = GenerationConfig { eos_token_ids: vec![eos], ..greedy };
    let mut streamed = vec![Vec::new(); 2];
    let mut calls = 0;
    let out = generate(&model, &prompts, &config, &device, |step, tokens| {
        assert_eq!(step, calls);
        calls += 1;
        for (row, t) in tokens.iter().enumerate() {
            if let Some(t) = t {
                streamed[row].push(*t);
            }
        }
    })
    .unwrap();
    assert_eq!(out.new_tokens[0], vec![eos]);
    assert_eq!(streamed, out.new_tokens);
    let row1_stop = free.new_tokens[1].iter().position(|&t| t == eos).map_or(5, |p| p + 1);
    assert_eq!(out.new_tokens[1], free.new_tokens[1][..row1_stop]);
    assert_eq!(calls, row1_stop.max(1));
}

#[test]
fn generation_rejects_bad_arguments() {
    let device = Device::flex();
    let model = CausalLm::from_pretrained(fixture("hf-tiny-gpt2"), &device).unwrap();
    let ok = GenerationConfig::default();
    let run = |prompts: &[Vec<u32>], c: &GenerationConfig| {
        generate(&model, prompts, c, &device, |_, _| {})
    };
    assert!(run(&[], &ok).is_err());
    assert!(run(&[vec![]], &ok).is_err());
    assert!(run(&[vec![512]], &ok).unwrap_err().to_string().contains("512"));
    let long = GenerationConfig { max_new_tokens: 200, ..Default::default() };
    assert!(run(&[vec![1]], &long).unwrap_err().to_string().contains("n_positions"));
}

/// Every checkpoint tensor is a burn parameter (so an optimizer sees it) and nothing else is.
#[test]
fn module_parameters_are_exactly_the_checkpoint_tensors() {
    use burn::module::Module;
    let device = Device::flex();
    for name in FIXTURES {
        let src = fixture(name);
        let model = CausalLm::from_pretrained(&src, &device).unwrap();
        let stored: usize = common::read_raw(&src.join("model.safetensors"))
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        assert_eq!(model.num_params(), stored, "{name}");
    }
}

#[test]
fn hidden_state_then_head_equals_forward() {
    let device = Device::flex();
    for name in FIXTURES {
        let model = CausalLm::from_pretrained(fixture(name), &device).unwrap();
        let input = ids(&[&[5, 9, 2, 7], &[0, 0, 3, 8]], &device);
        let mask = ids(&[&[1, 1, 1, 1], &[0, 0, 1, 1]], &device);
        let full = model.forward(input.clone(), Some(mask.clone()), None);
        let h = model.last_hidden_state(input, Some(mask), None);
        assert_eq!(h.dims()[2], model.config().hidden_size());
        assert_eq!(flat(model.logits_from_hidden(h)), flat(full), "{name}");
    }
}
