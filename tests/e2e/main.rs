#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test binary
//! End-to-end tests: `protocol` drives an in-process coordinator over real
//! mTLS; `mesh` starts the real binaries; `docker` runs the real node on
//! this machine's Docker engine against a benign and an attacking container;
//! `process` sees a setuid-root exec in a real container through the
//! kernel's proc connector alone; `netns` catches a port scan in a real
//! container through the network-namespace source alone; `response` pauses and disconnects real containers through the node's
//! response layer and shows where it refuses.

mod cli;
mod credentials;
mod docker;
mod hostile;
mod mesh;
mod netns;
mod process;
mod protocol;
mod response;
mod secure;
