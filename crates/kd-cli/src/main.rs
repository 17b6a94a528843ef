//! `kd`: train, distil, evaluate and sample small language models with kd-rs on the CPU (burn's
//! flex backend).
//!
//! ```text
//! kd demo                                   # the end-to-end TinyStories demo (< 10 min)
//! kd train   --config run.toml [--set train.lr=3e-4] [--steps N] [--out DIR] [--resume]
//! kd distill --config run.toml --teacher DIR [--method gkd] [--loss reverse_kl] [--temperature 2]
//! kd seqkd-generate --teacher DIR --data FILE --out answers.jsonl
//! kd rationale-generate --teacher DIR --data FILE --out rationales.jsonl [--shots K]
//! kd eval    --model DIR --data FILE [--seq-len 128]
//! kd generate --model DIR --prompt "Once upon a time" [--max-new-tokens 64]
//! kd score-distill [--lambda 1] [--temperature 1] [--seeds 0,1,2]   # KD for automatic scoring
//! ```
//!
//! Configs are TOML with the sections `[student]`, `[teacher]`, `[data]`, `[train]` and `[method]` (see
//! `crates/kd-cli/configs/`); every key can be overridden with `--set section.key=value`, and the
//! named flags (`--steps`, `--lr`, `--teacher`, ...) override their keys.
//!
//! The command line is clap's: `kd --help`, `kd <command> --help`, `kd --version`. Exit status:
//! 0 on success, 2 for a usage or input error, 1 for a run that failed ([`error`]). Logging goes
//! through `log` to `env_logger` (`RUST_LOG`; default `info` for kd's crates, `warn` with
//! `--quiet`); progress bars are drawn when stderr is a terminal, plain progress lines otherwise
//! ([`progress`]).

mod assets;
mod baldistill;
mod config;
mod demo;
mod device;
mod ensemble;
mod error;
mod inspect;
mod offline;
mod pate;
mod plot;
mod progress;
mod run;
mod scaling_law;
mod scoring;
mod seqkd;
mod step_by_step;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kd_models::{CausalLm, GenerationConfig, Sampling};
use kd_train::template::PromptRenderer;

use crate::config::ConfigBuilder;
use crate::error::Input;

/// mimalloc keeps freed memory for reuse (feature `mimalloc`, on by default; `main` also stops
/// it from returning memory to the OS, [`kd_train::keep_freed_memory`]); see
/// `docs/performance.md`, "Distillation step", for what it changes.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The exit codes and environment, at the end of `kd --help`.
const AFTER_HELP: &str = "\
Exit status: 0 success; 2 a usage or input error (unknown flag, bad value, invalid config key,
missing or unreadable model, data, tokenizer or checkpoint, device not built); 1 a run that
failed after it started (non-finite loss, writing outputs, generation).

Logging: RUST_LOG (env_logger syntax: RUST_LOG=debug, RUST_LOG=kd_train=debug); default info for
kd's own crates, warn with --quiet. Progress bars are drawn when stderr is a terminal; otherwise
(pipes, CI) a plain progress line is logged now and then, with its ETA.";

/// kd: knowledge distillation for language models (kd-rs, burn; CPU or GPU).
#[derive(Debug, Parser)]
#[command(name = "kd", version, long_about = None, after_long_help = AFTER_HELP)]
struct Cli {
    /// Only warnings and errors, no progress bars (RUST_LOG still wins when set).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The end-to-end TinyStories demo (< 10 min on a laptop CPU).
    #[command(args_override_self = true)]
    Demo(DemoArgs),
    /// Train a student alone (next-token cross-entropy; method sft).
    #[command(args_override_self = true)]
    Train(RunArgs),
    /// Distil a teacher into a student (method kd by default; also sft, seqkd, gkd, minillm,
    /// step_by_step, cross_tokenizer, feature, dnkd, whp).
    #[command(args_override_self = true)]
    Distill(RunArgs),
    /// The teacher answers every prompt of an instruction file (SeqKD data).
    #[command(name = "seqkd-generate", args_override_self = true)]
    SeqkdGenerate(SeqKdArgs),
    /// The teacher's chain-of-thought rationales and labels for step-by-step rows.
    #[command(name = "rationale-generate", args_override_self = true)]
    RationaleGenerate(RationaleArgs),
    /// Run a teacher over the training data once and store its top-k distributions (one shard
    /// of them with --shard I/N), for `kd distill --teacher-logits DIR`.
    #[command(name = "precompute-teacher", args_override_self = true)]
    PrecomputeTeacher(offline::PrecomputeArgs),
    /// Held-out loss and perplexity of a model (and ROUGE-L / exact match of greedy answers).
    #[command(args_override_self = true)]
    Eval(EvalArgs),
    /// Turn a checkpoint into a Hugging Face directory.
    #[command(args_override_self = true)]
    Export(ExportArgs),
    /// The held-out curves of several runs in one chart.
    #[command(args_override_self = true)]
    Plot(PlotArgs),
    /// Sample a continuation of a prompt.
    #[command(args_override_self = true)]
    Generate(GenerateArgs),
    /// Teachers trained on disjoint partitions answer public prompts through Hot PATE's
    /// private aggregation; writes the released answers and the privacy spent (ε at δ).
    #[command(name = "hot-pate-label", args_override_self = true)]
    HotPateLabel(pate::HotPateArgs),
    /// Split a JSONL (or text) file into disjoint parts, one per teacher (Hot PATE).
    #[command(args_override_self = true)]
    Partition(pate::PartitionArgs),
    /// Fit the distillation scaling law to a table of runs; predict students and the
    /// compute-optimal student for a FLOP budget; plot it.
    #[command(name = "scaling-law", args_override_self = true)]
    ScalingLaw(scaling_law::ScalingLawArgs),
    /// BalDistill: multi-stage balanced distillation on a long-tailed pool (per-domain quotas,
    /// the student's hardest head examples, teacher-written tail examples), compared with
    /// random selection at the same budget.
    #[command(args_override_self = true)]
    Baldistill(baldistill::BalDistillArgs),
    /// Knowledge distillation for automatic scoring: fine-tune a teacher classifier, then train
    /// a small student label-only and with the teacher's soft labels over several seeds; report
    /// macro-F1, accuracy and QWK.
    #[command(name = "score-distill", args_override_self = true)]
    ScoreDistill(scoring::ScoreDistillArgs),
    /// Check a Hugging Face model directory and print what it holds (exit 2 on any problem).
    Inspect {
        /// The model directory (config.json, safetensors or shards + index, tokenizer.json).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `kd demo`.
#[derive(Debug, Args)]
struct DemoArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "runs/demo")]
    out: PathBuf,
    /// Tokenizer and TinyStories slice (default: the assets shipped with kd-cli).
    #[arg(long, value_name = "DIR")]
    assets: Option<PathBuf>,
    /// A few steps of each stage (a smoke test, minutes).
    #[arg(long)]
    quick: bool,
}

/// `kd train` / `kd distill`: each flag overrides one config key.
#[derive(Debug, Args)]
struct RunArgs {
    #[arg(
        long,
        value_name = "FILE",
        help = "TOML run config ([run], [student], [teacher], [data], [train], [method])"
    )]
    config: Option<PathBuf>,
    /// Override any config key, e.g. --set train.lr=3e-4 (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(
        long,
        value_name = "DIR",
        help = "student.pretrained: a Hugging Face directory (replaces [student.init])"
    )]
    student: Option<String>,
    /// teacher.pretrained.
    #[arg(long, value_name = "DIR")]
    teacher: Option<String>,
    /// data.teacher_logits: train from a teacher's stored top-k distributions (written by
    /// `kd precompute-teacher`) instead of a teacher model.
    #[arg(long, value_name = "DIR")]
    teacher_logits: Option<String>,
    /// base_teacher.pretrained: the teacher before its fine-tuning (--loss delta_kd).
    #[arg(long, value_name = "DIR")]
    base_teacher: Option<String>,
    /// base_student.pretrained: the student's base (--loss delta_kd; default: --student).
    #[arg(long, value_name = "DIR")]
    base_student: Option<String>,
    /// data.train.
    #[arg(long, value_name = "FILE")]
    data: Option<String>,
    /// data.tokenizer: a directory with tokenizer.json, or the file.
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<String>,
    /// train.steps.
    #[arg(long, value_name = "N")]
    steps: Option<u64>,
    /// train.lr.
    #[arg(long, value_name = "X")]
    lr: Option<f64>,
    /// method.name: sft, kd, seqkd, gkd, minillm, step_by_step, cross_tokenizer, feature or
    /// dnkd (starting from that method's defaults).
    #[arg(long, value_name = "NAME")]
    method: Option<String>,
    /// method.divergence.loss of method kd (any dense kd-losses name, e.g. reverse_kl, taid; or
    /// delta_kd with --base-teacher).
    #[arg(long, value_name = "NAME")]
    loss: Option<String>,
    /// method.divergence.temperature of method kd.
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,
    /// train.seed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// train.output_dir.
    #[arg(long, value_name = "DIR")]
    out: Option<String>,
    #[arg(
        long,
        value_name = "D",
        help = "run.device: cpu (default), ndarray, wgpu[:N], vulkan[:N], cuda[:N] (GPU backends \
                are cargo features: --features vulkan, ...)"
    )]
    device: Option<String>,
    /// run.teacher_device (default: --device).
    #[arg(long, value_name = "D")]
    teacher_device: Option<String>,
    /// train.dtype: f32 (default), bf16, f16 (f32 master weights).
    #[arg(long, value_name = "P")]
    dtype: Option<String>,
    /// train.teacher_dtype (default: --dtype).
    #[arg(long, value_name = "P")]
    teacher_dtype: Option<String>,
    /// Continue from the latest checkpoint in the output directory.
    #[arg(long)]
    resume: bool,
    /// train.allow_schedule_change: with --resume, accept a learning-rate schedule (--steps,
    /// --lr, warmup, decay) other than the checkpoint's instead of refusing the resume.
    #[arg(long, requires = "resume")]
    allow_schedule_change: bool,
}

/// `--template` of instruction data.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum TemplateArg {
    /// The model's chat template when it has one, else dolly.
    Auto,
    /// MiniLLM's Dolly template.
    Dolly,
    /// The prompt as it is.
    Plain,
    /// The tokenizer's chat template.
    Chat,
}

/// `--format` of `kd eval`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Plain text, packed into blocks.
    Text,
    /// JSONL prompt/response pairs.
    Instruction,
}

/// Where an inference command computes.
#[derive(Debug, Args)]
struct InferenceArgs {
    #[arg(
        long,
        value_name = "D",
        default_value = "cpu",
        help = "Device: cpu, ndarray, wgpu[:N], vulkan[:N] or cuda[:N]"
    )]
    device: String,
    /// Precision the model is loaded in: f32, bf16 or f16.
    #[arg(long, value_name = "P", default_value = "f32")]
    dtype: String,
}

/// `kd seqkd-generate`.
#[derive(Debug, Args)]
struct SeqKdArgs {
    /// The teacher (a Hugging Face directory).
    #[arg(long, value_name = "DIR")]
    teacher: PathBuf,
    /// Instruction JSONL whose prompts it answers.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// The answers (JSONL; its provenance is written beside it).
    #[arg(long, value_name = "FILE.jsonl")]
    out: PathBuf,
    /// Tokenizer (default: the teacher's directory).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// Prompt and answer stay within this many tokens.
    #[arg(long, value_name = "N", default_value_t = 128)]
    seq_len: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Most new tokens per answer.
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<usize>,
    /// Sampling seed.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Fraction of the examples that keep their original response.
    #[arg(long, value_name = "R")]
    original_fraction: Option<f64>,
    /// Prompts per generation batch.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Prompt template.
    #[arg(long, value_enum, default_value = "auto")]
    template: TemplateArg,
    #[command(flatten)]
    on: InferenceArgs,
}

/// `kd rationale-generate`.
#[derive(Debug, Args)]
struct RationaleArgs {
    /// The teacher (a Hugging Face directory).
    #[arg(long, value_name = "DIR")]
    teacher: PathBuf,
    /// Step-by-step JSONL (`input` or `instruction`, `label`, `rationale`) whose questions it
    /// answers.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// The rationales (JSONL; its provenance is written beside it).
    #[arg(long, value_name = "FILE.jsonl")]
    out: PathBuf,
    /// Few-shot exemplars per prompt (the first rows of --data, with their rationales).
    #[arg(long, value_name = "K", default_value_t = 0)]
    shots: usize,
    /// Only the first N questions.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Tokenizer (default: the teacher's directory).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// Prompt and answer stay within this many tokens.
    #[arg(long, value_name = "N", default_value_t = 128)]
    seq_len: usize,
    /// Most new tokens per answer.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_new_tokens: usize,
    /// Prompts per generation batch.
    #[arg(long, value_name = "N", default_value_t = 32)]
    batch: usize,
    /// Prompt template.
    #[arg(long, value_enum, default_value = "auto")]
    template: TemplateArg,
    #[command(flatten)]
    on: InferenceArgs,
}

/// `kd eval`.
#[derive(Debug, Args)]
struct EvalArgs {
    /// The model (a Hugging Face directory).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Held-out text or instruction JSONL.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Tokenizer (default: the model's directory).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// Tokens per block.
    #[arg(long, value_name = "N", default_value_t = 128)]
    seq_len: usize,
    /// Blocks per batch.
    #[arg(long, value_name = "N", default_value_t = 8)]
    batch_size: usize,
    /// Data format (default: instruction for .jsonl, else text).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Also the ROUGE-L F1 of greedy answers to the first N prompts (instruction data).
    #[arg(long, value_name = "N")]
    rouge: Option<usize>,
    /// Most new tokens per answer (with --rouge).
    #[arg(long, value_name = "M", default_value_t = 64)]
    max_new_tokens: usize,
    /// Also the exact-match accuracy of the final number of those answers (with --rouge).
    #[arg(long)]
    exact_match: bool,
    /// Score a step-by-step student on its label task: the data is step-by-step rows (`input`
    /// or `instruction`, `label`), each prompt is this prefix + the question and the reference
    /// is the label (e.g. `--task-prefix "[label] "`).
    #[arg(long, value_name = "PREFIX")]
    task_prefix: Option<String>,
    /// Prompt template.
    #[arg(long, value_enum, default_value = "auto")]
    template: TemplateArg,
    #[command(flatten)]
    on: InferenceArgs,
}

/// `kd export`.
#[derive(Debug, Args)]
struct ExportArgs {
    /// A checkpoint directory (`<out>/checkpoint-N`).
    #[arg(long, value_name = "DIR")]
    checkpoint: PathBuf,
    /// The Hugging Face directory to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The student's config.json (default: `student_config.json` beside the checkpoint).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Tokenizer files to copy beside the model.
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
}

/// The held-out metric `kd plot` draws.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum MetricArg {
    /// Held-out loss.
    Loss,
    /// ROUGE-L F1 of greedy answers.
    #[value(name = "rouge_l")]
    RougeL,
    /// Exact match of the final number.
    #[value(name = "exact_match")]
    ExactMatch,
}

/// `kd plot`.
#[derive(Debug, Args)]
struct PlotArgs {
    /// Run directories (their metrics.jsonl), comma-separated.
    #[arg(
        long,
        value_name = "DIR,DIR,...",
        required_unless_present = "csv",
        conflicts_with = "csv"
    )]
    runs: Option<String>,
    /// Instead of runs: a CSV of points with the header `series,x,y` (one line per point, one
    /// curve per series, e.g. a data-efficiency curve), drawn with --x-label and --metric's
    /// label unless --y-label is given.
    #[arg(long, value_name = "FILE.csv")]
    csv: Option<PathBuf>,
    /// The x axis label (with --csv).
    #[arg(long, value_name = "L", default_value = "x")]
    x_label: String,
    /// The y axis label (with --csv; default: the metric's name).
    #[arg(long, value_name = "L")]
    y_label: Option<String>,
    /// The PNG to write.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,
    /// What to draw.
    #[arg(long, value_enum, default_value = "loss")]
    metric: MetricArg,
    /// Chart title.
    #[arg(long, value_name = "T", default_value = "held-out")]
    title: String,
}

/// How `kd generate` and `kd seqkd-generate` choose tokens.
#[derive(Debug, Args)]
struct SamplingArgs {
    /// Sampling temperature (0: greedy; absent: greedy, or 1 when --top-k/--top-p ask for
    /// sampling).
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,
    /// Sample among the K most likely tokens.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Nucleus sampling threshold.
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,
}

impl SamplingArgs {
    /// The decoding the flags ask for ([`sampling_of`]).
    fn sampling(&self) -> Result<Sampling> {
        sampling_of(self.temperature, self.top_k, self.top_p)
    }
}

/// `kd generate`.
#[derive(Debug, Args)]
struct GenerateArgs {
    /// The model (a Hugging Face directory).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The text to continue.
    #[arg(long, value_name = "TEXT")]
    prompt: String,
    /// Most new tokens.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Sampling seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Tokenizer (default: the model's directory).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    on: InferenceArgs,
}

/// Builds the run config of `kd train` / `kd distill` from `--config` and the flags (flags and
/// `--set` override the file's keys).
fn run_config(o: &RunArgs) -> Result<ConfigBuilder> {
    let mut b = ConfigBuilder::from_file(o.config.as_deref())?;
    if let Some(method) = &o.method {
        // A new method starts from its own defaults (then --set and the flags apply to it).
        kd_train::MethodConfig::by_name(method)?;
        let mut t = toml::Table::new();
        t.insert("name".into(), toml::Value::String(method.clone()));
        b.set_value("method", toml::Value::Table(t))?;
    }
    b.set_all(&o.set)?;
    let strings = [
        (&o.student, "student.pretrained"),
        (&o.teacher, "teacher.pretrained"),
        (&o.teacher_logits, "data.teacher_logits"),
        (&o.base_teacher, "base_teacher.pretrained"),
        (&o.base_student, "base_student.pretrained"),
        (&o.data, "data.train"),
        (&o.tokenizer, "data.tokenizer"),
        (&o.out, "train.output_dir"),
        (&o.device, "run.device"),
        (&o.teacher_device, "run.teacher_device"),
        (&o.dtype, "train.dtype"),
        (&o.teacher_dtype, "train.teacher_dtype"),
    ];
    for (flag, key) in strings {
        if let Some(v) = flag {
            b.set_value(key, toml::Value::String(v.clone()))?;
        }
    }
    if o.student.is_some() {
        // --student DIR replaces the config's student, a fresh one included.
        b.remove("student.init");
    }
    let integer = |v: u64| i64::try_from(v).map(toml::Value::Integer);
    if let Some(n) = o.steps {
        b.set_value("train.steps", integer(n).context("--steps: too large")?)?;
    }
    if let Some(n) = o.seed {
        b.set_value("train.seed", integer(n).context("--seed: too large")?)?;
    }
    if let Some(lr) = o.lr {
        b.set_value("train.lr", toml::Value::Float(lr))?;
    }
    if o.allow_schedule_change {
        b.set_value("train.allow_schedule_change", toml::Value::Boolean(true))?;
    }
    let is_kd = |b: &ConfigBuilder| !b.has("method.name") || b.get_str("method.name") == Some("kd");
    if let Some(loss) = &o.loss {
        if !is_kd(&b) {
            bail!("--loss sets the divergence of method `kd`; this run's method is another one");
        }
        b.set("method.name", "\"kd\"")?;
        // A new loss starts from its own defaults.
        let mut t = toml::Table::new();
        t.insert("loss".into(), toml::Value::String(loss.clone()));
        b.set_value("method.divergence", toml::Value::Table(t))?;
    }
    if let Some(t) = o.temperature {
        if !is_kd(&b) {
            bail!(
                "--temperature sets the divergence temperature of method `kd`; for another \
                 method set its own key with --set method.KEY=VALUE"
            );
        }
        b.set("method.name", "\"kd\"")?;
        if !b.has("method.divergence") {
            b.set("method.divergence.loss", "\"forward_kl\"")?;
        }
        let loss = b.get_str("method.divergence.loss").unwrap_or("forward_kl").to_string();
        for key in temperature_keys(&loss)? {
            b.set_value(&format!("method.divergence.{key}"), toml::Value::Float(t))?;
        }
    }
    Ok(b)
}

/// The keys `--temperature` sets in the divergence `loss`: `temperature`, or both
/// `student_temperature` and `teacher_temperature` for the losses that keep two (ULD, ATKD).
fn temperature_keys(loss: &str) -> Result<Vec<&'static str>> {
    let config = kd_train::methods::kd::KdDivergence::by_name(loss)?;
    let keys = serde_json::to_value(&config)?;
    let has = |k: &str| keys.get(k).is_some();
    if has("temperature") {
        Ok(vec!["temperature"])
    } else if has("student_temperature") && has("teacher_temperature") {
        Ok(vec!["student_temperature", "teacher_temperature"])
    } else {
        let names: Vec<&str> = keys
            .as_object()
            .map(|o| o.keys().map(String::as_str).filter(|k| *k != "loss").collect())
            .unwrap_or_default();
        bail!(
            "--temperature: the loss `{loss}` has no temperature (its settings: {}); set them \
             with --set method.divergence.KEY=VALUE",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )
    }
}

fn cmd_train(o: &RunArgs, distill: bool) -> Result<()> {
    let b = run_config(o).input()?;
    let config = b.build().input()?;
    let job = run::run_job(&config, &b.to_toml(), distill, o.resume, None, None, None)?;
    let rouge = job.final_eval.rouge_l.map(|r| format!(", ROUGE-L {r:.4}")).unwrap_or_default();
    println!(
        "held-out loss {:.4}, perplexity {:.3}{rouge} after {} steps ({:.0}s); model in {}",
        job.final_eval.loss,
        job.final_eval.perplexity,
        job.report.history.len(),
        job.report.seconds,
        job.model_dir.display()
    );
    Ok(())
}

fn tokenizer_for(tokenizer: Option<&Path>, model_dir: &Path) -> Result<kd_models::Tokenizer> {
    run::load_tokenizer(tokenizer.unwrap_or(model_dir))
}

/// The prompt template of `--template` (auto: the model's chat template, else dolly), with the
/// tokenizer [`tokenizer_for`] reads.
fn template_for(
    template: TemplateArg,
    tokenizer: Option<&Path>,
    model_dir: &Path,
) -> Result<PromptRenderer> {
    let tokenizer = tokenizer.unwrap_or(model_dir);
    Ok(PromptRenderer::new(&template_of(template), Some(tokenizer))?)
}

/// The template `--template` names.
fn template_of(template: TemplateArg) -> kd_train::template::PromptTemplate {
    use kd_train::template::{PromptTemplate, TemplateName};
    PromptTemplate::Named(match template {
        TemplateArg::Auto => TemplateName::Auto,
        TemplateArg::Dolly => TemplateName::Dolly,
        TemplateArg::Plain => TemplateName::Plain,
        TemplateArg::Chat => TemplateName::Chat,
    })
}

/// `--device` and `--dtype` of the inference commands (`eval`, `generate`, `seqkd-generate`):
/// the model is loaded memory-mapped onto that device in that precision.
fn load_for_inference(on: &InferenceArgs, dir: &Path) -> Result<(CausalLm, Device)> {
    let spec: device::DeviceSpec = on.device.parse()?;
    let device = spec.device()?;
    let precision: kd_train::Precision = on.dtype.parse()?;
    if !device.supports_dtype(precision.float_dtype()) {
        bail!("--dtype {precision}: device `{spec}` does not compute in it (try f16 or f32)");
    }
    let options = kd_models::LoadOptions::default().with_dtype(precision.float_dtype());
    let model = CausalLm::from_pretrained_with(dir, &options, &device)
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok((model, device))
}

fn cmd_eval(o: &EvalArgs) -> Result<()> {
    let format = match o.format {
        None => config::DataFormat::Auto,
        Some(FormatArg::Text) => config::DataFormat::Text,
        Some(FormatArg::Instruction) => config::DataFormat::Instruction,
    };
    let (model, device) = load_for_inference(&o.on, &o.model).input()?;
    let max = model.config().max_position_embeddings();
    if o.seq_len > max {
        return Err(anyhow::anyhow!(
            "--seq-len {} is longer than the model's {max} positions",
            o.seq_len
        ))
        .input();
    }
    let tok = tokenizer_for(o.tokenizer.as_deref(), &o.model).input()?;
    let template = template_for(o.template, o.tokenizer.as_deref(), &o.model).input()?;
    let label_task = match &o.task_prefix {
        Some(p) => Some(step_by_step::label_task_examples(&o.data, &template, p)?),
        None => None,
    };
    let set = match &label_task {
        Some(ex) => kd_train::data::TokenDataset::new(
            &o.data.display().to_string(),
            kd_train::data::instruction_blocks(ex, &tok, o.seq_len).input()?,
        )
        .input()?,
        None => run::load_blocks(&o.data, format, &template, &tok, o.seq_len).input()?,
    };
    let r = run::evaluate_with_progress(&model, &set, o.batch_size, &device, "eval");
    println!(
        "{}: loss {:.4}  perplexity {:.3}  ({} tokens, {} blocks of {})",
        o.model.display(),
        r.loss,
        r.perplexity,
        r.tokens,
        set.len(),
        o.seq_len
    );
    if let Some(n) = o.rouge {
        let examples = match label_task {
            Some(ex) => ex,
            None => kd_train::data::read_instruction_jsonl(&o.data, &template).input()?,
        };
        let (scores, count) =
            run::rouge_eval(&model, &tok, &examples, n, o.max_new_tokens, o.seq_len, &device)?;
        let (rouge, em) = scores.map_or((0.0, 0.0), |s| (s.rouge_l, s.exact_match));
        println!("ROUGE-L F1 of greedy responses: {rouge:.4} (mean of {count} examples)");
        if o.exact_match {
            println!("exact-match accuracy of the final number: {em:.4} ({count} examples)");
        }
    }
    Ok(())
}

fn cmd_export(o: &ExportArgs) -> Result<()> {
    run::export_checkpoint(&o.checkpoint, o.config.as_deref(), &o.out)?;
    if let Some(t) = &o.tokenizer {
        run::copy_tokenizer(t, &o.out)?;
    }
    println!("exported {} to {}", o.checkpoint.display(), o.out.display());
    Ok(())
}

fn cmd_generate(o: &GenerateArgs) -> Result<()> {
    let (model, device) = load_for_inference(&o.on, &o.model).input()?;
    let tok = tokenizer_for(o.tokenizer.as_deref(), &o.model).input()?;
    let ids = tok.encode_prompt(&o.prompt)?;
    if ids.is_empty() {
        return Err(anyhow::anyhow!("the prompt {:?} tokenizes to no tokens", o.prompt)).input();
    }
    let sampling = o.sampling.sampling().input()?;
    let tokens = kd_train::methods::SpecialTokens::of(&tok);
    let config = GenerationConfig {
        max_new_tokens: o.max_new_tokens,
        sampling,
        eos_token_ids: tokens.eos_ids,
        pad_token_id: tokens.pad_id,
        seed: o.seed,
        output_step_logits: false,
    };
    config.sampling.validate().input()?;
    let mut progress = progress::Progress::new("generate", o.max_new_tokens as u64, "tokens");
    let out = kd_models::generate(&model, &[ids], &config, &device, |step, _| {
        progress.set(step as u64 + 1);
    })?;
    progress.finish();
    println!("{}", tok.decode(&out.sequences[0], true)?);
    Ok(())
}

/// The decoding `kd generate` / `kd seqkd-generate` ask for: greedy without `--temperature` (or with 0), unless
/// `--top-k`/`--top-p` ask for sampling, which then runs at temperature 1 (as Hugging Face's
/// `do_sample` does); truncation with an explicit temperature 0 is a contradiction.
fn sampling_of(
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
) -> Result<Sampling> {
    let truncated = top_k.is_some() || top_p.is_some();
    match temperature {
        Some(t) if t == 0.0 && truncated => Err(anyhow::anyhow!(
            "--temperature 0 decodes greedily, so --top-k/--top-p would be ignored: drop them or \
             give a temperature > 0"
        )),
        Some(0.0) => Ok(Sampling::Greedy),
        None if !truncated => Ok(Sampling::Greedy),
        t => Ok(Sampling::Sample { temperature: t.unwrap_or(1.0), top_k, top_p }),
    }
}

/// `kd plot`: the held-out curves of several runs (their `metrics.jsonl`) in one chart.
fn cmd_plot(o: &PlotArgs) -> Result<()> {
    let (metric, pick): (&str, fn(&kd_train::EvalRecord) -> Option<f64>) = match o.metric {
        MetricArg::Loss => ("loss", |e| Some(e.loss)),
        MetricArg::RougeL => ("rouge_l", |e| e.rouge_l),
        MetricArg::ExactMatch => ("exact_match", |e| e.exact_match),
    };
    if let Some(csv) = &o.csv {
        let text =
            std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()));
        let series = plot::csv_series(&text.input()?)
            .with_context(|| format!("{}", csv.display()))
            .input()?;
        let chart = crate::plot::Chart {
            title: o.title.clone(),
            x_label: o.x_label.clone(),
            y_label: o.y_label.clone().unwrap_or_else(|| metric.replace('_', " ")),
            series,
            width: 900,
            height: 560,
        };
        chart.write_png(&o.out)?;
        println!("{} curves in {}", chart.series.len(), o.out.display());
        return Ok(());
    }
    let mut series = Vec::new();
    for dir in
        o.runs.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|d| !d.is_empty())
    {
        let path = PathBuf::from(dir).join(kd_train::trainer::METRICS_FILE);
        let mut points = Vec::new();
        for line in kd_train::metrics::read_jsonl(&path).input()? {
            if let kd_train::MetricsLine::Eval(e) = line
                && let Some(y) = pick(&e)
            {
                points.push((e.step as f64, y));
            }
        }
        if points.is_empty() {
            return Err(anyhow::anyhow!(
                "{}: no held-out `{metric}` in its metrics",
                path.display()
            ))
            .input();
        }
        let name = PathBuf::from(dir)
            .file_name()
            .map_or(dir.to_string(), |n| n.to_string_lossy().to_string());
        series.push(crate::plot::Series { name, points });
    }
    let chart = crate::plot::Chart {
        title: o.title.clone(),
        x_label: "step".into(),
        y_label: metric.replace('_', " "),
        series,
        width: 900,
        height: 560,
    };
    chart.write_png(&o.out)?;
    println!("{} curves in {}", chart.series.len(), o.out.display());
    Ok(())
}

fn cmd_seqkd_generate(o: &SeqKdArgs) -> Result<()> {
    let mut settings = kd_train::methods::seqkd::SeqKdConfig::default();
    // Greedy is temperature 0 there.
    if let Sampling::Sample { temperature, top_k, top_p } = o.sampling.sampling().input()? {
        settings.sampling.temperature = temperature;
        settings.sampling.top_k = top_k;
        settings.sampling.top_p = top_p;
    }
    if let Some(n) = o.max_new_tokens {
        settings.sampling.max_new_tokens = n;
    }
    if let Some(s) = o.seed {
        settings.seed = s;
    }
    if let Some(r) = o.original_fraction {
        settings.original_fraction = r;
    }
    if let Some(b) = o.batch {
        settings.generation_batch = b;
    }
    settings.validate().input()?;
    let (teacher, device) = load_for_inference(&o.on, &o.teacher).input()?;
    let tok = tokenizer_for(o.tokenizer.as_deref(), &o.teacher).input()?;
    let template = template_for(o.template, o.tokenizer.as_deref(), &o.teacher).input()?;
    let examples = kd_train::data::read_instruction_jsonl(&o.data, &template).input()?;
    let provenance = seqkd::Provenance {
        teacher: o.teacher.clone(),
        teacher_params: teacher.num_params(),
        source: o.data.clone(),
        examples: examples.len(),
        seq_len: o.seq_len,
        settings: settings.clone(),
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let (n, tokens, secs) = seqkd::generate(
        &teacher,
        &tok,
        &examples,
        &settings,
        o.seq_len,
        &provenance,
        &o.out,
        &device,
    )?;
    println!(
        "{n} examples, {tokens} teacher tokens in {secs:.1}s ({:.0} tokens/s); wrote {} and {}",
        tokens as f64 / secs.max(1e-9),
        o.out.display(),
        seqkd::provenance_path(&o.out).display()
    );
    Ok(())
}

fn cmd_rationale_generate(o: &RationaleArgs) -> Result<()> {
    let settings = kd_train::methods::step_by_step::StepByStepConfig {
        shots: o.shots,
        generation_batch: o.batch,
        max_new_tokens: o.max_new_tokens,
        ..Default::default()
    };
    settings.validate().input()?;
    let (teacher, device) = load_for_inference(&o.on, &o.teacher).input()?;
    let tok = tokenizer_for(o.tokenizer.as_deref(), &o.teacher).input()?;
    let template = template_for(o.template, o.tokenizer.as_deref(), &o.teacher).input()?;
    let mut rows = kd_train::methods::step_by_step::read_rows(&o.data).input()?;
    rows.truncate(o.limit.unwrap_or(usize::MAX));
    if rows.is_empty() {
        return Err(anyhow::anyhow!("{}: no rows", o.data.display())).input();
    }
    let provenance = step_by_step::Provenance {
        teacher: o.teacher.clone(),
        teacher_params: teacher.num_params(),
        source: o.data.clone(),
        examples: rows.len(),
        seq_len: o.seq_len,
        shots: o.shots,
        max_new_tokens: o.max_new_tokens,
        // As `kd distill` writes it, so that a run reuses this file.
        template: format!("{:?}", template_of(o.template)),
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let summary = step_by_step::generate(
        &teacher,
        &tok,
        &template,
        &rows,
        &settings,
        o.seq_len,
        &provenance,
        &o.out,
        &device,
    )?;
    println!(
        "{summary}; wrote {} and {}",
        o.out.display(),
        seqkd::provenance_path(&o.out).display()
    );
    Ok(())
}

fn cmd_demo(o: &DemoArgs) -> Result<()> {
    demo::cmd_demo(&o.out, o.assets.as_deref(), o.quick)
}

fn main() {
    #[cfg(feature = "mimalloc")]
    kd_train::keep_freed_memory();
    // Usage errors, --help and --version: clap prints them and exits (2 for errors, 0 else).
    let cli = Cli::parse();
    progress::init(cli.quiet);
    let result = match &cli.command {
        Command::Demo(o) => cmd_demo(o),
        Command::Train(o) => cmd_train(o, false),
        Command::Distill(o) => cmd_train(o, true),
        Command::SeqkdGenerate(o) => cmd_seqkd_generate(o),
        Command::RationaleGenerate(o) => cmd_rationale_generate(o),
        Command::PrecomputeTeacher(o) => offline::cmd_precompute(o),
        Command::Eval(o) => cmd_eval(o),
        Command::Export(o) => cmd_export(o),
        Command::Plot(o) => cmd_plot(o),
        Command::Generate(o) => cmd_generate(o),
        Command::ScalingLaw(o) => scaling_law::cmd_scaling_law(o),
        Command::HotPateLabel(o) => pate::cmd_hot_pate_label(o),
        Command::Partition(o) => pate::cmd_partition(o),
        Command::Baldistill(o) => baldistill::cmd_baldistill(o),
        Command::ScoreDistill(o) => scoring::cmd_score_distill(o),
        Command::Inspect { dir } => inspect::cmd_inspect(dir),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(error::exit_code(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn temperature_reaches_both_temperatures_of_the_two_temperature_losses() {
        let parse = |args: &[&str]| {
            let mut all = vec!["kd", "distill", "--student", "s"];
            all.extend_from_slice(args);
            let Command::Distill(o) = Cli::try_parse_from(all).unwrap().command else { panic!() };
            run_config(&o)
        };
        for loss in ["uld", "atkd"] {
            let b = parse(&["--loss", loss, "--temperature", "3"]).unwrap();
            let toml = b.to_toml();
            assert!(
                toml.contains("student_temperature = 3.0")
                    && toml.contains("teacher_temperature = 3.0"),
                "{loss}: {toml}"
            );
            assert!(!toml.contains("\ntemperature"), "{toml}");
            b.build().unwrap();
        }
        let b = parse(&["--loss", "reverse_kl", "--temperature", "2"]).unwrap();
        assert!(b.to_toml().contains("temperature = 2.0"));
        b.build().unwrap();
        for loss in kd_losses::LOSSES.iter().filter(|l| l.dense).map(|l| l.id) {
            // Every loss either takes --temperature or says why not, naming its settings.
            match parse(&["--loss", loss, "--temperature", "2"]) {
                Ok(b) => drop(b.build().unwrap()),
                Err(e) => assert!(e.to_string().contains("has no temperature"), "{loss}: {e}"),
            }
        }
    }

    #[test]
    fn top_k_or_top_p_without_a_temperature_samples_at_temperature_one() {
        assert_eq!(sampling_of(None, None, None).unwrap(), Sampling::Greedy);
        assert_eq!(sampling_of(Some(0.0), None, None).unwrap(), Sampling::Greedy);
        assert_eq!(
            sampling_of(None, Some(5), None).unwrap(),
            Sampling::Sample { temperature: 1.0, top_k: Some(5), top_p: None }
        );
        assert_eq!(
            sampling_of(None, None, Some(0.9)).unwrap(),
            Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(0.9) }
        );
        assert_eq!(
            sampling_of(Some(0.7), Some(3), Some(0.5)).unwrap(),
            Sampling::Sample { temperature: 0.7, top_k: Some(3), top_p: Some(0.5) }
        );
        let err = sampling_of(Some(0.0), Some(5), None).unwrap_err().to_string();
        assert!(err.contains("--top-k"), "{err}");
    }

    #[test]
    fn flags_override_the_config_and_the_last_one_wins() {
        let cli = Cli::try_parse_from([
            "kd",
            "distill",
            "--steps",
            "3",
            "--steps",
            "5",
            "--lr",
            "1",
            "--temperature",
            "2",
            "--set",
            "train.batch_size=4",
            "--student",
            "s",
            "--out",
            "o",
        ])
        .unwrap();
        let Command::Distill(o) = cli.command else { panic!("{cli:?}") };
        let b = run_config(&o).unwrap();
        let c = b.build().unwrap();
        assert_eq!((c.train.steps, c.train.lr, c.train.batch_size), (5, 1.0, 4));
        assert_eq!(c.student.pretrained, Some(PathBuf::from("s")));
        let toml = b.to_toml();
        assert!(toml.contains("temperature = 2.0") && toml.contains("forward_kl"), "{toml}");
        let err = Cli::try_parse_from(["kd", "train", "--stepz", "3"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
