//! The detection loop: it never stops, with or without a coordinator.
//! Every tick it closes a window (agent: features, score, model alerts),
//! runs the rule layer over the same events and dispatches the alerts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::agent::{SharedAgent, lock};
use crate::alerting::alert::Alert;
use crate::alerting::pipeline::AlertPipeline;
use crate::ops::exposition::{SourceCounters, source_index};
#[cfg(feature = "sim")]
use crate::sim::synthetic::SyntheticSource;
use crate::telemetry::Event;
use crate::telemetry::cgroup::CgroupCollector;
use crate::telemetry::netns::NetnsCollector;
use crate::telemetry::recording::Recorder;

/// Runs the synthetic source in real time: one window every `window_ms`
/// (scaled by `speedup`), scoring and alerting, until `shutdown`.
#[cfg(feature = "sim")]
pub async fn run_synthetic_detection(
    agent: SharedAgent,
    mut source: SyntheticSource,
    mut pipeline: AlertPipeline,
    tick: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (idx, events) = source.next_window();
        let end_ms = (idx + 1) * source.window_ms();
        pipeline = match process_window_blocking(&agent, events, end_ms, pipeline).await {
            Some(p) => p,
            None => return,
        };
    }
}

/// [`process_window`] on a blocking thread, so that the window's heavy
/// steps (the one-time bootstrap training inside `close_window`, the
/// webhook outbox's per-alert durable writes) never stall an async worker.
/// The loop awaits it before its next tick: windows stay in order. `None`
/// (logged) if the window task panicked; the loop then stops, as it did
/// when the window ran inline.
async fn process_window_blocking(
    agent: &SharedAgent,
    events: Vec<Event>,
    end_ms: u64,
    mut pipeline: AlertPipeline,
) -> Option<AlertPipeline> {
    let agent = agent.clone();
    match tokio::task::spawn_blocking(move || {
        process_window(&agent, &events, end_ms, &mut pipeline);
        pipeline
    })
    .await
    {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "window task failed; detection stops");
            None
        }
    }
}

/// Runs the rule layer over one window's events, feeds the events to the
/// agent, closes the window at `end_ms` (scores and rule hits become
/// incident records) and sends the records through the pipeline. Failures
/// are logged; the loop goes on. Returns the records emitted.
pub fn process_window(
    agent: &SharedAgent,
    events: &[Event],
    end_ms: u64,
    pipeline: &mut AlertPipeline,
) -> Vec<Alert> {
    let hits = pipeline.rule_hits(events);
    let (records, tenant, node) = {
        let mut a = lock(agent);
        for e in events {
            a.observe(e);
        }
        let r = a.close_window(end_ms, &hits);
        (r, a.settings().tenant.clone(), a.settings().node.clone())
    };
    let span = tracing::debug_span!("window", tenant = %tenant, node = %node, end_ms);
    let _g = span.enter();
    let records = records.unwrap_or_else(|e| {
        warn!(error = %e, "window processing failed");
        Vec::new()
    });
    let sent = pipeline.dispatch(records);
    // Stored after the records left: a crash in between pages again.
    lock(agent).persist_incidents();
    sent
}

/// The sources the live loop samples itself, once per tick.
#[derive(Debug, Default)]
pub struct Sampled {
    /// The cgroup collector (`kind = "cgroup"`).
    pub cgroup: Option<CgroupCollector>,
    /// The network-namespace collector (`kind = "netns"`).
    pub netns: Option<NetnsCollector>,
}

/// Skipped-file totals last logged, per sampled source.
#[derive(Debug, Default)]
struct Skips {
    cgroup: u64,
    netns: u64,
}

impl Sampled {
    /// Samples every collector at `now_ms` (blocking file reads), returning
    /// their events; counts what they skipped in `counters`.
    fn sample(&mut self, now_ms: u64, counters: &SourceCounters, skips: &mut Skips) -> Vec<Event> {
        let mut batch = Vec::new();
        if let Some(c) = self.cgroup.as_mut() {
            match c.sample(now_ms) {
                Ok((evs, stats)) => {
                    let skipped =
                        stats.missing_files + stats.unreadable_files + stats.malformed_lines;
                    if skipped > skips.cgroup {
                        debug!(
                            skipped,
                            containers = stats.containers,
                            "cgroup files skipped"
                        );
                    }
                    skips.cgroup = skipped;
                    counters.parse_errors[source_index("cgroup")].fetch_add(
                        stats.malformed_lines + stats.unreadable_files,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    batch.extend(evs);
                }
                Err(e) => warn!(error = %e, "cgroup sampling failed"),
            }
        }
        if let Some(n) = self.netns.as_mut() {
            match n.sample(now_ms) {
                Ok((evs, stats)) => {
                    let skipped = stats.skipped();
                    if skipped > skips.netns {
                        debug!(?stats, "network namespace files skipped");
                    }
                    skips.netns = skipped;
                    counters.parse_errors[source_index("netns")]
                        .fetch_add(skipped, std::sync::atomic::Ordering::Relaxed);
                    batch.extend(evs);
                }
                Err(e) => warn!(error = %e, "network namespace sampling failed"),
            }
        }
        batch
    }
}

/// Real-time detection over real sources: every `tick`, samples the cgroup
/// and network-namespace collectors (if any), drains the events the
/// JSON-line and process readers delivered, closes a window at the
/// wall-clock time, scores it and emits alerts.
/// With a `recorder`, each window's events are written to it first (a
/// failed write is logged and ends the recording, never detection).
#[allow(clippy::too_many_arguments)]
pub async fn run_live_detection(
    agent: SharedAgent,
    sampled: Sampled,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    mut pipeline: AlertPipeline,
    tick: Duration,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<SourceCounters>,
    mut recorder: Option<Recorder>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampled = Some((sampled, Skips::default()));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut batch = Vec::new();
        if let Some((mut s, mut skips)) = sampled.take() {
            let c = counters.clone();
            match tokio::task::spawn_blocking(move || {
                let evs = s.sample(now_ms, &c, &mut skips);
                (s, skips, evs)
            })
            .await
            {
                Ok((s, skips, evs)) => {
                    sampled = Some((s, skips));
                    batch = evs;
                }
                Err(e) => {
                    warn!(error = %e, "sampling task failed; cgroup and netns sources disabled");
                }
            }
        }
        while let Ok(e) = events.try_recv() {
            batch.push(e);
        }
        if let Some(r) = recorder.as_mut() {
            match r.write(now_ms, &batch) {
                Ok(true) => {}
                Ok(false) => {
                    warn!(
                        bytes = r.written(),
                        "recording reached record.max_mb; recording stops"
                    );
                    recorder = None;
                }
                Err(e) => {
                    warn!(error = %e, "recording failed; recording stops");
                    recorder = None;
                }
            }
        }
        pipeline = match process_window_blocking(&agent, batch, now_ms, pipeline).await {
            Some(p) => p,
            None => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Agent;
    use crate::agent::AgentSettings;
    use crate::alerting::sink::AlertSinks;
    use crate::config::DetectorConfig;
    use crate::detection::incident::{CloseReason, IncidentState, OpenReason, UpdateReason};
    use crate::detection::rules::{RuleEngine, RulesConfig};
    use crate::sim::synthetic::{AttackKind, Profile};
    use crate::telemetry::{ContainerId, KernelDetail, KernelEventKind};
    use std::sync::Mutex;

    fn agent() -> SharedAgent {
        let settings = AgentSettings {
            tenant: "acme".into(),
            node: "n1".into(),
            detector: DetectorConfig {
                false_alarm_rate: 0.01,
                train_buffer: 4096,
                min_train_windows: 32,
                bootstrap_after_windows: 80,
                top_features: 3,
                ..DetectorConfig::default()
            },
            incidents: Default::default(),
            seed: 7,
        };
        Arc::new(Mutex::new(
            Agent::new(settings, None, None, time::OffsetDateTime::now_utc()).unwrap(),
        ))
    }

    #[test]
    fn the_state_is_stored_once_an_opening_is_dispatched_and_quiet_windows_are_batched() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::NodeStore::open(dir.path()).unwrap();
        let settings = lock(&agent()).settings().clone();
        let agent: SharedAgent = Arc::new(Mutex::new(
            Agent::new(
                settings,
                Some(store.clone()),
                None,
                time::OffsetDateTime::now_utc(),
            )
            .unwrap(),
        ));
        let mut src = source();
        let mut pipeline =
            AlertPipeline::new(RuleEngine::new(&RulesConfig::default()), AlertSinks::none());
        let stored_open = |c: &str| -> Option<bool> {
            let bytes = store.incidents().unwrap()?;
            let snap: crate::detection::incident::TrackerSnapshot =
                serde_json::from_slice(&bytes).unwrap();
            let restored =
                crate::detection::incident::IncidentTracker::restore(Default::default(), snap)
                    .unwrap()
                    .0;
            Some(restored.is_open(c))
        };
        // Quiet windows: nothing written before the sixth.
        for i in 0..crate::agent::INCIDENT_PERSIST_EVERY {
            assert_eq!(
                stored_open("web-1"),
                None,
                "written after {i} quiet windows"
            );
            let (w, events) = src.next_window();
            assert!(process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline).is_empty());
        }
        assert_eq!(stored_open("web-1"), Some(false));
        // An opening: stored as soon as process_window returns.
        let (w, mut events) = src.next_window();
        events.push(setuid_root("web-1", w * 10_000 + 1));
        let records = process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        assert_eq!(records.len(), 1);
        assert_eq!(stored_open("web-1"), Some(true));
        // While it is open, every window is stored, records or not: a
        // crash must not turn windows the node saw into downtime.
        let stored_tick = || -> u64 {
            let bytes = store.incidents().unwrap().unwrap();
            serde_json::from_slice::<crate::detection::incident::TrackerSnapshot>(&bytes)
                .unwrap()
                .tick
        };
        for _ in 0..3 {
            let before = stored_tick();
            let (w, events) = src.next_window();
            assert!(process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline).is_empty());
            assert_eq!(stored_tick(), before + 1);
        }
        assert_eq!(lock(&agent).stats().incident_store_errors, 0);
    }

    fn setuid_root(container: &str, ts_ms: u64) -> Event {
        Event::Kernel {
            container: ContainerId(container.into()),
            ts_ms,
            kind: KernelEventKind::Setuid,
            detail: KernelDetail {
                process: Some("/usr/bin/su".into()),
                user: Some("www-data".into()),
                uid: Some(33),
                target_uid: Some(0),
                ..KernelDetail::default()
            }
            .boxed(),
        }
    }

    fn source() -> SyntheticSource {
        SyntheticSource::new(
            5,
            &[
                ("web-1".into(), Profile::Web),
                ("db-1".into(), Profile::Database),
                ("batch-1".into(), Profile::Batch),
                ("ml-1".into(), Profile::Ml),
            ],
            10_000,
        )
    }

    /// Every record the sinks received, in order.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Alert>>>);

    impl crate::alerting::sink::AlertSink for Recorder {
        fn emit(&mut self, alert: &Alert) -> Result<(), crate::alerting::sink::AlertError> {
            self.0.lock().unwrap().push(alert.clone());
            Ok(())
        }
    }

    #[test]
    fn one_setuid_root_event_opens_a_critical_incident_at_once() {
        let agent = agent();
        let mut src = source();
        let mut pipeline =
            AlertPipeline::new(RuleEngine::new(&RulesConfig::default()), AlertSinks::none());
        // No model yet, first window of every container (warm-up): the rule
        // opens an incident on its own.
        let (w, mut events) = src.next_window();
        events.push(setuid_root("web-1", w * 10_000 + 4_321));
        let records = process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        assert_eq!(records.len(), 1, "{records:?}");
        let a = &records[0];
        assert_eq!(a.state, IncidentState::Open);
        assert_eq!(a.opened_by, OpenReason::Rule);
        assert_eq!(a.rules[0].id, "setuid_root");
        assert_eq!(
            (a.container.as_str(), a.ts_ms),
            ("web-1", w * 10_000 + 4_321)
        );
        assert_eq!(a.severity, crate::detection::severity::Severity::Critical);
        assert_eq!((a.score, a.threshold), (None, None));
        assert!(a.rules[0].event.contains("uid=33") && a.rules[0].event.contains("target_uid=0"));
        // Train the local model on benign windows; the incident closes
        // once the container is quiet.
        let mut later = Vec::new();
        for _ in 0..25 {
            let (w, events) = src.next_window();
            later.extend(process_window(
                &agent,
                &events,
                (w + 1) * 10_000,
                &mut pipeline,
            ));
        }
        assert!(lock(&agent).detector().is_some(), "bootstrapped");
        assert_eq!(
            later
                .iter()
                .map(|r| (r.container.as_str(), r.state, r.incident == a.incident))
                .collect::<Vec<_>>(),
            vec![("web-1", IncidentState::Close, true)]
        );
        // A normal window with one decisive event: a new incident, whatever
        // the model says; the benign containers stay quiet.
        let (w, mut events) = src.next_window();
        let n = events.len();
        events.push(setuid_root("web-1", w * 10_000 + 10));
        let records = process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        assert!(n >= 8, "an otherwise normal window ({n} events)");
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].state, IncidentState::Open);
        assert_eq!(records[0].container, "web-1");
        assert_eq!(
            records[0].ts_ms,
            w * 10_000 + 10,
            "opened at the event time"
        );
        assert_ne!(records[0].incident, a.incident);
    }

    #[test]
    fn one_attack_episode_is_one_open_and_one_close_record_in_every_sink() {
        let agent = agent();
        let mut src = source();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.jsonl");
        let recorder = Recorder::default();
        let sinks = AlertSinks::open(false, Some(&file))
            .unwrap()
            .with_sink(recorder.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut pipeline =
            AlertPipeline::new(RuleEngine::new(&RulesConfig::default()), sinks).with_responses(tx);
        // Learn (bootstrap after 80 windows), then a 12-window port scan in
        // web-1, then 20 benign windows.
        let mut w_end = 0;
        for _ in 0..40 {
            let (w, events) = src.next_window();
            w_end = w + 1;
            process_window(&agent, &events, w_end * 10_000, &mut pipeline);
        }
        assert!(lock(&agent).detector().is_some(), "bootstrapped");
        src.inject("web-1", AttackKind::PortScan, w_end, 12)
            .unwrap();
        for _ in 0..32 {
            let (w, events) = src.next_window();
            process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        }
        let recorded = recorder.0.lock().unwrap().clone();
        let text = std::fs::read_to_string(&file).unwrap();
        let from_file: Vec<Alert> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(from_file, recorded, "the file and the further sink agree");
        let states: Vec<_> = recorded
            .iter()
            .filter(|r| r.update != Some(UpdateReason::Escalated))
            .map(|r| (r.container.as_str(), r.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("web-1", IncidentState::Open),
                ("web-1", IncidentState::Close)
            ],
            "{recorded:#?}"
        );
        let (open, close) = (&recorded[0], recorded.last().unwrap());
        assert_eq!(open.incident, close.incident);
        assert!(open.ts_ms >= w_end * 10_000, "opened during the attack");
        assert!(
            open.ts_ms <= (w_end + 3) * 10_000,
            "within three windows of the attack's start"
        );
        assert!(!open.top_features.is_empty() && open.score > open.threshold);
        assert!(
            close.windows >= 12 && close.anomalous_windows >= 8,
            "{close:?}"
        );
        assert_eq!(close.close_reason, Some(CloseReason::Quiet));
        // The response queue got the opening (and escalations) only.
        let mut queued = Vec::new();
        while let Ok(a) = rx.try_recv() {
            queued.push(a);
        }
        assert_eq!(queued[0], *open);
        assert!(queued.iter().all(|a| a.opens_or_escalates()));
        let st = lock(&agent).incident_stats();
        assert_eq!(
            (st.opened.iter().sum::<u64>(), st.closed.iter().sum::<u64>()),
            (1, 1)
        );
    }
}
