//! The coordinator's errors and closed refusal sets: every refusal and
//! failure of a federation operation ([`FedError`], one variant per gRPC
//! status class) and why a connection was closed before gRPC
//! ([`HandshakeRefusal`]). A leaf: it depends on the typed reasons of
//! [`crate::bounds`] and the error types of the modules it wraps, never on
//! the federation, the transport or the metrics.

use crate::aggregate::AggregateError;
use crate::bounds::{CommitRefusal, InvalidReason, MAX_REFUSAL_TEXT, truncate_text};
use crate::store::StoreError;

/// Refusals and failures of federation operations. The gRPC layer maps each
/// variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum FedError {
    /// No round is open.
    #[error("no round is open (current model version {version})")]
    NoOpenRound {
        /// Current version.
        version: u64,
    },
    /// The update names another round.
    #[error("round {got} is not open; the open round is {open}")]
    WrongRound {
        /// Round in the request.
        got: u64,
        /// Open round.
        open: u64,
    },
    /// The update was computed against another global version.
    #[error("update is based on version {got}, round {round} trains from version {expected}")]
    StaleVersion {
        /// Round.
        round: u64,
        /// Version in the request.
        got: u64,
        /// Base version of the round.
        expected: u64,
    },
    /// The node was not selected for this round.
    #[error("node {node} is not a participant of round {round}")]
    NotSelected {
        /// Node.
        node: String,
        /// Round.
        round: u64,
    },
    /// A second update from the same node for the same round.
    #[error("node {node} already submitted an update for round {round}")]
    Duplicate {
        /// Node.
        node: String,
        /// Round.
        round: u64,
    },
    /// A request refused for a typed reason: wrong schema, shape or
    /// values, a field out of its bound (attributable to the sender). The
    /// message is bounded whatever the request's size.
    #[error("invalid update: {0}")]
    Refused(InvalidReason),
    /// A secure round could not be set up from the tenant's configuration
    /// (not attributable to any node; the round is aborted).
    #[error("secure round cannot open: {0}")]
    SecureSetup(#[source] fedmesh_crypto::secagg::SecAggError),
    /// A message that does not fit the round's current phase or mode (for
    /// example a plaintext update in a securely aggregated round, or an
    /// advert after the advert phase closed). Displayed truncated.
    #[error("{}", truncate_text(.0, MAX_REFUSAL_TEXT))]
    Phase(String),
    /// The round's aggregate would not be a usable model (not finite or out
    /// of bounds); nothing was signed and the version did not advance.
    #[error("commit refused: {0}")]
    CommitRefused(CommitRefusal),
    /// The requested model version is not stored.
    #[error("model version {0} not found")]
    UnknownVersion(u64),
    /// The version was committed but its body was removed by the store's
    /// retention (`[store] retain_versions`).
    #[error(
        "model version {version} was pruned by retention; versions from {oldest_kept} on are kept"
    )]
    Pruned {
        /// Requested version.
        version: u64,
        /// Oldest version whose body is kept.
        oldest_kept: u64,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Aggregation failed.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// A stored model failed to decode.
    #[error("stored model is corrupt: {0}")]
    Corrupt(String),
}

impl FedError {
    /// The typed reason of a refusal attributable to the sender (for
    /// metrics and reputation evidence), if this is one.
    pub fn invalid_reason(&self) -> Option<InvalidReason> {
        match self {
            FedError::Refused(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// The bounded label of this error for metrics: one of
    /// [`REFUSAL_LABELS`] or [`InvalidReason::LABELS`].
    pub fn label(&self) -> &'static str {
        match self {
            FedError::Refused(r) => r.label(),
            FedError::CommitRefused(_) => "commit_refused",
            FedError::NoOpenRound { .. } => "no_open_round",
            FedError::WrongRound { .. } => "wrong_round",
            FedError::StaleVersion { .. } => "stale_version",
            FedError::NotSelected { .. } => "not_selected",
            FedError::Duplicate { .. } => "duplicate",
            FedError::Phase(_) => "wrong_phase",
            FedError::UnknownVersion(_) | FedError::Pruned { .. } => "unknown_version",
            FedError::Store(_)
            | FedError::Aggregate(_)
            | FedError::Corrupt(_)
            | FedError::SecureSetup(_) => "internal",
        }
    }
}

/// Refusal labels besides the typed reasons of [`InvalidReason::LABELS`].
pub const REFUSAL_LABELS: &[&str] = &[
    "no_open_round",
    "wrong_round",
    "stale_version",
    "not_selected",
    "duplicate",
    "wrong_phase",
    "unknown_version",
    "commit_refused",
    "internal",
];

/// Why a connection was closed before it reached gRPC (a closed set: it is
/// a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeRefusal {
    /// Its address already had `max_handshakes_per_address` in flight.
    PerAddressLimit,
    /// The handshake did not complete within the timeout.
    Timeout,
    /// TLS refused it (bad or missing client certificate, protocol error).
    Tls,
    /// The client certificate is on the revocation list.
    Revoked,
    /// The certificate verified but names no fedmesh identity.
    NoIdentity,
}

impl HandshakeRefusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::PerAddressLimit => "per_address_limit",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Revoked => "revoked",
            Self::NoIdentity => "no_identity",
        }
    }
}
