//! The coordinator side of a bucket: [`BucketUnmasker`] and its only
//! output, [`BucketSum`].

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use super::SecAggError;
use super::keys;
use super::messages::{
    EncryptedShare, KeyAdvert, MaskedInput, SHARE_CIPHERTEXT_LEN, UnmaskRequest, UnmaskResponse,
};
use super::params::BucketParams;
use super::prg::{Sign, apply_mask};
use super::quant::QuantConfig;
use super::shamir::{self, Share};
use crate::CertVerifier;
use crate::identity::NodeId;

/// The unmasked sum of one bucket: the only thing secure aggregation
/// releases to the coordinator. Fields are private and the only
/// constructor is [`BucketUnmasker::finish`], so holding a `BucketSum`
/// proves that unmasking succeeded; individual plaintext updates never
/// exist on the coordinator (except for one-member buckets, k = 1, which
/// are not masked by design).
#[derive(Clone, Debug, PartialEq)]
pub struct BucketSum {
    bucket: u32,
    contributors: Vec<NodeId>,
    sum: Vec<u32>,
    /// Quantized update words at the front of `sum`; the rest are extra.
    dim: usize,
    quant: QuantConfig,
    noise_sigma: f64,
}

impl BucketSum {
    /// Bucket index.
    pub fn bucket(&self) -> u32 {
        self.bucket
    }
    /// Number of updates in the sum.
    pub fn member_count(&self) -> usize {
        self.contributors.len()
    }
    /// The nodes whose updates are in the sum, sorted.
    pub fn contributors(&self) -> &[NodeId] {
        &self.contributors
    }
    /// The update part of the sum in `Z_{2^32}` (two's complement,
    /// quantized units).
    pub fn raw(&self) -> &[u32] {
        &self.sum[..self.dim]
    }
    /// The sum of the members' extra words ([`BucketParams::with_extra_words`]),
    /// in `Z_{2^32}`.
    pub fn extra(&self) -> &[u32] {
        &self.sum[self.dim..]
    }
    /// The dequantized sum.
    pub fn sum(&self) -> Vec<f64> {
        self.quant.dequantize(self.raw())
    }
    /// The dequantized mean `sum / member_count`.
    pub fn mean(&self) -> Vec<f64> {
        let k = self.member_count().max(1) as f64;
        self.sum().into_iter().map(|v| v / k).collect()
    }
    /// L2 norm of the dequantized sum.
    pub fn sum_l2_norm(&self) -> f64 {
        self.sum().iter().map(|v| v * v).sum::<f64>().sqrt()
    }
    /// L2 norm of the dequantized mean.
    pub fn mean_l2_norm(&self) -> f64 {
        self.sum_l2_norm() / self.member_count().max(1) as f64
    }
    /// An upper bound of `mean_l2_norm` for a bucket of honest members
    /// (every update clipped to C): `C + √d/scale + (√d + tails)·σ/(k·scale)`,
    /// where the last term bounds the DP noise (σ the noise standard
    /// deviation of the sum in quantized units; the Gaussian norm exceeds
    /// `σ(√d + tails)` with probability at most `exp(−tails²/2)`). A bucket
    /// above it proves that some member did not clip.
    pub fn mean_norm_bound(&self, tails: f64) -> f64 {
        let d = (self.dim as f64).sqrt();
        let k = self.member_count().max(1) as f64;
        let scale = self.quant.scale();
        self.quant.clip_norm() + d / scale + (d + tails.max(0.0)) * self.noise_sigma / (k * scale)
    }
}

/// Drives one bucket on the coordinator: verifies and routes the nodes'
/// messages, then removes the masks. Methods are called in protocol order
/// (see the module docs of [`super`]); every refusal is an error that
/// changes nothing and names the node at fault where there is one.
pub struct BucketUnmasker {
    params: BucketParams,
    verifier: CertVerifier,
    adverts: BTreeMap<NodeId, KeyAdvert>,
    adverts_closed: bool,
    shares: BTreeMap<NodeId, Vec<EncryptedShare>>,
    share_senders: BTreeSet<NodeId>,
    shares_closed: bool,
    /// Nodes whose masked input was accepted.
    masked: BTreeSet<NodeId>,
    /// Their inputs' wrapping sum, added as each arrives (empty before the
    /// first): the bucket keeps one vector, not one per member (at k = 8
    /// and 10,000 nodes, 50 MB instead of 400 MB for P = 10⁴). Wrapping
    /// addition is commutative and associative, so the sum has the same
    /// bits whatever the arrival order.
    masked_sum: Vec<u32>,
    request: Option<UnmaskRequest>,
    responses: BTreeMap<NodeId, UnmaskResponse>,
}

impl std::fmt::Debug for BucketUnmasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketUnmasker")
            .field("tenant", self.params.tenant())
            .field("round", &self.params.round())
            .field("bucket", &self.params.bucket())
            .field("adverts", &self.adverts.len())
            .field("share_senders", &self.share_senders.len())
            .field("masked", &self.masked.len())
            .field("responses", &self.responses.len())
            .finish_non_exhaustive()
    }
}

fn state(state: &'static str, reason: &str) -> SecAggError {
    SecAggError::State {
        state,
        reason: reason.into(),
    }
}

impl BucketUnmasker {
    /// A new bucket; `verifier` checks node signatures against the mesh CA.
    pub fn new(params: BucketParams, verifier: CertVerifier) -> Self {
        Self {
            params,
            verifier,
            adverts: BTreeMap::new(),
            adverts_closed: false,
            shares: BTreeMap::new(),
            share_senders: BTreeSet::new(),
            shares_closed: false,
            masked: BTreeSet::new(),
            masked_sum: Vec::new(),
            request: None,
            responses: BTreeMap::new(),
        }
    }

    /// The bucket parameters.
    pub fn params(&self) -> &BucketParams {
        &self.params
    }

    fn member(&self, node: &NodeId) -> Result<(), SecAggError> {
        if self.params.index_of(node).is_none() {
            return Err(SecAggError::Protocol {
                node: node.clone(),
                reason: format!("not a member of bucket {}", self.params.bucket()),
            });
        }
        Ok(())
    }

    /// Round 0: a node's key advert (signature, binding, membership, once).
    pub fn accept_advert(
        &mut self,
        advert: KeyAdvert,
        now: OffsetDateTime,
    ) -> Result<(), SecAggError> {
        if self.adverts_closed {
            return Err(state("adverts closed", "advert after close_adverts"));
        }
        self.params
            .check_binding(&advert.tenant, advert.round, advert.bucket)?;
        self.member(&advert.node)?;
        if self.adverts.contains_key(&advert.node) {
            return Err(SecAggError::Protocol {
                node: advert.node.clone(),
                reason: "advertised twice".into(),
            });
        }
        advert.verify(&self.verifier, now)?;
        // A signed advert with a small-order key is an attributable
        // violation; refusing it here makes its sender a dropout of this
        // phase, so the honest members never see the key and go on.
        if !keys::is_contributory(&advert.mask_public) || !keys::is_contributory(&advert.enc_public)
        {
            return Err(SecAggError::WeakKey(advert.node.clone()));
        }
        self.adverts.insert(advert.node.clone(), advert);
        Ok(())
    }

    /// Ends round 0 and returns the adverts to relay to every advertiser;
    /// fewer than `t` drops the bucket.
    pub fn close_adverts(&mut self) -> Result<Vec<KeyAdvert>, SecAggError> {
        if self.adverts.len() < self.params.threshold() {
            return Err(self.dropped(self.adverts.len()));
        }
        self.adverts_closed = true;
        Ok(self.adverts.values().cloned().collect())
    }

    fn dropped(&self, survivors: usize) -> SecAggError {
        warn!(
            tenant = %self.params.tenant(), round = self.params.round(),
            bucket = self.params.bucket(), survivors, threshold = self.params.threshold(),
            "secagg bucket dropped"
        );
        SecAggError::BucketDropped {
            bucket: self.params.bucket(),
            survivors,
            threshold: self.params.threshold(),
        }
    }

    /// Round 1: all encrypted shares of `src` (the authenticated sender):
    /// exactly one to every other advertiser, well-formed and bound.
    pub fn accept_shares(
        &mut self,
        src: &NodeId,
        shares: Vec<EncryptedShare>,
    ) -> Result<(), SecAggError> {
        if !self.adverts_closed || self.shares_closed {
            return Err(state("not sharing", "shares outside the sharing round"));
        }
        if !self.adverts.contains_key(src) {
            return Err(SecAggError::Protocol {
                node: src.clone(),
                reason: "sent shares without an advert".into(),
            });
        }
        if self.share_senders.contains(src) {
            return Err(SecAggError::Protocol {
                node: src.clone(),
                reason: "sent shares twice".into(),
            });
        }
        let mut dsts = BTreeSet::new();
        for s in &shares {
            self.params.check_binding(&s.tenant, s.round, s.bucket)?;
            let bad = if &s.src != src {
                Some("share names another sender")
            } else if s.dst == *src || !self.adverts.contains_key(&s.dst) {
                Some("share addressed to a node without an advert")
            } else if !dsts.insert(s.dst.clone()) {
                Some("two shares to one node")
            } else if s.ciphertext.len() != SHARE_CIPHERTEXT_LEN {
                Some("share ciphertext of the wrong length")
            } else {
                None
            };
            if let Some(reason) = bad {
                return Err(SecAggError::Protocol {
                    node: src.clone(),
                    reason: reason.into(),
                });
            }
        }
        if dsts.len() + 1 != self.adverts.len() {
            return Err(SecAggError::Protocol {
                node: src.clone(),
                reason: format!("{} shares for {} peers", dsts.len(), self.adverts.len() - 1),
            });
        }
        for s in shares {
            self.shares.entry(s.dst.clone()).or_default().push(s);
        }
        self.share_senders.insert(src.clone());
        Ok(())
    }

    /// Ends round 1 (fewer than `t` senders drops the bucket). Only then
    /// are shares handed out, so every node sees the same sender set.
    pub fn close_shares(&mut self) -> Result<(), SecAggError> {
        if !self.adverts_closed {
            return Err(state("adverts open", "close_shares before close_adverts"));
        }
        if self.share_senders.len() < self.params.threshold() {
            return Err(self.dropped(self.share_senders.len()));
        }
        self.shares_closed = true;
        Ok(())
    }

    /// The shares to deliver to `dst` (from senders that completed round 1).
    pub fn shares_for(&self, dst: &NodeId) -> Result<Vec<EncryptedShare>, SecAggError> {
        if !self.shares_closed {
            return Err(state("sharing", "shares_for before close_shares"));
        }
        Ok(self
            .shares
            .get(dst)
            .map(|v| {
                v.iter()
                    .filter(|s| self.share_senders.contains(&s.src))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Round 2: a masked input, signed by a node that completed round 1 and
    /// bound to this tenant, round, model version and bucket.
    pub fn accept_masked(
        &mut self,
        input: MaskedInput,
        now: OffsetDateTime,
    ) -> Result<(), SecAggError> {
        if !self.shares_closed || self.request.is_some() {
            return Err(state("not collecting", "masked input outside round 2"));
        }
        self.params
            .check_binding(&input.tenant, input.round, input.bucket)?;
        if input.model_version != self.params.model_version() {
            return Err(SecAggError::Binding(format!(
                "update from {} trained on model version {}, the round uses {}",
                input.node,
                input.model_version,
                self.params.model_version()
            )));
        }
        if !self.share_senders.contains(&input.node) {
            return Err(SecAggError::Protocol {
                node: input.node.clone(),
                reason: "masked input without shared keys".into(),
            });
        }
        if self.masked.contains(&input.node) {
            return Err(SecAggError::Protocol {
                node: input.node.clone(),
                reason: "sent two masked inputs".into(),
            });
        }
        if input.words.len() != self.params.words() {
            return Err(SecAggError::Protocol {
                node: input.node.clone(),
                reason: format!(
                    "{} words, expected {}",
                    input.words.len(),
                    self.params.words()
                ),
            });
        }
        let cert = &self
            .adverts
            .get(&input.node)
            .ok_or_else(|| state("collecting", "advert missing"))?
            .cert_der;
        input.verify(&self.verifier, cert, now)?;
        let MaskedInput { node, words, .. } = input;
        if self.masked_sum.is_empty() {
            self.masked_sum = words;
        } else {
            for (s, w) in self.masked_sum.iter_mut().zip(&words) {
                *s = s.wrapping_add(*w);
            }
        }
        self.masked.insert(node);
        Ok(())
    }

    /// Ends round 2: survivors are the nodes whose masked input arrived,
    /// dropped the other share senders. Fewer than `t` survivors drops the
    /// bucket. Calling it again returns the same request.
    pub fn unmask_request(&mut self) -> Result<UnmaskRequest, SecAggError> {
        if let Some(r) = &self.request {
            return Ok(r.clone());
        }
        if !self.shares_closed {
            return Err(state("sharing", "unmask_request before close_shares"));
        }
        if self.masked.len() < self.params.threshold() {
            return Err(self.dropped(self.masked.len()));
        }
        let request = UnmaskRequest {
            tenant: self.params.tenant().clone(),
            round: self.params.round(),
            bucket: self.params.bucket(),
            survivors: self.masked.iter().cloned().collect(),
            dropped: self
                .share_senders
                .iter()
                .filter(|n| !self.masked.contains(*n))
                .cloned()
                .collect(),
        };
        self.request = Some(request.clone());
        Ok(request)
    }

    /// Round 3: a survivor's shares. Must hold a self-mask share for every
    /// survivor and a mask-key share for every dropped node, nothing else; a
    /// mask-key share of a survivor or a self-mask share of a dropped node
    /// is [`SecAggError::BothSecrets`] (the coordinator must never hold both).
    pub fn accept_response(
        &mut self,
        response: UnmaskResponse,
        now: OffsetDateTime,
    ) -> Result<(), SecAggError> {
        let request = self
            .request
            .as_ref()
            .ok_or_else(|| state("collecting", "response before unmask_request"))?;
        self.params
            .check_binding(&response.tenant, response.round, response.bucket)?;
        if !self.masked.contains(&response.node) {
            return Err(SecAggError::Protocol {
                node: response.node.clone(),
                reason: "unmask response from a non-survivor".into(),
            });
        }
        if self.responses.contains_key(&response.node) {
            return Err(SecAggError::Protocol {
                node: response.node.clone(),
                reason: "sent two unmask responses".into(),
            });
        }
        for (owner, _) in &response.key_shares {
            if self.masked.contains(owner) {
                return Err(SecAggError::BothSecrets(owner.clone()));
            }
        }
        for (owner, _) in &response.seed_shares {
            if request.dropped.contains(owner) {
                return Err(SecAggError::BothSecrets(owner.clone()));
            }
        }
        let seed_owners: Vec<&NodeId> = response.seed_shares.iter().map(|(n, _)| n).collect();
        let key_owners: Vec<&NodeId> = response.key_shares.iter().map(|(n, _)| n).collect();
        if seed_owners != request.survivors.iter().collect::<Vec<_>>()
            || key_owners != request.dropped.iter().collect::<Vec<_>>()
        {
            return Err(SecAggError::Protocol {
                node: response.node.clone(),
                reason: "unmask response does not answer the request".into(),
            });
        }
        let cert = &self
            .adverts
            .get(&response.node)
            .ok_or_else(|| state("collecting", "advert missing"))?
            .cert_der;
        response.verify(&self.verifier, cert, now)?;
        self.responses.insert(response.node.clone(), response);
        Ok(())
    }

    /// Responses collected so far.
    pub fn response_count(&self) -> usize {
        self.responses.len()
    }

    /// Reconstructs one secret of `owner` (its self-mask seed or its mask
    /// secret key) robustly: from all responses if they agree with the
    /// signed commitment (`matches`), else from the shares Berlekamp–Welch
    /// decoding leaves, else from the first threshold subset (at most
    /// [`MAX_SUBSETS`] tried, suspects last) whose secret matches. Shares
    /// that disagree with the recovered polynomial are recorded in
    /// `mismatch` under their responder.
    fn reconstruct(
        &self,
        owner: &NodeId,
        seed: bool,
        matches: impl Fn(&[u8; 32]) -> bool,
        mismatch: &mut BTreeMap<NodeId, BTreeSet<NodeId>>,
    ) -> Result<Zeroizing<[u8; 32]>, SecAggError> {
        let t = self.params.threshold();
        let mut shares: Vec<(NodeId, Share)> = Vec::with_capacity(self.responses.len());
        for (responder, r) in &self.responses {
            let list = if seed { &r.seed_shares } else { &r.key_shares };
            let x = self
                .params
                .x_of(responder)
                .ok_or_else(|| state("finishing", "responder is not a member"))?;
            if let Some((_, y)) = list.iter().find(|(n, _)| n == owner) {
                shares.push((responder.clone(), Share { x, y: y.to_vec() }));
            }
        }
        let secret_of = |subset: &[Share]| -> Option<Zeroizing<[u8; 32]>> {
            let s = Zeroizing::new(shamir::reconstruct(subset, t).ok()?);
            let mut out = Zeroizing::new([0u8; 32]);
            if s.len() != 32 {
                return None;
            }
            out.copy_from_slice(&s);
            matches(&out).then_some(out)
        };
        // Suspects (responders already caught with a wrong share) go last.
        shares.sort_by_key(|(r, _)| mismatch.contains_key(r));
        let plain: Vec<Share> = shares.iter().map(|(_, s)| s.clone()).collect();
        let clean = plain.len()
            - shares
                .iter()
                .filter(|(r, _)| mismatch.contains_key(r))
                .count();
        // 1. Every share, then every share but the suspects'.
        let tries = if clean < plain.len() {
            vec![plain.len(), clean]
        } else {
            vec![plain.len()]
        };
        for upto in tries {
            if upto >= t
                && let Some(secret) = secret_of(&plain[..upto])
            {
                if upto < plain.len() {
                    self.note_mismatches(owner, &shares, &plain[..upto], mismatch)?;
                }
                return Ok(secret);
            }
        }
        // 2. Reed–Solomon decoding.
        if let Some(bad) = shamir::locate_errors(&plain, t)? {
            let good: Vec<Share> = (0..plain.len())
                .filter(|i| !bad.contains(i))
                .map(|i| plain[i].clone())
                .collect();
            if good.len() >= t
                && let Some(secret) = secret_of(&good)
            {
                self.note_mismatches(owner, &shares, &good, mismatch)?;
                return Ok(secret);
            }
        }
        // 3. Threshold subsets, in lexicographic order over the suspects-last
        //    list, bounded.
        if plain.len() >= t {
            let mut idx: Vec<usize> = (0..t).collect();
            for _ in 0..MAX_SUBSETS {
                let subset: Vec<Share> = idx.iter().map(|&i| plain[i].clone()).collect();
                if let Some(secret) = secret_of(&subset) {
                    self.note_mismatches(owner, &shares, &subset, mismatch)?;
                    return Ok(secret);
                }
                if !next_combination(&mut idx, plain.len()) {
                    break;
                }
            }
        }
        Err(SecAggError::Reconstruction {
            what: if seed {
                "self-mask seed"
            } else {
                "mask secret key"
            },
            node: owner.clone(),
        })
    }

    /// Records every responder whose share of `owner`'s secret is off the
    /// polynomial through `good` (a threshold set that gave the committed
    /// secret).
    fn note_mismatches(
        &self,
        owner: &NodeId,
        shares: &[(NodeId, Share)],
        good: &[Share],
        mismatch: &mut BTreeMap<NodeId, BTreeSet<NodeId>>,
    ) -> Result<(), SecAggError> {
        let t = self.params.threshold();
        let basis = &good[..t.min(good.len())];
        for (responder, share) in shares {
            if basis.iter().any(|g| g.x == share.x) {
                continue;
            }
            if shamir::interpolate_at(basis, share.x)? != share.y {
                mismatch
                    .entry(responder.clone())
                    .or_default()
                    .insert(owner.clone());
            }
        }
        Ok(())
    }

    /// Removes the masks and returns the bucket sum. Needs at least `t`
    /// responses (one-member buckets need none). Reconstructed self-mask
    /// seeds are checked against the signed commitments and reconstructed
    /// mask keys against the advertised public keys, so a wrong share is
    /// never a silently wrong sum; wrong shares are outvoted when the other
    /// responses still determine the secret ([`Self::finish_attributed`]
    /// also names their senders).
    pub fn finish(&self) -> Result<BucketSum, SecAggError> {
        self.finish_attributed().map(|(sum, _)| sum)
    }

    /// [`Self::finish`], also returning the responders whose signed unmask
    /// responses carried wrong shares ([`ShareFault`]): a responder is named
    /// when its shares disagree with the committed secrets of two or more
    /// owners, or of its own secret. One wrong share of one other owner
    /// could as well have been dealt wrong by that owner (shares are
    /// encrypted end to end), so it is outvoted but blames nobody.
    pub fn finish_attributed(&self) -> Result<(BucketSum, Vec<ShareFault>), SecAggError> {
        let request = self
            .request
            .as_ref()
            .ok_or_else(|| state("collecting", "finish before unmask_request"))?;
        let mut sum = if self.masked_sum.is_empty() {
            vec![0u32; self.params.words()]
        } else {
            self.masked_sum.clone()
        };
        let mut mismatch: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
        if self.params.masked() {
            if self.responses.len() < self.params.threshold() {
                return Err(self.dropped(self.responses.len()));
            }
            for owner in &request.survivors {
                let advert = self
                    .adverts
                    .get(owner)
                    .ok_or_else(|| state("finishing", "advert missing"))?;
                let seed = self.reconstruct(
                    owner,
                    true,
                    |s| keys::seed_commitment(s) == advert.seed_commitment,
                    &mut mismatch,
                )?;
                apply_mask(&seed, Sign::Sub, &mut sum);
            }
            for gone in &request.dropped {
                let advert = self
                    .adverts
                    .get(gone)
                    .ok_or_else(|| state("finishing", "advert missing"))?;
                let key = self.reconstruct(
                    gone,
                    false,
                    |k| keys::public_key(k) == advert.mask_public,
                    &mut mismatch,
                )?;
                for survivor in &request.survivors {
                    let their = self
                        .adverts
                        .get(survivor)
                        .ok_or_else(|| state("finishing", "advert missing"))?;
                    let seed = keys::pairwise_seed(
                        &key,
                        gone,
                        &their.mask_public,
                        survivor,
                        self.params.tenant(),
                        self.params.round(),
                        self.params.bucket(),
                    )?;
                    // The survivor added PRG(s) if gone > survivor, else subtracted it.
                    let undo = if gone > survivor {
                        Sign::Sub
                    } else {
                        Sign::Add
                    };
                    apply_mask(seed.expose(), undo, &mut sum);
                }
            }
        }
        let faults: Vec<ShareFault> = mismatch
            .into_iter()
            .filter(|(responder, owners)| owners.len() >= 2 || owners.contains(responder))
            .map(|(responder, owners)| ShareFault {
                responder,
                owners: owners.into_iter().collect(),
            })
            .collect();
        for f in &faults {
            warn!(
                tenant = %self.params.tenant(), round = self.params.round(),
                bucket = self.params.bucket(), responder = %f.responder, owners = f.owners.len(),
                "secagg unmask response carried wrong shares; outvoted"
            );
        }
        debug!(
            tenant = %self.params.tenant(), round = self.params.round(),
            bucket = self.params.bucket(), survivors = request.survivors.len(),
            dropped = request.dropped.len(), "secagg bucket unmasked"
        );
        Ok((
            BucketSum {
                bucket: self.params.bucket(),
                contributors: request.survivors.clone(),
                sum,
                dim: self.params.dim(),
                quant: *self.params.quant(),
                noise_sigma: self.params.noise_sigma(),
            },
            faults,
        ))
    }
}

/// Threshold subsets [`BucketUnmasker`] tries per secret when neither all
/// responses nor Reed–Solomon decoding give the committed secret (bounds
/// the coordinator's work against a coalition of liars; every subset of a
/// bucket of up to 15 members fits).
pub const MAX_SUBSETS: usize = 4096;

/// Advances `idx` (a sorted `k`-subset of `0..n`) to the next subset in
/// lexicographic order; `false` after the last.
fn next_combination(idx: &mut [usize], n: usize) -> bool {
    let k = idx.len();
    for i in (0..k).rev() {
        if idx[i] < n - k + i {
            idx[i] += 1;
            for j in i + 1..k {
                idx[j] = idx[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// A responder whose signed unmask response carried shares that disagree
/// with the owners' signed commitments: attributable protocol violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareFault {
    /// The member that sent the response.
    pub responder: NodeId,
    /// The owners whose shares it got wrong, sorted.
    pub owners: Vec<NodeId>,
}
