//! What the agent's tasks share ([`Shared`]: configuration, journal, adapter store, updater,
//! identity, replay state, the outbox's sender, the status) and the one place a command is
//! concluded: [`Shared::conclude`] signs the receipt and journals the terminal event.
//!
//! Invariants: every receipt is signed and journaled (fsynced) here, before anyone publishes
//! it. Locks nest only in one order, `engines` -> `journal` -> `store` | `replay` | `status`
//! (`status` innermost: nothing is taken while it is held), so the tasks cannot deadlock.

use super::status::{Out, Status};
use super::AgentError;
use crate::config::Config;
use crate::fsutil::now_unix;
use crate::journal::Journal;
use crate::log::error;
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
use std::sync::Mutex;
use tokio::sync::mpsc;

pub(super) struct Shared {
    pub(super) cfg: Config,
    pub(super) topics: Topics,
    pub(super) journal: Mutex<Journal>,
    pub(super) store: Mutex<AdapterStore>,
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
    /// `state_dir/commands`: each command's envelope, named by its SHA-256.
    pub(super) commands_dir: PathBuf,
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
        Ok(j.append(&st.env, event(receipt))?.clone())
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
