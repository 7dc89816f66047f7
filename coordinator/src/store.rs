//! Durable coordinator state: sled for the bounded state, an append-only
//! file per tenant for the audit log.
//!
//! sled trees: `models` (tenant ‖ 0 ‖ version BE → signed model bytes) and
//! `meta` (tenant ‖ 0 ‖ name → value: the audit log's head, server state,
//! reputation, next round, retention mark, the last secure round's
//! participant list). The audit log is
//! `<data_dir>/audit/<tenant>.jsonl`, one JSON [`AuditEntry`] per line,
//! hash-chained. A commit appends the entry to the log and syncs it, then
//! writes the model body, the log's new head (version, committed length,
//! entry digest) and the meta values in one sled transaction and flushes,
//! so a committed version survives `kill -9` and a restart resumes from it.
//! Bytes of the log past the committed head (a crash between the two
//! steps) are not part of the chain: readers stop at the head and the next
//! commit cuts them off. sled is kept behind this type so it can be
//! replaced.
//!
//! Why a file: an audit entry is kept for every version, forever, and in
//! sled every stored entry costs resident memory (its page table and
//! per-page bookkeeping grow with the tree). With the log outside, sled's
//! contents are bounded (N model bodies and a few meta values per tenant)
//! and normal operation never reads the log.
//!
//! Stores written before the log moved out keep their entries in the
//! sled tree `audit` (same key as `models`); they are read, first, as the
//! beginning of the chain and never written again.
//!
//! Retention: with [`Store::with_retention`] set to N, a commit keeps the
//! signed bodies of the newest N versions and removes older bodies in the
//! same transaction. Every version keeps its audit entry (with the SHA-256
//! of its body), and the per-tenant `pruned_below` mark records which
//! bodies were removed on purpose, so [`Store::verify_chain`] still checks
//! the whole chain and still notices a body that went missing otherwise.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sled::Transactional;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// Reading or writing the audit log failed.
    #[error("store: audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stored record did not decode.
    #[error("store: corrupt record {key}: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        reason: String,
    },
    /// The version to commit is not the successor of the latest one.
    #[error("store: version {version} for tenant {tenant} does not follow {latest:?}")]
    NotSuccessor {
        /// Tenant.
        tenant: String,
        /// Offered version.
        version: u64,
        /// Latest stored version.
        latest: Option<u64>,
    },
    /// The audit chain does not verify.
    #[error("audit chain of tenant {tenant} broken at version {version}: {reason}")]
    ChainBroken {
        /// Tenant.
        tenant: String,
        /// First bad version.
        version: u64,
        /// Why.
        reason: String,
    },
}

/// One audit-log entry per committed version, hash-chained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Tenant.
    pub tenant: String,
    /// Committed version.
    pub version: u64,
    /// Round that produced it (0 for genesis).
    pub round: u64,
    /// Aggregation rule.
    pub rule: String,
    /// Nodes whose updates were aggregated, sorted.
    pub participants: Vec<String>,
    /// Nodes selected but excluded, with the reason.
    pub excluded: Vec<(String, String)>,
    /// SHA-256 (hex) of the signed model bytes.
    pub model_sha256: String,
    /// Hash (hex) of the previous entry ("" for the first).
    pub prev_entry_sha256: String,
    /// Commit time, unix milliseconds.
    pub unix_ms: i64,
    /// Quarantined nodes whose updates were ignored in this round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<String>,
    /// Reputation decisions taken since the previous version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reputation: Vec<crate::reputation::Decision>,
    /// Secure aggregation facts of a masked round (absent for k = 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureAudit>,
    /// Rounds since the previous version whose aggregate the commit guard
    /// refused (nothing was signed for them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_commits: Vec<RefusedCommit>,
}

pub use crate::bounds::RefusedCommit;

/// The audit record of a securely aggregated round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureAudit {
    /// Bucket size k.
    pub bucket_size: usize,
    /// Buckets formed.
    pub buckets: usize,
    /// Buckets dropped for too few members.
    pub dropped: usize,
    /// Buckets refused by the norm gate.
    pub rejected: usize,
    /// Cumulative ε of distributed DP after this version, when DP is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_epsilon: Option<f64>,
    /// The δ of that ε.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_delta: Option<f64>,
}

impl AuditEntry {
    /// SHA-256 (hex) of this entry's canonical JSON.
    pub fn digest(&self) -> String {
        // serde_json of a struct is deterministic (field order is fixed).
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        fedmesh_crypto::sha256_hex(&bytes)
    }
}

/// Whether a version's signed body can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLookup {
    /// The signed bytes.
    Found(Vec<u8>),
    /// The version was committed, but its body was removed by retention;
    /// `oldest_kept` is the oldest version whose body is still stored.
    Pruned {
        /// Oldest version with a stored body.
        oldest_kept: u64,
    },
    /// No such version.
    Unknown,
}

/// The coordinator's store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    models: sled::Tree,
    /// Audit entries written before the log moved to files (read only).
    legacy_audit: sled::Tree,
    meta: sled::Tree,
    /// Directory of the audit logs.
    audit_dir: PathBuf,
    /// Open audit logs, one per tenant that committed since the store was
    /// opened; the per-tenant lock also serialises that tenant's commits.
    logs: Arc<Mutex<BTreeMap<String, Arc<Mutex<AuditLog>>>>>,
    /// Model bodies kept per tenant (None = all).
    retain: Option<std::num::NonZeroU64>,
}

/// A tenant's audit log file, open for appending.
struct AuditLog {
    file: std::fs::File,
    path: PathBuf,
    /// Committed length (bytes past it are cut off).
    len: u64,
}

/// The committed end of a tenant's audit log, kept in `meta` and written
/// in the same transaction as the version it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AuditHead {
    version: u64,
    /// Bytes of the log file that belong to the chain.
    len: u64,
    /// Digest (hex) of the entry of `version`.
    digest: String,
}

impl AuditHead {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.digest.len());
        v.extend_from_slice(&self.version.to_be_bytes());
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(self.digest.as_bytes());
        v
    }

    fn decode(tenant: &str, v: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt {
            key: format!("meta/{tenant}/audit_head"),
            reason: "not version ‖ length ‖ 64 hex digits".into(),
        };
        let (version, rest) = v.split_at_checked(8).ok_or_else(corrupt)?;
        let (len, digest) = rest.split_at_checked(8).ok_or_else(corrupt)?;
        let digest = std::str::from_utf8(digest).map_err(|_| corrupt())?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(corrupt());
        }
        Ok(Self {
            version: be_u64(version).ok_or_else(corrupt)?,
            len: be_u64(len).ok_or_else(corrupt)?,
            digest: digest.to_string(),
        })
    }
}

/// File name of a tenant's audit log: the name itself when it is a valid
/// tenant name (`[a-z0-9][a-z0-9._-]*`), else `%` and its hex.
fn log_file_name(tenant: &str) -> String {
    let b = tenant.as_bytes();
    let plain = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 128
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if plain {
        format!("{tenant}.jsonl")
    } else {
        format!("%{}.jsonl", hex::encode(b))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation under these locks completes or is undone before the
    // unlock, so a poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Page cache of [`Store::open`], bytes.
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Meta key name of the first version whose body is not pruned.
const PRUNED_BELOW: &[u8] = b"pruned_below";

/// Meta key name of the audit log's committed head.
const AUDIT_HEAD: &[u8] = b"audit_head";

/// Directory of the audit logs inside the data directory.
pub const AUDIT_DIR: &str = "audit";

fn be_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

fn key(tenant: &str, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 9);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prefix(tenant: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k
}

fn meta_key(tenant: &str, name: &[u8]) -> Vec<u8> {
    let mut k = prefix(tenant);
    k.extend_from_slice(name);
    k
}

fn version_of(k: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl Store {
    /// Opens (or creates) the store in `dir`, with a page cache of
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `dir` with a page cache of at most
    /// about `cache_bytes`. Only the newest version is read in normal
    /// operation, so a small cache suffices (sled's own default is 1 GiB).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        Ok(Self {
            models: db.open_tree("models")?,
            legacy_audit: db.open_tree("audit")?,
            meta: db.open_tree("meta")?,
            db,
            audit_dir: dir.join(AUDIT_DIR),
            logs: Arc::default(),
            retain: None,
        })
    }

    /// Keeps the signed bodies of only the newest `versions` versions per
    /// tenant (None = keep all). Applied at every later commit; audit
    /// entries are always kept.
    pub fn with_retention(mut self, versions: Option<std::num::NonZeroU64>) -> Self {
        self.retain = versions;
        self
    }

    /// The first version of a tenant whose body has not been pruned
    /// (0 when nothing was pruned).
    pub fn pruned_below(&self, tenant: &str) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(meta_key(tenant, PRUNED_BELOW))?
            .and_then(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// A version's signed body, or why there is none.
    pub fn lookup_model(&self, tenant: &str, version: u64) -> Result<ModelLookup, StoreError> {
        if let Some(bytes) = self.model(tenant, version)? {
            return Ok(ModelLookup::Found(bytes));
        }
        let oldest_kept = self.pruned_below(tenant)?;
        if version < oldest_kept {
            Ok(ModelLookup::Pruned { oldest_kept })
        } else {
            Ok(ModelLookup::Unknown)
        }
    }

    /// Number of signed model bodies stored for a tenant.
    pub fn model_count(&self, tenant: &str) -> usize {
        self.models.scan_prefix(prefix(tenant)).count()
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Latest committed version and its signed bytes.
    pub fn latest_model(&self, tenant: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.models.scan_prefix(prefix(tenant)).next_back() {
            None => Ok(None),
            Some(r) => {
                let (k, v) = r?;
                let version = version_of(&k).ok_or_else(|| StoreError::Corrupt {
                    key: format!("models/{tenant}"),
                    reason: "short key".into(),
                })?;
                Ok(Some((version, v.to_vec())))
            }
        }
    }

    /// Signed bytes of a given version.
    pub fn model(&self, tenant: &str, version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.models.get(key(tenant, version))?.map(|v| v.to_vec()))
    }

    /// The audit log's committed head (None for a store whose entries are
    /// all in the legacy tree, or that is empty).
    fn head(&self, tenant: &str) -> Result<Option<AuditHead>, StoreError> {
        self.meta
            .get(meta_key(tenant, AUDIT_HEAD))?
            .map(|v| AuditHead::decode(tenant, &v))
            .transpose()
    }

    fn log_path(&self, tenant: &str) -> PathBuf {
        self.audit_dir.join(log_file_name(tenant))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The tenant's audit log, opened for appending on first use: bytes
    /// past the committed head (a commit cut short by a crash) are cut off.
    fn log(&self, tenant: &str) -> Result<Arc<Mutex<AuditLog>>, StoreError> {
        let mut logs = lock(&self.logs);
        if let Some(l) = logs.get(tenant) {
            return Ok(l.clone());
        }
        let path = self.log_path(tenant);
        std::fs::create_dir_all(&self.audit_dir).map_err(Self::io(&self.audit_dir))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Self::io(&path))?;
        // The file's directory entry must be as durable as the entries
        // the head will point into (once per tenant and process).
        for d in [
            self.audit_dir.as_path(),
            self.audit_dir.parent().unwrap_or(Path::new(".")),
        ] {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(Self::io(d))?;
        }
        let on_disk = file.metadata().map_err(Self::io(&path))?.len();
        let committed = self.head(tenant)?.map_or(0, |h| h.len);
        if on_disk < committed {
            return Err(StoreError::ChainBroken {
                tenant: tenant.into(),
                version: self.head(tenant)?.map_or(0, |h| h.version),
                reason: format!(
                    "audit log {} has {on_disk} bytes, {committed} were committed",
                    path.display()
                ),
            });
        }
        if on_disk > committed {
            tracing::warn!(
                tenant,
                bytes = on_disk - committed,
                "audit log: cutting off an entry that was written but not committed"
            );
            file.set_len(committed).map_err(Self::io(&path))?;
            file.sync_all().map_err(Self::io(&path))?;
        }
        let l = Arc::new(Mutex::new(AuditLog {
            file,
            path,
            len: committed,
        }));
        logs.insert(tenant.to_string(), l.clone());
        Ok(l)
    }

    /// The latest audit entry.
    pub fn latest_audit(&self, tenant: &str) -> Result<Option<AuditEntry>, StoreError> {
        let Some(head) = self.head(tenant)? else {
            return self.latest_legacy_audit(tenant);
        };
        // The last line before the committed end; read backwards in
        // growing chunks (an entry is a few KiB at most).
        let path = self.log_path(tenant);
        let file = std::fs::File::open(&path).map_err(Self::io(&path))?;
        let end = head.len;
        let mut chunk = 4096u64;
        loop {
            let from = end.saturating_sub(chunk);
            let mut buf = vec![0u8; usize::try_from(end - from).unwrap_or(usize::MAX)];
            file.read_exact_at(&mut buf, from)
                .map_err(Self::io(&path))?;
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if let Some(pos) = body.iter().rposition(|&b| b == b'\n') {
                return Ok(Some(decode_entry(tenant, &body[pos + 1..])?));
            }
            if from == 0 {
                return Ok(Some(decode_entry(tenant, body)?));
            }
            chunk = chunk.saturating_mul(2);
        }
    }

    fn latest_legacy_audit(&self, tenant: &str) -> Result<Option<AuditEntry>, StoreError> {
        match self.legacy_audit.scan_prefix(prefix(tenant)).next_back() {
            None => Ok(None),
            Some(r) => {
                let (_, v) = r?;
                Ok(Some(decode_entry(tenant, &v)?))
            }
        }
    }

    /// Optimizer state (server momentum) committed with the latest version.
    pub fn server_state(&self, tenant: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta_value(tenant, b"server_state")
    }

    /// Reputation state committed with the latest version (or saved after
    /// an aborted round).
    pub fn reputation_state(&self, tenant: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta_value(tenant, b"reputation")
    }

    /// Saves the reputation state outside a commit (after an aborted round,
    /// so violations seen in it are not forgotten), durably.
    pub fn save_reputation(&self, tenant: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(meta_key(tenant, b"reputation"), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    /// The last secure round's participant list and who holds it
    /// ([`crate::secure_round::ListRecord::to_bytes`]), if one was saved.
    pub fn secure_list(&self, tenant: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta_value(tenant, b"secure_list")
    }

    /// One tenant's `meta` value `name`, if set.
    fn meta_value(&self, tenant: &str, name: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(meta_key(tenant, name))?.map(|v| v.to_vec()))
    }

    /// Saves the last secure round's participant list (not flushed: losing
    /// it only means that the next secure round sends whole lists).
    pub fn save_secure_list(&self, tenant: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(meta_key(tenant, b"secure_list"), bytes)?;
        Ok(())
    }

    /// Removes the stored secure participant list (after a failed save,
    /// so an older one is not used).
    pub fn remove_secure_list(&self, tenant: &str) -> Result<(), StoreError> {
        self.meta.remove(meta_key(tenant, b"secure_list"))?;
        Ok(())
    }

    /// Next round number to use for a tenant (rounds never repeat, even
    /// across aborted rounds and restarts).
    pub fn next_round(&self, tenant: &str) -> Result<u64, StoreError> {
        let mut k = prefix(tenant);
        k.extend_from_slice(b"next_round");
        Ok(self
            .meta
            .get(&k)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(1))
    }

    /// Records that round numbers below `next` are used, durably.
    pub fn set_next_round(&self, tenant: &str, next: u64) -> Result<(), StoreError> {
        let mut k = prefix(tenant);
        k.extend_from_slice(b"next_round");
        self.meta.insert(k, &next.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Atomically appends a new version and its audit entry, then flushes.
    /// `entry.prev_entry_sha256` is filled in here from the chain. Commits
    /// of one tenant are serialised.
    pub fn commit(
        &self,
        tenant: &str,
        version: u64,
        signed_model: &[u8],
        mut entry: AuditEntry,
        server_state: Option<&[u8]>,
        reputation: Option<&[u8]>,
    ) -> Result<AuditEntry, StoreError> {
        let log = self.log(tenant)?;
        let mut log = lock(&log);
        let latest = self.latest_model(tenant)?.map(|(v, _)| v);
        let expected = latest.map_or(0, |v| v + 1);
        if version != expected {
            return Err(StoreError::NotSuccessor {
                tenant: tenant.into(),
                version,
                latest,
            });
        }
        entry.prev_entry_sha256 = match self.head(tenant)? {
            Some(h) => h.digest,
            None => self
                .latest_legacy_audit(tenant)?
                .map(|e| e.digest())
                .unwrap_or_default(),
        };
        entry.model_sha256 = fedmesh_crypto::sha256_hex(signed_model);
        let mut line = serde_json::to_vec(&entry).map_err(|e| StoreError::Corrupt {
            key: format!("audit/{tenant}/{version}"),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let old_len = log.len;
        let head = AuditHead {
            version,
            len: old_len + line.len() as u64,
            digest: entry.digest(),
        }
        .encode();
        // 1. The entry, durably, past the committed end of the log.
        let path = log.path.clone();
        log.file
            .write_all_at(&line, old_len)
            .and_then(|()| log.file.sync_data())
            .map_err(Self::io(&path))?;
        // 2. The version and the log's new head, atomically.
        let k = key(tenant, version);
        let state_key = meta_key(tenant, b"server_state");
        let rep_key = meta_key(tenant, b"reputation");
        let pruned_key = meta_key(tenant, PRUNED_BELOW);
        let head_key = meta_key(tenant, AUDIT_HEAD);
        // Bodies below `keep_from` go; the range starts where the last
        // pruning stopped, so each commit removes one body (more only
        // after the retention was lowered).
        let keep_from = self
            .retain
            .map_or(0, |n| (version + 1).saturating_sub(n.get()));
        let applied = (&self.models, &self.meta)
            .transaction(|(m, t)| {
                m.insert(k.as_slice(), signed_model)?;
                t.insert(head_key.as_slice(), head.as_slice())?;
                let pruned = t
                    .get(pruned_key.as_slice())?
                    .and_then(|v| be_u64(&v))
                    .unwrap_or(0);
                if keep_from > pruned {
                    for v in pruned..keep_from {
                        m.remove(key(tenant, v))?;
                    }
                    t.insert(pruned_key.as_slice(), &keep_from.to_be_bytes())?;
                }
                if let Some(bytes) = reputation {
                    t.insert(rep_key.as_slice(), bytes)?;
                }
                match server_state {
                    Some(bytes) => {
                        t.insert(state_key.as_slice(), bytes)?;
                    }
                    None => {
                        t.remove(state_key.as_slice())?;
                    }
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(s) => StoreError::Sled(s),
                sled::transaction::TransactionError::Abort(()) => StoreError::Corrupt {
                    key: format!("models/{tenant}/{version}"),
                    reason: "transaction aborted".into(),
                },
            });
        if let Err(e) = applied {
            // Nothing was committed: the appended entry is not part of the
            // chain (were this cut to fail, the next open cuts it off).
            let _ = log.file.set_len(old_len);
            return Err(e);
        }
        log.len = old_len + line.len() as u64;
        self.db.flush()?;
        Ok(entry)
    }

    /// Calls `f` with every audit entry of a tenant, in version order,
    /// reading one entry at a time: the legacy sled entries, then the log
    /// file up to its committed head. Returns the head.
    fn each_entry(
        &self,
        tenant: &str,
        mut f: impl FnMut(AuditEntry) -> Result<(), StoreError>,
    ) -> Result<Option<AuditHead>, StoreError> {
        for r in self.legacy_audit.scan_prefix(prefix(tenant)) {
            let (_, v) = r?;
            f(decode_entry(tenant, &v)?)?;
        }
        let Some(head) = self.head(tenant)? else {
            return Ok(None);
        };
        let path = self.log_path(tenant);
        let file = std::fs::File::open(&path).map_err(Self::io(&path))?;
        let mut reader = std::io::BufReader::new(file.take(head.len));
        let mut line = Vec::new();
        let mut read = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(Self::io(&path))?;
            if n == 0 {
                break;
            }
            read += n as u64;
            f(decode_entry(
                tenant,
                line.strip_suffix(b"\n").unwrap_or(&line),
            )?)?;
        }
        if read != head.len {
            return Err(StoreError::ChainBroken {
                tenant: tenant.into(),
                version: head.version,
                reason: format!(
                    "audit log {} has {read} bytes, {} were committed",
                    path.display(),
                    head.len
                ),
            });
        }
        Ok(Some(head))
    }

    /// All audit entries of a tenant, in version order.
    pub fn audit_log(&self, tenant: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        self.each_entry(tenant, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Verifies the audit chain: versions contiguous from 0, every entry
    /// links to its predecessor's digest, the last entry is the committed
    /// head, and every model hash matches the stored model bytes. A body
    /// pruned by retention (below the tenant's `pruned_below` mark) is not
    /// compared, but its entry and digest still are; a missing body at or
    /// above the mark breaks the chain. Reads one entry at a time. Returns
    /// the number of entries checked.
    pub fn verify_chain(&self, tenant: &str) -> Result<usize, StoreError> {
        let pruned_below = self.pruned_below(tenant)?;
        let mut prev = String::new();
        let mut count = 0u64;
        let mut last_version = None;
        let head = self.each_entry(tenant, |e| {
            let broken = |reason: String| StoreError::ChainBroken {
                tenant: tenant.into(),
                version: e.version,
                reason,
            };
            if e.version != count {
                return Err(broken(format!("expected version {count}")));
            }
            if e.prev_entry_sha256 != prev {
                return Err(broken("previous-entry hash mismatch".into()));
            }
            match self.model(tenant, e.version)? {
                Some(model) => {
                    if fedmesh_crypto::sha256_hex(&model) != e.model_sha256 {
                        return Err(broken("model hash mismatch".into()));
                    }
                }
                None if e.version < pruned_below => {}
                None => return Err(broken("model missing".into())),
            }
            prev = e.digest();
            last_version = Some(e.version);
            count += 1;
            Ok(())
        })?;
        if let Some(h) = head
            && (last_version != Some(h.version) || prev != h.digest)
        {
            return Err(StoreError::ChainBroken {
                tenant: tenant.into(),
                version: h.version,
                reason: "the audit log does not end with the committed entry".into(),
            });
        }
        if last_version.is_some_and(|v| v < pruned_below) {
            return Err(StoreError::ChainBroken {
                tenant: tenant.into(),
                version: pruned_below,
                reason: "latest version's body pruned".into(),
            });
        }
        // A version whose body is stored but has no audit entry.
        let latest = self.latest_model(tenant)?.map(|(v, _)| v);
        if latest.is_some() && latest != last_version {
            return Err(StoreError::ChainBroken {
                tenant: tenant.into(),
                version: latest.unwrap_or(0),
                reason: "the latest version has no audit entry".into(),
            });
        }
        usize::try_from(count).map_err(|_| StoreError::Corrupt {
            key: format!("audit/{tenant}"),
            reason: "too many entries".into(),
        })
    }

    /// Tenants that have at least one stored version.
    pub fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = Vec::new();
        for r in self.models.iter() {
            let (k, _) = r?;
            if let Some(pos) = k.iter().position(|&b| b == 0) {
                let t = String::from_utf8_lossy(&k[..pos]).into_owned();
                if out.last() != Some(&t) {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }
}

fn decode_entry(tenant: &str, v: &[u8]) -> Result<AuditEntry, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: format!("audit/{tenant}"),
        reason: e.to_string(),
    })
}

/// Opens the store in `dir` again in a test, waiting for a dropped
/// handle's flusher to let go of its lock (it may hold it for a moment).
#[cfg(test)]
pub(crate) fn reopen_retrying(dir: &Path) -> Store {
    for _ in 0..100 {
        if let Ok(s) = Store::open(dir) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    match Store::open(dir) {
        Ok(s) => s,
        Err(e) => panic!("store in {} does not reopen: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: u64) -> AuditEntry {
        AuditEntry {
            tenant: "t".into(),
            version: v,
            round: v,
            rule: "fedavg".into(),
            participants: vec!["a".into()],
            excluded: vec![],
            model_sha256: String::new(),
            prev_entry_sha256: String::new(),
            unix_ms: 0,
            quarantined: vec![],
            reputation: vec![],
            secure: None,
            refused_commits: vec![],
        }
    }

    #[test]
    fn commits_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.commit("t", 0, b"m0", entry(0), None, None).unwrap();
            s.commit("t", 1, b"m1", entry(1), Some(b"state"), Some(b"{}"))
                .unwrap();
            assert!(matches!(
                s.commit("t", 3, b"m3", entry(3), None, None),
                Err(StoreError::NotSuccessor { .. })
            ));
            s.set_next_round("t", 5).unwrap();
        }
        // sled's flusher of the dropped handle may still hold the lock for
        // a moment in this process; a new process would not wait.
        let s = reopen_retrying(dir.path());
        assert_eq!(s.latest_model("t").unwrap(), Some((1, b"m1".to_vec())));
        assert_eq!(s.verify_chain("t").unwrap(), 2);
        assert_eq!(s.server_state("t").unwrap(), Some(b"state".to_vec()));
        assert_eq!(s.next_round("t").unwrap(), 5);
        assert_eq!(s.next_round("other").unwrap(), 1);
        assert_eq!(s.tenants().unwrap(), vec!["t".to_string()]);
    }

    #[test]
    fn tampering_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.commit("t", 0, b"m0", entry(0), None, None).unwrap();
        s.commit("t", 1, b"m1", entry(1), None, None).unwrap();
        s.models.insert(key("t", 0), b"evil".as_slice()).unwrap();
        assert!(matches!(
            s.verify_chain("t"),
            Err(StoreError::ChainBroken { version: 0, .. })
        ));
    }

    #[test]
    fn tenants_do_not_share_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.commit("a", 0, b"a0", entry(0), None, None).unwrap();
        s.commit("ab", 0, b"ab0", entry(0), None, None).unwrap();
        assert_eq!(s.latest_model("a").unwrap(), Some((0, b"a0".to_vec())));
        assert_eq!(s.audit_log("a").unwrap().len(), 1);
    }

    #[test]
    fn retention_keeps_last_bodies_and_the_whole_chain() {
        let dir = tempfile::tempdir().unwrap();
        let keep = std::num::NonZeroU64::new(3);
        {
            let s = Store::open(dir.path()).unwrap().with_retention(keep);
            for v in 0..10 {
                s.commit("t", v, format!("m{v}").as_bytes(), entry(v), None, None)
                    .unwrap();
            }
            s.commit("other", 0, b"o0", entry(0), None, None).unwrap();
            assert_eq!(s.model_count("t"), 3);
            assert_eq!(s.model_count("other"), 1);
            assert_eq!(s.pruned_below("t").unwrap(), 7);
            assert_eq!(s.audit_log("t").unwrap().len(), 10);
            assert_eq!(s.verify_chain("t").unwrap(), 10);
            assert_eq!(
                s.lookup_model("t", 2).unwrap(),
                ModelLookup::Pruned { oldest_kept: 7 }
            );
            assert_eq!(
                s.lookup_model("t", 7).unwrap(),
                ModelLookup::Found(b"m7".to_vec())
            );
            assert_eq!(s.lookup_model("t", 10).unwrap(), ModelLookup::Unknown);
        }
        // A restart resumes from the latest version and keeps pruning.
        let s = reopen_retrying(dir.path()).with_retention(keep);
        assert_eq!(s.latest_model("t").unwrap(), Some((9, b"m9".to_vec())));
        assert_eq!(s.verify_chain("t").unwrap(), 10);
        s.commit("t", 10, b"m10", entry(10), None, None).unwrap();
        assert_eq!(s.model_count("t"), 3);
        assert_eq!(s.pruned_below("t").unwrap(), 8);
        assert_eq!(s.verify_chain("t").unwrap(), 11);
        // A body missing above the mark is still tampering.
        s.models.remove(key("t", 9)).unwrap();
        assert!(matches!(
            s.verify_chain("t"),
            Err(StoreError::ChainBroken { version: 9, .. })
        ));
    }

    #[test]
    fn a_pruned_version_is_not_found_with_a_clear_message() {
        let e = crate::federation::FedError::Pruned {
            version: 2,
            oldest_kept: 7,
        };
        let status = crate::service::to_status(e);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("pruned"));
    }

    #[test]
    fn lowering_retention_prunes_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for v in 0..6 {
            s.commit("t", v, b"m", entry(v), None, None).unwrap();
        }
        assert_eq!(s.model_count("t"), 6);
        let s = s.with_retention(std::num::NonZeroU64::new(2));
        s.commit("t", 6, b"m", entry(6), None, None).unwrap();
        assert_eq!(s.model_count("t"), 2);
        assert_eq!(s.verify_chain("t").unwrap(), 7);
    }

    fn log_file(dir: &Path, tenant: &str) -> PathBuf {
        dir.join(AUDIT_DIR).join(log_file_name(tenant))
    }

    #[test]
    fn the_audit_log_is_a_file_and_sled_holds_only_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for v in 0..3 {
            s.commit("t", v, b"m", entry(v), None, None).unwrap();
        }
        assert_eq!(s.legacy_audit.len(), 0);
        let text = std::fs::read_to_string(log_file(dir.path(), "t")).unwrap();
        assert_eq!(text.lines().count(), 3);
        let head = s.head("t").unwrap().unwrap();
        assert_eq!(head.version, 2);
        assert_eq!(head.len, text.len() as u64);
        assert_eq!(head.digest, s.latest_audit("t").unwrap().unwrap().digest());
        assert_eq!(s.latest_audit("t").unwrap().unwrap().version, 2);
        // A name that is not a file name is hex-encoded.
        assert_eq!(log_file_name("../x"), "%2e2e2f78.jsonl");
        assert_eq!(log_file_name("acme-1"), "acme-1.jsonl");
    }

    #[test]
    fn an_entry_written_but_not_committed_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.commit("t", 0, b"m0", entry(0), None, None).unwrap();
            s.commit("t", 1, b"m1", entry(1), None, None).unwrap();
        }
        // A crash between the append and the sled commit of version 2
        // (and a torn line after it).
        let path = log_file(dir.path(), "t");
        let committed = std::fs::metadata(&path).unwrap().len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut e = entry(2);
        e.prev_entry_sha256 = "x".into();
        std::io::Write::write_all(&mut f, &serde_json::to_vec(&e).unwrap()).unwrap();
        std::io::Write::write_all(&mut f, b"\n{\"tenant\":").unwrap();
        drop(f);
        let s = reopen_retrying(dir.path());
        // Readers stop at the committed head.
        assert_eq!(s.verify_chain("t").unwrap(), 2);
        assert_eq!(s.latest_audit("t").unwrap().unwrap().version, 1);
        // The next commit cuts the tail off and continues the chain.
        s.commit("t", 2, b"m2", entry(2), None, None).unwrap();
        assert_eq!(s.verify_chain("t").unwrap(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.len() as u64 > committed);
    }

    #[test]
    fn a_shortened_or_edited_log_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for v in 0..3 {
            s.commit("t", v, b"m", entry(v), None, None).unwrap();
        }
        let path = log_file(dir.path(), "t");
        let text = std::fs::read_to_string(&path).unwrap();
        // The last entry dropped: the log no longer reaches the head.
        let cut = text.trim_end().rfind('\n').unwrap() + 1;
        std::fs::write(&path, &text[..cut]).unwrap();
        assert!(matches!(
            s.verify_chain("t"),
            Err(StoreError::ChainBroken { version: 2, .. })
        ));
        // The last entry edited (same length): its digest is not the head's.
        std::fs::write(&path, text.replace("\"round\":2", "\"round\":7")).unwrap();
        assert!(matches!(
            s.verify_chain("t"),
            Err(StoreError::ChainBroken { version: 2, .. })
        ));
        // An earlier entry edited: the next entry's link breaks.
        std::fs::write(&path, text.replace("\"round\":0", "\"round\":7")).unwrap();
        assert!(matches!(
            s.verify_chain("t"),
            Err(StoreError::ChainBroken { version: 1, .. })
        ));
        std::fs::write(&path, &text).unwrap();
        assert_eq!(s.verify_chain("t").unwrap(), 3);
    }

    #[test]
    fn a_store_with_entries_in_sled_stays_readable_and_continues_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The layout before the log moved out: entries in the `audit`
            // tree, chained, no head.
            let s = Store::open(dir.path()).unwrap();
            let mut prev = String::new();
            for v in 0..3u64 {
                let body = format!("m{v}");
                let mut e = entry(v);
                e.prev_entry_sha256 = prev.clone();
                e.model_sha256 = fedmesh_crypto::sha256_hex(body.as_bytes());
                prev = e.digest();
                s.models.insert(key("t", v), body.as_bytes()).unwrap();
                s.legacy_audit
                    .insert(key("t", v), serde_json::to_vec(&e).unwrap())
                    .unwrap();
            }
            s.db.flush().unwrap();
        }
        let s = reopen_retrying(dir.path()).with_retention(std::num::NonZeroU64::new(2));
        assert_eq!(s.verify_chain("t").unwrap(), 3);
        assert_eq!(s.latest_audit("t").unwrap().unwrap().version, 2);
        s.commit("t", 3, b"m3", entry(3), None, None).unwrap();
        s.commit("t", 4, b"m4", entry(4), None, None).unwrap();
        assert_eq!(s.verify_chain("t").unwrap(), 5);
        let log = s.audit_log("t").unwrap();
        assert_eq!(
            log.iter().map(|e| e.version).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(log[3].prev_entry_sha256, log[2].digest());
        assert_eq!(s.legacy_audit.len(), 3);
    }

    /// What sled holds does not grow with the number of versions once the
    /// retention is reached: N bodies and a fixed set of meta values.
    #[test]
    fn sled_contents_stay_bounded_under_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path())
            .unwrap()
            .with_retention(std::num::NonZeroU64::new(4));
        let sled_entries = |s: &Store| s.models.len() + s.meta.len() + s.legacy_audit.len();
        let mut sizes = Vec::new();
        for v in 0..200u64 {
            s.commit("t", v, &[7u8; 300], entry(v), Some(b"state"), Some(b"{}"))
                .unwrap();
            if v == 19 || v == 199 {
                sizes.push(sled_entries(&s));
            }
        }
        assert_eq!(sizes[0], sizes[1], "{sizes:?}");
        assert_eq!(s.model_count("t"), 4);
        assert_eq!(s.verify_chain("t").unwrap(), 200);
        assert_eq!(s.audit_log("t").unwrap().len(), 200);
    }
}
