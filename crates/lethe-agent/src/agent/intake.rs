//! Intake and decision: a delivered command is stored, verified (signature, trust, target,
//! model, expiry, known id, replay, queue room) and its decision journaled; only then is it
//! acknowledged to the broker and, if accepted, queued for the worker.
//!
//! Invariants: the envelope is stored and its `received` record fsynced before anything is
//! decided; the PUBACK of a delivery is sent only after its `accepted`, `rejected` or
//! `deferred` record is fsynced (an intake that fails is not acknowledged, so the broker
//! redelivers it); the same envelope again is a duplicate, never decided twice, unless it
//! was only `deferred` (busy), which is decided again; the in-memory replay state advances
//! only after the `accepted` record that persists it; no unverified byte reaches the worker.

use super::shared::Shared;
use super::status::Out;
use super::{io, AgentError};
use crate::fsutil::{now_unix, sha256_hex, write_atomic};
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

/// Takes one delivery from the broker: decides it on a blocking thread (fsyncs), then
/// acknowledges it and announces the decision; an accepted command goes to the worker's
/// queue, into the slot reserved before deciding (no slot: it is deferred as busy).
pub(super) async fn on_command(sh: &Arc<Shared>, job_tx: &mpsc::Sender<String>, p: Publish) {
    let permit = job_tx.clone().try_reserve_owned().ok();
    let sh2 = sh.clone();
    let slot = permit.is_some();
    let payload = p.payload.to_vec();
    let res = tokio::task::spawn_blocking(move || intake(&sh2, &payload, slot)).await;
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

/// Verifies a delivery and journals the decision (blocking: fsyncs).
fn intake(sh: &Shared, bytes: &[u8], slot: bool) -> Result<Intake, AgentError> {
    let env = sha256_hex(bytes);
    let mut j = sh.journal.lock().unwrap();
    match j.get(&env) {
        // Deferred (busy) before: nothing was applied, decide again.
        Some(st) if st.phase == Phase::Deferred => {}
        Some(st) => return Ok(Intake::Duplicate(st.clone())),
        None => {
            let path = sh.commands_dir.join(format!("{env}.env"));
            write_atomic(&path, bytes).map_err(io(format!("storing {}", path.display())))?;
            j.append(&env, Event::Received)?;
        }
    }
    let st = decide(sh, &mut j, &env, bytes, slot)?;
    Ok(Intake::Decided(st))
}

/// Verifies the stored envelope of a `received` command and journals accepted or rejected.
pub(super) fn decide(
    sh: &Shared,
    j: &mut Journal,
    env: &str,
    bytes: &[u8],
    slot: bool,
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
                match replay.check(cmd.issuer.as_str(), cmd.seq) {
                    Err(r) => Err((r.code().to_string(), r.to_string(), None)),
                    Ok(_) if !slot => Err((
                        "busy".to_string(),
                        format!(
                            "an update is running and {} more are queued; send the same \
                             command again later",
                            sh.cfg.queue_capacity
                        ),
                        Some(cmd.id.as_str().to_string()),
                    )),
                    Ok(next) => Ok((cmd, next)),
                }
            }
        }
    };
    match verdict {
        Ok((cmd, next)) => {
            let Action::Forget(f) = &cmd.action;
            let st = j.append(
                env,
                Event::Accepted {
                    id: cmd.id.as_str().to_string(),
                    issuer: cmd.issuer.as_str().to_string(),
                    seq: cmd.seq,
                    base_hash: current,
                    concept: f.concept.as_str().to_string(),
                },
            )?;
            // Persisted by the journal record above; only now does memory follow.
            *sh.replay.lock().unwrap() = next;
            Ok(st.clone())
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
