//! Everything after the agent scored a window: the rule layer, container
//! identity, ignore patterns, the sinks and the response queue.

use tracing::warn;

use crate::alerting::alert::Alert;
use crate::alerting::sink::AlertSinks;
use crate::detection::rules::RuleEngine;

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

    /// Sends every alert to the response task (dropped with a warning when
    /// its queue is full; detection never waits for a response).
    pub fn with_responses(mut self, tx: tokio::sync::mpsc::Sender<Alert>) -> Self {
        self.responses = Some(tx);
        self
    }

    /// Runs the rules over the window's `events` and returns the rule alerts
    /// followed by `model_alerts`, each named and with its id.
    pub fn collect(
        &mut self,
        events: &[crate::telemetry::Event],
        model_alerts: Vec<Alert>,
        tenant: &str,
        node: &str,
    ) -> Vec<Alert> {
        let mut all: Vec<Alert> = self
            .rules
            .evaluate(events)
            .iter()
            .map(|h| Alert::rule(h, tenant, node))
            .collect();
        all.extend(model_alerts);
        if let Some(cache) = &self.identity {
            for a in &mut all {
                match cache.get(&a.container) {
                    Some(info) => a.set_identity(&info),
                    None => cache.request_refresh(),
                }
            }
        }
        all
    }

    /// Rules, identity, sinks and responses for one window.
    pub fn dispatch(
        &mut self,
        events: &[crate::telemetry::Event],
        model_alerts: Vec<Alert>,
        tenant: &str,
        node: &str,
    ) -> Vec<Alert> {
        let mut all = self.collect(events, model_alerts, tenant, node);
        all.retain(|a| !a.is_ignored(&self.ignore));
        for a in &all {
            if let Err(e) = self.sinks.emit(a) {
                warn!(error = %e, alert = %a.id, "alert sink failed");
            }
            if let Some(tx) = &self.responses
                && let Err(e) = tx.try_send(a.clone())
            {
                warn!(error = %e, alert = %a.id, container = %a.container, "response queue full or closed; no response for this alert");
            }
        }
        all
    }
}
