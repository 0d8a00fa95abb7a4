//! Scoring a set of candidate solutions (an eval's solutions file) against calibrated
//! references: each candidate measured with the references' protocol
//! ([`Workbench::measure_candidates`]), then one [`EvalRow`] per candidate (verdicts,
//! figures, percentiles, buckets) and the per-problem runs the metrics summarise
//! ([`Scores::of`]).

use std::collections::BTreeMap;

use afterburner_sandbox::{Dispersion, Language, Measurement, RecordedPerformance, Status};
use serde::{Serialize, Serializer};

use crate::harness::{Measured, Observer, Subject, Submission, Verdict};
use crate::metrics::{
    Bucket, Objective, ProblemRuns, RunScore, instructions_percentile, score_run,
};
use crate::workbench::{Calibrated, Workbench};

/// A candidate solution of a dataset problem, as a solutions file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its line in the solutions file (1 first).
    pub line: usize,
    /// The problem it solves.
    pub problem_id: String,
    /// Its source.
    pub code: String,
    /// Its language.
    pub language: Language,
}

/// What became of a candidate: measured, or why the harness could not measure it.
#[derive(Debug)]
pub struct CandidateOutcome {
    /// Its measurement, when the harness could run it.
    pub measured: Option<Measured>,
    /// Why it could not be run at all.
    pub error: Option<String>,
}

impl CandidateOutcome {
    /// An outcome without a measurement.
    fn failed(error: String) -> Self {
        CandidateOutcome {
            measured: None,
            error: Some(error),
        }
    }

    /// Its figures, when it passed.
    pub fn performance(&self) -> Option<RecordedPerformance> {
        self.measured
            .as_ref()
            .filter(|m| m.passed)
            .and_then(|m| m.performance)
    }
}

impl Workbench<'_> {
    /// Measures `candidates` with the references' protocol, their runs interleaved in rounds
    /// (stage `solutions` for the observer). One entry per candidate: `None` when it was
    /// stopped before it completed.
    pub fn measure_candidates(
        &self,
        calibrated: &[Calibrated<'_>],
        candidates: &[Candidate],
        observer: &mut dyn Observer,
    ) -> Vec<Option<CandidateOutcome>> {
        let by_id: BTreeMap<&str, &Calibrated> = calibrated
            .iter()
            .map(|c| (c.problem.id.as_str(), c))
            .collect();
        let mut outcomes: Vec<Option<CandidateOutcome>> =
            (0..candidates.len()).map(|_| None).collect();
        let mut subjects: Vec<Subject> = Vec::new();
        let mut subject_of: Vec<usize> = Vec::new();
        for (k, s) in candidates.iter().enumerate() {
            let error = match by_id.get(s.problem_id.as_str()) {
                None => "problem not evaluated".to_string(),
                Some(c) => match &c.suite {
                    Some(suite) => {
                        subjects.push(Subject {
                            submission: Submission::new(c.problem, s.language, &s.code),
                            suite,
                            done: Vec::new(),
                        });
                        subject_of.push(k);
                        continue;
                    }
                    None => format!(
                        "the problem's tests could not be prepared: {}",
                        c.error.as_deref().unwrap_or("unknown error")
                    ),
                },
            };
            outcomes[k] = Some(CandidateOutcome::failed(error));
        }
        let settings = self.harness().config().run_settings();
        let (repeats, needed) = (settings.repeats, settings.runs_needed());
        let measured = self.measure(&subjects, "solutions", observer);
        for (runs, k) in measured.into_iter().zip(subject_of) {
            if !runs.complete(needed) {
                continue;
            }
            outcomes[k] = Some(match runs.into_measured(repeats) {
                Ok(measured) => CandidateOutcome {
                    measured: Some(measured),
                    error: None,
                },
                Err(e) => CandidateOutcome::failed(e.to_string()),
            });
        }
        outcomes
    }
}

/// How a candidate ended, as an eval row says it: a run status, or `harness_error` when the
/// solution could not be run at all (e.g. a language its problem's entry style does not
/// support; it counts as failed and `detail` says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    /// The status of its runs (`wrong_answer` when a repeat failed after a passing first run
    /// whose own status was `accepted`).
    Run(Status),
    /// The harness could not run it.
    HarnessError,
}

impl RowStatus {
    /// The snake_case name written in the row.
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Run(status) => status.as_str(),
            RowStatus::HarnessError => "harness_error",
        }
    }
}

impl Serialize for RowStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A value per objective (percentiles, buckets) in an eval row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerObjective<T> {
    /// On the memory-time integral.
    pub integral: T,
    /// On peak memory.
    pub memory: T,
    /// On run time.
    pub time: T,
}

impl<T> PerObjective<T> {
    /// The values of `f` on each objective.
    fn of(f: impl Fn(Objective) -> T) -> Self {
        PerObjective {
            integral: f(Objective::Integral),
            memory: f(Objective::Memory),
            time: f(Objective::Time),
        }
    }
}

/// One line of `eval --out`: a candidate's verdicts, figures and standing against the
/// references. A stable contract: fields are written in this (alphabetical) order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    /// B/M/W/F per objective, when it could be scored.
    pub buckets: Option<PerObjective<Bucket>>,
    /// Coefficients of variation over its runs, when it passed.
    pub cv: Option<Dispersion>,
    /// Why it failed, or could not be run.
    pub detail: Option<String>,
    /// The sandbox's measurement of its first run.
    pub first_run: Option<Measurement>,
    /// Instructions executed (counted under valgrind), when counting was asked for and it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<f64>,
    /// Share of the counted references executing more instructions (ties half): its
    /// Beyond-Instr percentile, when both were counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions_percentile: Option<f64>,
    /// Median memory integral, KiB*ms, when it passed.
    pub integral_kb_ms: Option<f64>,
    /// Its language.
    pub language: Language,
    /// Its line in the solutions file.
    pub line: usize,
    /// Median peak memory, KiB, when it passed.
    pub memory_kb: Option<f64>,
    /// Whether it passed every test in every run.
    pub passed: bool,
    /// Share of references beaten or tied per objective, when it passed and was scored.
    pub percentiles: Option<PerObjective<f64>>,
    /// The problem it solves.
    pub problem_id: String,
    /// Passing references it was compared with.
    pub references: usize,
    /// Runs made (1 when it failed or could not run).
    pub runs: usize,
    /// How it ended.
    pub status: RowStatus,
    /// Tests passed in its first run.
    pub tests_passed: Option<usize>,
    /// Tests in its suite.
    pub tests_total: Option<usize>,
    /// Median wall time, ms, when it passed.
    pub time_ms: Option<f64>,
    /// Per-test verdicts of its first run.
    pub verdicts: Vec<Verdict>,
}

impl EvalRow {
    /// The row of `candidate`, scored against the passing references' figures `references`.
    pub fn new(
        candidate: &Candidate,
        outcome: &CandidateOutcome,
        references: &[RecordedPerformance],
    ) -> Self {
        let perf = outcome.performance();
        let score = score_run(perf.as_ref(), references);
        let m = outcome.measured.as_ref();
        let status = match m {
            Some(m) if !m.passed && m.evaluation.status == Status::Accepted => {
                RowStatus::Run(Status::WrongAnswer)
            }
            Some(m) => RowStatus::Run(m.evaluation.status),
            None => RowStatus::HarnessError,
        };
        let summary = m.and_then(|m| m.summary.as_ref());
        EvalRow {
            buckets: score.map(|s: RunScore| PerObjective::of(|o| s.bucket(o))),
            cv: summary.map(|s| s.cv.clone()),
            detail: outcome
                .error
                .clone()
                .or_else(|| m.and_then(|m| m.detail.clone())),
            first_run: m.map(|m| m.evaluation.measurement.clone()),
            instructions: perf.and_then(|p| p.instructions),
            instructions_percentile: perf
                .and_then(|p| p.instructions)
                .and_then(|c| instructions_percentile(c, references)),
            integral_kb_ms: perf.map(|p| p.integral),
            language: candidate.language,
            line: candidate.line,
            memory_kb: perf.map(|p| p.memory_kb),
            passed: perf.is_some(),
            percentiles: score
                .filter(|s| s.passed)
                .map(|s| PerObjective::of(|o| s.pct(o))),
            problem_id: candidate.problem_id.clone(),
            references: references.len(),
            runs: summary.map_or(1, |s| s.runs),
            status,
            tests_passed: m.map(|m| m.evaluation.accepted_cases()),
            tests_total: m.map(|m| m.evaluation.cases.len()),
            time_ms: perf.map(|p| p.time_ms),
            verdicts: m
                .map(|m| m.evaluation.cases.iter().map(|c| c.verdict).collect())
                .unwrap_or_default(),
        }
    }
}

/// The rows of the candidates that completed and what the metrics summarise.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// One row per completed candidate, in the candidates' order.
    pub rows: Vec<EvalRow>,
    /// Per calibrated problem, its candidates' runs (a problem without one counts one failed
    /// run) and its passing references.
    pub problem_runs: Vec<ProblemRuns>,
    /// Calibrated problems no candidate solves.
    pub missing: Vec<String>,
}

impl Scores {
    /// Scores `candidates` (with their `outcomes`, `None` for those not completed) against the
    /// references of `calibrated`.
    pub fn of(
        calibrated: &[Calibrated<'_>],
        candidates: &[Candidate],
        outcomes: &[Option<CandidateOutcome>],
    ) -> Scores {
        let by_id: BTreeMap<&str, &Calibrated> = calibrated
            .iter()
            .map(|c| (c.problem.id.as_str(), c))
            .collect();
        let mut runs: BTreeMap<&str, Vec<Option<RecordedPerformance>>> = BTreeMap::new();
        let mut rows = Vec::new();
        for (s, outcome) in candidates.iter().zip(outcomes) {
            let Some(outcome) = outcome else { continue };
            runs.entry(s.problem_id.as_str())
                .or_default()
                .push(outcome.performance());
            let refs = by_id
                .get(s.problem_id.as_str())
                .map(|c| c.distribution())
                .unwrap_or_default();
            rows.push(EvalRow::new(s, outcome, &refs));
        }
        let missing = calibrated
            .iter()
            .map(|c| c.problem.id.clone())
            .filter(|id| !runs.contains_key(id.as_str()))
            .collect();
        let problem_runs = calibrated
            .iter()
            .map(|c| ProblemRuns {
                problem_id: c.problem.id.clone(),
                runs: runs
                    .get(c.problem.id.as_str())
                    .cloned()
                    .unwrap_or_else(|| vec![None]),
                references: c.distribution(),
            })
            .collect();
        Scores {
            rows,
            problem_runs,
            missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_the_harness_could_not_run_is_a_harness_error_row_counted_as_failed() {
        let candidate = Candidate {
            line: 3,
            problem_id: "p".into(),
            code: "print(1)".into(),
            language: Language::Rust,
        };
        let outcome = CandidateOutcome::failed("only Python solutions can be called".into());
        let row = EvalRow::new(
            &candidate,
            &outcome,
            &[RecordedPerformance::new(1.0, 1.0, 1.0)],
        );
        assert_eq!(row.status, RowStatus::HarnessError);
        assert!(!row.passed);
        assert_eq!(row.buckets.map(|b| b.time), Some(Bucket::Failed));
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["status"], "harness_error");
        assert_eq!(json["buckets"]["integral"], "F");
        assert_eq!(json["percentiles"], serde_json::Value::Null);
    }
}
