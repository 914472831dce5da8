//! The process's open-file limit: a thousand simulated agents hold a thousand broker
//! connections and their journals, more than the usual soft limit of 1024 allows.

use anyhow::{bail, Result};

/// Raises the soft limit on open files to at least `want` (up to the hard limit); fails
/// when the hard limit is lower, naming both.
pub fn raise_open_files(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    if lim.rlim_max < want {
        bail!(
            "the fleet needs {want} open files, the hard limit is {} (raise it: ulimit -Hn)",
            lim.rlim_max
        );
    }
    lim.rlim_cur = want;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_already_high_enough_is_left_as_it_is() {
        raise_open_files(16).unwrap();
    }

    #[test]
    fn a_limit_above_what_the_system_allows_is_an_error() {
        assert!(raise_open_files(u64::MAX - 1).is_err());
    }
}
