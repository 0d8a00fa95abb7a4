//! What one run of a program produced: its status, its measurements and its output.

use serde::{Deserialize, Serialize};

/// How a run (or a compilation, or a test) ended (SPEC section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exited with code 0 within every limit (and, for a test, produced the expected output).
    Accepted,
    /// Ran within limits but produced output that a checker rejected (harness layer only).
    WrongAnswer,
    /// Exited with a non-zero code or was killed by a signal it caused.
    RuntimeError,
    /// Exceeded the wall-clock or CPU time limit.
    TimeLimit,
    /// Exceeded the memory limit.
    MemoryLimit,
    /// Wrote more output than the cap, or a file larger than allowed.
    OutputLimit,
    /// The source did not compile.
    CompileError,
    /// The sandbox itself failed; says nothing about the program.
    SandboxError,
}

impl Status {
    /// The snake_case name used on the wire (`time_limit`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::WrongAnswer => "wrong_answer",
            Status::RuntimeError => "runtime_error",
            Status::TimeLimit => "time_limit",
            Status::MemoryLimit => "memory_limit",
            Status::OutputLimit => "output_limit",
            Status::CompileError => "compile_error",
            Status::SandboxError => "sandbox_error",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The measured cost of one run: a plain value that can be stored and compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// How the run ended.
    pub status: Status,
    /// Exit code of the main process, if it exited normally.
    pub exit_code: Option<i32>,
    /// Signal that killed the main process, if any.
    pub signal: Option<i32>,
    /// Wall-clock time from exec to exit of the main process, in milliseconds.
    pub wall_ms: f64,
    /// User + system CPU time of the whole process tree, in milliseconds.
    pub cpu_ms: f64,
    /// High-water mark of the resident memory of the process tree, in KiB.
    pub peak_rss_kb: u64,
    /// Time integral of the tree's resident memory, `sum rss(t_i) * (t_i - t_{i-1})`, in KiB*ms.
    pub integral_kb_ms: f64,
    /// Number of memory samples taken.
    pub samples: u64,
    /// Achieved sampling rate over the run, in Hz.
    pub sample_hz: f64,
    /// Retired user-space instructions, where hardware counters exist.
    pub instructions: Option<u64>,
}

impl Measurement {
    /// A measurement of a run that never started (compile or sandbox error): zeros and `None`s.
    pub fn not_run(status: Status) -> Measurement {
        Measurement {
            status,
            exit_code: None,
            signal: None,
            wall_ms: 0.0,
            cpu_ms: 0.0,
            peak_rss_kb: 0,
            integral_kb_ms: 0.0,
            samples: 0,
            sample_hz: 0.0,
            instructions: None,
        }
    }
}

/// One sample of the process tree's resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Nanoseconds since exec.
    pub t_ns: u64,
    /// Resident memory of the tree, in KiB.
    pub rss_kb: u64,
}

/// Everything one run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The measured cost and how the run ended.
    pub measurement: Measurement,
    /// Captured standard output (up to the cap).
    #[serde(with = "lossy_bytes")]
    pub stdout: Vec<u8>,
    /// Captured standard error (up to the cap).
    #[serde(with = "lossy_bytes")]
    pub stderr: Vec<u8>,
    /// Whether stdout was cut at the cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the cap.
    pub stderr_truncated: bool,
    /// Why the run ended as it did, when the status alone does not say (which limit, which signal).
    pub message: Option<String>,
    /// The memory trace, when it was requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_trace: Vec<MemorySample>,
}

impl RunResult {
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The first `max` characters of `text` (a program's output or an error), with `...` when cut:
/// how every layer shortens what a run printed before putting it in a message.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}...")
    }
}

/// Serialises bytes as a (lossy) UTF-8 string, the form every consumer of output expects.
mod lossy_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// Median and dispersion of repeated runs of one program on one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatSummary {
    /// Number of runs.
    pub runs: usize,
    /// Status shared by all runs, or the first that differs from `accepted`.
    pub status: Status,
    /// Median wall time, ms.
    pub wall_ms: f64,
    /// Median CPU time, ms.
    pub cpu_ms: f64,
    /// Median peak RSS, KiB.
    pub peak_rss_kb: f64,
    /// Median memory integral, KiB*ms.
    pub integral_kb_ms: f64,
    /// Median instruction count, where counted.
    pub instructions: Option<f64>,
    /// Coefficients of variation (std / mean, population) of the same quantities.
    pub cv: Dispersion,
}

/// Coefficients of variation of the measured quantities across repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispersion {
    /// CV of wall time.
    pub wall_ms: f64,
    /// CV of CPU time.
    pub cpu_ms: f64,
    /// CV of peak RSS.
    pub peak_rss_kb: f64,
    /// CV of the integral.
    pub integral_kb_ms: f64,
}

/// Median of `values` (mean of the middle two for even counts); 0 for an empty slice.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Coefficient of variation (population std / mean); 0 when the mean is 0 or there is one value.
pub fn coefficient_of_variation(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if values.len() < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n;
    if mean == 0.0 {
        return 0.0;
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() / mean
}

impl RepeatSummary {
    /// Summarises repeated measurements of the same program and input.
    pub fn of(measurements: &[Measurement]) -> RepeatSummary {
        let pick = |f: fn(&Measurement) -> f64| measurements.iter().map(f).collect::<Vec<_>>();
        let wall = pick(|m| m.wall_ms);
        let cpu = pick(|m| m.cpu_ms);
        let peak = pick(|m| m.peak_rss_kb as f64);
        let integral = pick(|m| m.integral_kb_ms);
        let instructions: Option<Vec<f64>> = measurements
            .iter()
            .map(|m| m.instructions.map(|i| i as f64))
            .collect();
        let status = measurements
            .iter()
            .map(|m| m.status)
            .find(|s| *s != Status::Accepted)
            .unwrap_or(Status::Accepted);
        RepeatSummary {
            runs: measurements.len(),
            status,
            wall_ms: median(&wall),
            cpu_ms: median(&cpu),
            peak_rss_kb: median(&peak),
            integral_kb_ms: median(&integral),
            instructions: instructions.filter(|v| !v.is_empty()).map(|v| median(&v)),
            cv: Dispersion {
                wall_ms: coefficient_of_variation(&wall),
                cpu_ms: coefficient_of_variation(&cpu),
                peak_rss_kb: coefficient_of_variation(&peak),
                integral_kb_ms: coefficient_of_variation(&integral),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_counts_characters_not_bytes() {
        assert_eq!(clip("héllo", 2), "hé...");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn coefficient_of_variation_matches_hand_computation() {
        // mean 2, population variance (1 + 0 + 1) / 3 = 2/3, std 0.8165, cv 0.40825
        let cv = coefficient_of_variation(&[1.0, 2.0, 3.0]);
        assert!((cv - 0.408_248).abs() < 1e-5, "{cv}");
        assert_eq!(coefficient_of_variation(&[5.0, 5.0, 5.0]), 0.0);
        assert_eq!(coefficient_of_variation(&[5.0]), 0.0);
    }

    #[test]
    fn status_serialises_in_snake_case() {
        let s = serde_json::to_string(&Status::TimeLimit).unwrap();
        assert_eq!(s, "\"time_limit\"");
        assert_eq!(Status::MemoryLimit.as_str(), "memory_limit");
    }
}
