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
    /// Time LoRA SFT steps of the embedded trainer against transformers + PEFT (PyTorch) on the
    /// same model folder, in one run; prints both and their ratio.
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
    /// Timed steps (after one warm-up step each side).
    #[arg(long, default_value_t = 3)]
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

/// Runs one side of `python/bench/train_bench.py` (`step` or `grpo-step`) and returns its step
/// times and its JSON line.
fn python_train_side(
    args: &TrainBenchArgs,
    command: &str,
    extra: &[String],
) -> Result<(Vec<f64>, serde_json::Value)> {
    use anyhow::Context as _;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/bench/train_bench.py");
    eprintln!(
        "PyTorch side: {} {} {command} ...",
        args.python.display(),
        script.display()
    );
    let out = std::process::Command::new(&args.python)
        .arg(&script)
        .args([command, "--model"])
        .arg(&args.model)
        .args([
            "--seq",
            &args.seq.to_string(),
            "--steps",
            &args.steps.to_string(),
            "--lora-r",
            &args.lora_r.to_string(),
            "--threads",
            &args.threads.to_string(),
        ])
        .args(extra)
        .output()
        .with_context(|| format!("cannot run {}", args.python.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "the PyTorch side failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let theirs: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .context("the PyTorch side printed no JSON line")?;
    let ms = theirs["step_ms"]
        .as_array()
        .context("no step_ms")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok((ms, theirs))
}

/// Prints one side-by-side table of `afterburner bench train`.
fn print_train_table(
    title: &str,
    ours: &[f64],
    our_rss_kb: Option<u64>,
    theirs: &[f64],
    info: &serde_json::Value,
) {
    let ours_med = afterburner_sandbox::median(ours);
    let theirs_med = afterburner_sandbox::median(theirs);
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("{title}");
    println!("| side | step ms (median) | steps ms | peak RSS MiB |");
    println!("|---|---:|---|---:|");
    println!(
        "| afterburner (candle) | {ours_med:.0} | {} | {:.0} |",
        fmt(ours),
        our_rss_kb.map_or(f64::NAN, |k| k as f64 / 1024.0)
    );
    println!(
        "| transformers + PEFT (torch {}, {} threads) | {theirs_med:.0} | {} | {:.0} |",
        info["torch"].as_str().unwrap_or("?"),
        info["threads"],
        fmt(theirs),
        info["peak_rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0
    );
    println!(
        "speed ratio (PyTorch step / ours): {:.2}x\n",
        theirs_med / ours_med
    );
}

fn train_bench(args: TrainBenchArgs) -> Result<ExitCode> {
    if args.steps == 0 || args.seq < 4 || args.group == 0 {
        anyhow::bail!("--steps and --group must be at least 1 and --seq at least 4");
    }
    // The PyTorch sides first, each in its own process, so neither side's memory counts for the
    // other.
    let (their_sft, sft_info) = python_train_side(&args, "step", &[])?;
    let (their_grpo, grpo_info) = python_train_side(
        &args,
        "grpo-step",
        &["--group".into(), args.group.to_string()],
    )?;
    eprintln!("Rust side: loading {}", args.model.display());
    let device = afterburner_model::Device::Cpu;
    let load = || {
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
    let our_sft = afterburner_train::time_sft_steps(&mut model, &ids, &lora, args.steps)?;
    let sft_rss = peak_rss_kb();
    let mut model = load()?;
    let our_grpo = afterburner_train::time_grpo_steps(&mut model, &group, &lora, args.steps)?;
    let grpo_rss = peak_rss_kb();
    print_train_table(
        &format!(
            "LoRA SFT step (forward + backward + AdamW), {} tokens, r {}, float32 CPU; median of {} after a warm-up",
            args.seq, args.lora_r, args.steps
        ),
        &our_sft,
        sft_rss,
        &their_sft,
        &sft_info,
    );
    print_train_table(
        &format!(
            "LoRA GRPO-loss step (clipped ratio, DAPO normalisation, {} rollouts of {} tokens, completion = second half; forward + backward + AdamW), r {}; median of {} after a warm-up (our peak RSS is the process's so far)",
            args.group, args.seq, args.lora_r, args.steps
        ),
        &our_grpo,
        grpo_rss,
        &their_grpo,
        &grpo_info,
    );
    Ok(ExitCode::SUCCESS)
}
