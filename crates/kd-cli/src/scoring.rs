//! `kd score-distill`: knowledge distillation for automatic scoring (Latif et al. 2023,
//! arXiv 2312.15842) end to end; see `kd_train::scoring` and `docs/methods/scoring.md`.
//!
//! 1. A teacher classifier is fine-tuned on the scored answers (label-only), its body starting
//!    from a causal LM (default: the shipped arithmetic teacher, 4 × 128).
//! 2. Its class logits on every training row are computed once (the soft labels).
//! 3. For each seed, the same student (default: the shipped 2 × 64 `student-sft`, same head
//!    initialisation for both arms) is trained label-only (`λ = 0`) and with KD
//!    (`CE + λ·T²·CE(teacher soft labels)`) for the same steps.
//! 4. Accuracy, macro-F1 and quadratic weighted kappa on the held-out rows are printed as a
//!    table (mean ± std over seeds) and written to `<out>/results.json` and
//!    `<out>/results.csv`.
//!
//! The teacher's result and soft labels are written to `<out>/teacher_soft_labels.json`;
//! `--teacher-soft-labels FILE` starts from such a file instead of fine-tuning a teacher (for
//! sweeps over λ, T or the student's budget against one teacher).
//!
//! Without `--train`/`--eval`/`--teacher`/`--student` the shipped files are used (written out
//! of the binary below `<out>/shipped/`, so no source tree is needed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use kd_models::ModelConfig;
use kd_train::scoring::{
    ScoringClassifier, ScoringLossConfig, ScoringMetrics, ScoringSet, ScoringTrainConfig,
    ScoringTrainReport, evaluate_classifier, predict_logits, read_scored_jsonl, train_classifier,
};
use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::error::Input;
use crate::progress::{Progress, format_duration};
use crate::run::load_tokenizer;

/// `kd score-distill`.
#[derive(Debug, Args)]
pub struct ScoreDistillArgs {
    /// Output directory: results.json, results.csv (and shipped/ when defaults are used).
    #[arg(long, value_name = "DIR", default_value = "runs/scoring")]
    pub out: PathBuf,
    /// Scored training answers, JSONL `{"question", "answer", "score"}` (default: the shipped
    /// synthetic set, assets/scoring/train.jsonl).
    #[arg(long, value_name = "FILE")]
    pub train: Option<PathBuf>,
    /// Held-out scored answers (default: assets/scoring/eval.jsonl).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// The teacher's body: a Hugging Face causal-LM directory, also the tokenizer's (default:
    /// the shipped arithmetic teacher, 4 × 128).
    #[arg(long, value_name = "DIR")]
    pub teacher: Option<PathBuf>,
    /// The student's body (default: the shipped 2 × 64 arithmetic student-sft).
    #[arg(long, value_name = "DIR")]
    pub student: Option<PathBuf>,
    /// Initialise the student's body afresh from its config.json instead of its weights.
    #[arg(long)]
    pub student_from_scratch: bool,
    /// Number of score classes (scores 0..K).
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub num_classes: usize,
    /// Weight λ of the soft-label term.
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    pub lambda: f64,
    /// Temperature T of teacher and student in the soft-label term.
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    pub temperature: f64,
    /// Student optimizer steps (each arm, each seed).
    #[arg(long, value_name = "N", default_value_t = 400)]
    pub steps: u64,
    /// Teacher fine-tuning steps.
    #[arg(long, value_name = "N", default_value_t = 1500)]
    pub teacher_steps: u64,
    /// Student peak learning rate.
    #[arg(long, value_name = "X", default_value_t = 2e-3)]
    pub lr: f64,
    /// Teacher peak learning rate.
    #[arg(long, value_name = "X", default_value_t = 1e-3)]
    pub teacher_lr: f64,
    /// Rows per batch (teacher and student).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub batch_size: usize,
    /// Warmup steps (then a cosine to 0.1 × the peak).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub warmup_steps: u64,
    /// Student seeds (head initialisation, shuffling; from-scratch bodies), comma-separated.
    #[arg(long, value_name = "S,S,...", value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Seed of the teacher's fine-tuning.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub teacher_seed: u64,
    /// Reuse the teacher of an earlier run: its `teacher_soft_labels.json` (written by every
    /// run into --out) instead of fine-tuning a teacher; for sweeps over λ, T or student
    /// settings on the same data.
    #[arg(long, value_name = "FILE")]
    pub teacher_soft_labels: Option<PathBuf>,
    /// Use only the first N training rows (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_train: usize,
    /// Use only the first N held-out rows (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_eval: usize,
    #[arg(
        long,
        value_name = "D",
        default_value = "cpu",
        help = "Device: cpu, ndarray, wgpu[:N], vulkan[:N] or cuda[:N]"
    )]
    pub device: String,
}

/// One trained model's held-out result.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunResult {
    /// `teacher`, `label_only` or `kd`.
    arm: String,
    seed: u64,
    steps: u64,
    train_secs: f64,
    final_loss: f64,
    metrics: ScoringMetrics,
}

/// Mean and sample standard deviation of one metric over seeds.
#[derive(Debug, Clone, Copy, Serialize)]
struct MeanStd {
    mean: f64,
    std: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    arm: &'static str,
    runs: usize,
    accuracy: MeanStd,
    macro_f1: MeanStd,
    qwk: MeanStd,
}

/// What `teacher_soft_labels.json` holds: the fine-tuned teacher's held-out result and its class
/// logits on every training row (the soft labels before the temperature).
#[derive(Debug, Serialize, Deserialize)]
struct StoredTeacher {
    train: PathBuf,
    train_rows: usize,
    num_classes: usize,
    teacher: PathBuf,
    result: RunResult,
    logits: Vec<Vec<f32>>,
}

/// What `results.json` holds.
#[derive(Debug, Serialize)]
struct Report {
    train: PathBuf,
    eval: PathBuf,
    teacher: PathBuf,
    student: PathBuf,
    student_from_scratch: bool,
    /// The earlier run's teacher, when reused (then `teacher_config` is this command line's,
    /// not the one that trained it: see that run's `results.json`).
    teacher_soft_labels: Option<PathBuf>,
    train_rows: usize,
    eval_rows: usize,
    num_classes: usize,
    teacher_config: ScoringTrainConfig,
    student_config: ScoringTrainConfig,
    /// Share of training rows whose (noisy) label is the teacher's top class.
    teacher_train_agreement: f64,
    summary: Vec<Summary>,
    runs: Vec<RunResult>,
    wall_secs: f64,
    kd_version: String,
}

fn mean_std(values: &[f64]) -> MeanStd {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    MeanStd { mean, std: var.sqrt() }
}

/// Trains one classifier with a progress display; returns it and its report.
fn train(
    what: &str,
    model: ScoringClassifier,
    set: &ScoringSet,
    teacher: Option<&[Vec<f32>]>,
    config: &ScoringTrainConfig,
    device: &Device,
) -> Result<(ScoringClassifier, ScoringTrainReport)> {
    let mut progress = Progress::new(what, config.steps, "steps");
    // The mean training loss over each tenth of the run, logged as it completes.
    let window = (config.steps / 10).max(1);
    let mut sum = 0.0;
    let result = train_classifier(model, set, teacher, config, device, |step, loss| {
        progress.set(step);
        sum += loss;
        if step % window == 0 {
            log::debug!(
                "{what}: mean loss {:.4} over steps {}..={step}",
                sum / window as f64,
                step + 1 - window
            );
            sum = 0.0;
        }
    });
    progress.finish();
    let (model, report) = match result {
        Ok(done) => done,
        Err(e) if e.is_input() => return Err(e).with_context(|| what.to_string()).input(),
        Err(e) => return Err(e).with_context(|| format!("{what}: training failed")),
    };
    let last = report.losses.last().copied().unwrap_or(f64::NAN);
    log::info!(
        "{what}: {} steps in {}, final loss {last:.4}",
        config.steps,
        format_duration(report.secs)
    );
    Ok((model, report))
}

fn check(o: &ScoreDistillArgs) -> Result<()> {
    if o.seeds.is_empty() {
        bail!("--seeds: expected at least one seed");
    }
    if o.num_classes < 2 {
        bail!("--num-classes: expected at least 2, got {}", o.num_classes);
    }
    Ok(())
}

/// `kd score-distill`.
pub fn cmd_score_distill(o: &ScoreDistillArgs) -> Result<()> {
    let start = Instant::now();
    check(o).input()?;
    let spec: DeviceSpec = o.device.parse().input()?;
    let device = spec.device().input()?;
    let needs_shipped =
        o.train.is_none() || o.eval.is_none() || o.teacher.is_none() || o.student.is_none();
    let shipped = match needs_shipped {
        true => Some(crate::assets::materialize(&o.out.join("shipped"))?),
        false => None,
    };
    let shipped_path = |rel: &str| -> PathBuf {
        shipped
            .as_ref()
            .expect("materialized when a default is used")
            .join("crates/kd-cli/assets")
            .join(rel)
    };
    let train_path = o.train.clone().unwrap_or_else(|| shipped_path("scoring/train.jsonl"));
    let eval_path = o.eval.clone().unwrap_or_else(|| shipped_path("scoring/eval.jsonl"));
    let teacher_dir = o.teacher.clone().unwrap_or_else(|| shipped_path("arithmetic/teacher"));
    let student_dir = o.student.clone().unwrap_or_else(|| shipped_path("arithmetic/student-sft"));

    let k = o.num_classes;
    let tokenizer = load_tokenizer(&teacher_dir).input()?;
    let mut train_rows = read_scored_jsonl(&train_path, k).input()?;
    let mut eval_rows = read_scored_jsonl(&eval_path, k).input()?;
    if o.max_train > 0 {
        train_rows.truncate(o.max_train);
    }
    if o.max_eval > 0 {
        eval_rows.truncate(o.max_eval);
    }
    // Build the teacher first: its positions bound the rows.
    device.seed(o.teacher_seed);
    let teacher = ScoringClassifier::from_pretrained(&teacher_dir, k, &device)
        .with_context(|| format!("loading the teacher {}", teacher_dir.display()))
        .input()?;
    let student_config = ModelConfig::from_file(student_dir.join("config.json"))
        .with_context(|| format!("reading the student {}", student_dir.display()))
        .input()?;
    let max_len = teacher.max_positions().min(student_config.max_position_embeddings());
    let train_set = ScoringSet::encode(&train_rows, &tokenizer, k, max_len)
        .with_context(|| format!("encoding {}", train_path.display()))
        .input()?;
    let eval_set = ScoringSet::encode(&eval_rows, &tokenizer, k, max_len)
        .with_context(|| format!("encoding {}", eval_path.display()))
        .input()?;
    log::info!(
        "{} training rows, {} held-out rows, {k} classes, longest row {} tokens",
        train_set.len(),
        eval_set.len(),
        train_set.max_len().max(eval_set.max_len())
    );

    let base = ScoringTrainConfig {
        batch_size: o.batch_size,
        warmup_steps: o.warmup_steps,
        ..ScoringTrainConfig::default()
    };
    let teacher_config = ScoringTrainConfig {
        steps: o.teacher_steps,
        lr: o.teacher_lr,
        seed: o.teacher_seed,
        loss: ScoringLossConfig { lambda: 0.0, temperature: 1.0 },
        ..base.clone()
    };
    let kd_loss = ScoringLossConfig { lambda: o.lambda, temperature: o.temperature };
    let kd_config = ScoringTrainConfig { steps: o.steps, lr: o.lr, loss: kd_loss, ..base };
    teacher_config.validate().context("teacher settings").input()?;
    kd_config.validate().context("student settings").input()?;

    // 1. The teacher, fine-tuned on the labels, and 2. its soft labels on the training rows,
    // once (or both from an earlier run).
    let batch = o.batch_size.max(32);
    let stored = match &o.teacher_soft_labels {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .input()?;
            let stored: StoredTeacher = serde_json::from_str(&text)
                .with_context(|| format!("{}: teacher soft labels", path.display()))
                .input()?;
            if stored.train_rows != train_set.len() || stored.num_classes != k {
                return Err(anyhow::anyhow!(
                    "{}: soft labels of {} rows × {} classes, this run has {} rows × {k} classes",
                    path.display(),
                    stored.train_rows,
                    stored.num_classes,
                    train_set.len()
                ))
                .input();
            }
            log::info!("teacher soft labels from {}", path.display());
            stored
        }
        None => {
            let (teacher, report) =
                train("teacher", teacher, &train_set, None, &teacher_config, &device)?;
            let metrics = evaluate_classifier(&teacher, &eval_set, batch, &device)?;
            let logits = predict_logits(&teacher, &train_set, batch, &device)?;
            StoredTeacher {
                train: train_path.clone(),
                train_rows: train_set.len(),
                num_classes: k,
                teacher: teacher_dir.clone(),
                result: RunResult {
                    arm: "teacher".into(),
                    seed: o.teacher_seed,
                    steps: o.teacher_steps,
                    train_secs: report.secs,
                    final_loss: report.losses.last().copied().unwrap_or(f64::NAN),
                    metrics,
                },
                logits,
            }
        }
    };
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let stored_path = o.out.join("teacher_soft_labels.json");
    if o.teacher_soft_labels.as_deref() != Some(stored_path.as_path()) {
        std::fs::write(&stored_path, serde_json::to_string(&stored)?)
            .with_context(|| format!("writing {}", stored_path.display()))?;
    }
    log_metrics("teacher", &stored.result.metrics);
    let soft = stored.logits;
    let mut runs = vec![stored.result];
    let agree = kd_train::scoring::argmax_rows(&soft)
        .iter()
        .zip(&train_set.labels)
        .filter(|(a, b)| a == b)
        .count() as f64
        / train_set.len() as f64;
    log::info!("teacher's top class = training label on {:.1} % of training rows", 100.0 * agree);

    // 3. The student, label-only and with KD, at each seed from the same initialisation.
    let student = |seed: u64| -> Result<ScoringClassifier> {
        device.seed(seed);
        let model = match o.student_from_scratch {
            true => ScoringClassifier::init(&student_config, k, &device),
            false => ScoringClassifier::from_pretrained(&student_dir, k, &device),
        };
        model.with_context(|| format!("loading the student {}", student_dir.display())).input()
    };
    for &seed in &o.seeds {
        for (arm, lambda) in [("label_only", 0.0), ("kd", o.lambda)] {
            let config = ScoringTrainConfig {
                seed,
                loss: ScoringLossConfig { lambda, temperature: o.temperature },
                ..kd_config.clone()
            };
            let what = format!("{arm} seed {seed}");
            let teacher_soft = (lambda > 0.0).then_some(soft.as_slice());
            let (model, report) =
                train(&what, student(seed)?, &train_set, teacher_soft, &config, &device)?;
            let metrics = evaluate_classifier(&model, &eval_set, batch, &device)?;
            log_metrics(&what, &metrics);
            runs.push(RunResult {
                arm: arm.into(),
                seed,
                steps: o.steps,
                train_secs: report.secs,
                final_loss: report.losses.last().copied().unwrap_or(f64::NAN),
                metrics,
            });
        }
    }

    // 4. The table and the files.
    let summary: Vec<Summary> = ["teacher", "label_only", "kd"]
        .into_iter()
        .map(|arm| {
            let of = |f: fn(&ScoringMetrics) -> f64| {
                let v: Vec<f64> =
                    runs.iter().filter(|r| r.arm == arm).map(|r| f(&r.metrics)).collect();
                mean_std(&v)
            };
            Summary {
                arm,
                runs: runs.iter().filter(|r| r.arm == arm).count(),
                accuracy: of(|m| m.accuracy),
                macro_f1: of(|m| m.macro_f1),
                qwk: of(|m| m.qwk),
            }
        })
        .collect();
    let wall_secs = start.elapsed().as_secs_f64();
    print_table(&summary, eval_set.len(), o, wall_secs);
    let report = Report {
        train: train_path,
        eval: eval_path,
        teacher: teacher_dir,
        student: student_dir,
        student_from_scratch: o.student_from_scratch,
        teacher_soft_labels: o.teacher_soft_labels.clone(),
        train_rows: train_set.len(),
        eval_rows: eval_set.len(),
        num_classes: k,
        teacher_config,
        student_config: kd_config,
        teacher_train_agreement: agree,
        summary,
        runs,
        wall_secs,
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let json = o.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let csv = o.out.join("results.csv");
    write_csv(&csv, &report.runs)?;
    println!("wrote {} and {}", json.display(), csv.display());
    Ok(())
}

fn log_metrics(what: &str, m: &ScoringMetrics) {
    log::info!(
        "{what}: held-out accuracy {:.3}, macro-F1 {:.3}, QWK {:.3}, per-class F1 {:?}",
        m.accuracy,
        m.macro_f1,
        m.qwk,
        m.per_class_f1.iter().map(|f| (f * 1000.0).round() / 1000.0).collect::<Vec<_>>()
    );
}

fn print_table(summary: &[Summary], eval_rows: usize, o: &ScoreDistillArgs, secs: f64) {
    println!(
        "automatic scoring on {eval_rows} held-out answers (λ = {}, T = {}, {} student steps, seeds {:?}; {})",
        o.lambda,
        o.temperature,
        o.steps,
        o.seeds,
        format_duration(secs)
    );
    println!("| model | runs | macro-F1 | accuracy | QWK |");
    println!("|---|---|---|---|---|");
    for s in summary {
        let f = |m: MeanStd| format!("{:.3} ± {:.3}", m.mean, m.std);
        println!(
            "| {} | {} | {} | {} | {} |",
            s.arm,
            s.runs,
            f(s.macro_f1),
            f(s.accuracy),
            f(s.qwk)
        );
    }
}

/// One line per trained model: arm, seed, steps, seconds, loss, accuracy, macro-F1, QWK and the
/// per-class F1.
fn write_csv(path: &Path, runs: &[RunResult]) -> Result<()> {
    let k = runs.first().map_or(0, |r| r.metrics.per_class_f1.len());
    let mut text = String::from("arm,seed,steps,train_secs,final_loss,accuracy,macro_f1,qwk");
    for c in 0..k {
        text.push_str(&format!(",f1_{c}"));
    }
    text.push('\n');
    for r in runs {
        let m = &r.metrics;
        text.push_str(&format!(
            "{},{},{},{:.2},{:.6},{:.6},{:.6},{:.6}",
            r.arm, r.seed, r.steps, r.train_secs, r.final_loss, m.accuracy, m.macro_f1, m.qwk
        ));
        for f in &m.per_class_f1 {
            text.push_str(&format!(",{f:.6}"));
        }
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let m = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m.mean - 2.0).abs() < 1e-12 && (m.std - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[0.5]).std, 0.0);
    }
}
