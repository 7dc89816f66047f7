//! Client side of the mTLS transport: dials the coordinator (nodes always
//! dial out), runs the TLS 1.3 handshake with the node certificate
//! (`fedmesh_crypto::tls::client_config`) and speaks gRPC over it.

use std::sync::Arc;
use std::time::Duration;

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
    pub fn new(
        endpoint: &str,
        server_name: &str,
        tls: rustls::ClientConfig,
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
            tls: TlsConnector::from(Arc::new(tls)),
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
