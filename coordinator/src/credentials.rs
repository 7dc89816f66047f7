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
//! - makes the verifier of member signatures (secure-aggregation adverts,
//!   masked inputs, unmask responses) trust the CA file's CAs, so a node
//!   certificate of a new CA is accepted as soon as its handshake is, and
//!   one of a CA dropped from the file no longer is,
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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmesh_crypto::files::expiry_warning_due;
use fedmesh_crypto::tls::ServerTls;
use fedmesh_crypto::{
    CertSigner, CertVerifier, CrlSuccession, CryptoError, FileError, FileStamp, Identity,
    RevocationList, SharedSigner, TenantId, TlsFiles, TlsMaterial, TrustedCas,
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
    /// The revocation list may not replace the one in force (older, or
    /// another CA's while that one's CA is still trusted).
    #[error(transparent)]
    CrlSuccession(#[from] CrlSuccession),
    /// The revocation list revokes the coordinator's own certificate.
    #[error("the revocation list revokes this coordinator's own certificate; install a new one")]
    OwnCertificateRevoked,
    /// A file could not be read.
    #[error(transparent)]
    Files(#[from] FileError),
}

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
    /// The revocation list in force.
    crl: Option<RevocationList>,
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
        material: &TlsMaterial,
        metrics: Arc<Metrics>,
        warn_days: u32,
        now: OffsetDateTime,
    ) -> Result<Self, CredentialError> {
        let crl = material.revocation_list()?;
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
                crl: crl.clone(),
                not_after: Some(material.cert_not_after()?),
                ca_not_after: material.ca_not_after(),
                warned_days: None,
            }),
            reload_now: Notify::new(),
        };
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

    /// The verifier of member signatures (follows the CA file and the
    /// revocation list).
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
        material: &TlsMaterial,
        now: OffsetDateTime,
    ) -> Result<ReloadOutcome, CredentialError> {
        let crl = material.revocation_list()?;
        let cas = TrustedCas::from_pem(&material.ca_pem)?;
        if let (Some(in_force), Some(crl)) = (&lock(&self.state).crl, &crl) {
            crl.may_replace(in_force, &cas)?;
        }
        let signer = CertSigner::from_pem(&material.cert_pem, &material.key_pem)?;
        check_own_not_revoked(&signer, crl.as_ref())?;
        let not_after = material.cert_not_after()?;
        // The last step that can fail: from here on everything is swapped.
        self.tls.reload(
            &material.ca_pem,
            &material.cert_pem,
            &material.key_pem,
            crl.as_ref(),
        )?;
        if self.verifier.set_trusted_cas(cas) {
            info!(
                trusted_cas = self.verifier.trusted_cas().len(),
                "mesh CA certificates reloaded"
            );
        }
        let certificate_changed = {
            let mut st = lock(&self.state);
            st.ca_not_after = material.ca_not_after();
            let changed = st.cert_pem != material.cert_pem;
            if changed {
                st.cert_pem = material.cert_pem.clone();
                st.not_after = Some(not_after);
                st.warned_days = None;
            }
            if let Some(crl) = &crl {
                st.crl = Some(crl.clone());
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
            crl_number: lock(&self.state).crl.as_ref().map(RevocationList::number),
            revoked,
        })
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
        if let Some(days_left) =
            expiry_warning_due(not_after, now, self.warn_days, &mut st.warned_days)
        {
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
        files: TlsFiles,
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
                .map_err(CredentialError::from)
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

    /// A CA rotation reaches the verifier of member signatures: a node
    /// certificate of the new CA is accepted once the CA file lists it (as
    /// its handshake is), one of a CA dropped from the file no longer is.
    #[test]
    fn member_signatures_follow_the_ca_file() {
        let (ca1, ca2) = (
            MeshCa::generate("CA 1", now(), 30).unwrap(),
            MeshCa::generate("CA 2", now(), 30).unwrap(),
        );
        let node = |ca: &MeshCa| {
            let c = ca
                .issue_node(&"acme".parse().unwrap(), &"n1".parse().unwrap(), now(), 30)
                .unwrap();
            CertSigner::from_pem(&c.cert_pem, &c.key_pem).unwrap()
        };
        let (old_node, new_node) = (node(&ca1), node(&ca2));
        let verify = |v: &CertVerifier, s: &CertSigner| {
            v.verify(s.cert_der(), b"advert", &s.sign(b"advert"), now())
        };
        let material = |ca_pem: String, cert: &fedmesh_crypto::IssuedCert| TlsMaterial {
            ca_pem,
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
            crl_pem: None,
        };
        let coord1 = coordinator(&ca1, 30);
        let creds = Credentials::new(
            &material(ca1.cert_pem().into(), &coord1),
            Arc::new(Metrics::new()),
            7,
            now(),
        )
        .unwrap();
        // What every federation holds.
        let verifier = creds.verifier().clone();
        verify(&verifier, &old_node).unwrap();
        assert!(verify(&verifier, &new_node).is_err());
        let both = format!("{}{}", ca2.cert_pem(), ca1.cert_pem());
        creds.apply(&material(both, &coord1), now()).unwrap();
        verify(&verifier, &old_node).unwrap();
        verify(&verifier, &new_node).unwrap();
        let coord2 = coordinator(&ca2, 30);
        let outcome = creds
            .apply(&material(ca2.cert_pem().into(), &coord2), now())
            .unwrap();
        assert!(outcome.certificate_changed);
        assert!(matches!(
            verify(&verifier, &old_node),
            Err(CryptoError::UntrustedCertificate(_))
        ));
        verify(&verifier, &new_node).unwrap();
        // A CA file that is not a CA: refused, nothing changes.
        let leaf = coordinator(&ca2, 30);
        assert!(
            creds
                .apply(&material(leaf.cert_pem.clone(), &coord2), now())
                .is_err()
        );
        verify(&verifier, &new_node).unwrap();
    }

    /// The file watcher picks up a rotated certificate and a new revocation
    /// list, and keeps the old material when the new files are unusable.
    #[tokio::test]
    async fn watcher_reloads_changed_files_and_keeps_old_ones_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate("test CA", now(), 30).unwrap();
        let old = coordinator(&ca, 3);
        let files = TlsFiles {
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
