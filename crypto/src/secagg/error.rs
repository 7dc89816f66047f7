//! The secure-aggregation error type.

use crate::CryptoError;
use crate::identity::NodeId;

/// Everything that can go wrong in secure aggregation. Messages name the
/// node a failure is attributable to where there is one, and never contain
/// secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecAggError {
    /// A parameter or configuration is unusable.
    #[error("invalid secure-aggregation configuration: {0}")]
    Config(String),
    /// The quantization configuration could let a bucket sum wrap around.
    #[error(
        "quantization overflow: a bucket of {members} members needs up to {needed_bits} bits, \
         the ring has 32 (at most {max_members} members at this clip norm and scale)"
    )]
    Overflow {
        /// Members in the bucket.
        members: usize,
        /// Bits the worst-case sum needs (sign included).
        needed_bits: u32,
        /// The largest bucket that fits.
        max_members: usize,
    },
    /// A model update is unusable (non-finite, wrong length).
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    /// A bucket assignment check failed on the node side.
    #[error("bucket assignment refused: {0}")]
    Assignment(String),
    /// Bytes from the network could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// Which message was being decoded.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A message is bound to another tenant, round, model version, bucket or node
    /// (a replay or a stale message).
    #[error("message binding mismatch: {0}")]
    Binding(String),
    /// A signature or certificate did not verify; attributable to `node`.
    #[error("signature from {node} refused: {source}")]
    Signature {
        /// The claimed signer.
        node: NodeId,
        /// Why it was refused.
        #[source]
        source: CryptoError,
    },
    /// The certificate of a signed message names another identity.
    #[error("message claims node {claimed} but is signed by {actual}")]
    WrongSigner {
        /// The node named in the message.
        claimed: NodeId,
        /// The identity in the certificate.
        actual: String,
    },
    /// An encrypted share failed to decrypt or authenticate; attributable to `sender`.
    #[error(
        "encrypted share from {sender} to {recipient} does not decrypt (bad key, tampering or wrong binding)"
    )]
    ShareDecrypt {
        /// The node that produced the share.
        sender: NodeId,
        /// The node it was addressed to.
        recipient: NodeId,
    },
    /// A peer misbehaved in the protocol (bad share content, duplicate, wrong key).
    #[error("protocol violation by {node}: {reason}")]
    Protocol {
        /// The node at fault.
        node: NodeId,
        /// What it did.
        reason: String,
    },
    /// A message arrived in a state that does not expect it.
    #[error("unexpected message in state {state}: {reason}")]
    State {
        /// The state machine's current state.
        state: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Both the self-mask share and the mask-key share of one node were
    /// requested or offered: revealing both would unmask its update.
    #[error("refused: both secrets of node {0} would be revealed")]
    BothSecrets(NodeId),
    /// Fewer than `threshold` members survived: the bucket (not the round) is dropped.
    #[error("bucket {bucket} dropped: {survivors} survivors, threshold {threshold}")]
    BucketDropped {
        /// The bucket.
        bucket: u32,
        /// Members that can still contribute.
        survivors: usize,
        /// Shares needed for reconstruction.
        threshold: usize,
    },
    /// Secret sharing failed (bad parameters or inconsistent shares).
    #[error("secret sharing: {0}")]
    Sharing(String),
    /// A secret reconstructed from shares does not match the owner's
    /// signed commitment: at least one share is wrong.
    #[error("reconstructed {what} of {node} does not match its signed commitment")]
    Reconstruction {
        /// Which secret.
        what: &'static str,
        /// Whose secret.
        node: NodeId,
    },
    /// Key agreement produced an all-zero (contributory-less) secret.
    #[error("key agreement with {0} gave a non-contributory shared secret")]
    WeakKey(NodeId),
    /// The differential-privacy sampler or accountant was given unusable parameters.
    #[error("differential privacy: {0}")]
    Dp(String),
}
