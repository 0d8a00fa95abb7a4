//! Isolated, precisely measured execution of untrusted programs.
//!
//! Build a [`Program`] once with [`Sandbox::build`] (compiled languages compile here, inside the
//! sandbox), then [`Sandbox::run`] it on any number of inputs. Every run happens in fresh PID,
//! mount, network, IPC and UTS namespaces, as an unprivileged user, with a read-only view of the
//! system, a private size-capped `/tmp`, a seccomp filter and (where the kernel has it) Landlock;
//! limits come from a per-run cgroup. Run by root, the sandbox sets this up directly; run by an
//! ordinary user ([`Mode::Rootless`]), it does the same inside an unprivileged user namespace,
//! with limits from a delegated cgroup v2 subtree where there is one and rlimits otherwise. The result is a [`RunResult`] whose [`Measurement`] holds
//! wall and CPU time, peak resident memory of the process tree and its time integral, sampled at
//! 10 kHz or more by the supervisor.
//!
//! This crate knows nothing of datasets, test cases, LLMs or HTTP.

mod cgroup;
mod counting;
mod error;
mod jail;
mod landlock;
mod language;
mod limits;
mod measurement;
mod monitor;
mod objective;
mod sandbox;
mod seccomp;
mod sys;
mod toolchain;

pub use error::SandboxError;
pub use language::{Language, UnknownLanguage};
pub use limits::Limits;
pub use measurement::{
    Dispersion, Measurement, MemorySample, RepeatSummary, RunResult, Status, clip,
    coefficient_of_variation, median,
};
pub use objective::{
    Comparison, Noise, Objective, RecordedPerformance, TIE_SIGMAS, UnknownObjective,
};
pub use sandbox::{
    Basis, Capabilities, Compilation, Mode, Program, RunRequest, Sandbox, SandboxConfig,
};
pub use sys::random_u64;
