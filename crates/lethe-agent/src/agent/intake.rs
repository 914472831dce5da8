//! Intake and decision: a delivered command, already authenticated by the poll task (its
//! signatures are by trusted keys), is stored, verified in full (trust, target, model,
//! expiry, known id, replay, queue and storage room) and its decision journaled; only then
//! is it acknowledged to the broker and, if accepted, queued for the worker.
//!
//! Invariants: no unauthenticated byte gets here (the poll task drops it), so none is
//! written to disk; the envelope is stored and its `received` record fsynced before anything
//! is decided; the PUBACK of a delivery is sent only after its `accepted`, `rejected` or
//! `deferred` record is fsynced (an intake that fails is not acknowledged, so the broker
//! redelivers it); the same envelope again is a duplicate, never decided twice, unless it
//! was only `deferred` (busy, or no room to store it), which is decided again; the in-memory
//! replay state advances only after the `accepted` record that persists it; no unverified
//! byte reaches the worker; the envelope of a command that is not accepted is scrubbed as
//! soon as its decision is journaled (`Shared::conclude`).

use super::shared::Shared;
use super::status::Out;
use super::{io, AgentError};
use crate::fsutil::{is_storage_full, now_unix, sha256_hex};
use crate::journal::Journal;
use crate::log::{info, warn};
use crate::state::{CommandState, Event, Phase};
use lethe_proto::{verify_command, Action, ReplayState, Verdict};
use rumqttc::Publish;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Outcome of verifying and journaling one delivery.
enum Intake {
    Duplicate(CommandState),
    Decided(CommandState),
}

/// Whether a valid command can be taken now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    Free,
    /// An update is running and the queue is full: deferred as `busy`.
    QueueFull,
    /// Its envelope could not be stored, the disk is full: deferred as `no-space`.
    StorageFull,
}

/// Takes one delivery from the broker: decides it on a blocking thread (fsyncs), then
/// acknowledges it and announces the decision; an accepted command goes to the worker's
/// queue, into the slot reserved before deciding (no slot: it is deferred as busy).
pub(super) async fn on_command(sh: &Arc<Shared>, job_tx: &mpsc::Sender<String>, p: Publish) {
    let permit = job_tx.clone().try_reserve_owned().ok();
    let sh2 = sh.clone();
    let room = if permit.is_some() {
        Room::Free
    } else {
        Room::QueueFull
    };
    let payload = p.payload.to_vec();
    let res = tokio::task::spawn_blocking(move || intake(&sh2, &payload, room)).await;
    match res {
        Ok(Ok(Intake::Duplicate(st))) => {
            info!(
                "duplicate delivery of {} ({}): not applied again",
                st.name(),
                st.phase.name()
            );
            let _ = sh.out.send(Out::Ack(p));
            sh.event(
                &st.name(),
                "duplicate",
                serde_json::json!({"phase": st.phase.name()}),
            );
            sh.publish_receipt(&st);
        }
        Ok(Ok(Intake::Decided(st))) => {
            let _ = sh.out.send(Out::Ack(p));
            if st.phase == Phase::Accepted {
                match &st.revert_to {
                    Some(to) => {
                        info!("accepted {} (revert to {to})", st.name());
                        sh.event(&st.name(), "accepted", serde_json::json!({"revert_to": to}));
                    }
                    None => {
                        info!(
                            "accepted {} (concept {:?})",
                            st.name(),
                            st.concept.as_deref().unwrap_or("")
                        );
                        sh.event(
                            &st.name(),
                            "accepted",
                            serde_json::json!({"concept": st.concept}),
                        );
                    }
                }
                if let Some(permit) = permit {
                    permit.send(st.env.clone());
                }
            } else {
                let what = st.phase.name();
                let reason = st.reason.as_deref().unwrap_or("");
                if st.phase == Phase::Deferred {
                    info!("{what} {}: {reason}", st.name());
                } else {
                    warn!("{what} {}: {reason}", st.name());
                }
                sh.event(&st.name(), what, serde_json::json!({"reason": st.reason}));
                sh.publish_receipt(&st);
            }
            sh.publish_status();
        }
        // Not journaled: not acknowledged, the broker will redeliver it.
        Ok(Err(e)) => warn!("intake failed (not acknowledged): {e}"),
        Err(e) => warn!("intake task: {e}"),
    }
}

/// Stores an authenticated delivery, verifies it and journals the decision (blocking:
/// fsyncs).
fn intake(sh: &Shared, bytes: &[u8], room: Room) -> Result<Intake, AgentError> {
    let env = sha256_hex(bytes);
    let mut j = sh.journal.lock().unwrap();
    let known = j.get(&env).cloned();
    match &known {
        // Deferred before: nothing was applied and its envelope was scrubbed; decide again.
        Some(st) if st.phase == Phase::Deferred => {}
        Some(st) => return Ok(Intake::Duplicate(st.clone())),
        None => {}
    }
    let room = match sh.store_envelope(&env, bytes) {
        Ok(()) => room,
        Err(e) if is_storage_full(&e) => Room::StorageFull,
        Err(e) => return Err(io(format!("storing the envelope of {env}"))(e)),
    };
    if known.is_none() {
        sh.append(&mut j, &env, Event::Received)?;
    }
    let st = decide(sh, &mut j, &env, bytes, room)?;
    Ok(Intake::Decided(st))
}

/// Verifies the stored envelope of a `received` command and journals accepted, rejected or
/// deferred (no `room`).
pub(super) fn decide(
    sh: &Shared,
    j: &mut Journal,
    env: &str,
    bytes: &[u8],
    room: Room,
) -> Result<CommandState, AgentError> {
    let now = now_unix();
    let current = sh.store.lock().unwrap().current_hash().to_string();
    // Everything but replay first, so that a resend of a known id is recognised as such.
    let verdict = match verify_command(bytes, &sh.trust, &sh.device, &ReplayState::new(), now) {
        Err(r) => Err((r.code().to_string(), r.to_string(), None)),
        Ok((cmd, _)) => {
            if let Some(known) = j.by_id(cmd.id.as_str()).filter(|k| k.env != env) {
                Err((
                    "duplicate-id".to_string(),
                    format!(
                        "command {} is already known ({}); not applied again",
                        cmd.id.as_str(),
                        known.phase.name()
                    ),
                    None,
                ))
            } else {
                let replay = sh.replay.lock().unwrap().clone();
                let id = Some(cmd.id.as_str().to_string());
                match replay.check(cmd.issuer.as_str(), cmd.seq) {
                    Err(r) => Err((r.code().to_string(), r.to_string(), None)),
                    Ok(_) if room == Room::QueueFull => Err((
                        "busy".to_string(),
                        format!(
                            "an update is running and {} more are queued; send the same \
                             command again later",
                            sh.cfg.queue_capacity
                        ),
                        id,
                    )),
                    Ok(_) if room == Room::StorageFull => Err((
                        "no-space".to_string(),
                        "the device's storage is full, nothing of this command was kept; \
                         send the same command again once there is room"
                            .to_string(),
                        id,
                    )),
                    Ok(next) => match &cmd.action {
                        // A revert that cannot go ahead now is refused at once.
                        Action::Revert(r) => {
                            let store = sh.store.lock().unwrap();
                            match crate::revert::plan(&store, &sh.original, r) {
                                Ok(_) => Ok((cmd, next)),
                                Err(no) => Err((no.code.to_string(), no.reason, None)),
                            }
                        }
                        Action::Forget(_) => Ok((cmd, next)),
                    },
                }
            }
        }
    };
    match verdict {
        Ok((cmd, next)) => {
            let (concept, revert_to) = match &cmd.action {
                Action::Forget(f) => (f.concept.as_str().to_string(), None),
                Action::Revert(r) => (String::new(), Some(r.to.to_string())),
            };
            let st = sh.append(
                j,
                env,
                Event::Accepted {
                    id: cmd.id.as_str().to_string(),
                    issuer: cmd.issuer.as_str().to_string(),
                    seq: cmd.seq,
                    base_hash: current,
                    concept,
                    revert_to,
                },
            )?;
            // Persisted by the journal record above; only now does memory follow.
            *sh.replay.lock().unwrap() = next;
            Ok(st)
        }
        Err((code, reason, busy_id)) => {
            let mut st = j.get(env).expect("received").clone();
            if busy_id.is_some() {
                st.id = busy_id.clone();
            }
            let said = format!("{code}: {reason}");
            sh.conclude(
                j,
                &st,
                Verdict::Rejected,
                Some(said),
                (&current, &current),
                BTreeMap::new(),
                |receipt| match busy_id {
                    Some(id) => Event::Deferred {
                        id,
                        code,
                        reason,
                        receipt,
                    },
                    None => Event::Rejected {
                        code,
                        reason,
                        receipt,
                    },
                },
            )
        }
    }
}
