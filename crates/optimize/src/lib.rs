//! The test-time Iterative Optimization Framework (SPEC section 6): a model behind any
//! OpenAI-compatible endpoint proposes code, the sandbox measures it with the benchmark
//! harness, and the incumbent with its measurements goes into the next prompt.
//!
//! - [`chat`]: the backend-neutral model interface: [`Message`], [`Completion`], [`LlmError`]
//!   and the [`ChatModel`] trait the loop calls (the HTTP client and, soon, the embedded model
//!   of `crates/model` implement it).
//! - [`client`]: the OpenAI-compatible chat completions client (retries with backoff, timeouts,
//!   a concurrency limit).
//! - [`cache`]: the on-disk response cache, so re-runs and resumed runs cost no model calls.
//! - [`prompt`]: the paper's prompt templates (embedded) and overrides from files (minijinja).
//! - [`acceptance`]: when a candidate replaces the incumbent (a pass beats a fail; lower is
//!   better on the instructed objective, beyond the measured noise).
//! - [`iof`]: the loop itself, per problem, resumable.
//! - [`trajectory`]: the per-iteration rows (`trajectory.jsonl`) and the run manifest.
//! - [`report`] and [`chart`]: per-iteration pass@1 and Beyond-T/M/I as JSON, markdown and a
//!   PNG/SVG chart drawn with an embedded font.
//!
//! Response parsing is [`afterburner_reward::parse_response`]; measuring is
//! [`afterburner_benchmarks::Harness::measure`]. The HTTP client, templates and charts live only
//! in this crate.

#![warn(missing_docs)]

pub mod acceptance;
pub mod cache;
pub mod chart;
pub mod chat;
pub mod client;
pub mod embedded;
pub mod iof;
pub mod prompt;
pub mod report;
pub mod rewarding;
pub mod trajectory;

pub use acceptance::{AcceptanceRule, Decision, Observation};
pub use cache::ResponseCache;
pub use chat::{ChatModel, Completion, LlmError, Message, Role, Usage};
pub use client::{ChatClient, ClientConfig};
pub use embedded::{EmbeddedChat, EmbeddedSettings};
pub use iof::{CorePool, HarnessJudge, Judge, Judged, LoopConfig, Optimizer, Outcome, Task};
pub use prompt::{Instruction, Templates};
pub use report::{Report, ReportFiles, RunInfo};
pub use rewarding::{RewardLabel, SandboxReward};
pub use trajectory::{IterationRecord, Manifest, TrajectoryWriter, read_trajectory};

/// Now, in whole seconds since the Unix epoch (0 if the clock is before it): the timestamps of
/// trajectory rows and cache entries.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
