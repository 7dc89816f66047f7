//! fedmesh simulation harness: the `demo` (a whole mesh on loopback),
//! `bench` (aggregation-rule timings) and the research harness: attacks,
//! scenarios, the in-process engine, reports, the `matrix` grid and offline
//! replay of recorded updates (`.npy`).
#![deny(missing_docs)]

pub mod attacks;
pub mod bench;
pub mod demo;
pub mod engine;
pub mod matrix;
pub mod npy;
pub mod replay;
pub mod report;
pub mod scenario;
