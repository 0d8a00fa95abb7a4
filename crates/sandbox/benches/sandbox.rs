//! Benchmarks of the sandbox against baselines measured in the same process, on the same machine,
//! in the same minute: overhead of a run, sampling rate and its cost, accuracy of the memory
//! figures, and run-to-run noise. Each figure is printed with its ratio to the baseline and
//! PASS/FAIL against its goal, and written as JSON to `target/afterburner-bench/sandbox-root.json`
//! (or `sandbox-rootless.json`; `AFTERBURNER_BENCH_DIR` names another directory).
//!
//! ```text
//! cargo bench -p afterburner-sandbox --bench sandbox            # full (about 70 s)
//! cargo bench -p afterburner-sandbox --bench sandbox -- --quick # fewer repetitions
//! ```
//!
//! `AFTERBURNER_BENCH_QUICK=1` is the same as `--quick` (about 20 s). As root it measures the
//! root mode; as an ordinary user, the rootless mode. Run it on a quiet machine: the load of other work is measured and reported, and figures
//! taken while it exceeds 5% of the machine are flagged as unreliable.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use afterburner_sandbox::{
    Language, Measurement, Program, RunRequest, Sandbox, SandboxConfig, Status,
    coefficient_of_variation, median,
};
use serde_json::{Value, json};

/// 100 MiB in KiB.
const BUFFER_KB: f64 = 100.0 * 1024.0;
/// Share of the machine's CPU capacity used by other work above which the figures are flagged.
const BUSY: f64 = 0.05;
/// How long the memory programs sleep, seconds.
const HOLD_S: f64 = 0.5;
/// The environment every Python run gets, bare or sandboxed (the sandbox sets exactly this).
const ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("TMPDIR", "/tmp"),
    ("LANG", "C.UTF-8"),
    ("LC_ALL", "C.UTF-8"),
    ("PYTHONHASHSEED", "0"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("PYTHONNOUSERSITE", "1"),
];

/// A CPU-bound loop; `{n}` is replaced by the iteration count.
const CPU_PROGRAM: &str = "\
def work(n):
    x = 0
    for i in range(n):
        x += i * i
    return x


work({n})
";

/// The same loop, timing itself: used once, bare, to calibrate the iteration count.
const CALIBRATION_PROGRAM: &str = "\
import time


def work(n):
    x = 0
    for i in range(n):
        x += i * i
    return x


t = time.perf_counter()
work({n})
print(time.perf_counter() - t)
";

/// Baseline of the accuracy figures: same imports and sleep as [`BUFFER_PROGRAM`], no buffer.
const SLEEP_PROGRAM: &str = "\
import time

time.sleep(0.5)
";

/// Allocates 100 MiB, writes one byte in every 4 KiB page (a fresh `bytearray` is calloc'ed from
/// untouched zero pages, so it must be written to become resident), then holds it.
const BUFFER_PROGRAM: &str = "\
import time

n = 100 * 1024 * 1024
b = bytearray(n)
b[::4096] = b'\\x01' * (n // 4096)
time.sleep(0.5)
";

/// Repetitions of each figure.
struct Reps {
    overhead: usize,
    sampling: usize,
    accuracy: usize,
    noise: usize,
}

impl Reps {
    fn new(quick: bool) -> Reps {
        if quick {
            Reps {
                overhead: 10,
                sampling: 8,
                accuracy: 3,
                noise: 5,
            }
        } else {
            Reps {
                overhead: 30,
                sampling: 40,
                accuracy: 7,
                noise: 10,
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Pins the calling thread (and the children it spawns from now on) to `cpus`.
fn set_affinity(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, CPU_SET indexes it with bounds checks, and it is passed with its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(r, 0, "sched_setaffinity({cpus:?}) failed");
    }
}

/// User + system CPU time of all reaped children of this process so far, ms.
fn children_cpu_ms() -> f64 {
    // SAFETY: a zeroed rusage is valid, and getrusage writes one into the live `ru`.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// CPU time spent on this machine, to tell how much of it went to other work.
#[derive(Clone, Copy)]
struct Load {
    at: Instant,
    /// Busy time of all cores (user, nice, system, irq, softirq), seconds, from `/proc/stat`.
    busy_s: f64,
    /// Time stolen by the hypervisor, seconds.
    steal_s: f64,
    /// CPU time of this process and its reaped children, seconds.
    own_s: f64,
}

impl Load {
    fn now() -> Load {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // SAFETY: sysconf takes no pointers and has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let tick = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / hz;
        // SAFETY: a zeroed rusage is valid, and getrusage writes one into the live `ru`.
        let own_s = unsafe {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let mut total = 0.0;
            for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
                let mut ru: libc::rusage = std::mem::zeroed();
                libc::getrusage(who, &mut ru);
                total += tv(ru.ru_utime) + tv(ru.ru_stime);
            }
            total
        };
        Load {
            at: Instant::now(),
            // user nice system idle iowait irq softirq steal
            busy_s: tick(0) + tick(1) + tick(2) + tick(5) + tick(6),
            steal_s: tick(7),
            own_s,
        }
    }

    /// Share of the machine's CPU capacity since `self` used by anything but this benchmark
    /// (other processes, kernel workers) or stolen by the hypervisor.
    fn foreign_share(&self, nproc: usize) -> f64 {
        let now = Load::now();
        let capacity = now.at.duration_since(self.at).as_secs_f64() * nproc.max(1) as f64;
        let foreign = (now.busy_s - self.busy_s) - (now.own_s - self.own_s);
        let steal = now.steal_s - self.steal_s;
        ((foreign + steal) / capacity).max(0.0)
    }
}

/// Output of a short command, trimmed (empty when it cannot run).
fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Now, as an ISO 8601 UTC timestamp (civil-from-days, proleptic Gregorian).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock before 1970")
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One bare run: end-to-end wall time as seen by the caller and CPU time of the child.
struct BareRun {
    e2e_ms: f64,
    cpu_ms: f64,
}

/// Runs Python programs bare (`std::process::Command` of the real interpreter), on the core the
/// sandbox pins its programs to, with the sandbox's environment.
struct Bare {
    python: PathBuf,
    dir: tempfile::TempDir,
    cpu: usize,
    all_cpus: Vec<usize>,
}

impl Bare {
    fn new(python: PathBuf, cpu: usize, all_cpus: Vec<usize>) -> Bare {
        Bare {
            python,
            dir: tempfile::tempdir().expect("create a temporary directory for bare programs"),
            cpu,
            all_cpus,
        }
    }

    fn script(&self, name: &str, source: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.py"));
        fs::write(&path, source).expect("write a bare program");
        path
    }

    fn run(&self, script: &Path) -> (BareRun, String) {
        set_affinity(&[self.cpu]);
        let cpu_before = children_cpu_ms();
        let start = Instant::now();
        let out = Command::new(&self.python)
            .arg(script)
            .env_clear()
            .envs(ENV.iter().copied())
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("start the bare Python interpreter");
        let e2e_ms = ms(start.elapsed());
        let cpu_ms = children_cpu_ms() - cpu_before;
        set_affinity(&self.all_cpus);
        assert!(
            out.status.success(),
            "bare run of {} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (
            BareRun { e2e_ms, cpu_ms },
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

fn build(sandbox: &Sandbox, language: Language, what: &str, source: &str) -> Program {
    let p = sandbox
        .build(language, source)
        .unwrap_or_else(|e| panic!("building the {what} program failed: {e}"));
    assert!(
        p.is_runnable(),
        "the {what} program did not compile: {:?}",
        p.compilation()
    );
    p
}

/// One sandboxed run: end-to-end wall time of `Sandbox::run` and the measurement.
fn run_sandboxed(sandbox: &Sandbox, program: &Program, what: &str) -> (f64, Measurement) {
    let request = RunRequest::default();
    let start = Instant::now();
    let r = sandbox
        .run(program, &request)
        .unwrap_or_else(|e| panic!("sandboxed run of the {what} program failed: {e}"));
    let e2e = ms(start.elapsed());
    assert_eq!(
        r.measurement.status,
        Status::Accepted,
        "sandboxed run of the {what} program: {:?}: {}",
        r.message,
        r.stderr_text()
    );
    (e2e, r.measurement)
}

/// One row of the result table.
struct Figure {
    name: &'static str,
    goal: String,
    measured: String,
    baseline: String,
    ratio: f64,
    pass: Option<bool>,
}

impl Figure {
    fn result(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "info",
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "figure": self.name,
            "goal": self.goal,
            "measured": self.measured,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "result": self.result(),
        })
    }
}

fn print_table(figures: &[Figure]) {
    let header = ["figure", "goal", "measured", "baseline", "ratio", "result"];
    let rows: Vec<[String; 6]> = figures
        .iter()
        .map(|f| {
            [
                f.name.to_string(),
                f.goal.clone(),
                f.measured.clone(),
                f.baseline.clone(),
                format!("{:.3}", f.ratio),
                f.result().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&header.map(String::from));
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &rows {
        line(row);
    }
}

/// 1. Overhead of a run: `Sandbox::run` of `pass` against the bare interpreter, interleaved.
fn overhead(sandbox: &Sandbox, bare: &Bare, reps: &Reps, figures: &mut Vec<Figure>) -> Value {
    println!(
        "\n## 1. overhead: `pass`, {} runs each, interleaved",
        reps.overhead
    );
    let program = build(sandbox, Language::Python, "trivial", "pass\n");
    let script = bare.script("trivial", "pass\n");
    // Warm the page cache and the sandbox's lazily created state.
    bare.run(&script);
    run_sandboxed(sandbox, &program, "trivial");
    let (mut bare_e2e, mut sb_e2e, mut sb_wall, mut sb_cpu, mut bare_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..reps.overhead {
        let mut one_bare = || {
            let (b, _) = bare.run(&script);
            bare_e2e.push(b.e2e_ms);
            bare_cpu.push(b.cpu_ms);
        };
        let mut one_sandboxed = || {
            let (e2e, m) = run_sandboxed(sandbox, &program, "trivial");
            sb_e2e.push(e2e);
            sb_wall.push(m.wall_ms);
            sb_cpu.push(m.cpu_ms);
        };
        // Alternate which goes first so that neither always follows the other.
        if i % 2 == 0 {
            one_bare();
            one_sandboxed();
        } else {
            one_sandboxed();
            one_bare();
        }
    }
    let (b, s, w) = (median(&bare_e2e), median(&sb_e2e), median(&sb_wall));
    let outside: Vec<f64> = sb_e2e.iter().zip(&sb_wall).map(|(e, w)| e - w).collect();
    println!(
        "bare e2e median {b:.2} ms, sandboxed e2e median {s:.2} ms, sandboxed wall_ms (exec to \
         exit) median {w:.2} ms"
    );
    println!(
        "sandbox setup + teardown (e2e - wall_ms of each run): median {:.2} ms, max {:.2} ms",
        median(&outside),
        outside.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "CPU: bare median {:.2} ms, sandboxed cpu_ms median {:.2} ms",
        median(&bare_cpu),
        median(&sb_cpu)
    );
    figures.push(Figure {
        name: "overhead: run() e2e, `pass`",
        goal: "ratio <= 1.15".into(),
        measured: format!("{s:.2} ms"),
        baseline: format!("{b:.2} ms (bare)"),
        ratio: s / b,
        pass: Some(s / b <= 1.15),
    });
    figures.push(Figure {
        name: "overhead: wall_ms (exec->exit)",
        goal: "(info)".into(),
        measured: format!("{w:.2} ms"),
        baseline: format!("{b:.2} ms (bare e2e)"),
        ratio: w / b,
        pass: None,
    });
    json!({
        "runs": reps.overhead,
        "bare_e2e_ms": bare_e2e,
        "sandboxed_e2e_ms": sb_e2e,
        "sandboxed_wall_ms": sb_wall,
        "sandboxed_cpu_ms": sb_cpu,
        "bare_cpu_ms": bare_cpu,
        "median_bare_e2e_ms": b,
        "median_sandboxed_e2e_ms": s,
        "median_sandboxed_wall_ms": w,
        "outside_exec_ms": outside,
        "median_outside_exec_ms": median(&outside),
        "ratio": s / b,
    })
}

/// Finds the loop count that makes [`CPU_PROGRAM`] compute for about `target_ms`, bare.
fn calibrate(bare: &Bare) -> (f64, u64) {
    const PROBE: u64 = 2_000_000;
    let script = bare.script(
        "calibrate",
        &CALIBRATION_PROGRAM.replace("{n}", &PROBE.to_string()),
    );
    // Best of three: the loop's speed without interference.
    let secs = (0..3)
        .map(|_| {
            let (_, out) = bare.run(&script);
            out.trim()
                .parse::<f64>()
                .expect("the calibration program prints its loop time")
        })
        .fold(f64::INFINITY, f64::min);
    let ns_per_iteration = secs * 1e9 / PROBE as f64;
    (ns_per_iteration, PROBE)
}

fn iterations_for(ns_per_iteration: f64, target_ms: f64) -> u64 {
    (target_ms * 1e6 / ns_per_iteration).round() as u64
}

/// Runs `p_on` in `on` and `p_off` in `off` alternately, `pairs` times each, after a warm-up.
fn on_off_pairs(
    on: &Sandbox,
    p_on: &Program,
    off: &Sandbox,
    p_off: &Program,
    what: &str,
    pairs: usize,
) -> (Vec<Measurement>, Vec<Measurement>) {
    run_sandboxed(on, p_on, what);
    run_sandboxed(off, p_off, what);
    let (mut on_m, mut off_m) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let mut one_on = || on_m.push(run_sandboxed(on, p_on, what).1);
        let mut one_off = || off_m.push(run_sandboxed(off, p_off, what).1);
        if i % 2 == 0 {
            one_on();
            one_off();
        } else {
            one_off();
            one_on();
        }
    }
    (on_m, off_m)
}

/// A native CPU-bound loop; `{n}` is replaced by the iteration count.
const C_PROGRAM: &str = "\
int main(void) {
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < {n}UL; i++) x += i * i;
    return 0;
}
";

/// 2b. The cost of sampling on a native loop, whose CPU time varies far less than Python's:
/// separates what the sampler costs the program from the interpreter's run-to-run noise.
fn sampling_native(on: &Sandbox, off: &Sandbox, reps: &Reps, figures: &mut Vec<Figure>) -> Value {
    const PROBE: u64 = 100_000_000;
    println!("\n## 2b. sampling cost on a native C loop (~200 ms), for diagnosis");
    let probe = match on.build(Language::C, &C_PROGRAM.replace("{n}", &PROBE.to_string())) {
        Ok(p) if p.is_runnable() => p,
        Ok(p) => {
            println!(
                "skipped: the C probe did not compile: {:?}",
                p.compilation()
            );
            return json!({ "skipped": "the C probe did not compile" });
        }
        Err(e) => {
            println!("skipped: no C toolchain ({e})");
            return json!({ "skipped": e.to_string() });
        }
    };
    let probe_ms = median(
        &(0..3)
            .map(|_| run_sandboxed(off, &probe, "C probe").1.cpu_ms)
            .collect::<Vec<_>>(),
    );
    let n = (PROBE as f64 * 200.0 / probe_ms.max(1.0)) as u64;
    let source = C_PROGRAM.replace("{n}", &n.to_string());
    let p_on = build(on, Language::C, "C loop", &source);
    let p_off = build(off, Language::C, "C loop", &source);
    let (on_m, off_m) = on_off_pairs(on, &p_on, off, &p_off, "C loop", reps.sampling);
    let on_cpu: Vec<f64> = on_m.iter().map(|m| m.cpu_ms).collect();
    let off_cpu: Vec<f64> = off_m.iter().map(|m| m.cpu_ms).collect();
    let hz: Vec<f64> = on_m.iter().map(|m| m.sample_hz).collect();
    let (on_c, off_c) = (median(&on_cpu), median(&off_cpu));
    println!(
        "C loop ({n} iterations): cpu_ms median on {on_c:.2} (CV {:.2}%), off {off_c:.2} (CV \
         {:.2}%), ratio {:.4}; sample_hz median {:.0}",
        coefficient_of_variation(&on_cpu) * 100.0,
        coefficient_of_variation(&off_cpu) * 100.0,
        on_c / off_c,
        median(&hz)
    );
    figures.push(Figure {
        name: "sampling: cpu_ms on/off, C loop",
        goal: "(info)".into(),
        measured: format!("{on_c:.2} ms (on)"),
        baseline: format!("{off_c:.2} ms (off)"),
        ratio: on_c / off_c,
        pass: None,
    });
    json!({
        "runs": reps.sampling,
        "iterations": n,
        "cpu_ms_on": on_cpu,
        "cpu_ms_off": off_cpu,
        "sample_hz": hz,
        "median_cpu_ms_on": on_c,
        "median_cpu_ms_off": off_c,
        "ratio": on_c / off_c,
    })
}

/// 2. Sampling: achieved rate, and CPU time with sampling on against sampling off, interleaved.
fn sampling(
    on: &Sandbox,
    off: &Sandbox,
    nominal_hz: f64,
    ns_per_iteration: f64,
    reps: &Reps,
    figures: &mut Vec<Figure>,
) -> Value {
    let n = iterations_for(ns_per_iteration, 200.0);
    println!(
        "\n## 2. sampling: ~200 ms CPU-bound loop ({n} iterations), {} runs each, interleaved",
        reps.sampling
    );
    let source = CPU_PROGRAM.replace("{n}", &n.to_string());
    let p_on = build(on, Language::Python, "cpu-200ms", &source);
    let p_off = build(off, Language::Python, "cpu-200ms", &source);
    let (on_m, off_m) = on_off_pairs(on, &p_on, off, &p_off, "cpu-200ms", reps.sampling);
    let pick = |v: &[Measurement], f: fn(&Measurement) -> f64| v.iter().map(f).collect::<Vec<_>>();
    let hz = pick(&on_m, |m| m.sample_hz);
    let on_cpu = pick(&on_m, |m| m.cpu_ms);
    let off_cpu = pick(&off_m, |m| m.cpu_ms);
    let on_wall = pick(&on_m, |m| m.wall_ms);
    let off_wall = pick(&off_m, |m| m.wall_ms);
    let off_samples = pick(&off_m, |m| m.samples as f64);
    let (hz_med, on_c, off_c) = (median(&hz), median(&on_cpu), median(&off_cpu));
    // Each on run sits next to an off run: their ratio cancels slow drift of the machine.
    let paired: Vec<f64> = on_cpu.iter().zip(&off_cpu).map(|(a, b)| a / b).collect();
    println!(
        "sample_hz median {hz_med:.0} (min {:.0}, max {:.0}); nominal {nominal_hz:.0} Hz",
        hz.iter().copied().fold(f64::INFINITY, f64::min),
        hz.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "cpu_ms median: sampling on {on_c:.2}, off {off_c:.2} ({:+.2}%); wall_ms median: on \
         {:.2}, off {:.2}; samples with sampling off: median {:.0}",
        (on_c / off_c - 1.0) * 100.0,
        median(&on_wall),
        median(&off_wall),
        median(&off_samples)
    );
    println!(
        "cpu_ms on/off per adjacent pair: median {:.4}; CV of cpu_ms: on {:.2}%, off {:.2}%",
        median(&paired),
        coefficient_of_variation(&on_cpu) * 100.0,
        coefficient_of_variation(&off_cpu) * 100.0
    );
    figures.push(Figure {
        name: "sampling: achieved rate",
        goal: ">= 10000 Hz".into(),
        measured: format!("{hz_med:.0} Hz"),
        baseline: format!("{nominal_hz:.0} Hz (nominal)"),
        ratio: hz_med / nominal_hz,
        pass: Some(hz_med >= 10_000.0),
    });
    figures.push(Figure {
        name: "sampling: cpu_ms on vs off",
        goal: "|ratio - 1| <= 2%".into(),
        measured: format!("{on_c:.2} ms (on)"),
        baseline: format!("{off_c:.2} ms (off)"),
        ratio: on_c / off_c,
        pass: Some((on_c / off_c - 1.0).abs() <= 0.02),
    });
    json!({
        "runs": reps.sampling,
        "iterations": n,
        "nominal_hz": nominal_hz,
        "sample_hz": hz,
        "median_sample_hz": hz_med,
        "cpu_ms_on": on_cpu,
        "cpu_ms_off": off_cpu,
        "wall_ms_on": on_wall,
        "wall_ms_off": off_wall,
        "samples_off": off_samples,
        "median_cpu_ms_on": on_c,
        "median_cpu_ms_off": off_c,
        "ratio": on_c / off_c,
        "paired_ratios": paired,
        "median_paired_ratio": median(&paired),
    })
}

/// 3. Accuracy: peak and integral of a program holding 100 MiB against the analytic value.
fn accuracy(sandbox: &Sandbox, reps: &Reps, figures: &mut Vec<Figure>) -> Value {
    println!(
        "\n## 3. accuracy: 100 MiB held {HOLD_S} s vs the same program without it, {} runs each, \
         interleaved",
        reps.accuracy
    );
    let p_base = build(sandbox, Language::Python, "sleep", SLEEP_PROGRAM);
    let p_buf = build(sandbox, Language::Python, "100 MiB buffer", BUFFER_PROGRAM);
    run_sandboxed(sandbox, &p_base, "sleep");
    run_sandboxed(sandbox, &p_buf, "100 MiB buffer");
    let (mut base, mut buf) = (Vec::new(), Vec::new());
    for i in 0..reps.accuracy {
        let mut one_base = || base.push(run_sandboxed(sandbox, &p_base, "sleep").1);
        let mut one_buf = || buf.push(run_sandboxed(sandbox, &p_buf, "100 MiB buffer").1);
        if i % 2 == 0 {
            one_base();
            one_buf();
        } else {
            one_buf();
            one_base();
        }
    }
    let pick = |v: &[Measurement], f: fn(&Measurement) -> f64| v.iter().map(f).collect::<Vec<_>>();
    let base_peak = median(&pick(&base, |m| m.peak_rss_kb as f64));
    let buf_peak = median(&pick(&buf, |m| m.peak_rss_kb as f64));
    let base_int = median(&pick(&base, |m| m.integral_kb_ms));
    let buf_int = median(&pick(&buf, |m| m.integral_kb_ms));
    let base_wall = median(&pick(&base, |m| m.wall_ms));
    let buf_wall = median(&pick(&buf, |m| m.wall_ms));
    // The buffer is fully resident for the whole sleep; the extra wall time of the buffer
    // program is spent faulting it in (0 -> 100 MiB) and freeing it at exit (100 MiB -> 0),
    // both close to linear ramps, during which half of it is resident on average.
    let extra_ms = buf_wall - base_wall;
    let hold_ms = HOLD_S * 1000.0 + extra_ms / 2.0;
    let expected_peak = base_peak + BUFFER_KB;
    let expected_int = base_int + BUFFER_KB * hold_ms;
    println!(
        "peak: baseline {base_peak:.0} KiB, buffer {buf_peak:.0} KiB, expected baseline + \
         102400 = {expected_peak:.0} KiB"
    );
    println!("wall: baseline {base_wall:.2} ms, buffer {buf_wall:.2} ms (extra {extra_ms:.2} ms)");
    println!(
        "integral: baseline {base_int:.0} KiB*ms, buffer {buf_int:.0} KiB*ms; expected = \
         baseline + 102400 KiB * hold, hold = sleep {:.0} ms + extra wall / 2 = {hold_ms:.2} ms \
         -> {expected_int:.0} KiB*ms (bounds: hold = sleep only {:.0}, sleep + extra {:.0})",
        HOLD_S * 1000.0,
        base_int + BUFFER_KB * HOLD_S * 1000.0,
        base_int + BUFFER_KB * (HOLD_S * 1000.0 + extra_ms)
    );
    figures.push(Figure {
        name: "accuracy: peak, 100 MiB",
        goal: "within 5%".into(),
        measured: format!("{buf_peak:.0} KiB"),
        baseline: format!("{expected_peak:.0} KiB (base+100MiB)"),
        ratio: buf_peak / expected_peak,
        pass: Some((buf_peak / expected_peak - 1.0).abs() <= 0.05),
    });
    figures.push(Figure {
        name: "accuracy: integral, 100 MiB",
        goal: "within 10%".into(),
        measured: format!("{:.0} KiB*s", buf_int / 1000.0),
        baseline: format!("{:.0} KiB*s (analytic)", expected_int / 1000.0),
        ratio: buf_int / expected_int,
        pass: Some((buf_int / expected_int - 1.0).abs() <= 0.10),
    });
    json!({
        "runs": reps.accuracy,
        "hold_formula": "hold_ms = sleep_ms + (median wall_ms(buffer) - median wall_ms(baseline)) / 2; \
                         expected_integral = median integral(baseline) + 102400 KiB * hold_ms",
        "baseline_peak_kb": pick(&base, |m| m.peak_rss_kb as f64),
        "buffer_peak_kb": pick(&buf, |m| m.peak_rss_kb as f64),
        "baseline_integral_kb_ms": pick(&base, |m| m.integral_kb_ms),
        "buffer_integral_kb_ms": pick(&buf, |m| m.integral_kb_ms),
        "baseline_wall_ms": pick(&base, |m| m.wall_ms),
        "buffer_wall_ms": pick(&buf, |m| m.wall_ms),
        "buffer_sample_hz": pick(&buf, |m| m.sample_hz),
        "median_baseline_peak_kb": base_peak,
        "median_buffer_peak_kb": buf_peak,
        "expected_peak_kb": expected_peak,
        "median_baseline_integral_kb_ms": base_int,
        "median_buffer_integral_kb_ms": buf_int,
        "hold_ms": hold_ms,
        "expected_integral_kb_ms": expected_int,
        "peak_ratio": buf_peak / expected_peak,
        "integral_ratio": buf_int / expected_int,
    })
}

/// CPU time of the calling thread, ms.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// A native loop of fixed work: the machine's own noise floor, without Python or a sandbox.
fn spin(n: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..n {
        x = x.wrapping_add(std::hint::black_box(i).wrapping_mul(i));
    }
    x
}

/// CPU time of `spin(n)` on the core the sandbox runs programs on, ms.
fn spin_ms(bare: &Bare, n: u64) -> f64 {
    set_affinity(&[bare.cpu]);
    let t = thread_cpu_ms();
    std::hint::black_box(spin(std::hint::black_box(n)));
    let d = thread_cpu_ms() - t;
    set_affinity(&bare.all_cpus);
    d
}

/// 4. Noise: coefficient of variation of `cpu_ms` of a ~0.3 s loop, against bare runs.
fn noise(
    sandbox: &Sandbox,
    bare: &Bare,
    ns_per_iteration: f64,
    reps: &Reps,
    figures: &mut Vec<Figure>,
) -> Value {
    let n = iterations_for(ns_per_iteration, 300.0);
    println!(
        "\n## 4. noise: ~300 ms CPU-bound loop ({n} iterations), {} runs each, interleaved",
        reps.noise
    );
    let source = CPU_PROGRAM.replace("{n}", &n.to_string());
    let program = build(sandbox, Language::Python, "cpu-300ms", &source);
    let script = bare.script("cpu-300ms", &source);
    run_sandboxed(sandbox, &program, "cpu-300ms");
    bare.run(&script);
    const PROBE: u64 = 20_000_000;
    let spin_n = (300.0 / spin_ms(bare, PROBE) * PROBE as f64) as u64;
    let (mut sb_cpu, mut sb_wall, mut bare_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut instructions, mut native) = (Vec::new(), Vec::new());
    for i in 0..reps.noise {
        let mut one_sandboxed = || {
            let m = run_sandboxed(sandbox, &program, "cpu-300ms").1;
            sb_cpu.push(m.cpu_ms);
            sb_wall.push(m.wall_ms);
            instructions.extend(m.instructions.map(|n| n as f64));
        };
        let mut one_bare = || bare_cpu.push(bare.run(&script).0.cpu_ms);
        if i % 2 == 0 {
            one_sandboxed();
            one_bare();
        } else {
            one_bare();
            one_sandboxed();
        }
        native.push(spin_ms(bare, spin_n));
    }
    let cv = coefficient_of_variation(&sb_cpu);
    let bare_cv = coefficient_of_variation(&bare_cpu);
    let native_cv = coefficient_of_variation(&native);
    println!(
        "machine floor: native loop of fixed work in this process, same core: median {:.2} ms \
         CPU, CV {:.2}%",
        median(&native),
        native_cv * 100.0
    );
    if instructions.len() == sb_cpu.len() {
        println!(
            "instructions (hardware counter): median {:.0}, CV {:.3}%",
            median(&instructions),
            coefficient_of_variation(&instructions) * 100.0
        );
    } else {
        println!("instructions: no hardware counter on this machine");
    }
    println!(
        "cpu_ms: sandboxed median {:.2} ms, CV {:.2}%; bare median {:.2} ms, CV {:.2}%; \
         sandboxed wall_ms CV {:.2}%",
        median(&sb_cpu),
        cv * 100.0,
        median(&bare_cpu),
        bare_cv * 100.0,
        coefficient_of_variation(&sb_wall) * 100.0
    );
    figures.push(Figure {
        name: "noise: CV of cpu_ms, ~0.3 s",
        goal: "<= 3%".into(),
        measured: format!("{:.2}%", cv * 100.0),
        baseline: format!("{:.2}% (bare)", bare_cv * 100.0),
        ratio: if bare_cv > 0.0 { cv / bare_cv } else { 0.0 },
        pass: Some(cv <= 0.03),
    });
    figures.push(Figure {
        name: "noise floor: native loop, ~0.3 s",
        goal: "(info)".into(),
        measured: format!("{:.2}%", native_cv * 100.0),
        baseline: format!("{:.2}% (bare Python)", bare_cv * 100.0),
        ratio: if bare_cv > 0.0 {
            native_cv / bare_cv
        } else {
            0.0
        },
        pass: None,
    });
    json!({
        "runs": reps.noise,
        "iterations": n,
        "sandboxed_cpu_ms": sb_cpu,
        "sandboxed_wall_ms": sb_wall,
        "bare_cpu_ms": bare_cpu,
        "cv_sandboxed_cpu_ms": cv,
        "cv_bare_cpu_ms": bare_cv,
        "native_loop_cpu_ms": native,
        "cv_native_loop_cpu_ms": native_cv,
        "instructions": instructions,
    })
}

fn main() {
    let started = Instant::now();
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("AFTERBURNER_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let reps = Reps::new(quick);

    let sandbox = Sandbox::new().unwrap_or_else(|e| panic!("cannot create a sandbox: {e}"));
    let sample_interval = SandboxConfig::default().sample_interval;
    let unsampled = Sandbox::with_config(SandboxConfig {
        sample_interval: Duration::from_secs(3600),
        ..SandboxConfig::default()
    })
    .unwrap_or_else(|e| panic!("cannot create a sandbox without sampling: {e}"));
    let caps = sandbox.capabilities();

    // `python3` on PATH may be a shim (pyenv costs ~85 ms per start): resolve it once.
    let python = PathBuf::from(command_output(
        "python3",
        &["-c", "import sys; print(sys.executable)"],
    ));
    assert!(
        python.is_absolute(),
        "could not resolve the real Python interpreter with `python3 -c 'import sys; \
         print(sys.executable)'`"
    );
    let python_version = command_output(python.to_str().unwrap_or("python3"), &["--version"]);
    let program_cpu = *caps
        .cpus
        .last()
        .expect("the sandbox reports at least one usable core");
    let bare = Bare::new(python.clone(), program_cpu, caps.cpus.clone());

    let date = utc_now();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = command_output("uname", &["-r"]);
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "# afterburner-sandbox benchmarks{}",
        if quick { " (quick)" } else { "" }
    );
    println!("date: {date}");
    println!("mode: {}", caps.mode.name());
    println!("machine: nproc {nproc}, kernel {kernel}, cpu {cpu_model}");
    println!("capabilities: {caps:?}");
    println!(
        "python: {} ({python_version}); bare runs pinned to core {program_cpu}, like the sandbox's \
         programs",
        python.display()
    );
    println!("sample interval: {sample_interval:?} (sampling off: 3600 s)");

    let mut figures = Vec::new();
    let mut foreign = Vec::new();
    let whole = Load::now();
    let mut load = Load::now();
    let mut note_load = |section: &str, load: &mut Load| {
        let share = load.foreign_share(nproc);
        println!(
            "other load during {section}: {:.1}% of the machine's CPU capacity{}",
            share * 100.0,
            if share > BUSY {
                " (BUSY: figures unreliable)"
            } else {
                ""
            }
        );
        foreign.push(json!({ "section": section, "foreign_cpu_share": share }));
        *load = Load::now();
    };
    let overhead_json = overhead(&sandbox, &bare, &reps, &mut figures);
    note_load("overhead", &mut load);
    let (ns_per_iteration, probe) = calibrate(&bare);
    println!(
        "\ncalibration: {ns_per_iteration:.1} ns per loop iteration (best of 3 bare runs of {probe})"
    );
    let nominal_hz = 1.0 / sample_interval.as_secs_f64();
    let sampling_json = sampling(
        &sandbox,
        &unsampled,
        nominal_hz,
        ns_per_iteration,
        &reps,
        &mut figures,
    );
    let native_json = sampling_native(&sandbox, &unsampled, &reps, &mut figures);
    note_load("sampling", &mut load);
    let accuracy_json = accuracy(&sandbox, &reps, &mut figures);
    note_load("accuracy", &mut load);
    let noise_json = noise(&sandbox, &bare, ns_per_iteration, &reps, &mut figures);
    note_load("noise", &mut load);
    let foreign_share = whole.foreign_share(nproc);

    let total_s = started.elapsed().as_secs_f64();
    println!("\n## results ({total_s:.1} s)\n");
    print_table(&figures);
    println!(
        "\nother load over the whole run: {:.1}% of the machine's CPU capacity (other processes, \
         kernel workers, hypervisor steal){}",
        foreign_share * 100.0,
        if foreign_share > BUSY {
            "; the machine was BUSY, the figures are unreliable: run again on a quiet machine"
        } else {
            ""
        }
    );

    let report = json!({
        "date": date,
        "quick": quick,
        "machine": { "nproc": nproc, "kernel": kernel, "cpu": cpu_model },
        "capabilities": caps,
        "python": { "executable": python, "version": python_version },
        "sample_interval_us": sample_interval.as_secs_f64() * 1e6,
        "ns_per_loop_iteration": ns_per_iteration,
        "total_s": total_s,
        "foreign_cpu_share": foreign_share,
        "foreign_cpu_share_by_section": foreign,
        "figures": figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
        "overhead": overhead_json,
        "sampling": sampling_json,
        "sampling_native": native_json,
        "accuracy": accuracy_json,
        "noise": noise_json,
    });
    // Rootless, the target directory may belong to someone else: AFTERBURNER_BENCH_DIR moves it.
    let dir = std::env::var_os("AFTERBURNER_BENCH_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/afterburner-bench"),
        PathBuf::from,
    );
    fs::create_dir_all(&dir).expect("create the report directory");
    let path = dir.join(format!("sandbox-{}.json", caps.mode.name()));
    fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("serialise the report"),
    )
    .expect("write target/afterburner-bench/sandbox.json");
    println!(
        "\nwritten: {}",
        path.canonicalize().unwrap_or(path.clone()).display()
    );
}
