//! Monolith-compatible endpoints: `POST /execute` (synchronous, or asynchronous with
//! `"async": true`) and `GET /results/<task_id>`.
//!
//! A synchronous `/execute` answers with the whole result *and* keeps it under its `task_id`,
//! so clients written for Monolith's submit-then-poll flow work unchanged.

use std::sync::Arc;

use afterburner_sandbox::{SandboxError, Status};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::{AppState, TaskState};
use crate::common::{SingleRun, failure_message, parse_language, require_code, run_single};
use crate::error::{ApiError, JsonBody};
use crate::pool::Work;

/// `POST /execute`.
#[derive(Debug, Deserialize)]
pub(crate) struct ExecuteRequest {
    /// Source code.
    code: String,
    /// Language name (`python`, `cpp`, ...).
    language: String,
    /// Packages Monolith would install; none can be installed here (must be empty).
    #[serde(default)]
    libraries: Vec<String>,
    /// Time limit in seconds (capped by the server).
    timeout: Option<f64>,
    /// Memory limit in MiB (an extension; capped by the server).
    memory_limit: Option<f64>,
    /// Whether to return the memory trace as `log`.
    #[serde(default, alias = "run_memory_profile")]
    run_profiling: bool,
    /// Standard input.
    #[serde(default)]
    stdin: String,
    /// Answer at once with a task id; the result is fetched from `GET /results/<task_id>`.
    #[serde(default, rename = "async")]
    asynchronous: bool,
}

/// The Monolith response body of a finished task.
fn body(task_id: &str, outcome: &Result<SingleRun, SandboxError>) -> Value {
    match outcome {
        Err(e) => json!({
            "task_id": task_id,
            "status": "error",
            "run_status": Status::SandboxError,
            "error": format!("sandbox error: {e}"),
            "output_dict": Value::Null,
        }),
        Ok(run) => {
            let m = &run.result.measurement;
            let status = match m.status {
                Status::Accepted => "success",
                Status::TimeLimit => "timeout",
                _ => "error",
            };
            let log: Vec<[u64; 2]> = run
                .result
                .memory_trace
                .iter()
                .map(|s| [s.t_ns, s.rss_kb])
                .collect();
            json!({
                "task_id": task_id,
                "status": status,
                "run_status": m.status,
                "error": failure_message(run),
                "output_dict": {
                    "stdout": run.result.stdout_text(),
                    "stderr": run.result.stderr_text(),
                    "peak_memory": m.peak_rss_kb,
                    "integral": m.integral_kb_ms,
                    "duration": m.wall_ms,
                    "log": log,
                    "cpu_time": m.cpu_ms,
                    "exit_code": m.exit_code,
                    "signal": m.signal,
                    "samples": m.samples,
                    "sample_hz": m.sample_hz,
                    "compile_duration": run.compilation.as_ref().map(|c| c.compile_ms),
                    "cached_build": run.cached,
                },
            })
        }
    }
}

/// `POST /execute`.
pub(crate) async fn execute(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let language = parse_language(&req.language, "language")?;
    require_code(&req.code, "code")?;
    if !req.libraries.is_empty() {
        return Err(ApiError::bad_request(format!(
            "`libraries`: installing packages is not supported (asked for {}); programs see the \
             packages installed on the server's host",
            req.libraries.join(", ")
        )));
    }
    let limits = state
        .config
        .limits
        .resolve(req.timeout, req.memory_limit, "timeout/memory_limit")
        .map_err(ApiError::bad_request)?;
    let task_id = state.task_id();
    let (code, stdin, trace) = (req.code, req.stdin.into_bytes(), req.run_profiling);
    let work: Work<Result<SingleRun, SandboxError>> =
        Box::new(move |w| run_single(w, language, &code, stdin, limits, trace));

    if req.asynchronous {
        let mut receivers = state.submit_all(vec![work])?;
        let Some(rx) = receivers.pop() else {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: no receiver for the submitted job",
            ));
        };
        if let Ok(mut r) = state.results.lock() {
            r.pending(&task_id);
        }
        let st = state.clone();
        let id = task_id.clone();
        tokio::spawn(async move {
            let done = match st.answer(rx).await {
                Ok(outcome) => {
                    record(&st, &outcome);
                    body(&id, &outcome)
                }
                Err(e) => json!({"task_id": id, "status": "error", "error": e.message}),
            };
            if let Ok(mut r) = st.results.lock() {
                r.done(&id, done);
            }
        });
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"task_id": task_id, "status": "pending"})),
        )
            .into_response());
    }

    let outcome = state.run_all(vec![work]).await?.pop().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: no answer for the submitted job",
        )
    })?;
    record(&state, &outcome);
    let done = body(&task_id, &outcome);
    if let Ok(mut r) = state.results.lock() {
        r.done(&task_id, done.clone());
    }
    Ok(Json(done).into_response())
}

fn record(state: &AppState, outcome: &Result<SingleRun, SandboxError>) {
    state.metrics.run(match outcome {
        Ok(run) => run.status().as_str(),
        Err(_) => Status::SandboxError.as_str(),
    });
}

/// `GET /results/<task_id>`.
pub(crate) async fn results(
    State(state): State<Arc<AppState>>,
    Path(task_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = state.results.lock().ok().and_then(|r| r.get(&task_id));
    match found {
        Some(TaskState::Done(v)) => Ok(Json(v)),
        Some(TaskState::Pending) => Ok(Json(json!({"task_id": task_id, "status": "pending"}))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no task `{task_id}`: unknown, or older than the latest {} finished tasks kept",
                state.config.results_kept
            ),
        )),
    }
}
