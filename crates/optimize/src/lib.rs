//! The test-time Iterative Optimization Framework (SPEC section 6): a model behind any
//! OpenAI-compatible endpoint proposes code, the sandbox measures it with the benchmark
//! harness, and the incumbent with its measurements goes into the next prompt.
//!
//! - [`client`]: the chat completions client (retries with backoff, timeouts, a concurrency
//!   limit) and the [`client::ChatModel`] trait the loop calls.
//! - [`cache`]: the on-disk response cache, so re-runs and resumed runs cost no model calls.
//! - [`prompt`]: the paper's prompt templates (embedded) and overrides from files (minijinja).
//! - [`acceptance`]: when a candidate replaces the incumbent (a pass beats a fail; lower is
//!   better on the instructed objective, beyond the measured noise).
//! - [`iof`]: the loop itself, per problem, resumable.
//! - [`trajectory`]: the per-iteration rows (`trajectory.jsonl`) and the run manifest.
//! - [`report`] and [`chart`]: per-iteration pass@1 and Beyond-T/M/I as JSON, markdown and a
//!   PNG/SVG chart drawn with an embedded font.
//! - [`scripted`]: a scripted OpenAI-compatible server on loopback, for tests and demos.
//!
//! Response parsing is [`afterburner_reward::parse_response`]; measuring is
//! [`afterburner_benchmarks::Harness::measure`]. The HTTP client, templates and charts live only
//! in this crate.

#![warn(missing_docs)]

pub mod acceptance;
pub mod cache;
pub mod chart;
pub mod client;
pub mod embedded;
pub mod iof;
pub mod prompt;
pub mod report;
pub mod scripted;
pub mod trajectory;

pub use acceptance::{AcceptanceRule, Decision, Observation};
pub use cache::ResponseCache;
pub use client::{ChatClient, ChatModel, ClientConfig, Completion, LlmError, Message, Usage};
pub use embedded::{EmbeddedChat, EmbeddedSettings};
pub use iof::{CorePool, HarnessJudge, Judge, Judged, LoopConfig, Optimizer, Outcome, Task};
pub use prompt::{Instruction, Templates};
pub use report::{Report, ReportFiles, RunInfo};
pub use trajectory::{IterationRecord, Manifest, TrajectoryWriter, read_trajectory};
