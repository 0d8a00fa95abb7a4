//! Drift correction: the host's speed changes over tens of seconds (a VM's host steals time), so
//! a run's wall time depends on when it was made. A fixed *probe* workload, run in the sandbox
//! exactly like a solution (same driver, interpreter, jail and core), is interleaved with the runs
//! on every worker; each run records the probe's time in its window ([`Drift`]), and the protocol
//! expresses its time (and integral) at the machine's *baseline* speed:
//! `corrected = raw * baseline_ms / probe_ms`. The raw figures are kept beside the correction.
//!
//! The baseline is a constant of the machine: the median of [`BASELINE_PROBES`] probe runs the
//! first time this machine (its [`machine_fingerprint`]) and this probe were seen, kept in
//! `probe.json` in the harness's cache folder (else the default cache folder) so that later
//! calibrations, evaluations and servers express times in the same units. The first process to
//! write it wins; the others read its value. Without any cache folder it is measured once per
//! process.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use afterburner_sandbox::{Limits, Status, median};
use serde::{Deserialize, Serialize};

use super::HarnessError;
use super::run::Harness;
use super::settings::short_hash;
use crate::calibration::{default_cache_dir, machine_fingerprint};
use crate::problem::{Checker, Entry, Problem};

/// The probe: a fixed pure-Python workload (~50 ms of interpreter work on this kind of machine),
/// run through the driver like a stdin/stdout solution.
pub const PROBE_SOURCE: &str = "\
def probe():
    total = 0
    table = {}
    for i in range(40000):
        total += i * i % 7
        table[i % 1013] = total
    return total + len(table)


print(probe())
";

/// Probe runs whose median is the machine's baseline.
pub const BASELINE_PROBES: usize = 5;

/// Probes in a worker's window: a run's `probe_ms` is their median. One: the latest probe
/// tracks the host's slow episodes (seconds long) best; older ones lag them (BENCHMARKS.md).
pub const WINDOW_PROBES: usize = 1;

/// The probe file in a cache folder.
pub const PROBE_FILE: &str = "probe.json";

/// How a run's figures are brought to the machine's baseline speed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// The probe's time in the run's window, ms.
    pub probe_ms: f64,
    /// The probe's time at the machine's baseline speed, ms.
    pub baseline_ms: f64,
}

impl Drift {
    /// The factor that brings a time measured in this window to the baseline speed.
    pub fn factor(&self) -> f64 {
        if self.probe_ms > 0.0 && self.baseline_ms > 0.0 {
            self.baseline_ms / self.probe_ms
        } else {
            1.0
        }
    }
}

/// The machine's baseline as kept in `probe.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Baseline {
    machine: String,
    probe: String,
    baseline_ms: f64,
    probes_ms: Vec<f64>,
    measured_at: u64,
}

/// One worker core's recent probes.
#[derive(Debug, Default)]
struct Window {
    probes: VecDeque<(Instant, f64)>,
}

/// The drift probe of a harness: its baseline and every worker core's window.
#[derive(Debug)]
pub(crate) struct DriftProbe {
    interval: Duration,
    cache_file: Option<PathBuf>,
    baseline: Mutex<Option<f64>>,
    windows: Mutex<HashMap<Option<usize>, Window>>,
}

impl DriftProbe {
    /// A probe run at most every `interval` on each core, its baseline kept in `cache_dir`
    /// (else the default cache folder).
    pub(crate) fn new(interval: Duration, cache_dir: Option<PathBuf>) -> Self {
        DriftProbe {
            interval,
            cache_file: cache_dir
                .or_else(default_cache_dir)
                .map(|d| d.join(PROBE_FILE)),
            baseline: Mutex::new(None),
            windows: Mutex::new(HashMap::new()),
        }
    }
}

fn probe_problem() -> Problem {
    Problem::from_tests(
        "afterburner/drift-probe",
        Entry::StdinStdout,
        Vec::new(),
        Checker::Exact,
    )
}

impl Harness<'_> {
    /// One run of the probe on core `cpu`: its wall time, ms.
    fn probe_once(&self, cpu: Option<usize>) -> Result<f64, HarnessError> {
        let limits = Limits {
            wall_time: Duration::from_secs(30),
            cpu_time: Duration::from_secs(30),
            ..self.config.limits.clone()
        };
        let raw = self.raw_run(&probe_problem(), PROBE_SOURCE, &[""], &limits, cpu, false)?;
        let m = &raw.result.measurement;
        if m.status != Status::Accepted || raw.fatal.is_some() || m.wall_ms <= 0.0 {
            return Err(HarnessError::Unsupported {
                problem: "afterburner/drift-probe".to_string(),
                reason: format!(
                    "the drift probe failed ({}{}); measure without drift correction (`--drift-interval-ms 0`, or `drift_interval: None`) if it cannot run here",
                    m.status,
                    raw.fatal.map(|(_, e)| format!(": {e}")).unwrap_or_default()
                ),
            });
        }
        Ok(m.wall_ms)
    }

    /// The machine's baseline probe time: from `probe.json` when it was measured on this
    /// machine with this probe, else measured now (and written there).
    fn drift_baseline(&self, probe: &DriftProbe, cpu: Option<usize>) -> Result<f64, HarnessError> {
        let mut known = probe
            .baseline
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(b) = *known {
            return Ok(b);
        }
        let machine = machine_fingerprint(self.sandbox);
        let probe_id = short_hash(PROBE_SOURCE);
        let stored = |path: &Path| -> Option<f64> {
            let b: Baseline = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
            (b.machine == machine && b.probe == probe_id && b.baseline_ms > 0.0)
                .then_some(b.baseline_ms)
        };
        if let Some(b) = probe.cache_file.as_deref().and_then(stored) {
            *known = Some(b);
            return Ok(b);
        }
        // The first probe warms the interpreter's files into the page cache; it is not kept.
        self.probe_once(cpu)?;
        let probes_ms = (0..BASELINE_PROBES)
            .map(|_| self.probe_once(cpu))
            .collect::<Result<Vec<f64>, _>>()?;
        let mut baseline_ms = median(&probes_ms);
        if let Some(path) = &probe.cache_file {
            let record = Baseline {
                machine: machine.clone(),
                probe: probe_id.clone(),
                baseline_ms,
                probes_ms,
                measured_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            let io = |action: &'static str| {
                let path = path.clone();
                move |source| HarnessError::Io {
                    action,
                    path,
                    source,
                }
            };
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io("create the folder of"))?;
            }
            // A stale file (another machine or probe) is replaced; linking the new one in place
            // fails when another process wrote a valid one meanwhile, and then theirs is used.
            let tmp = path.with_extension(format!("json.{}", std::process::id()));
            fs::write(
                &tmp,
                serde_json::to_string_pretty(&record).unwrap_or_default(),
            )
            .map_err(io("write the drift probe's baseline to"))?;
            if path.exists() && stored(path).is_none() {
                let _ = fs::remove_file(path);
            }
            let linked = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if let Some(theirs) = stored(path) {
                        baseline_ms = theirs;
                    }
                }
                Err(e) => return Err(io("write the drift probe's baseline to")(e)),
            }
        }
        *known = Some(baseline_ms);
        Ok(baseline_ms)
    }

    /// The drift of a run about to start on core `cpu`: runs the probe first when the core's
    /// last probe is older than the interval; `None` when drift correction is off.
    pub(crate) fn drift_before_run(
        &self,
        cpu: Option<usize>,
    ) -> Result<Option<Drift>, HarnessError> {
        let Some(probe) = &self.drift else {
            return Ok(None);
        };
        let baseline_ms = self.drift_baseline(probe, cpu)?;
        let due = {
            let windows = probe
                .windows
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            windows
                .get(&cpu)
                .and_then(|w| w.probes.back())
                .is_none_or(|(at, _)| at.elapsed() >= probe.interval)
        };
        if due {
            let ms = self.probe_once(cpu)?;
            let mut windows = probe
                .windows
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let w = windows.entry(cpu).or_default();
            w.probes.push_back((Instant::now(), ms));
            while w.probes.len() > WINDOW_PROBES {
                w.probes.pop_front();
            }
        }
        let windows = probe
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let recent: Vec<f64> = windows
            .get(&cpu)
            .map(|w| w.probes.iter().map(|&(_, ms)| ms).collect())
            .unwrap_or_default();
        Ok(Some(Drift {
            probe_ms: if recent.is_empty() {
                baseline_ms
            } else {
                median(&recent)
            },
            baseline_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_brings_a_slow_window_back_to_the_baseline() {
        let slow = Drift {
            probe_ms: 150.0,
            baseline_ms: 100.0,
        };
        assert!((slow.factor() - 2.0 / 3.0).abs() < 1e-12);
        let broken = Drift {
            probe_ms: 0.0,
            baseline_ms: 100.0,
        };
        assert_eq!(broken.factor(), 1.0);
    }
}
