//! `lethectl revert`: sign a revert command, to a device or a group (deliver it with
//! `lethectl push` and follow it with `lethectl watch`), or, given `--committed X` and the
//! erasure ledger, for every device whose verified receipt says it committed X: the signed
//! command goes to the group (`before:X` by default) and the device list to `--devices-out`,
//! for `lethectl rollout --devices` (staged delivery, abort criteria, resumable).
//!
//! Erasure stays honest: a device refuses a revert that would bring back a forgotten concept
//! unless the signed command says `undo_forgets` (`--undo-forgets`), and its receipt names
//! every forget it undid. Where lethectl can tell from the ledger that the revert undoes a
//! forget (`--committed X` of a forget), it refuses to sign without `--undo-forgets` itself.

use super::audit::{ledger, report};
use super::devices;
use super::fsutil::write_atomic;
use super::sign::{sign_to_file, CommandArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use lethe_proto::{ActionSpec, RevertSpec, RevertTo};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RevertArgs {
    #[command(flatten)]
    common: CommandArgs,
    /// Where to go: `original` (the package's adapter), a version's sha256 the devices
    /// hold, or `before:<command id>` (the version current before that forget committed).
    /// With --committed X the default is `before:X`.
    #[arg(long)]
    to: Option<String>,
    /// Confirm that the revert may bring back concepts that were forgotten. Devices refuse
    /// such a revert without it (`undoes-forgets`) and name each undone forget in the receipt.
    #[arg(long)]
    undo_forgets: bool,
    /// Revert the devices that committed this command, as the ledger's verified receipts
    /// say (with --ledger, --device-pubs, --devices-out).
    #[arg(long, requires_all = ["ledger", "device_pubs", "devices_out"])]
    committed: Option<String>,
    /// The erasure ledger (`lethectl audit --ledger`).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Folder of the devices' public keys (`<device>.pub`), to verify the ledger.
    #[arg(long)]
    device_pubs: Option<PathBuf>,
    /// Where to write the devices to revert, one a line (for `lethectl rollout --devices`).
    #[arg(long)]
    devices_out: Option<PathBuf>,
}

pub fn run(a: RevertArgs) -> Result<ExitCode> {
    let to = match (&a.to, &a.committed) {
        (Some(t), _) => t.clone(),
        (None, Some(x)) => format!("before:{x}"),
        (None, None) => bail!("--to is required (original, a version's sha256 or before:<id>)"),
    };
    RevertTo::parse(&to).map_err(|e| anyhow::anyhow!("--to {to:?}: {e}"))?;
    let mut selected = None;
    if let Some(x) = &a.committed {
        if a.common.device.is_some() {
            bail!("--committed reverts a group's devices: give --group, not --device");
        }
        let ledger = a.ledger.as_deref().expect("clap requires --ledger");
        let pubs = devices::read_all_pubs(a.device_pubs.as_deref().expect("clap requires"))?;
        let v = ledger::verify(ledger, &pubs, None)?;
        if let Some(p) = v.problems.first() {
            bail!(
                "{}: line {}: {} ({} problem(s); `lethectl audit verify` lists them)",
                ledger.display(),
                p.line,
                p.what,
                v.problems.len()
            );
        }
        // Each device's final answer to X, as the audit report reads it.
        let lines: Vec<_> = report::build(&v.good, &BTreeMap::new(), Some(x), &[])
            .into_iter()
            .flat_map(|r| r.devices)
            .filter(|l| l.verdict == "committed")
            .collect();
        let committed: BTreeSet<String> = lines.iter().map(|l| l.device.clone()).collect();
        if committed.is_empty() {
            bail!(
                "{}: no device's verified receipt says it committed {x}",
                ledger.display()
            );
        }
        // A committed forget changed the model (before != after): reverting to before it
        // brings its concept back.
        let changed = lines
            .iter()
            .any(|l| l.model_hash_before != l.model_hash_after);
        if changed && to == format!("before:{x}") && !a.undo_forgets {
            eprintln!(
                "refusing to sign: reverting to before {x} undoes that forget on {} device(s); \
                 add --undo-forgets to confirm that the concept comes back",
                committed.len()
            );
            return Ok(ExitCode::from(1));
        }
        selected = Some(committed);
    }
    sign_to_file(
        a.common,
        ActionSpec::Revert(RevertSpec {
            to,
            undo_forgets: a.undo_forgets,
        }),
    )?;
    if let (Some(list), Some(out)) = (selected, &a.devices_out) {
        let mut text = list.iter().cloned().collect::<Vec<_>>().join("\n");
        text.push('\n');
        write_atomic(out, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", out.display()))?;
        println!(
            "{} device(s) committed {} -> {} (deliver with: lethectl rollout --command FILE --devices {})",
            list.len(),
            a.committed.as_deref().unwrap_or_default(),
            out.display(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
