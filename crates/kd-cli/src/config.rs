//! The run config: a TOML file, overridable key by key from the command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Where a model comes from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSource {
    /// A Hugging Face directory (`config.json` + `model.safetensors`).
    pub pretrained: Option<PathBuf>,
    /// A Hugging Face `config.json` body to initialise a fresh model from (`model_type`,
    /// sizes, ...), as a TOML table.
    pub init: Option<toml::Table>,
    /// The teacher's own tokenizer (a directory with `tokenizer.json`, or the file), read by
    /// method `cross_tokenizer` only; default there: the `tokenizer.json` of `pretrained`.
    pub tokenizer: Option<PathBuf>,
}

/// Data format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Pick from the extension: `.jsonl` = instruction, else text.
    #[default]
    Auto,
    /// Plain text, documents separated by blank lines, packed into blocks.
    Text,
    /// JSONL prompt/response pairs; loss on the response only.
    Instruction,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Directory with `tokenizer.json` (and optionally `tokenizer_config.json`), or the file.
    pub tokenizer: Option<PathBuf>,
    /// Training file.
    pub train: Option<PathBuf>,
    /// Held-out file; without it the last `eval_fraction` of the training blocks is held out.
    pub eval: Option<PathBuf>,
    /// Plain-text corpus of language-modelling terms (MiniLLM's PT loss), packed into blocks of
    /// `seq_len`.
    pub pt: Option<PathBuf>,
    /// Format of the files.
    pub format: DataFormat,
    /// Tokens per block.
    pub seq_len: usize,
    /// Fraction of the training blocks held out when no `eval` file is given.
    pub eval_fraction: f64,
    /// Prompt template of instruction data: `"auto"` (default: the tokenizer's `chat_template`
    /// when it has one, else `"dolly"`), `"dolly"` (MiniLLM's), `"plain"`, `"chat"` or
    /// `{with_context = "…", without_context = "…"}` ([`kd_train::template`]).
    pub template: kd_train::template::PromptTemplate,
    /// A teacher's stored top-k distributions of `train` (a directory of shards written by
    /// `kd precompute-teacher`): method `kd` trains from them with no teacher loaded.
    pub teacher_logits: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            tokenizer: None,
            train: None,
            eval: None,
            pt: None,
            format: DataFormat::Auto,
            seq_len: 128,
            eval_fraction: 0.1,
            template: kd_train::template::PromptTemplate::default(),
            teacher_logits: None,
        }
    }
}

/// Where the run computes: the `[run]` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// The student's device (`cpu` by default; `wgpu`, `vulkan`, `cuda:N`, `ndarray`: see
    /// [`crate::device`]).
    pub device: crate::device::DeviceSpec,
    /// The teacher's device (default: the student's).
    pub teacher_device: Option<crate::device::DeviceSpec>,
}

/// The whole run config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Devices.
    pub run: RunSection,
    /// The student.
    pub student: ModelSource,
    /// The teacher (`kd distill`).
    pub teacher: ModelSource,
    /// Delta-KD (`divergence.loss = "delta_kd"`): the teacher's base, before the fine-tuning
    /// that made the teacher.
    pub base_teacher: ModelSource,
    /// Delta-KD: the student's base (default: `[student] pretrained`, the student's starting
    /// weights).
    pub base_student: ModelSource,
    /// Data.
    pub data: DataConfig,
    /// Training settings ([`kd_train::TrainConfig`]).
    pub train: kd_train::TrainConfig,
    /// The `[method]` section: `name = "sft" | "kd" | "seqkd" | "gkd" | "minillm" |
    /// "step_by_step" | "cross_tokenizer" | "feature"` and the method's keys
    /// ([`kd_train::MethodConfig`]); `kd train` defaults to `sft`, `kd distill` to `kd` with
    /// forward KL.
    pub method: Option<kd_train::MethodConfig>,
    /// Multi-teacher distillation: teachers beside `[teacher]` or `data.teacher_logits`,
    /// weights, averaging and routing ([`crate::ensemble::EnsembleSection`]).
    pub ensemble: crate::ensemble::EnsembleSection,
}

/// A config as a TOML table, with overrides applied.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    table: toml::Table,
    /// The file it started from and its text, to locate errors by line.
    source: Option<(PathBuf, String)>,
}

impl ConfigBuilder {
    /// Starts from a TOML file (or empty).
    pub fn from_file(path: Option<&Path>) -> Result<Self> {
        let Some(p) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("reading config {}", p.display()))?;
        let table = text
            .parse::<toml::Table>()
            .with_context(|| format!("parsing config {}", p.display()))?;
        Ok(Self { table, source: Some((p.to_path_buf(), text)) })
    }

    /// Applies `--set KEY=VALUE` arguments in order ([`ConfigBuilder::set`]).
    pub fn set_all(&mut self, assignments: &[String]) -> Result<()> {
        for kv in assignments {
            let (k, v) =
                kv.split_once('=').with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
            self.set(k.trim(), v.trim())?;
        }
        Ok(())
    }

    /// Sets `dotted.key` to `value`, a TOML value (`3e-4`, `true`, `"text"`, `{loss = "js"}`);
    /// text that does not parse as TOML is taken as a string.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        self.set_value(key, parsed)
    }

    /// Sets `dotted.key` to a TOML value.
    pub fn set_value(&mut self, key: &str, value: toml::Value) -> Result<()> {
        let parts: Vec<&str> = key.split('.').collect();
        let Some((last, path)) = parts.split_last() else {
            bail!("empty config key");
        };
        let mut table = &mut self.table;
        for p in path {
            let entry = table
                .entry((*p).to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => bail!("config key `{key}`: `{p}` is not a table"),
            };
        }
        table.insert((*last).to_string(), value);
        Ok(())
    }

    /// Removes `dotted.key` (nothing happens when it is not set).
    pub fn remove(&mut self, key: &str) {
        let parts: Vec<&str> = key.split('.').collect();
        let Some((last, path)) = parts.split_last() else {
            return;
        };
        let mut table = &mut self.table;
        for p in path {
            match table.get_mut(*p) {
                Some(toml::Value::Table(t)) => table = t,
                _ => return,
            }
        }
        table.remove(*last);
    }

    /// The value at `dotted.key`, if set.
    fn get(&self, key: &str) -> Option<&toml::Value> {
        let (path, last) = key.rsplit_once('.').unwrap_or(("", key));
        let mut table = &self.table;
        for p in path.split('.').filter(|p| !p.is_empty()) {
            table = table.get(p)?.as_table()?;
        }
        table.get(last)
    }

    /// The table at `dotted.key`, if it is one (a section such as `[baldistill]`).
    pub fn get_table(&self, key: &str) -> Option<&toml::Table> {
        self.get(key).and_then(toml::Value::as_table)
    }

    /// Whether `dotted.key` is set.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The string at `dotted.key`, if it is one.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(toml::Value::as_str)
    }

    /// The typed config.
    ///
    /// # Errors
    /// The first key that does not fit: with the file's line and column when the file alone
    /// is already wrong (an unknown key, a mistyped value), else with its dotted path (a wrong
    /// value given on the command line).
    pub fn build(&self) -> Result<RunConfig> {
        let merged = toml::Value::Table(self.table.clone());
        match serde_path_to_error::deserialize::<_, RunConfig>(merged) {
            Ok(config) => Ok(config),
            Err(err) => {
                if let Some((path, text)) = &self.source
                    && let Err(located) = toml::from_str::<RunConfig>(text)
                {
                    bail!("invalid run config {}: {}", path.display(), located.to_string().trim());
                }
                let key = err.path().to_string();
                bail!("invalid run config: key `{key}`: {}", err.into_inner())
            }
        }
    }

    /// The config as TOML text (written beside every run).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.table).unwrap_or_default()
    }
}

/// Converts a TOML table to JSON (for `config.json` bodies).
pub fn toml_to_json(table: &toml::Table) -> Result<serde_json::Value> {
    serde_json::to_value(table).context("converting a TOML table to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_typed_fields() {
        let mut b = ConfigBuilder::default();
        b.set("train.steps", "7").unwrap();
        b.set("train.lr", "3e-4").unwrap();
        b.set("method", "{name = \"kd\", divergence = {loss = \"reverse_kl\", temperature = 2.0}}")
            .unwrap();
        b.set("data.train", "some/file.txt").unwrap();
        b.set("student.init.model_type", "\"llama\"").unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.train.steps, 7);
        assert_eq!(c.train.lr, 3e-4);
        assert_eq!(
            c.method.unwrap(),
            serde_json::from_str::<kd_train::MethodConfig>(
                r#"{"name":"kd","divergence":{"loss":"reverse_kl","temperature":2.0}}"#
            )
            .unwrap()
        );
        assert_eq!(c.data.train.unwrap(), PathBuf::from("some/file.txt"));
        assert!(b.has("student.init.model_type"));
        assert!(!b.has("teacher.pretrained"));
        b.remove("student.init");
        b.remove("no.such.key");
        assert!(!b.has("student.init") && b.has("train.steps"));
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let mut b = ConfigBuilder::from_file(Some(&p)).unwrap();
            if b.has("baldistill") {
                // A `kd baldistill` recipe: its own section, then a run config.
                let (c, _, plan) = crate::baldistill::split_recipe(&mut b)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                assert_eq!(plan.stages, 3);
                c.train.validate().unwrap();
                n += 1;
                continue;
            }
            let c = b.build();
            let c = c.unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            c.train.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if p.ends_with("sft_dolly.toml") {
                assert_eq!((c.train.eval_rouge_prompts, c.train.eval_max_new_tokens), (32, 64));
            }
            n += 1;
        }
        assert!(n >= 3, "{n} configs in {}", dir.display());
    }

    #[test]
    fn data_template_forms() {
        use kd_train::template::{PromptTemplate, TemplateName};
        let template = |value: &str| {
            let mut b = ConfigBuilder::default();
            b.set("data.template", value).unwrap();
            b.build().map(|c| c.data.template)
        };
        assert_eq!(
            ConfigBuilder::default().build().unwrap().data.template,
            PromptTemplate::default()
        );
        assert_eq!(template("plain").unwrap(), PromptTemplate::Named(TemplateName::Plain));
        assert_eq!(template("\"chat\"").unwrap(), PromptTemplate::Named(TemplateName::Chat));
        let custom = r#"{with_context = "Q: {instruction}\n{context}\nA:", without_context = "Q: {instruction}\nA:"}"#;
        assert_eq!(
            template(custom).unwrap(),
            PromptTemplate::Custom {
                with_context: "Q: {instruction}\n{context}\nA:".into(),
                without_context: "Q: {instruction}\nA:".into(),
            }
        );
        let err = format!("{:#}", template("alpaca").unwrap_err());
        assert!(err.contains("unknown template `alpaca`") && err.contains("dolly"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let mut b = ConfigBuilder::default();
        b.set("train.stepz", "7").unwrap();
        assert!(b.build().is_err());
    }
}
