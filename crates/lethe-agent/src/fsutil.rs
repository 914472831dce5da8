//! Durable file writes shared by the journal, the adapter store and the state files; the
//! storage reserve that lets a full disk still take a failure record; scrubbing a file
//! before it is removed.
//!
//! Invariants: a file written with [`write_atomic`] is either its old content or its new
//! content after a crash, never a mix (temp file, fsync, rename, fsync of the folder), and a
//! write that fails leaves no temp file behind (a full disk is not made fuller); a file
//! removed with [`scrub_remove`] was overwritten with zeros and synced before it was
//! unlinked, so its bytes are not left in the blocks it occupied (on a file system that
//! overwrites in place, such as ext4 or tmpfs; a flash translation layer may still hold old
//! copies, which only full-disk encryption answers).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })()
    .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Overwrites the file at `path` with zeros, syncs it, removes it and syncs its folder.
/// A missing file is not an error.
pub fn scrub_remove(path: &Path) -> std::io::Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(mut f) => {
            let len = f.metadata()?.len();
            let zeros = vec![0u8; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::remove_file(path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Whether `e` says the file system (or the user's quota) is full.
pub fn is_storage_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT)) || e.kind() == std::io::ErrorKind::StorageFull
}

/// A file of zeros that holds space in the state folder for the records that say a command
/// failed, so that a full disk still gets its failure journaled and receipted: released
/// (removed) when a write finds the disk full, made again once there is room.
#[derive(Debug, Clone)]
pub struct Reserve {
    path: PathBuf,
    bytes: usize,
}

impl Reserve {
    pub fn new(path: PathBuf, bytes: usize) -> Reserve {
        Reserve { path, bytes }
    }

    /// Makes the reserve if it is missing; `Ok(false)` when there is no room for it now.
    pub fn ensure(&self) -> std::io::Result<bool> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes as u64) {
            return Ok(true);
        }
        match write_atomic(&self.path, &vec![0u8; self.bytes]) {
            Ok(()) => Ok(true),
            Err(e) if is_storage_full(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the reserve; whether there was one to free.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Fsyncs a folder so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrubbed_file_is_gone_and_a_missing_one_is_no_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.env");
        write_atomic(&p, &[7u8; 200_000]).unwrap();
        scrub_remove(&p).unwrap();
        assert!(!p.exists());
        scrub_remove(&p).unwrap();
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        // The target is a folder: the temp file is written, the rename fails.
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir/f"), b"x").unwrap();
        assert!(write_atomic(&d.path().join("dir"), b"new").is_err());
        // The temp file's folder is missing: nothing can be written at all.
        assert!(write_atomic(&d.path().join("nope/f"), b"new").is_err());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("dir")], "{left:?}");
    }

    #[test]
    fn the_reserve_is_made_once_released_and_made_again() {
        let d = tempfile::tempdir().unwrap();
        let r = Reserve::new(d.path().join("reserve"), 4096);
        assert!(r.ensure().unwrap());
        assert_eq!(std::fs::metadata(r.path()).unwrap().len(), 4096);
        assert!(r.ensure().unwrap());
        assert!(r.release());
        assert!(!r.release(), "nothing left to free");
        assert!(r.ensure().unwrap());
        assert!(r.path().exists());
    }

    #[test]
    fn storage_full_is_told_apart_from_other_errors() {
        assert!(is_storage_full(&std::io::Error::from_raw_os_error(28)));
        assert!(is_storage_full(&std::io::Error::from_raw_os_error(122)));
        assert!(!is_storage_full(&std::io::Error::from_raw_os_error(13)));
        assert!(!is_storage_full(&std::io::Error::other("x")));
    }
}
