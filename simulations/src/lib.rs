//! fedmesh simulation harness: the `demo` (a whole mesh on loopback).
#![deny(missing_docs)]

pub mod demo;
