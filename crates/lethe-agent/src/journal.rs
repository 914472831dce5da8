//! The durable journal: an append-only JSON-lines file, one record per state transition,
//! fsynced before the transition is acted on or acknowledged. The state of every command is
//! derived by replaying the file.
//!
//! Invariants: every appended record passed [`state::apply`] (illegal transitions are refused
//! before anything is written); a record is on disk (`sync_data`) before `append` returns;
//! a torn last line (a crash in the middle of a write) is dropped on open and the file is
//! truncated to the last whole record; a damaged line anywhere else is an error, never
//! silently skipped.

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
    /// Whether a torn last line was dropped on open.
    pub repaired_tail: bool,
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
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.fold(&rec)?;
        Ok(&self.states[env])
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
        }
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
