//! End-to-end tests: `protocol` drives an in-process coordinator over real
//! mTLS; `mesh` starts the real binaries.

mod cli;
mod mesh;
mod protocol;
