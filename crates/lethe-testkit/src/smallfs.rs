//! A small file system mounted for one test: a tmpfs of a few MB (to fill the disk under the
//! agent) or an ext4 image on a loop device (whose raw blocks a test can search for bytes
//! that should be gone). Mounting needs root, or password-less sudo; without either the test
//! FAILS with that message (nothing is skipped silently). The mount belongs to the current
//! user, so the agent the test starts can write to it.
//!
//! Invariant: a [`SmallFs`] never outlives its test: dropping it unmounts (lazily, so a
//! process still holding a file cannot keep it mounted).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted small file system.
pub struct SmallFs {
    pub path: PathBuf,
    image: Option<PathBuf>,
    mounted: bool,
}

fn uid_gid() -> (String, String) {
    let id = |flag: &str| {
        let o = Command::new("id")
            .arg(flag)
            .output()
            .expect("the id command");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    (id("-u"), id("-g"))
}

/// Runs a privileged command: directly as root, else with `sudo -n`.
fn privileged(args: &[&str]) {
    let (uid, _) = uid_gid();
    let mut cmd = if uid == "0" {
        let mut c = Command::new(args[0]);
        c.args(&args[1..]);
        c
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").args(args);
        c
    };
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}\nthis test mounts a small file system: run it as root or with \
         password-less sudo",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SmallFs {
    /// A tmpfs of `bytes` bytes at `path` (created if missing), owned by the current user.
    pub fn tmpfs(path: &Path, bytes: u64) -> SmallFs {
        std::fs::create_dir_all(path).unwrap();
        let (uid, gid) = uid_gid();
        let opts = format!("size={bytes},uid={uid},gid={gid},mode=0700");
        privileged(&["mount", "-t", "tmpfs", "-o", &opts, "tmpfs", path_str(path)]);
        SmallFs {
            path: path.to_path_buf(),
            image: None,
            mounted: true,
        }
    }

    /// An ext4 file system of `bytes` bytes in the image file `image`, mounted through a
    /// loop device at `path` (created if missing) and given to the current user.
    pub fn ext4(path: &Path, image: &Path, bytes: u64) -> SmallFs {
        std::fs::create_dir_all(path).unwrap();
        let f = std::fs::File::create(image).unwrap();
        f.set_len(bytes).unwrap();
        drop(f);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .output()
            .expect("mkfs.ext4 (Debian package e2fsprogs)");
        assert!(
            out.status.success(),
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        privileged(&["mount", "-o", "loop", path_str(image), path_str(path)]);
        let (uid, gid) = uid_gid();
        privileged(&["chown", &format!("{uid}:{gid}"), path_str(path)]);
        SmallFs {
            path: path.to_path_buf(),
            image: Some(image.to_path_buf()),
            mounted: true,
        }
    }

    /// Unmounts (everything written reaches the image file, if there is one).
    pub fn unmount(&mut self) {
        if self.mounted {
            privileged(&["umount", path_str(&self.path)]);
            self.mounted = false;
        }
    }

    /// The raw bytes of the ext4 image (unmount first, so that all of it is written).
    pub fn raw_image(&self) -> Vec<u8> {
        assert!(!self.mounted, "unmount before reading the raw image");
        std::fs::read(self.image.as_ref().expect("an ext4 image")).unwrap()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if self.mounted {
            let (uid, _) = uid_gid();
            let p = path_str(&self.path).to_string();
            let _ = if uid == "0" {
                Command::new("umount").args(["-l", &p]).status()
            } else {
                Command::new("sudo")
                    .args(["-n", "umount", "-l", &p])
                    .status()
            };
        }
    }
}

/// Where `needle` occurs in `hay`, if anywhere.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let first = needle[0];
    (0..=hay.len() - needle.len())
        .filter(|&i| hay[i] == first)
        .find(|&i| &hay[i..i + needle.len()] == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_found_where_they_are_and_nowhere_else() {
        assert_eq!(find_bytes(b"abcabd", b"abd"), Some(3));
        assert_eq!(find_bytes(b"abcabd", b"abe"), None);
        assert_eq!(find_bytes(b"ab", b"abc"), None);
        assert_eq!(find_bytes(b"ab", b""), None);
    }
}
