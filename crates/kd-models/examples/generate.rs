//! Streams a continuation of a prompt from a Hugging Face model directory.
//!
//! ```text
//! cargo run -p kd-models --features flex --example generate -- --model DIR --prompt TEXT
//!     [--max-new-tokens 40] [--temperature 0.8 --top-k 40 --top-p 0.95 --seed 0]
//! ```
//!
//! `DIR` holds `config.json`, `model.safetensors` (or shards) and `tokenizer.json`, as
//! downloaded from the hub or written by `save_pretrained`. Without `--model` it uses the tiny
//! random LLaMA test fixture (gibberish output, but it runs in a second). Without
//! `--temperature` decoding is greedy. Runs on the CPU (`Device::flex()`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::tensor::Device;
use kd_models::{CausalLm, GenerationConfig, Sampling, Tokenizer, generate};

struct Args {
    model: PathBuf,
    prompt: String,
    max_new_tokens: usize,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    seed: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-tiny-llama"),
        prompt: "Once upon a time".into(),
        max_new_tokens: 40,
        temperature: None,
        top_k: None,
        top_p: None,
        seed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => args.model = value()?.into(),
            "--prompt" => args.prompt = value()?,
            "--max-new-tokens" => args.max_new_tokens = value()?.parse()?,
            "--temperature" => args.temperature = Some(value()?.parse()?),
            "--top-k" => args.top_k = Some(value()?.parse()?),
            "--top-p" => args.top_p = Some(value()?.parse()?),
            "--seed" => args.seed = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: generate --model DIR --prompt TEXT [--max-new-tokens N] \
                     [--temperature T] [--top-k K] [--top-p P] [--seed S]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let device = Device::flex();
    let model = CausalLm::from_pretrained(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let prompt = tokenizer.encode_prompt(&args.prompt)?;

    let config = model.config();
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::Sample { temperature, top_k: args.top_k, top_p: args.top_p },
    };
    let settings = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampling,
        eos_token_ids: config.eos_token_ids().to_vec(),
        pad_token_id: config.pad_token_id().or(tokenizer.pad_token_id()).unwrap_or(0),
        seed: args.seed,
        output_step_logits: false,
    };
    eprintln!(
        "{} model, {} layers, vocab {}, prompt {} tokens",
        config.model_type(),
        config.num_hidden_layers(),
        config.vocab_size(),
        prompt.len()
    );

    // Stream: decode everything generated so far and print what is new. A token that ends in
    // the middle of a UTF-8 character decodes to U+FFFD; wait for the next one then.
    // Decoding the prompt together with the new tokens keeps word-initial spaces right.
    let mut generated: Vec<u32> = prompt.clone();
    let prompt_text = tokenizer.decode(&generated, true)?;
    print!("{prompt_text}");
    std::io::stdout().flush()?;
    let mut printed = prompt_text.len();
    let eos = settings.eos_token_ids.clone();
    let start = std::time::Instant::now();
    let out = generate(&model, &[prompt], &settings, &device, |_, tokens| {
        let Some(token) = tokens[0] else { return };
        if eos.contains(&token) {
            return;
        }
        generated.push(token);
        if let Ok(text) = tokenizer.decode(&generated, true)
            && !text.ends_with('\u{FFFD}')
            && text.len() > printed
            && text.is_char_boundary(printed)
        {
            print!("{}", &text[printed..]);
            let _ = std::io::stdout().flush();
            printed = text.len();
        }
    })?;
    println!();
    let n = out.new_tokens[0].len();
    eprintln!(
        "{n} tokens in {:.2?} ({:.1} tokens/s)",
        start.elapsed(),
        n as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}
