//! `lethectl demo`: the whole loop on one machine with nothing else running. An in-process
//! MQTT broker (rumqttd) on a free loopback port, an in-process agent (lethe-agent) on the
//! bundled model with its state in a temporary folder, fresh operator and device keys, the
//! model's answers before, a signed forget of one identity pushed over MQTT, progress bars
//! from the agent's events, the verified receipt, and the answers after.
//!
//! The package is used in place: the agent never writes it (its adapter versions live in
//! the agent's state folder), so no copy is needed.

use super::fleet::{publish, watch_receipts};
use anyhow::{bail, Context, Result};
use clap::Args;
use lethe_agent::{AgentHandle, Config, Overrides};
use lethe_model::generate::{answer, encode_images};
use lethe_model::{Adapter, Package, Query};
use lethe_probe::TractEngine;
use lethe_proto::{sign_command, CommandSpec, SigningKey, TargetSpec, TrustStore};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DemoArgs {
    /// The model package.
    #[arg(long, default_value = "models/tiny-vlm")]
    pub model: PathBuf,
    /// Identity to forget (index in the world).
    #[arg(long, default_value_t = 3)]
    pub identity: u32,
    /// Another identity, to show it is still recognised.
    #[arg(long, default_value_t = 7)]
    pub other: u32,
    /// Step budget of the update.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
}

fn free_port() -> Result<u16> {
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
            eprintln!("broker stopped: {e}");
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

fn png(identity: u32, seed: u64) -> Result<Vec<u8>> {
    let img = lethe_world::render_id(identity, seed)?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// "who is this ?" on held-out renders of `identity`, with tract.
fn ask(
    pkg: &Package,
    tract: &mut TractEngine,
    adapter: &Adapter,
    identity: u32,
) -> Result<Vec<String>> {
    let imgs = (0..3)
        .map(|k| lethe_world::render_id(identity, 1_000_000 + 1000 * u64::from(identity) + k))
        .collect::<Result<Vec<_>, _>>()?;
    let input = lethe_model::image::images_to_input(&imgs);
    let feats = encode_images(tract, input.view())?;
    let q: Vec<Query> = (0..imgs.len())
        .map(|i| Query::about("who is this ?", i))
        .collect();
    Ok(answer(
        tract,
        adapter.as_slice(),
        &pkg.tokenizer(),
        feats.view(),
        &q,
    )?)
}

fn show(label: &str, name: &str, answers: &[String]) {
    println!(
        "  {label:<7} {name:<16} -> {}",
        answers
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let pkg = Package::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let work = tempfile::tempdir()?;
    let d = work.path();
    let concept = lethe_world::identity(a.identity)
        .context("no such identity")?
        .name();
    let other = lethe_world::identity(a.other)
        .context("no such identity")?
        .name();

    println!("== keys: an operator key the device trusts, and the device's own key");
    let op = SigningKey::generate("operator")?;
    let dev = SigningKey::generate("cam-01")?;
    std::fs::write(d.join("device.key"), dev.to_file_string())?;
    let mut trust = TrustStore::new();
    trust.add(&op.public(), None, None)?;
    std::fs::write(d.join("trust.json"), trust.to_json())?;
    println!("  operator {}  device cam-01 {}", op.id(), dev.id());

    let port = free_port()?;
    start_broker(port)?;
    let broker = format!("mqtt://127.0.0.1:{port}");
    println!("== broker: rumqttd in-process on {broker}");

    let model_dir = std::fs::canonicalize(&a.model)?;
    let toml = format!(
        r#"device_id = "cam-01"
fleet = "demo"
groups = ["lobby"]
device_key = "device.key"
trust_store = "trust.json"
model_dir = "{}"
state_dir = "state"
broker = "{broker}"
selfcheck_at_start = false
selfcheck_interval_s = 0
[update]
max_steps = {}
allow_mismatch = true
"#,
        model_dir.display(),
        a.steps
    );
    let cfg = Config::from_toml(&toml, d, &Overrides::default())?;
    let state = cfg.state_dir.clone();

    println!("== the model BEFORE (tract, held-out images never trained on)");
    let mut tract = TractEngine::new(&pkg)?;
    let base = pkg.adapter()?;
    show(
        "before",
        &concept,
        &ask(&pkg, &mut tract, &base, a.identity)?,
    );
    show("before", &other, &ask(&pkg, &mut tract, &base, a.other)?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let code = rt.block_on(async {
        println!(
            "== agent: starting on the bundled model (state in {})",
            state.display()
        );
        let agent = AgentHandle::spawn(cfg);
        let t = lethe_agent::fsutil::now_unix();
        let spec = CommandSpec {
            id: "demo-1".into(),
            issuer: "operator".into(),
            seq: 1,
            issued_at: t,
            expires_at: t + 3600,
            target: TargetSpec::Device("cam-01".into()),
            model_id: pkg.manifest().model_id.clone(),
            model_version: None,
            concept: concept.clone(),
            image: png(a.identity, 500_000 + u64::from(a.identity))?,
            verify_images: vec![],
            method: None,
            steps: None,
        };
        let bytes = sign_command(&spec, &[&op])?;
        let topic = lethe_agent::mqtt::device_cmd("demo", "cam-01");
        println!(
            "== push: forget {concept:?} (one image, signed by the operator, {} bytes) -> {topic}",
            bytes.len()
        );
        // Wait for the agent to load the model and subscribe before pushing.
        wait_online(&broker).await?;
        let t0 = Instant::now();
        publish(&broker, &topic, bytes).await?;
        let mut devs = BTreeMap::new();
        devs.insert("cam-01".to_string(), dev.public());
        let got = watch_receipts(
            &broker,
            "demo",
            "demo-1",
            "-",
            &devs,
            Duration::from_secs(900),
            false,
        )
        .await?;
        let took = t0.elapsed();
        agent.stop().await?;
        let Some(w) = got.into_iter().next() else {
            bail!("no receipt from the agent")
        };
        let r = w.receipt;
        println!(
            "== receipt (signature verified with the device's public key), {:.1} s after the push",
            took.as_secs_f64()
        );
        println!("{}", serde_json::to_string_pretty(&r)?);
        println!("== the model AFTER (adapter {})", &r.model_hash_after[..12]);
        let bytes =
            std::fs::read(state.join(format!("adapters/versions/{}.bin", r.model_hash_after)))?;
        let after = Adapter::from_bytes(&bytes, pkg.adapter_len())?;
        show(
            "after",
            &concept,
            &ask(&pkg, &mut tract, &after, a.identity)?,
        );
        show("after", &other, &ask(&pkg, &mut tract, &after, a.other)?);
        Ok::<_, anyhow::Error>(if r.verdict == lethe_proto::Verdict::Committed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })?;
    Ok(code)
}

async fn wait_online(broker: &str) -> Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let a = lethe_agent::config::parse_broker(broker).map_err(anyhow::Error::msg)?;
    let (c, mut el) = AsyncClient::new(MqttOptions::new("demo-wait", a.host, a.port), 16);
    let topic = lethe_agent::mqtt::status("demo", "cam-01");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => bail!("the agent did not come online"),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                c.try_subscribe(&topic, QoS::AtLeastOnce)?
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if v["state"] == "online" {
                    println!(
                        "  agent online: model {} adapter {} provider {}",
                        v["model_id"],
                        &v["adapter_hash"].as_str().unwrap_or("")[..12],
                        v["execution_provider"]
                    );
                    let _ = c.disconnect().await;
                    return Ok(());
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
