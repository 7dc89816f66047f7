//! `/status`: one serde type, [`TenantStatus`], for what the coordinator
//! serves (built from a running [`Federation`]), what the `status` command
//! prints (fetched from `/status`, or read from a stopped coordinator's
//! store) and what the simulations read. Depends on the federation; nothing
//! in the round path depends on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::federation::Federation;
use crate::reputation::NodeRecord;
use crate::round::RoundStatus;

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
