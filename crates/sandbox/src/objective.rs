//! The efficiency vocabulary every layer above shares: the three objectives a solution is
//! compared on (time, memory, the memory-time integral) and the figures measured on them.
//!
//! Parsing an objective from text happens here only ([`Objective`]'s `FromStr` and serde), so a
//! command line, a prompt and a request body all accept the same names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The efficiency objective a comparison is made on (the paper's Beyond-T/M/I).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Run time (Beyond-T).
    Time,
    /// Peak memory (Beyond-M).
    Memory,
    /// Memory-time integral (Beyond-I).
    Integral,
}

impl Objective {
    /// All objectives, in the order T, M, I.
    pub const ALL: [Objective; 3] = [Objective::Time, Objective::Memory, Objective::Integral];

    /// `time`, `memory` or `integral`: the name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Objective::Time => "time",
            Objective::Memory => "memory",
            Objective::Integral => "integral",
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an objective (an efficiency instruction names one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown instruction `{0}` (expected time, memory or integral)")]
pub struct UnknownObjective(pub String);

impl FromStr for Objective {
    type Err = UnknownObjective;

    /// Parses `time`, `memory` or `integral` (any case, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        Objective::ALL
            .into_iter()
            .find(|o| o.as_str() == name)
            .ok_or(UnknownObjective(name))
    }
}

/// Measured performance of one solution: the values Beyond-T/M/I and the reward compare.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecordedPerformance {
    /// Run time in milliseconds.
    pub time_ms: f64,
    /// Peak memory in kilobytes.
    pub memory_kb: f64,
    /// Memory-time integral in kilobyte-milliseconds.
    pub integral: f64,
    /// How much these figures vary over the solution's repeated runs, when recorded (figures
    /// from before the tie rule, or from a dataset, have none: only the drift floor applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<Noise>,
    /// Instructions executed, counted under valgrind (deterministic), when counting was asked
    /// for: COFFE's machine-independent cost, scored as Beyond-Instr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<f64>,
}

/// Coefficients of variation (standard deviation / mean) of a solution's figures over its
/// repeated runs: the recorded dispersion the tie band is made of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Noise {
    /// CV of the run time.
    pub time: f64,
    /// CV of the peak memory.
    pub memory: f64,
    /// CV of the memory integral.
    pub integral: f64,
}

impl Noise {
    /// The CVs of time, peak memory and integral of a [`crate::Dispersion`] over repeated runs.
    pub fn of(dispersion: &crate::Dispersion) -> Self {
        Noise {
            time: dispersion.wall_ms,
            memory: dispersion.peak_rss_kb,
            integral: dispersion.integral_kb_ms,
        }
    }

    /// The CV on one objective.
    pub fn on(&self, objective: Objective) -> f64 {
        match objective {
            Objective::Time => self.time,
            Objective::Memory => self.memory,
            Objective::Integral => self.integral,
        }
    }
}

/// How two figures of one objective compare under the tie rule (lower is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Lower by more than the tie band.
    Better,
    /// Within the tie band of each other: not ordered by the measurement.
    Tied,
    /// Higher by more than the tie band.
    Worse,
}

/// Standard deviations of the difference of two figures that the tie band spans: a difference
/// this large arises by chance about 5% of the time (two-sided, normal noise) when there is none.
pub const TIE_SIGMAS: f64 = 2.0;

impl Objective {
    /// The smallest tie band, relative to the larger figure: the drift of a figure between
    /// separate measurements that the within-run CV does not show. Time (and the integral,
    /// which is time times memory): 3%, the floor `BENCHMARKS.md` measured for a figure taken
    /// minutes apart on a shared VM (median move 4% between two calibrations of the same
    /// solutions). Peak memory: 0.5%, seven times the 0.07% median move measured there (one
    /// 4 KiB page of a 10 MB process is 0.04%).
    pub fn drift_floor(self) -> f64 {
        match self {
            Objective::Time | Objective::Integral => 0.03,
            Objective::Memory => 0.005,
        }
    }
}

impl RecordedPerformance {
    /// The figures `time_ms`, `memory_kb` and `integral`, in that order, without noise.
    pub fn new(time_ms: f64, memory_kb: f64, integral: f64) -> Self {
        RecordedPerformance {
            time_ms,
            memory_kb,
            integral,
            noise: None,
            instructions: None,
        }
    }

    /// The same figures with their instruction count.
    pub fn with_instructions(self, instructions: Option<f64>) -> Self {
        RecordedPerformance {
            instructions,
            ..self
        }
    }

    /// The same figures with their recorded noise.
    pub fn with_noise(self, noise: Noise) -> Self {
        RecordedPerformance {
            noise: Some(noise),
            ..self
        }
    }

    /// The recorded CV on one objective (0 when none was recorded).
    pub fn cv(&self, objective: Objective) -> f64 {
        self.noise.map_or(0.0, |n| n.on(objective))
    }

    /// Half-width of the tie band between `self` and `other` on `objective`: [`TIE_SIGMAS`]
    /// standard deviations of their difference, `sqrt((cv_a a)^2 + (cv_b b)^2)` from each
    /// one's recorded CV, and never less than the objective's [`Objective::drift_floor`] of the
    /// larger figure.
    pub fn tie_band(&self, other: &Self, objective: Objective) -> f64 {
        let (a, b) = (self.value(objective), other.value(objective));
        let noise = ((self.cv(objective) * a).powi(2) + (other.cv(objective) * b).powi(2)).sqrt();
        (TIE_SIGMAS * noise).max(objective.drift_floor() * a.abs().max(b.abs()))
    }

    /// How `self` compares with `other` on `objective` under the tie rule: better (lower) or
    /// worse only by more than [`Self::tie_band`]. A NaN figure is worse than anything.
    pub fn compare(&self, other: &Self, objective: Objective) -> Comparison {
        let (a, b) = (self.value(objective), other.value(objective));
        if a.is_nan() || b.is_nan() {
            return match (a.is_nan(), b.is_nan()) {
                (true, true) => Comparison::Tied,
                (true, false) => Comparison::Worse,
                _ => Comparison::Better,
            };
        }
        let band = self.tie_band(other, objective);
        if b - a > band {
            Comparison::Better
        } else if a - b > band {
            Comparison::Worse
        } else {
            Comparison::Tied
        }
    }

    /// The measured value on one objective (lower is better).
    pub fn value(&self, objective: Objective) -> f64 {
        match objective {
            Objective::Time => self.time_ms,
            Objective::Memory => self.memory_kb,
            Objective::Integral => self.integral,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_from_their_names_in_any_case_and_print_back() {
        for o in Objective::ALL {
            assert_eq!(o.as_str().parse::<Objective>(), Ok(o));
            assert_eq!(o.to_string(), o.as_str());
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.as_str()));
        }
        assert_eq!(" Memory ".parse::<Objective>(), Ok(Objective::Memory));
        let e = "speed".parse::<Objective>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown instruction `speed` (expected time, memory or integral)"
        );
    }

    #[test]
    fn figures_within_the_band_tie_and_the_band_grows_with_the_recorded_noise() {
        let t = Objective::Time;
        // No noise recorded: the 3% drift floor of the larger figure.
        let a = RecordedPerformance::new(100.0, 1000.0, 1.0);
        let b = RecordedPerformance::new(102.9, 1004.0, 1.0);
        assert!((a.tie_band(&b, t) - 0.03 * 102.9).abs() < 1e-12);
        assert_eq!(a.compare(&b, t), Comparison::Tied);
        assert_eq!(b.compare(&a, t), Comparison::Tied);
        let c = RecordedPerformance::new(103.2, 1006.0, 1.0);
        assert_eq!(a.compare(&c, t), Comparison::Better);
        assert_eq!(c.compare(&a, t), Comparison::Worse);
        // Memory's floor is 0.5%: 1004 vs 1000 tie, 1006 vs 1000 do not.
        assert_eq!(a.compare(&b, Objective::Memory), Comparison::Tied);
        assert_eq!(a.compare(&c, Objective::Memory), Comparison::Better);
        // 10% CV on both: band = 2 * sqrt(10^2 + 10.32^2) = 28.74 ms, so 103.2 vs 100 tie and
        // 140 vs 100 (band 2 * sqrt(10^2 + 14^2) = 34.4) do not.
        let noise = Noise {
            time: 0.1,
            memory: 0.0,
            integral: 0.1,
        };
        let (an, cn) = (a.with_noise(noise), c.with_noise(noise));
        let band = an.tie_band(&cn, t);
        assert!((band - 2.0 * (10.0f64.powi(2) + 10.32f64.powi(2)).sqrt()).abs() < 1e-9);
        assert_eq!(an.compare(&cn, t), Comparison::Tied);
        let slow = RecordedPerformance::new(140.0, 1000.0, 1.0).with_noise(noise);
        assert_eq!(an.compare(&slow, t), Comparison::Better);
        // NaN is worse than anything.
        let nan = RecordedPerformance::new(f64::NAN, 1.0, 1.0);
        assert_eq!(nan.compare(&a, t), Comparison::Worse);
        assert_eq!(a.compare(&nan, t), Comparison::Better);
    }

    #[test]
    fn noise_is_optional_on_the_wire() {
        let p: RecordedPerformance =
            serde_json::from_str(r#"{"time_ms":1.0,"memory_kb":2.0,"integral":3.0}"#).unwrap();
        assert_eq!(p, RecordedPerformance::new(1.0, 2.0, 3.0));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"time_ms":1.0,"memory_kb":2.0,"integral":3.0}"#
        );
    }

    #[test]
    fn a_performance_reads_each_objective_from_its_own_figure() {
        let p = RecordedPerformance::new(1.0, 2.0, 3.0);
        assert_eq!(p.value(Objective::Time), 1.0);
        assert_eq!(p.value(Objective::Memory), 2.0);
        assert_eq!(p.value(Objective::Integral), 3.0);
    }
}
