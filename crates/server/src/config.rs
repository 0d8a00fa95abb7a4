//! What a server is started with: address, workers, queue, datasets, token and the limits it
//! grants requests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use afterburner_benchmarks::DatasetSpec;
use afterburner_reward::RewardConfig;
use afterburner_sandbox::Limits;

const MIB: u64 = 1024 * 1024;

/// Settings of a [`crate::Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (loopback by default).
    pub addr: SocketAddr,
    /// Worker threads running sandboxed programs; `None`: one per core the sandbox's sampler
    /// leaves free (as `afterburner calibrate` chooses).
    pub workers: Option<usize>,
    /// Programs that may wait for a worker; beyond it requests are refused with 503.
    pub queue: usize,
    /// Datasets whose problems `/v1/evaluate`, `/v1/reward` and `/get_reward` may name by id.
    pub datasets: Vec<DatasetSpec>,
    /// Bearer token every endpoint but `/healthz` requires, when set.
    pub token: Option<String>,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Limits a request gets when it asks for none, and the most it may ask for.
    pub limits: LimitPolicy,
    /// Weights and ceilings of the reward.
    pub reward: RewardConfig,
    /// Most programs one `/v1/reward`, `/v1/evaluate` or `/get_reward` request may carry.
    pub max_batch: usize,
    /// Most repeats a request may ask for (figures are medians over them).
    pub max_repeats: usize,
    /// Finished `/execute` results kept for `GET /results/<task_id>`.
    pub results_kept: usize,
    /// Most bytes of finished `/execute` results kept (oldest dropped first).
    pub results_max_bytes: usize,
    /// Built programs kept for reuse when the same code comes again (0: none).
    pub program_cache: usize,
    /// Sandbox state directory (a fresh temporary one when `None`).
    pub state_dir: Option<PathBuf>,
    /// The cache folder shared with `calibrate` (stress suites, the drift probe's baseline);
    /// none: stress suites are kept in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Longest a graceful shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: Duration,
    /// The embedded model answering `/v1/chat/completions`, `/v1/completions` and `/v1/models`.
    pub model: Option<crate::openai::OpenAiModel>,
    /// Connection limits: timeouts for slow or idle clients, and how many connections at once.
    pub connections: ConnectionLimits,
}

/// What a client connection may take: how long its reads may stall, how many requests it may
/// make, and how many connections are served at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// Longest a request's headers may take to arrive, from their first byte; beyond it the
    /// connection is closed (there is no request yet to answer).
    pub header_timeout: Duration,
    /// Longest a request's body may take to arrive once its headers are in; beyond it the
    /// request is answered 408 and the connection closed.
    pub body_timeout: Duration,
    /// Longest a connection may sit idle: before its first request, and from one response
    /// (its writing included) to the first byte of the next request; beyond it it is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once; further ones wait in the listen backlog until one
    /// closes.
    pub max_connections: usize,
    /// Most requests answered on one keep-alive connection; the last is answered with
    /// `Connection: close` (0: no limit).
    pub max_requests_per_connection: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_requests_per_connection: 10_000,
        }
    }
}

impl ConnectionLimits {
    /// Checks every timeout is positive and at least one connection is allowed.
    pub fn validate(&self) -> Result<(), String> {
        for (name, flag, d) in [
            ("header", "--header-timeout", self.header_timeout),
            ("body", "--body-timeout", self.body_timeout),
            ("idle", "--idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("the {name} timeout must be positive ({flag})"));
            }
        }
        if self.max_connections == 0 {
            return Err("at least 1 connection must be allowed (--max-connections)".into());
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: None,
            queue: 256,
            datasets: Vec::new(),
            token: None,
            max_body_bytes: 32 * MIB as usize,
            limits: LimitPolicy::default(),
            reward: RewardConfig::default(),
            max_batch: 1024,
            max_repeats: 5,
            results_kept: 4096,
            results_max_bytes: 256 * MIB as usize,
            program_cache: 64,
            state_dir: None,
            cache_dir: afterburner_benchmarks::default_cache_dir(),
            shutdown_grace: Duration::from_secs(150),
            model: None,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Default and maximum time and memory limits of one run (or one run over a whole suite).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitPolicy {
    /// Time limit (wall and CPU) when a request gives none, seconds.
    pub default_time_s: f64,
    /// The largest time limit a request may ask for; larger asks are capped to it.
    pub max_time_s: f64,
    /// Memory limit when a request gives none, MiB.
    pub default_memory_mib: u64,
    /// The largest memory limit a request may ask for; larger asks are capped to it.
    pub max_memory_mib: u64,
    /// Compile time limit (wall and CPU) of every build when a request gives none, seconds;
    /// enforced while the compiler runs.
    pub default_compile_s: f64,
    /// The largest compile time limit a request (SandboxFusion's `compile_timeout`) may ask
    /// for; larger asks are capped to it.
    pub max_compile_s: f64,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        LimitPolicy {
            default_time_s: 10.0,
            max_time_s: 60.0,
            default_memory_mib: 512,
            max_memory_mib: 2048,
            default_compile_s: 60.0,
            max_compile_s: 60.0,
        }
    }
}

impl LimitPolicy {
    /// Checks the policy itself is usable (defaults within maxima, sandbox ranges).
    pub fn validate(&self) -> Result<(), String> {
        let time_ok = |t: f64| t.is_finite() && t > 0.0 && t <= 3600.0;
        if !time_ok(self.default_time_s) || !time_ok(self.max_time_s) {
            return Err("time limits must be in (0, 3600] seconds".into());
        }
        if self.default_time_s > self.max_time_s {
            return Err(format!(
                "the default time limit {} s exceeds the maximum {} s",
                self.default_time_s, self.max_time_s
            ));
        }
        if !time_ok(self.default_compile_s) || !time_ok(self.max_compile_s) {
            return Err("compile time limits must be in (0, 3600] seconds".into());
        }
        if self.default_compile_s > self.max_compile_s {
            return Err(format!(
                "the default compile time limit {} s exceeds the maximum {} s",
                self.default_compile_s, self.max_compile_s
            ));
        }
        let memory_ok = |m: u64| (8..=65536).contains(&m);
        if !memory_ok(self.default_memory_mib) || !memory_ok(self.max_memory_mib) {
            return Err("memory limits must be in [8, 65536] MiB".into());
        }
        if self.default_memory_mib > self.max_memory_mib {
            return Err(format!(
                "the default memory limit {} MiB exceeds the maximum {} MiB",
                self.default_memory_mib, self.max_memory_mib
            ));
        }
        Ok(())
    }

    /// The limits of every build a request gives no compile time limit for.
    pub fn default_compile_limits(&self) -> Limits {
        with_compile_time(self.default_compile_s)
    }

    /// The limits of one build: the asked-for compile time (s), defaulted and capped; the
    /// rest as [`Limits::for_compilation`].
    ///
    /// A value that is not a positive finite number is an error naming `what`.
    pub fn resolve_compile(&self, time_s: Option<f64>, what: &str) -> Result<Limits, String> {
        match time_s {
            None => Ok(self.default_compile_limits()),
            Some(t) if t.is_finite() && t > 0.0 => Ok(with_compile_time(t.min(self.max_compile_s))),
            Some(t) => Err(format!(
                "{what}: the compile time limit must be a positive number of seconds, got {t}"
            )),
        }
    }

    /// The limits of one run: the asked-for time (s) and memory (MiB), each defaulted and capped.
    ///
    /// A value that is not a positive finite number is an error naming `what`.
    pub fn resolve(
        &self,
        time_s: Option<f64>,
        memory_mib: Option<f64>,
        what: &str,
    ) -> Result<Limits, String> {
        let time = match time_s {
            None => self.default_time_s,
            Some(t) if t.is_finite() && t > 0.0 => t.min(self.max_time_s),
            Some(t) => {
                return Err(format!(
                    "{what}: the time limit must be a positive number of seconds, got {t}"
                ));
            }
        };
        let memory = match memory_mib {
            None => self.default_memory_mib,
            Some(m) if m.is_finite() && m > 0.0 => {
                (m.ceil() as u64).clamp(8, self.max_memory_mib.max(8))
            }
            Some(m) => {
                return Err(format!(
                    "{what}: the memory limit must be a positive number of MiB, got {m}"
                ));
            }
        };
        let d = Duration::from_secs_f64(time);
        Ok(Limits {
            wall_time: d,
            cpu_time: d,
            memory_bytes: memory * MIB,
            ..Limits::default()
        })
    }
}

/// [`Limits::for_compilation`] with its wall and CPU time set to `seconds`.
fn with_compile_time(seconds: f64) -> Limits {
    let d = Duration::from_secs_f64(seconds);
    Limits {
        wall_time: d,
        cpu_time: d,
        ..Limits::for_compilation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_limits_are_defaulted_and_capped() {
        let p = LimitPolicy::default();
        let l = p.resolve(None, None, "x").unwrap();
        assert_eq!(l.wall_time, Duration::from_secs(10));
        assert_eq!(l.memory_bytes, 512 * MIB);
        let l = p.resolve(Some(1000.0), Some(1e9), "x").unwrap();
        assert_eq!(l.wall_time, Duration::from_secs(60));
        assert_eq!(l.cpu_time, Duration::from_secs(60));
        assert_eq!(l.memory_bytes, 2048 * MIB);
        let l = p.resolve(Some(0.5), Some(1.0), "x").unwrap();
        assert_eq!(l.wall_time, Duration::from_millis(500));
        assert_eq!(
            l.memory_bytes,
            8 * MIB,
            "below the sandbox minimum is raised to it"
        );
    }

    #[test]
    fn nonsense_limits_are_errors_that_name_the_field() {
        let p = LimitPolicy::default();
        let e = p.resolve(Some(-1.0), None, "run_timeout").unwrap_err();
        assert!(e.starts_with("run_timeout:"), "{e}");
        assert!(p.resolve(None, Some(f64::NAN), "m").is_err());
        assert!(p.resolve(Some(f64::INFINITY), None, "t").is_err());
    }

    #[test]
    fn policies_with_defaults_above_maxima_are_rejected() {
        let p = LimitPolicy {
            default_time_s: 100.0,
            ..LimitPolicy::default()
        };
        assert!(p.validate().is_err());
        assert!(LimitPolicy::default().validate().is_ok());
        let p = LimitPolicy {
            default_compile_s: 100.0,
            ..LimitPolicy::default()
        };
        assert!(p.validate().unwrap_err().contains("compile"));
    }

    #[test]
    fn asked_compile_limits_are_defaulted_and_capped() {
        let p = LimitPolicy {
            default_compile_s: 30.0,
            max_compile_s: 90.0,
            ..LimitPolicy::default()
        };
        let l = p.resolve_compile(None, "x").unwrap();
        assert_eq!(l.wall_time, Duration::from_secs(30));
        assert_eq!(l.memory_bytes, Limits::for_compilation().memory_bytes);
        let l = p.resolve_compile(Some(1000.0), "x").unwrap();
        assert_eq!(
            (l.wall_time, l.cpu_time),
            (Duration::from_secs(90), Duration::from_secs(90))
        );
        let l = p.resolve_compile(Some(0.5), "x").unwrap();
        assert_eq!(l.wall_time, Duration::from_millis(500));
        let e = p
            .resolve_compile(Some(-1.0), "compile_timeout")
            .unwrap_err();
        assert!(e.starts_with("compile_timeout:"), "{e}");
        assert!(p.resolve_compile(Some(f64::NAN), "c").is_err());
    }
}
