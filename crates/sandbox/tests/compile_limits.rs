//! Compile limits are enforced while the compiler runs: a compiler made to loop (template
//! recursion, a huge constant expression) is killed at the limit with its whole process tree,
//! and the compilation says why.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use afterburner_sandbox::{
    Language, Limits, Program, RunRequest, Sandbox, SandboxConfig, SandboxError, Status,
};
use support::{contained, sandbox, sandbox_user_processes};

/// The compile time limit of these tests, seconds.
const LIMIT_S: f64 = 2.0;

/// Slack allowed past the limit (sandbox setup, the kill, a loaded CI machine).
const SLACK: Duration = Duration::from_secs(3);

/// Template recursion with 2^40 distinct instantiations: g++ works on it for hours (and grows
/// by ~100 MB/s, so the 2 GiB memory limit would take ~20 s: the time limit comes first).
const TEMPLATE_TREE: &str = "\
template <int N, long K> struct Tree {
    static constexpr long value = Tree<N - 1, 2 * K>::value + Tree<N - 1, 2 * K + 1>::value;
};
template <long K> struct Tree<0, K> {
    static constexpr long value = K;
};
int main() { return static_cast<int>(Tree<40, 1>::value & 1); }
";

/// A constant expression rustc's const evaluator interprets for 2^64 iterations.
const RUST_CONST_LOOP: &str = "\
#![allow(long_running_const_eval)]
const X: u64 = {
    let mut i = 0u64;
    let mut s = 0u64;
    while i < u64::MAX {
        s = s.wrapping_add(i ^ 7);
        i += 1;
    }
    s
};
fn main() { println!(\"{X}\"); }
";

/// `n` constexpr evaluations of 4*10^10 operations each: g++ gives up on each one after its
/// operation limit (about 4 s apiece here), so the file as a whole takes minutes.
fn huge_constant_expressions(n: usize) -> String {
    let mut s = String::from(
        "constexpr unsigned long long spin(unsigned long long seed) {\n\
         unsigned long long s = seed;\n\
         for (unsigned long long i = 0; i < 200000; ++i)\n\
         for (unsigned long long j = 0; j < 200000; ++j) s += i ^ j;\n\
         return s;\n}\n",
    );
    for k in 0..n {
        s.push_str(&format!("constexpr unsigned long long v{k} = spin({k});\n"));
    }
    s.push_str("int main() { return static_cast<int>(v0 & 1); }\n");
    s
}

/// A Go program with a table of `n` constant expressions: `go build` runs its `compile` child
/// on it for about 25 s per million entries (and ~0.3 GB per second), so the time limit comes
/// first.
fn huge_go_table(n: usize) -> String {
    let mut s = String::from("package main\n\nimport \"fmt\"\n\nvar table = [...]uint64{\n");
    for i in 0..n {
        s.push_str(&format!("\t{i} * {i} + {i} % 7,\n"));
    }
    s.push_str("}\n\nfunc main() { fmt.Println(len(table)) }\n");
    s
}

/// The names of the sandbox user's processes now.
fn sandbox_process_names() -> Vec<String> {
    sandbox_user_processes()
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

fn compile_limits() -> Limits {
    Limits::for_compilation()
        .with_time_limit_secs(LIMIT_S)
        .expect("a valid limit")
}

/// Asserts `program`'s compilation was stopped at the time limit, soon after it, with the
/// message saying so, and that no process of the sandbox user is left.
fn assert_killed_at_the_limit(program: &Program, elapsed: Duration, compiler: &str) {
    let c = program.compilation().expect("a compile step");
    assert_eq!(c.status, Status::TimeLimit, "{}", c.output);
    assert!(
        elapsed < Duration::from_secs_f64(LIMIT_S) + SLACK,
        "the build took {elapsed:?} under a {LIMIT_S} s compile limit"
    );
    // The compiler ran until the limit: it was stopped by it, not by anything else.
    assert!(
        c.compile_ms >= LIMIT_S * 1000.0 * 0.9,
        "compile_ms {} under a {LIMIT_S} s limit",
        c.compile_ms
    );
    let message = c.message.as_deref().expect("a message");
    assert!(
        message.starts_with("compilation exceeded its time limit of 2 s"),
        "{message}"
    );
    assert!(c.output.contains(message), "{}", c.output);
    assert!(!program.is_runnable());
    // Running it reports a compile error carrying the reason, without running anything.
    let r = sandbox().run(program, &RunRequest::default()).expect("run");
    assert_eq!(r.measurement.status, Status::CompileError);
    let why = r.message.expect("a message");
    assert!(why.contains("compilation exceeded its time limit"), "{why}");
    // The whole tree (g++ and cc1plus, rustc and its threads) is gone. The namespace dies
    // asynchronously after the kill: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = sandbox_user_processes();
        if left.is_empty() {
            break;
        }
        let names: Vec<String> = left
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
            .collect();
        assert!(
            Instant::now() < deadline,
            "{compiler}: processes left after the compile limit: {left:?} {names:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn template_recursion_is_killed_at_the_compile_limit() {
    contained("template_recursion_is_killed_at_the_compile_limit", || {
        let sb = sandbox();
        // Half-way through the limit, the compiler's tree is there: g++ and its cc1plus.
        let watcher = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(LIMIT_S / 2.0));
            sandbox_process_names()
        });
        let start = Instant::now();
        let program = sb
            .build_with_limits(Language::Cpp, TEMPLATE_TREE, &compile_limits())
            .expect("build");
        let elapsed = start.elapsed();
        let seen = watcher.join().expect("watcher");
        assert!(
            seen.iter().any(|n| n == "cc1plus"),
            "cc1plus was not running half-way through: {seen:?}"
        );
        assert_killed_at_the_limit(&program, elapsed, "g++");
    });
}

#[test]
fn huge_constant_expression_is_killed_at_the_compile_limit() {
    contained(
        "huge_constant_expression_is_killed_at_the_compile_limit",
        || {
            let sb = sandbox();
            let start = Instant::now();
            let program = sb
                .build_with_limits(
                    Language::Cpp,
                    &huge_constant_expressions(30),
                    &compile_limits(),
                )
                .expect("build");
            assert_killed_at_the_limit(&program, start.elapsed(), "g++");
        },
    );
}

#[test]
fn go_build_and_its_compile_child_are_killed_at_the_compile_limit() {
    contained(
        "go_build_and_its_compile_child_are_killed_at_the_compile_limit",
        || {
            let sb = sandbox();
            let source = huge_go_table(600_000);
            let watcher = std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs_f64(LIMIT_S * 0.75));
                sandbox_process_names()
            });
            let start = Instant::now();
            let program = sb
                .build_with_limits(Language::Go, &source, &compile_limits())
                .expect("build");
            let elapsed = start.elapsed();
            let seen = watcher.join().expect("watcher");
            assert!(
                seen.iter().any(|n| n == "compile"),
                "go build's compile child was not running: {seen:?}"
            );
            assert_killed_at_the_limit(&program, elapsed, "go build");
        },
    );
}

#[test]
fn the_configured_compile_limit_applies_to_every_build() {
    contained(
        "the_configured_compile_limit_applies_to_every_build",
        || {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("sandbox-compile-limit-{}", std::process::id()));
            let sb = Sandbox::with_config(SandboxConfig {
                state_dir: Some(dir.clone()),
                compile_limits: compile_limits(),
                ..SandboxConfig::default()
            })
            .expect("sandbox");
            assert_eq!(sb.compile_limits(), &compile_limits());
            let start = Instant::now();
            let program = sb.build(Language::Rust, RUST_CONST_LOOP).expect("build");
            assert_killed_at_the_limit(&program, start.elapsed(), "rustc");
            drop(sb);
            let _ = std::fs::remove_dir_all(dir);
        },
    );
}

#[test]
fn a_compile_limit_out_of_range_is_refused() {
    let mut limits = Limits::for_compilation();
    limits.wall_time = Duration::ZERO;
    let err = sandbox()
        .build_with_limits(Language::Cpp, "int main() {}\n", &limits)
        .unwrap_err();
    assert!(matches!(err, SandboxError::InvalidLimit(_)), "{err}");
    assert!(err.to_string().contains("wall time"), "{err}");
    let err = Sandbox::with_config(SandboxConfig {
        compile_limits: limits,
        ..SandboxConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("wall time"), "{err}");
}

#[test]
fn a_compilation_within_its_limit_is_unaffected() {
    let program = sandbox()
        .build_with_limits(
            Language::Cpp,
            "#include <cstdio>\nint main() { std::puts(\"ok\"); }\n",
            &Limits::for_compilation()
                .with_time_limit_secs(20.0)
                .expect("a valid limit"),
        )
        .expect("build");
    let c = program.compilation().expect("a compile step");
    assert_eq!(c.status, Status::Accepted, "{}", c.output);
    assert!(c.message.is_none());
    let r = sandbox()
        .run(&program, &RunRequest::default())
        .expect("run");
    assert_eq!(r.stdout_text(), "ok\n");
}
