//! One device on this machine, for `demo` and `bench agent`: fresh operator and device keys,
//! a trust store, an in-process MQTT broker (rumqttd) on a free loopback port and an agent
//! configuration on the given model package, all in a temporary folder removed on drop.
//! The agent itself is started by the caller (`AgentHandle::spawn(dev.cfg.clone())`).

use super::fleet::{publish, watch_receipts, Conn, Watched};
use anyhow::{bail, Context, Result};
use lethe_agent::{Config, Overrides};
use lethe_proto::{
    sign_command, ActionSpec, CommandSpec, ForgetSpec, SigningKey, TargetSpec, TrustStore,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

pub const FLEET: &str = "demo";
pub const DEVICE: &str = "cam-01";

/// Keys, broker and agent configuration of one local device.
pub struct LocalDevice {
    /// The temporary folder (keys, trust store, agent state), removed on drop.
    _work: tempfile::TempDir,
    pub op: SigningKey,
    pub dev: SigningKey,
    /// `mqtt://127.0.0.1:<port>` of the in-process broker.
    pub broker: String,
    pub cfg: Config,
    model_id: String,
    seq: u64,
}

impl LocalDevice {
    /// Creates keys and config and starts the broker. `config_extra` is appended to the
    /// agent's TOML (e.g. an `[update]` table).
    pub fn new(model: &Path, model_id: &str, config_extra: &str) -> Result<LocalDevice> {
        let work = tempfile::tempdir()?;
        let d = work.path();
        let op = SigningKey::generate("operator")?;
        let dev = SigningKey::generate(DEVICE)?;
        std::fs::write(d.join("device.key"), dev.to_file_string())?;
        let mut trust = TrustStore::new();
        trust.add(&op.public(), None, None)?;
        std::fs::write(d.join("trust.json"), trust.to_json())?;
        let port = free_port()?;
        start_broker(port)?;
        let broker = format!("mqtt://127.0.0.1:{port}");
        let model_dir = std::fs::canonicalize(model)?;
        let toml = format!(
            r#"device_id = "{DEVICE}"
fleet = "{FLEET}"
groups = ["lobby"]
device_key = "device.key"
trust_store = "trust.json"
model_dir = "{}"
state_dir = "state"
broker = "{broker}"
selfcheck_at_start = false
selfcheck_interval_s = 0
{config_extra}
"#,
            model_dir.display(),
        );
        let cfg = Config::from_toml(&toml, d, &Overrides::default())?;
        Ok(LocalDevice {
            _work: work,
            op,
            dev,
            broker,
            cfg,
            model_id: model_id.to_string(),
            seq: 0,
        })
    }

    /// A forget of `identity` from one training-split render with `verify_images` more
    /// renders of the person for verification ([`verify_pngs`]), signed by the operator.
    pub fn forget_command(
        &mut self,
        id: &str,
        identity: u32,
        verify_images: usize,
    ) -> Result<Vec<u8>> {
        let concept = lethe_world::identity(identity)
            .context("no such identity")?
            .name();
        self.seq += 1;
        let t = lethe_agent::fsutil::now_unix();
        let spec = CommandSpec {
            id: id.into(),
            issuer: "operator".into(),
            seq: self.seq,
            issued_at: t,
            expires_at: t + 3600,
            target: TargetSpec::Device(DEVICE.into()),
            model_id: self.model_id.clone(),
            model_version: None,
            action: ActionSpec::Forget(ForgetSpec {
                concept,
                image: png(identity, 500_000 + u64::from(identity))?,
                verify_images: verify_pngs(identity, verify_images)?,
                method: None,
                steps: None,
            }),
        };
        Ok(sign_command(&spec, &[&self.op])?)
    }

    /// Publishes a signed command to the device and waits for its verified receipt; returns
    /// it with the time from publish to receipt. `quiet` hides the progress bar.
    pub async fn push(&self, id: &str, bytes: Vec<u8>, quiet: bool) -> Result<(Watched, Duration)> {
        let mut got = self.push_many(vec![(id.to_string(), bytes)], quiet).await?;
        Ok(got.remove(0))
    }

    /// Publishes signed commands back to back (the agent queues them), then waits for each
    /// verified receipt in turn; each comes with the time from the first publish to it.
    pub async fn push_many(
        &self,
        cmds: Vec<(String, Vec<u8>)>,
        quiet: bool,
    ) -> Result<Vec<(Watched, Duration)>> {
        let topic = lethe_agent::mqtt::device_cmd(FLEET, DEVICE);
        let mut devs = BTreeMap::new();
        devs.insert(DEVICE.to_string(), self.dev.public());
        let t0 = Instant::now();
        let conn = Conn::plain(&self.broker);
        let ids: Vec<String> = cmds.iter().map(|c| c.0.clone()).collect();
        for (_, bytes) in cmds {
            publish(&conn, &topic, bytes).await?;
        }
        let mut out = Vec::new();
        for id in ids {
            let got = watch_receipts(
                &conn,
                FLEET,
                &id,
                "-",
                &devs,
                Duration::from_secs(900),
                quiet,
            )
            .await?;
            match got.into_iter().next() {
                Some(w) => out.push((w, t0.elapsed())),
                None => bail!("no receipt from the agent for {id}"),
            }
        }
        Ok(out)
    }

    /// Waits until the agent's retained status says online; returns the status.
    pub async fn wait_online(&self) -> Result<serde_json::Value> {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let a = lethe_agent::config::parse_broker(&self.broker).map_err(anyhow::Error::msg)?;
        let (c, mut el) = AsyncClient::new(MqttOptions::new("local-wait", a.host, a.port), 16);
        let topic = lethe_agent::mqtt::status(FLEET, DEVICE);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Err(_) => bail!("the agent did not come online"),
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    c.try_subscribe(&topic, QoS::AtLeastOnce)?
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if v["state"] == "online" {
                        let _ = c.disconnect().await;
                        return Ok(v);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_broker(port: u16) -> Result<()> {
    let text = format!(
        r#"id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 4194304
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).context("broker config")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::spawn(move || {
        if let Err(e) = broker.start() {
            use lethe_agent::log::{write_as, Level};
            write_as("broker", Level::Error, format_args!("stopped: {e}"));
        }
    });
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("the in-process broker did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `k` renders of `identity` for a command's verification images (seeds 600,000 +
/// 10 x identity + j: used by nothing else).
pub fn verify_pngs(identity: u32, k: usize) -> Result<Vec<Vec<u8>>> {
    (0..k as u64)
        .map(|j| png(identity, 600_000 + 10 * u64::from(identity) + j))
        .collect()
}

/// A PNG of `identity` rendered with `seed`.
pub fn png(identity: u32, seed: u64) -> Result<Vec<u8>> {
    let img = lethe_world::render_id(identity, seed)?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}
