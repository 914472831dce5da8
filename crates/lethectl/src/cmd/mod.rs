//! One module per subcommand group; each exposes its clap arguments and a `run` function
//! returning the process exit code.

pub mod world;

// Signed commands (lethe-proto): keys, trust store, signing, verification, receipts.
pub mod bench;
mod bench_agent;
pub mod bench_fleet;
pub mod forget;
mod fsutil;
pub mod keys;
pub mod model;
pub mod receipt;
pub mod revert;
pub mod sign;
pub mod trust;
pub mod verify;

// Fleet over MQTT (lethe-agent's topics) and the in-process demo.
pub mod audit;
pub mod demo;
mod devices;
pub mod fleet;
mod fleet_rig;
mod jsonl;
mod link;
mod local;
mod procstat;
pub mod rollout;
mod topic_index;
