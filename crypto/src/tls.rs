//! rustls configurations for mesh mTLS (TLS 1.3 only, ring provider) and
//! identity extraction from peer certificates.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::RevocationList;
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

/// A value behind a lock that is only ever replaced whole.
struct Slot<T: ?Sized>(RwLock<Arc<T>>);

impl<T: ?Sized> Slot<T> {
    fn new(value: Arc<T>) -> Self {
        Slot(RwLock::new(value))
    }
    fn get(&self) -> Arc<T> {
        // Only whole values are stored, so a poisoned lock is still usable.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl<T: ?Sized> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slot")
    }
}

fn certified_key(cert_pem: &str, key_pem: &SecretPem) -> Result<Arc<CertifiedKey>> {
    let (chain, key) = chain_and_key(cert_pem, key_pem)?;
    Ok(Arc::new(
        CertifiedKey::from_der(chain, key, &provider()).map_err(map_key_error)?,
    ))
}

/// Checks that the leaf of `cert_pem` is issued by a CA of `ca_pem`, so a
/// reload never installs a certificate every peer would refuse.
fn check_issued_by(ca_pem: &str, cert_pem: &str) -> Result<()> {
    let leaf = crate::pem::cert_ders(cert_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| CryptoError::UntrustedCertificate("no certificate".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| CryptoError::CertificateParse(e.to_string()))?;
    for ca_der in crate::pem::cert_ders(ca_pem)? {
        if let Ok((_, ca)) = x509_parser::parse_x509_certificate(&ca_der)
            && ca.subject().as_raw() == cert.issuer().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
        {
            return Ok(());
        }
    }
    Err(CryptoError::UntrustedCertificate(
        "the new certificate is not issued by the mesh CA".into(),
    ))
}

fn client_verifier(
    ca_pem: &str,
    crl: Option<&RevocationList>,
) -> Result<Arc<dyn ClientCertVerifier>> {
    let mut b = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider());
    if let Some(crl) = crl {
        // Only the leaf is checked (the CA is the trust anchor); a leaf of a
        // second CA trusted during a CA rotation has no list and passes.
        b = b
            .with_crls([crl.rustls_der()])
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    Ok(b.build()?)
}

fn server_verifier(
    ca_pem: &str,
    crl: Option<&RevocationList>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut b = WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider());
    if let Some(crl) = crl {
        b = b
            .with_crls([crl.rustls_der()])
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    b.build()
        .map_err(|e| CryptoError::Tls(rustls::Error::General(e.to_string())))
}

/// The server's certificate, replaceable while connections are accepted.
#[derive(Debug)]
struct ServerCertSlot(Slot<CertifiedKey>);

impl ResolvesServerCert for ServerCertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// The client-certificate verifier (CA and revocation list), replaceable.
#[derive(Debug)]
struct ClientVerifierSlot(Slot<dyn ClientCertVerifier>);

impl ClientCertVerifier for ClientVerifierSlot {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA list can change under us; nodes hold one certificate and
        // send it without hints.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.0
            .get()
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().supported_verify_schemes()
    }
}

/// Server side of mesh mTLS whose certificate, CA and revocation list can
/// be replaced while it serves ([`ServerTls::reload`]): handshakes already
/// done keep their connection, every later handshake uses the new material.
/// Clones share the material.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    cert: Arc<ServerCertSlot>,
    verifier: Arc<ClientVerifierSlot>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// As [`server_config`], plus the revocation list `crl` (a revoked
    /// client certificate fails the handshake).
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &SecretPem,
        crl: Option<&RevocationList>,
    ) -> Result<ServerTls> {
        let cert = Arc::new(ServerCertSlot(Slot::new(certified_key(cert_pem, key_pem)?)));
        let verifier = Arc::new(ClientVerifierSlot(Slot::new(client_verifier(ca_pem, crl)?)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No session resumption: a resumed session would skip the client
        // certificate check against the current revocation list, and hide
        // a rotated server certificate from the client.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            cert,
            verifier,
        })
    }

    /// The configuration to accept connections with (it follows reloads).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Replaces CA, certificate, key and revocation list at once. On error
    /// (unreadable PEM, key not matching, certificate not from the CA)
    /// nothing changes.
    pub fn reload(
        &self,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &SecretPem,
        crl: Option<&RevocationList>,
    ) -> Result<()> {
        check_issued_by(ca_pem, cert_pem)?;
        let key = certified_key(cert_pem, key_pem)?;
        let verifier = client_verifier(ca_pem, crl)?;
        self.cert.0.set(key);
        self.verifier.0.set(verifier);
        Ok(())
    }
}

/// The node's certificate, replaceable while it dials.
#[derive(Debug)]
struct ClientCertSlot(Slot<CertifiedKey>);

impl ResolvesClientCert for ClientCertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The coordinator-certificate verifier (CA and revocation list), replaceable.
#[derive(Debug)]
struct ServerVerifierSlot(Slot<WebPkiServerVerifier>);

impl ServerCertVerifier for ServerVerifierSlot {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.0
            .get()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().supported_verify_schemes()
    }
}

/// Client side of mesh mTLS whose certificate, CA and revocation list can be
/// replaced while the node runs ([`ClientTls::reload`]); every later
/// handshake uses the new material. Clones share the material.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    cert: Arc<ClientCertSlot>,
    verifier: Arc<ServerVerifierSlot>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// As [`client_config`], plus the revocation list `crl` (a revoked
    /// coordinator certificate fails the handshake).
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &SecretPem,
        crl: Option<&RevocationList>,
    ) -> Result<ClientTls> {
        let cert = Arc::new(ClientCertSlot(Slot::new(certified_key(cert_pem, key_pem)?)));
        let verifier = Arc::new(ServerVerifierSlot(Slot::new(server_verifier(ca_pem, crl)?)));
        // "dangerous" only because the verifier is ours: it delegates every
        // check to rustls' WebPKI verifier.
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(cert.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // Every connection is a full handshake (see `ServerTls::new`).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTls {
            config: Arc::new(config),
            cert,
            verifier,
        })
    }

    /// The configuration to dial with (it follows reloads).
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Replaces CA, certificate, key and revocation list at once; on error
    /// nothing changes.
    pub fn reload(
        &self,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &SecretPem,
        crl: Option<&RevocationList>,
    ) -> Result<()> {
        check_issued_by(ca_pem, cert_pem)?;
        let key = certified_key(cert_pem, key_pem)?;
        let verifier = server_verifier(ca_pem, crl)?;
        self.cert.0.set(key);
        self.verifier.0.set(verifier);
        Ok(())
    }
}

/// DER of the first certificate in `pem` (e.g. the CA in use in a file
/// that lists several during a CA rotation).
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>> {
    crate::pem::cert_ders(pem)?
        .into_iter()
        .next()
        .map(|d| d.to_vec())
        .ok_or_else(|| CryptoError::Pem {
            what: "certificate",
            reason: "no CERTIFICATE block found".into(),
        })
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

    fn crl_revoking(ca: &MeshCa, certs: &[&str], number: u64) -> RevocationList {
        let revoked: Vec<crate::RevokedCert> = certs
            .iter()
            .map(|pem| crate::RevokedCert {
                serial: crate::crl::cert_serial(&cert_der_from_pem(pem).unwrap()).unwrap(),
                revoked_at: wall_now(),
            })
            .collect();
        let pem = ca.issue_crl(&revoked, number, wall_now()).unwrap();
        RevocationList::from_pem(pem.as_bytes(), ca.cert_pem()).unwrap()
    }

    fn peer_serial(client: &ClientConnection) -> Vec<u8> {
        crate::crl::cert_serial(&client.peer_certificates().unwrap()[0]).unwrap()
    }

    /// A reloaded server presents its new certificate to the next client and
    /// refuses a client certificate revoked by the new list; the revoked
    /// coordinator certificate is refused by a reloaded client.
    #[test]
    fn reloads_take_effect_on_the_next_handshake() {
        let ca = MeshCa::generate("mesh CA", wall_now(), 2).unwrap();
        let names = ["coordinator.fedmesh".to_string()];
        let old = ca
            .issue_coordinator(&node("main"), &names, &[], wall_now(), 2)
            .unwrap();
        let new = ca
            .issue_coordinator(&node("main"), &names, &[], wall_now(), 2)
            .unwrap();
        let n1 = ca
            .issue_node(&tenant("acme"), &node("n1"), wall_now(), 2)
            .unwrap();
        let n2 = ca
            .issue_node(&tenant("acme"), &node("n2"), wall_now(), 2)
            .unwrap();
        let server = ServerTls::new(ca.cert_pem(), &old.cert_pem, &old.key_pem, None).unwrap();
        let c1 = ClientTls::new(ca.cert_pem(), &n1.cert_pem, &n1.key_pem, None).unwrap();
        let (client, _, res) = connect((*c1.config()).clone(), &server.config());
        res.unwrap();
        let old_serial = peer_serial(&client);

        let crl = crl_revoking(&ca, &[&n2.cert_pem, &old.cert_pem], 1);
        server
            .reload(ca.cert_pem(), &new.cert_pem, &new.key_pem, Some(&crl))
            .unwrap();
        let (client, _, res) = connect((*c1.config()).clone(), &server.config());
        res.unwrap();
        assert_ne!(
            peer_serial(&client),
            old_serial,
            "the new certificate is presented"
        );

        let c2 = ClientTls::new(ca.cert_pem(), &n2.cert_pem, &n2.key_pem, None).unwrap();
        let (_, _, res) = connect((*c2.config()).clone(), &server.config());
        assert_eq!(
            res.unwrap_err(),
            "server: invalid peer certificate: Revoked"
        );

        // A node that learnt the list refuses the old coordinator certificate.
        let old_server = ServerTls::new(ca.cert_pem(), &old.cert_pem, &old.key_pem, None).unwrap();
        c1.reload(ca.cert_pem(), &n1.cert_pem, &n1.key_pem, Some(&crl))
            .unwrap();
        let (_, _, res) = connect((*c1.config()).clone(), &old_server.config());
        assert!(res.unwrap_err().starts_with("client:"));
        // The node's own certificate rotates too.
        let n1b = ca
            .issue_node(&tenant("acme"), &node("n1"), wall_now(), 2)
            .unwrap();
        c1.reload(ca.cert_pem(), &n1b.cert_pem, &n1b.key_pem, Some(&crl))
            .unwrap();
        let (_, conn, res) = connect((*c1.config()).clone(), &server.config());
        res.unwrap();
        assert_eq!(
            crate::crl::cert_serial(&conn.peer_certificates().unwrap()[0]).unwrap(),
            crate::crl::cert_serial(&cert_der_from_pem(&n1b.cert_pem).unwrap()).unwrap()
        );

        // A bad reload changes nothing.
        let other = MeshCa::generate("other", wall_now(), 2).unwrap();
        let foreign = other
            .issue_coordinator(&node("main"), &names, &[], wall_now(), 2)
            .unwrap();
        assert!(matches!(
            server.reload(
                ca.cert_pem(),
                &foreign.cert_pem,
                &foreign.key_pem,
                Some(&crl)
            ),
            Err(CryptoError::UntrustedCertificate(_))
        ));
        assert!(matches!(
            server.reload(ca.cert_pem(), &new.cert_pem, &old.key_pem, Some(&crl)),
            Err(CryptoError::KeyCertMismatch)
        ));
        let (client, _, res) = connect((*c1.config()).clone(), &server.config());
        res.unwrap();
        assert_eq!(
            peer_serial(&client),
            crate::crl::cert_serial(&cert_der_from_pem(&new.cert_pem).unwrap()).unwrap()
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
