//! Sequence-level KD data: the teacher answers every training prompt, and the answers are written
//! as instruction JSONL with their provenance (`kd seqkd-generate`, and `kd distill --method
//! seqkd` before it trains).
//!
//! Each line: `{"prompt", "response", "original_response", "source", "finished"}`: the prompt
//! as the model saw it (template applied), the response to train on (the teacher's, or the
//! original one for the fraction `original_fraction` chosen by the seed), both responses, which
//! one is used, and whether the teacher stopped at EOS. Beside it, `<file>.provenance.json`
//! names the teacher, the settings, the seed and the source data; a run whose provenance matches
//! reuses the file (a resumed run does), any other regenerates it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use kd_models::{CausalLm, Tokenizer};
use kd_train::data::{InstructionExample, prompt_ids};
use kd_train::methods::SpecialTokens;
use kd_train::methods::seqkd::{SeqKdConfig, teacher_answers};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

/// Where the generated answers came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The teacher directory.
    pub teacher: PathBuf,
    /// Its parameter count.
    pub teacher_params: usize,
    /// The file the prompts came from.
    pub source: PathBuf,
    /// How many examples.
    pub examples: usize,
    /// Block length (answers stay within it).
    pub seq_len: usize,
    /// The SeqKD settings (sampling, seed, original fraction).
    pub settings: SeqKdConfig,
    /// The kd-rs version that wrote it.
    pub kd_version: String,
}

/// One written example.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    prompt: String,
    response: String,
    original_response: String,
    source: &'static str,
    finished: bool,
}

/// Path of the provenance file beside `data`.
pub fn provenance_path(data: &Path) -> PathBuf {
    data.with_extension("provenance.json")
}

/// Reads the provenance beside `data`, if both exist (`None` also when it does not parse as a
/// `P`: the file is then regenerated).
pub fn read_provenance<P: DeserializeOwned>(data: &Path) -> Option<P> {
    if !data.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(provenance_path(data)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `rows` as JSONL to `out`, creating its directory.
///
/// # Errors
/// When a row does not serialise or the file cannot be written.
pub fn write_jsonl<R: Serialize>(out: &Path, rows: &[R]) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}

/// Writes a generated dataset: `rows` as JSONL to `out` and `provenance` beside it
/// ([`provenance_path`]), which [`read_provenance`] reads back.
///
/// # Errors
/// As [`write_jsonl`].
pub fn write_with_provenance<R: Serialize, P: Serialize>(
    out: &Path,
    rows: &[R],
    provenance: &P,
) -> Result<()> {
    write_jsonl(out, rows)?;
    let path = provenance_path(out);
    std::fs::write(&path, serde_json::to_string_pretty(provenance)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Lets the teacher answer `examples` and writes the dataset and its provenance. Returns the
/// number of examples, answered tokens and seconds.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    teacher: &CausalLm,
    tok: &Tokenizer,
    examples: &[InstructionExample],
    settings: &SeqKdConfig,
    seq_len: usize,
    provenance: &Provenance,
    out: &Path,
    device: &Device,
) -> Result<(usize, usize, f64)> {
    let start = Instant::now();
    let mut prompts = Vec::with_capacity(examples.len());
    let mut caps = Vec::with_capacity(examples.len());
    let mut which = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        if settings.keeps_original(i) {
            continue;
        }
        let ids = prompt_ids(&ex.prompt, tok)?;
        if ids.is_empty() || ids.len() >= seq_len {
            continue; // nothing to answer within the block: the original is kept
        }
        caps.push(seq_len - ids.len());
        prompts.push(ids);
        which.push(i);
    }
    let tokens = SpecialTokens::of(tok);
    let mut progress = Progress::new("seqkd", prompts.len() as u64, "teacher answers");
    let answers = teacher_answers(
        teacher,
        &prompts,
        &caps,
        &settings.sampling,
        &tokens,
        settings.seed,
        settings.generation_batch,
        device,
        |done, _| progress.set(done as u64),
    )?;
    progress.finish();
    let mut rows: Vec<Row> = examples
        .iter()
        .map(|ex| Row {
            prompt: ex.prompt.clone(),
            response: ex.response.clone(),
            original_response: ex.response.clone(),
            source: "original",
            finished: true,
        })
        .collect();
    let mut answered = 0;
    for (i, a) in which.into_iter().zip(&answers) {
        answered += a.len();
        rows[i].finished = a.last().is_some_and(|t| tokens.eos_ids.contains(t));
        rows[i].response = tok.decode(a, true)?.trim().to_string();
        rows[i].source = "teacher";
    }
    write_with_provenance(out, &rows, provenance)?;
    Ok((rows.len(), answered, start.elapsed().as_secs_f64()))
}
