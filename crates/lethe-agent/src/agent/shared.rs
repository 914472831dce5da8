//! What the agent's tasks share ([`Shared`]: configuration, journal, adapter store, updater,
//! identity, replay state, the outbox's sender, the status, the channel counters, the
//! storage reserve) and the one place a command is concluded: [`Shared::conclude`] signs the
//! receipt, journals the terminal event, removes the stored envelope and compacts the
//! journal when it has grown.
//!
//! Invariants: every receipt is signed and journaled (fsynced) here, before anyone publishes
//! it. Once a command is settled (terminal or deferred) its envelope, which holds the image,
//! is scrubbed from the state folder; only its journal record (hash, id, issuer, sequence,
//! concept name, receipt) stays, and only while it is among the `journal_keep` most recent.
//! The replay floor is written to `replay.json` before a compaction drops the records it
//! comes from. A journal write that finds the disk full releases the storage reserve and is
//! tried once more, so a failure can still be recorded. Locks nest only in one order,
//! `engines` -> `journal` -> `store` | `replay` | `status` (`status` innermost: nothing is
//! taken while it is held), so the tasks cannot deadlock.

use super::status::{Out, Status};
use super::{io, AgentError};
use crate::channel::ChannelStats;
use crate::config::Config;
use crate::fsutil::{now_unix, scrub_remove, write_atomic, Reserve};
use crate::journal::{Journal, JournalError};
use crate::log::{error, info, warn};
use crate::mqtt::Topics;
use crate::state::{CommandState, Event};
use crate::store::AdapterStore;
use crate::updater::Updater;
use lethe_proto::{
    sign_receipt, DeviceContext, Receipt, ReplayState, SigningKey, TrustStore, Verdict,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The journal is compacted once it has grown by this much since the last compaction.
pub(super) const COMPACT_AFTER_BYTES: u64 = 128 << 10;
/// Size of the storage reserve (`state_dir/reserve`).
pub(super) const RESERVE_BYTES: usize = 64 << 10;

pub(super) struct Shared {
    pub(super) cfg: Config,
    pub(super) topics: Topics,
    pub(super) journal: Mutex<Journal>,
    pub(super) store: Mutex<AdapterStore>,
    /// Hash of the package's own adapter (the target of a revert to `original`).
    pub(super) original: String,
    /// The model's side: updates and self-checks (crate::updater).
    pub(super) engines: Mutex<Box<dyn Updater>>,
    pub(super) trust: TrustStore,
    pub(super) key: SigningKey,
    pub(super) device: DeviceContext,
    /// The replay state the journal's `accepted` records imply (memory follows the journal).
    pub(super) replay: Mutex<ReplayState>,
    pub(super) out: mpsc::UnboundedSender<Out>,
    pub(super) status: Mutex<Status>,
    /// Set at shutdown: the update stops at its next step boundary.
    pub(super) cancel: AtomicBool,
    /// `state_dir/commands`: the envelope of each command not yet settled, by its SHA-256.
    pub(super) commands_dir: PathBuf,
    /// What the command channel refused before storing anything (shared with the poll task).
    pub(super) channel: Arc<ChannelStats>,
    /// Space held for failure records when the disk fills up.
    pub(super) reserve: Reserve,
}

impl Shared {
    /// Decides command `st`: signs its receipt (`verdict`, model `before` -> `after`) and
    /// journals the terminal (or `deferred`) event `event(receipt)`, fsynced. Returns the terminal state;
    /// announcing it (event, receipt topic) is the caller's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conclude(
        &self,
        j: &mut Journal,
        st: &CommandState,
        verdict: Verdict,
        reason: Option<String>,
        (before, after): (&str, &str),
        metrics: BTreeMap<String, f64>,
        event: impl FnOnce(String) -> Event,
    ) -> Result<CommandState, AgentError> {
        let receipt = self.receipt(st, verdict, reason, before, after, metrics);
        let done = self.append(j, &st.env, event(receipt))?;
        self.settled(j, &done.env);
        Ok(done)
    }

    /// Appends `event` of command `env`; if the disk is full, releases the storage reserve
    /// and tries once more.
    pub(super) fn append(
        &self,
        j: &mut Journal,
        env: &str,
        event: Event,
    ) -> Result<CommandState, JournalError> {
        match j.append(env, event.clone()) {
            Err(e) if e.is_storage_full() && self.reserve.release() => {
                warn!("the state folder is full: released the storage reserve to record {event_name} of {env}", event_name = event.name());
                j.append(env, event).cloned()
            }
            r => r.cloned(),
        }
    }

    fn envelope_path(&self, env: &str) -> PathBuf {
        self.commands_dir.join(format!("{env}.env"))
    }

    /// Stores the envelope of a command about to be decided (atomic, durable).
    pub(super) fn store_envelope(&self, env: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.envelope_path(env), bytes)
    }

    /// The stored envelope of an unsettled command.
    pub(super) fn read_envelope(&self, env: &str) -> Result<Vec<u8>, AgentError> {
        let path = self.envelope_path(env);
        std::fs::read(&path).map_err(io(format!("reading {}", path.display())))
    }

    /// Command `env` is settled: scrub its envelope (the image goes with it), make the
    /// reserve again if it was used, and compact the journal if it has grown enough.
    /// Failures here are logged: the decision itself is already durable.
    fn settled(&self, j: &mut Journal, env: &str) {
        if let Err(e) = scrub_remove(&self.envelope_path(env)) {
            warn!("removing the envelope of {env}: {e} (removed at the next start)");
        }
        if let Err(e) = self.reserve.ensure() {
            warn!("storage reserve {}: {e}", self.reserve.path().display());
        }
        if j.grown() > COMPACT_AFTER_BYTES {
            if let Err(e) = self.compact(j) {
                warn!("compacting the journal: {e}");
            }
        }
    }

    /// Writes the replay floor, then compacts the journal to the unsettled commands and the
    /// `journal_keep` most recent settled ones.
    pub(super) fn compact(&self, j: &mut Journal) -> Result<(), AgentError> {
        let floor = self.replay.lock().unwrap().clone();
        let path = self.cfg.state_dir.join("replay.json");
        write_atomic(&path, &serde_json::to_vec(&floor).expect("json"))
            .map_err(io(format!("writing {}", path.display())))?;
        let c = j.compact(self.cfg.journal_keep)?;
        info!(
            "journal compacted: {} -> {} bytes, {} settled command(s) dropped (replay floor in replay.json)",
            c.before, c.after, c.dropped
        );
        Ok(())
    }

    /// Signs a receipt for `st` (hex of the envelope).
    fn receipt(
        &self,
        st: &CommandState,
        verdict: Verdict,
        reason: Option<String>,
        before: &str,
        after: &str,
        metrics: BTreeMap<String, f64>,
    ) -> String {
        let started = st.received_at / 1000;
        let mut reason = reason;
        if let Some(r) = reason.as_mut() {
            if r.len() > 500 {
                let mut cut = 500;
                while !r.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.truncate(cut);
            }
        }
        let provider = self.status.lock().unwrap().execution_provider.clone();
        let r = Receipt {
            v: 1,
            command_id: st.name(),
            device_id: self.cfg.device_id.clone(),
            verdict,
            reason,
            model_hash_before: before.to_string(),
            model_hash_after: after.to_string(),
            metrics,
            execution_provider: Some(provider),
            started_at: started,
            finished_at: now_unix().max(started),
            undone_forgets: st
                .undone
                .iter()
                .take(lethe_proto::receipt::MAX_UNDONE_FORGETS)
                .cloned()
                .collect(),
        };
        match sign_receipt(&r, &self.key) {
            Ok(b) => hex::encode(b),
            Err(e) => {
                error!("cannot sign receipt for {}: {e}", st.name());
                String::new()
            }
        }
    }
}
