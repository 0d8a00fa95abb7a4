//! Benchmark problems, dataset importers and the paper's metrics.
//!
//! - [`problem`]: the [`Problem`] model, a plain value carrying everything a harness needs.
//! - [`load`] / [`DatasetSpec`]: read Venus, APPS, COFFE, LeetCodeDataset and ENAMEL files
//!   (`FORMAT:PATH`), reporting malformed rows in a [`LoadReport`] instead of failing.
//! - [`write_venus_parquet`] / [`write_venus_jsonl`]: write Venus-format files.
//! - [`harness`]: run a [`Submission`] over a problem's tests (and stress inputs) in the
//!   sandbox, in one process, and judge it outside that process; the measurement protocol
//!   (repeats, rounds, medians: [`Harness::measure_rounds`], [`Harness::measure_within`]).
//! - [`calibration`]: the cache of reference solutions measured on this machine.
//! - [`workbench`]: a harness, worker cores, the cache and a stop flag; calibration runs on it
//!   ([`Workbench::calibrate`]), and so does any other measurement of many solutions.
//! - [`scoring`]: candidates measured and scored against calibrated references (eval rows).
//! - [`metrics`]: pass@1, Beyond-T/M/I, buckets and bootstrap intervals.
//!
//! It runs programs only through the sandbox crate, and knows nothing of HTTP or LLMs.

#![warn(missing_docs)]

pub mod calibration;
mod dataset;
pub mod harness;
mod import;
pub mod metrics;
pub mod problem;
pub mod scoring;
pub mod stability;
pub mod workbench;

pub use calibration::{
    CalibrationCache, CalibrationError, CalibrationKey, CalibrationRecord, CalibrationRun,
    default_cache_dir, machine_description, machine_fingerprint,
};
pub use dataset::{Dataset, DatasetSpec, Format, LoadError, LoadReport, RowIssue};
pub use harness::{
    Case, CaseOrigin, CaseResult, Drift, Evaluation, Harness, HarnessConfig, HarnessError,
    Measured, Observer, RunOutcome, RunSettings, StopFlag, Subject, SubjectRuns, Submission, Suite,
    Unobserved, Verdict, WorkerCount, parallel, worker_cpus,
};
pub use import::coffe::coffe_id;
pub use import::load;
pub use import::venus::{VenusRow, VenusSolution, write_venus_jsonl, write_venus_parquet};
pub use metrics::Objective;
pub use problem::{
    Checker, Entry, Problem, RecordedPerformance, ReferenceSolution, StressSource, TestCase,
    VENUS_PLACEHOLDER,
};
pub use scoring::{Candidate, CandidateOutcome, EvalRow, Scores};
pub use workbench::{Calibrated, CalibrationTotals, Workbench, selected_references};
