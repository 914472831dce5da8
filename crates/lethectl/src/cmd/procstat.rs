//! CPU time and peak memory of a process from /proc (Linux): what the benchmarks report for
//! the operator, the broker and the simulated fleet.

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// What a process has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident memory (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

/// User + system CPU seconds from the text of /proc/<pid>/stat.
fn cpu_of_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// VmHWM in MiB from the text of /proc/<pid>/status.
fn peak_of_status(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The usage of process `pid` ("self" for this one); `None` once it is gone.
pub fn usage(pid: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage {
        cpu_s: cpu_of_stat(&stat)?,
        peak_rss_mib: peak_of_status(&status)?,
    })
}

/// This process's peak resident memory so far, in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    usage("self").map(|u| u.peak_rss_mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_of_stat(stat), Some(3.0));
    }

    #[test]
    fn peak_memory_is_read_in_mebibytes() {
        assert_eq!(peak_of_status("Name:\tx\nVmHWM:\t  2048 kB\n"), Some(2.0));
        assert_eq!(peak_of_status("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_has_used_some_memory() {
        let u = usage("self").unwrap();
        assert!(u.peak_rss_mib > 0.0 && u.cpu_s >= 0.0, "{u:?}");
    }
}
