//! Errors: the server's own ([`ServerError`]) and those answered to a request ([`ApiError`]),
//! plus the JSON body extractor that turns malformed input into a clear 400 or 413.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::pool::Refusal;

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The sandbox or the harness could not start.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A dataset could not be loaded.
    #[error("dataset {spec}: {reason}")]
    Dataset {
        /// The `FORMAT:PATH` spec.
        spec: String,
        /// Why it failed.
        reason: String,
    },
    /// A system operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system error.
        source: std::io::Error,
    },
}

/// An error answered to a request: a status, a message, and for refusals a `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, where and why.
    pub message: String,
    /// Seconds after which retrying makes sense, for 503 refusals.
    pub retry_after_s: Option<u64>,
    /// Why it was refused, as `/metrics` counts it (`queue_full`, `body_timeout`, ...).
    pub reason: &'static str,
}

/// The reason `/metrics` counts an error answer under when nothing more specific is known.
pub(crate) fn reason_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "body_timeout",
        413 => "too_large",
        429 => "rate_limited",
        500 => "internal_error",
        503 => "unavailable",
        s if s >= 500 => "server_error",
        _ => "client_error",
    }
}

/// An error answer's reason, left in the response's extensions for the request metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefusalReason(pub &'static str);

impl ApiError {
    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after_s: None,
            reason: reason_of_status(status),
        }
    }

    /// The same error counted under `reason` in `/metrics`.
    pub fn with_reason(self, reason: &'static str) -> ApiError {
        ApiError { reason, ..self }
    }

    /// The answer to jobs the pool did not admit.
    pub(crate) fn refused(r: Refusal) -> ApiError {
        match r {
            Refusal::Full {
                retry_after_s,
                depth,
                capacity,
            } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "over capacity: {depth} programs are waiting for a worker and the queue \
                     holds {capacity}; retry after {retry_after_s} s"
                ),
                retry_after_s: Some(retry_after_s),
                reason: "queue_full",
            },
            Refusal::TooMany { jobs, capacity } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request carries {jobs} programs but the server's queue holds at most \
                     {capacity} (--queue): split it into smaller batches"
                ),
            )
            .with_reason("batch_too_large"),
            Refusal::ShuttingDown => ApiError::shutting_down(),
        }
    }

    /// The answer when the server is shutting down.
    pub(crate) fn shutting_down() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the server is shutting down; the program was not run".into(),
            retry_after_s: Some(5),
            reason: "shutting_down",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize)]
struct ErrorBody {
    /// What went wrong, where and why.
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(RefusalReason(self.reason));
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// The largest body the server accepts, stored in the router's state for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub usize);

/// A JSON request body parsed into `T`, whatever its `Content-Type`; errors name the field.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
    BodyLimit: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit: BodyLimit = axum::extract::FromRef::from_ref(state);
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than the server's limit of {} bytes \
                         (--max-body-mib)",
                        limit.0
                    ),
                )
                .with_reason("body_too_large")
            } else {
                ApiError::new(
                    r.status(),
                    format!("cannot read the request body: {}", r.body_text()),
                )
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body into `T`; the error says where (`items[2].language`) and why.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let why = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {inner}")
        } else {
            inner.to_string()
        };
        if path.is_empty() || path == "." {
            ApiError::bad_request(format!("invalid request body: {why}"))
        } else {
            ApiError::bad_request(format!("invalid request body at `{path}`: {why}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        language: String,
        time: f64,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Batch {
        items: Vec<Item>,
    }

    #[test]
    fn a_type_error_names_its_path() {
        let e = parse_json::<Batch>(
            br#"{"items": [{"language": "c", "time": 1}, {"language": 3, "time": 1}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("items[1].language"), "{}", e.message);
    }

    #[test]
    fn broken_json_and_empty_bodies_say_so() {
        let e = parse_json::<Batch>(br#"{"items": [ "#).unwrap_err();
        assert!(e.message.contains("malformed JSON"), "{}", e.message);
        let e = parse_json::<Batch>(b"  ").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = parse_json::<Batch>(br#"{"itemz": []}"#).unwrap_err();
        assert!(e.message.contains("missing field `items`"), "{}", e.message);
    }
}
