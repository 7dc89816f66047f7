//! Research and test support: synthetic workloads and attacks, detection
//! quality metrics and the held-out evaluation.

pub mod eval;
pub mod metrics;
pub mod synthetic;
