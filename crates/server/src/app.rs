//! The HTTP application: the router, authentication and request metrics, and the service
//! endpoints (`/healthz`, `/metrics`, `/status`). The state the handlers share is in
//! [`crate::state`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use afterburner_sandbox::Language;
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::common::Wire;
use crate::error::{ApiError, RefusalReason, reason_of_status};
use crate::metrics::Gauges;
use crate::state::AppState;
use crate::{fusion, monolith, native};

/// The application's router over `state`.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/execute", post(monolith::execute))
        .route("/results/{task_id}", get(monolith::results))
        .route("/status", get(status))
        .route("/run_code", post(fusion::run_code))
        .route("/v1/evaluate", post(native::evaluate))
        .route("/v1/reward", post(native::reward))
        .route("/get_reward", post(native::get_reward))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::openai::routes(state.config.model.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} {}; see GET /status for what this server offers",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Counts every request and its latency by endpoint (the route pattern) and status.
async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    state
        .metrics
        .request(&endpoint, status.as_u16(), start.elapsed());
    if status.is_client_error() || status.is_server_error() {
        let reason = response
            .extensions()
            .get::<RefusalReason>()
            .map_or_else(|| reason_of_status(status), |r| r.0);
        state.metrics.refusal(reason);
    }
    response
}

/// Reads the whole request body before the handler runs, within the body timeout and the body
/// size limit: a body that trickles in is answered 408 and its connection closed, a body over
/// the limit 413 (at once when its `Content-Length` says so).
async fn read_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the server's limit of {limit} bytes \
                 (--max-body-mib)"
            ),
        )
        .with_reason("body_too_large")
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return close_after(too_large().into_response());
    }
    let (parts, mut body) = req.into_parts();
    let timeout = state.config.connections.body_timeout;
    let read = async {
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(bytes)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => close_after(e.into_response()),
        Err(_) => close_after(
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s (--body-timeout)",
                    timeout.as_secs_f64()
                ),
            )
            .into_response(),
        ),
    }
}

/// `response` with `Connection: close`: the rest of its request's body is never read.
fn close_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Equal in time independent of where the strings first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// With a token configured, every endpoint but `/healthz` needs `Authorization: Bearer TOKEN`
/// (or `?access_token=TOKEN`, for clients such as verl's SandboxFusion caller that cannot add
/// headers).
async fn authenticate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(token) = state.config.token.as_deref() else {
        return next.run(req).await;
    };
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token=")));
    let ok = [from_header, from_query]
        .into_iter()
        .flatten()
        .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send `Authorization: Bearer <token>` (the server was \
         started with --token)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether the server takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Health {
    /// It does.
    Ok,
    /// A shutdown began: nothing new is admitted.
    ShuttingDown,
}

impl Health {
    fn of(state: &AppState) -> Health {
        if state.pool.is_closing() {
            Health::ShuttingDown
        } else {
            Health::Ok
        }
    }
}

/// `GET /healthz`.
#[derive(Debug, Serialize)]
struct HealthBody {
    status: Health,
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let status = Health::of(&state);
    let code = match status {
        Health::Ok => StatusCode::OK,
        Health::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Wire(HealthBody { status })).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stored = state.results.lock().map_or(0, |r| r.len());
    let text = state.metrics.render(Gauges {
        queue_depth: state.pool.depth(),
        queue_capacity: state.pool.capacity(),
        jobs_running: state.pool.running(),
        workers: state.pool.workers(),
        results_stored: stored,
        uptime_s: state.started.elapsed().as_secs_f64(),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// A `key: value kB` figure of a `/proc` file.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `GET /status`: the queue, the workers, memory, and what the server offers.
#[derive(Debug, Serialize)]
struct StatusBody<'a> {
    status: Health,
    version: &'static str,
    queue: QueueBody,
    workers: usize,
    /// The core of each worker (`null`: left to the sandbox).
    worker_cpus: &'a [Option<usize>],
    memory: MemoryBody,
    results_stored: usize,
    uptime_s: f64,
    /// Problems of the datasets loaded at start.
    problems: usize,
    languages: Vec<&'static str>,
    limits: LimitsBody,
    /// The sandbox's degradations.
    warnings: &'a [String],
}

/// The queue's depth, capacity and running jobs.
#[derive(Debug, Serialize)]
struct QueueBody {
    depth: usize,
    capacity: usize,
    running: usize,
}

/// Resident memory of the server and the machine's memory, KiB (`null` when unreadable).
#[derive(Debug, Serialize)]
struct MemoryBody {
    server_rss_kb: Option<u64>,
    machine_total_kb: Option<u64>,
    machine_available_kb: Option<u64>,
}

/// The limits a request may ask for.
#[derive(Debug, Serialize)]
struct LimitsBody {
    default_time_s: f64,
    max_time_s: f64,
    default_memory_mib: u64,
    max_memory_mib: u64,
    default_compile_s: f64,
    max_compile_s: f64,
    max_body_bytes: usize,
    max_batch: usize,
    max_repeats: usize,
}

/// `GET /status`.
pub(crate) async fn status(State(state): State<Arc<AppState>>) -> Response {
    let stored = state.results.lock().map_or(0, |r| r.len());
    let limits = state.config.limits;
    Wire(StatusBody {
        status: Health::of(&state),
        version: env!("CARGO_PKG_VERSION"),
        queue: QueueBody {
            depth: state.pool.depth(),
            capacity: state.pool.capacity(),
            running: state.pool.running(),
        },
        workers: state.pool.workers(),
        worker_cpus: &state.info.cpus,
        memory: MemoryBody {
            server_rss_kb: proc_kb("/proc/self/status", "VmRSS"),
            machine_total_kb: proc_kb("/proc/meminfo", "MemTotal"),
            machine_available_kb: proc_kb("/proc/meminfo", "MemAvailable"),
        },
        results_stored: stored,
        uptime_s: state.started.elapsed().as_secs_f64(),
        problems: state.problems.len(),
        languages: Language::ALL.iter().map(|l| l.name()).collect(),
        limits: LimitsBody {
            default_time_s: limits.default_time_s,
            max_time_s: limits.max_time_s,
            default_memory_mib: limits.default_memory_mib,
            max_memory_mib: limits.max_memory_mib,
            default_compile_s: limits.default_compile_s,
            max_compile_s: limits.max_compile_s,
            max_body_bytes: state.config.max_body_bytes,
            max_batch: state.config.max_batch.min(state.pool.capacity()),
            max_repeats: state.config.max_repeats,
        },
        warnings: &state.info.warnings,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
