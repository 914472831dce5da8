//! Fleet commands over MQTT: `push` a signed command to a device or a group, `watch` its
//! progress per device (receipts verified with the devices' public keys), `status` of the
//! fleet from the devices' retained status. Topics: crates/lethe-agent/README.md.
//!
//! Exit codes: 0 all good, 1 a definite "no" (a receipt that is not `committed`, a device
//! offline or failing its self-check), 2 errors (broker unreachable, bad files, timeout).

use super::fsutil::read_text;
use super::topic_index::TopicIndex;
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lethe_agent::mqtt as topics;
use lethe_proto::envelope::{self, Kind, MAX_ENVELOPE_BYTES};
use lethe_proto::{parse_command, verify_receipt, PublicKey, Target, Verdict};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Args)]
pub struct BrokerArgs {
    /// Broker, mqtt://host:port or mqtts://host:port.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// Fleet name (the second topic level).
    #[arg(long, required = true)]
    pub fleet: Option<String>,
    /// CA certificate (PEM) to verify an mqtts:// broker (default: the system's roots).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require one; with --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM); with --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl BrokerArgs {
    /// The fleet (clap requires `--fleet` wherever these arguments are taken, except under
    /// a subcommand that does without them, such as `audit verify`).
    pub fn fleet(&self) -> Result<&str> {
        self.fleet.as_deref().context("--fleet is required")
    }

    pub fn conn(&self) -> Conn {
        Conn {
            url: self.broker.clone(),
            ca_cert: self.ca_cert.clone(),
            client: self.client_cert.clone().zip(self.client_key.clone()),
        }
    }
}

/// How to reach the broker: its URL and, for mqtts://, the TLS files.
#[derive(Debug, Clone)]
pub struct Conn {
    pub url: String,
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Conn {
    /// A plain mqtt:// broker.
    pub fn plain(url: &str) -> Conn {
        Conn {
            url: url.to_string(),
            ca_cert: None,
            client: None,
        }
    }
}

impl std::fmt::Display for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

#[derive(Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub b: BrokerArgs,
    /// The signed command (`lethectl sign --out`); its target picks the topic.
    pub command: PathBuf,
}

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub b: BrokerArgs,
    /// The signed command being watched.
    #[arg(long)]
    pub command: PathBuf,
    /// Public key of each device to hear from (named by its device id); repeatable.
    #[arg(long = "device-pub", required = true)]
    pub device_pubs: Vec<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub b: BrokerArgs,
    /// How long to collect retained statuses, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub wait: f64,
    /// Only these devices (one id a line), each on its exact status topic: on brokers
    /// that give retained messages to exact subscriptions only (RabbitMQ 3.x), the way to
    /// see them. Default: every device of the fleet (a wildcard subscription).
    #[arg(long)]
    pub devices: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub(super) fn client_for(broker: &Conn, name: &str) -> Result<(AsyncClient, rumqttc::EventLoop)> {
    let a = lethe_agent::config::parse_broker(&broker.url).map_err(anyhow::Error::msg)?;
    if !a.tls && (broker.ca_cert.is_some() || broker.client.is_some()) {
        bail!(
            "--ca-cert/--client-cert are for an mqtts:// broker, not {}",
            broker.url
        );
    }
    let mut o = MqttOptions::new(
        format!("lethectl-{name}-{}", std::process::id()),
        a.host,
        a.port,
    );
    o.set_max_packet_size(4 << 20, 4 << 20)
        .set_keep_alive(Duration::from_secs(10));
    if a.tls {
        let client = broker
            .client
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        o.set_transport(lethe_agent::mqtt::tls_transport(
            broker.ca_cert.as_deref(),
            client,
        )?);
    }
    Ok(AsyncClient::new(o, 64))
}

/// Reads a signed command file and returns (bytes, command topic, command id, env name).
pub fn load_command(fleet: &str, path: &Path) -> Result<(Vec<u8>, String, String, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() > MAX_ENVELOPE_BYTES {
        bail!("{} is over the envelope cap", path.display());
    }
    let env = envelope::parse(&bytes, Kind::Command).context("not a signed command")?;
    let cmd = parse_command(env.payload).context("not a valid command")?;
    let topic = match &cmd.target {
        Target::Device(d) => topics::device_cmd(fleet, d.as_str()),
        Target::Group(g) => topics::group_cmd(fleet, g.as_str()),
    };
    let env_name = {
        use sha2::{Digest, Sha256};
        format!("env-{}", &hex::encode(Sha256::digest(&bytes))[..16])
    };
    Ok((bytes, topic, cmd.id.as_str().to_string(), env_name))
}

/// Publishes `bytes` on `topic` (QoS 1) and waits for the broker's PUBACK.
pub async fn publish(broker: &Conn, topic: &str, bytes: Vec<u8>) -> Result<()> {
    let (client, mut el) = client_for(broker, "push")?;
    client
        .publish(topic, QoS::AtLeastOnce, false, bytes)
        .await?;
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("broker {broker}: {e}"),
            Err(_) => bail!("broker {broker}: no PUBACK in 10 s"),
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("broker {broker}: no PUBACK in 10 s");
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), el.poll()).await;
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn push(a: PushArgs) -> Result<ExitCode> {
    let (bytes, topic, id, _) = load_command(a.b.fleet()?, &a.command)?;
    let n = bytes.len();
    runtime()?.block_on(publish(&a.b.conn(), &topic, bytes))?;
    println!("pushed {id} ({n} bytes) to {topic}");
    Ok(ExitCode::SUCCESS)
}

/// What a watched topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    Event,
    Receipt,
}

/// What watching reports per device.
pub struct Watched {
    pub device: String,
    pub receipt: lethe_proto::Receipt,
}

/// Follows events and receipts of command `id` (or its envelope name) on every device of
/// `devices`, drawing a bar per device; returns verified receipts.
pub async fn watch_receipts(
    broker: &Conn,
    fleet: &str,
    id: &str,
    env_name: &str,
    devices: &BTreeMap<String, PublicKey>,
    timeout: Duration,
    quiet: bool,
) -> Result<Vec<Watched>> {
    let (client, mut el) = client_for(broker, "watch")?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Exact topics per device (see `topic_index`): retained receipts reach a late watcher
    // on every broker, and dotted ids are found again in RabbitMQ's form.
    let mut ix = TopicIndex::default();
    for d in devices.keys() {
        for name in [id, env_name] {
            ix.insert(topics::events(fleet, d, name), (d.clone(), Carries::Event));
            ix.insert(
                topics::receipt(fleet, d, name),
                (d.clone(), Carries::Receipt),
            );
        }
    }
    let subs = ix.filters();
    let c2 = client.clone();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for chunk in subs.chunks(100) {
                        let filters = chunk
                            .iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        let _ = c2.try_subscribe_many(filters);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    });
    let mp = if quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
        .expect("static template")
        .progress_chars("=> ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    for d in devices.keys() {
        let pb = mp.add(ProgressBar::new(1));
        pb.set_style(style.clone());
        pb.set_prefix(d.clone());
        pb.set_message("waiting");
        bars.insert(d.clone(), pb);
    }
    let mut out: BTreeMap<String, lethe_proto::Receipt> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < devices.len() {
        let (topic, payload) = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => m,
            _ => break,
        };
        let Some((dev, kind)) = ix.get(&topic) else {
            continue;
        };
        let Some(pb) = bars.get(dev) else { continue };
        if *kind == Carries::Event {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) else {
                continue;
            };
            let state = v["state"].as_str().unwrap_or("");
            match state {
                "training" => {
                    pb.set_length(v["of"].as_u64().unwrap_or(1));
                    pb.set_position(v["step"].as_u64().unwrap_or(0));
                    pb.set_message(format!(
                        "training, loss {:.3}",
                        v["loss"].as_f64().unwrap_or(f64::NAN)
                    ));
                }
                "duplicate" => {}
                s => pb.set_message(s.to_string()),
            }
        } else {
            if payload.is_empty() {
                continue; // a retained receipt cleared by `lethectl audit`
            }
            match verify_receipt(&payload, &devices[dev]) {
                Ok(r) => {
                    let r = r.into_inner();
                    pb.finish_with_message(format!(
                        "{}{} (receipt verified)",
                        r.verdict.name(),
                        r.reason
                            .as_deref()
                            .map(|x| format!(": {x}"))
                            .unwrap_or_default()
                    ));
                    out.insert(dev.clone(), r);
                }
                Err(e) => pb.set_message(format!("receipt does NOT verify: {e}")),
            }
        }
    }
    poller.abort();
    for (d, pb) in &bars {
        if !out.contains_key(d) {
            pb.abandon_with_message("no receipt (timed out)");
        }
    }
    Ok(out
        .into_iter()
        .map(|(device, receipt)| Watched { device, receipt })
        .collect())
}

pub fn load_device_pubs(paths: &[PathBuf]) -> Result<BTreeMap<String, PublicKey>> {
    let mut m = BTreeMap::new();
    for p in paths {
        let k = PublicKey::from_file_str(&read_text(p)?)
            .with_context(|| format!("reading {}", p.display()))?;
        m.insert(k.name().to_string(), k);
    }
    Ok(m)
}

pub fn watch(a: WatchArgs) -> Result<ExitCode> {
    let (_, _, id, env_name) = load_command(a.b.fleet()?, &a.command)?;
    let devs = load_device_pubs(&a.device_pubs)?;
    let got = runtime()?.block_on(watch_receipts(
        &a.b.conn(),
        a.b.fleet()?,
        &id,
        &env_name,
        &devs,
        Duration::from_secs(a.timeout),
        false,
    ))?;
    for w in &got {
        let r = &w.receipt;
        let undone = if r.undone_forgets.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = r
                .undone_forgets
                .iter()
                .map(|u| format!("{:?} ({})", u.concept, u.command_id))
                .collect();
            format!("; UNDID forgets: {}", list.join(", "))
        };
        println!(
            "{}: {} model {} -> {} on {}{}{undone}",
            w.device,
            r.verdict.name(),
            &r.model_hash_before[..12.min(r.model_hash_before.len())],
            &r.model_hash_after[..12.min(r.model_hash_after.len())],
            r.execution_provider.as_deref().unwrap_or("?"),
            r.reason
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default()
        );
    }
    if got.len() < devs.len() {
        eprintln!(
            "error: {} of {} devices sent no receipt",
            devs.len() - got.len(),
            devs.len()
        );
        return Ok(ExitCode::from(2));
    }
    let all_ok = got.iter().all(|w| w.receipt.verdict == Verdict::Committed);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn status(a: StatusArgs) -> Result<ExitCode> {
    let fleet = a.b.fleet()?.to_string();
    let filters: Vec<String> = match &a.devices {
        Some(f) => super::devices::read_list(f)?
            .iter()
            .map(|d| topics::status(&fleet, d))
            .collect(),
        None => vec![format!("lethe/v1/{fleet}/+/status")],
    };
    let docs = runtime()?.block_on(async move {
        let (client, mut el) = client_for(&a.b.conn(), "status")?;
        let mut docs: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(a.wait);
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Err(_) => break,
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    for chunk in filters.chunks(100) {
                        let subs = chunk
                            .iter()
                            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        client.try_subscribe_many(subs)?;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    // The device names itself (the topic may hold it in RabbitMQ's form).
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                        let dev = v["device"].as_str().map_or_else(
                            || p.topic.split('/').nth(3).unwrap_or("?").to_string(),
                            str::to_string,
                        );
                        docs.insert(dev, v);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("broker {}: {e}", a.b.broker),
            }
        }
        Ok::<_, anyhow::Error>(docs)
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    } else {
        println!(
            "{:<16} {:<8} {:<14} {:<9} {:<10} {:<9} {:<16} undone forgets",
            "device", "state", "adapter", "provider", "selfcheck", "forgotten", "current"
        );
        for (d, v) in &docs {
            let sc = match v["selfcheck"]["ok"].as_bool() {
                Some(true) => "ok",
                Some(false) => "FAILING",
                None => "-",
            };
            // Concepts a revert brought back and not forgotten again: what an erasure
            // audit must see.
            let undone: Vec<String> = v["forgets_undone"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|u| {
                            format!(
                                "{:?} ({}, undone by {})",
                                u["concept"].as_str().unwrap_or("?"),
                                u["command"].as_str().unwrap_or("?"),
                                u["undone_by"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!(
                "{:<16} {:<8} {:<14} {:<9} {:<10} {:<9} {:<16} {}",
                d,
                v["state"].as_str().unwrap_or("?"),
                v["adapter_hash"]
                    .as_str()
                    .map(|h| &h[..12.min(h.len())])
                    .unwrap_or("-"),
                v["execution_provider"].as_str().unwrap_or("-"),
                sc,
                v["forgotten"].as_array().map_or(0, Vec::len),
                v["current_command"].as_str().unwrap_or("-"),
                if undone.is_empty() {
                    "-".to_string()
                } else {
                    undone.join(", ")
                }
            );
        }
        println!("{} device(s)", docs.len());
    }
    let bad = docs
        .values()
        .any(|v| v["state"] == "offline" || v["selfcheck"]["ok"] == false);
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
