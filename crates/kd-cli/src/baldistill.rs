//! `kd baldistill`: BalDistill's stage loop (`kd_train::baldistill`) on a long-tailed pool,
//! compared with random selection at the same budget.
//!
//! The recipe file is a run config (the student, the teacher, `[data]` with the tokenizer, the
//! template and the balanced held-out `eval` file, `[train]` for ONE stage's training) plus a
//! `[baldistill]` section: the pool and optional `dev` files, the generation settings, and every
//! key of [`BalDistillConfig`]. Each arm (`--arms`) and seed runs every stage:
//!
//! 1. the planner picks the stage's pool examples (quotas, the student's IFD) and the shortfall
//!    of tail domains;
//! 2. the teacher writes new problems for that shortfall (sampled) and answers every selected
//!    problem (greedy); the rationale filter keeps answers that match the gold label (pool) or
//!    whose equations hold (synthesised);
//! 3. the student is fine-tuned (`kd train`, method sft) on everything kept so far, from the
//!    previous stage's weights;
//! 4. its greedy answers to the held-out set are scored per domain (and to `dev`, which the
//!    adaptive policy reads).
//!
//! Everything lands under `--out`: per run `<arm>-seed<s>/stage<k>/` (the stage's data, the
//! training run, `state.json`), and `summary.json`, `summary.csv`, `baldistill.png` (the macro
//! exact match after every stage). A finished stage is not redone: rerunning the command after
//! an interruption continues from the last `state.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use kd_models::{CausalLm, Tokenizer};
use kd_train::baldistill::{
    BalDistillConfig, BalancePolicy, DomainScores, HeadSelection, PoolExample, StagePlanner,
    ifd_scores, keep_rationale, read_pool,
};
use kd_train::data::prompt_ids;
use kd_train::exact_match::exact_match;
use kd_train::methods::SpecialTokens;
use kd_train::methods::seqkd::teacher_answers;
use kd_train::rollout::SamplingConfig;
use kd_train::template::{InstructionRow, PromptRenderer};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigBuilder, RunConfig};
use crate::error::Input;
use crate::plot::{Chart, Series};
use crate::progress::Progress;
use crate::run::{load_model, load_tokenizer, renderer, run_job};
use crate::seqkd::write_jsonl;

/// `kd baldistill`.
#[derive(Debug, Args)]
pub struct BalDistillArgs {
    /// The recipe: a run config (student, teacher, data, one stage's `[train]`) with a
    /// `[baldistill]` section.
    #[arg(long, value_name = "FILE", default_value = "crates/kd-cli/configs/baldistill.toml")]
    pub config: PathBuf,
    /// Override a config key: `--set baldistill.budget=300` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// What to compare, comma-separated: `baldistill` (balanced quotas, IFD, synthesis),
    /// `adaptive` (adaptive quotas, IFD, synthesis; needs `dev`), `random` (uniform selection
    /// from the pool) and `config` (the `[baldistill]` section as written).
    #[arg(
        long,
        value_name = "ARM,...",
        value_delimiter = ',',
        default_value = "baldistill,random"
    )]
    pub arms: Vec<String>,
    /// Seeds (selection, synthesis, training), comma-separated; each arm runs every seed.
    #[arg(long, value_name = "S,...", value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = "runs/baldistill")]
    pub out: PathBuf,
}

/// The `[baldistill]` keys `kd` reads itself (the others are [`BalDistillConfig`]'s).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    /// The long-tailed pool (`domain`, `instruction`, `label`).
    pool: PathBuf,
    /// A validation set in the same format, scored after every stage (the adaptive policy's
    /// accuracies).
    #[serde(default)]
    dev: Option<PathBuf>,
    /// Prompts per teacher generation batch.
    #[serde(default = "default_generation_batch")]
    generation_batch: usize,
    /// Most new tokens of a teacher answer, a synthesised problem or a student answer.
    #[serde(default = "default_max_new_tokens")]
    max_new_tokens: usize,
    /// Rows per batch of the student's IFD scoring.
    #[serde(default = "default_ifd_batch")]
    ifd_batch: usize,
}

fn default_generation_batch() -> usize {
    32
}
fn default_max_new_tokens() -> usize {
    48
}
fn default_ifd_batch() -> usize {
    64
}
const FILE_KEYS: [&str; 5] = ["pool", "dev", "generation_batch", "max_new_tokens", "ifd_batch"];

/// One kept training example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KeptRow {
    domain: String,
    instruction: String,
    response: String,
    /// `pool` or `synthetic`.
    source: String,
}

/// What one stage did and scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    stage: usize,
    quotas: BTreeMap<String, usize>,
    /// Pool examples selected, per domain.
    selected: BTreeMap<String, usize>,
    /// Problems the teacher was asked to write, per domain.
    synthesis_attempts: BTreeMap<String, usize>,
    /// Kept training examples added, per domain (pool and synthetic).
    kept: BTreeMap<String, usize>,
    /// Of those, synthesised.
    kept_synthetic: BTreeMap<String, usize>,
    /// Teacher answers the filter rejected.
    rejected: usize,
    /// Training examples after this stage (cumulative).
    train_examples: usize,
    /// Held-out exact match per domain.
    eval: BTreeMap<String, f64>,
    eval_macro: f64,
    eval_micro: f64,
    /// Validation accuracy per domain (when `dev` is set).
    dev: Option<BTreeMap<String, f64>>,
    seconds: f64,
}

/// The state after a stage: enough to continue with the next.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageState {
    planner: StagePlanner,
    kept: Vec<KeptRow>,
    model_dir: PathBuf,
    records: Vec<StageRecord>,
}

/// The recipe's run config and its `[baldistill]` section (which is taken out of `b`).
///
/// # Errors
/// No `[baldistill]` section, an unknown or mistyped key, a setting out of range (all input
/// errors).
pub fn split_recipe(b: &mut ConfigBuilder) -> Result<(RunConfig, Files, BalDistillConfig)> {
    let Some(section) = b.get_table("baldistill").cloned() else {
        return Err(anyhow::anyhow!("no [baldistill] section")).input();
    };
    b.remove("baldistill");
    let run: RunConfig = b.build().input()?;
    let (mut files_t, mut core_t) = (toml::Table::new(), toml::Table::new());
    for (k, v) in section {
        if FILE_KEYS.contains(&k.as_str()) { &mut files_t } else { &mut core_t }.insert(k, v);
    }
    let files: Files =
        toml::Value::Table(files_t).try_into().context("invalid [baldistill]").input()?;
    let base: BalDistillConfig =
        toml::Value::Table(core_t).try_into().context("invalid [baldistill]").input()?;
    base.validate().input()?;
    Ok((run, files, base))
}

/// `kd baldistill`.
pub fn cmd_baldistill(o: &BalDistillArgs) -> Result<()> {
    let mut b = ConfigBuilder::from_file(Some(&o.config)).input()?;
    b.set_all(&o.set).input()?;
    let (run, files, base) =
        split_recipe(&mut b).with_context(|| format!("recipe {}", o.config.display()))?;
    if o.arms.is_empty() || o.seeds.is_empty() {
        return Err(anyhow::anyhow!("--arms and --seeds need at least one value each")).input();
    }
    let arms: Vec<(String, BalDistillConfig)> = o
        .arms
        .iter()
        .map(|a| Ok((a.clone(), arm_config(&base, a)?)))
        .collect::<Result<_>>()
        .input()?;
    if arms.iter().any(|(_, c)| c.policy == BalancePolicy::Adaptive) && files.dev.is_none() {
        return Err(anyhow::anyhow!(
            "the adaptive policy needs validation data: set baldistill.dev = FILE"
        ))
        .input();
    }

    let tok_path = run.data.tokenizer.clone().context("set data.tokenizer").input()?;
    let tok = load_tokenizer(&tok_path).input()?;
    let render = renderer(&run.data).input()?;
    let pool = read_pool(&files.pool).input()?;
    let eval_path = run.data.eval.clone().context("set data.eval (the held-out set)").input()?;
    let eval = read_pool(&eval_path).input()?;
    let dev = files.dev.as_deref().map(read_pool).transpose().input()?;
    let device = run.run.device.device().input()?;
    let teacher = load_model(&run.teacher, "teacher", &device).input()?;

    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let ctx = Shared { run: &run, builder: &b, files: &files, tok: &tok, render: &render, device };
    println!(
        "pool {} examples: {}",
        pool.len(),
        count_by_domain(pool.iter().map(|e| e.domain.as_str()))
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let teacher_scores = ctx.scores(&teacher, &eval, "teacher")?;
    println!("teacher held-out exact match: {}", format_scores(&teacher_scores));

    let mut results = Vec::new();
    for (arm, config) in &arms {
        for &seed in &o.seeds {
            let dir = o.out.join(format!("{arm}-seed{seed}"));
            let mut config = config.clone();
            config.seed = seed;
            println!("== {arm}, seed {seed} ({dir})", dir = dir.display());
            let records =
                ctx.run_arm(&config, seed, &pool, &eval, dev.as_deref(), &teacher, &dir)?;
            results.push((arm.clone(), seed, records));
        }
    }
    write_summary(&o.out, &teacher_scores, &results)
}

/// The preset of an arm.
fn arm_config(base: &BalDistillConfig, arm: &str) -> Result<BalDistillConfig> {
    let mut c = base.clone();
    match arm {
        "baldistill" => {
            c.policy = BalancePolicy::Balanced;
            c.head_selection = HeadSelection::Ifd;
            c.synthesize_tail = true;
        }
        "adaptive" => {
            c.policy = BalancePolicy::Adaptive;
            c.head_selection = HeadSelection::Ifd;
            c.synthesize_tail = true;
        }
        "random" => {
            c.policy = BalancePolicy::Random;
            c.synthesize_tail = false;
        }
        "config" => {}
        other => {
            bail!("unknown arm `{other}`: expected baldistill, adaptive, random or config")
        }
    }
    Ok(c)
}

fn count_by_domain<'a>(domains: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in domains {
        *out.entry(d.to_string()).or_insert(0) += 1;
    }
    out
}

fn format_scores(s: &DomainScores) -> String {
    let per: Vec<String> =
        s.accuracy().iter().map(|(d, a)| format!("{d} {:.1}%", 100.0 * a)).collect();
    format!("macro {:.1}% ({})", 100.0 * s.macro_accuracy(), per.join(", "))
}

/// What every run shares.
struct Shared<'a> {
    run: &'a RunConfig,
    builder: &'a ConfigBuilder,
    files: &'a Files,
    tok: &'a Tokenizer,
    render: &'a PromptRenderer,
    device: Device,
}

impl Shared<'_> {
    /// `instruction` through the run's prompt template.
    fn render(&self, instruction: &str) -> kd_train::Result<String> {
        self.render.render(&InstructionRow {
            instruction: instruction.to_string(),
            context: None,
            response: String::new(),
            templated: false,
        })
    }

    fn prompt(&self, instruction: &str) -> Result<Vec<u32>> {
        Ok(prompt_ids(&self.render(instruction)?, self.tok)?)
    }

    /// The model's answers to `instructions` (greedy at temperature 0, else sampled).
    fn answers(
        &self,
        model: &CausalLm,
        instructions: &[String],
        temperature: f64,
        seed: u64,
        what: &str,
    ) -> Result<Vec<String>> {
        let seq_len = self.run.data.seq_len;
        let mut prompts = Vec::with_capacity(instructions.len());
        let mut caps = Vec::with_capacity(instructions.len());
        for q in instructions {
            let ids = self.prompt(q)?;
            caps.push(seq_len.saturating_sub(ids.len()).min(self.files.max_new_tokens).max(1));
            prompts.push(ids);
        }
        let sampling = SamplingConfig {
            temperature,
            max_new_tokens: self.files.max_new_tokens.max(1),
            ..SamplingConfig::default()
        };
        let mut progress = Progress::new(what, prompts.len() as u64, "answers");
        let out = teacher_answers(
            model,
            &prompts,
            &caps,
            &sampling,
            &SpecialTokens::of(self.tok),
            seed,
            self.files.generation_batch,
            &self.device,
            |done, _| progress.set(done as u64),
        )?;
        progress.finish();
        out.iter().map(|ids| Ok(self.tok.decode(ids, true)?.trim().to_string())).collect()
    }

    /// Greedy exact match of `model` on `rows`, per domain.
    fn scores(&self, model: &CausalLm, rows: &[PoolExample], what: &str) -> Result<DomainScores> {
        let questions: Vec<String> = rows.iter().map(|r| r.instruction.clone()).collect();
        let answers = self.answers(model, &questions, 0.0, 0, what)?;
        let mut s = DomainScores::default();
        for (r, a) in rows.iter().zip(&answers) {
            s.add(&r.domain, exact_match(a, &format!("The answer is {}.", r.label)));
        }
        Ok(s)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_arm(
        &self,
        config: &BalDistillConfig,
        seed: u64,
        pool: &[PoolExample],
        eval: &[PoolExample],
        dev: Option<&[PoolExample]>,
        teacher: &CausalLm,
        dir: &Path,
    ) -> Result<Vec<StageRecord>> {
        // Resume from the last finished stage, if any.
        let mut state: Option<StageState> = None;
        for s in (0..config.stages).rev() {
            let path = dir.join(format!("stage{s}/state.json"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let st: StageState = serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))?;
                if st.planner.config() != config {
                    bail!(
                        "{} was written with other [baldistill] settings: use another --out or remove it",
                        dir.display()
                    );
                }
                println!("  stages 0..={s} already done: continuing");
                state = Some(st);
                break;
            }
        }
        let (mut planner, mut kept, mut model_dir, mut records) = match state {
            Some(st) => (st.planner, st.kept, Some(st.model_dir), st.records),
            None => {
                (StagePlanner::new(config.clone(), pool).input()?, Vec::new(), None, Vec::new())
            }
        };
        let known: BTreeSet<String> = pool.iter().map(|e| e.instruction.clone()).collect();
        // The student the last stage trained and scored: the next stage's IFD model.
        let mut trained: Option<CausalLm> = None;
        for stage in records.len()..config.stages {
            let start = Instant::now();
            let stage_dir = dir.join(format!("stage{stage}"));
            // The current student, for the IFD scores (a fresh one is seeded like training's).
            let source = match &model_dir {
                Some(d) => {
                    crate::config::ModelSource { pretrained: Some(d.clone()), ..Default::default() }
                }
                None => self.run.student.clone(),
            };
            let needs_student = config.policy != BalancePolicy::Random
                && config.head_selection == HeadSelection::Ifd;
            let student = match (needs_student, trained.take()) {
                (false, _) => None,
                (true, Some(s)) => Some(s),
                (true, None) => {
                    self.device.seed(seed);
                    Some(load_model(&source, "student", &self.device).input()?)
                }
            };
            let accuracy = records.last().and_then(|r: &StageRecord| r.dev.clone());
            let selection = planner
                .select(stage, accuracy.as_ref(), |candidates| {
                    let student = student.as_ref().expect("loaded for IFD selection");
                    let rows: Vec<&PoolExample> = candidates.iter().map(|&i| &pool[i]).collect();
                    log::info!("ifd: the student scores {} candidates", rows.len());
                    let render = |q: &str| self.render(q);
                    ifd_scores(student, self.tok, render, &rows, self.files.ifd_batch, &self.device)
                })
                .input()?;
            drop(student);

            // The teacher answers the selected pool examples; the filter checks the label.
            let questions: Vec<String> =
                selection.pool.iter().map(|&i| pool[i].instruction.clone()).collect();
            let answers = self.answers(teacher, &questions, 0.0, seed, "teacher")?;
            let mut record = StageRecord {
                stage,
                quotas: selection.quotas.clone(),
                selected: count_by_domain(selection.pool.iter().map(|&i| pool[i].domain.as_str())),
                synthesis_attempts: BTreeMap::new(),
                kept: BTreeMap::new(),
                kept_synthetic: BTreeMap::new(),
                rejected: 0,
                train_examples: 0,
                eval: BTreeMap::new(),
                eval_macro: 0.0,
                eval_micro: 0.0,
                dev: None,
                seconds: 0.0,
            };
            for (&i, a) in selection.pool.iter().zip(&answers) {
                let ex = &pool[i];
                if keep_rationale(a, Some(&ex.label)) {
                    *record.kept.entry(ex.domain.clone()).or_insert(0) += 1;
                    kept.push(KeptRow {
                        domain: ex.domain.clone(),
                        instruction: ex.instruction.clone(),
                        response: a.clone(),
                        source: "pool".into(),
                    });
                } else {
                    record.rejected += 1;
                }
            }
            // Tail domains: the teacher writes new problems, then answers them.
            for (k, (domain, &need)) in selection.synthesize.iter().enumerate() {
                let prompt = &config.synthesis_prompts[domain];
                let attempts = need * config.synthesis_attempts;
                record.synthesis_attempts.insert(domain.clone(), attempts);
                let seed_k = seed ^ ((stage as u64 + 1) << 32) ^ ((k as u64 + 1) << 16);
                let written = self.answers(
                    teacher,
                    &vec![prompt.clone(); attempts],
                    config.synthesis_temperature,
                    seed_k,
                    "synthesis",
                )?;
                let mut seen: BTreeSet<String> =
                    kept.iter().map(|r| r.instruction.clone()).collect();
                let fresh: Vec<String> = written
                    .into_iter()
                    .map(|w| w.lines().next().unwrap_or("").trim().to_string())
                    .filter(|q| q.ends_with('?') && !known.contains(q) && seen.insert(q.clone()))
                    .collect();
                let solved = self.answers(teacher, &fresh, 0.0, seed, "teacher")?;
                let mut got = 0;
                for (q, a) in fresh.iter().zip(&solved) {
                    if got == need {
                        break;
                    }
                    if keep_rationale(a, None) {
                        got += 1;
                        kept.push(KeptRow {
                            domain: domain.clone(),
                            instruction: q.clone(),
                            response: a.clone(),
                            source: "synthetic".into(),
                        });
                    } else {
                        record.rejected += 1;
                    }
                }
                *record.kept.entry(domain.clone()).or_insert(0) += got;
                record.kept_synthetic.insert(domain.clone(), got);
            }
            record.train_examples = kept.len();
            if kept.is_empty() {
                bail!("stage {stage}: the filter kept no teacher answer; nothing to train on");
            }
            let data = stage_dir.join("train.jsonl");
            write_jsonl(&data, &kept)?;

            // Fine-tune the student on everything kept so far.
            let mut b = self.builder.clone();
            b.set_value("data.train", toml::Value::String(data.display().to_string()))?;
            b.set_value("data.format", toml::Value::String("instruction".into()))?;
            let out = stage_dir.join("train");
            b.set_value("train.output_dir", toml::Value::String(out.display().to_string()))?;
            b.set("train.seed", &seed.to_string())?;
            if let Some(d) = &model_dir {
                b.remove("student.init");
                b.set_value("student.pretrained", toml::Value::String(d.display().to_string()))?;
            }
            let config_run = b.build().input()?;
            let job = run_job(&config_run, &b.to_toml(), false, false, None, None, None)?;
            model_dir = Some(job.model_dir.clone());

            let student = load_model(
                &crate::config::ModelSource {
                    pretrained: Some(job.model_dir.clone()),
                    ..Default::default()
                },
                "student",
                &self.device,
            )?;
            let scores = self.scores(&student, eval, "eval")?;
            record.eval = scores.accuracy();
            record.eval_macro = scores.macro_accuracy();
            record.eval_micro = scores.micro_accuracy();
            if let Some(dev) = dev {
                record.dev = Some(self.scores(&student, dev, "dev")?.accuracy());
            }
            trained = Some(student);
            record.seconds = start.elapsed().as_secs_f64();
            println!(
                "  stage {stage}: {} kept ({} synthetic, {} rejected), {} training examples; held-out {}",
                record.kept.values().sum::<usize>(),
                record.kept_synthetic.values().sum::<usize>(),
                record.rejected,
                record.train_examples,
                format_scores(&scores)
            );
            records.push(record);
            let st = StageState {
                planner: planner.clone(),
                kept: kept.clone(),
                model_dir: job.model_dir.clone(),
                records: records.clone(),
            };
            std::fs::write(stage_dir.join("state.json"), serde_json::to_string_pretty(&st)?)?;
        }
        Ok(records)
    }
}

/// `summary.json`, `summary.csv` (one row per arm, seed and stage) and the chart.
fn write_summary(
    out: &Path,
    teacher: &DomainScores,
    results: &[(String, u64, Vec<StageRecord>)],
) -> Result<()> {
    let summary = serde_json::json!({
        "teacher": { "per_domain": teacher.accuracy(), "macro": teacher.macro_accuracy() },
        "runs": results.iter().map(|(arm, seed, r)| serde_json::json!({
            "arm": arm, "seed": seed, "stages": r,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    let domains: BTreeSet<String> = results
        .iter()
        .flat_map(|(_, _, r)| r.iter().flat_map(|s| s.eval.keys().cloned()))
        .collect();
    let mut csv = format!(
        "arm,seed,stage,train_examples,kept_synthetic,rejected,macro,micro,{},seconds\n",
        domains.iter().cloned().collect::<Vec<_>>().join(",")
    );
    for (arm, seed, records) in results {
        for r in records {
            let per: Vec<String> =
                domains.iter().map(|d| format!("{:.4}", r.eval.get(d).unwrap_or(&0.0))).collect();
            csv += &format!(
                "{arm},{seed},{},{},{},{},{:.4},{:.4},{},{:.1}\n",
                r.stage,
                r.train_examples,
                r.kept_synthetic.values().sum::<usize>(),
                r.rejected,
                r.eval_macro,
                r.eval_micro,
                per.join(","),
                r.seconds
            );
        }
    }
    std::fs::write(out.join("summary.csv"), csv)?;

    // The final table: mean ± sd over seeds of the last stage.
    let arms: Vec<&String> = {
        let mut seen = Vec::new();
        for (a, _, _) in results {
            if !seen.contains(&a) {
                seen.push(a);
            }
        }
        seen
    };
    println!();
    println!(
        "held-out exact match after the last stage (mean ± sd over {} seed(s)); teacher: {:.1}%",
        results.len() / arms.len().max(1),
        100.0 * teacher.macro_accuracy()
    );
    let header: Vec<String> = domains.iter().map(|d| format!("{d:>9}")).collect();
    println!("{:<12} {:>14} {}", "arm", "macro", header.join(" "));
    let mut series = Vec::new();
    for arm in &arms {
        let runs: Vec<&Vec<StageRecord>> =
            results.iter().filter(|(a, _, _)| a == *arm).map(|(_, _, r)| r).collect();
        let last = |f: &dyn Fn(&StageRecord) -> f64| -> Vec<f64> {
            runs.iter().filter_map(|r| r.last().map(f)).collect()
        };
        let (m, sd) = mean_sd(&last(&|r| r.eval_macro));
        let per: Vec<String> = domains
            .iter()
            .map(|d| format!("{:>8.1}%", 100.0 * mean_sd(&last(&|r| r.eval[d])).0))
            .collect();
        println!("{:<12} {:>7.1} ± {:>4.1}% {}", arm, 100.0 * m, 100.0 * sd, per.join(" "));
        let stages = runs.iter().map(|r| r.len()).min().unwrap_or(0);
        let points = (0..stages)
            .map(|s| {
                let v: Vec<f64> = runs.iter().map(|r| r[s].eval_macro).collect();
                ((s + 1) as f64, 100.0 * mean_sd(&v).0)
            })
            .collect();
        series.push(Series { name: (*arm).clone(), points });
    }
    let chart = Chart {
        title: "BalDistill vs random selection at the same budget".into(),
        x_label: "stage".into(),
        y_label: "held-out exact match, macro over domains (%)".into(),
        series,
        width: 800,
        height: 500,
    };
    chart.write_png(&out.join("baldistill.png"))?;
    println!("summary.json, summary.csv and baldistill.png in {}", out.display());
    Ok(())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}
