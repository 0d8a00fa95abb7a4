//! Pieces the wire formats share: language names, text clipping, and running one program.

use std::str::FromStr;
use std::sync::Arc;

use afterburner_sandbox::{
    Compilation, Language, Limits, RunRequest, RunResult, SandboxError, Status,
};

use crate::error::ApiError;
use crate::pool::Worker;

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

/// The first `max` characters of `text`, with `...` when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}...")
    }
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

/// Builds `code` (or reuses its build) and runs it once on `stdin` under `limits`, pinned to
/// the worker's core.
pub(crate) fn run_single(
    w: &Worker<'_>,
    language: Language,
    code: &str,
    stdin: Vec<u8>,
    limits: Limits,
    keep_memory_trace: bool,
) -> Result<SingleRun, SandboxError> {
    let (program, cached): (Arc<_>, bool) = w.programs.get_or_build(w.sandbox, language, code)?;
    let result = w.sandbox.run(
        &program,
        &RunRequest {
            stdin,
            limits,
            cpu: w.cpu,
            keep_memory_trace,
        },
    )?;
    Ok(SingleRun {
        language,
        compilation: program.compilation().cloned(),
        result,
        cached,
    })
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

    #[test]
    fn clipping_counts_characters_not_bytes() {
        assert_eq!(clip("héllo", 2), "hé...");
        assert_eq!(clip("abc", 3), "abc");
    }
}
