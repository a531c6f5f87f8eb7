//! The `duplex` binary: a thin shell over the crates. Subcommands map one-to-one onto library
//! entry points; errors are reported with context and mapped to exit codes.

mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// duplex keeps active/standby pairs of VMs and services alive.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the recovery engine over a scenario in virtual time (deterministic).
    Sim(sim::SimArgs),
}

/// Exit codes: 0 success, 1 the run found a safety violation, 2 bad input.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Sim(args) => sim::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
