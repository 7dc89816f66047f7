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

/// Held by every test that starts containers on this machine's Docker
/// engine. The node in `docker`, `netns` and `process` watches every
/// container on the host, so another test's attacker running during its
/// bootstrap would be learned as normal (seen in CI: a threshold of 10⁶
/// and the attacker never flagged); these tests run one at a time, the
/// rest of the suite alongside them.
fn host_containers() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it left no containers behind
    // (each removes its own on drop): the lock is still good.
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

mod docker;
mod hostile;
mod mesh;
mod netns;
mod process;
mod protocol;
mod response;
mod secure;
