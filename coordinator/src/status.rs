//! `/status`: one serde type, [`TenantStatus`], for what the coordinator
//! serves (built from a running [`Federation`]), what the `status` command
//! prints (fetched from `/status`, or read from a stopped coordinator's
//! store by [`offline_status`]) and what the simulations read. Depends on the federation; nothing
//! in the round path depends on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::federation::Federation;
use crate::reputation::NodeRecord;
use crate::round::RoundStatus;
use crate::store::{Store, StoreError};

/// One tenant's entry in `/status` (a JSON array of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    /// Tenant.
    pub tenant: String,
    /// Latest committed version (none in a store without a version).
    pub version: Option<u64>,
    /// The oldest version whose model body is kept.
    #[serde(default)]
    pub oldest_kept_version: u64,
    /// Nodes holding a round stream open.
    #[serde(default)]
    pub connected: Vec<String>,
    /// Nodes in quarantine.
    #[serde(default)]
    pub quarantined: Vec<String>,
    /// Reputation of every node seen.
    #[serde(default)]
    pub reputation: BTreeMap<String, NodeStatus>,
    /// The round's state.
    pub round: RoundState,
}

/// A node's reputation record as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// Log-likelihood ratio score.
    pub score: f64,
    /// Rounds with evidence.
    pub rounds: u64,
    /// Rounds flagged.
    pub flagged: u64,
    /// Attributable violations.
    pub violations: u64,
    /// Version at which the current quarantine began.
    pub quarantined_at: Option<u64>,
    /// Version from which the node is released.
    pub release_at: Option<u64>,
    /// Quarantines so far.
    pub offences: u32,
    /// Last reason the node was flagged or quarantined.
    pub last_reason: String,
}

impl From<&NodeRecord> for NodeStatus {
    fn from(r: &NodeRecord) -> Self {
        Self {
            score: r.score,
            rounds: r.rounds,
            flagged: r.flagged,
            violations: r.violations,
            quarantined_at: r.quarantined_at,
            release_at: r.release_at,
            offences: r.offences,
            last_reason: r.last_reason.clone(),
        }
    }
}

/// The round's state (`"state"` names the variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RoundState {
    /// No round open.
    Idle {
        /// Latest committed version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// A round is collecting updates.
    Open {
        /// Round.
        round: u64,
        /// Version participants train from.
        base_version: u64,
        /// Selected participants.
        #[serde(default)]
        selected: Vec<String>,
        /// Deadline, unix ms.
        #[serde(default)]
        deadline_unix_ms: i64,
    },
    /// A round committed a new version.
    Committed {
        /// Round.
        round: u64,
        /// New version.
        version: u64,
    },
    /// A round was aborted.
    Aborted {
        /// Round.
        round: u64,
        /// Why.
        reason: String,
    },
    /// The coordinator is not running (read from its store).
    Stopped {
        /// Round of the latest version.
        last_round: Option<u64>,
        /// The next round number.
        next_round: u64,
        /// Participants of the latest version.
        participants: Option<Vec<String>>,
        /// Nodes left out of the latest version, with the reason.
        excluded: Option<Vec<(String, String)>>,
    },
}

impl From<&RoundStatus> for RoundState {
    fn from(s: &RoundStatus) -> Self {
        match s {
            RoundStatus::Idle { version, reason } => RoundState::Idle {
                version: *version,
                reason: reason.clone(),
            },
            RoundStatus::Open(o) => RoundState::Open {
                round: o.round,
                base_version: o.base_version,
                selected: o.selected.iter().map(|n| n.to_string()).collect(),
                deadline_unix_ms: o.deadline_unix_ms,
            },
            RoundStatus::Committed { round, version } => RoundState::Committed {
                round: *round,
                version: *version,
            },
            RoundStatus::Aborted { round, reason } => RoundState::Aborted {
                round: *round,
                reason: reason.clone(),
            },
        }
    }
}

impl TenantStatus {
    /// The live status of a running federation.
    pub fn of(fed: &Federation) -> Self {
        Self {
            tenant: fed.tenant().to_string(),
            version: Some(fed.version()),
            oldest_kept_version: fed.oldest_kept_version(),
            connected: fed.connected().iter().map(|n| n.to_string()).collect(),
            quarantined: fed.quarantined().into_iter().collect(),
            reputation: fed
                .reputation()
                .iter()
                .map(|(n, r)| (n.clone(), NodeStatus::from(r)))
                .collect(),
            round: RoundState::from(&fed.status()),
        }
    }
}

/// Failures reading a stopped coordinator's status from its store.
#[derive(Debug, thiserror::Error)]
pub enum OfflineStatusError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored reputation state does not decode.
    #[error("stored reputation state of tenant {tenant}: {source}")]
    Reputation {
        /// Tenant.
        tenant: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// The same entries as `/status`, from a stopped coordinator's store: the
/// latest version and round, the next round number, the stored
/// reputation (quarantined = a quarantine in force), nobody connected.
pub fn offline_status(store: &Store) -> Result<Vec<TenantStatus>, OfflineStatusError> {
    let mut out = Vec::new();
    for t in store.tenants()? {
        let latest = store.latest_audit(&t)?;
        let reputation: BTreeMap<String, NodeStatus> = match store.reputation_state(&t)? {
            Some(b) => {
                serde_json::from_slice(&b).map_err(|source| OfflineStatusError::Reputation {
                    tenant: t.clone(),
                    source,
                })?
            }
            None => BTreeMap::new(),
        };
        let quarantined = reputation
            .iter()
            .filter(|(_, r)| r.quarantined_at.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        out.push(TenantStatus {
            version: latest.as_ref().map(|e| e.version),
            oldest_kept_version: store.pruned_below(&t)?,
            connected: Vec::new(),
            quarantined,
            reputation,
            round: RoundState::Stopped {
                last_round: latest.as_ref().map(|e| e.round),
                next_round: store.next_round(&t)?,
                participants: latest.as_ref().map(|e| e.participants.clone()),
                excluded: latest.as_ref().map(|e| e.excluded.clone()),
            },
            tenant: t,
        });
    }
    Ok(out)
}

/// Failures of the live `status` command.
#[derive(Debug, thiserror::Error)]
pub enum StatusFetchError {
    /// The URL is not `http://host:port[/]`.
    #[error("status URL {0:?} must look like http://HOST:PORT (the coordinator's metrics_listen)")]
    BadUrl(String),
    /// Connecting or reading failed.
    #[error("cannot read {url}/status: {source}")]
    Io {
        /// URL.
        url: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("no answer from {0}/status within 5 s")]
    Timeout(String),
    /// Not a 200 response with a JSON body.
    #[error("unexpected answer from {url}/status: {reason}")]
    BadResponse {
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Fetches `/status` from a running coordinator's metrics listener.
pub async fn fetch_status(url: &str) -> Result<Vec<TenantStatus>, StatusFetchError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let base = url.trim_end_matches('/');
    let host = base
        .strip_prefix("http://")
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .ok_or_else(|| StatusFetchError::BadUrl(url.to_string()))?;
    let io = |source| StatusFetchError::Io {
        url: base.to_string(),
        source,
    };
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(host).await.map_err(io)?;
        let req =
            format!("GET /status HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        stream
            .take(16 << 20)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        Ok::<_, StatusFetchError>(buf)
    };
    let buf = tokio::time::timeout(std::time::Duration::from_secs(5), fetch)
        .await
        .map_err(|_| StatusFetchError::Timeout(base.to_string()))??;
    let bad = |reason: String| StatusFetchError::BadResponse {
        url: base.to_string(),
        reason,
    };
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no HTTP header".into()))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(bad(format!("status line {status_line:?}")));
    }
    serde_json::from_slice(&buf[split + 4..]).map_err(|e| bad(format!("body is not JSON: {e}")))
}

/// Renders `/status` (or the offline equivalent) as text.
pub fn render_status(tenants: &[TenantStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for t in tenants {
        let version = t
            .version
            .map_or_else(|| "null".to_string(), |v| v.to_string());
        let (state, detail) = match &t.round {
            RoundState::Open {
                round,
                base_version,
                selected,
                ..
            } => (
                "open",
                format!(
                    " round {round} from v{base_version} ({} selected)",
                    selected.len()
                ),
            ),
            RoundState::Idle { reason, .. } => ("idle", format!(": {reason}")),
            RoundState::Aborted { reason, .. } => ("aborted", format!(": {reason}")),
            RoundState::Committed { round, .. } => ("committed", format!(" round {round}")),
            RoundState::Stopped {
                last_round,
                next_round,
                ..
            } => (
                "stopped",
                format!(
                    " (last round {}, next {next_round})",
                    last_round.map_or_else(|| "null".to_string(), |r| r.to_string())
                ),
            ),
        };
        let _ = writeln!(
            out,
            "tenant {}: version {version}, {state}{detail}",
            t.tenant
        );
        let names = |v: &[String]| -> String {
            if v.is_empty() {
                "-".into()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(out, "  connected:   {}", names(&t.connected));
        let _ = writeln!(out, "  quarantined: {}", names(&t.quarantined));
        if !t.reputation.is_empty() {
            let _ = writeln!(
                out,
                "  {:<24} {:>7} {:>8} {:>10} {:>9}  state",
                "node", "score", "flagged", "violations", "rounds"
            );
            for (node, r) in &t.reputation {
                let state = match (r.quarantined_at, r.release_at) {
                    (Some(at), Some(until)) => format!("quarantined at v{at}, release at v{until}"),
                    _ => "ok".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  {:<24} {:>7.2} {:>8} {:>10} {:>9}  {state}",
                    node, r.score, r.flagged, r.violations, r.rounds,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_store_reads_as_the_same_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(offline_status(&store).unwrap().is_empty());
        let entry = crate::store::AuditEntry {
            tenant: "acme".into(),
            version: 0,
            round: 0,
            rule: "genesis".into(),
            participants: vec![],
            excluded: vec![],
            model_sha256: String::new(),
            prev_entry_sha256: String::new(),
            unix_ms: 1,
            quarantined: vec![],
            reputation: vec![],
            secure: None,
            refused_commits: vec![],
        };
        store
            .commit("acme", 0, b"model", entry, None, None)
            .unwrap();
        store.set_next_round("acme", 4).unwrap();
        let records = BTreeMap::from([
            (
                "evil".to_string(),
                NodeRecord {
                    score: 7.5,
                    quarantined_at: Some(0),
                    release_at: Some(5),
                    ..Default::default()
                },
            ),
            ("good".to_string(), NodeRecord::default()),
        ]);
        store
            .save_reputation("acme", &serde_json::to_vec(&records).unwrap())
            .unwrap();
        let s = offline_status(&store).unwrap();
        assert_eq!(s.len(), 1);
        let t = &s[0];
        assert_eq!((t.tenant.as_str(), t.version), ("acme", Some(0)));
        assert_eq!(t.quarantined, ["evil"]);
        assert_eq!(t.reputation["evil"].release_at, Some(5));
        assert!(t.connected.is_empty());
        assert_eq!(
            t.round,
            RoundState::Stopped {
                last_round: Some(0),
                next_round: 4,
                participants: Some(vec![]),
                excluded: Some(vec![]),
            }
        );
        let text = render_status(&s);
        assert!(
            text.contains("tenant acme: version 0, stopped (last round 0, next 4)"),
            "{text}"
        );
        assert!(text.contains("quarantined at v0, release at v5"), "{text}");
    }

    #[test]
    fn the_json_keeps_the_served_shape_and_reads_back() {
        let t = TenantStatus {
            tenant: "acme".into(),
            version: Some(4),
            oldest_kept_version: 2,
            connected: vec!["a".into(), "b".into()],
            quarantined: vec!["b".into()],
            reputation: BTreeMap::from([(
                "b".to_string(),
                NodeStatus {
                    score: 7.5,
                    quarantined_at: Some(3),
                    release_at: Some(8),
                    ..Default::default()
                },
            )]),
            round: RoundState::Open {
                round: 5,
                base_version: 4,
                selected: vec!["a".into()],
                deadline_unix_ms: 99,
            },
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["round"]["state"], "open");
        assert_eq!(v["round"]["selected"], serde_json::json!(["a"]));
        assert_eq!(v["version"], 4);
        assert_eq!(v["oldest_kept_version"], 2);
        assert_eq!(v["reputation"]["b"]["release_at"], 8);
        let back: TenantStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
        // A stopped coordinator's entry: no version yet, the next round.
        let stopped = serde_json::json!({"tenant": "acme", "version": null, "round": {
            "state": "stopped", "last_round": null, "next_round": 1,
            "participants": null, "excluded": null}});
        let s: TenantStatus = serde_json::from_value(stopped).unwrap();
        let text = render_status(&[s]);
        assert!(
            text.contains("tenant acme: version null, stopped (last round null, next 1)"),
            "{text}"
        );
    }
}
