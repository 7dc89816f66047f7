//! The node side of a bucket: [`ClientRound`].

use std::collections::{BTreeMap, BTreeSet};

use rand::{CryptoRng, RngCore};
use time::OffsetDateTime;
use tracing::{debug, warn};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::SecAggError;
use super::dp::DiscreteGaussian;
use super::keys::{self, Secret32, ShareBinding};
use super::messages::{
    EncryptedShare, KeyAdvert, MaskedInput, SHARE_PLAINTEXT_LEN, UnmaskRequest, UnmaskResponse,
    check_signer,
};
use super::params::BucketParams;
use super::prg::{Sign, apply_mask};
use super::shamir;
use crate::identity::NodeId;
use crate::{CertSigner, CertVerifier};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Created,
    AdvertsReceived,
    SharesSent,
    SharesReceived,
    Masked,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Created => "created",
            Stage::AdvertsReceived => "adverts received",
            Stage::SharesSent => "shares sent",
            Stage::SharesReceived => "shares received",
            Stage::Masked => "masked",
        }
    }
}

#[derive(Clone, Debug)]
struct PeerKeys {
    mask_public: [u8; 32],
    enc_public: [u8; 32],
}

/// This node's advertised values, derived once from its secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OwnAdvert {
    mask_public: [u8; 32],
    enc_public: [u8; 32],
    seed_commitment: [u8; 32],
}

/// A peer's shares held by this node.
#[derive(Zeroize, ZeroizeOnDrop)]
struct HeldShare {
    seed: [u8; 32],
    key: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revealed {
    Seed,
    Key,
}

/// One node's participation in one bucket of one round.
///
/// Drive it in order: [`advertise`](Self::advertise) →
/// [`receive_adverts`](Self::receive_adverts) →
/// [`share_keys`](Self::share_keys) →
/// [`receive_shares`](Self::receive_shares) →
/// [`mask_update`](Self::mask_update) → [`unmask`](Self::unmask). A call out
/// of order is a [`SecAggError::State`] error and changes nothing.
///
/// Per-round secrets (mask key, encryption key, self-mask seed, held
/// shares) zeroize on drop and never print. The node never reveals both the
/// self-mask share and the mask-key share of the same peer, across any
/// number of unmask requests.
pub struct ClientRound {
    params: BucketParams,
    me: NodeId,
    my_x: u8,
    mask_secret: Secret32,
    enc_secret: Secret32,
    self_seed: Secret32,
    own: OwnAdvert,
    stage: Stage,
    /// Verified adverts (U1), including this node's.
    peers: BTreeMap<NodeId, PeerKeys>,
    /// X25519(c_me, c_peer) per peer a share was sealed to, reused to open
    /// that peer's share.
    share_secrets: BTreeMap<NodeId, Secret32>,
    /// Shares received (U2), including this node's own.
    held: BTreeMap<NodeId, HeldShare>,
    revealed: BTreeMap<NodeId, Revealed>,
    /// Relayed peers this node refused (a small-order key): treated as
    /// dropouts, never shared with or masked against.
    refused: BTreeSet<NodeId>,
}

impl std::fmt::Debug for ClientRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRound")
            .field("tenant", self.params.tenant())
            .field("round", &self.params.round())
            .field("bucket", &self.params.bucket())
            .field("node", &self.me)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// Whose masks these are: one node in one bucket of one round.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MaskBinding {
    round: u64,
    bucket: u32,
    node: NodeId,
}

/// The seeds of one node's masks in one bucket
/// ([`ClientRound::mask_plan`]). Zeroizes on drop and never prints.
pub struct MaskPlan {
    binding: MaskBinding,
    words: usize,
    seeds: Vec<(Secret32, Sign)>,
}

impl std::fmt::Debug for MaskPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskPlan")
            .field("binding", &self.binding)
            .field("masks", &self.seeds.len())
            .finish_non_exhaustive()
    }
}

impl MaskPlan {
    /// Adds every mask to `acc` (modulo 2^32).
    fn apply(&self, acc: &mut [u32]) {
        for (seed, sign) in &self.seeds {
            apply_mask(seed.expose(), *sign, acc);
        }
    }

    /// The sum of this node's masks (ChaCha20 expansion of every seed; the
    /// costly part of masking, independent of the update).
    pub fn expand(self) -> MaskVector {
        let mut words = zeroize::Zeroizing::new(vec![0u32; self.words]);
        self.apply(&mut words);
        MaskVector {
            binding: self.binding,
            words,
        }
    }
}

/// The sum of one node's masks for one bucket ([`MaskPlan::expand`]).
/// Together with the masked input it reveals the update, so it zeroizes on
/// drop and never prints.
pub struct MaskVector {
    binding: MaskBinding,
    words: zeroize::Zeroizing<Vec<u32>>,
}

impl std::fmt::Debug for MaskVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskVector")
            .field("binding", &self.binding)
            .field("words", &self.words.len())
            .finish_non_exhaustive()
    }
}

fn random32<R: RngCore + CryptoRng>(rng: &mut R) -> Secret32 {
    let mut s = Secret32([0; 32]);
    rng.fill_bytes(&mut s.0);
    s
}

impl ClientRound {
    /// Starts a round for `me` in the bucket `params`, drawing the two
    /// X25519 secret keys and the self-mask seed from `rng` (the OS RNG in
    /// production; a seeded `ChaCha20Rng` in simulations).
    pub fn new<R: RngCore + CryptoRng>(
        params: BucketParams,
        me: NodeId,
        rng: &mut R,
    ) -> Result<Self, SecAggError> {
        let my_x = params.x_of(&me).ok_or_else(|| {
            SecAggError::Config(format!(
                "{me} is not a member of bucket {}",
                params.bucket()
            ))
        })?;
        let mask_secret = random32(rng);
        let enc_secret = random32(rng);
        let self_seed = random32(rng);
        let own = OwnAdvert {
            mask_public: keys::public_key(mask_secret.expose()),
            enc_public: keys::public_key(enc_secret.expose()),
            seed_commitment: keys::seed_commitment(self_seed.expose()),
        };
        Ok(Self {
            my_x,
            mask_secret,
            enc_secret,
            self_seed,
            own,
            stage: Stage::Created,
            peers: BTreeMap::new(),
            share_secrets: BTreeMap::new(),
            held: BTreeMap::new(),
            revealed: BTreeMap::new(),
            refused: BTreeSet::new(),
            params,
            me,
        })
    }

    /// The bucket parameters.
    pub fn params(&self) -> &BucketParams {
        &self.params
    }

    fn expect(&self, stage: Stage, what: &str) -> Result<(), SecAggError> {
        if self.stage != stage {
            return Err(SecAggError::State {
                state: self.stage.name(),
                reason: format!("{what} needs state {:?}", stage.name()),
            });
        }
        Ok(())
    }

    /// Round 0: this node's signed key advertisement (deterministic; may be resent).
    pub fn advertise(&self, signer: &CertSigner) -> Result<KeyAdvert, SecAggError> {
        check_signer(signer, self.params.tenant(), &self.me)?;
        KeyAdvert {
            tenant: self.params.tenant().clone(),
            round: self.params.round(),
            bucket: self.params.bucket(),
            node: self.me.clone(),
            mask_public: self.own.mask_public,
            enc_public: self.own.enc_public,
            seed_commitment: self.own.seed_commitment,
            cert_der: signer.cert_der().to_vec(),
            signature: [0; 64],
        }
        .sign(signer)
    }

    /// Round 0 → 1: the adverts the coordinator relayed (this node's own
    /// included). Each must be bound to this bucket, come from a member,
    /// appear once and carry a valid mesh signature of that member; this
    /// node's own advert must be unchanged. At least `t` are required.
    pub fn receive_adverts(
        &mut self,
        adverts: &[KeyAdvert],
        verifier: &CertVerifier,
        now: OffsetDateTime,
    ) -> Result<(), SecAggError> {
        self.expect(Stage::Created, "receive_adverts")?;
        let mut peers = BTreeMap::new();
        let mut refused = BTreeSet::new();
        for a in adverts {
            self.params.check_binding(&a.tenant, a.round, a.bucket)?;
            if self.params.index_of(&a.node).is_none() {
                return Err(SecAggError::Protocol {
                    node: a.node.clone(),
                    reason: format!("not a member of bucket {}", self.params.bucket()),
                });
            }
            a.verify(verifier, now)?;
            if a.node == self.me
                && (a.mask_public != self.own.mask_public
                    || a.enc_public != self.own.enc_public
                    || a.seed_commitment != self.own.seed_commitment)
            {
                return Err(SecAggError::Binding(
                    "the relayed advert of this node differs from the one it sent".into(),
                ));
            }
            let keys = PeerKeys {
                mask_public: a.mask_public,
                enc_public: a.enc_public,
            };
            if peers.contains_key(&a.node) || refused.contains(&a.node) {
                return Err(SecAggError::Protocol {
                    node: a.node.clone(),
                    reason: "advertised twice".into(),
                });
            }
            if a.node != self.me
                && !(keys::is_contributory(&a.mask_public) && keys::is_contributory(&a.enc_public))
            {
                // A small-order key would make every agreement with it
                // zero: drop the peer, not the bucket.
                warn!(
                    tenant = %self.params.tenant(), round = self.params.round(),
                    bucket = self.params.bucket(), peer = %a.node,
                    "secagg peer advertised a non-contributory key; treating it as a dropout"
                );
                refused.insert(a.node.clone());
                continue;
            }
            peers.insert(a.node.clone(), keys);
        }
        if !peers.contains_key(&self.me) {
            return Err(SecAggError::Binding(
                "the relayed adverts omit this node".into(),
            ));
        }
        if peers.len() < self.params.threshold() {
            return Err(SecAggError::BucketDropped {
                bucket: self.params.bucket(),
                survivors: peers.len(),
                threshold: self.params.threshold(),
            });
        }
        debug!(
            tenant = %self.params.tenant(), round = self.params.round(),
            bucket = self.params.bucket(), node = %self.me, peers = peers.len(),
            "secagg adverts verified"
        );
        self.peers = peers;
        self.refused = refused;
        self.stage = Stage::AdvertsReceived;
        Ok(())
    }

    fn binding<'a>(&'a self, src: &'a NodeId, dst: &'a NodeId) -> ShareBinding<'a> {
        ShareBinding {
            tenant: self.params.tenant(),
            round: self.params.round(),
            bucket: self.params.bucket(),
            src,
            dst,
        }
    }

    /// Round 1: Shamir-shares the self-mask seed and the mask secret key
    /// t-of-n and encrypts one share pair to every advertised peer.
    pub fn share_keys<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<Vec<EncryptedShare>, SecAggError> {
        self.expect(Stage::AdvertsReceived, "share_keys")?;
        let n = self.params.members().len();
        let t = self.params.threshold();
        let seed_shares = shamir::split(self.self_seed.expose(), t, n, rng)?;
        let key_shares = shamir::split(self.mask_secret.expose(), t, n, rng)?;
        let mut out = Vec::with_capacity(self.peers.len());
        let mut secrets = BTreeMap::new();
        let mut held = None;
        for (idx, (s, k)) in seed_shares.iter().zip(&key_shares).enumerate() {
            let member = &self.params.members()[idx];
            let mut pt = zeroize::Zeroizing::new([0u8; SHARE_PLAINTEXT_LEN]);
            pt[0] = s.x;
            pt[1..33].copy_from_slice(&s.y);
            pt[33..].copy_from_slice(&k.y);
            if *member == self.me {
                let mut h = HeldShare {
                    seed: [0; 32],
                    key: [0; 32],
                };
                h.seed.copy_from_slice(&s.y);
                h.key.copy_from_slice(&k.y);
                held = Some(h);
                continue;
            }
            let Some(peer) = self.peers.get(member) else {
                continue;
            };
            let mut share = EncryptedShare {
                tenant: self.params.tenant().clone(),
                round: self.params.round(),
                bucket: self.params.bucket(),
                src: self.me.clone(),
                dst: member.clone(),
                ciphertext: Vec::new(),
            };
            let secret = keys::share_secret(self.enc_secret.expose(), &peer.enc_public, member)?;
            share.ciphertext = keys::seal(
                &secret,
                &self.binding(&self.me, member),
                &share.associated_data(),
                pt.as_ref(),
            )?;
            out.push(share);
            secrets.insert(member.clone(), secret);
        }
        let held = held.ok_or_else(|| SecAggError::Config("own share missing".into()))?;
        self.held.insert(self.me.clone(), held);
        self.share_secrets = secrets;
        self.stage = Stage::SharesSent;
        Ok(out)
    }

    /// Round 1 → 2: the shares addressed to this node. Each must come from
    /// an advertised peer, once, decrypt under the binding and carry this
    /// node's evaluation point; failures name the sender. Together with this
    /// node's own share at least `t` are required; their senders are the
    /// peers this node masks against.
    pub fn receive_shares(&mut self, shares: &[EncryptedShare]) -> Result<(), SecAggError> {
        self.expect(Stage::SharesSent, "receive_shares")?;
        let mut got: BTreeMap<NodeId, HeldShare> = BTreeMap::new();
        for s in shares {
            self.params.check_binding(&s.tenant, s.round, s.bucket)?;
            if s.dst != self.me {
                return Err(SecAggError::Binding(format!(
                    "share addressed to {}",
                    s.dst
                )));
            }
            if self.refused.contains(&s.src) {
                continue;
            }
            // Exactly the advertised peers other than this node have one.
            let secret = self
                .share_secrets
                .get(&s.src)
                .ok_or_else(|| SecAggError::Protocol {
                    node: s.src.clone(),
                    reason: "sent a share without a verified advert".into(),
                })?;
            if got.contains_key(&s.src) {
                return Err(SecAggError::Protocol {
                    node: s.src.clone(),
                    reason: "sent two shares".into(),
                });
            }
            let pt = keys::open(
                secret,
                &self.binding(&s.src, &self.me),
                &s.associated_data(),
                &s.ciphertext,
            )?;
            if pt.len() != SHARE_PLAINTEXT_LEN || pt[0] != self.my_x {
                return Err(SecAggError::Protocol {
                    node: s.src.clone(),
                    reason: "share has the wrong length or evaluation point".into(),
                });
            }
            let mut h = HeldShare {
                seed: [0; 32],
                key: [0; 32],
            };
            h.seed.copy_from_slice(&pt[1..33]);
            h.key.copy_from_slice(&pt[33..]);
            got.insert(s.src.clone(), h);
        }
        if got.len() + 1 < self.params.threshold() {
            return Err(SecAggError::BucketDropped {
                bucket: self.params.bucket(),
                survivors: got.len() + 1,
                threshold: self.params.threshold(),
            });
        }
        self.held.append(&mut got);
        // Share encryption is over for this round: forget its secrets.
        self.share_secrets.clear();
        self.stage = Stage::SharesReceived;
        Ok(())
    }

    /// Round 2: quantizes `update` (clip, scale, stochastic rounding with
    /// `rng`), adds this node's discrete Gaussian noise share when DP is on,
    /// masks it and signs it. With a one-member bucket (k = 1) nothing is
    /// masked: the coordinator sees this node's quantized update.
    pub fn mask_update<R: RngCore + CryptoRng>(
        &mut self,
        update: &[f32],
        signer: &CertSigner,
        rng: &mut R,
    ) -> Result<MaskedInput, SecAggError> {
        self.mask_update_with_extra(update, &[], signer, rng)
    }

    /// [`ClientRound::mask_update`] with the bucket's extra raw words
    /// ([`BucketParams::with_extra_words`]) appended after the quantized
    /// update and masked with it.
    pub fn mask_update_with_extra<R: RngCore + CryptoRng>(
        &mut self,
        update: &[f32],
        extra: &[u32],
        signer: &CertSigner,
        rng: &mut R,
    ) -> Result<MaskedInput, SecAggError> {
        self.mask_and_sign(update, extra, None, signer, rng)
    }

    /// The seeds of this node's masks for the round, once the shares are
    /// in: its self mask and one pairwise mask per peer it holds a share
    /// of. Masks do not depend on the update, so a node can
    /// [`MaskPlan::expand`] them on another thread while it trains and pass
    /// the result to [`ClientRound::mask_update_with_mask`]. Empty for a
    /// one-member bucket.
    pub fn mask_plan(&self) -> Result<MaskPlan, SecAggError> {
        self.expect(Stage::SharesReceived, "mask_plan")?;
        let mut seeds = Vec::new();
        if self.params.masked() {
            seeds.reserve(self.held.len());
            seeds.push((self.self_seed.clone(), Sign::Add));
            for peer in self.held.keys().filter(|p| **p != self.me) {
                let keys = self.peers.get(peer).ok_or_else(|| SecAggError::Protocol {
                    node: peer.clone(),
                    reason: "no advert".into(),
                })?;
                let seed = keys::pairwise_seed(
                    self.mask_secret.expose(),
                    &self.me,
                    &keys.mask_public,
                    peer,
                    self.params.tenant(),
                    self.params.round(),
                    self.params.bucket(),
                )?;
                let sign = if *peer > self.me {
                    Sign::Add
                } else {
                    Sign::Sub
                };
                seeds.push((seed, sign));
            }
        }
        Ok(MaskPlan {
            binding: self.mask_binding(),
            words: self.params.words(),
            seeds,
        })
    }

    fn mask_binding(&self) -> MaskBinding {
        MaskBinding {
            round: self.params.round(),
            bucket: self.params.bucket(),
            node: self.me.clone(),
        }
    }

    /// [`ClientRound::mask_update_with_extra`] with masks expanded ahead of
    /// time from this round's [`ClientRound::mask_plan`]; the masked input is
    /// the same, bit for bit. A mask of another round, bucket or node is
    /// refused.
    pub fn mask_update_with_mask<R: RngCore + CryptoRng>(
        &mut self,
        update: &[f32],
        extra: &[u32],
        mask: &MaskVector,
        signer: &CertSigner,
        rng: &mut R,
    ) -> Result<MaskedInput, SecAggError> {
        if mask.binding != self.mask_binding() || mask.words.len() != self.params.words() {
            return Err(SecAggError::Binding(
                "the mask was expanded for another round, bucket or node".into(),
            ));
        }
        self.mask_and_sign(update, extra, Some(mask), signer, rng)
    }

    fn mask_and_sign<R: RngCore + CryptoRng>(
        &mut self,
        update: &[f32],
        extra: &[u32],
        mask: Option<&MaskVector>,
        signer: &CertSigner,
        rng: &mut R,
    ) -> Result<MaskedInput, SecAggError> {
        self.expect(Stage::SharesReceived, "mask_update")?;
        if extra.len() != self.params.extra_words() {
            return Err(SecAggError::InvalidUpdate(format!(
                "{} extra words, the bucket expects {}",
                extra.len(),
                self.params.extra_words()
            )));
        }
        check_signer(signer, self.params.tenant(), &self.me)?;
        if update.len() != self.params.dim() {
            return Err(SecAggError::InvalidUpdate(format!(
                "{} values, the bucket expects {}",
                update.len(),
                self.params.dim()
            )));
        }
        let mut words = self.params.quant().quantize(update, rng)?;
        words.extend_from_slice(extra);
        if let Some(variance) = self.params.local_noise_variance() {
            DiscreteGaussian::from_variance(variance)?.add_noise(&mut words, rng)?;
        }
        match mask {
            // Addition modulo 2^32 commutes: the same words either way.
            Some(mask) => {
                for (w, m) in words.iter_mut().zip(mask.words.iter()) {
                    *w = w.wrapping_add(*m);
                }
            }
            None => self.mask_plan()?.apply(&mut words),
        }
        let input = MaskedInput {
            tenant: self.params.tenant().clone(),
            round: self.params.round(),
            model_version: self.params.model_version(),
            bucket: self.params.bucket(),
            node: self.me.clone(),
            words,
            signature: [0; 64],
        }
        .sign(signer)?;
        debug!(
            tenant = %self.params.tenant(), round = self.params.round(),
            bucket = self.params.bucket(), node = %self.me, peers = self.held.len() - 1,
            "secagg update masked"
        );
        self.stage = Stage::Masked;
        Ok(input)
    }

    /// Round 3: answers an unmask request with the shares of the survivors'
    /// self-mask seeds and of the dropped nodes' mask keys.
    ///
    /// Refuses (changing nothing) unless: the request is bound to this
    /// bucket, survivors and dropped are sorted and disjoint and together
    /// are exactly the peers this node masked against (itself included),
    /// this node survived, at least `t` survived, and no node is asked for
    /// the other secret than one revealed earlier
    /// ([`SecAggError::BothSecrets`]). Repeating a request is allowed.
    pub fn unmask(
        &mut self,
        request: &UnmaskRequest,
        signer: &CertSigner,
    ) -> Result<UnmaskResponse, SecAggError> {
        self.expect(Stage::Masked, "unmask")?;
        check_signer(signer, self.params.tenant(), &self.me)?;
        self.params
            .check_binding(&request.tenant, request.round, request.bucket)?;
        let survivors: BTreeSet<&NodeId> = request.survivors.iter().collect();
        let dropped: BTreeSet<&NodeId> = request.dropped.iter().collect();
        if let Some(both) = survivors.intersection(&dropped).next() {
            return Err(SecAggError::BothSecrets((*both).clone()));
        }
        if survivors.len() != request.survivors.len() || dropped.len() != request.dropped.len() {
            return Err(SecAggError::Binding("unmask request repeats a node".into()));
        }
        let listed: BTreeSet<&NodeId> = survivors.union(&dropped).copied().collect();
        let masked_with: BTreeSet<&NodeId> = self.held.keys().collect();
        if listed != masked_with {
            return Err(SecAggError::Binding(
                "unmask request does not partition the nodes this node masked with".into(),
            ));
        }
        if !survivors.contains(&self.me) {
            return Err(SecAggError::Binding(
                "unmask request lists this node as dropped".into(),
            ));
        }
        if survivors.len() < self.params.threshold() {
            return Err(SecAggError::BucketDropped {
                bucket: self.params.bucket(),
                survivors: survivors.len(),
                threshold: self.params.threshold(),
            });
        }
        for (set, kind) in [(&survivors, Revealed::Seed), (&dropped, Revealed::Key)] {
            for node in set.iter() {
                if self.revealed.get(*node).is_some_and(|r| *r != kind) {
                    return Err(SecAggError::BothSecrets((*node).clone()));
                }
            }
        }
        let mut seed_shares = Vec::with_capacity(survivors.len());
        let mut key_shares = Vec::with_capacity(dropped.len());
        for (node, share) in &self.held {
            if survivors.contains(node) {
                self.revealed.insert(node.clone(), Revealed::Seed);
                seed_shares.push((node.clone(), share.seed));
            } else {
                self.revealed.insert(node.clone(), Revealed::Key);
                key_shares.push((node.clone(), share.key));
            }
        }
        debug!(
            tenant = %self.params.tenant(), round = self.params.round(),
            bucket = self.params.bucket(), node = %self.me,
            survivors = seed_shares.len(), dropped = key_shares.len(),
            "secagg unmask answered"
        );
        UnmaskResponse {
            tenant: self.params.tenant().clone(),
            round: self.params.round(),
            bucket: self.params.bucket(),
            node: self.me.clone(),
            seed_shares,
            key_shares,
            signature: [0; 64],
        }
        .sign(signer)
    }
}
