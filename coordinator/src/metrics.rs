//! Prometheus metrics of the coordinator and the HTTP endpoint that serves
//! them (`/metrics`), a live federation summary (`/status`, JSON) and a
//! liveness probe (`/healthz`). Labels are bounded: tenant names come from
//! the configuration and refusal reasons from a fixed set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::federation::{FedError, Federation, RoundStatus, RoundSummary};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    tenant: String,
    reason: &'static str,
}

fn round_histogram() -> Histogram {
    // 5 ms .. ~80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// All coordinator metrics.
pub struct Metrics {
    registry: Registry,
    committed: Family<Tenant, Counter>,
    aborted: Family<Tenant, Counter>,
    accepted: Family<Tenant, Counter>,
    refused: Family<Refusal, Counter>,
    bytes: Family<Tenant, Counter>,
    duration: Family<Tenant, Histogram, fn() -> Histogram>,
    participants: Family<Tenant, Gauge>,
    dropped: Family<Tenant, Gauge>,
    version: Family<Tenant, Gauge>,
    connected: Family<Tenant, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The bounded set of refusal reasons used as a label.
pub fn refusal_reason(e: &FedError) -> &'static str {
    match e {
        FedError::NoOpenRound { .. } => "no_open_round",
        FedError::WrongRound { .. } => "wrong_round",
        FedError::StaleVersion { .. } => "stale_version",
        FedError::NotSelected { .. } => "not_selected",
        FedError::Duplicate { .. } => "duplicate",
        FedError::Invalid(_) => "invalid",
        FedError::UnknownVersion(_) => "unknown_version",
        FedError::Store(_) | FedError::Aggregate(_) | FedError::Corrupt(_) => "internal",
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fedmesh");
        let committed = Family::<Tenant, Counter>::default();
        let aborted = Family::<Tenant, Counter>::default();
        let accepted = Family::<Tenant, Counter>::default();
        let refused = Family::<Refusal, Counter>::default();
        let bytes = Family::<Tenant, Counter>::default();
        let duration = Family::<Tenant, Histogram, fn() -> Histogram>::new_with_constructor(
            round_histogram as fn() -> Histogram,
        );
        let participants = Family::<Tenant, Gauge>::default();
        let dropped = Family::<Tenant, Gauge>::default();
        let version = Family::<Tenant, Gauge>::default();
        let connected = Family::<Tenant, Gauge>::default();
        registry.register("rounds_committed", "Rounds committed", committed.clone());
        registry.register(
            "rounds_aborted",
            "Rounds aborted (quorum missed)",
            aborted.clone(),
        );
        registry.register("updates_accepted", "Updates accepted", accepted.clone());
        registry.register(
            "updates_refused",
            "Updates refused, by reason",
            refused.clone(),
        );
        registry.register(
            "update_bytes",
            "Bytes of accepted update messages",
            bytes.clone(),
        );
        registry.register(
            "round_duration_seconds",
            "Time from round open to commit",
            duration.clone(),
        );
        registry.register(
            "round_participants",
            "Updates aggregated in the last committed round",
            participants.clone(),
        );
        registry.register(
            "round_dropped",
            "Selected nodes without an update in the last committed round",
            dropped.clone(),
        );
        registry.register(
            "model_version",
            "Latest committed global version",
            version.clone(),
        );
        registry.register(
            "connected_nodes",
            "Nodes holding a round stream open",
            connected.clone(),
        );
        Self {
            registry,
            committed,
            aborted,
            accepted,
            refused,
            bytes,
            duration,
            participants,
            dropped,
            version,
            connected,
        }
    }

    fn t(tenant: &str) -> Tenant {
        Tenant {
            tenant: tenant.to_string(),
        }
    }

    /// A committed round.
    pub fn committed(&self, s: &RoundSummary) {
        let t = Self::t(&s.tenant);
        self.committed.get_or_create(&t).inc();
        self.duration
            .get_or_create(&t)
            .observe(s.duration.as_secs_f64());
        self.participants
            .get_or_create(&t)
            .set(s.participants as i64);
        self.dropped
            .get_or_create(&t)
            .set(s.selected.saturating_sub(s.participants) as i64);
        self.version
            .get_or_create(&t)
            .set(i64::try_from(s.version).unwrap_or(i64::MAX));
    }

    /// An aborted round.
    pub fn aborted(&self, tenant: &str) {
        self.aborted.get_or_create(&Self::t(tenant)).inc();
    }

    /// An accepted update.
    pub fn accepted(&self, tenant: &str, bytes: u64) {
        let t = Self::t(tenant);
        self.accepted.get_or_create(&t).inc();
        self.bytes.get_or_create(&t).inc_by(bytes);
    }

    /// A refused update.
    pub fn refused(&self, tenant: &str, e: &FedError) {
        self.refused
            .get_or_create(&Refusal {
                tenant: tenant.to_string(),
                reason: refusal_reason(e),
            })
            .inc();
    }

    /// Current version and connected nodes.
    pub fn observe_state(&self, tenant: &str, version: u64, connected: usize) {
        let t = Self::t(tenant);
        self.version
            .get_or_create(&t)
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.connected.get_or_create(&t).set(connected as i64);
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Live summary of one federation for `/status`.
pub fn status_json(fed: &Federation) -> serde_json::Value {
    let status = match fed.status() {
        RoundStatus::Idle { version, reason } => {
            serde_json::json!({"state": "idle", "version": version, "reason": reason})
        }
        RoundStatus::Open(o) => serde_json::json!({
            "state": "open", "round": o.round, "base_version": o.base_version,
            "selected": o.selected.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "deadline_unix_ms": o.deadline_unix_ms,
        }),
        RoundStatus::Committed { round, version } => {
            serde_json::json!({"state": "committed", "round": round, "version": version})
        }
        RoundStatus::Aborted { round, reason } => {
            serde_json::json!({"state": "aborted", "round": round, "reason": reason})
        }
    };
    serde_json::json!({
        "tenant": fed.tenant().to_string(),
        "version": fed.version(),
        "connected": fed.connected().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "round": status,
    })
}

/// Serves `/metrics`, `/status` and `/healthz` until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    feds: BTreeMap<String, Arc<Federation>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let feds = Arc::new(feds);
    let m = metrics.clone();
    let f2 = feds.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                let feds = f2.clone();
                async move {
                    for (t, f) in feds.iter() {
                        m.observe_state(t, f.version(), f.connected().len());
                    }
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
        .route(
            "/status",
            get(move || {
                let feds = feds.clone();
                async move {
                    axum::Json(serde_json::Value::Array(
                        feds.values().map(|f| status_json(f)).collect(),
                    ))
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Address helper for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exposition_carries_tenant_labels_and_reasons() {
        let m = Metrics::new();
        m.committed(&RoundSummary {
            tenant: "acme".into(),
            round: 3,
            version: 2,
            participants: 4,
            selected: 5,
            mean_train_loss: 0.1,
            bytes_received: 1000,
            duration: Duration::from_millis(40),
        });
        m.aborted("acme");
        m.accepted("acme", 250);
        m.refused(
            "acme",
            &FedError::Duplicate {
                node: "n1".into(),
                round: 3,
            },
        );
        m.refused("beta", &FedError::Invalid("nan".into()));
        m.observe_state("acme", 2, 4);
        let text = m.encode();
        for needle in [
            "fedmesh_rounds_committed_total{tenant=\"acme\"} 1",
            "fedmesh_rounds_aborted_total{tenant=\"acme\"} 1",
            "fedmesh_updates_accepted_total{tenant=\"acme\"} 1",
            "fedmesh_update_bytes_total{tenant=\"acme\"} 250",
            "fedmesh_updates_refused_total{tenant=\"acme\",reason=\"duplicate\"} 1",
            "fedmesh_updates_refused_total{tenant=\"beta\",reason=\"invalid\"} 1",
            "fedmesh_round_participants{tenant=\"acme\"} 4",
            "fedmesh_round_dropped{tenant=\"acme\"} 1",
            "fedmesh_model_version{tenant=\"acme\"} 2",
            "fedmesh_connected_nodes{tenant=\"acme\"} 4",
            "fedmesh_round_duration_seconds_count{tenant=\"acme\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
