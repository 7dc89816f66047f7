//! fedmesh simulation harness: the `demo` (a whole mesh on loopback),
//! `quality` (detection quality per attack kind: federated, local-only and a
//! linfa baseline), `bench` (aggregation-rule timings) and the research
//! harness: attacks, scenarios, the in-process and network engines, reports,
//! the `matrix` grid, offline replay of recorded updates (`.npy`) and the
//! long-run `soak` of the real coordinator.
#![deny(missing_docs)]

pub mod attacks;
pub mod baseline;
pub mod bench;
pub mod bench_handshake;
pub mod bench_replay;
pub mod bench_round;
pub mod demo;
pub mod engine;
pub mod harness;
pub mod matrix;
pub mod npy;
pub mod quality;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod soak;
