//! Forward and greedy-generation throughput (tokens/s) on flex, f32.
//!
//! ```text
//! cargo bench -p kd-models --bench models               # full: 5 forward, 3 generation runs
//! cargo bench -p kd-models --bench models -- --quick    # 2 forward, 1 generation run
//! ```
//!
//! Models: the tiny fixtures in `tests/fixtures/` and a randomly initialised GPT-2-small-shaped
//! model (12 layers, 768 wide, vocabulary 50257, 124M parameters). Forward: one `[batch, seq]`
//! pass without autodiff, logits read back, median of the runs after one warm-up; tokens/s =
//! `batch · seq / time`. Generation: greedy with the KV cache, batch 1, 16-token prompt then 32
//! new tokens; tokens/s = `32 / time` (the prefill is included in the time), median after one
//! warm-up.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_models::{CausalLm, GenerationConfig, Gpt2Config, ModelConfig, generate};

const FIXTURES: [&str; 4] = ["hf-tiny-gpt2", "hf-tiny-llama", "hf-tiny-mistral", "hf-tiny-qwen2"];
const SEQ: usize = 128;
const PROMPT: usize = 16;
const NEW_TOKENS: usize = 32;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn ids(batch: usize, seq: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = (0..batch * seq).map(|i| ((i * 7919 + 13) % vocab) as i64).collect();
    Tensor::from_data(TensorData::new(data, [batch, seq]), device)
}

/// Median seconds of `runs` calls after one warm-up call.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn forward_tokens_per_s(model: &CausalLm, batch: usize, runs: usize, device: &Device) -> f64 {
    let x = ids(batch, SEQ, model.vocab_size(), device);
    let seconds = time(runs, || {
        let logits = model.forward(x.clone(), None, None); // [batch, SEQ, vocab]
        std::hint::black_box(logits.into_data());
    });
    (batch * SEQ) as f64 / seconds
}

fn generate_tokens_per_s(model: &CausalLm, runs: usize, device: &Device) -> f64 {
    let vocab = model.vocab_size() as u32;
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 31 + 5) % vocab).collect();
    let config = GenerationConfig { max_new_tokens: NEW_TOKENS, ..Default::default() };
    let seconds = time(runs, || {
        let out = generate(model, std::slice::from_ref(&prompt), &config, device, |_, _| {})
            .expect("generation");
        assert_eq!(out.new_tokens[0].len(), NEW_TOKENS, "no EOS configured, all tokens come");
        std::hint::black_box(out.sequences);
    });
    NEW_TOKENS as f64 / seconds
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (forward_runs, generate_runs) = if quick { (2, 1) } else { (5, 3) };
    let device = Device::flex();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut models: Vec<(String, CausalLm)> = FIXTURES
        .iter()
        .map(|name| {
            let model = CausalLm::from_pretrained(fixtures.join(name), &device)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.to_string(), model)
        })
        .collect();
    let small = CausalLm::init(&ModelConfig::Gpt2(Gpt2Config::default()), &device)
        .expect("GPT-2-small config");
    models.push(("gpt2-small-random".to_string(), small));
    println!(
        "flex f32, {} threads available; forward median of {forward_runs}, generation median of \
         {generate_runs} (after one warm-up each)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<20} {:>10} {:>24} {:>24} {:>26}",
        "model",
        "params",
        format!("forward b1×s{SEQ} tok/s"),
        format!("forward b8×s{SEQ} tok/s"),
        format!("greedy p{PROMPT}+{NEW_TOKENS} tok/s")
    );
    for (name, model) in &models {
        let f1 = forward_tokens_per_s(model, 1, forward_runs, &device);
        let f8 = forward_tokens_per_s(model, 8, forward_runs, &device);
        let g = generate_tokens_per_s(model, generate_runs, &device);
        println!("{name:<20} {:>10} {f1:>24.0} {f8:>24.0} {g:>26.1}", model.num_params());
    }
}
