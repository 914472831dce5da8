//! `lethectl sign`: build a forget command and sign it with one key (or several, for k-of-n).
//! The issuer is the first key's name; the command id defaults to `ISSUER-SEQ`, unique as long
//! as the operator keeps sequence numbers increasing.
//!
//! Invariant: the library parses what it is about to sign with the device's own parser, so a
//! signed file is never refused for its content, only for time, target, trust or replay.

use super::fsutil::{fmt_time, now_unix, parse_duration, parse_time, read_capped, write_atomic};
use super::trust::load_key;
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use lethe_proto::command::MAX_IMAGE_BYTES;
use lethe_proto::{sign_command, CommandSpec, Method, TargetSpec};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["device", "group"])))]
pub struct SignArgs {
    /// Private key file; repeat for k-of-n (the first key's name is the issuer).
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// Target one device.
    #[arg(long)]
    device: Option<String>,
    /// Target a group of devices.
    #[arg(long)]
    group: Option<String>,
    /// Model the devices must be running.
    #[arg(long)]
    model_id: String,
    /// Exact model version the devices must be running.
    #[arg(long)]
    model_version: Option<String>,
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
    /// Issuer sequence number; must exceed the last one each device accepted from this issuer.
    #[arg(long)]
    seq: u64,
    /// Lifetime of the command (at most 7d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    expires_in: u64,
    /// Issue time (default now).
    #[arg(long, value_parser = parse_time)]
    issued_at: Option<u64>,
    /// Command id (default ISSUER-SEQ).
    #[arg(long)]
    id: Option<String>,
    /// Output file for the signed envelope.
    #[arg(long)]
    out: PathBuf,
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
    let keys = a
        .keys
        .iter()
        .map(|p| load_key(p))
        .collect::<Result<Vec<_>>>()?;
    let issuer = keys[0].name().to_string();
    let issued_at = a.issued_at.unwrap_or_else(now_unix);
    let method = match &a.method {
        Some(m) => Some(Method::from_name(m).context("--method: expected siu, ga, ga_kl or po")?),
        None => None,
    };
    let target = match (a.device, a.group) {
        (Some(d), None) => TargetSpec::Device(d),
        (None, Some(g)) => TargetSpec::Group(g),
        _ => bail!("give exactly one of --device and --group"),
    };
    let spec = CommandSpec {
        id: a.id.unwrap_or_else(|| format!("{issuer}-{}", a.seq)),
        issuer,
        seq: a.seq,
        issued_at,
        expires_at: issued_at.saturating_add(a.expires_in),
        target,
        model_id: a.model_id,
        model_version: a.model_version,
        concept: a.concept,
        image: read_image(&a.image)?,
        verify_images: a
            .verify_images
            .iter()
            .map(|p| read_image(p))
            .collect::<Result<_>>()?,
        method,
        steps: a.steps,
    };
    let refs: Vec<_> = keys.iter().collect();
    let env = sign_command(&spec, &refs).context("refusing to sign")?;
    write_atomic(&a.out, &env, 0o644)?;
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
        a.out.display(),
        env.len()
    );
    Ok(ExitCode::SUCCESS)
}
