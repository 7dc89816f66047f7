//! Node configuration: defaults < TOML file < `FEDMESH_*` env < flags.
//!
//! Parsed with `deny_unknown_fields` so a misspelt key is named with its
//! line; semantic checks are collected and reported together.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[cfg(feature = "sim")]
use crate::sim::synthetic::{AttackKind, Profile};

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML or schema error (names key and line).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Message.
        message: String,
    },
    /// Semantic problems, all of them.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Where the coordinator is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorEndpoint {
    /// `host:port` to dial.
    pub endpoint: String,
    /// Name the coordinator certificate must carry (DNS or IP SAN).
    #[serde(default = "d_server_name")]
    pub server_name: String,
    /// Longest pause between reconnection attempts (exponential backoff
    /// with jitter, starting at 200 ms).
    #[serde(default = "d_max_backoff")]
    pub max_backoff_ms: u64,
}

fn d_max_backoff() -> u64 {
    10_000
}

fn d_server_name() -> String {
    "localhost".into()
}

/// TLS material paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// Mesh CA certificate.
    pub ca_cert: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's key.
    pub key: PathBuf,
    /// The mesh CA's revocation list (PEM X509 CRL, `crl.pem` written by
    /// `fedmesh-coordinator ca revoke`, distributed like `ca.crt`).
    /// Optional; global models signed by a revoked coordinator certificate
    /// are refused, and so is a revoked coordinator certificate at the
    /// handshake.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Seconds between checks of the TLS files for changes (certificate
    /// rotation, a new CA file, a new revocation list); 0 = only on SIGHUP.
    #[serde(default = "d_reload_interval_secs")]
    pub reload_interval_secs: u64,
    /// Warn when this node's certificate has fewer days left than this.
    #[serde(default = "d_expiry_warning_days")]
    pub expiry_warning_days: u32,
}

fn d_reload_interval_secs() -> u64 {
    10
}

fn d_expiry_warning_days() -> u32 {
    7
}

/// One synthetic container.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticContainer {
    /// Container id.
    pub id: String,
    /// Workload profile.
    pub profile: Profile,
}

/// An attack to inject into a synthetic container.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticAttack {
    /// Target container id.
    pub container: String,
    /// Attack kind.
    pub kind: AttackKind,
    /// First window of the attack.
    pub start_window: u64,
    /// Length in windows.
    pub duration_windows: u64,
}

/// Telemetry source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// Synthetic workloads (demo, harness, tests; `sim` feature).
    #[cfg(feature = "sim")]
    Synthetic {
        /// Seed.
        #[serde(default)]
        seed: u64,
        /// Containers.
        containers: Vec<SyntheticContainer>,
        /// Attacks to inject.
        #[serde(default)]
        attacks: Vec<SyntheticAttack>,
    },
    /// `kind = "synthetic"` in a build without the `sim` feature (release
    /// builds): parsed so that validation can say why it is refused.
    #[cfg(not(feature = "sim"))]
    #[serde(rename = "synthetic")]
    SyntheticUnavailable(serde::de::IgnoredAny),
    /// cgroup v2 or v1/hybrid tree plus /proc (Docker, containerd,
    /// Kubernetes, CRI-O layouts), sampled once per window.
    Cgroup {
        /// cgroup root.
        #[serde(default = "d_cgroup_root")]
        root: PathBuf,
        /// /proc root (network counters of a member process).
        #[serde(default = "d_proc_root")]
        proc_root: PathBuf,
    },
    /// Process events from the kernel's proc connector (exec, setuid,
    /// ptrace), attributed to containers through /proc; needs root or
    /// `CAP_NET_ADMIN`.
    Process {
        /// /proc root.
        #[serde(default = "d_proc_root")]
        proc_root: PathBuf,
    },
    /// Per-container network-namespace signals (TCP counters and socket
    /// tables of `/proc/<pid>/net/{snmp,tcp,tcp6}`), read once per window;
    /// containers found in the cgroup tree as the cgroup source finds them.
    Netns {
        /// cgroup root (container discovery and member processes).
        #[serde(default = "d_cgroup_root")]
        root: PathBuf,
        /// /proc root.
        #[serde(default = "d_proc_root")]
        proc_root: PathBuf,
        /// Namespaces whose socket tables (`tcp`, `tcp6`) are read per
        /// window at most, among those with new outbound connection
        /// attempts (each read walks the kernel's TCP hash); 0 reads the
        /// counters only.
        #[serde(default = "d_max_table_reads")]
        max_table_reads: usize,
    },
    /// Falco JSON lines (`json_output: true`), from a followed file or stdin.
    Falco {
        /// File to follow as it grows (rotation and truncation handled);
        /// omit to read stdin.
        #[serde(default)]
        path: Option<PathBuf>,
        /// Read the file from its start instead of its end.
        #[serde(default)]
        from_start: bool,
    },
    /// Tetragon JSON export lines, from a followed file or stdin.
    Tetragon {
        /// File to follow; omit to read stdin.
        #[serde(default)]
        path: Option<PathBuf>,
        /// Read the file from its start instead of its end.
        #[serde(default)]
        from_start: bool,
    },
}

fn d_cgroup_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}

fn d_max_table_reads() -> usize {
    crate::telemetry::netns::MAX_TABLE_READS
}

fn d_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

impl SourceConfig {
    /// Whether this is the synthetic source.
    pub fn is_synthetic(&self) -> bool {
        #[cfg(feature = "sim")]
        return matches!(self, SourceConfig::Synthetic { .. });
        #[cfg(not(feature = "sim"))]
        matches!(self, SourceConfig::SyntheticUnavailable(_))
    }

    /// Whether this source reads standard input.
    pub fn reads_stdin(&self) -> bool {
        matches!(
            self,
            SourceConfig::Falco { path: None, .. } | SourceConfig::Tetragon { path: None, .. }
        )
    }
}

/// Detector settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Target false-alarm rate used to calibrate the threshold.
    #[serde(default = "d_far")]
    pub false_alarm_rate: f32,
    /// Windows kept for local training.
    #[serde(default = "d_buffer")]
    pub train_buffer: usize,
    /// Windows needed before the node trains or joins a round.
    #[serde(default = "d_min_train")]
    pub min_train_windows: usize,
    /// Train a local model after this many windows if no global model has
    /// arrived (the node then detects on its own). 0 = never.
    #[serde(default = "d_bootstrap")]
    pub bootstrap_after_windows: usize,
    /// Features named in each alert.
    #[serde(default = "d_top")]
    pub top_features: usize,
    /// A new global model whose reconstruction loss on this node's recent
    /// benign windows exceeds this multiple of the loss of the model in use
    /// is held back: the node keeps detecting with the model in use (and
    /// trains from the new version, as the federation requires). 0 = off.
    #[serde(default = "d_max_loss_ratio")]
    pub max_loss_ratio: f32,
    /// Most recent benign windows the check above compares the two models
    /// on (it is skipped with fewer than 32).
    #[serde(default = "d_loss_check_windows")]
    pub loss_check_windows: usize,
}

fn d_far() -> f32 {
    0.01
}
fn d_buffer() -> usize {
    4096
}
fn d_min_train() -> usize {
    64
}
fn d_bootstrap() -> usize {
    256
}
fn d_top() -> usize {
    3
}
fn d_max_loss_ratio() -> f32 {
    10.0
}
fn d_loss_check_windows() -> usize {
    256
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            false_alarm_rate: d_far(),
            train_buffer: d_buffer(),
            min_train_windows: d_min_train(),
            bootstrap_after_windows: d_bootstrap(),
            top_features: d_top(),
            max_loss_ratio: d_max_loss_ratio(),
            loss_check_windows: d_loss_check_windows(),
        }
    }
}

/// Alert sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Print alerts as JSON lines on stdout.
    #[serde(default = "d_true")]
    pub stdout: bool,
    /// Append alerts as JSON lines to this file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// POST each alert to a webhook (`[alerts.webhook]`), through an
    /// on-disk outbox.
    #[serde(default)]
    pub webhook: Option<crate::alerting::webhook::WebhookConfig>,
    /// Containers whose alerts are not emitted (still scored): container
    /// ids, names or images, exact or a prefix ending in `*` — e.g. the
    /// monitoring stack itself (`"fedmesh-*"`). Names and images need
    /// `[docker]`.
    #[serde(default)]
    pub ignore: Vec<String>,
}

fn d_true() -> bool {
    true
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            stdout: true,
            file: None,
            webhook: None,
            ignore: Vec::new(),
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Tenant; must match the certificate (taken from it when omitted).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Node name; must match the certificate (taken from it when omitted).
    #[serde(default)]
    pub node: Option<String>,
    /// sled data directory.
    pub data_dir: PathBuf,
    /// Window length in milliseconds.
    #[serde(default = "d_window")]
    pub window_ms: u64,
    /// Synthetic sources only: wall-clock pause between windows in
    /// milliseconds (default `window_ms`, i.e. real time). Smaller values
    /// replay synthetic time faster; features use the source clock.
    #[serde(default)]
    pub tick_ms: Option<u64>,
    /// Coordinator; omit to run stand-alone.
    #[serde(default)]
    pub coordinator: Option<CoordinatorEndpoint>,
    /// TLS material (required with a coordinator).
    #[serde(default)]
    pub tls: Option<TlsPaths>,
    /// One telemetry source (`[source]`) ...
    #[serde(default)]
    pub source: Option<SourceConfig>,
    /// ... or several (`[[sources]]`), e.g. cgroup + Falco.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Detector.
    #[serde(default)]
    pub detector: DetectorConfig,
    /// How window scores and rule hits become incidents (`[incidents]`).
    #[serde(default)]
    pub incidents: crate::detection::incident::IncidentConfig,
    /// Alert sinks.
    #[serde(default)]
    pub alerts: AlertConfig,
    /// Rule layer (`[rules]`): decisive rare events alert at once.
    #[serde(default)]
    pub rules: crate::detection::rules::RulesConfig,
    /// Docker Engine API (`[docker]`): container names, images and pod
    /// labels in alerts; required by the enforcing response modes. Omit to
    /// run without it.
    #[serde(default)]
    pub docker: Option<crate::ops::docker::DockerConfig>,
    /// Response actions (`[response]`), off by default.
    #[serde(default)]
    pub response: crate::alerting::response::ResponseConfig,
    /// Seed for local training.
    #[serde(default)]
    pub seed: u64,
    /// HTTP address for `/metrics` (Prometheus) and `/healthz`; omit to
    /// disable.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Records what the detection loop sees (`[record]`), for
    /// `fedmesh-node replay`; off when omitted.
    #[serde(default)]
    pub record: Option<RecordConfig>,
}

fn d_window() -> u64 {
    10_000
}

/// `[record]`: write every window's events to a recording file
/// ([`crate::telemetry::recording`]). Live sources only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// The file (created, or truncated, at start).
    pub path: PathBuf,
    /// Recording stops (with a warning) once the file holds this many MiB.
    #[serde(default = "d_record_mb")]
    pub max_mb: u64,
}

fn d_record_mb() -> u64 {
    256
}

impl NodeConfig {
    /// Every configured source, `[source]` first.
    pub fn all_sources(&self) -> Vec<&SourceConfig> {
        self.source.iter().chain(&self.sources).collect()
    }

    /// Parses TOML text (`path` only for messages).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads a file; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text, path)?;
        if let Some(base) = path.parent() {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            fix(&mut cfg.data_dir);
            if let Some(t) = cfg.tls.as_mut() {
                fix(&mut t.ca_cert);
                fix(&mut t.cert);
                fix(&mut t.key);
                if let Some(c) = t.crl.as_mut() {
                    fix(c);
                }
            }
            if let Some(f) = cfg.alerts.file.as_mut() {
                fix(f);
            }
            if let Some(r) = cfg.record.as_mut() {
                fix(&mut r.path);
            }
            if let Some(w) = cfg.alerts.webhook.as_mut() {
                if let Some(p) = w.ca_file.as_mut() {
                    fix(p);
                }
                if let Some(p) = w.bearer_token_file.as_mut() {
                    fix(p);
                }
            }
            for src in cfg.source.iter_mut().chain(cfg.sources.iter_mut()) {
                match src {
                    SourceConfig::Cgroup { root, proc_root }
                    | SourceConfig::Netns {
                        root, proc_root, ..
                    } => {
                        fix(root);
                        fix(proc_root);
                    }
                    SourceConfig::Falco { path: Some(p), .. }
                    | SourceConfig::Tetragon { path: Some(p), .. } => fix(p),
                    _ => {}
                }
            }
        }
        Ok(cfg)
    }

    /// Checks all constraints and reports every violation.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if self.window_ms == 0 {
            errs.push("window_ms must be positive".to_string());
        }
        if self.coordinator.is_some() && self.tls.is_none() {
            errs.push("[tls] is required when [coordinator] is set".to_string());
        }
        let d = &self.detector;
        if !(d.false_alarm_rate > 0.0 && d.false_alarm_rate <= 0.5) {
            errs.push(format!(
                "detector.false_alarm_rate = {} must be in (0, 0.5]",
                d.false_alarm_rate
            ));
        }
        if d.min_train_windows < 8 {
            errs.push("detector.min_train_windows must be at least 8".to_string());
        }
        if d.train_buffer < d.min_train_windows {
            errs.push("detector.train_buffer must be at least min_train_windows".to_string());
        }
        if !(d.max_loss_ratio == 0.0 || (d.max_loss_ratio.is_finite() && d.max_loss_ratio >= 1.5)) {
            errs.push(format!(
                "detector.max_loss_ratio = {} must be 0 (off) or a finite ratio of at least 1.5",
                d.max_loss_ratio
            ));
        }
        if d.loss_check_windows < 32 || d.loss_check_windows > 65_536 {
            errs.push("detector.loss_check_windows must be in 32..=65536".to_string());
        }
        errs.extend(self.incidents.problems());
        errs.extend(self.rules.problems());
        if let Some(w) = &self.alerts.webhook {
            errs.extend(w.problems());
        }
        if let Some(d) = &self.docker {
            errs.extend(d.problems());
        }
        use crate::alerting::response::ResponseMode;
        if matches!(
            self.response.mode,
            ResponseMode::Pause | ResponseMode::Disconnect
        ) && self.docker.is_none()
        {
            errs.push(format!(
                "response.mode = {:?} needs a [docker] section (the Docker Engine API socket)",
                self.response.mode
            ));
        }
        let all = self.all_sources();
        if all.is_empty() {
            errs.push("a [source] or at least one [[sources]] entry is required".to_string());
        }
        let synthetic = all.iter().filter(|s| s.is_synthetic()).count();
        if synthetic > 0 && all.len() > 1 {
            errs.push("a synthetic source runs on its own clock and cannot be combined with other sources".to_string());
        }
        if let Some(r) = &self.record {
            if synthetic > 0 {
                errs.push("record: a synthetic source is reproducible from its seed; record live sources only".to_string());
            }
            if r.max_mb == 0 {
                errs.push("record.max_mb must be positive".to_string());
            }
            if r.path.as_os_str().is_empty() {
                errs.push("record.path must name a file".to_string());
            }
        }
        if all.iter().filter(|s| s.reads_stdin()).count() > 1 {
            errs.push("only one source can read stdin (set `path` on the others)".to_string());
        }
        #[cfg(not(feature = "sim"))]
        if synthetic > 0 {
            errs.push("kind = \"synthetic\" needs a node built with the `sim` feature (release builds have no synthetic workloads)".to_string());
        }
        #[cfg(feature = "sim")]
        for src in all {
            let SourceConfig::Synthetic {
                containers,
                attacks,
                ..
            } = src
            else {
                continue;
            };
            {
                if containers.is_empty() {
                    errs.push("source.containers must not be empty".to_string());
                }
                let mut ids = std::collections::BTreeSet::new();
                for c in containers {
                    if c.id.is_empty() || !ids.insert(c.id.as_str()) {
                        errs.push(format!(
                            "source.containers: id {:?} is empty or repeated",
                            c.id
                        ));
                    }
                }
                for a in attacks {
                    if !ids.contains(a.container.as_str()) {
                        errs.push(format!(
                            "source.attacks: container {:?} is not in source.containers",
                            a.container
                        ));
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
data_dir = "data"
window_ms = 1000
[coordinator]
endpoint = "127.0.0.1:7443"
[tls]
ca_cert = "ca.crt"
cert = "n.crt"
key = "n.key"
[source]
kind = "synthetic"
seed = 3
containers = [ { id = "web-1", profile = "web" }, { id = "db-1", profile = "database" } ]
attacks = [ { container = "web-1", kind = "cryptojacking", start_window = 5, duration_windows = 3 } ]
"#;

    #[test]
    fn parses_a_full_file() {
        let c = NodeConfig::from_toml(GOOD, Path::new("n.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.detector.false_alarm_rate, 0.01);
    }

    #[test]
    fn bad_key_and_bad_values_are_named() {
        let e = NodeConfig::from_toml(&GOOD.replace("window_ms", "windw_ms"), Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("windw_ms") && e.contains("line 3"), "{e}");
        let e = NodeConfig::from_toml(&GOOD.replace("\"web\"", "\"webb\""), Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("webb"), "{e}");
        let c = NodeConfig::from_toml(
            &GOOD.replace("container = \"web-1\"", "container = \"nope\""),
            Path::new("n.toml"),
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn incident_settings_are_validated_by_key() {
        let text = r#"
data_dir = "d"
[source]
kind = "cgroup"
[incidents]
open_bound = 0.0
close_after_windows = 0
"#;
        let c = NodeConfig::from_toml(text, Path::new("n.toml")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("incidents.open_bound"), "{e}");
        assert!(e.contains("incidents.close_after_windows"), "{e}");
        let typo = "data_dir = \"d\"\n[source]\nkind = \"cgroup\"\n[incidents]\nopen_bund = 2.0\n";
        let e = NodeConfig::from_toml(typo, Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("open_bund"), "{e}");
        let ok = "data_dir = \"d\"\n[source]\nkind = \"cgroup\"\n[incidents]\nopen_bound = 4.0\n";
        let c = NodeConfig::from_toml(ok, Path::new("n.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.incidents.open_bound, 4.0);
        assert_eq!(c.incidents.warmup_windows, 6);
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../../deploy/examples/node.toml");
        let c = NodeConfig::from_toml(text, Path::new("node.toml")).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn deployed_configs_are_valid_and_read_the_network_namespaces() {
        for (name, text) in [
            ("compose", include_str!("../../deploy/compose/node.toml")),
            ("k8s base", include_str!("../../deploy/k8s/base/node.toml")),
            (
                "k8s edge overlay",
                include_str!("../../deploy/k8s/overlays/edge-cluster/node.toml"),
            ),
            (
                "k8s process-events overlay",
                include_str!("../../deploy/k8s/overlays/process-events/node.toml"),
            ),
        ] {
            let c = NodeConfig::from_toml(text, Path::new("node.toml"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let kinds: Vec<bool> = c
                .all_sources()
                .iter()
                .map(|s| matches!(s, SourceConfig::Netns { .. }))
                .collect();
            let process = name.contains("process-events");
            assert_eq!(&kinds[..2], [false, true], "{name}: cgroup, then netns");
            assert_eq!(kinds.len(), if process { 3 } else { 2 }, "{name}");
            if process {
                assert!(
                    matches!(c.all_sources()[2], SourceConfig::Process { .. }),
                    "{name}: then process"
                );
            }
        }
    }

    #[test]
    fn several_real_sources_and_their_limits() {
        let text = r#"
data_dir = "d"
[[sources]]
kind = "cgroup"
root = "/sys/fs/cgroup"
[[sources]]
kind = "falco"
path = "/var/log/falco/events.json"
[[sources]]
kind = "tetragon"
[[sources]]
kind = "netns"
max_table_reads = 8
"#;
        let c = NodeConfig::from_toml(text, Path::new("n.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.all_sources().len(), 4);
        assert!(matches!(
            c.all_sources()[3],
            SourceConfig::Netns { root, proc_root, max_table_reads: 8 }
                if root == Path::new("/sys/fs/cgroup") && proc_root == Path::new("/proc")
        ));
        let two_stdin = text.replace("path = \"/var/log/falco/events.json\"\n", "");
        let e = NodeConfig::from_toml(&two_stdin, Path::new("n.toml"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("stdin"), "{e}");
        let e = NodeConfig::from_toml("data_dir = \"d\"\n", Path::new("n.toml"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("source"), "{e}");
        let mixed = format!(
            "{text}[source]\nkind = \"synthetic\"\ncontainers = [ {{ id = \"w\", profile = \"web\" }} ]\n"
        );
        let e = NodeConfig::from_toml(&mixed, Path::new("n.toml"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be combined"), "{e}");
    }

    #[test]
    fn ops_sections_parse_and_are_validated() {
        let base = "data_dir = \"d\"\n[source]\nkind = \"falco\"\npath = \"f.json\"\n";
        let good = format!(
            "{base}[rules]\ndisable = [\"reverse_shell\"]\nminer_ports = [3333]\n\
             [alerts.webhook]\nurl = \"https://siem.example.invalid/hook\"\nmax_pending = 50\n\
             [docker]\nsocket = \"/run/docker.sock\"\n\
             [response]\nmode = \"disconnect\"\nmin_severity = \"high\"\nallow_images = [\"infra/*\"]\n"
        );
        let c = NodeConfig::from_toml(&good, Path::new("n.toml")).unwrap();
        c.validate().unwrap();
        assert!(!c.rules.disable.is_empty());
        assert_eq!(c.alerts.webhook.as_ref().unwrap().max_pending, 50);
        assert_eq!(
            c.response.mode,
            crate::alerting::response::ResponseMode::Disconnect
        );
        assert_eq!(
            c.response.min_severity,
            crate::detection::severity::Severity::High
        );
        // Defaults: rules on, response off, no docker, no webhook.
        let d = NodeConfig::from_toml(base, Path::new("n.toml")).unwrap();
        assert!(d.rules.enabled && d.docker.is_none() && d.alerts.webhook.is_none());
        assert_eq!(
            d.response.mode,
            crate::alerting::response::ResponseMode::Off
        );
        // Unknown keys and values are refused with their names.
        for (bad, needle) in [
            ("[response]\nmode = \"kill\"\n", "kill"),
            (
                "[alerts.webhook]\nurl = \"http://h/x\"\nretries = 3\n",
                "retries",
            ),
            ("[docker]\nsockett = \"/x\"\n", "sockett"),
            ("[rules]\nenable = true\n", "enable"),
        ] {
            let e = NodeConfig::from_toml(&format!("{base}{bad}"), Path::new("n.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
        // Semantic problems are all reported.
        let text = format!(
            "{base}[rules]\ndisable = [\"nope\"]\n[alerts.webhook]\nurl = \"ftp://h\"\n[response]\nmode = \"pause\"\n"
        );
        let e = NodeConfig::from_toml(&text, Path::new("n.toml"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("ftp") && e.contains("[docker]"),
            "{e}"
        );
    }
}
