//! `afterburner eval`: pass@1 and Beyond-T/M/I of a solutions file against calibrated
//! references. Calibration, measurement and scoring are the benchmarks crate's
//! ([`Workbench::calibrate`], [`Workbench::measure_candidates`], [`Scores::of`]); this module
//! reads the solutions file, shows progress and prints.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use afterburner_benchmarks::metrics::{
    BootstrapConfig, BucketCounts, Estimate, Objective, Summary, summarize,
};
use afterburner_benchmarks::{Candidate, EvalRow, Problem, Scores, Workbench};
use afterburner_sandbox::{Language, Sandbox};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::args::{ProblemArgs, ProtocolArgs, select_problems};
use crate::dataset::load_dataset;
use crate::interrupt::stop_flag;
use crate::progress::Bars;

/// Arguments of `afterburner eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub problems: ProblemArgs,
    /// JSONL file, one solution per line: {"problem_id", "code", "language" (default python)}.
    #[arg(long, value_name = "FILE.jsonl")]
    pub solutions: PathBuf,
    /// Write one JSON line per solution (verdicts, measurements, percentiles) to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object with the metrics and their intervals on stdout.
    #[arg(long)]
    pub json: bool,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
}

/// A line of the solutions file that could not be used.
#[derive(Debug, Clone, Serialize)]
struct Malformed {
    line: usize,
    reason: String,
}

/// Reads the solutions file; bad lines are returned with their number and reason.
fn read_solutions(
    path: &PathBuf,
    known: &dyn Fn(&str) -> bool,
) -> Result<(Vec<Candidate>, Vec<Malformed>)> {
    let file = File::open(path)
        .with_context(|| format!("cannot open solutions file {}", path.display()))?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line_no = n + 1;
        let bytes = line.with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            bad.push(Malformed {
                line: line_no,
                reason: "not UTF-8 text".into(),
            });
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(text, known) {
            Ok((problem_id, code, language)) => ok.push(Candidate {
                line: line_no,
                problem_id,
                code,
                language,
            }),
            Err(reason) => bad.push(Malformed {
                line: line_no,
                reason,
            }),
        }
    }
    Ok((ok, bad))
}

fn parse_line(
    text: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<(String, String, Language), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("not a JSON object".into());
    };
    let field = |name: &str| -> Result<String, String> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) if name == "problem_id" => Ok(n.to_string()),
            Some(other) => Err(format!("`{name}` is not a string: {other}")),
            None => Err(format!("missing `{name}`")),
        }
    };
    let problem_id = field("problem_id")?;
    let code = field("code")?;
    let language = match obj.get("language") {
        None | Some(Value::Null) => Language::Python,
        Some(Value::String(s)) => s.parse::<Language>().map_err(|e| e.to_string())?,
        Some(other) => return Err(format!("`language` is not a string: {other}")),
    };
    if !known(&problem_id) {
        return Err(format!(
            "unknown problem id `{problem_id}` (not in the evaluated problems)"
        ));
    }
    Ok((problem_id, code, language))
}

/// Counts per bucket, as `eval --json` writes them.
#[derive(Serialize)]
struct BucketsJson {
    #[serde(rename = "B")]
    best: usize,
    #[serde(rename = "F")]
    failed: usize,
    #[serde(rename = "M")]
    middle: usize,
    #[serde(rename = "W")]
    worst: usize,
}

impl From<BucketCounts> for BucketsJson {
    fn from(b: BucketCounts) -> Self {
        BucketsJson {
            best: b.best,
            failed: b.failed,
            middle: b.middle,
            worst: b.worst,
        }
    }
}

/// One value per metric, as `eval --json` writes them.
#[derive(Serialize)]
struct PerMetric<T> {
    beyond_i: T,
    beyond_m: T,
    beyond_t: T,
    pass_at_1: T,
}

/// One value per objective, as `eval --json` writes them.
#[derive(Serialize)]
struct PerObjective<T> {
    integral: T,
    memory: T,
    time: T,
}

/// `eval --json`: the metrics with their intervals (a stable contract; printed with its keys
/// sorted).
#[derive(Serialize)]
struct EvalSummary<'a> {
    dataset: &'a str,
    problems: usize,
    solutions: usize,
    pass_at_1: f64,
    beyond_t: f64,
    beyond_m: f64,
    beyond_i: f64,
    confidence: f64,
    intervals: PerMetric<[f64; 2]>,
    buckets: PerObjective<BucketsJson>,
    missing: &'a [String],
    excluded: &'a [String],
    malformed: &'a [Malformed],
    fingerprint: &'a str,
    protocol: &'a str,
    /// Beyond-Instr, when instructions were counted (`--count-instructions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    beyond_instr: Option<f64>,
}

fn interval(e: &Estimate) -> [f64; 2] {
    [e.low, e.high]
}

/// Runs `afterburner eval`.
pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    let dataset = load_dataset(&args.problems.dataset)?;
    let problems = select_problems(&dataset.problems, &args.problems.problem_ids)?;
    let in_scope = |id: &str| problems.iter().any(|p| p.id == id);
    let (candidates, malformed) = read_solutions(&args.solutions, &in_scope)?;
    for m in &malformed {
        eprintln!(
            "{}:{}: skipped: {}",
            args.solutions.display(),
            m.line,
            m.reason
        );
    }
    let sandbox = Sandbox::new()?;
    let bench: Workbench = args.protocol.workbench(&sandbox, stop_flag())?;

    eprintln!(
        "calibrating the references of {} problems on {} worker(s)",
        problems.len(),
        bench.cpus().len()
    );
    let mut bars = Bars::default();
    let (calibrated, totals) = bench.calibrate(&problems, args.problems.max_solutions, &mut bars);
    if totals.interrupted {
        eprintln!(
            "interrupted during calibration: measured references are saved; re-run to resume"
        );
        return Ok(ExitCode::from(130));
    }
    // Candidates are measured with the references' protocol, their runs interleaved in rounds.
    let outcomes = bench.measure_candidates(&calibrated, &candidates, &mut bars);
    if bench.stopped() {
        eprintln!("interrupted: no metrics written (calibration results are saved)");
        return Ok(ExitCode::from(130));
    }
    let scores = Scores::of(&calibrated, &candidates, &outcomes);
    let config = BootstrapConfig {
        resamples: args.resamples,
        ..BootstrapConfig::default()
    };
    // The per-solution rows are written first: they hold measurements even when no metric can be
    // computed (e.g. no reference passes on this machine).
    if let Some(path) = &args.out {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = BufWriter::new(file);
        for row in &scores.rows {
            // Through a JSON value: the row's keys come out sorted, as they always have.
            let line = serde_json::to_value(row)?;
            writeln!(w, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
        }
        w.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let summary = summarize(&scores.problem_runs, &config).map_err(|e| {
        anyhow::anyhow!("cannot compute metrics: {e} (do the references pass on this machine?)")
    })?;
    let beyond_instr = args
        .protocol
        .count_instructions
        .then(|| afterburner_benchmarks::metrics::beyond_instructions(&scores.problem_runs))
        .flatten();
    if args.json {
        let buckets = |o| BucketsJson::from(summary.bucket_counts(o));
        let json = EvalSummary {
            dataset: &args.problems.dataset,
            problems: summary.problems,
            solutions: candidates.len(),
            pass_at_1: summary.pass_at_1.mean,
            beyond_t: summary.beyond_time.mean,
            beyond_m: summary.beyond_memory.mean,
            beyond_i: summary.beyond_integral.mean,
            confidence: BootstrapConfig::default().confidence,
            intervals: PerMetric {
                beyond_i: interval(&summary.beyond_integral),
                beyond_m: interval(&summary.beyond_memory),
                beyond_t: interval(&summary.beyond_time),
                pass_at_1: interval(&summary.pass_at_1),
            },
            buckets: PerObjective {
                integral: buckets(Objective::Integral),
                memory: buckets(Objective::Memory),
                time: buckets(Objective::Time),
            },
            missing: &scores.missing,
            excluded: &summary.excluded,
            malformed: &malformed,
            fingerprint: bench.fingerprint(),
            protocol: bench.protocol(),
            beyond_instr,
        };
        println!("{}", serde_json::to_value(&json)?);
    } else {
        print_table(&problems, &scores.rows);
        print_summary(&summary, &scores.missing, &malformed);
        if let Some(b) = beyond_instr {
            println!(
                "{:<10} {:>6.1}%   (instructions counted under valgrind; exact ties count half)",
                "Beyond-Instr",
                b * 100.0
            );
        }
    }
    if summary.problems == 0 {
        bail!("no problem could be scored");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(problems: &[&Problem], rows: &[EvalRow]) {
    let width = problems
        .iter()
        .map(|p| p.id.len())
        .max()
        .unwrap_or(7)
        .max(7);
    println!(
        "{:<width$}  {:>5}  {:<14}  {:>10}  {:>6}  {:>6}  {:>6}  {:>4}",
        "problem", "line", "status", "time ms", "T", "M", "I", "refs"
    );
    let pct = |row: &EvalRow, o: Objective| {
        row.percentiles.map_or("-".to_string(), |p| {
            let x = match o {
                Objective::Time => p.time,
                Objective::Memory => p.memory,
                Objective::Integral => p.integral,
            };
            format!("{:.0}%", x * 100.0)
        })
    };
    for row in rows {
        println!(
            "{:<width$}  {:>5}  {:<14}  {:>10}  {:>6}  {:>6}  {:>6}  {:>4}",
            row.problem_id,
            row.line,
            row.status.as_str(),
            row.time_ms.map_or("-".to_string(), |t| format!("{t:.1}")),
            pct(row, Objective::Time),
            pct(row, Objective::Memory),
            pct(row, Objective::Integral),
            row.references
        );
        if let Some(d) = &row.detail {
            println!("    {}", d.chars().take(160).collect::<String>());
        }
    }
}

fn print_summary(s: &Summary, missing: &[String], malformed: &[Malformed]) {
    let line = |name: &str, e: &Estimate| {
        println!(
            "{name:<10} {:>6.1}%   95% CI [{:.1}%, {:.1}%]",
            e.mean * 100.0,
            e.low * 100.0,
            e.high * 100.0
        );
    };
    println!();
    println!("{} problems scored, {} runs", s.problems, s.runs);
    line("pass@1", &s.pass_at_1);
    line("Beyond-T", &s.beyond_time);
    line("Beyond-M", &s.beyond_memory);
    line("Beyond-I", &s.beyond_integral);
    println!("{}", afterburner_benchmarks::metrics::PERCENTILE_RULE);
    for o in Objective::ALL {
        let (name, b) = (o.as_str(), s.bucket_counts(o));
        println!(
            "buckets {name:<8} B {}  M {}  W {}  F {}",
            b.best, b.middle, b.worst, b.failed
        );
    }
    if !missing.is_empty() {
        println!(
            "{} problems without a solution (counted as failed): {}",
            missing.len(),
            missing.join(", ")
        );
    }
    if !s.excluded.is_empty() {
        println!(
            "{} problems excluded (no passing reference): {}",
            s.excluded.len(),
            s.excluded.join(", ")
        );
    }
    if !malformed.is_empty() {
        println!("{} malformed lines skipped (see stderr)", malformed.len());
    }
}
