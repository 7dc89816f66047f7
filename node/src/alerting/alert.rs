//! The alert record: one record per state change of an **incident**
//! ([`crate::detection::incident`]). An incident of a container opens once
//! (`state = "open"`), may be updated while it lasts (`"update"`: its
//! severity rose, or a periodic summary) and closes once (`"close"`). Every
//! record carries the explanation so far: the peak score against the
//! threshold with the top contributing features, and the rules that fired.
//! `incident` is the same on every record of one incident; `id` is
//! deterministic per record, so receivers can drop re-deliveries. Where
//! records go: [`super::sink`], [`super::pipeline`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::detection::incident::{
    CloseReason, IncidentEvent, IncidentRule, IncidentState, OpenReason, UpdateReason,
};
use crate::detection::severity::Severity;
use crate::ops::docker::ContainerInfo;

/// A rule that fired inside the incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMatch {
    /// Rule id, e.g. `setuid_root`.
    pub id: String,
    /// The rule's severity.
    pub severity: Severity,
    /// What the rule detects.
    pub description: String,
    /// The first triggering event, in words.
    pub event: String,
    /// Time of the first hit, milliseconds (source clock).
    pub first_ms: u64,
    /// Matching events of this container so far in the incident.
    pub count: u32,
}

impl From<&IncidentRule> for RuleMatch {
    fn from(r: &IncidentRule) -> Self {
        Self {
            id: r.id.clone(),
            severity: r.severity,
            description: r.description.clone(),
            event: r.event.clone(),
            first_ms: r.first_ms,
            count: r.count,
        }
    }
}

/// What the response layer did about one incident record. A response
/// record is the incident record it answers with this field set and its
/// own id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// Id of the record acted on (or not).
    pub alert: String,
    /// `pause` or `disconnect`.
    pub action: String,
    /// `done`, `failed`, `would` (dry-run) or `refused`.
    pub result: String,
    /// Why it was refused (`learning`, `unresolved`, `allowlisted`,
    /// `warm_up`, `rate_limited`) or how it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Networks the container was disconnected from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// When it was decided (Unix ms, the node's clock).
    pub at_unix_ms: u64,
}

/// One record of an incident: which container, its state, why (peak score
/// against threshold with the top contributing features, rules that
/// fired), and how serious.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic id of this record (hex): the same record always gets
    /// the same id, so a receiver can deduplicate re-deliveries.
    #[serde(default)]
    pub id: String,
    /// Id of the incident (hex), the same on its open, update and close
    /// records.
    pub incident: String,
    /// `open`, `update` or `close`.
    pub state: IncidentState,
    /// Why an update: `escalated` (severity rose) or `periodic` (update
    /// records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateReason>,
    /// Time of this record, milliseconds (source clock): the opening time,
    /// the window of the update, or the closing time.
    pub ts_ms: u64,
    /// Tenant.
    pub tenant: String,
    /// Node.
    pub node: String,
    /// Container id.
    pub container: String,
    /// Container name (from the Docker Engine API) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Container image when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Kubernetes pod (`io.kubernetes.pod.name` label) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Kubernetes namespace (`io.kubernetes.pod.namespace` label) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Highest severity so far.
    pub severity: Severity,
    /// What opened it: `evidence` (model scores), `own_history` (a rise
    /// beyond the container's own recent windows) or `rule`.
    pub opened_by: OpenReason,
    /// When it opened.
    pub opened_ms: u64,
    /// Last window or rule hit that was part of it.
    pub last_seen_ms: u64,
    /// When it closed (close records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_ms: Option<u64>,
    /// Why it closed: `quiet` or `evicted` (close records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<CloseReason>,
    /// Windows of the container while the incident was open.
    pub windows: u32,
    /// Of those, windows scored above the threshold.
    pub anomalous_windows: u32,
    /// Peak anomaly score (mean squared reconstruction error, scaled
    /// space); `None` when no window was scored (rule-only incident).
    #[serde(default)]
    pub score: Option<f32>,
    /// Threshold the peak was judged against.
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Global model version in force (`None` for a local bootstrap model or
    /// no model).
    pub model_version: Option<u64>,
    /// Top contributing features of the peak window with their
    /// reconstruction error.
    #[serde(default)]
    pub top_features: Vec<(String, f32)>,
    /// Features that rose beyond the container's own recent windows when
    /// the incident opened, in the container's own standard deviations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rise: Vec<(String, f32)>,
    /// Rules that fired in the incident, first hit first.
    #[serde(default)]
    pub rules: Vec<RuleMatch>,
    /// Set on a response record only: what was done about the record
    /// `response.alert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseRecord>,
}

impl Alert {
    /// The record of one incident event (its ids are set).
    pub fn incident(
        ev: &IncidentEvent,
        tenant: &str,
        node: &str,
        model_version: Option<u64>,
    ) -> Alert {
        let inc = &ev.incident;
        let ts_ms = match ev.state {
            IncidentState::Open => inc.opened_ms,
            IncidentState::Update => inc.last_seen_ms,
            IncidentState::Close => inc.closed_ms.unwrap_or(inc.last_seen_ms),
        };
        let mut a = Alert {
            id: String::new(),
            incident: incident_id(tenant, node, &inc.container, inc.opened_ms),
            state: ev.state,
            update: ev.update,
            ts_ms,
            tenant: tenant.to_string(),
            node: node.to_string(),
            container: inc.container.clone(),
            container_name: None,
            image: None,
            pod: None,
            namespace: None,
            severity: inc.severity,
            opened_by: inc.opened_by,
            opened_ms: inc.opened_ms,
            last_seen_ms: inc.last_seen_ms,
            closed_ms: inc.closed_ms,
            close_reason: inc.close_reason,
            windows: inc.windows,
            anomalous_windows: inc.anomalous_windows,
            score: inc.peak.map(|p| p.0),
            threshold: inc.peak.map(|p| p.1),
            model_version,
            top_features: inc.top_features.clone(),
            rise: inc.rise.clone(),
            rules: inc.rules.iter().map(RuleMatch::from).collect(),
            response: None,
        };
        a.id = record_id(&a.incident, ev.state, inc.seq);
        a
    }

    /// The response record for this record: it with `response` set and its
    /// own id (over the answered id, the result and the time).
    pub fn response_record(&self, record: ResponseRecord) -> Alert {
        let mut r = self.clone();
        r.id = hash_parts(&[
            self.id.as_bytes(),
            b"response",
            record.result.as_bytes(),
            &record.at_unix_ms.to_be_bytes(),
        ]);
        r.response = Some(record);
        r
    }

    /// Whether this record goes to the response layer: an incident
    /// opening, or an update whose severity rose.
    pub fn opens_or_escalates(&self) -> bool {
        self.response.is_none()
            && (self.state == IncidentState::Open || self.update == Some(UpdateReason::Escalated))
    }

    /// Adds the container's name, image and pod labels.
    pub fn set_identity(&mut self, info: &ContainerInfo) {
        self.container_name = info.name.clone();
        self.image = info.image.clone();
        self.pod = info.pod.clone();
        self.namespace = info.namespace.clone();
    }
}

fn hash_parts(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..16])
}

/// SHA-256 over tenant, node, container, opening time and `incident`, first
/// 16 bytes in hex.
pub fn incident_id(tenant: &str, node: &str, container: &str, opened_ms: u64) -> String {
    hash_parts(&[
        tenant.as_bytes(),
        node.as_bytes(),
        container.as_bytes(),
        &opened_ms.to_be_bytes(),
        b"incident",
    ])
}

/// SHA-256 over the incident id, the state and the record's sequence
/// number within the incident, first 16 bytes in hex.
pub fn record_id(incident: &str, state: IncidentState, seq: u32) -> String {
    hash_parts(&[
        incident.as_bytes(),
        state.as_str().as_bytes(),
        &seq.to_be_bytes(),
    ])
}

/// Whether `value` matches `pattern` (exact, or a prefix ending in `*`).
fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == pattern,
    }
}

impl Alert {
    /// Whether any pattern names this alert's container (id, name without
    /// Docker's leading `/`, or image).
    pub fn is_ignored(&self, patterns: &[String]) -> bool {
        let name = self
            .container_name
            .as_deref()
            .map(|n| n.trim_start_matches('/'));
        patterns.iter().any(|p| {
            matches(p, &self.container)
                || name.is_some_and(|n| matches(p, n))
                || self.image.as_deref().is_some_and(|i| matches(p, i))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::detection::incident::Incident;

    /// An incident as the tracker reports it: opened at `ts_ms` by model
    /// evidence (`score` against threshold 1) or, with `rule`, by that rule.
    pub(crate) fn incident(
        container: &str,
        ts_ms: u64,
        score: f32,
        rule: Option<&str>,
    ) -> Incident {
        let rules: Vec<IncidentRule> = rule
            .map(|id| {
                let r = crate::detection::rules::RULES
                    .iter()
                    .find(|r| r.id == id)
                    .unwrap();
                IncidentRule {
                    id: id.into(),
                    severity: r.severity,
                    description: r.description.into(),
                    event: "event".into(),
                    first_ms: ts_ms,
                    count: 1,
                }
            })
            .into_iter()
            .collect();
        let model = (rule.is_none()).then(|| Severity::of_score(score, 1.0));
        Incident {
            container: container.into(),
            opened_ms: ts_ms,
            last_seen_ms: ts_ms,
            closed_ms: None,
            severity: rules.iter().map(|r| r.severity).chain(model).max().unwrap(),
            opened_by: if rule.is_some() {
                OpenReason::Rule
            } else {
                OpenReason::Evidence
            },
            close_reason: None,
            windows: u32::from(rule.is_none()),
            anomalous_windows: u32::from(rule.is_none()),
            peak: rule.is_none().then_some((score, 1.0)),
            top_features: vec![("cpu_usage".into(), score)],
            rise: Vec::new(),
            rules,
            evidence: 2.0,
            seq: 0,
        }
    }

    /// The open record of [`incident`].
    pub(crate) fn open(container: &str, ts_ms: u64, score: f32, rule: Option<&str>) -> Alert {
        let ev = IncidentEvent {
            state: IncidentState::Open,
            update: None,
            incident: incident(container, ts_ms, score, rule),
        };
        Alert::incident(&ev, "t", "n", Some(3))
    }

    #[test]
    fn ids_are_deterministic_and_distinguish_records() {
        let a = open("c", 10, 2.0, None);
        let b = open("c", 10, 5.0, None);
        assert_eq!(a.id, b.id, "same incident, same state: same id");
        assert_eq!(a.incident, b.incident);
        assert_eq!(a.id.len(), 32);
        assert_ne!(open("c", 11, 2.0, None).incident, a.incident);
        assert_ne!(open("d", 10, 2.0, None).incident, a.incident);
        // Later records of the same incident: same incident id, new ids.
        let mut inc = incident("c", 10, 2.0, None);
        inc.seq = 1;
        let up = Alert::incident(
            &IncidentEvent {
                state: IncidentState::Update,
                update: Some(UpdateReason::Periodic),
                incident: inc.clone(),
            },
            "t",
            "n",
            None,
        );
        inc.seq = 2;
        inc.closed_ms = Some(90);
        inc.close_reason = Some(CloseReason::Quiet);
        let close = Alert::incident(
            &IncidentEvent {
                state: IncidentState::Close,
                update: None,
                incident: inc,
            },
            "t",
            "n",
            None,
        );
        assert_eq!(
            (up.incident.as_str(), close.incident.as_str()),
            (a.incident.as_str(), a.incident.as_str())
        );
        assert!(a.id != up.id && up.id != close.id && a.id != close.id);
        assert_eq!((close.ts_ms, close.closed_ms), (90, Some(90)));
        assert!(a.opens_or_escalates() && !up.opens_or_escalates() && !close.opens_or_escalates());
        assert_eq!(a.severity, Severity::High);
        assert_eq!(open("c", 10, 1.5, None).severity, Severity::Medium);
        assert_eq!(
            open("c", 10, 0.0, Some("setuid_root")).severity,
            Severity::Critical
        );
    }

    #[test]
    fn ignore_patterns_match_id_name_and_image() {
        let mut a = open("3f2a9c000001", 10, 2.0, None);
        assert!(a.is_ignored(&["3f2a9c000001".into()]));
        assert!(!a.is_ignored(&["fedmesh-*".into()]), "no name known yet");
        a.set_identity(&ContainerInfo {
            id: "3f2a9c000001".into(),
            name: Some("/mesh_node-a_1".into()),
            image: Some("fedmesh-node:dev".into()),
            ..Default::default()
        });
        assert!(a.is_ignored(&["fedmesh-*".into()]));
        assert!(a.is_ignored(&["mesh_node-a_1".into()]));
        assert!(!a.is_ignored(&["fedmesh".into(), "web-*".into()]));
        assert!(!a.is_ignored(&[]));
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut a = open("c", 10, 0.0, Some("stratum_port"));
        a.set_identity(&ContainerInfo {
            id: "c".into(),
            name: Some("web".into()),
            image: Some("nginx:1".into()),
            pod: Some("web-0".into()),
            namespace: Some("prod".into()),
            networks: vec![],
            started_unix_ms: None,
        });
        let text = serde_json::to_string(&a).unwrap();
        for part in [
            "\"severity\":\"high\"",
            "\"state\":\"open\"",
            "\"opened_by\":\"rule\"",
            "\"id\":\"stratum_port\"",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        let back: Alert = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a);
    }
}
