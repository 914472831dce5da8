//! `lethectl receipt verify`: check a device's signed status receipt with the device's public
//! key and print it. Exit 0 when it verifies, 1 (`rejected: <code>: <detail>`) when not.
//! Signing receipts is the agent's job (lethe_proto::sign_receipt with the device key).

use super::fsutil::{fmt_time, read_capped, read_text, rejected};
use anyhow::{Context, Result};
use clap::Subcommand;
use lethe_proto::envelope::MAX_ENVELOPE_BYTES;
use lethe_proto::{verify_receipt, PublicKey};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ReceiptCmd {
    /// Verify a receipt against the device's public key and print it.
    Verify {
        /// The device's public key file (named by the device id).
        #[arg(long = "pub")]
        public: PathBuf,
        /// Print the receipt as JSON.
        #[arg(long)]
        json: bool,
        receipt: PathBuf,
    },
}

pub fn run(cmd: ReceiptCmd) -> Result<ExitCode> {
    let ReceiptCmd::Verify {
        public,
        json,
        receipt,
    } = cmd;
    let key = PublicKey::from_file_str(&read_text(&public)?)
        .with_context(|| format!("reading {}", public.display()))?;
    let bytes = read_capped(&receipt, MAX_ENVELOPE_BYTES)?;
    let r = match verify_receipt(&bytes, &key) {
        Ok(r) => r,
        Err(e) => return Ok(rejected(&e, json)),
    };
    if json {
        let mut v = serde_json::to_value(&*r)?;
        v["signed_by"] = key.id().to_string().into();
        println!("{v}");
    } else {
        let metrics: Vec<String> = r.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "verified receipt command={} device={} verdict={} model {} -> {} started={} finished={} ep={} metrics=[{}]{}",
            r.command_id,
            r.device_id,
            r.verdict.name(),
            r.model_hash_before,
            r.model_hash_after,
            fmt_time(r.started_at),
            fmt_time(r.finished_at),
            r.execution_provider.as_deref().unwrap_or("-"),
            metrics.join(" "),
            r.reason.as_deref().map(|x| format!(" reason={x:?}")).unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
