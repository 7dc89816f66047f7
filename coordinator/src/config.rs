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
        }
    }
}

impl SecureConfig {
    /// Whether updates are masked (k > 1).
    pub fn masked(&self) -> bool {
        self.bucket_size > 1
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
            // The rule must hold for the smallest batch that can commit.
            if let Err(e) = t.aggregation.check(t.quorum.max(1)) {
                errs.push(format!(
                    "{at}: aggregation (with quorum = {} updates): {e}",
                    t.quorum
                ));
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
