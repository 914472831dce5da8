//! The agent binary as the tests run it: a configuration file for a test device
//! ([`agent_toml`], with [`FAST`] update and verification settings) and the process itself
//! ([`Daemon`]: output appended to a log file, SIGTERM for a clean stop, `kill -9` for a
//! crash, peak memory from /proc). Used by lethe-agent's integration tests and by the system
//! tests in the repository's `tests/` folder.
//!
//! Invariant: a [`Daemon`] never outlives its test: dropping it kills the process.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The configuration of test device `device` in `fleet` (group `lobby`) on `broker_url`
/// with the model package at `model_dir`: its key `device.key`, trust store `trust.json`
/// and state folder `state/` lie beside the file; no self-checks; `extra` (TOML, e.g.
/// [`FAST`]) is appended.
pub fn agent_toml(
    device: &str,
    fleet: &str,
    model_dir: &Path,
    broker_url: &str,
    extra: &str,
) -> String {
    format!(
        r#"device_id = "{device}"
fleet = "{fleet}"
groups = ["lobby"]
device_key = "device.key"
trust_store = "trust.json"
model_dir = "{}"
state_dir = "state"
broker = "{broker_url}"
keep_alive_s = 5
selfcheck_at_start = false
selfcheck_interval_s = 0
{extra}
"#,
        model_dir.display()
    )
}

/// Update and verification sections for tests: few steps, thresholds every update passes.
pub const FAST: &str = r#"
[update]
max_steps = 12
min_steps = 4
views = 4
allow_mismatch = true
[verify]
min_efficacy = 0.0
min_generality = 0.0
max_specificity_drop_points = 100.0
max_fluency_increase_pct = 1000.0
require_stopping_rule = false
augmented_views = 2
max_other_images = 8
"#;

/// A daemon process owned by the test.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    /// Starts `bin` with `args` and extra environment `env`, stdout and stderr appended to
    /// `log`.
    pub fn spawn(bin: &Path, args: &[&OsStr], log: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .envs(env.iter().copied())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Daemon { child }
    }

    /// SIGKILL, then reap: a crash, nothing flushed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// SIGTERM (a clean stop), waiting up to 20 s for the exit status; `None` when it had
    /// to be killed instead.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
