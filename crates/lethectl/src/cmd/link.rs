//! The operator's long-lived MQTT connection for fleet-wide work (`rollout`, `audit`): it
//! subscribes to many exact topics (sent again after every reconnection, in batches),
//! hands every message to the caller, and reports each publish's PUBACK under a tag the
//! caller chose (a device, a topic), so "the broker has it" is known per publish.
//!
//! Exact topics rather than wildcards: RabbitMQ's MQTT plugin (3.x) delivers retained
//! messages only to subscriptions of the exact topic, and a wildcard level does not match an
//! identifier with a dot there (docs/fleet.md).
//!
//! Invariant: the poll task never waits on anything but the event loop; it maps packet ids
//! to tags (a retransmission keeps its id) and forgets them at a reconnection, whose clean
//! session drops what was not acknowledged: those tags stay unacknowledged.

use super::fleet::{client_for, Conn};
use anyhow::{bail, Result};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Topic filters per SUBSCRIBE packet.
const FILTERS_PER_SUBSCRIBE: usize = 100;

/// What the connection reports.
#[derive(Debug)]
pub enum Inbound {
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The broker acknowledged the publish tagged so.
    Acked(String),
    /// (Re)connected and subscribed; `dropped` publishes were lost with the old session.
    Up {
        dropped: Vec<String>,
    },
    /// The connection failed; publishes wait until [`Inbound::Up`].
    Down(String),
}

/// An open connection.
pub struct Link {
    client: AsyncClient,
    /// Tags of publishes handed to the client, not yet given a packet id.
    queued: Arc<Mutex<VecDeque<String>>>,
    pub rx: mpsc::UnboundedReceiver<Inbound>,
    task: JoinHandle<()>,
}

impl Link {
    /// Connects as `lethectl-<name>-<pid>`, subscribes to `filters` (QoS 1) and returns once
    /// the broker acknowledged them all, or fails after `timeout`.
    pub async fn connect(
        conn: &Conn,
        name: &str,
        filters: Vec<String>,
        timeout: Duration,
    ) -> Result<Link> {
        let (client, mut el) = client_for(conn, name)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (c2, q2) = (client.clone(), queued.clone());
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut inflight: HashMap<u16, String> = HashMap::new();
            let batches: Vec<Vec<String>> = filters
                .chunks(FILTERS_PER_SUBSCRIBE)
                .map(<[String]>::to_vec)
                .collect();
            let mut to_send: VecDeque<Vec<String>> = VecDeque::new();
            let mut subacks_wanted = 0usize;
            loop {
                // Never await the client here: its queue is drained by this very loop.
                while let Some(b) = to_send.front() {
                    let subs = b
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if c2.try_subscribe_many(subs).is_err() {
                        break;
                    }
                    to_send.pop_front();
                }
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let mut dropped: Vec<String> = inflight.drain().map(|(_, t)| t).collect();
                        dropped.extend(q2.lock().unwrap().drain(..));
                        to_send = batches.iter().cloned().collect();
                        subacks_wanted = batches.len();
                        if subacks_wanted == 0 {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        let _ = tx.send(Inbound::Up { dropped });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks_wanted = subacks_wanted.saturating_sub(1);
                        if subacks_wanted == 0 {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Inbound::Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Entry::Vacant(e) = inflight.entry(pkid) {
                            if let Some(tag) = q2.lock().unwrap().pop_front() {
                                e.insert(tag);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        if let Some(tag) = inflight.remove(&a.pkid) {
                            let _ = tx.send(Inbound::Acked(tag));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Inbound::Down(e.to_string()));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(())) => {}
            _ => {
                task.abort();
                bail!(
                    "broker {conn}: not connected and subscribed within {} s",
                    timeout.as_secs()
                );
            }
        }
        Ok(Link {
            client,
            queued,
            rx,
            task,
        })
    }

    /// Publishes `payload` on `topic` (QoS 1); [`Inbound::Acked`]`(tag)` follows the PUBACK.
    pub async fn publish(
        &self,
        tag: &str,
        topic: &str,
        payload: Bytes,
        retain: bool,
    ) -> Result<()> {
        self.queued.lock().unwrap().push_back(tag.to_string());
        self.client
            .publish_bytes(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        Ok(())
    }

    /// Subscribes to `filters` again (the broker re-sends their retained messages).
    pub async fn resubscribe(&self, filters: &[String]) -> Result<()> {
        for b in filters.chunks(FILTERS_PER_SUBSCRIBE) {
            let subs = b
                .iter()
                .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
            self.client.subscribe_many(subs).await?;
        }
        Ok(())
    }

    /// Disconnects politely (what was acknowledged is with the broker).
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.task.abort();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}
