//! The coordinator's TLS credentials while it runs: certificate rotation
//! without a restart, certificate revocation and expiry warnings.
//!
//! [`Credentials::apply`] is the deterministic core: it takes the bytes of
//! the CA certificate, the coordinator's certificate and key and the
//! optional revocation list (CRL), and
//!
//! - swaps the rustls server certificate and client verifier (handshakes
//!   from then on use them; established connections stay up),
//! - swaps the signer of new global models,
//! - hands the revocation list to the signature verifier and to the
//!   transport, which closes every connection whose client certificate is
//!   now revoked, and
//! - for each newly revoked node certificate seen since start, tells that
//!   tenant's federation ([`Federation::revoke`]): its update to the open
//!   round is dropped and the revocation goes into the next audit entry.
//!
//! [`Credentials::watch_files`] is the I/O edge: it polls the files' mtime
//! and length at a bounded interval (and reloads at once on
//! [`Credentials::request_reload`], which the binary calls on SIGHUP).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fedmesh_crypto::tls::ServerTls;
use fedmesh_crypto::{
    CertSigner, CertVerifier, CryptoError, Identity, RevocationList, SecretPem, SharedSigner,
    TenantId,
};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::federation::Federation;
use crate::metrics::Metrics;

/// Most peers remembered by certificate serial (to name the identity behind
/// a newly revoked serial); when full, the oldest half is forgotten.
const MAX_PEERS: usize = 65_536;

/// Why new credentials were refused (the old ones stay in use).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Certificate, key, CA or revocation list unusable.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The revocation list is older than the one in force.
    #[error("revocation list number {got} is older than the one in force ({current})")]
    CrlRollback {
        /// The number offered.
        got: u64,
        /// The number in force.
        current: u64,
    },
    /// The revocation list revokes the coordinator's own certificate.
    #[error("the revocation list revokes this coordinator's own certificate; install a new one")]
    OwnCertificateRevoked,
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The bytes of the coordinator's TLS material.
#[derive(Debug, Clone)]
pub struct Material {
    /// Mesh CA certificate(s), PEM.
    pub ca_pem: String,
    /// The coordinator's certificate, PEM.
    pub cert_pem: String,
    /// Its key, PKCS#8 PEM.
    pub key_pem: SecretPem,
    /// The mesh CA's revocation list, PEM, if one is configured.
    pub crl_pem: Option<Vec<u8>>,
}

/// Where the material lives on disk.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    /// Mesh CA certificate.
    pub ca_cert: PathBuf,
    /// Coordinator certificate.
    pub cert: PathBuf,
    /// Coordinator key.
    pub key: PathBuf,
    /// Revocation list (optional).
    pub crl: Option<PathBuf>,
}

impl CredentialFiles {
    fn paths(&self) -> Vec<&PathBuf> {
        let mut p = vec![&self.ca_cert, &self.cert, &self.key];
        p.extend(self.crl.iter());
        p
    }

    /// Reads every file.
    pub fn read(&self) -> Result<Material, CredentialError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| CredentialError::Io {
                path: path.clone(),
                source,
            })
        };
        let text = |path: &PathBuf| {
            String::from_utf8(read(path)?).map_err(|_| CredentialError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 PEM"),
            })
        };
        Ok(Material {
            ca_pem: text(&self.ca_cert)?,
            cert_pem: text(&self.cert)?,
            key_pem: SecretPem::new(text(&self.key)?),
            crl_pem: self.read_crl()?,
        })
    }

    /// The revocation list's bytes, if one is configured and written yet
    /// (a configured list that does not exist yet counts as empty).
    pub fn read_crl(&self) -> Result<Option<Vec<u8>>, CredentialError> {
        let Some(path) = &self.crl else {
            return Ok(None);
        };
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialError::Io {
                path: path.clone(),
                source,
            }),
        }
    }

    /// (mtime, length) of every file, to tell later whether any changed
    /// (take it before reading the files).
    pub fn stamp(&self) -> FileStamp {
        FileStamp(self.stamp_files())
    }

    fn stamp_files(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.paths()
            .into_iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// The (mtime, length) of a set of files at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp(Vec<Option<(SystemTime, u64)>>);

/// Revoked certificate serials, shared with the transport: every accepted
/// connection registers its certificate's serial and identity, and is closed
/// as soon as that serial is revoked.
#[derive(Clone, Debug)]
pub struct Revocations {
    revoked: Arc<watch::Sender<Arc<BTreeSet<Vec<u8>>>>>,
    peers: Arc<Mutex<BTreeMap<Vec<u8>, Identity>>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    /// Nothing revoked.
    pub fn new() -> Self {
        Revocations {
            revoked: Arc::new(watch::Sender::new(Arc::default())),
            peers: Arc::default(),
        }
    }

    /// Whether `serial` (normalized) is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.revoked.borrow().contains(serial)
    }

    /// Remembers that a connection presented the certificate `serial` of
    /// `identity`.
    pub fn register(&self, serial: &[u8], identity: &Identity) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(serial) {
            let keep: Vec<Vec<u8>> = peers.keys().skip(MAX_PEERS / 2).cloned().collect();
            peers.retain(|k, _| keep.binary_search(k).is_ok());
        }
        peers.insert(serial.to_vec(), identity.clone());
    }

    /// Resolves once `serial` is revoked (never, if it never is).
    pub fn revoked(&self, serial: Vec<u8>) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.revoked.subscribe();
        async move {
            if rx.wait_for(|set| set.contains(&serial)).await.is_err() {
                // The sender lives as long as the coordinator; if it is gone
                // there is nothing left to revoke.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Installs `list`; returns the newly revoked serials, each with the
    /// identity that presented it since start, if any.
    fn install(&self, list: &RevocationList) -> Vec<(Vec<u8>, Option<Identity>)> {
        let new: Arc<BTreeSet<Vec<u8>>> = Arc::new(list.serials().clone());
        let old = self.revoked.send_replace(new.clone());
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        new.difference(&old)
            .map(|s| (s.clone(), peers.get(s).cloned()))
            .collect()
    }
}

/// What one [`Credentials::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadOutcome {
    /// The coordinator now presents (and signs with) another certificate.
    pub certificate_changed: bool,
    /// The number of the revocation list in force, if any.
    pub crl_number: Option<u64>,
    /// Newly revoked serials (hex), with the identity seen presenting each.
    pub revoked: Vec<(String, Option<Identity>)>,
}

#[derive(Debug, Default)]
struct State {
    cert_pem: String,
    crl_number: Option<u64>,
    not_after: Option<OffsetDateTime>,
    ca_not_after: Option<OffsetDateTime>,
    /// Days left when the last expiry warning was logged.
    warned_days: Option<i64>,
}

/// The coordinator's live credentials (see the module docs).
pub struct Credentials {
    tls: ServerTls,
    signer: SharedSigner,
    verifier: CertVerifier,
    revocations: Revocations,
    feds: Mutex<BTreeMap<TenantId, Arc<Federation>>>,
    metrics: Arc<Metrics>,
    warn_days: u32,
    state: Mutex<State>,
    reload_now: Notify,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Credentials {
    /// Builds the TLS configuration, signer and verifier from `material`
    /// (the revocation list, if any, already in force).
    pub fn new(
        material: &Material,
        metrics: Arc<Metrics>,
        warn_days: u32,
        now: OffsetDateTime,
    ) -> Result<Self, CredentialError> {
        let crl = parse_crl(material)?;
        let tls = ServerTls::new(
            &material.ca_pem,
            &material.cert_pem,
            &material.key_pem,
            crl.as_ref(),
        )?;
        let signer = CertSigner::from_pem(&material.cert_pem, &material.key_pem)?;
        check_own_not_revoked(&signer, crl.as_ref())?;
        let verifier = CertVerifier::new(&material.ca_pem)?;
        let revocations = Revocations::new();
        if let Some(crl) = &crl {
            verifier.set_revocations(crl);
            revocations.install(crl);
        }
        let creds = Credentials {
            tls,
            signer: SharedSigner::new(signer),
            verifier,
            revocations,
            feds: Mutex::default(),
            metrics,
            warn_days,
            state: Mutex::new(State {
                cert_pem: material.cert_pem.clone(),
                crl_number: crl.as_ref().map(RevocationList::number),
                ..State::default()
            }),
            reload_now: Notify::new(),
        };
        creds.note_expiry(&material.ca_pem, &material.cert_pem)?;
        creds.check_expiry(now);
        Ok(creds)
    }

    /// The federations told about revoked nodes.
    pub(crate) fn set_federations(&self, feds: BTreeMap<TenantId, Arc<Federation>>) {
        *lock(&self.feds) = feds;
    }

    /// The rustls configuration (follows reloads).
    pub fn tls(&self) -> &ServerTls {
        &self.tls
    }

    /// The signer of global models (follows reloads).
    pub fn signer(&self) -> &SharedSigner {
        &self.signer
    }

    /// The verifier of member signatures (follows the revocation list).
    pub fn verifier(&self) -> &CertVerifier {
        &self.verifier
    }

    /// Revoked serials, for the transport.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Asks [`Credentials::watch_files`] to reload now (SIGHUP).
    pub fn request_reload(&self) {
        self.reload_now.notify_one();
    }

    /// Installs new material (see the module docs). On error nothing
    /// changes.
    pub fn apply(
        &self,
        material: &Material,
        now: OffsetDateTime,
    ) -> Result<ReloadOutcome, CredentialError> {
        let crl = parse_crl(material)?;
        let current = lock(&self.state).crl_number;
        if let (Some(current), Some(crl)) = (current, &crl)
            && crl.number() < current
        {
            return Err(CredentialError::CrlRollback {
                got: crl.number(),
                current,
            });
        }
        let signer = CertSigner::from_pem(&material.cert_pem, &material.key_pem)?;
        check_own_not_revoked(&signer, crl.as_ref())?;
        self.tls.reload(
            &material.ca_pem,
            &material.cert_pem,
            &material.key_pem,
            crl.as_ref(),
        )?;
        self.note_expiry(&material.ca_pem, &material.cert_pem)?;
        let certificate_changed = {
            let mut st = lock(&self.state);
            let changed = st.cert_pem != material.cert_pem;
            if changed {
                st.cert_pem = material.cert_pem.clone();
                st.warned_days = None;
            }
            if let Some(crl) = &crl {
                st.crl_number = Some(crl.number());
            }
            changed
        };
        if certificate_changed {
            info!(identity = %signer.identity(), "coordinator certificate reloaded");
            self.signer.replace(signer);
        }
        let mut revoked = Vec::new();
        if let Some(crl) = &crl {
            self.verifier.set_revocations(crl);
            let feds = lock(&self.feds).clone();
            for (serial, identity) in self.revocations.install(crl) {
                let serial = hex::encode(serial);
                match &identity {
                    Some(Identity::Node { tenant, node }) => {
                        let dropped = feds.get(tenant).is_some_and(|f| f.revoke(node, &serial));
                        warn!(%tenant, %node, %serial, dropped_update = dropped, "node certificate revoked; its connections are closed");
                    }
                    Some(other) => warn!(identity = %other, %serial, "certificate revoked"),
                    None => info!(%serial, "certificate revoked (not seen since start)"),
                }
                revoked.push((serial, identity));
            }
        }
        self.check_expiry(now);
        Ok(ReloadOutcome {
            certificate_changed,
            crl_number: lock(&self.state).crl_number,
            revoked,
        })
    }

    fn note_expiry(&self, ca_pem: &str, cert_pem: &str) -> Result<(), CredentialError> {
        let not_after = fedmesh_crypto::crl::cert_not_after(
            &fedmesh_crypto::tls::cert_der_from_pem(cert_pem)?,
        )?;
        // The first CA in the file is the one in use.
        let ca_not_after = fedmesh_crypto::tls::first_cert_der(ca_pem)
            .ok()
            .and_then(|d| fedmesh_crypto::crl::cert_not_after(&d).ok());
        let mut st = lock(&self.state);
        st.not_after = Some(not_after);
        st.ca_not_after = ca_not_after;
        Ok(())
    }

    /// Updates the expiry metric and logs a warning when fewer than
    /// `warn_days` days are left (once per day left).
    pub fn check_expiry(&self, now: OffsetDateTime) {
        let mut st = lock(&self.state);
        for (which, at) in [("coordinator", st.not_after), ("ca", st.ca_not_after)] {
            if let Some(at) = at {
                self.metrics
                    .certificate_expiry(which, (at - now).as_seconds_f64());
            }
        }
        let Some(not_after) = st.not_after else {
            return;
        };
        let days_left = (not_after - now).whole_days();
        if days_left < i64::from(self.warn_days) && st.warned_days != Some(days_left) {
            st.warned_days = Some(days_left);
            if days_left < 0 {
                error!(%not_after, "the coordinator certificate has expired: nodes refuse it; issue and install a new one");
            } else {
                warn!(days_left, %not_after, "the coordinator certificate expires soon: issue and install a new one (no restart needed)");
            }
        }
    }

    /// Polls `files` every `interval` (and at once on
    /// [`Credentials::request_reload`]) and applies them when they differ
    /// from `seen` (the stamp taken before the material in use was read),
    /// until `stop` turns true. A refused reload keeps the old material and
    /// is logged.
    pub async fn watch_files(
        self: Arc<Self>,
        files: CredentialFiles,
        mut seen: FileStamp,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = self.reload_now.notified() => true,
                _ = stop.changed() => return,
            };
            if *stop.borrow() {
                return;
            }
            let stamp = files.stamp();
            if !forced && stamp == seen {
                self.check_expiry(OffsetDateTime::now_utc());
                continue;
            }
            // Files are replaced one by one; give the writer a moment to
            // finish the set, then read them together.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stamp = files.stamp();
            match files
                .read()
                .and_then(|m| self.apply(&m, OffsetDateTime::now_utc()))
            {
                Ok(outcome) => {
                    info!(
                        certificate_changed = outcome.certificate_changed,
                        crl_number = outcome.crl_number,
                        revoked = outcome.revoked.len(),
                        "TLS credentials reloaded"
                    );
                    self.metrics.credentials_reload(true);
                }
                Err(e) => {
                    warn!(error = %e, "TLS credentials not reloaded; the previous ones stay in use");
                    self.metrics.credentials_reload(false);
                }
            }
            seen = stamp;
        }
    }
}

fn parse_crl(m: &Material) -> Result<Option<RevocationList>, CredentialError> {
    Ok(m.crl_pem
        .as_deref()
        .map(|pem| RevocationList::from_pem(pem, &m.ca_pem))
        .transpose()?)
}

fn check_own_not_revoked(
    signer: &CertSigner,
    crl: Option<&RevocationList>,
) -> Result<(), CredentialError> {
    if let Some(crl) = crl
        && crl.is_revoked(&fedmesh_crypto::crl::cert_serial(signer.cert_der())?)
    {
        return Err(CredentialError::OwnCertificateRevoked);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_crypto::{MeshCa, RevokedCert};

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn coordinator(ca: &MeshCa, days: u32) -> fedmesh_crypto::IssuedCert {
        ca.issue_coordinator(
            &"main".parse().unwrap(),
            &["localhost".into()],
            &[],
            now(),
            days,
        )
        .unwrap()
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{what} did not happen within 5 s");
    }

    /// The file watcher picks up a rotated certificate and a new revocation
    /// list, and keeps the old material when the new files are unusable.
    #[tokio::test]
    async fn watcher_reloads_changed_files_and_keeps_old_ones_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate("test CA", now(), 30).unwrap();
        let old = coordinator(&ca, 3);
        let files = CredentialFiles {
            ca_cert: dir.path().join("ca.crt"),
            cert: dir.path().join("coordinator.crt"),
            key: dir.path().join("coordinator.key"),
            crl: Some(dir.path().join("crl.pem")),
        };
        crate::pki::replace_public(&files.ca_cert, ca.cert_pem().as_bytes()).unwrap();
        crate::pki::replace_public(&files.cert, old.cert_pem.as_bytes()).unwrap();
        crate::pki::replace_secret(&files.key, &old.key_pem).unwrap();
        let metrics = Arc::new(Metrics::new());
        let stamp = files.stamp();
        let creds =
            Arc::new(Credentials::new(&files.read().unwrap(), metrics.clone(), 7, now()).unwrap());
        assert_eq!(
            lock(&creds.state).warned_days,
            Some(2),
            "a 3-day certificate warns"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(creds.clone().watch_files(
            files.clone(),
            stamp,
            Duration::from_millis(20),
            stop_rx,
        ));

        let new = coordinator(&ca, 30);
        crate::pki::replace_secret(&files.key, &new.key_pem).unwrap();
        crate::pki::replace_public(&files.cert, new.cert_pem.as_bytes()).unwrap();
        let new_der = fedmesh_crypto::tls::cert_der_from_pem(&new.cert_pem).unwrap();
        eventually("certificate rotation", || {
            creds.signer().current().cert_der() == new_der.as_slice()
        })
        .await;

        let serial = fedmesh_crypto::crl::cert_serial(
            &fedmesh_crypto::tls::cert_der_from_pem(&old.cert_pem).unwrap(),
        )
        .unwrap();
        let crl = ca
            .issue_crl(
                &[RevokedCert {
                    serial,
                    revoked_at: now(),
                }],
                1,
                now(),
            )
            .unwrap();
        crate::pki::replace_public(files.crl.as_ref().unwrap(), crl.as_bytes()).unwrap();
        eventually("revocation list", || creds.verifier().revoked_count() == 1).await;

        // A key that does not match: refused, the new certificate stays.
        crate::pki::replace_secret(&files.key, &old.key_pem).unwrap();
        creds.request_reload();
        let text = || metrics.encode();
        eventually("refused reload", || {
            text().contains("fedmesh_credential_reloads_total{result=\"refused\"}")
        })
        .await;
        assert_eq!(creds.signer().current().cert_der(), new_der.as_slice());
        assert!(text().contains("fedmesh_certificate_expiry_seconds{certificate=\"coordinator\"}"));
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
