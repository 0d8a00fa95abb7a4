//! The model-facing vocabulary: the chat messages sent, the completion received, why a call
//! failed, and the [`ChatModel`] trait every backend implements.
//!
//! Backend-neutral on purpose: the OpenAI-compatible HTTP client ([`crate::ChatClient`])
//! implements [`ChatModel`] today, and an embedded in-process model (`crates/model`) implements
//! the same trait, so the loop, the cache and the trajectory never know which one answered.
//! [`Message`] serialises to the OpenAI wire shape (`{"role": "user", "content": ...}`), which
//! is also how prompts are written to `trajectory.jsonl`.

use serde::{Deserialize, Serialize};

/// Who speaks a chat message; serialised as OpenAI's lowercase role names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions framing the conversation (`system`).
    System,
    /// The prompt (`user`).
    User,
    /// The model's own earlier answer (`assistant`).
    Assistant,
}

impl Role {
    /// The wire name: `system`, `user` or `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat message; serialised as OpenAI's `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message (a model's earlier answer, for multi-turn prompts).
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Token counts a backend reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: Option<u64>,
    /// Tokens generated.
    pub completion_tokens: Option<u64>,
}

/// A model's answer, whatever the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The message text (empty when the server sent none).
    pub content: String,
    /// Why generation stopped (`stop`, `length`...), when the backend said.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The model that answered, as the backend named it.
    #[serde(default)]
    pub model: Option<String>,
    /// Token counts, when reported.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Whether it was replayed from the response cache.
    #[serde(default)]
    pub from_cache: bool,
    /// Attempts it took: HTTP requests for a remote backend, 1 for an in-process one, 0 when
    /// replayed from the cache.
    #[serde(default)]
    pub attempts: u32,
    /// Wall time of the call, ms, retries and backoff included.
    #[serde(default)]
    pub elapsed_ms: f64,
}

/// Why a model call failed (after any retries). The first four are the HTTP client's; an
/// in-process backend reports [`LlmError::Backend`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// The endpoint is not a usable base URL.
    #[error("endpoint `{url}`: {reason}")]
    BadEndpoint {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer: connection refused or reset, name not resolved, or timed out.
    #[error("{url}: no answer after {attempts} attempt(s): {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// Requests made.
        attempts: u32,
        /// The last failure.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The request URL.
        url: String,
        /// The last status.
        status: u16,
        /// Requests made.
        attempts: u32,
        /// The start of the error body.
        body: String,
    },
    /// The server answered 2xx with something that is not a chat completion.
    #[error("{url}: the answer is not a chat completion: {reason} (body starts: {excerpt:?})")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What is wrong.
        reason: String,
        /// The start of the body.
        excerpt: String,
    },
    /// An in-process backend failed (loading weights, tokenising, generating).
    #[error("{backend}: {reason}")]
    Backend {
        /// The backend and model, e.g. `embedded qwen2.5-coder-0.5b`.
        backend: String,
        /// What failed.
        reason: String,
    },
}

/// Anything that answers chat messages: the HTTP client, an embedded model, a script in tests.
///
/// Implementations must be callable from several threads at once (the loop runs problems in
/// parallel).
pub trait ChatModel: Sync {
    /// Answers `messages` with one sampled completion.
    ///
    /// `tag` names the draw, `<problem id>/<iteration>`: a cache may replay a stored answer only
    /// for the same messages *and* the same tag, so that after a rejected candidate an identical
    /// prompt is sampled afresh rather than replayed. `draw` numbers the draw within the run; a
    /// backend that takes a seed samples with `seed + draw`, so a run is reproducible draw by
    /// draw, and one without seeds ignores it.
    fn complete(&self, messages: &[Message], tag: &str, draw: u64) -> Result<Completion, LlmError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_serialise_to_the_openai_wire_shape() {
        let m = [
            Message::system("s"),
            Message::user("u"),
            Message::assistant("a"),
        ];
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"}]"#
        );
        let back: Vec<Message> = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(serde_json::from_str::<Message>(r#"{"role":"tool","content":""}"#).is_err());
    }
}
