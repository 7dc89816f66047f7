//! The coordinator's Prometheus registry: every metric and the calls that
//! move them. Served by [`crate::http`]. Labels are bounded: tenant names
//! come from the configuration and refusal reasons from closed sets
//! ([`FedError::label`], [`crate::bounds::InvalidReason::LABELS`],
//! [`HandshakeRefusal`], [`crate::bounds::CommitRefusal::LABELS`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{FedError, HandshakeRefusal};
use crate::round::RoundSummary;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReputationLabel {
    tenant: String,
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    tenant: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabel {
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
    excluded: Family<Tenant, Gauge>,
    quarantined: Family<Tenant, Gauge>,
    decisions: Family<ReputationLabel, Counter>,
    commits_refused: Family<Refusal, Counter>,
    buckets_rejected: Family<Tenant, Gauge>,
    buckets_dropped: Family<Tenant, Gauge>,
    handshakes_refused: Family<HandshakeLabel, Counter>,
    dp_epsilon: Family<Tenant, Gauge<f64, std::sync::atomic::AtomicU64>>,
    cert_expiry: Family<CertLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    credential_reloads: Family<ReloadLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub use crate::error::REFUSAL_LABELS;

/// The bounded set of refusal reasons used as a label: one of
/// [`REFUSAL_LABELS`] or [`crate::bounds::InvalidReason::LABELS`].
pub fn refusal_reason(e: &FedError) -> &'static str {
    e.label()
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
        let excluded = Family::<Tenant, Gauge>::default();
        let quarantined = Family::<Tenant, Gauge>::default();
        let decisions = Family::<ReputationLabel, Counter>::default();
        let commits_refused = Family::<Refusal, Counter>::default();
        registry.register(
            "commits_refused",
            "Rounds aborted because the aggregate was not a usable model (not finite or out of bounds), by reason",
            commits_refused.clone(),
        );
        let buckets_rejected = Family::<Tenant, Gauge>::default();
        let buckets_dropped = Family::<Tenant, Gauge>::default();
        let dp_epsilon = Family::<Tenant, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let cert_expiry = Family::<CertLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let credential_reloads = Family::<ReloadLabel, Counter>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the coordinator's certificate (certificate=\"coordinator\") or the mesh CA (\"ca\") expires",
            cert_expiry.clone(),
        );
        registry.register(
            "credential_reloads",
            "Reloads of the TLS credentials and revocation list (result=\"ok\" or \"refused\")",
            credential_reloads.clone(),
        );
        registry.register(
            "round_buckets_rejected",
            "Secure-aggregation buckets refused by the norm gate in the last committed round",
            buckets_rejected.clone(),
        );
        registry.register(
            "round_buckets_dropped",
            "Secure-aggregation buckets that lost too many members in the last committed round",
            buckets_dropped.clone(),
        );
        registry.register(
            "dp_epsilon",
            "Cumulative epsilon of distributed DP (for the tenant's dp_delta) after the last version",
            dp_epsilon.clone(),
        );
        registry.register(
            "round_excluded",
            "Updates left out by the aggregation rule in the last committed round",
            excluded.clone(),
        );
        registry.register(
            "quarantined_nodes",
            "Nodes whose updates are currently ignored",
            quarantined.clone(),
        );
        registry.register(
            "reputation_decisions",
            "Reputation decisions (quarantined, released, probation_restarted)",
            decisions.clone(),
        );
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
        let handshakes_refused = Family::<HandshakeLabel, Counter>::default();
        registry.register(
            "handshakes_refused",
            "Connections closed before gRPC, by reason (per_address_limit, timeout, tls, revoked, no_identity)",
            handshakes_refused.clone(),
        );
        Self {
            handshakes_refused,
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
            excluded,
            quarantined,
            decisions,
            commits_refused,
            buckets_rejected,
            buckets_dropped,
            dp_epsilon,
            cert_expiry,
            credential_reloads,
        }
    }

    /// Seconds left on a certificate (`"coordinator"` or `"ca"`).
    pub fn certificate_expiry(&self, certificate: &'static str, seconds: f64) {
        self.cert_expiry
            .get_or_create(&CertLabel { certificate })
            .set(seconds);
    }

    /// One reload of the TLS credentials, applied or refused.
    pub fn credentials_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.credential_reloads
            .get_or_create(&ReloadLabel { result })
            .inc();
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
        self.excluded.get_or_create(&t).set(s.excluded as i64);
        self.quarantined.get_or_create(&t).set(s.quarantined as i64);
        if let Some(sec) = &s.secure {
            self.buckets_rejected
                .get_or_create(&t)
                .set(sec.rejected as i64);
            self.buckets_dropped
                .get_or_create(&t)
                .set(sec.dropped as i64);
            if let Some(e) = sec.epsilon {
                self.dp_epsilon.get_or_create(&t).set(e);
            }
        }
    }

    /// A connection closed before it reached gRPC.
    pub fn handshake_refused(&self, reason: HandshakeRefusal) {
        self.handshakes_refused
            .get_or_create(&HandshakeLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Connections closed so far for `reason`.
    pub fn handshakes_refused(&self, reason: HandshakeRefusal) -> u64 {
        self.handshakes_refused
            .get_or_create(&HandshakeLabel {
                reason: reason.label(),
            })
            .get()
    }

    /// A reputation decision (`action` from a fixed set).
    pub fn reputation_decision(&self, tenant: &str, action: &'static str) {
        self.decisions
            .get_or_create(&ReputationLabel {
                tenant: tenant.to_string(),
                action,
            })
            .inc();
    }

    /// A commit refused by the guard (`reason` from
    /// [`crate::bounds::CommitRefusal::LABELS`]).
    pub fn commit_refused(&self, tenant: &str, reason: &'static str) {
        self.commits_refused
            .get_or_create(&Refusal {
                tenant: tenant.to_string(),
                reason,
            })
            .inc();
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

    /// An accepted secure-aggregation message (`update`: a masked input).
    pub fn secagg_accepted(&self, tenant: &str, bytes: u64, update: bool) {
        let t = Self::t(tenant);
        if update {
            self.accepted.get_or_create(&t).inc();
        }
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

    /// Current version, connected and quarantined nodes.
    pub fn observe_state(&self, tenant: &str, version: u64, connected: usize, quarantined: usize) {
        let t = Self::t(tenant);
        self.quarantined.get_or_create(&t).set(quarantined as i64);
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
            excluded: 1,
            quarantined: 2,
            duration: Duration::from_millis(40),
            secure: Some(crate::round::SecureSummary {
                bucket_size: 3,
                buckets: 2,
                dropped: 1,
                rejected: 1,
                excluded: 0,
                epsilon: Some(2.5),
            }),
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
        m.refused(
            "beta",
            &FedError::Refused(crate::bounds::InvalidReason::secure_protocol(
                crate::bounds::SecureViolation::Decode,
                "nan",
            )),
        );
        m.refused(
            "beta",
            &FedError::Refused(crate::bounds::InvalidReason::NumSamples { got: 0, max: 1 }),
        );
        m.commit_refused("beta", "non_finite_params");
        m.reputation_decision("acme", "quarantined");
        m.observe_state("acme", 2, 4, 1);
        let text = m.encode();
        for needle in [
            "fedmesh_rounds_committed_total{tenant=\"acme\"} 1",
            "fedmesh_rounds_aborted_total{tenant=\"acme\"} 1",
            "fedmesh_updates_accepted_total{tenant=\"acme\"} 1",
            "fedmesh_update_bytes_total{tenant=\"acme\"} 250",
            "fedmesh_updates_refused_total{tenant=\"acme\",reason=\"duplicate\"} 1",
            "fedmesh_updates_refused_total{tenant=\"beta\",reason=\"invalid_secure_message\"} 1",
            "fedmesh_updates_refused_total{tenant=\"beta\",reason=\"invalid_num_samples\"} 1",
            "fedmesh_commits_refused_total{tenant=\"beta\",reason=\"non_finite_params\"} 1",
            "fedmesh_round_participants{tenant=\"acme\"} 4",
            "fedmesh_round_dropped{tenant=\"acme\"} 1",
            "fedmesh_model_version{tenant=\"acme\"} 2",
            "fedmesh_connected_nodes{tenant=\"acme\"} 4",
            "fedmesh_round_duration_seconds_count{tenant=\"acme\"} 1",
            "fedmesh_round_excluded{tenant=\"acme\"} 1",
            "fedmesh_quarantined_nodes{tenant=\"acme\"} 1",
            "fedmesh_reputation_decisions_total{tenant=\"acme\",action=\"quarantined\"} 1",
            "fedmesh_round_buckets_rejected{tenant=\"acme\"} 1",
            "fedmesh_round_buckets_dropped{tenant=\"acme\"} 1",
            "fedmesh_dp_epsilon{tenant=\"acme\"} 2.5",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
