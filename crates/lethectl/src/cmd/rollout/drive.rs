//! The rollout loop: every tick it makes what it learned durable (verified receipts, acks),
//! checks the abort criteria, delivers the next devices at the current rate (each one's
//! `sending` record fsynced before its publish), resends to devices that answered `busy`,
//! and times out devices that stayed silent; between ticks it takes what the broker sends
//! (receipts, statuses, acknowledgements).
//!
//! Invariants: a receipt counts only once it verified against the device's key and named
//! this command, and only once its record is on disk (the abort is decided on durable
//! state); nothing is delivered while the connection is down or after an abort; a device
//! is published to once (a `busy` answer asks for a resend, which is recorded as such).

use super::bars::Bars;
use super::schedule::{Abort, Pacer, Rate};
use super::state::{Outcome, Record, RolloutState};
use crate::cmd::fleet::Conn;
use crate::cmd::jsonl::JsonLines;
use crate::cmd::link::{Inbound, Link};
use crate::cmd::topic_index::TopicIndex;
use anyhow::Result;
use bytes::Bytes;
use lethe_agent::mqtt as topics;
use lethe_proto::{verify_receipt, PublicKey};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the loop acts.
const TICK: Duration = Duration::from_millis(100);
/// How often the receipt topics of silent devices are subscribed to again (the broker then
/// sends their retained receipts again: one dropped by a full per-client queue, or missed
/// while the connection was down, arrives after all).
const SWEEP: Duration = Duration::from_secs(10);

/// What the rollout delivers, where, and by which rules.
pub struct Plan {
    pub conn: Conn,
    pub command: Bytes,
    pub pubs: HashMap<String, PublicKey>,
    pub rate: Rate,
    pub abort: Option<Abort>,
    /// How long a delivered device may stay silent.
    pub timeout: Duration,
    /// How long to wait before resending to a device that answered `busy`.
    pub resend_after: Duration,
}

/// What a topic the rollout subscribed to is about.
#[derive(Debug, Clone)]
enum About {
    Receipt(String),
    Status(String),
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    lethe_agent::fsutil::now_ms()
}

/// Every exact topic of the rollout (no wildcards: see `link`): each device's receipt topics
/// (command id and envelope name) and its status.
fn topic_index(st: &RolloutState) -> TopicIndex<About> {
    let mut ix = TopicIndex::default();
    for d in &st.order {
        for name in [&st.command_id, &st.env_name] {
            ix.insert(
                topics::receipt(&st.fleet, d, name),
                About::Receipt(d.clone()),
            );
        }
        ix.insert(topics::status(&st.fleet, d), About::Status(d.clone()));
    }
    ix
}

/// The record of a receipt from `device`, if it verifies against the device's key and is
/// about this command; `None` (and a note) otherwise.
fn receipt_record(
    plan: &Plan,
    st: &RolloutState,
    device: &str,
    payload: &[u8],
    notes: &mut Vec<String>,
) -> Option<Record> {
    if payload.is_empty() {
        return None; // a cleared retained receipt
    }
    let key = plan.pubs.get(device)?;
    let r = match verify_receipt(payload, key) {
        Ok(r) => r.into_inner(),
        Err(e) => {
            notes.push(format!(
                "{device}: a receipt that does NOT verify ({e}): ignored"
            ));
            return None;
        }
    };
    if r.command_id != st.command_id && r.command_id != st.env_name {
        notes.push(format!(
            "{device}: a receipt of command {} on this command's topic: ignored",
            r.command_id
        ));
        return None;
    }
    let hex = hex::encode(payload);
    if st.devices[device]
        .receipt
        .as_ref()
        .is_some_and(|x| x.hex == hex)
    {
        return None; // already recorded (a retained copy again)
    }
    Some(Record::Receipt {
        at: now_ms(),
        device: device.to_string(),
        verdict: r.verdict.name().to_string(),
        reason: r.reason,
        model_hash_before: r.model_hash_before,
        model_hash_after: r.model_hash_after,
        finished_at: r.finished_at,
        receipt: hex,
    })
}

/// Runs the rollout until every device settled (or, after an abort, every delivered one).
pub async fn drive(
    plan: &Plan,
    log: &mut JsonLines,
    st: &mut RolloutState,
    bars: &Bars,
) -> Result<()> {
    let about = topic_index(st);
    let mut link = Link::connect(
        &plan.conn,
        "rollout",
        about.filters(),
        Duration::from_secs(60),
    )
    .await?;
    let mut up = true;
    let mut pacer = Pacer::default();
    let mut tick = tokio::time::interval(TICK);
    let mut last = Instant::now();
    let mut learned: Vec<Record> = Vec::new();
    let mut acked: Vec<String> = Vec::new();
    let mut online: HashMap<String, bool> = HashMap::new();
    let mut notes: Vec<String> = Vec::new();
    let mut last_sweep = Instant::now();
    while !st.done() {
        tokio::select! {
            _ = tick.tick() => {}
            m = link.rx.recv() => {
                match m {
                    Some(Inbound::Message { topic, payload }) => match about.get(&topic) {
                        Some(About::Receipt(d)) => {
                            if let Some(r) = receipt_record(plan, st, d, &payload, &mut notes) {
                                learned.push(r);
                            }
                        }
                        Some(About::Status(d)) => {
                            let state = serde_json::from_slice::<serde_json::Value>(&payload)
                                .ok()
                                .and_then(|v| v["state"].as_str().map(str::to_string));
                            online.insert(d.clone(), state.is_some_and(|s| s != "offline"));

                        }
                        None => {}
                    },
                    Some(Inbound::Acked(d)) => acked.push(d),
                    Some(Inbound::Up { dropped }) => {
                        up = true;
                        if !dropped.is_empty() {
                            notes.push(format!(
                                "reconnected: {} deliveries were not acknowledged by the broker \
                                 before the connection dropped (not resent: at most once)",
                                dropped.len()
                            ));
                        }
                    }
                    Some(Inbound::Down(e)) => {
                        if up {
                            notes.push(format!("broker connection lost ({e}); deliveries paused"));
                        }
                        up = false;
                    }
                    None => anyhow::bail!("the broker connection task ended"),
                }
                for n in notes.drain(..) {
                    bars.note(&n);
                }
                continue;
            }
        }
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let now = now_ms();

        // 1. What was learned since the last tick becomes durable, then counts.
        if !acked.is_empty() {
            learned.push(Record::Delivered {
                at: now,
                devices: std::mem::take(&mut acked),
            });
        }
        commit(log, st, &mut learned)?;

        // 2. The abort criteria, on durable state.
        if st.aborted.is_none() {
            if let Some(a) = &plan.abort {
                let (executed, failed) = st.executed_and_failed();
                if let Some(why) = a.check(executed, failed) {
                    learned.push(Record::Aborted {
                        at: now,
                        reason: why,
                    });
                    commit(log, st, &mut learned)?;
                }
            }
        }

        // 3. Deliveries at the current rate: `sending` on disk, then publish.
        let mut sends: Vec<String> = Vec::new();
        if up && st.aborted.is_none() {
            let k = plan.rate.step(st.notified(), st.succeeded());
            let per_min = plan.rate.per_min(k);
            pacer.refill(per_min, dt);
            let waiting = st.to_deliver().count();
            let n = pacer.take(waiting);
            let next: Vec<String> = st.to_deliver().take(n).cloned().collect();
            let mut cursor = st.wave_cursor.clone();
            for d in next {
                let wave = cursor.assign(k, per_min);
                // Known offline (its last will or a clean stop said so); a device not heard of
                // is not counted (its status may just not have arrived yet).
                let offline = online.get(&d) == Some(&false);
                match learned.last_mut() {
                    Some(Record::Sending {
                        wave: w,
                        devices,
                        offline: off,
                        ..
                    }) if *w == wave => {
                        devices.push(d.clone());
                        if offline {
                            off.push(d.clone());
                        }
                    }
                    _ => learned.push(Record::Sending {
                        at: now,
                        wave,
                        step: k,
                        per_min,
                        devices: vec![d.clone()],
                        offline: if offline { vec![d.clone()] } else { vec![] },
                    }),
                }
                sends.push(d);
            }
        }

        // 4. Resends asked for (`busy`), and devices silent for too long.
        for d in &st.order {
            let dev = &st.devices[d];
            let since = |t: u64| Duration::from_millis(now.saturating_sub(t));
            match (dev.outcome(), &dev.receipt, dev.sent_at) {
                (Outcome::Busy, Some(r), _) if up && since(r.at) >= plan.resend_after => {
                    learned.push(Record::Resending {
                        at: now,
                        device: d.clone(),
                    });
                    sends.push(d.clone());
                }
                (Outcome::Waiting | Outcome::Busy, _, Some(sent))
                    if since(sent) >= plan.timeout =>
                {
                    learned.push(Record::TimedOut {
                        at: now,
                        device: d.clone(),
                    });
                }
                _ => {}
            }
        }
        commit(log, st, &mut learned)?;
        if last_sweep.elapsed() >= SWEEP {
            last_sweep = Instant::now();
            let silent: Vec<String> = st
                .order
                .iter()
                .filter(|d| {
                    let dev = &st.devices[*d];
                    dev.outcome() == Outcome::Waiting
                        && dev.sent_at.is_some_and(|t| now.saturating_sub(t) >= 5_000)
                })
                .flat_map(|d| {
                    [
                        topics::receipt(&st.fleet, d, &st.command_id),
                        topics::receipt(&st.fleet, d, &st.env_name),
                    ]
                })
                .collect();
            link.resubscribe(&silent).await?;
        }
        for d in sends {
            let topic = topics::device_cmd(&st.fleet, &d);
            link.publish(&d, &topic, plan.command.clone(), false)
                .await?;
        }
        bars.update(st);
    }
    let at = now_ms();
    learned.push(Record::Finished { at });
    commit(log, st, &mut learned)?;
    bars.update(st);
    link.close().await;
    Ok(())
}

/// Appends `recs` (one fsync) and folds them into the state.
fn commit(log: &mut JsonLines, st: &mut RolloutState, recs: &mut Vec<Record>) -> Result<()> {
    if recs.is_empty() {
        return Ok(());
    }
    log.append(recs)?;
    for r in recs.drain(..) {
        st.apply(&r).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(devices: &[&str]) -> RolloutState {
        RolloutState::replay(&[Record::Start {
            v: 1,
            at: 0,
            command_sha256: "ab".into(),
            command_id: "op.7".into(),
            env_name: "env-ab".into(),
            fleet: "f".into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }])
        .unwrap()
    }

    #[test]
    fn every_device_is_followed_on_its_exact_topics_and_their_rabbitmq_forms() {
        let st = state(&["cam.1", "cam-2"]);
        let ix = topic_index(&st);
        let f = ix.filters();
        assert_eq!(f.len(), 6);
        assert!(f.contains(&"lethe/v1/f/cam.1/receipts/op.7".to_string()));
        assert!(f.contains(&"lethe/v1/f/cam-2/receipts/env-ab".to_string()));
        assert!(f.contains(&"lethe/v1/f/cam-2/status".to_string()));
        assert!(
            matches!(ix.get("lethe/v1/f/cam/1/receipts/op/7"), Some(About::Receipt(d)) if d == "cam.1")
        );
        assert!(
            matches!(ix.get("lethe/v1/f/cam-2/status"), Some(About::Status(d)) if d == "cam-2")
        );
        assert!(!f.iter().any(|t| t.contains('+') || t.contains('#')));
    }
}
