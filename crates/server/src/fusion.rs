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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use afterburner_sandbox::{Compilation, SandboxError, Status};
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::common::{SingleRun, Wire, program_language, record_single, run_single};
use crate::error::{ApiError, JsonBody};
use crate::pool::Work;
use crate::state::AppState;

/// `POST /run_code`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunCodeRequest {
    code: String,
    language: String,
    #[serde(default)]
    stdin: Option<String>,
    /// Compile time limit, seconds (capped by the server): the compiler is killed when it
    /// reaches it, and `compile_result.status` is `TimeLimitExceeded`.
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

/// The top-level verdict of a SandboxFusion answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum FusionStatus {
    /// Compiled and exited with code 0.
    Success,
    /// Did not compile, failed or ran out of a limit.
    Failed,
    /// The sandbox itself failed.
    SandboxError,
}

/// How a compilation or run command ended, in SandboxFusion's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum CommandStatus {
    /// It ended (whatever its return code).
    Finished,
    /// It ran out of time.
    TimeLimitExceeded,
}

/// A compilation or run command's result.
#[derive(Debug, Serialize)]
struct CommandResult {
    status: CommandStatus,
    /// Seconds.
    execution_time: Option<f64>,
    /// The exit code, or minus the signal that killed it.
    return_code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// This server's own figures of the run, beside SandboxFusion's fields.
#[derive(Debug, Serialize)]
struct Figures {
    status: Status,
    wall_ms: f64,
    cpu_ms: f64,
    peak_rss_kb: u64,
    integral_kb_ms: f64,
    compile_ms: Option<f64>,
    cached_build: bool,
}

/// The SandboxFusion `/run_code` answer.
#[derive(Debug, Serialize)]
pub(crate) struct RunCodeBody {
    status: FusionStatus,
    message: String,
    compile_result: Option<CommandResult>,
    run_result: Option<CommandResult>,
    /// Always `null`: there are no executor pods here.
    executor_pod_name: Option<String>,
    /// Always `{}`: `fetch_files` is not supported.
    files: BTreeMap<String, String>,
    /// Absent only when the sandbox failed before measuring anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    afterburner: Option<Figures>,
}

impl RunCodeBody {
    /// An answer with no command results (filled in by the caller where there are some).
    fn new(status: FusionStatus, message: impl Into<String>, figures: Option<Figures>) -> Self {
        RunCodeBody {
            status,
            message: message.into(),
            compile_result: None,
            run_result: None,
            executor_pod_name: None,
            files: BTreeMap::new(),
            afterburner: figures,
        }
    }
}

fn compile_result(c: &Compilation) -> CommandResult {
    let status = if c.status == Status::TimeLimit {
        CommandStatus::TimeLimitExceeded
    } else {
        CommandStatus::Finished
    };
    let code = match c.status {
        Status::Accepted => Some(0),
        _ => c.measurement.exit_code.filter(|&x| x != 0).or(Some(1)),
    };
    CommandResult {
        status,
        execution_time: Some(c.compile_ms / 1000.0),
        return_code: code,
        stdout: String::new(),
        stderr: c.output.clone(),
    }
}

/// The SandboxFusion response for one run.
fn body(outcome: &Result<SingleRun, SandboxError>) -> RunCodeBody {
    let run = match outcome {
        Err(e) => {
            return RunCodeBody::new(
                FusionStatus::SandboxError,
                format!("sandbox error: {e}"),
                None,
            );
        }
        Ok(run) => run,
    };
    let r = &run.result;
    let m = &r.measurement;
    let figures = Some(Figures {
        status: m.status,
        wall_ms: m.wall_ms,
        cpu_ms: m.cpu_ms,
        peak_rss_kb: m.peak_rss_kb,
        integral_kb_ms: m.integral_kb_ms,
        compile_ms: run.compilation.as_ref().map(|c| c.compile_ms),
        cached_build: run.cached,
    });
    let compiled_language = run.language.is_compiled();
    if let Some(c) = &run.compilation
        && c.status == Status::SandboxError
    {
        return RunCodeBody::new(
            FusionStatus::SandboxError,
            format!("the sandbox failed while compiling: {}", c.output),
            figures,
        );
    }
    let compile = match (&run.compilation, compiled_language) {
        (Some(c), true) => Some(compile_result(c)),
        _ => None,
    };
    // A syntax error of an interpreted language is, as in SandboxFusion, a failed run.
    if m.status == Status::CompileError && !compiled_language {
        let diagnostics = run
            .compilation
            .as_ref()
            .map_or(String::new(), |c| c.output.clone());
        return RunCodeBody {
            run_result: Some(CommandResult {
                status: CommandStatus::Finished,
                execution_time: Some(0.0),
                return_code: Some(1),
                stdout: String::new(),
                stderr: diagnostics,
            }),
            ..RunCodeBody::new(FusionStatus::Failed, "", figures)
        };
    }
    if m.status == Status::CompileError {
        // Empty for a plain compile error, as SandboxFusion; why, when a limit stopped it.
        let message = run
            .compilation
            .as_ref()
            .and_then(|c| c.message.clone())
            .unwrap_or_default();
        return RunCodeBody {
            compile_result: compile,
            ..RunCodeBody::new(FusionStatus::Failed, message, figures)
        };
    }
    if m.status == Status::SandboxError {
        let message = r
            .message
            .clone()
            .unwrap_or_else(|| "the sandbox failed".into());
        return RunCodeBody {
            compile_result: compile,
            ..RunCodeBody::new(FusionStatus::SandboxError, message, figures)
        };
    }
    let run_command = if m.status == Status::TimeLimit {
        CommandStatus::TimeLimitExceeded
    } else {
        CommandStatus::Finished
    };
    let status = if m.status == Status::Accepted {
        FusionStatus::Success
    } else {
        FusionStatus::Failed
    };
    RunCodeBody {
        compile_result: compile,
        run_result: Some(CommandResult {
            status: run_command,
            execution_time: Some(m.wall_ms / 1000.0),
            return_code: m.exit_code.or(m.signal.map(|s| -s)),
            stdout: r.stdout_text(),
            stderr: r.stderr_text(),
        }),
        ..RunCodeBody::new(status, r.message.clone().unwrap_or_default(), figures)
    }
}

/// `POST /run_code`.
pub(crate) async fn run_code(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<RunCodeRequest>,
) -> Result<Wire<RunCodeBody>, ApiError> {
    let language = program_language(&req.language, &req.code)?;
    if req.files.values().any(Option::is_some) || !req.fetch_files.is_empty() {
        return Err(ApiError::bad_request(
            "`files` and `fetch_files` are not supported: the program gets its input on stdin \
             and a private empty /tmp",
        ));
    }
    let compile_limits = state
        .config
        .limits
        .resolve_compile(req.compile_timeout, "compile_timeout")
        .map_err(ApiError::bad_request)?;
    let memory = req.memory_limit_mb.filter(|m| *m != -1.0);
    let limits = state
        .config
        .limits
        .resolve(req.run_timeout, memory, "run_timeout/memory_limit_MB")
        .map_err(ApiError::bad_request)?;
    let (code, stdin) = (req.code, req.stdin.unwrap_or_default().into_bytes());
    let work: Work<Result<SingleRun, SandboxError>> = Box::new(move |w| {
        run_single(
            w,
            language,
            &code,
            stdin,
            Some(&compile_limits),
            limits,
            false,
        )
    });
    let outcome = state.run_one(work).await?;
    record_single(&state.metrics, language, &outcome);
    Ok(Wire(body(&outcome)))
}
