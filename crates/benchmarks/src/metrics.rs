//! The paper's metrics (SPEC section 5): pass@1, Beyond-T/M/I, B/M/W/F buckets, and
//! percentile-bootstrap confidence intervals that resample problems and runs within them.
//!
//! For a passing solution with figure `x` on an objective and the figures `D` of the *passing*
//! reference solutions of its problem, `pct = (|{d clearly worse}| + 0.5 |{d tied}|) / |D|`
//! (midrank, [`percentile_midrank`]): a reference is tied when the two figures are within the
//! tie band of each other ([`RecordedPerformance::compare`]: two standard deviations of their
//! difference from each one's recorded CV, never under the objective's drift floor of 3% for
//! time and the integral, 0.5% for memory), and clearly worse beyond it. The paper's rule,
//! `|{d in D : d >= x}| / |D|`, is [`percentile_beaten`]; it ranks figures that differ by less
//! than the measurement can tell apart, which is what made percentiles move ~14 points between
//! two calibrations of the same solutions (BENCHMARKS.md). A failed solution scores 0 on every
//! objective. pass@1 and Beyond-X are means over problems (of the mean over a problem's runs),
//! so Beyond-X never exceeds pass@1.
//!
//! **Empty reference sets.** With no passing reference, `pct` is undefined:
//! [`percentile_beaten`] returns `None`, [`score_run`] returns `None` for a passing run, and
//! [`summarize`] leaves such problems out of *every* metric (listing them in
//! [`Summary::excluded`]) so that pass@1 and Beyond-X share one denominator and excluding a
//! problem never depends on how the solution did.
//!
//! All measured values are expected to be finite; a `NaN` beats nothing.

use serde::{Deserialize, Serialize};

/// Re-exported from the sandbox crate, where the measurement vocabulary lives.
pub use afterburner_sandbox::{Comparison, Objective, RecordedPerformance};

/// The position of an objective in per-objective arrays (T, M, I).
fn index(objective: Objective) -> usize {
    match objective {
        Objective::Time => 0,
        Objective::Memory => 1,
        Objective::Integral => 2,
    }
}

/// The percentile rule Beyond-T/M/I use, in one line for reports.
pub const PERCENTILE_RULE: &str = "percentiles: midrank (references tied within 2 standard \
    deviations of the recorded run-to-run noise count half; smallest band 3% for time and the \
    integral, 0.5% for memory)";

/// The share of `references` that `x` beats on `objective` under the tie rule, ties counting
/// half (midrank): `(clearly worse + 0.5 tied) / |D|`; `None` when there are none.
pub fn percentile_midrank(
    x: &RecordedPerformance,
    references: &[RecordedPerformance],
    objective: Objective,
) -> Option<f64> {
    if references.is_empty() {
        return None;
    }
    let mut score = 0.0;
    for d in references {
        score += match x.compare(d, objective) {
            Comparison::Better => 1.0,
            Comparison::Tied => 0.5,
            Comparison::Worse => 0.0,
        };
    }
    Some(score / references.len() as f64)
}

/// Instruction counts this close (relative) are the same: a counted run still varies by a few
/// dozen instructions in 10^8 (the driver's own timing output has a varying number of digits).
pub const INSTRUCTIONS_TIE: f64 = 1e-5;

/// Beyond-Instr's percentile: the share of references that executed more instructions than
/// `count`, counts within [`INSTRUCTIONS_TIE`] of each other counting half; `None` when no
/// reference has a count.
pub fn instructions_percentile(count: f64, references: &[RecordedPerformance]) -> Option<f64> {
    let counts: Vec<f64> = references.iter().filter_map(|r| r.instructions).collect();
    if counts.is_empty() {
        return None;
    }
    let score: f64 = counts
        .iter()
        .map(|&d| {
            if (d - count).abs() <= INSTRUCTIONS_TIE * d.max(count) {
                0.5
            } else if d > count {
                1.0
            } else {
                0.0
            }
        })
        .sum();
    Some(score / counts.len() as f64)
}

/// Beyond-Instr (COFFE's machine-independent cost; not the paper's Beyond-I, the memory
/// integral): the mean over problems whose references have instruction counts of the mean over
/// runs of [`instructions_percentile`], a failed run (or a passing one without a count) scoring
/// 0; `None` when no problem has counted references.
pub fn beyond_instructions(problems: &[ProblemRuns]) -> Option<f64> {
    let per_problem: Vec<f64> = problems
        .iter()
        .filter(|p| p.references.iter().any(|r| r.instructions.is_some()))
        .filter(|p| !p.runs.is_empty())
        .map(|p| {
            let total: f64 = p
                .runs
                .iter()
                .map(|run| {
                    run.and_then(|r| r.instructions)
                        .and_then(|c| instructions_percentile(c, &p.references))
                        .unwrap_or(0.0)
                })
                .sum();
            total / p.runs.len() as f64
        })
        .collect();
    (!per_problem.is_empty()).then(|| per_problem.iter().sum::<f64>() / per_problem.len() as f64)
}

/// The paper's rule: the share of reference values `d` with `d >= x` (exact ties count as
/// beaten, near-ties are ordered); `None` when there are none. Kept for comparison
/// (`datasets_report stability` prints both); scores use [`percentile_midrank`].
pub fn percentile_beaten(x: f64, references: &[f64]) -> Option<f64> {
    if references.is_empty() {
        return None;
    }
    let beaten = references.iter().filter(|&&d| d >= x).count();
    Some(beaten as f64 / references.len() as f64)
}

/// Where one solution falls against the references on one objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Bucket {
    /// B: clearly beats every reference (pct = 1).
    #[serde(rename = "B")]
    Best,
    /// M: beats some references but not all (0 < pct < 1).
    #[serde(rename = "M")]
    Middle,
    /// W: beats no reference (pct = 0).
    #[serde(rename = "W")]
    Worst,
    /// F: the solution failed.
    #[serde(rename = "F")]
    Failed,
}

/// The scores of one run of a solution: pass (0 or 1) and pct per objective (0 when failed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunScore {
    /// Whether the run passed all tests.
    pub passed: bool,
    /// Share of references beaten on time (ties count half).
    pub time: f64,
    /// Share of references beaten on peak memory (ties count half).
    pub memory: f64,
    /// Share of references beaten on the memory integral (ties count half).
    pub integral: f64,
}

impl RunScore {
    /// The score of a failed run: 0 everywhere.
    pub const FAILED: RunScore = RunScore {
        passed: false,
        time: 0.0,
        memory: 0.0,
        integral: 0.0,
    };

    /// The pct on one objective.
    pub fn pct(&self, objective: Objective) -> f64 {
        match objective {
            Objective::Time => self.time,
            Objective::Memory => self.memory,
            Objective::Integral => self.integral,
        }
    }

    /// The B/M/W/F bucket on one objective.
    pub fn bucket(&self, objective: Objective) -> Bucket {
        let pct = self.pct(objective);
        if !self.passed {
            Bucket::Failed
        } else if pct >= 1.0 {
            Bucket::Best
        } else if pct <= 0.0 {
            Bucket::Worst
        } else {
            Bucket::Middle
        }
    }

    /// pass, time, memory, integral as numbers, for averaging.
    fn values(&self) -> [f64; 4] {
        [
            if self.passed { 1.0 } else { 0.0 },
            self.time,
            self.memory,
            self.integral,
        ]
    }
}

/// Scores one run (`None`: it failed) against the passing references' measurements.
///
/// Returns `None` when the run passed but there is no reference to compare with.
pub fn score_run(
    run: Option<&RecordedPerformance>,
    references: &[RecordedPerformance],
) -> Option<RunScore> {
    let Some(run) = run else {
        return Some(RunScore::FAILED);
    };
    let pct = |objective: Objective| percentile_midrank(run, references, objective);
    Some(RunScore {
        passed: true,
        time: pct(Objective::Time)?,
        memory: pct(Objective::Memory)?,
        integral: pct(Objective::Integral)?,
    })
}

/// The runs of a solver on one problem, and the problem's passing references.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemRuns {
    /// The problem's id.
    pub problem_id: String,
    /// One entry per run: its measurement if it passed, `None` if it failed.
    pub runs: Vec<Option<RecordedPerformance>>,
    /// Measurements of the problem's *passing* reference solutions (same machine, same protocol).
    pub references: Vec<RecordedPerformance>,
}

/// Settings of the percentile bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    /// Number of resamples (0: intervals collapse to the point estimate).
    pub resamples: usize,
    /// Seed of the resampling generator; the same seed gives the same intervals.
    pub seed: u64,
    /// Coverage of the interval, in (0, 1).
    pub confidence: f64,
}

impl Default for BootstrapConfig {
    /// 10,000 resamples, a fixed seed, 95% intervals.
    fn default() -> Self {
        BootstrapConfig {
            resamples: 10_000,
            seed: 0x00af_7e2b_0e2e_2025,
            confidence: 0.95,
        }
    }
}

/// A point estimate with its bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The mean over problems.
    pub mean: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

/// How many runs fell in each bucket on one objective.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCounts {
    /// B: beat or tied every reference.
    pub best: usize,
    /// M: in between.
    pub middle: usize,
    /// W: beat no reference.
    pub worst: usize,
    /// F: failed.
    pub failed: usize,
}

impl BucketCounts {
    fn add(&mut self, bucket: Bucket) {
        match bucket {
            Bucket::Best => self.best += 1,
            Bucket::Middle => self.middle += 1,
            Bucket::Worst => self.worst += 1,
            Bucket::Failed => self.failed += 1,
        }
    }
}

/// pass@1 and Beyond-T/M/I over a set of problems, with intervals and buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of problems scored.
    pub problems: usize,
    /// Number of runs scored over those problems.
    pub runs: usize,
    /// Ids of problems left out: no runs, or no passing reference.
    pub excluded: Vec<String>,
    /// Share of passing runs (mean over problems).
    pub pass_at_1: Estimate,
    /// Beyond-T.
    pub beyond_time: Estimate,
    /// Beyond-M.
    pub beyond_memory: Estimate,
    /// Beyond-I.
    pub beyond_integral: Estimate,
    /// Bucket counts for time, memory and integral, in [`Objective::ALL`] order.
    pub buckets: [BucketCounts; 3],
}

impl Summary {
    /// The Beyond estimate for one objective.
    pub fn beyond(&self, objective: Objective) -> Estimate {
        match objective {
            Objective::Time => self.beyond_time,
            Objective::Memory => self.beyond_memory,
            Objective::Integral => self.beyond_integral,
        }
    }

    /// The bucket counts for one objective.
    pub fn bucket_counts(&self, objective: Objective) -> BucketCounts {
        self.buckets[index(objective)]
    }
}

/// Why metrics could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// No problem had both a run and a passing reference.
    #[error("no problem can be scored: each has no runs or no passing reference ({} excluded)", excluded.len())]
    NothingToScore {
        /// The problems left out.
        excluded: Vec<String>,
    },
    /// The confidence level is not strictly between 0 and 1.
    #[error("confidence must be strictly between 0 and 1, got {0}")]
    BadConfidence(f64),
}

/// Computes pass@1 and Beyond-T/M/I with percentile-bootstrap intervals.
///
/// Each bootstrap resample draws problems with replacement and, within each drawn problem,
/// its runs with replacement; the interval is the central `confidence` share of the
/// resampled means (linear interpolation between order statistics).
pub fn summarize(
    problems: &[ProblemRuns],
    config: &BootstrapConfig,
) -> Result<Summary, MetricsError> {
    if !(config.confidence > 0.0 && config.confidence < 1.0) {
        return Err(MetricsError::BadConfidence(config.confidence));
    }
    let mut excluded = Vec::new();
    let mut scores: Vec<Vec<[f64; 4]>> = Vec::with_capacity(problems.len());
    let mut buckets = [BucketCounts::default(); 3];
    for problem in problems {
        let runs: Option<Vec<RunScore>> = if problem.references.is_empty() {
            None
        } else {
            problem
                .runs
                .iter()
                .map(|run| score_run(run.as_ref(), &problem.references))
                .collect()
        };
        match runs {
            Some(runs) if !runs.is_empty() => {
                for run in &runs {
                    for objective in Objective::ALL {
                        buckets[index(objective)].add(run.bucket(objective));
                    }
                }
                scores.push(runs.iter().map(RunScore::values).collect());
            }
            _ => excluded.push(problem.problem_id.clone()),
        }
    }
    if scores.is_empty() {
        return Err(MetricsError::NothingToScore { excluded });
    }

    let point = mean_of_means(&scores);
    let mut draws: [Vec<f64>; 4] = std::array::from_fn(|_| Vec::with_capacity(config.resamples));
    let mut rng = SplitMix64(config.seed);
    for _ in 0..config.resamples {
        let resample = resampled_mean(&scores, &mut rng);
        for (d, v) in draws.iter_mut().zip(resample) {
            d.push(v);
        }
    }
    let alpha = (1.0 - config.confidence) / 2.0;
    let estimates: [Estimate; 4] = std::array::from_fn(|k| {
        let d = &mut draws[k];
        d.sort_by(f64::total_cmp);
        Estimate {
            mean: point[k],
            low: quantile(d, alpha).unwrap_or(point[k]),
            high: quantile(d, 1.0 - alpha).unwrap_or(point[k]),
        }
    });
    Ok(Summary {
        problems: scores.len(),
        runs: scores.iter().map(Vec::len).sum(),
        excluded,
        pass_at_1: estimates[0],
        beyond_time: estimates[1],
        beyond_memory: estimates[2],
        beyond_integral: estimates[3],
        buckets,
    })
}

/// Mean over problems of the mean over each problem's runs, for all four values at once.
fn mean_of_means(scores: &[Vec<[f64; 4]>]) -> [f64; 4] {
    let mut total = [0.0; 4];
    for runs in scores {
        let mut sum = [0.0; 4];
        for run in runs {
            add(&mut sum, run);
        }
        for (t, s) in total.iter_mut().zip(sum) {
            *t += s / runs.len() as f64;
        }
    }
    total.map(|t| t / scores.len() as f64)
}

/// One bootstrap replicate of [`mean_of_means`]: problems, then runs, drawn with replacement.
fn resampled_mean(scores: &[Vec<[f64; 4]>], rng: &mut SplitMix64) -> [f64; 4] {
    let mut total = [0.0; 4];
    for _ in 0..scores.len() {
        let runs = &scores[rng.below(scores.len())];
        if let [only] = runs.as_slice() {
            add(&mut total, only);
            continue;
        }
        let mut sum = [0.0; 4];
        for _ in 0..runs.len() {
            add(&mut sum, &runs[rng.below(runs.len())]);
        }
        for (t, s) in total.iter_mut().zip(sum) {
            *t += s / runs.len() as f64;
        }
    }
    total.map(|t| t / scores.len() as f64)
}

fn add(sum: &mut [f64; 4], values: &[f64; 4]) {
    for (s, v) in sum.iter_mut().zip(values) {
        *s += v;
    }
}

/// The `q` quantile of sorted values, interpolating linearly between order statistics.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let h = last as f64 * q.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(last);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// SplitMix64: a tiny, fast, seedable generator, plenty for bootstrap resampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (multiply-shift; the bias is below 2^-64 * n).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_counts_rank_exactly_and_failed_runs_score_zero() {
        let counted = |n: f64| perf(1.0, 1.0, 1.0).with_instructions(Some(n));
        let refs = [
            counted(100.0),
            counted(200.0),
            counted(300.0),
            perf(1.0, 1.0, 1.0),
        ];
        // Fewer than 200 and 300, tied with none: 2 of the 3 counted references.
        assert!(close(
            instructions_percentile(150.0, &refs).unwrap(),
            2.0 / 3.0
        ));
        // Equal to 200: beats 300, ties 200.
        assert!(close(
            instructions_percentile(200.0, &refs).unwrap(),
            1.5 / 3.0
        ));
        // A few instructions in 10^8 apart is a tie too.
        let big = [counted(243_425_121.0)];
        assert!(close(
            instructions_percentile(243_425_138.0, &big).unwrap(),
            0.5
        ));
        assert!(close(
            instructions_percentile(243_000_000.0, &big).unwrap(),
            1.0
        ));
        assert_eq!(instructions_percentile(5.0, &[perf(1.0, 1.0, 1.0)]), None);
        let problems = [
            ProblemRuns {
                problem_id: "a".into(),
                runs: vec![Some(counted(50.0)), None],
                references: refs.to_vec(),
            },
            ProblemRuns {
                problem_id: "uncounted".into(),
                runs: vec![Some(perf(1.0, 1.0, 1.0))],
                references: vec![perf(2.0, 2.0, 2.0)],
            },
        ];
        // Problem a: (1 + 0) / 2; the uncounted problem is not scored.
        assert!(close(beyond_instructions(&problems).unwrap(), 0.5));
        assert_eq!(beyond_instructions(&problems[1..]), None);
    }

    fn perf(time_ms: f64, memory_kb: f64, integral: f64) -> RecordedPerformance {
        RecordedPerformance::new(time_ms, memory_kb, integral)
    }

    fn one_run(
        id: &str,
        run: Option<RecordedPerformance>,
        refs: Vec<RecordedPerformance>,
    ) -> ProblemRuns {
        ProblemRuns {
            problem_id: id.to_string(),
            runs: vec![run],
            references: refs,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn percentile_beaten_counts_references_at_or_above_the_value() {
        let refs = [10.0, 20.0, 30.0, 40.0];
        // 30 and 40 are >= 25: 2 of 4.
        assert_eq!(percentile_beaten(25.0, &refs), Some(0.5));
        // Ties count as beaten: 20, 30, 40 are >= 20: 3 of 4.
        assert_eq!(percentile_beaten(20.0, &refs), Some(0.75));
        assert_eq!(percentile_beaten(5.0, &refs), Some(1.0));
        assert_eq!(percentile_beaten(50.0, &refs), Some(0.0));
        assert_eq!(percentile_beaten(f64::NAN, &refs), Some(0.0));
    }

    #[test]
    fn midrank_counts_references_within_the_tie_band_half() {
        use afterburner_sandbox::Noise;
        let t = Objective::Time;
        // No recorded noise: only the 3% floor. 100 vs 101 and 102 tie (0.5 each), 90 is
        // clearly better than 100 (0), 120 clearly worse (1): (0 + 0.5 + 0.5 + 1) / 4.
        let refs = [
            perf(90.0, 1.0, 1.0),
            perf(101.0, 1.0, 1.0),
            perf(102.0, 1.0, 1.0),
            perf(120.0, 1.0, 1.0),
        ];
        let x = perf(100.0, 1.0, 1.0);
        assert_eq!(percentile_midrank(&x, &refs, t), Some(0.5));
        // The paper's rule orders the near-ties: 101, 102 and 120 are >= 100.
        let values: Vec<f64> = refs.iter().map(|r| r.time_ms).collect();
        assert_eq!(percentile_beaten(100.0, &values), Some(0.75));
        // 15% CV on everything widens the band to 2 * sqrt(15^2 + 18^2) = 46.9 ms against
        // 120: every reference now ties.
        let noisy = Noise {
            time: 0.15,
            memory: 0.0,
            integral: 0.0,
        };
        let refs: Vec<_> = refs.iter().map(|r| r.with_noise(noisy)).collect();
        assert_eq!(
            percentile_midrank(&x.with_noise(noisy), &refs, t),
            Some(0.5)
        );
        // Identical figures: a solution tied with every reference is in the middle, not best.
        let same = [perf(100.0, 1.0, 1.0); 3];
        let run = score_run(Some(&x), &same).unwrap();
        assert_eq!(run.pct(t), 0.5);
        assert_eq!(run.bucket(t), Bucket::Middle);
        assert_eq!(percentile_midrank(&x, &[], t), None);
    }

    #[test]
    fn percentile_beaten_is_undefined_without_references() {
        assert_eq!(percentile_beaten(1.0, &[]), None);
    }

    #[test]
    fn runs_fall_in_buckets_by_pct() {
        let refs = [perf(10.0, 100.0, 1.0), perf(20.0, 200.0, 2.0)];
        // time 5 beats both (B); memory 150 beats only 200 (M); integral 3 beats none (W).
        let run = score_run(Some(&perf(5.0, 150.0, 3.0)), &refs).unwrap();
        assert_eq!(run.bucket(Objective::Time), Bucket::Best);
        assert_eq!(run.bucket(Objective::Memory), Bucket::Middle);
        assert_eq!(run.pct(Objective::Memory), 0.5);
        assert_eq!(run.bucket(Objective::Integral), Bucket::Worst);
        let failed = score_run(None, &refs).unwrap();
        assert_eq!(failed, RunScore::FAILED);
        assert_eq!(failed.bucket(Objective::Time), Bucket::Failed);
    }

    #[test]
    fn a_passing_run_without_references_cannot_be_scored_but_a_failed_one_scores_zero() {
        assert_eq!(score_run(Some(&perf(1.0, 1.0, 1.0)), &[]), None);
        assert_eq!(score_run(None, &[]), Some(RunScore::FAILED));
    }

    #[test]
    fn summary_matches_a_hand_computed_case() {
        let refs = vec![
            perf(10.0, 100.0, 1000.0),
            perf(20.0, 200.0, 1000.0),
            perf(30.0, 200.0, 1000.0),
            perf(40.0, 200.0, 1000.0),
        ];
        let problems = [
            // time 25: beats 30 and 40, loses to 10 and 20 (25 is beyond 20's 3% band) -> 2/4;
            // memory 100: ties 100 (half), beats the three 200s -> 3.5/4; integral 500 -> 1.
            one_run("p1", Some(perf(25.0, 100.0, 500.0)), refs.clone()),
            // failed: 0 everywhere.
            one_run("p2", None, refs),
            // single reference (10, 100, 1000): time ties -> 0.5; memory 150 > 100 -> 0;
            // integral ties -> 0.5.
            one_run(
                "p3",
                Some(perf(10.0, 150.0, 1000.0)),
                vec![perf(10.0, 100.0, 1000.0)],
            ),
        ];
        let s = summarize(&problems, &BootstrapConfig::default()).unwrap();
        assert_eq!((s.problems, s.runs), (3, 3));
        assert!(s.excluded.is_empty());
        // pass@1 = 2/3; T = (0.5 + 0 + 0.5)/3; M = (0.875 + 0 + 0)/3; I = (1 + 0 + 0.5)/3.
        assert!(close(s.pass_at_1.mean, 2.0 / 3.0));
        assert!(close(s.beyond_time.mean, 1.0 / 3.0));
        assert!(close(s.beyond_memory.mean, 0.875 / 3.0));
        assert!(close(s.beyond_integral.mean, 0.5));
        for o in Objective::ALL {
            assert!(s.beyond(o).mean <= s.pass_at_1.mean);
        }
        let t = s.bucket_counts(Objective::Time);
        assert_eq!((t.best, t.middle, t.worst, t.failed), (0, 2, 0, 1));
        let m = s.bucket_counts(Objective::Memory);
        assert_eq!((m.best, m.middle, m.worst, m.failed), (0, 1, 1, 1));
        let i = s.bucket_counts(Objective::Integral);
        assert_eq!((i.best, i.middle, i.worst, i.failed), (1, 1, 0, 1));
        for e in [
            s.pass_at_1,
            s.beyond_time,
            s.beyond_memory,
            s.beyond_integral,
        ] {
            assert!(e.low <= e.mean && e.mean <= e.high, "{e:?}");
        }
    }

    #[test]
    fn runs_are_averaged_within_a_problem_before_averaging_over_problems() {
        let refs = vec![perf(10.0, 10.0, 10.0)];
        let problems = [
            // Two runs: one beats the reference (1), one fails (0): pass 0.5, T 0.5.
            ProblemRuns {
                problem_id: "a".into(),
                runs: vec![Some(perf(5.0, 5.0, 5.0)), None],
                references: refs.clone(),
            },
            // One run that passes but is slower: pass 1, T 0.
            one_run("b", Some(perf(20.0, 20.0, 20.0)), refs),
        ];
        let s = summarize(&problems, &BootstrapConfig::default()).unwrap();
        // pass = (0.5 + 1)/2 = 0.75; T = (0.5 + 0)/2 = 0.25.
        assert!(close(s.pass_at_1.mean, 0.75));
        assert!(close(s.beyond_time.mean, 0.25));
        assert_eq!(s.runs, 3);
    }

    #[test]
    fn problems_without_runs_or_passing_references_are_excluded_from_every_metric() {
        let problems = [
            one_run("scored", None, vec![perf(1.0, 1.0, 1.0)]),
            one_run("no-refs-failed", None, vec![]),
            one_run("no-refs-passed", Some(perf(1.0, 1.0, 1.0)), vec![]),
            ProblemRuns {
                problem_id: "no-runs".into(),
                runs: vec![],
                references: vec![perf(1.0, 1.0, 1.0)],
            },
        ];
        let s = summarize(&problems, &BootstrapConfig::default()).unwrap();
        assert_eq!(s.problems, 1);
        assert_eq!(s.excluded, ["no-refs-failed", "no-refs-passed", "no-runs"]);
        assert_eq!(s.pass_at_1.mean, 0.0);

        let err = summarize(&problems[1..], &BootstrapConfig::default()).unwrap_err();
        assert_eq!(
            err,
            MetricsError::NothingToScore {
                excluded: vec![
                    "no-refs-failed".into(),
                    "no-refs-passed".into(),
                    "no-runs".into()
                ]
            }
        );
        assert_eq!(
            summarize(&[], &BootstrapConfig::default()).unwrap_err(),
            MetricsError::NothingToScore { excluded: vec![] }
        );
    }

    #[test]
    fn bootstrap_of_identical_problems_has_zero_width() {
        let refs = vec![perf(10.0, 10.0, 10.0), perf(30.0, 30.0, 30.0)];
        // Every problem: time 20 beats 30 only (0.5), memory 5 beats both (1), integral 40 none (0).
        let problems: Vec<_> = (0..50)
            .map(|k| one_run(&format!("p{k}"), Some(perf(20.0, 5.0, 40.0)), refs.clone()))
            .collect();
        let s = summarize(&problems, &BootstrapConfig::default()).unwrap();
        for (e, value) in [
            (s.pass_at_1, 1.0),
            (s.beyond_time, 0.5),
            (s.beyond_memory, 1.0),
            (s.beyond_integral, 0.0),
        ] {
            assert_eq!(
                e,
                Estimate {
                    mean: value,
                    low: value,
                    high: value
                }
            );
        }
    }

    #[test]
    fn bootstrap_interval_of_a_fair_coin_is_about_plus_minus_two_standard_errors() {
        // 100 problems, every other one passes: mean 0.5, standard error sqrt(0.25/100) = 0.05,
        // so a 95% interval is about 0.5 +- 0.098.
        let refs = vec![perf(1.0, 1.0, 1.0)];
        let problems: Vec<_> = (0..100)
            .map(|k| {
                let run = (k % 2 == 0).then(|| perf(1.0, 1.0, 1.0));
                one_run(&format!("p{k}"), run, refs.clone())
            })
            .collect();
        let config = BootstrapConfig::default();
        let s = summarize(&problems, &config).unwrap();
        assert!(close(s.pass_at_1.mean, 0.5));
        assert!((s.pass_at_1.low - 0.402).abs() < 0.025, "{:?}", s.pass_at_1);
        assert!(
            (s.pass_at_1.high - 0.598).abs() < 0.025,
            "{:?}",
            s.pass_at_1
        );
        // Reproducible with the same seed.
        assert_eq!(summarize(&problems, &config).unwrap(), s);
        // Without resamples the interval collapses to the point estimate.
        let none = BootstrapConfig {
            resamples: 0,
            ..config
        };
        let p = summarize(&problems, &none).unwrap().pass_at_1;
        assert_eq!((p.low, p.high), (0.5, 0.5));
    }

    #[test]
    fn confidence_must_be_a_proper_fraction() {
        let problems = [one_run("p", None, vec![perf(1.0, 1.0, 1.0)])];
        for confidence in [0.0, 1.0, 1.5, f64::NAN] {
            let config = BootstrapConfig {
                confidence,
                ..BootstrapConfig::default()
            };
            assert!(matches!(
                summarize(&problems, &config),
                Err(MetricsError::BadConfidence(_))
            ));
        }
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let sorted = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&sorted, 0.5), Some(2.5));
        assert_eq!(quantile(&sorted, 0.0), Some(1.0));
        assert_eq!(quantile(&sorted, 1.0), Some(4.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn resampled_indices_are_uniform_enough() {
        let mut rng = SplitMix64(7);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[rng.below(4)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }
}
