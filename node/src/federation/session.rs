//! The node's async runtime: the detection loop (never stops, with or
//! without a coordinator) and the federation loop (dial out, join, follow
//! the round stream, train when selected, install verified models,
//! reconnect with backoff).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fedmesh_crypto::{CertSigner, CertVerifier};
use fedmesh_proto::v1::{self, round_event::Event as Ev};
use rand::Rng;
use tokio::sync::watch;
use tonic::Code;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::agent::{Agent, AgentError, verify_global_model};
use crate::alerting::alert::AlertPipeline;
use crate::detection::features::{NUM_FEATURES, feature_schema_hash};
use crate::federation::client::{ClientError, Connector};
use crate::sim::synthetic::SyntheticSource;

/// Shared handle to the agent. The lock is never held across an await or
/// during training.
pub type SharedAgent = Arc<Mutex<Agent>>;

/// Locks the agent (a poisoned lock still holds consistent data: every
/// mutation completes before unlock).
pub fn lock(agent: &SharedAgent) -> MutexGuard<'_, Agent> {
    agent.lock().unwrap_or_else(|p| p.into_inner())
}

/// Federation loop failures within one session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Transport.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// An RPC failed.
    #[error("{rpc}: {status}")]
    Rpc {
        /// Which call.
        rpc: &'static str,
        /// Status.
        status: tonic::Status,
    },
    /// The coordinator's federation does not fit this node.
    #[error("incompatible federation: {0}")]
    Incompatible(String),
    /// Agent failure.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

fn rpc(rpc: &'static str) -> impl FnOnce(tonic::Status) -> SessionError {
    move |status| SessionError::Rpc { rpc, status }
}

/// Everything the federation loop needs.
#[derive(Clone)]
pub struct FederationSettings {
    /// How to reach the coordinator.
    pub connector: Connector,
    /// Verifies global-model signatures against the mesh CA (and the
    /// peers' signed secure-aggregation keys).
    pub verifier: Arc<CertVerifier>,
    /// This node's mesh identity key: signs secure-aggregation messages.
    pub signer: Arc<CertSigner>,
    /// Seed for the secure-aggregation randomness (keys, masks, rounding,
    /// DP noise). `None` (production) draws from the OS; simulations set it
    /// so that a run replays bit for bit. Never set it on a real node.
    pub secagg_seed: Option<u64>,
    /// Poisoning for simulated malicious nodes (the harness runs attackers
    /// with the real node code). `None` on every real node; the node binary
    /// has no way to set it.
    pub tamper: Option<Tamper>,
    /// Simulated presence and update rewriting, for the harness's network
    /// engine (attackers that collude, dropouts at chosen protocol phases).
    /// `None` on every real node; the node binary has no way to set it.
    pub hook: Option<Arc<dyn SimulationHook>>,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
}

impl FederationSettings {
    /// This node's presence in `round`: always `Present` on a real node.
    pub(crate) fn presence(&self, round: u64) -> SimPresence {
        self.hook
            .as_ref()
            .map_or(SimPresence::Present, |h| h.presence(round))
    }
}

/// How a simulated malicious node poisons its update before sending it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tamper {
    /// Model replacement: the update times a factor, and (under secure
    /// aggregation) quantized with a clip norm that factor times larger,
    /// so the round's clip does not neutralize it.
    Scale(f32),
    /// Sign flip: the update times −factor (same clipping bypass).
    SignFlip(f32),
}

impl Tamper {
    /// Applies the poisoning to `delta`.
    pub fn apply(&self, delta: &mut [f32]) {
        let f = match *self {
            Tamper::Scale(f) => f,
            Tamper::SignFlip(f) => -f,
        };
        delta.iter_mut().for_each(|x| *x *= f);
    }

    /// How much larger than the round's clip norm the attacker quantizes.
    pub fn clip_factor(&self) -> f64 {
        match *self {
            Tamper::Scale(f) | Tamper::SignFlip(f) => f64::from(f.abs()).max(1.0),
        }
    }
}

/// How a simulated node behaves in a round it is selected for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimPresence {
    /// Takes part normally.
    Present,
    /// Drops out before doing anything (k > 1: before advertising keys).
    Dropped,
    /// Misses the deadline: sends nothing in time (k > 1: stops after
    /// sharing its keys, so its pairwise masks must be recovered).
    Straggler,
    /// k > 1: sends its masked update, then stops answering (the
    /// coordinator must recover its self mask from the peers' shares). At
    /// k = 1 the same as `Present`.
    NoUnmask,
}

/// What a simulated node sends after [`SimulationHook::rewrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimSend {
    /// Sends the (rewritten) update with its scaler statistics.
    Update,
    /// Sends the update without scaler statistics (k = 1; a crafted update
    /// has no data behind it).
    UpdateWithoutStats,
    /// Sends nothing this round.
    Nothing,
}

/// The harness's hook into the real node code: who takes part in a round,
/// and what a (possibly malicious) node sends. Called on a blocking thread,
/// so an implementation may wait — for a bounded time — for other nodes'
/// updates (colluding attackers craft theirs from the honest ones).
pub trait SimulationHook: Send + Sync {
    /// Presence in `round`, decided when the round opens.
    fn presence(&self, round: u64) -> SimPresence;
    /// Rewrites the freshly trained `update` for `round` in place.
    fn rewrite(&self, round: u64, update: &mut crate::agent::LocalUpdate) -> SimSend;
    /// k > 1: whether this node spoils the Shamir shares it sends in
    /// `round` (protocol misbehaviour: its peers cannot decrypt them).
    fn corrupt_shares(&self, _round: u64) -> bool {
        false
    }
}

/// Trains `job` on a blocking thread and passes the update through the
/// simulation hook, if any.
pub(crate) async fn train_and_rewrite(
    job: crate::agent::TrainingJob,
    hook: Option<Arc<dyn SimulationHook>>,
    round: u64,
) -> Result<(crate::agent::LocalUpdate, SimSend), SessionError> {
    tokio::task::spawn_blocking(move || {
        let mut update = job.run()?;
        let send = hook.map_or(SimSend::Update, |h| h.rewrite(round, &mut update));
        Ok::<_, AgentError>((update, send))
    })
    .await
    .map_err(|e| AgentError::Model(format!("training task failed: {e}")))?
    .map_err(SessionError::from)
}

/// Runs the federation loop until `shutdown` flips to true.
pub async fn run_federation(
    agent: SharedAgent,
    fs: FederationSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tenant, node) = {
        let a = lock(&agent);
        (a.settings().tenant.clone(), a.settings().node.clone())
    };
    let span = info_span!("node", tenant = %tenant, node = %node);
    async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let result = tokio::select! {
                r = session(&agent, &fs, &mut backoff) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(()) => debug!("round stream ended; reconnecting"),
                Err(SessionError::Incompatible(m)) => {
                    warn!(reason = %m, "federation incompatible; retrying later")
                }
                Err(e) => warn!(error = %e, "federation session failed; detection continues"),
            }
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 4);
            let pause = backoff + Duration::from_millis(jitter);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(fs.max_backoff);
        }
    }
    .instrument(span)
    .await
}

async fn session(
    agent: &SharedAgent,
    fs: &FederationSettings,
    backoff: &mut Duration,
) -> Result<(), SessionError> {
    let (tenant, node, have) = {
        let a = lock(agent);
        (
            a.settings().tenant.clone(),
            a.settings().node.clone(),
            a.global_version(),
        )
    };
    let mut client = fs.connector.connect().await?;
    let join = client
        .join(v1::JoinRequest {
            tenant: tenant.clone(),
            node: node.clone(),
            feature_schema: feature_schema_hash().to_vec(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(rpc("Join"))?
        .into_inner();
    let spec = join.model_spec.unwrap_or_default();
    let hidden: Vec<usize> = spec.hidden.iter().map(|&h| h as usize).collect();
    if spec.input_dim as usize != NUM_FEATURES
        || join.schema_hash
            != fedmesh_proto::model::model_schema_hash(
                &feature_schema_hash(),
                NUM_FEATURES,
                &hidden,
            )
    {
        return Err(SessionError::Incompatible(
            "model schema differs from this node's".into(),
        ));
    }
    info!(version = join.current_version, have = ?have, "joined federation");
    sync_model(agent, fs, &mut client, 0).await?;
    let have_version = lock(agent).global_version().unwrap_or(0);
    let mut stream = client
        .watch_rounds(v1::WatchRoundsRequest { have_version })
        .await
        .map_err(rpc("WatchRounds"))?
        .into_inner();
    *backoff = Duration::from_millis(200);
    let mut pending: Option<v1::RoundEvent> = None;
    // A secure round announces each phase with a new event; a node takes
    // part once per round (a node that left a round does not rejoin it).
    let mut secure_round: Option<u64> = None;
    loop {
        let ev = match pending.take() {
            Some(ev) => ev,
            None => match stream.message().await.map_err(rpc("WatchRounds"))? {
                Some(ev) => ev,
                None => break,
            },
        };
        match ev.event {
            Some(Ev::Open(o)) if o.secure.is_some() && secure_round == Some(o.round) => {
                debug!(round = o.round, "secure round already handled");
            }
            Some(Ev::Open(o)) if o.selected && o.secure.is_some() => {
                secure_round = Some(o.round);
                let span = info_span!("round", tenant = %tenant, round = o.round, node = %node);
                pending =
                    crate::federation::secure::participate(agent, fs, &mut client, &mut stream, &o)
                        .instrument(span)
                        .await?;
            }
            Some(Ev::Open(o)) if o.selected => {
                let span = info_span!("round", tenant = %tenant, round = o.round, node = %node);
                participate(agent, fs, &mut client, &o)
                    .instrument(span)
                    .await?;
            }
            Some(Ev::Open(o)) => debug!(round = o.round, "round open without this node"),
            Some(Ev::Committed(v1::ModelCommitted { version, .. }))
            | Some(Ev::Idle(v1::Idle {
                current_version: version,
                ..
            })) if lock(agent)
                .global_version()
                .is_none_or(|have| have < version) =>
            {
                sync_model(agent, fs, &mut client, version).await?;
            }
            Some(Ev::Committed(_)) => {}
            Some(Ev::Aborted(a)) => info!(round = a.round, reason = %a.reason, "round aborted"),
            Some(Ev::Idle(i)) => {
                debug!(version = i.current_version, reason = %i.reason, "federation idle")
            }
            None => {}
        }
    }
    Ok(())
}

/// Fetches `version` (0 = latest), verifies and installs it if newer.
pub(crate) async fn sync_model(
    agent: &SharedAgent,
    fs: &FederationSettings,
    client: &mut v1::federation_client::FederationClient<tonic::transport::Channel>,
    version: u64,
) -> Result<(), SessionError> {
    let signed = client
        .get_model(v1::GetModelRequest { version })
        .await
        .map_err(rpc("GetModel"))?
        .into_inner();
    let bytes = prost::Message::encode_to_vec(&signed);
    let mut a = lock(agent);
    let have = a.global_version();
    let g = verify_global_model(
        &bytes,
        &fs.verifier,
        &a.settings().tenant.clone(),
        have,
        time::OffsetDateTime::now_utc(),
    )?;
    if have.is_some_and(|h| h >= g.version) {
        return Ok(());
    }
    a.install_global(g)?;
    Ok(())
}

async fn participate(
    agent: &SharedAgent,
    fs: &FederationSettings,
    client: &mut v1::federation_client::FederationClient<tonic::transport::Channel>,
    open: &v1::RoundOpen,
) -> Result<(), SessionError> {
    if lock(agent).global_version() != Some(open.base_version) {
        sync_model(agent, fs, client, open.base_version).await?;
    }
    let presence = fs.presence(open.round);
    if matches!(presence, SimPresence::Dropped | SimPresence::Straggler) {
        info!(
            round = open.round,
            ?presence,
            "simulated: not taking part in this round"
        );
        return Ok(());
    }
    let training = open.training.unwrap_or_default();
    let job = {
        let a = lock(agent);
        let Some(base) = a.global() else {
            return Ok(());
        };
        if base.version != open.base_version {
            warn!(
                have = base.version,
                want = open.base_version,
                "cannot train from the round's base version"
            );
            return Ok(());
        }
        match a.training_job(base, &training, open.round) {
            Ok(job) => job,
            Err(AgentError::NotEnoughData { have, need }) => {
                info!(have, need, "not enough local windows to train this round");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    };
    let (mut update, send) = train_and_rewrite(job, fs.hook.clone(), open.round).await?;
    if send == SimSend::Nothing {
        info!(round = open.round, "simulated: sending nothing this round");
        return Ok(());
    }
    if let Some(t) = &fs.tamper {
        t.apply(&mut update.delta);
    }
    let (tenant, node, schema) = {
        let a = lock(agent);
        let schema = a
            .global()
            .map(|g| g.schema_hash.to_vec())
            .unwrap_or_default();
        (
            a.settings().tenant.clone(),
            a.settings().node.clone(),
            schema,
        )
    };
    let req = v1::UpdateRequest {
        tenant,
        node,
        round: open.round,
        base_version: open.base_version,
        delta: Some(fedmesh_proto::encode_f32(
            &update.delta,
            &[update.delta.len() as u64],
        )),
        num_samples: update.num_samples,
        scaler_stats: (send == SimSend::Update).then(|| v1::ScalerStats {
            count: update.stats.count,
            sum: update.stats.sum.clone(),
            sum_sq: update.stats.sum_sq.clone(),
        }),
        train_loss: update.train_loss,
        schema_hash: schema,
    };
    match client.submit_update(req).await {
        Ok(ack) => {
            let ack = ack.into_inner();
            lock(agent).note_trained(update.train_loss);
            info!(
                loss = update.train_loss,
                samples = update.num_samples,
                received = ack.received,
                expected = ack.expected,
                "update submitted"
            );
            Ok(())
        }
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::AlreadyExists) => {
            info!(status = %s, "update not accepted for this round");
            Ok(())
        }
        Err(s) => Err(SessionError::Rpc {
            rpc: "SubmitUpdate",
            status: s,
        }),
    }
}

/// Runs the synthetic source in real time: one window every `window_ms`
/// (scaled by `speedup`), scoring and alerting, until `shutdown`.
pub async fn run_synthetic_detection(
    agent: SharedAgent,
    mut source: SyntheticSource,
    mut pipeline: AlertPipeline,
    tick: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let (idx, events) = source.next_window();
        process_window(
            &agent,
            &events,
            (idx + 1) * source.window_ms(),
            &mut pipeline,
        );
    }
}

/// Feeds one window's events to the agent, closes the window at `end_ms`,
/// runs the rule layer over the same events and sends every alert (rule
/// alerts first) through the pipeline. Failures are logged; the loop goes
/// on. Returns the alerts.
pub fn process_window(
    agent: &SharedAgent,
    events: &[crate::telemetry::Event],
    end_ms: u64,
    pipeline: &mut AlertPipeline,
) -> Vec<crate::alerting::alert::Alert> {
    let (model_alerts, tenant, node) = {
        let mut a = lock(agent);
        for e in events {
            a.observe(e);
        }
        let r = a.close_window(end_ms);
        (r, a.settings().tenant.clone(), a.settings().node.clone())
    };
    let span = tracing::debug_span!("window", tenant = %tenant, node = %node, end_ms);
    let _g = span.enter();
    let model_alerts = model_alerts.unwrap_or_else(|e| {
        warn!(error = %e, "window processing failed");
        Vec::new()
    });
    pipeline.dispatch(events, model_alerts, &tenant, &node)
}

/// Parser of one JSON line into events.
pub type LineParser =
    fn(&str) -> Result<Vec<crate::telemetry::Event>, crate::telemetry::events::ParseError>;

/// Starts a blocking reader thread for a JSON-lines source (a followed file
/// or stdin) that sends parsed events into `tx` until `stop` flips or the
/// receiver is gone. Parse statistics are logged when it ends.
pub fn spawn_line_source(
    name: &'static str,
    path: Option<std::path::PathBuf>,
    from_start: bool,
    parser: LineParser,
    tx: tokio::sync::mpsc::Sender<crate::telemetry::Event>,
    stop: watch::Receiver<bool>,
    counters: Arc<crate::ops::exposition::SourceCounters>,
) {
    let slot = crate::ops::exposition::source_index(name);
    use crate::telemetry::events::{FollowFile, JsonLineReader, StartAt};
    let send_all =
        move |events: Vec<crate::telemetry::Event>,
              tx: &tokio::sync::mpsc::Sender<crate::telemetry::Event>| {
            for e in events {
                if tx.blocking_send(e).is_err() {
                    return false;
                }
            }
            true
        };
    let spawned = std::thread::Builder::new()
        .name(format!("{name}-reader"))
        .spawn(move || match path {
            Some(path) => {
                let start = if from_start {
                    StartAt::Beginning
                } else {
                    StartAt::End
                };
                let mut follow = FollowFile::new(path.clone(), start, parser);
                info!(source = name, path = %path.display(), "following event file");
                while !*stop.borrow() {
                    let r = follow.wait_events(Duration::from_millis(250));
                    counters.parse_errors[slot].store(
                        follow.stats().skipped(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    match r {
                        Ok(events) => {
                            if !send_all(events, &tx) {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(source = name, error = %e, "event file unreadable; retrying");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
                info!(
                    source = name,
                    lines = follow.stats().lines,
                    events = follow.stats().events,
                    skipped = follow.stats().skipped(),
                    "event reader stopped"
                );
            }
            None => {
                info!(source = name, "reading events from stdin");
                let mut reader = JsonLineReader::new(std::io::stdin().lock(), parser);
                while let Some(ev) = reader.next() {
                    counters.parse_errors[slot].store(
                        reader.stats().skipped(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    match ev {
                        Ok(e) => {
                            if tx.blocking_send(e).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!(source = name, error = %e, "stdin failed");
                            break;
                        }
                    }
                }
                let st = reader.stats();
                info!(
                    source = name,
                    lines = st.lines,
                    events = st.events,
                    skipped = st.skipped(),
                    "stdin closed"
                );
            }
        });
    if let Err(e) = spawned {
        warn!(source = name, error = %e, "cannot start reader thread");
    }
}

/// Real-time detection over real sources: every `tick`, samples the cgroup
/// collector (if any), drains the events the JSON-line readers delivered,
/// closes a window at the wall-clock time, scores it and emits alerts.
pub async fn run_live_detection(
    agent: SharedAgent,
    mut cgroup: Option<crate::telemetry::cgroup::CgroupCollector>,
    mut events: tokio::sync::mpsc::Receiver<crate::telemetry::Event>,
    mut pipeline: AlertPipeline,
    tick: Duration,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<crate::ops::exposition::SourceCounters>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cgroup_skips = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut batch = Vec::new();
        if let Some(c) = cgroup.take() {
            let (c, r) = match tokio::task::spawn_blocking(move || {
                let mut c = c;
                let r = c.sample(now_ms);
                (c, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "cgroup sampling task failed; cgroup source disabled");
                    continue;
                }
            };
            cgroup = Some(c);
            match r {
                Ok((evs, stats)) => {
                    let skipped =
                        stats.missing_files + stats.unreadable_files + stats.malformed_lines;
                    if skipped > cgroup_skips {
                        debug!(
                            skipped,
                            containers = stats.containers,
                            "cgroup files skipped"
                        );
                    }
                    cgroup_skips = skipped;
                    counters.parse_errors[crate::ops::exposition::source_index("cgroup")]
                        .fetch_add(
                            stats.malformed_lines + stats.unreadable_files,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    batch.extend(evs);
                }
                Err(e) => warn!(error = %e, "cgroup sampling failed"),
            }
        }
        while let Ok(e) = events.try_recv() {
            batch.push(e);
        }
        process_window(&agent, &batch, now_ms, &mut pipeline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::AgentSettings;
    use crate::alerting::alert::AlertSinks;
    use crate::config::DetectorConfig;
    use crate::detection::rules::{RuleEngine, RulesConfig};
    use crate::sim::synthetic::Profile;
    use crate::telemetry::{ContainerId, Event, KernelDetail, KernelEventKind};

    fn agent() -> SharedAgent {
        let settings = AgentSettings {
            tenant: "acme".into(),
            node: "n1".into(),
            detector: DetectorConfig {
                false_alarm_rate: 0.01,
                train_buffer: 4096,
                min_train_windows: 32,
                bootstrap_after_windows: 80,
                top_features: 3,
                ..DetectorConfig::default()
            },
            seed: 7,
        };
        Arc::new(Mutex::new(
            Agent::new(settings, None, None, time::OffsetDateTime::now_utc()).unwrap(),
        ))
    }

    fn setuid_root(container: &str, ts_ms: u64) -> Event {
        Event::Kernel {
            container: ContainerId(container.into()),
            ts_ms,
            kind: KernelEventKind::Setuid,
            detail: KernelDetail {
                process: Some("/usr/bin/su".into()),
                user: Some("www-data".into()),
                uid: Some(33),
                target_uid: Some(0),
                ..KernelDetail::default()
            }
            .boxed(),
        }
    }

    #[test]
    fn one_setuid_root_event_in_a_normal_window_alerts() {
        let agent = agent();
        let mut src = SyntheticSource::new(
            5,
            &[
                ("web-1".into(), Profile::Web),
                ("db-1".into(), Profile::Database),
                ("batch-1".into(), Profile::Batch),
                ("ml-1".into(), Profile::Ml),
            ],
            10_000,
        );
        let mut pipeline =
            AlertPipeline::new(RuleEngine::new(&RulesConfig::default()), AlertSinks::none());
        // No model yet: the rule alerts on its own.
        let (w, mut events) = src.next_window();
        events.push(setuid_root("web-1", w * 10_000 + 4_321));
        let alerts = process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        let rule = a.rule.as_ref().unwrap();
        assert_eq!(rule.id, "setuid_root");
        assert_eq!(
            (a.container.as_str(), a.ts_ms),
            ("web-1", w * 10_000 + 4_321)
        );
        assert_eq!(a.severity, crate::alerting::alert::Severity::Critical);
        assert_eq!((a.score, a.threshold), (None, None));
        assert!(rule.event.contains("uid=33") && rule.event.contains("target_uid=0"));
        // Train the local model on benign windows.
        for _ in 0..25 {
            let (w, events) = src.next_window();
            process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        }
        assert!(lock(&agent).detector().is_some(), "bootstrapped");
        // A normal window with one decisive event: the rule alert is there
        // whatever the model says (here the model flags the window too, on
        // the privilege-event feature; both alerts are kept, rule first).
        let (w, mut events) = src.next_window();
        let n = events.len();
        events.push(setuid_root("web-1", w * 10_000 + 10));
        let alerts = process_window(&agent, &events, (w + 1) * 10_000, &mut pipeline);
        assert!(n >= 8, "an otherwise normal window ({n} events)");
        let web: Vec<_> = alerts.iter().filter(|a| a.container == "web-1").collect();
        assert_eq!(
            web[0].rule.as_ref().map(|r| r.id.as_str()),
            Some("setuid_root")
        );
        assert_eq!(
            web[0].ts_ms,
            w * 10_000 + 10,
            "rule alerts carry the event time"
        );
        assert!(
            web[1..]
                .iter()
                .all(|a| a.rule.is_none() && a.score.is_some())
        );
        assert!(
            alerts.iter().all(|a| a.container == "web-1"),
            "benign containers stay quiet: {alerts:?}"
        );
    }
}
