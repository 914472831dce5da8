//! `lethectl`: the operator's command-line tool. A contract other tools script against:
//! stable subcommands and flags, `--json` output where a machine reads it, exit code 0 on
//! success, 1 for a definite "no" (a rejected command, a failed check), 2 for errors
//! (bad input, missing files), each with a one-line cause on stderr.
//!
//! This binary is glue: every subcommand lives in `cmd/<name>.rs` and calls library crates.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lethectl",
    version,
    about = "Lethe operator CLI: make deployed models forget"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The synthetic world the bundled model was trained on.
    #[command(subcommand)]
    World(cmd::world::WorldCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::World(c) => cmd::world::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
