//! Harnesses: how a solution is run against a problem's tests in the sandbox and judged.
//!
//! # One process per submission
//!
//! A Python solution runs *once*, in one sandboxed process, over all of its problem's test
//! inputs: the program the sandbox runs is a driver script shipped in this crate
//! (`driver.py`), which receives the solution's source and the test **inputs** (never the
//! expected outputs) framed on stdin, compiles the solution once and then, per test,
//!
//! - stdin/stdout programs (and Venus runners): `exec`s the compiled program in fresh globals
//!   with file descriptors 0 and 1 pointed at a file holding the input and a file catching the
//!   output (so `input()`, `sys.stdin.buffer`, `open(0)`, `print` and `os.write(1, ...)` all
//!   behave as in a process of their own), catching `SystemExit`;
//! - LeetCode methods and functions: parses the argument list with an `ast`-based literal reader
//!   (no evaluation of code), calls `Solution().method(**kwargs)` or `name(*args)` and writes the
//!   result's `repr` (converted to plain lists/dicts/sets/scalars first; linked lists and trees
//!   become lists), or the raw `repr` when it is not a plain value.
//!
//! It writes one framed record per test (output, wall time from `perf_counter_ns`, any
//! exception) on a private duplicate of stdout. **Per-test times are informational**: the
//! solution shares the driver's process and could forge them. The efficiency figures are the
//! sandbox's measurement of the whole run (wall time, peak RSS, memory integral), which also
//! contains the driver's own small, constant overhead (interpreter start, reading the inputs).
//!
//! Solutions in other languages are supported for stdin/stdout problems: the program is built
//! once and run once per test, each run measured by the sandbox; the run's figures are the sums
//! of wall and CPU time and of the memory integral, and the largest peak.
//!
//! # Verdicts cannot be forged
//!
//! Expected outputs never enter the solution's sandbox, and the comparison happens outside it:
//! in Rust for exact (whitespace-token) and LeetCode (structural, floats within
//! [`literal::FLOAT_REL_TOLERANCE`] / [`literal::FLOAT_ABS_TOLERANCE`]) checks, or, for evaluator code a
//! dataset provides (Venus `evaluate(expected, actual)`, ENAMEL `__check`), in a *separate*
//! sandboxed process (`evaluator.py`) that gets the expected values and the solution's outputs
//! but never the solution. A solution that prints `Success`, exits early, or looks for test
//! files finds nothing to exploit: missing outputs are wrong answers.
//!
//! # Stress inputs
//!
//! See [`Harness::suite`]: generators run once (seeded, sandboxed), expected outputs come from
//! the consensus of reference solutions, and the result is cached on disk.
//!
//! # Files
//!
//! - `settings.rs`: [`HarnessConfig`] (limits, repeats, seeds, cache folder), [`RunSettings`]
//!   (what one measurement uses) and the protocol id.
//! - `run.rs`: [`Harness`] and [`Submission`]: one run of a submission over a suite, judged.
//! - `verdict.rs`: what judging produces ([`Verdict`], [`CaseResult`], [`Evaluation`]).
//! - `protocol.rs`: repeats, rounds and medians ([`Measured`], [`RunOutcome`],
//!   [`Harness::measure_rounds`], [`Harness::measure_within`]), the workers' cores
//!   ([`worker_cpus`]), progress ([`Observer`]) and stopping ([`StopFlag`]).
//! - `suite.rs`: a problem's tests plus stress inputs ([`Suite`], [`Harness::suite`]).
//! - `literal.rs`: Python literals read and compared outside the sandbox.
//! - `scripts.rs` and the Python files beside it: `common.py` (framing and literal helpers every
//!   script starts with), `driver.py` (runs a solution over all inputs in one process),
//!   `evaluator.py` (a dataset's checker code, in a process of its own), `generator.py`
//!   (seeded stress-input generators).

pub mod literal;
mod probe;
mod protocol;
mod run;
mod scripts;
mod settings;
mod suite;
mod verdict;

use std::path::PathBuf;

use afterburner_sandbox::SandboxError;

pub use probe::{BASELINE_PROBES, Drift, PROBE_FILE, PROBE_SOURCE, WINDOW_PROBES};
pub(crate) use protocol::Conclusion;
pub use protocol::{
    Discard, MeasureError, Measured, Observer, Rounds, RunOutcome, RunSink, StopFlag, Subject,
    SubjectRuns, Unobserved, WorkerCount, parallel, worker_cpus,
};
pub use run::{Harness, Submission};
pub(crate) use settings::hex;
pub use settings::{
    COUNTING_MIN_LIMIT, COUNTING_SLOWDOWN, DEFAULT_DRIFT_INTERVAL, HarnessConfig, PROTOCOL_VERSION,
    RunSettings, counting_limits, scripts_digest, short_hash,
};
pub use suite::{
    Case, CaseOrigin, DroppedInput, ENAMEL_TESTS_PER_LEVEL, Suite, planned_stress_inputs,
};
pub use verdict::{CaseResult, Evaluation, Verdict, case_times_by_origin};

/// Why a harness could not run or judge something (never the solution's own failure).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The sandbox failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// The problem or solution cannot be run by any harness here.
    #[error("problem {problem}: {reason}")]
    Unsupported {
        /// The problem's id.
        problem: String,
        /// Why not.
        reason: String,
    },
    /// One of the harness's own scripts does not build (a broken installation).
    #[error("harness script `{script}` does not build in the sandbox: {detail}")]
    Script {
        /// The script.
        script: &'static str,
        /// The compiler's output.
        detail: String,
    },
    /// A cache file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
