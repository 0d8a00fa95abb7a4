//! Running a solution over a problem's suite with repeats, and turning the result into the
//! Afterburner reward: the glue between the harness, the reward crate and the HTTP layer.

use afterburner_benchmarks::metrics::Objective;
use afterburner_benchmarks::{
    HarnessError, Measured, Problem, RecordedPerformance, RunSettings, Submission, Suite,
};
use afterburner_reward::{Reward, RewardConfig, RewardInput, reward};
use afterburner_sandbox::{Language, Limits, Status};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::pool::Worker;

/// A solution judged over its suite, possibly several times.
pub(crate) type Graded = Measured;

/// Runs `code` over `suite` up to `repeats` times (stopping at the first failure); the figures
/// are the medians of wall time, peak memory and memory integral ([`Harness::measure_within`]).
/// When a repeat fails after a passing first run, which run failed becomes the answer's message.
///
/// [`Harness::measure_within`]: afterburner_benchmarks::Harness::measure_within
pub(crate) fn grade(
    w: &Worker<'_>,
    problem: &Problem,
    suite: &Suite,
    language: Language,
    code: &str,
    limits: &Limits,
    repeats: usize,
) -> Result<Graded, HarnessError> {
    let settings = RunSettings {
        limits: limits.clone(),
        repeats,
        count_instructions: false,
    };
    let submission = Submission::new(problem, language, code);
    let mut graded = w
        .harness
        .measure_within(&submission, suite, &settings, w.cpu)?;
    let e = &graded.evaluation;
    let repeat_failed = !graded.passed && e.message.is_none() && e.first_failure().is_none();
    if repeat_failed {
        graded.evaluation.message = graded.detail.clone();
    }
    Ok(graded)
}

/// Counts a graded suite run in the metrics: its outcome, its compilation (compiled languages)
/// and the suite run's wall time (when it ran).
pub(crate) fn record_graded(
    metrics: &Metrics,
    language: Language,
    outcome: &Result<Graded, HarnessError>,
) {
    let Ok(g) = outcome else {
        metrics.run(Status::SandboxError.as_str());
        return;
    };
    let e = &g.evaluation;
    metrics.run(e.status.as_str());
    if language.is_compiled() && e.compile_ms > 0.0 {
        metrics.compiled(language.name(), e.compile_ms / 1000.0);
    }
    if e.status != Status::CompileError {
        metrics.ran(language.name(), e.measurement.wall_ms / 1000.0);
    }
}

/// The original solution's verdict and figures, as a prompt carried them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Baseline {
    /// Whether the original passes.
    pub passed: bool,
    /// Its run time, ms.
    #[serde(default)]
    pub time_ms: Option<f64>,
    /// Its peak memory, KiB.
    #[serde(default)]
    pub memory_kb: Option<f64>,
    /// Its memory integral, KiB*ms.
    #[serde(default)]
    pub integral: Option<f64>,
}

impl Baseline {
    /// Its figures, when it passed (a missing one is NaN: no efficiency term on that objective).
    fn performance(&self) -> Option<RecordedPerformance> {
        self.passed.then(|| {
            RecordedPerformance::new(
                self.time_ms.unwrap_or(f64::NAN),
                self.memory_kb.unwrap_or(f64::NAN),
                self.integral.unwrap_or(f64::NAN),
            )
        })
    }
}

/// The reward of a response: its format, the original's verdict (no baseline: the original
/// counts as failing, as for a prompt written from scratch) and the candidate's, and the
/// candidate's figures on the instructed objective against the original's.
pub(crate) fn score(
    well_formed: bool,
    baseline: Option<&Baseline>,
    objective: Objective,
    graded: Option<&Graded>,
    config: &RewardConfig,
) -> Reward {
    let candidate_passed = graded.is_some_and(|g| g.passed);
    reward(
        &RewardInput {
            well_formed,
            original_passed: baseline.is_some_and(|b| b.passed),
            candidate_passed,
            objective,
            baseline: baseline.and_then(Baseline::performance),
            candidate: graded.and_then(|g| g.performance),
        },
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_missing_the_instructed_figure_gives_no_efficiency_term() {
        let b = Baseline {
            passed: true,
            time_ms: None,
            memory_kb: Some(1000.0),
            integral: None,
        };
        let r = score(
            true,
            Some(&b),
            Objective::Time,
            None,
            &RewardConfig::default(),
        );
        assert_eq!(r.gain, None);
        assert_eq!(r.correctness, -1.0, "pass -> fail (no candidate run)");
    }

    #[test]
    fn no_baseline_counts_as_an_original_that_fails() {
        let r = score(
            false,
            None,
            Objective::Memory,
            None,
            &RewardConfig::default(),
        );
        assert_eq!(r.correctness, -0.5);
        assert_eq!(r.format, -1.0);
    }
}
