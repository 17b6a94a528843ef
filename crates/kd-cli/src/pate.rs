//! Private labelling with Hot PATE (`kd hot-pate-label`) and the disjoint partitions its
//! teachers are trained on (`kd partition`); see `kd_train::hot_pate`.
//!
//! The recipe: split the sensitive instruction data into `T` disjoint parts (`kd partition`),
//! train one teacher per part (`kd train` on each), let the `T` teachers answer a public prompt
//! set through the private aggregation (`kd hot-pate-label`), and train the student on the
//! released answers (`kd train` with `--template plain`: the written prompts already carry
//! their template). The privacy spent (ε at δ) is printed and written to the provenance file.
//!
//! Each written line: `{"prompt", "response", "end", "source": "hot_pate"}`; `end` is `eos`,
//! `bottom` (nothing could be released privately; the answer so far is kept) or `length`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use kd_losses::teachers::hot_pate::{AggregationRule, NoiseKind, Sampler};
use kd_models::sampling::Rng;
use kd_train::data::prompt_ids;
use kd_train::hot_pate::{AnswerEnd, PateLabelConfig, hot_pate_answers};
use kd_train::methods::SpecialTokens;
use serde::Serialize;

use crate::error::Input;
use crate::progress::Progress;
use crate::seqkd::write_with_provenance;
use crate::{InferenceArgs, TemplateArg, load_for_inference, template_for, tokenizer_for};

/// `kd hot-pate-label`.
#[derive(Debug, Args)]
pub struct HotPateArgs {
    /// The teachers, one per disjoint partition (Hugging Face directories, one tokenizer),
    /// comma-separated.
    #[arg(long, value_name = "DIR,DIR,...", value_delimiter = ',', required = true)]
    pub teachers: Vec<PathBuf>,
    /// Public instruction JSONL whose prompts they answer.
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// The released answers (JSONL; the provenance with ε is written beside it).
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: PathBuf,
    /// Tokenizer (default: the first teacher's directory).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Most released tokens per answer.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Prompt and answer stay within this many tokens.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub seq_len: usize,
    /// The teachers' softmax temperature (official default 0.6).
    #[arg(long, value_name = "T", default_value_t = 0.6)]
    pub temperature: f64,
    /// Release rule: homogeneous, heterogeneous, confident_gnmax or argmax (no privacy).
    #[arg(long, value_name = "RULE", default_value = "homogeneous")]
    pub rule: String,
    /// Release margin `L`.
    #[arg(long, value_name = "L", default_value_t = 0.0)]
    pub margin: f64,
    /// Noise: gaussian or laplace.
    #[arg(long, value_name = "KIND", default_value = "gaussian")]
    pub noise: String,
    /// Noise scale (σ for gaussian, b for laplace).
    #[arg(long, value_name = "S", default_value_t = 1.0)]
    pub noise_scale: f64,
    /// Confident GNMax: the threshold on the top count.
    #[arg(long, value_name = "X")]
    pub threshold: Option<f64>,
    /// Confident GNMax: the threshold check's noise σ1.
    #[arg(long, value_name = "S")]
    pub sigma1: Option<f64>,
    /// Cold PATE: independent samples instead of coordinated ones.
    #[arg(long)]
    pub independent: bool,
    /// δ of the reported ε.
    #[arg(long, value_name = "D", default_value_t = 1e-6)]
    pub delta: f64,
    /// Seed of the votes and the noise.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Prompt template.
    #[arg(long, value_enum, default_value = "auto")]
    pub template: TemplateArg,
    #[command(flatten)]
    pub on: InferenceArgs,
}

/// What the provenance file beside the answers holds.
#[derive(Debug, Serialize)]
struct Provenance {
    teachers: Vec<PathBuf>,
    source: PathBuf,
    examples: usize,
    settings: PateLabelConfig,
    queries: u64,
    released: u64,
    epsilon: Option<f64>,
    delta: Option<f64>,
    kd_version: String,
}

#[derive(Debug, Serialize)]
struct Row {
    prompt: String,
    response: String,
    end: AnswerEnd,
    source: &'static str,
}

/// The aggregation settings of the command line.
fn settings(o: &HotPateArgs) -> Result<PateLabelConfig> {
    let rule = AggregationRule::parse(&o.rule)?;
    let noise = match o.noise.as_str() {
        "gaussian" => NoiseKind::Gaussian,
        "laplace" => NoiseKind::Laplace,
        other => bail!("--noise {other:?}: expected gaussian or laplace"),
    };
    let mut aggregation = kd_losses::teachers::hot_pate::HotPateConfig::new()
        .with_temperature(o.temperature)
        .with_rule(rule)
        .with_release_margin(o.margin)
        .with_noise(noise)
        .with_noise_scale(o.noise_scale);
    if let Some(t) = o.threshold {
        aggregation = aggregation.with_threshold(t);
    }
    if let Some(s) = o.sigma1 {
        aggregation = aggregation.with_sigma1(s);
    }
    let config = PateLabelConfig {
        aggregation,
        sampler: if o.independent { Sampler::Independent } else { Sampler::Coordinated },
        seed: o.seed,
        delta: (rule != AggregationRule::Argmax).then_some(o.delta),
    };
    config.aggregation.init()?;
    Ok(config)
}

/// `kd hot-pate-label`.
pub fn cmd_hot_pate_label(o: &HotPateArgs) -> Result<()> {
    let start = Instant::now();
    let config = settings(o).input()?;
    if o.teachers.len() < 2 {
        return Err(anyhow::anyhow!(
            "--teachers: expected at least two (one per disjoint partition), got {}",
            o.teachers.len()
        ))
        .input();
    }
    let mut teachers = Vec::with_capacity(o.teachers.len());
    let mut device = None;
    for dir in &o.teachers {
        let (model, d) = load_for_inference(&o.on, dir).input()?;
        teachers.push(model);
        device = Some(d);
    }
    let device = device.expect("at least two teachers");
    let first = &o.teachers[0];
    let tok = tokenizer_for(o.tokenizer.as_deref(), first).input()?;
    let template = template_for(o.template, o.tokenizer.as_deref(), first).input()?;
    let examples = kd_train::data::read_instruction_jsonl(&o.prompts, &template).input()?;
    let mut prompts = Vec::with_capacity(examples.len());
    let mut caps = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        let ids = prompt_ids(&ex.prompt, &tok)?;
        if ids.is_empty() || ids.len() >= o.seq_len {
            bail!(
                "{} example {}: its prompt has {} tokens; it needs 1 to {} (--seq-len {})",
                o.prompts.display(),
                i + 1,
                ids.len(),
                o.seq_len - 1,
                o.seq_len
            );
        }
        caps.push(o.max_new_tokens.min(o.seq_len - ids.len()));
        prompts.push(ids);
    }
    let tokens = SpecialTokens::of(&tok);
    let mut progress = Progress::new("hot-pate", prompts.len() as u64, "prompts answered");
    let labels =
        hot_pate_answers(&teachers, &prompts, &caps, &config, &tokens, &device, |d, _| {
            progress.set(d as u64)
        })?;
    progress.finish();
    let mut rows = Vec::with_capacity(examples.len());
    for (ex, a) in examples.iter().zip(&labels.answers) {
        rows.push(Row {
            prompt: ex.prompt.clone(),
            response: tok.decode(&a.tokens, true)?.trim().to_string(),
            end: a.end,
            source: "hot_pate",
        });
    }
    let epsilon = labels.privacy.map(|p| p.epsilon());
    let provenance = Provenance {
        teachers: o.teachers.clone(),
        source: o.prompts.clone(),
        examples: rows.len(),
        settings: config.clone(),
        queries: labels.queries,
        released: labels.released,
        epsilon,
        delta: config.delta,
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_with_provenance(&o.out, &rows, &provenance)?;
    let ended = |e: AnswerEnd| labels.answers.iter().filter(|a| a.end == e).count();
    println!(
        "{} prompts, {} queries, {} tokens released ({} answers ended at EOS, {} at ⊥, {} at the cap) in {:.1}s",
        rows.len(),
        labels.queries,
        labels.released,
        ended(AnswerEnd::Eos),
        ended(AnswerEnd::Bottom),
        ended(AnswerEnd::Length),
        start.elapsed().as_secs_f64()
    );
    match (epsilon, config.delta) {
        (Some(eps), Some(delta)) => {
            println!("privacy: ε = {eps:.4} at δ = {delta:e} over {} queries", labels.queries)
        }
        _ => println!("privacy: none (rule argmax releases without noise)"),
    }
    println!("wrote {}", o.out.display());
    Ok(())
}

/// `kd partition`.
#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// The JSONL (or text lines) to split.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// How many disjoint parts.
    #[arg(long, value_name = "N")]
    pub parts: usize,
    /// Output directory: `part-0.jsonl` … (the input's extension is kept).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the shuffle before splitting.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
}

/// `kd partition`: the non-empty lines of `--data`, shuffled by the seed and dealt round-robin
/// into `--parts` disjoint files of sizes differing by at most one.
pub fn cmd_partition(o: &PartitionArgs) -> Result<()> {
    let text = std::fs::read_to_string(&o.data)
        .with_context(|| format!("reading {}", o.data.display()))
        .input()?;
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if o.parts < 2 || o.parts > lines.len() {
        return Err(anyhow::anyhow!(
            "--parts {}: expected 2 to {} (the number of lines of {})",
            o.parts,
            lines.len(),
            o.data.display()
        ))
        .input();
    }
    // Fisher–Yates with the project's seeded generator.
    let mut rng = Rng::new(o.seed);
    for i in (1..lines.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        lines.swap(i, j);
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let ext = o.data.extension().and_then(|e| e.to_str()).unwrap_or("jsonl");
    for p in 0..o.parts {
        let part: Vec<&str> = lines.iter().skip(p).step_by(o.parts).copied().collect();
        let path = o.out.join(format!("part-{p}.{ext}"));
        std::fs::write(&path, part.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{}: {} lines", path.display(), part.len());
    }
    Ok(())
}
