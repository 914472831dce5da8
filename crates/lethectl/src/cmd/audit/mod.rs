//! `lethectl audit`: the erasure audit trail. Collects the device-signed receipts of a
//! command (or of every command) from the broker into a local append-only ledger, verifying
//! each against its device's public key, clears the collected retained receipts, and reports
//! per command which devices committed, rolled back, failed, were rejected or are pending,
//! with the model hash before and after and the time (table, `--json`, `--csv`).
//! `lethectl audit verify LEDGER` re-verifies a ledger offline, line by line and its chain.
//!
//! Modules: `ledger` (the file and its verification), `collect` (the broker side),
//! `report` (per-command tables, JSON, CSV).
//! Exit codes: 0 all verified, 1 a receipt or ledger line that does not verify, 2 errors.

pub mod collect;
pub mod ledger;
pub mod report;

use super::devices;
use super::fleet::{load_command, BrokerArgs};
use super::jsonl::{parse_all, read_lines};
use super::rollout::state::{Record, RolloutState};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use collect::{collect, Collect};
use ledger::Ledger;
use report::CommandReport;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub sub: Option<AuditCmd>,
    #[command(flatten)]
    pub collect: CollectArgs,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Re-verify a ledger offline: every receipt against its device's key, and the chain.
    Verify(VerifyArgs),
}

/// Which commands and devices the report covers, and its format.
#[derive(Args, Clone)]
pub struct ReportArgs {
    /// One command: its signed file (id and envelope name) or its id. Default: every command.
    #[arg(long)]
    pub command: Option<String>,
    /// Devices expected to answer (pending until they do): one id a line.
    #[arg(long)]
    pub devices: Option<PathBuf>,
    /// ... or the devices a rollout delivered to, and its command (the rollout's state file).
    #[arg(long, conflicts_with = "devices")]
    pub rollout: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
}

#[derive(Args)]
pub struct CollectArgs {
    #[command(flatten)]
    pub b: BrokerArgs,
    /// The ledger (created when missing; only ever appended to).
    #[arg(long, required = true)]
    pub ledger: Option<PathBuf>,
    /// Folder of the devices' public keys (`<device>.pub`).
    #[arg(long, required = true)]
    pub device_pubs: Option<PathBuf>,
    /// Stop once no receipt came for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub wait: f64,
    /// Leave the collected retained receipts on the broker.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub r: ReportArgs,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The ledger file.
    pub ledger: PathBuf,
    /// Folder of the devices' public keys (`<device>.pub`).
    #[arg(long)]
    pub device_pubs: PathBuf,
    /// The head a previous `lethectl audit` printed: the last line must still hash to it.
    #[arg(long)]
    pub head: Option<String>,
    #[command(flatten)]
    pub r: ReportArgs,
}

/// The command filter: its names (id, envelope name) and the alias map for the report.
struct Scope {
    id: Option<String>,
    names: Option<Vec<String>>,
    alias: BTreeMap<String, String>,
    expected: Vec<String>,
}

/// Reads a rollout's state file without touching it.
fn read_rollout(path: &Path) -> Result<RolloutState> {
    let read = read_lines(path)?;
    let recs: Vec<Record> = parse_all(path, &read.lines)?;
    RolloutState::replay(&recs).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn scope(r: &ReportArgs, fleet: Option<&str>) -> Result<Scope> {
    let mut s = Scope {
        id: None,
        names: None,
        alias: BTreeMap::new(),
        expected: Vec::new(),
    };
    fn set(s: &mut Scope, id: String, env: Option<String>) {
        s.names = Some(
            [Some(id.clone()), env.clone()]
                .into_iter()
                .flatten()
                .collect(),
        );
        if let Some(e) = env {
            s.alias.insert(e, id.clone());
        }
        s.id = Some(id);
    }
    if let Some(c) = &r.command {
        if Path::new(c).is_file() {
            let (_, _, id, env) = load_command(fleet.unwrap_or("-"), Path::new(c))?;
            set(&mut s, id, Some(env));
        } else {
            lethe_proto::ident::Ident::new("command", c)
                .map_err(|e| anyhow::anyhow!("--command {c:?}: neither a file nor an id: {e}"))?;
            set(&mut s, c.clone(), None);
        }
    }
    if let Some(p) = &r.rollout {
        let st = read_rollout(p)?;
        if s.id.as_ref().is_some_and(|i| *i != st.command_id) {
            bail!(
                "{} is a rollout of {}, not of the --command",
                p.display(),
                st.command_id
            );
        }
        if s.id.is_none() {
            set(&mut s, st.command_id.clone(), Some(st.env_name.clone()));
        }
        s.expected = st
            .order
            .iter()
            .filter(|d| st.devices[*d].sends > 0)
            .cloned()
            .collect();
    }
    if let Some(f) = &r.devices {
        s.expected = devices::read_list(f)?;
    }
    Ok(s)
}

fn print_report(
    r: &ReportArgs,
    reports: &[CommandReport],
    mut json: serde_json::Value,
) -> Result<()> {
    if r.json {
        json["commands"] = serde_json::to_value(reports)?;
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if r.csv {
        print!("{}", report::to_csv(reports));
    } else {
        print!("{}", report::to_table(reports));
    }
    Ok(())
}

pub fn run(a: AuditArgs) -> Result<ExitCode> {
    match a.sub {
        Some(AuditCmd::Verify(v)) => verify(v),
        None => collect_run(a.collect),
    }
}

fn collect_run(a: CollectArgs) -> Result<ExitCode> {
    let fleet = a.b.fleet()?.to_string();
    let (Some(ledger_path), Some(pubs_dir)) = (&a.ledger, &a.device_pubs) else {
        bail!("--ledger and --device-pubs are required");
    };
    let s = scope(&a.r, Some(&fleet))?;
    let pubs = devices::read_all_pubs(pubs_dir)?;
    let mut ledger = Ledger::open(ledger_path)?;
    let c = Collect {
        conn: a.b.conn(),
        fleet,
        pubs,
        names: s.names.clone(),
        quiet_for: Duration::from_secs_f64(a.wait),
        clear: !a.keep,
        show_progress: !a.r.json && !a.r.csv,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let got = rt.block_on(collect(&c, &mut ledger))?;
    let summary = format!(
        "collected {} new receipt(s) ({} already in the ledger), cleared {} retained, kept {} busy, {} unverified (left on the broker)\nledger {}: {} entries, head {}",
        got.added,
        got.already,
        got.cleared,
        got.busy_kept,
        got.unverified.len(),
        ledger_path.display(),
        ledger.entries.len(),
        ledger.head
    );
    for u in &got.unverified {
        eprintln!("unverified: {u}");
    }
    if a.r.json {
        // Everything goes into the JSON.
    } else if a.r.csv {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    let reports = report::build(&ledger.entries, &s.alias, s.id.as_deref(), &s.expected);
    let json = serde_json::json!({
        "ledger": ledger_path,
        "entries": ledger.entries.len(),
        "head": ledger.head,
        "collected": got,
    });
    print_report(&a.r, &reports, json)?;
    Ok(if got.unverified.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let s = scope(&a.r, None)?;
    let pubs = devices::read_all_pubs(&a.device_pubs)?;
    let v = ledger::verify(&a.ledger, &pubs, a.head.as_deref())?;
    let reports = report::build(&v.good, &s.alias, s.id.as_deref(), &s.expected);
    let verdict = if v.problems.is_empty() {
        format!(
            "ledger {}: {} entries verify, head {}",
            a.ledger.display(),
            v.lines,
            v.head
        )
    } else {
        format!(
            "ledger {}: {} of {} entries verify; {} problem(s)",
            a.ledger.display(),
            v.good.len(),
            v.lines,
            v.problems.len()
        )
    };
    if !a.r.json {
        let mut err = String::new();
        for p in &v.problems {
            err.push_str(&format!("line {}: {}\n", p.line, p.what));
        }
        if a.r.csv {
            eprint!("{err}");
            eprintln!("{verdict}");
        } else {
            print!("{err}");
            println!("{verdict}");
        }
    }
    let json = serde_json::json!({
        "ledger": a.ledger,
        "entries": v.lines,
        "verified": v.good.len(),
        "head": v.head,
        "problems": v.problems,
    });
    print_report(&a.r, &reports, json)?;
    Ok(if v.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: AuditArgs,
    }

    #[test]
    fn audit_alone_collects_and_audit_verify_needs_no_broker() {
        let c = Cli::try_parse_from(["x", "--fleet", "f", "--ledger", "l", "--device-pubs", "d"])
            .unwrap();
        assert!(c.a.sub.is_none());
        assert_eq!(c.a.collect.ledger, Some(PathBuf::from("l")));
        let v = Cli::try_parse_from(["x", "verify", "l", "--device-pubs", "d"]).unwrap();
        assert!(matches!(v.a.sub, Some(AuditCmd::Verify(_))));
        assert!(
            Cli::try_parse_from(["x", "--fleet", "f"]).is_err(),
            "collect needs a ledger"
        );
    }
}
