//! Test support: one sandbox and harness per test binary, synthetic problems, real data.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use afterburner_benchmarks::{
    Checker, Dataset, DatasetSpec, Entry, Format, Harness, HarnessConfig, Problem,
    ReferenceSolution, TestCase, load,
};
use afterburner_sandbox::{Language, Sandbox, SandboxConfig};

/// The real data (see `../shared/data/README.md`).
pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data");

/// A path under the target's temporary folder, unique to this process and moment.
fn unique_dir(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

/// A sandbox shared by the tests of one binary (tests run as root).
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        // Statics are never dropped: keep the sandbox's state under the target directory.
        Sandbox::with_config(SandboxConfig {
            state_dir: Some(unique_dir("bench-sandbox")),
            ..SandboxConfig::default()
        })
        .expect("sandbox available (tests run as root)")
    })
}

/// A folder for caches that lives as long as the test binary.
pub fn cache_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = unique_dir("bench-cache");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// A harness with one run per measurement and a stress cache, shared by the binary's tests.
pub fn harness() -> &'static Harness<'static> {
    static HARNESS: OnceLock<Harness<'static>> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let config = HarnessConfig {
            repeats: 1,
            cache_dir: Some(cache_dir().to_path_buf()),
            ..HarnessConfig::default()
        };
        Harness::new(sandbox(), config).expect("harness scripts build")
    })
}

/// A problem with the given entry, checker and tests, and no references.
pub fn problem(id: &str, entry: Entry, checker: Checker, tests: &[(&str, &str)]) -> Problem {
    let tests = tests
        .iter()
        .map(|(i, e)| TestCase {
            input: i.to_string(),
            expected: e.to_string(),
        })
        .collect();
    Problem {
        title: id.to_string(),
        ..Problem::from_tests(id, entry, tests, checker)
    }
}

/// A verified Python reference.
pub fn reference(problem: &str, k: usize, code: &str) -> ReferenceSolution {
    ReferenceSolution {
        id: format!("{problem}/ref-{k}"),
        language: Language::Python,
        code: code.to_string(),
        verified: true,
        recorded: None,
    }
}

/// Loads a real dataset folder or file.
pub fn real(format: Format, path: &str) -> Dataset {
    let spec = DatasetSpec::new(format, Path::new(DATA).join(path));
    match load(&spec) {
        Ok(d) => d,
        Err(e) => panic!("{spec}: {e}"),
    }
}
