//! What a harness is set to do: the measurement protocol's limits, repeats and seeds
//! ([`HarnessConfig`]), the settings of one measurement ([`RunSettings`]), and the protocol id
//! that makes two measurements comparable.

use std::path::PathBuf;
use std::time::Duration;

use afterburner_sandbox::Limits;
use sha2::{Digest, Sha256};

use super::scripts::{COMMON_PY, DRIVER_PY, EVALUATOR_PY, GENERATOR_PY};

/// Version of the measurement protocol; part of every cache key. 2: figures carry their
/// run-to-run noise for the tie rule (records of version 1 have none and are recalibrated).
/// 3: times and integrals are drift-corrected against the probe (see `probe.rs`).
pub const PROTOCOL_VERSION: u32 = 3;

const MIB: u64 = 1024 * 1024;

/// How one solution is measured: the limits of each run and how many runs make its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    /// Limits of one run of a solution over its whole suite.
    pub limits: Limits,
    /// Runs per solution; its figures are the medians (a solution must pass every run).
    pub repeats: usize,
    /// Whether a passing solution gets one more run, under valgrind, counting its
    /// instructions (see [`COUNTING_SLOWDOWN`]).
    pub count_instructions: bool,
}

impl RunSettings {
    /// Runs a solution needs: its repeats, and the counting run when instructions are counted.
    pub fn runs_needed(&self) -> usize {
        self.repeats.max(1) + usize::from(self.count_instructions)
    }
}

/// How much longer than its slowest timed run a counting run may take (valgrind's cachegrind
/// without cache simulation ran Python ~35x slower here; BENCHMARKS.md), never under
/// [`COUNTING_MIN_LIMIT`].
pub const COUNTING_SLOWDOWN: u32 = 100;

/// The least time a counting run is given.
pub const COUNTING_MIN_LIMIT: Duration = Duration::from_secs(20);

/// The limits of a counting run of a solution whose timed runs took at most `slowest_ms`:
/// [`COUNTING_SLOWDOWN`] times that (at least [`COUNTING_MIN_LIMIT`]), and room for valgrind's
/// own memory (three times the limit).
pub fn counting_limits(limits: &Limits, slowest_ms: f64) -> Limits {
    let time =
        Duration::from_secs_f64((slowest_ms.max(0.0) / 1000.0) * f64::from(COUNTING_SLOWDOWN))
            .max(COUNTING_MIN_LIMIT);
    Limits {
        wall_time: time,
        cpu_time: time,
        memory_bytes: limits.memory_bytes.saturating_mul(3),
        ..limits.clone()
    }
}

/// Settings of a [`Harness`](super::Harness): the measurement protocol and where stress suites are cached.
#[derive(Debug, Clone, PartialEq)]
pub struct HarnessConfig {
    /// Limits of one run of a solution over its whole suite.
    pub limits: Limits,
    /// Runs per solution; its figures are the medians (a solution must pass every run).
    pub repeats: usize,
    /// Seed of stress-input generators.
    pub stress_seed: u64,
    /// How many reference solutions must agree on a stress input's expected output.
    pub consensus_references: usize,
    /// Limits of one reference run while deriving stress outputs.
    pub consensus_limits: Limits,
    /// Limits of one generator run.
    pub generator_limits: Limits,
    /// Limits of one run of a dataset's evaluator.
    pub evaluator_limits: Limits,
    /// Folder for cached stress suites (`<dir>/stress/`) and the drift probe's baseline
    /// (`<dir>/probe.json`); `None`: regenerate every time.
    pub cache_dir: Option<PathBuf>,
    /// How often each worker core runs the drift probe between runs; `None`: no drift
    /// correction (times are the raw wall times).
    pub drift_interval: Option<Duration>,
    /// Whether passing solutions also get their instructions counted (one run under valgrind).
    pub count_instructions: bool,
}

fn limits(seconds: u64, memory_mib: u64) -> Limits {
    Limits {
        wall_time: Duration::from_secs(seconds),
        cpu_time: Duration::from_secs(seconds),
        memory_bytes: memory_mib * MIB,
        output_bytes: 256 * MIB,
        ..Limits::default()
    }
}

impl Default for HarnessConfig {
    /// 60 s and 1 GiB per run, 3 repeats, ENAMEL's seed 998244353, 3 agreeing references,
    /// the drift probe every [`DEFAULT_DRIFT_INTERVAL`].
    fn default() -> Self {
        HarnessConfig {
            limits: limits(60, 1024),
            repeats: 3,
            stress_seed: 998_244_353,
            consensus_references: 3,
            consensus_limits: limits(60, 2048),
            generator_limits: limits(120, 2048),
            evaluator_limits: limits(120, 2048),
            cache_dir: None,
            drift_interval: Some(DEFAULT_DRIFT_INTERVAL),
            count_instructions: false,
        }
    }
}

/// How often each worker core runs the drift probe by default.
pub const DEFAULT_DRIFT_INTERVAL: Duration = Duration::from_millis(500);

/// SHA-256 of the harness scripts: changing them changes every protocol id.
pub fn scripts_digest() -> String {
    let mut h = Sha256::new();
    for s in [COMMON_PY, DRIVER_PY, EVALUATOR_PY, GENERATOR_PY] {
        h.update(s.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..8])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 16 hex digits of the SHA-256 of `text`.
pub fn short_hash(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes())[..8])
}

impl HarnessConfig {
    /// The limits and repeats this configuration measures a solution with.
    pub fn run_settings(&self) -> RunSettings {
        RunSettings {
            limits: self.limits.clone(),
            repeats: self.repeats,
            count_instructions: self.count_instructions,
        }
    }

    /// A stable id of the measurement protocol: what makes two measurements comparable.
    pub fn protocol_id(&self) -> String {
        format!(
            "v{PROTOCOL_VERSION}/repeats={}/time={}ms/memory={}MiB/seed={}/consensus={}/drift={}{}/scripts={}",
            self.repeats,
            self.limits.wall_time.as_millis(),
            self.limits.memory_bytes / MIB,
            self.stress_seed,
            self.consensus_references,
            match self.drift_interval {
                Some(_) => format!("probe-{}", short_hash(super::probe::PROBE_SOURCE)),
                None => "off".to_string(),
            },
            if self.count_instructions {
                "/instructions=valgrind"
            } else {
                ""
            },
            scripts_digest()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_ids_change_with_the_protocol() {
        let a = HarnessConfig::default();
        let b = HarnessConfig {
            repeats: 5,
            ..HarnessConfig::default()
        };
        assert_ne!(a.protocol_id(), b.protocol_id());
        assert_eq!(a.protocol_id(), HarnessConfig::default().protocol_id());
        assert!(a.protocol_id().contains(&scripts_digest()));
    }
}
