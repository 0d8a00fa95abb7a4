//! OpenAI-compatible model endpoints, answered by the embedded model (`afterburner serve
//! --model`): `POST /v1/chat/completions`, `POST /v1/completions` (non-streaming) and
//! `GET /v1/models`.
//!
//! The model runs on an OS thread of its own, one generation at a time (a generation uses every
//! core); requests wait in a bounded queue in front of it and are refused with 503 and
//! `Retry-After` when it is full. A request whose client has gone is skipped when its turn comes.
//! Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and say what is
//! wrong, where (the field) and why.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

use afterburner_model::{ChatMessage, Generation, GenerationSettings, LanguageModel, ModelError};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::{ServerError, parse_json};

/// Default `max_tokens` of a chat completion (capped by the context left after the prompt).
pub const DEFAULT_CHAT_MAX_TOKENS: usize = 2048;
/// Default `max_tokens` of a text completion, as OpenAI's and vLLM's `/v1/completions`.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;
/// Most choices (`n`, times the prompts of a text completion) one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// What the model thread is asked to do.
enum Work {
    /// Answer conversations (one per choice).
    Chat(Vec<Vec<ChatMessage>>),
    /// Continue raw texts (one per choice).
    Raw(Vec<String>),
}

/// One queued request.
struct Job {
    work: Work,
    settings: GenerationSettings,
    reply: oneshot::Sender<Result<Vec<Generation>, ModelError>>,
}

/// The served model: its name and the queue in front of its thread. Cheap to clone; the thread
/// ends when the last clone is dropped and its queue is drained.
#[derive(Clone)]
pub struct OpenAiModel {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    created: u64,
    capacity: usize,
    jobs: SyncSender<Job>,
    counter: AtomicU64,
}

impl std::fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("id", &self.inner.id)
            .field("queue", &self.inner.capacity)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs one job on the model.
fn run(
    model: &LanguageModel,
    work: Work,
    settings: &GenerationSettings,
) -> Result<Vec<Generation>, ModelError> {
    match work {
        Work::Chat(conversations) => model.chat_batch(&conversations, settings),
        Work::Raw(texts) => {
            let prompts = texts
                .iter()
                .map(|t| model.tokenizer().encode(t, true))
                .collect::<Result<Vec<_>, _>>()?;
            model.generate_tokens(&prompts, settings)
        }
    }
}

impl OpenAiModel {
    /// Starts the model's thread; `id` is the name `/v1/models` lists and requests may give as
    /// `model`; at most `queue` requests wait for it.
    pub fn start(
        model: LanguageModel,
        id: impl Into<String>,
        queue: usize,
    ) -> Result<Self, ServerError> {
        if queue == 0 {
            return Err(ServerError::Config(
                "the model's queue must hold at least 1 request (--model-queue)".into(),
            ));
        }
        let (jobs, receiver) = sync_channel::<Job>(queue);
        std::thread::Builder::new()
            .name("afterburner-model".into())
            .spawn(move || {
                for job in receiver {
                    if job.reply.is_closed() {
                        continue;
                    }
                    let Job {
                        work,
                        settings,
                        reply,
                    } = job;
                    let result =
                        std::panic::catch_unwind(AssertUnwindSafe(|| run(&model, work, &settings)))
                            .unwrap_or_else(|_| {
                                Err(ModelError::Invalid(
                                    "the model panicked on this request (see the server log)"
                                        .into(),
                                ))
                            });
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| ServerError::Io {
                what: "start the model thread".into(),
                source: e,
            })?;
        Ok(OpenAiModel {
            inner: Arc::new(Inner {
                id: id.into(),
                created: now_secs(),
                capacity: queue,
                jobs,
                counter: AtomicU64::new(0),
            }),
        })
    }

    /// The name the model is served under.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Queues `work` and waits for its answer.
    async fn submit(
        &self,
        work: Work,
        settings: GenerationSettings,
    ) -> Result<Vec<Generation>, OpenAiError> {
        let (reply, answer) = oneshot::channel();
        match self.inner.jobs.try_send(Job {
            work,
            settings,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(OpenAiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    kind: "server_overloaded",
                    param: None,
                    code: None,
                    message: format!(
                        "over capacity: {} requests are waiting for the model (--model-queue); retry later",
                        self.inner.capacity
                    ),
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(OpenAiError::server(
                    "the model thread has stopped; restart the server",
                ));
            }
        }
        match answer.await {
            Ok(Ok(generations)) => Ok(generations),
            Ok(Err(e)) => Err(OpenAiError::from_model(e)),
            Err(_) => Err(OpenAiError::server(
                "the model thread stopped before answering",
            )),
        }
    }

    /// A fresh response id with `prefix`.
    fn response_id(&self, prefix: &str) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{prefix}-{:x}{nanos:08x}{n:06x}", now_secs())
    }

    /// A seed for a request that gives none.
    fn fresh_seed(&self) -> u64 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos
            ^ self
                .inner
                .counter
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// An error answered in OpenAI's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `not_found_error`, `server_error`...
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`...).
    pub code: Option<&'static str>,
    /// What is wrong, where and why.
    pub message: String,
}

impl OpenAiError {
    fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            message: message.into(),
        }
    }

    fn server(message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            param: None,
            code: None,
            message: message.into(),
        }
    }

    fn no_model() -> Self {
        OpenAiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            param: None,
            code: Some("model_not_found"),
            message: "this server runs no model: start it with `afterburner serve --model M` (a \
                      model folder, a .gguf file or ORG/NAME)"
                .into(),
        }
    }

    fn from_model(e: ModelError) -> Self {
        match e {
            ModelError::PromptTooLong { .. } => OpenAiError {
                code: Some("context_length_exceeded"),
                ..OpenAiError::invalid(Some("messages"), e.to_string())
            },
            ModelError::Invalid(_) | ModelError::Template(_) => {
                OpenAiError::invalid(None, e.to_string())
            }
            other => OpenAiError::server(format!("the model failed: {other}")),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The request body: the raw bytes, parsed into `T` with the field at fault named.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, OpenAiError> {
    let bytes = body.map_err(|r| OpenAiError {
        status: r.status(),
        ..OpenAiError::invalid(
            None,
            format!("cannot read the request body: {}", r.body_text()),
        )
    })?;
    parse_json::<T>(&bytes).map_err(|e| OpenAiError {
        status: e.status,
        ..OpenAiError::invalid(None, e.message)
    })
}

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `prompt` of a text completion: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// The sampling fields both endpoints share.
#[derive(Debug, Deserialize)]
struct Sampling {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
}

/// A `POST /v1/chat/completions` body (fields not listed are ignored).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Value>,
    #[serde(flatten)]
    sampling: Sampling,
}

/// A `POST /v1/completions` body (fields not listed are ignored).
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: Prompt,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(flatten)]
    sampling: Sampling,
}

/// Token counts of a response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireUsage {
    /// Tokens of the prompts (each counted once, whatever `n`).
    pub prompt_tokens: usize,
    /// Tokens generated over all choices.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// An assistant message of a chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireMessage {
    /// Always `assistant`.
    pub role: String,
    /// The generated text.
    pub content: String,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatChoice {
    /// Its index.
    pub index: usize,
    /// The answer.
    pub message: WireMessage,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// A `chat.completion` response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatResponse {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: WireUsage,
}

/// One choice of a text completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TextChoice {
    /// The generated text.
    pub text: String,
    /// Its index (prompt index times `n` plus the sample's).
    pub index: usize,
    /// Always null (log-probabilities are not returned).
    pub logprobs: Option<Value>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// A `text_completion` response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TextResponse {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// One per prompt and `n`.
    pub choices: Vec<TextChoice>,
    /// Token counts.
    pub usage: WireUsage,
}

impl Sampling {
    /// Checks the fields and turns them into generation settings and `n`.
    fn settings(
        &self,
        model: &OpenAiModel,
        default_max_tokens: usize,
    ) -> Result<(GenerationSettings, usize), OpenAiError> {
        if self.stream == Some(true) {
            return Err(OpenAiError::invalid(
                Some("stream"),
                "streaming (`stream: true`) is not supported by this server; send `stream: false` \
                 (or leave it out) for one JSON answer",
            ));
        }
        if let Some(name) = &self.model
            && name != model.id()
        {
            return Err(OpenAiError {
                status: StatusCode::NOT_FOUND,
                kind: "not_found_error",
                param: Some("model".into()),
                code: Some("model_not_found"),
                message: format!(
                    "model `{name}` is not served here; this server serves `{}` (GET /v1/models)",
                    model.id()
                ),
            });
        }
        if let Some(t) = self.temperature
            && !(t.is_finite() && (0.0..=2.0).contains(&t))
        {
            return Err(OpenAiError::invalid(
                Some("temperature"),
                format!("`temperature` must be in [0, 2], got {t}"),
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(OpenAiError::invalid(
                Some("top_p"),
                format!("`top_p` must be in (0, 1], got {p}"),
            ));
        }
        let top_k = match self.top_k {
            None => None,
            Some(k) if k <= 0 => Some(0),
            Some(k) => Some(k as usize),
        };
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES {
            return Err(OpenAiError::invalid(
                Some("n"),
                format!("`n` must be in [1, {MAX_CHOICES}], got {n}"),
            ));
        }
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(default_max_tokens);
        if max_tokens == 0 {
            return Err(OpenAiError::invalid(
                Some("max_tokens"),
                "`max_tokens` must be at least 1",
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(list)) => list.clone(),
        };
        let seed = match self.seed {
            Some(s) => s as u64,
            None => model.fresh_seed(),
        };
        Ok((
            GenerationSettings {
                max_new_tokens: max_tokens,
                temperature: self.temperature,
                top_p: self.top_p,
                top_k,
                seed,
                stop,
            },
            n,
        ))
    }
}

/// The text of a message's `content`: a string, or a list of `{"type": "text", "text": ...}`
/// parts (other part types are refused).
fn message_text(content: &Value, at: &str) -> Result<String, OpenAiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(OpenAiError::invalid(
                            Some(&format!("{at}.content[{j}]")),
                            format!(
                                "`{at}.content[{j}]`: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported, got type {}",
                                kind.map_or("(none)".to_string(), |k| format!("`{k}`"))
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(OpenAiError::invalid(
            Some(&format!("{at}.content")),
            format!("`{at}.content` must be a string or a list of text parts"),
        )),
    }
}

/// The conversation of a chat request.
fn conversation(messages: &[Value]) -> Result<Vec<ChatMessage>, OpenAiError> {
    if messages.is_empty() {
        return Err(OpenAiError::invalid(
            Some("messages"),
            "`messages` is empty: send at least one message",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                OpenAiError::invalid(Some(&format!("{at}.role")), format!("`{at}.role` is missing or not a string"))
            })?;
            let role = if role == "developer" { "system" } else { role };
            if !matches!(role, "system" | "user" | "assistant" | "tool") {
                return Err(OpenAiError::invalid(
                    Some(&format!("{at}.role")),
                    format!("`{at}.role` is `{role}`; expected system, developer, user, assistant or tool"),
                ));
            }
            let content = message_text(m.get("content").unwrap_or(&Value::Null), &at)?;
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

fn usage(prompt_tokens: usize, generations: &[Generation]) -> WireUsage {
    let completion_tokens = generations.iter().map(Generation::completion_tokens).sum();
    WireUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

async fn chat_completions(
    State(model): State<Option<OpenAiModel>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChatResponse>, OpenAiError> {
    let model = model.ok_or_else(OpenAiError::no_model)?;
    let request: ChatRequest = parse_body(body)?;
    let (settings, n) = request.sampling.settings(&model, DEFAULT_CHAT_MAX_TOKENS)?;
    let messages = conversation(&request.messages)?;
    let generations = model
        .submit(Work::Chat(vec![messages; n]), settings)
        .await?;
    let prompt_tokens = generations.first().map_or(0, Generation::prompt_tokens);
    Ok(Json(ChatResponse {
        id: model.response_id("chatcmpl"),
        object: "chat.completion".into(),
        created: now_secs(),
        model: model.id().to_string(),
        usage: usage(prompt_tokens, &generations),
        choices: generations
            .into_iter()
            .enumerate()
            .map(|(index, g)| ChatChoice {
                index,
                finish_reason: g.finish_reason.as_str().to_string(),
                message: WireMessage {
                    role: "assistant".into(),
                    content: g.text,
                },
            })
            .collect(),
    }))
}

async fn completions(
    State(model): State<Option<OpenAiModel>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TextResponse>, OpenAiError> {
    let model = model.ok_or_else(OpenAiError::no_model)?;
    let request: CompletionRequest = parse_body(body)?;
    if request.echo == Some(true) {
        return Err(OpenAiError::invalid(
            Some("echo"),
            "`echo: true` is not supported by this server",
        ));
    }
    if request.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(OpenAiError::invalid(
            Some("logprobs"),
            "`logprobs` is not supported by this server",
        ));
    }
    let (settings, n) = request
        .sampling
        .settings(&model, DEFAULT_COMPLETION_MAX_TOKENS)?;
    let prompts = match request.prompt {
        Prompt::One(p) => vec![p],
        Prompt::Many(list) => list,
    };
    if prompts.is_empty() {
        return Err(OpenAiError::invalid(
            Some("prompt"),
            "`prompt` is an empty list",
        ));
    }
    if prompts.len() * n > MAX_CHOICES {
        return Err(OpenAiError::invalid(
            Some("prompt"),
            format!(
                "{} prompts times n = {n} asks for more than {MAX_CHOICES} choices",
                prompts.len()
            ),
        ));
    }
    let texts: Vec<String> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), n))
        .collect();
    let generations = model.submit(Work::Raw(texts), settings).await?;
    let prompt_tokens = generations
        .iter()
        .step_by(n)
        .map(Generation::prompt_tokens)
        .sum();
    Ok(Json(TextResponse {
        id: model.response_id("cmpl"),
        object: "text_completion".into(),
        created: now_secs(),
        model: model.id().to_string(),
        usage: usage(prompt_tokens, &generations),
        choices: generations
            .into_iter()
            .enumerate()
            .map(|(index, g)| TextChoice {
                text: g.text,
                index,
                logprobs: None,
                finish_reason: g.finish_reason.as_str().to_string(),
            })
            .collect(),
    }))
}

async fn models(State(model): State<Option<OpenAiModel>>) -> Json<Value> {
    let data: Vec<Value> = model
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id(),
                "object": "model",
                "created": m.inner.created,
                "owned_by": "afterburner",
            })
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": data}))
}

/// The OpenAI routes, answered by `model` (or, without one, with a 404 that says how to start
/// the server with a model; `/v1/models` then lists none).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(model: Option<OpenAiModel>) -> Router<S> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .with_state(model)
}
