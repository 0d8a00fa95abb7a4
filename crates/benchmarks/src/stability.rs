//! How reproducible scores are: two calibrations of the same solutions (separate runs of the
//! protocol) compared solution by solution. For each objective: how far each solution's
//! percentile among the other references of its problem moves between the two, under the
//! paper's rule and under the tie rule (midrank within the noise band); how far its figure
//! moves; its within-run CV; how often its two figures tie with each other under the tie rule
//! (identical code should score as itself); and how many pairs of solutions whose figures are
//! 10% or more apart swap order. Pass/fail flips are listed. Problems with one solution (as in
//! LeetCodeDataset) have no percentile but count in the figures' changes and self-ties. `afterburner bench stability` runs the experiment and
//! prints [`StabilityReport::markdown`].

use std::collections::BTreeMap;

use afterburner_sandbox::{Comparison, Noise, Objective, RecordedPerformance};
use serde::Serialize;

use crate::calibration::CalibrationRecord;
use crate::metrics::{instructions_percentile, percentile_beaten, percentile_midrank};

/// Two figures this far apart (relative to the smaller) must keep their order between runs.
pub const FAR_APART: f64 = 0.10;

/// The comparison of two calibrations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StabilityReport {
    /// Solutions present in both calibrations.
    pub common: usize,
    /// Solutions passing in both (their figures are compared).
    pub passing: usize,
    /// Of those, solutions in problems with at least two of them (their percentiles are compared).
    pub compared: usize,
    /// Solutions that passed in one calibration and failed in the other: `id: first then second`.
    pub flips: Vec<String>,
    /// One row per objective, in [`Objective::ALL`] order.
    pub objectives: Vec<ObjectiveStability>,
    /// The same rows from the raw figures, before drift correction, when every compared
    /// record keeps them (a side-by-side of the correction on the same runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_objectives: Option<Vec<ObjectiveStability>>,
    /// How instruction counts moved, when both calibrations counted them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<InstructionStability>,
}

/// How instruction counts (Beyond-Instr) moved between the two calibrations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstructionStability {
    /// Solutions counted in both.
    pub solutions: usize,
    /// Mean absolute change of a solution's Beyond-Instr percentile among the other counted
    /// solutions of its problem, percentage points.
    pub mean_pp: f64,
    /// 90th percentile of that change.
    pub p90_pp: f64,
    /// Median relative change of a count, percent.
    pub median_change_pct: f64,
    /// Largest relative change of a count, percent.
    pub max_change_pct: f64,
}

/// How one objective's figures and percentiles moved between the two calibrations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectiveStability {
    /// The objective.
    pub objective: Objective,
    /// Solutions compared.
    pub solutions: usize,
    /// Mean absolute change of a solution's percentile, paper's rule, percentage points.
    pub paper_mean_pp: f64,
    /// 90th percentile of that change, paper's rule.
    pub paper_p90_pp: f64,
    /// Mean absolute change of a solution's percentile under the tie rule (midrank).
    pub midrank_mean_pp: f64,
    /// 90th percentile of that change under the tie rule.
    pub midrank_p90_pp: f64,
    /// Median relative change of a solution's figure, percent.
    pub median_change_pct: f64,
    /// 90th percentile of the relative change, percent.
    pub p90_change_pct: f64,
    /// Median within-run CV in the first calibration, percent.
    pub median_cv_pct: f64,
    /// Solutions whose figures from the two calibrations tie under the tie rule, percent.
    pub self_tied_pct: f64,
    /// Pairs of solutions of one problem whose figures (mean of both calibrations) are at least
    /// [`FAR_APART`] apart.
    pub far_pairs: usize,
    /// Of those, pairs the two calibrations order differently.
    pub swapped: usize,
}

/// Which of a record's figures are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Figures {
    /// The recorded (drift-corrected) figures.
    Recorded,
    /// The raw figures, before drift correction.
    Raw,
}

/// A passing record's figures with their noise (records written before figures carried their
/// noise get it from their CVs).
fn figures(record: &CalibrationRecord, which: Figures) -> Option<RecordedPerformance> {
    if which == Figures::Raw {
        return record.raw.filter(|_| record.passed);
    }
    let perf = record.performance.filter(|_| record.passed)?;
    Some(match (perf.noise, &record.cv) {
        (None, Some(cv)) => perf.with_noise(Noise::of(cv)),
        _ => perf,
    })
}

/// Compares two calibrations of the same solutions (records matched by problem and solution id),
/// on the recorded figures and, where every compared record keeps them, on the raw ones.
pub fn compare(first: &[CalibrationRecord], second: &[CalibrationRecord]) -> StabilityReport {
    let mut report = compare_figures(first, second, Figures::Recorded);
    let raw = compare_figures(first, second, Figures::Raw);
    if raw.passing == report.passing && report.passing > 0 {
        report.raw_objectives = Some(raw.objectives);
    }
    report.instructions = instruction_stability(first, second);
    report
}

/// Counts of the solutions counted in both calibrations, per problem:
/// `(count in the first, count in the second)`.
fn instruction_stability(
    first: &[CalibrationRecord],
    second: &[CalibrationRecord],
) -> Option<InstructionStability> {
    let count = |r: &CalibrationRecord| r.performance.filter(|_| r.passed)?.instructions;
    let mut by_problem: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for a in first {
        let Some(b) = second.iter().find(|b| {
            b.key.problem_id == a.key.problem_id && b.key.solution_id == a.key.solution_id
        }) else {
            continue;
        };
        if let (Some(x), Some(y)) = (count(a), count(b)) {
            by_problem
                .entry(&a.key.problem_id)
                .or_default()
                .push((x, y));
        }
    }
    let (mut moves, mut changes) = (Vec::new(), Vec::new());
    for counts in by_problem.values() {
        for (i, &(x, y)) in counts.iter().enumerate() {
            changes.push((y - x).abs() / x.max(1.0));
            let others =
                |second: bool| -> Vec<RecordedPerformance> {
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, &(a, b))| {
                            RecordedPerformance::new(0.0, 0.0, 0.0)
                                .with_instructions(Some(if second { b } else { a }))
                        })
                        .collect()
                };
            if let (Some(p), Some(q)) = (
                instructions_percentile(x, &others(false)),
                instructions_percentile(y, &others(true)),
            ) {
                moves.push((p - q).abs());
            }
        }
    }
    (!changes.is_empty()).then(|| InstructionStability {
        solutions: changes.len(),
        mean_pp: 100.0 * mean(&moves),
        p90_pp: 100.0 * quantile(&moves, 0.9),
        median_change_pct: 100.0 * quantile(&changes, 0.5),
        max_change_pct: 100.0 * quantile(&changes, 1.0),
    })
}

fn compare_figures(
    first: &[CalibrationRecord],
    second: &[CalibrationRecord],
    which: Figures,
) -> StabilityReport {
    let index = |records: &[CalibrationRecord]| -> BTreeMap<(String, String), CalibrationRecord> {
        records
            .iter()
            .map(|r| {
                (
                    (r.key.problem_id.clone(), r.key.solution_id.clone()),
                    r.clone(),
                )
            })
            .collect()
    };
    let (a, b) = (index(first), index(second));
    let mut common = 0;
    let mut flips = Vec::new();
    // Per problem: (solution id, figures in the first, figures in the second).
    let mut by_problem: BTreeMap<&str, Vec<(&str, RecordedPerformance, RecordedPerformance)>> =
        BTreeMap::new();
    for ((problem, solution), x) in &a {
        let Some(y) = b.get(&(problem.clone(), solution.clone())) else {
            continue;
        };
        common += 1;
        if x.passed != y.passed {
            flips.push(format!("{solution}: {} then {}", x.status, y.status));
        }
        if let (Some(fx), Some(fy)) = (figures(x, which), figures(y, which)) {
            by_problem
                .entry(problem)
                .or_default()
                .push((solution, fx, fy));
        }
    }
    let passing = by_problem.values().map(Vec::len).sum();
    let compared = by_problem
        .values()
        .filter(|solutions| solutions.len() >= 2)
        .map(Vec::len)
        .sum();
    let objectives = Objective::ALL
        .into_iter()
        .map(|objective| objective_stability(objective, &by_problem))
        .collect();
    StabilityReport {
        common,
        passing,
        compared,
        flips,
        objectives,
        raw_objectives: None,
        instructions: None,
    }
}

fn objective_stability(
    objective: Objective,
    by_problem: &BTreeMap<&str, Vec<(&str, RecordedPerformance, RecordedPerformance)>>,
) -> ObjectiveStability {
    let (mut paper, mut midrank, mut change, mut cvs) = (vec![], vec![], vec![], vec![]);
    let mut self_tied = Vec::new();
    let (mut far_pairs, mut swapped) = (0, 0);
    for solutions in by_problem.values() {
        for (i, (_, fa, fb)) in solutions.iter().enumerate() {
            let others = |second: bool| -> Vec<RecordedPerformance> {
                solutions
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, x, y))| if second { *y } else { *x })
                    .collect()
            };
            let (oa, ob) = (others(false), others(true));
            let values = |v: &[RecordedPerformance]| -> Vec<f64> {
                v.iter().map(|p| p.value(objective)).collect()
            };
            let (va, vb) = (fa.value(objective), fb.value(objective));
            if let (Some(pa), Some(pb)) = (
                percentile_beaten(va, &values(&oa)),
                percentile_beaten(vb, &values(&ob)),
            ) {
                paper.push((pa - pb).abs());
            }
            if let (Some(pa), Some(pb)) = (
                percentile_midrank(fa, &oa, objective),
                percentile_midrank(fb, &ob, objective),
            ) {
                midrank.push((pa - pb).abs());
            }
            if va > 0.0 {
                change.push((vb - va).abs() / va);
            }
            cvs.push(fa.cv(objective));
            self_tied.push(if fa.compare(fb, objective) == Comparison::Tied {
                1.0
            } else {
                0.0
            });
            for (_, ga, gb) in &solutions[i + 1..] {
                let (wa, wb) = (ga.value(objective), gb.value(objective));
                let (mean_self, mean_other) = ((va + vb) / 2.0, (wa + wb) / 2.0);
                if (mean_self - mean_other).abs() < FAR_APART * mean_self.min(mean_other) {
                    continue;
                }
                far_pairs += 1;
                if (va < wa) != (vb < wb) {
                    swapped += 1;
                }
            }
        }
    }
    ObjectiveStability {
        objective,
        solutions: paper.len(),
        paper_mean_pp: 100.0 * mean(&paper),
        paper_p90_pp: 100.0 * quantile(&paper, 0.9),
        midrank_mean_pp: 100.0 * mean(&midrank),
        midrank_p90_pp: 100.0 * quantile(&midrank, 0.9),
        median_change_pct: 100.0 * quantile(&change, 0.5),
        p90_change_pct: 100.0 * quantile(&change, 0.9),
        median_cv_pct: 100.0 * quantile(&cvs, 0.5),
        self_tied_pct: 100.0 * mean(&self_tied),
        far_pairs,
        swapped,
    }
}

impl StabilityReport {
    /// The report as Markdown: a summary line, the flips, one table row per objective.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "{} solutions in both calibrations, {} passing in both (figures compared), {} of them \
             in problems with two or more (percentiles compared), {} pass/fail flips\n",
            self.common,
            self.passing,
            self.compared,
            self.flips.len()
        );
        for flip in &self.flips {
            s.push_str(&format!("- flip: {flip}\n"));
        }
        s.push_str(
            "\n| objective | solutions | percentile change, paper's rule: mean | p90 | \
             tie rule (midrank): mean | p90 | figure change: median | p90 | within-run CV: median \
             | tied with itself | pairs >= 10% apart | swapped |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let rows = self.objectives.iter().map(|o| (o, ""));
        let raw_rows = self.raw_objectives.iter().flatten().map(|o| (o, " (raw)"));
        for (o, label) in rows.chain(raw_rows) {
            let pp = |x: f64| cell(x, 1, " pp");
            let pct = |x: f64, digits| cell(x, digits, "%");
            s.push_str(&format!(
                "| {}{label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                o.objective,
                o.solutions,
                pp(o.paper_mean_pp),
                pp(o.paper_p90_pp),
                pp(o.midrank_mean_pp),
                pp(o.midrank_p90_pp),
                pct(o.median_change_pct, 2),
                pct(o.p90_change_pct, 2),
                pct(o.median_cv_pct, 2),
                pct(o.self_tied_pct, 0),
                o.far_pairs,
                o.swapped
            ));
        }
        if let Some(i) = &self.instructions {
            s.push_str(&format!(
                "\ninstructions (valgrind): {} solutions counted in both; Beyond-Instr percentile \
                 change mean {} (p90 {}); count change median {}, largest {}\n",
                i.solutions,
                cell(i.mean_pp, 1, " pp"),
                cell(i.p90_pp, 1, " pp"),
                cell(i.median_change_pct, 5, "%"),
                cell(i.max_change_pct, 5, "%"),
            ));
        }
        s
    }
}

/// A table cell: the figure with `digits` decimals and its unit, or `-` when there is none
/// (no percentile without a second solution).
fn cell(x: f64, digits: usize, unit: &str) -> String {
    if x.is_finite() {
        format!("{x:.digits$}{unit}")
    } else {
        "-".to_string()
    }
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// The `q` quantile (nearest rank) of the finite values; NaN when there are none.
fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[k]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::CalibrationKey;
    use afterburner_sandbox::{Language, Status};

    fn record(problem: &str, solution: &str, time_ms: f64, memory_kb: f64) -> CalibrationRecord {
        CalibrationRecord {
            key: CalibrationKey::new(problem, solution, "code", "suite", "fp", "proto"),
            language: Language::Python,
            status: Status::Accepted,
            passed: true,
            performance: Some(RecordedPerformance::new(
                time_ms,
                memory_kb,
                time_ms * memory_kb,
            )),
            raw: None,
            cv: None,
            runs: 3,
            tests_passed: 1,
            tests_total: 1,
            detail: None,
            measured_at: 0,
        }
    }

    /// Constructed figures: three solutions whose times are near-ties (1% apart) swap places
    /// between the calibrations; a fourth is far slower. The paper's rule moves percentiles, the
    /// tie rule does not; the far pairs keep their order; a flip is listed.
    #[test]
    fn near_ties_move_paper_percentiles_but_not_midrank_ones() {
        let first = vec![
            record("p", "a", 100.0, 1000.0),
            record("p", "b", 101.0, 1000.0),
            record("p", "c", 102.0, 1000.0),
            record("p", "d", 200.0, 1000.0),
            record("q", "x", 5.0, 10.0),
        ];
        let mut second = vec![
            record("p", "a", 102.0, 1000.0),
            record("p", "b", 101.0, 1000.0),
            record("p", "c", 100.0, 1000.0),
            record("p", "d", 210.0, 1000.0),
            record("q", "x", 5.0, 10.0),
        ];
        second[4].passed = false;
        second[4].status = Status::WrongAnswer;
        let report = compare(&first, &second);
        assert_eq!(report.common, 5);
        assert_eq!(report.compared, 4);
        assert_eq!(
            report.flips,
            vec!["x: accepted then wrong_answer".to_string()]
        );
        let time = &report.objectives[0];
        assert_eq!(time.objective, Objective::Time);
        assert_eq!(time.solutions, 4);
        // Paper: a goes from beating 3 of 3 (b, c, d >= 100) to 1 of 3; c the other way.
        assert!(time.paper_mean_pp > 30.0, "{time:?}");
        assert_eq!(time.midrank_mean_pp, 0.0, "{time:?}");
        // d is 2x the others in both: 3 far pairs, none swapped.
        assert_eq!((time.far_pairs, time.swapped), (3, 0));
        // Memory never moves.
        let memory = &report.objectives[1];
        assert_eq!(memory.midrank_mean_pp, 0.0);
        assert_eq!(memory.median_change_pct, 0.0);
        let md = report.markdown();
        assert!(md.contains("1 pass/fail flips"), "{md}");
        assert!(md.contains("| time | 4 |"), "{md}");
        // a, b, c move 2% at most (within the 3% drift floor): tied with themselves; d moved 5%.
        assert_eq!(time.self_tied_pct, 75.0, "{time:?}");
        assert_eq!(memory.self_tied_pct, 100.0);
    }

    /// A problem with one solution (LeetCodeDataset) has no percentile, but its figures count.
    #[test]
    fn single_solutions_count_in_figure_changes_and_self_ties() {
        let first = vec![
            record("p", "a", 100.0, 1000.0),
            record("q", "x", 50.0, 10.0),
        ];
        let second = vec![
            record("p", "a", 110.0, 1000.0),
            record("q", "x", 50.5, 10.0),
        ];
        let report = compare(&first, &second);
        assert_eq!((report.passing, report.compared), (2, 0));
        let time = &report.objectives[0];
        assert_eq!(time.solutions, 0, "no percentile without a second solution");
        assert!((time.p90_change_pct - 10.0).abs() < 1e-9, "{time:?}");
        assert_eq!(time.self_tied_pct, 50.0, "x moved 1%, a 10%");
        assert!(
            report.raw_objectives.is_none(),
            "these records keep no raw figures"
        );
        assert!(
            report
                .markdown()
                .contains("| time | 0 | - | - | - | - | 1.00% |")
        );
    }

    /// Records keeping their raw figures get a second table: the same runs before correction.
    #[test]
    fn raw_figures_are_compared_beside_the_corrected_ones() {
        let with_raw = |mut r: CalibrationRecord, raw_ms: f64| {
            r.raw = Some(RecordedPerformance::new(raw_ms, 1000.0, raw_ms * 1000.0));
            r
        };
        let first = vec![with_raw(record("p", "a", 100.0, 1000.0), 100.0)];
        let second = vec![with_raw(record("p", "a", 101.0, 1000.0), 150.0)];
        let report = compare(&first, &second);
        let raw = report.raw_objectives.as_ref().expect("raw rows");
        assert!((raw[0].median_change_pct - 50.0).abs() < 1e-9, "{raw:?}");
        assert!((report.objectives[0].median_change_pct - 1.0).abs() < 1e-9);
        assert!(report.markdown().contains("| time (raw) |"));
        assert!(report.instructions.is_none(), "nothing was counted");
    }

    /// Counted records get an instructions line: counts a few instructions apart tie.
    #[test]
    fn instruction_counts_are_compared_when_both_calibrations_counted() {
        let counted = |mut r: CalibrationRecord, n: f64| {
            r.performance = r.performance.map(|p| p.with_instructions(Some(n)));
            r
        };
        let first = vec![
            counted(record("p", "a", 100.0, 1000.0), 1_000_000.0),
            counted(record("p", "b", 100.0, 1000.0), 2_000_000.0),
        ];
        let second = vec![
            counted(record("p", "a", 120.0, 1000.0), 1_000_003.0),
            counted(record("p", "b", 90.0, 1000.0), 2_000_000.0),
        ];
        let i = compare(&first, &second).instructions.expect("counted");
        assert_eq!(i.solutions, 2);
        assert_eq!(i.mean_pp, 0.0, "{i:?}");
        assert!((i.max_change_pct - 0.0003).abs() < 1e-9, "{i:?}");
        assert!(
            compare(&first, &second)
                .markdown()
                .contains("instructions (valgrind): 2")
        );
    }
}
