//! Client side of the mTLS transport: dials the coordinator (nodes always
//! dial out), runs the TLS 1.3 handshake with the node certificate
//! (`fedmesh_crypto::tls::client_config`) and speaks gRPC over it.
//!
//! [`NodeCredentials`] keeps the node's TLS material current while it runs:
//! a rotated certificate and key, a new CA file or a new revocation list are
//! picked up without a restart (the next connection uses them, the next
//! secure-aggregation round signs with the new key, models and peers'
//! adverts are checked against the new CAs and list at once).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmesh_crypto::files::expiry_warning_due;
use fedmesh_crypto::tls::ClientTls;
use fedmesh_crypto::{
    CertSigner, CertVerifier, CrlSuccession, CryptoError, FileError, FileStamp, Identity,
    RevocationList, SharedSigner, TlsFiles, TlsMaterial, TrustedCas,
};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use fedmesh_proto::v1::federation_client::FederationClient;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connection failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// The endpoint is not `host:port`.
    #[error("invalid coordinator endpoint {0:?}")]
    Endpoint(String),
    /// Connecting failed.
    #[error("cannot connect to the coordinator at {endpoint}: {source}")]
    Connect {
        /// Endpoint.
        endpoint: String,
        /// Cause.
        source: tonic::transport::Error,
    },
}

/// Dials the coordinator.
#[derive(Clone)]
pub struct Connector {
    endpoint: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    max_message_bytes: usize,
}

impl Connector {
    /// `endpoint` is `host:port`; `server_name` must appear in the
    /// coordinator certificate's SANs.
    ///
    /// `tls` is a configuration or a shared one (e.g.
    /// [`NodeCredentials::tls_config`], which follows reloads).
    pub fn new(
        endpoint: &str,
        server_name: &str,
        tls: impl Into<Arc<rustls::ClientConfig>>,
        max_message_bytes: usize,
    ) -> Result<Self, ClientError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| ClientError::ServerName(server_name.into()))?;
        if endpoint
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ClientError::Endpoint(endpoint.into()));
        }
        Ok(Self {
            endpoint: endpoint.to_string(),
            server_name,
            tls: TlsConnector::from(tls.into()),
            max_message_bytes,
        })
    }

    /// Opens an HTTP/2 channel over mutual TLS.
    pub async fn connect(&self) -> Result<FederationClient<Channel>, ClientError> {
        let (tls, addr, name) = (
            self.tls.clone(),
            self.endpoint.clone(),
            self.server_name.clone(),
        );
        let connector = tower::service_fn(move |_: Uri| {
            let (tls, addr, name) = (tls.clone(), addr.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let stream = tls.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = Endpoint::from_shared(format!("http://{}", self.endpoint))
            .map_err(|_| ClientError::Endpoint(self.endpoint.clone()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_with_connector(connector)
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        Ok(FederationClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }
}

/// Why new TLS material was refused (the old material stays in use).
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Certificate, key, CA or revocation list unusable.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The new certificate names another identity.
    #[error("the new certificate is for {got}, this node is {expected}")]
    IdentityChanged {
        /// This node.
        expected: Identity,
        /// The certificate's.
        got: Identity,
    },
    /// The revocation list may not replace the one in force (older, or
    /// another CA's while that one's CA is still trusted).
    #[error(transparent)]
    CrlSuccession(#[from] CrlSuccession),
    /// A file could not be read.
    #[error(transparent)]
    Files(#[from] FileError),
}

#[derive(Debug)]
struct NodeState {
    cert_pem: String,
    /// The revocation list in force.
    crl: Option<RevocationList>,
    not_after: OffsetDateTime,
    ca_not_after: Option<OffsetDateTime>,
    warned_days: Option<i64>,
}

/// A node's live TLS material: the mTLS client configuration, the signer
/// of its secure-aggregation messages and the verifier of global models
/// and peers' signatures all follow reloads ([`NodeCredentials::apply`],
/// [`NodeCredentials::watch_files`], [`NodeCredentials::request_reload`]).
#[derive(Debug)]
pub struct NodeCredentials {
    tls: ClientTls,
    signer: SharedSigner,
    verifier: CertVerifier,
    identity: Identity,
    warn_days: u32,
    state: Mutex<NodeState>,
    reload_now: Notify,
    /// Reloads applied and refused by the file watcher.
    reloads: [AtomicU64; 2],
}

impl NodeCredentials {
    /// Builds the client configuration, the signer and the model verifier
    /// (with the revocation list, if any).
    pub fn new(
        m: &TlsMaterial,
        warn_days: u32,
        now: OffsetDateTime,
    ) -> Result<Self, CredentialError> {
        let crl = m.revocation_list()?;
        let tls = ClientTls::new(&m.ca_pem, &m.cert_pem, &m.key_pem, crl.as_ref())?;
        let signer = CertSigner::from_pem(&m.cert_pem, &m.key_pem)?;
        let verifier = CertVerifier::new(&m.ca_pem)?;
        if let Some(crl) = &crl {
            verifier.set_revocations(crl);
        }
        let creds = NodeCredentials {
            tls,
            identity: signer.identity().clone(),
            signer: SharedSigner::new(signer),
            verifier,
            warn_days,
            state: Mutex::new(NodeState {
                cert_pem: m.cert_pem.clone(),
                crl: crl.clone(),
                not_after: m.cert_not_after()?,
                ca_not_after: m.ca_not_after(),
                warned_days: None,
            }),
            reload_now: Notify::new(),
            reloads: Default::default(),
        };
        creds.check_expiry(now);
        Ok(creds)
    }

    /// The mTLS client configuration (follows reloads), for [`Connector::new`].
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.config()
    }

    /// The signer of this node's secure-aggregation messages (follows
    /// reloads: share it with the federation loop).
    pub fn signer(&self) -> &SharedSigner {
        &self.signer
    }

    /// The verifier of global models and peers' signatures (follows the CA
    /// file and the revocation list; clones share them, so hand a clone to
    /// the agent).
    pub fn verifier(&self) -> &CertVerifier {
        &self.verifier
    }

    /// This node's identity (a reload never changes it).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Days left on the node's certificate at `now` (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.lock().not_after - now).whole_days()
    }

    /// Seconds left at `now` on the node's certificate (`"node"`) and on the
    /// mesh CA in use (`"ca"`, when readable); negative once expired. The
    /// node exposes them as `fedmesh_certificate_expiry_seconds`.
    pub fn expiry_seconds(&self, now: OffsetDateTime) -> Vec<(&'static str, f64)> {
        let st = self.lock();
        std::iter::once(("node", Some(st.not_after)))
            .chain(std::iter::once(("ca", st.ca_not_after)))
            .filter_map(|(which, at)| Some((which, (at? - now).as_seconds_f64())))
            .collect()
    }

    /// Reloads by the file watcher so far: (applied, refused).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads[0].load(Ordering::Relaxed),
            self.reloads[1].load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs new material; returns whether the certificate changed. On
    /// error nothing changes.
    ///
    /// A secure-aggregation round in progress keeps the signer it started
    /// with (its messages must match the certificate in its advert); the
    /// next round signs with the new one.
    pub fn apply(&self, m: &TlsMaterial, now: OffsetDateTime) -> Result<bool, CredentialError> {
        let crl = m.revocation_list()?;
        let signer = CertSigner::from_pem(&m.cert_pem, &m.key_pem)?;
        if signer.identity() != &self.identity {
            return Err(CredentialError::IdentityChanged {
                expected: self.identity.clone(),
                got: signer.identity().clone(),
            });
        }
        let cas = TrustedCas::from_pem(&m.ca_pem)?;
        if let (Some(in_force), Some(crl)) = (&self.lock().crl, &crl) {
            crl.may_replace(in_force, &cas)?;
        }
        let not_after = m.cert_not_after()?;
        // The last step that can fail: from here on everything is swapped.
        self.tls
            .reload(&m.ca_pem, &m.cert_pem, &m.key_pem, crl.as_ref())?;
        if self.verifier.set_trusted_cas(cas) {
            info!(
                trusted_cas = self.verifier.trusted_cas().len(),
                "mesh CA certificates reloaded"
            );
        }
        if let Some(crl) = &crl {
            self.verifier.set_revocations(crl);
        }
        let changed = {
            let mut st = self.lock();
            st.ca_not_after = m.ca_not_after();
            let changed = st.cert_pem != m.cert_pem;
            if changed {
                st.cert_pem = m.cert_pem.clone();
                st.not_after = not_after;
                st.warned_days = None;
            }
            if let Some(crl) = &crl {
                st.crl = Some(crl.clone());
            }
            changed
        };
        if changed {
            info!(identity = %signer.identity(), "node certificate reloaded");
            self.signer.replace(signer);
        }
        self.check_expiry(now);
        Ok(changed)
    }

    /// Logs a warning when fewer than `warn_days` days are left on the
    /// node's certificate (once per day left); returns the days left.
    pub fn check_expiry(&self, now: OffsetDateTime) -> i64 {
        let mut st = self.lock();
        let not_after = st.not_after;
        if let Some(days_left) =
            expiry_warning_due(not_after, now, self.warn_days, &mut st.warned_days)
        {
            if days_left < 0 {
                error!(%not_after, "this node's certificate has expired: the coordinator refuses it; install a new one");
            } else {
                warn!(days_left, %not_after, "this node's certificate expires soon: install a new one (no restart needed)");
            }
        }
        (not_after - now).whole_days()
    }

    /// Asks [`NodeCredentials::watch_files`] to reload now (SIGHUP).
    pub fn request_reload(&self) {
        self.reload_now.notify_one();
    }

    /// Polls `files` every `interval` (and at once on
    /// [`NodeCredentials::request_reload`]) and applies them when they
    /// differ from `seen` (the stamp taken before the material in use was
    /// read), until `stop` turns true. A refused reload keeps the old
    /// material and is logged.
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
            if !forced && files.stamp() == seen {
                self.check_expiry(OffsetDateTime::now_utc());
                continue;
            }
            // Let a writer finish replacing the set, then read it together.
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = files.stamp();
            match files
                .read()
                .map_err(CredentialError::from)
                .and_then(|m| self.apply(&m, OffsetDateTime::now_utc()))
            {
                Ok(changed) => {
                    self.reloads[0].fetch_add(1, Ordering::Relaxed);
                    info!(certificate_changed = changed, "TLS credentials reloaded")
                }
                Err(e) => {
                    self.reloads[1].fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "TLS credentials not reloaded; the previous ones stay in use")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_crypto::{IssuedCert, MeshCa};

    fn now() -> OffsetDateTime {
        // Whole seconds, so validity periods come out exact.
        OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
    }

    fn node_cert(ca: &MeshCa, days: u32) -> IssuedCert {
        ca.issue_node(
            &"acme".parse().unwrap(),
            &"n1".parse().unwrap(),
            now(),
            days,
        )
        .unwrap()
    }

    fn coordinator_signer(ca: &MeshCa) -> CertSigner {
        let c = ca
            .issue_coordinator(
                &"main".parse().unwrap(),
                &["localhost".into()],
                &[],
                now(),
                30,
            )
            .unwrap();
        CertSigner::from_pem(&c.cert_pem, &c.key_pem).unwrap()
    }

    fn material(ca_pem: &str, cert: &IssuedCert) -> TlsMaterial {
        TlsMaterial {
            ca_pem: ca_pem.to_string(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
            crl_pem: None,
        }
    }

    /// Verifies a "model" signed by `s` with `v`.
    fn verify(v: &CertVerifier, s: &CertSigner) -> Result<Identity, CryptoError> {
        v.verify(s.cert_der(), b"model", &s.sign(b"model"), now())
    }

    /// A CA rotation and a key rotation reach the clones the federation
    /// loop holds: the model verifier trusts exactly the CA file's CAs, the
    /// shared signer signs with the new key; a refused reload changes
    /// nothing.
    #[test]
    fn verifier_and_signer_follow_ca_and_key_rotation() {
        let (ca1, ca2) = (
            MeshCa::generate("CA 1", now(), 365).unwrap(),
            MeshCa::generate("CA 2", now(), 365).unwrap(),
        );
        let (old_coord, new_coord) = (coordinator_signer(&ca1), coordinator_signer(&ca2));
        let first = node_cert(&ca1, 30);
        let creds = NodeCredentials::new(&material(ca1.cert_pem(), &first), 7, now()).unwrap();
        // What the federation loop and the agent hold.
        let verifier = creds.verifier().clone();
        let signer = creds.signer().clone();
        verify(&verifier, &old_coord).unwrap();
        assert!(matches!(
            verify(&verifier, &new_coord),
            Err(CryptoError::UntrustedCertificate(_))
        ));

        // Step 1: both CAs trusted, the node's certificate unchanged.
        let both = format!("{}{}", ca2.cert_pem(), ca1.cert_pem());
        assert!(!creds.apply(&material(&both, &first), now()).unwrap());
        verify(&verifier, &old_coord).unwrap();
        verify(&verifier, &new_coord).unwrap();

        // Step 2: a certificate of the new CA; the old CA dropped.
        let second = node_cert(&ca2, 30);
        assert!(creds.apply(&material(&both, &second), now()).unwrap());
        let current = signer.current();
        assert_eq!(
            current.cert_der(),
            fedmesh_crypto::tls::cert_der_from_pem(&second.cert_pem).unwrap()
        );
        verify(&CertVerifier::new(ca2.cert_pem()).unwrap(), &current).unwrap();
        assert!(
            creds
                .apply(&material(ca2.cert_pem(), &second), now())
                .is_ok()
        );
        assert!(matches!(
            verify(&verifier, &old_coord),
            Err(CryptoError::UntrustedCertificate(_))
        ));
        verify(&verifier, &new_coord).unwrap();

        // Refused: a key of another certificate, a CA file that is not a
        // CA, another node's certificate. Nothing changes.
        let third = node_cert(&ca2, 30);
        let mismatched = TlsMaterial {
            key_pem: first.key_pem.clone(),
            ..material(&both, &third)
        };
        assert!(creds.apply(&mismatched, now()).is_err());
        assert!(
            creds
                .apply(&material(&third.cert_pem, &third), now())
                .is_err()
        );
        let other = ca2
            .issue_node(&"acme".parse().unwrap(), &"n2".parse().unwrap(), now(), 30)
            .unwrap();
        assert!(matches!(
            creds.apply(&material(ca2.cert_pem(), &other), now()),
            Err(CredentialError::IdentityChanged { .. })
        ));
        assert_eq!(signer.current().cert_der(), current.cert_der());
        assert_eq!(verifier.trusted_cas().len(), 1);
        assert!(verify(&verifier, &old_coord).is_err());
    }

    /// Seconds left on the certificate and the CA, as the metric shows them.
    #[test]
    fn expiry_seconds_of_certificate_and_ca() {
        let ca = MeshCa::generate("CA", now(), 365).unwrap();
        // No warning here (1 day): only the test below logs one, so no other
        // thread races it for the warning's call site.
        let creds =
            NodeCredentials::new(&material(ca.cert_pem(), &node_cert(&ca, 3)), 1, now()).unwrap();
        let at = now() + time::Duration::days(1);
        assert_eq!(
            creds.expiry_seconds(at),
            vec![("node", 2.0 * 86_400.0), ("ca", 364.0 * 86_400.0)]
        );
        assert_eq!(creds.days_left(at), 2);
        assert_eq!(
            creds.expiry_seconds(now() + time::Duration::days(4))[0],
            ("node", -86_400.0)
        );
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Fewer than `warn_days` days left: one warning per day left, an error
    /// once expired. (No other test of this crate logs these lines: tracing
    /// caches per call site whether anyone listens, and a test's scoped
    /// subscriber can lose that race against another thread.)
    #[test]
    fn expiry_is_warned_once_per_day_left() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let ca = MeshCa::generate("CA", now(), 365).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            let creds =
                NodeCredentials::new(&material(ca.cert_pem(), &node_cert(&ca, 3)), 7, now())
                    .unwrap();
            assert_eq!(creds.check_expiry(now()), 3);
            assert_eq!(creds.check_expiry(now() + time::Duration::days(1)), 2);
            assert_eq!(creds.check_expiry(now() + time::Duration::days(4)), -1);
            assert_eq!(creds.check_expiry(now() + time::Duration::days(4)), -1);
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("certificate expires soon"))
            .collect();
        assert_eq!(warnings.len(), 2, "{text}");
        assert!(warnings[0].contains("WARN") && warnings[0].contains("days_left=3"));
        assert!(warnings[1].contains("days_left=2"));
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("ERROR") && l.contains("has expired"))
                .count(),
            1,
            "{text}"
        );
    }

    /// The file watcher applies a rotated certificate on a reload request
    /// (SIGHUP) without waiting for its next poll.
    #[tokio::test]
    async fn reload_request_applies_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::generate("CA", now(), 365).unwrap();
        let files = TlsFiles {
            ca_cert: dir.path().join("ca.crt"),
            cert: dir.path().join("node.crt"),
            key: dir.path().join("node.key"),
            crl: None,
        };
        let write = |c: &IssuedCert| {
            std::fs::write(&files.ca_cert, ca.cert_pem()).unwrap();
            std::fs::write(&files.cert, &c.cert_pem).unwrap();
            std::fs::write(&files.key, c.key_pem.expose()).unwrap();
        };
        write(&node_cert(&ca, 30));
        let stamp = files.stamp();
        let creds = Arc::new(NodeCredentials::new(&files.read().unwrap(), 7, now()).unwrap());
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(creds.clone().watch_files(
            files.clone(),
            stamp,
            Duration::from_secs(3600),
            stop_rx,
        ));
        let next = node_cert(&ca, 30);
        write(&next);
        let want = fedmesh_crypto::tls::cert_der_from_pem(&next.cert_pem).unwrap();
        creds.request_reload();
        let mut applied = false;
        for _ in 0..200 {
            if creds.signer().current().cert_der() == want.as_slice() {
                applied = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(applied, "the reload request was not applied within 5 s");
        assert_eq!(creds.reloads(), (1, 0));
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
