//! A simulated fleet for the system tests: a mosquitto of the test's own, N real agents with
//! the simulated model update (lethe-fleetsim, in this process), an independent MQTT witness
//! of what the broker delivered, and an operator key made with `lethectl keygen`. The
//! operator's side runs as the `lethectl` binary, as an operator would run it.

use crate::{arg, lethectl_ok};
use lethe_fleetsim::{FleetSpec, Observer, OutcomePlan, SimFleet, Timing, SIM_MODEL_ID};
use lethe_proto::PublicKey;
use lethe_testkit::Broker;
use std::path::PathBuf;
use std::time::Duration;

pub const FLEET: &str = "sim";
pub const GROUP: &str = "all";

/// The simulated agents log to this process's stderr, which the test harness does not
/// capture: a hundred agents' info lines would bury the test report. Warnings and errors
/// stay (`RUST_LOG` set by the caller wins). Set once, before any agent reads it.
fn quiet_agents() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_none() {
            std::env::set_var("RUST_LOG", "warn");
        }
    });
}

/// The fleet and everything around it; dropping it stops the agents, then the broker.
pub struct SimRig {
    pub fleet: SimFleet,
    pub observer: Observer,
    pub broker: Broker,
    pub op_key: PathBuf,
    pub tmp: tempfile::TempDir,
}

impl SimRig {
    /// `devices` simulated devices, a `fail` share of them failing, each update `steps` steps
    /// of `step_ms`; returns once every device is online.
    pub fn start(devices: usize, fail: f64, steps: usize, step_ms: u64) -> SimRig {
        quiet_agents();
        let tmp = tempfile::tempdir().unwrap();
        let broker = Broker::start(tmp.path());
        let keys = tmp.path().join("keys");
        lethectl_ok(&["keygen", "--out", arg(&keys), "--name", "op"]);
        let op_pub = std::fs::read_to_string(keys.join("op.pub")).unwrap();
        let mut fleet = SimFleet::create(FleetSpec {
            devices,
            fleet: FLEET.into(),
            group: GROUP.into(),
            broker: broker.url(),
            dir: tmp.path().join("fleet"),
            operators: vec![PublicKey::from_file_str(&op_pub).unwrap()],
            plan: OutcomePlan {
                fail,
                roll_back: 0.0,
            },
            timing: Timing {
                steps,
                step: Duration::from_millis(step_ms),
            },
        })
        .unwrap();
        let observer = Observer::start("127.0.0.1", broker.port, FLEET).unwrap();
        fleet.start_all();
        assert!(
            observer.wait(Duration::from_secs(120), |s| s.online() >= devices),
            "{} of {devices} devices online",
            observer.seen().online()
        );
        SimRig {
            fleet,
            observer,
            broker,
            op_key: keys.join("op.key"),
            tmp,
        }
    }

    /// `lethectl sign` of a forget for the whole group with sequence number `seq`; returns
    /// the command file.
    pub fn sign(&self, seq: u64) -> PathBuf {
        let image = self.tmp.path().join("face.png");
        if !image.exists() {
            lethectl_ok(&[
                "world",
                "render",
                "--identity",
                "5",
                "--seed",
                "500005",
                "--out",
                arg(&image),
            ]);
        }
        let out = self.tmp.path().join(format!("forget-{seq}.leth"));
        lethectl_ok(&[
            "sign",
            "--key",
            arg(&self.op_key),
            "--group",
            GROUP,
            "--model-id",
            SIM_MODEL_ID,
            "--concept",
            "someone",
            "--image",
            arg(&image),
            "--seq",
            &seq.to_string(),
            "--out",
            arg(&out),
        ]);
        out
    }

    /// The arguments of `lethectl rollout` of `cmd` to the whole fleet, before the caller's.
    pub fn rollout_args(&self, cmd: &std::path::Path) -> Vec<String> {
        [
            "rollout",
            "--broker",
            &self.broker.url(),
            "--fleet",
            FLEET,
            "--command",
            arg(cmd),
            "--devices",
            arg(&self.fleet.devices_file()),
            "--device-pubs",
            arg(&self.fleet.pubs_dir()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Journal records of device `i` in `state` (`received`, `accepted`, ...).
    pub fn journal_states(&self, i: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.fleet.state_dir(i).join("journal.jsonl"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["state"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for SimRig {
    fn drop(&mut self) {
        let _ = self.fleet.stop_all();
    }
}
