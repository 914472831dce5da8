//! System tests: Lethe's programs together, as an operator and a camera use them. Each test
//! starts its own broker (mosquitto, or a RabbitMQ node) on random loopback ports
//! (lethe-testkit) and runs the built `lethectl` and `lethe-agent` binaries as processes
//! (`lethe_system_tests::bin`); fleet-scale tests run simulated agents in this process
//! (lethe-fleetsim) against the `lethectl` binary.
//!
//! mosquitto, rabbitmq-server and openssl are required (`./x test` installs them): a missing
//! one FAILS the tests with a message; nothing is skipped silently.
//!
//! - `brokers`: what Lethe relies on from a broker (retained, sessions, redelivery, wills,
//!   dotted topics), on mosquitto and on RabbitMQ;
//! - `forget`: keys, trust store, signed forget, push, the agent's update, watch, receipt
//!   verification, fleet status and the audit ledger, all through the binaries, on
//!   mosquitto and on RabbitMQ;
//! - `fleet_cli`: `lethectl push` and `status` over mutual TLS, and its TLS errors;
//! - `rollout`: `lethectl rollout` to a simulated fleet (lethe-fleetsim): receipts, abort,
//!   resume without a second delivery, devices offline at delivery;
//! - `runbook`: docs/runbook.md's commands, run as written against mosquitto and two agents;
//! - `broker`: the shipped fleet broker configuration and ACL (firmware/broker) refusing
//!   what a device must not do, and the agent working under it.

mod broker;
mod brokers;
mod fleet_cli;
mod forget;
mod rollout;
mod runbook;
