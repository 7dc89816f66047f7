//! Optional response actions on alerts, off by default.
//!
//! `mode = "off" | "dry-run" | "pause" | "disconnect"`. For an alert at or
//! above `min_severity` (model alerts are `medium`, or `high` from twice the
//! threshold on; rule alerts carry their rule's severity), the offending
//! container is paused (`POST /containers/{id}/pause`) or disconnected from
//! every network it is attached to (`POST /networks/{net}/disconnect` with
//! `{"Container": id, "Force": true}`) through the Docker Engine API.
//! `dry-run` logs the action that `action` (default `pause`) would take and
//! counts it, and makes no request. Containers whose id, name or image
//! matches the allowlists are never touched, and one container gets at most
//! one action per `min_interval_s`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::alerting::alert::Alert;
use crate::detection::severity::Severity;
use crate::ops::docker::{DockerClient, IdentityCache};

/// What the response layer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseMode {
    /// Nothing (default).
    #[default]
    Off,
    /// Log and count what would be done; no API call.
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
    fn as_str(self) -> &'static str {
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
    /// At most one action per container per this many seconds.
    #[serde(default = "d_interval")]
    pub min_interval_s: u64,
}

fn d_severity() -> Severity {
    Severity::Critical
}
fn d_interval() -> u64 {
    300
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
    /// `done`, `failed`, `would` (dry-run), `allowlisted` or `rate_limited`.
    pub result: &'static str,
}

/// Response counters by action, mode and result.
pub type ResponseCounters = Family<ResponseLabels, Counter>;

/// What was decided for one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Below `min_severity` or mode `off`.
    Ignore,
    /// Allowlisted container or image.
    Allowlisted,
    /// Acted on this container too recently.
    RateLimited,
    /// Log only.
    DryRun(ResponseAction),
    /// Call the Docker API.
    Enforce(ResponseAction),
}

/// The response engine.
pub struct Responder {
    cfg: ResponseConfig,
    docker: Option<DockerClient>,
    identity: Option<IdentityCache>,
    last: HashMap<String, Instant>,
    counters: ResponseCounters,
    docker_errors: Counter,
}

impl Responder {
    /// A responder; `docker` is required by the enforcing modes.
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
            last: HashMap::new(),
            counters,
            docker_errors,
        }
    }

    fn allowlisted(&self, alert: &Alert) -> bool {
        let known = self.identity.as_ref().and_then(|c| c.get(&alert.container));
        let name = alert
            .container_name
            .clone()
            .or_else(|| known.as_ref().and_then(|k| k.name.clone()));
        let image = alert
            .image
            .clone()
            .or_else(|| known.as_ref().and_then(|k| k.image.clone()));
        let full_id = known.as_ref().map(|k| k.id.as_str());
        let id_match = self.cfg.allow_containers.iter().any(|a| {
            a == &alert.container
                || Some(a.as_str()) == name.as_deref()
                || full_id.is_some_and(|f| f == a || (a.len() >= 12 && f.starts_with(a.as_str())))
        });
        let image_match = image.as_deref().is_some_and(|img| {
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

    /// Decides what to do with `alert` at `now` (records the action time
    /// for the rate limit when it acts).
    pub fn decide(&mut self, alert: &Alert, now: Instant) -> Decision {
        let action = match self.cfg.mode {
            ResponseMode::Off => return Decision::Ignore,
            ResponseMode::DryRun => self.cfg.dry_run_action,
            ResponseMode::Pause => ResponseAction::Pause,
            ResponseMode::Disconnect => ResponseAction::Disconnect,
        };
        if alert.severity < self.cfg.min_severity {
            return Decision::Ignore;
        }
        if self.allowlisted(alert) {
            return Decision::Allowlisted;
        }
        let gap = Duration::from_secs(self.cfg.min_interval_s);
        if let Some(t) = self.last.get(&alert.container)
            && now.duration_since(*t) < gap
        {
            return Decision::RateLimited;
        }
        self.last.insert(alert.container.clone(), now);
        if self.last.len() > 10_000 {
            self.last.retain(|_, t| now.duration_since(*t) < gap);
        }
        if self.cfg.mode == ResponseMode::DryRun {
            Decision::DryRun(action)
        } else {
            Decision::Enforce(action)
        }
    }

    fn count(&self, action: ResponseAction, dry: bool, result: &'static str) {
        self.counters
            .get_or_create(&ResponseLabels {
                action: action.as_str(),
                mode: if dry { "dry-run" } else { "enforce" },
                result,
            })
            .inc();
    }

    /// Handles one alert: decides, then logs, counts and (when enforcing)
    /// calls the Docker API.
    pub async fn handle(&mut self, alert: &Alert) -> Decision {
        let d = self.decide(alert, Instant::now());
        let action = match self.cfg.mode {
            ResponseMode::Disconnect => ResponseAction::Disconnect,
            ResponseMode::DryRun => self.cfg.dry_run_action,
            _ => ResponseAction::Pause,
        };
        match &d {
            Decision::Ignore => {}
            Decision::Allowlisted => {
                info!(alert = %alert.id, container = %alert.container, "container allowlisted: no response");
                self.count(action, self.cfg.mode == ResponseMode::DryRun, "allowlisted");
            }
            Decision::RateLimited => {
                info!(alert = %alert.id, container = %alert.container, min_interval_s = self.cfg.min_interval_s, "container acted on recently: no response");
                self.count(
                    action,
                    self.cfg.mode == ResponseMode::DryRun,
                    "rate_limited",
                );
            }
            Decision::DryRun(a) => {
                info!(alert = %alert.id, container = %alert.container, severity = %alert.severity, action = a.as_str(), "dry-run: would {} the container", a.as_str());
                self.count(*a, true, "would");
            }
            Decision::Enforce(a) => {
                let r = self.enforce(*a, &alert.container).await;
                match r {
                    Ok(nets) => {
                        warn!(alert = %alert.id, container = %alert.container, severity = %alert.severity, action = a.as_str(), networks = ?nets, "response action taken");
                        self.count(*a, false, "done");
                    }
                    Err(e) => {
                        self.docker_errors.inc();
                        warn!(alert = %alert.id, container = %alert.container, action = a.as_str(), error = %e, "response action failed");
                        self.count(*a, false, "failed");
                    }
                }
            }
        }
        d
    }

    async fn enforce(
        &self,
        action: ResponseAction,
        container: &str,
    ) -> Result<Vec<String>, crate::ops::docker::DockerError> {
        let Some(docker) = &self.docker else {
            return Err(crate::ops::docker::DockerError::NotConfigured(
                container.to_string(),
            ));
        };
        match action {
            ResponseAction::Pause => docker.pause(container).await.map(|()| Vec::new()),
            ResponseAction::Disconnect => {
                let info = docker.inspect(container).await?;
                for net in &info.networks {
                    docker.disconnect(net, &info.id).await?;
                }
                Ok(info.networks)
            }
        }
    }
}

/// Runs `responder` over the alerts of `rx` until `shutdown` or the channel
/// closes.
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
        responder.handle(&alert).instrument(span).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::docker::tests::{fake_docker, sample_list};

    const WEB: &str = "28c0c7a20575";

    fn crit(container: &str) -> Alert {
        crate::alerting::alert::tests::open(container, 5, 0.0, Some("setuid_root"))
    }

    fn responder(
        mode: ResponseMode,
        socket: &std::path::Path,
        cache: Option<IdentityCache>,
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
            cache,
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

    #[tokio::test]
    async fn pause_makes_exactly_one_request_and_rate_limits() {
        let fake = fake_docker(sample_list()).await;
        let (mut r, c, errors) = responder(ResponseMode::Pause, &fake.socket, None);
        assert_eq!(
            r.handle(&crit(WEB)).await,
            Decision::Enforce(ResponseAction::Pause)
        );
        assert_eq!(r.handle(&crit(WEB)).await, Decision::RateLimited);
        assert_eq!(
            fake.requests.lock().unwrap().clone(),
            vec![format!("POST /containers/{WEB}/pause")]
        );
        assert_eq!(count(&c, "pause", "enforce", "done"), 1);
        assert_eq!(count(&c, "pause", "enforce", "rate_limited"), 1);
        assert_eq!(errors.get(), 0);
    }

    #[tokio::test]
    async fn disconnect_detaches_every_network() {
        let fake = fake_docker(sample_list()).await;
        let (mut r, c, _) = responder(ResponseMode::Disconnect, &fake.socket, None);
        r.handle(&crit(WEB)).await;
        let full = "28c0c7a20575aa11bb22cc33dd44ee55ff6677889900aabbccddeeff00112233";
        let body = format!("{{\"Container\":\"{full}\",\"Force\":true}}");
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
    async fn dry_run_off_low_severity_and_allowlists_make_no_request() {
        let fake = fake_docker(sample_list()).await;
        let (mut dry, c, _) = responder(ResponseMode::DryRun, &fake.socket, None);
        assert_eq!(
            dry.handle(&crit(WEB)).await,
            Decision::DryRun(ResponseAction::Pause)
        );
        assert_eq!(count(&c, "pause", "dry-run", "would"), 1);
        let (mut off, _, _) = responder(ResponseMode::Off, &fake.socket, None);
        assert_eq!(off.handle(&crit(WEB)).await, Decision::Ignore);
        // A medium model alert is below the default min_severity (critical).
        let (mut pause, c2, _) = responder(ResponseMode::Pause, &fake.socket, None);
        let medium = crate::alerting::alert::tests::open(WEB, 1, 1.1, None);
        assert_eq!(pause.handle(&medium).await, Decision::Ignore);
        // Allowlisted by name ("db"), resolved through the identity cache.
        let cache = IdentityCache::new();
        cache.replace(
            DockerClient::new(&fake.socket, Duration::from_secs(2))
                .list_containers()
                .await
                .unwrap(),
        );
        fake.requests.lock().unwrap().clear();
        let (mut named, c3, _) = responder(ResponseMode::Pause, &fake.socket, Some(cache));
        assert_eq!(
            named.handle(&crit("551e161c47d8")).await,
            Decision::Allowlisted
        );
        // Allowlisted by image prefix.
        let mut infra = crit("aaaaaaaaaaaa");
        infra.image = Some("registry.local/infra/agent:2".into());
        assert_eq!(named.handle(&infra).await, Decision::Allowlisted);
        assert_eq!(count(&c3, "pause", "enforce", "allowlisted"), 2);
        assert_eq!(count(&c2, "pause", "enforce", "done"), 0);
        assert!(
            fake.requests.lock().unwrap().is_empty(),
            "no request at all"
        );
    }

    #[tokio::test]
    async fn failures_are_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, c, errors) =
            responder(ResponseMode::Pause, &dir.path().join("gone.sock"), None);
        assert_eq!(
            r.handle(&crit(WEB)).await,
            Decision::Enforce(ResponseAction::Pause)
        );
        assert_eq!(errors.get(), 1);
        assert_eq!(count(&c, "pause", "enforce", "failed"), 1);
        // Without a Docker client (validation refuses such a config) the
        // action fails cleanly too.
        let counters = ResponseCounters::default();
        let mut bare = Responder::new(
            ResponseConfig {
                mode: ResponseMode::Pause,
                ..ResponseConfig::default()
            },
            None,
            None,
            counters.clone(),
            Counter::default(),
        );
        bare.handle(&crit(WEB)).await;
        assert_eq!(count(&counters, "pause", "enforce", "failed"), 1);
    }
}
