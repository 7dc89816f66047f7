//! fedmesh coordinator: serves `fedmesh.v1.Federation` over mutual TLS,
//! runs one federation per tenant (rounds, validation, aggregation), signs
//! every committed global version and keeps it in a store (sled for the
//! bounded state, an append-only hash-chained audit log per tenant).
//!
//! The binary (`src/main.rs`) is glue: CLI, config, [`Coordinator::open`],
//! [`Coordinator::serve`].
#![deny(missing_docs)]

pub mod aggregate;
pub mod bounds;
pub mod config;
pub mod credentials;
pub mod error;
pub mod federation;
pub mod http;
pub mod machine;
pub mod metrics;
pub mod pki;
pub mod reputation;
pub mod round;
pub mod secure;
pub mod secure_round;
pub mod server_step;
pub mod service;
pub mod status;
pub mod store;
pub mod transport;
pub mod validate;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fedmesh_crypto::TenantId;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

pub use config::CoordinatorConfig;
pub use federation::{Federation, RoundStatus, RoundSummary};
pub use pki::Pki;
pub use store::Store;

/// Start-up and serving failures.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// TLS material unusable.
    #[error("TLS: {0}")]
    Crypto(#[from] fedmesh_crypto::CryptoError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Federation failed to open.
    #[error("tenant {tenant}: {source}")]
    Federation {
        /// Tenant.
        tenant: String,
        /// Cause.
        source: federation::FedError,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A PKI file is missing or unreadable.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// TLS credentials or revocation list refused.
    #[error("TLS credentials: {0}")]
    Credentials(#[from] credentials::CredentialError),
}

/// The gRPC server with every HTTP/2 limit set explicitly from `[limits]`
/// (see [`config::LimitsConfig`]): concurrent streams per connection,
/// header list size, keepalive, and the reset-stream budgets; adaptive
/// flow-control windows are off, so a client cannot grow the server's
/// buffers.
fn grpc_server(l: &config::LimitsConfig) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(l.http2_max_concurrent_streams)
        .http2_max_header_list_size(l.http2_max_header_list_size)
        .http2_keepalive_interval(Some(Duration::from_millis(l.http2_keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(l.http2_keepalive_timeout_ms)))
        .http2_adaptive_window(Some(false))
        .http2_max_pending_accept_reset_streams(Some(l.http2_max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(l.http2_max_local_error_reset_streams))
        .accept_http1(false)
}

/// A configured coordinator, ready to serve.
pub struct Coordinator {
    feds: BTreeMap<TenantId, Arc<Federation>>,
    credentials: Arc<credentials::Credentials>,
    credential_files: fedmesh_crypto::TlsFiles,
    credential_stamp: fedmesh_crypto::FileStamp,
    reload_interval: Duration,
    max_message_bytes: usize,
    limits: config::LimitsConfig,
    store: Store,
    metrics: Arc<metrics::Metrics>,
    metrics_listen: Option<std::net::SocketAddr>,
    health_listen: Option<std::net::SocketAddr>,
}

impl Coordinator {
    /// Validates the config, opens the store and every tenant's federation.
    pub fn open(cfg: &CoordinatorConfig, pki: &Pki) -> Result<Self, CoordinatorError> {
        cfg.validate()?;
        let credential_files = fedmesh_crypto::TlsFiles {
            ca_cert: cfg.tls.ca_cert.clone(),
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
            crl: cfg.tls.crl.clone(),
        };
        // Stamped before reading, so a change from now on is picked up.
        let credential_stamp = credential_files.stamp();
        let material = fedmesh_crypto::TlsMaterial {
            ca_pem: pki.ca_pem.clone(),
            cert_pem: pki.cert_pem.clone(),
            key_pem: pki.key_pem.clone(),
            crl_pem: credential_files
                .read_crl()
                .map_err(credentials::CredentialError::from)?,
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| pki::PkiError::Io {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let store = Store::open_with_cache(&cfg.data_dir, cfg.store.cache_bytes())?
            .with_retention(cfg.store.retention());
        let metrics = Arc::new(metrics::Metrics::new());
        let credentials = Arc::new(credentials::Credentials::new(
            &material,
            metrics.clone(),
            cfg.tls.expiry_warning_days,
            time::OffsetDateTime::now_utc(),
        )?);
        let signer = credentials.signer().clone();
        let verifier = credentials.verifier().clone();
        let mut feds = BTreeMap::new();
        for t in &cfg.tenants {
            let tenant: TenantId = t.name.parse()?;
            let fed = Federation::open(
                tenant.clone(),
                t.clone(),
                store.clone(),
                signer.clone(),
                verifier.clone(),
                metrics.clone(),
            )
            .map_err(|source| CoordinatorError::Federation {
                tenant: t.name.clone(),
                source,
            })?;
            feds.insert(tenant, fed);
        }
        credentials.set_federations(feds.clone());
        Ok(Self {
            feds,
            credentials,
            credential_files,
            credential_stamp,
            reload_interval: match cfg.tls.reload_interval_secs {
                // Only on SIGHUP: check about once a day.
                0 => Duration::from_secs(86_400),
                s => Duration::from_secs(s),
            },
            max_message_bytes: cfg.max_message_bytes,
            limits: cfg.limits.clone(),
            store,
            metrics,
            metrics_listen: cfg.metrics_listen,
            health_listen: cfg.health_listen,
        })
    }

    /// A tenant's federation.
    pub fn federation(&self, tenant: &str) -> Option<Arc<Federation>> {
        self.feds
            .iter()
            .find(|(t, _)| t.as_str() == tenant)
            .map(|(_, f)| f.clone())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The live TLS credentials: reload them ([`credentials::Credentials::apply`],
    /// or [`credentials::Credentials::request_reload`] on SIGHUP).
    pub fn credentials(&self) -> Arc<credentials::Credentials> {
        self.credentials.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    /// Serves gRPC (federation + health) on `listener` and drives every
    /// federation's rounds until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CoordinatorError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut drivers = Vec::new();
        for fed in self.feds.values() {
            drivers.push(tokio::spawn(fed.clone().run(stop_rx.clone())));
        }
        let reloader = tokio::spawn(self.credentials.clone().watch_files(
            self.credential_files.clone(),
            self.credential_stamp.clone(),
            self.reload_interval,
            stop_rx.clone(),
        ));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<fedmesh_proto::v1::federation_server::FederationServer<service::FederationService>>()
            .await;
        let svc = fedmesh_proto::v1::federation_server::FederationServer::new(
            service::FederationService::new(self.feds.clone()),
        )
        .max_decoding_message_size(self.max_message_bytes)
        .max_encoding_message_size(self.max_message_bytes);
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, tenants = self.feds.len(), "coordinator serving");
        }
        let mut http = None;
        if let Some(addr) = self.metrics_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| CoordinatorError::Listen { addr, source })?;
            info!(url = %http::describe(l.local_addr().unwrap_or(addr)), "metrics serving");
            let feds = self
                .feds
                .iter()
                .map(|(t, f)| (t.to_string(), f.clone()))
                .collect();
            let mut rx = stop_rx.clone();
            http = Some(tokio::spawn(http::serve_http(
                l,
                self.metrics.clone(),
                feds,
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                },
            )));
        }
        let mut health = None;
        if let Some(addr) = self.health_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| CoordinatorError::Listen { addr, source })?;
            info!(addr = %l.local_addr().unwrap_or(addr), "plaintext gRPC health serving");
            let mut rx = stop_rx.clone();
            let svc = health_service.clone();
            let mut server = grpc_server(&self.limits);
            health = Some(tokio::spawn(async move {
                server
                    .add_service(svc)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(l),
                        async move {
                            let _ = rx.wait_for(|stop| *stop).await;
                        },
                    )
                    .await
            }));
        }
        let metrics = self.metrics.clone();
        let incoming = transport::tls_incoming(
            listener,
            self.credentials.tls().config(),
            transport::AcceptLimits::of(&self.limits),
            Arc::new(move |r| metrics.handshake_refused(r)),
            self.credentials.revocations().clone(),
        );
        let result = grpc_server(&self.limits)
            .add_service(health_service)
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        let _ = stop_tx.send(true);
        for d in drivers {
            let _ = d.await;
        }
        let _ = reloader.await;
        if let Some(h) = http {
            let _ = h.await;
        }
        if let Some(h) = health {
            let _ = h.await;
        }
        result?;
        Ok(())
    }
}
