//! What judging a run produces: a [`Verdict`] per test, and the [`Evaluation`] of one run of a
//! solution over its suite (status, per-test results, the sandbox's measurement).

use std::collections::BTreeMap;

use afterburner_sandbox::{Measurement, Status, clip};
use serde::{Deserialize, Serialize};

use super::suite::Suite;

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

/// `expected X, got Y` with both sides clipped.
pub(super) fn mismatch(actual: &str, expected: &str) -> String {
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
