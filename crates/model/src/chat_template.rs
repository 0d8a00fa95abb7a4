//! `ChatTemplate`: a model's Jinja chat template rendered with minijinja the way transformers'
//! `apply_chat_template` renders it (trim_blocks and lstrip_blocks on, loop controls,
//! `raise_exception`, a Python-style `tojson`, Python string methods via `pycompat`).

use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{ModelError, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_chars", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; the error describes the syntax problem.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| describe(&e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token,
            eos_token,
        })
    }

    /// The template of a model folder: `chat_template.jinja` if present, else the
    /// `chat_template` of `tokenizer_config.json` (a string, or the `default` entry of a list of
    /// named templates). `None` when the folder has no template.
    pub fn from_folder(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| ModelError::file(&config_path, format!("cannot read: {e}")))?;
            serde_json::from_str(&text)
                .map_err(|e| ModelError::file(&config_path, format!("not valid JSON: {e}")))?
        } else {
            Json::Null
        };
        let bos = special_token(&config, "bos_token");
        let eos = special_token(&config, "eos_token");
        let jinja_path = dir.join("chat_template.jinja");
        let (path, source) = if jinja_path.is_file() {
            let text = std::fs::read_to_string(&jinja_path).map_err(|e| {
                ModelError::file(&jinja_path, format!("cannot read the chat template: {e}"))
            })?;
            (jinja_path, text)
        } else {
            match config.get("chat_template") {
                None | Some(Json::Null) => return Ok(None),
                Some(Json::String(s)) => (config_path, s.clone()),
                Some(Json::Array(named)) => {
                    let default = named
                        .iter()
                        .find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
                    match default
                        .and_then(|t| t.get("template"))
                        .and_then(Json::as_str)
                    {
                        Some(s) => (config_path, s.to_string()),
                        None => {
                            return Err(ModelError::file(
                                &config_path,
                                "`chat_template` is a list without a `default` template",
                            ));
                        }
                    }
                }
                Some(other) => {
                    return Err(ModelError::file(
                        &config_path,
                        format!("`chat_template` must be a string, found {}", kind_of(other)),
                    ));
                }
            }
        };
        ChatTemplate::new(&source, bos, eos)
            .map(Some)
            .map_err(|message| {
                ModelError::file(&path, format!("unreadable chat template: {message}"))
            })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation of plain messages, as
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_values(
            Value::from(minijinja::value::Serde(messages)),
            None,
            add_generation_prompt,
        )
    }

    /// Renders messages (and optional tool definitions) given as JSON text: a list of message
    /// objects, which may carry extra fields such as `tool_calls`. Object keys keep their order,
    /// so `tojson` output matches transformers'.
    pub fn render_json(
        &self,
        messages_json: &str,
        tools_json: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let messages: Value = serde_json::from_str(messages_json)
            .map_err(|e| ModelError::Invalid(format!("messages are not valid JSON: {e}")))?;
        let tools = match tools_json {
            Some(text) => Some(
                serde_json::from_str::<Value>(text)
                    .map_err(|e| ModelError::Invalid(format!("tools are not valid JSON: {e}")))?,
            ),
            None => None,
        };
        self.render_values(messages, tools, add_generation_prompt)
    }

    /// Renders template values: `messages` a sequence of maps, `tools` a sequence or `None`.
    pub fn render_values(
        &self,
        messages: Value,
        tools: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::Template(describe(&e)))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone().unwrap_or_default(),
                eos_token => self.eos_token.clone().unwrap_or_default(),
                tools => tools.unwrap_or(Value::from(())),
                documents => Value::from(()),
            })
            .map_err(|e| ModelError::Template(describe(&e)))
    }
}

/// A special token of `tokenizer_config.json`: a string or an `AddedToken` object with `content`.
fn special_token(config: &Json, key: &str) -> Option<String> {
    match config.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

fn kind_of(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// An error with its cause chain and location on one line.
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)` (keys in insertion order).
fn python_tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_python_json(
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let item_sep = if indent.is_some() { "," } else { ", " };
    let pad = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let quote = |text: &str| Json::String(text.to_string()).to_string();
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => match value.as_i64() {
            Some(i) => out.push_str(&i.to_string()),
            None => {
                let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                out.push_str(
                    &serde_json::Number::from_f64(f).map_or("NaN".to_string(), |n| n.to_string()),
                );
            }
        },
        ValueKind::String => out.push_str(&quote(value.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                pad(out, depth + 1);
                write_python_json(item, indent, sort_keys, depth + 1, out)?;
            }
            if !items.is_empty() {
                pad(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                pad(out, depth + 1);
                out.push_str(&quote(&key.to_string()));
                out.push_str(": ");
                write_python_json(&value.get_item(key)?, indent, sort_keys, depth + 1, out)?;
            }
            if !keys.is_empty() {
                pad(out, depth);
            }
            out.push('}');
        }
        _ => out.push_str(&quote(&value.to_string())),
    }
    Ok(())
}

/// `strftime_now(format)`: the current UTC date and time formatted with the common `strftime`
/// directives (`%Y %m %d %B %b %H %M %S %%`).
fn strftime_now(format: String) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (hour, minute, second) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_and_lstrip_blocks_python_methods_and_tojson_behave_as_in_transformers() {
        let source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n<{{ m.content.strip() }}>{{ m | tojson }}\n    {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(source, None, None).unwrap();
        let out = t.render(&[ChatMessage::user("  hi ")], false).unwrap();
        assert_eq!(out, "<hi>{\"role\": \"user\", \"content\": \"  hi \"}\n");
    }

    #[test]
    fn raise_exception_becomes_a_template_error_with_its_message() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", None, None).unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("no system role"), "{err}");
    }

    #[test]
    fn a_syntax_error_is_reported_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
        assert!(
            err.contains("unexpected end of input") || err.contains("endfor"),
            "{err}"
        );
    }
}
