//! An append-only file of JSON lines, for the operator's durable records (a rollout's state,
//! the audit ledger). Records are appended in batches, each batch written and fsynced before
//! `append` returns, so what a caller acts on after appending survives a crash.
//!
//! Invariants: a file is only ever appended to; a torn last line (a crash in the middle of a
//! write) is dropped when the file is opened for appending, and reported; a damaged line
//! anywhere else is an error naming the line, never skipped.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// An open JSON-lines file, positioned at its end.
pub struct JsonLines {
    path: PathBuf,
    file: File,
}

/// The lines of a file as read: the whole ones, and whether a torn last line was found.
pub struct Lines {
    pub lines: Vec<String>,
    pub torn_tail: bool,
}

/// Reads `path` into whole lines (without their newlines).
pub fn read_lines(path: &Path) -> Result<Lines> {
    let mut text = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut text))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut lines = Vec::new();
    let mut rest = &text[..];
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8(rest[..i].to_vec())
            .with_context(|| format!("{}, line {}: not UTF-8", path.display(), lines.len() + 1))?;
        lines.push(line);
        rest = &rest[i + 1..];
    }
    let torn_tail = !rest.is_empty();
    Ok(Lines { lines, torn_tail })
}

/// Parses every line of `lines` as a `T`; a damaged line is an error naming it.
pub fn parse_all<T: DeserializeOwned>(path: &Path, lines: &[String]) -> Result<Vec<T>> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}, line {}: damaged record", path.display(), i + 1))
        })
        .collect()
}

impl JsonLines {
    /// Creates a new file (it must not exist) holding `first` (maybe none), fsynced with its
    /// folder.
    pub fn create<T: Serialize>(path: &Path, first: &[T]) -> Result<JsonLines> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut j = JsonLines {
            path: path.to_path_buf(),
            file,
        };
        j.append(first)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok(j)
    }

    /// Opens an existing file for appending and returns its records; a torn last line is
    /// cut off (the returned flag says so).
    pub fn open<T: DeserializeOwned>(path: &Path) -> Result<(JsonLines, Vec<T>, bool)> {
        let (j, read) = JsonLines::open_lines(path)?;
        let records = parse_all(path, &read.lines)?;
        Ok((j, records, read.torn_tail))
    }

    /// Opens an existing file for appending and returns its whole lines as stored; a torn
    /// last line is cut off (`torn_tail` says so).
    pub fn open_lines(path: &Path) -> Result<(JsonLines, Lines)> {
        let read = read_lines(path)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        if read.torn_tail {
            let whole: u64 = read.lines.iter().map(|l| l.len() as u64 + 1).sum();
            file.set_len(whole)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cutting the torn last line of {}", path.display()))?;
        }
        let j = JsonLines {
            path: path.to_path_buf(),
            file,
        };
        Ok((j, read))
    }

    /// Appends `records`, one line each, and fsyncs; nothing is written for none.
    pub fn append<T: Serialize>(&mut self, records: &[T]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        self.append_raw(&buf)
    }

    /// Appends bytes that are already whole lines, and fsyncs.
    pub fn append_raw(&mut self, lines: &[u8]) -> Result<()> {
        if !lines.is_empty() && !lines.ends_with(b"\n") {
            bail!("appending to {}: not whole lines", self.path.display());
        }
        self.file
            .write_all(lines)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("appending to {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn records_appended_in_batches_read_back_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log.jsonl");
        let mut j = JsonLines::create(&p, &[json!({"n": 0})]).unwrap();
        j.append(&[json!({"n": 1}), json!({"n": 2})]).unwrap();
        j.append::<Value>(&[]).unwrap();
        drop(j);
        let (_, recs, torn) = JsonLines::open::<Value>(&p).unwrap();
        assert!(!torn);
        let ns: Vec<i64> = recs.iter().map(|r| r["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, [0, 1, 2]);
    }

    #[test]
    fn creating_over_an_existing_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log.jsonl");
        JsonLines::create::<Value>(&p, &[]).unwrap();
        assert!(JsonLines::create(&p, &[json!({})]).is_err());
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_reported_and_appending_goes_on_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log.jsonl");
        std::fs::write(&p, "{\"n\":0}\n{\"n\":1}\n{\"n\":").unwrap();
        let (mut j, recs, torn) = JsonLines::open::<Value>(&p).unwrap();
        assert!(torn);
        assert_eq!(recs.len(), 2);
        j.append(&[json!({"n": 2})]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"
        );
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_an_error_naming_the_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("log.jsonl");
        std::fs::write(&p, "{\"n\":0}\nnot json\n{\"n\":2}\n").unwrap();
        let e = JsonLines::open::<Value>(&p).err().unwrap();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }
}
