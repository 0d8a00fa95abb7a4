//! Full-data checks of the harnesses, printed as Markdown (the figures of BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p afterburner-benchmarks --example datasets_report -- leetcode [ID...]
//! cargo run --release -p afterburner-benchmarks --example datasets_report -- enamel [CACHE_DIR]
//! cargo run --release -p afterburner-benchmarks --example datasets_report -- coffe CACHE_DIR
//! cargo run --release -p afterburner-benchmarks --example datasets_report -- stability A B
//! ```
//!
//! `leetcode`: every reference completion, and every starter code with a `pass` body.
//! `enamel`: every expert reference and canonical solution on ENAMEL's generated inputs, with
//! their driver-measured time on the largest input level. `coffe`: after `afterburner calibrate`
//! of the COFFE folder into CACHE_DIR, why each reference that did not pass failed, and whether
//! it passes the correctness tests alone. `stability`: two calibration caches of the same
//! solutions compared (pass/fail flips, figure and percentile changes under the paper's rule and
//! under the tie rule, order swaps of pairs 10% apart). Needs root (the sandbox).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use afterburner_benchmarks::harness::case_times_by_origin;
use afterburner_benchmarks::{
    CalibrationRecord, DatasetSpec, Harness, HarnessConfig, Submission, Suite,
};
use afterburner_sandbox::{Language, Sandbox, Status};

const USAGE: &str = "usage: datasets_report leetcode [ID...] | enamel [CACHE_DIR] | coffe CACHE_DIR \
                     | coffe-tests | stability CACHE_A CACHE_B";

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("leetcode") => leetcode(&args[1..]),
        Some("enamel") => enamel(args.get(1).cloned()),
        Some("coffe") => coffe(args.get(1).cloned()),
        Some("coffe-tests") => coffe_tests(),
        Some("stability") => match (args.get(1), args.get(2)) {
            (Some(a), Some(b)) => stability(a, b),
            _ => Err(USAGE.into()),
        },
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Every verified COFFE solution on its problem's correctness tests, two at a time; lists each
/// one that does not pass with its reason.
fn coffe_tests() -> Result<(), String> {
    let d = load(&format!("coffe:{DATA}/coffe-code-contests"))?;
    let sandbox = Sandbox::new().map_err(|e| e.to_string())?;
    let h = Harness::new(&sandbox, HarnessConfig::default()).map_err(|e| e.to_string())?;
    let jobs: Vec<_> = d
        .problems
        .iter()
        .flat_map(|p| p.verified_references().map(move |r| (p, r)))
        .collect();
    let suites: BTreeMap<&str, Suite> = d
        .problems
        .iter()
        .map(|p| (p.id.as_str(), Suite::tests_only(p)))
        .collect();
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((p, r)) = jobs.get(k) else { break };
                    let reason = match h.evaluate(
                        &Submission::new(p, r.language, &r.code),
                        &suites[p.id.as_str()],
                        None,
                    ) {
                        Ok(e) if e.passed() => None,
                        Ok(e) => Some(e.failure_reason().unwrap_or_default()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(reason) = reason {
                        let line = reason.lines().next().unwrap_or("").replace('|', "/");
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("| {} | {line} |", r.id));
                        }
                    }
                    if k.is_multiple_of(200) {
                        eprintln!(
                            "{k}/{} ({:.0} s)",
                            jobs.len(),
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().map_err(|e| e.to_string())?;
    failures.sort();
    println!(
        "COFFE: {} of {} verified solutions pass their problem's correctness tests ({} problems, \
         {:.0} s on 2 workers)",
        jobs.len() - failures.len(),
        jobs.len(),
        d.problems.len(),
        start.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        println!();
        println!("| solution | reason |");
        println!("|---|---|");
        for f in failures {
            println!("{f}");
        }
    }
    Ok(())
}

/// The records of a calibration cache folder.
fn read_records(cache: &str) -> Result<Vec<CalibrationRecord>, String> {
    afterburner_benchmarks::calibration::read_records(std::path::Path::new(cache))
        .map_err(|e| e.to_string())
}

/// Compares two calibrations of the same solutions ([`afterburner_benchmarks::stability`], as
/// `afterburner bench compare` does).
fn stability(a: &str, b: &str) -> Result<(), String> {
    let report = afterburner_benchmarks::stability::compare(&read_records(a)?, &read_records(b)?);
    print!("{}", report.markdown());
    Ok(())
}

/// Reads the calibration cache of a COFFE calibration and, for every reference that did not
/// pass, says which case failed and whether it passes the correctness tests alone.
fn coffe(cache: Option<String>) -> Result<(), String> {
    let cache = cache.ok_or("usage: datasets_report coffe CACHE_DIR")?;
    let d = load(&format!("coffe:{DATA}/coffe-code-contests"))?;
    let records = read_records(&cache)?;
    let sandbox = Sandbox::new().map_err(|e| e.to_string())?;
    let h = Harness::new(
        &sandbox,
        HarnessConfig {
            cache_dir: Some(cache.clone().into()),
            ..HarnessConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let verified: usize = d
        .problems
        .iter()
        .map(|p| p.verified_references().count())
        .sum();
    let failed: Vec<_> = records.iter().filter(|r| !r.passed).collect();
    println!(
        "COFFE: {} of {verified} verified solutions measured, {} pass every test and stress input",
        records.len(),
        records.len() - failed.len()
    );
    println!();
    println!("| solution | verdict | first failing case | passes the correctness tests alone |");
    println!("|---|---|---|---|");
    for r in failed {
        let p = d
            .problem(&r.key.problem_id)
            .ok_or(format!("{}: not in the data", r.key.problem_id))?;
        let code = p
            .references
            .iter()
            .find(|s| s.id == r.key.solution_id)
            .ok_or(format!("{}: not in the data", r.key.solution_id))?;
        let suite = h.suite(p, None).map_err(|e| e.to_string())?;
        let full = h
            .evaluate(&Submission::new(p, code.language, &code.code), &suite, None)
            .map_err(|e| e.to_string())?;
        let case = full
            .first_failure()
            .map(|(k, c)| {
                format!(
                    "{} {:?}: {}",
                    suite.cases[k].origin.group(),
                    c.verdict,
                    c.detail
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .last()
                        .unwrap_or("")
                        .chars()
                        .take(90)
                        .collect::<String>()
                        .replace('|', "/")
                )
            })
            .or(full.message.clone())
            .unwrap_or_default();
        let tests = suite.filtered(|o| !o.is_stress());
        let alone = h
            .evaluate(&Submission::new(p, code.language, &code.code), &tests, None)
            .map_err(|e| e.to_string())?;
        println!(
            "| {} | {} (now: {}) | {} | {} |",
            r.key.solution_id,
            r.status,
            full.status,
            case,
            if alone.passed() { "yes" } else { "**no**" }
        );
    }
    Ok(())
}

fn load(spec: &str) -> Result<afterburner_benchmarks::Dataset, String> {
    let spec: DatasetSpec = spec.parse().map_err(|e| format!("{e}"))?;
    spec.load().map_err(|e| format!("{e}"))
}

fn leetcode(only: &[String]) -> Result<(), String> {
    let d = load(&format!(
        "leetcode:{DATA}/leetcode/LeetCodeDataset-v0.3.1-test.jsonl.gz"
    ))?;
    let sandbox = Sandbox::new().map_err(|e| e.to_string())?;
    let h = Harness::new(&sandbox, HarnessConfig::default()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let (mut refs_ok, mut empty_ok) = (0, 0);
    let mut failures = Vec::new();
    let selected: Vec<_> = d
        .problems
        .iter()
        .filter(|p| only.is_empty() || only.contains(&p.id))
        .collect();
    for p in &selected {
        let suite = Suite::tests_only(p);
        let Some(r) = p.references.first() else {
            failures.push(format!("{}: no reference", p.id));
            continue;
        };
        let e = h
            .evaluate(&Submission::new(p, r.language, &r.code), &suite, None)
            .map_err(|e| e.to_string())?;
        if e.passed() {
            refs_ok += 1;
        } else {
            failures.push(format!(
                "{}: reference {} (run {:.0} ms wall, {:.0} ms cpu, {} tests)",
                p.id,
                e.failure_reason().unwrap_or_default(),
                e.measurement.wall_ms,
                e.measurement.cpu_ms,
                suite.cases.len()
            ));
        }
        let starter = p
            .starter_code
            .get(&Language::Python)
            .map(|s| format!("{}\n        pass\n", s.trim_end()))
            .unwrap_or_default();
        let e = h
            .evaluate(
                &Submission::new(p, Language::Python, &starter),
                &suite,
                None,
            )
            .map_err(|e| e.to_string())?;
        if e.passed() {
            empty_ok += 1;
            failures.push(format!("{}: the empty body passes", p.id));
        }
    }
    println!(
        "LeetCodeDataset: {refs_ok}/{} reference completions pass; {empty_ok}/{} empty bodies pass \
         ({:.0} s)",
        selected.len(),
        selected.len(),
        start.elapsed().as_secs_f64()
    );
    for f in failures {
        println!("- {f}");
    }
    Ok(())
}

fn enamel(cache: Option<String>) -> Result<(), String> {
    let d = load(&format!("enamel:{DATA}/enamel"))?;
    let sandbox = Sandbox::new().map_err(|e| e.to_string())?;
    let mut config = HarnessConfig {
        cache_dir: cache.map(Into::into),
        ..HarnessConfig::default()
    };
    // Canonical solutions may be quadratic where the expert is linear: let them finish.
    config.limits.wall_time = Duration::from_secs(300);
    config.limits.cpu_time = Duration::from_secs(300);
    let h = Harness::new(&sandbox, config).map_err(|e| e.to_string())?;
    let start = Instant::now();
    println!(
        "| problem | expert | canonical | expert ms (largest level) | canonical ms (largest level) | canonical / expert | expert run ms | canonical run ms | dropped inputs |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    let (mut expert_ok, mut canonical_ok, mut expert_wins, mut rows) = (0, 0, 0, 0);
    let mut ratios = Vec::new();
    for p in &d.problems {
        let t = Instant::now();
        let suite = h.suite(p, None).map_err(|e| format!("{}: {e}", p.id))?;
        let last_level = suite
            .cases
            .iter()
            .filter_map(|c| match c.origin {
                afterburner_benchmarks::CaseOrigin::Stress { level, .. } => level,
                _ => None,
            })
            .max()
            .map(|l| format!("level-{l}"));
        let mut cells = Vec::new();
        let mut top = Vec::new();
        let mut wall = Vec::new();
        for r in &p.references {
            let e = h
                .evaluate(&Submission::new(p, r.language, &r.code), &suite, None)
                .map_err(|e| format!("{}: {e}", r.id))?;
            let times = case_times_by_origin(&suite, &e);
            let t_top = last_level.as_ref().and_then(|l| times.get(l)).copied();
            cells.push(if e.passed() {
                "pass".to_string()
            } else {
                format!(
                    "**{}**: {}",
                    e.status,
                    e.failure_reason()
                        .unwrap_or_default()
                        .chars()
                        .take(80)
                        .collect::<String>()
                        .replace(['|', '\n'], " ")
                )
            });
            if r.id.ends_with("/expert") && e.status == Status::Accepted {
                expert_ok += 1;
            }
            if r.id.ends_with("/canonical") && e.status == Status::Accepted {
                canonical_ok += 1;
            }
            top.push(t_top);
            wall.push(e.measurement.wall_ms);
        }
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = match (
            top.first().copied().flatten(),
            top.get(1).copied().flatten(),
        ) {
            (Some(e), Some(c)) if e > 0.0 => Some(c / e),
            _ => None,
        };
        if let Some(r) = ratio {
            ratios.push(r);
            if r > 1.0 {
                expert_wins += 1;
            }
        }
        rows += 1;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            p.id,
            cells.first().map_or("-", String::as_str),
            cells.get(1).map_or("-", String::as_str),
            fmt(top.first().copied().flatten()),
            fmt(top.get(1).copied().flatten()),
            ratio.map_or("-".to_string(), |r| format!("{r:.2}")),
            wall.first().copied().unwrap_or(0.0),
            wall.get(1).map_or("-".to_string(), |w| format!("{w:.0}")),
            suite.dropped.len()
        );
        eprintln!("{} done in {:.1} s", p.id, t.elapsed().as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let median = afterburner_sandbox::median(&ratios);
    println!();
    println!(
        "{rows} problems: {expert_ok} expert references and {canonical_ok} canonical solutions pass; \
         the expert is faster on the largest level in {expert_wins} of {} problems (median \
         canonical/expert time ratio {median:.2}); {:.0} s in all.",
        ratios.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
