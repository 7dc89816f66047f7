//! Secure-aggregation buckets, for real.
//!
//! With bucket size k > 1 the coordinator never sees an individual update:
//! the round's committed participant list is shuffled into buckets by the
//! crypto crate's verifiable assignment ([`assign_buckets`]: ⌊n/k⌋ buckets,
//! the remainder joins the last one), and every bucket runs the whole
//! Bonawitz protocol in process ([`run_bucket`]: per-round X25519 keys
//! signed with the member's mesh certificate, Shamir shares encrypted to
//! the peers, clipping to `C` and fixed-point quantization inside the
//! member, pairwise and self masks, every message encoded and decoded,
//! dropouts recovered from the survivors' shares). The coordinator learns
//! only each bucket's [`BucketSum`]; a bucket with fewer survivors than its
//! threshold is lost (reported), not the round.
//!
//! [`SecAggFleet`] holds the mesh CA and one certificate per identity.
//! Issuing certificates is the expensive part of set-up, so it happens once
//! per simulation. Certificate keys come from the OS RNG (rcgen), but no
//! output depends on them: Ed25519 signatures only authenticate messages,
//! and everything that reaches the sum (X25519 keys, masks, Shamir
//! polynomials, stochastic rounding) is drawn from a ChaCha20 stream seeded
//! per (seed, round, bucket).
//!
//! Not modelled by the protocol run: a member sending shares that do not
//! reconstruct (`bad_shares`). `run_bucket` drives honest clients only, so
//! such a bucket is marked lost without running it.

use std::collections::BTreeMap;

use fedmesh_crypto::identity::{NodeId, TenantId};
use fedmesh_crypto::secagg::local::{Dropout, run_bucket};
use fedmesh_crypto::secagg::{AssignmentInput, BucketParams, QuantConfig, assign_buckets};
use fedmesh_crypto::{BucketSum, CertSigner, CertVerifier, MeshCa};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use time::OffsetDateTime;

use super::derive_seed;

/// Fixed protocol clock: certificates are issued for, and messages checked
/// at, this instant (2030-01-01), so runs do not depend on the wall clock.
const SIM_NOW_UNIX: i64 = 1_893_456_000;

/// Purpose label of the per-bucket protocol randomness.
const P_BUCKET: u64 = 9;

/// Secure-aggregation set-up or configuration failures (lost buckets are
/// not errors; see [`RoundBuckets::lost`]).
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// An identity, certificate or parameter was refused.
    #[error("secure aggregation set-up: {0}")]
    Setup(String),
}

fn setup(e: impl std::fmt::Display) -> BucketError {
    BucketError::Setup(e.to_string())
}

/// The mesh CA and a certificate signer per identity.
pub struct SecAggFleet {
    tenant: TenantId,
    verifier: CertVerifier,
    signers: BTreeMap<NodeId, CertSigner>,
    now: OffsetDateTime,
}

impl std::fmt::Debug for SecAggFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecAggFleet")
            .field("tenant", &self.tenant)
            .field("identities", &self.signers.len())
            .finish_non_exhaustive()
    }
}

impl SecAggFleet {
    /// Generates a mesh CA for `tenant` and issues one node certificate per
    /// identity (in parallel).
    pub fn new(tenant: &str, identities: &[String]) -> Result<Self, BucketError> {
        let now = OffsetDateTime::from_unix_timestamp(SIM_NOW_UNIX).map_err(setup)?;
        let tenant: TenantId = tenant.parse().map_err(setup)?;
        let ca = MeshCa::generate("fedmesh-sim CA", now, 3650).map_err(setup)?;
        let verifier = CertVerifier::new(ca.cert_pem()).map_err(setup)?;
        let ids: Vec<NodeId> = identities
            .iter()
            .map(|i| i.parse().map_err(setup))
            .collect::<Result<_, _>>()?;
        let signers: Vec<(NodeId, CertSigner)> = ids
            .into_par_iter()
            .map(|id| {
                let c = ca.issue_node(&tenant, &id, now, 3650).map_err(setup)?;
                let s = CertSigner::from_pem(&c.cert_pem, &c.key_pem).map_err(setup)?;
                Ok((id, s))
            })
            .collect::<Result<_, BucketError>>()?;
        Ok(Self {
            tenant,
            verifier,
            signers: signers.into_iter().collect(),
            now,
        })
    }

    /// Identities with a certificate.
    pub fn len(&self) -> usize {
        self.signers.len()
    }

    /// Whether no identity has a certificate.
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }
}

/// Quantization and DP of the round's buckets.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Bucket size k (> 1).
    pub k: usize,
    /// Clip norm C and fixed-point scale.
    pub quant: QuantConfig,
    /// Distributed-DP noise multiplier.
    pub noise_multiplier: Option<f64>,
}

/// One identity of the committed participant list.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// Identity (node name).
    pub id: &'a str,
    /// Its update; `None` for a member that never masks one (it stops
    /// before advertising or after sharing).
    pub update: Option<&'a [f32]>,
    /// When it stops answering, if it does.
    pub dropout: Option<Dropout>,
    /// It sends shares that do not reconstruct (simulated: the bucket is lost).
    pub bad_shares: bool,
}

/// A bucket that revealed nothing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LostBucket {
    /// Bucket index.
    pub bucket: u32,
    /// Members assigned to it.
    pub members: usize,
    /// Why (the protocol's error).
    pub reason: String,
}

/// What a round's buckets revealed.
#[derive(Debug)]
pub struct RoundBuckets {
    /// Buckets formed by the assignment.
    pub formed: usize,
    /// The unmasked sums, in bucket order.
    pub sums: Vec<BucketSum>,
    /// Buckets that could not be unmasked.
    pub lost: Vec<LostBucket>,
    /// Members of each bucket, by bucket index.
    pub members: Vec<Vec<String>>,
}

/// SHA-256 of parameters (f32 little-endian): the model digest the
/// assignment seed is bound to.
pub fn model_digest(params: &[f32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in params {
        h.update(v.to_le_bytes());
    }
    h.finalize().into()
}

/// Assigns `members` to buckets and runs the protocol in each (buckets in
/// parallel; each bucket's randomness from `derive_seed(seed, [P_BUCKET,
/// round, bucket])`, so the result does not depend on the thread count).
/// Fewer members than k is a [`RoundBuckets`] with no bucket.
#[allow(clippy::too_many_arguments)]
pub fn run_round(
    fleet: &SecAggFleet,
    settings: &Settings,
    seed: u64,
    round: u64,
    model_version: u64,
    params: &[f32],
    members: &[Member<'_>],
) -> Result<RoundBuckets, BucketError> {
    let dim = params.len();
    let ids: Vec<NodeId> = members
        .iter()
        .map(|m| m.id.parse().map_err(setup))
        .collect::<Result<_, _>>()?;
    if ids.len() < settings.k {
        return Ok(RoundBuckets {
            formed: 0,
            sums: Vec::new(),
            lost: Vec::new(),
            members: Vec::new(),
        });
    }
    let assignment = assign_buckets(&AssignmentInput {
        tenant: &fleet.tenant,
        round,
        participants: &ids,
        model_digest: model_digest(params),
        bucket_size: settings.k,
    })
    .map_err(setup)?;
    let zeros = vec![0f32; dim];
    let mut updates: BTreeMap<NodeId, Vec<f32>> = BTreeMap::new();
    let mut dropouts: BTreeMap<NodeId, Dropout> = BTreeMap::new();
    let mut bad: BTreeMap<&NodeId, bool> = BTreeMap::new();
    for (id, m) in ids.iter().zip(members) {
        // A member that stops after sharing still computes a masked update
        // it never sends; what it would have sent does not matter.
        updates.insert(id.clone(), m.update.unwrap_or(&zeros).to_vec());
        if let Some(d) = m.dropout {
            dropouts.insert(id.clone(), d);
        }
        bad.insert(id, m.bad_shares);
    }
    let mut signers: BTreeMap<NodeId, &CertSigner> = BTreeMap::new();
    for id in &ids {
        let s = fleet
            .signers
            .get(id)
            .ok_or_else(|| BucketError::Setup(format!("no certificate for {id}")))?;
        signers.insert(id.clone(), s);
    }
    let outcomes: Vec<Result<BucketSum, LostBucket>> = assignment
        .buckets
        .par_iter()
        .map(|b| {
            let lost = |reason: String| LostBucket {
                bucket: b.id,
                members: b.members.len(),
                reason,
            };
            if let Some(m) = b.members.iter().find(|m| {
                bad.get(m).copied().unwrap_or(false)
                    && dropouts.get(*m) != Some(&Dropout::BeforeAdvert)
            }) {
                return Err(lost(format!(
                    "{m} sent shares that do not reconstruct (simulated)"
                )));
            }
            let p = BucketParams::new(
                fleet.tenant.clone(),
                round,
                model_version,
                b.id,
                b.members.clone(),
                None,
                dim,
                settings.quant,
                settings.noise_multiplier,
            )
            .map_err(|e| lost(format!("parameters refused: {e}")))?;
            let mut rng =
                ChaCha20Rng::seed_from_u64(derive_seed(seed, &[P_BUCKET, round, u64::from(b.id)]));
            run_bucket(
                &p,
                &updates,
                &signers,
                &fleet.verifier,
                &dropouts,
                fleet.now,
                &mut rng,
            )
            .map_err(|e| lost(e.to_string()))
        })
        .collect();
    let mut out = RoundBuckets {
        formed: assignment.buckets.len(),
        sums: Vec::new(),
        lost: Vec::new(),
        members: assignment
            .buckets
            .iter()
            .map(|b| b.members.iter().map(|m| m.to_string()).collect())
            .collect(),
    };
    for o in outcomes {
        match o {
            Ok(s) => out.sums.push(s),
            Err(l) => out.lost.push(l),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:05}")).collect()
    }

    #[test]
    fn buckets_reveal_sums_of_clipped_updates_and_lose_only_starved_buckets() {
        let ids = names(9);
        let fleet = SecAggFleet::new("sim", &ids).unwrap();
        assert_eq!(fleet.len(), 9);
        let settings = Settings {
            k: 3,
            quant: QuantConfig::new(1.0, 65536.0).unwrap(),
            noise_multiplier: None,
        };
        let ups: Vec<Vec<f32>> = (0..9).map(|i| vec![0.01 * i as f32, 0.1]).collect();
        let mut members: Vec<Member<'_>> = ids
            .iter()
            .zip(&ups)
            .map(|(id, u)| Member {
                id,
                update: Some(u.as_slice()),
                dropout: None,
                bad_shares: false,
            })
            .collect();
        let params = [0.5f32, -0.5];
        let all = run_round(&fleet, &settings, 1, 1, 0, &params, &members).unwrap();
        assert_eq!((all.formed, all.sums.len(), all.lost.len()), (3, 3, 0));
        let total: f64 = all.sums.iter().map(|s| s.sum()[0]).sum();
        assert!((total - 0.36).abs() < 1e-3, "{total}");
        // Same inputs, same sums (seeded protocol randomness).
        let again = run_round(&fleet, &settings, 1, 1, 0, &params, &members).unwrap();
        assert_eq!(
            all.sums
                .iter()
                .map(|s| s.raw().to_vec())
                .collect::<Vec<_>>(),
            again
                .sums
                .iter()
                .map(|s| s.raw().to_vec())
                .collect::<Vec<_>>()
        );
        // Two of one bucket's three members stop before advertising: that
        // bucket is lost (t = 2), the others are not.
        let victim = &all.members[0];
        for m in &mut members {
            if victim[..2].iter().any(|v| v == m.id) {
                m.dropout = Some(Dropout::BeforeAdvert);
            }
        }
        let some = run_round(&fleet, &settings, 1, 1, 0, &params, &members).unwrap();
        assert_eq!(some.sums.len(), 2);
        assert_eq!(some.lost.len(), 1);
        assert_eq!(some.lost[0].bucket, 0);
        // A straggler (after shares) is removed from its bucket's sum.
        for m in &mut members {
            m.dropout = None;
        }
        members[0].dropout = Some(Dropout::AfterShares);
        members[0].update = None;
        let r = run_round(&fleet, &settings, 1, 1, 0, &params, &members).unwrap();
        assert_eq!(r.sums.len(), 3);
        assert_eq!(r.sums.iter().map(BucketSum::member_count).sum::<usize>(), 8);
        // Bad shares lose the bucket.
        members[0].dropout = None;
        members[0].bad_shares = true;
        let r = run_round(&fleet, &settings, 1, 1, 0, &params, &members).unwrap();
        assert_eq!(r.lost.len(), 1);
        assert!(r.lost[0].reason.contains("node-00000"), "{:?}", r.lost);
        // Fewer members than k: nothing formed.
        let r = run_round(&fleet, &settings, 1, 1, 0, &params, &members[..2]).unwrap();
        assert_eq!(r.formed, 0);
    }
}
