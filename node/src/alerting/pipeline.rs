//! Around the agent's window: the rule layer before it (its hits feed the
//! incident tracker), and after it, for the incident records, container
//! identity, ignore patterns, the sinks and the response queue (incidents
//! that open or escalate only).

use tracing::warn;

use crate::alerting::alert::Alert;
use crate::alerting::sink::AlertSinks;
use crate::detection::rules::{RuleEngine, RuleHit};

/// Everything that happens to the events and alerts of one window after the
/// agent scored it: the rule layer, container identity, the sinks and the
/// response queue.
pub struct AlertPipeline {
    rules: RuleEngine,
    sinks: AlertSinks,
    identity: Option<crate::ops::docker::IdentityCache>,
    responses: Option<tokio::sync::mpsc::Sender<Alert>>,
    ignore: Vec<String>,
}

impl AlertPipeline {
    /// A pipeline with rules and sinks only.
    pub fn new(rules: RuleEngine, sinks: AlertSinks) -> Self {
        Self {
            rules,
            sinks,
            identity: None,
            responses: None,
            ignore: Vec::new(),
        }
    }

    /// Alerts for these containers (ids, names, images; `*` suffix for a
    /// prefix) are dropped before the sinks and responses.
    pub fn with_ignore(mut self, patterns: Vec<String>) -> Self {
        self.ignore = patterns;
        self
    }

    /// Names containers from this cache.
    pub fn with_identity(mut self, cache: crate::ops::docker::IdentityCache) -> Self {
        self.identity = Some(cache);
        self
    }

    /// Sends incidents that open or escalate to the response task (dropped
    /// with a warning when its queue is full; detection never waits for a
    /// response).
    pub fn with_responses(mut self, tx: tokio::sync::mpsc::Sender<Alert>) -> Self {
        self.responses = Some(tx);
        self
    }

    /// Runs the rule layer over one window's `events` (its hits open or
    /// join incidents in the agent).
    pub fn rule_hits(&mut self, events: &[crate::telemetry::Event]) -> Vec<RuleHit> {
        self.rules.evaluate(events)
    }

    /// Names the containers of `records` (incident records from the agent).
    pub fn name(&self, records: &mut [Alert]) {
        if let Some(cache) = &self.identity {
            for a in records {
                match cache.get(&a.container) {
                    Some(info) => a.set_identity(&info),
                    None => cache.request_refresh(),
                }
            }
        }
    }

    /// Identity, ignore patterns, sinks and responses for one window's
    /// incident records. Returns the records emitted.
    pub fn dispatch(&mut self, mut records: Vec<Alert>) -> Vec<Alert> {
        self.name(&mut records);
        records.retain(|a| !a.is_ignored(&self.ignore));
        for a in &records {
            if let Err(e) = self.sinks.emit(a) {
                warn!(error = %e, alert = %a.id, "alert sink failed");
            }
            if a.opens_or_escalates() {
                self.respond(a);
            }
        }
        records
    }

    /// Hands an incident that opened (or whose severity rose) to the
    /// response task; never waits.
    fn respond(&self, record: &Alert) {
        if let Some(tx) = &self.responses
            && let Err(e) = tx.try_send(record.clone())
        {
            warn!(error = %e, alert = %record.id, container = %record.container, "response queue full or closed; no response for this incident");
        }
    }
}
