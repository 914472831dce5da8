//! What the command channel refused before anything was stored: deliveries that carry no
//! valid signature from a trusted key (counted by their rejection code), packets over the
//! MQTT packet cap, and broker sessions dropped to get rid of a packet that kept coming
//! back. Counted in memory only; reported in the retained status ([`ChannelReport`]) and in
//! the log at a bounded rate ([`ChannelStats::log_due`]).
//!
//! Invariants: nothing here touches the disk or the broker; an attacker who floods the
//! command topic moves counters, and at most one log line per [`LOG_EVERY_S`] seconds.

use serde::Serialize;
use std::sync::Mutex;

/// Least time between two log lines about refused traffic, in seconds.
pub const LOG_EVERY_S: u64 = 60;

/// The last unauthenticated delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// The rejection code (PROTOCOL.md): `bad-magic`, `unknown-key`, `bad-signature` ...
    pub code: &'static str,
    pub bytes: u64,
    /// Unix seconds.
    pub t: u64,
}

/// The `channel` object of the status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelReport {
    /// Deliveries on a command topic without a valid trusted signature: acknowledged to the
    /// broker and dropped, never stored, journaled or answered.
    pub unauthenticated: u64,
    pub unauthenticated_bytes: u64,
    pub last_unauthenticated: Option<Refused>,
    /// Packets over `max_packet_bytes` (the connection drops when one arrives).
    pub oversized: u64,
    pub last_oversized_bytes: Option<u64>,
    /// Times the broker session was dropped (one clean connection) because an oversized
    /// message kept being redelivered; commands queued for the device on the broker then
    /// are lost and must be sent again.
    pub sessions_dropped: u64,
}

/// The counters, shared by the MQTT poll task (which counts) and the main loop (which
/// reports).
#[derive(Debug, Default)]
pub struct ChannelStats {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    now: ChannelReport,
    /// What the last log line covered, and when it was written.
    logged: ChannelReport,
    logged_at: Option<u64>,
}

impl ChannelStats {
    /// An unauthenticated delivery of `bytes` bytes, refused with `code` at `t`.
    pub fn refused(&self, code: &'static str, bytes: usize, t: u64) {
        let mut i = self.inner.lock().unwrap();
        i.now.unauthenticated += 1;
        i.now.unauthenticated_bytes += bytes as u64;
        i.now.last_unauthenticated = Some(Refused {
            code,
            bytes: bytes as u64,
            t,
        });
    }

    /// A packet of `bytes` bytes over the cap.
    pub fn oversized(&self, bytes: usize) {
        let mut i = self.inner.lock().unwrap();
        i.now.oversized += 1;
        i.now.last_oversized_bytes = Some(bytes as u64);
    }

    pub fn session_dropped(&self) {
        self.inner.lock().unwrap().now.sessions_dropped += 1;
    }

    pub fn report(&self) -> ChannelReport {
        self.inner.lock().unwrap().now.clone()
    }

    /// A log line saying what was refused since the last one, if anything was and the last
    /// line is at least [`LOG_EVERY_S`] old (the first one is due at once).
    pub fn log_due(&self, t: u64) -> Option<String> {
        let mut i = self.inner.lock().unwrap();
        if i.now == i.logged || i.logged_at.is_some_and(|at| t < at + LOG_EVERY_S) {
            return None;
        }
        let (now, was) = (&i.now, &i.logged);
        let mut parts = Vec::new();
        let n = now.unauthenticated - was.unauthenticated;
        if n > 0 {
            let last = now.last_unauthenticated.as_ref().expect("counted");
            parts.push(format!(
                "{n} unauthenticated message(s) on the command topic dropped ({} bytes; last: {}, {} bytes)",
                now.unauthenticated_bytes - was.unauthenticated_bytes,
                last.code,
                last.bytes
            ));
        }
        let n = now.oversized - was.oversized;
        if n > 0 {
            parts.push(format!(
                "{n} packet(s) over the packet cap (last {} bytes)",
                now.last_oversized_bytes.unwrap_or(0)
            ));
        }
        let n = now.sessions_dropped - was.sessions_dropped;
        if n > 0 {
            parts.push(format!(
                "broker session dropped {n} time(s) to discard a redelivered oversized message \
                 (commands queued on the broker were discarded with it: resend them)"
            ));
        }
        i.logged = i.now.clone();
        i.logged_at = Some(t);
        Some(parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_and_the_last_one_is_kept() {
        let s = ChannelStats::default();
        s.refused("bad-magic", 1000, 5);
        s.refused("unknown-key", 24, 6);
        s.oversized(5_000_026);
        s.session_dropped();
        let r = s.report();
        assert_eq!((r.unauthenticated, r.unauthenticated_bytes), (2, 1024));
        assert_eq!(
            r.last_unauthenticated,
            Some(Refused {
                code: "unknown-key",
                bytes: 24,
                t: 6
            })
        );
        assert_eq!((r.oversized, r.last_oversized_bytes), (1, Some(5_000_026)));
        assert_eq!(r.sessions_dropped, 1);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["last_unauthenticated"]["code"], "unknown-key");
    }

    #[test]
    fn a_flood_gets_one_log_line_a_minute_with_what_came_since_the_last() {
        let s = ChannelStats::default();
        assert_eq!(s.log_due(100), None, "nothing refused, nothing said");
        s.refused("bad-magic", 10, 100);
        let first = s.log_due(100).unwrap();
        assert!(first.starts_with("1 unauthenticated"), "{first}");
        for k in 0..10_000 {
            s.refused("bad-signature", 2, 101 + k / 1000);
            if k % 100 == 0 {
                assert_eq!(s.log_due(101 + k / 1000), None, "within the minute");
            }
        }
        let next = s.log_due(100 + LOG_EVERY_S).unwrap();
        assert!(
            next.starts_with("10000 unauthenticated")
                && next.contains("(20000 bytes; last: bad-signature, 2 bytes)"),
            "{next}"
        );
        assert_eq!(s.log_due(100 + 5 * LOG_EVERY_S), None, "quiet since");
        s.oversized(3 << 20);
        s.session_dropped();
        let third = s.log_due(100 + 5 * LOG_EVERY_S).unwrap();
        assert!(
            third.starts_with("1 packet(s) over the packet cap (last 3145728 bytes); broker session dropped 1 time(s)"),
            "{third}"
        );
    }
}
