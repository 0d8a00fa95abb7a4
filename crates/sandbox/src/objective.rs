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
}

impl RecordedPerformance {
    /// The figures `time_ms`, `memory_kb` and `integral`, in that order.
    pub fn new(time_ms: f64, memory_kb: f64, integral: f64) -> Self {
        RecordedPerformance {
            time_ms,
            memory_kb,
            integral,
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
    fn a_performance_reads_each_objective_from_its_own_figure() {
        let p = RecordedPerformance::new(1.0, 2.0, 3.0);
        assert_eq!(p.value(Objective::Time), 1.0);
        assert_eq!(p.value(Objective::Memory), 2.0);
        assert_eq!(p.value(Objective::Integral), 3.0);
    }
}
