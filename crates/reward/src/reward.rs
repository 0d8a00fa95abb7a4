//! The Afterburner GRPO reward (SPEC section 7), with the reference's unit bug fixed.
//!
//! `total = w_format * format + w_correct * correctness + w_eff * efficiency`, where
//! - `format` is +1 for a well-formed response, -1 otherwise;
//! - `correctness` scores the transition original -> candidate: fail->pass +1, pass->pass +0.5,
//!   fail->fail -0.5, pass->fail -1;
//! - `efficiency`, only when the candidate passes and the original's figure is known, is
//!   `tanh(clip((base - cur) / base, -1, 1))` on the instructed objective, each value first
//!   clipped to its ceiling (time 90 s, memory 1 GiB, integral their product), all in the units
//!   of [`RecordedPerformance`] (ms, KiB, KiB*ms). Otherwise it is 0.

use afterburner_sandbox::{Objective, RecordedPerformance};
use serde::{Deserialize, Serialize};

/// Upper clips applied to both values before the efficiency ratio, in ms, KiB and KiB*ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Time ceiling, ms.
    pub time_ms: f64,
    /// Memory ceiling, KiB.
    pub memory_kb: f64,
    /// Integral ceiling, KiB*ms.
    pub integral: f64,
}

impl Default for Ceilings {
    fn default() -> Self {
        let time_ms = 90_000.0;
        let memory_kb = 1024.0 * 1024.0;
        Ceilings {
            time_ms,
            memory_kb,
            integral: time_ms * memory_kb,
        }
    }
}

impl Ceilings {
    /// The ceiling of one objective.
    pub fn of(&self, objective: Objective) -> f64 {
        match objective {
            Objective::Time => self.time_ms,
            Objective::Memory => self.memory_kb,
            Objective::Integral => self.integral,
        }
    }
}

/// Weights and ceilings of the reward.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardConfig {
    /// Weight of the format term (paper: 0.2).
    pub format_weight: f64,
    /// Weight of the correctness term (paper: 0.5).
    pub correctness_weight: f64,
    /// Weight of the efficiency term (paper: 0.3, ramped to 0.5).
    pub efficiency_weight: f64,
    /// Value ceilings applied before the efficiency ratio.
    pub ceilings: Ceilings,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            format_weight: 0.2,
            correctness_weight: 0.5,
            efficiency_weight: 0.3,
            ceilings: Ceilings::default(),
        }
    }
}

/// What the reward is computed from: the response's format, both verdicts and both measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardInput {
    /// Whether the response had the asked-for format.
    pub well_formed: bool,
    /// Whether the original solution (the one in the prompt) passes.
    pub original_passed: bool,
    /// Whether the candidate passes every test.
    pub candidate_passed: bool,
    /// The instructed objective.
    pub objective: Objective,
    /// The original's measured performance, when known.
    pub baseline: Option<RecordedPerformance>,
    /// The candidate's measured performance, when it passed.
    pub candidate: Option<RecordedPerformance>,
}

/// A reward and its components.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    /// The weighted total.
    pub total: f64,
    /// The format term, +1 or -1.
    pub format: f64,
    /// The correctness term, one of +1, +0.5, -0.5, -1.
    pub correctness: f64,
    /// The efficiency term in (-1, 1); 0 when the candidate failed or a figure is missing.
    pub efficiency: f64,
    /// The relative gain `(base - cur) / base` after clipping, when it was computed.
    pub gain: Option<f64>,
}

/// Computes the reward of one response.
pub fn reward(input: &RewardInput, config: &RewardConfig) -> Reward {
    let format = if input.well_formed { 1.0 } else { -1.0 };
    let correctness = match (input.original_passed, input.candidate_passed) {
        (false, true) => 1.0,
        (true, true) => 0.5,
        (false, false) => -0.5,
        (true, false) => -1.0,
    };
    let gain = match (input.candidate_passed, input.baseline, input.candidate) {
        (true, Some(base), Some(cur)) => {
            relative_gain(base, cur, input.objective, &config.ceilings)
        }
        _ => None,
    };
    let efficiency = gain.map_or(0.0, f64::tanh);
    Reward {
        total: config.format_weight * format
            + config.correctness_weight * correctness
            + config.efficiency_weight * efficiency,
        format,
        correctness,
        efficiency,
        gain,
    }
}

/// `clip((base - cur) / base, -1, 1)` after clipping both to the ceiling; `None` when a value is
/// not finite or the clipped baseline is not positive.
fn relative_gain(
    base: RecordedPerformance,
    cur: RecordedPerformance,
    objective: Objective,
    ceilings: &Ceilings,
) -> Option<f64> {
    let ceiling = ceilings.of(objective);
    let (b, c) = (base.value(objective), cur.value(objective));
    if !b.is_finite() || !c.is_finite() {
        return None;
    }
    let (b, c) = (b.min(ceiling), c.max(0.0).min(ceiling));
    if b <= 0.0 {
        return None;
    }
    Some(((b - c) / b).clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perf(time_ms: f64, memory_kb: f64, integral: f64) -> RecordedPerformance {
        RecordedPerformance::new(time_ms, memory_kb, integral)
    }

    fn input(original_passed: bool, candidate_passed: bool) -> RewardInput {
        RewardInput {
            well_formed: true,
            original_passed,
            candidate_passed,
            objective: Objective::Time,
            baseline: Some(perf(200.0, 1000.0, 1e5)),
            candidate: candidate_passed.then(|| perf(100.0, 2000.0, 3e5)),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn correctness_transitions_score_as_in_the_paper() {
        let c = RewardConfig::default();
        assert_eq!(reward(&input(false, true), &c).correctness, 1.0);
        assert_eq!(reward(&input(true, true), &c).correctness, 0.5);
        assert_eq!(reward(&input(false, false), &c).correctness, -0.5);
        assert_eq!(reward(&input(true, false), &c).correctness, -1.0);
    }

    #[test]
    fn a_twice_as_fast_well_formed_pass_gets_the_hand_computed_total() {
        let r = reward(&input(true, true), &RewardConfig::default());
        assert_eq!(r.gain, Some(0.5));
        assert!(close(r.efficiency, 0.5f64.tanh()));
        // 0.2 * 1 + 0.5 * 0.5 + 0.3 * tanh(0.5) = 0.45 + 0.3 * 0.46211715726
        assert!(close(r.total, 0.45 + 0.3 * 0.5f64.tanh()));
        assert!((r.total - 0.588635).abs() < 1e-6);
    }

    #[test]
    fn the_instructed_objective_is_the_one_compared() {
        let mut i = input(true, true);
        i.objective = Objective::Memory;
        assert_eq!(reward(&i, &RewardConfig::default()).gain, Some(-1.0));
        i.objective = Objective::Integral;
        // (1e5 - 3e5) / 1e5 = -2, clipped to -1.
        assert_eq!(reward(&i, &RewardConfig::default()).gain, Some(-1.0));
    }

    #[test]
    fn ceilings_are_in_consistent_units() {
        // A 30 s baseline improved to 15 s: the reference clipped ms at 90 and saw no gain.
        let mut i = input(true, true);
        i.baseline = Some(perf(30_000.0, 1.0, 1.0));
        i.candidate = Some(perf(15_000.0, 1.0, 1.0));
        assert_eq!(reward(&i, &RewardConfig::default()).gain, Some(0.5));
        // Beyond the ceiling both values clip: no gain between 200 s and 100 s.
        i.baseline = Some(perf(200_000.0, 1.0, 1.0));
        i.candidate = Some(perf(100_000.0, 1.0, 1.0));
        assert_eq!(reward(&i, &RewardConfig::default()).gain, Some(0.0));
    }

    #[test]
    fn no_efficiency_without_a_pass_or_a_baseline() {
        let c = RewardConfig::default();
        let failed = reward(&input(true, false), &c);
        assert_eq!((failed.efficiency, failed.gain), (0.0, None));
        let mut i = input(false, true);
        i.baseline = None;
        let r = reward(&i, &c);
        assert_eq!((r.efficiency, r.gain), (0.0, None));
        assert!(close(r.total, 0.2 + 0.5));
        i.baseline = Some(perf(0.0, 0.0, 0.0));
        assert_eq!(reward(&i, &c).gain, None);
        i.baseline = Some(perf(f64::NAN, 0.0, 0.0));
        assert_eq!(reward(&i, &c).gain, None);
    }

    #[test]
    fn a_malformed_response_loses_the_format_term() {
        let mut i = input(false, false);
        i.well_formed = false;
        let r = reward(&i, &RewardConfig::default());
        assert_eq!(r.format, -1.0);
        assert!(close(r.total, -0.2 - 0.25));
    }
}
