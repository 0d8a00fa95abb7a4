//! `afterburner run` and `afterburner doctor`.

use std::path::PathBuf;
use std::process::ExitCode;

use afterburner_sandbox::{
    Language, Limits, Measurement, Mode, RepeatSummary, RunRequest, RunResult, Sandbox,
    SandboxConfig, SandboxError, Status,
};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

/// Arguments of `afterburner run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Source file to run (its extension picks the language unless --lang is given).
    pub file: PathBuf,
    /// Language: python, c, cpp, java, javascript, go, rust.
    #[arg(long)]
    pub lang: Option<String>,
    /// File whose content is given on standard input.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// Wall and CPU time limit in seconds.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub time_limit: f64,
    /// Memory limit of the process tree in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_limit: u64,
    /// Wall and CPU time limit of the compilation (or syntax check) in seconds; the compiler
    /// is killed when it reaches it.
    #[arg(long, default_value_t = 60.0, allow_negative_numbers = true)]
    pub compile_time_limit: f64,
    /// Run N times; report every run, the median and the coefficient of variation.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Include the memory trace (`[t_ns, rss_kb]` pairs) in the JSON output.
    #[arg(long)]
    pub trace: bool,
    /// Count the instructions the program executes, under valgrind (deterministic, ~35x
    /// slower; time and memory are then valgrind's). Raise --time-limit to match.
    #[arg(long)]
    pub count_instructions: bool,
}

/// Arguments of `afterburner doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The JSON object `afterburner run --json` prints (a stable contract).
#[derive(Debug, Serialize)]
struct RunReport {
    language: Language,
    /// The run's figures (medians when repeated), flattened into the object.
    #[serde(flatten)]
    measurement: Measurement,
    compile_ms: Option<f64>,
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    stderr_truncated: bool,
    message: Option<String>,
    repeat: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    median: Option<RepeatSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runs: Vec<RunResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_trace: Option<Vec<[u64; 2]>>,
}

fn parse_language(args: &RunArgs) -> Result<Language> {
    match &args.lang {
        Some(l) => Ok(l.parse::<Language>()?),
        None => Language::from_path(&args.file).with_context(|| {
            format!(
                "cannot tell the language of `{}` from its extension; pass --lang \
                 (python, c, cpp, java, javascript, go, rust)",
                args.file.display()
            )
        }),
    }
}

/// Runs `afterburner run`.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let language = parse_language(&args)?;
    let source = std::fs::read(&args.file)
        .with_context(|| format!("cannot read source file `{}`", args.file.display()))?;
    let source = String::from_utf8(source)
        .with_context(|| format!("source file `{}` is not UTF-8", args.file.display()))?;
    let stdin = match &args.stdin {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("cannot read stdin file `{}`", p.display()))?
        }
        None => Vec::new(),
    };
    if args.repeat == 0 || args.repeat > 1000 {
        bail!("--repeat must be in [1, 1000], got {}", args.repeat);
    }
    let limits = Limits::default()
        .with_time_limit_secs(args.time_limit)?
        .with_memory_limit_mib(args.memory_limit)?;
    let compile_limits = Limits::for_compilation()
        .with_time_limit_secs(args.compile_time_limit)
        .context("--compile-time-limit")?;
    let sandbox = Sandbox::with_config(SandboxConfig {
        compile_limits,
        ..SandboxConfig::default()
    })?;
    for w in sandbox.capabilities().warnings {
        eprintln!("warning: {w}");
    }
    let request = RunRequest {
        stdin,
        limits,
        cpu: None,
        keep_memory_trace: args.trace,
        count_instructions: args.count_instructions,
    };
    let report = match measure(&sandbox, language, &source, &request, args.repeat) {
        Ok(r) => r,
        Err(e) => sandbox_error_report(language, args.repeat, &e),
    };
    let failed_to_measure = report.measurement.status == Status::SandboxError;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report);
    }
    Ok(if failed_to_measure {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn measure(
    sandbox: &Sandbox,
    language: Language,
    source: &str,
    request: &RunRequest,
    repeat: usize,
) -> Result<RunReport, SandboxError> {
    let program = sandbox.build(language, source)?;
    let compile_ms = program.compilation().map(|c| c.compile_ms);
    let runs = sandbox.run_repeated(&program, request, repeat)?;
    let summary = RepeatSummary::of(
        &runs
            .iter()
            .map(|r| r.measurement.clone())
            .collect::<Vec<_>>(),
    );
    // The reported run is the one whose wall time is the median (the first one for a single run).
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| {
        runs[a]
            .measurement
            .wall_ms
            .total_cmp(&runs[b].measurement.wall_ms)
    });
    let pick = &runs[order[(order.len() - 1) / 2]];
    let mut measurement = pick.measurement.clone();
    measurement.status = summary.status;
    if repeat > 1 {
        measurement.wall_ms = summary.wall_ms;
        measurement.cpu_ms = summary.cpu_ms;
        measurement.peak_rss_kb = summary.peak_rss_kb.round() as u64;
        measurement.integral_kb_ms = summary.integral_kb_ms;
    }
    Ok(RunReport {
        language,
        measurement,
        compile_ms,
        stdout: pick.stdout_text(),
        stderr: pick.stderr_text(),
        stdout_truncated: pick.stdout_truncated,
        stderr_truncated: pick.stderr_truncated,
        message: pick.message.clone(),
        repeat,
        memory_trace: request.keep_memory_trace.then(|| {
            pick.memory_trace
                .iter()
                .map(|s| [s.t_ns, s.rss_kb])
                .collect()
        }),
        median: (repeat > 1).then_some(summary),
        runs: if repeat > 1 { runs } else { Vec::new() },
    })
}

fn sandbox_error_report(language: Language, repeat: usize, e: &SandboxError) -> RunReport {
    RunReport {
        language,
        measurement: Measurement::not_run(Status::SandboxError),
        compile_ms: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        message: Some(e.to_string()),
        repeat,
        median: None,
        runs: Vec::new(),
        memory_trace: None,
    }
}

fn print_human(r: &RunReport) {
    let m = &r.measurement;
    let exit = match (m.exit_code, m.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "no exit status".to_string(),
    };
    println!("status        {} ({exit})", m.status);
    if let Some(m) = &r.message {
        println!("              {m}");
    }
    if let Some(c) = r.compile_ms {
        println!("compile       {c:.1} ms");
    }
    let label = if r.repeat > 1 { " (median)" } else { "" };
    println!("wall          {:.2} ms{label}", m.wall_ms);
    println!("cpu           {:.2} ms{label}", m.cpu_ms);
    println!(
        "peak rss      {:.1} MiB ({} KiB){label}",
        m.peak_rss_kb as f64 / 1024.0,
        m.peak_rss_kb
    );
    println!(
        "integral      {:.1} MiB*s ({:.0} KiB*ms){label}",
        m.integral_kb_ms / 1024.0 / 1000.0,
        m.integral_kb_ms
    );
    println!(
        "samples       {} at {:.1} kHz",
        m.samples,
        m.sample_hz / 1000.0
    );
    match m.instructions {
        Some(i) => println!("instructions  {i}"),
        None => {
            println!("instructions  n/a (no hardware counters; --count-instructions uses valgrind)")
        }
    }
    if let Some(s) = &r.median {
        println!(
            "repeats       {} runs, cv: wall {:.2}%, cpu {:.2}%, peak {:.2}%, integral {:.2}%",
            s.runs,
            s.cv.wall_ms * 100.0,
            s.cv.cpu_ms * 100.0,
            s.cv.peak_rss_kb * 100.0,
            s.cv.integral_kb_ms * 100.0
        );
    }
    let cut = |t: bool| if t { " (truncated)" } else { "" };
    if !r.stdout.is_empty() {
        println!(
            "--- stdout ({} bytes{}) ---",
            r.stdout.len(),
            cut(r.stdout_truncated)
        );
        print_excerpt(&r.stdout);
    }
    if !r.stderr.is_empty() {
        println!(
            "--- stderr ({} bytes{}) ---",
            r.stderr.len(),
            cut(r.stderr_truncated)
        );
        print_excerpt(&r.stderr);
    }
}

/// Prints at most 40 lines of a stream.
fn print_excerpt(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    for l in lines.iter().take(40) {
        println!("{l}");
    }
    if lines.len() > 40 {
        println!("... ({} more lines; use --json for all)", lines.len() - 40);
    }
}

/// Runs `afterburner doctor`.
pub fn doctor(args: DoctorArgs) -> Result<ExitCode> {
    #[derive(Serialize)]
    struct Toolchain {
        language: Language,
        available: bool,
        detail: String,
    }
    let sandbox = match Sandbox::new() {
        Ok(s) => s,
        Err(e) => {
            // The mode this user would get, and what is missing for it (with the fix).
            let mode = Mode::current();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "mode": mode,
                        "available": false,
                        "error": e.to_string(),
                    })
                );
            } else {
                println!("mode          {} (unavailable)", mode.name());
                println!("missing       {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let caps = sandbox.capabilities();
    let toolchains: Vec<Toolchain> = Language::ALL
        .iter()
        .map(|&l| match sandbox.toolchain_version(l) {
            Ok(v) => Toolchain {
                language: l,
                available: true,
                detail: v,
            },
            Err(e) => Toolchain {
                language: l,
                available: false,
                detail: e.to_string(),
            },
        })
        .collect();
    if args.json {
        /// `doctor --json` (a stable contract; printed with its keys sorted).
        #[derive(Serialize)]
        struct Doctor<'a> {
            mode: Mode,
            available: bool,
            capabilities: &'a afterburner_sandbox::Capabilities,
            toolchains: &'a [Toolchain],
        }
        let doctor = Doctor {
            mode: caps.mode,
            available: true,
            capabilities: &caps,
            toolchains: &toolchains,
        };
        println!("{}", serde_json::to_value(&doctor)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "mode          {}{}",
        caps.mode.name(),
        match caps.mode {
            Mode::Root => " (running as root)",
            Mode::Rootless => " (an ordinary user: unprivileged user namespaces)",
        }
    );
    for b in &caps.basis {
        println!("  {:<30} {}", format!("{}:", b.what), b.rests_on);
    }
    match caps.cgroup_version {
        Some(v) => println!("cgroups       v{v}"),
        None => println!("cgroups       unavailable (rlimit fallback)"),
    }
    println!(
        "favordynmods  {}",
        if caps.cgroup_favordynmods {
            "on"
        } else {
            "off"
        }
    );
    println!(
        "landlock      {}",
        if caps.landlock_abi > 0 {
            format!("ABI {}", caps.landlock_abi)
        } else {
            "unavailable".into()
        }
    );
    println!("cpus          {:?}", caps.cpus);
    println!("supervisor    {:?}", caps.supervisor_cpu);
    match &caps.valgrind {
        Some(v) => println!(
            "instructions  counted under {} when asked (--count-instructions)",
            v.display()
        ),
        None => println!(
            "instructions  not countable without hardware counters: apt-get install valgrind"
        ),
    }
    for w in &caps.warnings {
        println!("warning       {w}");
    }
    for t in toolchains {
        println!(
            "{:<13} {}{}",
            t.language.name(),
            if t.available { "" } else { "MISSING: " },
            t.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}
