//! The reward of a model response, computed in-process: the response parsed as the reward
//! parses it, run on the problem's suite in the sandbox (the loop's harness and protocol), and
//! scored with SPEC §7's reward against the original's figures carried by the label. It is what
//! `/v1/reward` answers, without HTTP, for trainers running in this process (`afterburner train
//! grpo`).

use std::collections::HashMap;

use afterburner_benchmarks::metrics::Objective;
use afterburner_benchmarks::{Harness, Problem, RecordedPerformance, Submission, Suite};
use afterburner_reward::{Reward, RewardConfig, RewardInput, parse_response, reward};
use afterburner_sandbox::Language;
use serde::Deserialize;

use crate::iof::CorePool;

/// The original solution's verdict and figures, as a label carries them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct LabelBaseline {
    /// Whether it passed.
    pub passed: bool,
    /// Its run time, ms.
    #[serde(default)]
    pub time_ms: Option<f64>,
    /// Its peak memory, KB.
    #[serde(default)]
    pub memory_kb: Option<f64>,
    /// Its memory integral, KB*ms.
    #[serde(default)]
    pub integral: Option<f64>,
}

/// What a response is judged against: a `/v1/reward` item without its response, as
/// `afterburner data grpo` writes it (`ground_truth`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RewardLabel {
    /// The problem.
    pub problem_id: String,
    /// The language asked for (default python).
    #[serde(default)]
    pub language: Option<String>,
    /// `time`, `memory` or `integral`.
    pub instruction: String,
    /// The original shown in the prompt, if any.
    #[serde(default)]
    pub baseline: Option<LabelBaseline>,
}

impl RewardLabel {
    /// Parses a label (JSON text); the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a reward label: {e}"))
    }
}

/// Judges responses with the sandbox: the suites of the problems it knows, measured on its
/// cores, rewarded with its configuration.
pub struct SandboxReward<'h> {
    harness: &'h Harness<'h>,
    problems: HashMap<String, (&'h Problem, Suite)>,
    cores: CorePool,
    threads: usize,
    config: RewardConfig,
}

impl<'h> SandboxReward<'h> {
    /// A judge over `harness` with each problem and its prepared suite, measuring on `cpus`.
    pub fn new(
        harness: &'h Harness<'h>,
        problems: HashMap<String, (&'h Problem, Suite)>,
        cpus: Vec<Option<usize>>,
        config: RewardConfig,
    ) -> Self {
        let threads = cpus.len().max(1);
        SandboxReward {
            harness,
            problems,
            cores: CorePool::new(cpus),
            threads,
            config,
        }
    }

    /// The reward of `response` under `label`. An error (unknown problem, bad label, a harness
    /// that could not run) means the response could not be judged: never a made-up score.
    pub fn reward(&self, label: &RewardLabel, response: &str) -> Result<Reward, String> {
        let (problem, suite) = self.problems.get(&label.problem_id).ok_or_else(|| {
            format!(
                "problem `{}` is not among the {} loaded",
                label.problem_id,
                self.problems.len()
            )
        })?;
        let language: Language = match &label.language {
            Some(l) => l.parse().map_err(|e| format!("label language: {e}"))?,
            None => Language::Python,
        };
        let objective: Objective = label
            .instruction
            .parse()
            .map_err(|e| format!("label instruction: {e}"))?;
        let parsed = parse_response(response, language);
        let candidate = match &parsed.code {
            Some(code) => {
                let lease = self.cores.acquire();
                let measured = self
                    .harness
                    .measure(
                        &Submission::new(problem, language, code),
                        suite,
                        lease.cpu(),
                    )
                    .map_err(|e| e.to_string())?;
                Some(measured)
            }
            None => None,
        };
        let baseline = label.baseline;
        Ok(reward(
            &RewardInput {
                well_formed: parsed.well_formed,
                original_passed: baseline.is_some_and(|b| b.passed),
                candidate_passed: candidate.as_ref().is_some_and(|m| m.passed),
                objective,
                baseline: baseline.filter(|b| b.passed).map(|b| {
                    RecordedPerformance::new(
                        b.time_ms.unwrap_or(f64::NAN),
                        b.memory_kb.unwrap_or(f64::NAN),
                        b.integral.unwrap_or(f64::NAN),
                    )
                }),
                candidate: candidate.and_then(|m| m.performance),
            },
            &self.config,
        ))
    }

    /// Rewards of many responses, judged in parallel on the cores (one thread per core);
    /// `None` where one could not be judged, with the reason in the second list.
    pub fn rewards(&self, items: &[(&RewardLabel, &str)]) -> (Vec<Option<Reward>>, Vec<String>) {
        let threads = self.threads;
        let mut out: Vec<Option<Reward>> = vec![None; items.len()];
        let mut problems = Vec::new();
        std::thread::scope(|s| {
            let chunks: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        (t..items.len())
                            .step_by(threads)
                            .map(|i| (i, self.reward(items[i].0, items[i].1)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for chunk in chunks {
                match chunk.join() {
                    Ok(results) => {
                        for (i, r) in results {
                            match r {
                                Ok(r) => out[i] = Some(r),
                                Err(e) => problems.push(format!("completion {i}: {e}")),
                            }
                        }
                    }
                    Err(_) => problems.push("a reward thread panicked".into()),
                }
            }
        });
        (out, problems)
    }
}
