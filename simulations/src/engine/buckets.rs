//! Secure-aggregation rounds, for real, without a network.
//!
//! With bucket size k > 1 the coordinator never sees an individual update.
//! The in-process engine opens the round on the coordinator's own
//! `RoundMachine` (`open_secure`: the committed participant list shuffled
//! into buckets by the crypto crate's verifiable assignment, bound to the
//! base model's digest), and [`run_round`] plays every member's part of the
//! Bonawitz protocol as a node does (`crypto::secagg::ClientRound`: X25519
//! keys signed with the member's mesh certificate, Shamir shares encrypted to
//! the peers, clipping to `C` and fixed-point quantization, the extra words
//! of the federated scaler and the training loss, pairwise and self masks).
//! Every message goes to the machine encoded as a `SecAgg` request, exactly
//! as the coordinator's gRPC service routes it (`RoundMachine::secagg`,
//! refusals counted as violations), the phases advance as the coordinator's
//! deadlines close them (`advance_secure`), and the machine unmasks
//! (`SecureRound::finish`): only bucket sums come out, and a bucket with
//! fewer survivors than its threshold is dropped, not the round.
//!
//! Dropouts stop where the scenario says ([`Dropout`]); a member that sends
//! spoiled Shamir shares (`bad_shares`) makes its peers abandon the round,
//! as real nodes do when a share does not decrypt. Each member draws its
//! protocol randomness from its own seeded stream (the network engine's
//! nodes use the same seeds), so the result does not depend on the thread
//! count; member-side work runs in parallel within each phase.
//!
//! [`SecAggFleet`] holds the mesh CA and one certificate per identity.
//! Issuing certificates is the expensive part of set-up, so it happens once
//! per simulation. Certificate keys come from the OS RNG (rcgen), but no
//! output depends on them: Ed25519 signatures only authenticate messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use fedmesh_coordinator::error::FedError;
use fedmesh_coordinator::machine::RoundMachine;
use fedmesh_coordinator::round::OpenInfo;
use fedmesh_coordinator::secure_round::{BucketPublic, Finished};
use fedmesh_crypto::identity::{NodeId, TenantId};
use fedmesh_crypto::secagg::local::Dropout;
use fedmesh_crypto::secagg::{
    BucketParams, ClientRound, EncryptedShare, KeyAdvert, QuantConfig, UnmaskRequest,
};
use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa};
use fedmesh_proto::v1;
use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use time::OffsetDateTime;
use tracing::debug;

use super::tenant::ROUND_SEED_MIX;

/// Fixed protocol clock: certificates are issued for, and messages checked
/// at, this instant (2030-01-01), so runs do not depend on the wall clock.
const SIM_NOW_UNIX: i64 = 1_893_456_000;

/// The protocol clock in unix milliseconds (round deadlines, refusal
/// records): fixed, so runs do not depend on the wall clock.
pub fn sim_now_unix_ms() -> i64 {
    SIM_NOW_UNIX.saturating_mul(1000)
}

/// Secure-aggregation set-up failures (dropped buckets and refused
/// messages are not errors; see [`Unmasked`]).
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

    /// The mesh CA's verifier (the coordinator checks messages with it).
    pub fn verifier(&self) -> &CertVerifier {
        &self.verifier
    }

    /// The fixed protocol clock.
    pub fn now(&self) -> OffsetDateTime {
        self.now
    }

    /// The protocol clock in unix milliseconds (for round deadlines).
    pub fn now_unix_ms(&self) -> i64 {
        sim_now_unix_ms()
    }
}

/// One identity of the round's committed participant list that answers.
/// Selected identities without a `Member` never send anything (as if they
/// dropped out before advertising).
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// Identity.
    pub id: &'a NodeId,
    /// Its update; `None` for a member with nothing to mask (it stops
    /// after sharing its keys).
    pub update: Option<&'a [f32]>,
    /// Its extra words (training loss and scaler moments); zeros when
    /// absent.
    pub extra: Option<&'a [u32]>,
    /// When it stops answering, if it does.
    pub dropout: Option<Dropout>,
    /// It sends Shamir shares its peers cannot decrypt.
    pub bad_shares: bool,
    /// Seed of its protocol randomness ([`super::tenant::secagg_seed`]).
    pub seed: u64,
}

/// A bucket that revealed nothing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LostBucket {
    /// Bucket index.
    pub bucket: u32,
    /// Members assigned to it.
    pub members: usize,
    /// Why (the coordinator's reason).
    pub reason: String,
}

/// What a secure round ended with, as the coordinator's shell hands it to
/// the commit (`machine::plan_secure`).
#[derive(Debug)]
pub struct Unmasked {
    /// The round's public facts.
    pub info: Arc<OpenInfo>,
    /// Buckets formed by the assignment.
    pub buckets: usize,
    /// What unmasking produced: sums, dropped buckets, stragglers,
    /// violations.
    pub finished: Finished,
    /// Bytes of accepted secure-aggregation messages.
    pub bytes_received: u64,
    /// Messages the machine refused, with the reason.
    pub refused: Vec<(NodeId, String)>,
}

/// A member that is still in the protocol.
struct Client<'a> {
    member: &'a Member<'a>,
    signer: &'a CertSigner,
    bucket: u32,
    round: ClientRound,
    rng: ChaCha20Rng,
}

/// The coordinator's side as members reach it: every message through
/// `RoundMachine::secagg`, refusals of attributable reasons reported as
/// violations (as the coordinator's service does).
struct Coordinator<'m> {
    machine: &'m mut RoundMachine,
    now: OffsetDateTime,
    round: u64,
    refused: Vec<(NodeId, String)>,
}

impl Coordinator<'_> {
    fn send(&mut self, node: &NodeId, bucket: u32, message: v1::sec_agg_request::Message) -> bool {
        let req = v1::SecAggRequest {
            tenant: super::tenant::TENANT.into(),
            node: node.to_string(),
            round: self.round,
            bucket,
            message: Some(message),
        };
        let wire = req.encoded_len() as u64;
        match self.machine.secagg(node, &req, self.now, wire) {
            Ok(_) => true,
            Err(e) => {
                if let Some(reason) = e.invalid_reason() {
                    self.machine.violation(node, &reason);
                }
                debug!(node = %node, error = %e, "secure-aggregation message refused");
                self.refused.push((node.clone(), e.to_string()));
                false
            }
        }
    }

    /// Closes the phase as its deadline would; `None` once no bucket is
    /// live (the round then ends).
    fn advance(&mut self, now_unix_ms: i64) -> Result<Option<Arc<OpenInfo>>, BucketError> {
        match self.machine.advance_secure(now_unix_ms) {
            Ok(Some((info, true))) => Ok(Some(info)),
            Ok(_) => Ok(None),
            Err(e) => Err(fed(e)),
        }
    }
}

fn fed(e: FedError) -> BucketError {
    BucketError::Setup(e.to_string())
}

/// The live (not dropped) public bucket `id` of `info`.
fn live_bucket(info: &OpenInfo, id: u32) -> Option<&BucketPublic> {
    info.secure
        .as_ref()?
        .buckets
        .iter()
        .find(|b| b.id == id && !b.dropped)
}

/// Plays the open secure round of `machine` with `members` (advert,
/// shares, masked input, unmask response; each phase closed as the
/// coordinator's deadline would close it), then takes the round out of the
/// machine and unmasks it. Member-side work runs in parallel within a
/// phase; messages reach the machine in identity order.
pub fn run_round(
    fleet: &SecAggFleet,
    machine: &mut RoundMachine,
    members: &[Member<'_>],
) -> Result<Unmasked, BucketError> {
    let info = machine
        .open_round()
        .map(|r| r.info.clone())
        .ok_or_else(|| setup("no open round"))?;
    let view = info
        .secure
        .clone()
        .ok_or_else(|| setup("the open round is not secure"))?;
    let dim = machine.limits().param_count;
    let quant = QuantConfig::new(view.clip_norm, view.quant_scale).map_err(setup)?;
    let noise = (view.noise_multiplier > 0.0).then_some(view.noise_multiplier);
    let zeros = vec![0u32; view.extra_words as usize];
    let now_ms = fleet.now_unix_ms();
    let mut coord = Coordinator {
        machine,
        now: fleet.now,
        round: info.round,
        refused: Vec::new(),
    };
    let mut members: Vec<&Member<'_>> = members.iter().collect();
    members.sort_by(|a, b| a.id.cmp(b.id));

    // Advertise: every member that does not drop out before, as a node
    // builds its bucket parameters from the announced bucket.
    let bucket_of: BTreeMap<&NodeId, &BucketPublic> = view
        .buckets
        .iter()
        .flat_map(|b| b.members.iter().map(move |m| (m, b)))
        .collect();
    let started: Vec<Option<(Client<'_>, Vec<u8>)>> = members
        .par_iter()
        .map(|m| {
            let Some(b) = bucket_of.get(m.id) else {
                return Ok(None);
            };
            if m.dropout == Some(Dropout::BeforeAdvert) {
                return Ok(None);
            }
            let signer = fleet
                .signers
                .get(m.id)
                .ok_or_else(|| setup(format!("no certificate for {}", m.id)))?;
            let params = BucketParams::new(
                fleet.tenant.clone(),
                info.round,
                info.base_version,
                b.id,
                b.members.clone(),
                None,
                dim,
                quant,
                noise,
            )
            .and_then(|p| p.with_extra_words(zeros.len()))
            .map_err(setup)?;
            let mut rng =
                ChaCha20Rng::seed_from_u64(m.seed ^ info.round.wrapping_mul(ROUND_SEED_MIX));
            let round = ClientRound::new(params, m.id.clone(), &mut rng).map_err(setup)?;
            let advert = round.advertise(signer).map_err(setup)?.encode();
            let client = Client {
                member: m,
                signer,
                bucket: b.id,
                round,
                rng,
            };
            Ok(Some((client, advert)))
        })
        .collect::<Result<_, BucketError>>()?;
    let mut clients = Vec::new();
    for (c, advert) in started.into_iter().flatten() {
        use v1::sec_agg_request::Message as M;
        if coord.send(c.member.id, c.bucket, M::Advert(advert)) {
            clients.push(c);
        }
    }

    let mut phases_done = 1;
    'phases: {
        // Share: the relayed adverts in, encrypted shares out.
        let Some(info) = coord.advance(now_ms)? else {
            break 'phases;
        };
        phases_done += 1;
        let fleet_now = fleet.now;
        let bundles: Vec<Option<v1::ShareBundle>> = clients
            .par_iter_mut()
            .map(|c| {
                let b = live_bucket(&info, c.bucket)?;
                let adverts = b
                    .adverts
                    .iter()
                    .map(|a| KeyAdvert::decode(a))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                c.round
                    .receive_adverts(&adverts, &fleet.verifier, fleet_now)
                    .ok()?;
                let mut shares = c.round.share_keys(&mut c.rng).ok()?;
                if c.member.bad_shares {
                    for share in &mut shares {
                        spoil(share);
                    }
                }
                Some(v1::ShareBundle {
                    shares: shares.iter().map(EncryptedShare::encode).collect(),
                })
            })
            .collect();
        clients = keep_sent(&mut coord, clients, bundles, |b| {
            v1::sec_agg_request::Message::Shares(b)
        });

        // Mask: the relayed shares in (a share that does not decrypt makes
        // the member abandon), the masked update out.
        let Some(info) = coord.advance(now_ms)? else {
            break 'phases;
        };
        phases_done += 1;
        let masked: Vec<Option<Vec<u8>>> = clients
            .par_iter_mut()
            .map(|c| {
                let b = live_bucket(&info, c.bucket)?;
                let shares = b
                    .shares
                    .get(c.member.id)?
                    .iter()
                    .map(|s| EncryptedShare::decode(s))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                c.round.receive_shares(&shares).ok()?;
                if c.member.dropout == Some(Dropout::AfterShares) {
                    return None;
                }
                let update = c.member.update?;
                let extra = c.member.extra.unwrap_or(&zeros);
                let y = c
                    .round
                    .mask_update_with_extra(update, extra, c.signer, &mut c.rng)
                    .ok()?;
                Some(y.encode())
            })
            .collect();
        clients = keep_sent(
            &mut coord,
            clients,
            masked,
            v1::sec_agg_request::Message::Masked,
        );

        // Unmask: the survivors' answer to the unmask request.
        let Some(info) = coord.advance(now_ms)? else {
            break 'phases;
        };
        phases_done += 1;
        let responses: Vec<Option<Vec<u8>>> = clients
            .par_iter_mut()
            .map(|c| {
                if c.member.dropout == Some(Dropout::AfterMasked) {
                    return None;
                }
                let b = live_bucket(&info, c.bucket)?;
                let request = UnmaskRequest::decode(&b.request).ok()?;
                let response = c.round.unmask(&request, c.signer).ok()?;
                Some(response.encode())
            })
            .collect();
        keep_sent(
            &mut coord,
            clients,
            responses,
            v1::sec_agg_request::Message::UnmaskResponse,
        );
    }
    debug!(
        round = info.round,
        phases = phases_done,
        "secure round played"
    );
    let Coordinator {
        machine, refused, ..
    } = coord;
    let mut open = machine
        .take_round()
        .ok_or_else(|| setup("the secure round vanished"))?;
    let secure = open
        .secure
        .take()
        .ok_or_else(|| setup("the open round is not secure"))?;
    let bytes_received = secure.bytes_received();
    let buckets = secure.bucket_count();
    Ok(Unmasked {
        info: open.info,
        buckets,
        finished: secure.finish(),
        bytes_received,
        refused,
    })
}

/// Sends each client's message (in order) and keeps the clients whose
/// message the machine accepted; a client without a message stops.
fn keep_sent<'a, T>(
    coord: &mut Coordinator<'_>,
    clients: Vec<Client<'a>>,
    messages: Vec<Option<T>>,
    wrap: impl Fn(T) -> v1::sec_agg_request::Message,
) -> Vec<Client<'a>> {
    let mut kept = Vec::with_capacity(clients.len());
    for (c, m) in clients.into_iter().zip(messages) {
        if let Some(m) = m
            && coord.send(c.member.id, c.bucket, wrap(m))
        {
            kept.push(c);
        }
    }
    kept
}

/// Spoils a Shamir share so that its recipient cannot decrypt it (as the
/// network engine's `corrupt_shares` hook does).
fn spoil(share: &mut EncryptedShare) {
    if let Some(b) = share.ciphertext.first_mut() {
        *b ^= 0x55;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fedmesh_coordinator::config::TenantConfig;
    use fedmesh_coordinator::machine::Restored;
    use fedmesh_coordinator::reputation::Reputation;
    use fedmesh_crypto::BucketSum;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:05}")).collect()
    }

    /// A machine over a 17-parameter model (3 features) with buckets of 3
    /// and a secure round open over `ids`.
    fn open(fleet: &SecAggFleet, ids: &[NodeId]) -> RoundMachine {
        let cfg: TenantConfig = toml::from_str(
            "name = \"sim\"\nquorum = 2\n[model]\ninput_dim = 3\nhidden = [2]\n\
             [secure]\nbucket_size = 3\nclip_norm = 1.0\n",
        )
        .unwrap();
        let mut m = RoundMachine::new(
            "sim".parse().unwrap(),
            cfg.clone(),
            [0; 32],
            17,
            Restored {
                version: 0,
                params: vec![0.5; 17],
                scaler: None,
                momentum: None,
                reputation: Reputation::new(cfg.reputation.clone()),
                last_list: None,
            },
        );
        let selected: BTreeSet<NodeId> = ids.iter().cloned().collect();
        m.open_secure(1, selected, fleet.now_unix_ms(), fleet.verifier())
            .unwrap();
        m
    }

    fn raw(sums: &[BucketSum]) -> Vec<Vec<u32>> {
        sums.iter().map(|s| s.raw().to_vec()).collect()
    }

    #[test]
    fn buckets_reveal_sums_of_clipped_updates_and_lose_only_starved_buckets() {
        let ids: Vec<NodeId> = names(9).iter().map(|n| n.parse().unwrap()).collect();
        let fleet = SecAggFleet::new("sim", &names(9)).unwrap();
        assert_eq!(fleet.len(), 9);
        let ups: Vec<Vec<f32>> = (0..9).map(|i| vec![0.01 * i as f32; 17]).collect();
        let extra = vec![1u32; fedmesh_proto::secure::extra_words(3)];
        let mut members: Vec<Member<'_>> = ids
            .iter()
            .zip(&ups)
            .enumerate()
            .map(|(i, (id, u))| Member {
                id,
                update: Some(u.as_slice()),
                extra: Some(extra.as_slice()),
                dropout: None,
                bad_shares: false,
                seed: i as u64,
            })
            .collect();
        let all = run_round(&fleet, &mut open(&fleet, &ids), &members).unwrap();
        let f = &all.finished;
        assert_eq!((all.buckets, f.sums.len(), f.dropped.len()), (3, 3, 0));
        assert!(all.refused.is_empty(), "{:?}", all.refused);
        let total: f64 = f.sums.iter().map(|s| s.sum()[0]).sum();
        assert!((total - 0.36).abs() < 1e-3, "{total}");
        // The extra words are summed with the update.
        assert!(
            f.sums
                .iter()
                .all(|s| s.extra()[0] as usize == s.member_count())
        );
        // Same inputs, same sums (seeded member randomness).
        let again = run_round(&fleet, &mut open(&fleet, &ids), &members).unwrap();
        assert_eq!(raw(&f.sums), raw(&again.finished.sums));
        // Two of one bucket's three members stop before advertising: that
        // bucket is dropped (t = 2), the others are not.
        let victim = all.info.secure.as_ref().unwrap().buckets[0].members.clone();
        for m in &mut members {
            if victim[..2].contains(m.id) {
                m.dropout = Some(Dropout::BeforeAdvert);
            }
        }
        let some = run_round(&fleet, &mut open(&fleet, &ids), &members).unwrap();
        assert_eq!(some.finished.sums.len(), 2);
        assert_eq!(some.finished.dropped.len(), 1);
        assert_eq!(some.finished.dropped[0].bucket, 0);
        // A straggler (after shares) is removed from its bucket's sum.
        for m in &mut members {
            m.dropout = None;
        }
        members[0].dropout = Some(Dropout::AfterShares);
        let r = run_round(&fleet, &mut open(&fleet, &ids), &members).unwrap();
        assert_eq!(r.finished.sums.len(), 3);
        let counted: usize = r.finished.sums.iter().map(BucketSum::member_count).sum();
        assert_eq!(counted, 8);
        assert_eq!(r.finished.stragglers.len(), 1);
        // Spoiled shares: the peers cannot decrypt them and abandon, so the
        // sender's bucket is dropped.
        members[0].dropout = None;
        members[0].bad_shares = true;
        let r = run_round(&fleet, &mut open(&fleet, &ids), &members).unwrap();
        assert_eq!(r.finished.sums.len(), 2);
        assert_eq!(r.finished.dropped.len(), 1);
        assert!(r.finished.dropped[0].members.contains(&ids[0]));
        // Selected identities that never answer hold no phase open.
        let r = run_round(&fleet, &mut open(&fleet, &ids), &members[..2]).unwrap();
        assert!(r.finished.sums.is_empty());
    }
}
