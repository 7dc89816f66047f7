//! How the node runs: the assembly of a whole node ([`node::Node`]), the
//! detection loop, the event-source readers and the offline replay of a
//! recording.

pub mod detection;
pub mod node;
pub mod replay;
pub mod sources;
