//! lethe-agent: the daemon on one camera. It takes signed forget commands from MQTT, journals
//! every step durably, runs the update (SIU on ONNX Runtime), verifies the candidate with an
//! independent engine (tract), and commits the new adapter atomically or rolls back; it
//! reports progress events, a retained status and a signed receipt per command.
//!
//! Key decision (docs/design.md, decision 5): **the agent is a state machine over a durable
//! journal.** [`state`] is the lifecycle as pure functions, [`journal`] makes each transition
//! durable before it is acted on or acknowledged, and [`store`] is the only place that moves
//! the current adapter. So a QoS 1 redelivery, an operator's resend or a `kill -9` at any
//! point leaves a valid old or new model, and each command is applied at most once and
//! reaches a reported terminal state.
//!
//! Async shape: one task polls the MQTT event loop and never blocks ([`mqtt`]); training and
//! probing run on blocking threads ([`update`]); a bounded queue is the backpressure and a
//! full queue answers `busy` ([`agent`], split by job: intake, recovery, worker, status).
//! Log lines are RFC 3339 UTC with a level, filtered by `RUST_LOG` ([`log`]).
//!
//! The command channel is hostile ground: a delivery is authenticated before anything is
//! stored, and what fails is only counted ([`channel`]); a packet over the cap that the
//! broker keeps redelivering is shed with the session that holds it ([`mqtt`]); once a
//! command is settled its envelope (with the image) is scrubbed and the journal is
//! compacted to what must still be known; a full disk fails a command with a receipt.
//!
//! The model's side is behind one seam, [`updater::Updater`]: the shipped agent runs the
//! package's engines; the fleet-scale tests run the same agent on a simulation of it.

pub mod agent;
pub mod channel;
pub mod config;
pub mod fsutil;
pub mod journal;
pub mod log;
pub mod mqtt;
pub mod revert;
pub mod sdnotify;
pub mod selfcheck;
pub mod state;
pub mod store;
pub mod update;
pub mod updater;

pub use agent::{run, AgentHandle};
pub use config::{Config, Overrides};
