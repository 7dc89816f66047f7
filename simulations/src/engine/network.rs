//! The network engine: the same scenario through the real gRPC mesh over
//! mutual TLS on loopback — a coordinator (`fedmesh_coordinator`) and one
//! `run_federation` task per node, each node an `Agent` with exactly the
//! buffer the in-process engine gives it.
//!
//! Attackers, dropouts and DP run through the real node code by way of
//! the node runtime's [`SimulationHook`]: every node draws its presence
//! per round from the same per-(node, round) stream as the in-process
//! engine (offline nodes never connect; a dropout sends nothing, with
//! k > 1 before its key advert; a straggler misses the deadline, with
//! k > 1 after sharing its keys; `after_masked` stops before unmasking).
//! Honest nodes apply local DP and post their update to an in-memory
//! collusion board; crafting attackers (sign flip, IPM, ALIE, min-max,
//! min-sum, mimic, Gaussian) wait there — bounded — for the round's honest
//! updates and craft theirs with the same functions as the in-process
//! engine; scaling and data-poisoning attackers train and boost. With
//! k > 1 the coordinator runs real secure aggregation in buckets
//! (`[tenants.secure]` from the scenario's `[secagg]`).
//!
//! The coordinator's tenant is the scenario's [`super::tenant`] table, the
//! configuration the in-process engine's round machine runs, and it samples
//! among the same connected identities; colluding attackers read the
//! round's selection from the coordinator. An attacker's Sybil identities
//! are extra nodes with their own certificates (and agents over the
//! attacker's data) that take part while the attack is active. Bad shares
//! are spoiled Shamir shares (the peers cannot decrypt them and abandon the
//! bucket, which the coordinator drops); at k = 1 the sender loses its own
//! update. Each identity's secure-aggregation randomness is seeded by
//! [`super::tenant::secagg_seed`], as the in-process engine's members are.
//! So the global model it ends with is bit-identical to the in-process
//! engine's: tests check it with full and with partial participation at
//! k = 1 (attackers, Sybils, dropouts, an offline node and DP included) and
//! with buckets of 2 and dropouts at protocol phases.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmesh_coordinator::pki::{self, layout};
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Pki};
use fedmesh_crypto::{CertVerifier, MeshCa, NodeId, SecretPem, TenantId};
use fedmesh_node::agent::LocalUpdate;
use fedmesh_node::runtime::node::federation_from_pem;
use fedmesh_node::sim::hook::{SimPresence, SimSend, SimulationHook};
use fedmesh_node::{Node, RunningNode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Condvar;
use tracing::warn;

use super::inprocess::{
    Presence, build_node, build_node_as, choose_attackers, craft_for, craft_shared, crafted_weight,
    draw_presence, evaluate_into, forced_phase, heldout, is_crafting, poison_of, privatize_honest,
    scaling_gamma, sha256_params,
};
use super::tenant::{self, TENANT};
use super::{RoundMetrics, RunReport};
use crate::scenario::{AttackKindSpec, Misbehaviour, Scenario};

/// How long the round deadline (and each secure phase) is when some node
/// may be absent: the coordinator waits that long for nodes that never
/// answer. Without absences rounds close as soon as everyone has sent.
const ABSENCE_TIMEOUT_MS: u64 = 4_000;

/// How long a crafting attacker waits for the round's honest updates.
const COLLUSION_WAIT: Duration = Duration::from_secs(60);

/// Network-engine failures (set-up, TLS, gRPC).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The engine's node set-up failed.
    #[error(transparent)]
    Engine(#[from] super::EngineError),
    /// Mesh set-up or the run failed.
    #[error("{0}")]
    Mesh(String),
}

fn mesh<E: std::fmt::Display>(e: E) -> NetworkError {
    NetworkError::Mesh(e.to_string())
}

/// What a network run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkReport {
    /// Versions committed.
    pub final_version: u64,
    /// Participants per committed round.
    pub participants: Vec<usize>,
    /// SHA-256 of the final global parameters (f32 LE), as the
    /// coordinator signed them.
    pub final_params_sha256: String,
    /// Per committed round with k > 1: the buckets unmasked (from the
    /// coordinator's audit log); empty with k = 1.
    pub buckets: Vec<usize>,
    /// Per committed round with k > 1: the buckets dropped (too few
    /// survivors, e.g. after spoiled shares); empty with k = 1.
    pub buckets_dropped: Vec<usize>,
    /// The same per-round report as the in-process engine writes (from the
    /// coordinator's round summaries and audit log; every committed model
    /// evaluated on the held-out windows). No clean twin.
    pub report: RunReport,
}

/// Whether some node may be absent from a round (the coordinator then has
/// to wait for deadlines).
fn absences_possible(s: &Scenario) -> bool {
    s.dropout.rate > 0.0
        || s.dropout.stragglers > 0.0
        || (s.bucket_size > 1 && s.dropout.after_masked > 0.0)
        || s.attack.as_ref().is_some_and(|a| {
            a.fraction > 0.0
                && (is_crafting(&a.kind) || matches!(a.kind, AttackKindSpec::Protocol { .. }))
        })
}

/// One round's posts on the collusion board.
#[derive(Default)]
struct RoundPosts {
    /// Honest updates (after local DP) and their sample counts, by node.
    honest: BTreeMap<usize, (Vec<f32>, u64)>,
    /// The round's shared crafted update, once computed.
    shared: Option<Option<Vec<f32>>>,
}

/// What the simulated nodes share: the scenario, who attacks, and the
/// honest updates of each round (what an omniscient, colluding attacker
/// of the literature knows).
struct Board {
    s: Scenario,
    attackers: BTreeSet<usize>,
    offline: BTreeSet<usize>,
    rounds: Mutex<BTreeMap<u64, RoundPosts>>,
    posted: Condvar,
    /// The coordinator's federation: which nodes it selected for the open
    /// round (partial participation, quarantine).
    fed: std::sync::OnceLock<Arc<fedmesh_coordinator::Federation>>,
    /// Node index by identity (an attacker's Sybil identities map to it).
    index: BTreeMap<String, usize>,
    /// Identities per attacker node while the attack is active.
    sybils: usize,
}

/// Locks the board, recovering from a poisoned lock (a panicking node
/// thread must not take the whole simulation down).
fn posts(
    m: &Mutex<BTreeMap<u64, RoundPosts>>,
) -> std::sync::MutexGuard<'_, BTreeMap<u64, RoundPosts>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Board {
    fn active(&self, round: u64) -> Option<&crate::scenario::AttackSpec> {
        self.s
            .attack
            .as_ref()
            .filter(|a| a.fraction > 0.0 && round >= a.start_round)
    }

    fn presence(&self, i: usize, round: u64) -> Presence {
        let forced = forced_phase(self.active(round).map(|a| &a.kind))
            .filter(|_| self.attackers.contains(&i));
        draw_presence(&self.s, i, round, &self.offline, forced)
    }

    fn malicious(&self, i: usize, round: u64) -> bool {
        self.attackers.contains(&i) && self.active(round).is_some()
    }

    /// The nodes the coordinator selected for `round`, one entry per
    /// identity (all identities when the round is not open, which cannot
    /// happen while a selected node is in it).
    fn selected(&self, round: u64) -> Vec<usize> {
        if let Some(fed) = self.fed.get()
            && let fedmesh_coordinator::federation::RoundStatus::Open(info) = fed.status()
            && info.round == round
        {
            return info
                .selected
                .iter()
                .filter_map(|n| self.index.get(n.as_str()).copied())
                .collect();
        }
        self.index.values().copied().collect()
    }

    /// (honest nodes present, malicious identities present) among the
    /// identities selected for `round` (a Sybil identity counts once more).
    fn present(&self, round: u64) -> (BTreeSet<usize>, usize) {
        let mut honest = BTreeSet::new();
        let mut malicious_nodes = BTreeSet::new();
        for i in self.selected(round) {
            if matches!(self.presence(i, round), Presence::Present { .. }) {
                if self.malicious(i, round) {
                    malicious_nodes.insert(i);
                } else {
                    honest.insert(i);
                }
            }
        }
        (honest, malicious_nodes.len() * self.sybils)
    }

    fn bad_shares(&self, i: usize, round: u64) -> bool {
        self.attackers.contains(&i)
            && matches!(
                self.active(round).map(|a| &a.kind),
                Some(AttackKindSpec::Protocol {
                    behaviour: Misbehaviour::BadShares,
                    ..
                })
            )
    }

    fn post(&self, round: u64, i: usize, delta: Vec<f32>, samples: u64) {
        let mut rounds = posts(&self.rounds);
        // Rounds before the previous one are decided: their posts can go.
        rounds.retain(|&r, _| r + 1 >= round);
        rounds
            .entry(round)
            .or_default()
            .honest
            .insert(i, (delta, samples));
        drop(rounds);
        self.posted.notify_all();
    }

    /// Crafts attacker `i`'s update for `round` in place; `false` when there
    /// is nothing to craft from.
    fn craft(&self, i: usize, round: u64, update: &mut LocalUpdate) -> bool {
        let Some(a) = self.active(round) else {
            return true;
        };
        let (expected, n_malicious) = self.present(round);
        let deadline = std::time::Instant::now() + COLLUSION_WAIT;
        let mut rounds = posts(&self.rounds);
        loop {
            let have = rounds.get(&round).map_or(0, |r| r.honest.len());
            let now = std::time::Instant::now();
            if have >= expected.len() || now >= deadline {
                if have < expected.len() {
                    warn!(
                        round,
                        have,
                        want = expected.len(),
                        "colluding attacker: crafting from the honest updates that arrived"
                    );
                }
                break;
            }
            rounds = match self.posted.wait_timeout(rounds, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        let posts = rounds.entry(round).or_default();
        let honest: Vec<&[f32]> = posts.honest.values().map(|(d, _)| d.as_slice()).collect();
        let n_total = honest.len() + n_malicious;
        if posts.shared.is_none() {
            let shared = if honest.is_empty() {
                None
            } else {
                match craft_shared(&a.kind, &honest, n_total, n_malicious) {
                    Ok((v, _)) => v,
                    Err(e) => {
                        warn!(round, error = %e, "colluding attackers cannot craft");
                        None
                    }
                }
            };
            posts.shared = Some(shared);
        }
        let shared = posts.shared.as_ref().and_then(Option::as_ref);
        let delta = match craft_for(&self.s, &a.kind, shared, &honest, i, round) {
            Ok(Some(d)) => d,
            Ok(None) => return false,
            Err(e) => {
                warn!(round, error = %e, "attacker cannot craft");
                return false;
            }
        };
        let weights: Vec<f64> = posts.honest.values().map(|(_, w)| *w as f64).collect();
        update.delta = delta;
        update.num_samples = crafted_weight(&weights) as u64;
        true
    }
}

/// One simulated node's view of the board.
struct NodeHook {
    board: Arc<Board>,
    node: usize,
    /// A Sybil identity of an attacker node (takes part only while the
    /// attack is active).
    sybil: bool,
    /// Seed of the node's secure-aggregation randomness.
    secagg_seed: u64,
}

impl SimulationHook for NodeHook {
    fn secagg_seed(&self) -> Option<u64> {
        Some(self.secagg_seed)
    }

    fn corrupt_shares(&self, round: u64) -> bool {
        self.board.bad_shares(self.node, round)
    }

    fn presence(&self, round: u64) -> SimPresence {
        if self.sybil && self.board.active(round).is_none() {
            return SimPresence::Dropped;
        }
        match self.board.presence(self.node, round) {
            Presence::Present { unmask: true } | Presence::Quarantined => SimPresence::Present,
            Presence::Present { unmask: false } => SimPresence::NoUnmask,
            Presence::Dropped | Presence::Offline => SimPresence::Dropped,
            Presence::Straggler => SimPresence::Straggler,
            Presence::Forced(d) => match d {
                fedmesh_crypto::secagg::local::Dropout::BeforeAdvert => SimPresence::Dropped,
                fedmesh_crypto::secagg::local::Dropout::AfterShares => SimPresence::Straggler,
                fedmesh_crypto::secagg::local::Dropout::AfterMasked => SimPresence::NoUnmask,
            },
        }
    }

    fn rewrite(&self, round: u64, update: &mut LocalUpdate) -> SimSend {
        let (b, i) = (&self.board, self.node);
        if !b.malicious(i, round) {
            privatize_honest(&b.s, i, round, &mut update.delta);
            b.post(round, i, update.delta.clone(), update.num_samples);
            return SimSend::Update;
        }
        let Some(a) = b.active(round) else {
            return SimSend::Update;
        };
        if b.bad_shares(i, round) && b.s.bucket_size <= 1 {
            // Without buckets there are no shares to spoil: as in the
            // in-process engine, the sender loses its own update.
            return SimSend::Nothing;
        }
        if is_crafting(&a.kind) {
            return if b.craft(i, round, update) {
                SimSend::UpdateWithoutStats
            } else {
                SimSend::Nothing
            };
        }
        let boost = match &a.kind {
            AttackKindSpec::Scaling { gamma: Some(g), .. } => Some(*g),
            AttackKindSpec::Scaling { gamma: None, .. } => {
                let (honest, malicious) = b.present(round);
                Some(scaling_gamma(&b.s, None, honest.len() + malicious))
            }
            AttackKindSpec::DataPoison { boost, .. } => *boost,
            _ => None,
        };
        if let Some(g) = boost {
            update.delta = crate::attacks::scale(&update.delta, g);
        }
        SimSend::Update
    }
}

/// Runs the scenario over loopback mTLS; `dir` holds the PKI and stores.
pub async fn run(s: &Scenario, dir: &Path) -> Result<NetworkReport, NetworkError> {
    s.validate().map_err(super::EngineError::from)?;
    let now = time::OffsetDateTime::now_utc();
    let pki_dir = dir.join("pki");
    let ca = MeshCa::generate("fedmesh-sim CA", now, 2).map_err(mesh)?;
    pki::write_public(&layout::ca_cert(&pki_dir), ca.cert_pem()).map_err(mesh)?;
    pki::write_secret(&layout::ca_key(&pki_dir), ca.key_pem()).map_err(mesh)?;
    let coord_id: NodeId = "sim".parse().map_err(mesh)?;
    let ip = "127.0.0.1".parse().map_err(mesh)?;
    let coord = ca
        .issue_coordinator(&coord_id, &["localhost".into()], &[ip], now, 1)
        .map_err(mesh)?;
    pki::write_public(&layout::coordinator_cert(&pki_dir), &coord.cert_pem).map_err(mesh)?;
    pki::write_secret(&layout::coordinator_key(&pki_dir), &coord.key_pem).map_err(mesh)?;
    let tenant: TenantId = TENANT.parse().map_err(mesh)?;
    let attackers = if s.attack.as_ref().is_some_and(|a| a.fraction > 0.0) {
        choose_attackers(s)
    } else {
        BTreeSet::new()
    };
    let poison = poison_of(s);
    let nodes: Vec<_> = (0..s.fleet.nodes)
        .map(|i| build_node(s, i, poison.filter(|_| attackers.contains(&i))))
        .collect::<Result<_, _>>()?;
    let offline: BTreeSet<usize> = s.dropout.always_offline.iter().copied().collect();
    let sybils = s
        .attack
        .as_ref()
        .filter(|a| a.fraction > 0.0)
        .map_or(1, |a| a.sybils.max(1));
    // Every identity that connects (the in-process engine's coordinator
    // samples among the same ones).
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let identities = tenant::identities(s, &names, &attackers);
    let online = identities.len();
    let board = Arc::new(Board {
        s: s.clone(),
        attackers,
        offline: offline.clone(),
        rounds: Mutex::new(BTreeMap::new()),
        posted: Condvar::new(),
        fed: std::sync::OnceLock::new(),
        index: identities
            .iter()
            .map(|id| (id.name.clone(), id.node))
            .collect(),
        sybils,
    });
    let timeout_ms = if absences_possible(s) {
        ABSENCE_TIMEOUT_MS
    } else {
        60_000
    };
    for ident in &identities {
        let name = &ident.name;
        let id: NodeId = name.parse().map_err(mesh)?;
        let c = ca.issue_node(&tenant, &id, now, 1).map_err(mesh)?;
        pki::write_public(&layout::node_cert(&pki_dir, TENANT, name), &c.cert_pem).map_err(mesh)?;
        pki::write_secret(&layout::node_key(&pki_dir, TENANT, name), &c.key_pem).map_err(mesh)?;
    }
    let cfg_text = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
[tls]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
[[tenants]]
{tenant}
"#,
        data = dir.join("coordinator").display(),
        ca = layout::ca_cert(&pki_dir).display(),
        cert = layout::coordinator_cert(&pki_dir).display(),
        key = layout::coordinator_key(&pki_dir).display(),
        tenant = tenant::tenant_toml(s, "tenants.", online, timeout_ms)?,
    );
    let cfg = CoordinatorConfig::from_toml(&cfg_text, Path::new("sim.toml")).map_err(mesh)?;
    let coord_pki = Pki::load(&cfg.tls.ca_cert, &cfg.tls.cert, &cfg.tls.key).map_err(mesh)?;
    let coordinator = Coordinator::open(&cfg, &coord_pki).map_err(mesh)?;
    let fed = coordinator
        .federation(TENANT)
        .ok_or_else(|| NetworkError::Mesh("tenant missing".into()))?;
    let _ = board.fed.set(fed.clone());
    let mut summaries = fed.summaries();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(mesh)?;
    let addr = listener.local_addr().map_err(mesh)?;
    let (coord_stop_tx, coord_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coordinator.serve(listener, async move {
        let _ = coord_stop_rx.await;
    }));
    let ca_pem = ca.cert_pem().to_string();
    let verifier = Arc::new(CertVerifier::new(&ca_pem).map_err(mesh)?);
    let mut running = Vec::new();
    let mut agents: Vec<Option<fedmesh_node::agent::Agent>> =
        nodes.into_iter().map(|n| Some(n.agent)).collect();
    for ident in &identities {
        let (name, i, sybil) = (&ident.name, ident.node, ident.sybil > 0);
        // A Sybil identity gets its own agent over the attacker's data.
        let agent = match agents.get_mut(i).and_then(Option::take) {
            Some(a) if !sybil => a,
            other => {
                if let Some(a) = other {
                    agents[i] = Some(a);
                }
                build_node_as(
                    s,
                    i,
                    poison.filter(|_| board.attackers.contains(&i)),
                    name.clone(),
                )?
                .agent
            }
        };
        let cert =
            std::fs::read_to_string(layout::node_cert(&pki_dir, TENANT, name)).map_err(mesh)?;
        let key = SecretPem::new(
            std::fs::read_to_string(layout::node_key(&pki_dir, TENANT, name)).map_err(mesh)?,
        );
        let mut settings = federation_from_pem(
            &addr.to_string(),
            "localhost",
            &ca_pem,
            &cert,
            &key,
            verifier.clone(),
            Duration::from_secs(2),
        )
        .map_err(mesh)?;
        settings.sim = Some(Arc::new(NodeHook {
            board: board.clone(),
            node: i,
            sybil,
            secagg_seed: tenant::secagg_seed(s, i, ident.sybil),
        }));
        running.push(Node::new(agent).with_federation(settings).start());
    }
    // Round numbers advance per attempt, committed or aborted, as in the
    // in-process engine: the run is over once round `s.rounds` is decided.
    let mut committed: BTreeMap<u64, fedmesh_coordinator::federation::RoundSummary> =
        BTreeMap::new();
    let mut record = |summary: fedmesh_coordinator::federation::RoundSummary| {
        if summary.round <= s.rounds {
            committed.insert(summary.round, summary);
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + 20 * s.rounds);
    loop {
        let decided = match fed.status() {
            fedmesh_coordinator::federation::RoundStatus::Committed { round, .. }
            | fedmesh_coordinator::federation::RoundStatus::Aborted { round, .. } => {
                round >= s.rounds
            }
            fedmesh_coordinator::federation::RoundStatus::Open(info) => info.round > s.rounds,
            fedmesh_coordinator::federation::RoundStatus::Idle { .. } => false,
        };
        while let Ok(summary) = summaries.try_recv() {
            record(summary);
        }
        if decided {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NetworkError::Mesh("rounds did not finish in time".into()));
        }
        // Wake on the next commit, or look at the status again soon (an
        // aborted round sends no summary).
        if let Ok(Ok(summary)) =
            tokio::time::timeout(Duration::from_millis(50), summaries.recv()).await
        {
            record(summary);
        }
    }
    let participants: Vec<usize> = committed.values().map(|x| x.participants).collect();
    let final_version = committed.values().last().map_or(0, |x| x.version);
    running.iter().for_each(RunningNode::stop);
    for r in running {
        r.join().await;
    }
    // The model of round `s.rounds` as the coordinator signed it (a node
    // may already be working on the next round).
    let signed = fed.model(final_version).map_err(mesh)?;
    let (_, body) = fedmesh_coordinator::federation::decode_signed(&signed).map_err(mesh)?;
    let tensor = body
        .params
        .ok_or_else(|| NetworkError::Mesh(format!("version {final_version} has no parameters")))?;
    let params = fedmesh_proto::decode_f32(&tensor, usize::MAX).map_err(mesh)?;
    let audit: BTreeMap<u64, fedmesh_coordinator::store::AuditEntry> = fed
        .audit_log()
        .map_err(mesh)?
        .into_iter()
        .filter(|e| e.round >= 1 && e.round <= s.rounds)
        .map(|e| (e.round, e))
        .collect();
    let buckets = audit
        .values()
        .filter_map(|e| e.secure.as_ref().map(|x| x.buckets))
        .collect();
    let buckets_dropped = audit
        .values()
        .filter_map(|e| e.secure.as_ref().map(|x| x.dropped))
        .collect();
    let final_params_sha256 = sha256_params(&params);
    let report = round_report(s, &board, &committed, &audit, &final_params_sha256, |v| {
        let bytes = fed.model(v).map_err(mesh)?;
        fedmesh_node::agent::verify_global_model(
            &bytes,
            &verifier,
            TENANT,
            None,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(mesh)
    });
    let _ = coord_stop_tx.send(());
    let _ = server.await;
    let report = report?;
    Ok(NetworkReport {
        final_version,
        participants,
        final_params_sha256,
        buckets,
        buckets_dropped,
        report,
    })
}

/// The per-round report of a network run, in the in-process engine's
/// format: participation from the coordinator's round summaries, what the
/// rule and reputation did from its audit log, dropouts from the presence
/// the simulation drew, and every evaluated model loaded from the
/// coordinator's signed versions.
fn round_report(
    s: &Scenario,
    board: &Board,
    committed: &BTreeMap<u64, fedmesh_coordinator::federation::RoundSummary>,
    audit: &BTreeMap<u64, fedmesh_coordinator::store::AuditEntry>,
    final_params_sha256: &str,
    load: impl Fn(u64) -> Result<fedmesh_node::agent::GlobalModel, NetworkError>,
) -> Result<RunReport, NetworkError> {
    let held = heldout(s)?;
    let target = s.attack_target();
    // Every identity of an attacker node (Sybils included).
    let malicious: BTreeSet<&str> = board
        .index
        .iter()
        .filter(|(_, i)| board.attackers.contains(i))
        .map(|(name, _)| name.as_str())
        .collect();
    let mut version = 0;
    let mut global: Option<fedmesh_node::agent::GlobalModel> = None;
    let mut rounds = Vec::new();
    for round in 1..=s.rounds {
        // Who was selected is known only for full participation (the
        // coordinator samples otherwise); stragglers are counted then, as
        // the in-process engine counts them (a forced dropout is not one).
        let full = s.fleet.participation >= 1.0;
        let stragglers = if full {
            (0..s.fleet.nodes)
                .filter(|&i| matches!(board.presence(i, round), Presence::Straggler))
                .count()
        } else {
            0
        };
        let mut m = RoundMetrics {
            sampled: s.fleet.nodes,
            stragglers,
            ..RoundMetrics::new(round, s.rule.rule.name(), version)
        };
        match committed.get(&round) {
            Some(sum) => {
                version = sum.version;
                m.version = version;
                m.participants = sum.participants;
                if !full {
                    m.sampled = sum.selected;
                }
                m.mean_train_loss = Some(sum.mean_train_loss);
                m.shadow = sum.quarantined;
                m.rule_inputs = match &sum.secure {
                    Some(x) => x.buckets.saturating_sub(x.dropped + x.rejected),
                    None => sum.participants,
                };
                if let Some(x) = &sum.secure {
                    m.buckets = x.buckets;
                }
                if let Some(e) = audit.get(&round) {
                    m.malicious = e
                        .participants
                        .iter()
                        .filter(|p| malicious.contains(p.as_str()))
                        .count();
                    m.rule_excluded = e.excluded.iter().map(|(n, _)| n.clone()).collect();
                    m.rule_excluded.sort();
                    m.rule_excluded_malicious = m
                        .rule_excluded
                        .iter()
                        .filter(|n| malicious.contains(n.as_str()))
                        .count();
                    m.quarantined = e.quarantined.clone();
                    m.quarantined_malicious = m
                        .quarantined
                        .iter()
                        .filter(|n| malicious.contains(n.as_str()))
                        .count();
                    m.reputation_events = e
                        .reputation
                        .iter()
                        .map(|d| format!("{} {}", d.node, d.action.label()))
                        .collect();
                }
                global = Some(load(version)?);
            }
            None => {
                m.aborted = Some(
                    "aborted by the coordinator (too few updates for the quorum or the rule)"
                        .into(),
                );
            }
        }
        m.dropped = if full {
            let offline = board.offline.len().min(s.fleet.nodes);
            (s.fleet.nodes - offline).saturating_sub(m.participants + m.shadow) + offline
        } else {
            m.sampled.saturating_sub(m.participants + m.shadow)
        };
        if let Some(g) = global.as_ref()
            && g.version > 0
            && (round % s.eval.every == 0 || round == s.rounds)
        {
            evaluate_into(&mut m, g, &held, s, target)?;
        }
        rounds.push(m);
    }
    let aggregation = if s.bucket_size > 1 {
        "secagg (masked buckets, over gRPC)"
    } else {
        "plaintext (k = 1, over gRPC)"
    };
    Ok(RunReport {
        rounds,
        final_version: version,
        final_params_sha256: final_params_sha256.to_string(),
        ..RunReport::of_scenario(
            s,
            "network",
            aggregation,
            board.attackers.iter().copied().collect(),
            target,
        )
    })
}
