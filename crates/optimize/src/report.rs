//! The report of a run: per-iteration pass@1 and Beyond-T/M/I of the incumbents (JSON and a
//! chart), per-problem results, and a markdown summary.
//!
//! **What an iteration's figures mean.** At iteration `k`, each problem counts with its
//! *incumbent after iteration k*: the code the loop would return if it stopped there. pass@1 is
//! the share of problems (with a row at `k`) whose incumbent passes. Beyond-X is the mean
//! percentile (SPEC section 5; a failed incumbent scores 0) over the problems that have measured
//! references, computed by [`afterburner_benchmarks::metrics::summarize`] with a bootstrap
//! interval; without calibrated references it is absent. A problem that stopped early (an
//! error, or an interrupted run) drops out of the iterations it did not reach.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use afterburner_benchmarks::RecordedPerformance;
use afterburner_benchmarks::metrics::{
    BootstrapConfig, Estimate, ProblemRuns, score_run, summarize,
};
use afterburner_sandbox::Language;
use serde::{Deserialize, Serialize};

use crate::acceptance::unit;
use crate::chart::{self, ImageFormat, Series};
use crate::prompt::Instruction;
use crate::trajectory::{CandidateStatus, IterationRecord, Percentiles};

/// What the run was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The dataset spec.
    pub dataset: String,
    /// The model.
    pub model: String,
    /// The endpoint.
    pub endpoint: String,
    /// The instruction.
    pub instruction: Instruction,
    /// The language.
    pub language: Language,
    /// Improvement iterations (N).
    pub iterations: usize,
}

/// The figures of one iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationPoint {
    /// The iteration.
    pub iteration: usize,
    /// Problems with a row at this iteration.
    pub problems: usize,
    /// Of those, problems whose incumbent passes.
    pub passed: usize,
    /// `passed / problems`.
    pub pass_at_1: f64,
    /// Problems with calibrated references (the Beyond denominator).
    pub scored: usize,
    /// Beyond-T with its 95% interval (when any problem is scored).
    pub beyond_t: Option<Estimate>,
    /// Beyond-M.
    pub beyond_m: Option<Estimate>,
    /// Beyond-I.
    pub beyond_i: Option<Estimate>,
    /// Candidates accepted at this iteration.
    pub accepted: usize,
    /// Candidates at this iteration that passed.
    pub candidates_passed: usize,
    /// Responses at this iteration without usable code.
    pub no_code: usize,
}

/// Where one problem ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemResult {
    /// The problem's id.
    pub problem_id: String,
    /// Iterations completed (rows).
    pub iterations: usize,
    /// Whether every iteration was completed.
    pub complete: bool,
    /// Why it stopped early, when it did.
    pub error: Option<String>,
    /// The iteration of the final incumbent.
    pub incumbent: Option<usize>,
    /// The final incumbent's status.
    pub status: Option<CandidateStatus>,
    /// Whether it passes.
    pub passed: bool,
    /// Its median time, ms.
    pub time: Option<f64>,
    /// Its median peak memory, KB.
    pub memory: Option<f64>,
    /// Its median integral, KB*ms.
    pub integral: Option<f64>,
    /// Its percentiles (when references are calibrated).
    pub percentiles: Option<Percentiles>,
    /// Iterations whose candidate was accepted.
    pub accepted_at: Vec<usize>,
    /// The instructed objective of the first passing incumbent.
    pub first_passing: Option<f64>,
    /// Relative reduction of the instructed objective from the first passing incumbent to the
    /// final one (0.25: 25% lower).
    pub gain: Option<f64>,
    /// The final incumbent's code.
    pub code: Option<String>,
}

/// Counts over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Problems in the run.
    pub problems: usize,
    /// Problems with every iteration done.
    pub complete: usize,
    /// Problems stopped by an error.
    pub errors: usize,
    /// Model calls recorded (answers replayed from the cache included).
    pub model_calls: usize,
    /// Of those, answers replayed from the cache.
    pub cached_calls: usize,
    /// Responses without usable code.
    pub no_code: usize,
    /// Final incumbents that pass.
    pub final_passed: usize,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What the run was.
    pub run: RunInfo,
    /// Counts.
    pub totals: Totals,
    /// Per iteration, from 0.
    pub per_iteration: Vec<IterationPoint>,
    /// Per problem, in run order.
    pub problems: Vec<ProblemResult>,
}

/// The files a report was written to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFiles {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `chart.png`.
    pub png: PathBuf,
    /// `chart.svg`.
    pub svg: PathBuf,
    /// `final.jsonl`: the final code per problem, in the format `afterburner eval --solutions` reads.
    pub solutions: PathBuf,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The chart could not be drawn.
    #[error("chart: {0}")]
    Chart(String),
}

/// The incumbent row after each of a problem's rows.
fn incumbents(rows: &[IterationRecord]) -> Vec<Option<&IterationRecord>> {
    rows.iter()
        .map(|r| r.incumbent.and_then(|k| rows.get(k)))
        .collect()
}

fn pct_of(perf: Option<&RecordedPerformance>, refs: &[RecordedPerformance]) -> Option<Percentiles> {
    if refs.is_empty() {
        return None;
    }
    score_run(perf, refs).map(|s| Percentiles {
        time: s.time,
        memory: s.memory,
        integral: s.integral,
    })
}

impl Report {
    /// Builds the report of `problem_ids` (in order) from their rows, errors and references;
    /// `resamples` bootstrap draws per interval.
    pub fn build(
        run: RunInfo,
        problem_ids: &[String],
        rows: &BTreeMap<String, Vec<IterationRecord>>,
        errors: &BTreeMap<String, String>,
        references: &HashMap<String, Vec<RecordedPerformance>>,
        resamples: usize,
    ) -> Report {
        let empty: Vec<IterationRecord> = Vec::new();
        let no_refs: Vec<RecordedPerformance> = Vec::new();
        let objective = run.instruction.objective();
        let rows_of = |id: &str| -> &[IterationRecord] {
            let r = rows.get(id).unwrap_or(&empty);
            &r[..r.len().min(run.iterations + 1)]
        };
        let config = BootstrapConfig {
            resamples,
            ..BootstrapConfig::default()
        };

        let mut per_iteration = Vec::new();
        for k in 0..=run.iterations {
            let mut point = IterationPoint {
                iteration: k,
                problems: 0,
                passed: 0,
                pass_at_1: 0.0,
                scored: 0,
                beyond_t: None,
                beyond_m: None,
                beyond_i: None,
                accepted: 0,
                candidates_passed: 0,
                no_code: 0,
            };
            let mut runs = Vec::new();
            for id in problem_ids {
                let problem_rows = rows_of(id);
                let Some(row) = problem_rows.get(k) else {
                    continue;
                };
                point.problems += 1;
                point.accepted += usize::from(row.accepted);
                point.candidates_passed += usize::from(row.passed);
                point.no_code += usize::from(row.status == CandidateStatus::NoCode);
                let inc = incumbents(problem_rows)[k];
                let perf = inc.and_then(IterationRecord::performance);
                point.passed += usize::from(perf.is_some());
                let refs = references.get(id).unwrap_or(&no_refs);
                if !refs.is_empty() {
                    runs.push(ProblemRuns {
                        problem_id: id.clone(),
                        runs: vec![perf],
                        references: refs.clone(),
                    });
                }
            }
            if point.problems == 0 {
                break;
            }
            point.pass_at_1 = point.passed as f64 / point.problems as f64;
            point.scored = runs.len();
            if let Ok(s) = summarize(&runs, &config) {
                point.beyond_t = Some(s.beyond_time);
                point.beyond_m = Some(s.beyond_memory);
                point.beyond_i = Some(s.beyond_integral);
            }
            per_iteration.push(point);
        }

        let mut totals = Totals {
            problems: problem_ids.len(),
            ..Totals::default()
        };
        let mut problems = Vec::new();
        for id in problem_ids {
            let problem_rows = rows_of(id);
            let incs = incumbents(problem_rows);
            let last = incs.last().copied().flatten();
            let perf = last.and_then(IterationRecord::performance);
            let first_passing = incs
                .iter()
                .flatten()
                .find_map(|r| r.performance())
                .map(|p| p.value(objective));
            let gain = match (first_passing, perf) {
                (Some(first), Some(p)) if first > 0.0 => Some((first - p.value(objective)) / first),
                _ => None,
            };
            let complete = problem_rows.len() > run.iterations;
            totals.complete += usize::from(complete);
            totals.errors += usize::from(errors.contains_key(id));
            totals.final_passed += usize::from(perf.is_some());
            for r in problem_rows {
                if r.prompt.is_some() {
                    totals.model_calls += 1;
                    totals.cached_calls += usize::from(r.cached == Some(true));
                }
                totals.no_code += usize::from(r.status == CandidateStatus::NoCode);
            }
            problems.push(ProblemResult {
                problem_id: id.clone(),
                iterations: problem_rows.len(),
                complete,
                error: errors.get(id).cloned(),
                incumbent: last.map(|r| r.iteration),
                status: last.map(|r| r.status),
                passed: perf.is_some(),
                time: perf.map(|p| p.time_ms),
                memory: perf.map(|p| p.memory_kb),
                integral: perf.map(|p| p.integral),
                percentiles: last
                    .and_then(|_| pct_of(perf.as_ref(), references.get(id).unwrap_or(&no_refs))),
                accepted_at: problem_rows
                    .iter()
                    .filter(|r| r.accepted)
                    .map(|r| r.iteration)
                    .collect(),
                first_passing,
                gain,
                code: last.and_then(|r| r.code.clone()),
            });
        }
        Report {
            run,
            totals,
            per_iteration,
            problems,
        }
    }

    /// The chart's series: pass@1 always, Beyond-T/M/I when any problem is scored.
    pub fn series(&self) -> Vec<Series> {
        let mut out = vec![Series {
            name: "pass@1".into(),
            points: self
                .per_iteration
                .iter()
                .map(|p| (p.iteration, 100.0 * p.pass_at_1))
                .collect(),
        }];
        type Pick = fn(&IterationPoint) -> Option<Estimate>;
        let beyond: [(&str, Pick); 3] = [
            ("Beyond-T", |p| p.beyond_t),
            ("Beyond-M", |p| p.beyond_m),
            ("Beyond-I", |p| p.beyond_i),
        ];
        for (name, pick) in beyond {
            let points: Vec<(usize, f64)> = self
                .per_iteration
                .iter()
                .filter_map(|p| pick(p).map(|e| (p.iteration, 100.0 * e.mean)))
                .collect();
            if !points.is_empty() {
                out.push(Series {
                    name: name.into(),
                    points,
                });
            }
        }
        out
    }

    /// The chart's title.
    pub fn title(&self) -> String {
        format!(
            "{} - {} - instruction: {}",
            self.run.model, self.run.dataset, self.run.instruction
        )
    }

    /// The markdown summary.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let r = &self.run;
        let t = &self.totals;
        let u = unit(r.instruction.objective());
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let est = |e: &Option<Estimate>| match e {
            Some(e) => format!("{} [{}, {}]", pct(e.mean), pct(e.low), pct(e.high)),
            None => "-".into(),
        };
        let num = |x: Option<f64>, d: usize| x.map_or("-".to_string(), |v| format!("{v:.d$}"));
        let _ = writeln!(s, "# Afterburner optimisation report\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| dataset | `{}` |", r.dataset);
        let _ = writeln!(s, "| model | `{}` at `{}` |", r.model, r.endpoint);
        let _ = writeln!(
            s,
            "| instruction | {} ({}) |",
            r.instruction,
            r.instruction.text()
        );
        let _ = writeln!(s, "| language | {} |", r.language);
        let _ = writeln!(s, "| iterations | 0 + {} |", r.iterations);
        let _ = writeln!(
            s,
            "| problems | {} ({} complete, {} stopped by errors) |",
            t.problems, t.complete, t.errors
        );
        let _ = writeln!(
            s,
            "| model calls | {} ({} replayed from the cache, {} without usable code) |",
            t.model_calls, t.cached_calls, t.no_code
        );
        let _ = writeln!(s, "\n## Per iteration (incumbents)\n");
        let _ = writeln!(
            s,
            "| iteration | problems | pass@1 | Beyond-T | Beyond-M | Beyond-I | accepted | candidates passing | no code |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for p in &self.per_iteration {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.iteration,
                p.problems,
                pct(p.pass_at_1),
                est(&p.beyond_t),
                est(&p.beyond_m),
                est(&p.beyond_i),
                p.accepted,
                p.candidates_passed,
                p.no_code
            );
        }
        if self.per_iteration.iter().any(|p| p.scored > 0) {
            let _ = writeln!(
                s,
                "\nBeyond-T/M/I {}.",
                afterburner_benchmarks::metrics::PERCENTILE_RULE
            );
        }
        if self.per_iteration.iter().all(|p| p.scored == 0) {
            let _ = writeln!(
                s,
                "\nBeyond-T/M/I need measured references: run `afterburner calibrate` on the dataset (or pass `--calibrate`)."
            );
        } else if let Some(p) = self.per_iteration.first() {
            let _ = writeln!(
                s,
                "\nBeyond-X over the {} problems with calibrated references; intervals are 95% bootstrap intervals.",
                p.scored
            );
        }
        let _ = writeln!(s, "\n![pass@1 and Beyond-T/M/I per iteration](chart.svg)\n");
        let _ = writeln!(s, "## Per problem (final incumbent)\n");
        let _ = writeln!(
            s,
            "| problem | iterations | incumbent from | status | time ms | memory KB | integral KB*ms | T | M | I | accepted at | {} gain |",
            r.instruction
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"
        );
        for p in &self.problems {
            let pc = |f: fn(&Percentiles) -> f64| {
                p.percentiles
                    .as_ref()
                    .map_or("-".to_string(), |x| pct(f(x)))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.problem_id,
                p.iterations,
                p.incumbent.map_or("-".to_string(), |k| k.to_string()),
                p.status.map_or("-", CandidateStatus::as_str),
                num(p.time, 2),
                num(p.memory, 0),
                num(p.integral, 0),
                pc(|x| x.time),
                pc(|x| x.memory),
                pc(|x| x.integral),
                p.accepted_at
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                p.gain.map_or("-".to_string(), |g| format!(
                    "{} (from {:.2} {u})",
                    pct(g),
                    p.first_passing.unwrap_or(0.0)
                ))
            );
        }
        let errors: Vec<&ProblemResult> =
            self.problems.iter().filter(|p| p.error.is_some()).collect();
        if !errors.is_empty() {
            let _ = writeln!(s, "\n## Errors\n");
            for p in errors {
                let _ = writeln!(
                    s,
                    "- `{}`: {}",
                    p.problem_id,
                    p.error.as_deref().unwrap_or("").replace('\n', " ")
                );
            }
        }
        s
    }

    /// Writes `report.json`, `report.md`, `chart.png`, `chart.svg` and `final.jsonl` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<ReportFiles, ReportError> {
        let files = ReportFiles {
            json: dir.join("report.json"),
            markdown: dir.join("report.md"),
            png: dir.join("chart.png"),
            svg: dir.join("chart.svg"),
            solutions: dir.join("final.jsonl"),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|source| ReportError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| ReportError::Io {
            path: files.json.clone(),
            source: std::io::Error::other(e),
        })?;
        write(&files.json, json + "\n")?;
        write(&files.markdown, self.markdown())?;
        let mut lines = String::new();
        for p in &self.problems {
            if let Some(code) = &p.code {
                let row = serde_json::json!({
                    "problem_id": p.problem_id,
                    "code": code,
                    "language": self.run.language,
                });
                lines.push_str(&row.to_string());
                lines.push('\n');
            }
        }
        write(&files.solutions, lines)?;
        let series = self.series();
        let title = self.title();
        for (path, format) in [
            (&files.png, ImageFormat::Png),
            (&files.svg, ImageFormat::Svg),
        ] {
            chart::write(path, format, &title, &series, (960, 560)).map_err(ReportError::Chart)?;
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::tests::row;

    fn info(iterations: usize) -> RunInfo {
        RunInfo {
            dataset: "venus:x.jsonl".into(),
            model: "m".into(),
            endpoint: "http://127.0.0.1:1/v1".into(),
            instruction: Instruction::Time,
            language: Language::Python,
            iterations,
        }
    }

    fn with_incumbents(mut rows: Vec<IterationRecord>) -> Vec<IterationRecord> {
        let mut inc = None;
        for r in &mut rows {
            if r.accepted {
                inc = Some(r.iteration);
            }
            r.incumbent = inc;
        }
        rows
    }

    fn sample() -> (Vec<String>, BTreeMap<String, Vec<IterationRecord>>) {
        let a = with_incumbents(vec![
            row("a", 0, true, Some(400.0)),
            row("a", 1, false, None),
            row("a", 2, true, Some(100.0)),
        ]);
        let b = with_incumbents(vec![
            row("b", 0, true, None),
            row("b", 1, true, Some(50.0)),
            row("b", 2, false, Some(60.0)),
        ]);
        // c stopped after iteration 0.
        let c = with_incumbents(vec![row("c", 0, true, None)]);
        let ids = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let rows = BTreeMap::from([("a".into(), a), ("b".into(), b), ("c".into(), c)]);
        (ids, rows)
    }

    #[test]
    fn iterations_count_incumbents_and_problems_that_reached_them() {
        let (ids, rows) = sample();
        let errors = BTreeMap::from([("c".to_string(), "model down".to_string())]);
        let report = Report::build(info(2), &ids, &rows, &errors, &HashMap::new(), 200);
        let p: Vec<(usize, usize)> = report
            .per_iteration
            .iter()
            .map(|p| (p.problems, p.passed))
            .collect();
        assert_eq!(p, [(3, 1), (2, 2), (2, 2)]);
        assert!((report.per_iteration[0].pass_at_1 - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(report.per_iteration[1].accepted, 1);
        assert!(report.per_iteration.iter().all(|p| p.beyond_t.is_none()));

        let a = &report.problems[0];
        assert_eq!(a.incumbent, Some(2));
        assert_eq!(a.time, Some(100.0));
        assert_eq!(a.accepted_at, [0, 2]);
        assert_eq!(a.gain, Some(0.75));
        let b = &report.problems[1];
        assert_eq!(
            b.time,
            Some(50.0),
            "the rejected slower candidate is not final"
        );
        let c = &report.problems[2];
        assert!(!c.complete && !c.passed);
        assert_eq!(c.error.as_deref(), Some("model down"));
        assert_eq!(report.totals.complete, 2);
        assert_eq!(report.totals.errors, 1);
        assert_eq!(report.totals.final_passed, 2);
    }

    #[test]
    fn beyond_uses_calibrated_references() {
        let (ids, rows) = sample();
        let refs = vec![
            RecordedPerformance::new(80.0, 1000.0, 80_000.0),
            RecordedPerformance::new(500.0, 1000.0, 500_000.0),
        ];
        let references = HashMap::from([("a".to_string(), refs.clone()), ("b".into(), refs)]);
        let report = Report::build(info(2), &ids, &rows, &BTreeMap::new(), &references, 200);
        let last = report.per_iteration.last().unwrap();
        assert_eq!(last.scored, 2);
        // a: 100 ms beats 1 of 2 (0.5); b: 50 ms beats both (1.0).
        let t = last.beyond_t.unwrap();
        assert!((t.mean - 0.75).abs() < 1e-12, "{t:?}");
        let first = &report.per_iteration[0];
        // a at 400 ms: 0.5; b failed: 0.
        assert!((first.beyond_t.unwrap().mean - 0.25).abs() < 1e-12);
        assert_eq!(report.problems[1].percentiles.unwrap().time, 1.0);
        assert_eq!(report.series().len(), 4);
    }

    #[test]
    fn the_report_files_are_written() {
        let (ids, rows) = sample();
        let report = Report::build(info(2), &ids, &rows, &BTreeMap::new(), &HashMap::new(), 100);
        let dir = tempfile::tempdir().unwrap();
        let files = report.write(dir.path()).unwrap();
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        assert!(md.contains("| 2 | 2 | 100.0% |"), "{md}");
        assert!(md.contains("Beyond-T/M/I need measured references"));
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
        assert_eq!(back, report);
        let finals = std::fs::read_to_string(&files.solutions).unwrap();
        assert_eq!(finals.lines().count(), 3);
        assert!(finals.contains("\"problem_id\":\"a\""));
        assert!(std::fs::metadata(&files.png).unwrap().len() > 5_000);
        assert!(std::fs::metadata(&files.svg).unwrap().len() > 2_000);
    }
}
