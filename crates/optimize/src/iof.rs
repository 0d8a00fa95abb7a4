//! The Iterative Optimization Framework (Algorithm 1 of the paper; SPEC section 6).
//!
//! Per problem: iteration 0 measures a given original solution, or asks the model for one from
//! scratch; each of the `N` iterations that follow prompts the model with the problem, the
//! instruction and the *incumbent* (its code and measured performance; no history), measures
//! the candidate with the harness protocol, and lets [`AcceptanceRule::decide`] choose whether it
//! becomes the incumbent. A response without usable code is a failed iteration (status
//! `no_code`), not an error. A model call that fails after its retries, or a harness that cannot
//! run, stops that problem with an error; its completed iterations are kept and a later run
//! resumes it.
//!
//! The loop is generic over the model ([`ChatModel`]) and the measurement ([`Judge`]), so its
//! logic is tested with scripts; [`HarnessJudge`] measures in the sandbox.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use afterburner_benchmarks::metrics::score_run;
use afterburner_benchmarks::{Harness, Measured, Problem, RecordedPerformance, Submission, Suite};
use afterburner_reward::parse_response;
use afterburner_sandbox::{Language, Status};

use crate::acceptance::{AcceptanceRule, Observation};
use crate::chat::ChatModel;
use crate::now_secs;
use crate::prompt::{Instruction, OriginalView, PromptContext, Templates};
use crate::trajectory::{CandidateStatus, IterationRecord, Percentiles, Source};

/// A measured candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The sandbox's verdict (`accepted`, `wrong_answer`...).
    pub status: Status,
    /// What acceptance compares.
    pub observation: Observation,
    /// Tests passed in the first run.
    pub tests_passed: Option<usize>,
    /// Tests in the suite.
    pub tests_total: Option<usize>,
    /// Why it failed, when it did.
    pub detail: Option<String>,
}

impl Judged {
    /// The judgement of a harness measurement.
    pub fn from_measured(m: &Measured) -> Self {
        let status = if !m.passed && m.evaluation.status == Status::Accepted {
            Status::WrongAnswer
        } else {
            m.evaluation.status
        };
        Judged {
            status,
            observation: Observation {
                passed: m.passed,
                performance: m.performance.filter(|_| m.passed),
                dispersion: m.summary.as_ref().map(|s| s.cv.clone()),
                runs: m.summary.as_ref().map_or(1, |s| s.runs),
            },
            tests_passed: Some(m.evaluation.accepted_cases()),
            tests_total: Some(m.evaluation.cases.len()),
            detail: m.detail.clone(),
        }
    }
}

/// Measures candidate solutions.
pub trait Judge: Sync {
    /// Measures `code` (in `language`) as a solution of `problem`; an error means the
    /// measurement itself failed (never the candidate's fault).
    fn judge(&self, problem: &Problem, language: Language, code: &str) -> Result<Judged, String>;
}

/// Cores measurements may run on: one measurement per core at a time.
#[derive(Debug)]
pub struct CorePool {
    free: Mutex<Vec<Option<usize>>>,
    freed: Condvar,
}

/// A core held for one measurement; returned on drop.
pub struct CoreLease<'p> {
    pool: &'p CorePool,
    cpu: Option<usize>,
}

impl CoreLease<'_> {
    /// The core (`None`: any).
    pub fn cpu(&self) -> Option<usize> {
        self.cpu
    }
}

impl Drop for CoreLease<'_> {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(self.cpu);
        self.pool.freed.notify_one();
    }
}

impl CorePool {
    /// A pool of these cores (`None` entries: let the sandbox choose); empty means one `None`.
    pub fn new(cpus: Vec<Option<usize>>) -> Self {
        let cpus = if cpus.is_empty() { vec![None] } else { cpus };
        CorePool {
            free: Mutex::new(cpus),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free core.
    pub fn acquire(&self) -> CoreLease<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(cpu) = free.pop() {
                return CoreLease { pool: self, cpu };
            }
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Measures in the sandbox with a [`Harness`], on the problems' prepared suites.
pub struct HarnessJudge<'h> {
    harness: &'h Harness<'h>,
    suites: HashMap<String, Suite>,
    cores: CorePool,
}

impl<'h> HarnessJudge<'h> {
    /// A judge over `harness` with each problem's suite (by problem id), measuring on `cpus`.
    pub fn new(
        harness: &'h Harness<'h>,
        suites: HashMap<String, Suite>,
        cpus: Vec<Option<usize>>,
    ) -> Self {
        HarnessJudge {
            harness,
            suites,
            cores: CorePool::new(cpus),
        }
    }
}

impl Judge for HarnessJudge<'_> {
    fn judge(&self, problem: &Problem, language: Language, code: &str) -> Result<Judged, String> {
        let suite = self
            .suites
            .get(&problem.id)
            .ok_or_else(|| format!("no prepared tests for problem {}", problem.id))?;
        let lease = self.cores.acquire();
        let measured = self
            .harness
            .measure(
                &Submission::new(problem, language, code),
                suite,
                lease.cpu(),
            )
            .map_err(|e| e.to_string())?;
        Ok(Judged::from_measured(&measured))
    }
}

/// Settings of the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// Improvement iterations after iteration 0 (`N`).
    pub iterations: usize,
    /// The efficiency instruction.
    pub instruction: Instruction,
    /// The language solutions are written in.
    pub language: Language,
    /// When a candidate replaces the incumbent.
    pub rule: AcceptanceRule,
}

/// One problem to optimise.
#[derive(Debug, Clone)]
pub struct Task<'p> {
    /// The problem.
    pub problem: &'p Problem,
    /// An original solution for iteration 0 (`None`: the model writes one).
    pub original: Option<String>,
    /// Measurements of its passing references (empty: no percentiles).
    pub references: Vec<RecordedPerformance>,
}

/// How optimising one problem ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The problem's id.
    pub problem_id: String,
    /// Every iteration, resumed ones included, in order.
    pub records: Vec<IterationRecord>,
    /// Iterations run now (not resumed).
    pub ran: usize,
    /// Why it stopped early, when it did.
    pub error: Option<String>,
    /// Whether it stopped because it was asked to.
    pub interrupted: bool,
}

impl Outcome {
    /// The incumbent's row at the end.
    pub fn incumbent(&self) -> Option<&IterationRecord> {
        let last = self.records.last()?;
        self.records.get(last.incumbent?)
    }

    /// Whether all iterations are done.
    pub fn complete(&self, iterations: usize) -> bool {
        self.records.len() > iterations
    }
}

/// The loop: a model, a judge, templates and settings.
pub struct Optimizer<'a> {
    /// Proposes code.
    pub model: &'a dyn ChatModel,
    /// Measures it.
    pub judge: &'a dyn Judge,
    /// Makes the prompts.
    pub templates: &'a Templates,
    /// The settings.
    pub config: LoopConfig,
}

/// The row's percentiles against `references` (none when there are none).
fn percentiles(judged: &Judged, references: &[RecordedPerformance]) -> Option<Percentiles> {
    if references.is_empty() {
        return None;
    }
    let perf = judged
        .observation
        .performance
        .filter(|_| judged.observation.passed);
    score_run(perf.as_ref(), references).map(|s| Percentiles {
        time: s.time,
        memory: s.memory,
        integral: s.integral,
    })
}

impl Optimizer<'_> {
    fn blank(&self, task: &Task<'_>, iteration: usize, source: Source) -> IterationRecord {
        IterationRecord::new(
            &task.problem.id,
            iteration,
            source,
            self.config.language,
            self.config.instruction,
        )
    }

    fn measure_into(
        &self,
        task: &Task<'_>,
        record: &mut IterationRecord,
        code: String,
    ) -> Result<(), String> {
        let start = Instant::now();
        let judged = self
            .judge
            .judge(task.problem, self.config.language, &code)
            .map_err(|e| format!("iteration {}: measuring failed: {e}", record.iteration))?;
        record.measure_ms = Some(start.elapsed().as_secs_f64() * 1e3);
        record.percentiles = percentiles(&judged, &task.references);
        record.status = CandidateStatus::Ran(judged.status);
        record.passed = judged.observation.passed;
        let perf = judged.observation.performance;
        record.time = perf.map(|p| p.time_ms);
        record.memory = perf.map(|p| p.memory_kb);
        record.integral = perf.map(|p| p.integral);
        record.cv = judged.observation.dispersion;
        record.runs = judged.observation.runs;
        record.tests_passed = judged.tests_passed;
        record.tests_total = judged.tests_total;
        record.detail = judged.detail;
        record.code = Some(code);
        Ok(())
    }

    /// Runs one iteration: asks the model (or takes the original) and measures the candidate.
    fn iterate(
        &self,
        task: &Task<'_>,
        iteration: usize,
        incumbent: Option<&IterationRecord>,
    ) -> Result<IterationRecord, String> {
        if iteration == 0
            && let Some(code) = &task.original
        {
            let mut record = self.blank(task, 0, Source::Original);
            self.measure_into(task, &mut record, code.clone())?;
            return Ok(record);
        }
        let language = self.config.language;
        let original = incumbent.and_then(|inc| {
            let code = inc.code.as_deref()?;
            Some(OriginalView::new(
                code,
                language,
                inc.passed,
                inc.status.as_str(),
                inc.detail.as_deref(),
                inc.time,
                inc.memory,
                inc.integral,
            ))
        });
        let source = if original.is_some() {
            Source::Improve
        } else {
            Source::Generate
        };
        let ctx = PromptContext::new(task.problem, language, self.config.instruction, original);
        let messages = self
            .templates
            .messages(&ctx)
            .map_err(|e| format!("iteration {iteration}: {e}"))?;
        let tag = format!("{}/{iteration}", task.problem.id);
        let completion = self
            .model
            .complete(&messages, &tag, iteration as u64)
            .map_err(|e| format!("iteration {iteration}: the model call failed: {e}"))?;
        let mut record = self.blank(task, iteration, source);
        record.prompt = Some(messages);
        record.llm_ms = Some(completion.elapsed_ms);
        record.cached = Some(completion.from_cache);
        record.usage = completion.usage;
        record.finish_reason = completion.finish_reason.clone();
        let parsed = parse_response(&completion.content, language);
        record.well_formed = Some(parsed.well_formed);
        record.response = Some(completion.content);
        match parsed.code {
            Some(code) => self.measure_into(task, &mut record, code)?,
            None => {
                record.status = CandidateStatus::NoCode;
                let why = parsed
                    .problem
                    .unwrap_or_else(|| "no usable code".to_string());
                record.detail = Some(match &record.finish_reason {
                    Some(r) if r == "length" => {
                        format!("{why} (the answer was cut off at the token limit)")
                    }
                    _ => why,
                });
            }
        }
        Ok(record)
    }

    /// Optimises one problem, continuing after `previous` (its rows from an earlier run, in
    /// order from iteration 0), handing each completed row to `emit` before the next starts.
    /// `stop` is asked before each iteration.
    pub fn run(
        &self,
        task: &Task<'_>,
        previous: Vec<IterationRecord>,
        emit: &(dyn Fn(&IterationRecord) -> Result<(), String> + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Outcome {
        let mut records = previous;
        records.truncate(self.config.iterations + 1);
        let mut outcome = Outcome {
            problem_id: task.problem.id.clone(),
            records: Vec::new(),
            ran: 0,
            error: None,
            interrupted: false,
        };
        for iteration in records.len()..=self.config.iterations {
            if stop() {
                outcome.interrupted = true;
                break;
            }
            let incumbent = records
                .last()
                .and_then(|r| r.incumbent)
                .and_then(|k| records.get(k));
            let mut record = match self.iterate(task, iteration, incumbent) {
                Ok(r) => r,
                Err(e) => {
                    outcome.error = Some(e);
                    break;
                }
            };
            let decision = if record.code.is_none() {
                crate::acceptance::Decision {
                    accepted: false,
                    reason: "no usable code in the response".to_string(),
                }
            } else {
                self.config.rule.decide(
                    self.config.instruction.objective(),
                    incumbent.map(IterationRecord::observation).as_ref(),
                    &record.observation(),
                )
            };
            record.accepted = decision.accepted;
            record.decision = decision.reason;
            record.incumbent = if decision.accepted {
                Some(iteration)
            } else {
                records.last().and_then(|r| r.incumbent)
            };
            record.finished_at = now_secs();
            if let Err(e) = emit(&record) {
                outcome.error = Some(format!("iteration {iteration}: {e}"));
                break;
            }
            records.push(record);
            outcome.ran += 1;
        }
        outcome.records = records;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Completion, LlmError, Message};
    use afterburner_benchmarks::{Checker, Entry};
    use std::sync::Mutex;

    /// Replays answers in order and records the prompts.
    struct Script {
        answers: Mutex<Vec<Result<String, LlmError>>>,
        prompts: Mutex<Vec<Vec<Message>>>,
    }

    impl Script {
        fn new(answers: Vec<Result<&str, LlmError>>) -> Self {
            let mut answers: Vec<_> = answers.into_iter().map(|a| a.map(str::to_string)).collect();
            answers.reverse();
            Script {
                answers: Mutex::new(answers),
                prompts: Mutex::new(Vec::new()),
            }
        }
    }

    impl ChatModel for Script {
        fn complete(&self, messages: &[Message], _: &str, _: u64) -> Result<Completion, LlmError> {
            self.prompts.lock().unwrap().push(messages.to_vec());
            let answer = self
                .answers
                .lock()
                .unwrap()
                .pop()
                .expect("a scripted answer")?;
            Ok(Completion {
                content: answer,
                finish_reason: Some("stop".into()),
                model: None,
                usage: None,
                from_cache: false,
                attempts: 1,
                elapsed_ms: 0.0,
            })
        }
    }

    /// Judges code by what it prints: `print(<ms>)` passes in that many ms; `fail` fails.
    struct ByValue;

    impl Judge for ByValue {
        fn judge(&self, _: &Problem, _: Language, code: &str) -> Result<Judged, String> {
            if code.contains("crash-the-harness") {
                return Err("the sandbox is gone".into());
            }
            let ms: Option<f64> = code
                .trim()
                .strip_prefix("print(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|s| s.parse().ok());
            Ok(Judged {
                status: if ms.is_some() {
                    Status::Accepted
                } else {
                    Status::WrongAnswer
                },
                observation: Observation {
                    passed: ms.is_some(),
                    performance: ms.map(|t| RecordedPerformance::new(t, 1000.0, t * 1000.0)),
                    dispersion: None,
                    runs: 3,
                },
                tests_passed: Some(usize::from(ms.is_some())),
                tests_total: Some(1),
                detail: None,
            })
        }
    }

    fn problem() -> Problem {
        Problem {
            title: "P".into(),
            description: "Print something fast.".into(),
            ..Problem::from_tests("p", Entry::StdinStdout, Vec::new(), Checker::Exact)
        }
    }

    fn answer(ms: &str) -> String {
        format!("<thinking>t</thinking><solution>\n```python\nprint({ms})\n```\n</solution>")
    }

    fn config(iterations: usize) -> LoopConfig {
        LoopConfig {
            iterations,
            instruction: Instruction::Time,
            language: Language::Python,
            rule: AcceptanceRule::default(),
        }
    }

    fn run(
        script: &Script,
        iterations: usize,
        original: Option<&str>,
        previous: Vec<IterationRecord>,
        references: Vec<RecordedPerformance>,
    ) -> Outcome {
        let task = Task {
            problem: &problem(),
            original: original.map(str::to_string),
            references,
        };
        optimize(script, iterations, &task, previous, &|_| Ok(()), &|| false)
    }

    /// Runs the loop on `task` with the paper's templates, judging by value.
    fn optimize(
        script: &Script,
        iterations: usize,
        task: &Task<'_>,
        previous: Vec<IterationRecord>,
        emit: &(dyn Fn(&IterationRecord) -> Result<(), String> + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Outcome {
        let templates = Templates::paper();
        let optimizer = Optimizer {
            model: script,
            judge: &ByValue,
            templates: &templates,
            config: config(iterations),
        };
        optimizer.run(task, previous, emit, stop)
    }

    #[test]
    fn acceptances_follow_the_rule_and_the_final_incumbent_is_the_fastest_pass() {
        let (slow, fast, slower) = (answer("400"), answer("50"), answer("800"));
        let script = Script::new(vec![
            Ok(&slow),
            Ok("```python\nfail\n```"),
            Ok("Sorry, no code today."),
            Ok(&fast),
            Ok(&slower),
        ]);
        let out = run(&script, 4, None, Vec::new(), Vec::new());
        assert_eq!(out.error, None);
        let accepted: Vec<bool> = out.records.iter().map(|r| r.accepted).collect();
        assert_eq!(accepted, [true, false, false, true, false]);
        let ran = CandidateStatus::Ran;
        let statuses: Vec<CandidateStatus> = out.records.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [
                ran(Status::Accepted),
                ran(Status::WrongAnswer),
                CandidateStatus::NoCode,
                ran(Status::Accepted),
                ran(Status::Accepted),
            ]
        );
        let incumbents: Vec<Option<usize>> = out.records.iter().map(|r| r.incumbent).collect();
        assert_eq!(incumbents, [Some(0), Some(0), Some(0), Some(3), Some(3)]);
        assert_eq!(
            out.incumbent().unwrap().code.as_deref(),
            Some("print(50)\n")
        );
        assert_eq!(out.records[0].source, Source::Generate);
        assert_eq!(out.records[1].source, Source::Improve);

        // Only the incumbent goes into the prompt.
        let prompts = script.prompts.lock().unwrap();
        assert!(!prompts[0][1].content.contains("## Original Solution"));
        for k in 1..=3 {
            assert!(prompts[k][1].content.contains("print(400)"), "prompt {k}");
            assert!(
                prompts[k][1]
                    .content
                    .contains("Passed: True / Time: 400.00 ms")
            );
            assert!(!prompts[k][1].content.contains("fail"));
        }
        assert!(prompts[4][1].content.contains("print(50)"));
        assert!(!prompts[4][1].content.contains("print(400)"));
    }

    #[test]
    fn an_original_solution_is_iteration_zero_and_costs_no_model_call() {
        let fast = answer("100");
        let script = Script::new(vec![Ok(&fast)]);
        let out = run(&script, 1, Some("print(300)"), Vec::new(), Vec::new());
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[0].source, Source::Original);
        assert!(out.records[0].prompt.is_none());
        assert!(out.records[1].accepted);
        assert_eq!(script.prompts.lock().unwrap().len(), 1);
    }

    #[test]
    fn without_an_incumbent_the_model_is_asked_to_generate_again() {
        let fast = answer("100");
        let script = Script::new(vec![Ok("nothing"), Ok(&fast)]);
        let out = run(&script, 1, None, Vec::new(), Vec::new());
        assert_eq!(out.records[0].incumbent, None);
        assert!(!out.records[0].accepted);
        assert!(out.records[1].accepted);
        assert_eq!(out.records[1].source, Source::Generate);
    }

    #[test]
    fn a_failing_incumbent_is_replaced_by_a_pass_and_shown_without_figures() {
        let fast = answer("100");
        let script = Script::new(vec![Ok("```python\nfail\n```"), Ok(&fast)]);
        let out = run(&script, 1, None, Vec::new(), Vec::new());
        assert!(
            out.records[0].accepted,
            "the first solution is the incumbent"
        );
        assert!(out.records[1].accepted);
        let prompts = script.prompts.lock().unwrap();
        assert!(
            prompts[1][1]
                .content
                .contains("Passed: False / Time: N/A / Memory: N/A / Integral: N/A")
        );
    }

    #[test]
    fn a_model_error_stops_the_problem_and_keeps_what_was_done() {
        let slow = answer("400");
        let script = Script::new(vec![
            Ok(&slow),
            Err(LlmError::Unreachable {
                url: "http://x".into(),
                attempts: 5,
                reason: "refused".into(),
            }),
        ]);
        let out = run(&script, 3, None, Vec::new(), Vec::new());
        assert_eq!(out.records.len(), 1);
        let e = out.error.unwrap();
        assert!(e.contains("iteration 1") && e.contains("refused"), "{e}");
    }

    #[test]
    fn a_harness_failure_is_an_error_not_a_failed_candidate() {
        let script = Script::new(vec![Ok("```python\ncrash-the-harness\n```")]);
        let out = run(&script, 2, None, Vec::new(), Vec::new());
        assert!(out.records.is_empty());
        assert!(out.error.unwrap().contains("measuring failed"));
    }

    #[test]
    fn resuming_continues_from_the_last_incumbent() {
        let (slow, wrong) = (answer("400"), "```python\nfail\n```");
        let first = Script::new(vec![Ok(&slow), Ok(wrong)]);
        let done = run(&first, 1, None, Vec::new(), Vec::new());
        assert_eq!(done.records.len(), 2);

        let fast = answer("50");
        let second = Script::new(vec![Ok(&fast)]);
        let out = run(&second, 2, None, done.records.clone(), Vec::new());
        assert_eq!(out.ran, 1);
        assert_eq!(out.records.len(), 3);
        assert_eq!(out.records[2].iteration, 2);
        assert!(out.records[2].accepted);
        let prompts = second.prompts.lock().unwrap();
        assert_eq!(prompts.len(), 1);
        assert!(prompts[0][1].content.contains("print(400)"));

        // Nothing left to do: no model call at all.
        let third = Script::new(vec![]);
        let again = run(&third, 2, None, out.records.clone(), Vec::new());
        assert_eq!(again.ran, 0);
        assert_eq!(again.records, out.records);
    }

    #[test]
    fn rows_carry_percentiles_when_references_are_calibrated() {
        let refs = vec![
            RecordedPerformance::new(100.0, 1000.0, 100_000.0),
            RecordedPerformance::new(300.0, 900.0, 300_000.0),
        ];
        let (mid, wrong) = (answer("200"), "```python\nfail\n```");
        let script = Script::new(vec![Ok(&mid), Ok(wrong)]);
        let out = run(&script, 1, None, Vec::new(), refs);
        let p = out.records[0].percentiles.unwrap();
        assert_eq!(p.time, 0.5);
        // Memory 1000 KB ties the first reference (half) and loses to 900: midrank.
        assert_eq!(p.memory, 0.25);
        let failed = out.records[1].percentiles.unwrap();
        assert_eq!(failed.time, 0.0);
    }

    #[test]
    fn an_emit_failure_stops_the_problem() {
        let slow = answer("400");
        let script = Script::new(vec![Ok(&slow)]);
        let task = Task {
            problem: &problem(),
            original: None,
            references: Vec::new(),
        };
        let out = optimize(
            &script,
            2,
            &task,
            Vec::new(),
            &|_| Err("disk full".into()),
            &|| false,
        );
        assert!(out.error.unwrap().contains("disk full"));
        assert!(out.records.is_empty());
    }

    #[test]
    fn a_stop_request_ends_the_problem_between_iterations() {
        let script = Script::new(vec![]);
        let task = Task {
            problem: &problem(),
            original: None,
            references: Vec::new(),
        };
        let out = optimize(&script, 2, &task, Vec::new(), &|_| Ok(()), &|| true);
        assert!(out.interrupted);
        assert!(out.records.is_empty());
    }

    #[test]
    fn the_core_pool_hands_out_each_core_once() {
        let pool = CorePool::new(vec![Some(1), Some(2)]);
        let a = pool.acquire();
        let b = pool.acquire();
        assert_ne!(a.cpu(), b.cpu());
        drop(a);
        let c = pool.acquire();
        assert!(c.cpu().is_some());
        assert_eq!(CorePool::new(Vec::new()).acquire().cpu(), None);
    }
}
