//! Prompt templates: how an instruction row (instruction, optional context, response) becomes
//! the prompt text a model is trained and evaluated on.
//!
//! | template | prompt |
//! |---|---|
//! | `auto` (default) | `chat` when the tokenizer has a chat template, else `dolly` |
//! | `dolly` | the Alpaca/Dolly template MiniLLM uses: `Below is an instruction that describes a task[, paired with an input that provides further context]. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n[### Input:\n{context}\n\n]### Response:\n` |
//! | `plain` | `{instruction}\n` or `{instruction}\n{context}\n` (short prompts for tiny models) |
//! | `chat` | the model's chat template (`chat_template` in `tokenizer_config.json`, or `chat_template.jinja`), rendered with minijinja: `messages = [{role: "user", content: instruction [+ "\n\n" + context]}]`, `add_generation_prompt = true`, `bos_token`, `eos_token` |
//! | `{with_context = "…", without_context = "…"}` | your own, with `{instruction}` and `{context}` placeholders |
//!
//! A row that already has a `prompt` field is used as is (it is templated already). When a
//! rendered prompt starts with the BOS token's text (chat templates often write it),
//! [`crate::data::prompt_ids`] does not add a second BOS id.
//!
//! Chat templates are compiled once and rendered as transformers' `apply_chat_template` renders
//! them: `trim_blocks` and `lstrip_blocks` on, a `raise_exception(message)` function, and the
//! common Python string/dict methods (`.strip()`, `.startswith()`, `.items()`, …) through
//! `minijinja-contrib`'s `pycompat`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// The prompt of MiniLLM's Dolly processing (and Stanford Alpaca's) for a row without context.
pub const DOLLY_WITHOUT_CONTEXT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";
/// The same for a row with context (Dolly's `context`, Alpaca's `input`).
pub const DOLLY_WITH_CONTEXT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n";

/// A named template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateName {
    /// The model's chat template when its `tokenizer_config.json` has one, else `dolly`.
    #[default]
    Auto,
    /// MiniLLM's Dolly/Alpaca template.
    Dolly,
    /// The instruction (and context) on their own lines.
    Plain,
    /// The model's chat template (`tokenizer_config.json`).
    Chat,
}

/// The `template` setting: a name or a custom pair of format strings.
///
/// Deserializes from `"auto"`, `"dolly"`, `"plain"`, `"chat"` or
/// `{with_context = "…", without_context = "…"}`; an unknown name, an unknown key or a custom
/// template without its placeholders is an error that lists what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawTemplate")]
pub enum PromptTemplate {
    /// `"auto"`, `"dolly"`, `"plain"` or `"chat"`.
    Named(TemplateName),
    /// Format strings with `{instruction}` and `{context}` placeholders.
    Custom {
        /// For rows with a context; must contain `{instruction}` and `{context}`.
        with_context: String,
        /// For rows without one; must contain `{instruction}`.
        without_context: String,
    },
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self::Named(TemplateName::Auto)
    }
}

impl PromptTemplate {
    /// Checks that a custom template has its placeholders (a `with_context` without
    /// `{context}` would silently drop every row's context).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the format string and the missing placeholder.
    pub fn validate(&self) -> Result<()> {
        let Self::Custom { with_context, without_context } = self else {
            return Ok(());
        };
        let with_both = "a format string with `{instruction}` and `{context}`";
        let needs = [
            ("template.with_context", with_context, "{instruction}", with_both),
            ("template.with_context", with_context, "{context}", with_both),
            (
                "template.without_context",
                without_context,
                "{instruction}",
                "a format string with `{instruction}`",
            ),
        ];
        for (name, text, placeholder, expected) in needs {
            if !text.contains(placeholder) {
                return Err(TrainError::config(name, expected, format!("{text:?}")));
            }
        }
        Ok(())
    }
}

/// What a config may hold before it is checked.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawTemplate {
    Name(String),
    Custom(CustomTemplate),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomTemplate {
    with_context: String,
    without_context: String,
}

impl TryFrom<RawTemplate> for PromptTemplate {
    type Error = String;

    fn try_from(raw: RawTemplate) -> std::result::Result<Self, String> {
        let accepted = r#"expected "auto", "dolly", "plain", "chat" or {with_context = "…", without_context = "…"}"#;
        let t = match raw {
            RawTemplate::Name(name) => Self::Named(match name.as_str() {
                "auto" => TemplateName::Auto,
                "dolly" => TemplateName::Dolly,
                "plain" => TemplateName::Plain,
                "chat" => TemplateName::Chat,
                _ => return Err(format!("unknown template `{name}`: {accepted}")),
            }),
            RawTemplate::Custom(CustomTemplate { with_context, without_context }) => {
                Self::Custom { with_context, without_context }
            }
        };
        t.validate().map_err(|e| e.to_string())?;
        Ok(t)
    }
}

/// One instruction row in any supported dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionRow {
    /// The instruction (Dolly, Alpaca), or the already templated prompt (`prompt` rows).
    pub instruction: String,
    /// Dolly's `context` / Alpaca's `input` (`None` when absent or empty).
    pub context: Option<String>,
    /// The response.
    pub response: String,
    /// Whether `instruction` is a ready prompt (a `prompt` field) that no template touches.
    pub templated: bool,
}

/// A template ready to render: the chat template, when used, is read and compiled once.
#[derive(Debug, Clone)]
pub struct PromptRenderer {
    template: PromptTemplate,
    chat: Option<ChatTemplate>,
}

#[derive(Debug, Clone)]
struct ChatTemplate {
    /// Holds the compiled template under the name `chat`.
    env: Arc<minijinja::Environment<'static>>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source` in an environment that behaves like transformers' chat templating.
    fn new(source: String, bos: String, eos: String) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(chat_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> std::result::Result<(), _> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source).map_err(chat_error)?;
        Ok(Self { env: Arc::new(env), bos, eos })
    }
}

/// A special token of `tokenizer_config.json`: a string or `{"content": …}`.
fn special(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => {
            o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string()
        }
        _ => String::new(),
    }
}

impl PromptRenderer {
    /// A renderer for `template`; `tokenizer` (a directory or its `tokenizer.json`) is where
    /// `chat` and `auto` find the chat template: `chat_template` in `tokenizer_config.json` (a
    /// string, or the entry named `default` of a list), else a `chat_template.jinja` file beside
    /// it (what recent transformers versions save); `bos_token` and `eos_token` come from
    /// `tokenizer_config.json`, else `special_tokens_map.json`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when `chat` is asked for and the tokenizer has no chat
    /// template, when the chat template does not compile, or when a custom template lacks a
    /// placeholder ([`PromptTemplate::validate`]); [`TrainError::Io`] /
    /// [`TrainError::Json`] when a tokenizer file cannot be read.
    pub fn new(template: &PromptTemplate, tokenizer: Option<&Path>) -> Result<Self> {
        template.validate()?;
        let wants_chat =
            matches!(template, PromptTemplate::Named(TemplateName::Chat | TemplateName::Auto));
        let chat = if wants_chat { read_chat_template(tokenizer)? } else { None };
        if chat.is_none() && *template == PromptTemplate::Named(TemplateName::Chat) {
            return Err(TrainError::config(
                "template",
                "a tokenizer_config.json with a `chat_template` for `chat`",
                tokenizer.map_or("no tokenizer".to_string(), |p| p.display().to_string()),
            ));
        }
        Ok(Self { template: template.clone(), chat })
    }

    /// A renderer for a chat template given as text (what `tokenizer_config.json` holds), with
    /// the text of the BOS and EOS tokens it may write.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the template does not compile.
    pub fn from_chat_template(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Ok(Self {
            template: PromptTemplate::Named(TemplateName::Chat),
            chat: Some(ChatTemplate::new(source.into(), bos_token.into(), eos_token.into())?),
        })
    }

    /// The prompt text of `row`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the chat template fails to render.
    ///
    /// # Example
    /// ```
    /// use kd_train::template::{InstructionRow, PromptRenderer, PromptTemplate, TemplateName};
    /// let row = InstructionRow {
    ///     instruction: "Add 2 and 3.".into(),
    ///     context: Some("Use words.".into()),
    ///     response: "five".into(),
    ///     templated: false,
    /// };
    /// let plain = PromptRenderer::new(&PromptTemplate::Named(TemplateName::Plain), None)?;
    /// assert_eq!(plain.render(&row)?, "Add 2 and 3.\nUse words.\n");
    /// let dolly = PromptRenderer::new(&PromptTemplate::Named(TemplateName::Dolly), None)?;
    /// assert!(dolly.render(&row)?.ends_with("### Input:\nUse words.\n\n### Response:\n"));
    /// # Ok::<(), kd_train::TrainError>(())
    /// ```
    pub fn render(&self, row: &InstructionRow) -> Result<String> {
        if row.templated {
            return Ok(row.instruction.clone());
        }
        let context = row.context.as_deref();
        let fill = |f: &str| {
            f.replace("{instruction}", &row.instruction).replace("{context}", context.unwrap_or(""))
        };
        Ok(match (&self.template, &self.chat) {
            (_, Some(chat)) => {
                let content = match context {
                    Some(c) => format!("{}\n\n{c}", row.instruction),
                    None => row.instruction.clone(),
                };
                let t = chat.env.get_template("chat").map_err(chat_error)?;
                t.render(minijinja::context! {
                    messages => vec![minijinja::context! { role => "user", content => content }],
                    add_generation_prompt => true,
                    bos_token => chat.bos.clone(),
                    eos_token => chat.eos.clone(),
                })
                .map_err(chat_error)?
            }
            (PromptTemplate::Named(TemplateName::Plain), _) => match context {
                Some(c) => format!("{}\n{c}\n", row.instruction),
                None => format!("{}\n", row.instruction),
            },
            (PromptTemplate::Custom { with_context, without_context }, _) => match context {
                Some(_) => fill(with_context),
                None => fill(without_context),
            },
            _ => match context {
                Some(_) => fill(DOLLY_WITH_CONTEXT),
                None => fill(DOLLY_WITHOUT_CONTEXT),
            },
        })
    }
}

/// The chat template of the tokenizer at `tokenizer` (a directory or its `tokenizer.json`), if
/// it has one (see [`PromptRenderer::new`] for where it is looked for).
fn read_chat_template(tokenizer: Option<&Path>) -> Result<Option<ChatTemplate>> {
    let Some(p) = tokenizer else {
        return Ok(None);
    };
    let dir = if p.is_dir() { p } else { p.parent().unwrap_or(p) };
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let source = match config.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        // Several named templates: the one transformers uses by default.
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    };
    let jinja = dir.join("chat_template.jinja");
    let source = match source {
        Some(s) => s,
        None if jinja.is_file() => {
            std::fs::read_to_string(&jinja).map_err(|e| TrainError::io(&jinja, e))?
        }
        None => return Ok(None),
    };
    let map = read_json(&dir.join("special_tokens_map.json"))?;
    let token = |key: &str| {
        let t = special(config.get(key));
        if t.is_empty() { special(map.get(key)) } else { t }
    };
    ChatTemplate::new(source, token("bos_token"), token("eos_token")).map(Some)
}

/// The JSON object in `path`; `null` when there is no such file.
fn read_json(path: &Path) -> Result<serde_json::Value> {
    if !path.is_file() {
        return Ok(serde_json::Value::Null);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|source| TrainError::Json { path: path.to_path_buf(), source })
}

fn chat_error(e: minijinja::Error) -> TrainError {
    TrainError::config("template", "a chat template that compiles and renders", e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(context: Option<&str>) -> InstructionRow {
        InstructionRow {
            instruction: "Name a color.".into(),
            context: context.map(str::to_string),
            response: "Red.".into(),
            templated: false,
        }
    }

    #[test]
    fn dolly_is_minillms_template() {
        let r = PromptRenderer::new(&PromptTemplate::default(), None).unwrap();
        assert_eq!(
            r.render(&row(None)).unwrap(),
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\n"
        );
        let with = r.render(&row(Some("Think of apples."))).unwrap();
        assert!(with.starts_with("Below is an instruction that describes a task, paired with"));
        assert!(with.contains("### Input:\nThink of apples.\n\n### Response:\n"));
    }

    #[test]
    fn custom_and_templated_rows() {
        let t: PromptTemplate = serde_json::from_str(
            r#"{"with_context": "Q: {instruction} ({context})\nA:", "without_context": "Q: {instruction}\nA:"}"#,
        )
        .unwrap();
        let r = PromptRenderer::new(&t, None).unwrap();
        assert_eq!(r.render(&row(None)).unwrap(), "Q: Name a color.\nA:");
        assert_eq!(r.render(&row(Some("sky"))).unwrap(), "Q: Name a color. (sky)\nA:");
        let ready = InstructionRow { templated: true, ..row(Some("ignored")) };
        assert_eq!(r.render(&ready).unwrap(), "Name a color.");
        let named: PromptTemplate = serde_json::from_str(r#""plain""#).unwrap();
        assert_eq!(named, PromptTemplate::Named(TemplateName::Plain));
    }

    #[test]
    fn bad_templates_say_what_is_accepted() {
        let err = serde_json::from_str::<PromptTemplate>(r#""dolyl""#).unwrap_err().to_string();
        assert!(err.contains("unknown template `dolyl`") && err.contains("\"plain\""), "{err}");
        let no_context =
            r#"{"with_context": "Q: {instruction}", "without_context": "Q: {instruction}"}"#;
        let err = serde_json::from_str::<PromptTemplate>(no_context).unwrap_err().to_string();
        assert!(err.contains("template.with_context") && err.contains("{context}"), "{err}");
        let extra = r#"{"with_context": "{instruction}{context}", "without_context": "{instruction}", "x": "y"}"#;
        assert!(serde_json::from_str::<PromptTemplate>(extra).is_err());
        let built = PromptTemplate::Custom {
            with_context: "{instruction} {context}".into(),
            without_context: "no placeholder".into(),
        };
        assert!(matches!(
            PromptRenderer::new(&built, None),
            Err(TrainError::InvalidConfig { name: "template.without_context", .. })
        ));
    }

    #[test]
    fn chat_templates_render_with_minijinja() {
        let chatml = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let r = PromptRenderer::from_chat_template(chatml, "<s>", "</s>").unwrap();
        assert_eq!(
            r.render(&row(Some("sky"))).unwrap(),
            "<s><|im_start|>user\nName a color.\n\nsky<|im_end|>\n<|im_start|>assistant\n"
        );
        let broken = PromptRenderer::from_chat_template("{% for %}", "", "");
        assert!(matches!(broken, Err(TrainError::InvalidConfig { .. })));
        // `chat` without a tokenizer config is a clear error; `auto` falls back to dolly.
        let chat = PromptTemplate::Named(TemplateName::Chat);
        assert!(PromptRenderer::new(&chat, None).is_err());
        let dir = std::env::temp_dir().join(format!("kd-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let auto = PromptRenderer::new(&PromptTemplate::default(), Some(&dir)).unwrap();
        assert!(auto.render(&row(None)).unwrap().starts_with("Below is an instruction"));
        let config = serde_json::json!({"chat_template": chatml, "bos_token": {"content": "<s>"}});
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        let auto = PromptRenderer::new(&PromptTemplate::default(), Some(&dir)).unwrap();
        assert!(auto.render(&row(None)).unwrap().starts_with("<s><|im_start|>user\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Renders as transformers does (Jinja2 with `trim_blocks`, `lstrip_blocks`,
    /// `raise_exception`); the expected text is what Python's jinja2 3.1 gives.
    #[test]
    fn chat_templates_render_like_transformers() {
        let llama2ish = "{% if messages[0]['role'] != 'user' %}\n    {{ raise_exception('user first') }}\n{% endif %}\n{% for message in messages %}\n    {% if message['role'] == 'user' %}\n{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}\n    {% endif %}\n{% endfor %}\n";
        let r = PromptRenderer::from_chat_template(llama2ish, "<s>", "</s>").unwrap();
        let padded = InstructionRow { instruction: "  Name a color.".into(), ..row(Some("sky ")) };
        assert_eq!(r.render(&padded).unwrap(), "<s>[INST] Name a color.\n\nsky [/INST]\n");
        let refuses = "{{ raise_exception('no user turns, please') }}";
        let r = PromptRenderer::from_chat_template(refuses, "", "").unwrap();
        let err = r.render(&row(None)).unwrap_err();
        assert!(err.to_string().contains("no user turns, please"), "{err}");
    }

    #[test]
    fn chat_template_files() {
        let dir = std::env::temp_dir().join(format!("kd-chat-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chat = PromptTemplate::Named(TemplateName::Chat);
        // A named list in tokenizer_config.json: the `default` entry.
        let config = serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "tools"},
                {"name": "default", "template": "{{ bos_token }}U: {{ messages[0].content }}"}
            ],
            "bos_token": "<s>"
        });
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
        let r = PromptRenderer::new(&chat, Some(&dir.join("tokenizer.json"))).unwrap();
        assert_eq!(r.render(&row(None)).unwrap(), "<s>U: Name a color.");
        // chat_template.jinja beside a config without one; BOS from special_tokens_map.json.
        std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
        std::fs::write(dir.join("special_tokens_map.json"), r#"{"bos_token": {"content": "<b>"}}"#)
            .unwrap();
        std::fs::write(
            dir.join("chat_template.jinja"),
            "{{ bos_token }}> {{ messages[0].content }}",
        )
        .unwrap();
        let r = PromptRenderer::new(&chat, Some(&dir)).unwrap();
        assert_eq!(r.render(&row(None)).unwrap(), "<b>> Name a color.");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
