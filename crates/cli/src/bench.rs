//! `afterburner bench`: experiments about the measurements themselves. `bench stability`
//! calibrates the same reference solutions twice, in separate caches, and compares the two
//! ([`afterburner_benchmarks::stability`]): how far percentiles, figures and orders move between
//! two independent evaluations of identical code. `bench compare A B` compares two calibration
//! caches made earlier.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use afterburner_benchmarks::calibration::read_records;
use afterburner_benchmarks::harness::PROBE_FILE;
use afterburner_benchmarks::stability::{StabilityReport, compare};
use afterburner_train::BenchStep;
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::args::{ProblemArgs, ProtocolArgs};
use crate::calibrate::{CalibrateArgs, calibrate};

/// Arguments of `afterburner bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The experiments of `afterburner bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Calibrate the same references twice (OUT/first, OUT/second) and compare: percentile,
    /// figure and order changes per objective, pass/fail flips. Resumable: re-run to finish.
    Stability(StabilityArgs),
    /// Compare two calibration caches of the same references, made earlier.
    Compare(CompareArgs),
    /// Time LoRA SFT and GRPO-loss steps of the embedded trainer against transformers + PEFT
    /// (PyTorch) on the same model folder, the two sides alternating step by step; prints both
    /// and their ratio.
    Train(TrainBenchArgs),
}

/// Arguments of `afterburner bench train`.
#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    /// A Hugging Face model folder both sides load (`python/bench/train_bench.py make-model`
    /// writes random weights of a real model's shape).
    #[arg(long, value_name = "DIR")]
    pub model: std::path::PathBuf,
    /// A Python with torch, transformers and peft for the PyTorch side.
    #[arg(long, value_name = "PYTHON")]
    pub python: std::path::PathBuf,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Timed steps of each side, alternating step by step with PyTorch's (after one warm-up
    /// step each).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// LoRA rank (alpha 2r, the seven projections).
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    /// Threads of the PyTorch side (the Rust side uses every core).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    pub threads: usize,
    /// Rollouts of the GRPO-loss step.
    #[arg(long, default_value_t = 4)]
    pub group: usize,
}

/// Arguments of `afterburner bench stability`.
#[derive(Debug, Args)]
pub struct StabilityArgs {
    #[command(flatten)]
    pub problems: ProblemArgs,
    #[command(flatten)]
    pub protocol: ProtocolArgs,
    /// Folder of the experiment: the two calibration caches (first/, second/) and the report
    /// (stability.md, stability.json). `--cache` is not used.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Arguments of `afterburner bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The first calibration cache folder (holding calibration.jsonl).
    pub first: PathBuf,
    /// The second one.
    pub second: PathBuf,
    /// Print the report as one JSON object instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// Runs `afterburner bench`.
pub fn bench(args: BenchArgs) -> Result<ExitCode> {
    match args.command {
        BenchCommand::Stability(args) => stability(args),
        BenchCommand::Train(args) => train_bench(args),
        BenchCommand::Compare(args) => {
            let report = compare_caches(&args.first, &args.second)?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.markdown());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn stability(args: StabilityArgs) -> Result<ExitCode> {
    if args.protocol.cache.is_some() {
        bail!(
            "bench stability keeps its two calibrations under --out ({}): drop --cache",
            args.out.display()
        );
    }
    let first = args.out.join("first");
    let second = args.out.join("second");
    for (name, dir) in [("first", &first), ("second", &second)] {
        if name == "second" {
            share_stress_suites(&first, &second)?;
        }
        eprintln!("bench stability: {name} calibration into {}", dir.display());
        let code = calibrate(CalibrateArgs {
            problems: args.problems.clone(),
            protocol: ProtocolArgs {
                cache: Some(dir.clone()),
                ..args.protocol.clone()
            },
            json: false,
        })?;
        if code != ExitCode::SUCCESS {
            eprintln!(
                "bench stability: the {name} calibration did not finish cleanly; re-run the same \
                 command to resume it"
            );
            return Ok(code);
        }
    }
    let report = compare_caches(&first, &second)?;
    let markdown = report.markdown();
    let md_path = args.out.join("stability.md");
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    let json_path = args.out.join("stability.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    println!();
    print!("{markdown}");
    eprintln!(
        "bench stability: report written to {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Copies the stress suites the first calibration generated (inputs and expected outputs, not
/// measurements) to the second, so both judge the same inputs and the second does not spend its
/// time regenerating them, and the drift probe's baseline, so both express times in the same
/// units as a machine's one cache folder would. Files already there are kept.
fn share_stress_suites(first: &Path, second: &Path) -> Result<()> {
    let probe = first.join(PROBE_FILE);
    let probe_to = second.join(PROBE_FILE);
    if probe.exists() && !probe_to.exists() {
        std::fs::create_dir_all(second)
            .with_context(|| format!("cannot create {}", second.display()))?;
        std::fs::copy(&probe, &probe_to).with_context(|| {
            format!("cannot copy {} to {}", probe.display(), probe_to.display())
        })?;
    }
    let from = first.join("stress");
    let to = second.join("stress");
    let Ok(entries) = std::fs::read_dir(&from) else {
        return Ok(()); // no stress suites (a dataset without stress inputs)
    };
    std::fs::create_dir_all(&to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", from.display()))?;
        let target = to.join(entry.file_name());
        if !target.exists() {
            std::fs::copy(entry.path(), &target).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    entry.path().display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Reads both caches' records and compares them.
fn compare_caches(first: &Path, second: &Path) -> Result<StabilityReport> {
    Ok(compare(&read_records(first)?, &read_records(second)?))
}

/// Peak resident memory of this process (`VmHWM`), KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets this process's peak resident memory to its current size (Linux 4.0+); whether it
/// could.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The PyTorch side of `afterburner bench train`: `python/bench/train_bench.py serve-step` (or
/// `serve-grpo-step`) in a process of its own, stepping when asked.
struct PythonSide {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PythonSide {
    /// Starts the script's `command` and waits until its model is loaded.
    fn start(args: &TrainBenchArgs, command: &str) -> Result<Self> {
        use std::process::{Command, Stdio};
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/bench/train_bench.py");
        eprintln!(
            "PyTorch side: {} {} {command} ...",
            args.python.display(),
            script.display()
        );
        let mut child = Command::new(&args.python)
            .arg(&script)
            .args([command, "--model"])
            .arg(&args.model)
            .args([
                "--seq",
                &args.seq.to_string(),
                "--lora-r",
                &args.lora_r.to_string(),
                "--threads",
                &args.threads.to_string(),
                "--group",
                &args.group.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", args.python.display()))?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            bail!("the PyTorch side's standard streams are missing");
        };
        // Drained as it comes, so that a chatty library cannot fill the pipe and stall it.
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let mut side = PythonSide {
            child,
            stdin: Some(stdin),
            stdout: std::io::BufReader::new(stdout),
            stderr: Some(stderr),
        };
        let ready = side.reply()?;
        if ready["ready"] != serde_json::Value::Bool(true) {
            bail!("the PyTorch side did not start: {ready}");
        }
        Ok(side)
    }

    /// Reads one JSON line; a failure carries the end of what the script wrote on stderr.
    fn reply(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut self.stdout, &mut line);
        match read {
            Ok(n) if n > 0 => serde_json::from_str(&line)
                .with_context(|| format!("the PyTorch side printed {line:?}, not JSON")),
            _ => {
                drop(self.stdin.take());
                let status = self.child.wait().ok();
                let stderr = self
                    .stderr
                    .take()
                    .and_then(|h| h.join().ok())
                    .unwrap_or_default();
                let lines: Vec<&str> = stderr.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                bail!(
                    "the PyTorch side ended ({}) without an answer; its last output:\n{tail}",
                    status.map_or("status unknown".into(), |s| s.to_string())
                )
            }
        }
    }

    /// Runs one step; its milliseconds.
    fn step(&mut self) -> Result<f64> {
        let stdin = self.stdin.as_mut().context("the PyTorch side is closed")?;
        std::io::Write::write_all(stdin, b"step\n")
            .and_then(|()| std::io::Write::flush(stdin))
            .context("cannot ask the PyTorch side for a step")?;
        let reply = self.reply()?;
        reply["ms"]
            .as_f64()
            .with_context(|| format!("the PyTorch side answered {reply}"))
    }

    /// Ends the script; its summary (peak RSS, torch version, threads).
    fn finish(mut self) -> Result<serde_json::Value> {
        drop(self.stdin.take());
        let summary = self.reply()?;
        let _ = self.child.wait();
        Ok(summary)
    }
}

/// Both sides' step times, taken in adjacent pairs.
struct Paired {
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

impl Paired {
    /// One warm-up step each, then `steps` pairs, the order swapped every pair (theirs first,
    /// then ours first, ...) so that neither always follows the other.
    fn run(ours: &mut BenchStep<'_>, theirs: &mut PythonSide, steps: usize) -> Result<Self> {
        theirs.step()?;
        ours.step()?;
        let mut paired = Paired {
            ours: Vec::with_capacity(steps),
            theirs: Vec::with_capacity(steps),
        };
        for k in 0..steps {
            if k % 2 == 0 {
                paired.theirs.push(theirs.step()?);
                paired.ours.push(ours.step()?);
            } else {
                paired.ours.push(ours.step()?);
                paired.theirs.push(theirs.step()?);
            }
            eprintln!(
                "  pair {}/{steps}: ours {:.0} ms, PyTorch {:.0} ms",
                k + 1,
                paired.ours[k],
                paired.theirs[k]
            );
        }
        Ok(paired)
    }

    /// PyTorch's time over ours, pair by pair.
    fn ratios(&self) -> Vec<f64> {
        self.theirs
            .iter()
            .zip(&self.ours)
            .map(|(t, o)| t / o)
            .collect()
    }
}

/// Prints one side-by-side table of `afterburner bench train`.
fn print_train_table(
    title: &str,
    paired: &Paired,
    our_rss_kb: Option<u64>,
    info: &serde_json::Value,
) {
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratios = paired.ratios();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    println!("{title}");
    println!("| side | step ms (median) | steps ms | peak RSS MiB |");
    println!("|---|---:|---|---:|");
    println!(
        "| afterburner (candle) | {:.0} | {} | {:.0} |",
        afterburner_sandbox::median(&paired.ours),
        fmt(&paired.ours),
        our_rss_kb.map_or(f64::NAN, |k| k as f64 / 1024.0)
    );
    println!(
        "| transformers + PEFT (torch {}, {} threads) | {:.0} | {} | {:.0} |",
        info["torch"].as_str().unwrap_or("?"),
        info["threads"],
        afterburner_sandbox::median(&paired.theirs),
        fmt(&paired.theirs),
        info["peak_rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0
    );
    println!(
        "speed ratio (PyTorch step / ours, median of {} adjacent pairs): {:.2}x (pairs {lo:.2}-{hi:.2})\n",
        ratios.len(),
        afterburner_sandbox::median(&ratios),
    );
}

fn train_bench(args: TrainBenchArgs) -> Result<ExitCode> {
    if args.steps == 0 || args.seq < 4 || args.group == 0 {
        bail!("--steps and --group must be at least 1 and --seq at least 4");
    }
    let device = afterburner_model::Device::Cpu;
    let load = || {
        eprintln!("Rust side: loading {}", args.model.display());
        afterburner_model::LanguageModel::from_folder(
            &args.model,
            afterburner_model::DType::F32,
            &device,
        )
    };
    let mut model = load()?;
    let vocab = model.config().vocab_size as u64;
    let mut rng = afterburner_train::SeededRng::new(1);
    let mut sequence = || -> Vec<u32> {
        (0..args.seq)
            .map(|_| (rng.next_u64() % vocab) as u32)
            .collect()
    };
    let ids = sequence();
    let group: Vec<Vec<u32>> = (0..args.group).map(|_| sequence()).collect();
    let lora = afterburner_train::LoraConfig {
        r: args.lora_r,
        alpha: 2.0 * args.lora_r as f64,
        ..afterburner_train::LoraConfig::default()
    };

    let reset = reset_peak_rss();
    let mut theirs = PythonSide::start(&args, "serve-step")?;
    let mut ours = BenchStep::sft(&mut model, &ids, &lora)?;
    let sft = Paired::run(&mut ours, &mut theirs, args.steps)?;
    let sft_info = theirs.finish()?;
    let sft_rss = peak_rss_kb();
    drop(ours);
    drop(model);

    let reset = reset && reset_peak_rss();
    let mut model = load()?;
    let mut theirs = PythonSide::start(&args, "serve-grpo-step")?;
    let mut ours = BenchStep::grpo(&mut model, &group, &lora)?;
    let grpo = Paired::run(&mut ours, &mut theirs, args.steps)?;
    let grpo_info = theirs.finish()?;
    let grpo_rss = peak_rss_kb();

    let peak_note = if reset {
        "peak RSS: each side's process, for this step alone"
    } else {
        "peak RSS: each side's process; ours is the process's so far (the kernel could not reset it)"
    };
    print_train_table(
        &format!(
            "LoRA SFT step (forward + backward + AdamW), {} tokens, r {}, float32 CPU; {} steps each, alternating with PyTorch's, after a warm-up; {peak_note}",
            args.seq, args.lora_r, args.steps
        ),
        &sft,
        sft_rss,
        &sft_info,
    );
    print_train_table(
        &format!(
            "LoRA GRPO-loss step (clipped ratio, DAPO normalisation, {} rollouts of {} tokens, completion = second half; forward + backward + AdamW), r {}; {} steps each, alternating, after a warm-up; {peak_note}",
            args.group, args.seq, args.lora_r, args.steps
        ),
        &grpo,
        grpo_rss,
        &grpo_info,
    );
    Ok(ExitCode::SUCCESS)
}
