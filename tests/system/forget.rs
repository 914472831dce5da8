//! A forget end to end through the binaries only, as an operator runs it against one camera:
//! `lethectl keygen` (operator and device), `lethectl trust add`, a `lethe-agent` process on
//! mosquitto, `lethectl world render` for the image, `lethectl sign` + `lethectl push`,
//! `lethectl watch` until the device-signed receipt (verified), the retained receipt from
//! the broker through `lethectl receipt verify` (and refused once a byte is flipped or with
//! the wrong key), `lethectl status` with the new adapter. Then a command signed by a key
//! the device does not trust gets no answer at all (no receipt: it speaks for nobody the
//! device trusts), only a count in the device's status, the model untouched; a replayed
//! command comes back `rejected`; `lethectl audit` collects both receipts into a ledger and
//! clears them on the broker, `audit verify` passes and catches a tampered line; the agent
//! stops cleanly on SIGTERM with log lines that carry RFC 3339 UTC timestamps and levels.
//!
//! The same on two brokers: mosquitto, and RabbitMQ's MQTT plugin (with a dotted device id,
//! which RabbitMQ delivers in another topic form).

use lethe_system_tests::{arg, bin, lethectl, lethectl_ok, model_dir, retained};
use lethe_testkit::{agent_toml, Broker, Daemon, RabbitMq, TestBroker, FAST};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

const FLEET: &str = "lab";

/// `lethectl sign` of a forget of `concept` (image `image`) for `device` by `key` with
/// sequence number `seq`, into `out`; returns the command id.
fn sign(key: &Path, device: &str, concept: &str, image: &Path, seq: &str, out: &Path) -> String {
    sign_with(key, device, concept, image, seq, out, &[])
}

/// [`sign`] with more `lethectl sign` arguments.
fn sign_with(
    key: &Path,
    device: &str,
    concept: &str,
    image: &Path,
    seq: &str,
    out: &Path,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "sign",
        "--key",
        arg(key),
        "--device",
        device,
        "--model-id",
        "lethe-tiny-vlm",
        "--concept",
        concept,
        "--image",
        arg(image),
        "--seq",
        seq,
        "--expires-in",
        "30m",
        "--out",
        arg(out),
    ];
    args.extend(extra);
    let said = lethectl_ok(&args);
    said.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no command id in {said:?}"))
        .to_string()
}

/// The receipt's JSON as `lethectl receipt verify --json` prints it (exit 0 required).
fn verified(device_pub: &Path, receipt: &Path) -> serde_json::Value {
    let out = lethectl_ok(&[
        "receipt",
        "verify",
        "--json",
        "--pub",
        arg(device_pub),
        arg(receipt),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn operator_cli_forgets_on_a_running_agent_and_verifies_the_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    forget_end_to_end(&tmp, &broker, "cam-01");
}

#[test]
fn operator_cli_forgets_on_a_running_agent_on_rabbitmq() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = RabbitMq::start(tmp.path());
    forget_end_to_end(&tmp, &broker, "cam.01");
}

fn forget_end_to_end(tmp: &tempfile::TempDir, broker: &dyn TestBroker, device: &str) {
    let url = broker.url();
    let on = broker.name();
    let (keys, dev) = (tmp.path().join("keys"), tmp.path().join("device"));
    std::fs::create_dir_all(&dev).unwrap();
    let key = |n: &str| keys.join(n);

    // The operator's side: keys for the operator and the device, a trust store.
    lethectl_ok(&["keygen", "--out", arg(&keys), "--name", "op"]);
    lethectl_ok(&["keygen", "--out", arg(&keys), "--name", device]);
    let devices = tmp.path().join("devices.txt");
    std::fs::write(&devices, format!("{device}\n")).unwrap();
    let out = lethectl_ok(&[
        "trust",
        "add",
        "--store",
        arg(&dev.join("trust.json")),
        "--pub",
        arg(&key("op.pub")),
    ]);
    assert!(out.starts_with("trusted "), "{out}");

    // The camera: the agent binary with its key, the trust store and the bundled model.
    std::fs::copy(key(&format!("{device}.key")), dev.join("device.key")).unwrap();
    let config = dev.join("agent.toml");
    std::fs::write(&config, agent_toml(device, FLEET, &model_dir(), &url, FAST)).unwrap();
    let log = dev.join("agent.log");
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut agent = Daemon::spawn(
        &bin("lethe-agent"),
        &[OsStr::new("--config"), config.as_os_str()],
        &log,
        &[("RUST_LOG", "info")],
    );

    // The device announces itself (retained status) once it has loaded the model and
    // subscribed: only then does a pushed command have someone to go to.
    let t0 = Instant::now();
    while fleet_status(&url, &devices)[device]["state"] != "online" {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "the agent is not online on {on}\n{}",
            agent_log()
        );
    }

    // A forget of identity 3, signed and pushed with the CLI.
    let concept = lethe_world::identity(3).unwrap().name();
    let image = tmp.path().join("face.png");
    lethectl_ok(&[
        "world",
        "render",
        "--identity",
        "3",
        "--seed",
        "500003",
        "--out",
        arg(&image),
    ]);
    let cmd = tmp.path().join("forget.leth");
    let id = sign(&key("op.key"), device, &concept, &image, "1", &cmd);
    let topic = format!("lethe/v1/{FLEET}/{device}/cmd");
    let out = lethectl_ok(&["push", "--broker", &url, "--fleet", FLEET, arg(&cmd)]);
    assert!(
        out.starts_with(&format!("pushed {id} ")) && out.contains(&topic),
        "{out}"
    );

    // `watch` follows the update to the device-signed receipt and verifies it: exit 0 only
    // for a committed forget.
    let watch = |cmd: &Path, timeout_s: &str| {
        lethectl(&[
            "watch",
            "--broker",
            &url,
            "--fleet",
            FLEET,
            "--command",
            arg(cmd),
            "--device-pub",
            arg(&key(&format!("{device}.pub"))),
            "--timeout",
            timeout_s,
        ])
    };
    let w = watch(&cmd, "300");
    assert_eq!(w.code, 0, "{on}: {w:?}\nagent log:\n{}", agent_log());
    assert!(
        w.stdout.starts_with(&format!("{device}: committed model ")),
        "{w:?}"
    );

    // The retained receipt, as any later operator gets it from the broker.
    let receipt_topic = format!("lethe/v1/{FLEET}/{device}/receipts/{id}");
    let receipt = retained(broker.port(), &receipt_topic, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no retained receipt on {receipt_topic}"));
    let rfile = tmp.path().join("receipt.leth");
    std::fs::write(&rfile, &receipt).unwrap();
    let device_pub = key(&format!("{device}.pub"));
    let r = verified(&device_pub, &rfile);
    assert_eq!(r["command_id"], id.as_str(), "{r}");
    assert_eq!(r["device_id"], device, "{r}");
    assert_eq!(r["verdict"], "committed", "{r}");
    let (before, after) = (
        r["model_hash_before"].as_str().unwrap().to_string(),
        r["model_hash_after"].as_str().unwrap().to_string(),
    );
    assert_ne!(before, after, "a committed forget changes the adapter: {r}");
    assert!(
        w.stdout
            .contains(&format!("{} -> {}", &before[..12], &after[..12])),
        "watch and the retained receipt disagree: {} / {r}",
        w.stdout
    );

    // A flipped byte, or the operator's key instead of the device's: a definite no.
    let mut bad = receipt.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let bad_file = tmp.path().join("receipt-flipped.leth");
    std::fs::write(&bad_file, &bad).unwrap();
    for (public, file) in [(device_pub.clone(), &bad_file), (key("op.pub"), &rfile)] {
        let v = lethectl(&["receipt", "verify", "--pub", arg(&public), arg(file)]);
        assert_eq!(v.code, 1, "{v:?}");
        assert!(v.stdout.starts_with("rejected: "), "{v:?}");
    }

    // The fleet's view: the device is online on the adapter the receipt names.
    let status = fleet_status(&url, &devices);
    assert_eq!(status[device]["state"], "online", "{status}");
    assert_eq!(status[device]["adapter_hash"], after.as_str(), "{status}");

    // A command from a key the device does not trust: no answer (watch times out without a
    // receipt), counted in the status, the adapter unchanged.
    lethectl_ok(&["keygen", "--out", arg(&keys), "--name", "mallory"]);
    let forged = tmp.path().join("forged.leth");
    let forged_id = sign(&key("mallory.key"), device, &concept, &image, "2", &forged);
    lethectl_ok(&["push", "--broker", &url, "--fleet", FLEET, arg(&forged)]);
    let t0 = Instant::now();
    let channel = loop {
        let s = fleet_status(&url, &devices);
        if s[device]["channel"]["unauthenticated"] == 1 {
            break s[device]["channel"].clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{s}\n{}",
            agent_log()
        );
    };
    assert_eq!(
        channel["last_unauthenticated"]["code"], "unknown-key",
        "{channel}"
    );
    let w = watch(&forged, "3");
    assert_eq!(w.code, 2, "{w:?}");
    assert!(w.stderr.contains("sent no receipt"), "{w:?}");
    let topic = format!("lethe/v1/{FLEET}/{device}/receipts/{forged_id}");
    assert_eq!(
        retained(broker.port(), &topic, Duration::from_secs(2)),
        None
    );
    assert_eq!(
        fleet_status(&url, &devices)[device]["adapter_hash"],
        after.as_str()
    );

    // An authentic command (a new id) that replays sequence number 1: a signed `rejected`
    // receipt.
    let replayed = tmp.path().join("replayed.leth");
    let replayed_id = sign_with(
        &key("op.key"),
        device,
        &concept,
        &image,
        "1",
        &replayed,
        &["--id", "op-replay"],
    );
    lethectl_ok(&["push", "--broker", &url, "--fleet", FLEET, arg(&replayed)]);
    let w = watch(&replayed, "120");
    assert_eq!(w.code, 1, "{w:?}\nagent log:\n{}", agent_log());
    assert!(
        w.stdout.starts_with(&format!("{device}: rejected model ")),
        "{w:?}"
    );
    assert!(
        w.stdout
            .contains(&format!("{} -> {}", &after[..12], &after[..12])),
        "{w:?}"
    );

    // The audit trail: both receipts into a ledger, verified, cleared on the broker.
    audit_trail(
        tmp.path(),
        broker,
        device,
        &[
            (&cmd, &id, "committed"),
            (&replayed, &replayed_id, "rejected"),
        ],
    );

    // A clean stop, and log lines an operator can read: RFC 3339 UTC time, level, component.
    let exit = agent.stop();
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        agent_log()
    );
    let text = agent_log();
    for line in text.lines() {
        let (ts, rest) = line.split_at(line.find(' ').unwrap_or(0));
        assert!(is_rfc3339_utc_ms(ts), "not a timestamp: {line:?}");
        assert!(
            ["INFO", "WARN", "ERROR"]
                .iter()
                .any(|l| rest.starts_with(&format!(" {l} lethe-agent: "))),
            "{line:?}"
        );
    }
    assert!(
        text.contains(&format!(" INFO lethe-agent: accepted {id} ")),
        "{text}"
    );
    assert!(
        text.contains(" WARN lethe-agent: command channel: 1 unauthenticated message(s)"),
        "{text}"
    );
}

/// The retained statuses of the listed devices, as `lethectl status --json` collects them
/// (exact topics: RabbitMQ gives retained messages to exact subscriptions only).
fn fleet_status(url: &str, devices: &Path) -> serde_json::Value {
    let out = lethectl_ok(&[
        "status",
        "--broker",
        url,
        "--fleet",
        FLEET,
        "--devices",
        arg(devices),
        "--json",
        "--wait",
        "1",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `lethectl audit` of each command (file, id or "" for an envelope name, expected verdict):
/// its receipt goes into the ledger and off the broker; a second audit finds nothing new;
/// `audit verify` passes (the CSV carries the verdicts and model hashes), and a tampered
/// line is caught by its number.
fn audit_trail(
    dir: &Path,
    broker: &dyn TestBroker,
    device: &str,
    commands: &[(&Path, &str, &str)],
) {
    let ledger = dir.join("erasures.ledger");
    let keys = dir.join("keys");
    let audit = |cmd: &Path| {
        lethectl(&[
            "audit",
            "--broker",
            &broker.url(),
            "--fleet",
            FLEET,
            "--ledger",
            arg(&ledger),
            "--device-pubs",
            arg(&keys),
            "--command",
            arg(cmd),
            "--json",
        ])
    };
    for (i, (cmd, id, verdict)) in commands.iter().enumerate() {
        let a = audit(cmd);
        assert_eq!(a.code, 0, "{}: {a:?}", broker.name());
        let v: serde_json::Value = serde_json::from_str(&a.stdout).unwrap();
        assert_eq!(v["collected"]["added"], 1, "{v}");
        assert_eq!(v["collected"]["cleared"], 1, "{v}");
        assert_eq!(v["entries"], i + 1, "{v}");
        let line = &v["commands"][0]["devices"][0];
        assert_eq!(line["device"], device, "{v}");
        assert_eq!(line["verdict"], *verdict, "{v}");
        if !id.is_empty() {
            let topic = format!("lethe/v1/{FLEET}/{device}/receipts/{id}");
            assert_eq!(
                retained(broker.port(), &topic, Duration::from_secs(3)),
                None,
                "the collected receipt is still retained on {}",
                broker.name()
            );
        }
        let again = audit(cmd);
        let v: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
        assert_eq!(v["collected"]["added"], 0, "{v}");
    }
    let verify = |file: &Path, extra: &[&str]| {
        let mut args = vec!["audit", "verify", arg(file), "--device-pubs", arg(&keys)];
        args.extend(extra);
        lethectl(&args)
    };
    let ok = verify(&ledger, &["--csv"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stderr
            .contains(&format!("{} entries verify", commands.len())),
        "{ok:?}"
    );
    // One row per command (ordered by command id, not by ledger line).
    let rows: Vec<Vec<&str>> = ok
        .stdout
        .lines()
        .skip(1)
        .map(|r| r.split(',').collect())
        .collect();
    assert_eq!(rows.len(), commands.len(), "{}", ok.stdout);
    for (_, _, verdict) in commands {
        let f = rows
            .iter()
            .find(|f| f[2] == *verdict)
            .unwrap_or_else(|| panic!("no {verdict} row: {}", ok.stdout));
        let row = f.join(",");
        assert_eq!(f[1], device, "{row}");
        let hashes = f
            .iter()
            .filter(|x| x.len() == 64 && x.chars().all(|c| c.is_ascii_hexdigit()))
            .count();
        assert_eq!(hashes, 2, "model hashes before and after: {row}");
    }
    // One changed verdict in the plain copy of line 1: caught, by its line.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let tampered = dir.join("tampered.ledger");
    std::fs::write(
        &tampered,
        text.replacen(
            "\"verdict\":\"committed\"",
            "\"verdict\":\"rolled_back\"",
            1,
        ),
    )
    .unwrap();
    let bad = verify(&tampered, &[]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("line 1: the plain copy"), "{bad:?}");
    assert!(
        bad.stdout.contains("line 2: does not follow line 1"),
        "{bad:?}"
    );
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_rfc3339_utc_ms(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}
