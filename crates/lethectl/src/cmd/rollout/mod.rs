//! `lethectl rollout`: one signed command delivered to a set of devices in waves, as fleet
//! operators know it from AWS IoT Jobs: a rate in devices per minute with an optional
//! exponential increase, abort criteria (failed + rolled back + rejected above a share of
//! the executed, after a minimum), a timeout per device, progress bars per wave, a final
//! table or JSON. Each device gets the same signed envelope on its own command topic (the
//! device checks the target, a group or itself, as always).
//!
//! The rollout's state lives in an append-only file (default: the command's path +
//! `.rollout`), so an interrupted rollout run again with the same command resumes where it
//! stopped and never delivers to a device twice (see `state`). Devices offline at delivery
//! get the command from their persistent session when they come back; the rollout waits
//! for them up to the timeout, then reports them timed out.
//!
//! Modules: `schedule` (rate, waves, abort: pure), `state` (the file and its replay),
//! `drive` (the loop over the broker), `bars` (progress), `report` (table, JSON).
//! Exit codes: 0 every device committed, 1 otherwise (aborted, failures, timeouts), 2 errors.

pub mod bars;
pub mod drive;
pub mod report;
pub mod schedule;
pub mod state;

use super::devices;
use super::fleet::{load_command, BrokerArgs};
use super::fsutil::parse_duration;
use super::jsonl::JsonLines;
use anyhow::{bail, Context, Result};
use bars::Bars;
use clap::Args;
use drive::{drive, now_ms, Plan};
use lethe_proto::envelope::{self, Kind};
use lethe_proto::{parse_command, Target};
use schedule::{Abort, IncreaseOn, Rate};
use sha2::{Digest, Sha256};
use state::{Record, RolloutState};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub b: BrokerArgs,
    /// The signed command (`lethectl sign --out`), for a group or one device.
    #[arg(long)]
    pub command: PathBuf,
    /// The devices, one id a line (in delivery order).
    #[arg(long, conflicts_with = "group")]
    pub devices: Option<PathBuf>,
    /// The devices of this group, as their retained statuses announce them.
    #[arg(long)]
    pub group: Option<String>,
    /// Folder of the devices' public keys (`<device>.pub`), to verify receipts.
    #[arg(long)]
    pub device_pubs: PathBuf,
    /// The rollout's state file (default: the command's path + `.rollout`).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Devices per minute (the base rate when it increases).
    #[arg(long, default_value_t = 60.0)]
    pub rate: f64,
    /// Multiply the rate by this after every `--increase-every` devices.
    #[arg(long, default_value_t = 1.0)]
    pub increase_factor: f64,
    /// Devices notified (or succeeded, `--increase-on`) between increases; 0 = never.
    #[arg(long, default_value_t = 0)]
    pub increase_every: usize,
    #[arg(long, value_enum, default_value = "notified")]
    pub increase_on: IncreaseOn,
    /// Upper bound of the rate (devices per minute).
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// Abort when failed + rolled back + rejected exceed this percentage of the executed.
    #[arg(long)]
    pub abort_failure_pct: Option<f64>,
    /// ... once at least this many devices executed.
    #[arg(long, default_value_t = 10)]
    pub abort_min_executed: usize,
    /// How long a delivered device may stay silent (e.g. 900s, 15m, 2h).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub timeout: u64,
    /// How long to wait before resending to a device that answered `busy`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub resend_after: u64,
    /// How long to collect retained statuses when the devices come from `--group`.
    #[arg(long, default_value_t = 3.0)]
    pub discover_wait: f64,
    /// Refuse a command larger than the broker's message cap (AWS IoT Core: 131072).
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The state file of a rollout of `command`.
fn default_state(command: &Path) -> PathBuf {
    let mut s = command.as_os_str().to_owned();
    s.push(".rollout");
    PathBuf::from(s)
}

/// Opens the state file, or creates it for `devices` (which then must be given).
fn open_state(
    path: &Path,
    start: impl FnOnce() -> Result<Record>,
    sha: &str,
    given: Option<&[String]>,
) -> Result<(JsonLines, RolloutState)> {
    if path.exists() {
        let (mut log, recs, torn) = JsonLines::open::<Record>(path)?;
        let st =
            RolloutState::replay(&recs).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if st.command_sha256 != sha {
            bail!(
                "{} is the state of a rollout of another command (sha256 {}); use --state",
                path.display(),
                &st.command_sha256[..12.min(st.command_sha256.len())]
            );
        }
        if let Some(g) = given {
            let (mut a, mut b) = (g.to_vec(), st.order.clone());
            a.sort();
            b.sort();
            if a != b {
                bail!(
                    "{} is a rollout to other devices ({} devices); resume it without \
                     --devices/--group or use another --state",
                    path.display(),
                    st.order.len()
                );
            }
        }
        if torn {
            eprintln!("note: {}: a torn last record was dropped", path.display());
        }
        let mut st = st;
        let r = Record::Resumed { at: now_ms() };
        log.append(std::slice::from_ref(&r))?;
        st.apply(&r).map_err(anyhow::Error::msg)?;
        return Ok((log, st));
    }
    let first = start()?;
    let log = JsonLines::create(path, std::slice::from_ref(&first))?;
    let st = RolloutState::replay(&[first]).map_err(anyhow::Error::msg)?;
    Ok((log, st))
}

pub fn run(a: RolloutArgs) -> Result<ExitCode> {
    let conn = a.b.conn();
    let fleet = a.b.fleet()?.to_string();
    let (bytes, _, id, env_name) = load_command(&fleet, &a.command)?;
    if let Some(cap) = a.max_message_bytes {
        if bytes.len() > cap {
            bail!(
                "the command is {} bytes, over the broker's message cap of {cap}: sign it \
                 with a smaller image",
                bytes.len()
            );
        }
    }
    let cmd = parse_command(envelope::parse(&bytes, Kind::Command)?.payload)?;
    let expires_in = cmd.expires_at.saturating_sub(now_ms() / 1000);
    if expires_in < a.timeout {
        eprintln!(
            "warning: the command expires in {expires_in} s, before the rollout's timeout \
             ({} s): devices reached later will reject it as expired",
            a.timeout
        );
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    let state_path = a.state.clone().unwrap_or_else(|| default_state(&a.command));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let given: Option<Vec<String>> = match (&a.devices, &a.group) {
        (Some(f), _) => Some(devices::read_list(f)?),
        (None, Some(g)) => {
            if let Target::Group(cg) = &cmd.target {
                if cg.as_str() != g {
                    bail!("the command targets group {cg}; devices of group {g} would reject it");
                }
            }
            if state_path.exists() {
                None // resuming: the state file names the devices
            } else {
                Some(rt.block_on(devices::of_group(
                    &conn,
                    &fleet,
                    g,
                    Duration::from_secs_f64(a.discover_wait),
                ))?)
            }
        }
        (None, None) if state_path.exists() => None,
        (None, None) => bail!("say which devices: --devices FILE or --group G"),
    };
    if let (Target::Device(d), Some(list)) = (&cmd.target, &given) {
        if list.len() != 1 || list[0] != d.as_str() {
            bail!("the command is addressed to device {d} alone; any other device would reject it");
        }
    }
    let (mut log, mut st) = open_state(
        &state_path,
        || {
            Ok(Record::Start {
                v: 1,
                at: now_ms(),
                command_sha256: sha.clone(),
                command_id: id.clone(),
                env_name: env_name.clone(),
                fleet: fleet.clone(),
                devices: given.clone().context("no devices")?,
            })
        },
        &sha,
        given.as_deref(),
    )?;
    if st.fleet != fleet {
        bail!(
            "{} is a rollout in fleet {}",
            state_path.display(),
            st.fleet
        );
    }
    let pubs = devices::read_pubs(&a.device_pubs, &st.order)?;
    let plan = Plan {
        conn,
        command: bytes.into(),
        pubs,
        rate: Rate {
            base_per_min: a.rate,
            factor: a.increase_factor,
            every: a.increase_every,
            on: a.increase_on,
            max_per_min: a.max_rate.unwrap_or(f64::INFINITY),
        },
        abort: a.abort_failure_pct.map(|p| Abort {
            failure_pct: p,
            min_executed: a.abort_min_executed,
        }),
        timeout: Duration::from_secs(a.timeout),
        resend_after: Duration::from_secs(a.resend_after),
    };
    if !(plan.rate.base_per_min > 0.0) {
        bail!("--rate must be above 0");
    }
    let t0 = Instant::now();
    let bars = Bars::new(st.order.len(), a.quiet || a.json);
    if !st.finished {
        rt.block_on(drive(&plan, &mut log, &mut st, &bars))?;
    }
    bars.finish();
    let elapsed = t0.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::to_json(&st, elapsed))?
        );
    } else {
        print!("{}", report::to_text(&st, elapsed, 20));
    }
    Ok(if report::all_committed(&st) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_sits_beside_the_command() {
        assert_eq!(
            default_state(Path::new("cmds/forget-17.leth")),
            PathBuf::from("cmds/forget-17.leth.rollout")
        );
    }

    #[test]
    fn a_state_file_of_another_command_or_other_devices_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("s.rollout");
        let start = |devs: Vec<String>| {
            move || {
                Ok(Record::Start {
                    v: 1,
                    at: 0,
                    command_sha256: "aa".into(),
                    command_id: "c".into(),
                    env_name: "env-aa".into(),
                    fleet: "f".into(),
                    devices: devs,
                })
            }
        };
        let devs = vec!["d1".to_string(), "d2".to_string()];
        let (_, st) = open_state(&p, start(devs.clone()), "aa", Some(&devs)).unwrap();
        assert_eq!(st.resumed, 0);
        let (_, st) = open_state(&p, start(vec![]), "aa", None).unwrap();
        assert_eq!((st.resumed, st.order.len()), (1, 2));
        let swapped = vec!["d2".to_string(), "d1".to_string()];
        assert!(open_state(&p, start(vec![]), "aa", Some(&swapped)).is_ok());
        assert!(open_state(&p, start(vec![]), "bb", None).is_err());
        let other = vec!["d3".to_string()];
        assert!(open_state(&p, start(vec![]), "aa", Some(&other)).is_err());
    }
}
