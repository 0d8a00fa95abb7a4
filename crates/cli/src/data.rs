//! `afterburner data sft|dpo|grpo`: training data from a dataset's reference solutions,
//! measured on this machine (calibrating what the cache lacks), in a trainer's format. The
//! choices and the rows are the data crate's ([`afterburner_data::select`],
//! [`afterburner_data::write_data`]); this module parses, calibrates, shows and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use afterburner_benchmarks::{Workbench, machine_description};
use afterburner_data::{
    FileFormat, Kind, MeasuredProblem, Provenance, Selection, Trainer, read_exclude, select,
    write_data,
};
use afterburner_optimize::Instruction;
use afterburner_optimize::Templates;
use afterburner_sandbox::Sandbox;
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::args::{ProblemArgs, ProtocolArgs, select_problems};
use crate::dataset::load_dataset;
use crate::interrupt::stop_flag;
use crate::progress::Bars;

/// Arguments of `afterburner data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Prompt -> the most efficient passing solution (generation and improvement prompts).
    Sft(BuildArgs),
    /// Prompt -> chosen (more efficient beyond the noise, or passing) and rejected solutions.
    Dpo(BuildArgs),
    /// Improvement prompts with the original's measured performance, for the sandbox reward.
    Grpo(BuildArgs),
}

/// The trainer format of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// Hugging Face TRL (conversational columns).
    Trl,
    /// LLaMA-Factory (alpaca files and dataset_info.json).
    Llamafactory,
    /// verl (the RL parquet schema; multi-turn SFT messages).
    Verl,
    /// OpenRLHF (chat lists, --apply_chat_template).
    Openrlhf,
}

impl FormatArg {
    fn trainer(self) -> Trainer {
        match self {
            FormatArg::Trl => Trainer::Trl,
            FormatArg::Llamafactory => Trainer::LlamaFactory,
            FormatArg::Verl => Trainer::Verl,
            FormatArg::Openrlhf => Trainer::OpenRlhf,
        }
    }
}

/// The file format of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FileFormatArg {
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

/// Arguments of `afterburner data sft|dpo|grpo`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    problems: ProblemArgs,
    /// The trainer whose format the rows follow.
    #[arg(long, value_enum)]
    format: FormatArg,
    /// The output folder: train.EXT, test.EXT, manifest.json (and LLaMA-Factory's
    /// dataset_info.json).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The file format [default: parquet for verl, jsonl otherwise].
    #[arg(long, value_enum)]
    file_format: Option<FileFormatArg>,
    /// Efficiency instruction to build prompts for (repeatable) [default: time, memory, integral].
    #[arg(long = "instruction", value_name = "time|memory|integral")]
    instructions: Vec<Instruction>,
    /// At most N rows (DPO: pairs) per problem, shared among the instructions.
    #[arg(long, value_name = "N", default_value_t = 6)]
    per_problem: usize,
    /// Share of problems held out as the test split (by a stable hash of the problem id).
    #[arg(long, value_name = "SHARE", default_value_t = 0.1)]
    test_share: f64,
    /// Problems never to emit: one id per line (or JSON lines with `problem_id`).
    #[arg(long, value_name = "FILE")]
    exclude: Option<PathBuf>,
    #[command(flatten)]
    protocol: ProtocolArgs,
}

/// Runs `afterburner data ...`.
pub fn data(args: DataArgs) -> Result<ExitCode> {
    match args.command {
        DataCommand::Sft(a) => build(Kind::Sft, a),
        DataCommand::Dpo(a) => build(Kind::Dpo, a),
        DataCommand::Grpo(a) => build(Kind::Grpo, a),
    }
}

fn build(kind: Kind, args: BuildArgs) -> Result<ExitCode> {
    let trainer = args.format.trainer();
    trainer.supports(kind)?;
    let file_format = match args.file_format {
        Some(FileFormatArg::Jsonl) => FileFormat::Jsonl,
        Some(FileFormatArg::Parquet) => FileFormat::Parquet,
        None if trainer == Trainer::Verl => FileFormat::Parquet,
        None => FileFormat::Jsonl,
    };
    let instructions = if args.instructions.is_empty() {
        vec![
            Instruction::Time,
            Instruction::Memory,
            Instruction::Integral,
        ]
    } else {
        let mut unique: Vec<Instruction> = Vec::new();
        for i in &args.instructions {
            if !unique.contains(i) {
                unique.push(*i);
            }
        }
        unique
    };
    let exclude = match &args.exclude {
        Some(path) => read_exclude(path)?,
        None => Default::default(),
    };
    let selection = Selection {
        instructions,
        per_problem: args.per_problem,
        test_share: args.test_share,
        exclude,
    };
    if args.per_problem == 0 {
        bail!("--per-problem must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.test_share) {
        bail!("--test-share must be in [0, 1], got {}", args.test_share);
    }
    let templates = Templates::paper();
    let dataset = load_dataset(&args.problems.dataset)?;
    let problems = select_problems(&dataset.problems, &args.problems.problem_ids)?;
    let excluded = problems
        .iter()
        .filter(|p| selection.exclude.contains(&p.id))
        .count();
    let chosen: Vec<_> = problems
        .into_iter()
        .filter(|p| !selection.exclude.contains(&p.id))
        .collect();
    let sandbox = Sandbox::new()?;
    let bench: Workbench = args.protocol.workbench(&sandbox, stop_flag())?;
    eprintln!(
        "building {} {} data from {} problems ({} excluded); calibrating what the cache {} lacks \
         on {} worker(s)",
        trainer,
        kind.name(),
        chosen.len(),
        excluded,
        bench.cache().path().display(),
        bench.cpus().len(),
    );
    let (calibrated, totals) =
        bench.calibrate(&chosen, args.problems.max_solutions, &mut Bars::default());
    if totals.interrupted {
        eprintln!("interrupted: nothing written; run the same command again to resume");
        return Ok(ExitCode::from(130));
    }
    let measured: Vec<MeasuredProblem> = calibrated
        .iter()
        .map(MeasuredProblem::from_calibrated)
        .collect();
    let mut examples = select(&measured, kind, &selection, &templates)?;
    examples.excluded = excluded;
    let options = json!({
        "dataset": args.problems.dataset,
        "problem_ids": args.problems.problem_ids,
        "max_solutions": args.problems.max_solutions,
        "instructions": selection.instructions.iter().map(|i| i.name()).collect::<Vec<_>>(),
        "per_problem": selection.per_problem,
        "test_share": selection.test_share,
        "exclude": args.exclude,
        "repeats": args.protocol.repeats,
        "time_limit": args.protocol.time_limit,
        "memory_limit": args.protocol.memory_limit,
        "stress_seed": args.protocol.stress_seed,
        "drift_interval_ms": args.protocol.drift_interval_ms,
        "count_instructions": args.protocol.count_instructions,
    });
    let provenance = Provenance {
        dataset: args.problems.dataset.clone(),
        dataset_format: dataset.spec.format.to_string(),
        fingerprint: bench.fingerprint().to_string(),
        machine: machine_description(&sandbox),
        protocol: bench.protocol().to_string(),
        cache: bench.cache().path().to_path_buf(),
        problems: chosen.len() + excluded,
        dataset_rows_skipped: dataset.report.skipped.len(),
        options,
    };
    let manifest = write_data(&args.out, &examples, kind, trainer, file_format, provenance)
        .with_context(|| format!("cannot write the data to {}", args.out.display()))?;
    for skipped in &manifest.skipped {
        eprintln!("no rows from {}: {}", skipped.problem_id, skipped.reason);
    }
    let counts: Vec<String> = manifest
        .counts
        .iter()
        .map(|(split, n)| format!("{n} {split}"))
        .collect();
    println!(
        "wrote {} {} rows ({}) from {} problems to {} ({} problems without rows, {} excluded, {} \
         duplicate references dropped; calibration: {} measured, {} cached)",
        trainer,
        kind.name(),
        counts.join(", "),
        manifest.problems_with_rows,
        args.out.display(),
        manifest.skipped.len(),
        manifest.excluded,
        manifest.duplicate_solutions,
        totals.measured,
        totals.cached,
    );
    Ok(if totals.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
