//! What a round is, as the rest of the coordinator and the nodes see it:
//! the status published to nodes, an open round's public facts, a validated
//! update and a committed round's summary. Plain data, no behaviour besides
//! the per-node event of a status.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fedmesh_crypto::NodeId;
use fedmesh_proto::v1;

use crate::secure_round::SecureView;

/// What nodes see of the federation's state.
#[derive(Debug, Clone, PartialEq)]
pub enum RoundStatus {
    /// No round open.
    Idle {
        /// Latest committed version.
        version: u64,
        /// Why.
        reason: String,
    },
    /// A round is collecting updates.
    Open(Arc<OpenInfo>),
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
}

/// Public facts of an open round.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenInfo {
    /// Round number.
    pub round: u64,
    /// Version participants train from.
    pub base_version: u64,
    /// Selected participants.
    pub selected: BTreeSet<NodeId>,
    /// Quarantined nodes asked to train anyway: their updates are validated
    /// and scored as evidence, never aggregated, and the round does not
    /// wait for them.
    pub shadow: BTreeSet<NodeId>,
    /// Deadline, unix ms.
    pub deadline_unix_ms: i64,
    /// Local training parameters.
    pub training: v1::TrainingParams,
    /// Secure aggregation state (bucket size k > 1).
    pub secure: Option<Arc<SecureView>>,
}

impl RoundStatus {
    /// The event a given node receives for this status.
    pub fn event_for(&self, node: &NodeId) -> v1::RoundEvent {
        use v1::round_event::Event;
        let event = match self {
            RoundStatus::Idle { version, reason } => Event::Idle(v1::Idle {
                current_version: *version,
                reason: reason.clone(),
            }),
            RoundStatus::Open(o) => Event::Open(v1::RoundOpen {
                round: o.round,
                base_version: o.base_version,
                selected: o.selected.contains(node) || o.shadow.contains(node),
                deadline_unix_ms: o.deadline_unix_ms,
                training: Some(o.training),
                secure: o.secure.as_ref().map(|v| v.for_node(node)),
            }),
            RoundStatus::Committed { round, version } => Event::Committed(v1::ModelCommitted {
                round: *round,
                version: *version,
            }),
            RoundStatus::Aborted { round, reason } => Event::Aborted(v1::RoundAborted {
                round: *round,
                reason: reason.clone(),
            }),
        };
        v1::RoundEvent { event: Some(event) }
    }
}

/// Summary of a committed round, for operators and the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    /// Tenant.
    pub tenant: String,
    /// Round.
    pub round: u64,
    /// New version.
    pub version: u64,
    /// Updates aggregated.
    pub participants: usize,
    /// Nodes selected.
    pub selected: usize,
    /// Mean of the participants' reported local training loss.
    pub mean_train_loss: f32,
    /// Bytes of accepted update messages.
    pub bytes_received: u64,
    /// Updates left out by the aggregation rule.
    pub excluded: usize,
    /// Quarantined nodes (updates ignored) during the round.
    pub quarantined: usize,
    /// Time from opening to commit.
    pub duration: Duration,
    /// Secure aggregation facts, when the round was masked.
    pub secure: Option<SecureSummary>,
}

/// What a securely aggregated round did with its buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct SecureSummary {
    /// Bucket size k.
    pub bucket_size: usize,
    /// Buckets formed.
    pub buckets: usize,
    /// Buckets that lost too many members (no sum).
    pub dropped: usize,
    /// Buckets refused by the norm gate.
    pub rejected: usize,
    /// Buckets the rule left out.
    pub excluded: usize,
    /// Cumulative ε of distributed DP after this version (q = 1, no
    /// subsampling amplification claimed), when DP is on.
    pub epsilon: Option<f64>,
}

/// A validated update, ready for aggregation.
#[derive(Debug, Clone)]
pub struct ValidUpdate {
    /// The node.
    pub node: NodeId,
    /// Round.
    pub round: u64,
    /// Base version.
    pub base_version: u64,
    /// Delta.
    pub delta: Vec<f32>,
    /// Local samples.
    pub num_samples: u64,
    /// Scaler sums, if sent.
    pub scaler: Option<v1::ScalerStats>,
    /// Reported training loss.
    pub train_loss: f32,
    /// Encoded size of the request.
    pub wire_bytes: u64,
}
