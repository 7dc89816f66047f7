//! Optional response actions on alerts, off by default.
//!
//! `mode = "off" | "dry-run" | "pause" | "disconnect"`. For an alert at or
//! above `min_severity` (model alerts are `medium`, or `high` from twice the
//! threshold on; rule alerts carry their rule's severity), the offending
//! container is paused (`POST /containers/{id}/pause`) or disconnected from
//! every network it is attached to (`POST /networks/{net}/disconnect` with
//! `{"Container": id, "Force": true}`) through the Docker Engine API.
//! `dry-run` decides exactly as an enforcing mode would, logs the action that
//! `dry_run_action` (default `pause`) would take, and makes no change.
//!
//! The layer fails closed. It acts only when all of these hold, in order:
//!
//! 1. the node is not learning (it has a detector with a calibrated
//!    threshold);
//! 2. the container's identity is resolved — full id, name and image read
//!    from `GET /containers/{id}/json` just before acting, so an allowlist
//!    can never miss a container whose name the identity cache had not
//!    learnt yet;
//! 3. neither its id, name nor image is allowlisted;
//! 4. it has been running for at least `warmup_s`;
//! 5. no action on it succeeded in the last `min_interval_s` (only a
//!    successful action counts; the memory lives in the node's store and
//!    survives restarts).
//!
//! Every decision past `min_severity` is written to the sinks as a response
//! record (the alert with `response` set: action, `done`/`failed`/`would`/
//! `refused`, and the reason) and counted in
//! `fedmesh_node_responses_total{action,mode,result}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::alerting::alert::{Alert, ResponseRecord};
use crate::alerting::sink::AlertSinks;
use crate::detection::severity::Severity;
use crate::ops::docker::{ContainerInfo, DockerClient, DockerError, IdentityCache};

/// What the response layer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseMode {
    /// Nothing (default).
    #[default]
    Off,
    /// Decide, log and count what would be done; no change is made.
    DryRun,
    /// Pause the container.
    Pause,
    /// Disconnect the container from its networks.
    Disconnect,
}

/// An action on a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseAction {
    /// `POST /containers/{id}/pause`.
    #[default]
    Pause,
    /// `POST /networks/{net}/disconnect` for each network.
    Disconnect,
}

impl ResponseAction {
    /// Metric label and record value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseAction::Pause => "pause",
            ResponseAction::Disconnect => "disconnect",
        }
    }
}

/// `[response]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// Mode (default `off`).
    #[serde(default)]
    pub mode: ResponseMode,
    /// The action `dry-run` reports (ignored by the other modes).
    #[serde(default)]
    pub dry_run_action: ResponseAction,
    /// Lowest alert severity acted on.
    #[serde(default = "d_severity")]
    pub min_severity: Severity,
    /// Container ids (full or 12-hex short) and names never touched.
    #[serde(default)]
    pub allow_containers: Vec<String>,
    /// Images never touched: exact reference, or a prefix ending in `*`
    /// (e.g. `registry.local/infra/*`).
    #[serde(default)]
    pub allow_images: Vec<String>,
    /// At most one successful action per container per this many seconds.
    #[serde(default = "d_interval")]
    pub min_interval_s: u64,
    /// A container that started less than this many seconds ago is never
    /// acted on (its warm-up).
    #[serde(default = "d_warmup")]
    pub warmup_s: u64,
}

fn d_severity() -> Severity {
    Severity::Critical
}
fn d_interval() -> u64 {
    300
}
fn d_warmup() -> u64 {
    120
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            mode: ResponseMode::Off,
            dry_run_action: ResponseAction::Pause,
            min_severity: d_severity(),
            allow_containers: Vec::new(),
            allow_images: Vec::new(),
            min_interval_s: d_interval(),
            warmup_s: d_warmup(),
        }
    }
}

impl ResponseConfig {
    /// The action this configuration takes (or would take, in dry-run);
    /// `None` when off.
    pub fn action(&self) -> Option<ResponseAction> {
        match self.mode {
            ResponseMode::Off => None,
            ResponseMode::DryRun => Some(self.dry_run_action),
            ResponseMode::Pause => Some(ResponseAction::Pause),
            ResponseMode::Disconnect => Some(ResponseAction::Disconnect),
        }
    }
}

/// Labels of `fedmesh_node_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// `pause` or `disconnect`.
    pub action: &'static str,
    /// `dry-run` or `enforce`.
    pub mode: &'static str,
    /// `done`, `failed`, `would` (dry-run), or a [`Refusal`] label.
    pub result: &'static str,
}

/// Response counters by action, mode and result.
pub type ResponseCounters = Family<ResponseLabels, Counter>;

/// Whether the node is still learning (no calibrated detector yet); asked
/// before every decision.
pub type LearningProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why the response layer did not act on an alert at or above
/// `min_severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The node has no calibrated detector yet.
    Learning,
    /// The container's id, name and image could not be read from Docker.
    Unresolved,
    /// The container's id, name or image is allowlisted.
    Allowlisted,
    /// The container started less than `warmup_s` ago.
    WarmUp,
    /// An action on this container succeeded less than `min_interval_s` ago.
    RateLimited,
}

impl Refusal {
    /// Metric label and record reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Learning => "learning",
            Refusal::Unresolved => "unresolved",
            Refusal::Allowlisted => "allowlisted",
            Refusal::WarmUp => "warm_up",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// What was decided for one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Below `min_severity` or mode `off`: no record.
    Ignore,
    /// Not acted on, and why.
    Refused(Refusal),
    /// Log only.
    DryRun(ResponseAction),
    /// Call the Docker API.
    Enforce(ResponseAction),
}

/// What the response layer knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The node has no calibrated detector yet.
    pub learning: bool,
    /// The container as Docker describes it now, if it could be read.
    pub identity: Option<&'a ContainerInfo>,
    /// Now, Unix milliseconds.
    pub now_unix_ms: u64,
}

/// The rate-limit memory: when an action on a container (by full id) last
/// succeeded. Backed by a sled tree so a restart does not forget it.
pub struct ResponseMemory {
    last: HashMap<String, u64>,
    tree: Option<sled::Tree>,
}

/// Entries kept before the expired ones are forgotten.
const MEMORY_CAP: usize = 10_000;

impl ResponseMemory {
    /// A memory that forgets on restart (tests, or a node without a store).
    pub fn in_memory() -> Self {
        Self {
            last: HashMap::new(),
            tree: None,
        }
    }

    /// Loads the memory from `tree`. Entries that do not decode are removed
    /// (and counted in the returned number) instead of failing the node.
    pub fn open(tree: sled::Tree) -> Result<(Self, usize), sled::Error> {
        let mut last = HashMap::new();
        let mut bad = Vec::new();
        for entry in tree.iter() {
            let (k, v) = entry?;
            match (std::str::from_utf8(&k), <[u8; 8]>::try_from(v.as_ref())) {
                (Ok(id), Ok(ms)) => {
                    last.insert(id.to_string(), u64::from_be_bytes(ms));
                }
                _ => bad.push(k),
            }
        }
        for k in &bad {
            tree.remove(k)?;
        }
        Ok((
            Self {
                last,
                tree: Some(tree),
            },
            bad.len(),
        ))
    }

    /// Makes what [`ResponseMemory::record`] wrote durable (the fsync runs
    /// on sled's own threads, not on the caller's async worker).
    pub async fn flush(&self) -> Result<(), sled::Error> {
        if let Some(tree) = &self.tree {
            tree.flush_async().await?;
        }
        Ok(())
    }

    /// When an action on `id` last succeeded.
    pub fn last(&self, id: &str) -> Option<u64> {
        self.last.get(id).copied()
    }

    /// Notes a successful action on `id` at `now_unix_ms`; `persist` writes
    /// it to the store (dry-run decisions stay in memory), durable after
    /// [`ResponseMemory::flush`]. Entries older than `forget_ms` are
    /// dropped once the memory holds many.
    pub fn record(
        &mut self,
        id: &str,
        now_unix_ms: u64,
        persist: bool,
        forget_ms: u64,
    ) -> Result<(), sled::Error> {
        self.last.insert(id.to_string(), now_unix_ms);
        if persist && let Some(tree) = &self.tree {
            tree.insert(id.as_bytes(), &now_unix_ms.to_be_bytes())?;
        }
        if self.last.len() > MEMORY_CAP {
            let old: Vec<String> = self
                .last
                .iter()
                .filter(|(_, t)| now_unix_ms.saturating_sub(**t) >= forget_ms)
                .map(|(k, _)| k.clone())
                .collect();
            for k in old {
                self.last.remove(&k);
                if let Some(tree) = &self.tree {
                    tree.remove(k.as_bytes())?;
                }
            }
        }
        Ok(())
    }
}

/// The response engine.
pub struct Responder {
    cfg: ResponseConfig,
    docker: Option<DockerClient>,
    identity: Option<IdentityCache>,
    memory: ResponseMemory,
    learning: Option<LearningProbe>,
    sinks: Option<AlertSinks>,
    counters: ResponseCounters,
    docker_errors: Counter,
}

impl Responder {
    /// A responder; `docker` is required by the enforcing modes (without
    /// it no identity resolves and nothing is acted on).
    pub fn new(
        cfg: ResponseConfig,
        docker: Option<DockerClient>,
        identity: Option<IdentityCache>,
        counters: ResponseCounters,
        docker_errors: Counter,
    ) -> Self {
        Self {
            cfg,
            docker,
            identity,
            memory: ResponseMemory::in_memory(),
            learning: None,
            sinks: None,
            counters,
            docker_errors,
        }
    }

    /// Keeps the rate-limit memory in `memory` (e.g. the node's store).
    pub fn with_memory(mut self, memory: ResponseMemory) -> Self {
        self.memory = memory;
        self
    }

    /// Asks `probe` whether the node is still learning before each decision.
    pub fn with_learning(mut self, probe: LearningProbe) -> Self {
        self.learning = Some(probe);
        self
    }

    /// Writes a response record for every decision to `sinks`.
    pub fn with_sinks(mut self, sinks: AlertSinks) -> Self {
        self.sinks = Some(sinks);
        self
    }

    fn allowlisted(&self, alert: &Alert, who: &ContainerInfo) -> bool {
        let names = [Some(alert.container.as_str()), who.name.as_deref()];
        let id_match = self.cfg.allow_containers.iter().any(|a| {
            names.contains(&Some(a.as_str()))
                || who.id == *a
                || (a.len() >= 12 && who.id.starts_with(a.as_str()))
        });
        let image_match = who.image.as_deref().is_some_and(|img| {
            self.cfg
                .allow_images
                .iter()
                .any(|pat| match pat.strip_suffix('*') {
                    Some(prefix) => img.starts_with(prefix),
                    None => img == pat,
                })
        });
        id_match || image_match
    }

    /// Whether `alert` is one this configuration decides on at all.
    fn concerns(&self, alert: &Alert) -> Option<ResponseAction> {
        let action = self.cfg.action()?;
        (alert.severity >= self.cfg.min_severity && alert.response.is_none()).then_some(action)
    }

    /// Decides what to do with `alert` given `facts`. Pure: it changes
    /// nothing (a successful action is noted by [`Responder::handle`]).
    pub fn decide(&self, alert: &Alert, facts: &Facts<'_>) -> Decision {
        let Some(action) = self.concerns(alert) else {
            return Decision::Ignore;
        };
        if facts.learning {
            return Decision::Refused(Refusal::Learning);
        }
        let Some(who) = facts.identity else {
            return Decision::Refused(Refusal::Unresolved);
        };
        if self.allowlisted(alert, who) {
            return Decision::Refused(Refusal::Allowlisted);
        }
        let warmup_ms = self.cfg.warmup_s.saturating_mul(1000);
        match who.started_unix_ms {
            Some(t) if facts.now_unix_ms.saturating_sub(t) >= warmup_ms => {}
            // Unknown start time: the warm-up cannot be shown to be over.
            _ if warmup_ms > 0 => return Decision::Refused(Refusal::WarmUp),
            _ => {}
        }
        let gap = self.cfg.min_interval_s.saturating_mul(1000);
        if let Some(t) = self.memory.last(&who.id)
            && facts.now_unix_ms.saturating_sub(t) < gap
        {
            return Decision::Refused(Refusal::RateLimited);
        }
        if self.cfg.mode == ResponseMode::DryRun {
            Decision::DryRun(action)
        } else {
            Decision::Enforce(action)
        }
    }

    fn count(&self, action: ResponseAction, result: &'static str) {
        let mode = if self.cfg.mode == ResponseMode::DryRun {
            "dry-run"
        } else {
            "enforce"
        };
        self.counters
            .get_or_create(&ResponseLabels {
                action: action.as_str(),
                mode,
                result,
            })
            .inc();
    }

    /// The container as Docker describes it now: inspected when a Docker
    /// client is configured (the identity cache only names a container it
    /// has listed, and has no start time), else from the cache.
    async fn resolve(&self, container: &str) -> Option<ContainerInfo> {
        let Some(docker) = &self.docker else {
            return self.identity.as_ref().and_then(|c| c.get(container));
        };
        match docker.inspect(container).await {
            Ok(info) => Some(info),
            Err(e) => {
                if !matches!(&e, DockerError::Status { status, .. } if status.as_u16() == 404) {
                    self.docker_errors.inc();
                }
                warn!(container, error = %e, "cannot resolve the container: no response");
                if let Some(c) = &self.identity {
                    c.request_refresh();
                }
                None
            }
        }
    }

    /// Handles one alert at `now_unix_ms`: resolves the container, decides,
    /// acts when enforcing, notes a successful action, and writes, logs and
    /// counts the outcome.
    pub async fn handle(&mut self, alert: &Alert, now_unix_ms: u64) -> Decision {
        let Some(action) = self.concerns(alert) else {
            return Decision::Ignore;
        };
        let learning = self.learning.as_ref().is_some_and(|probe| probe());
        let who = if learning {
            None
        } else {
            self.resolve(&alert.container).await
        };
        let d = self.decide(
            alert,
            &Facts {
                learning,
                identity: who.as_ref(),
                now_unix_ms,
            },
        );
        let gap_ms = self.cfg.min_interval_s.saturating_mul(1000);
        let (result, reason, networks) = match &d {
            Decision::Ignore => return d,
            Decision::Refused(r) => {
                info!(alert = %alert.id, container = %alert.container, reason = r.as_str(), "no response");
                ("refused", Some(r.as_str().to_string()), Vec::new())
            }
            Decision::DryRun(a) => {
                info!(alert = %alert.id, container = %alert.container, severity = %alert.severity, action = a.as_str(), "dry-run: would {} the container", a.as_str());
                if let Some(w) = &who
                    && let Err(e) = self.memory.record(&w.id, now_unix_ms, false, gap_ms)
                {
                    warn!(error = %e, "response memory");
                }
                ("would", None, Vec::new())
            }
            Decision::Enforce(a) => match self.enforce(*a, who.as_ref()).await {
                Ok(nets) => {
                    warn!(alert = %alert.id, container = %alert.container, severity = %alert.severity, action = a.as_str(), networks = ?nets, "response action taken");
                    if let Some(w) = &who {
                        let persisted = match self.memory.record(&w.id, now_unix_ms, true, gap_ms) {
                            Ok(()) => self.memory.flush().await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = persisted {
                            warn!(error = %e, "response memory not persisted: the rate limit may not survive a restart");
                        }
                    }
                    ("done", None, nets)
                }
                Err(e) => {
                    self.docker_errors.inc();
                    warn!(alert = %alert.id, container = %alert.container, action = a.as_str(), error = %e, "response action failed; the next alert may try again");
                    ("failed", Some(e.to_string()), Vec::new())
                }
            },
        };
        self.count(
            action,
            match &d {
                Decision::Refused(r) => r.as_str(),
                _ => result,
            },
        );
        if let Some(sinks) = &self.sinks {
            let record = alert.response_record(ResponseRecord {
                alert: alert.id.clone(),
                action: action.as_str().to_string(),
                result: result.to_string(),
                reason,
                networks,
                at_unix_ms: now_unix_ms,
            });
            // The sinks write files and flush the webhook outbox: off the
            // async workers.
            let (sinks, id) = (sinks.clone(), alert.id.clone());
            match tokio::task::spawn_blocking(move || sinks.emit(&record)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, alert = %id, "response record not written"),
                Err(e) => warn!(error = %e, alert = %id, "response record not written"),
            }
        }
        d
    }

    async fn enforce(
        &self,
        action: ResponseAction,
        who: Option<&ContainerInfo>,
    ) -> Result<Vec<String>, DockerError> {
        let (Some(docker), Some(who)) = (&self.docker, who) else {
            return Err(DockerError::NotConfigured(
                who.map(|w| w.id.clone()).unwrap_or_default(),
            ));
        };
        match action {
            ResponseAction::Pause => docker.pause(&who.id).await.map(|()| Vec::new()),
            ResponseAction::Disconnect => {
                for net in &who.networks {
                    docker.disconnect(net, &who.id).await?;
                }
                Ok(who.networks.clone())
            }
        }
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Runs `responder` over the alerts of `rx` until `shutdown` or the channel
/// closes (the clock is read here, at the edge).
pub async fn run_responses(
    mut responder: Responder,
    mut rx: mpsc::Receiver<Alert>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let alert = tokio::select! {
            a = rx.recv() => match a { Some(a) => a, None => return },
            _ = shutdown.changed() => return,
        };
        let span = info_span!("response", tenant = %alert.tenant, node = %alert.node, container = %alert.container);
        responder
            .handle(&alert, unix_ms_now())
            .instrument(span)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::sink::AlertSink;
    use crate::ops::docker::tests::{fake_docker, fake_docker_at, sample_list};
    use std::sync::Mutex;

    const WEB: &str = "28c0c7a20575";
    const WEB_FULL: &str = "28c0c7a20575aa11bb22cc33dd44ee55ff6677889900aabbccddeeff00112233";
    /// `StartedAt` of the fake's containers (2020-01-01T00:00:00Z).
    const STARTED: u64 = 1_577_836_800_000;
    /// Long after the fake containers started.
    const NOW: u64 = STARTED + 86_400_000;

    fn crit(container: &str) -> Alert {
        crate::alerting::alert::tests::open(container, 5, 0.0, Some("setuid_root"))
    }

    fn responder(
        mode: ResponseMode,
        socket: &std::path::Path,
    ) -> (Responder, ResponseCounters, Counter) {
        let counters = ResponseCounters::default();
        let errors = Counter::default();
        let r = Responder::new(
            ResponseConfig {
                mode,
                allow_images: vec!["registry.local/infra/*".into()],
                allow_containers: vec!["db".into()],
                ..ResponseConfig::default()
            },
            Some(DockerClient::new(socket, Duration::from_secs(2))),
            None,
            counters.clone(),
            errors.clone(),
        );
        (r, counters, errors)
    }

    fn count(
        c: &ResponseCounters,
        action: &'static str,
        mode: &'static str,
        result: &'static str,
    ) -> u64 {
        c.get_or_create(&ResponseLabels {
            action,
            mode,
            result,
        })
        .get()
    }

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<Alert>>>);
    impl AlertSink for Collect {
        fn emit(&mut self, alert: &Alert) -> Result<(), crate::alerting::sink::AlertError> {
            self.0.lock().unwrap().push(alert.clone());
            Ok(())
        }
    }

    #[tokio::test]
    async fn pause_resolves_first_acts_once_and_rate_limits() {
        let fake = fake_docker(sample_list()).await;
        let (mut r, c, errors) = responder(ResponseMode::Pause, &fake.socket);
        assert_eq!(
            r.handle(&crit(WEB), NOW).await,
            Decision::Enforce(ResponseAction::Pause)
        );
        assert_eq!(
            r.handle(&crit(WEB), NOW + 1_000).await,
            Decision::Refused(Refusal::RateLimited)
        );
        // After min_interval_s the container may be acted on again.
        assert_eq!(
            r.handle(&crit(WEB), NOW + 300_000).await,
            Decision::Enforce(ResponseAction::Pause)
        );
        assert_eq!(
            fake.requests.lock().unwrap().clone(),
            vec![
                format!("GET /containers/{WEB}/json"),
                format!("POST /containers/{WEB_FULL}/pause"),
                format!("GET /containers/{WEB}/json"),
                format!("GET /containers/{WEB}/json"),
                format!("POST /containers/{WEB_FULL}/pause"),
            ]
        );
        assert_eq!(count(&c, "pause", "enforce", "done"), 2);
        assert_eq!(count(&c, "pause", "enforce", "rate_limited"), 1);
        assert_eq!(errors.get(), 0);
    }

    #[tokio::test]
    async fn disconnect_detaches_every_network() {
        let fake = fake_docker(sample_list()).await;
        let (mut r, c, _) = responder(ResponseMode::Disconnect, &fake.socket);
        r.handle(&crit(WEB), NOW).await;
        let body = format!("{{\"Container\":\"{WEB_FULL}\",\"Force\":true}}");
        assert_eq!(
            fake.requests.lock().unwrap().clone(),
            vec![
                format!("GET /containers/{WEB}/json"),
                format!("POST /networks/backend/disconnect {body}"),
                format!("POST /networks/frontend/disconnect {body}"),
            ]
        );
        assert_eq!(count(&c, "disconnect", "enforce", "done"), 1);
    }

    #[tokio::test]
    async fn dry_run_off_and_low_severity_make_no_change() {
        let fake = fake_docker(sample_list()).await;
        let (mut dry, c, _) = responder(ResponseMode::DryRun, &fake.socket);
        assert_eq!(
            dry.handle(&crit(WEB), NOW).await,
            Decision::DryRun(ResponseAction::Pause)
        );
        // A dry run mirrors the rate limit, in memory only.
        assert_eq!(
            dry.handle(&crit(WEB), NOW + 1).await,
            Decision::Refused(Refusal::RateLimited)
        );
        assert_eq!(count(&c, "pause", "dry-run", "would"), 1);
        let (mut off, _, _) = responder(ResponseMode::Off, &fake.socket);
        assert_eq!(off.handle(&crit(WEB), NOW).await, Decision::Ignore);
        // A medium model alert is below the default min_severity (critical).
        let (mut pause, c2, _) = responder(ResponseMode::Pause, &fake.socket);
        let medium = crate::alerting::alert::tests::open(WEB, 1, 1.1, None);
        assert_eq!(pause.handle(&medium, NOW).await, Decision::Ignore);
        assert_eq!(count(&c2, "pause", "enforce", "done"), 0);
        assert!(
            fake.requests
                .lock()
                .unwrap()
                .iter()
                .all(|r| r.starts_with("GET ")),
            "no change requested"
        );
    }

    #[tokio::test]
    async fn allowlists_hold_for_containers_the_identity_cache_never_listed() {
        let fake = fake_docker(sample_list()).await;
        // No identity cache at all, and the alert carries only the short id:
        // the name "db" is read from Docker before deciding.
        let (mut r, c, _) = responder(ResponseMode::Pause, &fake.socket);
        let db = crit("551e161c47d8");
        assert_eq!(db.container_name, None);
        assert_eq!(
            r.handle(&db, NOW).await,
            Decision::Refused(Refusal::Allowlisted)
        );
        // An image allowlisted by prefix, read from Docker too.
        let mut list = sample_list();
        list[0]["Image"] = "registry.local/infra/agent:2".into();
        let fake2 = fake_docker(list).await;
        let (mut r2, c2, _) = responder(ResponseMode::Pause, &fake2.socket);
        assert_eq!(
            r2.handle(&crit(WEB), NOW).await,
            Decision::Refused(Refusal::Allowlisted)
        );
        assert_eq!(count(&c, "pause", "enforce", "allowlisted"), 1);
        assert_eq!(count(&c2, "pause", "enforce", "allowlisted"), 1);
        for f in [&fake, &fake2] {
            assert!(
                f.requests
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|r| r.starts_with("GET ")),
                "no change requested"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_container_or_an_unreachable_docker_is_left_alone() {
        let fake = fake_docker(sample_list()).await;
        let (mut r, c, errors) = responder(ResponseMode::Pause, &fake.socket);
        assert_eq!(
            r.handle(&crit("ffffffffffff"), NOW).await,
            Decision::Refused(Refusal::Unresolved)
        );
        assert_eq!(count(&c, "pause", "enforce", "unresolved"), 1);
        assert_eq!(errors.get(), 0, "a 404 is not a Docker failure");
        // Without a Docker client nothing resolves (and the identity cache
        // alone has no start time).
        let mut bare = Responder::new(
            ResponseConfig {
                mode: ResponseMode::Pause,
                ..ResponseConfig::default()
            },
            None,
            None,
            ResponseCounters::default(),
            Counter::default(),
        );
        assert_eq!(
            bare.handle(&crit(WEB), NOW).await,
            Decision::Refused(Refusal::Unresolved)
        );
    }

    #[tokio::test]
    async fn a_failed_action_does_not_use_the_rate_limit_slot() {
        // Docker is gone: nothing resolves, nothing is used up.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let (mut r, c, errors) = responder(ResponseMode::Pause, &socket);
        assert_eq!(
            r.handle(&crit(WEB), NOW).await,
            Decision::Refused(Refusal::Unresolved)
        );
        assert_eq!(errors.get(), 1);
        // Docker is back, but the pause itself fails.
        let fake = fake_docker_at(&socket, sample_list()).await;
        fake.fail_pause
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            r.handle(&crit(WEB), NOW + 1_000).await,
            Decision::Enforce(ResponseAction::Pause)
        );
        assert_eq!(count(&c, "pause", "enforce", "failed"), 1);
        assert_eq!(errors.get(), 2);
        // Docker works again: the next alert pauses the container at once.
        fake.fail_pause
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            r.handle(&crit(WEB), NOW + 2_000).await,
            Decision::Enforce(ResponseAction::Pause)
        );
        assert_eq!(count(&c, "pause", "enforce", "done"), 1);
        assert_eq!(
            r.handle(&crit(WEB), NOW + 3_000).await,
            Decision::Refused(Refusal::RateLimited)
        );
    }

    #[tokio::test]
    async fn nothing_is_done_while_learning_or_during_a_containers_warm_up() {
        let fake = fake_docker(sample_list()).await;
        let learning = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe = learning.clone();
        let (r, c, _) = responder(ResponseMode::Pause, &fake.socket);
        let mut r = r.with_learning(Arc::new(move || {
            probe.load(std::sync::atomic::Ordering::SeqCst)
        }));
        assert_eq!(
            r.handle(&crit(WEB), NOW).await,
            Decision::Refused(Refusal::Learning)
        );
        assert!(
            fake.requests.lock().unwrap().is_empty(),
            "not even resolved"
        );
        learning.store(false, std::sync::atomic::Ordering::SeqCst);
        // Started 10 s ago: inside the default 120 s warm-up.
        assert_eq!(
            r.handle(&crit(WEB), STARTED + 10_000).await,
            Decision::Refused(Refusal::WarmUp)
        );
        assert_eq!(
            r.handle(&crit(WEB), STARTED + 120_000).await,
            Decision::Enforce(ResponseAction::Pause)
        );
        assert_eq!(count(&c, "pause", "enforce", "learning"), 1);
        assert_eq!(count(&c, "pause", "enforce", "warm_up"), 1);
        // A container Docker reports as never started is in warm-up.
        let mut list = sample_list();
        list[0]["StartedAt"] = "0001-01-01T00:00:00Z".into();
        let fresh = fake_docker(list).await;
        let (mut r2, _, _) = responder(ResponseMode::Pause, &fresh.socket);
        assert_eq!(
            r2.handle(&crit(WEB), NOW).await,
            Decision::Refused(Refusal::WarmUp)
        );
    }

    #[tokio::test]
    async fn the_rate_limit_survives_a_restart_and_dry_runs_do_not_persist() {
        let fake = fake_docker(sample_list()).await;
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        {
            let (memory, bad) = ResponseMemory::open(db.open_tree("responses").unwrap()).unwrap();
            assert_eq!(bad, 0);
            let (r, _, _) = responder(ResponseMode::DryRun, &fake.socket);
            let mut r = r.with_memory(memory);
            assert_eq!(
                r.handle(&crit(WEB), NOW).await,
                Decision::DryRun(ResponseAction::Pause)
            );
        }
        {
            let (memory, _) = ResponseMemory::open(db.open_tree("responses").unwrap()).unwrap();
            assert_eq!(memory.last(WEB_FULL), None, "dry runs stay in memory");
            let (r, _, _) = responder(ResponseMode::Pause, &fake.socket);
            let mut r = r.with_memory(memory);
            assert_eq!(
                r.handle(&crit(WEB), NOW).await,
                Decision::Enforce(ResponseAction::Pause)
            );
        }
        // A new responder on the same store (a node restart) remembers.
        let tree = db.open_tree("responses").unwrap();
        tree.insert(b"garbage", b"x".as_slice()).unwrap();
        let (memory, bad) = ResponseMemory::open(tree.clone()).unwrap();
        assert_eq!(bad, 1, "an undecodable entry is dropped, not fatal");
        assert!(tree.get(b"garbage").unwrap().is_none());
        assert_eq!(memory.last(WEB_FULL), Some(NOW));
        let (r, _, _) = responder(ResponseMode::Pause, &fake.socket);
        let mut r = r.with_memory(memory);
        assert_eq!(
            r.handle(&crit(WEB), NOW + 60_000).await,
            Decision::Refused(Refusal::RateLimited)
        );
    }

    #[tokio::test]
    async fn every_decision_is_written_to_the_sinks_as_a_response_record() {
        let fake = fake_docker(sample_list()).await;
        let seen = Collect::default();
        let (r, _, _) = responder(ResponseMode::Pause, &fake.socket);
        let mut r = r.with_sinks(AlertSinks::none().with_sink(seen.clone()));
        let alert = crit(WEB);
        r.handle(&alert, NOW).await;
        r.handle(&alert, NOW + 1).await;
        r.handle(&crit("551e161c47d8"), NOW + 2).await;
        // Below min_severity: no decision, no record.
        r.handle(
            &crate::alerting::alert::tests::open(WEB, 1, 1.1, None),
            NOW + 3,
        )
        .await;
        let got = seen.0.lock().unwrap().clone();
        let outcome: Vec<(String, Option<String>)> = got
            .iter()
            .map(|a| {
                let rec = a.response.as_ref().unwrap();
                (rec.result.clone(), rec.reason.clone())
            })
            .collect();
        assert_eq!(
            outcome,
            vec![
                ("done".into(), None),
                ("refused".into(), Some("rate_limited".into())),
                ("refused".into(), Some("allowlisted".into())),
            ]
        );
        let rec = &got[0];
        assert_eq!(rec.response.as_ref().unwrap().alert, alert.id);
        assert_eq!(rec.response.as_ref().unwrap().action, "pause");
        assert_eq!(rec.response.as_ref().unwrap().at_unix_ms, NOW);
        assert_ne!(rec.id, alert.id, "a record has its own id");
        assert_eq!(
            rec.id,
            alert.response_record(rec.response.clone().unwrap()).id
        );
        assert_ne!(got[0].id, got[2].id);
        // A response record is never itself acted on.
        assert_eq!(r.handle(rec, NOW + 400_000).await, Decision::Ignore);
        let json = serde_json::to_string(rec).unwrap();
        let back: Alert = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, rec);
    }
}
