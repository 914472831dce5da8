//! The durable journal: an append-only JSON-lines file, one record per state transition,
//! fsynced before the transition is acted on or acknowledged. The state of every command is
//! derived by replaying the file.
//!
//! Invariants: every appended record passed [`state::apply`] (illegal transitions are refused
//! before anything is written); a record is on disk (`sync_data`) before `append` returns;
//! an append that fails (a full disk) is cut off again, so no partial record is ever
//! followed by another; a torn last line (a crash in the middle of a write) is dropped on
//! open and the file is truncated to the last whole record; a damaged line anywhere else is
//! an error, never silently skipped.
//!
//! Compaction ([`Journal::compact`]) keeps the file bounded by the commands it must still
//! know, not by history: it writes one `snapshot` record per kept command (every unsettled
//! one and the most recent settled ones) to a new file, syncs it and renames it over the
//! journal, so a crash leaves the old file or the new one. What it drops is forgotten: the
//! caller persists whatever it derives from dropped records (the replay floor) first.

use crate::fsutil::now_ms;
use crate::state::{apply, CommandState, Event, IllegalTransition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path}, line {line}: damaged record ({reason})")]
    Damaged {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
}

impl JournalError {
    /// Whether the journal could not be written because the disk (or quota) is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, JournalError::Io { source, .. } if crate::fsutil::is_storage_full(source))
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unix milliseconds.
    pub t: u64,
    /// SHA-256 of the command envelope: the key of a command.
    pub env: String,
    #[serde(flatten)]
    pub event: Event,
}

/// The open journal and the state it replays to.
pub struct Journal {
    path: PathBuf,
    file: File,
    states: BTreeMap<String, CommandState>,
    by_id: HashMap<String, String>,
    order: Vec<String>,
    /// Length of the file in bytes (whole records only).
    len: u64,
    /// Length right after the last compaction (0 before any: an old journal is compacted
    /// at its first chance).
    compacted_len: u64,
    /// Whether a torn last line was dropped on open.
    pub repaired_tail: bool,
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Settled commands dropped.
    pub dropped: usize,
    /// File length before and after, in bytes.
    pub before: u64,
    pub after: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and replays it.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        let mut j = Journal {
            path: path.to_path_buf(),
            file,
            states: BTreeMap::new(),
            by_id: HashMap::new(),
            order: Vec::new(),
            len: 0,
            compacted_len: 0,
            repaired_tail: false,
        };
        let mut good_len = 0usize;
        let mut line_no = 0usize;
        let mut rest = &text[..];
        while !rest.is_empty() {
            line_no += 1;
            let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            let parsed = serde_json::from_slice::<Record>(line);
            match parsed {
                Ok(rec) if complete => {
                    j.fold(&rec)?;
                    good_len += line.len() + 1;
                    rest = &rest[line.len() + 1..];
                }
                // A last line without its newline was cut by a crash: drop it.
                _ if !complete => {
                    j.repaired_tail = true;
                    break;
                }
                Err(e) => {
                    return Err(JournalError::Damaged {
                        path: path.to_path_buf(),
                        line: line_no,
                        reason: e.to_string(),
                    })
                }
                Ok(_) => unreachable!(),
            }
        }
        if j.repaired_tail {
            j.file.set_len(good_len as u64).map_err(io)?;
            j.file.sync_all().map_err(io)?;
        }
        j.len = good_len as u64;
        Ok(j)
    }

    fn fold(&mut self, rec: &Record) -> Result<(), JournalError> {
        let next = apply(self.states.get(&rec.env), &rec.env, rec.t, &rec.event)?;
        if !self.states.contains_key(&rec.env) {
            self.order.push(rec.env.clone());
        }
        if let Some(id) = &next.id {
            self.by_id.insert(id.clone(), rec.env.clone());
        }
        self.states.insert(rec.env.clone(), next);
        Ok(())
    }

    /// Checks, writes and fsyncs one transition, then updates the in-memory state.
    pub fn append(&mut self, env: &str, event: Event) -> Result<&CommandState, JournalError> {
        let rec = Record {
            t: now_ms(),
            env: env.to_string(),
            event,
        };
        // Refuse an illegal transition before writing anything.
        apply(self.states.get(env), env, rec.t, &rec.event)?;
        let mut line = serde_json::to_vec(&rec).expect("a record always serialises");
        line.push(b'\n');
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
        {
            // Cut off whatever part of the record reached the file: the next append must
            // not follow a partial line (which would read as damage in the middle).
            let _ = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            return Err(io(e));
        }
        self.len += line.len() as u64;
        self.fold(&rec)?;
        Ok(&self.states[env])
    }

    /// Bytes appended since the last compaction (since open, for a journal never compacted
    /// in this process: all of it).
    pub fn grown(&self) -> u64 {
        self.len.saturating_sub(self.compacted_len)
    }

    /// Length of the file in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Rewrites the journal as one `snapshot` record per command it keeps: every command not
    /// settled (`Phase::is_settled`) and the `keep_settled` most recent settled ones, in
    /// arrival order. The new file is written beside the journal, synced and renamed over
    /// it. The caller must have persisted what it derives from the dropped commands (the
    /// replay floor) before calling this.
    pub fn compact(&mut self, keep_settled: usize) -> Result<Compaction, JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let settled = self
            .order
            .iter()
            .filter(|e| self.states[*e].phase.is_settled())
            .count();
        let mut skip = settled.saturating_sub(keep_settled);
        let mut kept = Vec::with_capacity(self.order.len());
        let mut text = Vec::new();
        let t = now_ms();
        for env in &self.order {
            let st = &self.states[env];
            if st.phase.is_settled() && skip > 0 {
                skip -= 1;
                continue;
            }
            let rec = Record {
                t,
                env: env.clone(),
                event: Event::Snapshot {
                    of: Box::new(st.clone()),
                },
            };
            serde_json::to_writer(&mut text, &rec).expect("a record always serialises");
            text.push(b'\n');
            kept.push(env.clone());
        }
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.path.with_file_name(format!(".{name}.compact"));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            crate::fsutil::sync_dir(self.path.parent().unwrap_or(Path::new(".")))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let dropped = self.order.len() - kept.len();
        let keep: std::collections::HashSet<&String> = kept.iter().collect();
        self.states.retain(|e, _| keep.contains(e));
        self.by_id.retain(|_, e| keep.contains(e));
        self.order = kept;
        let before = self.len;
        self.len = text.len() as u64;
        self.compacted_len = self.len;
        Ok(Compaction {
            dropped,
            before,
            after: self.len,
        })
    }

    /// The state of the command with envelope hash `env`.
    pub fn get(&self, env: &str) -> Option<&CommandState> {
        self.states.get(env)
    }

    /// The state of the command with verified id `id`.
    pub fn by_id(&self, id: &str) -> Option<&CommandState> {
        self.by_id.get(id).and_then(|e| self.states.get(e))
    }

    /// Every command in arrival order.
    pub fn commands(&self) -> impl Iterator<Item = &CommandState> {
        self.order.iter().map(|e| &self.states[e])
    }

    /// The highest accepted sequence per issuer (the replay state the journal implies).
    pub fn accepted_sequences(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for s in self.states.values() {
            if let (Some(i), Some(q)) = (&s.issuer, s.seq) {
                let e = out.entry(i.clone()).or_insert(q);
                *e = (*e).max(q);
            }
        }
        out
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal file holding `text`, in a folder removed on drop.
    fn journal_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.jsonl");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    fn accepted(id: &str, seq: u64) -> Event {
        Event::Accepted {
            id: id.into(),
            issuer: "op".into(),
            seq,
            base_hash: "b".into(),
            concept: "c".into(),
            revert_to: None,
        }
    }

    #[test]
    fn only_a_full_disk_or_quota_is_storage_full() {
        let io = |e: std::io::Error| JournalError::Io {
            path: PathBuf::from("j"),
            source: e,
        };
        assert!(
            io(std::io::Error::from_raw_os_error(28)).is_storage_full(),
            "ENOSPC"
        );
        assert!(
            io(std::io::Error::from_raw_os_error(122)).is_storage_full(),
            "EDQUOT"
        );
        assert!(
            !io(std::io::Error::from_raw_os_error(5)).is_storage_full(),
            "EIO"
        );
        let damaged = JournalError::Damaged {
            path: PathBuf::from("j"),
            line: 1,
            reason: "x".into(),
        };
        assert!(!damaged.is_storage_full());
    }

    #[test]
    fn state_survives_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.jsonl");
        {
            let mut j = Journal::open(&p).unwrap();
            j.append("e1", Event::Received).unwrap();
            j.append("e1", accepted("op-1", 3)).unwrap();
            j.append("e1", Event::Preparing).unwrap();
        }
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.get("e1").unwrap().phase, crate::state::Phase::Preparing);
        assert_eq!(j.by_id("op-1").unwrap().env, "e1");
        assert_eq!(j.accepted_sequences()["op"], 3);
        assert!(!j.repaired_tail);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_file_repaired() {
        // Cut inside a record, or after a whole (legal) record but before its newline: either
        // way the append never returned, so the record does not count.
        let tails: [&[u8]; 2] = [
            br#"{"t":1,"env":"e1","state":"acc"#,
            br#"{"t":2,"env":"e1","state":"accepted","id":"x","issuer":"op","seq":9,"base_hash":"b","concept":"c"}"#,
        ];
        for tail in tails {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("journal.jsonl");
            Journal::open(&p)
                .unwrap()
                .append("e1", Event::Received)
                .unwrap();
            let whole = std::fs::read(&p).unwrap();
            let mut f = OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(tail).unwrap();
            drop(f);
            let mut j = Journal::open(&p).unwrap();
            assert!(j.repaired_tail);
            assert_eq!(std::fs::read(&p).unwrap(), whole);
            assert_eq!(j.get("e1").unwrap().phase, crate::state::Phase::Received);
            j.append("e1", accepted("op-1", 1)).unwrap();
            drop(j);
            let j = Journal::open(&p).unwrap();
            assert_eq!(j.get("e1").unwrap().phase, crate::state::Phase::Accepted);
        }
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_an_error() {
        let (_d, p) = journal_file("{not json}\n{\"t\":1,\"env\":\"e\",\"state\":\"received\"}\n");
        let err = Journal::open(&p).err().unwrap().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    fn rejected(n: u64) -> Event {
        Event::Rejected {
            code: "expired".into(),
            reason: format!("r{n}"),
            receipt: "ab".repeat(300),
        }
    }

    #[test]
    fn compaction_keeps_unsettled_and_recent_commands_and_bounds_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.jsonl");
        let mut j = Journal::open(&p).unwrap();
        // A command in flight, then 200 settled ones, with history.
        j.append("live", Event::Received).unwrap();
        j.append("live", accepted("op-live", 1)).unwrap();
        j.append("live", Event::Preparing).unwrap();
        for n in 0..200 {
            let env = format!("e{n:03}");
            j.append(&env, Event::Received).unwrap();
            if n % 2 == 0 {
                j.append(&env, rejected(n)).unwrap();
            } else {
                j.append(&env, accepted(&format!("op-{n}"), n + 2)).unwrap();
                j.append(&env, Event::Preparing).unwrap();
                for step in 1..=10 {
                    j.append(
                        &env,
                        Event::Training {
                            step,
                            of: 10,
                            loss: 1.0,
                        },
                    )
                    .unwrap();
                }
                j.append(
                    &env,
                    Event::Failed {
                        reason: "x".into(),
                        receipt: "cd".repeat(300),
                    },
                )
                .unwrap();
            }
        }
        let before = std::fs::metadata(&p).unwrap().len();
        assert_eq!(j.len_bytes(), before);
        let c = j.compact(16).unwrap();
        assert_eq!((c.dropped, c.before), (184, before));
        let after = std::fs::metadata(&p).unwrap().len();
        assert_eq!((c.after, j.len_bytes(), j.grown()), (after, after, 0));
        // 17 one-line snapshots of under a kilobyte each, from a file fifteen times that.
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 17);
        assert!(
            after < 17 * 1024 && before > 15 * after,
            "{before} -> {after}"
        );
        let check = |j: &Journal| {
            assert_eq!(j.commands().count(), 17);
            assert_eq!(j.get("live").unwrap().phase, crate::state::Phase::Preparing);
            assert_eq!(j.by_id("op-199").unwrap().env, "e199");
            assert_eq!(j.get("e198").unwrap().phase, crate::state::Phase::Rejected);
            assert!(j.get("e183").is_none() && j.by_id("op-183").is_none());
            assert_eq!(j.commands().map(|c| c.env.as_str()).last(), Some("e199"));
        };
        check(&j);
        // The same after a reopen, and the lifecycle of the live command goes on.
        drop(j);
        let mut j = Journal::open(&p).unwrap();
        check(&j);
        j.append("live", Event::Verifying).unwrap();
        assert_eq!(j.grown(), j.len_bytes(), "reopened: counted from zero");
        drop(j);
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.get("live").unwrap().phase, crate::state::Phase::Verifying);
    }

    #[test]
    fn a_damaged_line_is_reported_with_its_own_line_number() {
        let (_d, p) = journal_file(
            "{\"t\":1,\"env\":\"e\",\"state\":\"received\"}\n{\"t\":2,\"env\":\"e\",\"state\":1}\n\
             {\"t\":3,\"env\":\"f\",\"state\":\"received\"}\n",
        );
        match Journal::open(&p) {
            Err(JournalError::Damaged { line, .. }) => assert_eq!(line, 2),
            other => panic!("{:?}", other.map(|j| j.repaired_tail)),
        }
    }

    #[test]
    fn a_replayed_illegal_transition_is_an_error_not_a_skipped_line() {
        let (_d, p) = journal_file(
            "{\"t\":1,\"env\":\"e\",\"state\":\"received\"}\n{\"t\":2,\"env\":\"e\",\"state\":\"verifying\"}\n",
        );
        assert!(matches!(
            Journal::open(&p),
            Err(JournalError::Illegal(IllegalTransition {
                event: "verifying",
                ..
            }))
        ));
    }

    #[test]
    fn commands_are_listed_once_each_in_arrival_order_and_found_by_id() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.jsonl");
        let mut j = Journal::open(&p).unwrap();
        for e in ["e2", "e1", "e3"] {
            j.append(e, Event::Received).unwrap();
        }
        j.append("e1", accepted("op-1", 4)).unwrap();
        j.append("e2", accepted("op-2", 7)).unwrap();
        j.append("e1", Event::Preparing).unwrap();
        let st = j.append("e3", accepted("op-3", 5)).unwrap();
        assert_eq!(st.phase, crate::state::Phase::Accepted);
        drop(j);
        let j = Journal::open(&p).unwrap();
        let order: Vec<&str> = j.commands().map(|c| c.env.as_str()).collect();
        assert_eq!(order, ["e2", "e1", "e3"]);
        assert_eq!(j.by_id("op-2").unwrap().env, "e2");
        assert!(j.by_id("op-9").is_none() && j.get("e9").is_none());
        // The highest sequence per issuer, whatever the order they were accepted in.
        assert_eq!(
            j.accepted_sequences(),
            BTreeMap::from([("op".to_string(), 7)])
        );
        assert_eq!(j.path(), p);
    }

    #[test]
    fn an_illegal_transition_is_refused_and_not_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.jsonl");
        let mut j = Journal::open(&p).unwrap();
        j.append("e1", Event::Received).unwrap();
        let before = std::fs::read(&p).unwrap();
        assert!(j.append("e1", Event::Verifying).is_err());
        assert!(j.append("e2", Event::Preparing).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }
}
