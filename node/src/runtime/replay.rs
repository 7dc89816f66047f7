//! Offline replay of a recording ([`crate::telemetry::recording`]): the
//! recorded windows go, in order, through a fresh agent and alert pipeline
//! built from a node config (detector, rules, ignore list, seed) — the same
//! [`process_window`] the live loop runs — with no store, no Docker, no
//! response and no federation. Deterministic: the same recording and config
//! give the same alerts, bit for bit.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::agent::{Agent, AgentError, AgentSettings};
use crate::alerting::pipeline::AlertPipeline;
use crate::alerting::sink::AlertSinks;
use crate::config::NodeConfig;
use crate::detection::rules::RuleEngine;
use crate::runtime::detection::process_window;
use crate::telemetry::recording::{RecordingError, RecordingReader};

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording is unreadable or malformed.
    #[error(transparent)]
    Recording(#[from] RecordingError),
    /// The agent could not be created.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// What a replay saw and raised.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplaySummary {
    /// Windows replayed.
    pub windows: u64,
    /// Events replayed.
    pub events: u64,
    /// Incident records raised (open, update, close).
    pub alerts: u64,
    /// Incident records per container id.
    pub alerts_by_container: BTreeMap<String, u64>,
    /// Windows replayed before the agent had a detector.
    pub learning_windows: u64,
}

/// Replays `reader` through a fresh agent built from `cfg`, writing every
/// alert to `sinks`.
pub fn replay<R: BufRead>(
    cfg: &NodeConfig,
    reader: RecordingReader<R>,
    sinks: AlertSinks,
) -> Result<ReplaySummary, ReplayError> {
    let started = reader.header().started_unix_ms;
    // The agent's clock only checks certificate validity of stored models;
    // a replay has none, so the recording's start keeps it deterministic.
    let now = time::OffsetDateTime::from_unix_timestamp((started / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let settings = AgentSettings {
        tenant: cfg.tenant.clone().unwrap_or_else(|| "replay".into()),
        node: cfg.node.clone().unwrap_or_else(|| "replay".into()),
        detector: cfg.detector.clone(),
        incidents: cfg.incidents.clone(),
        seed: cfg.seed,
    };
    let agent = Arc::new(Mutex::new(Agent::new(settings, None, None, now)?));
    let mut pipeline = AlertPipeline::new(RuleEngine::new(&cfg.rules), sinks)
        .with_ignore(cfg.alerts.ignore.clone());
    let mut s = ReplaySummary::default();
    for window in reader {
        let window = window?;
        if crate::agent::lock(&agent).detector().is_none() {
            s.learning_windows += 1;
        }
        let alerts = process_window(&agent, &window.events, window.end_ms, &mut pipeline);
        s.windows += 1;
        s.events += window.events.len() as u64;
        s.alerts += alerts.len() as u64;
        for a in alerts {
            *s.alerts_by_container.entry(a.container).or_default() += 1;
        }
    }
    Ok(s)
}
