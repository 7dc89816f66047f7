//! Research and test support: synthetic workloads and attacks, detection
//! quality metrics, the held-out evaluation and the simulation hooks of the
//! federation path.

pub mod eval;
pub mod hook;
pub mod metrics;
pub mod synthetic;
