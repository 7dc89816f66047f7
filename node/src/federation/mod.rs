//! The node's side of federated learning: the mTLS client, the session
//! with the coordinator and the plaintext and secure rounds.

pub mod client;
pub mod plain;
pub mod round;
pub mod secure;
pub mod session;
