//! Building models, tokenizers and data sets from a [`RunConfig`], and running one training or
//! distillation job.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use kd_models::{CausalLm, ModelConfig, Tokenizer};
use kd_train::data::{
    InstructionExample, TokenDataset, instruction_blocks, pack_tokens, read_instruction_jsonl,
    split_documents, tokenize_documents,
};
use kd_train::methods::SpecialTokens;
use kd_train::methods::cross_tokenizer::{
    CrossTokenizerConfig, TeacherDataset, cross_tokenizer_data,
};
use kd_train::methods::kd::KdConfig;
use kd_train::methods::seqkd::SeqKdConfig;
use kd_train::text_views::{NameTokens, anchored_views, counterfactual_views};
use kd_train::{EvalRecord, MethodConfig, Precision, RougeEval, TrainReport, Trainer};

use crate::config::{DataConfig, DataFormat, ModelSource, RunConfig, toml_to_json};
use crate::error::Input;
use crate::plot::{Chart, Series, write_png_stack};
use crate::progress::{self, Progress};
use crate::seqkd;
use kd_train::template::PromptRenderer;

/// Loads the tokenizer named by the data config (a directory with `tokenizer.json`, or the file).
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let tok = if path.is_dir() { Tokenizer::from_dir(path) } else { Tokenizer::from_file(path) };
    tok.with_context(|| format!("loading tokenizer {}", path.display()))
}

fn format_of(path: &Path, format: DataFormat) -> DataFormat {
    match format {
        DataFormat::Auto if path.extension().is_some_and(|e| e == "jsonl") => {
            DataFormat::Instruction
        }
        DataFormat::Auto => DataFormat::Text,
        f => f,
    }
}

/// The prompt template of the data config, ready to render (`chat` reads the tokenizer's
/// `tokenizer_config.json`).
pub fn renderer(data: &DataConfig) -> Result<PromptRenderer> {
    Ok(PromptRenderer::new(&data.template, data.tokenizer.as_deref())?)
}

/// Tokenises one data file into blocks (instruction prompts rendered with `template`).
pub fn load_blocks(
    path: &Path,
    format: DataFormat,
    template: &PromptRenderer,
    tok: &Tokenizer,
    seq_len: usize,
) -> Result<TokenDataset> {
    let blocks = match format_of(path, format) {
        DataFormat::Instruction => {
            let ex = read_instruction_jsonl(path, template)?;
            instruction_blocks(&ex, tok, seq_len)?
        }
        _ => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let docs = split_documents(&text);
            pack_tokens(&tokenize_documents(&docs, tok)?, seq_len)
        }
    };
    Ok(TokenDataset::new(&path.display().to_string(), blocks)?)
}

/// The instruction examples of `path` as the data config reads them (template applied).
pub fn instruction_examples(data: &DataConfig, path: &Path) -> Result<Vec<InstructionExample>> {
    Ok(read_instruction_jsonl(path, &renderer(data)?)?)
}

/// Train and held-out sets from the data config.
pub fn load_data(data: &DataConfig, tok: &Tokenizer) -> Result<(TokenDataset, TokenDataset)> {
    let Some(train_path) = &data.train else {
        bail!("no training data: set data.train (or --data FILE)");
    };
    let template = renderer(data)?;
    let train = load_blocks(train_path, data.format, &template, tok, data.seq_len)?;
    match &data.eval {
        Some(p) => Ok((train, load_blocks(p, data.format, &template, tok, data.seq_len)?)),
        None => Ok(train.split_off_tail(data.eval_fraction)),
    }
}

/// The instruction examples behind the held-out blocks of [`load_data`] (one block per example):
/// all of `data.eval`, or the last `eval_blocks` of `data.train`. `None` for text data.
pub fn held_out_examples(
    data: &DataConfig,
    eval_blocks: usize,
) -> Result<Option<Vec<InstructionExample>>> {
    let Some(train) = &data.train else {
        return Ok(None);
    };
    let path = data.eval.as_ref().unwrap_or(train);
    if format_of(path, data.format) != DataFormat::Instruction {
        return Ok(None);
    }
    let mut examples = instruction_examples(data, path)?;
    if data.eval.is_none() {
        examples = examples.split_off(examples.len().saturating_sub(eval_blocks));
    }
    Ok(Some(examples))
}

/// The settings of a `cross_tokenizer` run (`None` for other methods, which must not set
/// `teacher.tokenizer`); `student.tokenizer` is refused (the student reads `data.tokenizer`).
fn cross_tokenizer_method(
    config: &RunConfig,
    method: &MethodConfig,
) -> Result<Option<CrossTokenizerConfig>> {
    if config.student.tokenizer.is_some() {
        bail!("student.tokenizer is not a setting: the student reads data.tokenizer");
    }
    match method {
        MethodConfig::CrossTokenizer(c) => Ok(Some(c.clone())),
        _ if config.teacher.tokenizer.is_some() => bail!(
            "teacher.tokenizer is read by method cross_tokenizer only (this run: {})",
            method.name()
        ),
        _ => Ok(None),
    }
}

/// The teacher's own tokenizer for `cross_tokenizer`: `teacher.tokenizer`, else the
/// `tokenizer.json` (and its side files) of `teacher.pretrained`.
pub fn teacher_tokenizer(config: &RunConfig) -> Result<Tokenizer> {
    if let Some(path) = &config.teacher.tokenizer {
        return load_tokenizer(path);
    }
    match &config.teacher.pretrained {
        Some(dir) if dir.join("tokenizer.json").is_file() => load_tokenizer(dir),
        Some(dir) => bail!(
            "cross_tokenizer needs the teacher's own tokenizer: {} has no tokenizer.json; set \
             teacher.tokenizer = DIR",
            dir.display()
        ),
        None => bail!("cross_tokenizer needs the teacher's own tokenizer: set teacher.tokenizer"),
    }
}

/// Train and held-out sets of a `cross_tokenizer` run: the student's blocks (as [`load_data`]
/// makes them) and the teacher's own tokenization of the same rows with the paired positions
/// ([`cross_tokenizer_data`]). Instruction data only.
pub fn cross_tokenizer_sets(
    config: &RunConfig,
    method: &CrossTokenizerConfig,
    tok: &Tokenizer,
) -> Result<((TokenDataset, TokenDataset), (TeacherDataset, TeacherDataset))> {
    let data = &config.data;
    let Some(train_path) = &data.train else {
        bail!("no training data: set data.train (or --data FILE)");
    };
    let teacher_tok = teacher_tokenizer(config)?;
    let teacher_len = method.teacher_seq_len.unwrap_or(data.seq_len);
    let build = |path: &Path| -> Result<(TokenDataset, TeacherDataset)> {
        if format_of(path, data.format) != DataFormat::Instruction {
            bail!(
                "cross_tokenizer aligns prompt/response rows: {} is not instruction data",
                path.display()
            );
        }
        let examples = instruction_examples(data, path)?;
        let what = path.display().to_string();
        let (s, t) = cross_tokenizer_data(
            &what,
            &examples,
            tok,
            &teacher_tok,
            data.seq_len,
            teacher_len,
            method.alignment,
        )?;
        log::info!(
            "cross_tokenizer: {what}: {} of {} student response tokens paired with the teacher's \
             ({:?} alignment)",
            t.total_pairs(),
            s.blocks.iter().map(|b| b.counted()).sum::<usize>(),
            method.alignment
        );
        Ok((s, t))
    };
    let (train, train_teacher) = build(train_path)?;
    match &data.eval {
        Some(p) => {
            let (eval, eval_teacher) = build(p)?;
            Ok(((train, eval), (train_teacher, eval_teacher)))
        }
        None => {
            let (train, eval) = train.split_off_tail(data.eval_fraction);
            let (train_teacher, eval_teacher) = train_teacher.split_off_tail(data.eval_fraction);
            Ok(((train, eval), (train_teacher, eval_teacher)))
        }
    }
}

/// Builds a model from its source on `device`, in `f32`.
pub fn load_model(source: &ModelSource, what: &str, device: &Device) -> Result<CausalLm> {
    load_model_as(source, what, device, Precision::F32)
}

/// Builds a model from its source on `device` with its parameters in `precision` (a checkpoint
/// is memory-mapped and converted tensor by tensor: no `f32` copy of a half-precision teacher).
pub fn load_model_as(
    source: &ModelSource,
    what: &str,
    device: &Device,
    precision: Precision,
) -> Result<CausalLm> {
    match (&source.pretrained, &source.init) {
        (Some(dir), None) => {
            let options =
                kd_models::load::LoadOptions::default().with_dtype(precision.float_dtype());
            CausalLm::from_pretrained_with(dir, &options, device)
                .with_context(|| format!("loading {what} from {}", dir.display()))
        }
        (None, Some(init)) if precision.is_half() => {
            Ok(load_model_as(source, what, device, Precision::F32)?
                .cast_params(precision.float_dtype()))
        }
        (None, Some(init)) => {
            let json = toml_to_json(init)?;
            let config = ModelConfig::from_json(&json)
                .with_context(|| format!("{what}.init is not a valid config.json body"))?;
            Ok(CausalLm::init(&config, device)?)
        }
        (Some(_), Some(_)) => bail!("{what}: set either `pretrained` or `init`, not both"),
        (None, None) => bail!("{what}: set `{what}.pretrained = DIR` or a `[{what}.init]` table"),
    }
}

/// Checks that the teacher directory's own `tokenizer.json` (when it has one) gives every token
/// of the data tokenizer the same id: token-level distillation compares the two models' logits
/// id by id, so two different tokenizers of the same size would be distilled into nonsense
/// without any error. Extra teacher tokens (a larger vocabulary) are allowed.
pub fn check_teacher_tokenizer(
    data_tok: &Tokenizer,
    data_path: &Path,
    teacher: &Path,
) -> Result<()> {
    let path = teacher.join("tokenizer.json");
    if !path.is_file() {
        return Ok(());
    }
    let teacher_tok = load_tokenizer(&path)?;
    let ours = data_tok.inner().get_vocab(true);
    let theirs = teacher_tok.inner().get_vocab(true);
    let differ: Vec<&String> =
        ours.iter().filter(|(t, id)| theirs.get(*t) != Some(id)).map(|(t, _)| t).collect();
    if differ.is_empty() {
        return Ok(());
    }
    let mut examples: Vec<&str> = differ.iter().map(|t| t.as_str()).collect();
    examples.sort_unstable();
    examples.truncate(3);
    bail!(
        "the teacher's tokenizer {} differs from data.tokenizer {}: {} of its {} tokens are \
         missing or have other ids (e.g. {:?}); token-level distillation needs one tokenizer \
         (for a teacher with its own tokenizer, use method cross_tokenizer)",
        path.display(),
        data_path.display(),
        differ.len(),
        ours.len(),
        examples
    )
}

/// Copies the tokenizer files next to an exported model so the directory is self-contained.
pub fn copy_tokenizer(tokenizer: &Path, dir: &Path) -> Result<()> {
    let files = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];
    let src_dir = if tokenizer.is_dir() {
        tokenizer.to_path_buf()
    } else {
        tokenizer.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    for f in files {
        let src = src_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f))
                .with_context(|| format!("copying {} to {}", src.display(), dir.display()))?;
        }
    }
    Ok(())
}

/// The student's `config.json`, written into the output directory so that `kd export` can turn
/// any checkpoint there into a Hugging Face directory.
pub const STUDENT_CONFIG: &str = "student_config.json";

/// Turns a checkpoint directory (`<out>/checkpoint-N`) into a Hugging Face directory, using
/// `<out>/student_config.json` (or `config`) for the architecture.
pub fn export_checkpoint(checkpoint: &Path, config: Option<&Path>, out: &Path) -> Result<()> {
    let config_path = match config {
        Some(c) => c.to_path_buf(),
        None => checkpoint
            .parent()
            .map(|p| p.join(STUDENT_CONFIG))
            .context("checkpoint has no parent directory")?,
    };
    let model_config = ModelConfig::from_file(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))
        .input()?;
    let device = Device::flex();
    let model = CausalLm::init(&model_config, &device)?;
    let ck = kd_train::Checkpoint::load(checkpoint).input()?;
    let model = kd_train::params::load_param_values(model, &ck.model)
        .map_err(|errs| {
            anyhow::anyhow!(
                "checkpoint {} does not fit {}: {}",
                checkpoint.display(),
                config_path.display(),
                errs.join("; ")
            )
        })
        .input()?;
    model.save_pretrained(out)?;
    Ok(())
}

/// What one job produced.
#[derive(Debug)]
pub struct JobResult {
    /// The run's report.
    pub report: TrainReport,
    /// Final held-out evaluation.
    pub final_eval: EvalRecord,
    /// The exported Hugging Face directory of the student.
    pub model_dir: PathBuf,
}

/// The method of a run: `[method]` (or `[train.method]`), else `sft` for `kd train` and `kd`
/// (forward KL) for `kd distill`. `kd train` runs only `sft`.
pub fn resolve_method(config: &RunConfig, distill: bool) -> Result<MethodConfig> {
    let in_train = config.train.method != MethodConfig::default();
    let method = match (&config.method, in_train) {
        (Some(_), true) => bail!("set the method once: [method] or [train.method], not both"),
        (Some(m), false) => m.clone(),
        (None, true) => config.train.method.clone(),
        (None, false) if distill => MethodConfig::Kd(KdConfig::default()),
        (None, false) => MethodConfig::default(),
    };
    if !distill && method.name() != "sft" {
        bail!(
            "`kd train` trains without a teacher (method sft); run `kd distill --method {}`",
            method.name()
        );
    }
    Ok(method)
}

/// SeqKD from the command line: the teacher's answers to the training prompts as a dataset
/// (`<out>/seqkd_train.jsonl`, reused when its provenance matches), and the held-out examples
/// beside it when they came from the training file. Returns the config to train with.
fn prepare_seqkd(config: &RunConfig, settings: &SeqKdConfig, out: &Path) -> Result<RunConfig> {
    let mut config = config.clone();
    if let Some(path) = &settings.dataset {
        config.data.train = Some(path.clone());
        return Ok(config);
    }
    let tok_path = config.data.tokenizer.clone().context("set data.tokenizer").input()?;
    let tok = load_tokenizer(&tok_path).input()?;
    let source = config.data.train.clone().context("no training data: set data.train").input()?;
    let mut examples = instruction_examples(&config.data, &source).input()?;
    if config.data.eval.is_none() {
        // The held-out tail, as `load_data` splits it (one block per example).
        let k = kd_train::data::tail_len(examples.len(), config.data.eval_fraction);
        let held_out = examples.split_off(examples.len() - k);
        let eval_path = out.join("seqkd_eval.jsonl");
        let mut text = String::new();
        for ex in &held_out {
            let row = serde_json::json!({"prompt": ex.prompt, "response": ex.response});
            text.push_str(&row.to_string());
            text.push('\n');
        }
        std::fs::write(&eval_path, text)?;
        config.data.eval = Some(eval_path);
    }
    let teacher_dir = config.teacher.pretrained.clone();
    let plain =
        config.run.teacher_device.as_ref().unwrap_or(&config.run.device).device().input()?;
    let precision = config.train.teacher_dtype.unwrap_or(config.train.dtype);
    let teacher = load_model_as(&config.teacher, "teacher", &plain, precision).input()?;
    let provenance = seqkd::Provenance {
        teacher: teacher_dir.unwrap_or_else(|| PathBuf::from("<init>")),
        teacher_params: teacher.num_params(),
        source: source.clone(),
        examples: examples.len(),
        seq_len: config.data.seq_len,
        settings: settings.clone(),
        kd_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let path = out.join("seqkd_train.jsonl");
    if seqkd::read_provenance(&path).as_ref() == Some(&provenance) {
        log::info!("seqkd: reusing the teacher answers in {}", path.display());
    } else {
        log::info!("seqkd: the teacher answers {} training prompts", examples.len());
        let (n, tokens, secs) = seqkd::generate(
            &teacher,
            &tok,
            &examples,
            settings,
            config.data.seq_len,
            &provenance,
            &path,
            &plain,
        )?;
        log::info!(
            "seqkd: {n} examples, {tokens} answer tokens in {secs:.1}s ({:.0} tokens/s) -> {}",
            tokens as f64 / secs.max(1e-9),
            path.display()
        );
    }
    config.data.train = Some(path);
    Ok(config)
}

/// Runs `kd train` (no teacher) or `kd distill` (with one) from a full config, writing into
/// `train.output_dir`: `metrics.jsonl`, `checkpoint-*`, `loss.png`, `run.toml` and the final
/// student as a Hugging Face directory `model/` (with the method's own trained parameters, if
/// any, beside it: `model/feature_projections.safetensors` for `feature`). The method is
/// [`resolve_method`]'s.
pub fn run_job(
    config: &RunConfig,
    config_text: &str,
    distill: bool,
    resume: bool,
    student: Option<CausalLm>,
    teacher: Option<CausalLm>,
    data: Option<(&TokenDataset, &TokenDataset)>,
) -> Result<JobResult> {
    let plain = config.run.device.device().input()?;
    let device = plain.clone().autodiff();
    let teacher_device = match &config.run.teacher_device {
        Some(d) => d.device().input()?,
        None => plain.clone(),
    };
    device.seed(config.train.seed);
    let mut method = resolve_method(config, distill).input()?;
    let stored_teacher = crate::offline::open_for_run(config, &mut method).input()?;
    let out =
        config.train.output_dir.clone().context("set train.output_dir (or --out DIR)").input()?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("run.toml"), config_text)?;
    // What ran where, beside the metrics.
    let environment = serde_json::json!({
        "device": config.run.device.to_string(),
        "teacher_device": config.run.teacher_device.as_ref().unwrap_or(&config.run.device).to_string(),
        "dtype": config.train.dtype.name(),
        "teacher_dtype": config.train.teacher_dtype.unwrap_or(config.train.dtype).name(),
        "kd_version": env!("CARGO_PKG_VERSION"),
    });
    std::fs::write(
        out.join("environment.json"),
        serde_json::to_string_pretty(&environment)? + "\n",
    )?;
    let prepared_config;
    let config = match &mut method {
        MethodConfig::SeqKd(s) if data.is_none() => {
            prepared_config = prepare_seqkd(config, s, &out)?;
            s.dataset = prepared_config.data.train.clone();
            &prepared_config
        }
        MethodConfig::StepByStep(s) if data.is_none() => {
            prepared_config = crate::step_by_step::prepare(config, s, &out)?;
            &prepared_config
        }
        _ => config,
    };
    log::info!("method: {}", method.name());
    let tok_path = config.data.tokenizer.clone();
    let tok = tok_path.as_ref().map(|p| load_tokenizer(p)).transpose().input()?;
    let cross = cross_tokenizer_method(config, &method).input()?;

    let owned;
    let mut rouge = None;
    let mut teacher_data = None;
    let (train, eval) = match data {
        Some(_) if cross.is_some() => {
            bail!("cross_tokenizer tokenizes the data files itself: run it from data.train")
        }
        Some(d) => d,
        None => {
            let tok = tok.as_ref().context("set data.tokenizer").input()?;
            owned = match &cross {
                Some(c) => {
                    let (student, teacher) = cross_tokenizer_sets(config, c, tok).input()?;
                    teacher_data = Some(teacher);
                    student
                }
                None => load_data(&config.data, tok).input()?,
            };
            // Instruction data: ROUGE-L of greedy answers at every evaluation.
            if config.train.eval_rouge_prompts > 0
                && let Some(examples) = held_out_examples(&config.data, owned.1.len()).input()?
            {
                rouge = Some(RougeEval::new(&examples, tok.clone()).input()?);
            }
            (&owned.0, &owned.1)
        }
    };
    log::info!(
        "data: {} train blocks, {} held-out blocks of {} tokens",
        train.len(),
        eval.len(),
        train.seq_len()
    );
    let student = match student {
        Some(s) => s,
        None => load_model(&config.student, "student", &device).input()?,
    };
    log::info!("model to train: {} parameters", student.num_params());
    let config_json = serde_json::to_string_pretty(&student.config().to_json())?;
    std::fs::write(out.join(STUDENT_CONFIG), config_json)?;
    // The plain-text corpus of language-modelling terms (MiniLLM's PT loss), when given.
    let pt_data = match &config.data.pt {
        Some(path) => {
            let tok = tok.as_ref().context("set data.tokenizer").input()?;
            let template = renderer(&config.data).input()?;
            let blocks = load_blocks(path, DataFormat::Text, &template, tok, config.data.seq_len);
            Some(blocks.input()?)
        }
        None => None,
    };
    // WHP's causal intervention: the names' token ids under this tokenizer, and the views.
    let mut counterfactual_names = None;
    if let MethodConfig::Whp(w) = &mut method
        && let Some(iv) = w.intervention.as_mut()
    {
        let tok = tok.as_ref().context("whp's intervention needs data.tokenizer").input()?;
        let names = iv.replacement_names().input()?;
        iv.tokens = Some(NameTokens::of(tok, &iv.target, &names).input()?);
        counterfactual_names = Some((iv.target.clone(), names, iv.min_match));
    }
    let train_config = kd_train::TrainConfig { method: method.clone(), ..config.train.clone() };
    let mut trainer =
        Trainer::new(train_config, student, &device).input()?.on_event(progress::train_observer());
    log::info!(
        "student on {} computing in {} (f32 master weights)",
        config.run.device,
        config.train.dtype
    );
    if let Some(tok) = &tok {
        let SpecialTokens { eos_ids, pad_id } = SpecialTokens::of(tok);
        trainer = trainer.with_special_tokens(eos_ids, pad_id);
    }
    if let Some(pt) = pt_data {
        log::info!("PT corpus: {} blocks", pt.len());
        trainer = trainer.with_pt_data(pt);
    }
    if let Some(stored) = stored_teacher {
        if config.teacher != Default::default() {
            log::info!("teacher: not loaded (training from the stored teacher logits)");
        }
        trainer = trainer.with_teacher_logits(stored).input()?;
    } else if trainer.uses_teacher() {
        if let (Some(tok), Some(dir), None) = (&tok, &config.teacher.pretrained, &cross) {
            check_teacher_tokenizer(tok, tok_path.as_deref().unwrap_or(Path::new("")), dir)
                .input()?;
        }
        let teacher = match teacher {
            Some(t) => t,
            None => {
                let precision = config.train.teacher_dtype.unwrap_or(config.train.dtype);
                load_model_as(&config.teacher, "teacher", &teacher_device, precision).input()?
            }
        };
        log::info!("teacher: {} parameters", teacher.num_params());
        let batch = config.train.batch_size;
        // A teacher with its own tokenizer is evaluated on its own tokens of the held-out set.
        let teacher_eval_set = teacher_data.as_ref().map_or(eval, |(_, e)| &e.blocks);
        let teacher_eval = evaluate_with_progress(
            &teacher,
            teacher_eval_set,
            batch,
            &teacher_device,
            "teacher eval",
        );
        log::info!(
            "teacher held-out: loss {:.4}  ppl {:.3}",
            teacher_eval.loss,
            teacher_eval.perplexity
        );
        trainer = trainer.with_teacher_on(teacher, &teacher_device).input()?;
        if let Some((train_teacher, _)) = teacher_data.take() {
            trainer = trainer.with_teacher_data(train_teacher);
        }
        log::info!(
            "teacher on {} in {}",
            config.run.teacher_device.as_ref().unwrap_or(&config.run.device),
            trainer.teacher_precision()
        );
    }
    trainer = crate::ensemble::apply(config, trainer, &teacher_device, train).input()?;
    let delta = matches!(&method, MethodConfig::Kd(k) if k.is_delta_kd());
    let whp = matches!(&method, MethodConfig::Whp(_));
    let has_base =
        config.base_teacher != Default::default() || config.base_student != Default::default();
    if let Some((target, names, min_match)) = &counterfactual_names {
        let tok = tok.as_ref().context("whp's intervention needs data.tokenizer").input()?;
        let pad = SpecialTokens::of(tok).pad_id;
        let (views, stats) =
            counterfactual_views(train, tok, target, names, *min_match, pad).input()?;
        log::info!(
            "whp intervention: {} replaced by {} names ({}); {} of {} blocks mention it; {} of \
             {} counted positions paired in every copy ({:.1} %)",
            target,
            names.len(),
            names.join(", "),
            stats.rewritten_blocks,
            train.len(),
            stats.paired,
            stats.counted,
            100.0 * stats.paired as f64 / stats.counted.max(1) as f64
        );
        trainer = trainer.with_teacher_data(views);
        if has_base {
            return Err(anyhow::anyhow!(
                "whp's intervention uses no baseline or base student: [teacher] is the model to \
                 unlearn; remove [base_teacher] / [base_student]"
            ))
            .input();
        }
    } else if whp {
        // WHP: the base teacher is the baseline the reinforced teacher was fine-tuned from.
        let precision = config.train.teacher_dtype.unwrap_or(config.train.dtype);
        if config.base_teacher == Default::default() {
            return Err(anyhow::anyhow!(
                "whp needs the baseline model: set [base_teacher] pretrained = DIR \
                 (or --base-teacher DIR); [teacher] is the reinforced model"
            ))
            .input();
        }
        let bt =
            load_model_as(&config.base_teacher, "baseline", &teacher_device, precision).input()?;
        log::info!("whp baseline: {} parameters", bt.num_params());
        trainer = trainer.with_base_models_on(bt.clone(), bt, &teacher_device).input()?;
        if let MethodConfig::Whp(w) = &method
            && let Some(anchors) = &w.anchors
        {
            // WHP's anchored terms: the baseline reads each block translated.
            let tok = tok.as_ref().context("whp's anchors need data.tokenizer").input()?;
            let terms = anchors.load().input()?;
            let pad = SpecialTokens::of(tok).pad_id;
            let (views, stats) =
                anchored_views(train, tok, &terms, anchors.alignment(), pad).input()?;
            log::info!(
                "whp anchors: {} terms; {} of {} blocks translated ({} cut to the block length); \
                 {} of {} counted positions aligned ({:.1} %)",
                terms.len(),
                stats.rewritten_blocks,
                train.len(),
                stats.truncated,
                stats.paired,
                stats.counted,
                100.0 * stats.paired as f64 / stats.counted.max(1) as f64
            );
            trainer = trainer.with_teacher_data(views);
        }
    } else if delta {
        let precision = config.train.teacher_dtype.unwrap_or(config.train.dtype);
        if config.base_teacher == Default::default() {
            return Err(anyhow::anyhow!(
                "delta_kd needs the teacher's base model: set [base_teacher] pretrained = DIR \
                 (or --base-teacher DIR)"
            ))
            .input();
        }
        let student_source = if config.base_student != Default::default() {
            &config.base_student
        } else if config.student.pretrained.is_some() {
            &config.student
        } else {
            return Err(anyhow::anyhow!(
                "delta_kd needs the student's base model: set [base_student] pretrained = DIR \
                 (or --base-student DIR), or start the student from [student] pretrained"
            ))
            .input();
        };
        let bt = load_model_as(&config.base_teacher, "base teacher", &teacher_device, precision)
            .input()?;
        let bs =
            load_model_as(student_source, "base student", &teacher_device, precision).input()?;
        log::info!(
            "delta_kd base models: teacher {} and student {} parameters, on {}",
            bt.num_params(),
            bs.num_params(),
            config.run.teacher_device.as_ref().unwrap_or(&config.run.device)
        );
        trainer = trainer.with_base_models_on(bt, bs, &teacher_device).input()?;
    } else if has_base {
        return Err(anyhow::anyhow!(
            "[base_teacher]/[base_student] are the base models of Delta-KD and WHP; this run is \
             neither (set method.divergence.loss = \"delta_kd\", --loss delta_kd, or --method whp)"
        ))
        .input();
    }
    if let Some(r) = rouge {
        log::info!(
            "every evaluation: ROUGE-L of greedy answers (≤ {} new tokens) to {} held-out prompts",
            config.train.eval_max_new_tokens,
            config.train.eval_rouge_prompts.min(r.len())
        );
        trainer = trainer.with_rouge_eval(r);
    }
    if resume {
        trainer.resume_latest(&out).input()?;
    }
    let report = match trainer.fit(train, Some(eval)) {
        Err(e) if e.is_input() => return Err(e).input(),
        report => report?,
    };
    let final_eval = match report.evals.last() {
        Some(e) => e.clone(),
        None => trainer.evaluate(eval)?,
    };
    plot_run(&out.join("loss.png"), &report, &format!("training ({})", method.name()))?;
    let model_dir = out.join("model");
    // A method's own trained parameters (the `feature` method's projections) beside the student.
    if let Some(p) = trainer.save_method_params(&model_dir)? {
        log::info!("method parameters saved to {}", p.display());
    }
    let student = trainer.into_student();
    // Exported in the precision it was trained in (checkpoints keep the f32 master weights).
    student
        .save_pretrained_as(&model_dir, config.train.dtype.float_dtype())
        .with_context(|| format!("exporting the student to {}", model_dir.display()))?;
    if let Some(t) = &tok_path {
        copy_tokenizer(t, &model_dir)?;
    }
    log::info!("student exported to {}", model_dir.display());
    Ok(JobResult { report, final_eval, model_dir })
}

/// Held-out loss and perplexity of `model` on `data` ([`kd_train::evaluate_with`]) with
/// [`Progress`] (`what` names it).
pub fn evaluate_with_progress(
    model: &CausalLm,
    data: &TokenDataset,
    batch_size: usize,
    device: &Device,
    what: &str,
) -> EvalRecord {
    let mut progress = Progress::new(what, data.len() as u64, "blocks");
    let r = kd_train::evaluate_with(model, data, batch_size, None, device, |done| {
        progress.set(done as u64)
    });
    progress.finish();
    r
}

/// Examples per generation batch of [`rouge_eval`].
const ROUGE_BATCH: usize = 16;

/// Mean ROUGE-L F1 and exact-match accuracy of greedy answers to the first `n` prompts against
/// their references, the same measurement as the training loop's ([`RougeEval`]): prompt and
/// answer within `max_len` tokens, a batch of prompts at a time with [`Progress`]. Returns the
/// scores and the number of examples scored.
pub fn rouge_eval(
    model: &CausalLm,
    tok: &Tokenizer,
    examples: &[InstructionExample],
    n: usize,
    max_new_tokens: usize,
    max_len: usize,
    device: &Device,
) -> Result<(Option<kd_train::rouge::GenerationScores>, usize)> {
    let set = RougeEval::new(examples, tok.clone()).input()?;
    let n = n.min(set.len());
    let mut progress = Progress::new("rouge", n as u64, "answers");
    let (mut rouge, mut exact, mut scored) = (0.0, 0.0, 0usize);
    let mut seen = 0;
    // RougeEval leaves out examples whose prompt encodes to nothing: walk the examples until `n`
    // have been scored, as one pass over the first `n` of the set would.
    for chunk in examples.chunks(ROUGE_BATCH) {
        if scored >= n {
            break;
        }
        let part = RougeEval::new(chunk, tok.clone())?;
        let take = part.len().min(n - scored);
        if let Some(s) = part.scores(model, take, max_new_tokens, max_len, ROUGE_BATCH, device)? {
            rouge += s.rouge_l * take as f64;
            exact += s.exact_match * take as f64;
            scored += take;
        }
        seen += chunk.len();
        progress.set(scored as u64);
    }
    progress.finish();
    log::debug!("rouge: {scored} answers scored from {seen} examples");
    let scores = (scored > 0).then(|| kd_train::rouge::GenerationScores {
        rouge_l: rouge / scored as f64,
        exact_match: exact / scored as f64,
    });
    Ok((scores, scored))
}

/// Train loss and held-out loss of one run, with a ROUGE-L panel below when it was measured.
pub fn plot_run(path: &Path, report: &TrainReport, title: &str) -> Result<()> {
    let loss = Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: "loss (nats)".into(),
        series: vec![
            Series {
                name: "train".into(),
                points: report.history.iter().map(|r| (r.step as f64, r.loss)).collect(),
            },
            Series {
                name: "held-out".into(),
                points: report.evals.iter().map(|r| (r.step as f64, r.loss)).collect(),
            },
        ],
        width: 800,
        height: 500,
    };
    let rouge: Vec<(f64, f64)> =
        report.evals.iter().filter_map(|r| Some((r.step as f64, r.rouge_l?))).collect();
    if rouge.is_empty() {
        loss.write_png(path)?;
    } else {
        let rouge = Chart {
            title: "held-out ROUGE-L".into(),
            x_label: "step".into(),
            y_label: "ROUGE-L F1".into(),
            series: vec![Series { name: "greedy answers".into(), points: rouge }],
            width: 800,
            height: 300,
        };
        write_png_stack(&[loss, rouge], path)?;
    }
    Ok(())
}
