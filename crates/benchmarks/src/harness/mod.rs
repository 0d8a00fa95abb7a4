//! Harnesses: how a solution is run against a problem's tests in the sandbox and judged.
//!
//! # One process per submission
//!
//! A Python solution runs *once*, in one sandboxed process, over all of its problem's test
//! inputs: the program the sandbox runs is a driver script shipped in this crate
//! (`driver.py`), which receives the solution's source and the test **inputs** (never the
//! expected outputs) framed on stdin, compiles the solution once and then, per test,
//!
//! - stdin/stdout programs (and Venus runners): `exec`s the compiled program in fresh globals
//!   with file descriptors 0 and 1 pointed at a file holding the input and a file catching the
//!   output (so `input()`, `sys.stdin.buffer`, `open(0)`, `print` and `os.write(1, ...)` all
//!   behave as in a process of their own), catching `SystemExit`;
//! - LeetCode methods and functions: parses the argument list with an `ast`-based literal reader
//!   (no evaluation of code), calls `Solution().method(**kwargs)` or `name(*args)` and writes the
//!   result's `repr` (converted to plain lists/dicts/sets/scalars first; linked lists and trees
//!   become lists), or the raw `repr` when it is not a plain value.
//!
//! It writes one framed record per test (output, wall time from `perf_counter_ns`, any
//! exception) on a private duplicate of stdout. **Per-test times are informational**: the
//! solution shares the driver's process and could forge them. The efficiency figures are the
//! sandbox's measurement of the whole run (wall time, peak RSS, memory integral), which also
//! contains the driver's own small, constant overhead (interpreter start, reading the inputs).
//!
//! Solutions in other languages are supported for stdin/stdout problems: the program is built
//! once and run once per test, each run measured by the sandbox; the run's figures are the sums
//! of wall and CPU time and of the memory integral, and the largest peak.
//!
//! # Verdicts cannot be forged
//!
//! Expected outputs never enter the solution's sandbox, and the comparison happens outside it:
//! in Rust for exact (whitespace-token) and LeetCode (structural, floats within
//! [`literal::FLOAT_REL_TOLERANCE`] / [`literal::FLOAT_ABS_TOLERANCE`]) checks, or, for evaluator code a
//! dataset provides (Venus `evaluate(expected, actual)`, ENAMEL `__check`), in a *separate*
//! sandboxed process (`evaluator.py`) that gets the expected values and the solution's outputs
//! but never the solution. A solution that prints `Success`, exits early, or looks for test
//! files finds nothing to exploit: missing outputs are wrong answers.
//!
//! # Stress inputs
//!
//! See [`Harness::suite`]: generators run once (seeded, sandboxed), expected outputs come from
//! the consensus of reference solutions, and the result is cached on disk.

pub mod literal;
mod suite;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use afterburner_sandbox::{
    Language, Limits, Measurement, Program, RepeatSummary, RunRequest, RunResult, Sandbox,
    SandboxError, Status,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::problem::{Checker, Entry, Problem, RecordedPerformance, VENUS_PLACEHOLDER};

pub use suite::{
    Case, CaseOrigin, DroppedInput, ENAMEL_TESTS_PER_LEVEL, Suite, planned_stress_inputs,
};

const COMMON_PY: &str = include_str!("common.py");
const DRIVER_PY: &str = include_str!("driver.py");
const EVALUATOR_PY: &str = include_str!("evaluator.py");
const GENERATOR_PY: &str = include_str!("generator.py");

/// Version of the measurement protocol; part of every cache key.
pub const PROTOCOL_VERSION: u32 = 1;

const MIB: u64 = 1024 * 1024;

/// Why a harness could not run or judge something (never the solution's own failure).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The sandbox failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    /// The problem or solution cannot be run by any harness here.
    #[error("problem {problem}: {reason}")]
    Unsupported {
        /// The problem's id.
        problem: String,
        /// Why not.
        reason: String,
    },
    /// One of the harness's own scripts does not build (a broken installation).
    #[error("harness script `{script}` does not build in the sandbox: {detail}")]
    Script {
        /// The script.
        script: &'static str,
        /// The compiler's output.
        detail: String,
    },
    /// A cache file could not be read or written.
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

/// Settings of a [`Harness`]: the measurement protocol and where stress suites are cached.
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
    /// Folder for cached stress suites (`<dir>/stress/`); `None`: regenerate every time.
    pub cache_dir: Option<PathBuf>,
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
    /// 60 s and 1 GiB per run, 3 repeats, ENAMEL's seed 998244353, 3 agreeing references.
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
        }
    }
}

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
    /// A stable id of the measurement protocol: what makes two measurements comparable.
    pub fn protocol_id(&self) -> String {
        format!(
            "v{PROTOCOL_VERSION}/repeats={}/time={}ms/memory={}MiB/seed={}/consensus={}/scripts={}",
            self.repeats,
            self.limits.wall_time.as_millis(),
            self.limits.memory_bytes / MIB,
            self.stress_seed,
            self.consensus_references,
            scripts_digest()
        )
    }
}

/// The verdict of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The output matched.
    Accepted,
    /// The output did not match, or there was none.
    WrongAnswer,
    /// The solution raised or exited with an error on this test.
    RuntimeError,
    /// The test did not run (the run was stopped earlier).
    NotRun,
}

/// The outcome of one test of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// Its verdict.
    pub verdict: Verdict,
    /// Wall time of the call as the driver saw it, ms (informational: see the module docs).
    pub time_ms: Option<f64>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One judged run of a solution over its suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// `accepted` when every test passed; otherwise the first reason it did not.
    pub status: Status,
    /// Per-test outcomes, in suite order.
    pub cases: Vec<CaseResult>,
    /// The sandbox's measurement of the whole run (the efficiency figures).
    pub measurement: Measurement,
    /// Compile time, ms (compiled languages only; never part of the run time).
    pub compile_ms: f64,
    /// Why the run failed as a whole, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Evaluation {
    /// Whether every test passed.
    pub fn passed(&self) -> bool {
        self.status == Status::Accepted
    }

    /// Number of accepted tests.
    pub fn accepted_cases(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| c.verdict == Verdict::Accepted)
            .count()
    }

    /// The first failing test's index and detail.
    pub fn first_failure(&self) -> Option<(usize, &CaseResult)> {
        self.cases
            .iter()
            .enumerate()
            .find(|(_, c)| c.verdict != Verdict::Accepted)
    }

    /// A one-line reason for a failure (status, message, first failing test).
    pub fn failure_reason(&self) -> Option<String> {
        if self.passed() {
            return None;
        }
        let mut reason = self.status.to_string();
        if let Some(m) = &self.message {
            reason.push_str(": ");
            reason.push_str(&clip(m, 300));
        } else if let Some((k, case)) = self.first_failure() {
            reason.push_str(&format!(": test {k} {:?}", case.verdict));
            if let Some(d) = &case.detail {
                reason.push_str(": ");
                reason.push_str(&clip(d, 300));
            }
        }
        Some(reason)
    }
}

/// A solution measured with the protocol: repeated runs, medians.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The first run, judged (its status is the solution's verdict unless a repeat failed).
    pub evaluation: Evaluation,
    /// Whether every run passed.
    pub passed: bool,
    /// Medians and dispersion over the runs (when it passed).
    pub summary: Option<RepeatSummary>,
    /// The figures Beyond-T/M/I compare (median wall ms, peak KiB, integral KiB*ms), when it passed.
    pub performance: Option<RecordedPerformance>,
    /// Why it failed, when it did.
    pub detail: Option<String>,
}

/// One run of a solution reduced to what the protocol keeps of it: how it ended, what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// `accepted` when every test passed; otherwise why not.
    pub status: Status,
    /// The sandbox's measurement of the run.
    pub measurement: Measurement,
    /// Tests passed.
    pub tests_passed: usize,
    /// Tests in the suite.
    pub tests_total: usize,
    /// Why it failed, when it did ([`Evaluation::failure_reason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl RunOutcome {
    /// Whether every test passed.
    pub fn passed(&self) -> bool {
        self.status == Status::Accepted
    }
}

impl From<&Evaluation> for RunOutcome {
    fn from(e: &Evaluation) -> Self {
        RunOutcome {
            status: e.status,
            measurement: e.measurement.clone(),
            tests_passed: e.accepted_cases(),
            tests_total: e.cases.len(),
            failure: e.failure_reason(),
        }
    }
}

/// What the protocol concludes from a solution's runs, in the order they were made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conclusion {
    /// Whether `repeats` runs were made and every one passed.
    pub passed: bool,
    /// `accepted`, or the status of the first run that failed.
    pub status: Status,
    /// Medians and dispersion, when it passed.
    pub summary: Option<RepeatSummary>,
    /// The figures Beyond-T/M/I compare, when it passed.
    pub performance: Option<RecordedPerformance>,
    /// Why it failed, when it did.
    pub detail: Option<String>,
}

impl Conclusion {
    /// The protocol's verdict on `runs` of `repeats`: a solution passes when all `repeats` runs
    /// passed (runs after the first failure are ignored), and its figures are the medians.
    pub(crate) fn of(runs: &[RunOutcome], repeats: usize) -> Conclusion {
        let repeats = repeats.max(1);
        if let Some(k) = runs.iter().position(|r| !r.passed()) {
            let reason = runs[k]
                .failure
                .clone()
                .unwrap_or_else(|| runs[k].status.to_string());
            return Conclusion {
                passed: false,
                status: runs[k].status,
                summary: None,
                performance: None,
                detail: Some(if k == 0 {
                    reason
                } else {
                    format!("run {} of {repeats} failed: {reason}", k + 1)
                }),
            };
        }
        if runs.len() < repeats {
            return Conclusion {
                passed: false,
                status: Status::Accepted,
                summary: None,
                performance: None,
                detail: Some(format!("only {} of {repeats} runs were made", runs.len())),
            };
        }
        let measurements: Vec<Measurement> = runs[..repeats]
            .iter()
            .map(|r| r.measurement.clone())
            .collect();
        let summary = RepeatSummary::of(&measurements);
        let performance = RecordedPerformance {
            time_ms: summary.wall_ms,
            memory_kb: summary.peak_rss_kb,
            integral: summary.integral_kb_ms,
        };
        Conclusion {
            passed: true,
            status: Status::Accepted,
            summary: Some(summary),
            performance: Some(performance),
            detail: None,
        }
    }
}

impl Measured {
    /// The protocol applied to a solution's `runs` (see [`RunOutcome`]), `first` being the
    /// judged first run; the runs may have been made back to back or interleaved with others.
    pub fn from_runs(first: Evaluation, runs: &[RunOutcome], repeats: usize) -> Measured {
        let c = Conclusion::of(runs, repeats);
        let mut evaluation = first;
        if !c.passed && evaluation.passed() {
            // A later run failed: that is the solution's verdict.
            evaluation.status = c.status;
        }
        Measured {
            evaluation,
            passed: c.passed,
            summary: c.summary,
            performance: c.performance,
            detail: c.detail,
        }
    }
}

/// The output of one test as the driver reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawOutput {
    /// It finished: its output text (stdout, or the `repr` of the result) and whether that is a
    /// plain-value literal.
    Ok { text: String, literal: bool },
    /// It raised or exited with an error.
    Error(String),
    /// The input could not be parsed (a dataset problem).
    InputError(String),
}

/// What one driver run produced, before judging.
#[derive(Debug, Clone)]
pub(crate) struct RawRun {
    pub result: RunResult,
    /// Per test: its output and driver-measured ns, if the driver reported it.
    pub outputs: Vec<Option<(RawOutput, u64)>>,
    /// A failure before any test ran (compile, load or prelude error).
    pub fatal: Option<(Status, String)>,
    pub compile_ms: f64,
}

/// Runs and judges solutions of problems in a sandbox; share one across worker threads.
#[derive(Debug)]
pub struct Harness<'s> {
    sandbox: &'s Sandbox,
    config: HarnessConfig,
    driver: Program,
    evaluator: Program,
    generator: Program,
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}...")
    }
}

/// Frames a header and inputs for the harness scripts' stdin.
/// Why a helper process left an item without a record: its status, message and stderr.
fn stopped_before(who: &str, what: &str, result: &RunResult) -> String {
    format!(
        "{who} stopped before {what} ({}{}; stderr: {})",
        result.measurement.status,
        result
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default(),
        clip(&result.stderr_text(), 500)
    )
}

fn frame(header: &Value, frames: &[&[u8]]) -> Vec<u8> {
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    for f in frames {
        out.extend_from_slice(f.len().to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(f);
    }
    out
}

/// The JSON records of a script's stdout; lines that are not JSON objects are ignored.
fn records(stdout: &[u8]) -> Vec<serde_json::Map<String, Value>> {
    stdout
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .filter_map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn str_field(m: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The index of a per-test record, if it is one for a test below `n`.
fn index_field(m: &serde_json::Map<String, Value>, n: usize) -> Option<usize> {
    let i = m.get("i")?.as_u64()? as usize;
    (i < n).then_some(i)
}

impl<'s> Harness<'s> {
    /// A harness over `sandbox`: builds its scripts once.
    pub fn new(sandbox: &'s Sandbox, config: HarnessConfig) -> Result<Self, HarnessError> {
        let build = |script: &'static str, body: &str| -> Result<Program, HarnessError> {
            let program = sandbox.build(Language::Python, &format!("{COMMON_PY}\n{body}"))?;
            if !program.is_runnable() {
                let detail = program
                    .compilation()
                    .map(|c| c.output.clone())
                    .unwrap_or_default();
                return Err(HarnessError::Script { script, detail });
            }
            Ok(program)
        };
        Ok(Harness {
            sandbox,
            driver: build("driver.py", DRIVER_PY)?,
            evaluator: build("evaluator.py", EVALUATOR_PY)?,
            generator: build("generator.py", GENERATOR_PY)?,
            config,
        })
    }

    /// The harness's settings.
    pub fn config(&self) -> &HarnessConfig {
        &self.config
    }

    /// The sandbox it runs in.
    pub fn sandbox(&self) -> &Sandbox {
        self.sandbox
    }

    fn run_script(
        &self,
        program: &Program,
        header: &Value,
        frames: &[&[u8]],
        limits: &Limits,
        cpu: Option<usize>,
    ) -> Result<RunResult, HarnessError> {
        let request = RunRequest {
            stdin: frame(header, frames),
            limits: limits.clone(),
            cpu,
            keep_memory_trace: false,
        };
        Ok(self.sandbox.run(program, &request)?)
    }

    /// Runs `code` on `inputs` with the driver (Python) and collects the raw outputs.
    pub(crate) fn raw_run(
        &self,
        problem: &Problem,
        code: &str,
        inputs: &[&str],
        limits: &Limits,
        cpu: Option<usize>,
    ) -> Result<RawRun, HarnessError> {
        let mut header = json!({
            "source": code,
            "prelude": problem.prelude,
            "count": inputs.len(),
        });
        let fields = match &problem.entry {
            Entry::StdinStdout => json!({"mode": "stdio"}),
            Entry::LeetCodeMethod {
                class_name,
                method_name,
            } => json!({"mode": "call", "class": class_name, "name": method_name}),
            Entry::Function { name } => json!({"mode": "call", "class": null, "name": name}),
            Entry::VenusRunner { runner } => {
                json!({"mode": "venus", "runner": runner, "placeholder": VENUS_PLACEHOLDER})
            }
        };
        if let (Value::Object(h), Value::Object(f)) = (&mut header, fields) {
            h.extend(f);
        }
        let frames: Vec<&[u8]> = inputs.iter().map(|s| s.as_bytes()).collect();
        let result = self.run_script(&self.driver, &header, &frames, limits, cpu)?;
        let mut outputs: Vec<Option<(RawOutput, u64)>> = vec![None; inputs.len()];
        let mut fatal = None;
        for rec in records(&result.stdout) {
            if fatal.is_none() {
                if let Some(e) = str_field(&rec, "compile_error") {
                    fatal = Some((Status::CompileError, e));
                } else if let Some(e) = str_field(&rec, "load_error") {
                    fatal = Some((Status::RuntimeError, format!("while loading: {e}")));
                } else if let Some(e) = str_field(&rec, "prelude_error") {
                    fatal = Some((
                        Status::RuntimeError,
                        format!("the problem's prelude failed: {e}"),
                    ));
                }
            }
            let Some(i) = index_field(&rec, inputs.len()) else {
                continue;
            };
            if outputs[i].is_some() {
                continue;
            }
            let ns = rec.get("ns").and_then(Value::as_u64).unwrap_or(0);
            let err = str_field(&rec, "err").unwrap_or_default();
            let out = match rec.get("st").and_then(Value::as_str) {
                Some("ok") => RawOutput::Ok {
                    text: str_field(&rec, "out").unwrap_or_default(),
                    literal: rec.get("kind").and_then(Value::as_str) != Some("repr"),
                },
                Some("input_error") => RawOutput::InputError(err),
                _ => RawOutput::Error(err),
            };
            outputs[i] = Some((out, ns));
        }
        Ok(RawRun {
            result,
            outputs,
            fatal,
            compile_ms: 0.0,
        })
    }

    /// Runs a non-Python stdin/stdout program once per input under `limits`, summing the
    /// measurements.
    fn native_run(
        &self,
        language: Language,
        code: &str,
        inputs: &[&str],
        limits: &Limits,
        cpu: Option<usize>,
    ) -> Result<RawRun, HarnessError> {
        let program = self.sandbox.build(language, code)?;
        let compile_ms = program.compile_ms();
        let mut outputs = vec![None; inputs.len()];
        let mut total: Option<RunResult> = None;
        if let Some(c) = program
            .compilation()
            .filter(|c| c.status != Status::Accepted)
        {
            let result = self.sandbox.run(
                &program,
                &RunRequest {
                    cpu,
                    ..RunRequest::default()
                },
            )?;
            return Ok(RawRun {
                result,
                outputs,
                fatal: Some((Status::CompileError, c.output.clone())),
                compile_ms,
            });
        }
        for (k, input) in inputs.iter().enumerate() {
            let r = self.sandbox.run(
                &program,
                &RunRequest {
                    stdin: input.as_bytes().to_vec(),
                    limits: limits.clone(),
                    cpu,
                    keep_memory_trace: false,
                },
            )?;
            let m = &r.measurement;
            let ns = (m.wall_ms * 1e6) as u64;
            let failed = m.status != Status::Accepted;
            outputs[k] = Some((
                if failed {
                    RawOutput::Error(format!(
                        "{}{}: {}",
                        m.status,
                        r.message
                            .as_deref()
                            .map(|s| format!(" ({s})"))
                            .unwrap_or_default(),
                        clip(&r.stderr_text(), 2000)
                    ))
                } else {
                    RawOutput::Ok {
                        text: r.stdout_text(),
                        literal: false,
                    }
                },
                ns,
            ));
            total = Some(match total {
                None => r,
                Some(mut t) => {
                    let (a, b) = (&mut t.measurement, &r.measurement);
                    a.wall_ms += b.wall_ms;
                    a.cpu_ms += b.cpu_ms;
                    a.integral_kb_ms += b.integral_kb_ms;
                    a.peak_rss_kb = a.peak_rss_kb.max(b.peak_rss_kb);
                    a.samples += b.samples;
                    a.instructions = a.instructions.zip(b.instructions).map(|(x, y)| x + y);
                    if a.status == Status::Accepted {
                        a.status = b.status;
                        a.exit_code = b.exit_code;
                        a.signal = b.signal;
                        t.message = r.message.clone();
                    }
                    t
                }
            });
            if failed {
                break;
            }
        }
        let result = match total {
            Some(mut r) => {
                if r.measurement.wall_ms > 0.0 {
                    r.measurement.sample_hz =
                        r.measurement.samples as f64 / r.measurement.wall_ms * 1000.0;
                }
                r
            }
            None => self.sandbox.run(
                &program,
                &RunRequest {
                    cpu,
                    ..RunRequest::default()
                },
            )?,
        };
        Ok(RawRun {
            result,
            outputs,
            fatal: None,
            compile_ms,
        })
    }

    /// Runs the dataset's evaluator on `(input, expected, actual)` triples in its own process;
    /// returns per triple whether it was accepted and any error.
    pub(crate) fn run_evaluator(
        &self,
        problem: &Problem,
        triples: &[(&str, &str, &str)],
        cpu: Option<usize>,
    ) -> Result<Vec<(bool, Option<String>)>, HarnessError> {
        let (kind, source) = match &problem.checker {
            Checker::PythonEvaluator { source } => ("venus", source),
            Checker::PythonCheck { source } => ("check", source),
            _ => {
                return Err(HarnessError::Unsupported {
                    problem: problem.id.clone(),
                    reason: "its checker is not a Python evaluator".into(),
                });
            }
        };
        let header = json!({
            "kind": kind,
            "source": source,
            "prelude": problem.prelude,
            "count": triples.len(),
        });
        let encoded: Vec<Vec<u8>> = triples
            .iter()
            .map(|(i, e, a)| json!([i, e, a]).to_string().into_bytes())
            .collect();
        let frames: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let result = self.run_script(
            &self.evaluator,
            &header,
            &frames,
            &self.config.evaluator_limits,
            cpu,
        )?;
        let mut verdicts: Vec<Option<(bool, Option<String>)>> = vec![None; triples.len()];
        let mut setup_error = None;
        for rec in records(&result.stdout) {
            if let Some(e) = str_field(&rec, "setup_error") {
                setup_error.get_or_insert(e);
            }
            if let Some(i) = index_field(&rec, triples.len())
                && verdicts[i].is_none()
            {
                let ok = rec.get("ok").and_then(Value::as_bool).unwrap_or(false);
                verdicts[i] = Some((ok, str_field(&rec, "err")));
            }
        }
        let why_missing = match setup_error {
            Some(e) => format!("the dataset's evaluator does not load: {}", clip(&e, 1000)),
            None => stopped_before("the evaluator", "judging it", &result),
        };
        Ok(verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| (false, Some(why_missing.clone()))))
            .collect())
    }

    /// Runs a solution once over `suite` and judges every test; an empty suite is an error
    /// (there would be nothing to fail).
    pub fn evaluate(
        &self,
        problem: &Problem,
        suite: &Suite,
        language: Language,
        code: &str,
        cpu: Option<usize>,
    ) -> Result<Evaluation, HarnessError> {
        self.evaluate_within(problem, suite, language, code, &self.config.limits, cpu)
    }

    /// [`Harness::evaluate`] under `limits` instead of the configured ones (a service applying
    /// each request's own time and memory limits).
    pub fn evaluate_within(
        &self,
        problem: &Problem,
        suite: &Suite,
        language: Language,
        code: &str,
        limits: &Limits,
        cpu: Option<usize>,
    ) -> Result<Evaluation, HarnessError> {
        if suite.cases.is_empty() {
            return Err(HarnessError::Unsupported {
                problem: problem.id.clone(),
                reason: format!(
                    "no test to judge a solution on ({} stress inputs dropped{})",
                    suite.dropped.len(),
                    suite
                        .dropped
                        .first()
                        .map(|d| format!(", e.g. {}", clip(&d.reason, 200)))
                        .unwrap_or_default()
                ),
            });
        }
        let inputs: Vec<&str> = suite.cases.iter().map(|c| c.input.as_str()).collect();
        let raw = if language == Language::Python {
            self.raw_run(problem, code, &inputs, limits, cpu)?
        } else if problem.entry == Entry::StdinStdout {
            self.native_run(language, code, &inputs, limits, cpu)?
        } else {
            return Err(HarnessError::Unsupported {
                problem: problem.id.clone(),
                reason: format!(
                    "only Python solutions can be called as functions or methods (got {language})"
                ),
            });
        };
        self.judge(problem, suite, raw, cpu)
    }

    /// Compares raw outputs with the expected ones (outside the solution's process).
    fn judge(
        &self,
        problem: &Problem,
        suite: &Suite,
        raw: RawRun,
        cpu: Option<usize>,
    ) -> Result<Evaluation, HarnessError> {
        let RawRun {
            result,
            outputs,
            fatal,
            compile_ms,
        } = raw;
        let measurement = result.measurement.clone();
        let run_status = measurement.status;
        if run_status == Status::SandboxError {
            return Err(HarnessError::Sandbox(SandboxError::Unsupported(format!(
                "the sandbox failed running a solution of {}: {}",
                problem.id,
                result.message.as_deref().unwrap_or("no detail")
            ))));
        }
        let mut cases: Vec<CaseResult> = Vec::with_capacity(suite.cases.len());
        let mut to_evaluate: Vec<usize> = Vec::new();
        let stopped = match run_status {
            Status::Accepted => "the program exited before running this test",
            _ => "the run was stopped before this test",
        };
        for (k, (case, out)) in suite.cases.iter().zip(&outputs).enumerate() {
            let time_ms = out.as_ref().map(|(_, ns)| *ns as f64 / 1e6);
            let (verdict, detail) = match out.as_ref().map(|(o, _)| o) {
                None if fatal.is_some() => (Verdict::NotRun, None),
                None => (
                    if run_status == Status::Accepted {
                        Verdict::WrongAnswer
                    } else {
                        Verdict::NotRun
                    },
                    Some(stopped.to_string()),
                ),
                Some(RawOutput::Error(e)) => (Verdict::RuntimeError, Some(clip(e, 2000))),
                Some(RawOutput::InputError(e)) => (
                    Verdict::RuntimeError,
                    Some(format!("the test input does not parse: {}", clip(e, 1000))),
                ),
                Some(RawOutput::Ok { text, literal }) => match &problem.checker {
                    Checker::Exact => {
                        if literal::tokens_match(text, &case.expected) {
                            (Verdict::Accepted, None)
                        } else {
                            (Verdict::WrongAnswer, Some(mismatch(text, &case.expected)))
                        }
                    }
                    Checker::LeetCodeStructural => {
                        let ok = if *literal {
                            literal::leetcode_outputs_match(text, &case.expected)
                        } else {
                            text.trim() == case.expected.trim()
                        };
                        if ok {
                            (Verdict::Accepted, None)
                        } else {
                            (Verdict::WrongAnswer, Some(mismatch(text, &case.expected)))
                        }
                    }
                    Checker::PythonEvaluator { .. } | Checker::PythonCheck { .. } => {
                        to_evaluate.push(k);
                        (Verdict::WrongAnswer, Some("not judged".to_string()))
                    }
                },
            };
            cases.push(CaseResult {
                verdict,
                time_ms,
                detail,
            });
        }
        if !to_evaluate.is_empty() {
            let triples: Vec<(&str, &str, &str)> = to_evaluate
                .iter()
                .map(|&k| {
                    let text = match &outputs[k] {
                        Some((RawOutput::Ok { text, .. }, _)) => text.as_str(),
                        _ => "",
                    };
                    (
                        suite.cases[k].input.as_str(),
                        suite.cases[k].expected.as_str(),
                        text,
                    )
                })
                .collect();
            let verdicts = self.run_evaluator(problem, &triples, cpu)?;
            for ((&k, (ok, err)), (_, expected, actual)) in
                to_evaluate.iter().zip(verdicts).zip(&triples)
            {
                cases[k] = CaseResult {
                    verdict: if ok {
                        Verdict::Accepted
                    } else {
                        Verdict::WrongAnswer
                    },
                    time_ms: cases[k].time_ms,
                    detail: (!ok).then(|| match err {
                        Some(e) => format!(
                            "{}; evaluator: {}",
                            mismatch(actual, expected),
                            clip(&e, 800)
                        ),
                        None => mismatch(actual, expected),
                    }),
                };
            }
        }
        let (status, message) = if let Some((status, why)) = fatal {
            (status, Some(clip(&why, 4000)))
        } else if run_status != Status::Accepted && run_status != Status::RuntimeError {
            (run_status, result.message.clone())
        } else if run_status == Status::RuntimeError {
            let stderr = clip(&result.stderr_text(), 2000);
            let case_error = cases.iter().any(|c| c.verdict == Verdict::RuntimeError);
            (
                Status::RuntimeError,
                (!case_error).then(|| {
                    format!(
                        "the process failed ({}): {stderr}",
                        result.message.as_deref().unwrap_or("non-zero exit")
                    )
                }),
            )
        } else if cases.iter().any(|c| c.verdict == Verdict::RuntimeError) {
            (Status::RuntimeError, None)
        } else if cases.iter().any(|c| c.verdict != Verdict::Accepted) {
            (Status::WrongAnswer, None)
        } else {
            (Status::Accepted, None)
        };
        Ok(Evaluation {
            status,
            cases,
            measurement,
            compile_ms,
            message,
        })
    }

    /// Measures a solution with the protocol: runs it up to `repeats` times (stopping at the
    /// first failure), and takes the medians of wall time, peak RSS and memory integral.
    pub fn measure(
        &self,
        problem: &Problem,
        suite: &Suite,
        language: Language,
        code: &str,
        cpu: Option<usize>,
    ) -> Result<Measured, HarnessError> {
        let (limits, repeats) = (&self.config.limits, self.config.repeats);
        self.measure_within(problem, suite, language, code, limits, repeats, cpu)
    }

    /// [`Harness::measure`] under `limits` with `repeats` runs instead of the configured ones (a
    /// service applying each request's own limits and repeats).
    #[allow(clippy::too_many_arguments)]
    pub fn measure_within(
        &self,
        problem: &Problem,
        suite: &Suite,
        language: Language,
        code: &str,
        limits: &Limits,
        repeats: usize,
        cpu: Option<usize>,
    ) -> Result<Measured, HarnessError> {
        let repeats = repeats.max(1);
        let first = self.evaluate_within(problem, suite, language, code, limits, cpu)?;
        let mut runs = vec![RunOutcome::from(&first)];
        while runs.len() < repeats && runs.iter().all(RunOutcome::passed) {
            let again = self.evaluate_within(problem, suite, language, code, limits, cpu)?;
            runs.push(RunOutcome::from(&again));
        }
        Ok(Measured::from_runs(first, &runs, repeats))
    }

    /// Runs the stress generator `source` (see [`crate::StressSource::Generator`]); returns per
    /// call the generated input or why there is none.
    pub(crate) fn generate(
        &self,
        problem: &Problem,
        source: &str,
        calls: Option<&[[u64; 4]]>,
        cpu: Option<usize>,
    ) -> Result<Vec<Result<String, String>>, HarnessError> {
        let n = calls.map_or(1, <[_]>::len);
        let header = json!({
            "source": source,
            "prelude": problem.prelude,
            "seed": self.config.stress_seed,
            "calls": calls,
            "count": 0,
        });
        let result = self.run_script(
            &self.generator,
            &header,
            &[],
            &self.config.generator_limits,
            cpu,
        )?;
        let mut out: Vec<Option<Result<String, String>>> = vec![None; n];
        for rec in records(&result.stdout) {
            if let Some(i) = index_field(&rec, n)
                && out[i].is_none()
            {
                out[i] = Some(match rec.get("st").and_then(Value::as_str) {
                    Some("ok") => Ok(str_field(&rec, "input").unwrap_or_default()),
                    _ => Err(clip(&str_field(&rec, "err").unwrap_or_default(), 2000)),
                });
            }
        }
        let missing = stopped_before("the generator", "this input", &result);
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(missing.clone())))
            .collect())
    }
}

/// `expected X, got Y` with both sides clipped.
fn mismatch(actual: &str, expected: &str) -> String {
    format!(
        "expected {:?}, got {:?}",
        clip(expected.trim(), 120),
        clip(actual.trim(), 120)
    )
}

/// Per-case driver times grouped by origin, for reports (e.g. ENAMEL's largest level).
pub fn case_times_by_origin(suite: &Suite, evaluation: &Evaluation) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (case, result) in suite.cases.iter().zip(&evaluation.cases) {
        if let Some(t) = result.time_ms {
            *out.entry(case.origin.group()).or_insert(0.0) += t;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_lengths_so_inputs_may_hold_anything() {
        let header = json!({"count": 2});
        let out = frame(&header, &[b"a\nb", b""]);
        assert_eq!(out, b"{\"count\":2}\n3\na\nb0\n");
    }

    #[test]
    fn only_json_object_lines_are_records() {
        let recs = records(b"{\"i\": 0}\nSuccess\n[1]\n{\"i\": 1, \"st\": \"ok\"}\n{broken\n");
        assert_eq!(recs.len(), 2);
        assert_eq!(index_field(&recs[1], 2), Some(1));
        assert_eq!(index_field(&recs[1], 1), None);
    }

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
