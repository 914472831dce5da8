//! The erasure ledger: an append-only JSON-lines file, one [`Entry`] per collected receipt.
//! Each entry holds the device-signed receipt (hex) and, for people and scripts, a plain copy
//! of what it says (device, command, verdict, model hashes, times), plus where and when it was
//! collected. Entries are chained: `prev` is the SHA-256 of the previous line as stored
//! (64 zeros for the first), `n` the line number.
//!
//! What verification ([`verify`]) proves, line by line: the receipt verifies against the
//! device's public key, the plain copy says exactly what the signed receipt says, the topic is
//! the receipt topic of that device and command, and the chain is unbroken. A changed
//! receipt, a changed copy, a removed, inserted or reordered line is caught; a change to the
//! unsigned fields of the LAST line (its collection time) is caught only against a recorded
//! head (`--head`), which `lethectl audit` prints after every run.

use crate::cmd::jsonl::{read_lines, JsonLines};
use anyhow::{Context, Result};
use lethe_agent::mqtt as topics;
use lethe_proto::{verify_receipt, PublicKey, Receipt, UndoneForget};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The chain's start: `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One collected receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub v: u32,
    /// Line number, from 1.
    pub n: u64,
    /// SHA-256 (hex) of the previous line as stored.
    pub prev: String,
    /// Unix milliseconds.
    pub collected_at: u64,
    pub fleet: String,
    pub topic: String,
    pub device: String,
    /// The device key's id (16 hex digits).
    pub key_id: String,
    pub command_id: String,
    pub verdict: String,
    pub reason: Option<String>,
    pub model_hash_before: String,
    pub model_hash_after: String,
    pub started_at: u64,
    pub finished_at: u64,
    pub execution_provider: Option<String>,
    /// The signed receipt envelope, hex.
    pub receipt: String,
    /// A revert's receipt: the forgets it undid (absent otherwise, so older lines read
    /// unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undone_forgets: Vec<UndoneForget>,
}

impl Entry {
    /// The entry of a verified receipt `r` (signed envelope `bytes`) from the device whose key
    /// id is `key_id`, delivered on `topic`, collected at `at`; not yet chained (`n`, `prev`
    /// are set when the ledger appends it).
    pub fn of_receipt(
        fleet: &str,
        topic: String,
        key_id: String,
        r: Receipt,
        bytes: &[u8],
        at: u64,
    ) -> Entry {
        Entry {
            v: 1,
            n: 0,
            prev: String::new(),
            collected_at: at,
            fleet: fleet.to_string(),
            topic,
            device: r.device_id,
            key_id,
            command_id: r.command_id,
            verdict: r.verdict.name().to_string(),
            reason: r.reason,
            model_hash_before: r.model_hash_before,
            model_hash_after: r.model_hash_after,
            started_at: r.started_at,
            finished_at: r.finished_at,
            execution_provider: r.execution_provider,
            receipt: hex::encode(bytes),
            undone_forgets: r.undone_forgets,
        }
    }

    /// Whether this is a `busy` answer (nothing applied; the device waits for a resend).
    pub fn is_busy(&self) -> bool {
        self.verdict == "rejected"
            && self
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("busy"))
    }

    /// Checks the entry against `key`: the receipt verifies, the copy matches it, the topic
    /// is its receipt topic. Returns the receipt.
    pub fn check(&self, key: &PublicKey) -> Result<Receipt, String> {
        let bytes = hex::decode(&self.receipt).map_err(|_| "the receipt is not hex".to_string())?;
        let r = verify_receipt(&bytes, key)
            .map_err(|e| format!("the receipt does not verify: {}: {e}", e.code()))?
            .into_inner();
        let copy = (
            &self.device,
            &self.command_id,
            self.verdict.as_str(),
            &self.reason,
            &self.model_hash_before,
            &self.model_hash_after,
            self.started_at,
            self.finished_at,
            &self.execution_provider,
            &self.undone_forgets,
        );
        let signed = (
            &r.device_id,
            &r.command_id,
            r.verdict.name(),
            &r.reason,
            &r.model_hash_before,
            &r.model_hash_after,
            r.started_at,
            r.finished_at,
            &r.execution_provider,
            &r.undone_forgets,
        );
        if copy != signed {
            return Err("the plain copy does not say what the signed receipt says".into());
        }
        if self.key_id != key.id().to_string() {
            return Err(format!("key id {} is not the device key's", self.key_id));
        }
        let want = topics::receipt(&self.fleet, &r.device_id, &r.command_id);
        if !topics::topic_is(&self.topic, &want) {
            return Err(format!("collected on {}, not on {want}", self.topic));
        }
        Ok(r)
    }
}

/// SHA-256 hex of a stored line.
pub fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// The ledger open for appending.
pub struct Ledger {
    log: JsonLines,
    pub entries: Vec<Entry>,
    /// Hash of the last line (the chain's head).
    pub head: String,
    /// (device, SHA-256 of the receipt) of every entry: a receipt is kept once.
    seen: HashSet<(String, String)>,
}

/// The SHA-256 of a receipt's bytes.
fn receipt_id(hex_receipt: &str) -> String {
    hex::encode(Sha256::digest(hex_receipt.as_bytes()))
}

impl Ledger {
    /// Opens `path`, or creates it empty. Entries are parsed and chained on open (a broken
    /// chain is an error: run `lethectl audit verify`); a torn last line is cut off.
    pub fn open(path: &Path) -> Result<Ledger> {
        let (log, lines) = if path.exists() {
            let (log, read) = JsonLines::open_lines(path)?;
            if read.torn_tail {
                eprintln!("note: {}: a torn last line was dropped", path.display());
            }
            (log, read.lines)
        } else {
            (JsonLines::create::<Entry>(path, &[])?, Vec::new())
        };
        let mut l = Ledger {
            log,
            entries: Vec::new(),
            head: GENESIS.to_string(),
            seen: HashSet::new(),
        };
        for (i, line) in lines.iter().enumerate() {
            let e: Entry = serde_json::from_str(line)
                .with_context(|| format!("{}, line {}: damaged entry", path.display(), i + 1))?;
            if e.prev != l.head || e.n != i as u64 + 1 {
                anyhow::bail!(
                    "{}, line {}: the chain is broken (run lethectl audit verify)",
                    path.display(),
                    i + 1
                );
            }
            l.head = line_hash(line);
            l.seen.insert((e.device.clone(), receipt_id(&e.receipt)));
            l.entries.push(e);
        }
        Ok(l)
    }

    /// Whether this receipt of this device is already in the ledger.
    pub fn has(&self, device: &str, receipt_hex: &str) -> bool {
        self.seen
            .contains(&(device.to_string(), receipt_id(receipt_hex)))
    }

    /// Appends `new` (everything filled but `n` and `prev`, which are set here), chained, in
    /// one fsynced write.
    pub fn append(&mut self, new: Vec<Entry>) -> Result<()> {
        let mut buf = String::new();
        let mut head = self.head.clone();
        let mut made = Vec::with_capacity(new.len());
        for mut e in new {
            e.n = (self.entries.len() + made.len()) as u64 + 1;
            e.prev = head;
            let line = serde_json::to_string(&e)?;
            head = line_hash(&line);
            buf.push_str(&line);
            buf.push('\n');
            made.push(e);
        }
        self.log.append_raw(buf.as_bytes())?;
        self.head = head;
        for e in made {
            self.seen.insert((e.device.clone(), receipt_id(&e.receipt)));
            self.entries.push(e);
        }
        Ok(())
    }
}

/// A problem found on one line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub line: usize,
    pub what: String,
}

/// What verifying a ledger found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Entries that passed every check.
    pub good: Vec<Entry>,
    pub problems: Vec<Problem>,
    /// Hash of the last whole line.
    pub head: String,
    pub lines: usize,
}

/// Re-verifies the ledger at `path` offline with the devices' public keys `pubs` (by device):
/// every line, the chain, and, given `expect_head`, the last line against it.
pub fn verify(
    path: &Path,
    pubs: &HashMap<String, PublicKey>,
    expect_head: Option<&str>,
) -> Result<Verified> {
    let read = read_lines(path)?;
    let mut v = Verified {
        head: GENESIS.to_string(),
        lines: read.lines.len(),
        ..Default::default()
    };
    for (i, line) in read.lines.iter().enumerate() {
        let n = i + 1;
        let mut problem = |what: String| v.problems.push(Problem { line: n, what });
        let e: Entry = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(err) => {
                problem(format!("not a ledger entry: {err}"));
                v.head = line_hash(line);
                continue;
            }
        };
        if e.n != n as u64 {
            problem(format!("numbered {}, found at line {n}", e.n));
        }
        if e.prev != v.head {
            problem(if n == 1 {
                "the first entry does not start the chain (a line before it was removed?)".into()
            } else {
                format!(
                    "does not follow line {} as stored (a line changed, removed or moved)",
                    n - 1
                )
            });
        }
        v.head = line_hash(line);
        let ok = match pubs.get(&e.device) {
            None => {
                problem(format!("no public key for device {}", e.device));
                false
            }
            Some(key) => match e.check(key) {
                Ok(_) => true,
                Err(why) => {
                    problem(why);
                    false
                }
            },
        };
        if ok && !v.problems.iter().any(|p| p.line == n) {
            v.good.push(e);
        }
    }
    if read.torn_tail {
        v.problems.push(Problem {
            line: read.lines.len() + 1,
            what: "an incomplete last line (an interrupted write)".into(),
        });
    }
    if let Some(h) = expect_head {
        if h != v.head {
            v.problems.push(Problem {
                line: read.lines.len(),
                what: format!("the ledger's head is {}, not the recorded {h}", v.head),
            });
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_proto::{sign_receipt, SigningKey, Verdict};
    use std::collections::BTreeMap;

    fn receipt(dev: &SigningKey, cmd: &str, verdict: Verdict) -> (Vec<u8>, Receipt) {
        let r = Receipt {
            v: 1,
            command_id: cmd.into(),
            device_id: dev.name().into(),
            verdict,
            reason: None,
            model_hash_before: "aa".into(),
            model_hash_after: "bb".into(),
            metrics: BTreeMap::new(),
            execution_provider: Some("cpu".into()),
            started_at: 10,
            finished_at: 12,
            undone_forgets: Vec::new(),
        };
        (sign_receipt(&r, dev).unwrap(), r)
    }

    fn entry(dev: &SigningKey, cmd: &str) -> Entry {
        let (bytes, r) = receipt(dev, cmd, Verdict::Committed);
        let topic = topics::receipt("lab", dev.name(), cmd);
        let mut e = Entry::of_receipt("lab", topic, dev.id().to_string(), r, &bytes, 0);
        e.collected_at = 1;
        e
    }

    fn ledger_of(entries: Vec<Entry>) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("ledger.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        l.append(entries).unwrap();
        (tmp, p)
    }

    fn keys() -> (SigningKey, SigningKey, HashMap<String, PublicKey>) {
        let a = SigningKey::generate("cam-01").unwrap();
        let b = SigningKey::generate("cam-02").unwrap();
        let pubs = [
            (a.name().to_string(), a.public()),
            (b.name().to_string(), b.public()),
        ]
        .into_iter()
        .collect();
        (a, b, pubs)
    }

    #[test]
    fn a_reverts_undone_forgets_are_copied_and_a_changed_copy_is_caught() {
        let dev = SigningKey::generate("cam-01").unwrap();
        let (_, mut r) = receipt(&dev, "revert-1", Verdict::Committed);
        r.undone_forgets = vec![UndoneForget {
            command_id: "forget-1".into(),
            concept: "anna adler".into(),
        }];
        let bytes = sign_receipt(&r, &dev).unwrap();
        let topic = topics::receipt("lab", dev.name(), "revert-1");
        let mut e = Entry::of_receipt("lab", topic, dev.id().to_string(), r.clone(), &bytes, 0);
        assert_eq!(e.undone_forgets, r.undone_forgets);
        assert!(e.check(&dev.public()).is_ok());
        e.undone_forgets.clear();
        let why = e.check(&dev.public()).unwrap_err();
        assert!(why.contains("plain copy"), "{why}");
    }

    #[test]
    fn a_ledger_of_signed_receipts_verifies_and_reopens_with_its_head() {
        let (a, b, pubs) = keys();
        let (_t, p) = ledger_of(vec![entry(&a, "c1"), entry(&b, "c1"), entry(&a, "c2")]);
        let v = verify(&p, &pubs, None).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.good.len(), 3);
        let l = Ledger::open(&p).unwrap();
        assert_eq!(l.head, v.head);
        assert!(l.has("cam-02", &entry(&b, "c1").receipt));
        assert!(!l.has("cam-01", &entry(&b, "c1").receipt));
        assert!(verify(&p, &pubs, Some(&v.head))
            .unwrap()
            .problems
            .is_empty());
        assert_eq!(verify(&p, &pubs, Some(GENESIS)).unwrap().problems.len(), 1);
    }

    fn tamper(p: &Path, line: usize, f: impl Fn(&mut serde_json::Value)) {
        let text = std::fs::read_to_string(p).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut v: serde_json::Value = serde_json::from_str(&lines[line - 1]).unwrap();
        f(&mut v);
        lines[line - 1] = v.to_string();
        std::fs::write(p, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn a_verdict_changed_in_the_plain_copy_is_caught_on_its_line_and_breaks_the_chain() {
        let (a, b, pubs) = keys();
        let (_t, p) = ledger_of(vec![entry(&a, "c1"), entry(&b, "c1"), entry(&a, "c2")]);
        tamper(&p, 2, |v| v["verdict"] = "rolled_back".into());
        let v = verify(&p, &pubs, None).unwrap();
        let lines: Vec<usize> = v.problems.iter().map(|x| x.line).collect();
        assert_eq!(lines, [2, 3], "{:?}", v.problems);
        assert!(
            v.problems[0].what.contains("plain copy"),
            "{:?}",
            v.problems
        );
        assert_eq!(v.good.len(), 1);
        assert!(
            Ledger::open(&p).is_err(),
            "appending to a broken ledger is refused"
        );
    }

    #[test]
    fn a_receipt_swapped_for_another_devices_or_a_removed_line_is_caught() {
        let (a, b, pubs) = keys();
        let (_t, p) = ledger_of(vec![entry(&a, "c1"), entry(&b, "c1"), entry(&a, "c2")]);
        let other = entry(&b, "c2").receipt;
        tamper(&p, 3, |v| v["receipt"] = other.clone().into());
        let v = verify(&p, &pubs, None).unwrap();
        assert!(v
            .problems
            .iter()
            .any(|x| x.line == 3 && x.what.contains("does not verify")));

        let (_t2, p2) = ledger_of(vec![entry(&a, "c1"), entry(&b, "c1"), entry(&a, "c2")]);
        let text = std::fs::read_to_string(&p2).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&p2, kept.join("\n") + "\n").unwrap();
        let v = verify(&p2, &pubs, None).unwrap();
        assert!(
            v.problems
                .iter()
                .any(|x| x.line == 2 && x.what.contains("line 1")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn a_receipt_filed_under_another_command_or_without_a_key_is_caught() {
        let (a, _b, pubs) = keys();
        let mut e = entry(&a, "c1");
        e.topic = topics::receipt("lab", "cam-01", "c9");
        let (_t, p) = ledger_of(vec![e]);
        let v = verify(&p, &pubs, None).unwrap();
        assert!(
            v.problems[0].what.contains("collected on"),
            "{:?}",
            v.problems
        );
        let stranger = SigningKey::generate("cam-99").unwrap();
        let (_t2, p2) = ledger_of(vec![entry(&stranger, "c1")]);
        let v = verify(&p2, &pubs, None).unwrap();
        assert!(
            v.problems[0].what.contains("no public key"),
            "{:?}",
            v.problems
        );
    }
}
