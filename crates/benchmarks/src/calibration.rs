//! Calibration: reference solutions measured on *this* machine with the same protocol as
//! candidates, cached so that a measurement is never repeated.
//!
//! The cache is one JSONL file, `calibration.jsonl`, in a cache folder. Each line is a
//! [`CalibrationRecord`] keyed by problem, solution, a hash of its code, a digest of the suite
//! it ran on, the machine fingerprint and the protocol id; a lookup only matches when all six
//! agree, so a different machine, protocol or dataset version never reuses a figure. Records
//! are appended and flushed one by one as they complete: stopping a calibration loses nothing
//! already measured, and re-running it skips what is cached. A line that does not parse (for
//! example one cut short by a crash) is reported in [`CalibrationCache::issues`] and ignored.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use afterburner_sandbox::{Dispersion, Language, Sandbox, Status};
use serde::{Deserialize, Serialize};

use crate::harness::{Measured, short_hash};
use crate::problem::RecordedPerformance;

/// File name of the calibration cache inside its folder.
pub const CACHE_FILE: &str = "calibration.jsonl";

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
    /// Median figures over the runs, when it passed.
    pub performance: Option<RecordedPerformance>,
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
    /// The record of a measured solution.
    pub fn from_measured(key: CalibrationKey, language: Language, measured: &Measured) -> Self {
        CalibrationRecord {
            key,
            language,
            status: measured.evaluation.status,
            passed: measured.passed,
            performance: measured.performance,
            cv: measured.summary.as_ref().map(|s| s.cv.clone()),
            runs: measured.summary.as_ref().map_or(1, |s| s.runs),
            tests_passed: measured.evaluation.accepted_cases(),
            tests_total: measured.evaluation.cases.len(),
            detail: measured.detail.clone(),
            measured_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
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
}

/// The calibration cache: lookups, and appends flushed as each result completes; thread-safe.
#[derive(Debug)]
pub struct CalibrationCache {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Lines of the file that could not be read, each with its line number and reason.
    pub issues: Vec<String>,
}

impl CalibrationCache {
    /// Opens (creating if needed) the cache in folder `dir`.
    pub fn open(dir: &Path) -> Result<Self, CalibrationError> {
        fs::create_dir_all(dir).map_err(io_err("create cache folder", dir))?;
        let path = dir.join(CACHE_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io_err("read", &path))?;
        let mut records = HashMap::new();
        let mut issues = Vec::new();
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<CalibrationRecord>(line) {
                Ok(r) => {
                    records.insert(r.key.clone(), r);
                }
                Err(e) => issues.push(format!(
                    "{}:{}: not a calibration record ({e}); ignored",
                    path.display(),
                    n + 1
                )),
            }
        }
        if text.last().is_some_and(|&b| b != b'\n') {
            // A line cut short: start the next record on a line of its own.
            file.seek(SeekFrom::End(0))
                .and_then(|_| file.write_all(b"\n"))
                .map_err(io_err("append to", &path))?;
        }
        Ok(CalibrationCache {
            path,
            inner: Mutex::new(Inner { records, file }),
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
        let mut line = serde_json::to_vec(&record).map_err(|e| CalibrationError::Io {
            action: "serialise a record for",
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut inner = self.lock();
        inner
            .file
            .write_all(&line)
            .and_then(|()| inner.file.flush())
            .map_err(io_err("append to", &self.path))?;
        inner.records.insert(record.key.clone(), record);
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
            performance: Some(RecordedPerformance {
                time_ms,
                memory_kb: 10.0,
                integral: 100.0,
            }),
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
