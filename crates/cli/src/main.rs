//! `afterburner`: the command line of the Afterburner system.

mod run;

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AFTERBURNER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Doctor(args) => run::doctor(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
