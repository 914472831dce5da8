//! `lethectl keygen`: a new Ed25519 key pair as NAME.key (private, mode 0600) and NAME.pub.
//! The same command makes operator keys and device keys (a device key is named by its device
//! id). File formats: see lethe_proto::keys.
//!
//! Invariant: an existing key file is never overwritten unless `--force` is given.

use super::fsutil::write_atomic;
use anyhow::{bail, Result};
use clap::Args;
use lethe_proto::SigningKey;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct KeygenArgs {
    /// Folder to write NAME.key and NAME.pub into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Key name: the operator (issuer) name, or the device id for a device key.
    #[arg(long)]
    name: String,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

pub fn run(a: KeygenArgs) -> Result<ExitCode> {
    let key = SigningKey::generate(&a.name)?;
    std::fs::create_dir_all(&a.out)?;
    let private = a.out.join(format!("{}.key", a.name));
    let public = a.out.join(format!("{}.pub", a.name));
    for p in [&private, &public] {
        if p.exists() && !a.force {
            bail!("{} exists (pass --force to overwrite)", p.display());
        }
    }
    write_atomic(&private, key.to_file_string().as_bytes(), 0o600)?;
    write_atomic(&public, key.public().to_file_string().as_bytes(), 0o644)?;
    println!(
        "key {} name={} private={} public={}",
        key.id(),
        key.name(),
        private.display(),
        public.display()
    );
    Ok(ExitCode::SUCCESS)
}
