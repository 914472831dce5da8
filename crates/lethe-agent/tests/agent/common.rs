//! Shared fixtures: a mosquitto process, the agent's configuration and process (lethe-testkit),
//! keys and trust store, an operator MQTT client that collects events and receipts.

use lethe_proto::{
    sign_command, ActionSpec, CommandSpec, ForgetSpec, PublicKey, Receipt, RevertSpec, SigningKey,
    TargetSpec, TrustStore,
};
pub use lethe_testkit::{
    agent_toml, free_port, make_pki, test_seed, Broker, Daemon, TlsFiles, FAST,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const FLEET: &str = "lab";
pub const DEVICE: &str = "cam-01";
pub const MODEL_ID: &str = "lethe-tiny-vlm";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn model_dir() -> PathBuf {
    workspace().join("models/tiny-vlm")
}

/// Keys, trust store, config for one device.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub op: SigningKey,
    pub device_pub: PublicKey,
    pub config: PathBuf,
    pub state: PathBuf,
}

/// Config knobs a test may change (TOML fragments appended to the defaults).
pub fn fixture(broker: &Broker, extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let op = SigningKey::generate("op").unwrap();
    let dev = SigningKey::generate(DEVICE).unwrap();
    std::fs::write(d.join("device.key"), dev.to_file_string()).unwrap();
    let mut trust = TrustStore::new();
    trust.add(&op.public(), None, None).unwrap();
    std::fs::write(d.join("trust.json"), trust.to_json()).unwrap();
    let state = d.join("state");
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        agent_toml(DEVICE, FLEET, &model_dir(), &broker.url(), extra),
    )
    .unwrap();
    Fixture {
        dir,
        op,
        device_pub: dev.public(),
        config,
        state,
    }
}

/// The agent process: the `lethe-agent` binary on a fixture's configuration, its output in
/// the fixture's `agent.log`.
pub struct Agent(Daemon);

impl Agent {
    pub fn start(f: &Fixture) -> Agent {
        Agent::start_with(f, &[])
    }

    pub fn start_with(f: &Fixture, env: &[(&str, &str)]) -> Agent {
        Agent(Daemon::spawn(
            Path::new(env!("CARGO_BIN_EXE_lethe-agent")),
            &[OsStr::new("--config"), f.config.as_os_str()],
            &f.dir.path().join("agent.log"),
            env,
        ))
    }
}

impl std::ops::Deref for Agent {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

pub fn agent_log(f: &Fixture) -> String {
    std::fs::read_to_string(f.dir.path().join("agent.log")).unwrap_or_default()
}

/// An image of `identity` rendered by the world crate, as PNG bytes.
pub fn png(identity: u32, seed: u64) -> Vec<u8> {
    let img = lethe_world::render_id(identity, seed).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn concept_name(identity: u32) -> String {
    lethe_world::identity(identity).unwrap().name()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A forget command spec for identity `who`.
pub fn spec(id: &str, seq: u64, who: u32) -> CommandSpec {
    let t = now();
    CommandSpec {
        id: id.into(),
        issuer: "op".into(),
        seq,
        issued_at: t,
        expires_at: t + 3600,
        target: TargetSpec::Device(DEVICE.into()),
        model_id: MODEL_ID.into(),
        model_version: None,
        action: ActionSpec::Forget(ForgetSpec {
            concept: concept_name(who),
            image: png(who, 500_000 + u64::from(who)),
            verify_images: vec![],
            method: None,
            steps: None,
        }),
    }
}

/// A revert command spec: `to` is `original`, a hash or `before:<id>`.
pub fn revert_spec(id: &str, seq: u64, to: &str, undo_forgets: bool) -> CommandSpec {
    CommandSpec {
        action: ActionSpec::Revert(RevertSpec {
            to: to.into(),
            undo_forgets,
        }),
        ..spec(id, seq, 0)
    }
}

pub fn sign(spec: &CommandSpec, key: &SigningKey) -> Vec<u8> {
    sign_command(spec, &[key]).unwrap()
}

/// The operator's view of the broker: every event and receipt of the device.
pub struct Operator {
    pub client: AsyncClient,
    /// Every receipt publication per command name, in arrival order (a retained receipt the
    /// agent re-publishes arrives again; a second, different receipt would show here).
    pub receipts: Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>,
    pub events: Arc<Mutex<Vec<serde_json::Value>>>,
    pub status: Arc<Mutex<Option<serde_json::Value>>>,
}

impl Operator {
    pub async fn connect(port: u16) -> Operator {
        let mut o = MqttOptions::new(format!("op-{}", free_port()), "127.0.0.1", port);
        o.set_max_packet_size(4 << 20, 4 << 20)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = AsyncClient::new(o, 64);
        let receipts: Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>> =
            Arc::new(Mutex::new(HashMap::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(None));
        let (r, e, s, c) = (
            receipts.clone(),
            events.clone(),
            status.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(
                            format!("lethe/v1/{FLEET}/{DEVICE}/#"),
                            QoS::AtLeastOnce,
                        );
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let parts: Vec<&str> = p.topic.split('/').collect();
                        match parts.get(4).copied() {
                            Some("receipts") => {
                                r.lock()
                                    .unwrap()
                                    .entry(parts[5].to_string())
                                    .or_default()
                                    .push(p.payload.to_vec());
                            }
                            Some("events") => {
                                if let Ok(v) = serde_json::from_slice(&p.payload) {
                                    e.lock().unwrap().push(v);
                                }
                            }
                            Some("status") => {
                                *s.lock().unwrap() = serde_json::from_slice(&p.payload).ok();
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Operator {
            client,
            receipts,
            events,
            status,
        }
    }

    pub async fn push(&self, bytes: Vec<u8>) {
        self.client
            .publish(
                format!("lethe/v1/{FLEET}/{DEVICE}/cmd"),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await
            .unwrap();
    }

    pub async fn push_to(&self, topic: &str, bytes: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await
            .unwrap();
    }

    /// Waits for the receipt named `name` (the latest publication), verified with the
    /// device's public key.
    pub async fn receipt(&self, name: &str, device: &PublicKey, timeout: Duration) -> Receipt {
        let t0 = Instant::now();
        loop {
            let last = self.receipts_of(name).pop();
            if let Some(b) = last {
                return lethe_proto::verify_receipt(&b, device)
                    .expect("receipt verifies")
                    .into_inner();
            }
            assert!(
                t0.elapsed() < timeout,
                "no receipt for {name} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `pred` holds for some receipt; returns (name, receipt).
    pub async fn any_receipt(
        &self,
        device: &PublicKey,
        timeout: Duration,
        pred: impl Fn(&Receipt) -> bool,
    ) -> (String, Receipt) {
        let t0 = Instant::now();
        loop {
            let all: Vec<(String, Vec<u8>)> = self
                .receipts
                .lock()
                .unwrap()
                .iter()
                .flat_map(|(k, v)| v.iter().map(|b| (k.clone(), b.clone())))
                .collect();
            for (k, b) in all {
                let r = lethe_proto::verify_receipt(&b, device)
                    .expect("receipt verifies")
                    .into_inner();
                if pred(&r) {
                    return (k, r);
                }
            }
            assert!(
                t0.elapsed() < timeout,
                "no matching receipt after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every receipt publication of `name` so far, in arrival order.
    pub fn receipts_of(&self, name: &str) -> Vec<Vec<u8>> {
        self.receipts
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until command `name` has published the event `state`; the agent's log goes
    /// into the failure message.
    pub async fn wait_event(&self, name: &str, state: &str, f: &Fixture, timeout: Duration) {
        let t0 = Instant::now();
        while !self.events_of(name).iter().any(|s| s == state) {
            assert!(
                t0.elapsed() < timeout,
                "no {state} event of {name} after {timeout:?}\n{}",
                agent_log(f)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn events_of(&self, name: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["command"] == name)
            .map(|e| e["state"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub async fn wait_online(&self, timeout: Duration) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.status.lock().unwrap().clone() {
                if s["state"] == "online" {
                    return s;
                }
            }
            assert!(t0.elapsed() < timeout, "agent not online after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A broker, a device fixture with `extra` configuration, its agent, and an operator that
/// saw it online. Field order is drop order: the agent stops before the broker.
pub struct Online {
    pub agent: Agent,
    pub op: Operator,
    pub f: Fixture,
    pub broker: Broker,
    pub tmp: tempfile::TempDir,
}

/// Starts an [`Online`] device.
pub async fn online(extra: &str) -> Online {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let f = fixture(&broker, extra);
    let agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;
    Online {
        agent,
        op,
        f,
        broker,
        tmp,
    }
}

/// The store's current adapter hash, read from disk.
pub fn current_hash(state: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("adapters/current")).unwrap()).unwrap();
    v["hash"].as_str().unwrap().to_string()
}

/// The package's adapter hash (the base).
pub fn base_hash() -> String {
    lethe_model::Package::open(model_dir())
        .unwrap()
        .adapter_sha256()
        .to_string()
}

/// Journal records as JSON values.
pub fn journal(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
