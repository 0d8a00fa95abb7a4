//! [`Harness`]: runs one submission over a suite in the sandbox (Python through the driver
//! script, in one process; other languages built once and run once per test) and judges the
//! outputs outside the solution's process.

use afterburner_sandbox::{
    Language, Limits, Program, RunRequest, RunResult, Sandbox, SandboxError, Status, clip,
};
use serde_json::{Value, json};

use super::HarnessError;
use super::literal;
use super::probe::DriftProbe;
use super::scripts::{
    COMMON_PY, DRIVER_PY, EVALUATOR_PY, GENERATOR_PY, frame, index_field, records, stopped_before,
    str_field,
};
use super::settings::HarnessConfig;
use super::suite::Suite;
use super::verdict::{CaseResult, Evaluation, Verdict, mismatch};
use crate::problem::{Checker, Entry, Problem, VENUS_PLACEHOLDER};

/// A solution to judge: the problem it solves, its language and its source.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The problem it is a solution of.
    pub problem: &'a Problem,
    /// Its language.
    pub language: Language,
    /// Its source code.
    pub code: &'a str,
}

impl<'a> Submission<'a> {
    /// `code` in `language` as a solution of `problem`.
    pub fn new(problem: &'a Problem, language: Language, code: &'a str) -> Self {
        Submission {
            problem,
            language,
            code,
        }
    }
}

/// The output of one test as the driver reported it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RawOutput {
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
pub(super) struct RawRun {
    pub result: RunResult,
    /// Per test: its output and driver-measured ns, if the driver reported it.
    pub outputs: Vec<Option<(RawOutput, u64)>>,
    /// A failure before any test ran (compile, load or prelude error).
    pub fatal: Option<(Status, String)>,
    /// Compile time, ms (native programs only).
    pub compile_ms: f64,
}

/// Runs and judges solutions of problems in a sandbox; share one across worker threads.
#[derive(Debug)]
pub struct Harness<'s> {
    pub(super) sandbox: &'s Sandbox,
    pub(super) config: HarnessConfig,
    driver: Program,
    evaluator: Program,
    generator: Program,
    pub(super) drift: Option<DriftProbe>,
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
            drift: config
                .drift_interval
                .map(|every| DriftProbe::new(every, config.cache_dir.clone())),
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
        count_instructions: bool,
    ) -> Result<RunResult, HarnessError> {
        let request = RunRequest {
            stdin: frame(header, frames),
            limits: limits.clone(),
            cpu,
            keep_memory_trace: false,
            count_instructions,
        };
        Ok(self.sandbox.run(program, &request)?)
    }

    /// Runs `code` on `inputs` with the driver (Python) and collects the raw outputs; under
    /// valgrind counting instructions when `count_instructions`.
    pub(super) fn raw_run(
        &self,
        problem: &Problem,
        code: &str,
        inputs: &[&str],
        limits: &Limits,
        cpu: Option<usize>,
        count_instructions: bool,
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
        let result = self.run_script(
            &self.driver,
            &header,
            &frames,
            limits,
            cpu,
            count_instructions,
        )?;
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
    pub(super) fn native_run(
        &self,
        language: Language,
        code: &str,
        inputs: &[&str],
        limits: &Limits,
        cpu: Option<usize>,
        count_instructions: bool,
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
                    count_instructions,
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
    pub(super) fn run_evaluator(
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
            false,
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

    /// Runs a submission once over `suite` under the configured limits and judges every test;
    /// an empty suite is an error (there would be nothing to fail).
    pub fn evaluate(
        &self,
        submission: &Submission<'_>,
        suite: &Suite,
        cpu: Option<usize>,
    ) -> Result<Evaluation, HarnessError> {
        self.evaluate_within(submission, suite, &self.config.limits, cpu)
    }

    /// [`Harness::evaluate`] under `limits` instead of the configured ones (a service applying
    /// each request's own time and memory limits).
    pub fn evaluate_within(
        &self,
        submission: &Submission<'_>,
        suite: &Suite,
        limits: &Limits,
        cpu: Option<usize>,
    ) -> Result<Evaluation, HarnessError> {
        self.evaluate_run(submission, suite, limits, cpu, false)
    }

    /// [`Harness::evaluate_within`], under valgrind counting instructions when
    /// `count_instructions` (the evaluation's measurement then holds the count; its time and
    /// memory are valgrind's).
    pub(super) fn evaluate_run(
        &self,
        submission: &Submission<'_>,
        suite: &Suite,
        limits: &Limits,
        cpu: Option<usize>,
        count_instructions: bool,
    ) -> Result<Evaluation, HarnessError> {
        let Submission {
            problem,
            language,
            code,
        } = *submission;
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
            self.raw_run(problem, code, &inputs, limits, cpu, count_instructions)?
        } else if problem.entry == Entry::StdinStdout {
            self.native_run(language, code, &inputs, limits, cpu, count_instructions)?
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

    /// Runs the stress generator `source` (see [`crate::StressSource::Generator`]); returns per
    /// call the generated input or why there is none.
    pub(super) fn generate(
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
            false,
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
