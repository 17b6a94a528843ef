//! `kd`: train, distil, evaluate and sample small language models with kd-rs on the CPU (burn's
//! flex backend).
//!
//! ```text
//! kd demo                                   # the end-to-end TinyStories demo (< 10 min)
//! kd train   --config run.toml [--set train.lr=3e-4] [--steps N] [--out DIR] [--resume]
//! kd distill --config run.toml --teacher DIR [--method gkd] [--loss reverse_kl] [--temperature 2]
//! kd seqkd-generate --teacher DIR --data FILE --out answers.jsonl
//! kd eval    --model DIR --data FILE [--seq-len 128]
//! kd generate --model DIR --prompt "Once upon a time" [--max-new-tokens 64]
//! ```
//!
//! Configs are TOML with the sections `[student]`, `[teacher]`, `[data]`, `[train]` and `[method]` (see
//! `crates/kd-cli/configs/`); every key can be overridden with `--set section.key=value`.

mod config;
mod demo;
mod device;
mod plot;
mod run;
mod seqkd;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use kd_models::{CausalLm, GenerationConfig, Sampling};
use kd_train::template::PromptRenderer;

use crate::config::ConfigBuilder;

/// mimalloc keeps freed memory for reuse (feature `mimalloc`, on by default); see
/// `docs/performance.md`, "Distillation step", for what it changes.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
kd: knowledge distillation for language models (kd-rs, burn; CPU or GPU)

USAGE:
  kd demo     [--out DIR] [--quick]
  kd train    [--config FILE] [OPTIONS]      train a student alone (next-token cross-entropy)
  kd distill  [--config FILE] [OPTIONS]      distil a teacher into a student
              --method sft|kd|seqkd|gkd|minillm   (default kd; [method] section of the config)
  kd seqkd-generate --teacher DIR --data FILE --out FILE.jsonl [--tokenizer PATH]
              [--seq-len N] [--temperature T] [--max-new-tokens N] [--seed S]
              [--original-fraction R] [--batch N] [--template auto|dolly|plain|chat]
              the teacher answers every prompt (SeqKD data)
  kd eval     --model DIR --data FILE [--tokenizer PATH] [--seq-len N] [--batch-size N]
              [--template auto|dolly|plain|chat]
              [--rouge N [--max-new-tokens M] [--exact-match]]   (instruction JSONL: ROUGE-L
              and exact-match accuracy of the final number of N greedy answers;
              training reports it at every evaluation: train.eval_rouge_prompts, eval_max_new_tokens)
  kd export   --checkpoint DIR --out DIR [--config student_config.json] [--tokenizer PATH]
  kd plot     --runs DIR,DIR,... --out FILE.png [--metric loss|rouge_l|exact_match] [--title T]
              the held-out curves of several runs in one chart
  kd generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T]
              [--top-k K] [--top-p P] [--seed S] [--tokenizer PATH]
  (seqkd-generate, eval and generate also take --device D and --dtype f32|bf16|f16)

OPTIONS (train, distill):
  --config FILE         TOML run config ([student], [teacher], [data], [train])
  --set KEY=VALUE       override any config key, e.g. --set train.lr=3e-4 (repeatable)
  --student DIR         student.pretrained        --teacher DIR      teacher.pretrained
  --data FILE           data.train                --tokenizer PATH   data.tokenizer
  --steps N             train.steps               --lr X             train.lr
  --method NAME         method.name (its defaults)
  --loss NAME           method.divergence.loss    --temperature T    method.divergence.temperature
                        (method kd)
  --seed N              train.seed                --out DIR          train.output_dir
  --device D            run.device: cpu (default), ndarray, wgpu[:N], vulkan[:N], cuda[:N]
                        (GPU backends are cargo features: --features vulkan, ...)
  --teacher-device D    run.teacher_device (default: --device)
  --dtype P             train.dtype: f32 (default), bf16, f16 (f32 master weights)
  --teacher-dtype P     train.teacher_dtype (default: --dtype)
  --resume              continue from the latest checkpoint in the output directory
";

/// A minimal logger: `[  12.3s] message` on stderr.
struct Logger {
    start: Instant,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let t = self.start.elapsed().as_secs_f64();
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "[{t:7.1}s] {}", record.args());
        }
    }
    fn flush(&self) {}
}

fn init_logger(quiet: bool) {
    let level = match std::env::var("KD_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ if quiet => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    let logger = Box::leak(Box::new(Logger { start: Instant::now(), level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Parsed command-line options (everything after the subcommand).
#[derive(Debug, Default)]
struct Opts {
    values: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Opts {
    fn parse(args: &[String], flags: &[&str]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument `{a}`\n\n{USAGE}");
            };
            if let Some((k, v)) = name.split_once('=') {
                o.values.push((k.to_string(), v.to_string()));
            } else if flags.contains(&name) {
                o.flags.push(name.to_string());
            } else {
                let v = it.next().with_context(|| format!("--{name} needs a value"))?;
                o.values.push((name.to_string(), v.clone()));
            }
        }
        Ok(o)
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.values.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|e| anyhow::anyhow!("--{name} {v}: {e}")))
            .transpose()
    }
    fn check_known(&self, known: &[&str]) -> Result<()> {
        for (k, _) in &self.values {
            if !known.contains(&k.as_str()) {
                bail!("unknown option --{k}\n\n{USAGE}");
            }
        }
        Ok(())
    }
}

/// Builds the run config of `kd train` / `kd distill` from `--config` and the overrides.
fn run_config(o: &Opts) -> Result<ConfigBuilder> {
    o.check_known(&[
        "config",
        "set",
        "student",
        "teacher",
        "data",
        "tokenizer",
        "steps",
        "lr",
        "loss",
        "temperature",
        "seed",
        "out",
        "method",
        "device",
        "teacher-device",
        "dtype",
        "teacher-dtype",
    ])?;
    let mut b = ConfigBuilder::from_file(o.get("config").map(PathBuf::from).as_deref())?;
    if let Some(method) = o.get("method") {
        // A new method starts from its own defaults (then --set and the flags apply to it).
        kd_train::MethodConfig::by_name(method)?;
        let mut t = toml::Table::new();
        t.insert("name".into(), toml::Value::String(method.to_string()));
        b.set_value("method", toml::Value::Table(t))?;
    }
    for kv in o.all("set") {
        let (k, v) =
            kv.split_once('=').with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
        b.set(k.trim(), v.trim())?;
    }
    let strings = [
        ("student", "student.pretrained"),
        ("teacher", "teacher.pretrained"),
        ("data", "data.train"),
        ("tokenizer", "data.tokenizer"),
        ("out", "train.output_dir"),
        ("device", "run.device"),
        ("teacher-device", "run.teacher_device"),
        ("dtype", "train.dtype"),
        ("teacher-dtype", "train.teacher_dtype"),
    ];
    for (flag, key) in strings {
        if let Some(v) = o.get(flag) {
            b.set_value(key, toml::Value::String(v.to_string()))?;
        }
    }
    if o.get("student").is_some() {
        // --student DIR replaces the config's student, a fresh one included.
        b.remove("student.init");
    }
    for (flag, key) in [("steps", "train.steps"), ("lr", "train.lr"), ("seed", "train.seed")] {
        if let Some(v) = o.get(flag) {
            b.set(key, v)?;
        }
    }
    let is_kd = |b: &ConfigBuilder| !b.has("method.name") || b.get_str("method.name") == Some("kd");
    if let Some(loss) = o.get("loss") {
        if !is_kd(&b) {
            bail!("--loss sets the divergence of method `kd`; this run's method is another one");
        }
        b.set("method.name", "\"kd\"")?;
        // A new loss starts from its own defaults.
        let mut t = toml::Table::new();
        t.insert("loss".into(), toml::Value::String(loss.to_string()));
        b.set_value("method.divergence", toml::Value::Table(t))?;
    }
    if let Some(t) = o.get("temperature") {
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
        b.set("method.divergence.temperature", t)?;
    }
    Ok(b)
}

fn cmd_train(args: &[String], distill: bool) -> Result<()> {
    let o = Opts::parse(args, &["resume"])?;
    let b = run_config(&o)?;
    let config = b.build()?;
    let job = run::run_job(&config, &b.to_toml(), distill, o.flag("resume"), None, None, None)?;
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

fn tokenizer_for(o: &Opts, model_dir: &std::path::Path) -> Result<kd_models::Tokenizer> {
    let path = o.get("tokenizer").map(PathBuf::from).unwrap_or_else(|| model_dir.to_path_buf());
    run::load_tokenizer(&path)
}

/// The prompt template of `--template auto|dolly|plain|chat` (default auto: the model's chat
/// template, else dolly), with the tokenizer [`tokenizer_for`] reads.
fn template_for(o: &Opts, model_dir: &std::path::Path) -> Result<PromptRenderer> {
    use kd_train::template::{PromptTemplate, TemplateName};
    let name = match o.get("template") {
        None | Some("auto") => TemplateName::Auto,
        Some("dolly") => TemplateName::Dolly,
        Some("plain") => TemplateName::Plain,
        Some("chat") => TemplateName::Chat,
        Some(other) => bail!("--template {other}: expected auto, dolly, plain or chat"),
    };
    let tokenizer = o.get("tokenizer").map(PathBuf::from).unwrap_or_else(|| model_dir.into());
    Ok(PromptRenderer::new(&PromptTemplate::Named(name), Some(&tokenizer))?)
}

/// `--device` and `--dtype` of the inference commands (`eval`, `generate`, `seqkd-generate`):
/// the model is loaded memory-mapped onto that device in that precision.
fn load_for_inference(o: &Opts, dir: &std::path::Path) -> Result<(CausalLm, Device)> {
    let spec: device::DeviceSpec = o.get("device").unwrap_or("cpu").parse()?;
    let device = spec.device()?;
    let precision: kd_train::Precision = o.get("dtype").unwrap_or("f32").parse()?;
    if !device.supports_dtype(precision.float_dtype()) {
        bail!("--dtype {precision}: device `{spec}` does not compute in it (try f16 or f32)");
    }
    let options = kd_models::LoadOptions::default().with_dtype(precision.float_dtype());
    let model = CausalLm::from_pretrained_with(dir, &options, &device)
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok((model, device))
}

fn cmd_eval(args: &[String]) -> Result<()> {
    let o = Opts::parse(args, &["exact-match"])?;
    o.check_known(&[
        "model",
        "data",
        "tokenizer",
        "seq-len",
        "batch-size",
        "format",
        "rouge",
        "max-new-tokens",
        "template",
        "device",
        "dtype",
    ])?;
    let exact = o.flag("exact-match");
    let model_dir = PathBuf::from(o.get("model").context("--model DIR is required")?);
    let data = PathBuf::from(o.get("data").context("--data FILE is required")?);
    let format = match o.get("format") {
        None => config::DataFormat::Auto,
        Some("text") => config::DataFormat::Text,
        Some("instruction") => config::DataFormat::Instruction,
        Some(other) => bail!("--format {other}: expected text or instruction"),
    };
    let (model, device) = load_for_inference(&o, &model_dir)?;
    let tok = tokenizer_for(&o, &model_dir)?;
    let seq_len = o.parsed::<usize>("seq-len")?.unwrap_or(128);
    let template = template_for(&o, &model_dir)?;
    let set = run::load_blocks(&data, format, &template, &tok, seq_len)?;
    let batch = o.parsed::<usize>("batch-size")?.unwrap_or(8);
    let r = kd_train::evaluate(&model, &set, batch, None, &device);
    println!(
        "{}: loss {:.4}  perplexity {:.3}  ({} tokens, {} blocks of {})",
        model_dir.display(),
        r.loss,
        r.perplexity,
        r.tokens,
        set.len(),
        seq_len
    );
    if let Some(n) = o.parsed::<usize>("rouge")? {
        let examples = kd_train::data::read_instruction_jsonl(&data, &template)?;
        let max_new = o.parsed::<usize>("max-new-tokens")?.unwrap_or(64);
        let (scores, count) =
            run::rouge_eval(&model, &tok, &examples, n, max_new, seq_len, &device)?;
        let (rouge, em) = scores.map_or((0.0, 0.0), |s| (s.rouge_l, s.exact_match));
        println!("ROUGE-L F1 of greedy responses: {rouge:.4} (mean of {count} examples)");
        if exact {
            println!("exact-match accuracy of the final number: {em:.4} ({count} examples)");
        }
    }
    Ok(())
}

fn cmd_export(args: &[String]) -> Result<()> {
    let o = Opts::parse(args, &[])?;
    o.check_known(&["checkpoint", "out", "config", "tokenizer"])?;
    let ck = PathBuf::from(o.get("checkpoint").context("--checkpoint DIR is required")?);
    let out = PathBuf::from(o.get("out").context("--out DIR is required")?);
    let config = o.get("config").map(PathBuf::from);
    run::export_checkpoint(&ck, config.as_deref(), &out)?;
    if let Some(t) = o.get("tokenizer") {
        run::copy_tokenizer(std::path::Path::new(t), &out)?;
    }
    println!("exported {} to {}", ck.display(), out.display());
    Ok(())
}

fn cmd_generate(args: &[String]) -> Result<()> {
    let o = Opts::parse(args, &[])?;
    o.check_known(&[
        "model",
        "prompt",
        "max-new-tokens",
        "temperature",
        "top-k",
        "top-p",
        "seed",
        "tokenizer",
        "device",
        "dtype",
    ])?;
    let model_dir = PathBuf::from(o.get("model").context("--model DIR is required")?);
    let prompt = o.get("prompt").context("--prompt TEXT is required")?;
    let (model, device) = load_for_inference(&o, &model_dir)?;
    let tok = tokenizer_for(&o, &model_dir)?;
    let ids = tok.encode_prompt(prompt)?;
    let sampling = match o.parsed::<f64>("temperature")? {
        None | Some(0.0) => Sampling::Greedy,
        Some(temperature) => {
            Sampling::Sample { temperature, top_k: o.parsed("top-k")?, top_p: o.parsed("top-p")? }
        }
    };
    let tokens = kd_train::methods::SpecialTokens::of(&tok);
    let config = GenerationConfig {
        max_new_tokens: o.parsed("max-new-tokens")?.unwrap_or(64),
        sampling,
        eos_token_ids: tokens.eos_ids,
        pad_token_id: tokens.pad_id,
        seed: o.parsed("seed")?.unwrap_or(0),
        output_step_logits: false,
    };
    let out = kd_models::generate(&model, &[ids], &config, &device, |_, _| {})?;
    println!("{}", tok.decode(&out.sequences[0], true)?);
    Ok(())
}

/// `kd plot --runs DIR,DIR,… --out FILE.png [--metric exact_match|rouge_l|loss] [--title T]`:
/// the held-out curves of several runs (their `metrics.jsonl`) in one chart.
fn cmd_plot(args: &[String]) -> Result<()> {
    let o = Opts::parse(args, &[])?;
    o.check_known(&["runs", "out", "metric", "title"])?;
    let runs = o.get("runs").context("--runs DIR,DIR,... is required")?;
    let out = PathBuf::from(o.get("out").context("--out FILE.png is required")?);
    let metric = o.get("metric").unwrap_or("loss");
    let pick = |e: &kd_train::EvalRecord| -> Result<Option<f64>> {
        Ok(match metric {
            "loss" => Some(e.loss),
            "rouge_l" => e.rouge_l,
            "exact_match" => e.exact_match,
            other => bail!("--metric {other}: expected loss, rouge_l or exact_match"),
        })
    };
    let mut series = Vec::new();
    for dir in runs.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let path = PathBuf::from(dir).join(kd_train::trainer::METRICS_FILE);
        let mut points = Vec::new();
        for line in kd_train::metrics::read_jsonl(&path)? {
            if let kd_train::MetricsLine::Eval(e) = line
                && let Some(y) = pick(&e)?
            {
                points.push((e.step as f64, y));
            }
        }
        if points.is_empty() {
            bail!("{}: no held-out `{metric}` in its metrics", path.display());
        }
        let name = PathBuf::from(dir)
            .file_name()
            .map_or(dir.to_string(), |n| n.to_string_lossy().to_string());
        series.push(crate::plot::Series { name, points });
    }
    let chart = crate::plot::Chart {
        title: o.get("title").unwrap_or("held-out").to_string(),
        x_label: "step".into(),
        y_label: metric.replace('_', " "),
        series,
        width: 900,
        height: 560,
    };
    chart.write_png(&out)?;
    println!("{} curves in {}", chart.series.len(), out.display());
    Ok(())
}

fn cmd_seqkd_generate(args: &[String]) -> Result<()> {
    let o = Opts::parse(args, &[])?;
    o.check_known(&[
        "teacher",
        "data",
        "out",
        "tokenizer",
        "seq-len",
        "temperature",
        "top-k",
        "top-p",
        "max-new-tokens",
        "seed",
        "original-fraction",
        "batch",
        "template",
        "device",
        "dtype",
    ])?;
    let teacher_dir = PathBuf::from(o.get("teacher").context("--teacher DIR is required")?);
    let data = PathBuf::from(o.get("data").context("--data FILE is required")?);
    let out = PathBuf::from(o.get("out").context("--out FILE.jsonl is required")?);
    let mut settings = kd_train::methods::seqkd::SeqKdConfig::default();
    if let Some(t) = o.parsed("temperature")? {
        settings.sampling.temperature = t;
    }
    settings.sampling.top_k = o.parsed("top-k")?;
    settings.sampling.top_p = o.parsed("top-p")?;
    if let Some(n) = o.parsed("max-new-tokens")? {
        settings.sampling.max_new_tokens = n;
    }
    if let Some(s) = o.parsed("seed")? {
        settings.seed = s;
    }
    if let Some(r) = o.parsed("original-fraction")? {
        settings.original_fraction = r;
    }
    if let Some(b) = o.parsed("batch")? {
        settings.generation_batch = b;
    }
    settings.validate()?;
    let seq_len = o.parsed::<usize>("seq-len")?.unwrap_or(128);
    let (teacher, device) = load_for_inference(&o, &teacher_dir)?;
    let tok = tokenizer_for(&o, &teacher_dir)?;
    let examples = kd_train::data::read_instruction_jsonl(&data, &template_for(&o, &teacher_dir)?)?;
    let provenance = seqkd::Provenance {
        teacher: teacher_dir,
        teacher_params: teacher.num_params(),
        source: data,
        examples: examples.len(),
        seq_len,
        settings: settings.clone(),
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let (n, tokens, secs) =
        seqkd::generate(&teacher, &tok, &examples, &settings, seq_len, &provenance, &out, &device)?;
    println!(
        "{n} examples, {tokens} teacher tokens in {secs:.1}s ({:.0} tokens/s); wrote {} and {}",
        tokens as f64 / secs.max(1e-9),
        out.display(),
        seqkd::provenance_path(&out).display()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quiet = args.iter().any(|a| a == "--quiet" || a == "-q");
    let args: Vec<String> = args.into_iter().filter(|a| a != "--quiet" && a != "-q").collect();
    init_logger(quiet);
    let result = match args.first().map(String::as_str) {
        Some("train") => cmd_train(&args[1..], false),
        Some("distill") => cmd_train(&args[1..], true),
        Some("eval") => cmd_eval(&args[1..]),
        Some("seqkd-generate") => cmd_seqkd_generate(&args[1..]),
        Some("plot") => cmd_plot(&args[1..]),
        Some("generate") => cmd_generate(&args[1..]),
        Some("export") => cmd_export(&args[1..]),
        Some("demo") => demo::cmd_demo(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command `{other}`\n\n{USAGE}")),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
