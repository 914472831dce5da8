//! What the agent tells the broker: the retained [`Status`] document, per-command progress
//! events, retained receipts, and the acknowledgements of commands, all through one outbox
//! task; plus the self-check task, whose result goes into the status.
//!
//! Invariants: only the outbox task talks to the MQTT client, so neither the poll loop nor
//! a blocking thread ever waits on the network (they queue an [`Out`] and go on); messages
//! leave in the order they were queued, so a command's events precede its receipt; a receipt
//! is published only from the journal (`CommandState::receipt`), i.e. after it was fsynced.

use super::shared::Shared;
use crate::channel::ChannelReport;
use crate::fsutil::{now_ms, now_unix};
use crate::log::{error, info};
use crate::selfcheck::SelfCheck;
use crate::state::CommandState;
use crate::store::UndoneRecord;
use rumqttc::{AsyncClient, Publish, QoS};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Something for the outbox task.
pub(super) enum Out {
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
    /// The PUBACK of a command, sent once its decision is journaled.
    Ack(Publish),
    Disconnect,
}

/// The retained status document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: &'static str,
    pub device: String,
    pub fleet: String,
    pub groups: Vec<String>,
    pub model_id: String,
    pub model_version: String,
    pub adapter_hash: String,
    pub adapter_previous: Option<String>,
    /// The concepts the current adapter has forgotten, oldest first.
    pub forgotten: Vec<String>,
    /// Concepts forgotten once that a revert brought back and that are not forgotten now
    /// (newest record of each): what an erasure audit must know.
    pub forgets_undone: Vec<UndoneRecord>,
    pub execution_provider: String,
    pub provider_requested: String,
    pub provider_note: Option<String>,
    pub current_command: Option<String>,
    pub queued: usize,
    /// Commands the journal holds: the unsettled ones and the most recent settled ones.
    pub commands_seen: usize,
    /// What the command channel refused before storing anything.
    pub channel: ChannelReport,
    pub selfcheck: Option<SelfCheck>,
    pub notes: Vec<String>,
    pub started_at: u64,
    pub t: u64,
}

impl Shared {
    pub(super) fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let _ = self.out.send(Out::Publish {
            topic,
            payload,
            retain,
        });
    }

    /// Publishes the progress event `state` of command `name`, with `extra` fields.
    pub(super) fn event(&self, name: &str, state: &str, extra: serde_json::Value) {
        let mut v = serde_json::json!({
            "command": name, "device": self.cfg.device_id, "state": state, "t": now_ms()
        });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        self.publish(
            self.topics.events(name),
            serde_json::to_vec(&v).expect("json"),
            false,
        );
    }

    /// Publishes the retained status, with the store's and the journal's current numbers.
    pub(super) fn publish_status(&self) {
        // Lock order: never hold `status` while taking `journal` or `store`.
        let (cur, prev, forgotten, undone) = {
            let store = self.store.lock().unwrap();
            (
                store.current_hash().to_string(),
                store.previous_hash().map(str::to_string),
                store.current_meta().concepts(),
                store.undone(),
            )
        };
        let seen = self.journal.lock().unwrap().commands().count();
        let channel = self.channel.report();
        let doc = {
            let mut s = self.status.lock().unwrap();
            s.adapter_hash = cur;
            s.adapter_previous = prev;
            s.forgotten = forgotten;
            s.forgets_undone = undone;
            s.commands_seen = seen;
            s.channel = channel;
            s.t = now_unix();
            serde_json::to_vec(&*s).expect("json")
        };
        self.publish(self.topics.status.clone(), doc, true);
    }

    /// Publishes the journaled receipt of `st` (retained), if it has one.
    pub(super) fn publish_receipt(&self, st: &CommandState) {
        if let Some(r) = st.receipt.as_ref().and_then(|h| hex::decode(h).ok()) {
            self.publish(self.topics.receipt(&st.name()), r, true);
        }
    }
}

/// The outbox task: sends what the others queued, in order, until `Out::Disconnect`.
pub(super) async fn outbox(client: AsyncClient, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(o) = rx.recv().await {
        let r = match o {
            Out::Publish {
                topic,
                payload,
                retain,
            } => {
                client
                    .publish(topic, QoS::AtLeastOnce, retain, payload)
                    .await
            }
            Out::Ack(p) => client.ack(&p).await,
            Out::Disconnect => {
                let _ = client.disconnect().await;
                break;
            }
        };
        if let Err(e) = r {
            error!("outbox: {e}");
        }
    }
}

/// Runs the self-checks on a blocking thread and puts the result into the status.
pub(super) fn spawn_selfcheck(sh: Arc<Shared>) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let r = {
            let mut eng = sh.engines.lock().unwrap();
            let adapter = sh.store.lock().unwrap().current();
            eng.selfcheck(&sh.cfg, adapter)
        };
        if r.ok {
            info!(
                "self-check ok ({} of {} probes agree, {:.0} ms)",
                r.probes_agree, r.probes, r.ms
            );
        } else {
            error!("SELF-CHECK FAILED: {}", r.problems.join("; "));
        }
        sh.status.lock().unwrap().selfcheck = Some(r);
        sh.publish_status();
    })
}
