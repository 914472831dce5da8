//! The shipped fleet broker (firmware/broker: `lethe.conf` and the ACL `fleet-acl` writes)
//! run by a real mosquitto, paths and ports rewritten for the test: identities are client
//! certificates. A device cannot publish a command (its own, another device's, a group's),
//! cannot write another device's status (not by a publish, not by a Last Will), cannot read
//! another device's or another group's commands, cannot take another device's session, and
//! cannot use the operators' listener; an operator cannot write a device's status; nothing
//! over the size limit reaches a device. Each refusal is checked against a control the
//! broker lets through on the same connection, after it, so a silent drop is told apart from
//! a slow delivery. Then the agent itself runs its whole protocol under that ACL.

use lethe_system_tests::{arg, bin, lethectl_ok, model_dir, workspace};
use lethe_testkit::{agent_toml, free_port, issue_cert, make_ca, Broker, Ca, Daemon, FAST};
use rumqttc::{Client, Event, LastWill, MqttOptions, Packet, QoS, Transport};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const FLEET: &str = "lab";

/// The shipped configuration and the ACL of fleet `lab` (cam-01 in group lobby, cam-02, an
/// operator alice), on a mosquitto owned by the test.
struct Fleet {
    dir: PathBuf,
    fleet_ca: Ca,
    /// Runs while the fleet is alive.
    _broker: Broker,
    device_port: u16,
    operator_port: u16,
}

impl Fleet {
    fn start(dir: &Path) -> Fleet {
        let pki = dir.join("lethe");
        let fleet_ca = make_ca(&pki, "fleet-ca", "lethe-test-fleet-ca");
        let operator_ca = make_ca(&pki, "operator-ca", "lethe-test-operator-ca");
        issue_cert(&pki, &fleet_ca, "broker", "broker", "serverAuth");
        for d in ["cam-01", "cam-02"] {
            issue_cert(
                &pki,
                &fleet_ca,
                d,
                &format!("lethe-{FLEET}-{d}"),
                "clientAuth",
            );
        }
        issue_cert(&pki, &operator_ca, "alice", "operator-alice", "clientAuth");
        // A device certificate from the operators' CA would pass there: one signed by the
        // fleet CA, named like an operator, must not.
        issue_cert(&pki, &fleet_ca, "fake-op", "operator-alice", "clientAuth");

        let acl = std::process::Command::new(workspace().join("firmware/broker/fleet-acl"))
            .args([
                "--fleet",
                FLEET,
                "--device",
                "cam-01:lobby",
                "--device",
                "cam-02",
            ])
            .args(["--operator", "alice"])
            .output()
            .expect("firmware/broker/fleet-acl");
        assert!(acl.status.success(), "{acl:?}");
        std::fs::write(pki.join("acl"), &acl.stdout).unwrap();

        let shipped = std::fs::read_to_string(workspace().join("firmware/broker/lethe.conf"))
            .expect("firmware/broker/lethe.conf");
        let (device_port, operator_port) = (free_port(), free_port());
        let mut text = String::from("user root\n");
        text.push_str(
            &shipped
                .replace("/etc/mosquitto/lethe/", &format!("{}/", pki.display()))
                .replace(
                    "listener 8883\n",
                    &format!("listener {device_port} 127.0.0.1\n"),
                )
                .replace(
                    "listener 8884\n",
                    &format!("listener {operator_port} 127.0.0.1\n"),
                ),
        );
        let settings = text.lines().filter(|l| !l.trim_start().starts_with('#'));
        for l in settings {
            assert!(
                !l.contains("/etc/") && !l.contains(" 8883") && !l.contains(" 8884"),
                "the shipped configuration changed shape ({l:?}): update this test"
            );
        }
        let broker = Broker::start_config(dir, &text, &[device_port, operator_port]);
        Fleet {
            dir: pki,
            fleet_ca,
            _broker: broker,
            device_port,
            operator_port,
        }
    }

    fn device(&self, who: &str, client_id: &str, will: Option<LastWill>) -> Peer {
        Peer::connect(self, self.device_port, who, client_id, will)
    }

    fn operator(&self, client_id: &str) -> Peer {
        Peer::connect(self, self.operator_port, "alice", client_id, None)
    }
}

/// What a connection saw.
enum Seen {
    Publish(String, Vec<u8>, bool),
    SubAck(Vec<String>),
    Error(String),
}

/// One MQTT connection over mutual TLS, with what it receives on a channel.
struct Peer {
    client: Client,
    rx: mpsc::Receiver<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Peer {
    /// `who`: the certificate (`<who>.pem` in the test PKI), or none.
    fn try_connect(
        f: &Fleet,
        port: u16,
        who: Option<&str>,
        client_id: &str,
        will: Option<LastWill>,
    ) -> Result<Peer, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_max_packet_size(4 << 20, 4 << 20)
            .set_keep_alive(Duration::from_secs(30))
            .set_transport(Transport::tls(
                read(f.fleet_ca.cert.clone()),
                who.map(|w| {
                    (
                        read(f.dir.join(format!("{w}.pem"))),
                        read(f.dir.join(format!("{w}.key"))),
                    )
                }),
                None,
            ));
        if let Some(w) = will {
            o.set_last_will(w);
        }
        let (client, mut conn) = Client::new(o, 64);
        let (tx, rx) = mpsc::channel();
        let (ctx, crx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut connected = false;
            // Polled with a timeout, so that `kill` can end the connection without a
            // DISCONNECT (as a crash does: the broker then sends the Last Will).
            while !stopped.load(Ordering::SeqCst) {
                let Ok(ev) = conn.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let seen = match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        let _ = ctx.send(Ok(()));
                        continue;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Seen::Publish(p.topic.clone(), p.payload.to_vec(), p.retain)
                    }
                    Ok(Event::Incoming(Packet::SubAck(a))) => {
                        Seen::SubAck(a.return_codes.iter().map(|c| format!("{c:?}")).collect())
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        if !connected {
                            let _ = ctx.send(Err(e.to_string()));
                        }
                        let _ = tx.send(Seen::Error(e.to_string()));
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        let peer = Peer {
            client,
            rx,
            stop,
            thread: Some(thread),
        };
        match crx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(peer),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("no ConnAck in 10 s".into()),
        }
    }

    fn connect(f: &Fleet, port: u16, who: &str, id: &str, will: Option<LastWill>) -> Peer {
        Peer::try_connect(f, port, Some(who), id, will)
            .unwrap_or_else(|e| panic!("{who} as {id} on {port}: {e}"))
    }

    /// Waits until `device`'s status says `state` (the peer must be subscribed to it).
    fn wait_state(&self, device: &str, state: &str, timeout: Duration, log: &dyn Fn() -> String) {
        let t0 = Instant::now();
        while let Some(left) = timeout.checked_sub(t0.elapsed()) {
            if let Ok(Seen::Publish(t, p, _)) = self.rx.recv_timeout(left) {
                let s: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
                if t == status(device) && s["state"] == state {
                    return;
                }
            }
        }
        panic!("{device} never said {state:?}\n{}", log());
    }

    /// Drops the connection without a DISCONNECT, as a crash would.
    fn kill(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .unwrap();
    }

    /// Subscribes and returns the broker's answer per filter.
    fn subscribe(&self, filters: &[&str]) -> Vec<String> {
        for t in filters {
            self.client.subscribe(*t, QoS::AtLeastOnce).unwrap();
        }
        let mut codes = Vec::new();
        while codes.len() < filters.len() {
            match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Seen::SubAck(c)) => codes.extend(c),
                Ok(Seen::Error(e)) => panic!("subscribing: {e}"),
                Ok(_) => {}
                Err(_) => panic!("no SubAck"),
            }
        }
        codes
    }

    /// Everything received until `marker` arrives on `marker_topic` (which must), but the
    /// controls of earlier steps.
    fn until(&self, marker_topic: &str, marker: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::new();
        let t0 = Instant::now();
        loop {
            let left = Duration::from_secs(15).saturating_sub(t0.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(Seen::Publish(t, p, _)) if t == marker_topic && p == marker => return got,
                Ok(Seen::Publish(_, p, _)) if p.starts_with(b"control") => {}
                Ok(Seen::Publish(t, p, _)) => got.push((t, p)),
                Ok(Seen::Error(e)) => panic!("connection lost waiting for {marker_topic}: {e}"),
                Ok(Seen::SubAck(_)) => {}
                Err(_) => panic!(
                    "the control message on {marker_topic} never came; got {:?}",
                    shown(&got)
                ),
            }
        }
    }
}

/// Topics and the first bytes of payloads, for messages.
fn shown(got: &[(String, Vec<u8>)]) -> Vec<String> {
    got.iter()
        .map(|(t, p)| {
            let head = String::from_utf8_lossy(&p[..p.len().min(16)]).into_owned();
            format!("{t}: {head:?} ({} bytes)", p.len())
        })
        .collect()
}

fn cmd(device: &str) -> String {
    format!("lethe/v1/{FLEET}/{device}/cmd")
}
fn status(device: &str) -> String {
    format!("lethe/v1/{FLEET}/{device}/status")
}

#[test]
fn the_shipped_broker_acl_refuses_a_device_speaking_or_listening_for_others() {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fleet::start(tmp.path());
    let watcher = f.operator("watcher");
    assert_eq!(
        watcher.subscribe(&[&format!("lethe/v1/{FLEET}/#")]),
        vec!["Success(AtLeastOnce)"]
    );
    let cam1 = f.device("cam-01", "lethe-lab-cam-01", None);
    let mut refused = Vec::new();

    // 1. A device cannot publish a command: not to itself, another device, or its group;
    //    not another device's status (retained). Control: its own status, which it may write.
    let forged = [
        (cmd("cam-01"), "a command to itself"),
        (cmd("cam-02"), "a command to another device"),
        (
            format!("lethe/v1/{FLEET}/groups/lobby/cmd"),
            "a command to its group",
        ),
        (status("cam-02"), "another device's status"),
        (
            format!("lethe/v1/{FLEET}/cam-02/receipts/x"),
            "another device's receipt",
        ),
    ];
    for (topic, _) in &forged {
        cam1.publish(topic, b"forged", true);
    }
    cam1.publish(&status("cam-01"), b"control-1", false);
    let got = watcher.until(&status("cam-01"), b"control-1");
    assert!(got.is_empty(), "the broker let through: {:?}", shown(&got));
    refused.extend(
        forged
            .iter()
            .map(|(_, what)| format!("device publishes {what}")),
    );
    // Nothing retained either: a new subscriber to cam-02's topics finds nothing.
    let late = f.operator("late");
    late.subscribe(&[&format!("lethe/v1/{FLEET}/cam-02/#"), &cmd("cam-01")]);
    late.publish(&cmd("cam-02"), b"control-2", false);
    let got = late.until(&cmd("cam-02"), b"control-2");
    assert!(got.is_empty(), "retained: {:?}", shown(&got));

    // 2. An operator writes commands, not a device's status.
    let alice = f.operator("alice-1");
    alice.publish(&status("cam-01"), b"{\"state\":\"online\"}", true);
    alice.publish(&cmd("cam-02"), b"control-3", false);
    let got = watcher.until(&cmd("cam-02"), b"control-3");
    assert!(got.is_empty(), "the broker let through: {:?}", shown(&got));
    refused.push("operator publishes a device's status".into());

    // 3. A device cannot read another device's or another group's commands, by name or by
    //    wildcard; it reads its own and its group's.
    let codes = cam1.subscribe(&[
        &cmd("cam-01"),
        &format!("lethe/v1/{FLEET}/groups/lobby/cmd"),
        &cmd("cam-02"),
        &format!("lethe/v1/{FLEET}/groups/other/cmd"),
        &format!("lethe/v1/{FLEET}/#"),
        "#",
    ]);
    eprintln!("BROKER SUBACK for cam-01 (own, group, cam-02, other group, fleet #, #): {codes:?}");
    alice.publish(&cmd("cam-02"), b"secret-1", false);
    alice.publish(
        &format!("lethe/v1/{FLEET}/groups/other/cmd"),
        b"secret-2",
        false,
    );
    alice.publish(
        &format!("lethe/v1/{FLEET}/groups/lobby/cmd"),
        b"for-lobby",
        false,
    );
    alice.publish(&cmd("cam-01"), b"control-4", false);
    let got = cam1.until(&cmd("cam-01"), b"control-4");
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        got.iter().all(|(_, p)| !p.starts_with(b"secret")),
        "cam-01 read another's commands: {topics:?}"
    );
    assert!(
        got.iter().any(|(_, p)| p == b"for-lobby"),
        "cam-01 must read its group's commands: {topics:?}"
    );
    refused.push("device reads another device's commands".into());
    refused.push("device reads another group's commands".into());

    // 4. Over the size limit: never delivered. At the limit: delivered.
    let limit = 1 << 20;
    alice.publish(&cmd("cam-01"), &vec![b'x'; limit + 1], false);
    alice.publish(&cmd("cam-01"), &vec![b'y'; limit], false);
    let t0 = Instant::now();
    loop {
        match cam1.rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Seen::Publish(_, p, _)) if p.len() == limit => break,
            Ok(Seen::Publish(_, p, _)) => assert!(p.len() <= limit, "{} bytes arrived", p.len()),
            Ok(Seen::Error(e)) => panic!("{e}"),
            Ok(_) => {}
            Err(_) => panic!("the 1 MiB message never came"),
        }
        assert!(t0.elapsed() < Duration::from_secs(15));
    }
    refused.push("a message over message_size_limit".into());

    // 5. A Last Will is a publish too: set on another device's status, it is never sent.
    //    Control: the same device's will on its own status is. (These connections take
    //    cam-01's client id, so the one above is gone from here on.)
    let forged_will = LastWill::new(status("cam-02"), "forged-will", QoS::AtLeastOnce, true);
    f.device("cam-01", "lethe-lab-cam-01", Some(forged_will))
        .kill();
    std::thread::sleep(Duration::from_millis(500));
    let own_will = LastWill::new(status("cam-01"), "control-5", QoS::AtLeastOnce, false);
    f.device("cam-01", "lethe-lab-cam-01", Some(own_will))
        .kill();
    let got = watcher.until(&status("cam-01"), b"control-5");
    assert!(
        got.iter().all(|(_, p)| p != b"forged-will"),
        "the broker sent a forged will: {:?}",
        shown(&got)
    );
    refused.push("device sets its Last Will on another device's status".into());

    // 6. A device cannot take another's session: its client id is replaced by its own name,
    //    so cam-02 stays connected and keeps getting its commands.
    let cam2 = f.device("cam-02", "lethe-lab-cam-02", None);
    cam2.subscribe(&[&cmd("cam-02")]);
    let thief = f.device("cam-01", "lethe-lab-cam-02", None);
    thief.subscribe(&[&cmd("cam-02"), &cmd("cam-01")]);
    std::thread::sleep(Duration::from_millis(300));
    alice.publish(&cmd("cam-02"), b"control-6", false);
    let got = cam2.until(&cmd("cam-02"), b"control-6");
    assert!(got.is_empty(), "{:?}", shown(&got));
    alice.publish(&cmd("cam-01"), b"control-7", false);
    let got = thief.until(&cmd("cam-01"), b"control-7");
    assert!(
        got.iter().all(|(_, p)| p != b"control-6"),
        "the thief got cam-02's command: {:?}",
        shown(&got)
    );
    refused.push("device takes over another device's client id".into());

    // 7. A device certificate on the operators' listener, even named like an operator; no
    //    certificate at all.
    let e = Peer::try_connect(&f, f.operator_port, Some("fake-op"), "x", None)
        .err()
        .expect("a fleet certificate on the operator listener");
    eprintln!("BROKER device certificate on the operator listener: {e}");
    refused.push("device certificate on the operator listener".into());
    for port in [f.device_port, f.operator_port] {
        let e = Peer::try_connect(&f, port, None, "anonymous", None)
            .err()
            .expect("a client without a certificate");
        eprintln!("BROKER no client certificate on {port}: {e}");
    }
    refused.push("client without a certificate (either listener)".into());

    eprintln!("BROKER ACL refused {} cases:", refused.len());
    for r in &refused {
        eprintln!("  refused: {r}");
    }
}

#[test]
fn the_shipped_size_limit_admits_every_command_and_stays_under_the_agent_s_packet_cap() {
    let conf = std::fs::read_to_string(workspace().join("firmware/broker/lethe.conf")).unwrap();
    let value = |text: &str, key: &str| -> u64 {
        text.lines()
            .map(|l| l.split('#').next().unwrap().trim())
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .trim_start_matches('=')
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {key}"))
    };
    let limit = value(&conf, "message_size_limit");
    let agent = std::fs::read_to_string(workspace().join("firmware/config.toml")).unwrap();
    let cap = value(&agent, "max_packet_bytes");
    let envelope = lethe_proto::envelope::MAX_ENVELOPE_BYTES as u64;
    // A publish packet is the payload plus a topic (at most 64 KiB) and a few header bytes.
    assert!(
        limit >= envelope,
        "{limit} < the largest command ({envelope})"
    );
    assert!(
        limit + (64 << 10) + 16 <= cap,
        "message_size_limit {limit} too close to the agent's max_packet_bytes {cap}"
    );
}

#[test]
fn the_agent_runs_its_whole_protocol_under_the_shipped_acl() {
    let tmp = tempfile::tempdir().unwrap();
    let f = Fleet::start(tmp.path());
    let (keys, dev) = (tmp.path().join("keys"), tmp.path().join("device"));
    std::fs::create_dir_all(&dev).unwrap();
    lethectl_ok(&["keygen", "--out", arg(&keys), "--name", "op"]);
    lethectl_ok(&["keygen", "--out", arg(&keys), "--name", "cam-01"]);
    lethectl_ok(&[
        "trust",
        "add",
        "--store",
        arg(&dev.join("trust.json")),
        "--pub",
        arg(&keys.join("op.pub")),
    ]);
    std::fs::copy(keys.join("cam-01.key"), dev.join("device.key")).unwrap();
    let tls = format!(
        "ca_cert = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
        f.fleet_ca.cert.display(),
        f.dir.join("cam-01.pem").display(),
        f.dir.join("cam-01.key").display()
    );
    let url = format!("mqtts://127.0.0.1:{}", f.device_port);
    let config = dev.join("agent.toml");
    std::fs::write(
        &config,
        agent_toml("cam-01", FLEET, &model_dir(), &url, &(tls + FAST)),
    )
    .unwrap();
    let log = dev.join("agent.log");
    let mut agent = Daemon::spawn(
        &bin("lethe-agent"),
        &[OsStr::new("--config"), config.as_os_str()],
        &log,
        &[],
    );
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // The operator sees the device's retained status (a write the ACL allows it).
    let op = f.operator("op-view");
    op.subscribe(&[&format!("lethe/v1/{FLEET}/cam-01/#")]);
    op.wait_state("cam-01", "online", Duration::from_secs(180), &agent_log);

    // An authentic command the device refuses at once (another model), pushed with lethectl
    // over the operators' listener: its events and its receipt reach the operator.
    let image = tmp.path().join("face.png");
    lethectl_ok(&[
        "world",
        "render",
        "--identity",
        "2",
        "--seed",
        "500002",
        "--out",
        arg(&image),
    ]);
    let signed = tmp.path().join("cmd.leth");
    lethectl_ok(&[
        "sign",
        "--key",
        arg(&keys.join("op.key")),
        "--device",
        "cam-01",
        "--model-id",
        "another-model",
        "--concept",
        "anna adler",
        "--image",
        arg(&image),
        "--seq",
        "1",
        "--out",
        arg(&signed),
    ]);
    let op_url = format!("mqtts://127.0.0.1:{}", f.operator_port);
    lethectl_ok(&[
        "push",
        "--broker",
        &op_url,
        "--fleet",
        FLEET,
        "--ca-cert",
        arg(&f.fleet_ca.cert),
        "--client-cert",
        arg(&f.dir.join("alice.pem")),
        "--client-key",
        arg(&f.dir.join("alice.key")),
        arg(&signed),
    ]);
    let (mut event, mut receipt) = (false, false);
    let t0 = Instant::now();
    while !(event && receipt) {
        match op.rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Seen::Publish(t, _, _)) if t.contains("/events/") => event = true,
            Ok(Seen::Publish(t, p, retained)) if t.contains("/receipts/") => {
                let r = lethe_proto::verify_receipt(
                    &p,
                    &lethe_proto::PublicKey::from_file_str(
                        &std::fs::read_to_string(keys.join("cam-01.pub")).unwrap(),
                    )
                    .unwrap(),
                )
                .expect("a device-signed receipt");
                assert_eq!(r.verdict, lethe_proto::Verdict::Rejected);
                assert!(
                    r.reason.as_deref().unwrap().starts_with("wrong-model"),
                    "{r:?}"
                );
                let _ = retained;
                receipt = true;
            }
            Ok(_) => {}
            Err(_) => panic!("event {event}, receipt {receipt}\n{}", agent_log()),
        }
        assert!(t0.elapsed() < Duration::from_secs(60));
    }

    // Its Last Will (offline, retained, on its own status) is allowed too.
    agent.kill9();
    op.wait_state("cam-01", "offline", Duration::from_secs(60), &agent_log);
    assert!(!agent_log().contains("ERROR"), "{}", agent_log());
    eprintln!("BROKER the agent under the shipped ACL: online status, event, receipt, Last Will");
}
