//! A rollout's durable state: an append-only JSON-lines file ([`Record`]s, fsynced in
//! batches) and what replaying it gives ([`RolloutState`]: each device's wave, delivery and
//! outcome, the waves, the abort). The first record names the command (by SHA-256) and the
//! devices; a resumed rollout must be the same command to the same devices.
//!
//! Invariants: a device's `sending` record is on disk before its command is published, and a
//! device with one is never published to again (at most once: a crash between the record
//! and the publish leaves it "delivery unconfirmed", reported, never re-sent); the only
//! second publish is a resend the device asked for with a `busy` receipt. Receipts are
//! recorded only after they verified.

use super::schedule::Waves;
use lethe_proto::Verdict;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// One line of the state file. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rec", rename_all = "snake_case")]
pub enum Record {
    Start {
        v: u32,
        at: u64,
        command_sha256: String,
        command_id: String,
        env_name: String,
        fleet: String,
        devices: Vec<String>,
    },
    Resumed {
        at: u64,
    },
    /// About to publish to `devices` (wave `wave`, at `per_min`); `offline` of them had an
    /// offline (or no) retained status.
    Sending {
        at: u64,
        wave: usize,
        /// The rate's increase step.
        #[serde(default)]
        step: u32,
        per_min: f64,
        devices: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offline: Vec<String>,
    },
    /// The broker acknowledged the publishes to `devices`.
    Delivered {
        at: u64,
        devices: Vec<String>,
    },
    /// A verified receipt of the command from `device`.
    Receipt {
        at: u64,
        device: String,
        verdict: String,
        #[serde(default)]
        reason: Option<String>,
        model_hash_before: String,
        model_hash_after: String,
        finished_at: u64,
        /// The signed receipt, hex.
        receipt: String,
    },
    /// The device asked for a resend (`busy`); published again.
    Resending {
        at: u64,
        device: String,
    },
    TimedOut {
        at: u64,
        device: String,
    },
    Aborted {
        at: u64,
        reason: String,
    },
    Finished {
        at: u64,
    },
}

/// Where one device stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Device {
    pub wave: Option<usize>,
    /// When the command was last published to it.
    pub sent_at: Option<u64>,
    /// The broker acknowledged the last publish.
    pub delivered: bool,
    pub offline_at_delivery: bool,
    /// Publishes (1, or more after `busy` answers).
    pub sends: usize,
    /// The last receipt, if any.
    pub receipt: Option<ReceiptInfo>,
    pub timed_out: bool,
}

/// What a verified receipt said.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptInfo {
    pub verdict: String,
    pub reason: Option<String>,
    pub model_hash_before: String,
    pub model_hash_after: String,
    pub finished_at: u64,
    pub at: u64,
    pub hex: String,
}

impl ReceiptInfo {
    /// A `busy` answer: nothing was applied; the device wants the same command again.
    pub fn is_busy(&self) -> bool {
        self.verdict == Verdict::Rejected.name()
            && self
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("busy"))
    }
}

/// How a device ended, for counting and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Committed,
    RolledBack,
    Failed,
    Rejected,
    TimedOut,
    /// Delivered (or being delivered) with no answer yet.
    Waiting,
    /// Asked for a resend (`busy`).
    Busy,
    /// Not delivered (yet, or ever: the rollout was aborted).
    NotDelivered,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Committed,
        Outcome::RolledBack,
        Outcome::Failed,
        Outcome::Rejected,
        Outcome::TimedOut,
        Outcome::Waiting,
        Outcome::Busy,
        Outcome::NotDelivered,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
            Outcome::TimedOut => "timed_out",
            Outcome::Waiting => "waiting",
            Outcome::Busy => "busy",
            Outcome::NotDelivered => "not_delivered",
        }
    }

    /// A final answer from the device (what AWS calls executed).
    pub fn executed(self) -> bool {
        matches!(
            self,
            Outcome::Committed | Outcome::RolledBack | Outcome::Failed | Outcome::Rejected
        )
    }

    /// Counts against the abort criteria: failed, rolled back, rejected.
    pub fn failure(self) -> bool {
        self.executed() && self != Outcome::Committed
    }
}

impl Device {
    pub fn outcome(&self) -> Outcome {
        match &self.receipt {
            Some(r) if !r.is_busy() => match r.verdict.as_str() {
                "committed" => Outcome::Committed,
                "rolled_back" => Outcome::RolledBack,
                "failed" => Outcome::Failed,
                _ => Outcome::Rejected,
            },
            _ if self.timed_out => Outcome::TimedOut,
            Some(_) => Outcome::Busy,
            None if self.sends > 0 => Outcome::Waiting,
            None => Outcome::NotDelivered,
        }
    }

    /// Nothing more to wait for: a final receipt, or timed out.
    pub fn settled(&self) -> bool {
        let o = self.outcome();
        o.executed() || o == Outcome::TimedOut
    }
}

/// A wave as the state file knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wave {
    pub number: usize,
    pub per_min: f64,
    pub devices: Vec<String>,
}

/// Everything the state file says.
#[derive(Debug, Clone, Default)]
pub struct RolloutState {
    pub command_sha256: String,
    pub command_id: String,
    pub env_name: String,
    pub fleet: String,
    /// The devices, in delivery order.
    pub order: Vec<String>,
    pub devices: HashMap<String, Device>,
    pub waves: BTreeMap<usize, Wave>,
    pub wave_cursor: Waves,
    pub aborted: Option<String>,
    pub finished: bool,
    pub started_at: u64,
    pub resumed: usize,
}

impl RolloutState {
    /// Replays records (the first must be `start`).
    pub fn replay(records: &[Record]) -> Result<RolloutState, String> {
        let mut s = RolloutState::default();
        match records.first() {
            Some(Record::Start { .. }) => {}
            _ => return Err("the first record is not a rollout start".into()),
        }
        for r in records {
            s.apply(r)?;
        }
        Ok(s)
    }

    fn device(&mut self, d: &str) -> Result<&mut Device, String> {
        self.devices
            .get_mut(d)
            .ok_or_else(|| format!("a record names {d:?}, which is not in the rollout"))
    }

    /// Folds one record in.
    pub fn apply(&mut self, r: &Record) -> Result<(), String> {
        match r {
            Record::Start {
                v,
                at,
                command_sha256,
                command_id,
                env_name,
                fleet,
                devices,
            } => {
                if *v != 1 {
                    return Err(format!("state format {v}, this lethectl reads 1"));
                }
                if !self.order.is_empty() {
                    return Err("a second start record".into());
                }
                self.command_sha256 = command_sha256.clone();
                self.command_id = command_id.clone();
                self.env_name = env_name.clone();
                self.fleet = fleet.clone();
                self.order = devices.clone();
                self.devices = devices
                    .iter()
                    .map(|d| (d.clone(), Device::default()))
                    .collect();
                self.started_at = *at;
            }
            Record::Resumed { .. } => self.resumed += 1,
            Record::Sending {
                at,
                wave,
                step,
                per_min,
                devices,
                offline,
            } => {
                for d in devices {
                    let dev = self.device(d)?;
                    dev.wave = Some(*wave);
                    dev.sent_at = Some(*at);
                    dev.delivered = false;
                    dev.sends += 1;
                    dev.offline_at_delivery = offline.contains(d);
                }
                let w = self.waves.entry(*wave).or_insert_with(|| Wave {
                    number: *wave,
                    per_min: *per_min,
                    devices: Vec::new(),
                });
                w.devices.extend(devices.iter().cloned());
                if *wave != self.wave_cursor.current {
                    self.wave_cursor.current = *wave;
                    self.wave_cursor.in_current = 0;
                }
                self.wave_cursor.step = *step;
                self.wave_cursor.in_current += devices.len();
            }
            Record::Delivered { devices, .. } => {
                for d in devices {
                    self.device(d)?.delivered = true;
                }
            }
            Record::Receipt {
                at,
                device,
                verdict,
                reason,
                model_hash_before,
                model_hash_after,
                finished_at,
                receipt,
            } => {
                self.device(device)?.receipt = Some(ReceiptInfo {
                    verdict: verdict.clone(),
                    reason: reason.clone(),
                    model_hash_before: model_hash_before.clone(),
                    model_hash_after: model_hash_after.clone(),
                    finished_at: *finished_at,
                    at: *at,
                    hex: receipt.clone(),
                });
            }
            Record::Resending { at, device } => {
                let dev = self.device(device)?;
                dev.sent_at = Some(*at);
                dev.delivered = false;
                dev.sends += 1;
                dev.receipt = None;
            }
            Record::TimedOut { device, .. } => self.device(device)?.timed_out = true,
            Record::Aborted { reason, .. } => self.aborted = Some(reason.clone()),
            Record::Finished { .. } => self.finished = true,
        }
        Ok(())
    }

    /// Devices with each outcome.
    pub fn counts(&self) -> BTreeMap<Outcome, usize> {
        let mut c = BTreeMap::new();
        for d in self.devices.values() {
            *c.entry(d.outcome()).or_insert(0) += 1;
        }
        c
    }

    /// (executed, failures) for the abort criteria.
    pub fn executed_and_failed(&self) -> (usize, usize) {
        let mut e = (0, 0);
        for d in self.devices.values() {
            let o = d.outcome();
            e.0 += usize::from(o.executed());
            e.1 += usize::from(o.failure());
        }
        e
    }

    /// Devices the command was published to.
    pub fn notified(&self) -> usize {
        self.devices.values().filter(|d| d.sends > 0).count()
    }

    /// Devices that committed.
    pub fn succeeded(&self) -> usize {
        self.devices
            .values()
            .filter(|d| d.outcome() == Outcome::Committed)
            .count()
    }

    /// Devices still to deliver to, in order (none once aborted): never sent, and no final
    /// answer from an earlier delivery by other means.
    pub fn to_deliver(&self) -> impl Iterator<Item = &String> {
        let open = self.aborted.is_none();
        self.order.iter().filter(move |d| {
            let dev = &self.devices[*d];
            open && dev.sends == 0 && !dev.settled()
        })
    }

    /// Whether nothing is left to do: every device settled, or (aborted) every delivered
    /// device settled.
    pub fn done(&self) -> bool {
        self.to_deliver().next().is_none()
            && self.devices.values().all(|d| d.sends == 0 || d.settled())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(devices: &[&str]) -> Record {
        Record::Start {
            v: 1,
            at: 0,
            command_sha256: "ab".into(),
            command_id: "c1".into(),
            env_name: "env-ab".into(),
            fleet: "f".into(),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn sending(wave: usize, devices: &[&str]) -> Record {
        Record::Sending {
            at: 10,
            wave,
            step: 0,
            per_min: 60.0,
            devices: devices.iter().map(|d| d.to_string()).collect(),
            offline: vec![],
        }
    }

    fn receipt(device: &str, verdict: &str, reason: Option<&str>) -> Record {
        Record::Receipt {
            at: 20,
            device: device.into(),
            verdict: verdict.into(),
            reason: reason.map(str::to_string),
            model_hash_before: "a".into(),
            model_hash_after: "b".into(),
            finished_at: 1,
            receipt: "00".into(),
        }
    }

    #[test]
    fn replaying_a_rollout_gives_each_device_its_wave_and_outcome() {
        let recs = vec![
            start(&["d1", "d2", "d3", "d4"]),
            sending(1, &["d1", "d2"]),
            Record::Delivered {
                at: 11,
                devices: vec!["d1".into()],
            },
            receipt("d1", "committed", None),
            receipt("d2", "failed", Some("boom")),
            sending(2, &["d3"]),
        ];
        let s = RolloutState::replay(&recs).unwrap();
        assert_eq!(s.devices["d1"].outcome(), Outcome::Committed);
        assert!(s.devices["d1"].delivered && !s.devices["d2"].delivered);
        assert_eq!(s.devices["d2"].outcome(), Outcome::Failed);
        assert_eq!(s.devices["d3"].outcome(), Outcome::Waiting);
        assert_eq!(s.devices["d3"].wave, Some(2));
        assert_eq!(s.executed_and_failed(), (2, 1));
        assert_eq!(s.to_deliver().collect::<Vec<_>>(), ["d4"]);
        assert_eq!(s.waves[&1].devices, ["d1", "d2"]);
        assert!(!s.done());
    }

    #[test]
    fn a_device_sent_before_a_crash_is_never_offered_for_delivery_again() {
        // `sending` written, then the process died before the publish was acknowledged.
        let s = RolloutState::replay(&[start(&["d1", "d2"]), sending(1, &["d1"])]).unwrap();
        assert_eq!(s.to_deliver().collect::<Vec<_>>(), ["d2"]);
        assert!(!s.devices["d1"].delivered);
    }

    #[test]
    fn a_busy_answer_waits_for_a_resend_and_the_resend_counts_as_a_second_send() {
        let mut recs = vec![
            start(&["d1"]),
            sending(1, &["d1"]),
            receipt("d1", "rejected", Some("busy: an update is running")),
        ];
        let s = RolloutState::replay(&recs).unwrap();
        assert_eq!(s.devices["d1"].outcome(), Outcome::Busy);
        assert_eq!(s.executed_and_failed(), (0, 0), "busy is not a failure");
        recs.push(Record::Resending {
            at: 30,
            device: "d1".into(),
        });
        recs.push(receipt("d1", "committed", None));
        let s = RolloutState::replay(&recs).unwrap();
        assert_eq!(s.devices["d1"].sends, 2);
        assert_eq!(s.devices["d1"].outcome(), Outcome::Committed);
        assert!(s.done());
    }

    #[test]
    fn an_aborted_rollout_delivers_nothing_more_and_is_done_once_the_delivered_settle() {
        let recs = vec![
            start(&["d1", "d2", "d3"]),
            sending(1, &["d1"]),
            Record::Aborted {
                at: 5,
                reason: "too many failures".into(),
            },
        ];
        let mut s = RolloutState::replay(&recs).unwrap();
        assert_eq!(s.to_deliver().count(), 0);
        assert!(!s.done());
        s.apply(&Record::TimedOut {
            at: 9,
            device: "d1".into(),
        })
        .unwrap();
        assert!(s.done());
        assert_eq!(s.counts()[&Outcome::NotDelivered], 2);
    }

    #[test]
    fn a_device_that_already_answered_is_not_delivered_to() {
        // A retained receipt from an earlier push of the same command.
        let s = RolloutState::replay(&[start(&["d1", "d2"]), receipt("d2", "committed", None)])
            .unwrap();
        assert_eq!(s.to_deliver().collect::<Vec<_>>(), ["d1"]);
    }

    #[test]
    fn records_about_unknown_devices_or_without_a_start_are_refused() {
        assert!(RolloutState::replay(&[sending(1, &["d1"])]).is_err());
        assert!(RolloutState::replay(&[start(&["d1"]), sending(1, &["zz"])]).is_err());
    }

    #[test]
    fn records_survive_a_round_trip_through_json() {
        let r = sending(3, &["d1"]);
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.starts_with("{\"rec\":\"sending\""), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
    }
}
