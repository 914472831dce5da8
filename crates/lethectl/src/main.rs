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
    /// The on-device model: ask it, evaluate it, self-check a package.
    #[command(subcommand)]
    Model(cmd::model::ModelCmd),
    /// Forget a concept shown in one image, offline: writes a new package.
    Forget(cmd::forget::ForgetArgs),
    /// Benchmarks: unlearning (MMUBench-style), the agent, a fleet of simulated devices.
    #[command(subcommand)]
    Bench(cmd::bench_fleet::BenchAll),
    /// Make an Ed25519 key pair (operator or device): NAME.key (0600) and NAME.pub.
    Keygen(cmd::keys::KeygenArgs),
    /// Edit a trust store: add, revoke, rotate keys; k-of-n threshold.
    #[command(subcommand)]
    Trust(cmd::trust::TrustCmd),
    /// Sign a forget command.
    Sign(cmd::sign::SignArgs),
    /// Sign a revert command: a device, a group, or every device that committed a command
    /// (for `rollout`); `--undo-forgets` to confirm bringing forgotten concepts back.
    Revert(cmd::revert::RevertArgs),
    /// Verify a signed command as a device would (exit 0 accepted, 1 rejected).
    Verify(cmd::verify::VerifyArgs),
    /// Device status receipts.
    #[command(subcommand)]
    Receipt(cmd::receipt::ReceiptCmd),
    /// Publish a signed command to its device or group over MQTT.
    Push(cmd::fleet::PushArgs),
    /// Follow a command on devices: progress bars, verified receipts (exit 0 all committed).
    Watch(cmd::fleet::WatchArgs),
    /// Fleet summary from the devices' retained status.
    Status(cmd::fleet::StatusArgs),
    /// Deliver a signed command to many devices in waves: rate, abort criteria, resumable.
    Rollout(cmd::rollout::RolloutArgs),
    /// Erasure audit trail: collect verified receipts into a ledger (and clear them on the
    /// broker), report per command; `audit verify LEDGER` re-verifies offline.
    Audit(cmd::audit::AuditArgs),
    /// The whole loop in one process: broker, agent, signed forget, receipt, answers.
    Demo(cmd::demo::DemoArgs),
}

/// `lethectl ... | head`: once the reader has gone, a print fails with a broken pipe and
/// panics. End quietly instead, with the status of a process killed by SIGPIPE (128 + 13), as
/// other Unix tools do; every other panic reports as before.
fn quiet_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    // lethectl runs the same updates as the agent (forget, the benchmarks): same heap policy
    // for the train step's buffers (lethe_model::heap).
    lethe_model::heap::keep_step_buffers();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::World(c) => cmd::world::run(c),
        Command::Model(c) => cmd::model::run(c),
        Command::Forget(a) => cmd::forget::run(a),
        Command::Bench(c) => cmd::bench_fleet::run(c),
        Command::Keygen(a) => cmd::keys::run(a),
        Command::Trust(c) => cmd::trust::run(c),
        Command::Sign(a) => cmd::sign::run(a),
        Command::Revert(a) => cmd::revert::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Receipt(c) => cmd::receipt::run(c),
        Command::Push(a) => cmd::fleet::push(a),
        Command::Watch(a) => cmd::fleet::watch(a),
        Command::Status(a) => cmd::fleet::status(a),
        Command::Rollout(a) => cmd::rollout::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
