#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test binary
//! End-to-end tests: `protocol` drives an in-process coordinator over real
//! mTLS; `mesh` starts the real binaries.

mod cli;
mod mesh;
mod protocol;
