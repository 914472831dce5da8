//! MQTT: topic names, client options, and the one task that polls rumqttc's event loop.
//!
//! What rumqttc does not do and this module does: re-subscribe after every ConnAck (a broker
//! that lost the session forgets subscriptions), raise the 10 KiB packet cap to the
//! configured one (a command carries an image), reconnect with capped exponential backoff.
//! Acknowledgement is manual: a command's PUBACK is sent by the agent only after the
//! command is durably journaled, so a crash before that makes the broker redeliver it.
//!
//! The poll task is also the channel's first guard. A delivery on a command topic is
//! authenticated (framing and signatures, `lethe_proto::authenticate_command`) right here;
//! one that fails is acknowledged, counted ([`ChannelStats`]) and dropped, so unauthenticated
//! bytes never reach the intake, the disk or the broker. A packet over the cap drops the
//! connection (rumqttc refuses it from its header, before reading it); if the next
//! connection ends the same way, the broker is redelivering it from the persistent session,
//! so the agent connects once with a clean session (which discards it, with whatever else
//! was queued) and then persistent again ([`PoisonWatch`]).
//!
//! Invariant: the poll task never awaits anything but the event loop (subscriptions use
//! `try_` calls, commands go to the intake through a bounded channel with `try_send`); the
//! only work it does besides is the signature check, milliseconds for the largest envelope.

use crate::channel::ChannelStats;
use crate::config::{parse_broker, Config};
use crate::fsutil::now_unix;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS,
    StateError, Transport,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    pub fleet: String,
    pub device: String,
    pub cmd: String,
    pub group_cmds: Vec<String>,
    pub status: String,
}

impl Topics {
    pub fn new(fleet: &str, device: &str, groups: &[String]) -> Topics {
        Topics {
            fleet: fleet.into(),
            device: device.into(),
            cmd: device_cmd(fleet, device),
            group_cmds: groups.iter().map(|g| group_cmd(fleet, g)).collect(),
            status: status(fleet, device),
        }
    }

    /// Every topic the agent subscribes to.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut v = vec![self.cmd.clone()];
        v.extend(self.group_cmds.iter().cloned());
        v
    }

    pub fn is_command(&self, topic: &str) -> bool {
        topic_is(topic, &self.cmd) || self.group_cmds.iter().any(|t| topic_is(topic, t))
    }

    pub fn events(&self, command: &str) -> String {
        events(&self.fleet, &self.device, command)
    }

    pub fn receipt(&self, command: &str) -> String {
        receipt(&self.fleet, &self.device, command)
    }
}

/// Whether a message delivered on `delivered` was published on `topic`. RabbitMQ's MQTT
/// plugin (3.x) turns every `.` of a topic into `/` on delivery (identifiers may hold
/// dots), so that form counts too; no topic of the scheme has a level more than the
/// dotted one, so no other topic can be mistaken for it.
pub fn topic_is(delivered: &str, topic: &str) -> bool {
    delivered == topic
        || (topic.contains('.')
            && delivered.len() == topic.len()
            && delivered
                .bytes()
                .zip(topic.bytes())
                .all(|(d, t)| d == t || (t == b'.' && d == b'/')))
}

/// `lethe/v1/{fleet}/{device}/cmd`
pub fn device_cmd(fleet: &str, device: &str) -> String {
    format!("lethe/v1/{fleet}/{device}/cmd")
}
/// `lethe/v1/{fleet}/groups/{group}/cmd`
pub fn group_cmd(fleet: &str, group: &str) -> String {
    format!("lethe/v1/{fleet}/groups/{group}/cmd")
}
/// `lethe/v1/{fleet}/{device}/status` (retained)
pub fn status(fleet: &str, device: &str) -> String {
    format!("lethe/v1/{fleet}/{device}/status")
}
/// `lethe/v1/{fleet}/{device}/events/{command}`
pub fn events(fleet: &str, device: &str, command: &str) -> String {
    format!("lethe/v1/{fleet}/{device}/events/{command}")
}
/// `lethe/v1/{fleet}/{device}/receipts/{command}` (retained)
pub fn receipt(fleet: &str, device: &str, command: &str) -> String {
    format!("lethe/v1/{fleet}/{device}/receipts/{command}")
}

/// Client options for the agent: persistent session, manual acks, packet cap, Last Will.
pub fn options(cfg: &Config, topics: &Topics) -> std::io::Result<MqttOptions> {
    let addr = parse_broker(&cfg.broker).map_err(std::io::Error::other)?;
    let mut o = MqttOptions::new(
        format!("lethe-{}-{}", cfg.fleet, cfg.device_id),
        addr.host,
        addr.port,
    );
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(cfg.keep_alive_s.max(5)))
        .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes)
        .set_inflight(32)
        .set_last_will(LastWill::new(
            &topics.status,
            serde_json::to_vec(&serde_json::json!({
                "state": "offline", "device": cfg.device_id, "fleet": cfg.fleet,
                "reason": "connection lost (last will)"
            }))
            .expect("json"),
            QoS::AtLeastOnce,
            true,
        ));
    if addr.tls {
        let client = match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        o.set_transport(tls_transport(cfg.ca_cert.as_deref(), client)?);
    }
    Ok(o)
}

/// The transport for an `mqtts://` broker (agent and lethectl alike): verified against
/// `ca_cert` (PEM) or, without one, the platform's roots; with a client certificate and key
/// (PEM) for mutual TLS. Errors name the file that could not be read.
pub fn tls_transport(
    ca_cert: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> std::io::Result<Transport> {
    // rustls on ring; install once per process (a second install is a harmless error).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let ca = ca_cert.map(read).transpose()?.unwrap_or_default();
    let client_auth = match client {
        Some((c, k)) => Some((read(c)?, read(k)?)),
        None => None,
    };
    Ok(if ca.is_empty() && client_auth.is_none() {
        Transport::tls_with_default_config()
    } else {
        Transport::tls(ca, client_auth, None)
    })
}

/// What the poll task tells the agent.
#[derive(Debug)]
pub enum Inbound {
    /// Connected (again): subscriptions were re-sent; publish the status again.
    Connected {
        session_present: bool,
    },
    /// A command to journal and then acknowledge.
    Command(Publish),
    Disconnected(String),
}

/// The size of the packet behind `e`, if `e` is rumqttc refusing a packet over the cap.
pub fn oversized(e: &ConnectionError) -> Option<usize> {
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// Tells a redelivered oversized message (a poisoned persistent session) from a single one:
/// two connections in a row ended by an oversized packet, with no publish read whole in
/// between, mean the broker is replaying it. Pure; the poll loop acts on its answers.
#[derive(Debug, Default)]
pub struct PoisonWatch {
    streak: u32,
    dropping: bool,
}

impl PoisonWatch {
    /// A publish was read whole: whatever came before is not blocking the session.
    pub fn publish_read(&mut self) {
        self.streak = 0;
    }

    /// The connection ended by an oversized packet: whether the next connection must be a
    /// clean one (to drop the session holding it).
    pub fn oversized(&mut self) -> bool {
        self.streak += 1;
        if self.streak >= 2 {
            self.dropping = true;
        }
        self.dropping
    }

    /// Connected: whether this was the clean connection that dropped the session (then the
    /// caller leaves it at once and reconnects with a persistent session).
    pub fn connected(&mut self) -> bool {
        let dropped = self.dropping;
        if dropped {
            self.dropping = false;
            self.streak = 0;
        }
        dropped
    }
}

/// Polls the event loop until shutdown. Never blocks on anything else. Deliveries on the
/// command topics go through `gate` (the signature check; `Err` is a rejection code):
/// authentic ones go to the intake, the rest are acknowledged and counted in `stats`.
pub async fn poll_loop(
    mut el: EventLoop,
    client: AsyncClient,
    topics: Topics,
    gate: impl Fn(&[u8]) -> Result<(), &'static str>,
    stats: Arc<ChannelStats>,
    tx: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut need_subscribe = false;
    let mut poison = PoisonWatch::default();
    loop {
        if need_subscribe {
            let subs = topics
                .subscriptions()
                .into_iter()
                .map(|t| rumqttc::SubscribeFilter::new(t, QoS::AtLeastOnce));
            need_subscribe = client.try_subscribe_many(subs).is_err();
        }
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(200);
                    if poison.connected() {
                        // The broker dropped the old session and the message in it. Leave
                        // this clean session (a DISCONNECT: no Last Will) and come back with
                        // a persistent one, then subscribe as after any connection.
                        stats.session_dropped();
                        el.mqtt_options.set_clean_session(false);
                        let _ = client.try_disconnect();
                        continue;
                    }
                    need_subscribe = true;
                    let _ = tx.try_send(Inbound::Connected { session_present: ack.session_present });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    poison.publish_read();
                    if !topics.is_command(&p.topic) {
                        let _ = client.try_ack(&p);
                    } else if let Err(code) = gate(&p.payload) {
                        // Speaks for nobody the device trusts: counted, acknowledged (the
                        // broker must not redeliver it), dropped.
                        stats.refused(code, p.payload.len(), now_unix());
                        let _ = client.try_ack(&p);
                    } else {
                        // Not acknowledged here: the agent acks after journaling. If the intake
                        // is full the broker redelivers it after the next reconnect.
                        let _ = tx.try_send(Inbound::Command(p));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(n) = oversized(&e) {
                        stats.oversized(n);
                        if poison.oversized() {
                            el.mqtt_options.set_clean_session(true);
                        }
                    } else {
                        let _ = tx.try_send(Inbound::Disconnected(e.to_string()));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => { if *shutdown.borrow() { break; } }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    // Drain a little so the final offline status and disconnect go out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivered_oversized_message_drops_the_session_once_and_a_single_one_does_not() {
        let mut w = PoisonWatch::default();
        // One oversized QoS 0 message: reconnect as usual, and the next connection is fine.
        assert!(!w.oversized());
        assert!(!w.connected());
        w.publish_read();
        assert!(!w.oversized());
        assert!(!w.connected());
        // The same one again right after connecting: a poisoned session.
        assert!(w.oversized());
        assert!(w.connected(), "this connection was the clean one");
        assert!(!w.connected(), "then persistent again");
        assert!(!w.oversized(), "a fresh start after the drop");
    }

    #[test]
    fn only_the_packet_cap_error_counts_as_oversized() {
        let big = ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(5_000_026),
        ));
        assert_eq!(oversized(&big), Some(5_000_026));
        assert!(big.to_string().contains("5000026"), "{big}");
        assert_eq!(oversized(&ConnectionError::NetworkTimeout), None);
        assert_eq!(
            oversized(&ConnectionError::MqttState(StateError::ConnectionAborted)),
            None
        );
    }

    #[test]
    fn topics_follow_the_documented_scheme() {
        let t = Topics::new("lab", "cam-01", &["lobby".into()]);
        assert_eq!(t.cmd, "lethe/v1/lab/cam-01/cmd");
        assert_eq!(t.group_cmds, vec!["lethe/v1/lab/groups/lobby/cmd"]);
        assert_eq!(t.events("c1"), "lethe/v1/lab/cam-01/events/c1");
        assert_eq!(t.receipt("c1"), "lethe/v1/lab/cam-01/receipts/c1");
        assert!(t.is_command("lethe/v1/lab/groups/lobby/cmd"));
        assert!(!t.is_command("lethe/v1/lab/groups/other/cmd"));
    }

    #[test]
    fn a_dotted_device_recognises_its_commands_in_the_form_rabbitmq_delivers_them() {
        let t = Topics::new("lab", "cam.01", &["hall.b".into()]);
        assert!(t.is_command("lethe/v1/lab/cam.01/cmd"));
        assert!(t.is_command("lethe/v1/lab/cam/01/cmd"));
        assert!(t.is_command("lethe/v1/lab/groups/hall/b/cmd"));
        assert!(!t.is_command("lethe/v1/lab/cam/02/cmd"));
        assert!(!t.is_command("lethe/v1/lab/cam-01/cmd"));
        assert!(!Topics::new("lab", "cam-01", &[]).is_command("lethe/v1/lab/cam/01/cmd"));
    }
}
