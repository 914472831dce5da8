//! `lethectl trust ...`: edit a trust store file (add, revoke, rotate, apply a rotation
//! statement, set the k-of-n threshold, list). The store's rules live in
//! lethe_proto::trust; this file only loads, calls and saves.
//!
//! Invariant: the store file is rewritten atomically and only after the library accepted the
//! change; a refused change (exit 1) leaves the file untouched.

use super::fsutil::{
    fmt_time, now_unix, parse_duration, parse_time, read_capped, read_text, rejected, write_atomic,
};
use anyhow::{Context, Result};
use clap::Subcommand;
use lethe_proto::envelope::MAX_ENVELOPE_BYTES;
use lethe_proto::trust::MAX_TRUST_STORE_BYTES;
use lethe_proto::{sign_rotation, KeyId, PublicKey, RotationSpec, SigningKey, TrustStore};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TrustCmd {
    /// Trust a public key (creates the store if missing).
    Add {
        #[arg(long)]
        store: PathBuf,
        #[arg(long = "pub")]
        public: PathBuf,
        /// Valid from (unix seconds, YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or +DURATION).
        #[arg(long, value_parser = parse_time)]
        not_before: Option<u64>,
        /// Valid until, inclusive (same forms).
        #[arg(long, value_parser = parse_time)]
        not_after: Option<u64>,
    },
    /// Revoke a key for good.
    Revoke {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        key_id: String,
    },
    /// Admit a new key with a statement signed by the old (currently trusted) key, apply it
    /// to the store, and optionally write the statement for devices (`trust apply`).
    Rotate {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        old_key: PathBuf,
        #[arg(long)]
        new_pub: PathBuf,
        /// Revoke the old key in the same statement.
        #[arg(long)]
        revoke_old: bool,
        /// Validity end of the new key.
        #[arg(long, value_parser = parse_time)]
        not_after: Option<u64>,
        /// How long the statement itself may be applied.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires_in: u64,
        /// Also write the signed statement here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Apply a rotation statement (as a device does) to a store.
    Apply {
        #[arg(long)]
        store: PathBuf,
        statement: PathBuf,
    },
    /// Set k of k-of-n: how many distinct trusted keys must sign a command.
    Threshold {
        #[arg(long)]
        store: PathBuf,
        k: usize,
    },
    /// List the keys.
    List {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Loads a store; a missing file is an empty store when `create` is set.
pub fn load(path: &Path, create: bool) -> Result<TrustStore> {
    if create && !path.exists() {
        return Ok(TrustStore::new());
    }
    let bytes = read_capped(path, MAX_TRUST_STORE_BYTES)?;
    TrustStore::from_json(&bytes).with_context(|| format!("loading {}", path.display()))
}

fn save(path: &Path, store: &TrustStore) -> Result<()> {
    write_atomic(path, store.to_json().as_bytes(), 0o644)
}

fn load_pub(path: &Path) -> Result<PublicKey> {
    PublicKey::from_file_str(&read_text(path)?)
        .with_context(|| format!("reading {}", path.display()))
}

/// Reads a private key file.
pub fn load_key(path: &Path) -> Result<SigningKey> {
    SigningKey::from_file_str(&read_text(path)?)
        .with_context(|| format!("reading {}", path.display()))
}

pub fn run(cmd: TrustCmd) -> Result<ExitCode> {
    match cmd {
        TrustCmd::Add {
            store,
            public,
            not_before,
            not_after,
        } => {
            let mut s = load(&store, true)?;
            let key = load_pub(&public)?;
            match s.add(&key, not_before, not_after) {
                Ok(id) => {
                    save(&store, &s)?;
                    println!("trusted {id} name={}", key.name());
                }
                Err(e) => return Ok(rejected(&e, false)),
            }
        }
        TrustCmd::Revoke { store, key_id } => {
            let mut s = load(&store, false)?;
            let id = KeyId::parse_hex(&key_id).context("--key-id: expected 16 hex digits")?;
            match s.revoke(id) {
                Ok(()) => {
                    save(&store, &s)?;
                    println!("revoked {id}");
                }
                Err(e) => return Ok(rejected(&e, false)),
            }
        }
        TrustCmd::Rotate {
            store,
            old_key,
            new_pub,
            revoke_old,
            not_after,
            expires_in,
            out,
        } => {
            let mut s = load(&store, false)?;
            let old = load_key(&old_key)?;
            let new = load_pub(&new_pub)?;
            let now = now_unix();
            let spec = RotationSpec {
                new_key: new,
                not_before: None,
                not_after,
                revoke_signers: revoke_old,
                issued_at: now,
                expires_at: now + expires_in,
            };
            let statement = match sign_rotation(&spec, &[&old]) {
                Ok(b) => b,
                Err(e) => return Ok(rejected(&e, false)),
            };
            match s.apply_rotation(&statement, now) {
                Ok(id) => {
                    if let Some(out) = &out {
                        write_atomic(out, &statement, 0o644)?;
                    }
                    save(&store, &s)?;
                    println!(
                        "rotated {} -> {id}{}",
                        old.id(),
                        if revoke_old { " (old key revoked)" } else { "" }
                    );
                }
                Err(e) => return Ok(rejected(&e, false)),
            }
        }
        TrustCmd::Apply { store, statement } => {
            let mut s = load(&store, false)?;
            let bytes = read_capped(&statement, MAX_ENVELOPE_BYTES)?;
            match s.apply_rotation(&bytes, now_unix()) {
                Ok(id) => {
                    save(&store, &s)?;
                    println!("applied rotation: trusted {id}");
                }
                Err(e) => return Ok(rejected(&e, false)),
            }
        }
        TrustCmd::Threshold { store, k } => {
            let mut s = load(&store, false)?;
            match s.set_threshold(k) {
                Ok(()) => {
                    save(&store, &s)?;
                    println!("threshold {k} of {}", s.keys().len());
                }
                Err(e) => return Ok(rejected(&e, false)),
            }
        }
        TrustCmd::List { store, json } => {
            let s = load(&store, false)?;
            if json {
                print!("{}", s.to_json());
            } else {
                println!("threshold {}", s.threshold());
                let t = |x: Option<u64>| x.map_or("-".to_string(), fmt_time);
                for k in s.keys() {
                    println!(
                        "{}  {:<16} from {:<20} until {:<20} {}",
                        k.id,
                        k.name.as_str(),
                        t(k.not_before),
                        t(k.not_after),
                        if k.revoked { "REVOKED" } else { "" }
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
