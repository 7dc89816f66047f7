//! Coordinator configuration: defaults < TOML file < `FEDMESH_*` env < flags.
//!
//! The file is parsed with `deny_unknown_fields`, so a misspelt key is an
//! error that names the key and its line. All semantic problems are collected
//! and reported together by [`CoordinatorConfig::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fedmesh_crypto::TenantId;
use serde::Deserialize;

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (message names key and line).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message with line, column and key.
        message: String,
    },
    /// Semantic problems, all of them.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Paths to the coordinator's TLS material.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// Mesh CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This coordinator's certificate (PEM), issued by the mesh CA.
    pub cert: PathBuf,
    /// This coordinator's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The mesh CA's revocation list (PEM X509 CRL, written by
    /// `fedmesh-coordinator ca revoke`). Optional; re-read when it changes.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Seconds between checks of the TLS files for changes (certificate
    /// rotation, a new revocation list); 0 = only on SIGHUP.
    #[serde(default = "d_reload_interval_secs")]
    pub reload_interval_secs: u64,
    /// Warn (log and metric) when the coordinator certificate has fewer
    /// days left than this.
    #[serde(default = "d_expiry_warning_days")]
    pub expiry_warning_days: u32,
}

fn d_reload_interval_secs() -> u64 {
    10
}

fn d_expiry_warning_days() -> u32 {
    7
}

/// Model architecture for a tenant.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Input width: the number of features (default: the v1 schema's).
    #[serde(default = "d_input_dim")]
    pub input_dim: usize,
    /// Encoder widths; the decoder mirrors them.
    #[serde(default = "d_hidden")]
    pub hidden: Vec<usize>,
    /// Hex SHA-256 of the feature schema the nodes run (default: v1).
    #[serde(default = "d_digest")]
    pub feature_schema_digest: String,
}

fn d_input_dim() -> usize {
    fedmesh_proto::model::FEATURE_SCHEMA_V1_DIM
}
fn d_hidden() -> Vec<usize> {
    fedmesh_proto::model::DEFAULT_HIDDEN.to_vec()
}
fn d_digest() -> String {
    fedmesh_proto::model::FEATURE_SCHEMA_V1_DIGEST.to_string()
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            input_dim: d_input_dim(),
            hidden: d_hidden(),
            feature_schema_digest: d_digest(),
        }
    }
}

/// Local training parameters sent to nodes with every round.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// Local epochs per round.
    #[serde(default = "d_epochs")]
    pub local_epochs: u32,
    /// Minibatch size.
    #[serde(default = "d_batch")]
    pub batch_size: u32,
    /// Adam learning rate.
    #[serde(default = "d_lr")]
    pub learning_rate: f32,
    /// FedProx proximal coefficient μ.
    #[serde(default = "d_prox")]
    pub prox_mu: f32,
}

fn d_epochs() -> u32 {
    3
}
fn d_batch() -> u32 {
    32
}
fn d_lr() -> f32 {
    0.003
}
fn d_prox() -> f32 {
    0.01
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            local_epochs: d_epochs(),
            batch_size: d_batch(),
            learning_rate: d_lr(),
            prox_mu: d_prox(),
        }
    }
}

/// One tenant's federation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant name, as in node certificates.
    pub name: String,
    /// Nodes that must be connected before a round opens.
    #[serde(default = "d_min_nodes")]
    pub min_nodes: usize,
    /// Updates needed to commit a round at its deadline.
    #[serde(default = "d_min_nodes")]
    pub quorum: usize,
    /// Upper bound on participants sampled per round (0 = all connected).
    #[serde(default)]
    pub max_participants: usize,
    /// Round deadline, milliseconds after opening.
    #[serde(default = "d_round_timeout")]
    pub round_timeout_ms: u64,
    /// Pause between rounds, milliseconds.
    #[serde(default = "d_round_interval")]
    pub round_interval_ms: u64,
    /// Stop opening rounds after this many commits (0 = never stop).
    #[serde(default)]
    pub max_rounds: u64,
    /// Aggregation rule and its parameters (`[tenants.aggregation]`,
    /// e.g. `rule = "trimmed_mean"`, `f = 1`, `max_norm = 5.0`); FedAvg
    /// when omitted.
    #[serde(default = "d_rule")]
    pub aggregation: crate::aggregate::RuleConfig,
    /// Server learning rate applied to the aggregated delta.
    #[serde(default = "d_server_lr")]
    pub server_lr: f32,
    /// Server momentum β in [0, 1): v = β·v + Δ, w = w + server_lr·v
    /// (0 = plain FedAvg step). The buffer is committed with every version.
    #[serde(default)]
    pub server_momentum: f32,
    /// Seed for the genesis model and participant sampling. TOML integers
    /// stop at 2^63 − 1, so a full 64-bit seed may be given as a string
    /// (`seed = "18137862473986332194"`).
    #[serde(default, deserialize_with = "u64_or_string")]
    pub seed: u64,
    /// Bound on each update's L2 norm; larger updates are refused.
    #[serde(default = "d_max_norm")]
    pub max_update_norm: f32,
    /// Largest `num_samples` (and scaler `count`) one update may claim;
    /// an update above it is refused as invalid (attributable evidence),
    /// not clamped. Bounds a node's weight under `weighting = "samples"`:
    /// against n − 1 honest nodes of s samples each, one node's share of a
    /// weighted mean is at most `max / (max + (n−1)·s)`. Set it near the
    /// nodes' training buffer (`detector.train_buffer`, 4096 by default)
    /// or use `weighting = "equal"`.
    #[serde(default = "d_max_samples")]
    pub max_samples_per_update: u64,
    /// How the weighted rules (FedAvg, geometric median) weight updates:
    /// `"samples"` (default: by the claimed sample count, capped above) or
    /// `"equal"` (every update weighs 1).
    #[serde(default)]
    pub weighting: crate::aggregate::Weighting,
    /// Largest |parameter| a committed model may have: a round whose new
    /// parameters are not finite or exceed it is aborted, not signed.
    #[serde(default = "d_max_param_abs")]
    pub max_param_abs: f32,
    /// Model architecture.
    #[serde(default)]
    pub model: ModelConfig,
    /// Local training parameters.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Reputation and quarantine (`[tenants.reputation]`).
    #[serde(default)]
    pub reputation: crate::reputation::ReputationConfig,
    /// Secure aggregation in random buckets (`[tenants.secure]`).
    #[serde(default)]
    pub secure: SecureConfig,
}

/// Secure aggregation settings of a tenant (`[tenants.secure]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecureConfig {
    /// Bucket size k: participants are shuffled into buckets of k (the
    /// remainder joins the last bucket) and the coordinator only unmasks
    /// bucket sums. 1 = no masking (updates travel in plaintext over TLS).
    #[serde(default = "d_bucket_size")]
    pub bucket_size: usize,
    /// Smallest bucket a node accepts (default: `bucket_size`).
    #[serde(default)]
    pub min_bucket_size: Option<usize>,
    /// Clip norm C: nodes clip their update to it before quantizing; the
    /// coordinator rejects buckets whose mean could not come from clipped
    /// updates.
    #[serde(default = "d_clip_norm")]
    pub clip_norm: f64,
    /// Fixed-point scale of the quantization into `Z_{2^32}`.
    #[serde(default = "d_quant_scale")]
    pub quant_scale: f64,
    /// Distributed DP: noise multiplier z (the bucket sum carries discrete
    /// Gaussian noise of standard deviation z·C). Off when absent.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// δ for the reported (ε, δ).
    #[serde(default = "d_dp_delta")]
    pub dp_delta: f64,
    /// Deadline of each key-exchange and unmasking phase, milliseconds
    /// (the masked-update phase uses `round_timeout_ms`).
    #[serde(default = "d_phase_timeout")]
    pub phase_timeout_ms: u64,
    /// Optional bound on a bucket mean's norm, stricter than C.
    #[serde(default)]
    pub max_bucket_mean_norm: Option<f64>,
    /// Fewest buckets that must unmask for a secure round to commit
    /// (default: as many full buckets as `quorum` fills, at least 1 — the
    /// bucket count the aggregation rule is checked for at config load).
    #[serde(default)]
    pub min_buckets: Option<usize>,
    /// Fewest updates the unmasked buckets must hold for a secure round to
    /// commit (default: `quorum`; never below it).
    #[serde(default)]
    pub min_members: Option<usize>,
}

impl Default for SecureConfig {
    fn default() -> Self {
        Self {
            bucket_size: d_bucket_size(),
            min_bucket_size: None,
            clip_norm: d_clip_norm(),
            quant_scale: d_quant_scale(),
            noise_multiplier: None,
            dp_delta: d_dp_delta(),
            phase_timeout_ms: d_phase_timeout(),
            max_bucket_mean_norm: None,
            min_buckets: None,
            min_members: None,
        }
    }
}

impl SecureConfig {
    /// Whether updates are masked (k > 1).
    pub fn masked(&self) -> bool {
        self.bucket_size > 1
    }

    /// Fewest unmasked buckets a secure round commits with, for a tenant
    /// of this `quorum`.
    pub fn min_buckets_for(&self, quorum: usize) -> usize {
        self.min_buckets
            .unwrap_or((quorum / self.bucket_size.max(1)).max(1))
    }

    /// Fewest updates in unmasked buckets a secure round commits with, for
    /// a tenant of this `quorum` (never below the quorum).
    pub fn min_members_for(&self, quorum: usize) -> usize {
        self.min_members.unwrap_or(quorum).max(quorum)
    }

    /// The smallest acceptable bucket.
    pub fn min_bucket(&self) -> usize {
        self.min_bucket_size.unwrap_or(self.bucket_size)
    }

    /// Everything wrong with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let k = self.bucket_size;
        // Buckets hold k..2k−1 members; the extra words must not wrap.
        let max_k = fedmesh_proto::secure::MAX_EXTRA_MEMBERS.div_ceil(2);
        if k == 0 || k > max_k {
            out.push(format!("bucket_size must be in 1..={max_k}, got {k}"));
        }
        let min = self.min_bucket();
        if k > 1 && !(2..=k).contains(&min) {
            out.push(format!(
                "min_bucket_size must be in 2..=bucket_size ({k}), got {min}"
            ));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            out.push("clip_norm must be a positive number".into());
        }
        if !(self.quant_scale.is_finite() && self.quant_scale >= 1.0) {
            out.push("quant_scale must be at least 1".into());
        }
        if let Some(z) = self.noise_multiplier
            && !(z.is_finite() && z > 0.0)
        {
            out.push("noise_multiplier must be a positive number".into());
        }
        if !(self.dp_delta > 0.0 && self.dp_delta < 1.0) {
            out.push("dp_delta must be in (0, 1)".into());
        }
        if self.phase_timeout_ms == 0 {
            out.push("phase_timeout_ms must be positive".into());
        }
        if let Some(m) = self.max_bucket_mean_norm
            && !(m.is_finite() && m > 0.0)
        {
            out.push("max_bucket_mean_norm must be a positive number".into());
        }
        if out.is_empty() && k > 1 {
            let sigma = self.noise_multiplier.unwrap_or(0.0) * self.clip_norm * self.quant_scale;
            match self.quant() {
                Err(e) => out.push(e.to_string()),
                Ok(q) => {
                    if let Err(e) = q.check_bucket(2 * k - 1, sigma) {
                        out.push(format!(
                            "no quantization headroom for buckets of {} members: {e}",
                            2 * k - 1
                        ));
                    }
                }
            }
        }
        out
    }

    /// The quantization these settings define.
    pub fn quant(
        &self,
    ) -> Result<fedmesh_crypto::secagg::QuantConfig, fedmesh_crypto::secagg::SecAggError> {
        fedmesh_crypto::secagg::QuantConfig::new(self.clip_norm, self.quant_scale)
    }
}

fn d_bucket_size() -> usize {
    1
}
fn d_clip_norm() -> f64 {
    10.0
}
fn d_quant_scale() -> f64 {
    65_536.0
}
fn d_dp_delta() -> f64 {
    1e-5
}
fn d_phase_timeout() -> u64 {
    10_000
}

fn d_min_nodes() -> usize {
    2
}
fn d_round_timeout() -> u64 {
    30_000
}
fn d_round_interval() -> u64 {
    1_000
}
fn d_rule() -> crate::aggregate::RuleConfig {
    crate::aggregate::Rule::FedAvg.into()
}
fn d_server_lr() -> f32 {
    1.0
}
fn d_max_norm() -> f32 {
    1.0e4
}
fn d_max_samples() -> u64 {
    crate::bounds::DEFAULT_MAX_SAMPLES_PER_UPDATE
}
fn d_max_param_abs() -> f32 {
    crate::bounds::DEFAULT_MAX_PARAM_ABS
}

/// The whole coordinator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// sled data directory.
    pub data_dir: PathBuf,
    /// HTTP address for `/metrics` (Prometheus), `/status` and `/healthz`;
    /// omit to disable.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Plaintext address serving only the standard gRPC health service
    /// (`grpc.health.v1.Health`), for Kubernetes gRPC probes, which cannot
    /// present a client certificate; omit to disable. The federation service
    /// is never served here.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// TLS material.
    pub tls: TlsPaths,
    /// Largest accepted gRPC message in bytes.
    #[serde(default = "d_max_msg")]
    pub max_message_bytes: usize,
    /// Federations, one per tenant.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Connection and HTTP/2 abuse limits (`[limits]`).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Store retention (`[store]`).
    #[serde(default)]
    pub store: StoreConfig,
}

/// Connection and HTTP/2 limits of the gRPC listener (`[limits]`). The
/// defaults suit a fleet of nodes that each hold one HTTP/2 connection.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// TLS handshakes in flight at once, over all addresses; further
    /// connections wait in the kernel backlog.
    #[serde(default = "d_max_handshakes")]
    pub max_handshakes: usize,
    /// TLS handshakes in flight from one address (IPv4 address or IPv6
    /// /64); connections beyond it are closed at once and counted in
    /// `fedmesh_handshakes_refused{reason="per_address_limit"}`.
    #[serde(default = "d_max_handshakes_per_address")]
    pub max_handshakes_per_address: usize,
    /// A connection that has not finished its TLS handshake by then is
    /// closed, milliseconds.
    #[serde(default = "d_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection (a node uses
    /// two or three at once).
    #[serde(default = "d_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: largest request header block,
    /// bytes.
    #[serde(default = "d_h2_header_list")]
    pub http2_max_header_list_size: u32,
    /// Interval of HTTP/2 keepalive pings to each connection, milliseconds.
    #[serde(default = "d_h2_keepalive_interval_ms")]
    pub http2_keepalive_interval_ms: u64,
    /// A connection whose keepalive ping is not answered within this is
    /// closed, milliseconds.
    #[serde(default = "d_h2_keepalive_timeout_ms")]
    pub http2_keepalive_timeout_ms: u64,
    /// Streams a client may open and reset before they are accepted
    /// (rapid-reset defence) before the connection gets a GOAWAY.
    #[serde(default = "d_h2_pending_resets")]
    pub http2_max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's protocol errors before
    /// the connection gets a GOAWAY.
    #[serde(default = "d_h2_local_resets")]
    pub http2_max_local_error_reset_streams: usize,
}

fn d_max_handshakes() -> usize {
    256
}
fn d_max_handshakes_per_address() -> usize {
    16
}
fn d_handshake_timeout_ms() -> u64 {
    3_000
}
fn d_h2_streams() -> u32 {
    32
}
fn d_h2_header_list() -> u32 {
    16 * 1024
}
fn d_h2_keepalive_interval_ms() -> u64 {
    20_000
}
fn d_h2_keepalive_timeout_ms() -> u64 {
    10_000
}
fn d_h2_pending_resets() -> usize {
    20
}
fn d_h2_local_resets() -> usize {
    1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_handshakes: d_max_handshakes(),
            max_handshakes_per_address: d_max_handshakes_per_address(),
            handshake_timeout_ms: d_handshake_timeout_ms(),
            http2_max_concurrent_streams: d_h2_streams(),
            http2_max_header_list_size: d_h2_header_list(),
            http2_keepalive_interval_ms: d_h2_keepalive_interval_ms(),
            http2_keepalive_timeout_ms: d_h2_keepalive_timeout_ms(),
            http2_max_pending_accept_reset_streams: d_h2_pending_resets(),
            http2_max_local_error_reset_streams: d_h2_local_resets(),
        }
    }
}

impl LimitsConfig {
    /// Everything wrong with these limits.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.max_handshakes == 0 {
            out.push("limits.max_handshakes must be at least 1".to_string());
        }
        if self.max_handshakes_per_address == 0
            || self.max_handshakes_per_address > self.max_handshakes
        {
            out.push(format!(
                "limits.max_handshakes_per_address must be in 1..=max_handshakes ({})",
                self.max_handshakes
            ));
        }
        if !(100..=60_000).contains(&self.handshake_timeout_ms) {
            out.push("limits.handshake_timeout_ms must be in 100..=60000".to_string());
        }
        if self.http2_max_concurrent_streams == 0 {
            out.push("limits.http2_max_concurrent_streams must be at least 1".to_string());
        }
        if self.http2_max_header_list_size < 1024 {
            out.push("limits.http2_max_header_list_size must be at least 1024".to_string());
        }
        if self.http2_keepalive_interval_ms == 0 || self.http2_keepalive_timeout_ms == 0 {
            out.push("limits.http2_keepalive_interval_ms and _timeout_ms must be positive".into());
        }
        out
    }
}

/// Store settings (`[store]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Signed model bodies kept per tenant: the newest N versions (0 = keep
    /// every version). Older bodies are removed when a version commits;
    /// every version keeps its audit entry and body digest, so the audit
    /// chain still verifies. A pruned version is answered with NOT_FOUND.
    #[serde(default = "d_retain_versions")]
    pub retain_versions: u64,
    /// Page cache of sled, MiB. Normal operation reads only the newest
    /// version, and sled holds only the retained bodies and a few values
    /// per tenant (the audit log is a file beside it), so a small cache
    /// suffices.
    #[serde(default = "d_cache_mib")]
    pub cache_mib: u64,
}

fn d_cache_mib() -> u64 {
    crate::store::DEFAULT_CACHE_BYTES / (1024 * 1024)
}

fn d_retain_versions() -> u64 {
    1_000
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retain_versions: d_retain_versions(),
            cache_mib: d_cache_mib(),
        }
    }
}

impl StoreConfig {
    /// The page cache in bytes (at least 1 MiB).
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mib.clamp(1, 1 << 20) * 1024 * 1024
    }

    /// Bodies kept per tenant (None = all).
    pub fn retention(&self) -> Option<std::num::NonZeroU64> {
        std::num::NonZeroU64::new(self.retain_versions)
    }
}

fn d_max_msg() -> usize {
    fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES
}

impl CoordinatorConfig {
    /// Parses TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML file. Relative paths inside it are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text, path)?;
        if let Some(base) = path.parent() {
            for p in [
                &mut cfg.data_dir,
                &mut cfg.tls.ca_cert,
                &mut cfg.tls.cert,
                &mut cfg.tls.key,
            ]
            .into_iter()
            .chain(cfg.tls.crl.as_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// Checks every semantic constraint and reports all violations at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if self.tenants.is_empty() {
            errs.push("at least one [[tenants]] entry is required".to_string());
        }
        if self.max_message_bytes < 1024 {
            errs.push(format!(
                "max_message_bytes = {} is too small (minimum 1024)",
                self.max_message_bytes
            ));
        }
        errs.extend(self.limits.problems());
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = format!("tenants[{i}] ({})", t.name);
            if let Err(e) = t.name.parse::<TenantId>() {
                errs.push(format!("{at}: name: {e}"));
            }
            if !seen.insert(t.name.clone()) {
                errs.push(format!("{at}: duplicate tenant name"));
            }
            if t.min_nodes == 0 {
                errs.push(format!("{at}: min_nodes must be at least 1"));
            }
            if t.quorum == 0 {
                errs.push(format!("{at}: quorum must be at least 1"));
            }
            if t.max_participants != 0 && t.max_participants < t.quorum {
                errs.push(format!(
                    "{at}: max_participants = {} is below quorum = {}, no round could commit",
                    t.max_participants, t.quorum
                ));
            }
            if t.round_timeout_ms == 0 {
                errs.push(format!("{at}: round_timeout_ms must be positive"));
            }
            // The rule must hold for the smallest batch that can commit
            // (quorum); every rule's condition is n >= min_clients, so it
            // then holds for every larger batch up to max_participants.
            if let Err(e) = t.aggregation.check(t.quorum.max(1)) {
                errs.push(format!(
                    "{at}: aggregation (with quorum = {} updates): {e}; \
                     quorum must be at least {}",
                    t.quorum,
                    t.aggregation.rule.min_clients()
                ));
            }
            if t.max_samples_per_update == 0 {
                errs.push(format!("{at}: max_samples_per_update must be positive"));
            }
            if !(t.max_param_abs.is_finite() && t.max_param_abs > 0.0) {
                errs.push(format!("{at}: max_param_abs must be a positive number"));
            }
            if !(t.server_momentum.is_finite() && (0.0..1.0).contains(&t.server_momentum)) {
                errs.push(format!("{at}: server_momentum must be in [0, 1)"));
            }
            for p in t.reputation.problems() {
                errs.push(format!("{at}: reputation: {p}"));
            }
            for p in t.secure.problems() {
                errs.push(format!("{at}: secure: {p}"));
            }
            if t.secure.masked() {
                // The rule runs over bucket means: as many as full buckets
                // in a quorum of participants.
                let buckets = (t.quorum / t.secure.bucket_size).max(1);
                if let Err(e) = t.aggregation.check(buckets) {
                    errs.push(format!(
                        "{at}: aggregation over {buckets} bucket means (quorum {} / bucket_size {}): {e}",
                        t.quorum, t.secure.bucket_size
                    ));
                }
                let min_buckets = t.secure.min_buckets_for(t.quorum);
                if min_buckets == 0 {
                    errs.push(format!("{at}: secure: min_buckets must be at least 1"));
                } else if t.secure.min_buckets.is_some()
                    && let Err(e) = t.aggregation.check(min_buckets)
                {
                    errs.push(format!(
                        "{at}: aggregation over min_buckets = {min_buckets} bucket means: {e}"
                    ));
                }
                if let Some(m) = t.secure.min_members
                    && m < t.quorum
                {
                    errs.push(format!(
                        "{at}: secure: min_members = {m} is below quorum = {}",
                        t.quorum
                    ));
                }
                let min_members = t.secure.min_members_for(t.quorum);
                if t.max_participants != 0 && t.max_participants < min_members {
                    errs.push(format!(
                        "{at}: secure: min_members = {min_members} exceeds max_participants = {}, no round could commit",
                        t.max_participants
                    ));
                }
                if t.max_participants != 0
                    && t.max_participants / t.secure.bucket_size.max(1) < min_buckets
                {
                    errs.push(format!(
                        "{at}: secure: min_buckets = {min_buckets} exceeds the {} buckets max_participants = {} fills",
                        t.max_participants / t.secure.bucket_size.max(1),
                        t.max_participants
                    ));
                }
                if t.quorum < t.secure.bucket_size {
                    errs.push(format!(
                        "{at}: quorum = {} cannot fill one bucket of {}",
                        t.quorum, t.secure.bucket_size
                    ));
                }
            }
            if !(t.server_lr.is_finite() && t.server_lr > 0.0) {
                errs.push(format!("{at}: server_lr must be a positive number"));
            }
            if !(t.max_update_norm.is_finite() && t.max_update_norm > 0.0) {
                errs.push(format!("{at}: max_update_norm must be a positive number"));
            }
            if t.model.input_dim == 0 || t.model.hidden.is_empty() || t.model.hidden.contains(&0) {
                errs.push(format!(
                    "{at}: model needs input_dim > 0 and non-empty, non-zero hidden widths"
                ));
            }
            match fedmesh_proto::model::param_count(t.model.input_dim, &t.model.hidden) {
                Some(p) if p * 4 + 4096 > self.max_message_bytes => errs.push(format!(
                    "{at}: model has {p} parameters, an update would exceed max_message_bytes = {}",
                    self.max_message_bytes
                )),
                None => errs.push(format!("{at}: model size overflows")),
                _ => {}
            }
            if decode_digest(&t.model.feature_schema_digest).is_none() {
                errs.push(format!(
                    "{at}: model.feature_schema_digest must be 64 hex characters"
                ));
            }
            let tr = &t.training;
            if tr.local_epochs == 0 || tr.batch_size == 0 {
                errs.push(format!(
                    "{at}: training.local_epochs and batch_size must be positive"
                ));
            }
            if !(tr.learning_rate.is_finite() && tr.learning_rate > 0.0) {
                errs.push(format!(
                    "{at}: training.learning_rate must be a positive number"
                ));
            }
            if !(tr.prox_mu.is_finite() && tr.prox_mu >= 0.0) {
                errs.push(format!(
                    "{at}: training.prox_mu must be a non-negative number"
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

/// Decodes a 64-hex-character digest.
pub fn decode_digest(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// A `u64` given as a TOML integer or, beyond 2^63 − 1, as a decimal string.
fn u64_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Seed {
        Int(u64),
        Text(String),
    }
    match Seed::deserialize(d)? {
        Seed::Int(v) => Ok(v),
        Seed::Text(t) => t.trim().parse().map_err(|e| {
            serde::de::Error::custom(format!("seed {t:?} is not a 64-bit unsigned integer: {e}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:7443"
data_dir = "data"
[tls]
ca_cert = "ca.crt"
cert = "c.crt"
key = "c.key"
[[tenants]]
name = "acme"
[tenants.model]
input_dim = 22
hidden = [16, 4]
feature_schema_digest = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn parses_and_validates_a_minimal_file() {
        let c = CoordinatorConfig::from_toml(GOOD, Path::new("c.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.tenants[0].quorum, 2);
        assert_eq!(c.tenants[0].training.local_epochs, 3);
    }

    #[test]
    fn seeds_take_all_64_bits() {
        let with = |seed: &str| {
            let text = GOOD.replace(
                "name = \"acme\"",
                &format!("name = \"acme\"\nseed = {seed}"),
            );
            CoordinatorConfig::from_toml(&text, Path::new("c.toml")).map(|c| c.tenants[0].seed)
        };
        assert_eq!(with("42").unwrap(), 42);
        assert_eq!(
            with("\"18137862473986332194\"").unwrap(),
            18_137_862_473_986_332_194
        );
        let e = with("\"0x12\"").unwrap_err().to_string();
        assert!(e.contains("not a 64-bit unsigned integer"), "{e}");
        assert!(with("-1").is_err());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let bad = GOOD
            .replace("min_nodes", "x")
            .replace("name = \"acme\"", "name = \"acme\"\nquorom = 3");
        let e = CoordinatorConfig::from_toml(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("quorom"), "{e}");
        assert!(e.contains("line 10"), "{e}");
    }

    #[test]
    fn all_semantic_errors_are_reported_together() {
        let bad = GOOD
            .replace(
                "name = \"acme\"",
                "name = \"Acme!\"\nquorum = 0\n[tenants.aggregation]\nrule = \"krum\"\nf = 2",
            )
            .replace("hidden = [16, 4]", "hidden = []");
        let c = CoordinatorConfig::from_toml(&bad, Path::new("c.toml")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        for needle in ["name", "quorum", "krum needs", "hidden"] {
            assert!(e.contains(needle), "missing {needle} in {e}");
        }
    }

    #[test]
    fn secure_settings_are_checked_against_buckets_and_the_rule() {
        let with = |secure: &str, extra: &str| {
            let text = GOOD.replace(
                "name = \"acme\"",
                &format!("name = \"acme\"\nmin_nodes = 6\nquorum = 6\n{extra}\n[tenants.secure]\n{secure}"),
            );
            CoordinatorConfig::from_toml(&text, Path::new("c.toml"))
                .unwrap()
                .validate()
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(with("bucket_size = 3\nnoise_multiplier = 0.8", ""), None);
        let cases = [
            ("bucket_size = 0", "", "bucket_size must be in 1..=32"),
            ("bucket_size = 40", "", "bucket_size must be in 1..=32"),
            (
                "bucket_size = 3\nmin_bucket_size = 1",
                "",
                "min_bucket_size must be in 2..=bucket_size",
            ),
            (
                "bucket_size = 7",
                "",
                "quorum = 6 cannot fill one bucket of 7",
            ),
            ("bucket_size = 2\nclip_norm = -1.0", "", "clip_norm"),
            (
                "bucket_size = 2\nnoise_multiplier = 0.0",
                "",
                "noise_multiplier",
            ),
            ("bucket_size = 2\ndp_delta = 1.5", "", "dp_delta"),
            ("bucket_size = 2\nquant_scale = 1e12", "", "exceeds 2^30"),
            (
                "bucket_size = 3\nquant_scale = 67108864.0",
                "",
                "no quantization headroom",
            ),
            // Krum with f = 1 needs 5 inputs; 6 updates in buckets of 3 give 2 means.
            (
                "bucket_size = 3",
                "[tenants.aggregation]\nrule = \"krum\"\nf = 1",
                "over 2 bucket means",
            ),
        ];
        for (secure, extra, needle) in cases {
            let e = with(secure, extra).unwrap_or_default();
            assert!(
                e.contains(needle),
                "{secure:?}: missing {needle:?} in {e:?}"
            );
        }
    }

    #[test]
    fn update_bounds_and_rules_are_checked_at_load() {
        let with = |extra: &str| {
            let text = GOOD.replace(
                "name = \"acme\"",
                &format!("name = \"acme\"\nmin_nodes = 5\nquorum = 5\n{extra}"),
            );
            CoordinatorConfig::from_toml(&text, Path::new("c.toml"))
                .map(|c| c.validate().err().map(|e| e.to_string()))
        };
        let c = CoordinatorConfig::from_toml(GOOD, Path::new("c.toml")).unwrap();
        assert_eq!(
            c.tenants[0].max_samples_per_update,
            crate::bounds::DEFAULT_MAX_SAMPLES_PER_UPDATE
        );
        assert_eq!(c.tenants[0].weighting, crate::aggregate::Weighting::Samples);
        assert_eq!(with("weighting = \"equal\"").unwrap(), None);
        assert!(with("weighting = \"loudest\"").is_err());
        assert_eq!(with("max_samples_per_update = 4096").unwrap(), None);
        let e = with("max_samples_per_update = 0").unwrap().unwrap();
        assert!(e.contains("max_samples_per_update must be positive"), "{e}");
        let e = with("max_param_abs = 0.0").unwrap().unwrap();
        assert!(e.contains("max_param_abs"), "{e}");
        // Bulyan f = 1 needs 7 updates; a quorum of 5 is refused with the minimum.
        let e = with("[tenants.aggregation]\nrule = \"bulyan\"\nf = 1")
            .unwrap()
            .unwrap();
        assert!(e.contains("bulyan needs n >= 4f+3"), "{e}");
        assert!(e.contains("quorum must be at least 7"), "{e}");
        // An absurd f is refused, not overflowed.
        let e = with("[tenants.aggregation]\nrule = \"bulyan\"\nf = 9223372036854775807")
            .unwrap()
            .unwrap();
        assert!(e.contains("bulyan needs"), "{e}");
        assert_eq!(
            with("[tenants.aggregation]\nrule = \"krum\"\nf = 1").unwrap(),
            None
        );
    }

    #[test]
    fn secure_survivor_minimums_are_parsed_and_checked() {
        let with = |secure: &str, extra: &str| {
            let text = GOOD.replace(
                "name = \"acme\"",
                &format!("name = \"acme\"\nmin_nodes = 6\nquorum = 6\n{extra}\n[tenants.secure]\nbucket_size = 3\n{secure}"),
            );
            CoordinatorConfig::from_toml(&text, Path::new("c.toml")).unwrap()
        };
        let c = with("min_buckets = 2\nmin_members = 6", "");
        c.validate().unwrap();
        assert_eq!(c.tenants[0].secure.min_buckets_for(6), 2);
        // Defaults follow the quorum.
        let d = &with("", "").tenants[0].secure;
        assert_eq!((d.min_buckets_for(6), d.min_members_for(6)), (2, 6));
        let cases = [
            ("min_buckets = 0", "", "min_buckets must be at least 1"),
            ("min_members = 3", "", "min_members = 3 is below quorum = 6"),
            (
                "min_buckets = 3",
                "max_participants = 8",
                "min_buckets = 3 exceeds the 2 buckets",
            ),
            (
                "min_members = 9",
                "max_participants = 8",
                "min_members = 9 exceeds max_participants = 8",
            ),
        ];
        for (secure, extra, needle) in cases {
            let e = with(secure, extra)
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains(needle),
                "{secure:?}: missing {needle:?} in {e:?}"
            );
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../../deploy/examples/coordinator.toml");
        let c = CoordinatorConfig::from_toml(text, Path::new("coordinator.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.tenants[0].model.input_dim,
            fedmesh_proto::model::FEATURE_SCHEMA_V1_DIM
        );
    }
}
