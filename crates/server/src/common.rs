//! Pieces the wire formats share: answering with a typed body, language names, and running one
//! program.

use std::str::FromStr;
use std::sync::Arc;

use afterburner_sandbox::{
    Compilation, Language, Limits, RunRequest, RunResult, SandboxError, Status, clip,
};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pool::Worker;

/// A response body of a serde type: the compiler checks each wire format through its type.
///
/// Bodies go out through a [`Value`], whose objects keep their keys sorted, so every object at
/// every depth comes out in alphabetical key order, as it always has on this server.
#[derive(Debug)]
pub(crate) struct Wire<T>(pub T);

/// `body` as a JSON [`Value`] (objects with sorted keys), or a 500 saying why it cannot be one.
pub(crate) fn to_wire_value<T: Serialize>(body: &T) -> Result<Value, ApiError> {
    serde_json::to_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: the answer cannot be written as JSON: {e}"),
        )
    })
}

impl<T: Serialize> IntoResponse for Wire<T> {
    fn into_response(self) -> Response {
        match to_wire_value(&self.0) {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// Parses a language name (aliases included); the error names the field and the choices.
pub(crate) fn parse_language(name: &str, field: &str) -> Result<Language, ApiError> {
    Language::from_str(name).map_err(|e| ApiError::bad_request(format!("`{field}`: {e}")))
}

/// Refuses empty code with a message naming the field.
pub(crate) fn require_code(code: &str, field: &str) -> Result<(), ApiError> {
    if code.trim().is_empty() {
        return Err(ApiError::bad_request(format!(
            "`{field}` is empty: there is no program to run"
        )));
    }
    Ok(())
}

/// The language of a request's program (its `language` field), once its `code` field is
/// known not to be empty.
pub(crate) fn program_language(language: &str, code: &str) -> Result<Language, ApiError> {
    let language = parse_language(language, "language")?;
    require_code(code, "code")?;
    Ok(language)
}

/// One program built (or found built) and run once.
#[derive(Debug)]
pub(crate) struct SingleRun {
    /// The program's language.
    pub language: Language,
    /// How it compiled (or passed its syntax check), when it needed to.
    pub compilation: Option<Compilation>,
    /// The run (a `compile_error` result without running when it did not compile).
    pub result: RunResult,
    /// Whether the built program came from the cache.
    pub cached: bool,
}

impl SingleRun {
    /// The run's status.
    pub fn status(&self) -> Status {
        self.result.measurement.status
    }
}

/// Builds `code` under `compile_limits` (the server's default when `None`), or reuses its
/// build, and runs it once on `stdin` under `limits`, pinned to the worker's core.
pub(crate) fn run_single(
    w: &Worker<'_>,
    language: Language,
    code: &str,
    stdin: Vec<u8>,
    compile_limits: Option<&Limits>,
    limits: Limits,
    keep_memory_trace: bool,
) -> Result<SingleRun, SandboxError> {
    let (program, cached): (Arc<_>, bool) =
        w.programs
            .get_or_build(w.sandbox, language, code, compile_limits)?;
    let result = w.sandbox.run(
        &program,
        &RunRequest {
            stdin,
            limits,
            cpu: w.cpu,
            keep_memory_trace,
            count_instructions: false,
        },
    )?;
    Ok(SingleRun {
        language,
        compilation: program.compilation().cloned(),
        result,
        cached,
    })
}

/// The status a run counts under in the metrics: its own, or `sandbox_error`.
pub(crate) fn run_status(outcome: &Result<SingleRun, SandboxError>) -> Status {
    match outcome {
        Ok(run) => run.status(),
        Err(_) => Status::SandboxError,
    }
}

/// Counts a single run in the metrics: its outcome, its build (when built now, not taken from
/// the cache) and its run's wall time (when it ran).
pub(crate) fn record_single(
    metrics: &Metrics,
    language: Language,
    outcome: &Result<SingleRun, SandboxError>,
) {
    metrics.run(run_status(outcome).as_str());
    if let Ok(run) = outcome {
        if !run.cached
            && let Some(c) = &run.compilation
        {
            metrics.compiled(language.name(), c.compile_ms / 1000.0);
        }
        if run.status() != Status::CompileError {
            metrics.ran(language.name(), run.result.measurement.wall_ms / 1000.0);
        }
    }
}

/// Why a run failed, in one message: the sandbox's reason, compiler output or stderr.
pub(crate) fn failure_message(run: &SingleRun) -> Option<String> {
    let r = &run.result;
    match r.measurement.status {
        Status::Accepted => None,
        Status::CompileError => Some(format!(
            "compile error: {}",
            clip(
                run.compilation
                    .as_ref()
                    .map_or("", |c| c.output.as_str())
                    .trim(),
                4000
            )
        )),
        status => {
            let mut m = status.to_string();
            if let Some(why) = &r.message {
                m.push_str(": ");
                m.push_str(why);
            }
            let stderr = r.stderr_text();
            if !stderr.trim().is_empty() {
                m.push_str("; stderr: ");
                m.push_str(&clip(stderr.trim(), 2000));
            }
            Some(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_errors_name_the_field_and_the_choices() {
        let e = parse_language("cobol", "language").unwrap_err();
        assert!(e.message.contains("`language`"), "{}", e.message);
        assert!(e.message.contains("python"), "{}", e.message);
        assert_eq!(
            parse_language("nodejs", "x").ok(),
            Some(Language::JavaScript)
        );
        assert!(require_code("  \n", "code").is_err());
    }
}
