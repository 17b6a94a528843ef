//! The `[ensemble]` section: teachers beside `[teacher]` (or beside `data.teacher_logits`),
//! their weights, the averaging level and per-example routing by a key of the data rows.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use kd_models::CausalLm;
use kd_train::Trainer;
use kd_train::data::TokenDataset;
use kd_train::ensemble::{Averaging, TeacherEnsemble};
use serde::{Deserialize, Serialize};

use crate::config::{ModelSource, RunConfig};
use crate::run::load_model_as;

/// Multi-teacher distillation (method `kd`; see `kd_train::ensemble`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnsembleSection {
    /// Teachers beside `[teacher]` (Hugging Face directories), run online on the teacher's
    /// device.
    pub teachers: Vec<PathBuf>,
    /// Stored teachers beside `data.teacher_logits` (directories of `kd precompute-teacher`
    /// shards with the same `k`).
    pub teacher_logits: Vec<PathBuf>,
    /// One weight per teacher, the first teacher first (default: equal).
    pub weights: Vec<f64>,
    /// `"logits"` (default: the weighted mean of the logits) or `"probs"` (of the
    /// probabilities; stored teachers always combine at this level).
    pub average: Averaging,
    /// Per-example routing: the key of each instruction JSONL row that names its teacher, an
    /// index (`0` = the first teacher) or one of `names`.
    pub route_by: Option<String>,
    /// Teacher names for `route_by` values, the first teacher first.
    pub names: Vec<String>,
}

impl EnsembleSection {
    /// Whether the section asks for anything.
    pub fn is_set(&self) -> bool {
        self != &Self::default()
    }
}

/// Per-block teacher indices from the `route_by` key of the training rows (block `i` is row
/// `i` of instruction data).
fn routes(config: &RunConfig, key: &str, train: &TokenDataset) -> Result<Vec<usize>> {
    let e = &config.ensemble;
    let path = config.data.train.as_ref().context("ensemble.route_by needs data.train")?;
    let is_jsonl = path.extension().is_some_and(|x| x == "jsonl");
    if !is_jsonl && config.data.format != crate::config::DataFormat::Instruction {
        bail!(
            "ensemble.route_by = {key:?} routes instruction JSONL rows (one block per row); {} is text",
            path.display()
        );
    }
    let rows = kd_train::data::read_jsonl_values(path)?;
    let teachers = 1 + e.teachers.len() + e.teacher_logits.len();
    let mut out = Vec::with_capacity(train.len());
    for (line, row) in rows.iter().take(train.len()) {
        let v = row.get(key).with_context(|| {
            format!("{} line {line}: no key {key:?} (ensemble.route_by)", path.display())
        })?;
        let index = match v {
            serde_json::Value::Number(n) => n.as_u64().map(|i| i as usize),
            serde_json::Value::String(s) => e.names.iter().position(|n| n == s),
            _ => None,
        };
        match index {
            Some(i) if i < teachers => out.push(i),
            _ => bail!(
                "{} line {line}: {key} = {v} names no teacher (indices 0..{teachers}, or one of \
                 ensemble.names {:?})",
                path.display(),
                e.names
            ),
        }
    }
    Ok(out)
}

/// Adds the section's extra teachers and its ensemble to `trainer`.
pub fn apply(
    config: &RunConfig,
    mut trainer: Trainer<CausalLm>,
    teacher_device: &Device,
    train: &TokenDataset,
) -> Result<Trainer<CausalLm>> {
    let e = &config.ensemble;
    if !e.is_set() {
        return Ok(trainer);
    }
    if !e.teachers.is_empty() {
        let precision = config.train.teacher_dtype.unwrap_or(config.train.dtype);
        let mut extra = Vec::new();
        for dir in &e.teachers {
            let source = ModelSource { pretrained: Some(dir.clone()), ..Default::default() };
            extra.push(load_model_as(&source, "ensemble teacher", teacher_device, precision)?);
        }
        log::info!("ensemble: {} more teacher(s) online", extra.len());
        trainer = trainer.with_extra_teachers(extra)?;
    }
    if !e.teacher_logits.is_empty() {
        let mut extra = Vec::new();
        for dir in &e.teacher_logits {
            let stored = crate::offline::open_checked(config, dir)?;
            extra.push(stored);
        }
        log::info!("ensemble: {} more stored teacher(s)", extra.len());
        trainer = trainer.with_extra_teacher_logits(extra)?;
    }
    let routes = e.route_by.as_deref().map(|key| routes(config, key, train)).transpose()?;
    Ok(trainer.with_ensemble(TeacherEnsemble {
        weights: e.weights.clone(),
        averaging: e.average,
        routes,
    }))
}
