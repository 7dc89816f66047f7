#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test binary
//! End-to-end tests: `protocol` drives an in-process coordinator over real
//! mTLS; `mesh` starts the real binaries; `docker` runs the real node on
//! this machine's Docker engine against a benign and an attacking container.

mod cli;
mod credentials;
mod docker;
mod hostile;
mod mesh;
mod protocol;
mod secure;
