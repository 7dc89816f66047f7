//! Secure aggregation inside random buckets (Bonawitz et al., CCS 2017,
//! with signed keys), transport-free.
//!
//! A round's participants are shuffled into buckets of at least `k`
//! members by a verifiable seed ([`bucket`]). Inside a bucket every node
//! quantizes its clipped update into `Z_{2^32}` ([`quant`]), optionally adds
//! its share of discrete Gaussian noise ([`dp`]), and masks it with a
//! self mask `PRG(b_u)` and pairwise masks `±PRG(s_uv)` ([`prg`]) that cancel
//! in the sum. The self-mask seed and the mask secret key are Shamir-shared
//! t-of-n ([`shamir`]) and sent encrypted to the peers ([`keys`]), so the
//! coordinator can remove the masks of survivors and of dropped nodes, but
//! never both for one node. The coordinator learns only a [`BucketSum`].
//!
//! The protocol is driven message by message: [`ClientRound`] on a node,
//! [`BucketUnmasker`] on the coordinator; every message in [`messages`]
//! has a canonical encoding and a checked decoder. Nothing here does I/O,
//! reads the clock or the OS RNG: time and randomness are parameters.
//!
//! ```text
//! node u (ClientRound)                      coordinator (BucketUnmasker)
//! new ─ advertise ──────── KeyAdvert ─────► accept_advert
//! receive_adverts ◄────── all adverts ───── adverts
//! share_keys ──────────── EncryptedShare* ► accept_shares
//! receive_shares ◄─────── shares for u ──── shares_for(u)
//! mask_update ─────────── MaskedInput ────► accept_masked
//! unmask ◄─────────────── UnmaskRequest ─── unmask_request
//!        ──────────────── UnmaskResponse ─► accept_response ─ finish → BucketSum
//! ```

pub mod bucket;
pub mod client;
pub mod dp;
mod error;
pub mod keys;
pub mod local;
pub mod messages;
pub mod params;
pub mod prg;
pub mod quant;
pub mod server;
pub mod shamir;
pub mod wire;

#[cfg(test)]
mod protocol_tests;
#[cfg(test)]
mod test_vectors;

pub use bucket::{
    Assignment, AssignmentInput, Bucket, ListDelta, apply_list_delta, assign_buckets, list_delta,
    participant_list_digest, verify_own_bucket,
};
pub use client::{ClientRound, MaskPlan, MaskVector};
pub use dp::{DiscreteGaussian, Epsilon, epsilon, rdp_sampled_gaussian};
pub use error::SecAggError;
pub use messages::{EncryptedShare, KeyAdvert, MaskedInput, UnmaskRequest, UnmaskResponse};
pub use params::{BucketParams, default_threshold};
pub use quant::QuantConfig;
pub use server::{BucketSum, BucketUnmasker, ShareFault};
