//! The measuring workbench of `calibrate`, `eval` and `optimize`: a harness, this machine's
//! worker cores, the calibration cache and a stop flag, and the orchestration of a
//! calibration on them.
//!
//! [`Workbench::calibrate`] prepares the suites of a set of problems (one per worker at a
//! time), looks their reference solutions up in the cache, and measures the rest with the
//! protocol in rounds ([`Harness::measure_rounds`]), saving each run as it completes
//! ([`CalibrationCache::append_run`]) and each finished reference's record
//! ([`CalibrationCache::append`]): stopping loses no run already made, and the next
//! calibration resumes each reference from its last run. [`Workbench::measure`] measures any
//! other solutions (an eval's candidates) with the same protocol on the same cores.

use std::time::Instant;

use afterburner_sandbox::{RecordedPerformance, Sandbox};
use serde::Serialize;

use crate::calibration::{
    CalibrationCache, CalibrationKey, CalibrationRecord, CalibrationRun, machine_fingerprint,
};
use crate::harness::{
    Discard, Harness, HarnessConfig, HarnessError, Observer, Rounds, RunOutcome, RunSink, StopFlag,
    Subject, SubjectRuns, Submission, Suite, parallel,
};
use crate::problem::{Problem, ReferenceSolution};

/// Everything measuring on this machine needs: the harness (its sandbox inside), the
/// calibration cache, the machine's fingerprint and protocol id, the workers' cores and the
/// flag that stops it. Calibrate, eval and optimize each open one.
#[derive(Debug)]
pub struct Workbench<'s> {
    harness: Harness<'s>,
    cache: CalibrationCache,
    fingerprint: String,
    protocol: String,
    cpus: Vec<Option<usize>>,
    stop: StopFlag,
}

/// A problem after calibration: its suite and its references' records.
#[derive(Debug)]
pub struct Calibrated<'p> {
    /// The problem.
    pub problem: &'p Problem,
    /// Its suite, unless it could not be prepared.
    pub suite: Option<Suite>,
    /// Why the suite could not be prepared.
    pub error: Option<String>,
    /// Records of the references measured (or found in the cache).
    pub records: Vec<CalibrationRecord>,
    /// How many of them came from the cache.
    pub cached: usize,
}

impl Calibrated<'_> {
    /// The figures of the passing references: the distribution Beyond-X compares against.
    pub fn distribution(&self) -> Vec<RecordedPerformance> {
        self.records
            .iter()
            .filter(|r| r.passed)
            .filter_map(|r| r.performance)
            .collect()
    }
}

/// Totals of one calibration (`calibrate --json` prints them).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct CalibrationTotals {
    /// References measured now.
    pub measured: usize,
    /// References found in the cache.
    pub cached: usize,
    /// Runs made now.
    pub runs: usize,
    /// Runs of unfinished references resumed from the cache.
    pub resumed_runs: usize,
    /// References that did not pass (now or cached).
    pub failed: usize,
    /// Problems whose suite could not be prepared, or references the harness could not run.
    pub errors: usize,
    /// Seconds it took.
    pub elapsed_s: f64,
    /// Whether it was interrupted.
    pub interrupted: bool,
}

/// The references calibration measures: verified ones first, at most `max` of them.
pub fn selected_references(problem: &Problem, max: Option<usize>) -> Vec<&ReferenceSolution> {
    let mut refs: Vec<&ReferenceSolution> = problem.verified_references().collect();
    refs.extend(problem.references.iter().filter(|r| !r.verified));
    refs.truncate(max.unwrap_or(usize::MAX));
    refs
}

/// Saves each run of a reference and each finished reference's record as they complete.
struct CalibrationSink<'a> {
    cache: &'a CalibrationCache,
    jobs: &'a [(usize, &'a ReferenceSolution, CalibrationKey)],
    repeats: usize,
    /// Finished records, with the index of their problem.
    fresh: Vec<(usize, CalibrationRecord)>,
    errors: usize,
}

impl RunSink for CalibrationSink<'_> {
    fn run_made(
        &mut self,
        subject: usize,
        round: usize,
        outcome: &RunOutcome,
    ) -> Result<(), String> {
        let (_, _, key) = &self.jobs[subject];
        let run = CalibrationRun {
            key: key.clone(),
            round,
            outcome: outcome.clone(),
        };
        self.cache.append_run(run).map_err(|e| {
            self.errors += 1;
            format!("cannot save a run of {}: {e}", key.solution_id)
        })
    }

    fn subject_complete(&mut self, subject: usize, runs: &SubjectRuns) -> Result<(), String> {
        let (i, r, key) = &self.jobs[subject];
        let record = match &runs.error {
            Some(e) => Err(e.to_string()),
            None => {
                let record =
                    CalibrationRecord::from_runs(key.clone(), r.language, &runs.runs, self.repeats);
                self.cache
                    .append(record.clone())
                    .map(|()| record)
                    .map_err(|e| e.to_string())
            }
        };
        match record {
            Ok(record) => {
                self.fresh.push((*i, record));
                Ok(())
            }
            Err(e) => {
                self.errors += 1;
                Err(format!("{}: {e}", r.id))
            }
        }
    }
}

impl<'s> Workbench<'s> {
    /// A workbench measuring with `config` in `sandbox`, one worker per entry of `cpus` (see
    /// [`crate::worker_cpus`]), caching references in `cache`; raising `stop` ends it after
    /// the runs in progress. Builds the harness's scripts.
    pub fn new(
        sandbox: &'s Sandbox,
        config: HarnessConfig,
        cache: CalibrationCache,
        cpus: Vec<Option<usize>>,
        stop: StopFlag,
    ) -> Result<Self, HarnessError> {
        let protocol = config.protocol_id();
        let harness = Harness::new(sandbox, config)?;
        Ok(Workbench {
            harness,
            cache,
            fingerprint: machine_fingerprint(sandbox),
            protocol,
            cpus: if cpus.is_empty() { vec![None] } else { cpus },
            stop,
        })
    }

    /// The harness.
    pub fn harness(&self) -> &Harness<'s> {
        &self.harness
    }

    /// The calibration cache.
    pub fn cache(&self) -> &CalibrationCache {
        &self.cache
    }

    /// This machine's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The protocol id ([`HarnessConfig::protocol_id`]).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// The workers' cores (`None`: the sandbox picks).
    pub fn cpus(&self) -> &[Option<usize>] {
        &self.cpus
    }

    /// The flag that stops it.
    pub fn stop_flag(&self) -> &StopFlag {
        &self.stop
    }

    /// Whether it was asked to stop.
    pub fn stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Measures `subjects` with the protocol in rounds on the workers (stage `what` for the
    /// observer); see [`Harness::measure_rounds`].
    pub fn measure(
        &self,
        subjects: &[Subject<'_>],
        what: &str,
        observer: &mut dyn Observer,
    ) -> Vec<SubjectRuns> {
        let settings = self.harness.config().run_settings();
        let rounds = Rounds {
            settings: &settings,
            cpus: &self.cpus,
            stop: &self.stop,
            observer,
            what,
        };
        self.harness.measure_rounds(subjects, rounds, &mut Discard)
    }

    /// Prepares the suites of `problems` and measures their references (at most
    /// `max_solutions` each, verified ones first) that are not cached yet.
    pub fn calibrate<'p>(
        &self,
        problems: &[&'p Problem],
        max_solutions: Option<usize>,
        observer: &mut dyn Observer,
    ) -> (Vec<Calibrated<'p>>, CalibrationTotals) {
        self.prepare_problems(problems, max_solutions, true, observer)
    }

    /// Prepares the suites of `problems` and collects their references' cached records,
    /// measuring nothing.
    pub fn prepare<'p>(
        &self,
        problems: &[&'p Problem],
        max_solutions: Option<usize>,
        observer: &mut dyn Observer,
    ) -> (Vec<Calibrated<'p>>, CalibrationTotals) {
        self.prepare_problems(problems, max_solutions, false, observer)
    }

    fn prepare_problems<'p>(
        &self,
        problems: &[&'p Problem],
        max_solutions: Option<usize>,
        measure: bool,
        observer: &mut dyn Observer,
    ) -> (Vec<Calibrated<'p>>, CalibrationTotals) {
        let start = Instant::now();
        let mut totals = CalibrationTotals::default();
        let mut out: Vec<Calibrated<'p>> = problems
            .iter()
            .map(|&problem| Calibrated {
                problem,
                suite: None,
                error: None,
                records: Vec::new(),
                cached: 0,
            })
            .collect();

        observer.stage("suites", problems.len());
        parallel(
            problems,
            &self.cpus,
            &self.stop,
            |p, cpu| self.harness.suite(p, cpu),
            |i, result| {
                observer.advance(1);
                match result {
                    Ok(suite) => {
                        for d in &suite.dropped {
                            observer.say(&format!(
                                "note: {}: stress input {:?} dropped: {}",
                                problems[i].id, d.origin, d.reason
                            ));
                        }
                        out[i].suite = Some(suite);
                    }
                    Err(e) => {
                        observer.say(&format!(
                            "error: {}: cannot prepare its tests: {e}",
                            problems[i].id
                        ));
                        out[i].error = Some(e.to_string());
                        totals.errors += 1;
                    }
                }
            },
        );
        observer.stage_done();

        // Every reference to measure, or its cached record.
        let mut jobs: Vec<(usize, &ReferenceSolution, CalibrationKey)> = Vec::new();
        for (i, c) in out.iter_mut().enumerate() {
            let Some(suite) = &c.suite else { continue };
            let digest = suite.digest();
            for r in selected_references(c.problem, max_solutions) {
                let key = CalibrationKey::new(
                    &c.problem.id,
                    &r.id,
                    &r.code,
                    &digest,
                    &self.fingerprint,
                    &self.protocol,
                );
                match self.cache.get(&key) {
                    Some(record) => {
                        c.records.push(record);
                        c.cached += 1;
                        totals.cached += 1;
                    }
                    None => jobs.push((i, r, key)),
                }
            }
        }

        if !measure {
            jobs.clear();
        }
        let subjects: Vec<Subject> = jobs
            .iter()
            .filter_map(|(i, r, key)| {
                Some(Subject {
                    submission: Submission::new(problems[*i], r.language, &r.code),
                    suite: out[*i].suite.as_ref()?,
                    done: self.cache.runs(key),
                })
            })
            .collect();
        totals.resumed_runs = subjects.iter().map(|s| s.done.len()).sum();
        let settings = self.harness.config().run_settings();
        let mut sink = CalibrationSink {
            cache: &self.cache,
            jobs: &jobs,
            repeats: settings.repeats,
            fresh: Vec::new(),
            errors: 0,
        };
        let rounds = Rounds {
            settings: &settings,
            cpus: &self.cpus,
            stop: &self.stop,
            observer,
            what: "references",
        };
        let state = self.harness.measure_rounds(&subjects, rounds, &mut sink);
        totals.errors += sink.errors;
        totals.runs = state
            .iter()
            .zip(&subjects)
            .map(|(st, s)| st.runs.len() - s.done.len())
            .sum();
        totals.measured = sink.fresh.len();
        for (i, record) in sink.fresh {
            out[i].records.push(record);
        }
        totals.failed = out
            .iter()
            .flat_map(|c| &c.records)
            .filter(|r| !r.passed)
            .count();
        totals.elapsed_s = start.elapsed().as_secs_f64();
        totals.interrupted = self.stopped();
        (out, totals)
    }
}
