//! systemd's notify protocol, for `Type=notify` with `WatchdogSec=` (firmware/): `READY=1`
//! once the agent has loaded its model, recovered its journal and started its MQTT loop;
//! `WATCHDOG=1` from the agent's main loop at half the watchdog period, so a hung loop gets
//! the process restarted; `STOPPING=1` on shutdown. Datagrams to `$NOTIFY_SOCKET`; without
//! it (not under systemd) every call is a no-op. No dependency: the protocol is one
//! `sendto` of `KEY=value` lines.
//!
//! Invariant: notification failures never stop the agent (they are logged once).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// A connection to systemd's notify socket, or nothing.
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

enum Target {
    Path(PathBuf),
    /// Linux abstract socket name (from `@name`), without the leading NUL.
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From the environment systemd sets (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET").map(|v| v.to_string_lossy().into_owned()),
            std::env::var("WATCHDOG_USEC").ok(),
            std::env::var("WATCHDOG_PID").ok(),
            std::process::id(),
        )
    }

    /// From explicit values (testable): a watchdog applies only to the process it names.
    pub fn from_vars(
        socket: Option<String>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
        pid: u32,
    ) -> Notifier {
        let target = socket.filter(|s| !s.is_empty()).map(|s| {
            if let Some(name) = s.strip_prefix('@') {
                Target::Abstract(name.as_bytes().to_vec())
            } else {
                Target::Path(PathBuf::from(s))
            }
        });
        let for_me = watchdog_pid
            .as_deref()
            .map_or(true, |p| p.trim().parse::<u32>().ok() == Some(pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_me)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// Whether systemd listens.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1` (half the period systemd set), if it set one.
    pub fn ping_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STATUS=...`, `STOPPING=1`).
    pub fn notify(&self, state: &str) -> std::io::Result<()> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        match t {
            Target::Path(p) => sock.send_to(state.as_bytes(), p).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr).map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::from_vars(None, Some("10000000".into()), None, 1);
        assert!(!n.active());
        n.notify("READY=1").unwrap();
    }

    #[test]
    fn notifications_arrive_on_the_socket_systemd_named() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(Some(path.display().to_string()), None, None, 1);
        assert!(n.active());
        n.notify("READY=1\nSTATUS=online").unwrap();
        n.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 256];
        let k = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\nSTATUS=online");
        let k = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
    }

    #[test]
    fn abstract_socket_names_are_supported() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("lethe-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_vars(Some(format!("@{name}")), None, None, 1);
        n.notify("STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let k = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STOPPING=1");
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_period_and_only_by_its_process() {
        let n = Notifier::from_vars(None, Some("20000000".into()), None, 7);
        assert_eq!(n.ping_every(), Some(Duration::from_secs(10)));
        let n = Notifier::from_vars(None, Some("20000000".into()), Some("7".into()), 7);
        assert_eq!(n.ping_every(), Some(Duration::from_secs(10)));
        let n = Notifier::from_vars(None, Some("20000000".into()), Some("8".into()), 7);
        assert_eq!(n.ping_every(), None, "the watchdog is for another process");
        let n = Notifier::from_vars(None, Some("0".into()), None, 7);
        assert_eq!(n.ping_every(), None);
        let n = Notifier::from_vars(None, Some("soon".into()), None, 7);
        assert_eq!(n.ping_every(), None);
    }
}
