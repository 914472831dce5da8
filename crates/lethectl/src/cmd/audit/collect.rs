//! Collecting receipts from the broker into the ledger: subscribe to the receipt topics (one
//! command's, per device, exact; or every command's, by wildcard), verify each receipt
//! against its device's key, append the new ones to the ledger (fsynced), and only then
//! clear their retained copies on the broker (an empty retained message).
//!
//! Invariants: nothing unverified enters the ledger, and an unverified retained receipt is
//! left on the broker for someone to look at; a retained receipt is cleared only after its
//! ledger entry is on disk; a `busy` answer is never cleared (the device replaces it with its
//! final receipt on the same topic, which clearing could otherwise erase uncollected).

use super::ledger::{Entry, Ledger};
use crate::cmd::fleet::Conn;
use crate::cmd::link::{Inbound, Link};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lethe_agent::mqtt as topics;
use lethe_proto::envelope::{self, Kind};
use lethe_proto::{verify_receipt, PublicKey};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What to collect.
pub struct Collect {
    pub conn: Conn,
    pub fleet: String,
    pub pubs: HashMap<String, PublicKey>,
    /// One command's receipts (its id and, from the command file, its envelope name), or
    /// every command's.
    pub names: Option<Vec<String>>,
    /// Stop once no receipt came for this long.
    pub quiet_for: Duration,
    /// Clear the collected retained receipts.
    pub clear: bool,
    pub show_progress: bool,
}

/// What a collection did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Collected {
    /// New entries in the ledger.
    pub added: usize,
    /// Receipts the ledger already held.
    pub already: usize,
    /// Retained receipts cleared on the broker (acknowledged).
    pub cleared: usize,
    /// `busy` answers kept on the broker.
    pub busy_kept: usize,
    /// Receipts that did not verify (topic: why), left on the broker.
    pub unverified: Vec<String>,
}

/// The subscriptions: exact per device and command name, or one wildcard for everything.
pub fn filters(c: &Collect) -> Vec<String> {
    match &c.names {
        None => vec![format!("lethe/v1/{}/+/receipts/+", c.fleet)],
        Some(names) => {
            let mut devices: Vec<&String> = c.pubs.keys().collect();
            devices.sort();
            devices
                .into_iter()
                .flat_map(|d| names.iter().map(move |n| topics::receipt(&c.fleet, d, n)))
                .collect()
        }
    }
}

/// The ledger entry of a receipt delivered on `topic`, or why it is not one.
pub fn entry_of(c: &Collect, topic: &str, payload: &[u8], at: u64) -> Result<Entry, String> {
    let env = envelope::parse(payload, Kind::Receipt).map_err(|e| format!("not a receipt: {e}"))?;
    let claimed: serde_json::Value =
        serde_json::from_slice(env.payload).map_err(|e| format!("not a receipt: {e}"))?;
    let device = claimed["device_id"].as_str().unwrap_or("").to_string();
    let key = c
        .pubs
        .get(&device)
        .ok_or_else(|| format!("no public key for device {device:?}"))?;
    let r = verify_receipt(payload, key)
        .map_err(|e| format!("does NOT verify: {}: {e}", e.code()))?
        .into_inner();
    let want = topics::receipt(&c.fleet, &r.device_id, &r.command_id);
    if !topics::topic_is(topic, &want) {
        return Err(format!("a receipt of {} on another topic", r.command_id));
    }
    if let Some(names) = &c.names {
        if !names.contains(&r.command_id) {
            return Err(format!("a receipt of command {}", r.command_id));
        }
    }
    Ok(Entry::of_receipt(
        &c.fleet,
        want,
        key.id().to_string(),
        r,
        payload,
        at,
    ))
}

/// Collects until the broker has been quiet for `quiet_for`, then waits for the clears.
pub async fn collect(c: &Collect, ledger: &mut Ledger) -> Result<Collected> {
    let mut link = Link::connect(&c.conn, "audit", filters(c), Duration::from_secs(60)).await?;
    let bar = if c.show_progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("static template"));
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut out = Collected::default();
    let mut batch: Vec<Entry> = Vec::new();
    let mut to_clear: Vec<String> = Vec::new();
    let mut clearing: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            m = link.rx.recv() => match m {
                Some(Inbound::Message { topic, payload }) if !payload.is_empty() => {
                    quiet_since = tokio::time::Instant::now();
                    match entry_of(c, &topic, &payload, crate::cmd::rollout::drive::now_ms()) {
                        Err(why) => out.unverified.push(format!("{topic}: {why}")),
                        Ok(e) => {
                            let (busy, topic) = (e.is_busy(), e.topic.clone());
                            let known = ledger.has(&e.device, &e.receipt)
                                || batch.iter().any(|b| b.device == e.device && b.receipt == e.receipt);
                            if known {
                                out.already += 1;
                            } else {
                                batch.push(e);
                            }
                            if busy {
                                out.busy_kept += 1;
                            } else if c.clear && !clearing.contains(&topic) {
                                to_clear.push(topic);
                            }
                        }
                    }
                }
                Some(Inbound::Acked(t)) => {
                    if clearing.remove(&t) {
                        out.cleared += 1;
                    }
                }
                Some(Inbound::Up { dropped }) => {
                    // Clears lost with the old session: send them again (clearing is idempotent).
                    for t in dropped {
                        if clearing.remove(&t) {
                            to_clear.push(t);
                        }
                    }
                }
                Some(_) => {}
                None => anyhow::bail!("the broker connection task ended"),
            },
            _ = tick.tick() => {
                // Durable first, then cleared.
                out.added += batch.len();
                ledger.append(std::mem::take(&mut batch))?;
                for t in to_clear.drain(..) {
                    link.publish(&t, &t, bytes::Bytes::new(), true).await?;
                    clearing.insert(t);
                }
                bar.set_message(format!(
                    "{} new receipt(s) in the ledger, {} already there, {} cleared, {} unverified",
                    out.added, out.already, out.cleared, out.unverified.len()
                ));
                if quiet_since.elapsed() >= c.quiet_for && clearing.is_empty() {
                    break;
                }
                if quiet_since.elapsed() >= c.quiet_for + Duration::from_secs(30) {
                    anyhow::bail!("{} clears of retained receipts were not acknowledged in 30 s", clearing.len());
                }
            }
        }
    }
    bar.finish_and_clear();
    link.close().await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_proto::{sign_receipt, Receipt, SigningKey, Verdict};
    use std::collections::BTreeMap;

    fn collect_for(keys: &[&SigningKey], names: Option<Vec<String>>) -> Collect {
        Collect {
            conn: Conn::plain("mqtt://127.0.0.1:1"),
            fleet: "lab".into(),
            pubs: keys
                .iter()
                .map(|k| (k.name().to_string(), k.public()))
                .collect(),
            names,
            quiet_for: Duration::from_secs(1),
            clear: true,
            show_progress: false,
        }
    }

    fn signed(dev: &SigningKey, cmd: &str) -> Vec<u8> {
        sign_receipt(
            &Receipt {
                v: 1,
                command_id: cmd.into(),
                device_id: dev.name().into(),
                verdict: Verdict::Committed,
                reason: None,
                model_hash_before: "aa".into(),
                model_hash_after: "bb".into(),
                metrics: BTreeMap::new(),
                execution_provider: None,
                started_at: 1,
                finished_at: 2,
                undone_forgets: Vec::new(),
            },
            dev,
        )
        .unwrap()
    }

    #[test]
    fn one_commands_receipts_are_followed_on_exact_topics_and_all_on_a_wildcard() {
        let a = SigningKey::generate("cam-01").unwrap();
        let c = collect_for(&[&a], Some(vec!["op-1".into(), "env-ab".into()]));
        assert_eq!(
            filters(&c),
            [
                "lethe/v1/lab/cam-01/receipts/op-1",
                "lethe/v1/lab/cam-01/receipts/env-ab"
            ]
        );
        assert_eq!(
            filters(&collect_for(&[&a], None)),
            ["lethe/v1/lab/+/receipts/+"]
        );
    }

    #[test]
    fn a_receipt_becomes_an_entry_only_if_it_verifies_on_its_own_topic() {
        let a = SigningKey::generate("cam-01").unwrap();
        let b = SigningKey::generate("cam-02").unwrap();
        let c = collect_for(&[&a], None);
        let r = signed(&a, "op-1");
        let e = entry_of(&c, "lethe/v1/lab/cam-01/receipts/op-1", &r, 5).unwrap();
        assert_eq!(
            (e.device.as_str(), e.verdict.as_str()),
            ("cam-01", "committed")
        );
        let wrong_topic = entry_of(&c, "lethe/v1/lab/cam-01/receipts/op-2", &r, 5);
        assert!(wrong_topic.unwrap_err().contains("another topic"));
        let stranger = entry_of(
            &c,
            "lethe/v1/lab/cam-02/receipts/op-1",
            &signed(&b, "op-1"),
            5,
        );
        assert!(stranger.unwrap_err().contains("no public key"));
        let mut forged = r.clone();
        let mid = forged.len() / 2;
        forged[mid] ^= 1;
        assert!(entry_of(&c, "lethe/v1/lab/cam-01/receipts/op-1", &forged, 5).is_err());
    }

    #[test]
    fn a_receipt_of_another_command_is_not_collected_for_this_one() {
        let a = SigningKey::generate("cam-01").unwrap();
        let c = collect_for(&[&a], Some(vec!["op-1".into()]));
        let e = entry_of(
            &c,
            "lethe/v1/lab/cam-01/receipts/op-2",
            &signed(&a, "op-2"),
            5,
        );
        assert!(e.unwrap_err().contains("command op-2"));
    }
}
