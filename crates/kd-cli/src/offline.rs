//! `kd precompute-teacher` and the stored teacher of `kd distill --teacher-logits DIR`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use clap::Args;
use kd_train::MethodConfig;
use kd_train::methods::kd::TopKTeacher;
use kd_train::offline::{
    PrecomputeConfig, Quantizer, RunIdentity, Shard, TeacherIdentity, TeacherLogits,
    file::fingerprint_bytes,
};

use crate::config::{ConfigBuilder, RunConfig};
use crate::error::Input;
use crate::progress::Progress;
use crate::run::{load_data, load_model_as, load_tokenizer};

/// `kd precompute-teacher`: each flag overrides one key of the run config, so the blocks are
/// those `kd distill --config` trains on.
#[derive(Debug, Args)]
pub struct PrecomputeArgs {
    #[arg(
        long,
        value_name = "FILE",
        help = "TOML run config whose [teacher] and [data] (tokenizer, train, seq_len, format, \
                split) define the blocks"
    )]
    config: Option<PathBuf>,
    /// Override any config key, e.g. --set data.seq_len=128 (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// teacher.pretrained: the teacher (a Hugging Face directory).
    #[arg(long, value_name = "DIR")]
    teacher: Option<String>,
    /// data.train: the training file.
    #[arg(long, value_name = "FILE")]
    data: Option<String>,
    /// data.tokenizer (default: the teacher's directory).
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<String>,
    /// data.seq_len: tokens per block.
    #[arg(long, value_name = "N")]
    seq_len: Option<usize>,
    /// Entries stored per position.
    #[arg(long, value_name = "K", default_value_t = 128)]
    top_k: usize,
    /// Temperature of the stored distribution softmax(z / T) (students apply their loss's
    /// temperature on top; keep 1 unless every student uses this one).
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    temperature: f64,
    /// Log-probability quantisation step in nats.
    #[arg(long, value_name = "NATS", default_value_t = 0.1)]
    logprob_step: f32,
    /// Largest log-probability code in bits (entries more than (2^bits − 1)·step nats below a
    /// position's most likely token are stored at that floor).
    #[arg(long, value_name = "B", default_value_t = 8)]
    logprob_bits: u32,
    /// Blocks per teacher forward pass.
    #[arg(long, value_name = "N", default_value_t = 8)]
    batch: usize,
    /// This process's slice of the data, I/N (0-based): shards computed on different machines
    /// go into one directory and are read as one file.
    #[arg(long, value_name = "I/N", default_value = "0/1")]
    shard: String,
    /// Output directory (the shard is written as DIR/shard-I-of-N.kdtl).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[arg(
        long,
        value_name = "D",
        help = "The teacher's device: cpu, ndarray, wgpu[:N], vulkan[:N] or cuda[:N]"
    )]
    device: Option<String>,
    /// The teacher's precision: f32, bf16 or f16.
    #[arg(long, value_name = "P")]
    dtype: Option<String>,
}

/// `sha256:` of the `tokenizer.json` at `path` (a directory holding it, or the file).
pub fn tokenizer_fingerprint(path: &Path) -> Result<String> {
    let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(fingerprint_bytes(&[&bytes]))
}

/// The teacher's name (directory, `model_type`, parameters) and `sha256:` of its `config.json`
/// and every `*.safetensors` file in its directory.
fn teacher_identity(dir: &Path, model_type: &str, params: usize) -> Result<TeacherIdentity> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    files.insert(0, dir.join("config.json"));
    let contents = files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let parts: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    Ok(TeacherIdentity {
        name: format!("{} ({model_type}, {params} parameters)", dir.display()),
        fingerprint: fingerprint_bytes(&parts),
    })
}

/// The run config of `kd precompute-teacher`'s flags.
fn precompute_config(o: &PrecomputeArgs) -> Result<RunConfig> {
    let mut b = ConfigBuilder::from_file(o.config.as_deref())?;
    b.set_all(&o.set)?;
    for (flag, key) in [
        (&o.teacher, "teacher.pretrained"),
        (&o.data, "data.train"),
        (&o.tokenizer, "data.tokenizer"),
        (&o.device, "run.teacher_device"),
        (&o.dtype, "train.teacher_dtype"),
    ] {
        if let Some(v) = flag {
            b.set_value(key, toml::Value::String(v.clone()))?;
        }
    }
    if let Some(n) = o.seq_len {
        b.set_value("data.seq_len", toml::Value::Integer(i64::try_from(n)?))?;
    }
    b.build()
}

/// `kd precompute-teacher`.
pub fn cmd_precompute(o: &PrecomputeArgs) -> Result<()> {
    let shard = Shard::parse(&o.shard).input()?;
    let config = precompute_config(o).input()?;
    let Some(teacher_dir) = config.teacher.pretrained.clone() else {
        return Err(anyhow::anyhow!("set --teacher DIR (teacher.pretrained)")).input();
    };
    let tok_path = config.data.tokenizer.clone().unwrap_or_else(|| teacher_dir.clone());
    let tok = load_tokenizer(&tok_path).input()?;
    let (train, _) = load_data(&config.data, &tok).input()?;
    let device =
        config.run.teacher_device.as_ref().unwrap_or(&config.run.device).device().input()?;
    let precision = config.train.teacher_dtype.unwrap_or(config.train.dtype);
    let teacher = load_model_as(&config.teacher, "teacher", &device, precision).input()?;
    if teacher.vocab_size() < tok.vocab_size() {
        bail!(
            "the teacher's vocabulary ({}) is smaller than the tokenizer's ({}): {} does not \
             belong to this teacher",
            teacher.vocab_size(),
            tok.vocab_size(),
            tok_path.display()
        );
    }
    let identity = RunIdentity {
        teacher: teacher_identity(
            &teacher_dir,
            teacher.config().model_type(),
            teacher.num_params(),
        )
        .input()?,
        tokenizer: tokenizer_fingerprint(&tok_path).input()?,
    };
    let pc = PrecomputeConfig {
        k: o.top_k,
        temperature: o.temperature,
        quantizer: Quantizer { step: o.logprob_step, bits: o.logprob_bits },
        batch_size: o.batch,
        shard,
    };
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let path = o.out.join(shard.file_name());
    let range = shard.range(train.len());
    log::info!(
        "precompute-teacher: shard {}/{}: blocks {}..{} of {} ({} tokens each), k = {}",
        shard.index,
        shard.count,
        range.start,
        range.end,
        train.len(),
        train.seq_len(),
        o.top_k.min(teacher.vocab_size())
    );
    let mut bar = Progress::new("teacher logits", range.len() as u64, "blocks");
    let report = kd_train::offline::precompute_teacher(
        &teacher,
        &device,
        &train,
        &identity,
        &pc,
        &path,
        |done, _| bar.set(done as u64),
    )
    .input()?;
    bar.finish();
    println!(
        "wrote {} positions ({} blocks) to {}: {} bytes, {:.1} bytes per token, {:.0} tokens/s",
        report.positions,
        report.blocks,
        path.display(),
        report.bytes,
        report.bytes_per_token(),
        report.positions as f64 / report.seconds.max(1e-9)
    );
    Ok(())
}

/// Opens stored teacher logits (`dir`: shards or one file) and checks they were written with
/// the run's `data.tokenizer`.
pub fn open_checked(config: &RunConfig, dir: &Path) -> Result<TeacherLogits> {
    let stored = TeacherLogits::open(dir)?;
    if let Some(tok) = &config.data.tokenizer {
        let (ours, theirs) = (tokenizer_fingerprint(tok)?, &stored.header().tokenizer);
        if &ours != theirs {
            bail!(
                "teacher logits {}: written with another tokenizer than data.tokenizer {} \
                 ({theirs} vs {ours})",
                dir.display(),
                tok.display(),
            );
        }
    }
    Ok(stored)
}

/// The stored teacher of a run (`data.teacher_logits`), opened and checked against the run's
/// tokenizer; `method` becomes `kd` with `teacher_top_k` at the file's `k` unless it sets its
/// own. `None` when the run has none.
pub fn open_for_run(
    config: &RunConfig,
    method: &mut MethodConfig,
) -> Result<Option<TeacherLogits>> {
    let Some(dir) = &config.data.teacher_logits else { return Ok(None) };
    let MethodConfig::Kd(kd) = method else {
        bail!(
            "data.teacher_logits trains method kd from stored teacher logits; this run's method is {}",
            method.name()
        );
    };
    let stored = open_checked(config, dir)?;
    let h = stored.header();
    if kd.teacher_top_k.is_none() {
        if kd.divergence != kd_train::methods::kd::KdConfig::default().divergence {
            bail!(
                "data.teacher_logits trains with the top-k loss (topk_kl): set \
                 method.teacher_top_k.loss (convention, temperature) rather than \
                 method.divergence"
            );
        }
        kd.teacher_top_k = Some(TopKTeacher { k: h.k, loss: Default::default() });
    }
    log::info!(
        "teacher logits: {} shard(s) in {}, {} blocks of {} tokens, k = {}, T = {}, teacher {}",
        stored.files().len(),
        dir.display(),
        h.dataset.blocks,
        h.dataset.seq_len,
        h.k,
        h.temperature,
        h.teacher.name
    );
    Ok(Some(stored))
}
