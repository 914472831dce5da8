//! The end of a rollout: a table per wave and the fleet's totals, the devices that did not
//! commit, and the time until the last receipt; or all of it as JSON (`--json`), one
//! object with every device.

use super::state::{Outcome, RolloutState};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Outcomes shown as table columns, in order: every one a delivered device can have.
fn columns() -> impl Iterator<Item = Outcome> {
    Outcome::ALL
        .into_iter()
        .filter(|o| *o != Outcome::NotDelivered)
}

fn counts<'a>(
    st: &RolloutState,
    devices: impl Iterator<Item = &'a String>,
) -> BTreeMap<Outcome, usize> {
    let mut c = BTreeMap::new();
    for d in devices {
        *c.entry(st.devices[d].outcome()).or_insert(0) += 1;
    }
    c
}

fn counts_json(c: &BTreeMap<Outcome, usize>) -> Value {
    Outcome::ALL
        .iter()
        .map(|o| (o.name().to_string(), json!(c.get(o).copied().unwrap_or(0))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Seconds from the rollout's start to its last verified final receipt, once every
/// delivered device answered; `None` while some are silent or none answered.
pub fn time_to_all_receipts(st: &RolloutState) -> Option<f64> {
    let sent: Vec<_> = st.devices.values().filter(|d| d.sends > 0).collect();
    if sent.is_empty() || !sent.iter().all(|d| d.outcome().executed()) {
        return None;
    }
    let last = sent
        .iter()
        .filter_map(|d| d.receipt.as_ref())
        .map(|r| r.at)
        .max()?;
    Some(last.saturating_sub(st.started_at) as f64 / 1000.0)
}

/// Whether the rollout reached every device and all of them committed.
pub fn all_committed(st: &RolloutState) -> bool {
    st.devices
        .values()
        .all(|d| d.outcome() == Outcome::Committed)
}

/// The whole report as JSON.
pub fn to_json(st: &RolloutState, elapsed_s: f64) -> Value {
    let waves: Vec<Value> = st
        .waves
        .values()
        .map(|w| {
            json!({
                "wave": w.number,
                "per_min": w.per_min,
                "devices": w.devices.len(),
                "counts": counts_json(&counts(st, w.devices.iter())),
            })
        })
        .collect();
    let devices: Vec<Value> = st
        .order
        .iter()
        .map(|d| {
            let dev = &st.devices[d];
            let r = dev.receipt.as_ref();
            json!({
                "device": d,
                "wave": dev.wave,
                "outcome": dev.outcome().name(),
                "reason": r.and_then(|r| r.reason.clone()),
                "sends": dev.sends,
                "delivered": dev.delivered,
                "offline_at_delivery": dev.offline_at_delivery,
                "model_hash_before": r.map(|r| r.model_hash_before.clone()),
                "model_hash_after": r.map(|r| r.model_hash_after.clone()),
                "finished_at": r.map(|r| r.finished_at),
            })
        })
        .collect();
    json!({
        "command_id": st.command_id,
        "command_sha256": st.command_sha256,
        "fleet": st.fleet,
        "devices": st.order.len(),
        "notified": st.notified(),
        "offline_at_delivery": st.devices.values().filter(|d| d.offline_at_delivery).count(),
        "counts": counts_json(&st.counts()),
        "aborted": st.aborted,
        "resumed": st.resumed,
        "time_to_all_receipts_s": time_to_all_receipts(st),
        "elapsed_s": elapsed_s,
        "waves": waves,
        "per_device": devices,
    })
}

/// The report as text: waves, totals, devices that did not commit (the first `max_listed`).
pub fn to_text(st: &RolloutState, elapsed_s: f64, max_listed: usize) -> String {
    let mut out = String::new();
    let short = &st.command_sha256[..12.min(st.command_sha256.len())];
    out.push_str(&format!(
        "rollout of {} (sha256 {short}) to {} devices of fleet {}: {} notified, {:.1} s{}\n",
        st.command_id,
        st.order.len(),
        st.fleet,
        st.notified(),
        elapsed_s,
        if st.resumed > 0 {
            format!(" (resumed {} time(s))", st.resumed)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!("{:>5} {:>9} {:>8}", "wave", "rate/min", "devices"));
    for o in columns() {
        out.push_str(&format!(" {:>11}", o.name()));
    }
    out.push('\n');
    let mut row = |label: String, rate: String, n: usize, c: &BTreeMap<Outcome, usize>| {
        out.push_str(&format!("{label:>5} {rate:>9} {n:>8}"));
        for o in columns() {
            out.push_str(&format!(" {:>11}", c.get(&o).copied().unwrap_or(0)));
        }
        out.push('\n');
    };
    for w in st.waves.values() {
        row(
            w.number.to_string(),
            format!("{:.0}", w.per_min),
            w.devices.len(),
            &counts(st, w.devices.iter()),
        );
    }
    let all = st.counts();
    row("all".into(), "".into(), st.notified(), &all);
    let not_delivered = all.get(&Outcome::NotDelivered).copied().unwrap_or(0);
    if not_delivered > 0 {
        out.push_str(&format!("not delivered: {not_delivered}\n"));
    }
    let offline = st
        .devices
        .values()
        .filter(|d| d.offline_at_delivery)
        .count();
    if offline > 0 {
        out.push_str(&format!("offline at delivery: {offline}\n"));
    }
    if let Some(why) = &st.aborted {
        out.push_str(&format!("ABORTED: {why}\n"));
    }
    match time_to_all_receipts(st) {
        Some(t) => out.push_str(&format!(
            "time to all receipts: {t:.1} s ({} verified)\n",
            st.devices
                .values()
                .filter(|d| d.outcome().executed())
                .count()
        )),
        None => out.push_str("time to all receipts: - (not every delivered device answered)\n"),
    }
    let bad: Vec<&String> = st
        .order
        .iter()
        .filter(|d| {
            let o = st.devices[*d].outcome();
            o != Outcome::Committed && o != Outcome::NotDelivered
        })
        .collect();
    if !bad.is_empty() {
        out.push_str(&format!(
            "not committed ({}{}):\n",
            bad.len(),
            if bad.len() > max_listed {
                format!(", the first {max_listed}")
            } else {
                String::new()
            }
        ));
        for d in bad.iter().take(max_listed) {
            let dev = &st.devices[*d];
            let reason = dev
                .receipt
                .as_ref()
                .and_then(|r| r.reason.clone())
                .unwrap_or_else(|| match dev.outcome() {
                    Outcome::TimedOut if !dev.delivered => {
                        "no receipt; delivery not confirmed by the broker".into()
                    }
                    Outcome::TimedOut => "no receipt before the timeout".into(),
                    _ => String::new(),
                });
            out.push_str(&format!(
                "  {d:<16} {:<12} {reason}\n",
                dev.outcome().name()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::state::Record;
    use super::*;

    fn rollout() -> RolloutState {
        let recs = vec![
            Record::Start {
                v: 1,
                at: 1_000,
                command_sha256: "abcdef0123456789".into(),
                command_id: "c1".into(),
                env_name: "env-ab".into(),
                fleet: "f".into(),
                devices: vec!["d1".into(), "d2".into(), "d3".into()],
            },
            Record::Sending {
                at: 1_100,
                wave: 1,
                step: 0,
                per_min: 60.0,
                devices: vec!["d1".into(), "d2".into()],
                offline: vec!["d2".into()],
            },
            Record::Receipt {
                at: 3_500,
                device: "d1".into(),
                verdict: "committed".into(),
                reason: None,
                model_hash_before: "a".into(),
                model_hash_after: "b".into(),
                finished_at: 3,
                receipt: "00".into(),
            },
            Record::Receipt {
                at: 4_000,
                device: "d2".into(),
                verdict: "failed".into(),
                reason: Some("disk full".into()),
                model_hash_before: "a".into(),
                model_hash_after: "a".into(),
                finished_at: 4,
                receipt: "01".into(),
            },
            Record::Aborted {
                at: 4_100,
                reason: "1 of 2 failed".into(),
            },
        ];
        RolloutState::replay(&recs).unwrap()
    }

    #[test]
    fn the_text_report_has_a_row_per_wave_totals_the_abort_and_who_did_not_commit() {
        let t = to_text(&rollout(), 5.0, 20);
        assert!(t.contains("to 3 devices of fleet f: 2 notified"), "{t}");
        assert!(t.lines().any(|l| l.trim_start().starts_with("1 ")), "{t}");
        assert!(t.contains("ABORTED: 1 of 2 failed"), "{t}");
        assert!(t.contains("not delivered: 1"), "{t}");
        assert!(t.contains("offline at delivery: 1"), "{t}");
        assert!(
            t.contains("time to all receipts: 3.0 s (2 verified)"),
            "{t}"
        );
        assert!(t.contains("d2") && t.contains("disk full"), "{t}");
    }

    #[test]
    fn the_json_report_counts_every_outcome_and_lists_every_device() {
        let v = to_json(&rollout(), 5.0);
        assert_eq!(v["counts"]["committed"], 1);
        assert_eq!(v["counts"]["failed"], 1);
        assert_eq!(v["counts"]["not_delivered"], 1);
        assert_eq!(v["waves"][0]["devices"], 2);
        assert_eq!(v["per_device"][1]["reason"], "disk full");
        assert_eq!(v["time_to_all_receipts_s"], 3.0);
        assert!(!all_committed(&rollout()));
    }
}
