//! `lethe-fleetsim`: runs a simulated fleet (TEST DOUBLE: real agents, simulated model
//! updates) until SIGTERM or SIGINT. Prints `ready N devices online in S s` on stdout once
//! every device's retained status is online, then `stopped` after a clean stop.
//! Exit codes: 0 after a clean stop, 2 on an error (one line on stderr).

use anyhow::{bail, Context, Result};
use clap::Parser;
use lethe_fleetsim::{FleetSpec, Observer, OutcomePlan, SimFleet, Timing};
use lethe_proto::PublicKey;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "lethe-fleetsim",
    about = "TEST DOUBLE: N real Lethe agents with a simulated model update, in one process"
)]
struct Cli {
    #[arg(long)]
    devices: usize,
    /// mqtt://host:port (plain only).
    #[arg(long)]
    broker: String,
    #[arg(long)]
    fleet: String,
    /// The group every device is in.
    #[arg(long, default_value = "all")]
    group: String,
    /// Public key of an operator the devices trust (repeatable).
    #[arg(long = "operator-pub", required = true)]
    operator_pubs: Vec<PathBuf>,
    /// Folder for the devices' keys, configurations and state.
    #[arg(long)]
    dir: PathBuf,
    /// Share of devices whose update fails.
    #[arg(long, default_value_t = 0.0)]
    fail_share: f64,
    /// Share of devices whose verification fails (rolled back).
    #[arg(long, default_value_t = 0.0)]
    rollback_share: f64,
    /// Simulated training steps per update.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Duration of one simulated step, in milliseconds.
    #[arg(long, default_value_t = 100)]
    step_ms: u64,
    /// How long to wait for every device to be online, in seconds.
    #[arg(long, default_value_t = 120)]
    online_timeout: u64,
}

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_none() {
        // A thousand agents' info lines drown everything; warnings and errors stay.
        std::env::set_var("RUST_LOG", "warn");
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let addr = lethe_agent::config::parse_broker(&cli.broker).map_err(anyhow::Error::msg)?;
    if addr.tls {
        bail!("the simulated fleet takes a plain mqtt:// broker");
    }
    let mut operators = Vec::new();
    for p in &cli.operator_pubs {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        operators.push(
            PublicKey::from_file_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        );
    }
    let t0 = Instant::now();
    let mut fleet = SimFleet::create(FleetSpec {
        devices: cli.devices,
        fleet: cli.fleet.clone(),
        group: cli.group,
        broker: cli.broker,
        dir: cli.dir,
        operators,
        plan: OutcomePlan {
            fail: cli.fail_share,
            roll_back: cli.rollback_share,
        },
        timing: Timing {
            steps: cli.steps,
            step: Duration::from_millis(cli.step_ms),
        },
    })?;
    let observer = Observer::start(&addr.host, addr.port, &cli.fleet)?;
    fleet.start_all();
    let n = cli.devices;
    if !observer.wait(Duration::from_secs(cli.online_timeout), |s| s.online() >= n) {
        bail!(
            "{} of {n} devices online after {} s",
            observer.seen().online(),
            cli.online_timeout
        );
    }
    drop(observer);
    println!(
        "ready {n} devices online in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    std::io::stdout().flush()?;
    fleet.runtime().block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok::<_, std::io::Error>(())
    })?;
    fleet.stop_all()?;
    println!("stopped");
    Ok(())
}
