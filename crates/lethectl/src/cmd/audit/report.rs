//! The audit report: per command, each device's final answer from the ledger (committed,
//! rolled back, failed, rejected) with the model hash before and after and the time, and
//! the devices expected to answer that have not (pending; a `busy` answer is pending too).
//! As a table, JSON or CSV.

use super::ledger::Entry;
use crate::cmd::fsutil::fmt_time;
use lethe_proto::UndoneForget;
use serde::Serialize;
use std::collections::BTreeMap;

/// One device's line under a command.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceLine {
    pub device: String,
    /// committed, rolled_back, failed, rejected or pending.
    pub verdict: String,
    pub reason: Option<String>,
    pub model_hash_before: Option<String>,
    pub model_hash_after: Option<String>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub execution_provider: Option<String>,
    /// Unix milliseconds when collected.
    pub collected_at: Option<u64>,
    /// The ledger line holding the receipt.
    pub ledger_line: Option<u64>,
    /// A revert's line: the forgets it undid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undone_forgets: Vec<UndoneForget>,
}

impl DeviceLine {
    /// The reason as the table and the CSV show it: a revert's line says which forgets it
    /// undid.
    fn shown_reason(&self) -> String {
        let mut r = self.reason.clone().unwrap_or_default();
        if !self.undone_forgets.is_empty() {
            let list: Vec<String> = self
                .undone_forgets
                .iter()
                .map(|u| format!("{:?} ({})", u.concept, u.command_id))
                .collect();
            if !r.is_empty() {
                r.push_str("; ");
            }
            r.push_str(&format!("undid forgets: {}", list.join(", ")));
        }
        r
    }
}

/// One command's lines and counts.
#[derive(Debug, Clone, Serialize)]
pub struct CommandReport {
    pub command_id: String,
    pub counts: BTreeMap<String, usize>,
    pub devices: Vec<DeviceLine>,
}

/// The verdicts counted, in report order.
pub const VERDICTS: [&str; 5] = ["committed", "rolled_back", "failed", "rejected", "pending"];

/// Builds the report. `alias` maps another name of a command (its envelope name, under
/// which a device that could not read it answered) to its id; `only` keeps the commands so
/// named; `expected` are devices that should have answered each reported command.
pub fn build(
    entries: &[Entry],
    alias: &BTreeMap<String, String>,
    only: Option<&str>,
    expected: &[String],
) -> Vec<CommandReport> {
    let mut by_cmd: BTreeMap<String, BTreeMap<String, Vec<&Entry>>> = BTreeMap::new();
    for e in entries {
        let id = alias.get(&e.command_id).unwrap_or(&e.command_id);
        by_cmd
            .entry(id.clone())
            .or_default()
            .entry(e.device.clone())
            .or_default()
            .push(e);
    }
    if let Some(o) = only {
        by_cmd.retain(|k, _| k == o);
        by_cmd.entry(o.to_string()).or_default();
    }
    by_cmd
        .into_iter()
        .map(|(command_id, mut devs)| {
            for d in expected {
                devs.entry(d.clone()).or_default();
            }
            let devices: Vec<DeviceLine> = devs
                .into_iter()
                .map(|(device, es)| line(device, &es))
                .collect();
            let mut counts: BTreeMap<String, usize> =
                VERDICTS.iter().map(|v| (v.to_string(), 0)).collect();
            for l in &devices {
                *counts.entry(l.verdict.clone()).or_insert(0) += 1;
            }
            CommandReport {
                command_id,
                counts,
                devices,
            }
        })
        .collect()
}

/// A device's line: its latest final receipt, else pending.
fn line(device: String, es: &[&Entry]) -> DeviceLine {
    let last = es
        .iter()
        .filter(|e| !e.is_busy())
        .max_by_key(|e| (e.finished_at, e.n));
    match last {
        Some(e) => DeviceLine {
            device,
            verdict: e.verdict.clone(),
            reason: e.reason.clone(),
            model_hash_before: Some(e.model_hash_before.clone()),
            model_hash_after: Some(e.model_hash_after.clone()),
            started_at: Some(e.started_at),
            finished_at: Some(e.finished_at),
            execution_provider: e.execution_provider.clone(),
            collected_at: Some(e.collected_at),
            ledger_line: Some(e.n),
            undone_forgets: e.undone_forgets.clone(),
        },
        None => DeviceLine {
            device,
            verdict: "pending".into(),
            reason: es.last().and_then(|e| e.reason.clone()),
            model_hash_before: None,
            model_hash_after: None,
            started_at: None,
            finished_at: None,
            execution_provider: None,
            collected_at: None,
            ledger_line: None,
            undone_forgets: Vec::new(),
        },
    }
}

fn short(h: &Option<String>) -> String {
    h.as_deref()
        .map_or("-".into(), |h| h[..12.min(h.len())].to_string())
}

/// The report as tables, one per command.
pub fn to_table(reports: &[CommandReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let c = |v: &str| r.counts.get(v).copied().unwrap_or(0);
        out.push_str(&format!(
            "command {}: {} device(s): {} committed, {} rolled back, {} failed, {} rejected, {} pending\n",
            r.command_id,
            r.devices.len(),
            c("committed"),
            c("rolled_back"),
            c("failed"),
            c("rejected"),
            c("pending")
        ));
        out.push_str(&format!(
            "  {:<16} {:<12} {:<12} {:<12} {:<20} reason\n",
            "device", "verdict", "model before", "model after", "finished"
        ));
        for l in &r.devices {
            out.push_str(&format!(
                "  {:<16} {:<12} {:<12} {:<12} {:<20} {}\n",
                l.device,
                l.verdict,
                short(&l.model_hash_before),
                short(&l.model_hash_after),
                l.finished_at.map_or("-".into(), fmt_time),
                l.shown_reason()
            ));
        }
    }
    out
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The report as CSV, one row per command and device.
pub fn to_csv(reports: &[CommandReport]) -> String {
    let mut out = String::from(
        "command_id,device,verdict,reason,model_hash_before,model_hash_after,started_at,finished_at,execution_provider,collected_at,ledger_line\n",
    );
    let opt = |o: Option<u64>| o.map_or(String::new(), |v| v.to_string());
    for r in reports {
        for l in &r.devices {
            let fields = [
                r.command_id.clone(),
                l.device.clone(),
                l.verdict.clone(),
                l.shown_reason(),
                l.model_hash_before.clone().unwrap_or_default(),
                l.model_hash_after.clone().unwrap_or_default(),
                l.started_at.map_or(String::new(), fmt_time),
                l.finished_at.map_or(String::new(), fmt_time),
                l.execution_provider.clone().unwrap_or_default(),
                opt(l.collected_at),
                opt(l.ledger_line),
            ];
            let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(n: u64, dev: &str, cmd: &str, verdict: &str, reason: Option<&str>, fin: u64) -> Entry {
        Entry {
            v: 1,
            n,
            prev: String::new(),
            collected_at: 7,
            fleet: "lab".into(),
            topic: String::new(),
            device: dev.into(),
            key_id: String::new(),
            command_id: cmd.into(),
            verdict: verdict.into(),
            reason: reason.map(str::to_string),
            model_hash_before: "aaaaaaaaaaaaaaaa".into(),
            model_hash_after: "bbbbbbbbbbbbbbbb".into(),
            started_at: 1,
            finished_at: fin,
            execution_provider: Some("cpu".into()),
            receipt: String::new(),
            undone_forgets: Vec::new(),
        }
    }

    #[test]
    fn a_reverts_line_says_which_forgets_it_undid_in_the_table_and_the_csv() {
        let mut r = e(1, "cam-02", "revert-1", "committed", None, 5);
        r.undone_forgets = vec![UndoneForget {
            command_id: "forget-1".into(),
            concept: "anna adler".into(),
        }];
        let reports = build(&[r], &BTreeMap::new(), None, &[]);
        let want = "undid forgets: \"anna adler\" (forget-1)";
        assert!(to_table(&reports).contains(want), "{}", to_table(&reports));
        assert!(to_csv(&reports).contains("undid forgets: \"\"anna adler\"\" (forget-1)"));
        let json = serde_json::to_value(&reports).unwrap();
        assert_eq!(
            json[0]["devices"][0]["undone_forgets"][0]["concept"],
            "anna adler"
        );
    }

    #[test]
    fn each_device_counts_once_with_its_final_answer_and_the_silent_are_pending() {
        let entries = vec![
            e(1, "cam-01", "op-1", "rejected", Some("busy: later"), 5),
            e(2, "cam-01", "op-1", "committed", None, 9),
            e(3, "cam-02", "op-1", "failed", Some("disk, full"), 8),
            e(4, "cam-03", "op-1", "rejected", Some("busy: later"), 5),
            e(5, "cam-01", "op-2", "rolled_back", None, 9),
            e(
                6,
                "cam-05",
                "env-0123",
                "rejected",
                Some("bad-signature"),
                3,
            ),
        ];
        let alias = BTreeMap::from([("env-0123".to_string(), "op-1".to_string())]);
        let expected = vec!["cam-04".to_string()];
        let r = build(&entries, &alias, Some("op-1"), &expected);
        assert_eq!(r.len(), 1);
        let counts = &r[0].counts;
        assert_eq!(counts["committed"], 1);
        assert_eq!(counts["failed"], 1);
        assert_eq!(
            counts["rejected"], 1,
            "the envelope-named rejection is op-1's"
        );
        assert_eq!(
            counts["pending"], 2,
            "cam-03 was busy, cam-04 never answered"
        );
        let all = build(&entries, &BTreeMap::new(), None, &[]);
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn the_table_and_the_csv_carry_hashes_times_and_quoted_reasons() {
        let r = build(
            &[e(3, "cam-02", "op-1", "failed", Some("disk, full"), 8)],
            &BTreeMap::new(),
            None,
            &[],
        );
        let t = to_table(&r);
        assert!(
            t.contains("command op-1: 1 device(s): 0 committed, 0 rolled back, 1 failed"),
            "{t}"
        );
        assert!(
            t.contains("aaaaaaaaaaaa bbbbbbbbbbbb 1970-01-01T00:00:08Z"),
            "{t}"
        );
        let csv = to_csv(&r);
        let row = csv.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "op-1,cam-02,failed,\"disk, full\",aaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbb,1970-01-01T00:00:01Z,1970-01-01T00:00:08Z,cpu,7,3"
        );
    }
}
