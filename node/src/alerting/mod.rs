//! What happens after a verdict: the alert record and pipeline, its sinks,
//! the webhook outbox and the response actions.

pub mod alert;
pub mod response;
pub mod webhook;
