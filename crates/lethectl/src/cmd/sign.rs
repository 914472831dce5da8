//! `lethectl sign`: build a forget command and sign it with one key (or several, for k-of-n).
//! The issuer is the first key's name; the command id defaults to `ISSUER-SEQ`, unique as long
//! as the operator keeps sequence numbers increasing. [`CommandArgs`] and [`sign_to_file`]
//! are the part every signed command shares (`lethectl revert` uses them too).
//!
//! Invariant: the library parses what it is about to sign with the device's own parser, so a
//! signed file is never refused for its content, only for time, target, trust or replay.

use super::fsutil::{fmt_time, now_unix, parse_duration, parse_time, read_capped, write_atomic};
use super::trust::load_key;
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use lethe_proto::command::MAX_IMAGE_BYTES;
use lethe_proto::{sign_command, ActionSpec, CommandSpec, ForgetSpec, Method, TargetSpec};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What every signed command has besides its action: keys, target, model, sequence, time,
/// id, output file.
#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["device", "group"])))]
pub struct CommandArgs {
    /// Private key file; repeat for k-of-n (the first key's name is the issuer).
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Target one device.
    #[arg(long)]
    pub device: Option<String>,
    /// Target a group of devices.
    #[arg(long)]
    pub group: Option<String>,
    /// Model the devices must be running.
    #[arg(long)]
    pub model_id: String,
    /// Exact model version the devices must be running.
    #[arg(long)]
    pub model_version: Option<String>,
    /// Issuer sequence number; must exceed the last one each device accepted from this issuer.
    #[arg(long)]
    pub seq: u64,
    /// Lifetime of the command (at most 7d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub expires_in: u64,
    /// Issue time (default now).
    #[arg(long, value_parser = parse_time)]
    pub issued_at: Option<u64>,
    /// Command id (default ISSUER-SEQ).
    #[arg(long)]
    pub id: Option<String>,
    /// Output file for the signed envelope.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct SignArgs {
    #[command(flatten)]
    common: CommandArgs,
    /// The concept to forget (its name as the model says it).
    #[arg(long)]
    concept: String,
    /// One PNG or JPEG image of the concept.
    #[arg(long)]
    image: PathBuf,
    /// Extra image for the device's verification probes (repeatable, at most 4).
    #[arg(long = "verify-image")]
    verify_images: Vec<PathBuf>,
    /// Method override: siu, ga, ga_kl or po.
    #[arg(long)]
    method: Option<String>,
    /// Optimizer-step override (1..=64).
    #[arg(long)]
    steps: Option<u32>,
}

fn read_image(p: &Path) -> Result<Vec<u8>> {
    let b = read_capped(p, MAX_IMAGE_BYTES)?;
    if b.len() > MAX_IMAGE_BYTES {
        bail!(
            "{} is over the {} byte image cap",
            p.display(),
            MAX_IMAGE_BYTES
        );
    }
    Ok(b)
}

pub fn run(a: SignArgs) -> Result<ExitCode> {
    let method = match &a.method {
        Some(m) => Some(Method::from_name(m).context("--method: expected siu, ga, ga_kl or po")?),
        None => None,
    };
    let action = ActionSpec::Forget(ForgetSpec {
        concept: a.concept,
        image: read_image(&a.image)?,
        verify_images: a
            .verify_images
            .iter()
            .map(|p| read_image(p))
            .collect::<Result<_>>()?,
        method,
        steps: a.steps,
    });
    sign_to_file(a.common, action)?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the command `c` + `action`, signs it with every key and writes the envelope to
/// `c.out`; prints one line and returns the spec.
pub fn sign_to_file(c: CommandArgs, action: ActionSpec) -> Result<CommandSpec> {
    let keys = c
        .keys
        .iter()
        .map(|p| load_key(p))
        .collect::<Result<Vec<_>>>()?;
    let issuer = keys[0].name().to_string();
    let issued_at = c.issued_at.unwrap_or_else(now_unix);
    let target = match (c.device, c.group) {
        (Some(d), None) => TargetSpec::Device(d),
        (None, Some(g)) => TargetSpec::Group(g),
        _ => bail!("give exactly one of --device and --group"),
    };
    let spec = CommandSpec {
        id: c.id.unwrap_or_else(|| format!("{issuer}-{}", c.seq)),
        issuer,
        seq: c.seq,
        issued_at,
        expires_at: issued_at.saturating_add(c.expires_in),
        target,
        model_id: c.model_id,
        model_version: c.model_version,
        action,
    };
    let refs: Vec<_> = keys.iter().collect();
    let env = sign_command(&spec, &refs).context("refusing to sign")?;
    write_atomic(&c.out, &env, 0o644)?;
    println!(
        "signed {} issuer={} seq={} signers={} expires={} -> {} ({} bytes)",
        spec.id,
        spec.issuer,
        spec.seq,
        keys.iter()
            .map(|k| k.id().to_string())
            .collect::<Vec<_>>()
            .join(","),
        fmt_time(spec.expires_at),
        c.out.display(),
        env.len()
    );
    Ok(spec)
}
