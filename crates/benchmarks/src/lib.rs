//! Benchmark problems, dataset importers and the paper's metrics.
//!
//! - [`problem`]: the [`Problem`] model, a plain value carrying everything a harness needs.
//! - [`load`] / [`DatasetSpec`]: read Venus, APPS, COFFE, LeetCodeDataset and ENAMEL files
//!   (`FORMAT:PATH`), reporting malformed rows in a [`LoadReport`] instead of failing.
//! - [`write_venus_parquet`] / [`write_venus_jsonl`]: write Venus-format files.
//! - [`metrics`]: pass@1, Beyond-T/M/I, buckets and bootstrap intervals.
//!
//! This crate runs no programs and knows nothing of HTTP or LLMs.

#![warn(missing_docs)]

mod dataset;
mod import;
pub mod metrics;
pub mod problem;

pub use dataset::{Dataset, DatasetSpec, Format, LoadError, LoadReport, RowIssue, load};
pub use import::coffe::coffe_id;
pub use import::venus::{VenusRow, VenusSolution, write_venus_jsonl, write_venus_parquet};
pub use problem::{
    Checker, Entry, Problem, RecordedPerformance, ReferenceSolution, StressSource, TestCase,
    VENUS_PLACEHOLDER,
};
