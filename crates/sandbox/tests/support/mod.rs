//! Test support: a sandbox shared by a test binary, running programs in it, and the processes of
//! the sandbox user. `contained` (a test body inside an outer PID namespace and cgroup, so that
//! a test of hostile behaviour stays harmless even if the sandbox is broken) is the testkit's.

#![allow(dead_code)]

use std::fs;
use std::path::Path;

use afterburner_sandbox::{Language, Limits, RunRequest, RunResult, Sandbox, SandboxConfig};
#[allow(unused_imports)] // Only the hostile tests use it.
pub use afterburner_testkit::contained::contained;

/// A sandbox shared by the tests of one binary.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    SANDBOX.get_or_init(|| {
        // Statics are never dropped: keep the sandbox's state under the target directory.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "sandbox-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        Sandbox::with_config(SandboxConfig {
            state_dir: Some(dir),
            ..SandboxConfig::default()
        })
        .expect("sandbox available (tests run as root)")
    })
}

/// Builds and runs `source` once with `limits` and `stdin`.
pub fn run_with(language: Language, source: &str, stdin: &[u8], limits: Limits) -> RunResult {
    let sb = sandbox();
    let program = sb.build(language, source).expect("build");
    if let Some(c) = program.compilation() {
        assert!(
            program.is_runnable(),
            "did not compile: {:?}\n{}",
            c.status,
            c.output
        );
    }
    sb.run(
        &program,
        &RunRequest {
            stdin: stdin.to_vec(),
            limits,
            ..RunRequest::default()
        },
    )
    .expect("run")
}

/// Builds and runs a Python program with default limits and no input.
pub fn run_python(source: &str) -> RunResult {
    run_with(Language::Python, source, b"", Limits::default())
}

/// Processes of the sandbox user (`nobody`) visible in this PID namespace.
pub fn sandbox_user_processes() -> Vec<i32> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
        if uid.as_deref() == Some("65534") {
            found.push(pid);
        }
    }
    found
}
