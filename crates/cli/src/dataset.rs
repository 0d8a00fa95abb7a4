//! `afterburner dataset ls`: what a dataset holds.

use std::process::ExitCode;

use afterburner_benchmarks::harness::planned_stress_inputs;
use afterburner_benchmarks::{Dataset, DatasetSpec};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

/// Arguments of `afterburner dataset`.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Debug, Subcommand)]
enum DatasetCommand {
    /// List the problems of a dataset with their test, stress-input and solution counts.
    Ls(LsArgs),
}

/// Arguments of `afterburner dataset ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The dataset, as FORMAT:PATH (venus, venus-<language>, apps, coffe, leetcode, enamel).
    #[arg(long)]
    dataset: String,
    /// Print one JSON array of {id, title, tests, stress_tests, solutions} on stdout.
    #[arg(long)]
    json: bool,
}

/// One row of `dataset ls --json` (a stable contract).
#[derive(Debug, Serialize)]
struct Row<'a> {
    id: &'a str,
    title: &'a str,
    tests: usize,
    stress_tests: usize,
    solutions: usize,
}

/// Loads `FORMAT:PATH` and prints its load report (skips, warnings) to stderr.
pub fn load_dataset(spec: &str) -> Result<Dataset> {
    let spec: DatasetSpec = spec
        .parse()
        .with_context(|| format!("--dataset `{spec}`"))?;
    let dataset = spec
        .load()
        .with_context(|| format!("cannot load dataset {spec}"))?;
    eprintln!("dataset {spec}: {}", dataset.report);
    Ok(dataset)
}

/// Runs `afterburner dataset ...`.
pub fn dataset(args: DatasetArgs) -> Result<ExitCode> {
    match args.command {
        DatasetCommand::Ls(args) => ls(args),
    }
}

fn ls(args: LsArgs) -> Result<ExitCode> {
    let dataset = load_dataset(&args.dataset)?;
    let rows: Vec<Row> = dataset
        .problems
        .iter()
        .map(|p| Row {
            id: &p.id,
            title: &p.title,
            tests: p.tests.len(),
            stress_tests: planned_stress_inputs(p),
            solutions: p.references.len(),
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|r| r.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<width$}  {:>6}  {:>6}  {:>9}  title",
        "id", "tests", "stress", "solutions"
    );
    for r in &rows {
        let title: String = r.title.chars().take(60).collect();
        println!(
            "{:<width$}  {:>6}  {:>6}  {:>9}  {title}",
            r.id, r.tests, r.stress_tests, r.solutions
        );
    }
    println!(
        "{} problems, {} tests, {} stress inputs, {} solutions",
        rows.len(),
        rows.iter().map(|r| r.tests).sum::<usize>(),
        rows.iter().map(|r| r.stress_tests).sum::<usize>(),
        rows.iter().map(|r| r.solutions).sum::<usize>()
    );
    Ok(ExitCode::SUCCESS)
}
