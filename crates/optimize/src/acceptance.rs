//! Whether a measured candidate replaces the incumbent (SPEC section 6, with the reference's
//! bugs fixed).
//!
//! # The rule
//!
//! 1. With no incumbent yet, any candidate that has code becomes the incumbent.
//! 2. A failing candidate never replaces anything; a passing candidate always replaces a failing
//!    incumbent (a pass beats a fail).
//! 3. Between two passes, on the instructed objective (time, peak memory or the memory
//!    integral, **lower is better for all three**; the reference kept the *larger* integral), the
//!    candidate's median `c` must be lower than the incumbent's median `i` by more than the
//!    measurement noise:
//!
//!    `i - c > max(k * sqrt((cv_c * c)^2 + (cv_i * i)^2), min_gain * i)`
//!
//!    where `cv_c` and `cv_i` are the coefficients of variation of that objective over each
//!    solution's repeated runs (the harness protocol). This is the tie rule Beyond-T/M/I use
//!    ([`RecordedPerformance::tie_band`]): by default `k` is [`TIE_SIGMAS`] (2 standard
//!    deviations of the difference of two independent measurements: a difference that large
//!    arises by chance about 5% of the time when there is none) and `min_gain` is the
//!    objective's drift floor ([`Objective::drift_floor`]: 3% for time and the integral, 0.5%
//!    for memory). The floor exists because with three repeats a CV can come out near zero by
//!    chance, and measurements taken minutes apart drift by a few percent on a shared machine
//!    (`BENCHMARKS.md`), so a gain below it is not trusted even when the repeats agreed.
//!
//! Ties and gains within the noise keep the incumbent: the loop only moves when the measurement
//! says it should.

use afterburner_benchmarks::RecordedPerformance;
use afterburner_benchmarks::metrics::Objective;
use afterburner_sandbox::{Dispersion, TIE_SIGMAS};
use serde::{Deserialize, Serialize};

/// What acceptance needs to know of one measured solution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Whether it passed every test in every run.
    pub passed: bool,
    /// Medians over the runs (when it passed).
    pub performance: Option<RecordedPerformance>,
    /// Coefficients of variation over the runs (when it passed).
    pub dispersion: Option<Dispersion>,
    /// Number of runs the medians are over.
    pub runs: usize,
}

impl Observation {
    /// The median and its coefficient of variation on one objective, when it passed.
    pub fn on(&self, objective: Objective) -> Option<(f64, f64)> {
        let p = self.performance.as_ref().filter(|_| self.passed)?;
        let cv = self.dispersion.as_ref().map_or(0.0, |d| match objective {
            Objective::Time => d.wall_ms,
            Objective::Memory => d.peak_rss_kb,
            Objective::Integral => d.integral_kb_ms,
        });
        Some((p.value(objective), cv))
    }
}

/// The parameters of the noise test (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceRule {
    /// How many standard deviations of the difference a gain must exceed.
    pub k: f64,
    /// The smallest relative gain ever accepted (a fraction of the incumbent's value); `None`:
    /// the objective's drift floor, as in the tie rule.
    pub min_gain: Option<f64>,
}

impl Default for AcceptanceRule {
    /// The tie rule's: `k = TIE_SIGMAS` (2), the objective's drift floor.
    fn default() -> Self {
        AcceptanceRule {
            k: TIE_SIGMAS,
            min_gain: None,
        }
    }
}

/// The outcome of comparing a candidate with the incumbent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the candidate becomes the incumbent.
    pub accepted: bool,
    /// Why, in one line.
    pub reason: String,
}

impl Decision {
    fn accept(reason: impl Into<String>) -> Self {
        Decision {
            accepted: true,
            reason: reason.into(),
        }
    }

    fn reject(reason: impl Into<String>) -> Self {
        Decision {
            accepted: false,
            reason: reason.into(),
        }
    }
}

/// The unit a value of `objective` is written in.
pub fn unit(objective: Objective) -> &'static str {
    match objective {
        Objective::Time => "ms",
        Objective::Memory => "KB",
        Objective::Integral => "KB*ms",
    }
}

/// The name of an objective as the instruction calls it.
pub fn objective_name(objective: Objective) -> &'static str {
    match objective {
        Objective::Time => "time",
        Objective::Memory => "memory",
        Objective::Integral => "integral",
    }
}

impl AcceptanceRule {
    /// The smallest decrease of `objective` below the incumbent's median that counts as a gain.
    pub fn threshold(
        &self,
        objective: Objective,
        incumbent: (f64, f64),
        candidate: (f64, f64),
    ) -> f64 {
        let (i, cv_i) = incumbent;
        let (c, cv_c) = candidate;
        let noise = ((cv_c * c).powi(2) + (cv_i * i).powi(2)).sqrt();
        let floor = self.min_gain.unwrap_or_else(|| objective.drift_floor());
        (self.k * noise).max(floor * i.abs())
    }

    /// Decides whether `candidate` replaces `incumbent` (`None`: there is none yet).
    pub fn decide(
        &self,
        objective: Objective,
        incumbent: Option<&Observation>,
        candidate: &Observation,
    ) -> Decision {
        let Some(incumbent) = incumbent else {
            return Decision::accept("the first solution becomes the incumbent");
        };
        if !candidate.passed {
            return Decision::reject("the candidate fails its tests");
        }
        if !incumbent.passed {
            return Decision::accept("a passing candidate beats a failing incumbent");
        }
        let name = objective_name(objective);
        let u = unit(objective);
        let (Some(inc), Some(cand)) = (incumbent.on(objective), candidate.on(objective)) else {
            return Decision::reject(format!(
                "no {name} measurement to compare (a passing solution without figures)"
            ));
        };
        let (i, c) = (inc.0, cand.0);
        if !(i.is_finite() && c.is_finite()) {
            return Decision::reject(format!("{name} is not a finite number ({c} vs {i})"));
        }
        let threshold = self.threshold(objective, inc, cand);
        let gain = i - c;
        let relative = |x: f64| if i != 0.0 { 100.0 * x / i } else { 0.0 };
        if gain > threshold {
            Decision::accept(format!(
                "{name} {c:.2} {u} < {i:.2} {u}: {:.1}% lower, beyond the noise threshold of {:.1}%",
                relative(gain),
                relative(threshold)
            ))
        } else if gain > 0.0 {
            Decision::reject(format!(
                "{name} {c:.2} {u} vs {i:.2} {u}: {:.1}% lower, within the noise threshold of {:.1}%",
                relative(gain),
                relative(threshold)
            ))
        } else {
            Decision::reject(format!(
                "{name} {c:.2} {u} is not lower than the incumbent's {i:.2} {u}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing(time: f64, memory: f64, integral: f64, cv: f64) -> Observation {
        Observation {
            passed: true,
            performance: Some(RecordedPerformance::new(time, memory, integral)),
            dispersion: Some(Dispersion {
                wall_ms: cv,
                cpu_ms: cv,
                peak_rss_kb: cv,
                integral_kb_ms: cv,
            }),
            runs: 3,
        }
    }

    fn failing() -> Observation {
        Observation {
            passed: false,
            performance: None,
            dispersion: None,
            runs: 1,
        }
    }

    const RULE: AcceptanceRule = AcceptanceRule {
        k: 2.0,
        min_gain: Some(0.03),
    };

    /// Whether `RULE` accepts `candidate` over `incumbent` on `objective`.
    fn accepts(objective: Objective, incumbent: &Observation, candidate: &Observation) -> bool {
        RULE.decide(objective, Some(incumbent), candidate).accepted
    }

    #[test]
    fn the_first_candidate_is_accepted_even_when_it_fails() {
        assert!(RULE.decide(Objective::Time, None, &failing()).accepted);
    }

    #[test]
    fn a_pass_beats_a_fail_and_a_fail_never_replaces_anything() {
        let pass = passing(500.0, 1000.0, 5e5, 0.01);
        let fail = failing();
        assert!(accepts(Objective::Time, &fail, &pass));
        assert!(!accepts(Objective::Time, &pass, &fail));
        assert!(!accepts(Objective::Time, &fail, &fail));
    }

    #[test]
    fn a_clearly_faster_pass_replaces_a_slower_one_and_not_the_reverse() {
        let slow = passing(450.0, 9000.0, 4e6, 0.02);
        let fast = passing(60.0, 9000.0, 5e5, 0.05);
        let d = RULE.decide(Objective::Time, Some(&slow), &fast);
        assert!(d.accepted, "{}", d.reason);
        assert!(d.reason.contains("lower"), "{}", d.reason);
        assert!(!accepts(Objective::Time, &fast, &slow));
    }

    #[test]
    fn lower_integral_wins_where_the_reference_kept_the_larger() {
        // Same time and memory, integral 40% lower: the reference's comparator kept the larger
        // integral and would have rejected this candidate.
        let incumbent = passing(100.0, 9000.0, 1_000_000.0, 0.01);
        let smaller = passing(100.0, 9000.0, 600_000.0, 0.01);
        let larger = passing(100.0, 9000.0, 1_400_000.0, 0.01);
        assert!(accepts(Objective::Integral, &incumbent, &smaller));
        assert!(!accepts(Objective::Integral, &incumbent, &larger));
    }

    #[test]
    fn only_the_instructed_objective_counts() {
        let incumbent = passing(100.0, 20_000.0, 2e6, 0.01);
        let less_memory_slower = passing(150.0, 10_000.0, 1.5e6, 0.01);
        assert!(accepts(Objective::Memory, &incumbent, &less_memory_slower));
        assert!(!accepts(Objective::Time, &incumbent, &less_memory_slower));
    }

    #[test]
    fn a_gain_within_the_measured_noise_is_not_an_improvement() {
        // 10% faster, but both measurements vary by 8%: the threshold is
        // 2 * sqrt((0.08*90)^2 + (0.08*100)^2) = 21.5 ms, above the 10 ms gain.
        let incumbent = passing(100.0, 9000.0, 9e5, 0.08);
        let candidate = passing(90.0, 9000.0, 8e5, 0.08);
        let d = RULE.decide(Objective::Time, Some(&incumbent), &candidate);
        assert!(!d.accepted, "{}", d.reason);
        assert!(d.reason.contains("within the noise"), "{}", d.reason);
        // The same gain with quiet measurements (1%) is beyond the noise.
        let quiet_incumbent = passing(100.0, 9000.0, 9e5, 0.01);
        let quiet_candidate = passing(90.0, 9000.0, 8e5, 0.01);
        assert!(accepts(Objective::Time, &quiet_incumbent, &quiet_candidate));
    }

    #[test]
    fn repeats_that_agree_by_chance_still_face_the_floor() {
        // CV 0 (e.g. three identical peak-memory readings): the 3% floor still applies.
        let incumbent = passing(100.0, 10_000.0, 1e6, 0.0);
        let two_percent = passing(100.0, 9_800.0, 1e6, 0.0);
        let five_percent = passing(100.0, 9_500.0, 1e6, 0.0);
        assert!(!accepts(Objective::Memory, &incumbent, &two_percent));
        assert!(accepts(Objective::Memory, &incumbent, &five_percent));
    }

    #[test]
    fn ties_and_regressions_keep_the_incumbent() {
        let a = passing(100.0, 9000.0, 9e5, 0.0);
        let d = RULE.decide(Objective::Time, Some(&a), &a.clone());
        assert!(!d.accepted);
        assert!(d.reason.contains("not lower"), "{}", d.reason);
    }

    #[test]
    fn the_threshold_combines_both_dispersions() {
        let t = RULE.threshold(Objective::Time, (100.0, 0.03), (100.0, 0.04));
        // 2 * sqrt(3^2 + 4^2) = 10
        assert!((t - 10.0).abs() < 1e-9, "{t}");
        let floor = RULE.threshold(Objective::Time, (100.0, 0.0), (50.0, 0.0));
        assert!((floor - 3.0).abs() < 1e-9, "{floor}");
    }

    #[test]
    fn the_default_rule_is_the_tie_rule() {
        let rule = AcceptanceRule::default();
        for objective in Objective::ALL {
            for (i, cv_i, c, cv_c) in [(100.0, 0.0, 99.0, 0.0), (100.0, 0.05, 80.0, 0.1)] {
                let inc =
                    RecordedPerformance::new(i, i, i).with_noise(afterburner_sandbox::Noise {
                        time: cv_i,
                        memory: cv_i,
                        integral: cv_i,
                    });
                let cand =
                    RecordedPerformance::new(c, c, c).with_noise(afterburner_sandbox::Noise {
                        time: cv_c,
                        memory: cv_c,
                        integral: cv_c,
                    });
                let threshold = rule.threshold(objective, (i, cv_i), (c, cv_c));
                assert!((threshold - inc.tie_band(&cand, objective)).abs() < 1e-9);
            }
        }
        // A 1% memory gain is beyond memory's 0.5% floor; a 1% time gain is within time's 3%.
        assert!(accepts_default(Objective::Memory, 1000.0, 990.0));
        assert!(!accepts_default(Objective::Time, 1000.0, 990.0));
    }

    fn accepts_default(objective: Objective, incumbent: f64, candidate: f64) -> bool {
        let obs = |v: f64| passing(v, v, v, 0.0);
        AcceptanceRule::default()
            .decide(objective, Some(&obs(incumbent)), &obs(candidate))
            .accepted
    }
}
