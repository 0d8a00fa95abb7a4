//! Which prompts and completions a set of measured problems yields: the examples of SFT, DPO
//! and GRPO data, before any trainer's format.
//!
//! Every choice compares measured figures under the tie rule of `RecordedPerformance::compare`
//! (the difference must exceed two standard deviations of the two solutions' recorded run-to-run
//! noise, and never less than the objective's drift floor: 3% for time and the integral, 0.5%
//! for memory), so no example claims that one solution is more efficient than another when the
//! measurement cannot tell them apart.

use std::collections::{BTreeSet, HashSet};

use afterburner_benchmarks::{Calibrated, Problem, RecordedPerformance, ReferenceSolution};
use afterburner_optimize::Message;
use afterburner_optimize::prompt::{Instruction, OriginalView, PromptContext, Templates};
use afterburner_sandbox::{Comparison, Language, Status};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::DataError;

/// What the data trains: supervised fine-tuning, preference pairs, or prompts for GRPO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Prompt -> the most efficient passing solution.
    Sft,
    /// Prompt -> chosen (more efficient) and rejected (less efficient or failing).
    Dpo,
    /// Improvement prompts with the original's measured performance, for a rule reward.
    Grpo,
}

impl Kind {
    /// `sft`, `dpo` or `grpo`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sft => "sft",
            Kind::Dpo => "dpo",
            Kind::Grpo => "grpo",
        }
    }
}

/// A problem's split: by a stable hash of its id, so a problem is never in two splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training rows.
    Train,
    /// Held-out rows (problems whose hash falls below `--test-share`).
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }

    /// The split of `problem_id` when a share `test_share` (0..=1) of problems is held out:
    /// the first 8 bytes of SHA-256 of the id, as a fraction of 2^64, below the share.
    pub fn of(problem_id: &str, test_share: f64) -> Split {
        let digest = Sha256::digest(problem_id.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        let position = u64::from_be_bytes(head) as f64 / 2f64.powi(64);
        if position < test_share {
            Split::Test
        } else {
            Split::Train
        }
    }
}

/// How examples are chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The efficiency instructions to build prompts for.
    pub instructions: Vec<Instruction>,
    /// At most this many examples (DPO: pairs) per problem, shared among the instructions.
    pub per_problem: usize,
    /// The share of problems held out as the test split (by hash of the id).
    pub test_share: f64,
    /// Problems never emitted (held out elsewhere, e.g. an evaluation set).
    pub exclude: BTreeSet<String>,
}

/// A reference solution with its measurement on this machine.
#[derive(Debug, Clone)]
pub struct MeasuredSolution<'p> {
    /// The solution.
    pub reference: &'p ReferenceSolution,
    /// Whether it passed every test in every run.
    pub passed: bool,
    /// Its verdict.
    pub status: Status,
    /// Why it failed, when it did.
    pub detail: Option<String>,
    /// Its median figures (with their noise), when it passed.
    pub performance: Option<RecordedPerformance>,
}

impl MeasuredSolution<'_> {
    fn value(&self, objective: afterburner_sandbox::Objective) -> f64 {
        self.performance
            .as_ref()
            .map_or(f64::INFINITY, |p| p.value(objective))
    }

    fn is_better(&self, other: &Self, instruction: Instruction) -> bool {
        match (&self.performance, &other.performance) {
            (Some(a), Some(b)) if self.passed && other.passed => {
                a.compare(b, instruction.objective()) == Comparison::Better
            }
            _ => self.passed && !other.passed,
        }
    }

    fn view(&self) -> OriginalView {
        let p = self.performance.as_ref().filter(|_| self.passed);
        OriginalView::new(
            &self.reference.code,
            self.reference.language,
            self.passed,
            &self.status.to_string(),
            self.detail.as_deref(),
            p.map(|p| p.time_ms),
            p.map(|p| p.memory_kb),
            p.map(|p| p.integral),
        )
    }
}

/// A problem with its references' measurements.
#[derive(Debug, Clone)]
pub struct MeasuredProblem<'p> {
    /// The problem.
    pub problem: &'p Problem,
    /// Its measured references, in calibration order (verified first).
    pub solutions: Vec<MeasuredSolution<'p>>,
    /// Why it could not be measured, when its suite could not be prepared.
    pub error: Option<String>,
}

impl<'p> MeasuredProblem<'p> {
    /// The measured references of a calibrated problem (records matched to references by id).
    pub fn from_calibrated(calibrated: &Calibrated<'p>) -> Self {
        let problem = calibrated.problem;
        let solutions = calibrated
            .records
            .iter()
            .filter_map(|record| {
                let reference = problem
                    .references
                    .iter()
                    .find(|r| r.id == record.key.solution_id)?;
                Some(MeasuredSolution {
                    reference,
                    passed: record.passed,
                    status: record.status,
                    detail: record.detail.clone(),
                    performance: record.performance,
                })
            })
            .collect();
        MeasuredProblem {
            problem,
            solutions,
            error: calibrated.error.clone(),
        }
    }
}

/// The original solution an improvement prompt shows, as the reward's label carries it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// Whether it passed.
    pub passed: bool,
    /// Its median run time, ms (when it passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<f64>,
    /// Its median peak memory, KB (when it passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_kb: Option<f64>,
    /// Its median memory integral, KB*ms (when it passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integral: Option<f64>,
}

/// What an example teaches, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// SFT: the completion (in the answer format) and the solution it shows.
    Completion {
        /// The assistant's answer.
        text: String,
        /// The reference solution it shows.
        solution_id: String,
    },
    /// DPO: a preferred and a dispreferred completion.
    Preference {
        /// The more efficient (or the passing) solution's answer.
        chosen: String,
        /// The less efficient (or failing) solution's answer.
        rejected: String,
        /// The chosen solution's id.
        chosen_id: String,
        /// The rejected solution's id.
        rejected_id: String,
    },
    /// GRPO: what the reward needs to judge a completion.
    Reward {
        /// The original solution shown in the prompt (none for a generation prompt).
        baseline: Option<Baseline>,
        /// The original's id.
        original_id: Option<String>,
    },
}

/// One example: a prompt (system and user messages) and what it teaches.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The problem it comes from.
    pub problem_id: String,
    /// Its split (the problem's).
    pub split: Split,
    /// The efficiency instruction of the prompt.
    pub instruction: Instruction,
    /// The language asked for.
    pub language: Language,
    /// `generate` (no original) or `improve` (an original solution and its performance).
    pub mode: &'static str,
    /// The prompt: the loop's system and user messages.
    pub prompt: Vec<Message>,
    /// What it teaches.
    pub target: Target,
}

impl Example {
    /// The reward's label (`/v1/reward` item fields but `response`), as compact JSON: the
    /// ground truth of GRPO rows.
    pub fn label(&self) -> String {
        #[derive(Serialize)]
        struct Label<'a> {
            problem_id: &'a str,
            language: &'a str,
            instruction: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            baseline: Option<&'a Baseline>,
        }
        let baseline = match &self.target {
            Target::Reward { baseline, .. } => baseline.as_ref(),
            _ => None,
        };
        let label = Label {
            problem_id: &self.problem_id,
            language: self.language.name(),
            instruction: self.instruction.name(),
            baseline,
        };
        serde_json::to_string(&label).unwrap_or_else(|e| {
            // A struct of strings, an optional struct of numbers: serialisation cannot fail.
            unreachable!("a reward label does not serialise: {e}")
        })
    }
}

/// A problem that yielded no example, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The problem.
    pub problem_id: String,
    /// Why.
    pub reason: String,
}

/// The examples of a set of problems, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    /// The examples, problem by problem in the order given.
    pub examples: Vec<Example>,
    /// Problems that yielded nothing, with the reason.
    pub skipped: Vec<Skipped>,
    /// Problems left out by `--exclude`.
    pub excluded: usize,
    /// References dropped as duplicates of an earlier one (same code once normalised).
    pub duplicate_solutions: usize,
}

/// Code compared for duplicates: line endings unified, trailing spaces and blank lines dropped.
pub fn normalised_code(code: &str) -> String {
    code.replace("\r\n", "\n")
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An answer in the format the prompts ask for and the reward parses: a short reasoning in
/// `<thinking>` and the code in a fenced block inside `<solution>`.
pub fn answer(thinking: &str, code: &str, language: Language) -> String {
    format!(
        "<thinking>{thinking}</thinking>\n<solution>\n{}\n</solution>",
        afterburner_optimize::prompt::fenced(code, language)
    )
}

fn generate_thinking(instruction: Instruction) -> String {
    format!(
        "The solution must pass every test and be as {} as possible.",
        instruction.text()
    )
}

fn improve_thinking(original: &MeasuredSolution, instruction: Instruction) -> String {
    if original.passed {
        format!(
            "The original solution passes; a different approach makes it more {}.",
            instruction.text()
        )
    } else {
        format!(
            "The original solution does not pass ({}); it needs a correct approach that is also {}.",
            original.status,
            instruction.text()
        )
    }
}

/// How many of `per_problem` examples go to each of `n` instructions, starting the
/// remainder at `offset` so that small quotas rotate over problems.
fn quotas(per_problem: usize, n: usize, offset: usize) -> Vec<usize> {
    (0..n)
        .map(|i| per_problem / n + usize::from((i + n - offset % n) % n < per_problem % n))
        .collect()
}

/// Builds the examples of `kind` for `problems`.
pub fn select(
    problems: &[MeasuredProblem],
    kind: Kind,
    selection: &Selection,
    templates: &Templates,
) -> Result<Examples, DataError> {
    if selection.instructions.is_empty() {
        return Err(DataError::Options(
            "no instruction to build prompts for".into(),
        ));
    }
    if selection.per_problem == 0 {
        return Err(DataError::Options(
            "--per-problem must be at least 1".into(),
        ));
    }
    if !(0.0..=1.0).contains(&selection.test_share) {
        return Err(DataError::Options(format!(
            "--test-share must be in [0, 1], got {}",
            selection.test_share
        )));
    }
    let mut out = Examples::default();
    for (index, measured) in problems.iter().enumerate() {
        let problem = measured.problem;
        if selection.exclude.contains(&problem.id) {
            out.excluded += 1;
            continue;
        }
        if let Some(e) = &measured.error {
            out.skipped.push(Skipped {
                problem_id: problem.id.clone(),
                reason: format!("its suite could not be prepared: {e}"),
            });
            continue;
        }
        let mut seen = HashSet::new();
        let mut unique: Vec<&MeasuredSolution> = Vec::new();
        for s in &measured.solutions {
            if seen.insert((s.reference.language, normalised_code(&s.reference.code))) {
                unique.push(s);
            } else {
                out.duplicate_solutions += 1;
            }
        }
        let split = Split::of(&problem.id, selection.test_share);
        let languages: BTreeSet<Language> = unique.iter().map(|s| s.reference.language).collect();
        let before = out.examples.len();
        let quota = quotas(selection.per_problem, selection.instructions.len(), index);
        for language in languages {
            let solutions: Vec<&MeasuredSolution> = unique
                .iter()
                .copied()
                .filter(|s| s.reference.language == language)
                .collect();
            for (&instruction, &q) in selection.instructions.iter().zip(&quota) {
                if q == 0 {
                    continue;
                }
                let ctx = Context {
                    problem,
                    split,
                    language,
                    instruction,
                    templates,
                };
                let examples = match kind {
                    Kind::Sft => sft(&ctx, &solutions, q)?,
                    Kind::Dpo => dpo(&ctx, &solutions, q)?,
                    Kind::Grpo => grpo(&ctx, &solutions, q)?,
                };
                out.examples.extend(examples);
            }
        }
        if out.examples.len() == before {
            let passing = unique.iter().filter(|s| s.passed).count();
            let reason = if unique.is_empty() {
                "no reference solution was measured".to_string()
            } else if passing == 0 {
                format!("none of its {} references passes", unique.len())
            } else {
                match kind {
                    Kind::Sft | Kind::Grpo => format!(
                        "its {passing} passing references give no example under the selection"
                    ),
                    Kind::Dpo => format!(
                        "no two of its {} references differ by more than their measured noise \
                         on the instructions asked for, and none fails",
                        unique.len()
                    ),
                }
            };
            out.skipped.push(Skipped {
                problem_id: problem.id.clone(),
                reason,
            });
        }
    }
    Ok(out)
}

struct Context<'a> {
    problem: &'a Problem,
    split: Split,
    language: Language,
    instruction: Instruction,
    templates: &'a Templates,
}

impl Context<'_> {
    fn example(
        &self,
        original: Option<&MeasuredSolution>,
        target: Target,
    ) -> Result<Example, DataError> {
        let ctx = PromptContext::new(
            self.problem,
            self.language,
            self.instruction,
            original.map(MeasuredSolution::view),
        );
        let prompt = self
            .templates
            .messages(&ctx)
            .map_err(|e| DataError::Prompt(format!("problem `{}`: {e}", self.problem.id)))?;
        Ok(Example {
            problem_id: self.problem.id.clone(),
            split: self.split,
            instruction: self.instruction,
            language: self.language,
            mode: ctx.mode,
            prompt,
            target,
        })
    }

    /// The passing solutions, most efficient first on the instruction's objective (stable).
    fn ranked<'s>(&self, solutions: &[&'s MeasuredSolution<'s>]) -> Vec<&'s MeasuredSolution<'s>> {
        let objective = self.instruction.objective();
        let mut passing: Vec<&MeasuredSolution> = solutions
            .iter()
            .copied()
            .filter(|s| s.passed && s.performance.is_some())
            .collect();
        passing.sort_by(|a, b| a.value(objective).total_cmp(&b.value(objective)));
        passing
    }
}

/// SFT: the generation prompt -> the most efficient passing solution; then improvement
/// prompts whose original is clearly less efficient (slowest first) or failing -> that same
/// most efficient solution.
fn sft(
    ctx: &Context,
    solutions: &[&MeasuredSolution],
    quota: usize,
) -> Result<Vec<Example>, DataError> {
    let ranked = ctx.ranked(solutions);
    let Some(best) = ranked.first().copied() else {
        return Ok(Vec::new());
    };
    let completion = |thinking: String| Target::Completion {
        text: answer(&thinking, &best.reference.code, ctx.language),
        solution_id: best.reference.id.clone(),
    };
    let mut out = vec![ctx.example(None, completion(generate_thinking(ctx.instruction)))?];
    let originals = ranked
        .iter()
        .rev()
        .copied()
        .filter(|s| best.is_better(s, ctx.instruction))
        .chain(solutions.iter().copied().filter(|s| !s.passed));
    for original in originals.take(quota - 1) {
        out.push(ctx.example(
            Some(original),
            completion(improve_thinking(original, ctx.instruction)),
        )?);
    }
    Ok(out)
}

/// DPO on the generation prompt: pairs of passing solutions from the two ends of the ranking
/// (best with worst, second with second worst...) where the first is better beyond the noise,
/// alternating with pairs of a passing solution (chosen) and a failing one (rejected).
fn dpo(
    ctx: &Context,
    solutions: &[&MeasuredSolution],
    quota: usize,
) -> Result<Vec<Example>, DataError> {
    let ranked = ctx.ranked(solutions);
    if ranked.is_empty() {
        return Ok(Vec::new());
    }
    let n = ranked.len();
    let efficiency_pairs: Vec<(&MeasuredSolution, &MeasuredSolution)> = (0..n / 2)
        .map(|j| (ranked[j], ranked[n - 1 - j]))
        .filter(|(a, b)| a.is_better(b, ctx.instruction))
        .collect();
    let failing: Vec<&MeasuredSolution> = solutions.iter().copied().filter(|s| !s.passed).collect();
    let failure_pairs: Vec<(&MeasuredSolution, &MeasuredSolution)> = failing
        .iter()
        .enumerate()
        .map(|(j, f)| (ranked[j % n], *f))
        .collect();
    let mut pairs = Vec::new();
    for j in 0..efficiency_pairs.len().max(failure_pairs.len()) {
        pairs.extend(efficiency_pairs.get(j).copied());
        pairs.extend(failure_pairs.get(j).copied());
    }
    let thinking = generate_thinking(ctx.instruction);
    pairs
        .into_iter()
        .take(quota)
        .map(|(chosen, rejected)| {
            ctx.example(
                None,
                Target::Preference {
                    chosen: answer(&thinking, &chosen.reference.code, ctx.language),
                    rejected: answer(&thinking, &rejected.reference.code, ctx.language),
                    chosen_id: chosen.reference.id.clone(),
                    rejected_id: rejected.reference.id.clone(),
                },
            )
        })
        .collect()
}

/// GRPO: improvement prompts whose originals are spread evenly over the ranking of passing
/// solutions (least efficient first), then failing ones, each with its measured performance.
fn grpo(
    ctx: &Context,
    solutions: &[&MeasuredSolution],
    quota: usize,
) -> Result<Vec<Example>, DataError> {
    let mut ranked = ctx.ranked(solutions);
    ranked.reverse();
    let picks = quota.min(ranked.len());
    let mut originals: Vec<&MeasuredSolution> = (0..picks)
        .map(|k| ranked[k * ranked.len() / picks])
        .collect();
    originals.extend(
        solutions
            .iter()
            .copied()
            .filter(|s| !s.passed)
            .take(quota - picks),
    );
    originals
        .into_iter()
        .map(|original| {
            let performance = original.performance.as_ref().filter(|_| original.passed);
            ctx.example(
                Some(original),
                Target::Reward {
                    baseline: Some(Baseline {
                        passed: original.passed,
                        time_ms: performance.map(|p| p.time_ms),
                        memory_kb: performance.map(|p| p.memory_kb),
                        integral: performance.map(|p| p.integral),
                    }),
                    original_id: Some(original.reference.id.clone()),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_share_the_examples_and_rotate_the_remainder() {
        assert_eq!(quotas(6, 3, 0), vec![2, 2, 2]);
        assert_eq!(quotas(4, 3, 0), vec![2, 1, 1]);
        assert_eq!(quotas(4, 3, 1), vec![1, 2, 1]);
        assert_eq!(quotas(1, 3, 2), vec![0, 0, 1]);
        for offset in 0..5 {
            assert_eq!(quotas(7, 3, offset).iter().sum::<usize>(), 7);
        }
    }

    #[test]
    fn splits_are_stable_and_follow_the_share() {
        assert_eq!(Split::of("two-sum", 0.0), Split::Train);
        assert_eq!(Split::of("two-sum", 1.0), Split::Test);
        let test = (0..1000)
            .filter(|i| Split::of(&format!("p{i}"), 0.2) == Split::Test)
            .count();
        assert!((150..250).contains(&test), "{test} of 1000 in test");
        assert_eq!(Split::of("p7", 0.2), Split::of("p7", 0.2));
    }

    #[test]
    fn normalised_code_ignores_layout_only() {
        assert_eq!(
            normalised_code("a = 1  \r\n\r\nprint(a)\n"),
            normalised_code("a = 1\nprint(a)")
        );
        assert_ne!(normalised_code("a = 1"), normalised_code("a =  1"));
    }
}
