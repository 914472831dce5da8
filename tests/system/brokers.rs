//! What the agent and the operator rely on from an MQTT broker, checked on each broker Lethe
//! runs against (mosquitto, RabbitMQ's MQTT plugin), with a plain MQTT client:
//! - a retained message reaches a later subscriber of its exact topic, and an empty retained
//!   message clears it (statuses, receipts, `lethectl audit`);
//! - a persistent session (clean session off, QoS 1) keeps what was published while its
//!   client was away and delivers it on return (a device offline at delivery);
//! - a QoS 1 message the client did not acknowledge is delivered again after a reconnection
//!   (the agent acknowledges a command only once it is journaled);
//! - a retained last will marks a client that vanished (the agent's offline status);
//! - a dotted topic level is delivered to the exact subscriber (RabbitMQ in another form,
//!   which `lethe_agent::mqtt::topic_is` recognises).

use lethe_agent::mqtt::topic_is;
use lethe_testkit::{Broker, RabbitMq, TestBroker};
use rumqttc::{Client, Connection, Event, LastWill, MqttOptions, Packet, Publish, QoS};
use std::time::{Duration, Instant};

fn connect(b: &dyn TestBroker, id: &str, clean: bool, manual_acks: bool) -> (Client, Connection) {
    let mut o = MqttOptions::new(id, "127.0.0.1", b.port());
    o.set_clean_session(clean)
        .set_manual_acks(manual_acks)
        .set_keep_alive(Duration::from_secs(5));
    Client::new(o, 16)
}

/// The next publish within `timeout` (acks and other packets skipped).
fn next_publish(conn: &mut Connection, timeout: Duration) -> Option<Publish> {
    let t0 = Instant::now();
    while let Some(left) = timeout.checked_sub(t0.elapsed()) {
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection: {e}"),
            Err(_) => return None,
        }
    }
    None
}

/// Polls until the broker acknowledged what was sent (a SUBACK or PUBACK).
fn until_acked(conn: &mut Connection) {
    let t0 = Instant::now();
    loop {
        match conn.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_) | Packet::PubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("no acknowledgement: {other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
}

fn publish(b: &dyn TestBroker, topic: &str, payload: &[u8], retain: bool) {
    let (c, mut conn) = connect(b, &format!("pub-{}", rand_id()), true, false);
    c.publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .unwrap();
    until_acked(&mut conn);
    c.disconnect().unwrap();
    let _ = conn.recv_timeout(Duration::from_millis(200));
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn semantics(b: &dyn TestBroker) {
    let name = b.name();
    let wait = Duration::from_secs(5);

    // Retained on an exact topic, then cleared.
    let t = "lethe/v1/lab/cam-01/receipts/op-1";
    publish(b, t, b"receipt", true);
    let (c, mut conn) = connect(b, "late-reader", true, false);
    c.subscribe(t, QoS::AtLeastOnce).unwrap();
    let p = next_publish(&mut conn, wait).unwrap_or_else(|| panic!("{name}: no retained"));
    assert_eq!((p.topic.as_str(), &p.payload[..]), (t, &b"receipt"[..]));
    drop((c, conn));
    publish(b, t, b"", true);
    let (c, mut conn) = connect(b, "after-clear", true, false);
    c.subscribe(t, QoS::AtLeastOnce).unwrap();
    let p = next_publish(&mut conn, Duration::from_secs(2));
    assert!(
        p.is_none_or(|p| p.payload.is_empty()),
        "{name}: not cleared"
    );
    drop((c, conn));

    // A persistent session keeps what came while its client was away.
    let cmd = "lethe/v1/lab/cam-02/cmd";
    let (c, mut conn) = connect(b, "lethe-lab-cam-02", false, false);
    c.subscribe(cmd, QoS::AtLeastOnce).unwrap();
    until_acked(&mut conn);
    c.disconnect().unwrap();
    let _ = conn.recv_timeout(Duration::from_millis(300));
    drop((c, conn));
    publish(b, cmd, b"while away", false);
    let (_c, mut conn) = connect(b, "lethe-lab-cam-02", false, false);
    let p = next_publish(&mut conn, wait).unwrap_or_else(|| panic!("{name}: session lost it"));
    assert_eq!(&p.payload[..], b"while away");
    drop(conn);

    // An unacknowledged QoS 1 message comes again after a reconnection.
    let cmd3 = "lethe/v1/lab/cam-03/cmd";
    let (c, mut conn) = connect(b, "lethe-lab-cam-03", false, true);
    c.subscribe(cmd3, QoS::AtLeastOnce).unwrap();
    until_acked(&mut conn);
    publish(b, cmd3, b"journal me first", false);
    let p = next_publish(&mut conn, wait).unwrap_or_else(|| panic!("{name}: not delivered"));
    assert_eq!(&p.payload[..], b"journal me first");
    drop((c, conn)); // gone without acknowledging (a crash before the journal)
    std::thread::sleep(Duration::from_millis(500));
    let (c, mut conn) = connect(b, "lethe-lab-cam-03", false, true);
    let p = next_publish(&mut conn, wait).unwrap_or_else(|| panic!("{name}: not redelivered"));
    assert_eq!(&p.payload[..], b"journal me first");
    c.ack(&p).unwrap();
    drop((c, conn));

    // A retained last will.
    let status = "lethe/v1/lab/cam-04/status";
    let mut o = MqttOptions::new("lethe-lab-cam-04", "127.0.0.1", b.port());
    o.set_keep_alive(Duration::from_secs(5))
        .set_last_will(LastWill::new(
            status,
            &b"{\"state\":\"offline\"}"[..],
            QoS::AtLeastOnce,
            true,
        ));
    let (c, mut conn) = Client::new(o, 16);
    c.subscribe("x/y", QoS::AtLeastOnce).unwrap();
    until_acked(&mut conn);
    drop((c, conn)); // the connection vanishes: no DISCONNECT
    let t0 = Instant::now();
    let will = loop {
        let (c, mut conn) = connect(b, "will-reader", true, false);
        c.subscribe(status, QoS::AtLeastOnce).unwrap();
        if let Some(p) = next_publish(&mut conn, Duration::from_secs(1)) {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{name}: no last will"
        );
    };
    assert_eq!(&will.payload[..], b"{\"state\":\"offline\"}");

    // A dotted level reaches its exact subscriber, in a form topic_is recognises.
    let dotted = "lethe/v1/lab/cam.05/cmd";
    let (c, mut conn) = connect(b, "lethe-lab-cam.05", true, false);
    c.subscribe(dotted, QoS::AtLeastOnce).unwrap();
    until_acked(&mut conn);
    publish(b, dotted, b"dotted", false);
    let p = next_publish(&mut conn, wait).unwrap_or_else(|| panic!("{name}: dotted lost"));
    assert!(
        topic_is(&p.topic, dotted),
        "{name} delivered it on {}",
        p.topic
    );
    eprintln!("{name}: delivered {dotted} as {}", p.topic);
}

#[test]
fn mosquitto_keeps_retained_messages_sessions_redeliveries_and_wills() {
    let tmp = tempfile::tempdir().unwrap();
    semantics(&Broker::start(tmp.path()));
}

#[test]
fn rabbitmq_keeps_retained_messages_sessions_redeliveries_and_wills() {
    let tmp = tempfile::tempdir().unwrap();
    semantics(&RabbitMq::start(tmp.path()));
}
