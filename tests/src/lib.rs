//! lethe-system-tests: the tests that span Lethe's binaries live in `system/` (one test
//! binary, a module per area); this library holds what they share: where the built
//! binaries are, running `lethectl` as a script would, and reading a retained message off the
//! broker. The broker, the PKI and the agent process come from lethe-testkit.
//!
//! Crate tests stay in their crates; a test belongs here when it needs more than one of the
//! project's programs (`lethectl`, `lethe-agent`, mosquitto) talking to each other.
//!
//! Invariant: a test never runs an old binary silently. The binaries are the ones `cargo
//! test --workspace` (what `./x test` runs) builds into the target folder these tests run
//! from; one that is missing, or older than a Rust source it is built from, fails the test
//! with the command that builds it.

pub mod fleet;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// The repository's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// The bundled model package.
pub fn model_dir() -> PathBuf {
    workspace().join("models/tiny-vlm")
}

/// The built binary `name` (`lethectl`, `lethe-agent`) of this target folder and profile.
pub fn bin(name: &str) -> PathBuf {
    // A test runs as <target>/<profile>/deps/<test>-<hash>; the binaries are in <profile>/.
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable lies in <target>/<profile>/deps");
    let path = dir.join(name);
    let build = "cargo test --workspace (./x test), or cargo build -p lethectl -p lethe-agent";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}: build it with {build}", path.display()));
    if let Some((src, t)) = newest_source(name) {
        assert!(
            t <= built,
            "{} is older than {}: rebuild it with {build}",
            path.display(),
            src.display()
        );
    }
    path
}

/// The workspace crates binary `name` is built from: its own crate and, transitively, the
/// `lethe-*` crates under `[dependencies]` in each manifest (not dev-dependencies: they are
/// not linked into the binary).
fn crates_of(name: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut todo = vec![name.to_string()];
    while let Some(c) = todo.pop() {
        if seen.contains(&c) {
            continue;
        }
        let manifest =
            std::fs::read_to_string(workspace().join("crates").join(&c).join("Cargo.toml"))
                .unwrap_or_default();
        let mut in_deps = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_deps = line == "[dependencies]";
            } else if in_deps && line.starts_with("lethe-") {
                let dep: String = line
                    .chars()
                    .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '-' || *ch == '_')
                    .collect();
                todo.push(dep);
            }
        }
        seen.push(c);
    }
    seen
}

/// The most recently changed Rust source binary `name` is built from (`src/` of its crates,
/// see [`crates_of`]), with its time. Only sources: a changed source always rebuilds its
/// crate and relinks the binaries that use it, while a manifest or Cargo.lock can change
/// without either (a dev-dependency, a new workspace member), which would make a fresh
/// binary look stale; and a crate the binary does not use never relinks it.
fn newest_source(name: &str) -> Option<(PathBuf, SystemTime)> {
    let mut files = Vec::new();
    for krate in crates_of(name) {
        let mut dirs = vec![workspace().join("crates").join(krate).join("src")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
    }
    files
        .into_iter()
        .filter_map(|f| Some((std::fs::metadata(&f).ok()?.modified().ok()?, f)))
        .max()
        .map(|(t, f)| (f, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_is_checked_against_the_crates_it_links_and_no_others() {
        let agent = crates_of("lethe-agent");
        for c in [
            "lethe-agent",
            "lethe-model",
            "lethe-probe",
            "lethe-proto",
            "lethe-siu",
        ] {
            assert!(agent.iter().any(|x| x == c), "{c} missing from {agent:?}");
        }
        assert!(!agent
            .iter()
            .any(|x| x == "lethectl" || x == "lethe-testkit"));
        let ctl = crates_of("lethectl");
        assert!(ctl.iter().any(|x| x == "lethe-agent") && ctl.iter().any(|x| x == "lethe-world"));
        assert!(!ctl
            .iter()
            .any(|x| x == "lethe-fleetsim" || x == "lethe-testkit"));
    }
}

/// What a command said: its exit code, stdout and stderr.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `lethectl` with `args`.
pub fn lethectl(args: &[&str]) -> Run {
    let o = Command::new(bin("lethectl"))
        .args(args)
        .output()
        .expect("running lethectl");
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `lethectl` with `args`, which must succeed; returns its stdout.
#[track_caller]
pub fn lethectl_ok(args: &[&str]) -> String {
    let r = lethectl(args);
    assert_eq!(r.code, 0, "lethectl {args:?}: {r:?}");
    r.stdout
}

/// The retained message on `topic` of the plain broker on loopback `port`, waiting up to
/// `timeout` for it; `None` if none came.
pub fn retained(port: u16, topic: &str, timeout: Duration) -> Option<Vec<u8>> {
    let mut o = MqttOptions::new(
        format!("system-test-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = Client::new(o, 16);
    client.subscribe(topic, QoS::AtLeastOnce).ok()?;
    let t0 = Instant::now();
    while let Some(left) = timeout.checked_sub(t0.elapsed()) {
        match conn.recv_timeout(left) {
            // RabbitMQ delivers a dotted topic in another form (lethe_agent::mqtt::topic_is).
            Ok(Ok(Event::Incoming(Packet::Publish(p))))
                if lethe_agent::mqtt::topic_is(&p.topic, topic) && !p.payload.is_empty() =>
            {
                let _ = client.disconnect();
                return Some(p.payload.to_vec());
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break,
        }
    }
    None
}

/// `p` as a command-line argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
