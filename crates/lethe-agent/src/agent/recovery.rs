//! Recovery at start-up: what the agent rebuilds from its state directory before it takes
//! a new command. The replay state is derived from the journal's `accepted` records (plus an
//! optional seeded `replay.json`); the notes say what the journal and the store repaired;
//! every unfinished command is finished, restarted or failed (`state::recovery` is the plan,
//! this module carries it out), and the recent receipts are published again.
//!
//! Invariants: each command reaches exactly one terminal state, reported: a command only
//! `received` is verified again (deferred as `not-stored` if its envelope is missing: it
//! was never acknowledged, so the broker redelivers it), one in `accepted`..`verifying`
//! restarts from scratch on its recorded base version (at most 5 attempts, then it fails
//! "gave up"), one in `committing` is finished by moving the pointer to its complete new
//! version; the replay state is durable exactly when the acceptance is. After recovery the
//! state folder holds the envelopes of unsettled commands only (any other file in
//! `commands/`, such as the envelope of a command settled just before a crash, is scrubbed),
//! the storage reserve exists if there is room for it, and an oversized journal is
//! compacted.

use super::intake::{decide, Room};
use super::shared::{Shared, COMPACT_AFTER_BYTES};
use super::AgentError;
use crate::fsutil::scrub_remove;
use crate::journal::Journal;
use crate::log::{info, warn};
use crate::state::{recovery, short, CommandState, Event, Phase, Recovery};
use crate::store::AdapterStore;
use lethe_proto::{ReplayState, Verdict};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What start-up repaired, for the status's `notes` (each also logged as a warning).
pub(super) fn startup_notes(journal: &Journal, store: &AdapterStore) -> Vec<String> {
    let mut notes = Vec::new();
    if journal.repaired_tail {
        notes.push("journal: a torn last record was dropped at start-up".to_string());
    }
    if let Some(bad) = &store.recovered_from {
        notes.push(format!(
            "adapter store: version {} was corrupt; fell back to {}",
            short(bad),
            short(store.current_hash())
        ));
    }
    for n in &notes {
        warn!("{n}");
    }
    notes
}

/// The replay state: what the journal accepted, merged with an optional seeded
/// `state_dir/replay.json` (the higher sequence number of an issuer wins).
pub(super) fn replay_state(journal: &Journal, state_dir: &Path) -> Result<ReplayState, AgentError> {
    let mut per_issuer = journal.accepted_sequences();
    if let Ok(b) = std::fs::read(state_dir.join("replay.json")) {
        if let Ok(r) = serde_json::from_slice::<serde_json::Value>(&b) {
            if let Some(m) = r.get("per_issuer").and_then(|m| m.as_object()) {
                for (k, v) in m {
                    if let Some(q) = v.as_u64() {
                        let e = per_issuer.entry(k.clone()).or_insert(q);
                        *e = (*e).max(q);
                    }
                }
            }
        }
    }
    serde_json::from_value(serde_json::json!({ "per_issuer": per_issuer }))
        .map_err(|e| AgentError::Other(format!("replay state: {e}")))
}

/// Restarts, finishes or fails every unfinished command (start-up).
pub(super) async fn recover(
    sh: &Arc<Shared>,
    job_tx: &mpsc::Sender<String>,
) -> Result<(), AgentError> {
    let sh2 = sh.clone();
    let restarts = tokio::task::spawn_blocking(move || -> Result<Vec<String>, AgentError> {
        let sh = sh2;
        let mut j = sh.journal.lock().unwrap();
        let all: Vec<CommandState> = j.commands().cloned().collect();
        let mut restarts = Vec::new();
        let n = all.len();
        for (i, st) in all.into_iter().enumerate() {
            let plan = {
                let store = sh.store.lock().unwrap();
                recovery(&st, store.current_hash(), |h| store.has(h))
            };
            match plan {
                Recovery::Wait => {}
                Recovery::Done => {
                    // Receipts are retained: re-publish the recent ones in case the crash
                    // came before the broker had them.
                    if i + 32 >= n {
                        sh.publish_receipt(&st);
                    }
                }
                Recovery::Reverify => {
                    let Ok(bytes) = sh.read_envelope(&st.env) else {
                        let st = not_stored(&sh, &mut j, &st)?;
                        sh.publish_receipt(&st);
                        continue;
                    };
                    let room = if restarts.len() < sh.cfg.queue_capacity {
                        Room::Free
                    } else {
                        Room::QueueFull
                    };
                    let st = decide(&sh, &mut j, &st.env, &bytes, room)?;
                    info!("recovered {}: re-verified, {}", st.name(), st.phase.name());
                    if st.phase == Phase::Accepted {
                        restarts.push(st.env.clone());
                    } else {
                        sh.publish_receipt(&st);
                    }
                }
                Recovery::Restart { base } => {
                    if st.attempts >= 5 {
                        let why = format!(
                            "gave up after {} attempts (the agent kept dying during this update)",
                            st.attempts
                        );
                        let st = sh.conclude(
                            &mut j,
                            &st,
                            Verdict::Failed,
                            Some(why),
                            (&base, &base),
                            BTreeMap::new(),
                            |receipt| Event::Failed {
                                reason: "too many attempts".into(),
                                receipt,
                            },
                        )?;
                        sh.publish_receipt(&st);
                        continue;
                    }
                    info!(
                        "recovered {}: was {}, restarting from {} (attempt {})",
                        st.name(),
                        st.phase.name(),
                        short(&base),
                        st.attempts + 1
                    );
                    j.append(
                        &st.env,
                        Event::Restarted {
                            attempt: st.attempts + 1,
                        },
                    )?;
                    sh.event(
                        &st.name(),
                        "restarted",
                        serde_json::json!({"attempt": st.attempts + 1}),
                    );
                    restarts.push(st.env.clone());
                }
                Recovery::CompleteCommit { new_hash } | Recovery::FinishCommitted { new_hash } => {
                    sh.store.lock().unwrap().commit(&new_hash)?;
                    let base = st.base_hash.clone().unwrap_or_default();
                    let st = sh.conclude(
                        &mut j,
                        &st,
                        Verdict::Committed,
                        None,
                        (&base, &new_hash),
                        st.metrics.clone(),
                        |receipt| Event::Committed {
                            new_hash: new_hash.clone(),
                            receipt,
                        },
                    )?;
                    info!(
                        "recovered {}: commit of {} finished",
                        st.name(),
                        short(&new_hash)
                    );
                    sh.event(
                        &st.name(),
                        "committed",
                        serde_json::json!({"model_hash": new_hash, "recovered": true}),
                    );
                    sh.publish_receipt(&st);
                }
                Recovery::Fail { reason } => {
                    let cur = sh.store.lock().unwrap().current_hash().to_string();
                    let st = sh.conclude(
                        &mut j,
                        &st,
                        Verdict::Failed,
                        Some(reason.clone()),
                        (&cur, &cur),
                        BTreeMap::new(),
                        |receipt| Event::Failed { reason, receipt },
                    )?;
                    sh.publish_receipt(&st);
                }
            }
        }
        sweep_commands(&sh, &j);
        if let Err(e) = sh.reserve.ensure() {
            warn!("storage reserve {}: {e}", sh.reserve.path().display());
        }
        if j.grown() > COMPACT_AFTER_BYTES {
            sh.compact(&mut j)?;
        }
        Ok(restarts)
    })
    .await
    .map_err(|e| AgentError::Other(e.to_string()))??;
    for env in restarts {
        let _ = job_tx.send(env).await;
    }
    Ok(())
}

/// A `received` command whose envelope is not in the state folder (the disk was full when
/// it came, and the agent stopped before deciding): deferred, so that the broker's
/// redelivery (it was never acknowledged) or a resend is decided afresh.
fn not_stored(sh: &Shared, j: &mut Journal, st: &CommandState) -> Result<CommandState, AgentError> {
    let cur = sh.store.lock().unwrap().current_hash().to_string();
    let reason = "its envelope was not stored before the agent stopped; it is decided when \
                  it comes again"
        .to_string();
    warn!("recovered {}: {reason}", st.name());
    let id = st.name();
    sh.conclude(
        j,
        st,
        Verdict::Rejected,
        Some(format!("not-stored: {reason}")),
        (&cur, &cur),
        BTreeMap::new(),
        |receipt| Event::Deferred {
            id,
            code: "not-stored".into(),
            reason,
            receipt,
        },
    )
}

/// Scrubs every file in `commands/` that is not the envelope of an unsettled command: the
/// envelope of a command settled just before a crash, a temp file of an interrupted write.
fn sweep_commands(sh: &Shared, j: &Journal) {
    let Ok(dir) = std::fs::read_dir(&sh.commands_dir) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let live = name
            .strip_suffix(".env")
            .and_then(|env| j.get(env))
            .is_some_and(|st| !st.phase.is_settled());
        if !live {
            match scrub_remove(&e.path()) {
                Ok(()) => info!("start-up: removed {name} from the state folder (settled)"),
                Err(err) => warn!("start-up: removing {name}: {err}"),
            }
        }
    }
}
