//! `afterburner eval`: pass@1 and Beyond-T/M/I of a solutions file against calibrated references.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use afterburner_benchmarks::metrics::{
    BootstrapConfig, BucketCounts, Estimate, Objective, ProblemRuns, RunScore, Summary, score_run,
    summarize,
};
use afterburner_benchmarks::{Measured, Problem, RecordedPerformance, Verdict};
use afterburner_sandbox::{Language, Sandbox, Status};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::calibrate::{
    Calibrated, Context, ProtocolArgs, Subject, calibrate_problems, install_interrupt_handler,
    interrupted, measure_interleaved, select_problems,
};
use crate::dataset::load_dataset;

/// Arguments of `afterburner eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The dataset, as FORMAT:PATH (venus, venus-<language>, apps, coffe, leetcode, enamel).
    #[arg(long)]
    pub dataset: String,
    /// JSONL file, one solution per line: {"problem_id", "code", "language" (default python)}.
    #[arg(long, value_name = "FILE.jsonl")]
    pub solutions: PathBuf,
    /// Write one JSON line per solution (verdicts, measurements, percentiles) to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object with the metrics and their intervals on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only score these problems (repeatable); by default every problem of the dataset counts,
    /// and one without a solution counts as failed.
    #[arg(long = "problem-id", value_name = "ID")]
    pub problem_ids: Vec<String>,
    /// Measure at most N reference solutions per problem (verified ones first).
    #[arg(long, value_name = "N")]
    pub max_solutions: Option<usize>,
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

/// A usable line of the solutions file.
#[derive(Debug, Clone)]
struct Submission {
    line: usize,
    problem_id: String,
    code: String,
    language: Language,
}

/// Reads the solutions file; bad lines are returned with their number and reason.
fn read_solutions(
    path: &PathBuf,
    known: &dyn Fn(&str) -> bool,
) -> Result<(Vec<Submission>, Vec<Malformed>)> {
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
            Ok((problem_id, code, language)) => ok.push(Submission {
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

/// The outcome of one submission.
struct Outcome {
    measured: Option<Measured>,
    error: Option<String>,
}

impl Outcome {
    fn performance(&self) -> Option<RecordedPerformance> {
        self.measured
            .as_ref()
            .filter(|m| m.passed)
            .and_then(|m| m.performance)
    }
}

fn interval(e: &Estimate) -> [f64; 2] {
    [e.low, e.high]
}

fn buckets_json(b: &BucketCounts) -> Value {
    json!({"B": b.best, "M": b.middle, "W": b.worst, "F": b.failed})
}

fn bucket_letter(score: &RunScore, objective: Objective) -> Value {
    serde_json::to_value(score.bucket(objective)).unwrap_or(Value::Null)
}

/// Runs `afterburner eval`.
pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    let dataset = load_dataset(&args.dataset)?;
    let problems = select_problems(&dataset.problems, &args.problem_ids)?;
    let in_scope = |id: &str| problems.iter().any(|p| p.id == id);
    let (submissions, malformed) = read_solutions(&args.solutions, &in_scope)?;
    for m in &malformed {
        eprintln!(
            "{}:{}: skipped: {}",
            args.solutions.display(),
            m.line,
            m.reason
        );
    }
    let sandbox = Sandbox::new()?;
    let ctx = Context::new(&sandbox, &args.protocol)?;
    install_interrupt_handler();

    eprintln!(
        "calibrating the references of {} problems on {} worker(s)",
        problems.len(),
        ctx.cpus.len()
    );
    let (calibrated, totals) = calibrate_problems(&ctx, &problems, args.max_solutions);
    if totals.interrupted {
        eprintln!(
            "interrupted during calibration: measured references are saved; re-run to resume"
        );
        return Ok(ExitCode::from(130));
    }
    let by_id: BTreeMap<&str, &Calibrated> = calibrated
        .iter()
        .map(|c| (c.problem.id.as_str(), c))
        .collect();

    // Candidates are measured with the references' protocol, their runs interleaved in rounds.
    let mut outcomes: Vec<Option<Outcome>> = (0..submissions.len()).map(|_| None).collect();
    let mut subjects: Vec<Subject> = Vec::new();
    let mut subject_of: Vec<usize> = Vec::new();
    for (k, s) in submissions.iter().enumerate() {
        let error = match by_id.get(s.problem_id.as_str()) {
            None => "problem not evaluated".to_string(),
            Some(c) => match &c.suite {
                Some(suite) => {
                    subjects.push(Subject {
                        problem: c.problem,
                        suite,
                        language: s.language,
                        code: &s.code,
                        done: Vec::new(),
                    });
                    subject_of.push(k);
                    continue;
                }
                None => format!(
                    "the problem's tests could not be prepared: {}",
                    c.error.as_deref().unwrap_or("unknown error")
                ),
            },
        };
        outcomes[k] = Some(Outcome {
            measured: None,
            error: Some(error),
        });
    }
    let repeats = ctx.harness.config().repeats;
    let measured = measure_interleaved(
        &ctx,
        &subjects,
        "solutions",
        |_, _, _| Ok(()),
        |_, _| Ok(()),
    );
    for (runs, k) in measured.into_iter().zip(subject_of) {
        if !runs.complete(repeats) {
            continue;
        }
        outcomes[k] = Some(match (runs.error, runs.first) {
            (Some(e), _) => Outcome {
                measured: None,
                error: Some(e),
            },
            (None, Some(first)) => Outcome {
                measured: Some(Measured::from_runs(first, &runs.runs, repeats)),
                error: None,
            },
            (None, None) => Outcome {
                measured: None,
                error: Some("no run was made".to_string()),
            },
        });
    }
    if interrupted() {
        eprintln!("interrupted: no metrics written (calibration results are saved)");
        return Ok(ExitCode::from(130));
    }

    // Per-solution rows and per-problem runs.
    let mut runs: BTreeMap<&str, Vec<Option<RecordedPerformance>>> = BTreeMap::new();
    let mut rows: Vec<Value> = Vec::new();
    for (s, outcome) in submissions.iter().zip(&outcomes) {
        let Some(outcome) = outcome else { continue };
        let perf = outcome.performance();
        runs.entry(s.problem_id.as_str()).or_default().push(perf);
        let c = by_id.get(s.problem_id.as_str());
        let refs = c.map(|c| c.distribution()).unwrap_or_default();
        let score = score_run(perf.as_ref(), &refs);
        rows.push(solution_row(s, outcome, perf, score, refs.len()));
    }
    let missing: Vec<&str> = problems
        .iter()
        .map(|p| p.id.as_str())
        .filter(|id| !runs.contains_key(id))
        .collect();
    let problem_runs: Vec<ProblemRuns> = calibrated
        .iter()
        .map(|c| ProblemRuns {
            problem_id: c.problem.id.clone(),
            runs: runs
                .get(c.problem.id.as_str())
                .cloned()
                .unwrap_or_else(|| vec![None]),
            references: c.distribution(),
        })
        .collect();
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
        for row in &rows {
            writeln!(w, "{row}").with_context(|| format!("cannot write {}", path.display()))?;
        }
        w.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let summary = summarize(&problem_runs, &config).map_err(|e| {
        anyhow::anyhow!("cannot compute metrics: {e} (do the references pass on this machine?)")
    })?;
    if args.json {
        println!(
            "{}",
            summary_json(
                &args,
                &summary,
                &missing,
                &malformed,
                &ctx,
                submissions.len()
            )
        );
    } else {
        print_table(&problems, &submissions, &rows);
        print_summary(&summary, &missing, &malformed);
    }
    if summary.problems == 0 {
        bail!("no problem could be scored");
    }
    Ok(ExitCode::SUCCESS)
}

fn solution_row(
    s: &Submission,
    outcome: &Outcome,
    perf: Option<RecordedPerformance>,
    score: Option<RunScore>,
    references: usize,
) -> Value {
    let m = outcome.measured.as_ref();
    // `harness_error`: the solution could not be run at all (e.g. a language the problem's entry
    // style does not support); it counts as failed and `detail` says why.
    let status = match m {
        Some(m) if !m.passed && m.evaluation.status == Status::Accepted => {
            Status::WrongAnswer.as_str()
        }
        Some(m) => m.evaluation.status.as_str(),
        None => "harness_error",
    };
    let verdicts: Vec<Verdict> = m
        .map(|m| m.evaluation.cases.iter().map(|c| c.verdict).collect())
        .unwrap_or_default();
    let percentiles = score
        .filter(|s| s.passed)
        .map(|s| json!({"time": s.time, "memory": s.memory, "integral": s.integral}));
    let buckets = score.map(|s| {
        json!({
            "time": bucket_letter(&s, Objective::Time),
            "memory": bucket_letter(&s, Objective::Memory),
            "integral": bucket_letter(&s, Objective::Integral),
        })
    });
    json!({
        "line": s.line,
        "problem_id": s.problem_id,
        "language": s.language,
        "status": status,
        "passed": perf.is_some(),
        "tests_passed": m.map(|m| m.evaluation.accepted_cases()),
        "tests_total": m.map(|m| m.evaluation.cases.len()),
        "verdicts": verdicts,
        "time_ms": perf.map(|p| p.time_ms),
        "memory_kb": perf.map(|p| p.memory_kb),
        "integral_kb_ms": perf.map(|p| p.integral),
        "cv": m.and_then(|m| m.summary.as_ref()).map(|s| &s.cv),
        "runs": m.and_then(|m| m.summary.as_ref()).map_or(1, |s| s.runs),
        "first_run": m.map(|m| &m.evaluation.measurement),
        "references": references,
        "percentiles": percentiles,
        "buckets": buckets,
        "detail": outcome.error.clone().or_else(|| m.and_then(|m| m.detail.clone())),
    })
}

fn summary_json(
    args: &EvalArgs,
    s: &Summary,
    missing: &[&str],
    malformed: &[Malformed],
    ctx: &Context<'_>,
    solutions: usize,
) -> Value {
    json!({
        "dataset": args.dataset,
        "problems": s.problems,
        "solutions": solutions,
        "pass_at_1": s.pass_at_1.mean,
        "beyond_t": s.beyond_time.mean,
        "beyond_m": s.beyond_memory.mean,
        "beyond_i": s.beyond_integral.mean,
        "confidence": BootstrapConfig::default().confidence,
        "intervals": {
            "pass_at_1": interval(&s.pass_at_1),
            "beyond_t": interval(&s.beyond_time),
            "beyond_m": interval(&s.beyond_memory),
            "beyond_i": interval(&s.beyond_integral),
        },
        "buckets": {
            "time": buckets_json(&s.bucket_counts(Objective::Time)),
            "memory": buckets_json(&s.bucket_counts(Objective::Memory)),
            "integral": buckets_json(&s.bucket_counts(Objective::Integral)),
        },
        "missing": missing,
        "excluded": s.excluded,
        "malformed": malformed,
        "fingerprint": ctx.fingerprint,
        "protocol": ctx.protocol,
    })
}

fn print_table(problems: &[&Problem], submissions: &[Submission], rows: &[Value]) {
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
    let pct = |v: &Value, k: &str| {
        v.get("percentiles")
            .and_then(|p| p.get(k))
            .and_then(Value::as_f64)
            .map_or("-".to_string(), |x| format!("{:.0}%", x * 100.0))
    };
    for (s, row) in submissions.iter().zip(rows) {
        println!(
            "{:<width$}  {:>5}  {:<14}  {:>10}  {:>6}  {:>6}  {:>6}  {:>4}",
            s.problem_id,
            s.line,
            row.get("status").and_then(Value::as_str).unwrap_or("?"),
            row.get("time_ms")
                .and_then(Value::as_f64)
                .map_or("-".to_string(), |t| format!("{t:.1}")),
            pct(row, "time"),
            pct(row, "memory"),
            pct(row, "integral"),
            row.get("references").and_then(Value::as_u64).unwrap_or(0)
        );
        if let Some(d) = row.get("detail").and_then(Value::as_str) {
            println!("    {}", d.chars().take(160).collect::<String>());
        }
    }
}

fn print_summary(s: &Summary, missing: &[&str], malformed: &[Malformed]) {
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
    for (name, o) in [
        ("time", Objective::Time),
        ("memory", Objective::Memory),
        ("integral", Objective::Integral),
    ] {
        let b = s.bucket_counts(o);
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
