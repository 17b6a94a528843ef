//! Forward and greedy-generation throughput (tokens/s) on flex, f32.
//!
//! ```text
//! cargo bench -p kd-models --bench models
//! ```
//!
//! Models: the tiny fixtures in `tests/fixtures/` and a randomly initialised GPT-2-small-shaped
//! model (12 layers, 768 wide, vocabulary 50257). Forward: one `[batch, seq]` pass without
//! autodiff, median of 5 after a warm-up. Generation: greedy with the KV cache from a 16-token
//! prompt, median of 3.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_models::{CausalLm, GenerationConfig, Gpt2Config, ModelConfig, generate};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn ids(batch: usize, seq: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = (0..batch * seq).map(|i| ((i * 7919 + 13) % vocab) as i64).collect();
    Tensor::from_data(TensorData::new(data, [batch, seq]), device)
}

fn forward_tokens_per_s(model: &CausalLm, batch: usize, seq: usize, device: &Device) -> f64 {
    let x = ids(batch, seq, model.vocab_size(), device);
    let run = || {
        let t = Instant::now();
        let logits = model.forward(x.clone(), None, None);
        std::hint::black_box(logits.into_data());
        t.elapsed().as_secs_f64()
    };
    run();
    let m = median((0..5).map(|_| run()).collect());
    (batch * seq) as f64 / m
}

fn generate_tokens_per_s(model: &CausalLm, new_tokens: usize, device: &Device) -> f64 {
    let vocab = model.vocab_size() as u32;
    let prompt: Vec<u32> = (0..16u32).map(|i| (i * 31 + 5) % vocab).collect();
    let config = GenerationConfig { max_new_tokens: new_tokens, ..Default::default() };
    let run = || {
        let t = Instant::now();
        let out = generate(model, std::slice::from_ref(&prompt), &config, device, |_, _| {})
            .expect("generation");
        std::hint::black_box(out.sequences);
        t.elapsed().as_secs_f64()
    };
    run();
    let m = median((0..3).map(|_| run()).collect());
    new_tokens as f64 / m
}

fn main() {
    let device = Device::flex();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut models: Vec<(String, CausalLm)> = Vec::new();
    for name in ["hf-tiny-gpt2", "hf-tiny-llama"] {
        match CausalLm::from_pretrained(fixtures.join(name), &device) {
            Ok(m) => models.push((name.to_string(), m)),
            Err(e) => eprintln!("skipping {name}: {e}"),
        }
    }
    let small = CausalLm::init(&ModelConfig::Gpt2(Gpt2Config::default()), &device)
        .expect("GPT-2-small config");
    models.push(("gpt2-small-random".to_string(), small));
    println!(
        "{:<20} {:>22} {:>22} {:>20}",
        "model", "forward b1×s128 tok/s", "forward b8×s128 tok/s", "greedy gen tok/s"
    );
    for (name, model) in &models {
        let f1 = forward_tokens_per_s(model, 1, 128, &device);
        let f8 = forward_tokens_per_s(model, 8, 128, &device);
        let g = generate_tokens_per_s(model, 32, &device);
        println!("{name:<20} {f1:>22.0} {f8:>22.0} {g:>20.1}");
    }
}
