//! How the node runs: the assembly of a whole node ([`node::Node`]), the
//! detection loop and the event-source readers.

pub mod detection;
pub mod node;
pub mod sources;
