//! The measurement protocol: how runs of solutions are scheduled and what is concluded from them.
//!
//! A solution is run `repeats` times (stopping at its first failure); it passes when every run
//! passes, and its figures are the medians of wall time, peak RSS and memory integral
//! ([`Measured::from_runs`], [`Conclusion`]), times and integrals first brought to the machine's
//! baseline speed by the drift probe run in the same window (see `probe.rs`; the raw figures
//! are kept beside them). Runs of many solutions are made in *rounds*
//! ([`Harness::measure_rounds`]): round `r` runs once every solution that passed its first `r`
//! runs, each on a worker pinned to its own core, so a burst of machine noise falls on one run
//! of many solutions (which the medians absorb) instead of on every run of one. Measuring one
//! solution ([`Harness::measure_within`]) is the same protocol with one solution and one core.
//!
//! The caller watches through an [`Observer`] (progress, notes) and may stop through a
//! [`StopFlag`]: runs in progress finish, no new one starts, and every run made is returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use afterburner_sandbox::{Limits, Measurement, Noise, RecordedPerformance, RepeatSummary, Status};
use serde::{Deserialize, Serialize};

use super::HarnessError;
use super::probe::Drift;
use super::run::{Harness, Submission};
use super::settings::{RunSettings, counting_limits};
use super::suite::Suite;
use super::verdict::Evaluation;

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
    /// Medians and dispersion of the raw runs, before drift correction (when it passed and
    /// the runs were drift-corrected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RepeatSummary>,
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
    /// The drift probe in the run's window, when drift correction is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// Whether this is the instruction-counting run (under valgrind: only its status and
    /// count are used, never its time or memory).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counted: bool,
}

impl RunOutcome {
    /// Whether every test passed.
    pub fn passed(&self) -> bool {
        self.status == Status::Accepted
    }

    /// The run's measurement with its time, CPU time and integral at the baseline speed (the
    /// raw measurement when no probe was run).
    pub fn corrected(&self) -> Measurement {
        let mut m = self.measurement.clone();
        if let Some(d) = self.drift {
            let f = d.factor();
            m.wall_ms *= f;
            m.cpu_ms *= f;
            m.integral_kb_ms *= f;
        }
        m
    }

    /// The outcome of the judged run `e`, made in a window whose probe is `drift`.
    pub fn of(e: &Evaluation, drift: Option<Drift>) -> Self {
        RunOutcome {
            status: e.status,
            measurement: e.measurement.clone(),
            tests_passed: e.accepted_cases(),
            tests_total: e.cases.len(),
            failure: e.failure_reason(),
            drift,
            counted: false,
        }
    }
}

impl From<&Evaluation> for RunOutcome {
    fn from(e: &Evaluation) -> Self {
        RunOutcome::of(e, None)
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
    /// Medians and dispersion of the raw runs, when it passed and they were drift-corrected.
    pub raw: Option<RepeatSummary>,
}

impl Conclusion {
    /// The protocol's verdict on `runs` of `repeats`: a solution passes when all `repeats` runs
    /// passed (runs after the first failure are ignored), and its figures are the medians. The
    /// instruction-counting run, when there is one, gives the count alone (a solution it fails
    /// under valgrind keeps its verdict and has no count).
    pub(crate) fn of(runs: &[RunOutcome], repeats: usize) -> Conclusion {
        let repeats = repeats.max(1);
        let instructions = runs
            .iter()
            .find(|r| r.counted && r.passed())
            .and_then(|r| r.measurement.instructions)
            .map(|i| i as f64);
        let runs: Vec<RunOutcome> = runs.iter().filter(|r| !r.counted).cloned().collect();
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
                raw: None,
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
                raw: None,
                detail: Some(format!("only {} of {repeats} runs were made", runs.len())),
            };
        }
        let runs = &runs[..repeats];
        let measurements: Vec<Measurement> = runs.iter().map(RunOutcome::corrected).collect();
        let summary = RepeatSummary::of(&measurements);
        let raw = runs.iter().any(|r| r.drift.is_some()).then(|| {
            let raw: Vec<Measurement> = runs.iter().map(|r| r.measurement.clone()).collect();
            RepeatSummary::of(&raw)
        });
        let performance =
            RecordedPerformance::new(summary.wall_ms, summary.peak_rss_kb, summary.integral_kb_ms)
                .with_noise(Noise::of(&summary.cv))
                .with_instructions(instructions);
        Conclusion {
            passed: true,
            status: Status::Accepted,
            summary: Some(summary),
            performance: Some(performance),
            detail: None,
            raw,
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
            raw: c.raw,
        }
    }
}

/// A solution to measure in rounds: a submission, its suite, and the runs made before.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// What runs.
    pub submission: Submission<'a>,
    /// The suite it runs over.
    pub suite: &'a Suite,
    /// Runs made earlier (resumed from a cache), in round order.
    pub done: Vec<RunOutcome>,
}

/// A subject's runs after [`Harness::measure_rounds`].
#[derive(Debug, Default)]
pub struct SubjectRuns {
    /// Every run in round order, resumed ones first.
    pub runs: Vec<RunOutcome>,
    /// The judged first run, when it was made now.
    pub first: Option<Evaluation>,
    /// Why the harness could not run it.
    pub error: Option<HarnessError>,
}

impl SubjectRuns {
    /// Whether nothing is left to run: all `needed` runs made ([`RunSettings::runs_needed`]),
    /// a timed run failed, or an error.
    pub fn complete(&self, needed: usize) -> bool {
        self.error.is_some()
            || self.runs.len() >= needed
            || self.runs.iter().any(|r| !r.passed() && !r.counted)
    }

    /// The protocol's conclusion on a complete subject whose first run was made now: its
    /// [`Measured`], or why the harness could not run it.
    pub fn into_measured(self, repeats: usize) -> Result<Measured, MeasureError> {
        match (self.error, self.first) {
            (Some(e), _) => Err(MeasureError::Harness(e)),
            (None, Some(first)) => Ok(Measured::from_runs(first, &self.runs, repeats)),
            (None, None) => Err(MeasureError::NoRun),
        }
    }
}

/// Why a subject has no [`Measured`].
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The harness could not run it.
    #[error("{0}")]
    Harness(HarnessError),
    /// No run of it was made now (stopped before its turn, or every run was resumed).
    #[error("no run was made")]
    NoRun,
}

/// Watches a measurement: progress per stage and lines for the user. Every method has a
/// default that does nothing; a command line draws bars, a service may log or ignore it.
/// All calls come from the thread that started the measurement.
pub trait Observer {
    /// A stage begins: `total` steps of `what` (`suites`, `references`, `solutions`).
    fn stage(&mut self, what: &str, total: usize) {
        let _ = (what, total);
    }

    /// `steps` more steps of the current stage are done.
    fn advance(&mut self, steps: usize) {
        let _ = steps;
    }

    /// The current stage enters round `round` (0 first) of `rounds`.
    fn round(&mut self, round: usize, rounds: usize) {
        let _ = (round, rounds);
    }

    /// A line for the user (`note: ...`, `warning: ...`, `error: ...`).
    fn say(&mut self, line: &str) {
        let _ = line;
    }

    /// The current stage is over.
    fn stage_done(&mut self) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl Observer for Unobserved {}

/// Asks a measurement to stop: runs in progress finish, no new one starts. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag not raised yet.
    pub fn new() -> Self {
        StopFlag::default()
    }

    /// Raises the flag; returns whether it was raised already.
    pub fn stop(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// Whether the flag is raised.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How many workers measure, each pinned to a core of its own (see [`worker_cpus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    /// One per core the sampler leaves free.
    EveryFreeCore,
    /// At most this many, never two on one core (a measurement on a shared core is noise).
    AtMost(usize),
    /// Exactly this many (at least one), sharing the free cores in turn when there are more
    /// workers than cores (a service trading precision for throughput).
    Exactly(usize),
}

/// The cores of the workers: every core the sandbox may use except the sampler's (its
/// supervisor pins itself there), cut or cycled to `count`; `[None]` (let the sandbox pick)
/// when no core is free. The one core-selection policy of calibrate, eval and the server.
/// `cpus` and `supervisor` are the sandbox's [`Capabilities`](afterburner_sandbox::Capabilities).
pub fn worker_cpus(
    cpus: &[usize],
    supervisor: Option<usize>,
    count: WorkerCount,
) -> Vec<Option<usize>> {
    let mut free: Vec<Option<usize>> = cpus
        .iter()
        .copied()
        .filter(|&c| Some(c) != supervisor)
        .map(Some)
        .collect();
    if free.is_empty() {
        free.push(None);
    }
    match count {
        WorkerCount::EveryFreeCore => free,
        WorkerCount::AtMost(n) => {
            free.truncate(n);
            free
        }
        WorkerCount::Exactly(n) => (0..n.max(1)).map(|i| free[i % free.len()]).collect(),
    }
}

/// Runs `f` on every item on the workers (one per entry of `cpus`, each handed its core),
/// handing results to `on_done` on this thread as they complete. Stops taking items once
/// `stop` is raised. With one worker (or one item) it runs on this thread.
pub fn parallel<T: Sync, R: Send>(
    items: &[T],
    cpus: &[Option<usize>],
    stop: &StopFlag,
    f: impl Fn(&T, Option<usize>) -> R + Sync,
    mut on_done: impl FnMut(usize, R),
) {
    if cpus.len() <= 1 || items.len() <= 1 {
        let cpu = cpus.first().copied().flatten();
        for (i, item) in items.iter().enumerate() {
            if stop.is_stopped() {
                break;
            }
            on_done(i, f(item, cpu));
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for &cpu in cpus.iter().take(items.len()) {
            let tx = tx.clone();
            let (next, f) = (&next, &f);
            s.spawn(move || {
                while !stop.is_stopped() {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    if tx.send((i, f(item, cpu))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            on_done(i, r);
        }
    });
}

/// What a caller of [`Harness::measure_rounds`] does with each run as it completes (e.g. save it).
pub trait RunSink {
    /// Run `round` of subject `subject`, which has runs left to make; an error is told to the
    /// observer and the measurement goes on.
    fn run_made(
        &mut self,
        subject: usize,
        round: usize,
        outcome: &RunOutcome,
    ) -> Result<(), String>;

    /// Subject `subject` has nothing left to run; an error is told to the observer.
    fn subject_complete(&mut self, subject: usize, runs: &SubjectRuns) -> Result<(), String>;
}

/// A [`RunSink`] that keeps nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl RunSink for Discard {
    fn run_made(&mut self, _: usize, _: usize, _: &RunOutcome) -> Result<(), String> {
        Ok(())
    }

    fn subject_complete(&mut self, _: usize, _: &SubjectRuns) -> Result<(), String> {
        Ok(())
    }
}

/// Where and how [`Harness::measure_rounds`] runs: the settings, the workers' cores, the stop
/// flag, and what watches it.
pub struct Rounds<'r> {
    /// Limits and repeats of every subject.
    pub settings: &'r RunSettings,
    /// One worker per entry, pinned to that core (`None`: the sandbox picks).
    pub cpus: &'r [Option<usize>],
    /// Stops the measurement after the runs in progress.
    pub stop: &'r StopFlag,
    /// Sees the progress (one stage named `what`).
    pub observer: &'r mut dyn Observer,
    /// The stage's name for the observer.
    pub what: &'r str,
}

impl Harness<'_> {
    /// Measures `subjects` with the protocol in rounds (see the module docs); `sink` sees each
    /// run of an unfinished subject as it completes and each subject once it has nothing left
    /// to run, both on this thread. Returns every subject's runs, resumed ones included; after
    /// a stop, subjects may be incomplete.
    pub fn measure_rounds(
        &self,
        subjects: &[Subject<'_>],
        rounds: Rounds<'_>,
        sink: &mut dyn RunSink,
    ) -> Vec<SubjectRuns> {
        let Rounds {
            settings,
            cpus,
            stop,
            observer,
            what,
        } = rounds;
        let repeats = settings.repeats.max(1);
        let needed = settings.runs_needed();
        let mut state: Vec<SubjectRuns> = subjects
            .iter()
            .map(|s| SubjectRuns {
                runs: s.done.clone(),
                ..SubjectRuns::default()
            })
            .collect();
        let left = state
            .iter()
            .filter(|st| !st.complete(needed))
            .map(|st| needed - st.runs.len())
            .sum();
        observer.stage(what, left);
        for (i, st) in state.iter().enumerate() {
            if st.complete(needed)
                && let Err(e) = sink.subject_complete(i, st)
            {
                observer.say(&format!("error: {e}"));
            }
        }
        for round in 0..needed {
            if stop.is_stopped() {
                break;
            }
            // The round after the timed ones is the counting run, given time for valgrind.
            let counting = round >= repeats;
            let todo: Vec<(usize, Limits)> = (0..state.len())
                .filter(|&i| !state[i].complete(needed) && state[i].runs.len() == round)
                .map(|i| {
                    let limits = if counting {
                        let slowest = state[i]
                            .runs
                            .iter()
                            .map(|r| r.measurement.wall_ms)
                            .fold(0.0, f64::max);
                        counting_limits(&settings.limits, slowest)
                    } else {
                        settings.limits.clone()
                    };
                    (i, limits)
                })
                .collect();
            observer.round(round, needed);
            parallel(
                &todo,
                cpus,
                stop,
                |(i, limits), cpu| {
                    let s = &subjects[*i];
                    let drift = if counting {
                        None
                    } else {
                        self.drift_before_run(cpu)?
                    };
                    self.evaluate_run(&s.submission, s.suite, limits, cpu, counting)
                        .map(|evaluation| (evaluation, drift))
                },
                |k, result| {
                    let i = todo[k].0;
                    let st = &mut state[i];
                    observer.advance(1);
                    match result {
                        Ok((evaluation, drift)) => {
                            let mut outcome = RunOutcome::of(&evaluation, drift);
                            outcome.counted = counting;
                            if st.runs.is_empty() {
                                st.first = Some(evaluation);
                            }
                            st.runs.push(outcome);
                            if !st.complete(needed)
                                && let Err(e) = sink.run_made(i, round, &st.runs[round])
                            {
                                observer.say(&format!("error: {e}"));
                            }
                        }
                        Err(e) => st.error = Some(e),
                    }
                    if st.complete(needed) {
                        observer.advance(needed.saturating_sub(round + 1));
                        if let Err(e) = sink.subject_complete(i, st) {
                            observer.say(&format!("error: {e}"));
                        }
                    }
                },
            );
        }
        observer.stage_done();
        state
    }

    /// Measures a submission with the configured protocol (see [`Harness::measure_within`]).
    pub fn measure(
        &self,
        submission: &Submission<'_>,
        suite: &Suite,
        cpu: Option<usize>,
    ) -> Result<Measured, HarnessError> {
        self.measure_within(submission, suite, &self.config.run_settings(), cpu)
    }

    /// Measures one submission with the protocol under `settings` on core `cpu`: up to
    /// `repeats` runs back to back, stopping at the first failure, figures the medians. It is
    /// [`Harness::measure_rounds`] with one subject and one worker (on this thread).
    pub fn measure_within(
        &self,
        submission: &Submission<'_>,
        suite: &Suite,
        settings: &RunSettings,
        cpu: Option<usize>,
    ) -> Result<Measured, HarnessError> {
        let subject = Subject {
            submission: *submission,
            suite,
            done: Vec::new(),
        };
        let rounds = Rounds {
            settings,
            cpus: &[cpu],
            stop: &StopFlag::new(),
            observer: &mut Unobserved,
            what: "runs",
        };
        let runs = self
            .measure_rounds(std::slice::from_ref(&subject), rounds, &mut Discard)
            .pop();
        match runs.map(|r| r.into_measured(settings.repeats.max(1))) {
            Some(Ok(measured)) => Ok(measured),
            Some(Err(MeasureError::Harness(e))) => Err(e),
            Some(Err(MeasureError::NoRun)) | None => Err(HarnessError::Unsupported {
                problem: submission.problem.id.clone(),
                reason: "the protocol made no run".to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(cpus: &[usize], supervisor: Option<usize>) -> (Vec<usize>, Option<usize>) {
        (cpus.to_vec(), supervisor)
    }

    fn worker_cpus(
        (cpus, supervisor): &(Vec<usize>, Option<usize>),
        n: WorkerCount,
    ) -> Vec<Option<usize>> {
        super::worker_cpus(cpus, *supervisor, n)
    }

    #[test]
    fn workers_default_to_every_core_but_the_samplers() {
        let every = WorkerCount::EveryFreeCore;
        assert_eq!(worker_cpus(&caps(&[0, 1], Some(0)), every), vec![Some(1)]);
        assert_eq!(
            worker_cpus(&caps(&[0, 1, 2, 3], Some(0)), every),
            vec![Some(1), Some(2), Some(3)]
        );
        assert_eq!(worker_cpus(&caps(&[0], None), every), vec![Some(0)]);
        assert_eq!(worker_cpus(&caps(&[], None), every), vec![None]);
    }

    #[test]
    fn at_most_never_puts_two_workers_on_a_core_and_exactly_shares_them() {
        let c = caps(&[0, 1, 2], Some(0));
        assert_eq!(
            worker_cpus(&c, WorkerCount::AtMost(5)),
            vec![Some(1), Some(2)]
        );
        assert_eq!(worker_cpus(&c, WorkerCount::AtMost(1)), vec![Some(1)]);
        assert_eq!(
            worker_cpus(&c, WorkerCount::Exactly(3)),
            vec![Some(1), Some(2), Some(1)]
        );
        assert_eq!(worker_cpus(&c, WorkerCount::Exactly(1)), vec![Some(1)]);
    }

    fn run_at(wall_ms: f64, probe_ms: Option<f64>) -> RunOutcome {
        let mut measurement = Measurement::not_run(Status::Accepted);
        measurement.wall_ms = wall_ms;
        measurement.cpu_ms = wall_ms;
        measurement.peak_rss_kb = 1000;
        measurement.integral_kb_ms = wall_ms * 1000.0;
        RunOutcome {
            status: Status::Accepted,
            measurement,
            tests_passed: 1,
            tests_total: 1,
            failure: None,
            drift: probe_ms.map(|probe_ms| Drift {
                probe_ms,
                baseline_ms: 50.0,
            }),
            counted: false,
        }
    }

    #[test]
    fn runs_in_slow_windows_are_brought_to_the_baseline_and_the_raw_medians_are_kept() {
        // The same program, 100 ms at baseline speed, measured in a window 50% slow, one at
        // baseline speed, and one 20% slow: every corrected run is 100 ms.
        let runs = [
            run_at(150.0, Some(75.0)),
            run_at(100.0, Some(50.0)),
            run_at(120.0, Some(60.0)),
        ];
        let c = Conclusion::of(&runs, 3);
        let summary = c.summary.expect("passed");
        assert!((summary.wall_ms - 100.0).abs() < 1e-9, "{summary:?}");
        assert!((summary.integral_kb_ms - 100_000.0).abs() < 1e-6);
        assert!(summary.cv.wall_ms < 1e-12, "corrected runs agree");
        assert_eq!(summary.peak_rss_kb, 1000.0, "memory is not corrected");
        let raw = c.raw.expect("the raw medians are kept");
        assert_eq!(raw.wall_ms, 120.0);
        assert!(raw.cv.wall_ms > 0.1);
        let p = c.performance.expect("passed");
        assert!((p.time_ms - 100.0).abs() < 1e-9);
        // Without probes the figures are the raw medians and nothing is kept twice.
        let plain = Conclusion::of(
            &[
                run_at(150.0, None),
                run_at(100.0, None),
                run_at(120.0, None),
            ],
            3,
        );
        assert_eq!(plain.summary.expect("passed").wall_ms, 120.0);
        assert!(plain.raw.is_none());
    }

    #[test]
    fn parallel_hands_every_result_back_once_and_stops_taking_items_when_asked() {
        let items: Vec<usize> = (0..20).collect();
        let mut seen = vec![0; 20];
        parallel(
            &items,
            &[Some(0), Some(1), None],
            &StopFlag::new(),
            |&x, _| x * 2,
            |i, r| {
                assert_eq!(r, i * 2);
                seen[i] += 1;
            },
        );
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        let stop = StopFlag::new();
        assert!(!stop.stop());
        let mut ran = 0;
        parallel(&items, &[None], &stop, |_, _| (), |_, ()| ran += 1);
        assert_eq!(ran, 0, "a raised flag starts nothing");
    }
}
