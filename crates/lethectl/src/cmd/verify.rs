//! `lethectl verify`: the device's check, run by the operator or a script. Exit 0 and
//! `accepted ...`, or exit 1 and `rejected: <code>: <detail>`. With `--state FILE`, an accepted
//! sequence number is recorded (atomically) so that a replay is rejected next time.
//!
//! Invariant: the state file is written only after an acceptance; a rejection leaves it as it
//! was. (Two concurrent `verify --state` runs on one file are not serialised: the agent, a
//! single process, owns its state.)

use super::fsutil::{fmt_time, now_unix, parse_time, read_capped, rejected, write_atomic};
use super::trust::load;
use anyhow::{Context, Result};
use clap::Args;
use lethe_proto::envelope::MAX_ENVELOPE_BYTES;
use lethe_proto::{verify_command, Action, DeviceContext, ModelContext, ReplayState, Target};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct VerifyArgs {
    /// Trust store file.
    #[arg(long)]
    trust: PathBuf,
    /// This device's id.
    #[arg(long)]
    device: String,
    /// A group this device belongs to (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// The model this device runs; without it the model is not checked.
    #[arg(long)]
    model_id: Option<String>,
    /// The model version this device runs.
    #[arg(long, requires = "model_id")]
    model_version: Option<String>,
    /// Replay state file (JSON; created on first acceptance).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Verify as of this time instead of now.
    #[arg(long, value_parser = parse_time)]
    now: Option<u64>,
    /// One JSON object on stdout instead of a line.
    #[arg(long)]
    json: bool,
    /// The signed command file.
    cmd: PathBuf,
}

pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let trust = load(&a.trust, false)?;
    let state = match &a.state {
        Some(p) if p.exists() => {
            let b = read_capped(p, 1 << 20)?;
            serde_json::from_slice::<ReplayState>(&b)
                .with_context(|| format!("reading state {}", p.display()))?
        }
        _ => ReplayState::new(),
    };
    let bytes = read_capped(&a.cmd, MAX_ENVELOPE_BYTES)?;
    let device = DeviceContext {
        device_id: a.device,
        groups: a.groups,
        model: a.model_id.map(|id| ModelContext {
            id,
            version: a.model_version,
        }),
    };
    let now = a.now.unwrap_or_else(now_unix);
    let (cmd, next) = match verify_command(&bytes, &trust, &device, &state, now) {
        Ok(ok) => ok,
        Err(e) => return Ok(rejected(&e, a.json)),
    };
    if let Some(p) = &a.state {
        let mut j = serde_json::to_vec_pretty(&next)?;
        j.push(b'\n');
        write_atomic(p, &j, 0o644)?;
    }
    let target = match &cmd.target {
        Target::Device(d) => format!("device:{d}"),
        Target::Group(g) => format!("group:{g}"),
    };
    let signers: Vec<String> = cmd.signers().iter().map(|k| k.to_string()).collect();
    let model_checked = device.model.is_some();
    // What the action asks, as JSON fields and as words.
    let (what, said) = match &cmd.action {
        Action::Forget(f) => (
            serde_json::json!({
                "concept": f.concept.as_str(),
                "image": {"width": f.image.info().width, "height": f.image.info().height},
                "verify_images": f.verify_images.len(),
            }),
            format!(
                "concept={:?} image={}x{} verify_images={}",
                f.concept.as_str(),
                f.image.info().width,
                f.image.info().height,
                f.verify_images.len()
            ),
        ),
        Action::Revert(r) => (
            serde_json::json!({"revert_to": r.to.to_string(), "undo_forgets": r.undo_forgets}),
            format!("revert_to={} undo_forgets={}", r.to, r.undo_forgets),
        ),
    };
    if a.json {
        let mut v = serde_json::json!({
            "verdict": "accepted", "id": cmd.id.as_str(), "issuer": cmd.issuer.as_str(),
            "seq": cmd.seq, "target": target, "model_id": cmd.model.id.as_str(),
            "model_version": cmd.model.version.as_ref().map(|v| v.as_str()),
            "model_checked": model_checked, "action": cmd.action.name(), "signers": signers,
            "issued_at": cmd.issued_at, "expires_at": cmd.expires_at,
        });
        if let (Some(o), serde_json::Value::Object(w)) = (v.as_object_mut(), what) {
            o.extend(w);
        }
        println!("{v}");
    } else {
        println!(
            "accepted id={} issuer={} seq={} target={} model={}{} action={} {said} signers={} expires={}",
            cmd.id,
            cmd.issuer,
            cmd.seq,
            target,
            cmd.model.id,
            if model_checked { "" } else { "(not checked)" },
            cmd.action.name(),
            signers.join(","),
            fmt_time(cmd.expires_at),
        );
    }
    Ok(ExitCode::SUCCESS)
}
