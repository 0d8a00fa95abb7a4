//! The `afterburner run` contract: JSON fields, human summary, repeats and clear errors.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim().lines().count(),
        1,
        "exactly one JSON line: {text}"
    );
    serde_json::from_str(&text).expect("stdout is one JSON object")
}

#[test]
fn json_output_has_every_contract_field() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(
        dir.path(),
        "sum.py",
        "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n",
    );
    let input = write(dir.path(), "in.txt", "1 2 3 4\n");
    let out = afterburner(&["run", &src, "--stdin", &input, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = json(&out);
    for key in [
        "status",
        "exit_code",
        "signal",
        "wall_ms",
        "cpu_ms",
        "peak_rss_kb",
        "integral_kb_ms",
        "samples",
        "sample_hz",
        "instructions",
        "compile_ms",
        "stdout",
        "stderr",
        "stdout_truncated",
    ] {
        assert!(v.get(key).is_some(), "missing `{key}` in {v}");
    }
    assert_eq!(v["status"], "accepted");
    assert_eq!(v["stdout"], "10\n");
    assert_eq!(v["exit_code"], 0);
    assert!(v["signal"].is_null());
    assert!(v["peak_rss_kb"].as_u64().unwrap() > 1000);
    assert!(v["samples"].as_u64().unwrap() > 0);
    assert_eq!(v["stdout_truncated"], false);
}

#[test]
fn language_comes_from_the_extension_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let c = write(
        dir.path(),
        "prog.c",
        "#include <stdio.h>\nint main(void){puts(\"c\");return 0;}\n",
    );
    let v = json(&afterburner(&["run", &c, "--json"]));
    assert_eq!(v["stdout"], "c\n");
    assert!(v["compile_ms"].as_f64().unwrap() > 0.0);
    let noext = write(dir.path(), "script", "print('py')\n");
    let v = json(&afterburner(&["run", &noext, "--lang", "python", "--json"]));
    assert_eq!(v["stdout"], "py\n");
}

#[test]
fn repeat_reports_every_run_with_median_and_dispersion() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "a.py", "print(1)\n");
    let v = json(&afterburner(&["run", &src, "--repeat", "3", "--json"]));
    assert_eq!(v["repeat"], 3);
    assert_eq!(v["runs"].as_array().unwrap().len(), 3);
    assert_eq!(v["median"]["runs"], 3);
    assert!(v["median"]["cv"]["cpu_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["median"]["wall_ms"], v["wall_ms"]);
}

#[test]
fn limits_are_applied_from_flags() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "slow.py", "import time\ntime.sleep(5)\n");
    let v = json(&afterburner(&[
        "run",
        &src,
        "--time-limit",
        "0.3",
        "--json",
    ]));
    assert_eq!(v["status"], "time_limit");
    let src = write(dir.path(), "big.py", "x = bytearray(300 * 1024 * 1024)\n");
    let v = json(&afterburner(&[
        "run",
        &src,
        "--memory-limit",
        "64",
        "--json",
    ]));
    assert_eq!(v["status"], "memory_limit");
}

#[test]
fn compile_errors_are_reported_with_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "bad.rs", "fn main() { let x: u8 = \"no\"; }\n");
    let out = afterburner(&["run", &src, "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["status"], "compile_error");
    assert!(
        v["stderr"].as_str().unwrap().contains("mismatched types"),
        "{v}"
    );
}

#[test]
fn human_summary_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "a.py", "print('hi')\n");
    let out = afterburner(&["run", &src]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status        accepted"), "{text}");
    assert!(text.contains("peak rss"), "{text}");
    assert!(text.contains("--- stdout (3 bytes) ---\nhi"), "{text}");
}

fn assert_clear_failure(args: &[&str], needle: &str) {
    let out = afterburner(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "a.py", "print(1)\n");
    let odd = write(dir.path(), "a.txt", "print(1)\n");
    assert_clear_failure(&["run", "/nonexistent/x.py"], "cannot read source file");
    assert_clear_failure(
        &["run", &src, "--lang", "cobol"],
        "unknown language `cobol`",
    );
    assert_clear_failure(&["run", &odd], "pass --lang");
    assert_clear_failure(&["run", &src, "--time-limit", "0"], "time limit");
    assert_clear_failure(&["run", &src, "--time-limit", "-3"], "time limit");
    assert_clear_failure(&["run", &src, "--memory-limit", "1"], "memory limit");
    assert_clear_failure(&["run", &src, "--repeat", "0"], "--repeat");
    assert_clear_failure(
        &["run", &src, "--stdin", "/nonexistent/in"],
        "cannot read stdin",
    );
}

#[test]
fn a_missing_toolchain_is_a_sandbox_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "main.go", "package main\nfunc main() {}\n");
    let out = command()
        .args(["run", &src, "--json"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["status"], "sandbox_error");
    assert!(
        v["message"].as_str().unwrap().contains("`go` not found"),
        "{v}"
    );
}

/// What `doctor --json`'s basis says `what` rests on.
fn rests_on(v: &Value, what: &str) -> String {
    v["capabilities"]["basis"]
        .as_array()
        .expect("a basis list")
        .iter()
        .find(|b| b["what"] == what)
        .unwrap_or_else(|| panic!("no `{what}` in {v}"))["rests_on"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn doctor_lists_capabilities_and_toolchains() {
    let out = afterburner(&["doctor", "--json"]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["toolchains"].as_array().unwrap().len(), 7);
    assert!(v["capabilities"]["cpus"].as_array().is_some());
    // The tests run as root (CI); the rootless report is checked by the next test.
    assert_eq!(v["mode"], "root", "{v}");
    assert_eq!(v["available"], true);
    assert!(rests_on(&v, "isolation").contains("uid 65534"), "{v}");
    let memory = rests_on(&v, "memory limit");
    assert!(
        memory.contains("cgroup") || memory.contains("RLIMIT_AS"),
        "{v}"
    );
    let text = afterburner(&["doctor"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("mode          root"), "{text}");
    assert!(text.contains("memory limit:"), "{text}");
}

/// `doctor` run by an ordinary user reports rootless mode and what each limit rests on. The
/// user comes from `AFTERBURNER_TEST_USER` (`scripts/test-rootless` creates it; the test needs
/// root to switch to it); without it the test says so and checks nothing else.
#[test]
fn doctor_as_an_ordinary_user_reports_rootless_mode() {
    let Ok(user) = std::env::var("AFTERBURNER_TEST_USER") else {
        println!(
            "skipped: set AFTERBURNER_TEST_USER to an ordinary user (scripts/test-rootless does)"
        );
        return;
    };
    let run = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args([&format!("--reuid={user}"), &format!("--regid={user}")])
            .args(["--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_afterburner"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("TMPDIR", "/tmp")
            .current_dir("/")
            .output()
            .expect("run afterburner doctor through setpriv")
    };
    let out = run(&["doctor", "--json"]);
    let v = json(&out);
    assert_eq!(v["mode"], "rootless", "{v}");
    assert_eq!(v["available"], true, "{v}");
    assert!(rests_on(&v, "isolation").contains("user namespace"), "{v}");
    let memory = rests_on(&v, "memory limit");
    let processes = rests_on(&v, "process limit");
    match v["capabilities"]["cgroup_version"].as_u64() {
        Some(2) => {
            assert!(memory.contains("memory.max"), "{v}");
            assert!(processes.contains("pids.max"), "{v}");
        }
        None => {
            assert!(memory.contains("RLIMIT_AS"), "{v}");
            assert!(processes.contains("per user namespace"), "{v}");
            // What is missing for cgroup limits, and the fix, is among the warnings.
            let warnings = v["capabilities"]["warnings"].to_string();
            assert!(warnings.contains("cgroups unavailable"), "{v}");
            assert!(
                warnings.contains("Delegate=yes") || warnings.contains("unified_cgroup_hierarchy"),
                "{v}"
            );
        }
        Some(other) => panic!("rootless mode cannot use cgroup v{other}: {v}"),
    }
    let text = run(&["doctor"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("mode          rootless"), "{text}");
}

#[test]
fn without_cgroups_limits_fall_back_to_rlimits_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(dir.path(), "ok.py", "print('fine')\n");
    let big = write(dir.path(), "big.py", "x = bytearray(300 * 1024 * 1024)\n");
    let run = |src: &str, extra: &[&str]| {
        command()
            .args(["run", src, "--json"])
            .args(extra)
            .env("AFTERBURNER_CGROUP", "none")
            .output()
            .unwrap()
    };
    let out = run(&ok, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("fall back to rlimits"));
    assert_eq!(json(&out)["status"], "accepted");
    let out = run(&big, &["--memory-limit", "64"]);
    assert_eq!(json(&out)["status"], "memory_limit");
}

#[test]
fn a_compiler_that_loops_is_killed_at_the_compile_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 2^40 distinct template instantiations: g++ would work on it for hours.
    let src = write(
        dir.path(),
        "tree.cpp",
        "template <int N, long K> struct Tree {\n\
         static constexpr long value = Tree<N - 1, 2 * K>::value + Tree<N - 1, 2 * K + 1>::value;\n\
         };\n\
         template <long K> struct Tree<0, K> { static constexpr long value = K; };\n\
         int main() { return static_cast<int>(Tree<40, 1>::value & 1); }\n",
    );
    let start = std::time::Instant::now();
    let out = afterburner(&["run", &src, "--compile-time-limit", "1", "--json"]);
    let took = start.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    let v = json(&out);
    assert_eq!(v["status"], "compile_error", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("compilation exceeded its time limit of 1 s"),
        "{message}"
    );
    assert!(v["compile_ms"].as_f64().unwrap() >= 900.0, "{v}");

    let bad = afterburner(&["run", &src, "--compile-time-limit", "0"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--compile-time-limit"), "{stderr}");
}
