//! fedmesh simulation harness: the `demo` (a whole mesh on loopback) and
//! `bench` (aggregation-rule timings).
#![deny(missing_docs)]

pub mod bench;
pub mod demo;
