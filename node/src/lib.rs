//! fedmesh edge node: watches containers, turns telemetry into
//! per-container feature windows, scores them with a dense autoencoder,
//! raises alerts, and learns with its federation by sending model updates
//! (never telemetry) to the coordinator.
//!
//! The binary (`src/main.rs`) is glue: CLI and config; [`Node::open`]
//! assembles the node and [`Node::run`] runs it.
//!
//! Folders: [`telemetry`] (sources → events), [`detection`] (events →
//! windows → scores and rule hits), [`alerting`] (alerts, sinks, webhook,
//! responses), [`federation`] (the coordinator session and its rounds),
//! [`ops`] (metrics, Docker identity, HTTP). [`sim`] (synthetic workloads,
//! evaluation, simulation hooks) is compiled only with the `sim` feature.
#![deny(missing_docs)]

pub mod agent;
pub mod alerting;
pub mod config;
pub mod detection;
pub mod federation;
pub mod ops;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod telemetry;

pub use runtime::node::{Node, NodeError, RunningNode};
