//! MQTT: topic names, client options, and the one task that polls rumqttc's event loop.
//!
//! What rumqttc does not do and this module does: re-subscribe after every ConnAck (a broker
//! that lost the session forgets subscriptions), raise the 10 KiB packet cap to the
//! configured one (a command carries an image), reconnect with capped exponential backoff.
//! Acknowledgement is manual: a command's PUBACK is sent by the agent only after the
//! command is durably journaled, so a crash before that makes the broker redeliver it.
//! Invariant: the poll task never awaits anything but the event loop (subscriptions use
//! `try_` calls, commands go to the intake through a bounded channel with `try_send`).

use crate::config::{parse_broker, Config};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS, Transport,
};
use std::path::Path;
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

/// Polls the event loop until shutdown. Never blocks on anything else.
pub async fn poll_loop(
    mut el: EventLoop,
    client: AsyncClient,
    topics: Topics,
    tx: mpsc::Sender<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut need_subscribe = false;
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
                    need_subscribe = true;
                    let _ = tx.try_send(Inbound::Connected { session_present: ack.session_present });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if topics.is_command(&p.topic) {
                        // Not acknowledged here: the agent acks after journaling. If the intake
                        // is full the broker redelivers it after the next reconnect.
                        let _ = tx.try_send(Inbound::Command(p));
                    } else {
                        let _ = client.try_ack(&p);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.try_send(Inbound::Disconnected(e.to_string()));
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
