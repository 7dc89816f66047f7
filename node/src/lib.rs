//! fedmesh edge node: watches containers, turns telemetry into
//! per-container feature windows, scores them with a dense autoencoder,
//! raises alerts, and learns with its federation by sending model updates
//! (never telemetry) to the coordinator.
//!
//! The binary (`src/main.rs`) is glue: CLI, config, [`agent::Agent`],
//! [`runtime`] loops.
#![deny(missing_docs)]

pub mod agent;
pub mod alert;
pub mod baseline;
pub mod client;
pub mod config;
pub mod detector;
pub mod docker;
pub mod eval;
pub mod exposition;
pub mod features;
mod http;
pub mod metrics;
pub mod model;
pub mod response;
pub mod rules;
pub mod runtime;
pub mod scaler;
pub mod secure;
pub mod store;
pub mod telemetry;
pub mod webhook;
