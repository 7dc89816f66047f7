//! End-to-end tests: `protocol` drives an in-process coordinator over real
//! mTLS; `mesh` starts the real binaries.

mod mesh;
mod protocol;
