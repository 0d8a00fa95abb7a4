//! `afterburner calibrate`: measure a dataset's reference solutions on this machine, with the
//! same protocol as candidates, and cache the results (resumable, parallel, interruptible).
//! The calibration itself is [`Workbench::calibrate`]; this module parses, shows and prints.

use std::path::Path;
use std::process::ExitCode;

use afterburner_benchmarks::{CalibrationTotals, Suite, Workbench, machine_description};
use afterburner_sandbox::{Sandbox, Status};
use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::args::{ProblemArgs, ProtocolArgs, select_problems};
use crate::dataset::load_dataset;
use crate::interrupt::stop_flag;
use crate::progress::Bars;

/// Arguments of `afterburner calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub problems: ProblemArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Print one JSON object summarising the calibration on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct FailedReference<'a> {
    id: &'a str,
    status: Status,
    detail: Option<&'a str>,
}

/// `calibrate --json`: the whole calibration (a stable contract; printed with its keys sorted).
#[derive(Serialize)]
struct CalibrationSummary<'a> {
    dataset: &'a str,
    cache: &'a Path,
    fingerprint: &'a str,
    protocol: &'a str,
    workers: usize,
    totals: &'a CalibrationTotals,
    problems: &'a [ProblemSummary<'a>],
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
    let dataset = load_dataset(&args.problems.dataset)?;
    let problems = select_problems(&dataset.problems, &args.problems.problem_ids)?;
    let sandbox = Sandbox::new()?;
    let bench: Workbench = args.protocol.workbench(&sandbox, stop_flag())?;
    eprintln!(
        "calibrating {} problems on {} worker(s); machine {} ({}); cache {}",
        problems.len(),
        bench.cpus().len(),
        bench.fingerprint(),
        machine_description(&sandbox),
        bench.cache().path().display()
    );
    let (calibrated, totals) =
        bench.calibrate(&problems, args.problems.max_solutions, &mut Bars::default());
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
        let summary = CalibrationSummary {
            dataset: &args.problems.dataset,
            cache: bench.cache().path(),
            fingerprint: bench.fingerprint(),
            protocol: bench.protocol(),
            workers: bench.cpus().len(),
            totals: &totals,
            problems: &summaries,
        };
        println!("{}", serde_json::to_value(&summary)?);
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
