//! `afterburner serve`: the sandbox and reward server trainers and evaluators point at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use afterburner_benchmarks::DatasetSpec;
use afterburner_reward::RewardConfig;
use afterburner_server::{ConnectionLimits, LimitPolicy, Server, ServerConfig, ServerError};
use anyhow::{Context, Result, bail};
use clap::Args;

/// Arguments of `afterburner serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; beyond loopback, also pass --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Worker threads, each running one program at a time pinned to its core
    /// [default: one per core, leaving the sampler's core free].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Programs that may wait for a worker; beyond it requests are refused (503, Retry-After).
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// A dataset whose problems requests may name by id, as FORMAT:PATH (repeatable).
    #[arg(long = "dataset", value_name = "FORMAT:PATH")]
    pub datasets: Vec<String>,
    /// Require `Authorization: Bearer TOKEN` on every endpoint but /healthz
    /// [default: $AFTERBURNER_TOKEN, if set].
    #[arg(long)]
    pub token: Option<String>,
    /// Time limit of a run (or of a whole suite) when a request gives none, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub time_limit: f64,
    /// The largest time limit a request may ask for, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_time_limit: f64,
    /// Memory limit when a request gives none, MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_limit: u64,
    /// The largest memory limit a request may ask for, MiB.
    #[arg(long, default_value_t = 2048)]
    pub max_memory_limit: u64,
    /// Compile time limit of every build when a request gives none, seconds; the compiler
    /// is killed when it reaches it.
    #[arg(long, default_value_t = 60.0)]
    pub compile_time_limit: f64,
    /// The largest compile time limit a request (`compile_timeout`) may ask for, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_compile_time_limit: f64,
    /// Largest request body, MiB (413 beyond).
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Most programs in one /v1/reward or /get_reward request.
    #[arg(long, default_value_t = 1024)]
    pub max_batch: usize,
    /// Most repeats a request may ask for.
    #[arg(long, default_value_t = 5)]
    pub max_repeats: usize,
    /// Weight of the efficiency term of the reward (paper: 0.3, ramped to 0.5).
    #[arg(long, default_value_t = RewardConfig::default().efficiency_weight)]
    pub efficiency_weight: f64,
    /// Built programs kept for reuse when the same code comes again (0: none).
    #[arg(long, default_value_t = 64)]
    pub program_cache: usize,
    /// Cache folder shared with `calibrate` (stress suites of dataset problems, the drift
    /// probe's baseline) [default: $XDG_CACHE_HOME/afterburner or ~/.cache/afterburner].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Seconds a shutdown waits for open requests before closing them.
    #[arg(long, default_value_t = 150)]
    pub shutdown_grace: u64,
    /// Seconds a client may take to send a request's headers, from their first byte; a slower
    /// one has its connection closed (slowloris).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub header_timeout: f64,
    /// Seconds a client may take to send a request's body once its headers are in; a slower
    /// one is answered 408 and its connection closed.
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    pub body_timeout: f64,
    /// Seconds a connection may sit idle (before its first request, or between a response and
    /// the next request on a keep-alive connection) before it is closed.
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    pub idle_timeout: f64,
    /// Most client connections served at once; further ones wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,
    /// Most requests on one keep-alive connection; the last is answered with
    /// `Connection: close` (0: no limit).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_requests_per_connection: usize,
    #[command(flatten)]
    pub model: crate::serve_model::ServeModelArgs,
}

/// A timeout flag's value as a duration; `flag` names it in the error.
fn timeout(seconds: f64, flag: &str) -> Result<Duration> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        bail!("{flag} must be a positive number of seconds (at most a day), got {seconds}");
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl ServeArgs {
    fn config(&self) -> Result<ServerConfig> {
        let datasets = self
            .datasets
            .iter()
            .map(|s| {
                s.parse::<DatasetSpec>()
                    .with_context(|| format!("--dataset {s}"))
            })
            .collect::<Result<Vec<_>>>()?;
        if !self.efficiency_weight.is_finite() {
            bail!("--efficiency-weight must be a finite number");
        }
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("AFTERBURNER_TOKEN").ok())
            .filter(|t| !t.is_empty());
        let limits = LimitPolicy {
            default_time_s: self.time_limit,
            max_time_s: self.max_time_limit,
            default_memory_mib: self.memory_limit,
            max_memory_mib: self.max_memory_limit,
            default_compile_s: self.compile_time_limit,
            max_compile_s: self.max_compile_time_limit,
        };
        limits
            .validate()
            .map_err(anyhow::Error::msg)
            .context("limits")?;
        Ok(ServerConfig {
            addr: self.addr,
            workers: self.workers,
            queue: self.queue,
            datasets,
            token,
            max_body_bytes: self.max_body_mib.saturating_mul(1024 * 1024),
            limits,
            reward: RewardConfig {
                efficiency_weight: self.efficiency_weight,
                ..RewardConfig::default()
            },
            max_batch: self.max_batch,
            max_repeats: self.max_repeats,
            program_cache: self.program_cache,
            cache_dir: self
                .cache
                .clone()
                .or_else(afterburner_benchmarks::default_cache_dir),
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            connections: ConnectionLimits {
                header_timeout: timeout(self.header_timeout, "--header-timeout")?,
                body_timeout: timeout(self.body_timeout, "--body-timeout")?,
                idle_timeout: timeout(self.idle_timeout, "--idle-timeout")?,
                max_connections: self.max_connections,
                max_requests_per_connection: self.max_requests_per_connection,
            },
            ..ServerConfig::default()
        })
    }
}

/// Runs `afterburner serve` until SIGTERM or SIGINT.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let mut config = args.config()?;
    config.model = crate::serve_model::start(&args.model)?;
    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e @ (ServerError::Config(_) | ServerError::Dataset { .. })) => bail!("{e}"),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    for note in server.notes() {
        eprintln!("note: {note}");
    }
    let cpus: Vec<String> = server
        .worker_cpus()
        .iter()
        .map(|c| c.map_or("any".to_string(), |c| c.to_string()))
        .collect();
    eprintln!(
        "afterburner serve: listening on http://{} ({} worker(s) on cores [{}], queue {}, {} \
         problems)",
        server.local_addr(),
        server.workers(),
        cpus.join(", "),
        args.queue,
        server.problems()
    );
    match server.run_until_terminated() {
        Ok(()) => {
            eprintln!("afterburner serve: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
