//! rustls configurations for mesh mTLS (TLS 1.3 only, ring provider) and
//! identity extraction from peer certificates.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::identity::{Identity, URI_PREFIX};
use crate::{CryptoError, Result, SecretPem};

/// The ALPN protocol offered by both sides (gRPC runs over HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The ring crypto provider, passed explicitly everywhere (no process default).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding every certificate in `ca_pem` (several CAs are
/// allowed, e.g. during a CA rotation).
fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for der in crate::pem::cert_ders(ca_pem)? {
        store.add(der)?;
    }
    Ok(Arc::new(store))
}

fn chain_and_key(
    cert_pem: &str,
    key_pem: &SecretPem,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = crate::pem::cert_ders(cert_pem)?;
    let key = crate::pem::pkcs8_der(key_pem)?;
    Ok((chain, PrivateKeyDer::Pkcs8(key)))
}

fn map_key_error(e: rustls::Error) -> CryptoError {
    match e {
        rustls::Error::InconsistentKeys(_) => CryptoError::KeyCertMismatch,
        other => CryptoError::Tls(other),
    }
}

/// Server side of mesh mTLS: TLS 1.3 only, client certificates required and
/// verified against the mesh CA(s) in `ca_pem`, ALPN `h2`.
///
/// `cert_pem` is the server's certificate (optionally followed by
/// intermediates); `key_pem` its PKCS#8 key.
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &SecretPem) -> Result<ServerConfig> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone()).build()?;
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(map_key_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Client side of mesh mTLS: TLS 1.3 only, trusts only the mesh CA(s) in
/// `ca_pem`, presents `cert_pem`/`key_pem`, ALPN `h2`.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &SecretPem) -> Result<ClientConfig> {
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(map_key_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// DER of the single certificate in `pem` (e.g. to feed
/// [`identity_from_cert_der`] or [`crate::CertVerifier::verify`]).
pub fn cert_der_from_pem(pem: &str) -> Result<Vec<u8>> {
    Ok(crate::pem::single_cert_der(pem)?.to_vec())
}

/// The fedmesh identity of a certificate: its single `spiffe://fedmesh/` URI
/// SAN, strictly parsed.
///
/// This does not verify the certificate: use it on certificates that rustls
/// (or [`crate::CertVerifier`]) has already verified.
pub fn identity_from_cert_der(der: &[u8]) -> Result<Identity> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CryptoError::CertificateParse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CryptoError::CertificateParse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    identity_from_parsed(&cert)
}

pub(crate) fn identity_from_parsed(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<Identity> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CryptoError::CertificateParse(format!("subjectAltName: {e}")))?
        .ok_or(CryptoError::NoIdentity)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CryptoError::NoIdentity),
        [uri] => Identity::from_uri(uri),
        several => Err(CryptoError::MultipleIdentities(several.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MeshCa;
    use crate::test_util::*;
    use rcgen::{CertificateParams, Ia5String, KeyPair, PKCS_ED25519, SanType};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, ServerConnection};
    use time::{Duration, OffsetDateTime};

    /// rustls checks validity against the real clock, so TLS tests issue
    /// certificates around the real "now".
    fn wall_now() -> OffsetDateTime {
        OffsetDateTime::now_utc() - Duration::hours(1)
    }

    struct Mesh {
        ca: MeshCa,
        server: ServerConfig,
    }

    fn mesh() -> Mesh {
        let ca = MeshCa::generate("mesh CA", wall_now(), 2).unwrap();
        let coord = ca
            .issue_coordinator(
                &node("main"),
                &["coordinator.fedmesh".to_string()],
                &["127.0.0.1".parse().unwrap()],
                wall_now(),
                2,
            )
            .unwrap();
        let server = server_config(ca.cert_pem(), &coord.cert_pem, &coord.key_pem).unwrap();
        Mesh { ca, server }
    }

    /// Pumps bytes both ways until both sides finish the handshake or one
    /// side errors. Returns the first error (as a string) if any.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> std::result::Result<(), String> {
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                let mut slice = buf.as_slice();
                while !slice.is_empty() {
                    server.read_tls(&mut slice).unwrap();
                }
                server
                    .process_new_packets()
                    .map_err(|e| format!("server: {e}"))?;
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                let mut slice = buf.as_slice();
                while !slice.is_empty() {
                    client.read_tls(&mut slice).unwrap();
                }
                client
                    .process_new_packets()
                    .map_err(|e| format!("client: {e}"))?;
            }
            if !client.is_handshaking()
                && !server.is_handshaking()
                && !client.wants_write()
                && !server.wants_write()
            {
                return Ok(());
            }
        }
        Err("handshake did not complete in 20 rounds".into())
    }

    fn connect(
        client_cfg: ClientConfig,
        server_cfg: &ServerConfig,
    ) -> (
        ClientConnection,
        ServerConnection,
        std::result::Result<(), String>,
    ) {
        let name = ServerName::try_from("coordinator.fedmesh").unwrap();
        let mut client = ClientConnection::new(Arc::new(client_cfg), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server_cfg.clone())).unwrap();
        let res = handshake(&mut client, &mut server);
        (client, server, res)
    }

    #[test]
    fn mtls_handshake_yields_node_identity() {
        let m = mesh();
        let leaf =
            m.ca.issue_node(&tenant("acme"), &node("n1"), wall_now(), 2)
                .unwrap();
        let cfg = client_config(m.ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap();
        let (client, server, res) = connect(cfg, &m.server);
        res.unwrap();
        assert_eq!(
            server.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(server.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(client.alpn_protocol(), Some(ALPN_H2));
        let peer = server.peer_certificates().unwrap();
        assert_eq!(
            identity_from_cert_der(&peer[0]).unwrap(),
            node_identity("acme", "n1")
        );
        // The client sees the coordinator identity too.
        let server_peer = client.peer_certificates().unwrap();
        assert_eq!(
            identity_from_cert_der(&server_peer[0]).unwrap(),
            Identity::Coordinator { name: node("main") }
        );
    }

    #[test]
    fn client_cert_from_other_ca_is_refused() {
        let m = mesh();
        let other = MeshCa::generate("evil CA", wall_now(), 2).unwrap();
        let leaf = other
            .issue_node(&tenant("acme"), &node("n1"), wall_now(), 2)
            .unwrap();
        // The client trusts the real mesh CA but presents a foreign cert.
        let cfg = client_config(m.ca.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap();
        let (_, _, res) = connect(cfg, &m.server);
        let err = res.unwrap_err();
        assert_eq!(err, "server: invalid peer certificate: UnknownIssuer");
    }

    #[test]
    fn client_without_cert_is_refused() {
        let m = mesh();
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(m.ca.cert_pem()).unwrap())
            .with_no_client_auth();
        let (_, _, res) = connect(cfg, &m.server);
        let err = res.unwrap_err();
        assert_eq!(err, "server: peer sent no certificates");
    }

    #[test]
    fn client_refuses_server_from_other_ca() {
        let m = mesh();
        let other = MeshCa::generate("evil CA", wall_now(), 2).unwrap();
        let leaf =
            m.ca.issue_node(&tenant("acme"), &node("n1"), wall_now(), 2)
                .unwrap();
        let cfg = client_config(other.cert_pem(), &leaf.cert_pem, &leaf.key_pem).unwrap();
        let (_, _, res) = connect(cfg, &m.server);
        assert!(res.unwrap_err().starts_with("client:"));
    }

    #[test]
    fn configs_are_tls13_h2_and_check_keys() {
        let m = mesh();
        assert_eq!(m.server.alpn_protocols, vec![b"h2".to_vec()]);
        let a =
            m.ca.issue_node(&tenant("t"), &node("a"), wall_now(), 1)
                .unwrap();
        let b =
            m.ca.issue_node(&tenant("t"), &node("b"), wall_now(), 1)
                .unwrap();
        assert!(matches!(
            client_config(m.ca.cert_pem(), &a.cert_pem, &b.key_pem),
            Err(CryptoError::KeyCertMismatch)
        ));
        assert!(matches!(
            server_config(m.ca.cert_pem(), &a.cert_pem, &b.key_pem),
            Err(CryptoError::KeyCertMismatch)
        ));
        assert!(matches!(
            client_config("", &a.cert_pem, &a.key_pem),
            Err(CryptoError::Pem { .. })
        ));
        assert!(matches!(
            client_config(m.ca.cert_pem(), &a.cert_pem, &SecretPem::new(String::new())),
            Err(CryptoError::Pem { .. })
        ));
    }

    #[test]
    fn tls12_client_is_refused() {
        let m = mesh();
        let leaf =
            m.ca.issue_node(&tenant("acme"), &node("n1"), wall_now(), 2)
                .unwrap();
        let (chain, key) = chain_and_key(&leaf.cert_pem, &leaf.key_pem).unwrap();
        let cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots(m.ca.cert_pem()).unwrap())
            .with_client_auth_cert(chain, key)
            .unwrap();
        let (_, _, res) = connect(cfg, &m.server);
        assert!(res.unwrap_err().starts_with("server:"));
    }

    /// Builds a leaf by hand with arbitrary SANs, signed by `ca`'s key.
    fn leaf_with_sans(sans: Vec<SanType>) -> Vec<u8> {
        let ca_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let ca_cert = CertificateParams::default().self_signed(&ca_key).unwrap();
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap()
            .der()
            .to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(Ia5String::try_from(s).unwrap())
    }

    #[test]
    fn identity_extraction_errors_are_precise() {
        assert!(matches!(
            identity_from_cert_der(&leaf_with_sans(vec![])),
            Err(CryptoError::NoIdentity)
        ));
        assert!(matches!(
            identity_from_cert_der(&leaf_with_sans(vec![
                uri("spiffe://other/tenant/a/node/b"),
                SanType::DnsName(Ia5String::try_from("x.example").unwrap()),
            ])),
            Err(CryptoError::NoIdentity)
        ));
        assert!(matches!(
            identity_from_cert_der(&leaf_with_sans(vec![
                uri("spiffe://fedmesh/tenant/a/node/b"),
                uri("spiffe://fedmesh/coordinator/c"),
            ])),
            Err(CryptoError::MultipleIdentities(2))
        ));
        assert!(matches!(
            identity_from_cert_der(&leaf_with_sans(vec![uri(
                "spiffe://fedmesh/tenant/A/node/b"
            )])),
            Err(CryptoError::InvalidIdentityUri { .. })
        ));
        assert_eq!(
            identity_from_cert_der(&leaf_with_sans(vec![
                uri("spiffe://other/x"),
                uri("spiffe://fedmesh/tenant/a/node/b"),
            ]))
            .unwrap(),
            node_identity("a", "b")
        );
        assert!(matches!(
            identity_from_cert_der(b"garbage"),
            Err(CryptoError::CertificateParse(_))
        ));
        let mut trailing = leaf_with_sans(vec![uri("spiffe://fedmesh/coordinator/c")]);
        trailing.push(0);
        assert!(matches!(
            identity_from_cert_der(&trailing),
            Err(CryptoError::CertificateParse(_))
        ));
    }

    #[test]
    fn cert_der_from_pem_works() {
        let ca = ca();
        let der = cert_der_from_pem(ca.cert_pem()).unwrap();
        assert_eq!(der, crate::test_util::der(ca.cert_pem()));
        let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        assert!(matches!(
            cert_der_from_pem(&two),
            Err(CryptoError::Pem { .. })
        ));
    }
}
