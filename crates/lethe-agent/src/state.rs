//! The command lifecycle as data: journal events, the per-command state they fold into, and
//! the pure functions that decide what is allowed and what to do after a restart.
//!
//! ```text
//! received -> rejected
//!          -> deferred (busy) -> (resent) rejected | accepted | deferred
//!          -> accepted -> preparing -> training(k/n)* -> verifying
//!                      -> committing -> committed
//!                      -> rolled_back | failed
//! ```
//!
//! No I/O here: [`apply`] folds one event into a state or refuses an illegal transition,
//! [`recovery`] says what a restarted agent must do with a command it finds unfinished.
//! Invariant: a terminal state (rejected, committed, rolled_back, failed) never changes, so
//! a command is applied at most once whatever is redelivered or replayed. `deferred` (the
//! queue was full) is not terminal: nothing was applied and the sequence number was not
//! consumed, so a resend of the same envelope is decided again.

use lethe_proto::UndoneForget;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One journal event. Serialised with a `state` tag, one JSON object per journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Event {
    /// The envelope arrived and is stored under `commands/<env>.env`.
    Received,
    /// Refused (a rejection code from lethe-proto, or `busy`); model untouched.
    Rejected {
        code: String,
        reason: String,
        receipt: String,
    },
    /// Valid, but not taken now: the queue was full (`busy`), or the disk (`no-space`): not
    /// applied, sequence not consumed. A resend of the same envelope is decided again.
    Deferred {
        id: String,
        /// `busy` (also what records written before the field existed mean) or `no-space`.
        #[serde(default = "busy")]
        code: String,
        reason: String,
        receipt: String,
    },
    /// Verified; the replay state now includes `issuer`/`seq`. `base_hash` is the adapter the
    /// update starts from (a restart starts from it again).
    Accepted {
        id: String,
        issuer: String,
        seq: u64,
        base_hash: String,
        /// A forget's concept (empty for a revert).
        concept: String,
        /// A revert's target (`original`, a hash, `before:<id>`); absent for a forget.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revert_to: Option<String>,
    },
    /// A restart after a crash: the job runs again from `base_hash`.
    Restarted {
        attempt: u32,
    },
    /// The current adapter moved while the command waited in the queue (a command accepted
    /// before it committed): the job starts from `base_hash`, the adapter current when it
    /// starts, so it builds on every commit before it instead of discarding them.
    Rebased {
        base_hash: String,
    },
    Preparing,
    Training {
        step: usize,
        of: usize,
        loss: f32,
    },
    Verifying,
    /// Verification found only that the candidate brings back an earlier forget, and the
    /// update runs once more (`update.retry_earlier`): back to training, then verifying.
    Retrying,
    /// Verification passed; the store is about to move `current` to `new_hash`. A revert
    /// names the forgets it undoes (`undone.json` already records them).
    Committing {
        new_hash: String,
        metrics: BTreeMap<String, f64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        undone: Vec<UndoneForget>,
    },
    Committed {
        new_hash: String,
        receipt: String,
    },
    RolledBack {
        reason: String,
        receipt: String,
    },
    Failed {
        reason: String,
        receipt: String,
    },
    /// A command's whole state in one record: what journal compaction writes in place of
    /// the records that led to it. Only ever the first record of a command.
    Snapshot {
        of: Box<CommandState>,
    },
}

fn busy() -> String {
    "busy".into()
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Received => "received",
            Event::Rejected { .. } => "rejected",
            Event::Deferred { .. } => "deferred",
            Event::Accepted { .. } => "accepted",
            Event::Restarted { .. } => "restarted",
            Event::Rebased { .. } => "rebased",
            Event::Preparing => "preparing",
            Event::Training { .. } => "training",
            Event::Verifying => "verifying",
            Event::Retrying => "retrying",
            Event::Committing { .. } => "committing",
            Event::Committed { .. } => "committed",
            Event::RolledBack { .. } => "rolled_back",
            Event::Failed { .. } => "failed",
            Event::Snapshot { .. } => "snapshot",
        }
    }
}

/// Where a command is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Received,
    Rejected,
    Deferred,
    Accepted,
    Preparing,
    Training,
    Verifying,
    Committing,
    Committed,
    RolledBack,
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Rejected | Phase::Committed | Phase::RolledBack | Phase::Failed
        )
    }

    /// Nothing is running or owed for it: terminal, or deferred (waiting for a resend that
    /// is decided afresh). A settled command may be compacted out of the journal.
    pub fn is_settled(self) -> bool {
        self.is_terminal() || self == Phase::Deferred
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Received => "received",
            Phase::Rejected => "rejected",
            Phase::Deferred => "deferred",
            Phase::Accepted => "accepted",
            Phase::Preparing => "preparing",
            Phase::Training => "training",
            Phase::Verifying => "verifying",
            Phase::Committing => "committing",
            Phase::Committed => "committed",
            Phase::RolledBack => "rolled_back",
            Phase::Failed => "failed",
        }
    }
}

/// Everything the journal knows about one command (keyed by the envelope's SHA-256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandState {
    pub env: String,
    /// The verified command id; `None` until accepted (a rejected command is named
    /// `env-<hash prefix>`: an unverified id is never used as a topic name).
    pub id: Option<String>,
    pub phase: Phase,
    pub issuer: Option<String>,
    pub seq: Option<u64>,
    pub concept: Option<String>,
    /// A revert's target; `None` for a forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_to: Option<String>,
    pub base_hash: Option<String>,
    pub new_hash: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    /// The forgets a revert undoes (from its `committing` record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undone: Vec<UndoneForget>,
    pub step: Option<(usize, usize)>,
    pub reason: Option<String>,
    /// Hex of the signed receipt, once terminal.
    pub receipt: Option<String>,
    pub attempts: u32,
    pub received_at: u64,
}

impl CommandState {
    /// The name used in topics and receipts.
    pub fn name(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("env-{}", &self.env[..16.min(self.env.len())]))
    }
}

/// An event that the state machine does not allow in the current phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition for {env}: {event} in phase {from}")]
pub struct IllegalTransition {
    pub env: String,
    pub from: &'static str,
    pub event: &'static str,
}

/// Folds `event` into the state of command `env` (None = not seen yet).
pub fn apply(
    prev: Option<&CommandState>,
    env: &str,
    t: u64,
    event: &Event,
) -> Result<CommandState, IllegalTransition> {
    let illegal = |from: &'static str| IllegalTransition {
        env: env.to_string(),
        from,
        event: event.name(),
    };
    let Some(prev) = prev else {
        return match event {
            Event::Snapshot { of } if of.env == env => Ok((**of).clone()),
            Event::Received => Ok(CommandState {
                env: env.to_string(),
                id: None,
                phase: Phase::Received,
                issuer: None,
                seq: None,
                concept: None,
                revert_to: None,
                base_hash: None,
                new_hash: None,
                metrics: BTreeMap::new(),
                undone: Vec::new(),
                step: None,
                reason: None,
                receipt: None,
                attempts: 0,
                received_at: t,
            }),
            _ => Err(illegal("(none)")),
        };
    };
    let from = prev.phase;
    if from.is_terminal() {
        return Err(illegal(from.name()));
    }
    let mut s = prev.clone();
    use Phase as P;
    match (from, event) {
        (
            P::Received | P::Deferred,
            Event::Rejected {
                code,
                reason,
                receipt,
            },
        ) => {
            s.phase = P::Rejected;
            s.reason = Some(format!("{code}: {reason}"));
            s.receipt = Some(receipt.clone());
        }
        (
            P::Received | P::Deferred,
            Event::Deferred {
                id,
                code,
                reason,
                receipt,
            },
        ) => {
            s.phase = P::Deferred;
            s.id = Some(id.clone());
            s.reason = Some(format!("{code}: {reason}"));
            s.receipt = Some(receipt.clone());
        }
        (
            P::Received | P::Deferred,
            Event::Accepted {
                id,
                issuer,
                seq,
                base_hash,
                concept,
                revert_to,
            },
        ) => {
            s.phase = P::Accepted;
            s.id = Some(id.clone());
            s.issuer = Some(issuer.clone());
            s.seq = Some(*seq);
            s.base_hash = Some(base_hash.clone());
            s.concept = Some(concept.clone());
            s.revert_to = revert_to.clone();
            s.attempts = 1;
        }
        (
            P::Accepted | P::Preparing | P::Training | P::Verifying | P::Committing,
            Event::Restarted { attempt },
        ) => {
            s.phase = P::Accepted;
            s.attempts = *attempt;
            s.step = None;
            s.new_hash = None;
            s.undone.clear();
        }
        (P::Accepted, Event::Rebased { base_hash }) => s.base_hash = Some(base_hash.clone()),
        (P::Accepted, Event::Preparing) => s.phase = P::Preparing,
        (P::Preparing | P::Training, Event::Training { step, of, .. }) => {
            s.phase = P::Training;
            s.step = Some((*step, *of));
        }
        (P::Preparing | P::Training, Event::Verifying) => s.phase = P::Verifying,
        (P::Verifying, Event::Retrying) => {
            s.phase = P::Training;
            s.step = None;
        }
        (
            P::Verifying,
            Event::Committing {
                new_hash,
                metrics,
                undone,
            },
        ) => {
            s.phase = P::Committing;
            s.new_hash = Some(new_hash.clone());
            s.metrics = metrics.clone();
            s.undone = undone.clone();
        }
        (P::Committing, Event::Committed { new_hash, receipt }) => {
            s.phase = P::Committed;
            s.new_hash = Some(new_hash.clone());
            s.receipt = Some(receipt.clone());
        }
        (P::Verifying, Event::RolledBack { reason, receipt }) => {
            s.phase = P::RolledBack;
            s.reason = Some(reason.clone());
            s.receipt = Some(receipt.clone());
        }
        (
            P::Accepted | P::Preparing | P::Training | P::Verifying | P::Committing,
            Event::Failed { reason, receipt },
        ) => {
            s.phase = P::Failed;
            s.reason = Some(reason.clone());
            s.receipt = Some(receipt.clone());
        }
        _ => return Err(illegal(from.name())),
    }
    Ok(s)
}

/// What a restarted agent does with a command it finds in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Terminal: nothing to do but re-publish its receipt.
    Done,
    /// Deferred (busy): nothing to do until the operator resends it.
    Wait,
    /// Only `received`: verify the stored envelope again.
    Reverify,
    /// Run the update again from `base` (the store still holds it as current).
    Restart { base: String },
    /// The store already moved `current` to `new_hash`: record `committed`.
    FinishCommitted { new_hash: String },
    /// The new version file is in the store but `current` was not moved: move it, then
    /// record `committed`.
    CompleteCommit { new_hash: String },
    /// The store is at neither the base nor the new version: fail, report why.
    Fail { reason: String },
}

/// Decides the recovery of `st` given the store's current hash and whether the store holds
/// a valid version file of a given hash.
pub fn recovery(st: &CommandState, current: &str, store_has: impl Fn(&str) -> bool) -> Recovery {
    if st.phase.is_terminal() {
        return Recovery::Done;
    }
    if st.phase == Phase::Deferred {
        return Recovery::Wait;
    }
    if st.phase == Phase::Received {
        return Recovery::Reverify;
    }
    let base = st.base_hash.clone().unwrap_or_default();
    if st.phase == Phase::Committing {
        if let Some(new) = &st.new_hash {
            if new == current {
                return Recovery::FinishCommitted {
                    new_hash: new.clone(),
                };
            }
            if current == base && store_has(new) {
                return Recovery::CompleteCommit {
                    new_hash: new.clone(),
                };
            }
        }
    }
    if current == base {
        Recovery::Restart { base }
    } else {
        Recovery::Fail {
            reason: format!(
                "the model changed under the command (base {}, now {})",
                short(&base),
                short(current)
            ),
        }
    }
}

/// First 12 hex digits of a hash, for messages.
pub fn short(h: &str) -> &str {
    &h[..12.min(h.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> Event {
        Event::Accepted {
            id: "op-1".into(),
            issuer: "op".into(),
            seq: 1,
            base_hash: "base".into(),
            concept: "anna adler".into(),
            revert_to: None,
        }
    }

    fn run(events: &[Event]) -> Result<CommandState, IllegalTransition> {
        let mut s: Option<CommandState> = None;
        for e in events {
            s = Some(apply(s.as_ref(), "e1", 0, e)?);
        }
        Ok(s.unwrap())
    }

    #[test]
    fn a_deferred_record_from_before_codes_existed_reads_as_busy() {
        let old: Event = serde_json::from_str(
            r#"{"state":"deferred","id":"op-1","reason":"queue full","receipt":"ab"}"#,
        )
        .unwrap();
        let Event::Deferred { code, .. } = old else {
            panic!("{old:?}")
        };
        assert_eq!(code, "busy");
    }

    #[test]
    fn a_full_forget_folds_into_committed() {
        let s = run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Training {
                step: 1,
                of: 2,
                loss: 1.0,
            },
            Event::Training {
                step: 2,
                of: 2,
                loss: 0.5,
            },
            Event::Verifying,
            Event::Committing {
                new_hash: "new".into(),
                metrics: BTreeMap::new(),
                undone: vec![],
            },
            Event::Committed {
                new_hash: "new".into(),
                receipt: "r".into(),
            },
        ])
        .unwrap();
        assert_eq!(s.phase, Phase::Committed);
        assert_eq!(s.name(), "op-1");
        assert_eq!(s.new_hash.as_deref(), Some("new"));
    }

    #[test]
    fn a_rebase_moves_the_base_of_a_waiting_command_and_nothing_later() {
        let rebased = Event::Rebased {
            base_hash: "moved".into(),
        };
        let s = run(&[Event::Received, accepted(), rebased.clone()]).unwrap();
        assert_eq!(
            (s.phase, s.base_hash.as_deref()),
            (Phase::Accepted, Some("moved"))
        );
        let back = serde_json::to_string(&rebased).unwrap();
        assert_eq!(back, r#"{"state":"rebased","base_hash":"moved"}"#);
        // Once the job runs, its base is fixed; before acceptance there is none to move.
        assert!(run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            rebased.clone()
        ])
        .is_err());
        assert!(run(&[Event::Received, rebased]).is_err());
    }

    #[test]
    fn a_terminal_command_never_changes_again() {
        let done = [
            Event::Received,
            Event::Rejected {
                code: "expired".into(),
                reason: "x".into(),
                receipt: "r".into(),
            },
        ];
        for e in [
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Restarted { attempt: 2 },
        ] {
            let mut evs = done.to_vec();
            evs.push(e);
            assert!(run(&evs).is_err());
        }
    }

    #[test]
    fn steps_cannot_be_skipped() {
        assert!(run(&[Event::Received, Event::Preparing]).is_err());
        assert!(run(&[Event::Received, accepted(), Event::Verifying]).is_err());
        assert!(run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Committing {
                new_hash: "n".into(),
                metrics: BTreeMap::new(),
                undone: vec![],
            }
        ])
        .is_err());
        assert!(run(&[accepted()]).is_err());
    }

    #[test]
    fn a_rejected_command_is_named_by_its_envelope_not_its_unverified_id() {
        let s = apply(None, "0123456789abcdef0123", 0, &Event::Received).unwrap();
        assert_eq!(s.name(), "env-0123456789abcdef");
    }

    #[test]
    fn recovery_restarts_unfinished_work_from_the_recorded_base() {
        let s = run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Training {
                step: 1,
                of: 4,
                loss: 1.0,
            },
        ])
        .unwrap();
        assert_eq!(
            recovery(&s, "base", |_| false),
            Recovery::Restart {
                base: "base".into()
            }
        );
        assert!(matches!(
            recovery(&s, "other", |_| false),
            Recovery::Fail { .. }
        ));
    }

    #[test]
    fn recovery_finishes_a_commit_the_store_already_made() {
        let s = run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Verifying,
            Event::Committing {
                new_hash: "new".into(),
                metrics: BTreeMap::new(),
                undone: vec![],
            },
        ])
        .unwrap();
        assert_eq!(
            recovery(&s, "new", |_| true),
            Recovery::FinishCommitted {
                new_hash: "new".into()
            }
        );
        assert_eq!(
            recovery(&s, "base", |h| h == "new"),
            Recovery::CompleteCommit {
                new_hash: "new".into()
            }
        );
        assert_eq!(
            recovery(&s, "base", |_| false),
            Recovery::Restart {
                base: "base".into()
            }
        );
    }

    #[test]
    fn recovery_reverifies_a_command_only_received_and_leaves_terminal_ones() {
        let s = run(&[Event::Received]).unwrap();
        assert_eq!(recovery(&s, "x", |_| false), Recovery::Reverify);
        let s = run(&[
            Event::Received,
            accepted(),
            Event::Failed {
                reason: "r".into(),
                receipt: "x".into(),
            },
        ])
        .unwrap();
        assert_eq!(recovery(&s, "x", |_| false), Recovery::Done);
    }

    /// One event of every kind, in lifecycle order.
    fn one_of_each_event() -> Vec<Event> {
        vec![
            Event::Received,
            Event::Rejected {
                code: "c".into(),
                reason: "r".into(),
                receipt: "x".into(),
            },
            Event::Deferred {
                id: "i".into(),
                code: "busy".into(),
                reason: "r".into(),
                receipt: "x".into(),
            },
            accepted(),
            Event::Restarted { attempt: 2 },
            Event::Preparing,
            Event::Training {
                step: 1,
                of: 2,
                loss: 0.5,
            },
            Event::Verifying,
            Event::Committing {
                new_hash: "n".into(),
                metrics: BTreeMap::new(),
                undone: vec![],
            },
            Event::Committed {
                new_hash: "n".into(),
                receipt: "x".into(),
            },
            Event::RolledBack {
                reason: "r".into(),
                receipt: "x".into(),
            },
            Event::Failed {
                reason: "r".into(),
                receipt: "x".into(),
            },
        ]
    }

    #[test]
    fn every_event_is_named_by_its_journal_tag_and_every_phase_by_its_serialised_name() {
        for e in one_of_each_event() {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["state"], e.name(), "{e:?}");
        }
        use Phase as P;
        let phases = [
            P::Received,
            P::Rejected,
            P::Deferred,
            P::Accepted,
            P::Preparing,
            P::Training,
            P::Verifying,
            P::Committing,
            P::Committed,
            P::RolledBack,
            P::Failed,
        ];
        for p in phases {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name(), "{p:?}");
        }
        let terminal: Vec<_> = phases.iter().filter(|p| p.is_terminal()).collect();
        assert_eq!(
            terminal,
            [&P::Rejected, &P::Committed, &P::RolledBack, &P::Failed]
        );
    }

    #[test]
    fn an_illegal_transition_names_the_command_the_event_and_the_phase() {
        let err = run(&[Event::Received, Event::Verifying]).unwrap_err();
        assert_eq!(
            err,
            IllegalTransition {
                env: "e1".into(),
                from: "received",
                event: "verifying",
            }
        );
        assert_eq!(
            err.to_string(),
            "illegal transition for e1: verifying in phase received"
        );
        let err = run(&[Event::Preparing]).unwrap_err();
        assert_eq!((err.from, err.event), ("(none)", "preparing"));
    }

    #[test]
    fn a_retry_goes_from_verifying_back_to_training_and_only_from_there() {
        let training = || Event::Training {
            step: 1,
            of: 8,
            loss: 1.0,
        };
        let s = run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            training(),
            Event::Verifying,
            Event::Retrying,
            training(),
            Event::Verifying,
            // A job may be retried more than once (update.retry_reseeds).
            Event::Retrying,
            training(),
            Event::Verifying,
        ])
        .unwrap();
        assert_eq!(s.phase, Phase::Verifying);
        let err = run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Retrying,
        ])
        .unwrap_err();
        assert_eq!((err.from, err.event), ("preparing", "retrying"));
    }

    #[test]
    fn a_restart_goes_back_to_accepted_with_its_attempt_and_forgets_the_candidate() {
        let s = run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Training {
                step: 3,
                of: 8,
                loss: 1.0,
            },
            Event::Verifying,
            Event::Committing {
                new_hash: "new".into(),
                metrics: BTreeMap::new(),
                undone: vec![],
            },
            Event::Restarted { attempt: 2 },
        ])
        .unwrap();
        assert_eq!(s.phase, Phase::Accepted);
        assert_eq!(s.attempts, 2);
        assert_eq!((s.step, s.new_hash.as_deref()), (None, None));
        assert_eq!(s.base_hash.as_deref(), Some("base"), "the base is kept");
        // From accepted the job runs again.
        let s = apply(Some(&s), "e1", 0, &Event::Preparing).unwrap();
        assert_eq!(s.phase, Phase::Preparing);
    }

    #[test]
    fn a_failed_verification_rolls_back_with_its_reason_and_receipt() {
        let s = run(&[
            Event::Received,
            accepted(),
            Event::Preparing,
            Event::Verifying,
            Event::RolledBack {
                reason: "efficacy 0.2 < 0.9".into(),
                receipt: "r".into(),
            },
        ])
        .unwrap();
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(s.phase.is_terminal());
        assert_eq!(s.reason.as_deref(), Some("efficacy 0.2 < 0.9"));
        assert_eq!(s.receipt.as_deref(), Some("r"));
        // Only verification rolls back.
        assert!(run(&[
            Event::Received,
            accepted(),
            Event::RolledBack {
                reason: "r".into(),
                receipt: "r".into(),
            },
        ])
        .is_err());
    }

    #[test]
    fn recovery_fails_a_command_whose_base_is_gone_naming_both_hashes() {
        let s = run(&[Event::Received, accepted(), Event::Preparing]).unwrap();
        assert_eq!(
            recovery(&s, "0123456789abcdef", |_| true),
            Recovery::Fail {
                reason: "the model changed under the command (base base, now 0123456789ab)".into()
            }
        );
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn a_snapshot_stands_for_a_whole_history_and_only_as_a_first_record() {
        let s = run(&[Event::Received, accepted(), Event::Preparing]).unwrap();
        let snap = Event::Snapshot {
            of: Box::new(s.clone()),
        };
        // It folds into the very state it holds, and the lifecycle goes on from there.
        let again = apply(None, "e1", 0, &snap).unwrap();
        assert_eq!(again, s);
        let next = apply(Some(&again), "e1", 0, &Event::Verifying).unwrap();
        assert_eq!(next.phase, Phase::Verifying);
        // Never after other records, never under another command's name.
        assert!(apply(Some(&s), "e1", 0, &snap).is_err());
        assert!(apply(None, "e2", 0, &snap).is_err());
        // It survives the journal's JSON form.
        let line = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), snap);
        assert!(Phase::Deferred.is_settled() && Phase::Committed.is_settled());
        assert!(!Phase::Received.is_settled() && !Phase::Committing.is_settled());
    }

    #[test]
    fn a_busy_command_is_deferred_and_decided_again_when_resent() {
        let busy = Event::Deferred {
            id: "op-1".into(),
            code: "busy".into(),
            reason: "queue full".into(),
            receipt: "r1".into(),
        };
        let s = run(&[Event::Received, busy.clone()]).unwrap();
        assert_eq!(s.phase, Phase::Deferred);
        assert!(!s.phase.is_terminal());
        assert_eq!(s.reason.as_deref(), Some("busy: queue full"));
        assert_eq!(s.name(), "op-1", "verified, so named by its id");
        assert_eq!(recovery(&s, "x", |_| false), Recovery::Wait);
        // Resent while still busy, then resent and accepted: runs like any other.
        let s = run(&[
            Event::Received,
            busy.clone(),
            busy.clone(),
            accepted(),
            Event::Preparing,
        ])
        .unwrap();
        assert_eq!(s.phase, Phase::Preparing);
        assert_eq!(s.name(), "op-1");
        // Or rejected on the resend (it expired meanwhile): terminal as usual.
        let s = run(&[
            Event::Received,
            busy.clone(),
            Event::Rejected {
                code: "expired".into(),
                reason: "x".into(),
                receipt: "r2".into(),
            },
        ])
        .unwrap();
        assert_eq!(s.phase, Phase::Rejected);
        // Deferred only from received or deferred.
        assert!(run(&[Event::Received, accepted(), busy]).is_err());
    }
}
