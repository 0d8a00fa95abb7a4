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
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::common::{
    SingleRun, Wire, failure_message, program_language, record_single, run_single, to_wire_value,
};
use crate::error::{ApiError, JsonBody};
use crate::pool::Work;
use crate::results::TaskState;
use crate::state::AppState;

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

/// Where a task stands, as Monolith names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum TaskStatus {
    /// Queued or running.
    Pending,
    /// Ran and exited with code 0 within its limits.
    Success,
    /// Ran out of time.
    Timeout,
    /// Anything else: failed, did not compile, or could not be run.
    Error,
}

/// A Monolith response body.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum TaskBody {
    /// The task ran (or the sandbox failed on it): its verdict and outputs.
    Finished {
        task_id: String,
        status: TaskStatus,
        /// The sandbox's status, finer than `status`.
        run_status: Status,
        /// Why it failed, when it did.
        error: Option<String>,
        /// What it printed and what it cost (`null` when the sandbox failed).
        output_dict: Option<Outputs>,
    },
    /// The job never ran (e.g. the server shut down first).
    NotRun {
        task_id: String,
        status: TaskStatus,
        error: String,
    },
    /// Queued or running.
    Pending { task_id: String, status: TaskStatus },
}

/// What a finished program printed and what it cost, in Monolith's names.
#[derive(Debug, Serialize)]
struct Outputs {
    stdout: String,
    stderr: String,
    /// Peak resident memory, KiB.
    peak_memory: u64,
    /// Memory integral, KiB*ms.
    integral: f64,
    /// Wall time, ms.
    duration: f64,
    /// The memory trace as `[t_ns, rss_kb]` pairs (empty unless asked for).
    log: Vec<[u64; 2]>,
    /// CPU time, ms.
    cpu_time: f64,
    exit_code: Option<i32>,
    signal: Option<i32>,
    samples: u64,
    sample_hz: f64,
    /// Compile time, ms (compiled languages).
    compile_duration: Option<f64>,
    cached_build: bool,
}

impl TaskBody {
    /// The body of a task whose job answered.
    fn finished(task_id: &str, outcome: &Result<SingleRun, SandboxError>) -> TaskBody {
        let task_id = task_id.to_string();
        let run = match outcome {
            Err(e) => {
                return TaskBody::Finished {
                    task_id,
                    status: TaskStatus::Error,
                    run_status: Status::SandboxError,
                    error: Some(format!("sandbox error: {e}")),
                    output_dict: None,
                };
            }
            Ok(run) => run,
        };
        let m = &run.result.measurement;
        let status = match m.status {
            Status::Accepted => TaskStatus::Success,
            Status::TimeLimit => TaskStatus::Timeout,
            _ => TaskStatus::Error,
        };
        let log = run
            .result
            .memory_trace
            .iter()
            .map(|s| [s.t_ns, s.rss_kb])
            .collect();
        TaskBody::Finished {
            task_id,
            status,
            run_status: m.status,
            error: failure_message(run),
            output_dict: Some(Outputs {
                stdout: run.result.stdout_text(),
                stderr: run.result.stderr_text(),
                peak_memory: m.peak_rss_kb,
                integral: m.integral_kb_ms,
                duration: m.wall_ms,
                log,
                cpu_time: m.cpu_ms,
                exit_code: m.exit_code,
                signal: m.signal,
                samples: m.samples,
                sample_hz: m.sample_hz,
                compile_duration: run.compilation.as_ref().map(|c| c.compile_ms),
                cached_build: run.cached,
            }),
        }
    }

    fn pending(task_id: &str) -> TaskBody {
        TaskBody::Pending {
            task_id: task_id.to_string(),
            status: TaskStatus::Pending,
        }
    }
}

/// `POST /execute`.
pub(crate) async fn execute(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Result<Response, ApiError> {
    let language = program_language(&req.language, &req.code)?;
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
        Box::new(move |w| run_single(w, language, &code, stdin, None, limits, trace));

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
                    record_single(&st.metrics, language, &outcome);
                    TaskBody::finished(&id, &outcome)
                }
                Err(e) => TaskBody::NotRun {
                    task_id: id.clone(),
                    status: TaskStatus::Error,
                    error: e.message,
                },
            };
            match to_wire_value(&done) {
                Ok(body) => {
                    if let Ok(mut r) = st.results.lock() {
                        r.done(&id, body);
                    }
                }
                Err(e) => tracing::error!("task {id}: {}", e.message),
            }
        });
        return Ok((StatusCode::ACCEPTED, Wire(TaskBody::pending(&task_id))).into_response());
    }

    let outcome = state.run_one(work).await?;
    record_single(&state.metrics, language, &outcome);
    let done = to_wire_value(&TaskBody::finished(&task_id, &outcome))?;
    if let Ok(mut r) = state.results.lock() {
        r.done(&task_id, done.clone());
    }
    Ok(Json(done).into_response())
}

/// `GET /results/<task_id>`.
pub(crate) async fn results(
    State(state): State<Arc<AppState>>,
    Path(task_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let found = state.results.lock().ok().and_then(|r| r.get(&task_id));
    match found {
        Some(TaskState::Done(v)) => Ok(Json(v)),
        Some(TaskState::Pending) => to_wire_value(&TaskBody::pending(&task_id)).map(Json),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no task `{task_id}`: unknown, or older than the latest {} finished tasks kept",
                state.config.results_kept
            ),
        )),
    }
}
