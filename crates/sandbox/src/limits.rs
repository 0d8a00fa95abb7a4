//! Resource limits of one sandboxed process tree.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SandboxError;

const MIB: u64 = 1024 * 1024;

/// Resource limits applied to one sandboxed run (or compilation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time from exec to exit.
    pub wall_time: Duration,
    /// CPU time (user + system) of the whole process tree.
    pub cpu_time: Duration,
    /// Memory of the whole process tree, in bytes.
    pub memory_bytes: u64,
    /// Processes and threads alive at once in the tree.
    pub max_processes: u32,
    /// Bytes of stdout (and, separately, of stderr) captured before the run is stopped.
    pub output_bytes: u64,
    /// Largest file the program may write.
    pub file_size_bytes: u64,
    /// Size of the private writable working directory (`/tmp`).
    pub scratch_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_time: Duration::from_secs(10),
            cpu_time: Duration::from_secs(10),
            memory_bytes: 512 * MIB,
            max_processes: 64,
            output_bytes: 16 * MIB,
            file_size_bytes: 64 * MIB,
            scratch_bytes: 64 * MIB,
        }
    }
}

impl Limits {
    /// Generous limits for compilers (javac, rustc and go need room).
    pub fn for_compilation() -> Self {
        Limits {
            wall_time: Duration::from_secs(60),
            cpu_time: Duration::from_secs(60),
            memory_bytes: 2048 * MIB,
            max_processes: 256,
            output_bytes: MIB,
            file_size_bytes: 512 * MIB,
            scratch_bytes: 512 * MIB,
        }
    }

    /// Sets both the wall and CPU limit to `seconds`.
    pub fn with_time_limit_secs(mut self, seconds: f64) -> Result<Self, SandboxError> {
        if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
            return Err(SandboxError::InvalidLimit(format!(
                "time limit must be in (0, 3600] seconds, got {seconds}"
            )));
        }
        let d = Duration::from_secs_f64(seconds);
        self.wall_time = d;
        self.cpu_time = d;
        Ok(self)
    }

    /// Sets the memory limit to `mib` mebibytes.
    pub fn with_memory_limit_mib(mut self, mib: u64) -> Result<Self, SandboxError> {
        if !(8..=65536).contains(&mib) {
            return Err(SandboxError::InvalidLimit(format!(
                "memory limit must be in [8, 65536] MiB, got {mib}"
            )));
        }
        self.memory_bytes = mib * MIB;
        Ok(self)
    }

    /// Checks every limit is within the accepted range.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let bad = |what: &str| Err(SandboxError::InvalidLimit(what.to_string()));
        if self.wall_time.is_zero() || self.wall_time > Duration::from_secs(3600) {
            return bad("wall time must be in (0, 3600] seconds");
        }
        if self.cpu_time.is_zero() || self.cpu_time > Duration::from_secs(3600) {
            return bad("cpu time must be in (0, 3600] seconds");
        }
        if self.memory_bytes < 8 * MIB || self.memory_bytes > 65536 * MIB {
            return bad("memory must be in [8, 65536] MiB");
        }
        if self.max_processes == 0 || self.max_processes > 4096 {
            return bad("max processes must be in [1, 4096]");
        }
        if self.output_bytes == 0 || self.output_bytes > 1024 * MIB {
            return bad("output cap must be in [1 B, 1 GiB]");
        }
        if self.file_size_bytes == 0 || self.scratch_bytes < MIB {
            return bad("file size must be positive and scratch space at least 1 MiB");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Limits::default().validate().is_ok());
        assert!(Limits::for_compilation().validate().is_ok());
    }

    #[test]
    fn out_of_range_limits_are_rejected_with_a_reason() {
        let err = Limits::default().with_time_limit_secs(0.0).unwrap_err();
        assert!(err.to_string().contains("time limit"));
        assert!(Limits::default().with_time_limit_secs(f64::NAN).is_err());
        assert!(Limits::default().with_memory_limit_mib(1).is_err());
        assert!(Limits::default().with_memory_limit_mib(256).is_ok());
    }
}
