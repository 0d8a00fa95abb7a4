//! Options shared by `calibrate`, `eval` and `optimize`: which problems of which dataset, and
//! the measurement protocol; and the wiring of those options into a [`Workbench`].

use std::path::PathBuf;
use std::time::Duration;

use afterburner_benchmarks::calibration::default_cache_dir;
use afterburner_benchmarks::harness::DEFAULT_DRIFT_INTERVAL;
use afterburner_benchmarks::{
    CalibrationCache, HarnessConfig, Problem, StopFlag, Workbench, WorkerCount, worker_cpus,
};
use afterburner_sandbox::{Limits, Sandbox};
use anyhow::{Context as _, Result, bail};
use clap::Args;

/// Which problems of which dataset (shared by `calibrate` and `eval`).
#[derive(Debug, Clone, Args)]
pub struct ProblemArgs {
    /// The dataset, as FORMAT:PATH (venus, venus-<language>, apps, coffe, leetcode, enamel).
    #[arg(long)]
    pub dataset: String,
    /// Only this problem (repeatable); by default every problem of the dataset (eval counts one
    /// without a solution as failed).
    #[arg(long = "problem-id", value_name = "ID")]
    pub problem_ids: Vec<String>,
    /// Measure at most N reference solutions per problem (verified ones first).
    #[arg(long, value_name = "N")]
    pub max_solutions: Option<usize>,
}

/// The measurement protocol and where results are cached (shared by `calibrate`, `eval` and
/// `optimize`).
#[derive(Debug, Clone, Args)]
pub struct ProtocolArgs {
    /// Cache folder [default: $XDG_CACHE_HOME/afterburner or ~/.cache/afterburner].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Runs per solution; figures are medians and a solution must pass every run.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Wall and CPU time limit of one run over all of a problem's tests, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub time_limit: f64,
    /// Memory limit of one run in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_limit: u64,
    /// Parallel workers, each pinned to its own core [default: every core but the sampler's].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seed of the stress-input generators.
    #[arg(long, default_value_t = HarnessConfig::default().stress_seed)]
    pub stress_seed: u64,
    /// How often each worker runs the drift probe, in ms; times are brought to the machine's
    /// baseline speed measured by it (0: no drift correction, raw wall times).
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_DRIFT_INTERVAL.as_millis() as u64)]
    pub drift_interval_ms: u64,
    /// Also count each passing solution's instructions, in one more run under valgrind
    /// (deterministic, ~35x slower than a timed run): scored as Beyond-Instr.
    #[arg(long)]
    pub count_instructions: bool,
}

impl ProtocolArgs {
    /// The cache folder to use.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        match &self.cache {
            Some(dir) => Ok(dir.clone()),
            None => default_cache_dir()
                .context("no cache folder: set XDG_CACHE_HOME or HOME, or pass --cache DIR"),
        }
    }

    /// The harness settings these options describe.
    pub fn harness_config(&self) -> Result<HarnessConfig> {
        if !(1..=100).contains(&self.repeats) {
            bail!("--repeats must be in [1, 100], got {}", self.repeats);
        }
        let defaults = HarnessConfig::default();
        let limits = Limits {
            output_bytes: defaults.limits.output_bytes,
            ..Limits::default()
        }
        .with_time_limit_secs(self.time_limit)?
        .with_memory_limit_mib(self.memory_limit)?;
        Ok(HarnessConfig {
            limits,
            repeats: self.repeats,
            stress_seed: self.stress_seed,
            cache_dir: Some(self.cache_dir()?),
            drift_interval: (self.drift_interval_ms > 0)
                .then(|| Duration::from_millis(self.drift_interval_ms)),
            count_instructions: self.count_instructions,
            ..defaults
        })
    }

    /// Opens the cache and builds the workbench these options describe, stopped by `stop`;
    /// unreadable cache lines and the sandbox's degradations are printed as warnings.
    pub fn workbench<'s>(&self, sandbox: &'s Sandbox, stop: StopFlag) -> Result<Workbench<'s>> {
        let config = self.harness_config()?;
        let cache_dir = self.cache_dir()?;
        let cache = CalibrationCache::open(&cache_dir).with_context(|| {
            format!(
                "cannot open the calibration cache in {}",
                cache_dir.display()
            )
        })?;
        for issue in &cache.issues {
            eprintln!("warning: {issue}");
        }
        let count = match self.workers {
            None => WorkerCount::EveryFreeCore,
            Some(0) => bail!("--workers must be at least 1"),
            Some(n) => WorkerCount::AtMost(n),
        };
        let caps = sandbox.capabilities();
        let cpus = worker_cpus(&caps.cpus, caps.supervisor_cpu, count);
        let workbench = Workbench::new(sandbox, config, cache, cpus, stop)?;
        for w in &caps.warnings {
            eprintln!("warning: {w}");
        }
        Ok(workbench)
    }
}

/// The problems of `dataset` named by `ids` (all when empty); unknown ids are an error.
pub fn select_problems<'d>(problems: &'d [Problem], ids: &[String]) -> Result<Vec<&'d Problem>> {
    if ids.is_empty() {
        return Ok(problems.iter().collect());
    }
    ids.iter()
        .map(|id| {
            problems
                .iter()
                .find(|p| &p.id == id)
                .with_context(|| format!("--problem-id `{id}`: no such problem in the dataset"))
        })
        .collect()
}
