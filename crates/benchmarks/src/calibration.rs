//! Calibration: reference solutions measured on *this* machine with the same protocol as
//! candidates, cached so that a measurement is never repeated.
//!
//! The cache is one JSONL file, `calibration.jsonl`, in a cache folder. Each line is a
//! [`CalibrationRecord`] keyed by problem, solution, a hash of its code, a digest of the suite
//! it ran on, the machine fingerprint and the protocol id; a lookup only matches when all six
//! agree, so a different machine, protocol or dataset version never reuses a figure. Records
//! are appended and flushed one by one as they complete, and re-running a calibration skips
//! what is cached.
//!
//! A reference's runs are interleaved with other references' (round `r` runs every reference
//! once before round `r + 1` begins), so a record completes only in the last round. Until then
//! each run is kept in a second file, `calibration-runs.jsonl`, as a [`CalibrationRun`]: stopping
//! a calibration loses no run already made, and the next one resumes each reference from its
//! last run. A line of either file that does not parse (for example one cut short by a crash)
//! is reported in [`CalibrationCache::issues`] and ignored.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use afterburner_sandbox::{Dispersion, Language, Noise, Sandbox, Status};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::harness::{Conclusion, RunOutcome, short_hash};
use crate::problem::RecordedPerformance;

/// File name of the calibration cache inside its folder.
pub const CACHE_FILE: &str = "calibration.jsonl";

/// File name, inside the cache folder, of the runs of references whose records are not complete.
pub const RUNS_FILE: &str = "calibration-runs.jsonl";

/// What a cached measurement is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CalibrationKey {
    /// The problem's id.
    pub problem_id: String,
    /// The reference solution's id.
    pub solution_id: String,
    /// [`short_hash`] of the solution's code.
    pub code: String,
    /// [`crate::Suite::digest`] of the suite it ran on.
    pub suite: String,
    /// [`machine_fingerprint`] of the machine it ran on.
    pub fingerprint: String,
    /// [`crate::HarnessConfig::protocol_id`] of the protocol.
    pub protocol: String,
}

impl CalibrationKey {
    /// The key of `code` (solution `solution_id` of `problem_id`) on a suite, machine and protocol.
    pub fn new(
        problem_id: &str,
        solution_id: &str,
        code: &str,
        suite_digest: &str,
        fingerprint: &str,
        protocol: &str,
    ) -> Self {
        CalibrationKey {
            problem_id: problem_id.to_string(),
            solution_id: solution_id.to_string(),
            code: short_hash(code),
            suite: suite_digest.to_string(),
            fingerprint: fingerprint.to_string(),
            protocol: protocol.to_string(),
        }
    }
}

/// One measured reference solution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// What it is valid for.
    #[serde(flatten)]
    pub key: CalibrationKey,
    /// The solution's language.
    pub language: Language,
    /// Its verdict on this machine.
    pub status: Status,
    /// Whether it passed every test in every run.
    pub passed: bool,
    /// Median figures over the runs (drift-corrected), when it passed.
    pub performance: Option<RecordedPerformance>,
    /// Median figures over the raw runs, before drift correction, when it passed and they
    /// were corrected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RecordedPerformance>,
    /// Coefficients of variation over the runs, when it passed.
    pub cv: Option<Dispersion>,
    /// Number of runs.
    pub runs: usize,
    /// Tests passed in the first run.
    pub tests_passed: usize,
    /// Tests in the suite.
    pub tests_total: usize,
    /// Why it failed, when it did.
    pub detail: Option<String>,
    /// When it was measured (seconds since the Unix epoch).
    pub measured_at: u64,
}

impl CalibrationRecord {
    /// The record of a solution from its `runs` of `repeats`, in the order they were made.
    pub fn from_runs(
        key: CalibrationKey,
        language: Language,
        runs: &[RunOutcome],
        repeats: usize,
    ) -> Self {
        let c = Conclusion::of(runs, repeats);
        CalibrationRecord {
            key,
            language,
            status: c.status,
            passed: c.passed,
            performance: c.performance,
            raw: c.raw.as_ref().map(|r| {
                RecordedPerformance::new(r.wall_ms, r.peak_rss_kb, r.integral_kb_ms)
                    .with_noise(Noise::of(&r.cv))
            }),
            cv: c.summary.as_ref().map(|s| s.cv.clone()),
            runs: c.summary.as_ref().map_or(runs.len(), |s| s.runs),
            tests_passed: runs.first().map_or(0, |r| r.tests_passed),
            tests_total: runs.first().map_or(0, |r| r.tests_total),
            detail: c.detail,
            measured_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// One run of a reference, kept until its record is complete, so that an interrupted
/// calibration resumes from the last run made rather than the last reference finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRun {
    /// Whose run it is.
    #[serde(flatten)]
    pub key: CalibrationKey,
    /// Which round it was made in (0 first).
    pub round: usize,
    /// How it ended and what it cost.
    #[serde(flatten)]
    pub outcome: RunOutcome,
}

/// Why the calibration cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A file or folder could not be created, read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a cache file is not what it should hold.
    #[error("{}:{line}: not a calibration record ({reason})", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What the parser said.
        reason: String,
    },
}

/// Every record of the calibration cache in `dir`, read only (nothing is created); a
/// malformed line is an error naming it (unlike [`CalibrationCache::open`], which skips it
/// with a warning to keep calibrating).
pub fn read_records(dir: &Path) -> Result<Vec<CalibrationRecord>, CalibrationError> {
    let path = dir.join(CACHE_FILE);
    let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| CalibrationError::Malformed {
                path: path.clone(),
                line: n + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CalibrationError {
    let path = path.to_path_buf();
    move |source| CalibrationError::Io {
        action,
        path,
        source,
    }
}

#[derive(Debug)]
struct Inner {
    records: HashMap<CalibrationKey, CalibrationRecord>,
    file: File,
    runs: HashMap<CalibrationKey, BTreeMap<usize, RunOutcome>>,
    runs_file: File,
}

/// Opens (creating) an append-only JSONL file and reads its lines as `T`; lines that do not
/// parse are described in `issues` and skipped.
fn open_jsonl<T: DeserializeOwned>(
    path: &Path,
    what: &str,
    issues: &mut Vec<String>,
) -> Result<(File, Vec<T>), CalibrationError> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(io_err("read", path))?;
    let mut items = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(item) => items.push(item),
            Err(e) => issues.push(format!(
                "{}:{}: not {what} ({e}); ignored",
                path.display(),
                n + 1
            )),
        }
    }
    if text.last().is_some_and(|&b| b != b'\n') {
        // A line cut short: start the next one on a line of its own.
        file.seek(SeekFrom::End(0))
            .and_then(|_| file.write_all(b"\n"))
            .map_err(io_err("append to", path))?;
    }
    Ok((file, items))
}

/// Appends one JSON line to `file` and flushes it.
fn append_line<T: Serialize>(
    file: &mut File,
    path: &Path,
    item: &T,
) -> Result<(), CalibrationError> {
    let mut line = serde_json::to_vec(item).map_err(|e| CalibrationError::Io {
        action: "serialise a line for",
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    line.push(b'\n');
    file.write_all(&line)
        .and_then(|()| file.flush())
        .map_err(io_err("append to", path))
}

/// The calibration cache: lookups, and appends flushed as each result completes; thread-safe.
#[derive(Debug)]
pub struct CalibrationCache {
    path: PathBuf,
    runs_path: PathBuf,
    inner: Mutex<Inner>,
    /// Lines of the files that could not be read, each with its line number and reason.
    pub issues: Vec<String>,
}

impl CalibrationCache {
    /// Opens (creating if needed) the cache in folder `dir`.
    pub fn open(dir: &Path) -> Result<Self, CalibrationError> {
        fs::create_dir_all(dir).map_err(io_err("create cache folder", dir))?;
        let mut issues = Vec::new();
        let path = dir.join(CACHE_FILE);
        let (file, lines) =
            open_jsonl::<CalibrationRecord>(&path, "a calibration record", &mut issues)?;
        let records = lines.into_iter().map(|r| (r.key.clone(), r)).collect();
        let runs_path = dir.join(RUNS_FILE);
        let (runs_file, lines) =
            open_jsonl::<CalibrationRun>(&runs_path, "a calibration run", &mut issues)?;
        let mut runs: HashMap<CalibrationKey, BTreeMap<usize, RunOutcome>> = HashMap::new();
        for r in lines {
            runs.entry(r.key).or_default().insert(r.round, r.outcome);
        }
        Ok(CalibrationCache {
            path,
            runs_path,
            inner: Mutex::new(Inner {
                records,
                file,
                runs,
                runs_file,
            }),
            issues,
        })
    }

    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated: recover it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached record for `key`, if any.
    pub fn get(&self, key: &CalibrationKey) -> Option<CalibrationRecord> {
        self.lock().records.get(key).cloned()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a record to the file (flushed) and to the in-memory index.
    pub fn append(&self, record: CalibrationRecord) -> Result<(), CalibrationError> {
        let inner = &mut *self.lock();
        append_line(&mut inner.file, &self.path, &record)?;
        inner.records.insert(record.key.clone(), record);
        Ok(())
    }

    /// The runs saved for `key` whose record is not complete, rounds 0, 1, ... up to the first
    /// missing one.
    pub fn runs(&self, key: &CalibrationKey) -> Vec<RunOutcome> {
        let inner = self.lock();
        let Some(rounds) = inner.runs.get(key) else {
            return Vec::new();
        };
        rounds
            .iter()
            .enumerate()
            .take_while(|(k, (round, _))| *k == **round)
            .map(|(_, (_, outcome))| outcome.clone())
            .collect()
    }

    /// Saves one run of a reference (flushed).
    pub fn append_run(&self, run: CalibrationRun) -> Result<(), CalibrationError> {
        let inner = &mut *self.lock();
        append_line(&mut inner.runs_file, &self.runs_path, &run)?;
        inner
            .runs
            .entry(run.key)
            .or_default()
            .insert(run.round, run.outcome);
        Ok(())
    }
}

/// A description of this machine as far as it affects measurements: CPU model, logical cores,
/// kernel, Python version and cgroup version.
pub fn machine_description(sandbox: &Sandbox) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "Processor" | "cpu model").then(|| v.trim())
        })
        .unwrap_or("unknown cpu");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let python = sandbox
        .toolchain_version(Language::Python)
        .unwrap_or_else(|_| "no python".to_string());
    let caps = sandbox.capabilities();
    format!(
        "{model}; {cores} logical cpus; kernel {}; {python}; cgroup {}",
        kernel.trim(),
        caps.cgroup_version
            .map_or("none".to_string(), |v| format!("v{v}"))
    )
}

/// [`short_hash`] of [`machine_description`]: measurements are only compared within one fingerprint.
pub fn machine_fingerprint(sandbox: &Sandbox) -> String {
    short_hash(&machine_description(sandbox))
}

/// The default cache folder: `$XDG_CACHE_HOME/afterburner`, else `$HOME/.cache/afterburner`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("afterburner"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(problem: &str, solution: &str, time_ms: f64) -> CalibrationRecord {
        CalibrationRecord {
            key: CalibrationKey::new(problem, solution, "print(1)", "suite", "fp", "proto"),
            language: Language::Python,
            status: Status::Accepted,
            passed: true,
            performance: Some(RecordedPerformance::new(time_ms, 10.0, 100.0)),
            raw: None,
            cv: None,
            runs: 3,
            tests_passed: 2,
            tests_total: 2,
            detail: None,
            measured_at: 0,
        }
    }

    #[test]
    fn records_survive_reopening_and_bad_lines_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = CalibrationCache::open(dir.path()).unwrap();
            assert!(cache.is_empty());
            cache.append(record("p", "p/ref-0", 5.0)).unwrap();
            cache.append(record("p", "p/ref-1", 7.0)).unwrap();
        }
        // A crash in the middle of a line.
        let path = dir.path().join(CACHE_FILE);
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("{\"problem_id\": \"p\", \"solu");
        fs::write(&path, text).unwrap();

        let cache = CalibrationCache::open(dir.path()).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.issues.len(), 1, "{:?}", cache.issues);
        assert!(cache.issues[0].contains(":3:"), "{:?}", cache.issues);
        let got = cache.get(&record("p", "p/ref-1", 0.0).key).unwrap();
        assert_eq!(got.performance.unwrap().time_ms, 7.0);
        cache.append(record("q", "q/ref-0", 1.0)).unwrap();
        drop(cache);
        let cache = CalibrationCache::open(dir.path()).unwrap();
        assert_eq!(cache.len(), 3);
    }

    fn run(status: Status, wall_ms: f64, peak_rss_kb: u64) -> RunOutcome {
        let mut measurement = afterburner_sandbox::Measurement::not_run(status);
        measurement.wall_ms = wall_ms;
        measurement.peak_rss_kb = peak_rss_kb;
        measurement.integral_kb_ms = wall_ms * peak_rss_kb as f64;
        RunOutcome {
            status,
            measurement,
            tests_passed: if status == Status::Accepted { 4 } else { 3 },
            tests_total: 4,
            failure: (status != Status::Accepted).then(|| format!("{status}: test 3")),
            drift: None,
            counted: false,
        }
    }

    #[test]
    fn a_record_from_runs_takes_medians_and_the_first_failure() {
        let key = record("p", "p/ref-0", 0.0).key;
        let ok = [
            run(Status::Accepted, 30.0, 100),
            run(Status::Accepted, 10.0, 300),
            run(Status::Accepted, 20.0, 200),
        ];
        let r = CalibrationRecord::from_runs(key.clone(), Language::Python, &ok, 3);
        assert!(r.passed);
        assert_eq!(r.status, Status::Accepted);
        let p = r.performance.unwrap();
        assert_eq!((p.time_ms, p.memory_kb), (20.0, 200.0));
        // Integrals 3000, 3000, 4000: median 3000.
        assert_eq!(p.integral, 3000.0);
        assert_eq!((r.runs, r.tests_passed, r.tests_total), (3, 4, 4));
        assert!(r.cv.unwrap().wall_ms > 0.0);
        assert!(
            r.raw.is_none(),
            "no probe ran: the figures are the raw ones"
        );

        // Runs made in windows of different speeds: corrected figures, raw ones kept with
        // their own noise.
        let drifted: Vec<RunOutcome> = ok
            .iter()
            .map(|r| RunOutcome {
                drift: Some(crate::harness::Drift {
                    probe_ms: 2.0 * r.measurement.wall_ms,
                    baseline_ms: 20.0,
                }),
                ..r.clone()
            })
            .collect();
        let r = CalibrationRecord::from_runs(key.clone(), Language::Python, &drifted, 3);
        let p = r.performance.unwrap();
        assert!(
            (p.time_ms - 10.0).abs() < 1e-9,
            "every run is 10 ms at baseline speed"
        );
        assert!(p.cv(afterburner_sandbox::Objective::Time) < 1e-12);
        let raw = r.raw.expect("raw figures kept");
        assert_eq!(raw.time_ms, 20.0);
        assert!(
            raw.cv(afterburner_sandbox::Objective::Time) > 0.3,
            "{raw:?}"
        );

        let second_fails = [
            run(Status::Accepted, 30.0, 100),
            run(Status::TimeLimit, 60.0, 100),
        ];
        let r = CalibrationRecord::from_runs(key.clone(), Language::Python, &second_fails, 3);
        assert!(!r.passed);
        assert_eq!(r.status, Status::TimeLimit);
        assert!(r.performance.is_none());
        assert_eq!(
            r.detail.as_deref(),
            Some("run 2 of 3 failed: time_limit: test 3")
        );
        assert_eq!(r.tests_passed, 4, "tests passed are the first run's");

        let first_fails = [run(Status::WrongAnswer, 5.0, 100)];
        let r = CalibrationRecord::from_runs(key.clone(), Language::Python, &first_fails, 3);
        assert_eq!(r.detail.as_deref(), Some("wrong_answer: test 3"));
        assert_eq!((r.runs, r.tests_passed), (1, 3));

        // Too few runs is never a pass.
        let r = CalibrationRecord::from_runs(key, Language::Python, &ok[..2], 3);
        assert!(!r.passed && r.performance.is_none(), "{r:?}");
    }

    #[test]
    fn runs_survive_reopening_in_round_order_up_to_the_first_gap() {
        let dir = tempfile::tempdir().unwrap();
        let a = record("p", "p/ref-0", 0.0).key;
        let b = record("p", "p/ref-1", 0.0).key;
        {
            let cache = CalibrationCache::open(dir.path()).unwrap();
            for (key, round, wall) in [(&a, 1, 11.0), (&a, 0, 10.0), (&b, 0, 20.0), (&b, 2, 22.0)] {
                cache
                    .append_run(CalibrationRun {
                        key: key.clone(),
                        round,
                        outcome: run(Status::Accepted, wall, 100),
                    })
                    .unwrap();
            }
            assert_eq!(cache.runs(&a).len(), 2);
        }
        let cache = CalibrationCache::open(dir.path()).unwrap();
        assert!(cache.issues.is_empty(), "{:?}", cache.issues);
        let walls = |k: &CalibrationKey| -> Vec<f64> {
            cache
                .runs(k)
                .iter()
                .map(|r| r.measurement.wall_ms)
                .collect()
        };
        assert_eq!(walls(&a), [10.0, 11.0]);
        assert_eq!(
            walls(&b),
            [20.0],
            "round 1 is missing, so round 2 is not used"
        );
        assert!(cache.runs(&record("q", "q/ref-0", 0.0).key).is_empty());
        assert!(cache.is_empty(), "runs are not records");
    }

    #[test]
    fn keys_differ_by_machine_protocol_suite_and_code() {
        let base = CalibrationKey::new("p", "s", "code", "suite", "fp", "proto");
        for other in [
            CalibrationKey::new("p", "s", "code2", "suite", "fp", "proto"),
            CalibrationKey::new("p", "s", "code", "suite2", "fp", "proto"),
            CalibrationKey::new("p", "s", "code", "suite", "fp2", "proto"),
            CalibrationKey::new("p", "s", "code", "suite", "fp", "proto2"),
        ] {
            assert_ne!(base, other);
        }
    }
}
