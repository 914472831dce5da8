//! The command channel over TLS with client certificates (mutual TLS), as a fleet broker
//! would run it: the agent connects to mosquitto's TLS listener with the fleet CA and its
//! own certificate; the operator (this test) uses the broker's plain loopback listener.

use crate::common::*;
use lethe_proto::Verdict;
use std::time::{Duration, Instant};

/// Points the fixture's agent at the TLS listener with the given CA and client files.
fn use_tls(f: &Fixture, port: u16, ca: &std::path::Path, pki: &TlsFiles) {
    let text = std::fs::read_to_string(&f.config).unwrap();
    let plain = text
        .lines()
        .find(|l| l.starts_with("broker = "))
        .unwrap()
        .to_string();
    let text = text.replace(
        &plain,
        &format!(
            "broker = \"mqtts://127.0.0.1:{port}\"\nca_cert = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        ),
    );
    std::fs::write(&f.config, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_works_over_mutual_tls_and_refuses_a_broker_it_cannot_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = make_pki(&tmp.path().join("pki"), "fleet");
    let broker = Broker::start_tls(tmp.path(), &pki);
    let tls_port = broker.tls.as_ref().unwrap().0;

    // The right CA: online, and a command round-trips (a cheap one: expired, rejected).
    let f = fixture(&broker, FAST);
    use_tls(&f, tls_port, &pki.ca, &pki);
    let mut agent = Agent::start(&f);
    let op = Operator::connect(broker.port).await;
    op.wait_online(Duration::from_secs(120)).await;
    let mut old = spec("tls-1", 1, 2);
    old.issued_at -= 7200;
    old.expires_at = old.issued_at + 60;
    op.push(sign(&old, &f.op)).await;
    let (_, r) = op
        .any_receipt(&f.device_pub, Duration::from_secs(60), |r| {
            r.verdict == Verdict::Rejected
        })
        .await;
    assert!(
        r.reason.as_deref().unwrap_or("").starts_with("expired"),
        "{r:?}"
    );
    agent.stop();

    // Another CA (a man in the middle's broker certificate): the agent never connects,
    // says why in its log, and keeps retrying.
    let other = make_pki(&tmp.path().join("other"), "other");
    let f2 = fixture(&broker, FAST);
    use_tls(&f2, tls_port, &other.ca, &pki);
    let op2 = Operator::connect(broker.port).await;
    let mut agent2 = Agent::start(&f2);
    let t0 = Instant::now();
    while !agent_log(&f2).contains("reconnecting") {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no connection error logged\n{}",
            agent_log(&f2)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = agent_log(&f2);
    assert!(
        log.to_lowercase().contains("certificate") || log.contains("UnknownIssuer"),
        "{log}"
    );
    assert!(!log.contains("connected to"), "{log}");
    // The device never published its status through the broker (what is retained is the
    // first agent's "offline").
    let seen = op2.status.lock().unwrap().clone();
    assert!(
        seen.as_ref().is_none_or(|s| s["state"] != "online"),
        "{seen:?}"
    );
    eprintln!(
        "TLS refused: {}",
        log.lines()
            .find(|l| l.contains("reconnecting"))
            .unwrap_or("")
    );
    agent2.stop();
}
