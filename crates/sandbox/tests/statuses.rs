//! Each status of the taxonomy, and the measurements that come with it.

mod support;

use std::time::Duration;

use afterburner_sandbox::{Language, Limits, RunRequest, Status};
use support::{run_python, run_with, sandbox};

#[test]
fn clean_exit_is_accepted() {
    let r = run_python("print(sum(range(10)))\n");
    assert_eq!(r.measurement.status, Status::Accepted);
    assert_eq!(r.measurement.exit_code, Some(0));
    assert_eq!(r.stdout_text(), "45\n");
    assert!(r.message.is_none());
}

#[test]
fn non_zero_exit_is_a_runtime_error() {
    let r = run_python("import sys\nsys.exit(3)\n");
    assert_eq!(r.measurement.status, Status::RuntimeError);
    assert_eq!(r.measurement.exit_code, Some(3));
    assert!(r.message.unwrap().contains("code 3"));
}

#[test]
fn uncaught_exception_is_a_runtime_error_with_its_traceback() {
    let r = run_python("raise ValueError('boom')\n");
    assert_eq!(r.measurement.status, Status::RuntimeError);
    assert!(r.stderr_text().contains("ValueError: boom"));
}

#[test]
fn crash_by_signal_is_a_runtime_error_with_the_signal() {
    let r = run_with(
        Language::C,
        "int main(void) { volatile int *p = 0; return *p; }\n",
        b"",
        Limits::default(),
    );
    assert_eq!(r.measurement.status, Status::RuntimeError);
    assert_eq!(r.measurement.signal, Some(libc::SIGSEGV));
    assert!(r.message.unwrap().contains("SIGSEGV"));
}

#[test]
fn abort_is_reported_as_sigabrt() {
    // The program is not PID 1 of its namespace, so abort() kills it with SIGABRT as usual.
    let r = run_with(
        Language::Cpp,
        "#include <stdexcept>\nint main() { throw std::runtime_error(\"x\"); }\n",
        b"",
        Limits::default(),
    );
    assert_eq!(r.measurement.signal, Some(libc::SIGABRT));
}

#[test]
fn cpu_bound_program_hits_the_time_limit() {
    let mut limits = Limits::default().with_time_limit_secs(0.5).unwrap();
    limits.wall_time = Duration::from_secs(10);
    let r = run_with(Language::Python, "while True: pass\n", b"", limits);
    assert_eq!(r.measurement.status, Status::TimeLimit);
    assert!(r.measurement.cpu_ms >= 500.0, "{:?}", r.measurement);
}

#[test]
fn allocation_beyond_the_limit_is_a_memory_limit() {
    let limits = Limits::default().with_memory_limit_mib(64).unwrap();
    let r = run_with(
        Language::Python,
        "x = bytearray(200 * 1024 * 1024)\n",
        b"",
        limits,
    );
    assert_eq!(r.measurement.status, Status::MemoryLimit, "{r:?}");
    assert!(r.message.unwrap().contains("64 MiB"));
}

#[test]
fn too_much_output_is_an_output_limit() {
    let limits = Limits {
        output_bytes: 1000,
        ..Limits::default()
    };
    let r = run_with(Language::Python, "print('y' * 5000)\n", b"", limits);
    assert_eq!(r.measurement.status, Status::OutputLimit);
    assert!(r.stdout_truncated && !r.stderr_truncated);
    assert_eq!(r.stdout.len(), 1000);
}

#[test]
fn stdin_is_delivered_whole() {
    let input: String = (0..50_000).map(|i| format!("{i}\n")).collect();
    let r = run_with(
        Language::Python,
        "import sys\nprint(sum(int(l) for l in sys.stdin))\n",
        input.as_bytes(),
        Limits::default(),
    );
    assert_eq!(
        r.stdout_text(),
        format!("{}\n", (0..50_000u64).sum::<u64>())
    );
}

#[test]
fn peak_memory_and_integral_reflect_a_held_buffer() {
    let sb = sandbox();
    let hold = |mib: u32| {
        let src = format!("import time\nb = bytearray({mib} * 1024 * 1024)\ntime.sleep(0.3)\n");
        let p = sb.build(Language::Python, &src).unwrap();
        sb.run(&p, &RunRequest::default()).unwrap().measurement
    };
    let small = hold(1);
    let big = hold(64);
    let extra_kb = big.peak_rss_kb as f64 - small.peak_rss_kb as f64;
    assert!(
        (extra_kb - 64.0 * 1024.0).abs() < 0.1 * 64.0 * 1024.0,
        "peak grew by {extra_kb} KiB for a 64 MiB buffer"
    );
    // The buffer is held for at least the 0.3 s sleep, whatever the load on the machine...
    let extra_integral = big.integral_kb_ms - small.integral_kb_ms;
    let held_at_least = 0.9 * 64.0 * 1024.0 * 300.0;
    assert!(
        extra_integral > held_at_least,
        "integral grew by {extra_integral} KiB*ms, less than {held_at_least}"
    );
    // ...and an integral can never exceed the peak held for the whole run.
    assert!(
        big.integral_kb_ms <= big.peak_rss_kb as f64 * big.wall_ms * 1.001,
        "{big:?}"
    );
    assert!(big.sample_hz > 1000.0, "{big:?}");
}

#[test]
fn repeated_runs_are_independent() {
    let sb = sandbox();
    let p = sb
        .build(
            Language::Python,
            "import os\nprint(os.path.exists('/tmp/mark'))\nopen('/tmp/mark', 'w').close()\n",
        )
        .unwrap();
    let runs = sb.run_repeated(&p, &RunRequest::default(), 3).unwrap();
    for r in runs {
        assert_eq!(
            r.stdout_text(),
            "False\n",
            "scratch space is private to each run"
        );
    }
}

#[test]
fn memory_trace_is_kept_on_request() {
    let sb = sandbox();
    let p = sb
        .build(Language::Python, "import time\ntime.sleep(0.05)\n")
        .unwrap();
    let r = sb
        .run(
            &p,
            &RunRequest {
                keep_memory_trace: true,
                ..RunRequest::default()
            },
        )
        .unwrap();
    assert_eq!(r.memory_trace.len() as u64, r.measurement.samples);
    assert!(r.memory_trace.windows(2).all(|w| w[0].t_ns <= w[1].t_ns));
    let max = r.memory_trace.iter().map(|s| s.rss_kb).max().unwrap();
    assert_eq!(max, r.measurement.peak_rss_kb);
}

#[test]
fn instructions_are_null_without_hardware_counters() {
    let r = run_python("pass\n");
    let supported = std::process::Command::new("perf")
        .args(["stat", "-e", "instructions", "true"])
        .output()
        .map(|o| {
            o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("not supported")
        })
        .unwrap_or(false);
    if !supported {
        assert_eq!(r.measurement.instructions, None);
    }
}

#[test]
fn invalid_limits_are_rejected() {
    let sb = sandbox();
    let p = sb.build(Language::Python, "pass\n").unwrap();
    let limits = Limits {
        max_processes: 0,
        ..Limits::default()
    };
    let err = sb
        .run(
            &p,
            &RunRequest {
                limits,
                ..RunRequest::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("processes"));
}
