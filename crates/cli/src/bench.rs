//! `afterburner bench`: experiments about the measurements themselves. `bench stability`
//! calibrates the same reference solutions twice, in separate caches, and compares the two
//! ([`afterburner_benchmarks::stability`]): how far percentiles, figures and orders move between
//! two independent evaluations of identical code. `bench compare A B` compares two calibration
//! caches made earlier.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use afterburner_benchmarks::calibration::read_records;
use afterburner_benchmarks::harness::PROBE_FILE;
use afterburner_benchmarks::stability::{StabilityReport, compare};
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::args::{ProblemArgs, ProtocolArgs};
use crate::calibrate::{CalibrateArgs, calibrate};

/// Arguments of `afterburner bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The experiments of `afterburner bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Calibrate the same references twice (OUT/first, OUT/second) and compare: percentile,
    /// figure and order changes per objective, pass/fail flips. Resumable: re-run to finish.
    Stability(StabilityArgs),
    /// Compare two calibration caches of the same references, made earlier.
    Compare(CompareArgs),
}

/// Arguments of `afterburner bench stability`.
#[derive(Debug, Args)]
pub struct StabilityArgs {
    #[command(flatten)]
    pub problems: ProblemArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Folder of the experiment: the two calibration caches (first/, second/) and the report
    /// (stability.md, stability.json). `--cache` is not used.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Arguments of `afterburner bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The first calibration cache folder (holding calibration.jsonl).
    pub first: PathBuf,
    /// The second one.
    pub second: PathBuf,
    /// Print the report as one JSON object instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// Runs `afterburner bench`.
pub fn bench(args: BenchArgs) -> Result<ExitCode> {
    match args.command {
        BenchCommand::Stability(args) => stability(args),
        BenchCommand::Compare(args) => {
            let report = compare_caches(&args.first, &args.second)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.markdown());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn stability(args: StabilityArgs) -> Result<ExitCode> {
    if args.protocol.cache.is_some() {
        bail!(
            "bench stability keeps its two calibrations under --out ({}): drop --cache",
            args.out.display()
        );
    }
    let first = args.out.join("first");
    let second = args.out.join("second");
    for (name, dir) in [("first", &first), ("second", &second)] {
        if name == "second" {
            share_stress_suites(&first, &second)?;
        }
        eprintln!("bench stability: {name} calibration into {}", dir.display());
        let code = calibrate(CalibrateArgs {
            problems: args.problems.clone(),
            protocol: ProtocolArgs {
                cache: Some(dir.clone()),
                ..args.protocol.clone()
            },
            json: false,
        })?;
        if code != ExitCode::SUCCESS {
            eprintln!(
                "bench stability: the {name} calibration did not finish cleanly; re-run the same \
                 command to resume it"
            );
            return Ok(code);
        }
    }
    let report = compare_caches(&first, &second)?;
    let markdown = report.markdown();
    let md_path = args.out.join("stability.md");
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    let json_path = args.out.join("stability.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!();
    print!("{markdown}");
    eprintln!(
        "bench stability: report written to {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Copies the stress suites the first calibration generated (inputs and expected outputs, not
/// measurements) to the second, so both judge the same inputs and the second does not spend its
/// time regenerating them, and the drift probe's baseline, so both express times in the same
/// units as a machine's one cache folder would. Files already there are kept.
fn share_stress_suites(first: &Path, second: &Path) -> Result<()> {
    let probe = first.join(PROBE_FILE);
    let probe_to = second.join(PROBE_FILE);
    if probe.exists() && !probe_to.exists() {
        std::fs::create_dir_all(second)
            .with_context(|| format!("cannot create {}", second.display()))?;
        std::fs::copy(&probe, &probe_to).with_context(|| {
            format!("cannot copy {} to {}", probe.display(), probe_to.display())
        })?;
    }
    let from = first.join("stress");
    let to = second.join("stress");
    let Ok(entries) = std::fs::read_dir(&from) else {
        return Ok(()); // no stress suites (a dataset without stress inputs)
    };
    std::fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", from.display()))?;
        let target = to.join(entry.file_name());
        if !target.exists() {
            std::fs::copy(entry.path(), &target).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    entry.path().display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Reads both caches' records and compares them.
fn compare_caches(first: &Path, second: &Path) -> Result<StabilityReport> {
    Ok(compare(&read_records(first)?, &read_records(second)?))
}
