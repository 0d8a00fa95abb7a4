//! Full-data checks of the harnesses, printed as Markdown (the figures of REPORT.md).
//!
//! ```text
//! cargo run --release -p afterburner-benchmarks --example datasets_report -- leetcode
//! cargo run --release -p afterburner-benchmarks --example datasets_report -- enamel [CACHE_DIR]
//! cargo run --release -p afterburner-benchmarks --example datasets_report -- coffe CACHE_DIR
//! ```
//!
//! `leetcode`: every reference completion, and every starter code with a `pass` body.
//! `enamel`: every expert reference and canonical solution on ENAMEL's generated inputs, with
//! their driver-measured time on the largest input level. `coffe`: after `afterburner calibrate`
//! of the COFFE folder into CACHE_DIR, why each reference that did not pass failed, and whether
//! it passes the correctness tests alone. Needs root (the sandbox).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use afterburner_benchmarks::harness::case_times_by_origin;
use afterburner_benchmarks::{DatasetSpec, Harness, HarnessConfig, Suite};
use afterburner_sandbox::{Language, Sandbox, Status};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("leetcode") => leetcode(),
        Some("enamel") => enamel(args.get(1).cloned()),
        Some("coffe") => coffe(args.get(1).cloned()),
        _ => Err("usage: datasets_report leetcode | enamel [CACHE_DIR] | coffe CACHE_DIR".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Reads the calibration cache of a COFFE calibration and, for every reference that did not
/// pass, says which case failed and whether it passes the correctness tests alone.
fn coffe(cache: Option<String>) -> Result<(), String> {
    let cache = cache.ok_or("usage: datasets_report coffe CACHE_DIR")?;
    let d = load(&format!("coffe:{DATA}/coffe-code-contests"))?;
    let text = std::fs::read_to_string(std::path::Path::new(&cache).join("calibration.jsonl"))
        .map_err(|e| format!("{cache}: {e}"))?;
    let records: Vec<afterburner_benchmarks::CalibrationRecord> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{cache}: {e}")))
        .collect::<Result<_, _>>()?;
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
            .evaluate(p, &suite, code.language, &code.code, None)
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
            .evaluate(p, &tests, code.language, &code.code, None)
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

fn leetcode() -> Result<(), String> {
    let d = load(&format!(
        "leetcode:{DATA}/leetcode/LeetCodeDataset-v0.3.1-test.jsonl.gz"
    ))?;
    let sandbox = Sandbox::new().map_err(|e| e.to_string())?;
    let h = Harness::new(&sandbox, HarnessConfig::default()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let (mut refs_ok, mut empty_ok) = (0, 0);
    let mut failures = Vec::new();
    for p in &d.problems {
        let suite = Suite::tests_only(p);
        let Some(r) = p.references.first() else {
            failures.push(format!("{}: no reference", p.id));
            continue;
        };
        let e = h
            .evaluate(p, &suite, r.language, &r.code, None)
            .map_err(|e| e.to_string())?;
        if e.passed() {
            refs_ok += 1;
        } else {
            failures.push(format!(
                "{}: reference {}",
                p.id,
                e.failure_reason().unwrap_or_default()
            ));
        }
        let starter = p
            .starter_code
            .get(&Language::Python)
            .map(|s| format!("{}\n        pass\n", s.trim_end()))
            .unwrap_or_default();
        let e = h
            .evaluate(p, &suite, Language::Python, &starter, None)
            .map_err(|e| e.to_string())?;
        if e.passed() {
            empty_ok += 1;
            failures.push(format!("{}: the empty body passes", p.id));
        }
    }
    println!(
        "LeetCodeDataset: {refs_ok}/{} reference completions pass; {empty_ok}/{} empty bodies pass \
         ({:.0} s)",
        d.problems.len(),
        d.problems.len(),
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
                .evaluate(p, &suite, r.language, &r.code, None)
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
