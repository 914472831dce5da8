//! lethe-fleetsim: a TEST DOUBLE for fleet scale, never shipped and never linked into the
//! agent or `lethectl`. It runs N real Lethe agents in one process (their intake, durable
//! journal, replay protection, signed receipts and MQTT code: `lethe_agent::agent::run_with`)
//! with the model update replaced by a clearly labelled simulation of configurable duration
//! and outcome ([`engine::SimEngine`], plugged into the agent's `Updater` seam). A thousand
//! devices then fit on one machine, so a rollout to a thousand devices can be tested and
//! benchmarked against a real broker.
//!
//! - [`engine`]: the simulated update (steps, duration, commit / roll back / fail);
//! - [`plan`]: which devices fail, spread evenly over the fleet;
//! - [`fleet`]: the devices, their keys and folders, started and stopped one by one;
//! - [`observe`]: an independent MQTT witness counting deliveries per device;
//! - [`limits`]: the open-file limit a thousand connections need.
//!
//! The `lethe-fleetsim` binary runs a fleet until SIGTERM (`lethectl bench fleet` starts it).

pub mod engine;
pub mod fleet;
pub mod limits;
pub mod observe;
pub mod plan;

pub use engine::{Outcome, SimEngine, Timing, SIM_MODEL_ID};
pub use fleet::{device_id, FleetSpec, SimFleet};
pub use observe::{Observer, Seen};
pub use plan::OutcomePlan;
