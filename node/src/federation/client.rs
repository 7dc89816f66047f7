//! Client side of the mTLS transport: dials the coordinator (nodes always
//! dial out), runs the TLS 1.3 handshake with the node certificate
//! (`fedmesh_crypto::tls::client_config`) and speaks gRPC over it.
//!
//! [`NodeCredentials`] keeps the node's TLS material current while it runs:
//! a rotated certificate and key, a new CA file or a new revocation list are
//! picked up without a restart (the next connection uses them; models are
//! checked against the new list at once).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fedmesh_crypto::tls::ClientTls;
use fedmesh_crypto::{CertVerifier, CryptoError, Identity, RevocationList, SecretPem};
use time::OffsetDateTime;
use tokio::sync::watch;
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
    /// The revocation list is older than the one in force.
    #[error("revocation list number {got} is older than the one in force ({current})")]
    CrlRollback {
        /// The number offered.
        got: u64,
        /// The number in force.
        current: u64,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The bytes of a node's TLS material.
#[derive(Debug, Clone)]
pub struct NodeMaterial {
    /// Mesh CA certificate(s), PEM.
    pub ca_pem: String,
    /// The node's certificate, PEM.
    pub cert_pem: String,
    /// Its key, PKCS#8 PEM.
    pub key_pem: SecretPem,
    /// The mesh CA's revocation list, PEM, if configured and present.
    pub crl_pem: Option<Vec<u8>>,
}

/// Where a node's TLS material lives.
#[derive(Debug, Clone)]
pub struct NodeTlsFiles {
    /// Mesh CA certificate.
    pub ca_cert: PathBuf,
    /// Node certificate.
    pub cert: PathBuf,
    /// Node key.
    pub key: PathBuf,
    /// Revocation list (optional; a configured list not written yet counts
    /// as empty).
    pub crl: Option<PathBuf>,
}

impl NodeTlsFiles {
    /// Reads every file.
    pub fn read(&self) -> Result<NodeMaterial, CredentialError> {
        let text = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| CredentialError::Io {
                path: path.clone(),
                source,
            })
        };
        let crl_pem = match &self.crl {
            None => None,
            Some(path) => match std::fs::read(path) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(CredentialError::Io {
                        path: path.clone(),
                        source,
                    });
                }
            },
        };
        Ok(NodeMaterial {
            ca_pem: text(&self.ca_cert)?,
            cert_pem: text(&self.cert)?,
            key_pem: SecretPem::new(text(&self.key)?),
            crl_pem,
        })
    }

    /// (mtime, length) of every file, to tell later whether any changed
    /// (take it before reading the files).
    pub fn stamp(&self) -> NodeFileStamp {
        NodeFileStamp(self.stamp_files())
    }

    fn stamp_files(&self) -> Vec<Option<(SystemTime, u64)>> {
        [&self.ca_cert, &self.cert, &self.key]
            .into_iter()
            .chain(self.crl.as_ref())
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }
}

/// The (mtime, length) of a node's TLS files at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFileStamp(Vec<Option<(SystemTime, u64)>>);

#[derive(Debug)]
struct NodeState {
    cert_pem: String,
    crl_number: Option<u64>,
    not_after: OffsetDateTime,
    warned_days: Option<i64>,
}

/// A node's live TLS material: the mTLS client configuration and the
/// verifier of global models follow reloads ([`NodeCredentials::apply`],
/// [`NodeCredentials::watch_files`]).
#[derive(Debug)]
pub struct NodeCredentials {
    tls: ClientTls,
    verifier: CertVerifier,
    identity: Identity,
    warn_days: u32,
    state: Mutex<NodeState>,
}

fn parse_crl(m: &NodeMaterial) -> Result<Option<RevocationList>, CredentialError> {
    Ok(m.crl_pem
        .as_deref()
        .map(|pem| RevocationList::from_pem(pem, &m.ca_pem))
        .transpose()?)
}

fn cert_facts(cert_pem: &str) -> Result<(Identity, OffsetDateTime), CredentialError> {
    let der = fedmesh_crypto::tls::cert_der_from_pem(cert_pem)?;
    Ok((
        fedmesh_crypto::tls::identity_from_cert_der(&der)?,
        fedmesh_crypto::crl::cert_not_after(&der)?,
    ))
}

impl NodeCredentials {
    /// Builds the client configuration and the model verifier (with the
    /// revocation list, if any).
    pub fn new(
        m: &NodeMaterial,
        warn_days: u32,
        now: OffsetDateTime,
    ) -> Result<Self, CredentialError> {
        let crl = parse_crl(m)?;
        let tls = ClientTls::new(&m.ca_pem, &m.cert_pem, &m.key_pem, crl.as_ref())?;
        let verifier = CertVerifier::new(&m.ca_pem)?;
        if let Some(crl) = &crl {
            verifier.set_revocations(crl);
        }
        let (identity, not_after) = cert_facts(&m.cert_pem)?;
        let creds = NodeCredentials {
            tls,
            verifier,
            identity,
            warn_days,
            state: Mutex::new(NodeState {
                cert_pem: m.cert_pem.clone(),
                crl_number: crl.as_ref().map(RevocationList::number),
                not_after,
                warned_days: None,
            }),
        };
        creds.check_expiry(now);
        Ok(creds)
    }

    /// The mTLS client configuration (follows reloads), for [`Connector::new`].
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.config()
    }

    /// The verifier of global models and peers' signatures (follows the
    /// revocation list; share it with the agent).
    pub fn verifier(&self) -> &CertVerifier {
        &self.verifier
    }

    /// Days left on the node's certificate at `now` (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.lock().not_after - now).whole_days()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs new material; returns whether the certificate changed. On
    /// error nothing changes.
    pub fn apply(&self, m: &NodeMaterial, now: OffsetDateTime) -> Result<bool, CredentialError> {
        let crl = parse_crl(m)?;
        let (identity, not_after) = cert_facts(&m.cert_pem)?;
        if identity != self.identity {
            return Err(CredentialError::IdentityChanged {
                expected: self.identity.clone(),
                got: identity,
            });
        }
        if let (Some(current), Some(crl)) = (self.lock().crl_number, &crl)
            && crl.number() < current
        {
            return Err(CredentialError::CrlRollback {
                got: crl.number(),
                current,
            });
        }
        self.tls
            .reload(&m.ca_pem, &m.cert_pem, &m.key_pem, crl.as_ref())?;
        if let Some(crl) = &crl {
            self.verifier.set_revocations(crl);
        }
        let changed = {
            let mut st = self.lock();
            let changed = st.cert_pem != m.cert_pem;
            if changed {
                st.cert_pem = m.cert_pem.clone();
                st.not_after = not_after;
                st.warned_days = None;
            }
            if let Some(crl) = &crl {
                st.crl_number = Some(crl.number());
            }
            changed
        };
        self.check_expiry(now);
        Ok(changed)
    }

    /// Logs a warning when fewer than `warn_days` days are left on the
    /// node's certificate (once per day left); returns the days left.
    pub fn check_expiry(&self, now: OffsetDateTime) -> i64 {
        let mut st = self.lock();
        let days_left = (st.not_after - now).whole_days();
        if days_left < i64::from(self.warn_days) && st.warned_days != Some(days_left) {
            st.warned_days = Some(days_left);
            if days_left < 0 {
                error!(not_after = %st.not_after, "this node's certificate has expired: the coordinator refuses it; install a new one");
            } else {
                warn!(days_left, not_after = %st.not_after, "this node's certificate expires soon: install a new one (no restart needed)");
            }
        }
        days_left
    }

    /// Polls `files` every `interval` and applies them when they differ
    /// from `seen` (the stamp taken before the material in use was read),
    /// until `stop` turns true. A refused reload keeps the old material.
    pub async fn watch_files(
        self: Arc<Self>,
        files: NodeTlsFiles,
        mut seen: NodeFileStamp,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if files.stamp() == seen {
                self.check_expiry(OffsetDateTime::now_utc());
                continue;
            }
            // Let a writer finish replacing the set, then read it together.
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = files.stamp();
            match files
                .read()
                .and_then(|m| self.apply(&m, OffsetDateTime::now_utc()))
            {
                Ok(changed) => info!(certificate_changed = changed, "TLS credentials reloaded"),
                Err(e) => {
                    warn!(error = %e, "TLS credentials not reloaded; the previous ones stay in use")
                }
            }
        }
    }
}
