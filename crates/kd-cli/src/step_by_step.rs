//! Distilling step-by-step data: the teacher's rationales and labels (`kd rationale-generate`,
//! and `kd distill --method step_by_step` before it trains), and the two-task training files.
//!
//! Teacher rationales: each training question is put to the teacher after `shots` worked
//! exemplars (the first rows of the training file, as `question\n<rationale> The answer is N.\n`),
//! greedily, a batch of prompts at a time; its answer is parsed into a rationale (the text before
//! "The answer is") and a label (the number after it). Each line of the written JSONL:
//! `{"input", "rationale", "label", "data_label", "teacher_output", "parsed", "fits"}`; beside it,
//! `<file>.provenance.json` names the teacher, the source, the settings and the kd-rs version, and
//! a run whose provenance matches reuses the file.
//!
//! Training files: `<out>/step_by_step_train.jsonl` holds, for every kept example, a
//! `[label] question` → label row and then a `[rationale] question` → rationale row (ready
//! `prompt`s, the data template applied): the pair layout of
//! [`kd_train::methods::step_by_step`]; `<out>/step_by_step_eval.jsonl` holds the label task of
//! the held-out questions with the data's labels.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use kd_models::{CausalLm, Tokenizer};
use kd_train::data::prompt_ids;
use kd_train::exact_match::exact_match;
use kd_train::methods::SpecialTokens;
use kd_train::methods::seqkd::teacher_answers;
use kd_train::methods::step_by_step::{
    Source, StepByStepConfig, StepByStepRow, parse_teacher_output, read_rows, teacher_prompt,
};
use kd_train::rollout::SamplingConfig;
use kd_train::template::{InstructionRow, PromptRenderer};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::Input;
use crate::progress::Progress;
use crate::run::{load_model_as, load_tokenizer, renderer};
use crate::seqkd::{read_provenance, write_jsonl, write_with_provenance};

/// Where the teacher's rationales came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The teacher directory.
    pub teacher: PathBuf,
    /// Its parameter count.
    pub teacher_params: usize,
    /// The file the questions came from.
    pub source: PathBuf,
    /// How many questions.
    pub examples: usize,
    /// Prompt and answer stay within this many tokens.
    pub seq_len: usize,
    /// Few-shot exemplars per prompt.
    pub shots: usize,
    /// Most new tokens per answer.
    pub max_new_tokens: usize,
    /// The prompt template (its debug form).
    pub template: String,
    /// The kd-rs version that wrote it.
    pub kd_version: String,
}

/// One written teacher rationale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherRow {
    /// The question.
    pub input: String,
    /// The teacher's rationale (text before "The answer is").
    pub rationale: String,
    /// The teacher's label (empty when none was parsed).
    pub label: String,
    /// The data's label.
    pub data_label: String,
    /// The teacher's whole answer.
    pub teacher_output: String,
    /// Whether a label was parsed.
    pub parsed: bool,
    /// Whether the prompt fitted within `seq_len` (else the teacher was not asked).
    pub fits: bool,
}

/// What a generation produced.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Questions.
    pub examples: usize,
    /// Answers with a parsed label.
    pub parsed: usize,
    /// Answers whose label equals the data's.
    pub correct: usize,
    /// Prompts that did not fit within `seq_len`.
    pub too_long: usize,
    /// Seconds.
    pub secs: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |n: usize| 100.0 * n as f64 / self.examples.max(1) as f64;
        write!(
            f,
            "{} questions: {} answers parsed ({:.1} %), teacher label = data label for {} \
             ({:.1} %), {} prompts too long; {:.1}s",
            self.examples,
            self.parsed,
            pct(self.parsed),
            self.correct,
            pct(self.correct),
            self.too_long,
            self.secs
        )
    }
}

/// The prompt text of `question` with `prefix` on the instruction, in the data template.
fn render(template: &PromptRenderer, prefix: &str, question: &str) -> Result<String> {
    let row = InstructionRow {
        instruction: format!("{prefix}{question}"),
        context: None,
        response: String::new(),
        templated: false,
    };
    Ok(template.render(&row)?)
}

/// The teacher answers every row of `rows` after the first `settings.shots` rows of `rows` as
/// worked exemplars; writes the rationales and their provenance to `out`.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    teacher: &CausalLm,
    tok: &Tokenizer,
    template: &PromptRenderer,
    rows: &[StepByStepRow],
    settings: &StepByStepConfig,
    seq_len: usize,
    provenance: &Provenance,
    out: &Path,
    device: &Device,
) -> Result<Summary> {
    let start = Instant::now();
    let exemplars = &rows[..settings.shots.min(rows.len())];
    if exemplars.iter().any(|r| r.rationale.is_none()) {
        bail!("the {} few-shot exemplars (the first rows) need a `rationale`", settings.shots);
    }
    let (mut prompts, mut caps, mut which) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in rows.iter().enumerate() {
        let text = teacher_prompt(exemplars, &r.input, |q| render(template, "", q))?;
        let ids = prompt_ids(&text, tok)?;
        if ids.len() + 1 >= seq_len {
            continue;
        }
        caps.push((seq_len - ids.len()).min(settings.max_new_tokens));
        prompts.push(ids);
        which.push(i);
    }
    let tokens = SpecialTokens::of(tok);
    let sampling = SamplingConfig {
        temperature: 0.0,
        max_new_tokens: settings.max_new_tokens,
        ..SamplingConfig::default()
    };
    let mut progress = Progress::new("rationales", prompts.len() as u64, "teacher answers");
    let answers = teacher_answers(
        teacher,
        &prompts,
        &caps,
        &sampling,
        &tokens,
        0,
        settings.generation_batch,
        device,
        |done, _| progress.set(done as u64),
    )?;
    progress.finish();
    let mut out_rows: Vec<TeacherRow> = rows
        .iter()
        .map(|r| TeacherRow {
            input: r.input.clone(),
            rationale: String::new(),
            label: String::new(),
            data_label: r.label.clone(),
            teacher_output: String::new(),
            parsed: false,
            fits: false,
        })
        .collect();
    for (i, a) in which.into_iter().zip(&answers) {
        let text = tok.decode(a, true)?;
        let (rationale, label) = parse_teacher_output(&text);
        let row = &mut out_rows[i];
        row.fits = true;
        row.parsed = label.is_some();
        row.rationale = rationale;
        row.label = label.unwrap_or_default();
        row.teacher_output = text.trim().to_string();
    }
    write_with_provenance(out, &out_rows, provenance)?;
    Ok(Summary {
        examples: rows.len(),
        parsed: out_rows.iter().filter(|r| r.parsed).count(),
        correct: out_rows
            .iter()
            .filter(|r| r.parsed && exact_match(&r.label, &r.data_label))
            .count(),
        too_long: out_rows.iter().filter(|r| !r.fits).count(),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Reads a rationale file written by [`generate`].
fn read_teacher_rows(path: &Path) -> Result<Vec<TeacherRow>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a rationale row", path.display(), i + 1))
        })
        .collect()
}

/// The teacher's rationales for `rows` (all the training rows): generated into
/// `settings.rationale_file` (default `<out>/rationales.jsonl`), or reused when its provenance
/// matches.
fn teacher_rows(
    config: &RunConfig,
    settings: &StepByStepConfig,
    rows: &[StepByStepRow],
    source: &Path,
    out: &Path,
) -> Result<Vec<TeacherRow>> {
    let tok_path = config.data.tokenizer.clone().context("set data.tokenizer").input()?;
    let tok = load_tokenizer(&tok_path).input()?;
    let template = renderer(&config.data).input()?;
    let plain =
        config.run.teacher_device.as_ref().unwrap_or(&config.run.device).device().input()?;
    let precision = config.train.teacher_dtype.unwrap_or(config.train.dtype);
    let teacher = load_model_as(&config.teacher, "teacher", &plain, precision).input()?;
    let provenance = Provenance {
        teacher: config.teacher.pretrained.clone().unwrap_or_else(|| PathBuf::from("<init>")),
        teacher_params: teacher.num_params(),
        source: source.to_path_buf(),
        examples: rows.len(),
        seq_len: config.data.seq_len,
        shots: settings.shots,
        max_new_tokens: settings.max_new_tokens,
        template: format!("{:?}", config.data.template),
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let path = settings.rationale_file.clone().unwrap_or_else(|| out.join("rationales.jsonl"));
    if read_provenance(&path).as_ref() == Some(&provenance) {
        log::info!("step_by_step: reusing the teacher's rationales in {}", path.display());
    } else {
        log::info!("step_by_step: the teacher answers {} training questions", rows.len());
        let s = generate(
            &teacher,
            &tok,
            &template,
            rows,
            settings,
            config.data.seq_len,
            &provenance,
            &path,
            &plain,
        )?;
        log::info!("step_by_step: {s} -> {}", path.display());
    }
    let t = read_teacher_rows(&path)?;
    if t.len() != rows.len() || t.iter().zip(rows).any(|(a, b)| a.input != b.input) {
        bail!("{}: its questions are not those of {}", path.display(), source.display());
    }
    Ok(t)
}

/// Writes `rows` as ready-prompt JSONL.
fn write_prompts(path: &Path, rows: &[(String, String)]) -> Result<()> {
    let rows: Vec<_> =
        rows.iter().map(|(p, r)| serde_json::json!({"prompt": p, "response": r})).collect();
    write_jsonl(path, &rows)
}

/// `kd distill --method step_by_step`: the two-task training file and the label-task held-out
/// file in `out` (teacher rationales generated or reused first when a source is `teacher`).
/// Returns the config to train with.
pub fn prepare(config: &RunConfig, settings: &StepByStepConfig, out: &Path) -> Result<RunConfig> {
    let mut config = config.clone();
    let source = config.data.train.clone().context("no training data: set data.train").input()?;
    let mut rows = read_rows(&source).input()?;
    let held_out = match &config.data.eval {
        Some(p) => read_rows(p).input()?,
        None => {
            let k = kd_train::data::tail_len(rows.len(), config.data.eval_fraction);
            rows.split_off(rows.len() - k)
        }
    };
    let teacher = if settings.uses_teacher_outputs() {
        Some(teacher_rows(&config, settings, &rows, &source, out)?)
    } else {
        None
    };
    let template = renderer(&config.data).input()?;
    let kept = settings.rows_kept(rows.len());
    let (mut pairs, mut dropped) = (Vec::new(), 0);
    for (i, r) in rows.iter().take(kept).enumerate() {
        let t = teacher.as_ref().map(|t| &t[i]);
        let label = match (settings.labels, t) {
            (Source::Teacher, Some(t)) if t.parsed => t.label.clone(),
            (Source::Teacher, _) => {
                dropped += 1; // the teacher gave no label: the example is left out
                continue;
            }
            (Source::Data, _) => r.label.clone(),
        };
        let rationale = match (settings.rationales, t) {
            (Source::Teacher, Some(t)) if t.parsed => t.rationale.clone(),
            (Source::Teacher, _) => {
                dropped += 1;
                continue;
            }
            (Source::Data, _) => r.rationale.clone().with_context(|| {
                format!(
                    "{}: row {} has no `rationale` (rationales = \"data\")",
                    source.display(),
                    i + 1
                )
            })?,
        };
        pairs.push((render(&template, &settings.label_prefix, &r.input)?, label));
        pairs.push((render(&template, &settings.rationale_prefix, &r.input)?, rationale));
    }
    if pairs.is_empty() {
        bail!("step_by_step: no training example left ({dropped} without a teacher answer)");
    }
    log::info!(
        "step_by_step: {} of {} training examples (train_fraction {}), {dropped} left out for want \
         of a parsed teacher answer; labels from {:?}, rationales from {:?}",
        pairs.len() / 2,
        rows.len(),
        settings.train_fraction,
        settings.labels,
        settings.rationales
    );
    let eval: Vec<(String, String)> = held_out
        .iter()
        .map(|r| Ok((render(&template, &settings.label_prefix, &r.input)?, r.label.clone())))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(out)?;
    let (train_path, eval_path) =
        (out.join("step_by_step_train.jsonl"), out.join("step_by_step_eval.jsonl"));
    write_prompts(&train_path, &pairs)?;
    write_prompts(&eval_path, &eval)?;
    config.data.train = Some(train_path);
    config.data.eval = Some(eval_path);
    Ok(config)
}

/// `kd eval --task-prefix P`: the held-out label task of step-by-step rows (`input` or
/// `instruction`, `label`) as instruction examples (`P question` → label).
pub fn label_task_examples(
    path: &Path,
    template: &PromptRenderer,
    prefix: &str,
) -> Result<Vec<kd_train::data::InstructionExample>> {
    read_rows(path)
        .input()?
        .iter()
        .map(|r| {
            Ok(kd_train::data::InstructionExample {
                prompt: render(template, prefix, &r.input)?,
                response: r.label.clone(),
            })
        })
        .collect()
}
