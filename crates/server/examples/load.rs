//! Load benchmark of `afterburner serve`, printed as Markdown.
//!
//! ```sh
//! cargo run --release -p afterburner-server --example load            # 100 requests per cell
//! cargo run --release -p afterburner-server --example load -- --requests 24
//! ```
//!
//! Starts the server in this process (loopback, default workers, a queue large enough that
//! nothing is refused), then for `/execute` and `/v1/evaluate` fires the same requests at 1x,
//! 4x and 16x the worker count from client threads, measuring throughput and client-side
//! latency. Beside each cell it runs the *same work in-process*: the same programs through the
//! same sandbox and harness calls on the same number of pinned worker threads, fed by the same
//! number of client threads through a queue, without HTTP and JSON. Then it compares judging a
//! 50-test problem SandboxFusion-style (one `/run_code` per test case, outputs compared by the
//! client) with one `/v1/evaluate`. Needs root (the sandbox does).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use afterburner_benchmarks::{
    Checker, Entry, Harness, HarnessConfig, Problem, Submission, Suite, TestCase,
};
use afterburner_sandbox::{Language, Limits, RunRequest, Sandbox, Status};
use afterburner_server::{Server, ServerConfig};
use afterburner_testkit::client;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

const EXECUTE_CODE: &str =
    "import sys\nn = int(sys.stdin.read())\nprint(sum(i * i for i in range(n)))\n";
const EXECUTE_STDIN: &str = "20000\n";
const EVALUATE_CODE: &str = "a, b = map(int, input().split())\nprint(a + b)\n";
const SQUARE_PY: &str = "n = int(input())\nprint(n * n)\n";
const SQUARE_CPP: &str = "#include <cstdio>\nint main(){long long n; if(scanf(\"%lld\",&n)!=1) return 1; printf(\"%lld\\n\", n*n); return 0;}\n";

fn problem(tests: Vec<TestCase>) -> Problem {
    Problem::from_tests("load", Entry::StdinStdout, tests, Checker::Exact)
}

fn sum_tests(n: usize) -> Vec<TestCase> {
    (0..n)
        .map(|i| TestCase {
            input: format!("{i} {}\n", 3 * i + 1),
            expected: format!("{}\n", 4 * i + 1),
        })
        .collect()
}

fn square_tests(n: usize) -> Vec<TestCase> {
    (1..=n)
        .map(|i| TestCase {
            input: format!("{}\n", 1000 + i),
            expected: format!("{}\n", (1000 + i) * (1000 + i)),
        })
        .collect()
}

fn tests_json(tests: &[TestCase]) -> Value {
    Value::Array(
        tests
            .iter()
            .map(|t| json!({"input": t.input, "expected": t.expected}))
            .collect(),
    )
}

/// Latencies of one cell and its wall time.
struct Cell {
    latencies_ms: Vec<f64>,
    wall_s: f64,
    failures: usize,
}

impl Cell {
    fn throughput(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.wall_s
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
}

/// Runs `requests` calls of `call` from `concurrency` threads.
fn drive(requests: usize, concurrency: usize, call: impl Fn(usize) -> bool + Sync) -> Cell {
    let next = AtomicUsize::new(0);
    let latencies = Mutex::new(Vec::with_capacity(requests));
    let failures = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= requests {
                        break;
                    }
                    let t = Instant::now();
                    if !call(i) {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    if let Ok(mut l) = latencies.lock() {
                        l.push(ms);
                    }
                }
            });
        }
    });
    Cell {
        latencies_ms: latencies.into_inner().unwrap_or_default(),
        wall_s: start.elapsed().as_secs_f64(),
        failures: failures.load(Ordering::SeqCst),
    }
}

type Task = Box<dyn FnOnce(&Harness<'_>, Option<usize>) + Send>;

/// The in-process baseline: `cpus.len()` pinned worker threads over one sandbox and harness,
/// fed through a queue.
struct InProcess {
    queue: Option<mpsc::Sender<Task>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl InProcess {
    fn start(cpus: Vec<Option<usize>>, limits: Limits) -> InProcess {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let owner = std::thread::spawn(move || {
            let sandbox = Sandbox::new().expect("a sandbox (run as root)");
            let harness = Harness::new(
                &sandbox,
                HarnessConfig {
                    limits,
                    repeats: 1,
                    ..HarnessConfig::default()
                },
            )
            .expect("the harness");
            let _ = ready_tx.send(());
            std::thread::scope(|s| {
                for cpu in cpus {
                    let (rx, harness) = (rx.clone(), &harness);
                    s.spawn(move || {
                        loop {
                            let task = match rx.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => break,
                            };
                            match task {
                                Ok(t) => t(harness, cpu),
                                Err(_) => break,
                            }
                        }
                    });
                }
            });
        });
        let _ = ready_rx.recv();
        InProcess {
            queue: Some(tx),
            threads: vec![owner],
        }
    }

    /// Runs `f` on a worker and waits for its result.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Harness<'_>, Option<usize>) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::channel();
        let task: Task = Box::new(move |h, cpu| {
            let _ = tx.send(f(h, cpu));
        });
        self.queue.as_ref()?.send(task).ok()?;
        rx.recv().ok()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.queue.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// SandboxFusion style: one `/run_code` per test, outputs compared by the client (as verl
/// does: trailing newlines stripped). Returns (wall s, tests passed).
fn fusion_style(
    addr: SocketAddr,
    language: &str,
    code: &str,
    tests: &[TestCase],
    concurrency: usize,
) -> (f64, usize) {
    let passed = AtomicUsize::new(0);
    let cell = drive(tests.len(), concurrency, |i| {
        let t = &tests[i];
        let r = client::post_json(
            addr,
            "/run_code",
            &json!({"code": code, "language": language, "stdin": t.input,
                    "compile_timeout": 30, "run_timeout": 10}),
            TIMEOUT,
        );
        let Ok(r) = r else { return false };
        let Ok(v) = r.json() else { return false };
        let ok = v["status"] == "Success"
            && v["run_result"]["stdout"]
                .as_str()
                .map(|s| s.trim_end_matches('\n'))
                == Some(t.expected.trim_end_matches('\n'));
        if ok {
            passed.fetch_add(1, Ordering::SeqCst);
        }
        r.status == 200
    });
    (cell.wall_s, passed.load(Ordering::SeqCst))
}

fn one_evaluate(addr: SocketAddr, language: &str, code: &str, tests: &[TestCase]) -> (f64, usize) {
    let start = Instant::now();
    let r = client::post_json(
        addr,
        "/v1/evaluate",
        &json!({"language": language, "code": code, "tests": tests_json(tests)}),
        TIMEOUT,
    );
    let wall = start.elapsed().as_secs_f64();
    let passed = r
        .ok()
        .and_then(|r| r.json().ok())
        .and_then(|v| v["passed_tests"].as_u64())
        .unwrap_or(0) as usize;
    (wall, passed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let server = Server::bind(ServerConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        queue: 4096,
        ..ServerConfig::default()
    })
    .expect("start the server (run as root)");
    let workers = server.workers();
    let cpus = server.worker_cpus().to_vec();
    let handle = server.spawn().expect("run the server");
    let addr = handle.addr();
    let limits = Limits {
        output_bytes: 64 * 1024 * 1024,
        ..Limits::default()
    };
    let baseline = InProcess::start(cpus.clone(), limits.clone());
    let load_before = loadavg();
    let started = Instant::now();

    println!("### Load benchmark: `afterburner serve` vs the same work in-process\n");
    println!(
        "{} cores (`nproc`), {workers} worker(s) on cores {cpus:?}, {requests} requests per cell, \
         load average before: {load_before}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "- `/execute`: a Python program summing 20,000 squares (its build is cached after the \
         first request; in-process: built once, `Sandbox::run` per call)."
    );
    println!(
        "- `/v1/evaluate`: a Python a+b solution over 20 inline stdin/stdout tests, one sandboxed \
         process per request (in-process: `Harness::evaluate_within`).\n"
    );
    println!("p50 and p99 are nearest-rank percentiles of client-side latency.\n");
    println!(
        "| endpoint | concurrency | server req/s | server p50 ms | server p99 ms | in-process req/s | in-process p50 ms | in-process p99 ms | failures |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");

    let evaluate_problem = Arc::new(problem(sum_tests(20)));
    let evaluate_suite = Arc::new(Suite::tests_only(&evaluate_problem));
    let evaluate_body = json!({"language": "python", "code": EVALUATE_CODE,
                               "tests": tests_json(&evaluate_problem.tests)});
    let execute_body = json!({"language": "python", "code": EXECUTE_CODE, "stdin": EXECUTE_STDIN});
    // The in-process program for /execute, built once as the server's cache does.
    let built = Arc::new(Mutex::new(None::<Arc<afterburner_sandbox::Program>>));

    for endpoint in ["/execute", "/v1/evaluate"] {
        for factor in [1, 4, 16] {
            let concurrency = workers * factor;
            let body = if endpoint == "/execute" {
                &execute_body
            } else {
                &evaluate_body
            };
            // Warm-up: one request each way (builds, caches, interpreter pages).
            let _ = client::post_json(addr, endpoint, body, TIMEOUT);
            let served = drive(requests, concurrency, |_| {
                client::post_json(addr, endpoint, body, TIMEOUT).is_ok_and(|r| {
                    r.status == 200
                        && r.json()
                            .is_ok_and(|v| v["status"] == "success" || v["status"] == "accepted")
                })
            });
            let in_process = drive(requests, concurrency, |_| {
                if endpoint == "/execute" {
                    let built = built.clone();
                    baseline
                        .call(move |h, cpu| {
                            let sandbox = h.sandbox();
                            let program = {
                                let mut slot = built.lock().ok()?;
                                if slot.is_none() {
                                    *slot = Some(Arc::new(
                                        sandbox.build(Language::Python, EXECUTE_CODE).ok()?,
                                    ));
                                }
                                slot.clone()?
                            };
                            let r = sandbox
                                .run(
                                    &program,
                                    &RunRequest {
                                        stdin: EXECUTE_STDIN.as_bytes().to_vec(),
                                        limits: Limits::default(),
                                        cpu,
                                        keep_memory_trace: false,
                                        count_instructions: false,
                                    },
                                )
                                .ok()?;
                            Some(r.measurement.status == Status::Accepted)
                        })
                        .flatten()
                        .unwrap_or(false)
                } else {
                    let (p, s, l) = (
                        evaluate_problem.clone(),
                        evaluate_suite.clone(),
                        limits.clone(),
                    );
                    baseline
                        .call(move |h, cpu| {
                            h.evaluate_within(
                                &Submission::new(&p, Language::Python, EVALUATE_CODE),
                                &s,
                                &l,
                                cpu,
                            )
                            .is_ok_and(|e| e.passed())
                        })
                        .unwrap_or(false)
                }
            });
            println!(
                "| `{endpoint}` | {concurrency} ({factor}x) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                served.throughput(),
                served.percentile(50.0),
                served.percentile(99.0),
                in_process.throughput(),
                in_process.percentile(50.0),
                in_process.percentile(99.0),
                served.failures + in_process.failures,
            );
        }
    }

    println!("\n### One problem with 50 tests: SandboxFusion-style vs one `/v1/evaluate`\n");
    println!(
        "SandboxFusion-style: 50 `/run_code` requests (same code, one test's stdin each, {} \
         concurrent, as verl's client sends them), outputs compared by the client. Median of 3.\n",
        16 * workers
    );
    println!(
        "| language | 50 x `/run_code` s | tests passed | 1 x `/v1/evaluate` s | tests passed | speed-up |"
    );
    println!("|---|---|---|---|---|---|");
    let tests = square_tests(50);
    for (language, code) in [("python", SQUARE_PY), ("cpp", SQUARE_CPP)] {
        let mut fusion = Vec::new();
        let mut native = Vec::new();
        let (mut fusion_passed, mut native_passed) = (0, 0);
        // Alternate the two, so that drift in machine load hits both alike. Each code variant
        // differs by a comment so neither benefits from a build cached by the other.
        for round in 0..3 {
            let variant = format!(
                "{code}{}",
                if language == "python" {
                    format!("# round {round}\n")
                } else {
                    format!("// round {round}\n")
                }
            );
            let (w, p) = fusion_style(addr, language, &variant, &tests, 16 * workers);
            fusion.push(w);
            fusion_passed = p;
            let (w, p) = one_evaluate(addr, language, &variant, &tests);
            native.push(w);
            native_passed = p;
        }
        let (f, n) = (median(fusion), median(native));
        println!(
            "| {language} | {f:.3} | {fusion_passed}/50 | {n:.3} | {native_passed}/50 | {:.1}x |",
            f / n
        );
    }
    // What SandboxFusion itself does: compile for every request. A second server without the
    // build cache shows it (one round: 50 compilations take a while).
    let uncached = Server::bind(ServerConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        queue: 4096,
        program_cache: 0,
        ..ServerConfig::default()
    })
    .and_then(Server::spawn)
    .expect("start the second server");
    let variant = format!("{SQUARE_CPP}// uncached\n");
    let (f, fusion_passed) = fusion_style(uncached.addr(), "cpp", &variant, &tests, 16 * workers);
    let (n, native_passed) = one_evaluate(uncached.addr(), "cpp", &variant, &tests);
    println!(
        "| cpp, build cache off (SandboxFusion compiles per request; 1 round) | {f:.3} | \
         {fusion_passed}/50 | {n:.3} | {native_passed}/50 | {:.1}x |",
        f / n
    );
    if let Err(e) = uncached.shutdown() {
        eprintln!("shutdown: {e}");
    }
    println!(
        "\nElapsed {:.0} s; load average after: {} (before: {load_before}).",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    drop(baseline);
    if let Err(e) = handle.shutdown() {
        eprintln!("shutdown: {e}");
    }
}
