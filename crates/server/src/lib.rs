//! The sandbox and reward server: one Rust process that RL trainers and evaluators point at.
//!
//! Endpoints (request and response shapes in the README's `afterburner serve` section):
//! - Monolith: `POST /execute` (synchronous, or `"async": true`), `GET /results/<task_id>`,
//!   `GET /status`.
//! - SandboxFusion: `POST /run_code` (what verl's `sandbox_fusion` reward calls).
//! - Native: `POST /v1/evaluate` (a whole suite in one sandboxed process, compiled once),
//!   `POST /v1/reward` (a batch of model responses -> the Afterburner reward and its components),
//!   and OpenRLHF's `POST /get_reward`.
//! - `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! The sandbox is synchronous: programs run on a fixed pool of worker threads, one per core the
//! sampler leaves free, fed by a bounded queue ([`ServerConfig::queue`]). A request is one job
//! per program, all admitted at once or refused at once with 503 and `Retry-After`; an
//! admitted request gets exactly one answer. On shutdown the server stops accepting, answers
//! queued programs with 503, finishes the running ones and tears the sandbox down.
//!
//! Slow or idle clients cannot hold connections: headers, bodies and idle waits are timed and
//! open connections capped ([`ConnectionLimits`]).
//!
//! Wire formats live here only: the sandbox, benchmark and reward crates know nothing of HTTP.

#![warn(missing_docs)]

mod app;
mod common;
mod config;
mod conn;
mod error;
mod fusion;
mod grading;
mod metrics;
mod monolith;
mod native;
pub mod openai;
mod pool;
mod results;
mod server;
mod state;

pub use config::{ConnectionLimits, LimitPolicy, ServerConfig};
pub use error::{ApiError, ServerError};
pub use openai::OpenAiModel;
pub use server::{Server, ServerHandle, termination_signal};
