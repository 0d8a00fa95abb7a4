//! The trajectory: one JSON line per problem per completed iteration (`trajectory.jsonl`), and
//! the run's manifest (`run.json`) that a resumed run must agree with.
//!
//! Rows are appended and flushed as each iteration completes, so an interrupted run loses at most
//! the iterations in progress; re-running reads the rows back and continues each problem from its
//! last incumbent. A line cut short by a crash is reported and ignored (its iteration runs again).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use afterburner_benchmarks::RecordedPerformance;
use afterburner_sandbox::{Dispersion, Language, Status};
use serde::de::IntoDeserializer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::acceptance::Observation;
use crate::chat::{Message, Usage};
use crate::prompt::Instruction;

/// File name of the trajectory inside the output folder.
pub const TRAJECTORY_FILE: &str = "trajectory.jsonl";
/// File name of the manifest inside the output folder.
pub const MANIFEST_FILE: &str = "run.json";

/// Where an iteration's candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A given original solution (`--original`, or a dataset solution), measured at iteration 0.
    Original,
    /// The model, asked to solve the problem from scratch.
    Generate,
    /// The model, asked to improve the incumbent.
    Improve,
}

/// What became of a candidate: the sandbox's verdict on it, or no code to run. Written as one
/// string: the sandbox status (`accepted`, `wrong_answer`...) or `no_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateStatus {
    /// It was run; the sandbox's status.
    Ran(Status),
    /// The response had no usable code (`no_code`).
    NoCode,
}

impl CandidateStatus {
    /// The name written to the trajectory and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateStatus::Ran(s) => s.as_str(),
            CandidateStatus::NoCode => "no_code",
        }
    }
}

impl std::fmt::Display for CandidateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CandidateStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CandidateStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        if name == "no_code" {
            return Ok(CandidateStatus::NoCode);
        }
        let status: Result<Status, serde::de::value::Error> =
            Status::deserialize(name.as_str().into_deserializer());
        status.map(CandidateStatus::Ran).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown candidate status `{name}` (expected a sandbox status such as \
                 `accepted` or `wrong_answer`, or `no_code`)"
            ))
        })
    }
}

/// Beyond-T/M/I percentiles of one solution (0 when it failed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Share of passing references it beats or ties on time.
    pub time: f64,
    /// ... on peak memory.
    pub memory: f64,
    /// ... on the memory integral.
    pub integral: f64,
}

/// One row of the trajectory: an iteration of one problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationRecord {
    /// The problem's id.
    pub problem_id: String,
    /// 0 for the first solution, then 1..=N for the improvement iterations.
    pub iteration: usize,
    /// Where the candidate came from.
    pub source: Source,
    /// Whether the candidate became the incumbent.
    pub accepted: bool,
    /// Why it was or was not accepted.
    pub decision: String,
    /// The iteration whose candidate is the incumbent after this iteration (`None`: none yet).
    pub incumbent: Option<usize>,
    /// The candidate's status: a sandbox status (`accepted`, `wrong_answer`...) or `no_code`
    /// (the response had no usable code).
    pub status: CandidateStatus,
    /// Whether it passed every test in every run.
    pub passed: bool,
    /// Median wall time, ms (when it passed).
    pub time: Option<f64>,
    /// Median peak memory, KB (when it passed).
    pub memory: Option<f64>,
    /// Median memory integral, KB*ms (when it passed).
    pub integral: Option<f64>,
    /// Coefficients of variation over the runs (when it passed).
    pub cv: Option<Dispersion>,
    /// Runs measured.
    pub runs: usize,
    /// Tests passed in the first run (when it ran).
    pub tests_passed: Option<usize>,
    /// Tests in the suite (when it ran).
    pub tests_total: Option<usize>,
    /// Why it failed, when it did.
    pub detail: Option<String>,
    /// Beyond-T/M/I percentiles against the calibrated references (when there are any).
    pub percentiles: Option<Percentiles>,
    /// The candidate's code (`None` when the response had none).
    pub code: Option<String>,
    /// Its language.
    pub language: Language,
    /// The run's instruction.
    pub instruction: Instruction,
    /// The messages sent (`None` for an original solution).
    pub prompt: Option<Vec<Message>>,
    /// The raw response text (`None` for an original solution).
    pub response: Option<String>,
    /// Whether the response had exactly the `<thinking>..</thinking><solution>..</solution>` form.
    pub well_formed: Option<bool>,
    /// Why generation stopped, when the server said.
    pub finish_reason: Option<String>,
    /// Token counts, when reported.
    pub usage: Option<Usage>,
    /// Whether the response came from the response cache.
    pub cached: Option<bool>,
    /// Wall time of the model call, ms.
    pub llm_ms: Option<f64>,
    /// Wall time of measuring, ms.
    pub measure_ms: Option<f64>,
    /// When the iteration completed (seconds since the Unix epoch).
    pub finished_at: u64,
}

impl IterationRecord {
    /// A row not yet filled in: no code, nothing measured, no model call, not accepted.
    pub fn new(
        problem_id: &str,
        iteration: usize,
        source: Source,
        language: Language,
        instruction: Instruction,
    ) -> Self {
        IterationRecord {
            problem_id: problem_id.to_string(),
            iteration,
            source,
            accepted: false,
            decision: String::new(),
            incumbent: None,
            status: CandidateStatus::NoCode,
            passed: false,
            time: None,
            memory: None,
            integral: None,
            cv: None,
            runs: 0,
            tests_passed: None,
            tests_total: None,
            detail: None,
            percentiles: None,
            code: None,
            language,
            instruction,
            prompt: None,
            response: None,
            well_formed: None,
            finish_reason: None,
            usage: None,
            cached: None,
            llm_ms: None,
            measure_ms: None,
            finished_at: 0,
        }
    }

    /// The measured figures as acceptance sees them.
    pub fn observation(&self) -> Observation {
        Observation {
            passed: self.passed,
            performance: self.performance(),
            dispersion: self.cv.clone(),
            runs: self.runs,
        }
    }

    /// Median time, memory and integral with their noise (the CVs), when it passed.
    pub fn performance(&self) -> Option<RecordedPerformance> {
        if !self.passed {
            return None;
        }
        let figures = RecordedPerformance::new(self.time?, self.memory?, self.integral?);
        Some(match &self.cv {
            Some(cv) => figures.with_noise(afterburner_sandbox::Noise::of(cv)),
            None => figures,
        })
    }
}

/// What a run was started with; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The dataset spec.
    pub dataset: String,
    /// The model name.
    pub model: String,
    /// The instruction.
    pub instruction: Instruction,
    /// The language.
    pub language: Language,
    /// Where iteration 0 comes from (`model`, or a description of the original solutions).
    pub original: String,
    /// The endpoint of the latest run (informational: it may change between runs).
    pub endpoint: String,
    /// Iterations of the latest run (informational: a resumed run may extend it).
    pub iterations: usize,
}

/// Why the trajectory or manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TrajectoryError {
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The output folder holds a different run.
    #[error(
        "{} holds a run with {field} `{found}`, not `{wanted}`: resume it with the same settings, or choose another --out folder",
        path.display()
    )]
    Mismatch {
        /// The manifest file.
        path: PathBuf,
        /// The setting that differs.
        field: &'static str,
        /// What the folder holds.
        found: String,
        /// What this run asks for.
        wanted: String,
    },
    /// The manifest is not one.
    #[error("{} is not a run manifest: {reason}", path.display())]
    BadManifest {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TrajectoryError {
    let path = path.to_path_buf();
    move |source| TrajectoryError::Io {
        action,
        path,
        source,
    }
}

/// Writes `manifest` to `dir/run.json`, after checking that any manifest already there describes
/// the same run (dataset, model, instruction, language, original).
pub fn check_and_write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), TrajectoryError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = dir.join(MANIFEST_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let old: Manifest =
                serde_json::from_slice(&bytes).map_err(|e| TrajectoryError::BadManifest {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let checks: [(&'static str, String, String); 5] = [
                ("dataset", old.dataset.clone(), manifest.dataset.clone()),
                ("model", old.model.clone(), manifest.model.clone()),
                (
                    "instruction",
                    old.instruction.to_string(),
                    manifest.instruction.to_string(),
                ),
                (
                    "language",
                    old.language.to_string(),
                    manifest.language.to_string(),
                ),
                ("original", old.original.clone(), manifest.original.clone()),
            ];
            for (field, found, wanted) in checks {
                if found != wanted {
                    return Err(TrajectoryError::Mismatch {
                        path,
                        field,
                        found,
                        wanted,
                    });
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &path)(e)),
    }
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| io("serialise", &path)(std::io::Error::other(e)))?;
    fs::write(&path, text + "\n").map_err(io("write", &path))
}

/// The rows of a trajectory file, and the lines that could not be read (with line numbers).
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rows by problem, each problem's rows ordered by iteration without gaps from 0
    /// (rows after a gap, and repeated iterations after the first, are left out and reported).
    pub rows: BTreeMap<String, Vec<IterationRecord>>,
    /// Lines or rows left out, each with the reason.
    pub issues: Vec<String>,
}

/// Reads `path` (a missing file is an empty trajectory).
pub fn read_trajectory(path: &Path) -> Result<Loaded, TrajectoryError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(io("read", path)(e)),
    };
    let mut loaded = Loaded::default();
    let mut all: BTreeMap<String, Vec<(usize, IterationRecord)>> = BTreeMap::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<IterationRecord>(line) {
            Ok(r) => all
                .entry(r.problem_id.clone())
                .or_default()
                .push((n + 1, r)),
            Err(e) => loaded.issues.push(format!(
                "{}:{}: not a trajectory row ({e}); ignored",
                path.display(),
                n + 1
            )),
        }
    }
    for (id, rows) in all {
        let mut kept: Vec<IterationRecord> = Vec::new();
        let mut sorted = rows;
        sorted.sort_by_key(|(line, r)| (r.iteration, *line));
        for (line, r) in sorted {
            if r.iteration == kept.len() {
                kept.push(r);
            } else {
                loaded.issues.push(format!(
                    "{}:{line}: problem {id} iteration {} {}; ignored",
                    path.display(),
                    r.iteration,
                    if r.iteration < kept.len() {
                        "is a repeat"
                    } else {
                        "follows a gap"
                    }
                ));
            }
        }
        loaded.rows.insert(id, kept);
    }
    Ok(loaded)
}

/// Appends rows to a trajectory file, one flushed line each; share it across threads.
#[derive(Debug)]
pub struct TrajectoryWriter {
    path: PathBuf,
    file: Mutex<File>,
}

impl TrajectoryWriter {
    /// Opens `path` for appending (creating it), starting a fresh line if the last one was cut short.
    pub fn open(path: &Path) -> Result<Self, TrajectoryError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io("open", path))?;
        let len = file.metadata().map_err(io("inspect", path))?.len();
        if len > 0 {
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(io("read", path))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io("append to", path))?;
            }
        }
        Ok(TrajectoryWriter {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one row and flushes it.
    pub fn append(&self, record: &IterationRecord) -> Result<(), TrajectoryError> {
        let mut line = serde_json::to_vec(record)
            .map_err(|e| io("serialise a row for", &self.path)(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
            .and_then(|()| file.flush())
            .map_err(io("append to", &self.path))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(
        id: &str,
        iteration: usize,
        accepted: bool,
        time: Option<f64>,
    ) -> IterationRecord {
        let source = if iteration == 0 {
            Source::Generate
        } else {
            Source::Improve
        };
        let mut r =
            IterationRecord::new(id, iteration, source, Language::Python, Instruction::Time);
        r.accepted = accepted;
        r.incumbent = Some(0);
        r.status = CandidateStatus::Ran(if time.is_some() {
            Status::Accepted
        } else {
            Status::WrongAnswer
        });
        r.passed = time.is_some();
        r.time = time;
        r.memory = time.map(|_| 1000.0);
        r.integral = time.map(|t| t * 1000.0);
        r.runs = 1;
        r.code = Some(format!("print({iteration})"));
        r
    }

    #[test]
    fn candidate_statuses_are_written_as_the_sandbox_names_or_no_code() {
        let all = [
            (CandidateStatus::Ran(Status::Accepted), "\"accepted\""),
            (CandidateStatus::Ran(Status::TimeLimit), "\"time_limit\""),
            (CandidateStatus::NoCode, "\"no_code\""),
        ];
        for (status, json) in all {
            assert_eq!(serde_json::to_string(&status).unwrap(), json);
            assert_eq!(
                serde_json::from_str::<CandidateStatus>(json).unwrap(),
                status
            );
        }
        let e = serde_json::from_str::<CandidateStatus>("\"exploded\"").unwrap_err();
        assert!(e.to_string().contains("exploded"), "{e}");
    }

    #[test]
    fn rows_round_trip_and_cut_lines_gaps_and_repeats_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRAJECTORY_FILE);
        let w = TrajectoryWriter::open(&path).unwrap();
        w.append(&row("a", 0, true, Some(10.0))).unwrap();
        w.append(&row("a", 1, false, None)).unwrap();
        w.append(&row("b", 0, true, Some(5.0))).unwrap();
        w.append(&row("b", 2, true, Some(4.0))).unwrap();
        w.append(&row("a", 1, false, None)).unwrap();
        drop(w);
        // A crash mid-line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"problem_id\":\"a\",\"iter").unwrap();
        drop(f);

        let loaded = read_trajectory(&path).unwrap();
        assert_eq!(loaded.rows["a"].len(), 2);
        assert_eq!(loaded.rows["b"].len(), 1);
        assert_eq!(loaded.issues.len(), 3, "{:?}", loaded.issues);
        assert!(loaded.issues.iter().any(|i| i.contains("follows a gap")));
        assert!(loaded.issues.iter().any(|i| i.contains("is a repeat")));
        assert!(
            loaded
                .issues
                .iter()
                .any(|i| i.contains(":6: not a trajectory row"))
        );

        // Appending after the cut line starts a new line.
        let w = TrajectoryWriter::open(&path).unwrap();
        w.append(&row("a", 2, true, Some(8.0))).unwrap();
        let loaded = read_trajectory(&path).unwrap();
        assert_eq!(loaded.rows["a"].len(), 3);
        assert_eq!(loaded.rows["a"][2].time, Some(8.0));
    }

    #[test]
    fn a_missing_trajectory_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = read_trajectory(&dir.path().join("none.jsonl")).unwrap();
        assert!(loaded.rows.is_empty() && loaded.issues.is_empty());
    }

    #[test]
    fn a_folder_holding_another_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest {
            dataset: "coffe:x".into(),
            model: "m".into(),
            instruction: Instruction::Time,
            language: Language::Python,
            original: "model".into(),
            endpoint: "http://a/v1".into(),
            iterations: 2,
        };
        check_and_write_manifest(dir.path(), &m).unwrap();
        let extended = Manifest {
            iterations: 5,
            endpoint: "http://b/v1".into(),
            ..m.clone()
        };
        check_and_write_manifest(dir.path(), &extended).unwrap();
        let other = Manifest {
            instruction: Instruction::Memory,
            ..m.clone()
        };
        let e = check_and_write_manifest(dir.path(), &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("instruction `time`, not `memory`"), "{e}");
        std::fs::write(dir.path().join(MANIFEST_FILE), "[]").unwrap();
        let e = check_and_write_manifest(dir.path(), &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a run manifest"), "{e}");
    }
}
