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

/// Feeds one window's events to the agent, closes the window at `end_ms`,
/// runs the rule layer over the same events and sends every alert (rule
/// alerts first) through the pipeline. Failures are logged; the loop goes
/// on. Returns the alerts.
pub fn process_window(
    agent: &SharedAgent,
    events: &[Event],
    end_ms: u64,
    pipeline: &mut AlertPipeline,
) -> Vec<Alert> {
    let (model_alerts, tenant, node) = {
        let mut a = lock(agent);
        for e in events {
            a.observe(e);
        }
        let r = a.close_window(end_ms);
        (r, a.settings().tenant.clone(), a.settings().node.clone())
    };
    let span = tracing::debug_span!("window", tenant = %tenant, node = %node, end_ms);
    let _g = span.enter();
    let model_alerts = model_alerts.unwrap_or_else(|e| {
        warn!(error = %e, "window processing failed");
        Vec::new()
    });
    pipeline.dispatch(events, model_alerts, &tenant, &node)
}

/// Real-time detection over real sources: every `tick`, samples the cgroup
/// collector (if any), drains the events the JSON-line readers delivered,
/// closes a window at the wall-clock time, scores it and emits alerts.
/// With a `recorder`, each window's events are written to it first (a
/// failed write is logged and ends the recording, never detection).
#[allow(clippy::too_many_arguments)]
pub async fn run_live_detection(
    agent: SharedAgent,
    mut cgroup: Option<CgroupCollector>,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    mut pipeline: AlertPipeline,
    tick: Duration,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<SourceCounters>,
    mut recorder: Option<Recorder>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cgroup_skips = 0u64;
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
        if let Some(c) = cgroup.take() {
            let (c, r) = match tokio::task::spawn_blocking(move || {
                let mut c = c;
                let r = c.sample(now_ms);
                (c, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cgroup sampling task failed; cgroup source disabled");
                    continue;
                }
            };
            cgroup = Some(c);
            match r {
                Ok((evs, stats)) => {
                    let skipped =
                        stats.missing_files + stats.unreadable_files + stats.malformed_lines;
                    if skipped > cgroup_skips {
                        debug!(
                            skipped,
                            containers = stats.containers,
                            "cgroup files skipped"
                        );
                    }
                    cgroup_skips = skipped;
                    counters.parse_errors[source_index("cgroup")].fetch_add(
                        stats.malformed_lines + stats.unreadable_files,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    batch.extend(evs);
                }
                Err(e) => warn!(error = %e, "cgroup sampling failed"),
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
    use crate::detection::rules::{RuleEngine, RulesConfig};
    use crate::sim::synthetic::Profile;
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
            seed: 7,
        };
        Arc::new(Mutex::new(
            Agent::new(settings, None, None, time::OffsetDateTime::now_utc()).unwrap(),
        ))
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

    #[test]
    fn one_setuid_root_event_in_a_normal_window_alerts() {
        let agent = agent();
        let mut src = SyntheticSource::new(
            5,
            &[
                ("web-1".into(), Profile::Web),
                ("db-1".into(), Profile::Database),
                ("batch-1".into(), Profile::Batch),
                ("ml-1".into(), Profile::Ml),
            ],
            10_000,
        );
        let mut pipeline =
            AlertPipeline::new(RuleEngine::new(&RulesConfig::default()), AlertSinks::none());
        // No model yet: the rule alerts on its own.
        let (w, mut events) = src.next_window();
        events.push(setuid_root("web-1", w * 10_000 + 4_321));
        let alerts = process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        let rule = a.rule.as_ref().unwrap();
        assert_eq!(rule.id, "setuid_root");
        assert_eq!(
            (a.container.as_str(), a.ts_ms),
            ("web-1", w * 10_000 + 4_321)
        );
        assert_eq!(a.severity, crate::detection::severity::Severity::Critical);
        assert_eq!((a.score, a.threshold), (None, None));
        assert!(rule.event.contains("uid=33") && rule.event.contains("target_uid=0"));
        // Train the local model on benign windows.
        for _ in 0..25 {
            let (w, events) = src.next_window();
            process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        }
        assert!(lock(&agent).detector().is_some(), "bootstrapped");
        // A normal window with one decisive event: the rule alert is there
        // whatever the model says (here the model flags the window too, on
        // the privilege-event feature; both alerts are kept, rule first).
        let (w, mut events) = src.next_window();
        let n = events.len();
        events.push(setuid_root("web-1", w * 10_000 + 10));
        let alerts = process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        assert!(n >= 8, "an otherwise normal window ({n} events)");
        let web: Vec<_> = alerts.iter().filter(|a| a.container == "web-1").collect();
        assert_eq!(
            web[0].rule.as_ref().map(|r| r.id.as_str()),
            Some("setuid_root")
        );
        assert_eq!(
            web[0].ts_ms,
            w * 10_000 + 10,
            "rule alerts carry the event time"
        );
        assert!(
            web[1..]
                .iter()
                .all(|a| a.rule.is_none() && a.score.is_some())
        );
        assert!(
            alerts.iter().all(|a| a.container == "web-1"),
            "benign containers stay quiet: {alerts:?}"
        );
    }
}
