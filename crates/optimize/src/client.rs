//! A blocking client for OpenAI-compatible chat completions (vLLM, SGLang, Ollama, llama.cpp
//! server, OpenAI).
//!
//! One `POST {base}/chat/completions` per call, with `model`, `messages`, `temperature`,
//! `max_tokens` and an optional `seed`. Transient failures are retried with exponential backoff
//! (doubling from [`ClientConfig::backoff`], capped at [`ClientConfig::max_backoff`], a
//! `Retry-After` header honoured within that cap): connection errors, timeouts, and the statuses
//! 408, 409, 425, 429 and 5xx. Other statuses (400, 401, 404...) and a successful status whose body
//! is not a chat completion fail at once: repeating them would cost time and change nothing.
//! At most [`ClientConfig::concurrency`] requests are in flight at once across all threads, and
//! with a [`ResponseCache`] an answer already stored is replayed without a request.
//!
//! The wire format lives here and nowhere else: the rest of the crate sees the backend-neutral
//! vocabulary of [`crate::chat`] ([`Message`], [`Completion`], [`ChatModel`]).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cache::{ResponseCache, replay_or_answer};
use crate::chat::{ChatModel, Completion, LlmError, Message, Usage};

/// Where and how to call the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// The OpenAI base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The model name the server knows.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Sampling temperature.
    pub temperature: f64,
    /// `max_tokens` of each request (`None`: the server's default).
    pub max_tokens: Option<u32>,
    /// A base seed; each request sends `seed + draw` where the loop numbers the draws.
    pub seed: Option<u64>,
    /// Time limit of one request, connection to last byte.
    pub timeout: Duration,
    /// Time limit of connecting.
    pub connect_timeout: Duration,
    /// Retries after the first attempt for transient failures.
    pub max_retries: u32,
    /// First backoff; doubles per retry.
    pub backoff: Duration,
    /// Longest single wait between attempts (also caps `Retry-After`).
    pub max_backoff: Duration,
    /// Requests in flight at once, across threads.
    pub concurrency: usize,
}

impl ClientConfig {
    /// Defaults for `model` at `base_url`: temperature 0.7, 4096 tokens, 10 min per request,
    /// 4 retries from 1 s, 8 requests at once.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            temperature: 0.7,
            max_tokens: Some(4096),
            seed: None,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_retries: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            concurrency: 8,
        }
    }

    /// The chat completions URL: the base URL without trailing slashes, plus `/chat/completions`.
    pub fn completions_url(&self) -> Result<String, LlmError> {
        let base = self.base_url.trim().trim_end_matches('/');
        let bad = |reason: &str| LlmError::BadEndpoint {
            url: self.base_url.clone(),
            reason: reason.to_string(),
        };
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| {
                bad("expected an http:// or https:// base URL such as http://127.0.0.1:8000/v1")
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(bad("no host"));
        }
        if base.ends_with("/chat/completions") {
            return Err(bad(
                "give the base URL (ending in /v1), not the /chat/completions path",
            ));
        }
        Ok(format!("{base}/chat/completions"))
    }
}

/// A counting semaphore: at most `n` holders at once.
#[derive(Debug)]
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Permit<'g>(&'g Gate);

impl Gate {
    fn new(n: usize) -> Self {
        Gate {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Completion),
    /// Worth retrying; optionally after the server's `Retry-After`.
    Transient {
        error: LlmError,
        retry_after: Option<Duration>,
    },
    Fatal(LlmError),
}

/// The largest response body read (a chat completion is far smaller).
const BODY_LIMIT: u64 = 64 * 1024 * 1024;
/// How much of a body an error message quotes.
const EXCERPT: usize = 300;

/// An OpenAI-compatible chat completions client (blocking; share it across threads).
#[derive(Debug)]
pub struct ChatClient {
    config: ClientConfig,
    url: String,
    agent: ureq::Agent,
    cache: Option<ResponseCache>,
    gate: Gate,
}

fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(EXCERPT).collect();
    if text.chars().count() > EXCERPT {
        s.push_str("...");
    }
    s
}

/// A small jitter factor in [1, 1.25) from the clock, so that parallel retries spread out.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    1.0 + f64::from(nanos % 1000) / 4000.0
}

fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429) || (500..=599).contains(&status)
}

/// The text of `choices[0].message.content`: a string, null (empty), or a list of text parts.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => None,
    }
}

/// Parses a chat completion body.
pub fn parse_completion(body: &str) -> Result<Completion, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| err.to_string(), str::to_string);
        return Err(format!("the server reported an error: {message}"));
    }
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("no `choices[0]`")?;
    let message = choice.get("message").ok_or("no `choices[0].message`")?;
    let content = content_text(message.get("content").unwrap_or(&Value::Null))
        .ok_or("`choices[0].message.content` is neither text nor null")?;
    let usage = v.get("usage").map(|u| Usage {
        prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64),
        completion_tokens: u.get("completion_tokens").and_then(Value::as_u64),
    });
    Ok(Completion {
        content,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        usage,
        from_cache: false,
        attempts: 0,
        elapsed_ms: 0.0,
    })
}

impl ChatClient {
    /// A client for `config`, replaying from and storing to `cache` when given.
    pub fn new(config: ClientConfig, cache: Option<ResponseCache>) -> Result<Self, LlmError> {
        let url = config.completions_url()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.connect_timeout))
            .http_status_as_error(false)
            .user_agent(concat!("afterburner/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(ChatClient {
            gate: Gate::new(config.concurrency),
            url,
            agent,
            cache,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The chat completions URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The JSON body of a request for `messages` (draw `draw`).
    pub fn request_body(&self, messages: &[Message], draw: u64) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "stream": false,
        });
        if let Some(n) = self.config.max_tokens {
            body["max_tokens"] = json!(n);
        }
        if let Some(seed) = self.config.seed {
            body["seed"] = json!(seed.wrapping_add(draw));
        }
        body
    }

    fn attempt(&self, body: &[u8]) -> Attempt {
        let _permit = self.gate.enter();
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        if let Some(key) = &self.config.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let unreachable = |reason: String| Attempt::Transient {
            error: LlmError::Unreachable {
                url: self.url.clone(),
                attempts: 0,
                reason,
            },
            retry_after: None,
        };
        let mut response = match request.send(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(t)) => {
                return unreachable(format!("timed out ({t}; limit {:?})", self.config.timeout));
            }
            Err(e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_))) => {
                return Attempt::Fatal(LlmError::BadEndpoint {
                    url: self.config.base_url.clone(),
                    reason: e.to_string(),
                });
            }
            Err(e) => return unreachable(e.to_string()),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = match response
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
        {
            Ok(t) => t,
            Err(ureq::Error::Timeout(t)) => {
                return unreachable(format!("timed out reading the answer ({t})"));
            }
            Err(e) if (200..300).contains(&status) => {
                return unreachable(format!("the answer was cut off: {e}"));
            }
            Err(_) => String::new(),
        };
        if !(200..300).contains(&status) {
            let error = LlmError::Status {
                url: self.url.clone(),
                status,
                attempts: 0,
                body: excerpt(text.trim()),
            };
            return if retryable_status(status) {
                Attempt::Transient { error, retry_after }
            } else {
                Attempt::Fatal(error)
            };
        }
        match parse_completion(&text) {
            Ok(c) => Attempt::Done(c),
            Err(reason) => Attempt::Fatal(LlmError::BadResponse {
                url: self.url.clone(),
                reason,
                excerpt: excerpt(text.trim()),
            }),
        }
    }

    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .config
            .backoff
            .mul_f64(2f64.powi(retry.min(30) as i32) * jitter());
        exp.max(retry_after.unwrap_or_default())
            .min(self.config.max_backoff)
    }

    /// Sends the request, retrying transient failures; counts attempts into the result.
    fn call(&self, body: &Value) -> Result<Completion, LlmError> {
        let start = Instant::now();
        let bytes = body.to_string().into_bytes();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.attempt(&bytes) {
                Attempt::Done(mut c) => {
                    c.attempts = attempts;
                    c.elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
                    return Ok(c);
                }
                Attempt::Fatal(e) => return Err(with_attempts(e, attempts)),
                Attempt::Transient { error, retry_after } => {
                    if attempts > self.config.max_retries {
                        return Err(with_attempts(error, attempts));
                    }
                    let wait = self.backoff(attempts - 1, retry_after);
                    tracing::info!(
                        "{}: attempt {attempts} failed ({error}); retrying in {wait:?}",
                        self.url
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

fn with_attempts(e: LlmError, n: u32) -> LlmError {
    match e {
        LlmError::Unreachable { url, reason, .. } => LlmError::Unreachable {
            url,
            attempts: n,
            reason,
        },
        LlmError::Status {
            url, status, body, ..
        } => LlmError::Status {
            url,
            status,
            attempts: n,
            body,
        },
        other => other,
    }
}

impl ChatModel for ChatClient {
    fn complete(&self, messages: &[Message], tag: &str, draw: u64) -> Result<Completion, LlmError> {
        let body = self.request_body(messages, draw);
        replay_or_answer(self.cache.as_ref(), &self.url, tag, body.clone(), || {
            self.call(&body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_become_completion_urls_and_bad_ones_say_why() {
        let c = |u: &str| ClientConfig::new(u, "m").completions_url();
        assert_eq!(
            c("http://127.0.0.1:8000/v1/").unwrap(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(
            c("https://api.openai.com/v1").unwrap(),
            "https://api.openai.com/v1/chat/completions"
        );
        let e = c("127.0.0.1:8000/v1").unwrap_err().to_string();
        assert!(e.contains("http://"), "{e}");
        let e = c("http://h/v1/chat/completions").unwrap_err().to_string();
        assert!(e.contains("base URL"), "{e}");
        assert!(c("http://").is_err());
    }

    #[test]
    fn completions_parse_with_null_or_part_lists_as_content() {
        let c = parse_completion(
            r#"{"model":"m","choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        )
        .unwrap();
        assert_eq!(c.content, "hi");
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!(c.usage.unwrap().completion_tokens, Some(1));
        let c = parse_completion(
            r#"{"choices":[{"message":{"content":null},"finish_reason":"length"}]}"#,
        )
        .unwrap();
        assert_eq!(c.content, "");
        let c = parse_completion(
            r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#,
        )
        .unwrap();
        assert_eq!(c.content, "ab");
    }

    #[test]
    fn bodies_that_are_not_completions_say_what_is_missing() {
        assert!(parse_completion("<html>").unwrap_err().contains("not JSON"));
        assert!(parse_completion("{}").unwrap_err().contains("choices"));
        assert!(
            parse_completion(r#"{"choices":[{}]}"#)
                .unwrap_err()
                .contains("message")
        );
        assert!(
            parse_completion(r#"{"error":{"message":"model not loaded"}}"#)
                .unwrap_err()
                .contains("model not loaded")
        );
        assert!(
            parse_completion(r#"{"choices":[{"message":{"content":7}}]}"#)
                .unwrap_err()
                .contains("neither")
        );
    }

    #[test]
    fn request_bodies_carry_the_settings_and_a_seed_per_draw() {
        let mut config = ClientConfig::new("http://h/v1", "qwen");
        config.seed = Some(100);
        config.max_tokens = None;
        let client = ChatClient::new(config, None).unwrap();
        let body = client.request_body(&[Message::user("hi")], 3);
        assert_eq!(body["model"], "qwen");
        assert_eq!(body["seed"], 103);
        assert_eq!(body["messages"][0]["content"], "hi");
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["stream"], false);
    }

    #[test]
    fn transient_statuses_are_retried_and_others_are_not() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!retryable_status(s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_honours_retry_after_and_is_capped() {
        let mut config = ClientConfig::new("http://h/v1", "m");
        config.backoff = Duration::from_millis(100);
        config.max_backoff = Duration::from_secs(2);
        let client = ChatClient::new(config, None).unwrap();
        let b0 = client.backoff(0, None);
        let b2 = client.backoff(2, None);
        assert!(b0 >= Duration::from_millis(100) && b0 < Duration::from_millis(126));
        assert!(b2 >= Duration::from_millis(400) && b2 < Duration::from_millis(501));
        assert_eq!(
            client.backoff(0, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            client.backoff(0, Some(Duration::from_secs(600))),
            Duration::from_secs(2)
        );
        assert_eq!(client.backoff(20, None), Duration::from_secs(2));
    }
}
