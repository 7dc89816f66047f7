//! How the node runs: the detection loop and the event-source readers (and
//! the assembly of a whole node from its config).

pub mod detection;
pub mod sources;
