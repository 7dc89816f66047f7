//! The alert record. Two kinds of alert share one record: a **model** alert
//! (a window scored above the calibrated threshold; it names the score, the
//! threshold and the top contributing features) and a **rule** alert (a
//! decisive rare event matched by [`crate::detection::rules`]; it names the
//! rule and the triggering event and is raised whatever the model says).
//! Every alert carries a deterministic [`Alert::id`] so receivers can drop
//! re-deliveries. Where alerts go: [`super::sink`], [`super::pipeline`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::detection::rules::RuleHit;
use crate::detection::severity::Severity;
use crate::ops::docker::ContainerInfo;

/// The rule behind a rule alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMatch {
    /// Rule id, e.g. `setuid_root`.
    pub id: String,
    /// What the rule detects.
    pub description: String,
    /// The (first) triggering event, in words.
    pub event: String,
    /// Events of this container that matched the rule in this window.
    pub count: u32,
}

/// What the response layer did about one alert. A response record is the
/// alert it answers with this field set and its own id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// Id of the alert acted on (or not).
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

/// One alert: which container, why (score against threshold with the top
/// contributing features, or the rule and its event), and how serious.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic id (hex): the same detection always gets the same id,
    /// so a receiver can deduplicate re-deliveries.
    #[serde(default)]
    pub id: String,
    /// Window end (model) or event time (rule), milliseconds (source clock).
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
    /// Severity.
    pub severity: Severity,
    /// Anomaly score (mean squared reconstruction error, scaled space);
    /// `None` for a rule alert.
    #[serde(default)]
    pub score: Option<f32>,
    /// Calibrated threshold in force; `None` for a rule alert.
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Global model version in force (`None` for a local bootstrap model or
    /// a rule alert).
    pub model_version: Option<u64>,
    /// Top contributing features with their reconstruction error (model
    /// alerts).
    #[serde(default)]
    pub top_features: Vec<(String, f32)>,
    /// The rule that fired (rule alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleMatch>,
    /// Set on a response record only: what was done about the alert
    /// `response.alert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseRecord>,
}

impl Alert {
    /// A model alert (its id is set).
    #[allow(clippy::too_many_arguments)]
    pub fn model(
        ts_ms: u64,
        tenant: &str,
        node: &str,
        container: &str,
        score: f32,
        threshold: f32,
        model_version: Option<u64>,
        top_features: Vec<(String, f32)>,
    ) -> Alert {
        let mut a = Alert {
            id: String::new(),
            ts_ms,
            tenant: tenant.to_string(),
            node: node.to_string(),
            container: container.to_string(),
            container_name: None,
            image: None,
            pod: None,
            namespace: None,
            severity: Severity::of_score(score, threshold),
            score: Some(score),
            threshold: Some(threshold),
            model_version,
            top_features,
            rule: None,
            response: None,
        };
        a.id = a.compute_id();
        a
    }

    /// A rule alert for one [`RuleHit`] (its id is set).
    pub fn rule(hit: &RuleHit, tenant: &str, node: &str) -> Alert {
        let mut a = Alert {
            id: String::new(),
            ts_ms: hit.ts_ms,
            tenant: tenant.to_string(),
            node: node.to_string(),
            container: hit.container.0.clone(),
            container_name: None,
            image: None,
            pod: None,
            namespace: None,
            severity: hit.rule.severity,
            score: None,
            threshold: None,
            model_version: None,
            top_features: Vec::new(),
            rule: Some(RuleMatch {
                id: hit.rule.id.to_string(),
                description: hit.rule.description.to_string(),
                event: hit.event.clone(),
                count: hit.count,
            }),
            response: None,
        };
        a.id = a.compute_id();
        a
    }

    /// The response record for this alert: the alert with `response` set
    /// and its own id.
    pub fn response_record(&self, record: ResponseRecord) -> Alert {
        let mut r = self.clone();
        r.response = Some(record);
        r.id = r.compute_id();
        r
    }

    /// SHA-256 over tenant, node, container, time and the rule id (or
    /// `model`), and for a response record the answered alert's id, the
    /// result and the time, first 16 bytes in hex.
    pub fn compute_id(&self) -> String {
        let mut h = Sha256::new();
        let source = self.rule.as_ref().map_or("model", |r| r.id.as_str());
        for part in [
            self.tenant.as_bytes(),
            self.node.as_bytes(),
            self.container.as_bytes(),
            &self.ts_ms.to_be_bytes(),
            source.as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        if let Some(r) = &self.response {
            for part in [
                b"response".as_slice(),
                r.alert.as_bytes(),
                r.result.as_bytes(),
                &r.at_unix_ms.to_be_bytes(),
            ] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
        hex::encode(&h.finalize()[..16])
    }

    /// Adds the container's name, image and pod labels.
    pub fn set_identity(&mut self, info: &ContainerInfo) {
        self.container_name = info.name.clone();
        self.image = info.image.clone();
        self.pod = info.pod.clone();
        self.namespace = info.namespace.clone();
    }
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
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinguish_sources() {
        let a = Alert::model(10, "t", "n", "c", 2.0, 1.0, Some(3), vec![]);
        let b = Alert::model(10, "t", "n", "c", 5.0, 1.0, Some(3), vec![]);
        assert_eq!(a.id, b.id, "same window, same container: same id");
        assert_eq!(a.id.len(), 32);
        let c = Alert::model(11, "t", "n", "c", 2.0, 1.0, Some(3), vec![]);
        assert_ne!(a.id, c.id);
        let mut r = a.clone();
        r.rule = Some(RuleMatch {
            id: "setuid_root".into(),
            description: String::new(),
            event: String::new(),
            count: 1,
        });
        assert_ne!(r.compute_id(), a.id);
        assert_eq!(a.severity, Severity::High);
        let low = Alert::model(10, "t", "n", "c", 1.5, 1.0, None, vec![]);
        assert_eq!(low.severity, Severity::Medium);
    }

    #[test]
    fn ignore_patterns_match_id_name_and_image() {
        let mut a = Alert::model(10, "t", "n", "3f2a9c000001", 2.0, 1.0, None, vec![]);
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
        let mut a = Alert::model(10, "t", "n", "c", 2.0, 1.0, None, vec![("cpu".into(), 0.5)]);
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
        assert!(text.contains("\"severity\":\"high\""), "{text}");
        let back: Alert = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a);
    }
}
