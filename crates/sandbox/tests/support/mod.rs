//! Test support for the sandbox's tests: a shared sandbox, running programs in it, and finding
//! the sandbox's processes.
//!
//! The hostile-test guard rail, `contained` (an outer PID namespace and cgroup, and rootless mode
//! with `AFTERBURNER_TEST_USER`), lives in `afterburner_testkit::contained` and is re-exported
//! here.

#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;

use afterburner_sandbox::{Language, Limits, RunRequest, RunResult, Sandbox, SandboxConfig};
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use afterburner_testkit::contained::{TEST_USER_ENV, contained, is_root};

/// A sandbox shared by the tests of one binary.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: std::sync::OnceLock<Sandbox> = std::sync::OnceLock::new();
    SANDBOX.get_or_init(|| {
        // Statics are never dropped: keep the sandbox's state under the target directory (an
        // ordinary user may not write there: then in its TMPDIR, which `contained` removes).
        let base = if is_root() {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
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
        .expect("sandbox available (as root, or rootless with user namespaces)")
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

/// Sandboxed processes visible in this PID namespace: those of the sandbox user (`nobody`) as
/// root; rootless (where they run as the caller), those in another user namespace.
pub fn sandbox_user_processes() -> Vec<i32> {
    let mut found = Vec::new();
    if !is_root() {
        let ours = fs::read_link("/proc/self/ns/user").expect("read our user namespace");
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if fs::read_link(e.path().join("ns/user")).is_ok_and(|ns| ns != ours) {
                found.push(pid);
            }
        }
        return found;
    }
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
