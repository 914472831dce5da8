//! `lethectl bench fleet`: a rollout to N simulated devices on a real mosquitto, measured.
//! The devices are real agents with a simulated model update (the test-only `lethe-fleetsim`,
//! see `fleet_rig`); this process is the operator and runs `rollout`'s own loop. Reported:
//! verified receipts, the time from the first delivery to the last verified receipt,
//! receipts per second, and the CPU seconds and peak memory of the operator (this process),
//! the broker and the simulated fleet while the rollout ran.
//!
//! Also here: [`BenchAll`], `bench`'s subcommands (the model benchmarks of `bench.rs` and
//! this one).

use super::fleet_rig::{FleetShape, Rig};
use super::jsonl::JsonLines;
use super::procstat::{usage, Usage};
use super::rollout::bars::Bars;
use super::rollout::drive::{drive, now_ms, Plan};
use super::rollout::report;
use super::rollout::schedule::{Abort, Rate};
use super::rollout::state::{Outcome, Record, RolloutState};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lethe_proto::{sign_command, ActionSpec, CommandSpec, ForgetSpec, TargetSpec};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum BenchAll {
    #[command(flatten)]
    Model(super::bench::BenchCmd),
    /// A rollout to N simulated devices on a real mosquitto: receipts, time, CPU, memory.
    Fleet(FleetArgs),
}

pub fn run(c: BenchAll) -> Result<ExitCode> {
    match c {
        BenchAll::Model(m) => super::bench::run(m),
        BenchAll::Fleet(a) => fleet(a),
    }
}

#[derive(Args)]
pub struct FleetArgs {
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Devices per minute of the rollout.
    #[arg(long, default_value_t = 6000.0)]
    pub rate: f64,
    /// Share of the simulated devices whose update fails.
    #[arg(long, default_value_t = 0.0)]
    pub fail_share: f64,
    /// Abort the rollout above this failure percentage (after `--abort-min-executed`).
    #[arg(long)]
    pub abort_failure_pct: Option<f64>,
    #[arg(long, default_value_t = 50)]
    pub abort_min_executed: usize,
    /// Simulated training steps per update, and the duration of each.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 100)]
    pub step_ms: u64,
    /// The simulated devices' model id.
    #[arg(long, default_value = "lethe-sim-vlm")]
    pub model_id: String,
    #[arg(long)]
    pub json: bool,
}

/// Usage between two snapshots: CPU seconds spent, peak memory at the end.
fn spent(before: Option<Usage>, after: Option<Usage>) -> Option<Usage> {
    let (b, a) = (before?, after?);
    Some(Usage {
        cpu_s: a.cpu_s - b.cpu_s,
        peak_rss_mib: a.peak_rss_mib,
    })
}

fn fleet(a: FleetArgs) -> Result<ExitCode> {
    anyhow::ensure!(a.devices >= 1, "--devices must be at least 1");
    if !a.json {
        eprintln!(
            "starting mosquitto and {} simulated devices (lethe-fleetsim: real agents, \
             simulated model updates)",
            a.devices
        );
    }
    let mut rig = Rig::start(&FleetShape {
        devices: a.devices,
        fail_share: a.fail_share,
        steps: a.steps,
        step_ms: a.step_ms,
    })?;
    let now = now_ms() / 1000;
    let bytes = sign_command(
        &CommandSpec {
            id: "bench-fleet-1".into(),
            issuer: rig.op.name().into(),
            seq: 1,
            issued_at: now,
            expires_at: now + 3600,
            target: TargetSpec::Group(rig.group.clone()),
            model_id: a.model_id.clone(),
            model_version: None,
            action: ActionSpec::Forget(ForgetSpec {
                concept: lethe_world::identity(0).context("identity 0")?.name(),
                image: super::local::png(0, 500_000)?,
                verify_images: vec![],
                method: None,
                steps: None,
            }),
        },
        &[&rig.op],
    )?;
    let (_, _, id, env_name) = {
        let f = rig.path("command.leth");
        std::fs::write(&f, &bytes)?;
        super::fleet::load_command(&rig.fleet, &f)?
    };
    let devices = super::devices::read_list(&rig.devices_file())?;
    let start = Record::Start {
        v: 1,
        at: now_ms(),
        command_sha256: lethe_agent::fsutil::sha256_hex(&bytes),
        command_id: id,
        env_name,
        fleet: rig.fleet.clone(),
        devices: devices.clone(),
    };
    let mut log = JsonLines::create(&rig.path("bench.rollout"), std::slice::from_ref(&start))?;
    let mut st = RolloutState::replay(&[start]).map_err(anyhow::Error::msg)?;
    let plan = Plan {
        conn: super::fleet::Conn::plain(&rig.broker),
        command: bytes.into(),
        pubs: super::devices::read_pubs(&rig.pubs_dir(), &devices)?,
        rate: Rate::constant(a.rate),
        abort: a.abort_failure_pct.map(|p| Abort {
            failure_pct: p,
            min_executed: a.abort_min_executed,
        }),
        timeout: Duration::from_secs(600),
        resend_after: Duration::from_secs(30),
    };
    let pids = (rig.broker_pid(), rig.fleet_pid().unwrap_or_default());
    let before = (usage("self"), usage(&pids.0), usage(&pids.1));
    let bars = Bars::new(devices.len(), a.json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(drive(&plan, &mut log, &mut st, &bars))?;
    bars.finish();
    let after = (usage("self"), usage(&pids.0), usage(&pids.1));
    let online_s = rig.online_s;
    rig.stop()?;

    let counts = st.counts();
    let n = |o: Outcome| counts.get(&o).copied().unwrap_or(0);
    let verified = st
        .devices
        .values()
        .filter(|d| d.outcome().executed())
        .count();
    let t_all = report::time_to_all_receipts(&st);
    let per_s = t_all.map(|t| verified as f64 / t);
    let (op, broker, sim) = (
        spent(before.0, after.0),
        spent(before.1, after.1),
        spent(before.2, after.2),
    );
    let v = serde_json::json!({
        "devices": a.devices,
        "rate_per_min": a.rate,
        "simulated_update_s": a.steps as f64 * a.step_ms as f64 / 1000.0,
        "fleet_online_s": online_s,
        "notified": st.notified(),
        "verified_receipts": verified,
        "committed": n(Outcome::Committed),
        "rolled_back": n(Outcome::RolledBack),
        "failed": n(Outcome::Failed),
        "rejected": n(Outcome::Rejected),
        "timed_out": n(Outcome::TimedOut),
        "aborted": st.aborted,
        "time_to_all_receipts_s": t_all,
        "receipts_per_s": per_s,
        "operator": op,
        "broker": broker,
        "fleet": sim,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let u = |x: Option<Usage>| {
            x.map_or("-".into(), |u| {
                format!("{:.1} s CPU, peak {:.0} MiB", u.cpu_s, u.peak_rss_mib)
            })
        };
        println!(
            "bench fleet: {} simulated devices (online in {online_s:.1} s), rollout at {}/min, update {:.1} s",
            a.devices,
            a.rate,
            a.steps as f64 * a.step_ms as f64 / 1000.0
        );
        println!(
            "verified receipts: {verified} of {} notified ({} committed, {} rolled back, {} failed, {} rejected, {} timed out){}",
            st.notified(),
            n(Outcome::Committed),
            n(Outcome::RolledBack),
            n(Outcome::Failed),
            n(Outcome::Rejected),
            n(Outcome::TimedOut),
            st.aborted
                .as_deref()
                .map(|w| format!("; ABORTED: {w}"))
                .unwrap_or_default()
        );
        println!(
            "time to all receipts: {}; {} receipts/s",
            t_all.map_or("-".into(), |t| format!("{t:.1} s")),
            per_s.map_or("-".into(), |r| format!("{r:.1}"))
        );
        println!("operator (lethectl): {}", u(op));
        println!("broker (mosquitto):  {}", u(broker));
        println!("fleet (fleetsim):    {}", u(sim));
    }
    Ok(if verified == st.notified() && st.notified() > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
