//! `kd demo`: on the TinyStories slice shipped in `assets/`, train a small teacher, then the same
//! small student three ways (no teacher, forward KL, reverse KL), and compare held-out
//! perplexity in a table and a plot; then compare methods (SFT, KD, GKD) on the arithmetic word
//! problems with the shipped teacher, by held-out exact match.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use kd_losses::LossConfig;
use kd_models::{CausalLm, GenerationConfig, LlamaConfig, ModelConfig, Sampling, Tokenizer};
use kd_train::MethodConfig;
use kd_train::methods::kd::KdConfig;
use kd_train::{EvalRecord, TrainConfig};

use crate::config::{ConfigBuilder, DataConfig, DataFormat, ModelSource, RunConfig};
use crate::plot::{Chart, Series};
use crate::run::{JobResult, load_data, load_tokenizer, run_job};

/// The demo's files, written out of the binary (`crate::assets`) below `<out>/shipped/` in the
/// repository's layout, so the configs' repository-relative paths resolve against the returned
/// root and `kd demo` needs no source tree.
fn shipped_root(out: &Path) -> Result<PathBuf> {
    crate::assets::materialize(&out.join("shipped"))
}

/// Sizes and budgets of a demo run.
#[derive(Debug, Clone)]
struct Settings {
    seq_len: usize,
    batch_size: usize,
    teacher_steps: u64,
    student_steps: u64,
    teacher: (usize, usize, usize, usize), // hidden, layers, heads, intermediate
    student: (usize, usize, usize, usize),
    teacher_lr: f64,
    student_lr: f64,
    eval_every: u64,
    /// Steps of the arithmetic method comparison (from scratch; the fine-tuning rows get half).
    method_steps: u64,
    /// Held-out arithmetic problems answered at the end of each method run.
    method_eval: usize,
}

impl Settings {
    fn full() -> Self {
        Self {
            seq_len: 64,
            batch_size: 16,
            teacher_steps: 400,
            student_steps: 300,
            teacher: (128, 4, 4, 384),
            student: (64, 2, 2, 192),
            teacher_lr: 3e-3,
            student_lr: 3e-3,
            eval_every: 50,
            method_steps: 1000,
            method_eval: 300,
        }
    }

    /// Seconds, not minutes: for tests and a smoke check.
    fn quick() -> Self {
        Self {
            seq_len: 32,
            batch_size: 4,
            teacher_steps: 6,
            student_steps: 4,
            teacher: (32, 2, 2, 64),
            student: (16, 1, 2, 32),
            teacher_lr: 3e-3,
            student_lr: 3e-3,
            eval_every: 2,
            method_steps: 4,
            method_eval: 3,
        }
    }
}

fn llama(
    vocab: usize,
    seq_len: usize,
    (hidden, layers, heads, inter): (usize, usize, usize, usize),
) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden / heads,
        max_position_embeddings: seq_len.max(64),
        bos_token_id: Some(1),
        eos_token_id: vec![2],
        tie_word_embeddings: true,
        ..LlamaConfig::default()
    })
}

fn train_config(
    s: &Settings,
    steps: u64,
    lr: f64,
    out: PathBuf,
    divergence: Option<LossConfig>,
) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: s.batch_size,
        lr,
        warmup_steps: (steps / 20).max(1),
        min_lr_ratio: 0.1,
        eval_every: s.eval_every,
        log_every: (steps / 10).max(1),
        checkpoint_every: 0,
        keep_checkpoints: 1,
        output_dir: Some(out),
        method: match divergence {
            Some(divergence) => {
                MethodConfig::Kd(KdConfig { divergence: divergence.into(), ..KdConfig::default() })
            }
            None => MethodConfig::default(),
        },
        seed: 0,
        ..TrainConfig::default()
    }
}

struct Row {
    name: String,
    params: usize,
    eval: EvalRecord,
    seconds: f64,
    sample: String,
}

fn sample(model: &CausalLm, tok: &Tokenizer, prompt: &str) -> Result<String> {
    let device = Device::flex();
    let model = model.valid().to_device(&device);
    let ids = tok.encode_prompt(prompt)?;
    let config = GenerationConfig {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
        eos_token_ids: tok.eos_token_id().into_iter().collect(),
        pad_token_id: 0,
        seed: 0,
        output_step_logits: false,
    };
    let out = kd_models::generate(&model, &[ids], &config, &device, |_, _| {})?;
    Ok(tok.decode(&out.sequences[0], true)?.replace('\n', " "))
}

/// `kd demo [--out DIR] [--assets DIR] [--quick]`: `assets` replaces the shipped tokenizer and
/// TinyStories slice of part 1.
pub fn cmd_demo(out: &Path, assets: Option<&Path>, quick: bool) -> Result<()> {
    run_demo(out, assets, if quick { Settings::quick() } else { Settings::full() })
}

fn run_demo(out: &Path, assets: Option<&Path>, s: Settings) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let root = shipped_root(out)?;
    let shipped = root.join("crates/kd-cli/assets");
    let assets = assets.unwrap_or(&shipped);
    let tok = load_tokenizer(assets)?;
    let data_config = DataConfig {
        tokenizer: Some(assets.to_path_buf()),
        train: Some(assets.join("tinystories.txt")),
        eval: None,
        format: DataFormat::Text,
        seq_len: s.seq_len,
        eval_fraction: 0.1,
        ..DataConfig::default()
    };
    let (train, eval) = load_data(&data_config, &tok)?;
    let vocab = tok.vocab_size();
    println!(
        "kd demo: TinyStories slice, {} train / {} held-out blocks of {} tokens, vocabulary {}",
        train.len(),
        eval.len(),
        s.seq_len,
        vocab
    );
    let base = RunConfig { data: data_config, ..RunConfig::default() };
    let device = Device::flex().autodiff();
    let plain = Device::flex();

    // 1. The teacher, trained from scratch on the training split.
    device.seed(1);
    let teacher_init = CausalLm::init(&llama(vocab, s.seq_len, s.teacher), &device)?;
    let teacher_params = teacher_init.num_params();
    println!("[1/5] teacher: {teacher_params} parameters, {} steps", s.teacher_steps);
    let teacher_cfg = RunConfig {
        train: train_config(&s, s.teacher_steps, s.teacher_lr, out.join("teacher"), None),
        student: ModelSource::default(),
        ..base.clone()
    };
    let job = run_job(
        &teacher_cfg,
        "# kd demo teacher\n",
        false,
        false,
        Some(teacher_init),
        None,
        Some((&train, &eval)),
    )?;
    let teacher = CausalLm::from_pretrained(&job.model_dir, &plain)?;
    let mut rows = vec![Row {
        name: "teacher".into(),
        params: teacher_params,
        eval: job.final_eval.clone(),
        seconds: job.report.seconds,
        sample: sample(&teacher, &tok, "Once upon a time")?,
    }];
    let mut curves = vec![("teacher".to_string(), job)];

    // 2-4. One student initialisation, trained three ways.
    device.seed(2);
    let student_init = CausalLm::init(&llama(vocab, s.seq_len, s.student), &device)?;
    let student_params = student_init.num_params();
    let runs: [(&str, &str, Option<&str>); 3] = [
        ("student, no teacher", "student-ce", None),
        ("student, forward KL", "student-fkl", Some("forward_kl")),
        ("student, reverse KL", "student-rkl", Some("reverse_kl")),
    ];
    for (k, (name, dir, loss)) in runs.iter().enumerate() {
        println!("[{}/5] {name}: {student_params} parameters, {} steps", k + 2, s.student_steps);
        let divergence = loss.map(LossConfig::by_name).transpose()?;
        let cfg = RunConfig {
            train: train_config(&s, s.student_steps, s.student_lr, out.join(dir), divergence),
            ..base.clone()
        };
        let job = run_job(
            &cfg,
            &format!("# kd demo {name}\n"),
            loss.is_some(),
            false,
            Some(student_init.clone()),
            loss.map(|_| teacher.clone()),
            Some((&train, &eval)),
        )?;
        let model = CausalLm::from_pretrained(&job.model_dir, &plain)?;
        rows.push(Row {
            name: (*name).into(),
            params: student_params,
            eval: job.final_eval.clone(),
            seconds: job.report.seconds,
            sample: sample(&model, &tok, "Once upon a time")?,
        });
        curves.push(((*name).to_string(), job));
    }

    // Table.
    println!();
    println!("held-out TinyStories ({} tokens), after training:", rows[0].eval.tokens);
    println!("{:<22} {:>9} {:>10} {:>11} {:>8}", "model", "params", "loss", "perplexity", "time");
    for r in &rows {
        println!(
            "{:<22} {:>9} {:>10.4} {:>11.3} {:>7.0}s",
            r.name, r.params, r.eval.loss, r.eval.perplexity, r.seconds
        );
    }
    let ppl = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.eval.perplexity);
    if let (Some(ce), Some(rkl)) = (ppl("student, no teacher"), ppl("student, reverse KL"))
        && rkl > ce
    {
        println!(
            "(reverse KL is mode-seeking: from a random initialisation the student puts its mass \
             on the teacher's most likely tokens and is not pushed to cover the rest, so its \
             perplexity on real text can stay high; MiniLLM applies it after supervised tuning.)"
        );
    }
    println!();
    println!("greedy continuations of \"Once upon a time\":");
    for r in &rows {
        println!("{:<22} \"{}\"", r.name, r.sample);
    }

    // Plot: held-out loss of every run against its step.
    let chart = Chart {
        title: "kd demo: held-out loss".into(),
        x_label: "step".into(),
        y_label: "held-out loss (nats)".into(),
        series: curves
            .iter()
            .map(|(name, job): &(String, JobResult)| Series {
                name: name.clone(),
                points: job.report.evals.iter().map(|e| (e.step as f64, e.loss)).collect(),
            })
            .collect(),
        width: 900,
        height: 560,
    };
    let png = out.join("demo.png");
    chart.write_png(&png)?;
    let summary: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "model": r.name, "params": r.params, "loss": r.eval.loss,
                "perplexity": r.eval.perplexity, "seconds": r.seconds, "sample": r.sample,
            })
        })
        .collect();
    let methods = method_comparison(out, &root, &s)?;
    let summary = serde_json::json!({ "tinystories": summary, "arithmetic": methods });
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!();
    println!(
        "plot {}, per-run metrics/checkpoints/models in {}/ (total {:.0}s)",
        png.display(),
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Part 2: methods on the arithmetic word problems with the shipped teacher: SFT and forward-KL
/// KD from scratch, then GKD and more SFT from the shipped SFT student (what the full
/// comparison in docs/methods.md runs over three seeds, with SeqKD and MiniLLM).
fn method_comparison(out: &Path, root: &Path, s: &Settings) -> Result<Vec<serde_json::Value>> {
    let configs = root.join("crates/kd-cli/configs");
    let sft_student = root.join("crates/kd-cli/assets/arithmetic/student-sft");
    let half = (s.method_steps / 2).max(1);
    let rows: [(&str, &str, u64, bool); 4] = [
        ("SFT, from scratch", "sft", s.method_steps, false),
        ("KD (forward KL), from scratch", "kd", s.method_steps, false),
        ("SFT, from the SFT student", "sft", half, true),
        ("GKD, from the SFT student", "gkd", half, true),
    ];
    println!();
    println!(
        "[5/5] methods on the arithmetic word problems (crates/kd-cli/assets/arithmetic), \
         shipped 4 × 128 teacher, 2 × 64 students"
    );
    let mut results = Vec::new();
    for (k, (name, method, steps, from_sft)) in rows.iter().enumerate() {
        let mut b = ConfigBuilder::from_file(Some(&configs.join(format!("{method}.toml"))))?;
        // The configs' paths are relative to the repository root.
        for key in ["data.tokenizer", "data.train", "data.eval", "teacher.pretrained"] {
            if let Some(v) = b.get_str(key) {
                let abs = root.join(v);
                b.set_value(key, toml::Value::String(abs.display().to_string()))?;
            }
        }
        if *from_sft {
            b.remove("student.init");
            let dir = sft_student.display().to_string();
            b.set_value("student.pretrained", toml::Value::String(dir))?;
        }
        let dir = out.join(format!("arith-{}-{method}", if *from_sft { "ft" } else { "scratch" }));
        b.set_value("train.output_dir", toml::Value::String(dir.display().to_string()))?;
        b.set("train.steps", &steps.to_string())?;
        b.set("train.eval_every", "0")?;
        b.set("train.checkpoint_every", "0")?;
        b.set("train.log_every", &(steps / 4).max(1).to_string())?;
        b.set("train.eval_rouge_prompts", &s.method_eval.to_string())?;
        if s.method_steps < 100 {
            b.set("train.batch_size", "2")?;
            b.set("train.eval_max_new_tokens", "4")?;
            if *method == "gkd" {
                b.set("method.sampling.max_new_tokens", "4")?;
            }
        }
        let config = b.build()?;
        println!("  ({}/4) {name}: {steps} steps", k + 1);
        let job = run_job(&config, &b.to_toml(), true, false, None, None, None)?;
        let e = &job.final_eval;
        results.push(serde_json::json!({
            "run": name, "method": method, "steps": steps, "exact_match": e.exact_match,
            "rouge_l": e.rouge_l, "loss": e.loss, "seconds": job.report.seconds,
        }));
    }
    println!();
    println!(
        "held-out arithmetic ({} problems, greedy): the teacher alone gets 82.3 % (teacher.toml)",
        s.method_eval
    );
    println!(
        "{:<32} {:>6} {:>12} {:>8} {:>7}",
        "student", "steps", "exact match", "ROUGE-L", "time"
    );
    for r in &results {
        println!(
            "{:<32} {:>6} {:>11.1}% {:>8.3} {:>6.0}s",
            r["run"].as_str().unwrap_or(""),
            r["steps"],
            100.0 * r["exact_match"].as_f64().unwrap_or(0.0),
            r["rouge_l"].as_f64().unwrap_or(0.0),
            r["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "(SeqKD and MiniLLM, three seeds each: python3 benches/methods_table.py; docs/methods.md)"
    );
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_demo_runs_end_to_end() {
        let out = std::env::temp_dir().join(format!("kd-demo-quick-{}", std::process::id()));
        run_demo(&out, None, Settings::quick()).unwrap();
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let tiny = summary["tinystories"].as_array().unwrap();
        assert_eq!(tiny.len(), 4);
        assert!(tiny.iter().all(|r| r["perplexity"].as_f64().unwrap().is_finite()));
        let arith = summary["arithmetic"].as_array().unwrap();
        assert_eq!(arith.len(), 4);
        assert!(arith.iter().all(|r| r["exact_match"].as_f64().is_some()));
        assert!(out.join("demo.png").is_file());
        assert!(out.join("student-rkl/model/config.json").is_file());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
