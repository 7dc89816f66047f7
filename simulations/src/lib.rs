//! fedmesh simulation harness: the `demo` (a whole mesh on loopback),
//! `quality` (detection quality per attack kind: federated, local-only and a
//! linfa baseline) and `bench` (aggregation-rule timings).
#![deny(missing_docs)]

pub mod bench;
pub mod demo;
pub mod quality;
