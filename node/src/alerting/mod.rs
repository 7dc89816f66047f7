//! What happens after a verdict: the alert record, the per-window pipeline
//! (rules, identity, ignore list), the sinks, the webhook outbox and the
//! response actions.

pub mod alert;
pub mod pipeline;
pub mod response;
pub mod sink;
pub mod webhook;
