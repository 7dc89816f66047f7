//! Research and test support: the simulation hook of the federation path
//! (its types are always compiled and inert; a node holds a hook only with
//! the `sim` feature) and, with the `sim` feature only, synthetic workloads
//! and attacks, detection quality metrics and the held-out evaluation.
//! Release images are built without `sim`.

#[cfg(feature = "sim")]
pub mod eval;
pub mod hook;
#[cfg(feature = "sim")]
pub mod metrics;
#[cfg(feature = "sim")]
pub mod synthetic;
