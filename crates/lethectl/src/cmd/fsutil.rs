//! Shared plumbing for the signing subcommands: capped reads, atomic writes (temp file, fsync,
//! rename, fsync the folder), the clock, time and duration parsing, and how a protocol
//! rejection is reported (`rejected: <code>: <detail>` on stdout, exit code 1).
//!
//! Invariant: the only clock read in the signing path is `now_unix` here; the library takes
//! `now` as an argument.

use anyhow::{bail, Context, Result};
use lethe_proto::Rejection;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

/// Reads at most `cap + 1` bytes, so an oversized input is seen as such without reading it all.
pub fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    f.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(out)
}

/// Reads a small text file (key files, at most 64 KiB).
pub fn read_text(path: &Path) -> Result<String> {
    let b = read_capped(path, 64 << 10)?;
    if b.len() > 64 << 10 {
        bail!("{} is over 64 KiB", path.display());
    }
    String::from_utf8(b).with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Writes `bytes` to `path` atomically: a temp file beside it (with `mode`), fsync, rename,
/// fsync of the folder. A crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses `30s`, `15m`, `2h`, `7d` (or plain seconds) into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (expected e.g. 90s, 15m, 2h, 7d)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration {s:?} overflows"))
}

/// Parses a time: unix seconds, `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ`, or `+DURATION` from now.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(d) = s.strip_prefix('+') {
        return Ok(now_unix() + parse_duration(d)?);
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let bad = || format!("bad time {s:?} (unix seconds, YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or +2h)");
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (s, None),
    };
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [y, m, dd] = d[..] else { return Err(bad()) };
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) || y < 1970 {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, dd) * 86_400;
    if let Some(t) = time {
        let hms: Vec<i64> = t
            .split(':')
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [h, mi, se] = hms[..] else {
            return Err(bad());
        };
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&se) {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + se;
    }
    u64::try_from(secs).map_err(|_| bad())
}

/// Formats unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn fmt_time(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let rem = t % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian, UTC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Reports a protocol rejection: `rejected: <code>: <detail>` on stdout (or JSON), exit 1.
pub fn rejected(e: &Rejection, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::json!({"verdict": "rejected", "code": e.code(), "reason": e.to_string()})
        );
    } else {
        println!("rejected: {}: {e}", e.code());
    }
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000));
        assert_eq!(parse_time("1970-01-02"), Ok(86_400));
        assert!(parse_time("2023-13-01").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn formatting_inverts_parsing() {
        for t in [0, 86_399, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_time(&fmt_time(t)), Ok(t));
        }
    }

    #[test]
    fn durations_take_a_unit_suffix() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("42"), Ok(42));
        assert!(parse_duration("1w").is_err());
    }
}
