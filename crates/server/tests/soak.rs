//! Soak: a real server on loopback under mixed traffic at its capacity (closed-loop clients,
//! more than the workers and the queue hold, so some requests are refused) for
//! `AFTERBURNER_SOAK_SECS` seconds (default 30; the figures in BENCHMARKS.md are from a 600 s
//! run), with hostile programs mixed in: fork bombs, memory hogs, output floods, busy loops and
//! sleepers. At the end every request was answered correctly or refused with 503, and nothing
//! leaked: processes, cgroups, the sandbox's temporary files, the server's file descriptors
//! (counted before and after), and resident memory stayed flat.
//!
//! The whole test runs inside an outer PID namespace and cgroup (`contained`), so the hostile
//! programs are harmless even if the sandbox were broken, and `/proc` shows only this test's
//! processes.
//!
//! ```sh
//! AFTERBURNER_SOAK_SECS=600 AFTERBURNER_SOAK_REPORT=/tmp/soak.md \
//!   cargo test --release -p afterburner-server --test soak -- --nocapture
//! ```

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use afterburner_server::{LimitPolicy, ServerConfig};
use afterburner_testkit::client;
use afterburner_testkit::contained::{contained_within, own_cgroup_dirs};
use serde_json::{Value, json};
use support::*;

const NAME: &str = "mixed_traffic_soak_answers_everything_and_leaks_nothing";

/// Seconds of traffic: `AFTERBURNER_SOAK_SECS`, 30 by default.
fn soak_secs() -> u64 {
    match std::env::var("AFTERBURNER_SOAK_SECS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("AFTERBURNER_SOAK_SECS={v:?} is not a number of seconds")),
        Err(_) => 30,
    }
}

#[test]
fn mixed_traffic_soak_answers_everything_and_leaks_nothing() {
    let secs = soak_secs();
    contained_within(NAME, Duration::from_secs(secs + 300), || soak(secs));
}

/// A kind of request: how to make it and how to tell its answer is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    PythonCorrect,
    StdinDouble,
    SuitePasses,
    SuiteWrongAnswer,
    SyntaxError,
    CppCorrect,
    CppCompileError,
    BusyLoop,
    Sleeper,
    ForkBomb,
    MemoryHog,
    OutputFlood,
}

/// One round of the mix: ordinary traffic dominates, one in four is an error or hostile.
const MIX: &[Kind] = &[
    Kind::PythonCorrect,
    Kind::SuitePasses,
    Kind::StdinDouble,
    Kind::BusyLoop,
    Kind::PythonCorrect,
    Kind::SuiteWrongAnswer,
    Kind::CppCorrect,
    Kind::ForkBomb,
    Kind::PythonCorrect,
    Kind::StdinDouble,
    Kind::SyntaxError,
    Kind::MemoryHog,
    Kind::PythonCorrect,
    Kind::SuitePasses,
    Kind::CppCompileError,
    Kind::Sleeper,
    Kind::PythonCorrect,
    Kind::SuiteWrongAnswer,
    Kind::StdinDouble,
    Kind::OutputFlood,
];

const CPP: &str = "#include <cstdio>\nint main(){long long n; if(scanf(\"%lld\",&n)!=1) return 1; printf(\"%lld\\n\", n*n); return 0;}\n";

/// Sends request `i` of `kind`; `Ok(true)` when answered right, `Ok(false)` when refused with
/// 503, `Err` with what was wrong otherwise.
fn call(addr: SocketAddr, kind: Kind, i: usize) -> Result<bool, String> {
    let (path, body) = match kind {
        Kind::PythonCorrect => (
            "/execute",
            json!({"language": "python", "code": format!("print(sum(range({i})))")}),
        ),
        Kind::StdinDouble => (
            "/run_code",
            json!({"language": "python", "code": "print(int(input()) * 2)", "stdin": format!("{i}\n")}),
        ),
        Kind::SuitePasses | Kind::SuiteWrongAnswer => {
            let factor = if kind == Kind::SuitePasses { 2 } else { 3 };
            (
                "/v1/evaluate",
                json!({"language": "python", "code": format!("print(int(input()) * {factor})"),
                       "tests": [{"input": "1", "expected": "2"}, {"input": format!("{i}"), "expected": format!("{}", 2 * i)},
                                 {"input": "21", "expected": "42"}]}),
            )
        }
        Kind::SyntaxError => (
            "/run_code",
            json!({"language": "python", "code": format!("print({i}"), "stdin": ""}),
        ),
        Kind::CppCorrect => (
            "/run_code",
            json!({"language": "cpp", "code": CPP, "stdin": format!("{i}\n")}),
        ),
        Kind::CppCompileError => (
            "/run_code",
            json!({"language": "cpp", "code": "int main() { return undefined_name; }\n"}),
        ),
        Kind::BusyLoop => (
            "/execute",
            json!({"language": "python", "code": "while True:\n    pass\n", "timeout": 0.5}),
        ),
        Kind::Sleeper => (
            "/execute",
            json!({"language": "python", "code": "import time\ntime.sleep(600)\n", "timeout": 0.5}),
        ),
        Kind::ForkBomb => (
            "/execute",
            json!({"language": "python", "timeout": 1.0, "memory_limit": 128,
                   "code": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"}),
        ),
        Kind::MemoryHog => (
            "/execute",
            json!({"language": "python", "memory_limit": 64,
                   "code": "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"}),
        ),
        Kind::OutputFlood => (
            "/v1/evaluate",
            json!({"language": "python", "time_limit": 5,
                   "code": "import sys\nline = 'x' * 1023 + '\\n'\nwhile True:\n    sys.stdout.write(line)\n",
                   "tests": [{"input": "", "expected": "x"}]}),
        ),
    };
    let r = client::post_json(addr, path, &body, Duration::from_secs(120))
        .map_err(|e| format!("{kind:?} #{i}: no answer: {e}"))?;
    if r.status == 503 {
        return Ok(false);
    }
    let v: Value = r
        .json()
        .map_err(|e| format!("{kind:?} #{i}: HTTP {} body is not JSON ({e})", r.status))?;
    if r.status != 200 {
        return Err(format!("{kind:?} #{i}: HTTP {}: {v}", r.status));
    }
    let ok = match kind {
        Kind::PythonCorrect => {
            v["status"] == "success"
                && v["output_dict"]["stdout"] == format!("{}\n", i * i.saturating_sub(1) / 2)
        }
        Kind::StdinDouble => {
            v["status"] == "Success" && v["run_result"]["stdout"] == format!("{}\n", 2 * i)
        }
        Kind::SuitePasses => v["passed"] == true && v["status"] == "accepted",
        Kind::SuiteWrongAnswer => v["passed"] == false && v["status"] == "wrong_answer",
        Kind::SyntaxError => v["status"] == "Failed" && v["run_result"]["return_code"] == 1,
        Kind::CppCorrect => {
            v["status"] == "Success" && v["run_result"]["stdout"] == format!("{}\n", i * i)
        }
        Kind::CppCompileError => {
            v["status"] == "Failed" && v["compile_result"]["return_code"].as_i64() != Some(0)
        }
        Kind::BusyLoop | Kind::Sleeper => {
            v["status"] == "timeout" && v["run_status"] == "time_limit"
        }
        Kind::ForkBomb => v["status"] != "success" && v["run_status"] != "accepted",
        Kind::MemoryHog => v["status"] == "error" && v["run_status"] == "memory_limit",
        // The suite runner holds a test's output to judge it, so a flood ends at the output
        // cap or, first, at the memory limit: contained either way.
        Kind::OutputFlood => {
            v["passed"] == false && (v["status"] == "output_limit" || v["status"] == "memory_limit")
        }
    };
    if ok {
        Ok(true)
    } else {
        Err(format!(
            "{kind:?} #{i}: wrong answer: {}",
            afterburner_sandbox::clip(&v.to_string(), 600)
        ))
    }
}

/// Processes in this PID namespace (the contained test's own, its server's and its programs).
fn processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0)
}

/// Directories under `dir`, recursively, whose name starts with `prefix`.
fn dirs_named(dir: &Path, prefix: &str, depth: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                n += 1;
            }
            if depth > 0 {
                n += dirs_named(&e.path(), prefix, depth - 1);
            }
        }
    }
    n
}

/// The sandbox's per-run cgroups under this (outer) cgroup's memory and pids hierarchies (the
/// outer cgroup has no cpuacct one: there the sandbox's sit beside other processes').
fn run_cgroups() -> usize {
    own_cgroup_dirs(&["memory", "pids"])
        .iter()
        .map(|d| dirs_named(d, "run-", 3))
        .sum()
}

/// Files and directories under `dir`, recursively, but those under `skip`.
fn entries(dir: &Path, skip: &Path) -> usize {
    let Ok(list) = std::fs::read_dir(dir) else {
        return 0;
    };
    list.flatten()
        .filter(|e| e.path() != skip)
        .map(|e| {
            1 + if e.file_type().is_ok_and(|t| t.is_dir()) {
                entries(&e.path(), skip)
            } else {
                0
            }
        })
        .sum()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What is left behind, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leftovers {
    /// Processes in this PID namespace.
    processes: usize,
    /// Per-run cgroups.
    cgroups: usize,
    /// Built programs' directories in the sandbox's state directory (the build cache's, and
    /// those of builds in flight).
    programs: usize,
    /// Everything else in the sandbox's state directory (its root template).
    state_entries: usize,
    /// This process's open file descriptors.
    fds: usize,
}

fn leftovers(state_dir: &Path) -> Leftovers {
    let programs = state_dir.join("programs");
    Leftovers {
        processes: processes(),
        cgroups: run_cgroups(),
        programs: std::fs::read_dir(&programs).map_or(0, |d| d.count()),
        state_entries: entries(state_dir, &programs),
        fds: open_fds(),
    }
}

/// Waits (up to 30 s) until nothing runs or waits and the counts hold still for a second, or
/// equal `target` when given; returns them.
fn settle(addr: SocketAddr, state_dir: &Path, target: Option<Leftovers>) -> Leftovers {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = leftovers(state_dir);
    let mut still = 0;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let st = json_with(&get(addr, "/status"), 200);
        let idle = st["queue"]["running"] == 0 && st["queue"]["depth"] == 0;
        let now = leftovers(state_dir);
        still = if idle && now == last { still + 1 } else { 0 };
        last = now;
        let done = match target {
            Some(t) => {
                idle && Leftovers {
                    programs: t.programs,
                    ..now
                } == t
            }
            None => still >= 4,
        };
        if done || Instant::now() > deadline {
            return now;
        }
    }
}

fn counts(l: &Leftovers) -> (usize, usize, usize, usize, usize) {
    (l.processes, l.cgroups, l.programs, l.state_entries, l.fds)
}

/// Built programs the soak's server keeps for reuse.
const PROGRAM_CACHE: usize = 16;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn soak(secs: u64) {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let state_dir = scratch.path().join("sandbox");
    let server = start(ServerConfig {
        workers: None,
        queue: 2,
        state_dir: Some(state_dir.clone()),
        cache_dir: None,
        results_kept: 256,
        results_max_bytes: 8 * 1024 * 1024,
        program_cache: PROGRAM_CACHE,
        limits: LimitPolicy {
            default_time_s: 5.0,
            max_time_s: 5.0,
            default_memory_mib: 256,
            max_memory_mib: 512,
            ..LimitPolicy::default()
        },
        ..config()
    });
    let addr = server.addr();
    let workers = json_with(&get(addr, "/status"), 200)["workers"]
        .as_u64()
        .unwrap_or(1) as usize;
    // Closed loop: each client sends its next request as soon as it has an answer; one client
    // more than the workers and the queue hold keeps every worker busy and the queue full, so
    // some requests are refused.
    let queue = 2 * workers;
    drop(server);
    let server = start(ServerConfig {
        workers: Some(workers),
        queue,
        state_dir: Some(state_dir.clone()),
        cache_dir: None,
        results_kept: 256,
        results_max_bytes: 8 * 1024 * 1024,
        program_cache: PROGRAM_CACHE,
        limits: LimitPolicy {
            default_time_s: 5.0,
            max_time_s: 5.0,
            default_memory_mib: 256,
            max_memory_mib: 512,
            ..LimitPolicy::default()
        },
        ..config()
    });
    let addr = server.addr();
    let clients = workers + queue + 1;

    // Warm-up: every kind once, one at a time, answered right (builds cached, lazy state made).
    let mut kinds: Vec<Kind> = MIX.to_vec();
    kinds.sort();
    kinds.dedup();
    for (n, &kind) in kinds.iter().enumerate() {
        assert_eq!(call(addr, kind, 7 + n), Ok(true), "warm-up {kind:?}");
    }
    let baseline = settle(addr, &state_dir, None);
    let rss_start = rss_mib();

    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let records: Mutex<Vec<(Kind, bool, f64)>> = Mutex::new(Vec::new());
    let rss_samples: Mutex<Vec<(f64, f64)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let kind = MIX[i % MIX.len()];
                    let t = Instant::now();
                    let outcome = call(addr, kind, i);
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    match outcome {
                        Ok(answered) => {
                            if let Ok(mut r) = records.lock() {
                                r.push((kind, answered, ms));
                            }
                            if !answered {
                                // As a client honouring Retry-After would, back off a little.
                                std::thread::sleep(Duration::from_millis(250));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failures.lock() {
                                f.push(e);
                            }
                        }
                    }
                }
            });
        }
        s.spawn(|| {
            while Instant::now() < end {
                if let Ok(mut r) = rss_samples.lock() {
                    r.push((started.elapsed().as_secs_f64(), rss_mib()));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    });
    let wall = started.elapsed().as_secs_f64();
    let after = settle(addr, &state_dir, Some(baseline));
    let rss_end = rss_mib();
    let metrics = get(addr, "/metrics").text();
    server.shutdown().expect("a clean shutdown");
    let gone = leftovers(&state_dir);

    let failures = failures.into_inner().unwrap_or_default();
    let records = records.into_inner().unwrap_or_default();
    let rss_samples = rss_samples.into_inner().unwrap_or_default();
    let answered: Vec<f64> = {
        let mut v: Vec<f64> = records.iter().filter(|r| r.1).map(|r| r.2).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let refused = records.iter().filter(|r| !r.1).count();
    let mut by_kind: BTreeMap<Kind, (usize, usize)> = BTreeMap::new();
    for (kind, ok, _) in &records {
        let e = by_kind.entry(*kind).or_insert((0, 0));
        if *ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    // Resident memory once warm (the maximum over the run's first quarter) against the end.
    let warm = rss_samples
        .iter()
        .filter(|(t, _)| *t <= wall / 4.0)
        .map(|s| s.1)
        .fold(rss_start, f64::max);
    let peak = rss_samples.iter().map(|s| s.1).fold(rss_end, f64::max);

    let mut report = String::new();
    let _ = writeln!(
        report,
        "soak: {secs} s of traffic ({wall:.0} s wall), {workers} worker(s), queue {queue}, \
         {clients} closed-loop clients"
    );
    let _ = writeln!(
        report,
        "requests: {} answered right, {refused} refused with 503, {} failed; {:.2} answered/s, \
         {:.2} requests/s",
        answered.len(),
        failures.len(),
        answered.len() as f64 / wall,
        (answered.len() + refused + failures.len()) as f64 / wall
    );
    let _ = writeln!(
        report,
        "latency of answered requests: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&answered, 50.0),
        percentile(&answered, 90.0),
        percentile(&answered, 99.0),
        answered.last().copied().unwrap_or(f64::NAN)
    );
    for (kind, (ok, no)) in &by_kind {
        let _ = writeln!(report, "  {kind:?}: {ok} answered, {no} refused");
    }
    let _ = writeln!(
        report,
        "leftovers (processes, run cgroups, built programs, other sandbox state entries, fds): \
         before {:?}, after traffic {:?}, after shutdown {:?}",
        counts(&baseline),
        counts(&after),
        counts(&gone)
    );
    let _ = writeln!(
        report,
        "RSS (test process, server included): {rss_start:.1} MiB after warm-up, {warm:.1} MiB \
         warm (max over the first quarter), {rss_end:.1} MiB at the end, peak {peak:.1} MiB"
    );
    for line in metrics.lines().filter(|l| {
        l.starts_with("afterburner_http_refusals_total")
            || l.starts_with("afterburner_jobs_refused_total")
            || l.starts_with("afterburner_runs_total")
            || l.starts_with("afterburner_worker_busy_seconds_total")
            || l.starts_with("afterburner_worker_panics_total")
    }) {
        let _ = writeln!(report, "  {line}");
    }
    println!("{report}");
    if let Ok(path) = std::env::var("AFTERBURNER_SOAK_REPORT") {
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }

    assert!(
        failures.is_empty(),
        "{} requests were neither answered right nor refused with 503; the first: {:#?}\n{report}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        answered.len() as u64 >= secs,
        "too little was answered to mean anything\n{report}"
    );
    assert_eq!(
        Leftovers {
            programs: baseline.programs,
            ..after
        },
        baseline,
        "leaked after the traffic\n{report}"
    );
    // The build cache keeps up to its capacity, beside the harness's own scripts.
    assert!(
        after.programs <= baseline.programs + PROGRAM_CACHE,
        "more built programs kept than the cache holds\n{report}"
    );
    assert_eq!(
        gone.processes, 1,
        "only this test's process is left after shutdown\n{report}"
    );
    assert_eq!(
        gone.cgroups, 0,
        "no run cgroup is left after shutdown\n{report}"
    );
    assert_eq!(
        (gone.programs, gone.state_entries),
        (0, baseline.state_entries),
        "the sandbox left built programs or other files behind\n{report}"
    );
    assert!(
        rss_end <= warm * 1.25 + 32.0,
        "resident memory grew: {warm:.1} MiB warm -> {rss_end:.1} MiB\n{report}"
    );
    assert!(
        metrics.contains("afterburner_worker_panics_total 0"),
        "{report}"
    );
}
