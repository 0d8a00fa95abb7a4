//! SandboxFusion-compatible `POST /run_code`, so that verl's `reward_model.sandbox_fusion.url`
//! can point here unchanged.
//!
//! The shape follows what verl's client reads (`verl/utils/reward_score/sandbox_fusion/utils.py`):
//! top-level `status` is `Success` when the program compiled and exited with code 0, `Failed`
//! otherwise, `SandboxError` when the sandbox itself failed; `compile_result` (compiled
//! languages only, as SandboxFusion) and `run_result` carry `status`
//! (`Finished | Error | TimeLimitExceeded`), `execution_time` (seconds), `return_code`, `stdout`
//! and `stderr`. A signal is reported as a negative return code, as Python's `subprocess` does.
//! An `afterburner` object adds this server's measurements. Programs built once are reused when
//! the same code comes again (verl sends the same code once per test case).

use std::collections::HashMap;
use std::sync::Arc;

use afterburner_sandbox::{Compilation, SandboxError, Status};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::common::{SingleRun, parse_language, require_code, run_single};
use crate::error::{ApiError, JsonBody};
use crate::pool::Work;

/// `POST /run_code`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunCodeRequest {
    code: String,
    language: String,
    #[serde(default)]
    stdin: Option<String>,
    /// Compile time limit, seconds: compilation itself is bounded by the sandbox's compile
    /// limit (60 s); a compilation slower than this is reported as `TimeLimitExceeded`.
    compile_timeout: Option<f64>,
    /// Run time limit, seconds (capped by the server).
    run_timeout: Option<f64>,
    /// Memory limit, MiB; `-1` or absent for the server's default (capped by the server).
    #[serde(rename = "memory_limit_MB", alias = "memory_limit_mb")]
    memory_limit_mb: Option<f64>,
    /// Extra files (base64): not supported, must be empty.
    #[serde(default)]
    files: HashMap<String, Option<String>>,
    /// Files to fetch after the run: not supported, must be empty.
    #[serde(default)]
    fetch_files: Vec<String>,
}

fn command_result(
    status: &str,
    seconds: Option<f64>,
    return_code: Option<i32>,
    stdout: String,
    stderr: String,
) -> Value {
    json!({
        "status": status,
        "execution_time": seconds,
        "return_code": return_code,
        "stdout": stdout,
        "stderr": stderr,
    })
}

fn compile_result(c: &Compilation, timed_out: bool) -> Value {
    let status = if timed_out || c.status == Status::TimeLimit {
        "TimeLimitExceeded"
    } else {
        "Finished"
    };
    let code = match c.status {
        Status::Accepted => Some(0),
        _ => c.measurement.exit_code.filter(|&x| x != 0).or(Some(1)),
    };
    command_result(
        status,
        Some(c.compile_ms / 1000.0),
        code,
        String::new(),
        c.output.clone(),
    )
}

/// The SandboxFusion response for one run.
fn body(outcome: &Result<SingleRun, SandboxError>, compile_timeout_s: Option<f64>) -> Value {
    let run = match outcome {
        Err(e) => {
            return json!({
                "status": "SandboxError",
                "message": format!("sandbox error: {e}"),
                "compile_result": Value::Null,
                "run_result": Value::Null,
                "executor_pod_name": Value::Null,
                "files": {},
            });
        }
        Ok(run) => run,
    };
    let r = &run.result;
    let m = &r.measurement;
    let compile_slow = match (&run.compilation, compile_timeout_s) {
        (Some(c), Some(limit)) => c.compile_ms / 1000.0 > limit,
        _ => false,
    };
    let extra = json!({
        "status": m.status,
        "wall_ms": m.wall_ms,
        "cpu_ms": m.cpu_ms,
        "peak_rss_kb": m.peak_rss_kb,
        "integral_kb_ms": m.integral_kb_ms,
        "compile_ms": run.compilation.as_ref().map(|c| c.compile_ms),
        "cached_build": run.cached,
    });
    let compiled_language = run.language.is_compiled();
    if let Some(c) = &run.compilation
        && c.status == Status::SandboxError
    {
        return json!({
            "status": "SandboxError",
            "message": format!("the sandbox failed while compiling: {}", c.output),
            "compile_result": Value::Null,
            "run_result": Value::Null,
            "executor_pod_name": Value::Null,
            "files": {},
            "afterburner": extra,
        });
    }
    let compile = match (&run.compilation, compiled_language) {
        (Some(c), true) => compile_result(c, compile_slow),
        _ => Value::Null,
    };
    // A syntax error of an interpreted language is, as in SandboxFusion, a failed run.
    if m.status == Status::CompileError && !compiled_language {
        let diagnostics = run
            .compilation
            .as_ref()
            .map_or(String::new(), |c| c.output.clone());
        return json!({
            "status": "Failed",
            "message": "",
            "compile_result": Value::Null,
            "run_result": command_result("Finished", Some(0.0), Some(1), String::new(), diagnostics),
            "executor_pod_name": Value::Null,
            "files": {},
            "afterburner": extra,
        });
    }
    if m.status == Status::CompileError || (compile_slow && compiled_language) {
        return json!({
            "status": "Failed",
            "message": if compile_slow { "compilation exceeded compile_timeout" } else { "" },
            "compile_result": compile,
            "run_result": Value::Null,
            "executor_pod_name": Value::Null,
            "files": {},
            "afterburner": extra,
        });
    }
    if m.status == Status::SandboxError {
        return json!({
            "status": "SandboxError",
            "message": r.message.clone().unwrap_or_else(|| "the sandbox failed".into()),
            "compile_result": compile,
            "run_result": Value::Null,
            "executor_pod_name": Value::Null,
            "files": {},
            "afterburner": extra,
        });
    }
    let run_status = if m.status == Status::TimeLimit {
        "TimeLimitExceeded"
    } else {
        "Finished"
    };
    let return_code = m.exit_code.or(m.signal.map(|s| -s));
    json!({
        "status": if m.status == Status::Accepted { "Success" } else { "Failed" },
        "message": r.message.clone().unwrap_or_default(),
        "compile_result": compile,
        "run_result": command_result(
            run_status,
            Some(m.wall_ms / 1000.0),
            return_code,
            r.stdout_text(),
            r.stderr_text(),
        ),
        "executor_pod_name": Value::Null,
        "files": {},
        "afterburner": extra,
    })
}

/// `POST /run_code`.
pub(crate) async fn run_code(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RunCodeRequest>,
) -> Result<Json<Value>, ApiError> {
    let language = parse_language(&req.language, "language")?;
    require_code(&req.code, "code")?;
    if req.files.values().any(Option::is_some) || !req.fetch_files.is_empty() {
        return Err(ApiError::bad_request(
            "`files` and `fetch_files` are not supported: the program gets its input on stdin \
             and a private empty /tmp",
        ));
    }
    if let Some(t) = req.compile_timeout
        && !(t.is_finite() && t > 0.0)
    {
        return Err(ApiError::bad_request(format!(
            "`compile_timeout`: must be a positive number of seconds, got {t}"
        )));
    }
    let memory = req.memory_limit_mb.filter(|m| *m != -1.0);
    let limits = state
        .config
        .limits
        .resolve(req.run_timeout, memory, "run_timeout/memory_limit_MB")
        .map_err(ApiError::bad_request)?;
    let (code, stdin) = (req.code, req.stdin.unwrap_or_default().into_bytes());
    let work: Work<Result<SingleRun, SandboxError>> =
        Box::new(move |w| run_single(w, language, &code, stdin, limits, false));
    let outcome = state.run_all(vec![work]).await?.pop().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: no answer for the submitted job",
        )
    })?;
    state.metrics.run(match &outcome {
        Ok(run) => run.status().as_str(),
        Err(_) => Status::SandboxError.as_str(),
    });
    Ok(Json(body(&outcome, req.compile_timeout)))
}
