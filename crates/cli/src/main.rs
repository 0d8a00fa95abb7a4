//! `afterburner`: the command line of the Afterburner system. It parses arguments, shows
//! progress and prints; every measurement, calibration and score comes from the library crates.

mod args;
mod bench;
mod calibrate;
mod data;
mod dataset;
mod eval;
mod generate;
mod interrupt;
mod model_choice;
mod optimize;
mod optimize_backend;
mod progress;
mod run;
mod serve;
mod serve_model;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Afterburner: measure and optimise the efficiency of LLM-written code.
#[derive(Debug, Parser)]
#[command(name = "afterburner", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one program in the sandbox and report its status, time and memory.
    Run(run::RunArgs),
    /// Show what isolation and toolchains the sandbox has on this machine.
    Doctor(run::DoctorArgs),
    /// Inspect a dataset (FORMAT:PATH): its problems, tests and solutions.
    Dataset(dataset::DatasetArgs),
    /// Measure a dataset's reference solutions on this machine and cache the results.
    Calibrate(calibrate::CalibrateArgs),
    /// Score a solutions file: pass@1 and Beyond-T/M/I against the calibrated references.
    Eval(eval::EvalArgs),
    /// Serve the sandbox and the reward over HTTP (Monolith, SandboxFusion, OpenRLHF, native).
    Serve(serve::ServeArgs),
    /// Optimise solutions with an OpenAI-compatible model, measured iteration by iteration.
    Optimize(Box<optimize::OptimizeArgs>),
    /// Generate a completion with the embedded model (a model folder, .gguf file or ORG/NAME).
    Generate(Box<generate::GenerateArgs>),
    /// Build training data (SFT, DPO, GRPO) for TRL, LLaMA-Factory, verl or OpenRLHF from
    /// measured reference solutions.
    Data(data::DataArgs),
    /// Fine-tune the embedded model with LoRA: `train sft`, `train dpo` (PEFT-format adapters).
    Train(train::TrainArgs),
    /// Experiments on the measurements: `bench stability` (two calibrations compared).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let training = matches!(&cli.command, Command::Train(_))
        || matches!(&cli.command, Command::Bench(b) if matches!(b.command, bench::BenchCommand::Train(_)));
    // SAFETY: argument parsing starts no thread; nothing else has run yet.
    unsafe { afterburner_model::set_thread_environment(training) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AFTERBURNER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Doctor(args) => run::doctor(args),
        Command::Dataset(args) => dataset::dataset(args),
        Command::Calibrate(args) => calibrate::calibrate(args),
        Command::Eval(args) => eval::eval(args),
        Command::Serve(args) => serve::serve(args),
        Command::Optimize(args) => optimize::optimize(*args),
        Command::Generate(args) => generate::generate(*args),
        Command::Data(args) => data::data(args),
        Command::Train(args) => train::train(args),
        Command::Bench(args) => bench::bench(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
