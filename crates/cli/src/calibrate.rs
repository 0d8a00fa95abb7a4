//! `afterburner calibrate`: measure a dataset's reference solutions on this machine, with the
//! same protocol as candidates, and cache the results (resumable, parallel, interruptible).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, mpsc};
use std::time::{Duration, Instant};

use afterburner_benchmarks::calibration::default_cache_dir;
use afterburner_benchmarks::{
    CalibrationCache, CalibrationKey, CalibrationRecord, CalibrationRun, Evaluation, Harness,
    HarnessConfig, Problem, RecordedPerformance, ReferenceSolution, RunOutcome, Suite,
    machine_description, machine_fingerprint,
};
use afterburner_sandbox::{Language, Limits, Sandbox, Status};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::dataset::load_dataset;

/// Set when the user pressed Ctrl-C: workers finish their current run and take no new one.
static STOP: AtomicBool = AtomicBool::new(false);

/// Whether the user asked to stop.
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Installs the Ctrl-C handler once: the first press stops cleanly, the second exits at once.
pub fn install_interrupt_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let result = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting now");
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: finishing the runs in progress (results so far are saved); \
                 press Ctrl-C again to quit at once"
            );
        });
        if let Err(e) = result {
            eprintln!(
                "warning: cannot handle Ctrl-C ({e}); interrupting may lose the run in progress"
            );
        }
    });
}

/// The measurement protocol and where results are cached (shared by `calibrate` and `eval`).
#[derive(Debug, Args)]
pub struct ProtocolArgs {
    /// Cache folder [default: $XDG_CACHE_HOME/afterburner or ~/.cache/afterburner].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Runs per solution; figures are medians and a solution must pass every run.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Wall and CPU time limit of one run over all of a problem's tests, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub time_limit: f64,
    /// Memory limit of one run in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_limit: u64,
    /// Parallel workers, each pinned to its own core [default: every core but the sampler's].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seed of the stress-input generators.
    #[arg(long, default_value_t = HarnessConfig::default().stress_seed)]
    pub stress_seed: u64,
}

impl ProtocolArgs {
    /// The cache folder to use.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        match &self.cache {
            Some(dir) => Ok(dir.clone()),
            None => default_cache_dir()
                .context("no cache folder: set XDG_CACHE_HOME or HOME, or pass --cache DIR"),
        }
    }

    /// The harness settings these options describe.
    pub fn harness_config(&self) -> Result<HarnessConfig> {
        if !(1..=100).contains(&self.repeats) {
            bail!("--repeats must be in [1, 100], got {}", self.repeats);
        }
        let defaults = HarnessConfig::default();
        let limits = Limits {
            output_bytes: defaults.limits.output_bytes,
            ..Limits::default()
        }
        .with_time_limit_secs(self.time_limit)?
        .with_memory_limit_mib(self.memory_limit)?;
        Ok(HarnessConfig {
            limits,
            repeats: self.repeats,
            stress_seed: self.stress_seed,
            cache_dir: Some(self.cache_dir()?),
            ..defaults
        })
    }
}

/// Arguments of `afterburner calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The dataset, as FORMAT:PATH (venus, venus-<language>, apps, coffe, leetcode, enamel).
    #[arg(long)]
    pub dataset: String,
    /// Only this problem (repeatable).
    #[arg(long = "problem-id", value_name = "ID")]
    pub problem_ids: Vec<String>,
    /// Measure at most N reference solutions per problem (verified ones first).
    #[arg(long, value_name = "N")]
    pub max_solutions: Option<usize>,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Print one JSON object summarising the calibration on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Everything measuring needs: sandbox, harness, cache, and where this machine stands.
pub struct Context<'s> {
    /// The harness (its sandbox inside).
    pub harness: Harness<'s>,
    /// The calibration cache.
    pub cache: CalibrationCache,
    /// This machine's fingerprint.
    pub fingerprint: String,
    /// The protocol id.
    pub protocol: String,
    /// Cores of the workers (`None`: let the sandbox pick).
    pub cpus: Vec<Option<usize>>,
}

impl<'s> Context<'s> {
    /// Opens the cache and builds the harness for these options.
    pub fn new(sandbox: &'s Sandbox, args: &ProtocolArgs) -> Result<Self> {
        let config = args.harness_config()?;
        let cache_dir = args.cache_dir()?;
        let cache = CalibrationCache::open(&cache_dir).with_context(|| {
            format!(
                "cannot open the calibration cache in {}",
                cache_dir.display()
            )
        })?;
        for issue in &cache.issues {
            eprintln!("warning: {issue}");
        }
        let protocol = config.protocol_id();
        let harness = Harness::new(sandbox, config)?;
        let caps = sandbox.capabilities();
        for w in &caps.warnings {
            eprintln!("warning: {w}");
        }
        let mut cpus: Vec<Option<usize>> = caps
            .cpus
            .iter()
            .copied()
            .filter(|&c| Some(c) != caps.supervisor_cpu)
            .map(Some)
            .collect();
        if cpus.is_empty() {
            cpus.push(None);
        }
        if let Some(n) = args.workers {
            if n == 0 {
                bail!("--workers must be at least 1");
            }
            cpus.truncate(n);
        }
        Ok(Context {
            harness,
            cache,
            fingerprint: machine_fingerprint(sandbox),
            protocol,
            cpus,
        })
    }
}

/// Runs `f` on every item on the workers (each pinned to its core), handing results to
/// `on_done` on this thread as they complete. Stops taking items once interrupted.
pub fn parallel<T: Sync, R: Send>(
    items: &[T],
    cpus: &[Option<usize>],
    f: impl Fn(&T, Option<usize>) -> R + Sync,
    mut on_done: impl FnMut(usize, R),
) {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for &cpu in cpus.iter().take(items.len().max(1)) {
            let tx = tx.clone();
            let (next, f) = (&next, &f);
            s.spawn(move || {
                while !interrupted() {
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

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    if pb.is_hidden() && len > 0 {
        let every = std::env::var(PLAIN_PROGRESS_VAR)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(Duration::from_secs(60), Duration::from_secs_f64);
        plain_progress(&pb, every);
    }
    pb
}

/// Environment variable: seconds between plain progress lines when stderr is not a terminal
/// (default 60).
pub const PLAIN_PROGRESS_VAR: &str = "AFTERBURNER_PROGRESS_SECS";

/// Writes `pb`'s progress as a plain line on stderr every `every` until it is finished or
/// dropped (for logs of long runs, where the bar is not drawn).
fn plain_progress(pb: &ProgressBar, every: Duration) {
    let weak = pb.downgrade();
    std::thread::spawn(move || {
        let mut last = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let Some(pb) = weak.upgrade() else { break };
            if pb.is_finished() {
                break;
            }
            if last.elapsed() < every {
                continue;
            }
            last = Instant::now();
            let (pos, len) = (pb.position(), pb.length().unwrap_or(0));
            eprintln!(
                "{}: {pos}/{len} ({:.1}%), {} elapsed, eta {} {}",
                pb.prefix(),
                100.0 * pos as f64 / len.max(1) as f64,
                indicatif::HumanDuration(pb.elapsed()),
                indicatif::HumanDuration(pb.eta()),
                pb.message()
            );
        }
    });
}

/// Prints a line above the progress bar, or plainly on stderr when the bar is not drawn
/// (stderr is not a terminal).
pub fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// A solution to measure with the protocol.
pub struct Subject<'a> {
    /// Its problem.
    pub problem: &'a Problem,
    /// The problem's suite.
    pub suite: &'a Suite,
    /// Its language.
    pub language: Language,
    /// Its source.
    pub code: &'a str,
    /// Runs made earlier (resumed from a cache), in round order.
    pub done: Vec<RunOutcome>,
}

/// A subject's runs after [`measure_interleaved`].
#[derive(Debug, Default)]
pub struct SubjectRuns {
    /// Every run in round order, resumed ones first.
    pub runs: Vec<RunOutcome>,
    /// The judged first run, when it was made now.
    pub first: Option<Evaluation>,
    /// Why the harness could not run it.
    pub error: Option<String>,
}

impl SubjectRuns {
    /// Whether nothing is left to run: all `repeats` runs made, a run failed, or an error.
    pub fn complete(&self, repeats: usize) -> bool {
        self.error.is_some() || self.runs.len() >= repeats || self.runs.iter().any(|r| !r.passed())
    }
}

/// Measures `subjects` with `repeats` runs each, in rounds: round `r` runs once every subject
/// that passed its first `r` runs, so the runs of one solution are spread over the whole
/// measurement and a burst of machine noise falls on one run of many solutions (which the
/// medians absorb) instead of on every run of one. `on_run(i, round, outcome)` sees each run of
/// an unfinished subject as it completes, `on_complete(i, runs)` each subject with nothing left
/// to run; both on this thread, and an error they return is printed at once. Stops after the
/// runs in progress when interrupted.
pub fn measure_interleaved(
    ctx: &Context<'_>,
    subjects: &[Subject<'_>],
    what: &str,
    mut on_run: impl FnMut(usize, usize, &RunOutcome) -> Result<(), String>,
    mut on_complete: impl FnMut(usize, &SubjectRuns) -> Result<(), String>,
) -> Vec<SubjectRuns> {
    let repeats = ctx.harness.config().repeats.max(1);
    let mut state: Vec<SubjectRuns> = subjects
        .iter()
        .map(|s| SubjectRuns {
            runs: s.done.clone(),
            ..SubjectRuns::default()
        })
        .collect();
    let left = state
        .iter()
        .filter(|st| !st.complete(repeats))
        .map(|st| repeats - st.runs.len())
        .sum();
    let pb = progress(left, what);
    for (i, st) in state.iter().enumerate() {
        if st.complete(repeats)
            && let Err(e) = on_complete(i, st)
        {
            say(&pb, format!("error: {e}"));
        }
    }
    for round in 0..repeats {
        if interrupted() {
            break;
        }
        let todo: Vec<usize> = (0..state.len())
            .filter(|&i| !state[i].complete(repeats) && state[i].runs.len() == round)
            .collect();
        pb.set_message(format!("round {} of {repeats}", round + 1));
        parallel(
            &todo,
            &ctx.cpus,
            |&i, cpu| {
                let s = &subjects[i];
                ctx.harness
                    .evaluate(s.problem, s.suite, s.language, s.code, cpu)
            },
            |k, result| {
                let i = todo[k];
                let st = &mut state[i];
                pb.inc(1);
                match result {
                    Ok(evaluation) => {
                        let outcome = RunOutcome::from(&evaluation);
                        if st.runs.is_empty() {
                            st.first = Some(evaluation);
                        }
                        st.runs.push(outcome);
                        if !st.complete(repeats)
                            && let Err(e) = on_run(i, round, &st.runs[round])
                        {
                            say(&pb, format!("error: {e}"));
                        }
                    }
                    Err(e) => st.error = Some(e.to_string()),
                }
                if st.complete(repeats) {
                    pb.inc(repeats.saturating_sub(round + 1) as u64);
                    if let Err(e) = on_complete(i, st) {
                        say(&pb, format!("error: {e}"));
                    }
                }
            },
        );
    }
    pb.finish_and_clear();
    state
}

/// A problem after calibration: its suite and its references' records.
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

/// Totals of one calibration.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
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

/// Prepares the suites of `problems` and measures their references (what is not cached yet).
pub fn calibrate_problems<'p>(
    ctx: &Context<'_>,
    problems: &[&'p Problem],
    max_solutions: Option<usize>,
) -> (Vec<Calibrated<'p>>, Totals) {
    prepare_problems(ctx, problems, max_solutions, true)
}

/// Prepares the suites of `problems` and collects their references' cached records; with
/// `measure`, also measures the references not cached yet.
pub fn prepare_problems<'p>(
    ctx: &Context<'_>,
    problems: &[&'p Problem],
    max_solutions: Option<usize>,
    measure: bool,
) -> (Vec<Calibrated<'p>>, Totals) {
    let start = Instant::now();
    let mut totals = Totals::default();
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

    let pb = progress(problems.len(), "suites");
    parallel(
        problems,
        &ctx.cpus,
        |p, cpu| ctx.harness.suite(p, cpu),
        |i, result| {
            pb.inc(1);
            match result {
                Ok(suite) => {
                    for d in &suite.dropped {
                        say(
                            &pb,
                            format!(
                                "note: {}: stress input {:?} dropped: {}",
                                problems[i].id, d.origin, d.reason
                            ),
                        );
                    }
                    out[i].suite = Some(suite);
                }
                Err(e) => {
                    say(
                        &pb,
                        format!("error: {}: cannot prepare its tests: {e}", problems[i].id),
                    );
                    out[i].error = Some(e.to_string());
                    totals.errors += 1;
                }
            }
        },
    );
    pb.finish_and_clear();

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
                &ctx.fingerprint,
                &ctx.protocol,
            );
            match ctx.cache.get(&key) {
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
                problem: problems[*i],
                suite: out[*i].suite.as_ref()?,
                language: r.language,
                code: &r.code,
                done: ctx.cache.runs(key),
            })
        })
        .collect();
    totals.resumed_runs = subjects.iter().map(|s| s.done.len()).sum();
    let repeats = ctx.harness.config().repeats;
    let mut fresh: Vec<(usize, CalibrationRecord)> = Vec::new();
    let errors = std::cell::Cell::new(0);
    let state = measure_interleaved(
        ctx,
        &subjects,
        "references",
        |k, round, outcome| {
            let (_, _, key) = &jobs[k];
            let run = CalibrationRun {
                key: key.clone(),
                round,
                outcome: outcome.clone(),
            };
            ctx.cache.append_run(run).map_err(|e| {
                errors.set(errors.get() + 1);
                format!("cannot save a run of {}: {e}", key.solution_id)
            })
        },
        |k, runs| {
            let (i, r, key) = &jobs[k];
            let record = match &runs.error {
                Some(e) => Err(e.clone()),
                None => {
                    let record =
                        CalibrationRecord::from_runs(key.clone(), r.language, &runs.runs, repeats);
                    ctx.cache
                        .append(record.clone())
                        .map(|()| record)
                        .map_err(|e| e.to_string())
                }
            };
            match record {
                Ok(record) => {
                    fresh.push((*i, record));
                    Ok(())
                }
                Err(e) => {
                    errors.set(errors.get() + 1);
                    Err(format!("{}: {e}", r.id))
                }
            }
        },
    );
    totals.errors += errors.get();
    totals.runs = state
        .iter()
        .zip(&subjects)
        .map(|(st, s)| st.runs.len() - s.done.len())
        .sum();
    totals.measured = fresh.len();
    for (i, record) in fresh {
        out[i].records.push(record);
    }
    totals.failed = out
        .iter()
        .flat_map(|c| &c.records)
        .filter(|r| !r.passed)
        .count();
    totals.elapsed_s = start.elapsed().as_secs_f64();
    totals.interrupted = interrupted();
    (out, totals)
}

/// The problems of `dataset` named by `ids` (all when empty); unknown ids are an error.
pub fn select_problems<'d>(problems: &'d [Problem], ids: &[String]) -> Result<Vec<&'d Problem>> {
    if ids.is_empty() {
        return Ok(problems.iter().collect());
    }
    ids.iter()
        .map(|id| {
            problems
                .iter()
                .find(|p| &p.id == id)
                .with_context(|| format!("--problem-id `{id}`: no such problem in the dataset"))
        })
        .collect()
}

#[derive(Serialize)]
struct FailedReference<'a> {
    id: &'a str,
    status: Status,
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct ProblemSummary<'a> {
    id: &'a str,
    references: usize,
    passing: usize,
    cached: usize,
    stress_tests: usize,
    dropped_stress: usize,
    median_time_ms: Option<f64>,
    error: Option<&'a str>,
    failed: Vec<FailedReference<'a>>,
}

/// Runs `afterburner calibrate`.
pub fn calibrate(args: CalibrateArgs) -> Result<ExitCode> {
    let dataset = load_dataset(&args.dataset)?;
    let problems = select_problems(&dataset.problems, &args.problem_ids)?;
    let sandbox = Sandbox::new()?;
    let ctx = Context::new(&sandbox, &args.protocol)?;
    install_interrupt_handler();
    eprintln!(
        "calibrating {} problems on {} worker(s); machine {} ({}); cache {}",
        problems.len(),
        ctx.cpus.len(),
        ctx.fingerprint,
        machine_description(&sandbox),
        ctx.cache.path().display()
    );
    let (calibrated, totals) = calibrate_problems(&ctx, &problems, args.max_solutions);
    let summaries: Vec<ProblemSummary> = calibrated
        .iter()
        .map(|c| {
            let times: Vec<f64> = c.distribution().iter().map(|p| p.time_ms).collect();
            ProblemSummary {
                id: &c.problem.id,
                references: c.records.len(),
                passing: times.len(),
                cached: c.cached,
                stress_tests: c.suite.as_ref().map_or(0, Suite::stress_cases),
                dropped_stress: c.suite.as_ref().map_or(0, |s| s.dropped.len()),
                median_time_ms: (!times.is_empty()).then(|| afterburner_sandbox::median(&times)),
                error: c.error.as_deref(),
                failed: c
                    .records
                    .iter()
                    .filter(|r| !r.passed)
                    .map(|r| FailedReference {
                        id: &r.key.solution_id,
                        status: r.status,
                        detail: r.detail.as_deref(),
                    })
                    .collect(),
            }
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "dataset": args.dataset,
                "cache": ctx.cache.path(),
                "fingerprint": ctx.fingerprint,
                "protocol": ctx.protocol,
                "workers": ctx.cpus.len(),
                "totals": totals,
                "problems": summaries,
            })
        );
    } else {
        let width = summaries
            .iter()
            .map(|s| s.id.len())
            .max()
            .unwrap_or(2)
            .max(2);
        println!(
            "{:<width$}  {:>7}  {:>7}  {:>6}  {:>12}",
            "problem", "refs", "passing", "cached", "median ms"
        );
        for s in &summaries {
            println!(
                "{:<width$}  {:>7}  {:>7}  {:>6}  {:>12}",
                s.id,
                s.references,
                s.passing,
                s.cached,
                s.median_time_ms
                    .map_or("-".to_string(), |t| format!("{t:.1}"))
            );
            if let Some(e) = s.error {
                println!("    error: {e}");
            }
            for f in &s.failed {
                println!(
                    "    {} {}: {}",
                    f.id,
                    f.status,
                    f.detail.unwrap_or("").chars().take(200).collect::<String>()
                );
            }
        }
        println!(
            "{} measured, {} cached, {} not passing, {} errors in {:.1} s{}",
            totals.measured,
            totals.cached,
            totals.failed,
            totals.errors,
            totals.elapsed_s,
            if totals.interrupted {
                " (interrupted: re-run to resume)"
            } else {
                ""
            }
        );
    }
    Ok(if totals.interrupted {
        ExitCode::from(130)
    } else if totals.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
