//! The operator's fleet commands against a real mosquitto (lethe-testkit), over TLS with
//! client certificates as a fleet broker runs it: `push` delivers the exact signed bytes to
//! the device topic; a missing client certificate, a broker from another CA, and TLS files
//! with a plain URL are one-line errors with exit code 2; `status` works on the plain
//! listener.

use lethe_proto::{sign_command, ActionSpec, CommandSpec, ForgetSpec, SigningKey, TargetSpec};
use lethe_system_tests::{lethectl, Run};
use lethe_testkit::{make_pki, Broker};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::time::{Duration, Instant};

fn signed_command(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let op = SigningKey::generate("op").unwrap();
    let img = lethe_world::render_id(2, 500_002).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let spec = CommandSpec {
        id: "tls-push-1".into(),
        issuer: "op".into(),
        seq: 1,
        issued_at: now,
        expires_at: now + 600,
        target: TargetSpec::Device("cam-07".into()),
        model_id: "lethe-tiny-vlm".into(),
        model_version: None,
        action: ActionSpec::Forget(ForgetSpec {
            concept: lethe_world::identity(2).unwrap().name(),
            image: png.into_inner(),
            verify_images: vec![],
            method: None,
            steps: None,
        }),
    };
    let bytes = sign_command(&spec, &[&op]).unwrap();
    let path = dir.join("cmd.leth");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn push_over_mutual_tls_delivers_the_signed_bytes_and_tls_mistakes_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = make_pki(&tmp.path().join("pki"), "fleet");
    let broker = Broker::start_tls(tmp.path(), &pki);
    let tls = format!("mqtts://127.0.0.1:{}", broker.tls.as_ref().unwrap().0);
    let (cmd, bytes) = signed_command(tmp.path());

    // A device-side subscriber on the plain listener sees what arrives.
    let mut o = MqttOptions::new("device-view", "127.0.0.1", broker.port);
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut conn) = Client::new(o, 16);
    client
        .subscribe("lethe/v1/lab/cam-07/cmd", QoS::AtLeastOnce)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(None);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Some((p.topic.clone(), p.payload.to_vec())));
                }
                Err(_) => break,
                _ => {}
            }
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), None);

    let (ca, cc, ck) = (
        pki.ca.to_str().unwrap(),
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let c = cmd.to_str().unwrap();
    // `lethectl push` of the command to `broker` in fleet "lab" with the given TLS flags.
    let push = |broker: &str, tls_flags: &[&str]| {
        let mut args = vec!["push", "--broker", broker, "--fleet", "lab"];
        args.extend_from_slice(tls_flags);
        args.push(c);
        lethectl(&args)
    };
    let Run {
        code,
        stdout: out,
        stderr: err,
    } = push(
        &tls,
        &["--ca-cert", ca, "--client-cert", cc, "--client-key", ck],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("pushed tls-push-1"), "{out}");
    let t0 = Instant::now();
    let (topic, got) = loop {
        if let Ok(Some(m)) = rx.recv_timeout(Duration::from_secs(10)) {
            break m;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "nothing arrived");
    };
    assert_eq!(topic, "lethe/v1/lab/cam-07/cmd");
    assert_eq!(
        got, bytes,
        "the broker delivered other bytes than were signed"
    );

    // The broker requires a client certificate.
    let Run {
        code,
        stdout: out,
        stderr: err,
    } = push(&tls, &["--ca-cert", ca]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(&tls) && err.lines().count() == 1, "{err}");
    eprintln!("without a client certificate: {}", err.trim());

    // A broker certificate from another CA.
    let other = make_pki(&tmp.path().join("other"), "other");
    let Run {
        code, stderr: err, ..
    } = push(
        &tls,
        &[
            "--ca-cert",
            other.ca.to_str().unwrap(),
            "--client-cert",
            cc,
            "--client-key",
            ck,
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );

    // TLS files with a plain URL, and a client certificate without its key.
    let plain = format!("mqtt://127.0.0.1:{}", broker.port);
    let Run {
        code, stderr: err, ..
    } = push(&plain, &["--ca-cert", ca]);
    assert_eq!(code, 2);
    assert!(err.contains("mqtts://"), "{err}");
    let Run {
        code, stderr: err, ..
    } = push(&tls, &["--client-cert", cc]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--client-key"), "{err}");

    // No devices have reported on this fleet: status says so, over the plain listener.
    let Run {
        code,
        stdout: out,
        stderr: err,
    } = lethectl(&[
        "status", "--broker", &plain, "--fleet", "lab", "--wait", "0.5",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim_end().ends_with("0 device(s)"), "{out}");
    eprintln!("TLS push ok; errors: no client cert / other CA / plain URL all exit 2");
}
