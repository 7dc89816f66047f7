//! Protocol refusals over real mTLS.
//!
//! Each test starts an in-process coordinator on `127.0.0.1:0` with an
//! in-memory PKI, dials it with real node certificates (or deliberately bad
//! ones) and asserts the exact gRPC status of every refusal. Every wait is
//! bounded by [`WAIT`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use fedmesh_coordinator::credentials::{Credentials, ReloadOutcome};
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Federation, Pki};
use fedmesh_crypto::{CertVerifier, Identity, IssuedCert, MeshCa, TlsMaterial};
use fedmesh_proto::v1::{self, federation_client::FederationClient, round_event::Event};
use prost::Message;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status, Streaming};

pub(crate) type Client = FederationClient<Channel>;

/// Bound on every wait for the server.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A `[[tenants]]` entry: quorum = `min_nodes`, one round, 20 s deadline,
/// update norm bound 1.0, a tiny model with the given encoder widths.
pub(crate) fn tenant(name: &str, min_nodes: usize, hidden: &[usize]) -> String {
    format!(
        "[[tenants]]\nname = \"{name}\"\nmin_nodes = {min_nodes}\nquorum = {min_nodes}\n\
         round_timeout_ms = 20000\nround_interval_ms = 50\nmax_rounds = 1\n\
         max_update_norm = 1.0\n[tenants.model]\nhidden = {hidden:?}\n"
    )
}

/// A running in-process coordinator, the CA that issued its certificate and
/// its live credentials (to revoke and rotate while it runs).
pub(crate) struct Mesh {
    pub(crate) ca: MeshCa,
    /// The certificate the coordinator started with.
    pub(crate) coord: IssuedCert,
    addr: SocketAddr,
    feds: BTreeMap<String, Arc<Federation>>,
    store: fedmesh_coordinator::store::Store,
    creds: Arc<Credentials>,
    metrics: Arc<fedmesh_coordinator::metrics::Metrics>,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// A coordinator certificate for `ca`, valid for 30 days, reached at
/// `localhost` and `127.0.0.1`.
pub(crate) fn issue_coordinator(ca: &MeshCa) -> Result<IssuedCert> {
    Ok(ca.issue_coordinator(
        &"main".parse()?,
        &["localhost".into()],
        &["127.0.0.1".parse()?],
        now(),
        30,
    )?)
}

/// The serial number of a certificate.
pub(crate) fn serial(cert_pem: &str) -> Result<Vec<u8>> {
    Ok(fedmesh_crypto::crl::cert_serial(
        &fedmesh_crypto::tls::cert_der_from_pem(cert_pem)?,
    )?)
}

/// A revocation list of `ca` (number `number`) revoking `revoked`.
pub(crate) fn crl(ca: &MeshCa, revoked: &[&str], number: u64) -> Result<Vec<u8>> {
    let entries = revoked
        .iter()
        .map(|pem| {
            Ok(fedmesh_crypto::RevokedCert {
                serial: serial(pem)?,
                revoked_at: now(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ca.issue_crl(&entries, number, now())?.into_bytes())
}

/// TLS material: CA file `ca_pem`, `cert` and its key, revocation list `crl`.
pub(crate) fn material(ca_pem: &str, cert: &IssuedCert, crl: Option<Vec<u8>>) -> TlsMaterial {
    TlsMaterial {
        ca_pem: ca_pem.to_string(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        crl_pem: crl,
    }
}

impl Mesh {
    /// Starts a coordinator serving the given `[[tenants]]` entries.
    pub(crate) async fn start(tenants: &[String], max_message_bytes: usize) -> Result<Self> {
        let ca = MeshCa::generate("test CA", now(), 30)?;
        let coord = issue_coordinator(&ca)?;
        let dir = tempfile::tempdir()?;
        // No TLS files: tests install credentials with `credentials().apply`.
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = '{}'\nmax_message_bytes = {max_message_bytes}\n\
             [tls]\nca_cert = \"unused\"\ncert = \"unused\"\nkey = \"unused\"\n\
             reload_interval_secs = 0\n{}",
            dir.path().join("data").display(),
            tenants.concat()
        );
        let cfg = CoordinatorConfig::from_toml(&text, Path::new("test.toml"))?;
        let pki = Pki {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: coord.cert_pem.clone(),
            key_pem: coord.key_pem.clone(),
        };
        let coordinator = Coordinator::open(&cfg, &pki)?;
        let creds = coordinator.credentials();
        let metrics = coordinator.metrics();
        let mut feds = BTreeMap::new();
        for t in &cfg.tenants {
            let fed = coordinator
                .federation(&t.name)
                .ok_or_else(|| anyhow!("no federation {}", t.name))?;
            feds.insert(t.name.clone(), fed);
        }
        let store = coordinator.store().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(coordinator.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        Ok(Self {
            ca,
            coord,
            addr,
            feds,
            store,
            creds,
            metrics,
            stop: Some(stop),
            _dir: dir,
        })
    }

    /// The coordinator's metrics.
    pub(crate) fn metrics(&self) -> &fedmesh_coordinator::metrics::Metrics {
        &self.metrics
    }

    /// The coordinator's live credentials.
    pub(crate) fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Installs a revocation list (number `number`) revoking `revoked`,
    /// keeping the coordinator's starting certificate.
    pub(crate) fn revoke(&self, revoked: &[&str], number: u64) -> Result<ReloadOutcome> {
        let list = crl(&self.ca, revoked, number)?;
        Ok(self.creds.apply(
            &material(self.ca.cert_pem(), &self.coord, Some(list)),
            now(),
        )?)
    }

    /// A certificate of node `tenant/node` (a new one each call).
    pub(crate) fn issue_node(&self, tenant: &str, node: &str) -> Result<IssuedCert> {
        Ok(self
            .ca
            .issue_node(&tenant.parse()?, &node.parse()?, now(), 30)?)
    }

    pub(crate) fn fed(&self, tenant: &str) -> Arc<Federation> {
        self.feds[tenant].clone()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Verifies `tenant`'s hash-chained audit log, returning its length.
    pub(crate) fn verify_chain(&self, tenant: &str) -> Result<usize> {
        Ok(self.store.verify_chain(tenant)?)
    }

    pub(crate) fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The mTLS client configuration of node `tenant/node`.
    pub(crate) fn node_tls(&self, tenant: &str, node: &str) -> Result<rustls::ClientConfig> {
        self.tls_of(&self.issue_node(tenant, node)?)
    }

    /// The mTLS client configuration presenting `cert`.
    pub(crate) fn tls_of(&self, cert: &IssuedCert) -> Result<rustls::ClientConfig> {
        Ok(fedmesh_crypto::tls::client_config(
            self.ca_pem(),
            &cert.cert_pem,
            &cert.key_pem,
        )?)
    }

    /// A connected client of node `tenant/node`, through the node's own
    /// connector.
    pub(crate) async fn node(&self, tenant: &str, node: &str) -> Result<Client> {
        let tls = self.node_tls(tenant, node)?;
        let connector = fedmesh_node::federation::client::Connector::new(
            &self.addr.to_string(),
            "localhost",
            tls,
            64 << 20,
        )?;
        Ok(tokio::time::timeout(WAIT, connector.connect()).await??)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Dials with an arbitrary TLS client configuration (the node connector
/// minus its guarantees), for clients the coordinator must refuse.
async fn raw_client(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<Client, tonic::transport::Error> {
    Ok(FederationClient::new(raw_channel(addr, tls).await?))
}

/// An HTTP/2 channel over TLS with the given client configuration.
pub(crate) async fn raw_channel(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(std::io::Error::other)?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(WAIT)
        .timeout(WAIT)
        .connect_with_connector(connector)
        .await
}

/// TLS 1.3 + h2 client trusting `ca_pem`, presenting no certificate.
fn anonymous_tls(ca_pem: &str) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(
        fedmesh_crypto::tls::cert_der_from_pem(ca_pem)?,
    ))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![fedmesh_crypto::tls::ALPN_H2.to_vec()];
    Ok(cfg)
}

/// How a refused client failed: at connect, or with a status on the call.
#[derive(Debug)]
enum Refusal {
    Connect(String),
    Rpc(Status),
}

/// Dials with `tls` and makes one `Join` and one `WatchRounds` call; both
/// must fail below the handlers.
async fn refused_everywhere(mesh: &Mesh, tls: rustls::ClientConfig) -> Result<Vec<Refusal>> {
    let mut out = Vec::new();
    for rpc in ["join", "watch"] {
        let attempt = async {
            let mut c = match raw_client(mesh.addr, tls.clone()).await {
                Ok(c) => c,
                Err(e) => return Ok(Refusal::Connect(format!("{e:?}"))),
            };
            let status = match rpc {
                "join" => c.join(join_req("acme", "n1")).await.err(),
                _ => c
                    .watch_rounds(v1::WatchRoundsRequest::default())
                    .await
                    .err(),
            };
            match status {
                Some(s) => Ok(Refusal::Rpc(s)),
                None => Err(anyhow!("{rpc} was served to a refused client")),
            }
        };
        let r = tokio::time::timeout(WAIT * 2, attempt)
            .await
            .context("refusal not bounded")??;
        eprintln!("{rpc}: {r:?}");
        out.push(r);
    }
    Ok(out)
}

/// Asserts a refusal happened below the handlers: a connect error, or a
/// transport-level status (tonic reports a peer's TLS alert as UNKNOWN
/// "transport error", or CANCELLED when the connection closed first), never
/// a handler code.
fn assert_transport_refusal(r: &Refusal) {
    match r {
        Refusal::Connect(e) => assert!(!e.is_empty()),
        Refusal::Rpc(s) => assert!(
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ),
            "expected a transport failure, got {s:?}"
        ),
    }
}

fn feature_schema() -> Vec<u8> {
    hex::decode(fedmesh_proto::model::FEATURE_SCHEMA_V1_DIGEST).unwrap_or_default()
}

fn join_req(tenant: &str, node: &str) -> v1::JoinRequest {
    v1::JoinRequest {
        tenant: tenant.into(),
        node: node.into(),
        feature_schema: feature_schema(),
        agent_version: "protocol-test".into(),
    }
}

pub(crate) async fn join(c: &mut Client, tenant: &str, node: &str) -> Result<v1::JoinResponse> {
    Ok(c.join(join_req(tenant, node)).await?.into_inner())
}

pub(crate) fn param_count(j: &v1::JoinResponse) -> usize {
    let spec = j.model_spec.clone().unwrap_or_default();
    let hidden: Vec<usize> = spec.hidden.iter().map(|&h| h as usize).collect();
    fedmesh_proto::model::param_count(spec.input_dim as usize, &hidden).unwrap_or(0)
}

/// A valid update for `open`, every delta value `value`.
fn update(j: &v1::JoinResponse, open: &v1::RoundOpen, value: f32) -> v1::UpdateRequest {
    let p = param_count(j);
    v1::UpdateRequest {
        tenant: j.tenant.clone(),
        node: j.node.clone(),
        round: open.round,
        base_version: open.base_version,
        delta: Some(fedmesh_proto::encode_f32(&vec![value; p], &[p as u64])),
        num_samples: 50,
        scaler_stats: None,
        train_loss: 0.25,
        schema_hash: j.schema_hash.clone(),
    }
}

pub(crate) async fn watch(c: &mut Client) -> Result<Streaming<v1::RoundEvent>> {
    Ok(c.watch_rounds(v1::WatchRoundsRequest::default())
        .await?
        .into_inner())
}

pub(crate) async fn next_event(s: &mut Streaming<v1::RoundEvent>) -> Result<Event> {
    tokio::time::timeout(WAIT, s.message())
        .await
        .context("no round event in time")??
        .and_then(|e| e.event)
        .ok_or_else(|| anyhow!("round stream ended"))
}

/// Reads events until the round opens (bounded).
async fn wait_open(s: &mut Streaming<v1::RoundEvent>) -> Result<v1::RoundOpen> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Open(o) = next_event(s).await? {
                return Ok(o);
            }
        }
    })
    .await
    .context("round did not open in time")?
}

/// Reads events until a version is committed (bounded).
pub(crate) async fn wait_committed(
    s: &mut Streaming<v1::RoundEvent>,
) -> Result<v1::ModelCommitted> {
    tokio::time::timeout(WAIT, async {
        loop {
            match next_event(s).await? {
                Event::Committed(c) => return Ok(c),
                Event::Aborted(a) => return Err(anyhow!("round aborted: {a:?}")),
                _ => {}
            }
        }
    })
    .await
    .context("round did not commit in time")?
}

/// Asserts `r` is the status `code` and its message contains `needle`.
#[track_caller]
pub(crate) fn assert_status<T: Debug>(
    r: Result<tonic::Response<T>, Status>,
    code: Code,
    needle: &str,
) {
    assert!(r.is_err(), "expected {code:?} ({needle}), got {r:?}");
    if let Err(s) = r {
        assert_eq!(s.code(), code, "{s:?}");
        assert!(
            s.message().contains(needle),
            "{code:?} message {:?} lacks {needle:?}",
            s.message()
        );
    }
}

pub(crate) async fn get_model(
    c: &mut Client,
    version: u64,
) -> Result<(v1::SignedModel, v1::GlobalModel)> {
    let signed = c
        .get_model(v1::GetModelRequest { version })
        .await?
        .into_inner();
    let body = v1::GlobalModel::decode(signed.body.as_slice())?;
    Ok((signed, body))
}

pub(crate) fn params(m: &v1::GlobalModel) -> Result<Vec<f32>> {
    let t = m.params.as_ref().ok_or_else(|| anyhow!("no params"))?;
    Ok(fedmesh_proto::decode_f32(t, usize::MAX)?)
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_never_reaches_a_handler() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 1, &[4])], 64 << 20).await?;
    let refusals = refused_everywhere(&mesh, anonymous_tls(mesh.ca_pem())?).await?;
    refusals.iter().for_each(assert_transport_refusal);
    let fed = mesh.fed("acme");
    assert!(fed.connected().is_empty(), "an anonymous watcher counted");
    assert_eq!(fed.version(), 0);

    // The same server still serves a real node.
    let mut ok = mesh.node("acme", "n1").await?;
    assert_eq!(join(&mut ok, "acme", "n1").await?.tenant, "acme");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 1, &[4])], 64 << 20).await?;
    // Same identity (acme/n1) a real node would have, wrong issuer. The
    // client trusts the real mesh CA, so only the client side is bad.
    let rogue = MeshCa::generate("rogue CA", now(), 30)?;
    let c = rogue.issue_node(&"acme".parse()?, &"n1".parse()?, now(), 30)?;
    let tls = fedmesh_crypto::tls::client_config(mesh.ca_pem(), &c.cert_pem, &c.key_pem)?;
    let refusals = refused_everywhere(&mesh, tls).await?;
    refusals.iter().for_each(assert_transport_refusal);
    assert!(mesh.fed("acme").connected().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_tenant_is_denied_on_every_rpc() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 1, &[4])], 64 << 20).await?;
    let mut beta = mesh.node("beta", "b1").await?;
    let acme_join = join(&mut mesh.node("acme", "a1").await?, "acme", "a1").await?;
    let msg = "tenant beta has no federation";

    assert_status(
        beta.join(join_req("beta", "b1")).await,
        Code::PermissionDenied,
        msg,
    );
    assert_status(
        beta.join(join_req("acme", "b1")).await,
        Code::PermissionDenied,
        msg,
    );
    assert_status(
        beta.get_model(v1::GetModelRequest { version: 0 }).await,
        Code::PermissionDenied,
        msg,
    );
    assert_status(
        beta.watch_rounds(v1::WatchRoundsRequest::default()).await,
        Code::PermissionDenied,
        msg,
    );
    let open = v1::RoundOpen {
        round: 1,
        ..Default::default()
    };
    let mut u = update(&acme_join, &open, 0.01);
    assert_status(
        beta.submit_update(u.clone()).await,
        Code::PermissionDenied,
        msg,
    );
    (u.tenant, u.node) = ("beta".into(), "b1".into());
    assert_status(beta.submit_update(u).await, Code::PermissionDenied, msg);
    assert!(mesh.fed("acme").connected().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_identity_may_not_call_the_federation_service() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 1, &[4])], 64 << 20).await?;
    let c = mesh
        .ca
        .issue_coordinator(&"other".parse()?, &["localhost".into()], &[], now(), 30)?;
    let tls = fedmesh_crypto::tls::client_config(mesh.ca_pem(), &c.cert_pem, &c.key_pem)?;
    let mut client = raw_client(mesh.addr, tls).await?;
    let msg = "only node identities";
    assert_status(
        client.join(join_req("acme", "other")).await,
        Code::PermissionDenied,
        msg,
    );
    assert_status(
        client.get_model(v1::GetModelRequest::default()).await,
        Code::PermissionDenied,
        msg,
    );
    assert_status(
        client.watch_rounds(v1::WatchRoundsRequest::default()).await,
        Code::PermissionDenied,
        msg,
    );
    assert_status(
        client.submit_update(v1::UpdateRequest::default()).await,
        Code::PermissionDenied,
        msg,
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_every_rpc() -> Result<()> {
    // acme runs one round with a single node; beta needs two nodes and so
    // stays idle with its one node: anything round-like beta sees is a leak.
    let mesh = Mesh::start(
        &[tenant("acme", 1, &[4]), tenant("beta", 2, &[3])],
        64 << 20,
    )
    .await?;
    let (acme_fed, beta_fed) = (mesh.fed("acme"), mesh.fed("beta"));
    assert_ne!(acme_fed.schema_hash(), beta_fed.schema_hash());
    let mut a1 = mesh.node("acme", "a1").await?;
    let mut b1 = mesh.node("beta", "b1").await?;

    // Join: bindings naming acme are refused; the own join returns beta's.
    let deny = "certificate names beta/b1";
    assert_status(
        b1.join(join_req("acme", "b1")).await,
        Code::PermissionDenied,
        deny,
    );
    assert_status(
        b1.join(join_req("acme", "a1")).await,
        Code::PermissionDenied,
        deny,
    );
    assert_status(
        b1.join(join_req("beta", "a1")).await,
        Code::PermissionDenied,
        deny,
    );
    let bj = join(&mut b1, "beta", "b1").await?;
    assert_eq!((bj.tenant.as_str(), bj.node.as_str()), ("beta", "b1"));
    assert_eq!(bj.schema_hash, beta_fed.schema_hash().to_vec());
    assert_eq!(
        bj.model_spec.as_ref().map(|s| s.hidden.clone()),
        Some(vec![3])
    );
    let aj = join(&mut a1, "acme", "a1").await?;

    // WatchRounds: beta's stream opens first and must only ever show beta.
    let mut b_stream = watch(&mut b1).await?;
    match next_event(&mut b_stream).await? {
        Event::Idle(i) => assert_eq!(i.current_version, 0),
        e => panic!("beta's first event is {e:?}"),
    }
    let mut a_stream = watch(&mut a1).await?;
    let open = wait_open(&mut a_stream).await?;
    assert!(open.selected);

    // SubmitUpdate: b1 bound to acme, or aimed at acme's round, is refused.
    let mut u = update(&aj, &open, 0.01);
    assert_status(
        b1.submit_update(u.clone()).await,
        Code::PermissionDenied,
        deny,
    );
    u.node = "b1".into();
    assert_status(
        b1.submit_update(u.clone()).await,
        Code::PermissionDenied,
        deny,
    );
    u.tenant = "beta".into();
    assert_status(
        b1.submit_update(u.clone()).await,
        Code::InvalidArgument,
        "schema hash",
    );
    u.schema_hash = bj.schema_hash.clone();
    assert_status(
        b1.submit_update(u).await,
        Code::FailedPrecondition,
        "no round is open",
    );

    // SecAgg: bound to acme it is denied; bound to beta it finds no round.
    let sa = |tenant: &str, node: &str| v1::SecAggRequest {
        tenant: tenant.into(),
        node: node.into(),
        round: open.round,
        bucket: 0,
        message: Some(v1::sec_agg_request::Message::Advert(vec![1, 2, 3])),
    };
    assert_status(
        b1.sec_agg(sa("acme", "a1")).await,
        Code::PermissionDenied,
        deny,
    );
    assert_status(
        b1.sec_agg(sa("acme", "b1")).await,
        Code::PermissionDenied,
        deny,
    );
    assert_status(
        b1.sec_agg(sa("beta", "b1")).await,
        Code::FailedPrecondition,
        "no round is open",
    );

    // acme commits version 1 undisturbed.
    a1.submit_update(update(&aj, &open, 0.01)).await?;
    let committed = wait_committed(&mut a_stream).await?;
    assert_eq!((committed.version, acme_fed.version()), (1, 1));

    // beta saw none of it (bounded: at most 100 events, 500 ms of quiet).
    for _ in 0..100 {
        let Ok(e) = tokio::time::timeout(Duration::from_millis(500), b_stream.message()).await
        else {
            break;
        };
        match e?.and_then(|e| e.event) {
            Some(Event::Idle(i)) => assert_eq!(i.current_version, 0, "{i:?}"),
            e => panic!("beta saw {e:?}"),
        }
    }
    assert_eq!(beta_fed.version(), 0);
    assert_eq!(beta_fed.connected().len(), 1);

    // GetModel: beta's model, never acme's, and acme's v1 does not exist here.
    let (_, latest) = get_model(&mut b1, 0).await?;
    assert_eq!((latest.tenant.as_str(), latest.version), ("beta", 0));
    assert_eq!(latest.schema_hash, bj.schema_hash);
    assert_eq!(params(&latest)?.len(), param_count(&bj));
    assert_status(
        b1.get_model(v1::GetModelRequest { version: 1 }).await,
        Code::NotFound,
        "version 1",
    );
    let (_, acme_latest) = get_model(&mut a1, 0).await?;
    assert_eq!(
        (acme_latest.tenant.as_str(), acme_latest.version),
        ("acme", 1)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_get_exact_codes_and_lose_nothing() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 2, &[4])], 64 << 20).await?;
    let fed = mesh.fed("acme");
    let mut n1 = mesh.node("acme", "n1").await?;
    let mut n2 = mesh.node("acme", "n2").await?;
    let j1 = join(&mut n1, "acme", "n1").await?;
    let j2 = join(&mut n2, "acme", "n2").await?;
    let p = param_count(&j1);
    assert!(p > 0);

    // No round is open before two nodes watch.
    let idle = v1::RoundOpen {
        round: 1,
        base_version: 0,
        ..Default::default()
    };
    assert_status(
        n1.submit_update(update(&j1, &idle, 0.01)).await,
        Code::FailedPrecondition,
        "no round is open",
    );

    let mut s1 = watch(&mut n1).await?;
    let mut s2 = watch(&mut n2).await?;
    let open = wait_open(&mut s1).await?;
    let open2 = wait_open(&mut s2).await?;
    assert_eq!(open.round, open2.round);
    assert!(open.selected && open2.selected);
    assert_eq!(open.base_version, 0);

    let good = || update(&j1, &open, 0.01);
    let with_delta = |values: &[f32], shape: &[u64]| v1::UpdateRequest {
        delta: Some(fedmesh_proto::encode_f32(values, shape)),
        ..good()
    };
    let bad = |i: usize, x: f32| {
        let mut v = vec![0.01; p];
        v[i] = x;
        with_delta(&v, &[p as u64])
    };
    let cases: Vec<(&str, v1::UpdateRequest, Code, &str)> = vec![
        (
            "short delta",
            with_delta(&vec![0.01; p - 1], &[p as u64 - 1]),
            Code::InvalidArgument,
            "shape",
        ),
        (
            "long delta",
            with_delta(&vec![0.01; p + 1], &[p as u64 + 1]),
            Code::InvalidArgument,
            "elements",
        ),
        (
            "data shorter than shape",
            with_delta(&vec![0.01; p - 1], &[p as u64]),
            Code::InvalidArgument,
            "bytes",
        ),
        (
            "2-d shape",
            with_delta(&vec![0.01; p], &[1, p as u64]),
            Code::InvalidArgument,
            "shape",
        ),
        (
            "NaN",
            bad(3, f32::NAN),
            Code::InvalidArgument,
            "index 3 is not finite",
        ),
        (
            "+Inf",
            bad(p - 1, f32::INFINITY),
            Code::InvalidArgument,
            "not finite",
        ),
        (
            "-Inf",
            bad(0, f32::NEG_INFINITY),
            Code::InvalidArgument,
            "not finite",
        ),
        (
            "wrong schema hash",
            v1::UpdateRequest {
                schema_hash: vec![0; 32],
                ..good()
            },
            Code::InvalidArgument,
            "schema hash",
        ),
        (
            "empty schema hash",
            v1::UpdateRequest {
                schema_hash: vec![],
                ..good()
            },
            Code::InvalidArgument,
            "schema hash",
        ),
        (
            "unspecified dtype",
            {
                let mut u = good();
                if let Some(t) = u.delta.as_mut() {
                    t.dtype = v1::Dtype::Unspecified as i32;
                }
                u
            },
            Code::InvalidArgument,
            "dtype",
        ),
        (
            "unknown dtype",
            {
                let mut u = good();
                if let Some(t) = u.delta.as_mut() {
                    t.dtype = 7;
                }
                u
            },
            Code::InvalidArgument,
            "dtype 7",
        ),
        (
            "missing delta",
            v1::UpdateRequest {
                delta: None,
                ..good()
            },
            Code::InvalidArgument,
            "missing delta",
        ),
        (
            "norm above max_update_norm",
            update(&j1, &open, 1.0),
            Code::InvalidArgument,
            "exceeds the bound",
        ),
        (
            "zero samples",
            v1::UpdateRequest {
                num_samples: 0,
                ..good()
            },
            Code::InvalidArgument,
            "num_samples",
        ),
        (
            "NaN loss",
            v1::UpdateRequest {
                train_loss: f32::NAN,
                ..good()
            },
            Code::InvalidArgument,
            "train_loss",
        ),
        (
            "stale base version",
            v1::UpdateRequest {
                base_version: open.base_version + 1,
                ..good()
            },
            Code::FailedPrecondition,
            "based on version 1",
        ),
        (
            "next round",
            v1::UpdateRequest {
                round: open.round + 1,
                ..good()
            },
            Code::FailedPrecondition,
            "is not open",
        ),
        (
            "previous round",
            v1::UpdateRequest {
                round: open.round.saturating_sub(1),
                ..good()
            },
            Code::FailedPrecondition,
            "is not open",
        ),
        (
            "node field names n2",
            v1::UpdateRequest {
                node: "n2".into(),
                ..good()
            },
            Code::PermissionDenied,
            "bound to acme/n2",
        ),
        (
            "tenant field names beta",
            v1::UpdateRequest {
                tenant: "beta".into(),
                ..good()
            },
            Code::PermissionDenied,
            "bound to beta/n1",
        ),
    ];
    for (what, req, code, needle) in cases {
        let r = n1.submit_update(req).await;
        eprintln!(
            "{what}: {:?}",
            r.as_ref().map_err(|s| (s.code(), s.message()))
        );
        assert_status(r, code, needle);
    }
    assert_eq!(fed.version(), 0);

    // The valid update is accepted; a second one is a duplicate.
    let ack = n1.submit_update(good()).await?.into_inner();
    assert_eq!((ack.round, ack.received, ack.expected), (open.round, 1, 2));
    assert_status(
        n1.submit_update(good()).await,
        Code::AlreadyExists,
        "already submitted",
    );
    assert_status(
        n1.submit_update(update(&j1, &open, 0.02)).await,
        Code::AlreadyExists,
        "already submitted",
    );

    // n2's update completes the round: nothing was lost.
    let ack = n2
        .submit_update(update(&j2, &open2, 0.03))
        .await?
        .into_inner();
    assert_eq!((ack.received, ack.expected), (2, 2));
    let c = wait_committed(&mut s1).await?;
    assert_eq!((c.round, c.version), (open.round, 1));
    assert_eq!(fed.version(), 1);
    let (_, m) = get_model(&mut n1, 0).await?;
    assert_eq!((m.version, m.participants), (1, 2));

    // After the last round, submissions find no open round.
    assert_status(
        n1.submit_update(good()).await,
        Code::FailedPrecondition,
        "no round is open",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unselected_node_is_refused() -> Result<()> {
    let t = tenant("acme", 2, &[4]).replace("quorum = 2", "quorum = 1\nmax_participants = 1");
    let mesh = Mesh::start(&[t], 64 << 20).await?;
    let mut n1 = mesh.node("acme", "n1").await?;
    let mut n2 = mesh.node("acme", "n2").await?;
    let j1 = join(&mut n1, "acme", "n1").await?;
    let j2 = join(&mut n2, "acme", "n2").await?;
    let mut s1 = watch(&mut n1).await?;
    let mut s2 = watch(&mut n2).await?;
    let (o1, o2) = (wait_open(&mut s1).await?, wait_open(&mut s2).await?);
    assert!(o1.selected ^ o2.selected, "{o1:?} {o2:?}");
    let (mut out, j_out, o_out) = if o1.selected {
        (n2, j2, o2)
    } else {
        (n1, j1, o1)
    };
    assert_status(
        out.submit_update(update(&j_out, &o_out, 0.01)).await,
        Code::FailedPrecondition,
        "is not a participant",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_another_feature_schema_is_invalid() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 1, &[4])], 64 << 20).await?;
    let mut n1 = mesh.node("acme", "n1").await?;
    let mut wrong = feature_schema();
    wrong[0] ^= 1;
    for schema in [wrong, vec![], vec![0; 32], feature_schema()[..31].to_vec()] {
        let req = v1::JoinRequest {
            feature_schema: schema,
            ..join_req("acme", "n1")
        };
        assert_status(n1.join(req).await, Code::InvalidArgument, "feature schema");
    }
    // The right schema still joins on the same channel.
    let j = join(&mut n1, "acme", "n1").await?;
    assert_eq!((j.tenant.as_str(), j.node.as_str()), ("acme", "n1"));
    assert_eq!(j.current_version, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused() -> Result<()> {
    const LIMIT: usize = 64 * 1024;
    let mesh = Mesh::start(&[tenant("acme", 2, &[4])], LIMIT).await?;
    let mut n1 = mesh.node("acme", "n1").await?;
    let j = join(&mut n1, "acme", "n1").await?;

    // An update of 20 000 values (80 KB) against a 64 KiB server bound.
    let open = v1::RoundOpen {
        round: 1,
        ..Default::default()
    };
    let big = v1::UpdateRequest {
        delta: Some(fedmesh_proto::encode_f32(&vec![0.0; 20_000], &[20_000])),
        ..update(&j, &open, 0.0)
    };
    assert!(big.encoded_len() > LIMIT);
    let r = n1.submit_update(big).await;
    eprintln!(
        "oversized update: {:?}",
        r.as_ref().map_err(|s| (s.code(), s.message()))
    );
    // tonic reports an over-limit message as OUT_OF_RANGE (not the
    // RESOURCE_EXHAUSTED the gRPC spec suggests).
    assert_status(r, Code::OutOfRange, "decoded message length too large");

    // Same for a join carrying a huge agent_version; one just below the
    // bound passes (Join ignores agent_version).
    let huge = v1::JoinRequest {
        agent_version: "x".repeat(LIMIT + 1),
        ..join_req("acme", "n1")
    };
    assert_status(n1.join(huge).await, Code::OutOfRange, "too large");
    let fits = v1::JoinRequest {
        agent_version: "x".repeat(LIMIT - 200),
        ..join_req("acme", "n1")
    };
    assert!(fits.encoded_len() <= LIMIT);
    n1.join(fits).await?;

    // The channel survives the refusals.
    assert_eq!(
        join(&mut n1, "acme", "n1").await?.schema_hash,
        j.schema_hash
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_round_is_the_signed_fedavg_of_the_updates() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 2, &[4])], 64 << 20).await?;
    let mut n1 = mesh.node("acme", "n1").await?;
    let mut n2 = mesh.node("acme", "n2").await?;
    let j1 = join(&mut n1, "acme", "n1").await?;
    let j2 = join(&mut n2, "acme", "n2").await?;
    let verifier = CertVerifier::new(mesh.ca_pem())?;

    // Genesis.
    let (v0_signed, v0) = get_model(&mut n1, 0).await?;
    assert_eq!((v0.tenant.as_str(), v0.version), ("acme", 0));
    assert_eq!(v0.prev_hash, vec![0; 32]);
    assert_eq!(v0.schema_hash, j1.schema_hash);
    let genesis = params(&v0)?;
    assert_eq!(genesis.len(), param_count(&j1));

    // One round, two updates of equal weight.
    let mut s1 = watch(&mut n1).await?;
    let mut s2 = watch(&mut n2).await?;
    let (o1, o2) = (wait_open(&mut s1).await?, wait_open(&mut s2).await?);
    n1.submit_update(update(&j1, &o1, 0.01)).await?;
    n2.submit_update(update(&j2, &o2, 0.03)).await?;
    let c = wait_committed(&mut s1).await?;
    assert_eq!((c.round, c.version), (o1.round, 1));

    let (v1_signed, v1m) = get_model(&mut n2, 0).await?;
    assert_eq!(get_model(&mut n2, 1).await?.0, v1_signed);
    assert_eq!(
        (v1m.tenant.as_str(), v1m.version, v1m.round),
        ("acme", 1, o1.round)
    );
    assert_eq!((v1m.participants, v1m.rule.as_str()), (2, "fedavg"));
    assert_eq!(v1m.schema_hash, j1.schema_hash);
    let new = params(&v1m)?;
    assert_eq!(new.len(), genesis.len());
    for (i, (w, g)) in new.iter().zip(&genesis).enumerate() {
        assert!(
            (w - (g + 0.02)).abs() <= 1e-6,
            "param {i}: {w} != {g} + 0.02"
        );
    }

    // Signed by the coordinator, chained to the genesis bytes.
    for signed in [&v0_signed, &v1_signed] {
        let who = verifier.verify(&signed.signer_cert, &signed.body, &signed.signature, now())?;
        assert_eq!(
            who,
            Identity::Coordinator {
                name: "main".parse()?
            }
        );
    }
    assert_eq!(
        v1m.prev_hash,
        fedmesh_crypto::sha256(&v0_signed.encode_to_vec()).to_vec()
    );
    let mut tampered = v1_signed.body.clone();
    tampered[0] ^= 1;
    assert!(
        verifier
            .verify(
                &v1_signed.signer_cert,
                &tampered,
                &v1_signed.signature,
                now()
            )
            .is_err()
    );
    assert_status(
        n1.get_model(v1::GetModelRequest { version: 2 }).await,
        Code::NotFound,
        "version 2",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_invalid_argument() -> Result<()> {
    let mesh = Mesh::start(&[tenant("acme", 1, &[4])], 64 << 20).await?;
    let channel = raw_channel(mesh.addr, mesh.node_tls("acme", "n1")?).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    // Field 5 (delta) declares 5 bytes but only 1 follows; then a field with
    // wire type 7 (invalid); then a varint that never ends.
    for body in [
        vec![0x2a, 0x05, 0xff],
        vec![0x0f],
        vec![0x18, 0xff, 0xff, 0xff],
    ] {
        tokio::time::timeout(WAIT, grpc.ready()).await??;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/fedmesh.v1.Federation/SubmitUpdate",
        );
        let r = tokio::time::timeout(
            WAIT,
            grpc.unary(
                tonic::Request::new(body.clone()),
                path,
                super::hostile::BytesCodec,
            ),
        )
        .await?;
        let status = r.expect_err("malformed body accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{body:?}: {status:?}");
        assert!(status.message().contains("malformed message"), "{status:?}");
    }
    // Nothing was recorded and the federation still works.
    assert_eq!(mesh.fed("acme").version(), 0);
    let mut c = mesh.node("acme", "n1").await?;
    join(&mut c, "acme", "n1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robust_rule_keeps_a_poisoned_update_out_of_the_model() -> Result<()> {
    // Five nodes, Krum with f = 1 (needs n >= 2f + 3 = 5): one node sends a
    // large (but norm-valid) update; the committed model is an honest one.
    let t = tenant("acme", 5, &[4]).replace(
        "[tenants.model]",
        "[tenants.aggregation]\nrule = \"krum\"\nf = 1\n[tenants.model]",
    );
    let mesh = Mesh::start(&[t], 64 << 20).await?;
    let names = ["n1", "n2", "n3", "n4", "evil"];
    let mut clients = Vec::new();
    for n in names {
        let mut c = mesh.node("acme", n).await?;
        let j = join(&mut c, "acme", n).await?;
        clients.push((c, j));
    }
    let (_, genesis) = get_model(&mut clients[0].0, 0).await?;
    let genesis = params(&genesis)?;
    let mut streams = Vec::new();
    for (c, _) in &mut clients {
        streams.push(watch(c).await?);
    }
    let mut opens = Vec::new();
    for s in &mut streams {
        opens.push(wait_open(s).await?);
    }
    for (i, ((c, j), o)) in clients.iter_mut().zip(&opens).enumerate() {
        let value = if names[i] == "evil" {
            0.05
        } else {
            0.01 + 0.0001 * i as f32
        };
        c.submit_update(update(j, o, value)).await?;
    }
    let committed = wait_committed(&mut streams[0]).await?;
    assert_eq!(committed.version, 1);
    let (_, v1) = get_model(&mut clients[0].0, 1).await?;
    assert_eq!((v1.rule.as_str(), v1.participants), ("krum", 5));
    for (w, g) in params(&v1)?.iter().zip(&genesis) {
        let d = w - g;
        assert!(
            (0.0099..=0.0105).contains(&d),
            "the poisoned update leaked in: delta {d}"
        );
    }
    Ok(())
}

#[test]
fn rule_assumptions_are_checked_against_the_quorum() {
    let t = tenant("acme", 4, &[4]).replace(
        "[tenants.model]",
        "[tenants.aggregation]\nrule = \"bulyan\"\nf = 1\n[tenants.model]",
    );
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"d\"\n[tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n{t}"
    );
    let cfg = CoordinatorConfig::from_toml(&text, Path::new("t.toml")).unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("bulyan needs") && e.contains("quorum = 4"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_momentum_accumulates_across_rounds() -> Result<()> {
    // β = 0.5, two rounds, every update 0.01: v1 = g + 0.01,
    // v2 = v1 + (0.5·0.01 + 0.01) = g + 0.025.
    let t =
        tenant("acme", 2, &[4]).replace("max_rounds = 1", "max_rounds = 2\nserver_momentum = 0.5");
    let mesh = Mesh::start(&[t], 64 << 20).await?;
    let mut n1 = mesh.node("acme", "n1").await?;
    let mut n2 = mesh.node("acme", "n2").await?;
    let j1 = join(&mut n1, "acme", "n1").await?;
    let j2 = join(&mut n2, "acme", "n2").await?;
    let genesis = params(&get_model(&mut n1, 0).await?.1)?;
    let mut s1 = watch(&mut n1).await?;
    let mut s2 = watch(&mut n2).await?;
    for expected_version in [1u64, 2] {
        let (o1, o2) = (wait_open(&mut s1).await?, wait_open(&mut s2).await?);
        n1.submit_update(update(&j1, &o1, 0.01)).await?;
        n2.submit_update(update(&j2, &o2, 0.01)).await?;
        let c = wait_committed(&mut s1).await?;
        assert_eq!(c.version, expected_version);
    }
    let v2 = params(&get_model(&mut n1, 2).await?.1)?;
    for (w, g) in v2.iter().zip(&genesis) {
        assert!((w - g - 0.025).abs() <= 1e-6, "{w} - {g} != 0.025");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_outlier_is_quarantined_ignored_and_released() -> Result<()> {
    // Five nodes, FedAvg, probation 2 versions. "evil" sends a norm-valid
    // but far-off update (0.05 against the honest 0.01; its distance to the
    // mean is 4× the honest ones'): flagged in rounds 1–3 (score 2.77,
    // 5.27, 7.52 ≥ 6.9) and quarantined at version 3 (release at v5). In
    // rounds 4–6 it is a shadow participant: still told to train, its
    // update accepted but ignored (the step is the honest 0.01, not
    // 0.018). Its far-off shadow update in round 4 restarts probation
    // (release at v6); it behaves in rounds 5 and 6 and is released when
    // v6 commits; back in round 7, one more far-off update quarantines the
    // repeat offender at once.
    let t = tenant("acme", 5, &[4])
        .replace("max_rounds = 1", "max_rounds = 7\nquorum = 4")
        .replace("quorum = 5\n", "")
        .replace(
            "[tenants.model]",
            "[tenants.reputation]\nprobation_rounds = 2\n[tenants.model]",
        );
    let mesh = Mesh::start(&[t], 64 << 20).await?;
    let fed = mesh.fed("acme");
    let names = ["n1", "n2", "n3", "n4", "evil"];
    let mut clients = Vec::new();
    for n in names {
        let mut c = mesh.node("acme", n).await?;
        let j = join(&mut c, "acme", n).await?;
        clients.push((c, j));
    }
    let mut streams = Vec::new();
    for (c, _) in &mut clients {
        streams.push(watch(c).await?);
    }
    let mut prev = params(&get_model(&mut clients[0].0, 0).await?.1)?;
    for round in 1..=7u64 {
        let mut opens = Vec::new();
        for s in &mut streams {
            opens.push(wait_open(s).await?);
        }
        // Every node, quarantined or not, is asked to train.
        assert!(opens.iter().all(|o| o.selected), "round {round}: {opens:?}");
        // The quarantined node submits first: accepted, never waited for.
        for i in [4, 0, 1, 2, 3] {
            let (c, j) = &mut clients[i];
            let value = if i == 4 && !(5..=6).contains(&round) {
                0.05
            } else {
                0.01
            };
            c.submit_update(update(j, &opens[i], value)).await?;
        }
        let committed = wait_committed(&mut streams[0]).await?;
        assert_eq!(committed.version, round);
        for s in &mut streams[1..] {
            wait_committed(s).await?;
        }
        let (_, m) = get_model(&mut clients[4].0, round).await?;
        let now = params(&m)?;
        let shadow = (4..=6).contains(&round);
        assert_eq!(m.participants, if shadow { 4 } else { 5 }, "round {round}");
        let expected = if shadow { 0.01 } else { 0.018 };
        for (w, p) in now.iter().zip(&prev) {
            assert!(
                ((w - p) - expected).abs() < 1e-5,
                "round {round}: step {} != {expected}",
                w - p
            );
        }
        prev = now;
        let quarantined = fed.quarantined();
        match round {
            1 | 2 | 6 => assert!(quarantined.is_empty(), "round {round}: {quarantined:?}"),
            _ => assert_eq!(quarantined.iter().collect::<Vec<_>>(), vec!["evil"]),
        }
    }
    let log = fed.audit_log()?;
    assert_eq!(log.len(), 8);
    let actions = |v: usize| -> Vec<(String, String)> {
        log[v]
            .reputation
            .iter()
            .map(|d| (d.node.clone(), d.action.label().to_string()))
            .collect()
    };
    let one = |action: &str| vec![("evil".to_string(), action.to_string())];
    assert_eq!(actions(3), one("quarantined"));
    assert_eq!(actions(4), one("probation_restarted"));
    assert_eq!(actions(6), one("released"));
    assert_eq!(actions(7), one("quarantined"));
    for v in [0, 1, 2, 5] {
        assert!(actions(v).is_empty(), "v{v}: {:?}", log[v]);
    }
    assert!(
        log[3].reputation[0].reason.contains("× the median"),
        "{:?}",
        log[3]
    );
    assert_eq!(log[4].quarantined, vec!["evil".to_string()]);
    assert!(!log[4].participants.contains(&"evil".to_string()));
    assert!(log[7].participants.contains(&"evil".to_string()));
    Ok(())
}
