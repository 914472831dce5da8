//! Replay protection: the last accepted sequence number per issuer.
//!
//! The crate never persists anything: `check` is pure and returns the next state; the caller
//! (the agent's journal, or `lethectl verify --state`) persists it only after acting on the
//! command. A rejected command therefore cannot change the state.
//!
//! Invariant: for each issuer, accepted sequence numbers strictly increase.

use crate::Rejection;
use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use serde::{Deserialize, Serialize};

/// Last accepted sequence number per issuer. Serialises as
/// `{"per_issuer": {"alice": 7}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayState {
    pub per_issuer: BTreeMap<String, u64>,
}

impl ReplayState {
    pub fn new() -> ReplayState {
        ReplayState::default()
    }

    /// Last accepted sequence number of `issuer`, if any.
    pub fn last(&self, issuer: &str) -> Option<u64> {
        self.per_issuer.get(issuer).copied()
    }

    /// Accepts `seq` from `issuer` if it is above the last accepted one; returns the next state.
    pub fn check(&self, issuer: &str, seq: u64) -> Result<ReplayState, Rejection> {
        match self.last(issuer) {
            Some(last) if seq == last => Err(Rejection::ReplayedSeq {
                issuer: issuer.to_string(),
                seq,
            }),
            Some(last) if seq < last => Err(Rejection::StaleSeq {
                issuer: issuer.to_string(),
                seq,
                last,
            }),
            _ => {
                let mut next = self.clone();
                next.per_issuer.insert(issuer.to_string(), seq);
                Ok(next)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_sequence_from_an_issuer_is_accepted() {
        let s = ReplayState::new().check("alice", 5).unwrap();
        assert_eq!(s.last("alice"), Some(5));
    }

    #[test]
    fn replayed_sequence_is_rejected() {
        let s = ReplayState::new().check("alice", 5).unwrap();
        assert_eq!(s.check("alice", 5).unwrap_err().code(), "replayed-seq");
    }

    #[test]
    fn lower_sequence_is_rejected_as_stale() {
        let s = ReplayState::new().check("alice", 5).unwrap();
        assert_eq!(s.check("alice", 4).unwrap_err().code(), "stale-seq");
    }

    #[test]
    fn issuers_have_independent_sequences() {
        let s = ReplayState::new().check("alice", 5).unwrap();
        let s = s.check("bob", 1).unwrap();
        assert_eq!((s.last("alice"), s.last("bob")), (Some(5), Some(1)));
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let s = ReplayState::new().check("alice", 5).unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, r#"{"per_issuer":{"alice":5}}"#);
        assert_eq!(serde_json::from_str::<ReplayState>(&j).unwrap(), s);
    }
}
