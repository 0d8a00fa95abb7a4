//! Errors of the sandbox itself (never of the program it runs).

use std::io;
use std::path::PathBuf;

use crate::Language;

/// A failure of the sandbox, as opposed to a failure of the program it runs.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The toolchain a language needs is not installed or not usable.
    #[error("{language} toolchain not available: {detail}")]
    MissingToolchain {
        /// The language that cannot be built or run.
        language: Language,
        /// Which tool is missing and how to install it.
        detail: String,
    },
    /// A limit is outside the range the sandbox accepts.
    #[error("invalid limit: {0}")]
    InvalidLimit(String),
    /// The sandbox cannot work on this machine (privileges, kernel features).
    #[error("sandbox unsupported on this machine: {0}")]
    Unsupported(String),
    /// A step of setting up the isolated process failed.
    #[error("sandbox setup failed at `{step}`: {source}")]
    Setup {
        /// The setup step that failed (`mount /usr`, `seccomp`, ...).
        step: String,
        /// The operating system error.
        source: io::Error,
    },
    /// A file or directory operation of the supervisor failed.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What the supervisor was doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system error.
        source: io::Error,
    },
    /// A system call of the supervisor failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call that failed.
        call: &'static str,
        /// The operating system error.
        source: io::Error,
    },
}

impl SandboxError {
    /// An [`SandboxError::Io`] for `path`.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SandboxError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A [`SandboxError::Sys`] from the current `errno`.
    pub(crate) fn last_os(call: &'static str) -> Self {
        SandboxError::Sys {
            call,
            source: io::Error::last_os_error(),
        }
    }
}
