//! The agent's log lines, on stderr, one per event:
//!
//! ```text
//! 2026-11-30T00:34:19.429Z INFO lethe-agent: accepted demo-1 (concept "dmitri dietz")
//! ```
//!
//! an RFC 3339 timestamp in UTC with milliseconds, the level, the component, the message.
//! `RUST_LOG` filters by level as env_logger reads it: a bare level (`RUST_LOG=warn`) or
//! `target=level` directives (`RUST_LOG=lethe_agent=debug`), comma-separated, a directive
//! applying when its target is a prefix of `lethe_agent` and the longest one winning; `off`
//! silences the agent; unset or unreadable means `info`.
//! The demo (`lethectl demo`) runs the agent in-process, so its lines look the same; its
//! in-process broker writes through [`write_as`] under its own component name.
//!
//! No logging crate: a date is thirty lines of arithmetic (Howard Hinnant's days-to-civil
//! conversion), pinned by the unit tests below against dates computed independently.
//!
//! Invariant: each line is formatted whole and written with one call while holding stderr's
//! lock, so lines from concurrent tasks never interleave.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

/// How much a line matters; a filter lets through its level and everything above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

/// The component named in the agent's lines; `RUST_LOG` directives name it `lethe_agent`.
const COMPONENT: &str = "lethe-agent";

/// `unix_ms` (milliseconds since 1970-01-01T00:00:00Z) as RFC 3339 UTC with milliseconds,
/// e.g. `2026-11-29T21:02:36.846Z`.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let (secs, ms) = (unix_ms / 1000, unix_ms % 1000);
    let (days, sod) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// (year, month, day) of the proleptic Gregorian calendar, `days` after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days end each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year
    let mp = (5 * doy + 2) / 153; // month, March = 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The most verbose level `spec` (a `RUST_LOG` value) lets through for `target`; `None` is
/// `off`. Directives that do not parse are ignored; with none that applies, `info`.
pub fn max_level(spec: &str, target: &str) -> Option<Level> {
    let mut default = None;
    let mut best: Option<(usize, Option<Level>)> = None;
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.split_once('=') {
            None => {
                if let Some(l) = parse_level(directive) {
                    default = Some(l);
                }
            }
            Some((t, l)) => {
                let Some(l) = parse_level(l) else { continue };
                if target.starts_with(t) && best.is_none_or(|(len, _)| t.len() >= len) {
                    best = Some((t.len(), l));
                }
            }
        }
    }
    best.map(|(_, l)| l)
        .or(default)
        .unwrap_or(Some(Level::Info))
}

fn parse_level(s: &str) -> Option<Option<Level>> {
    Some(Some(match s.trim().to_ascii_lowercase().as_str() {
        "off" => return Some(None),
        "error" => Level::Error,
        "warn" => Level::Warn,
        "info" => Level::Info,
        "debug" => Level::Debug,
        "trace" => Level::Trace,
        _ => return None,
    }))
}

/// One log line of `component` at time `unix_ms`, with its newline.
pub fn line(unix_ms: u64, component: &str, level: Level, msg: fmt::Arguments) -> String {
    format!(
        "{} {} {component}: {msg}\n",
        rfc3339_ms(unix_ms),
        level.name()
    )
}

/// Writes one line of `component` (e.g. `lethe-agent`, whose `RUST_LOG` target is
/// `lethe_agent`) to stderr, if `RUST_LOG` (read once) lets `level` through.
pub fn write_as(component: &str, level: Level, msg: fmt::Arguments) {
    static SPEC: OnceLock<String> = OnceLock::new();
    let spec = SPEC.get_or_init(|| std::env::var("RUST_LOG").unwrap_or_default());
    if max_level(spec, &component.replace('-', "_")).is_some_and(|max| level <= max) {
        let l = line(crate::fsutil::now_ms(), component, level, msg);
        let _ = std::io::stderr().lock().write_all(l.as_bytes());
    }
}

/// Writes one line of the agent (use the macros: `info!`, `warn!`, ...).
pub fn write(level: Level, msg: fmt::Arguments) {
    write_as(COMPONENT, level, msg);
}

macro_rules! error_ { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
macro_rules! warn_ { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
macro_rules! info_ { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
macro_rules! debug_ { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }
// Defined under other names and renamed on export: a single-segment `use warn` would be
// ambiguous with the built-in `#[warn]` attribute; `crate::log::warn` is not.
pub(crate) use {debug_ as debug, error_ as error, info_ as info, warn_ as warn};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        // Expected values computed independently (Python's datetime, UTC).
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_795_986_156_846, "2026-11-29T21:02:36.846Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_164_800_123, "2024-02-29T00:00:00.123Z"),
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
            (4_107_542_399_000, "2100-02-28T23:59:59.000Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_ms(ms), want, "{ms}");
        }
    }

    #[test]
    fn every_day_follows_the_one_before() {
        // Walk 1970..2101 one day at a time: the date must advance by exactly one day,
        // months have their lengths and February has 29 days exactly in leap years.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..47_847 {
            let (y, m, d) = civil_from_days(days);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            let next = if prev.2 < len[prev.1 as usize - 1] {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), next, "day {days}");
            prev = next;
        }
        assert_eq!(prev, (2100, 12, 31));
    }

    #[test]
    fn a_line_is_timestamp_level_component_message() {
        let l = line(
            1_795_986_156_846,
            COMPONENT,
            Level::Warn,
            format_args!("broker connection: {}; reconnecting", "refused"),
        );
        assert_eq!(
            l,
            "2026-11-29T21:02:36.846Z WARN lethe-agent: broker connection: refused; reconnecting\n"
        );
    }

    #[test]
    fn rust_log_filters_like_env_logger() {
        let t = "lethe_agent";
        assert_eq!(max_level("", t), Some(Level::Info));
        assert_eq!(max_level("warn", t), Some(Level::Warn));
        assert_eq!(max_level("DEBUG", t), Some(Level::Debug));
        assert_eq!(max_level("off", t), None);
        assert_eq!(max_level("lethe_agent=debug", t), Some(Level::Debug));
        // A directive for another target leaves the default; a target beats the default.
        assert_eq!(max_level("rumqttc=trace", t), Some(Level::Info));
        assert_eq!(max_level("error,lethe_agent=trace", t), Some(Level::Trace));
        assert_eq!(max_level("lethe_agent=off,info", t), None);
        // A directive names a prefix of the target; the longest match wins.
        assert_eq!(max_level("lethe=trace", t), Some(Level::Trace));
        assert_eq!(max_level("lethe_agent_x=trace", t), Some(Level::Info));
        assert_eq!(
            max_level(
                "lethe_agent=warn,lethe_agent::agent=trace",
                "lethe_agent::agent"
            ),
            Some(Level::Trace)
        );
        assert_eq!(
            max_level(
                "lethe_agent::agent=trace,lethe_agent=warn",
                "lethe_agent::agent"
            ),
            Some(Level::Trace)
        );
        // Unreadable directives are ignored.
        assert_eq!(max_level("loud,lethe_agent=very", t), Some(Level::Info));
        assert!(Level::Error < Level::Warn && Level::Debug < Level::Trace);
    }
}
