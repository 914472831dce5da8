//! The adapter store: the adapter versions the device has run, by content hash, and the
//! `current` pointer. Design.md decision 2: commit = write the new version (temp, fsync,
//! rename, fsync folder), then move the pointer the same way; rollback = point back.
//!
//! Layout under the store folder:
//! ```text
//! versions/<sha256>.bin              f32le adapter, named by its own hash
//! versions/<sha256>.forgotten.json   what that version has forgotten: the forgets (command
//!                                    id, concept name), the command that made it and the
//!                                    version it was made from (absent for the package's own
//!                                    adapter; a plain list of names in older stores)
//! current                            JSON {"hash", "previous", "history"}
//! undone.json                        forgets that a revert undid (command, concept, by)
//! ```
//!
//! Retention: the current version and the `keep` (default [`DEFAULT_KEEP_VERSIONS`]) versions
//! that were current before it (`history`, newest last) stay; older ones are pruned. That is
//! what an operator's revert can reach besides the package's original adapter, which is
//! always reachable because the package holds it. Eight because an operator reverts what a
//! recent rollout did (the last forget or the last few), and eight versions of the bundled
//! adapter are 5.7 MB.
//!
//! Invariants: only this module renames into `current`; `current` always names a version
//! file that was fully written and synced before the pointer moved; a version whose bytes do
//! not hash to its name is never served (on open, a corrupt current falls back to the
//! previous valid version, and says so); `undone.json` is written before the pointer of the
//! revert that undoes those forgets moves, and is read through the current version's list
//! (a forget the current version still holds is never reported undone).

use crate::fsutil::{sha256_hex, sync_dir, write_atomic};
use lethe_model::Adapter;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("adapter store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("adapter store {0}: no valid version (current and previous are missing or corrupt)")]
    NoValidVersion(PathBuf),
    #[error("adapter store: version {0} is not in the store or is corrupt")]
    MissingVersion(String),
}

/// Versions kept besides the current one (see the module docs).
pub const DEFAULT_KEEP_VERSIONS: usize = 8;
/// Most records `undone.json` keeps (the oldest go first).
pub const MAX_UNDONE_RECORDS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pointer {
    hash: String,
    previous: Option<String>,
    /// Versions that were current before, oldest first (without `hash`).
    #[serde(default)]
    history: Vec<String>,
}

/// One forget a version holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetRecord {
    /// The command that made it (empty in a list written before ids were kept).
    pub command: String,
    pub concept: String,
}

/// What the store knows of a version besides its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// The forgets this version holds, oldest first.
    pub forgets: Vec<ForgetRecord>,
    /// The command that made this version.
    #[serde(default)]
    pub made_by: Option<String>,
    /// The version it was made from.
    #[serde(default)]
    pub base: Option<String>,
}

impl VersionMeta {
    /// The concepts this version has forgotten, oldest first.
    pub fn concepts(&self) -> Vec<String> {
        self.forgets.iter().map(|f| f.concept.clone()).collect()
    }
}

/// The two forms of `<hash>.forgotten.json`.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredMeta {
    Meta(VersionMeta),
    /// Older stores: the concepts' names only.
    Names(Vec<String>),
}

/// A forget that a revert undid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoneRecord {
    pub command: String,
    pub concept: String,
    /// The revert command that undid it.
    pub undone_by: String,
}

/// The open store.
pub struct AdapterStore {
    dir: PathBuf,
    len: usize,
    keep: usize,
    pointer: Pointer,
    /// What the current version has forgotten (its `.forgotten.json`), kept in memory so the
    /// status, published often, reads no file; follows the pointer.
    current_meta: VersionMeta,
    /// `undone.json`, kept in memory for the same reason; written through.
    undone_log: Vec<UndoneRecord>,
    /// Set when open had to fall back from a corrupt current version.
    pub recovered_from: Option<String>,
}

impl AdapterStore {
    /// Opens the store in `dir`, seeding it with `initial` (the package's adapter) when empty.
    pub fn open(dir: &Path, initial: &Adapter) -> Result<AdapterStore, StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir.join("versions")).map_err(io)?;
        let mut s = AdapterStore {
            dir: dir.to_path_buf(),
            len: initial.len(),
            keep: DEFAULT_KEEP_VERSIONS,
            pointer: Pointer {
                hash: String::new(),
                previous: None,
                history: Vec::new(),
            },
            current_meta: VersionMeta::default(),
            undone_log: Vec::new(),
            recovered_from: None,
        };
        s.undone_log = s.read_undone();
        let ptr_path = dir.join("current");
        let ptr: Option<Pointer> = std::fs::read(&ptr_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        match ptr {
            None => {
                let h = s.put(initial)?;
                s.set_pointer(Pointer {
                    hash: h,
                    previous: None,
                    history: Vec::new(),
                })?;
            }
            Some(p) => {
                if s.load(&p.hash).is_ok() {
                    s.current_meta = s.meta(&p.hash);
                    s.pointer = p;
                } else if let Some(prev) = p.previous.clone().filter(|h| s.load(h).is_ok()) {
                    s.recovered_from = Some(p.hash.clone());
                    let mut history = p.history.clone();
                    history.retain(|h| *h != prev && *h != p.hash);
                    s.set_pointer(Pointer {
                        hash: prev,
                        previous: history.last().cloned(),
                        history,
                    })?;
                } else {
                    return Err(StoreError::NoValidVersion(dir.to_path_buf()));
                }
            }
        }
        Ok(s)
    }

    /// Sets how many earlier versions stay (at least 1: the previous one, for rollback).
    pub fn with_keep(mut self, keep: usize) -> AdapterStore {
        self.keep = keep.max(1);
        self
    }

    fn version_path(&self, hash: &str) -> PathBuf {
        self.dir.join("versions").join(format!("{hash}.bin"))
    }

    /// Reads and hash-checks a version.
    pub fn load(&self, hash: &str) -> Result<Adapter, StoreError> {
        let bytes = std::fs::read(self.version_path(hash))
            .map_err(|_| StoreError::MissingVersion(hash.to_string()))?;
        if sha256_hex(&bytes) != hash {
            return Err(StoreError::MissingVersion(hash.to_string()));
        }
        Adapter::from_bytes(&bytes, self.len)
            .map_err(|_| StoreError::MissingVersion(hash.to_string()))
    }

    /// Whether a valid version file of `hash` exists.
    pub fn has(&self, hash: &str) -> bool {
        self.load(hash).is_ok()
    }

    fn forgotten_path(&self, hash: &str) -> PathBuf {
        self.dir
            .join("versions")
            .join(format!("{hash}.forgotten.json"))
    }

    /// What the store knows of version `hash` (empty for a version stored without it, such
    /// as the package's adapter).
    pub fn meta(&self, hash: &str) -> VersionMeta {
        let stored = std::fs::read(self.forgotten_path(hash))
            .ok()
            .and_then(|b| serde_json::from_slice::<StoredMeta>(&b).ok());
        match stored {
            Some(StoredMeta::Meta(m)) => m,
            Some(StoredMeta::Names(names)) => VersionMeta {
                forgets: names
                    .into_iter()
                    .map(|concept| ForgetRecord {
                        command: String::new(),
                        concept,
                    })
                    .collect(),
                ..VersionMeta::default()
            },
            None => VersionMeta::default(),
        }
    }

    /// The concepts version `hash` has forgotten, oldest first.
    pub fn forgotten(&self, hash: &str) -> Vec<String> {
        self.meta(hash).concepts()
    }

    /// Writes a version durably with what it has forgotten (the list first, so a stored
    /// version never lacks it) and returns its hash.
    pub fn put_version(
        &mut self,
        adapter: &Adapter,
        meta: &VersionMeta,
    ) -> Result<String, StoreError> {
        let h = sha256_hex(&adapter.to_bytes());
        let p = self.forgotten_path(&h);
        let bytes = serde_json::to_vec(meta).expect("meta serialises");
        write_atomic(&p, &bytes).map_err(|source| StoreError::Io { path: p, source })?;
        if h == self.pointer.hash {
            self.current_meta = meta.clone();
        }
        self.put(adapter)
    }

    /// What the current version has forgotten.
    pub fn current_meta(&self) -> &VersionMeta {
        &self.current_meta
    }

    /// The stored version that command `id` made, if the store still holds it.
    pub fn made_by(&self, id: &str) -> Option<(String, VersionMeta)> {
        let dir = std::fs::read_dir(self.dir.join("versions")).ok()?;
        dir.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let h = name.strip_suffix(".forgotten.json")?;
            let m = self.meta(h);
            (m.made_by.as_deref() == Some(id) && self.has(h)).then(|| (h.to_string(), m))
        })
    }

    fn undone_path(&self) -> PathBuf {
        self.dir.join("undone.json")
    }

    fn read_undone(&self) -> Vec<UndoneRecord> {
        std::fs::read(self.undone_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records durably that `by` (a revert) undoes `forgets`; call it before the revert's
    /// pointer moves.
    pub fn record_undone(&mut self, forgets: &[ForgetRecord], by: &str) -> Result<(), StoreError> {
        let mut all = self.undone_log.clone();
        all.extend(forgets.iter().map(|f| UndoneRecord {
            command: f.command.clone(),
            concept: f.concept.clone(),
            undone_by: by.to_string(),
        }));
        let extra = all.len().saturating_sub(MAX_UNDONE_RECORDS);
        all.drain(..extra);
        let path = self.undone_path();
        write_atomic(&path, &serde_json::to_vec(&all).expect("records serialise"))
            .map_err(|source| StoreError::Io { path, source })?;
        self.undone_log = all;
        Ok(())
    }

    /// Concepts that were forgotten once and that the current version does not hold
    /// forgotten: undone by a revert and not forgotten again since (newest record of each).
    pub fn undone(&self) -> Vec<UndoneRecord> {
        let now = &self.current_meta.forgets;
        let mut out: Vec<UndoneRecord> = Vec::new();
        for r in self.undone_log.iter().rev() {
            let forgotten = now.iter().any(|f| f.concept == r.concept);
            if !forgotten && !out.iter().any(|o| o.concept == r.concept) {
                out.push(r.clone());
            }
        }
        out.reverse();
        out
    }

    /// Writes a version file durably (idempotent) and returns its hash.
    pub fn put(&self, adapter: &Adapter) -> Result<String, StoreError> {
        let bytes = adapter.to_bytes();
        let h = sha256_hex(&bytes);
        if !self.has(&h) {
            let p = self.version_path(&h);
            write_atomic(&p, &bytes).map_err(|source| StoreError::Io { path: p, source })?;
        }
        Ok(h)
    }

    fn set_pointer(&mut self, p: Pointer) -> Result<(), StoreError> {
        let path = self.dir.join("current");
        let bytes = serde_json::to_vec(&p).expect("pointer serialises");
        write_atomic(&path, &bytes).map_err(|source| StoreError::Io { path, source })?;
        self.current_meta = self.meta(&p.hash);
        self.pointer = p;
        Ok(())
    }

    /// Hash of the current version.
    pub fn current_hash(&self) -> &str {
        &self.pointer.hash
    }

    /// Hash of the version before the current one, kept for rollback.
    pub fn previous_hash(&self) -> Option<&str> {
        self.pointer.previous.as_deref()
    }

    /// The current adapter (hash-checked).
    pub fn current(&self) -> Result<Adapter, StoreError> {
        self.load(&self.pointer.hash)
    }

    /// Versions that were current before the current one, oldest first (what a revert
    /// can reach besides the package's adapter, as long as their files are valid).
    pub fn history(&self) -> &[String] {
        &self.pointer.history
    }

    /// Makes an already stored version current, keeping the old one as previous and in the
    /// history (at most `keep` entries; a version appears there once).
    pub fn commit(&mut self, hash: &str) -> Result<(), StoreError> {
        if !self.has(hash) {
            return Err(StoreError::MissingVersion(hash.to_string()));
        }
        if self.pointer.hash == hash {
            return Ok(());
        }
        let prev = self.pointer.hash.clone();
        let mut history = self.pointer.history.clone();
        history.retain(|h| *h != prev && *h != hash);
        history.push(prev.clone());
        let extra = history.len().saturating_sub(self.keep);
        history.drain(..extra);
        self.set_pointer(Pointer {
            hash: hash.to_string(),
            previous: Some(prev),
            history,
        })
    }

    /// Points back to the previous version.
    pub fn rollback(&mut self) -> Result<(), StoreError> {
        let prev = self
            .pointer
            .previous
            .clone()
            .ok_or_else(|| StoreError::MissingVersion("(no previous version)".into()))?;
        self.commit(&prev)
    }

    /// Removes version files (and their lists) other than current, previous and history.
    pub fn prune(&self) -> Result<usize, StoreError> {
        let vdir = self.dir.join("versions");
        let io = |source| StoreError::Io {
            path: vdir.clone(),
            source,
        };
        let mut n = 0;
        for e in std::fs::read_dir(&vdir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let h = name.split('.').next().unwrap_or_default();
            let kept = h == self.pointer.hash
                || Some(h) == self.pointer.previous.as_deref()
                || self.pointer.history.iter().any(|k| k == h);
            if !kept {
                std::fs::remove_file(e.path()).map_err(io)?;
                n += 1;
            }
        }
        sync_dir(&vdir).map_err(io)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(x: f32) -> Adapter {
        Adapter(vec![x; 8])
    }

    /// A store in `dir` seeded with `a(1.0)`, with `a(2.0)` stored and committed over it.
    fn store_at_two(dir: &Path) -> (AdapterStore, String) {
        let mut s = AdapterStore::open(dir, &a(1.0)).unwrap();
        let h2 = s.put(&a(2.0)).unwrap();
        s.commit(&h2).unwrap();
        (s, h2)
    }

    #[test]
    fn an_empty_store_is_seeded_with_the_package_adapter() {
        let d = tempfile::tempdir().unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s.current_hash(), a(1.0).sha256_hex());
        assert_eq!(s.current().unwrap(), a(1.0));
    }

    #[test]
    fn commit_keeps_the_previous_and_rollback_returns_to_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, h2) = store_at_two(d.path());
        let s2 = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s2.current_hash(), h2);
        assert_eq!(s2.previous_hash(), Some(a(1.0).sha256_hex().as_str()));
        s.rollback().unwrap();
        assert_eq!(s.current().unwrap(), a(1.0));
    }

    #[test]
    fn a_corrupt_current_version_falls_back_to_the_previous() {
        let d = tempfile::tempdir().unwrap();
        let (_, h2) = store_at_two(d.path());
        std::fs::write(
            d.path().join("versions").join(format!("{h2}.bin")),
            b"garbage",
        )
        .unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s.current().unwrap(), a(1.0));
        assert_eq!(s.recovered_from.as_deref(), Some(h2.as_str()));
    }

    #[test]
    fn a_corrupt_current_falls_back_keeping_the_rest_of_its_history() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        for x in [2.0, 3.0, 4.0] {
            let h = s.put(&a(x)).unwrap();
            s.commit(&h).unwrap();
        }
        let h4 = a(4.0).sha256_hex();
        std::fs::write(d.path().join("versions").join(format!("{h4}.bin")), b"x").unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s.current_hash(), a(3.0).sha256_hex());
        let hs = |xs: &[f32]| xs.iter().map(|x| a(*x).sha256_hex()).collect::<Vec<_>>();
        assert_eq!(
            s.history(),
            hs(&[1.0, 2.0]),
            "neither the corrupt one nor the new current"
        );
        assert_eq!(s.previous_hash(), Some(a(2.0).sha256_hex().as_str()));
    }

    #[test]
    fn committing_an_unstored_version_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert!(s.commit(&"0".repeat(64)).is_err());
        assert_eq!(s.current().unwrap(), a(1.0));
    }

    /// A meta that forgot `names`, each by the command `op-<name>`.
    fn forgetting(names: &[String]) -> VersionMeta {
        VersionMeta {
            forgets: names
                .iter()
                .map(|n| ForgetRecord {
                    command: format!("op-{n}"),
                    concept: n.clone(),
                })
                .collect(),
            made_by: names.last().map(|n| format!("op-{n}")),
            base: None,
        }
    }

    #[test]
    fn a_version_remembers_what_it_forgot() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert!(s.forgotten(s.current_hash()).is_empty());
        let names = vec!["anna adler".to_string(), "boris berger".to_string()];
        let h = s.put_version(&a(2.0), &forgetting(&names)).unwrap();
        s.commit(&h).unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s.forgotten(s.current_hash()), names);
        assert!(s.forgotten(&a(1.0).sha256_hex()).is_empty());
    }

    #[test]
    fn prune_removes_the_lists_of_pruned_versions() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap().with_keep(1);
        for x in [2.0, 3.0, 4.0] {
            let h = s
                .put_version(&a(x), &forgetting(&[format!("c{x}")]))
                .unwrap();
            s.commit(&h).unwrap();
        }
        assert_eq!(s.prune().unwrap(), 3, "version 1, version 2 and its list");
        assert_eq!(s.forgotten(&a(4.0).sha256_hex()), vec!["c4".to_string()]);
        assert!(s.forgotten(&a(2.0).sha256_hex()).is_empty());
        let left = std::fs::read_dir(d.path().join("versions"))
            .unwrap()
            .count();
        assert_eq!(left, 4, "two versions and their two lists");
    }

    #[test]
    fn prune_keeps_current_and_previous() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap().with_keep(1);
        for x in [2.0, 3.0] {
            let h = s.put(&a(x)).unwrap();
            s.commit(&h).unwrap();
        }
        assert_eq!(s.prune().unwrap(), 1);
        assert!(s.has(&a(3.0).sha256_hex()) && s.has(&a(2.0).sha256_hex()));
    }

    #[test]
    fn prune_removes_every_other_version_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap().with_keep(1);
        for x in [2.0, 3.0, 4.0] {
            s.put(&a(x)).unwrap();
        }
        let h5 = s.put(&a(5.0)).unwrap();
        s.commit(&h5).unwrap();
        assert_eq!(s.prune().unwrap(), 3);
        let left: Vec<bool> = [1.0, 2.0, 3.0, 4.0, 5.0]
            .map(|x| s.has(&a(x).sha256_hex()))
            .to_vec();
        assert_eq!(left, [true, false, false, false, true]);
        assert_eq!(s.prune().unwrap(), 0, "nothing left to prune");
    }

    #[test]
    fn the_last_keep_versions_stay_for_a_revert_and_older_ones_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap().with_keep(3);
        for x in [2.0, 3.0, 4.0, 5.0, 6.0] {
            let h = s.put(&a(x)).unwrap();
            s.commit(&h).unwrap();
        }
        let hs = |xs: &[f32]| xs.iter().map(|x| a(*x).sha256_hex()).collect::<Vec<_>>();
        assert_eq!(s.history(), hs(&[3.0, 4.0, 5.0]));
        assert_eq!(s.prune().unwrap(), 2, "versions 1 and 2");
        let held: Vec<bool> = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
            .map(|x| s.has(&a(x).sha256_hex()))
            .to_vec();
        assert_eq!(held, [false, false, true, true, true, true]);
        // Going back to a version in the history moves it out of there, once.
        s.commit(&a(4.0).sha256_hex()).unwrap();
        assert_eq!(s.history(), hs(&[3.0, 5.0, 6.0]));
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s.history(), hs(&[3.0, 5.0, 6.0]), "the history is durable");
        assert_eq!(s.previous_hash(), Some(a(6.0).sha256_hex().as_str()));
    }

    #[test]
    fn a_list_of_names_from_an_older_store_reads_as_forgets_without_ids() {
        let d = tempfile::tempdir().unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        let h = s.put(&a(2.0)).unwrap();
        std::fs::write(s.forgotten_path(&h), br#"["anna adler"]"#).unwrap();
        let m = s.meta(&h);
        assert_eq!(
            m.forgets,
            vec![ForgetRecord {
                command: String::new(),
                concept: "anna adler".into()
            }]
        );
        assert_eq!((m.made_by, m.base), (None, None));
    }

    #[test]
    fn the_version_a_command_made_is_found_while_it_is_held() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap().with_keep(1);
        let mut m = forgetting(&["anna adler".to_string()]);
        m.base = Some(a(1.0).sha256_hex());
        let h = s.put_version(&a(2.0), &m).unwrap();
        s.commit(&h).unwrap();
        assert_eq!(s.made_by("op-anna adler"), Some((h.clone(), m)));
        assert_eq!(s.made_by("op-other"), None);
        for x in [3.0, 4.0] {
            let h = s.put(&a(x)).unwrap();
            s.commit(&h).unwrap();
        }
        s.prune().unwrap();
        assert_eq!(s.made_by("op-anna adler"), None, "pruned");
    }

    #[test]
    fn an_undone_forget_is_reported_until_the_current_version_forgets_it_again() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert!(s.undone().is_empty());
        let anna = forgetting(&["anna adler".to_string()]);
        s.record_undone(&anna.forgets, "op-revert-1").unwrap();
        let got = s.undone();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].concept.as_str(),
                got[0].command.as_str(),
                got[0].undone_by.as_str()
            ),
            ("anna adler", "op-anna adler", "op-revert-1")
        );
        let h = s.put_version(&a(2.0), &anna).unwrap();
        s.commit(&h).unwrap();
        assert!(s.undone().is_empty(), "forgotten again");
        s.rollback().unwrap();
        assert_eq!(
            s.undone().len(),
            1,
            "back at a version that does not forget her"
        );
    }

    #[test]
    fn the_undone_records_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        let many = forgetting(
            &(0..MAX_UNDONE_RECORDS + 10)
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>(),
        );
        s.record_undone(&many.forgets, "op-r").unwrap();
        let got = s.undone();
        assert_eq!(got.len(), MAX_UNDONE_RECORDS);
        assert_eq!(got[0].concept, "c10", "the oldest went first");
        let reopened = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(reopened.undone(), got, "read back from undone.json at open");
    }

    #[test]
    fn putting_a_stored_version_again_keeps_its_file() {
        let d = tempfile::tempdir().unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        let h = s.put(&a(2.0)).unwrap();
        assert_eq!(h, a(2.0).sha256_hex());
        let file = d.path().join("versions").join(format!("{h}.bin"));
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(s.put(&a(2.0)).unwrap(), h);
        assert_eq!(
            std::fs::metadata(&file).unwrap().modified().unwrap(),
            before
        );
    }

    #[test]
    fn committing_the_current_version_again_keeps_the_previous_one() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, h2) = store_at_two(d.path());
        s.commit(&h2).unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s.current_hash(), h2);
        assert_eq!(s.previous_hash(), Some(a(1.0).sha256_hex().as_str()));
    }

    #[test]
    fn a_fresh_store_has_nothing_to_roll_back_to() {
        let d = tempfile::tempdir().unwrap();
        let mut s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        assert_eq!(s.previous_hash(), None);
        assert!(matches!(s.rollback(), Err(StoreError::MissingVersion(_))));
        assert_eq!(s.current().unwrap(), a(1.0));
    }

    #[test]
    fn a_store_whose_current_and_previous_are_both_corrupt_refuses_to_open() {
        let d = tempfile::tempdir().unwrap();
        let (_, h2) = store_at_two(d.path());
        for h in [h2, a(1.0).sha256_hex()] {
            std::fs::write(d.path().join("versions").join(format!("{h}.bin")), b"x").unwrap();
        }
        assert!(matches!(
            AdapterStore::open(d.path(), &a(1.0)),
            Err(StoreError::NoValidVersion(_))
        ));
    }

    #[test]
    fn a_version_of_the_wrong_length_is_not_served() {
        let d = tempfile::tempdir().unwrap();
        let s = AdapterStore::open(d.path(), &a(1.0)).unwrap();
        // Stored under its true hash, but 4 values where the package has 8.
        let short = Adapter(vec![2.0; 4]);
        let bytes = short.to_bytes();
        let h = sha256_hex(&bytes);
        write_atomic(&d.path().join("versions").join(format!("{h}.bin")), &bytes).unwrap();
        assert!(!s.has(&h));
        assert!(matches!(s.load(&h), Err(StoreError::MissingVersion(_))));
    }
}
