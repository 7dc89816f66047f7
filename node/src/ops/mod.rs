//! Operating the node: the Prometheus exposition, Docker identity and
//! actions, and the small HTTP/1 client they share with the webhook.

pub mod docker;
pub mod exposition;
pub(crate) mod http;
