//! An independent witness of a fleet on the broker: an MQTT client, not part of any agent,
//! that counts what the broker delivered on every device's command topic (so a test can
//! prove that no device received a command twice), the `duplicate` events the agents
//! announce, and each device's last status state.

use anyhow::{Context, Result};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the observer saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Messages delivered on `lethe/v1/{fleet}/{device}/cmd`, per device.
    pub commands: BTreeMap<String, usize>,
    /// `duplicate` events, per device.
    pub duplicates: BTreeMap<String, usize>,
    /// The last status `state` of each device.
    pub states: BTreeMap<String, String>,
}

impl Seen {
    /// Devices whose status is `online`.
    pub fn online(&self) -> usize {
        self.states.values().filter(|s| *s == "online").count()
    }

    /// Devices that got more than one command message.
    pub fn delivered_twice(&self) -> Vec<(String, usize)> {
        self.commands
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(d, n)| (d.clone(), *n))
            .collect()
    }
}

/// The observer: a connection of its own, collecting on a thread until dropped.
pub struct Observer {
    client: Client,
    status_filter: String,
    seen: Arc<Mutex<Seen>>,
}

impl Observer {
    /// Connects to the plain broker at `host:port` and follows `fleet`; returns once the
    /// broker acknowledged the subscriptions.
    pub fn start(host: &str, port: u16, fleet: &str) -> Result<Observer> {
        let mut o = MqttOptions::new(format!("fleet-observer-{}", std::process::id()), host, port);
        o.set_max_packet_size(4 << 20, 4 << 20)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = Client::new(o, 1024);
        let filters = [
            format!("lethe/v1/{fleet}/+/cmd"),
            format!("lethe/v1/{fleet}/+/status"),
            format!("lethe/v1/{fleet}/+/events/+"),
        ];
        for f in &filters {
            client.subscribe(f.as_str(), QoS::AtLeastOnce)?;
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut subacks = 0;
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks == 3 {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => record(&s2, &p.topic, &p.payload),
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("the observer's subscriptions were not acknowledged in 20 s")?;
        Ok(Observer {
            client,
            status_filter: filters[1].clone(),
            seen,
        })
    }

    /// A copy of what was seen so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `pred` holds on what was seen; `false` after `timeout`. Every few
    /// seconds the status subscription is renewed, which makes the broker send every
    /// retained status again: a burst of a thousand agents announcing themselves can
    /// overflow a broker's per-client queue (mosquitto: `max_queued_messages`, 1000), and
    /// the retained copies fill what was dropped.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&Seen) -> bool) -> bool {
        let t0 = Instant::now();
        let mut renewed = Instant::now();
        while t0.elapsed() < timeout {
            if pred(&self.seen.lock().unwrap()) {
                return true;
            }
            if renewed.elapsed() > Duration::from_secs(3) {
                let _ = self
                    .client
                    .try_subscribe(self.status_filter.as_str(), QoS::AtLeastOnce);
                renewed = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        pred(&self.seen.lock().unwrap())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

fn record(seen: &Mutex<Seen>, topic: &str, payload: &[u8]) {
    let parts: Vec<&str> = topic.split('/').collect();
    let (Some(dev), Some(kind)) = (parts.get(3), parts.get(4)) else {
        return;
    };
    let mut s = seen.lock().unwrap();
    match *kind {
        "cmd" => *s.commands.entry(dev.to_string()).or_default() += 1,
        "status" => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                let state = v["state"].as_str().unwrap_or("?").to_string();
                s.states.insert(dev.to_string(), state);
            }
        }
        "events" => {
            let dup = serde_json::from_slice::<serde_json::Value>(payload)
                .is_ok_and(|v| v["state"] == "duplicate");
            if dup {
                *s.duplicates.entry(dev.to_string()).or_default() += 1;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_duplicates_and_states_are_counted_per_device() {
        let s = Mutex::new(Seen::default());
        record(&s, "lethe/v1/f/sim-0001/cmd", b"LETH...");
        record(&s, "lethe/v1/f/sim-0001/cmd", b"LETH...");
        record(&s, "lethe/v1/f/sim-0002/cmd", b"LETH...");
        record(&s, "lethe/v1/f/sim-0002/status", br#"{"state":"online"}"#);
        record(&s, "lethe/v1/f/sim-0001/status", br#"{"state":"offline"}"#);
        record(
            &s,
            "lethe/v1/f/sim-0002/events/c1",
            br#"{"state":"duplicate"}"#,
        );
        record(
            &s,
            "lethe/v1/f/sim-0002/events/c1",
            br#"{"state":"training"}"#,
        );
        let s = s.into_inner().unwrap();
        assert_eq!(s.delivered_twice(), vec![("sim-0001".to_string(), 2)]);
        assert_eq!(s.online(), 1);
        assert_eq!(s.duplicates.get("sim-0002"), Some(&1));
    }
}
