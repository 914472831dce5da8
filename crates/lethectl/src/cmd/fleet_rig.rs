//! A fleet on this machine for `bench fleet`: a mosquitto broker (its own configuration, a
//! free loopback port, an open-file limit for every device's connection) and the test-only
//! simulated fleet, the `lethe-fleetsim` binary built beside `lethectl` (real agents, the
//! model update simulated), both child processes in a temporary folder.
//!
//! Invariant: the rig never outlives its owner: dropping it stops both processes.

use anyhow::{bail, Context, Result};
use lethe_proto::SigningKey;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the simulated devices behave.
pub struct FleetShape {
    pub devices: usize,
    pub fail_share: f64,
    pub steps: usize,
    pub step_ms: u64,
}

pub struct Rig {
    dir: tempfile::TempDir,
    pub broker: String,
    pub fleet: String,
    pub group: String,
    /// The operator key the devices trust.
    pub op: SigningKey,
    mosquitto: Child,
    sim: Option<Child>,
    /// Seconds until every simulated device was online.
    pub online_s: f64,
}

/// The broker program: Debian's mosquitto.
fn mosquitto() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .context("mosquitto is not installed (apt-get install -y mosquitto)")
}

/// The simulated fleet's binary, built beside this one.
fn fleetsim() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name("lethe-fleetsim");
    if !p.is_file() {
        bail!(
            "{} is missing: the simulated fleet is a test-only binary, built with \
             `cargo build --workspace` (not installed with lethectl)",
            p.display()
        );
    }
    Ok(p)
}

/// Starts mosquitto on `port` with an open-file limit for `devices` connections.
fn start_mosquitto(dir: &Path, port: u16, devices: usize) -> Result<Child> {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "allow_anonymous true\npersistence false\nmax_queued_messages 1000\n\
             listener {port} 127.0.0.1\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))?;
    let files = (devices * 2 + 256).to_string();
    // The soft limit up to what is asked, or to the hard limit when that is lower.
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n "$1" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$2" -c "$3""#)
        .args(["sh", &files])
        .arg(mosquitto()?)
        .arg(&conf)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting mosquitto")?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!(
                "mosquitto did not start: {}",
                std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

impl Rig {
    /// Starts the broker and the fleet; returns once every device is online.
    pub fn start(shape: &FleetShape) -> Result<Rig> {
        let dir = tempfile::tempdir()?;
        let port = super::local::free_port()?;
        let mosquitto = start_mosquitto(dir.path(), port, shape.devices)?;
        let op = SigningKey::generate("bench-op")?;
        let op_pub = dir.path().join("bench-op.pub");
        std::fs::write(&op_pub, op.public().to_file_string())?;
        let broker = format!("mqtt://127.0.0.1:{port}");
        let (fleet, group) = ("bench".to_string(), "all".to_string());
        let mut rig = Rig {
            dir,
            broker,
            fleet,
            group,
            op,
            mosquitto,
            sim: None,
            online_s: 0.0,
        };
        let t0 = Instant::now();
        let mut sim = Command::new(fleetsim()?)
            .args(["--devices", &shape.devices.to_string()])
            .args([
                "--broker",
                &rig.broker,
                "--fleet",
                &rig.fleet,
                "--group",
                &rig.group,
            ])
            .arg("--operator-pub")
            .arg(&op_pub)
            .arg("--dir")
            .arg(rig.dir.path().join("fleet"))
            .args(["--fail-share", &shape.fail_share.to_string()])
            .args(["--steps", &shape.steps.to_string()])
            .args(["--step-ms", &shape.step_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(rig.dir.path().join("fleetsim.log"))?)
            .spawn()
            .context("starting lethe-fleetsim")?;
        let out = sim.stdout.take().context("fleetsim stdout")?;
        rig.sim = Some(sim);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(l) if l.starts_with("ready") => {}
            got => bail!(
                "the simulated fleet did not come online ({got:?}): {}",
                std::fs::read_to_string(rig.dir.path().join("fleetsim.log")).unwrap_or_default()
            ),
        }
        rig.online_s = t0.elapsed().as_secs_f64();
        Ok(rig)
    }

    /// `devices.txt` of the fleet.
    pub fn devices_file(&self) -> PathBuf {
        self.dir.path().join("fleet/devices.txt")
    }

    /// The devices' public keys.
    pub fn pubs_dir(&self) -> PathBuf {
        self.dir.path().join("fleet/pubs")
    }

    /// A scratch path inside the rig's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn broker_pid(&self) -> String {
        self.mosquitto.id().to_string()
    }

    pub fn fleet_pid(&self) -> Option<String> {
        self.sim.as_ref().map(|c| c.id().to_string())
    }

    /// Stops the fleet (SIGTERM, its agents stop cleanly) and the broker.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut sim) = self.sim.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &sim.id().to_string()])
                .status();
            let t0 = Instant::now();
            while sim.try_wait()?.is_none() {
                if t0.elapsed() > Duration::from_secs(60) {
                    let _ = sim.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = sim.wait();
        }
        let _ = self.mosquitto.kill();
        let _ = self.mosquitto.wait();
        Ok(())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut s) = self.sim.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = self.mosquitto.kill();
        let _ = self.mosquitto.wait();
    }
}
