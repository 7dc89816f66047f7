//! Prometheus metrics of the node (`/metrics`) and a liveness probe
//! (`/healthz`). Counters are read from the agent at scrape time, so the
//! detection path pays nothing for them; telemetry parse errors are counted
//! by the readers into [`SourceCounters`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::agent::{SharedAgent, lock};
use crate::detection::incident::severity_index;
use crate::detection::severity::Severity;

/// Per-source ingest counters shared with the reader threads.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Lines or files skipped as malformed, per source.
    pub parse_errors: [AtomicU64; 5],
}

/// Index of a source in [`SourceCounters`].
pub fn source_index(name: &str) -> usize {
    match name {
        "cgroup" => 0,
        "falco" => 1,
        "tetragon" => 2,
        "netns" => 4,
        _ => 3,
    }
}

const SOURCE_NAMES: [&str; 5] = ["cgroup", "falco", "tetragon", "synthetic", "netns"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    source: &'static str,
}

/// Counters of the rule layer, the webhook, the Docker API and the
/// response actions; clones share their values with the tasks that count.
#[derive(Debug, Clone, Default)]
pub struct OpsMetrics {
    /// Rule hits (read at scrape time).
    pub rule_hits: Arc<crate::detection::rules::RuleCounters>,
    /// Webhook delivery counters and outbox depth.
    pub webhook: crate::alerting::webhook::WebhookCounters,
    /// Failed Docker Engine API calls (identity refresh and responses).
    pub docker_errors: Counter,
    /// Responses by action, mode and result.
    pub responses: crate::alerting::response::ResponseCounters,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabel {
    severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    result: &'static str,
}

/// The TLS credentials' metrics, under the same names as the
/// coordinator's (no `fedmesh_node_` prefix): read at scrape time.
struct CredentialMetrics {
    creds: Arc<crate::federation::client::NodeCredentials>,
    expiry: Family<CertLabel, Gauge<f64, AtomicU64>>,
    reloads: Family<ReloadLabel, Counter>,
}

/// The node's metrics.
pub struct NodeMetrics {
    /// Unprefixed root: the node's own metrics live in a `fedmesh_node`
    /// sub-registry, the credentials' under the coordinator's names.
    registry: Registry,
    agent: SharedAgent,
    sources: Arc<SourceCounters>,
    events: Counter,
    windows: Counter,
    scored: Counter,
    anomalous: Counter,
    alerts: Counter,
    incidents_opened: Family<SeverityLabel, Counter>,
    incidents_closed: Family<SeverityLabel, Counter>,
    incidents_open: Gauge,
    bad_scores: Counter,
    container_restarts: Counter,
    rounds: Counter,
    parse_errors: Family<Source, Counter>,
    version: Gauge,
    threshold: Gauge<f64, AtomicU64>,
    train_loss: Gauge<f64, AtomicU64>,
    buffered: Gauge,
    detector_version: Gauge,
    held_back: Gauge,
    models_refused: Counter,
    models_held_back: Counter,
    incident_store_errors: Counter,
    rule_hits: Option<(
        Arc<crate::detection::rules::RuleCounters>,
        Family<RuleLabel, Counter>,
    )>,
    credentials: Option<CredentialMetrics>,
}

impl NodeMetrics {
    /// Registers the metrics of `agent`.
    pub fn new(agent: SharedAgent, sources: Arc<SourceCounters>) -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("fedmesh_node");
        let m = Self {
            registry: Registry::default(),
            agent,
            sources,
            events: Counter::default(),
            windows: Counter::default(),
            scored: Counter::default(),
            anomalous: Counter::default(),
            alerts: Counter::default(),
            incidents_opened: Family::default(),
            incidents_closed: Family::default(),
            incidents_open: Gauge::default(),
            bad_scores: Counter::default(),
            container_restarts: Counter::default(),
            rounds: Counter::default(),
            parse_errors: Family::default(),
            version: Gauge::default(),
            threshold: Gauge::default(),
            train_loss: Gauge::default(),
            buffered: Gauge::default(),
            detector_version: Gauge::default(),
            held_back: Gauge::default(),
            models_refused: Counter::default(),
            models_held_back: Counter::default(),
            incident_store_errors: Counter::default(),
            rule_hits: None,
            credentials: None,
        };
        registry.register(
            "events_ingested",
            "Telemetry events ingested",
            m.events.clone(),
        );
        registry.register("windows", "Per-container windows closed", m.windows.clone());
        registry.register(
            "windows_scored",
            "Windows scored by a model",
            m.scored.clone(),
        );
        registry.register(
            "anomalous_windows",
            "Scored windows above the threshold (each is evidence, not an alert)",
            m.anomalous.clone(),
        );
        registry.register(
            "alerts",
            "Incident records emitted (open, update and close)",
            m.alerts.clone(),
        );
        registry.register(
            "incidents_opened",
            "Incidents opened, by severity at opening",
            m.incidents_opened.clone(),
        );
        registry.register(
            "incidents_closed",
            "Incidents closed, by final severity",
            m.incidents_closed.clone(),
        );
        registry.register(
            "incidents_open",
            "Incidents open now",
            m.incidents_open.clone(),
        );
        registry.register(
            "bad_scores",
            "Windows whose score or threshold was not a finite non-negative number (treated as unscored)",
            m.bad_scores.clone(),
        );
        registry.register(
            "container_restarts",
            "Containers started anew under the same id (their CPU counter went back); each begins its start-up again",
            m.container_restarts.clone(),
        );
        registry.register(
            "rounds_trained",
            "Federated rounds this node trained for",
            m.rounds.clone(),
        );
        registry.register(
            "parse_errors",
            "Telemetry input skipped as malformed, per source",
            m.parse_errors.clone(),
        );
        registry.register(
            "model_version",
            "Installed global model version (-1: none)",
            m.version.clone(),
        );
        registry.register(
            "threshold",
            "Calibrated anomaly threshold",
            m.threshold.clone(),
        );
        registry.register(
            "train_loss",
            "Local training loss of the last update sent",
            m.train_loss.clone(),
        );
        registry.register(
            "buffered_windows",
            "Benign windows buffered for training",
            m.buffered.clone(),
        );
        registry.register(
            "detector_version",
            "Global model version detecting (-1: none or a local model); below model_version while a new version is held back",
            m.detector_version.clone(),
        );
        registry.register(
            "model_held_back",
            "1 while the newest global model is held back as far worse on this node's benign windows",
            m.held_back.clone(),
        );
        registry.register(
            "models_refused",
            "Signed global models refused as not finite",
            m.models_refused.clone(),
        );
        registry.register(
            "models_held_back",
            "Global models held back as far worse on this node's benign windows",
            m.models_held_back.clone(),
        );
        registry.register(
            "incident_store_errors",
            "Windows whose incident state could not be stored (a restart would page again for open incidents)",
            m.incident_store_errors.clone(),
        );
        Self {
            registry: root,
            ..m
        }
    }

    /// Also exposes `ops`: `rule_hits_total{rule}`, `webhook_delivered_total`,
    /// `webhook_failed_total` (attempts), `webhook_rejected_total`,
    /// `webhook_dropped_total` (lost from a full outbox),
    /// `webhook_outbox_depth`, `docker_errors_total` and
    /// `responses_total{action,mode,result}`.
    pub fn with_ops(mut self, ops: &OpsMetrics) -> Self {
        let r = self.registry.sub_registry_with_prefix("fedmesh_node");
        let hits = Family::<RuleLabel, Counter>::default();
        r.register(
            "rule_hits",
            "Rule-layer hits (matching events), per rule",
            hits.clone(),
        );
        r.register(
            "webhook_delivered",
            "Alerts delivered to the webhook (2xx)",
            ops.webhook.delivered.clone(),
        );
        r.register(
            "webhook_failed",
            "Failed webhook delivery attempts (retried)",
            ops.webhook.failed.clone(),
        );
        r.register(
            "webhook_rejected",
            "Alerts refused by the webhook with a permanent 4xx (removed)",
            ops.webhook.rejected.clone(),
        );
        r.register(
            "webhook_dropped",
            "Alerts lost because the webhook outbox was full (oldest dropped)",
            ops.webhook.dropped.clone(),
        );
        r.register(
            "webhook_outbox_depth",
            "Alerts pending in the webhook outbox",
            ops.webhook.depth.clone(),
        );
        r.register(
            "docker_errors",
            "Failed Docker Engine API calls",
            ops.docker_errors.clone(),
        );
        r.register(
            "responses",
            "Response actions by action, mode and result",
            ops.responses.clone(),
        );
        self.rule_hits = Some((ops.rule_hits.clone(), hits));
        self
    }

    /// Also exposes the TLS credentials of a node with a coordinator, under
    /// the coordinator's names: `fedmesh_certificate_expiry_seconds{certificate}`
    /// (seconds left on the node's certificate, `"node"`, and on the mesh
    /// CA in use, `"ca"`; negative once expired) and
    /// `fedmesh_credential_reloads_total{result="ok"|"refused"}`.
    pub fn with_credentials(
        mut self,
        creds: Arc<crate::federation::client::NodeCredentials>,
    ) -> Self {
        let expiry = Family::<CertLabel, Gauge<f64, AtomicU64>>::default();
        let reloads = Family::<ReloadLabel, Counter>::default();
        // The registry's prefix is `fedmesh_node`; these two keep the
        // coordinator's names, so dashboards and alerts serve both.
        let shared = self.registry.sub_registry_with_prefix("fedmesh");
        shared.register(
            "certificate_expiry_seconds",
            "Seconds until this node's certificate (certificate=\"node\") or the mesh CA (\"ca\") expires",
            expiry.clone(),
        );
        shared.register(
            "credential_reloads",
            "Reloads of the TLS credentials and revocation list (result=\"ok\" or \"refused\")",
            reloads.clone(),
        );
        self.credentials = Some(CredentialMetrics {
            creds,
            expiry,
            reloads,
        });
        self
    }

    /// Prometheus text exposition of the current state.
    pub fn encode(&self) -> String {
        self.encode_at(time::OffsetDateTime::now_utc())
    }

    /// [`NodeMetrics::encode`] with certificate expiry counted from `now`.
    pub fn encode_at(&self, now: time::OffsetDateTime) -> String {
        {
            let a = lock(&self.agent);
            let st = a.stats();
            self.events.inner().store(st.events, Ordering::Relaxed);
            self.windows.inner().store(st.windows, Ordering::Relaxed);
            self.scored.inner().store(st.scored, Ordering::Relaxed);
            self.alerts.inner().store(st.alerts, Ordering::Relaxed);
            self.anomalous
                .inner()
                .store(st.anomalous_windows, Ordering::Relaxed);
            let inc = a.incident_stats();
            for sev in [
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ] {
                let label = SeverityLabel {
                    severity: sev.as_str(),
                };
                let i = severity_index(sev);
                self.incidents_opened
                    .get_or_create(&label)
                    .inner()
                    .store(inc.opened[i], Ordering::Relaxed);
                self.incidents_closed
                    .get_or_create(&label)
                    .inner()
                    .store(inc.closed[i], Ordering::Relaxed);
            }
            self.incidents_open.set(a.open_incidents() as i64);
            self.bad_scores
                .inner()
                .store(inc.bad_scores, Ordering::Relaxed);
            self.container_restarts
                .inner()
                .store(inc.restarts, Ordering::Relaxed);
            self.rounds
                .inner()
                .store(a.trained_rounds(), Ordering::Relaxed);
            self.version.set(
                a.global_version()
                    .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
            );
            self.threshold
                .set(a.detector().map_or(f64::NAN, |d| f64::from(d.threshold)));
            self.train_loss
                .set(a.last_train_loss().map_or(f64::NAN, f64::from));
            self.buffered.set(a.buffered() as i64);
            self.detector_version.set(
                a.detector_version()
                    .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
            );
            self.held_back.set(i64::from(a.held_back().is_some()));
            self.models_refused
                .inner()
                .store(st.models_refused, Ordering::Relaxed);
            self.models_held_back
                .inner()
                .store(st.models_held_back, Ordering::Relaxed);
            self.incident_store_errors
                .inner()
                .store(st.incident_store_errors, Ordering::Relaxed);
        }
        for (i, name) in SOURCE_NAMES.iter().enumerate() {
            let v = self.sources.parse_errors[i].load(Ordering::Relaxed);
            self.parse_errors
                .get_or_create(&Source { source: name })
                .inner()
                .store(v, Ordering::Relaxed);
        }
        if let Some((counts, family)) = &self.rule_hits {
            for (rule, n) in counts.snapshot() {
                family
                    .get_or_create(&RuleLabel { rule })
                    .inner()
                    .store(n, Ordering::Relaxed);
            }
        }
        if let Some(c) = &self.credentials {
            for (certificate, seconds) in c.creds.expiry_seconds(now) {
                c.expiry
                    .get_or_create(&CertLabel { certificate })
                    .set(seconds);
            }
            let (ok, refused) = c.creds.reloads();
            for (result, n) in [("ok", ok), ("refused", refused)] {
                c.reloads
                    .get_or_create(&ReloadLabel { result })
                    .inner()
                    .store(n, Ordering::Relaxed);
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics` and `/healthz` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<NodeMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Agent, AgentSettings};
    use std::sync::Mutex;

    #[test]
    fn exposes_agent_counters_and_parse_errors() {
        let agent = Agent::new(
            AgentSettings {
                tenant: "t".into(),
                node: "n".into(),
                detector: Default::default(),
                incidents: Default::default(),
                seed: 0,
            },
            None,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let agent = Arc::new(Mutex::new(agent));
        let mut src = crate::sim::synthetic::SyntheticSource::new(
            1,
            &[("w".into(), crate::sim::synthetic::Profile::Web)],
            10_000,
        );
        for _ in 0..3 {
            let (w, evs) = src.next_window();
            let mut a = lock(&agent);
            for e in &evs {
                a.observe(e);
            }
            a.close_window((w + 1) * 10_000, &[]).unwrap();
        }
        // A rule hit opens a (critical) incident.
        let hit = crate::detection::rules::RuleHit {
            rule: &crate::detection::rules::RULES[0],
            container: crate::telemetry::ContainerId("w".into()),
            ts_ms: 35_000,
            event: "setuid".into(),
            count: 1,
        };
        let records = lock(&agent).close_window(40_000, &[hit]).unwrap();
        assert_eq!(records.len(), 1);
        let counters = Arc::new(SourceCounters::default());
        counters.parse_errors[source_index("falco")].fetch_add(5, Ordering::Relaxed);
        let m = NodeMetrics::new(agent.clone(), counters);
        let text = m.encode();
        let stats = lock(&agent).stats();
        let (events, windows) = (stats.events, stats.windows);
        assert!(events > 0 && windows == 3);
        for needle in [
            format!("fedmesh_node_events_ingested_total {events}"),
            format!("fedmesh_node_windows_total {windows}"),
            "fedmesh_node_parse_errors_total{source=\"falco\"} 5".to_string(),
            "fedmesh_node_parse_errors_total{source=\"cgroup\"} 0".to_string(),
            "fedmesh_node_model_version -1".to_string(),
            "fedmesh_node_alerts_total 1".to_string(),
            "fedmesh_node_incidents_opened_total{severity=\"critical\"} 1".to_string(),
            "fedmesh_node_incidents_opened_total{severity=\"medium\"} 0".to_string(),
            "fedmesh_node_incidents_closed_total{severity=\"critical\"} 0".to_string(),
            "fedmesh_node_incidents_open 1".to_string(),
            "fedmesh_node_bad_scores_total 0".to_string(),
            "fedmesh_node_container_restarts_total 0".to_string(),
        ] {
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
    }

    /// A node with a coordinator exposes its certificate's and CA's time
    /// left under the coordinator's metric name, and the reloads.
    #[test]
    fn exposes_certificate_expiry_under_the_coordinators_name() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap();
        let ca = fedmesh_crypto::MeshCa::generate("CA", now, 365).unwrap();
        let cert = ca
            .issue_node(&"t".parse().unwrap(), &"n".parse().unwrap(), now, 3)
            .unwrap();
        let creds = crate::federation::client::NodeCredentials::new(
            &fedmesh_crypto::TlsMaterial {
                ca_pem: ca.cert_pem().to_string(),
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
                crl_pem: None,
            },
            7,
            now,
        )
        .unwrap();
        let agent = Agent::new(
            AgentSettings {
                tenant: "t".into(),
                node: "n".into(),
                detector: Default::default(),
                incidents: Default::default(),
                seed: 0,
            },
            None,
            None,
            now,
        )
        .unwrap();
        let m = NodeMetrics::new(
            Arc::new(Mutex::new(agent)),
            Arc::new(SourceCounters::default()),
        )
        .with_ops(&OpsMetrics::default())
        .with_credentials(Arc::new(creds));
        let text = m.encode_at(now + time::Duration::days(1));
        for needle in [
            "# TYPE fedmesh_certificate_expiry_seconds gauge",
            "fedmesh_certificate_expiry_seconds{certificate=\"node\"} 172800.0",
            "fedmesh_certificate_expiry_seconds{certificate=\"ca\"} 31449600.0",
            "fedmesh_credential_reloads_total{result=\"ok\"} 0",
            "fedmesh_credential_reloads_total{result=\"refused\"} 0",
            "fedmesh_node_model_version -1",
            "fedmesh_node_docker_errors_total 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(!text.contains("fedmesh_node_certificate"));
    }

    #[test]
    fn exposes_rule_webhook_docker_and_response_counters() {
        let agent = Agent::new(
            AgentSettings {
                tenant: "t".into(),
                node: "n".into(),
                detector: Default::default(),
                incidents: Default::default(),
                seed: 0,
            },
            None,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let agent = Arc::new(Mutex::new(agent));
        let ops = OpsMetrics::default();
        let rules = crate::detection::rules::RuleEngine::new(&Default::default())
            .with_counters(ops.rule_hits.clone());
        let ev = crate::telemetry::Event::Exec {
            container: crate::telemetry::ContainerId("c".into()),
            ts_ms: 1,
            binary: "/tmp/xmrig".into(),
        };
        rules.evaluate(&[ev.clone(), ev]);
        ops.webhook.delivered.inc();
        ops.webhook.failed.inc_by(3);
        ops.webhook.dropped.inc();
        ops.webhook.depth.set(7);
        ops.docker_errors.inc_by(2);
        ops.responses
            .get_or_create(&crate::alerting::response::ResponseLabels {
                action: "pause",
                mode: "dry-run",
                result: "would",
            })
            .inc();
        let m = NodeMetrics::new(agent, Arc::new(SourceCounters::default())).with_ops(&ops);
        let text = m.encode();
        for needle in [
            "fedmesh_node_rule_hits_total{rule=\"exec_from_tmpfs\"} 2",
            "fedmesh_node_rule_hits_total{rule=\"miner_binary\"} 2",
            "fedmesh_node_rule_hits_total{rule=\"setuid_root\"} 0",
            "fedmesh_node_webhook_delivered_total 1",
            "fedmesh_node_webhook_failed_total 3",
            "fedmesh_node_webhook_rejected_total 0",
            "fedmesh_node_webhook_dropped_total 1",
            "fedmesh_node_webhook_outbox_depth 7",
            "fedmesh_node_docker_errors_total 2",
            "fedmesh_node_responses_total{action=\"pause\",mode=\"dry-run\",result=\"would\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
