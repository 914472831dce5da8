//! System tests: Lethe's programs together, as an operator and a camera use them. Each test
//! starts its own mosquitto on a random loopback port (lethe-testkit) and runs the built
//! `lethectl` and `lethe-agent` binaries as processes (`lethe_system_tests::bin`).
//!
//! mosquitto and openssl are required (`./x test` installs them): a missing one FAILS the
//! tests with a message; nothing is skipped silently.
//!
//! - `forget`: keys, trust store, signed forget, push, the agent's update, watch, receipt
//!   verification and fleet status, all through the binaries;
//! - `fleet_cli`: `lethectl push` and `status` over mutual TLS, and its TLS errors;
//! - `rollout`: `lethectl rollout` to a simulated fleet (lethe-fleetsim): receipts, abort,
//!   resume without a second delivery, devices offline at delivery.

mod fleet_cli;
mod forget;
mod rollout;
