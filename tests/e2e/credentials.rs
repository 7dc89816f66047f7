//! Certificate revocation and rotation on a running mesh: an in-process
//! coordinator and protocol-level nodes over real mTLS, the nodes dialling
//! through their own connector and live credentials. Every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use fedmesh_coordinator::credentials::{Credentials, Material};
use fedmesh_coordinator::reputation::Action;
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Federation, Pki, Store};
use fedmesh_crypto::{CryptoError, IssuedCert, MeshCa, RevocationList, RevokedCert};
use fedmesh_node::agent::verify_global_model;
use fedmesh_node::federation::client::{Connector, NodeCredentials, NodeMaterial};
use fedmesh_proto::v1::{self, round_event::Event};
use prost::Message;
use tokio::sync::oneshot;
use tonic::Streaming;

use crate::protocol::{Client, WAIT, get_model, join, next_event, now, param_count, watch};

/// A running coordinator with its live credentials.
struct Running {
    ca: MeshCa,
    addr: SocketAddr,
    creds: Arc<Credentials>,
    fed: Arc<Federation>,
    store: Store,
    coord: IssuedCert,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn issue_coordinator(ca: &MeshCa) -> Result<IssuedCert> {
    Ok(ca.issue_coordinator(
        &"main".parse()?,
        &["localhost".into()],
        &["127.0.0.1".parse()?],
        now(),
        30,
    )?)
}

/// Tenant `acme`: rounds open once `min_nodes` stream, commit with `quorum`
/// updates or at the `timeout_ms` deadline; unlimited rounds.
async fn start(min_nodes: usize, quorum: usize, timeout_ms: u64) -> Result<Running> {
    let ca = MeshCa::generate("test CA", now(), 30)?;
    let coord = issue_coordinator(&ca)?;
    let dir = tempfile::tempdir()?;
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = '{}'\n\
         [tls]\nca_cert = \"unused\"\ncert = \"unused\"\nkey = \"unused\"\nreload_interval_secs = 0\n\
         [[tenants]]\nname = \"acme\"\nmin_nodes = {min_nodes}\nquorum = {quorum}\n\
         round_timeout_ms = {timeout_ms}\nround_interval_ms = 50\nmax_rounds = 0\n\
         max_update_norm = 1.0\n[tenants.model]\nhidden = [4]\n",
        dir.path().join("data").display(),
    );
    let cfg = CoordinatorConfig::from_toml(&text, Path::new("test.toml"))?;
    let pki = Pki {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: coord.cert_pem.clone(),
        key_pem: coord.key_pem.clone(),
    };
    let coordinator = Coordinator::open(&cfg, &pki)?;
    let creds = coordinator.credentials();
    let fed = coordinator
        .federation("acme")
        .ok_or_else(|| anyhow!("no federation"))?;
    let store = coordinator.store().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(coordinator.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    Ok(Running {
        ca,
        addr,
        creds,
        fed,
        store,
        coord,
        stop: Some(stop),
        _dir: dir,
    })
}

fn serial(cert_pem: &str) -> Result<Vec<u8>> {
    Ok(fedmesh_crypto::crl::cert_serial(
        &fedmesh_crypto::tls::cert_der_from_pem(cert_pem)?,
    )?)
}

fn crl(ca: &MeshCa, revoked: &[&str], number: u64) -> Result<Vec<u8>> {
    let entries = revoked
        .iter()
        .map(|pem| {
            Ok(RevokedCert {
                serial: serial(pem)?,
                revoked_at: now(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ca.issue_crl(&entries, number, now())?.into_bytes())
}

fn coordinator_material(r: &Running, cert: &IssuedCert, crl: Option<Vec<u8>>) -> Material {
    Material {
        ca_pem: r.ca.cert_pem().to_string(),
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        crl_pem: crl,
    }
}

/// A protocol-level node: live credentials and a connector that follows them.
struct Node {
    name: &'static str,
    cert: IssuedCert,
    creds: Arc<NodeCredentials>,
    connector: Connector,
}

impl Node {
    fn new(r: &Running, name: &'static str) -> Result<Node> {
        let cert =
            r.ca.issue_node(&"acme".parse()?, &name.parse()?, now(), 30)?;
        let creds = Arc::new(NodeCredentials::new(
            &NodeMaterial {
                ca_pem: r.ca.cert_pem().to_string(),
                cert_pem: cert.cert_pem.clone(),
                key_pem: cert.key_pem.clone(),
                crl_pem: None,
            },
            7,
            now(),
        )?);
        let connector = Connector::new(
            &r.addr.to_string(),
            "localhost",
            creds.tls_config(),
            64 << 20,
        )?;
        Ok(Node {
            name,
            cert,
            creds,
            connector,
        })
    }

    async fn connect(&self) -> Result<Client> {
        Ok(tokio::time::timeout(WAIT, self.connector.connect()).await??)
    }

    /// Installs a new certificate (and list) the way the file watcher does.
    fn rotate(&mut self, r: &Running, crl: Option<Vec<u8>>) -> Result<IssuedCert> {
        let new =
            r.ca.issue_node(&"acme".parse()?, &self.name.parse()?, now(), 30)?;
        let changed = self.creds.apply(
            &NodeMaterial {
                ca_pem: r.ca.cert_pem().to_string(),
                cert_pem: new.cert_pem.clone(),
                key_pem: new.key_pem.clone(),
                crl_pem: crl,
            },
            now(),
        )?;
        assert!(changed);
        Ok(std::mem::replace(&mut self.cert, new))
    }
}

/// A connected, joined node with its round stream.
struct Session {
    client: Client,
    join: v1::JoinResponse,
    stream: Streaming<v1::RoundEvent>,
}

async fn session(n: &Node) -> Result<Session> {
    let mut client = n.connect().await?;
    let join = join(&mut client, "acme", n.name).await?;
    let stream = watch(&mut client).await?;
    Ok(Session {
        client,
        join,
        stream,
    })
}

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

async fn wait_committed(s: &mut Streaming<v1::RoundEvent>, after: u64) -> Result<u64> {
    tokio::time::timeout(WAIT, async {
        loop {
            match next_event(s).await? {
                Event::Committed(c) if c.version > after => return Ok(c.version),
                _ => {}
            }
        }
    })
    .await
    .context("no commit in time")?
}

fn update(s: &Session, open: &v1::RoundOpen, value: f32) -> v1::UpdateRequest {
    let p = param_count(&s.join);
    v1::UpdateRequest {
        tenant: s.join.tenant.clone(),
        node: s.join.node.clone(),
        round: open.round,
        base_version: open.base_version,
        delta: Some(fedmesh_proto::encode_f32(&vec![value; p], &[p as u64])),
        num_samples: 50,
        scaler_stats: None,
        train_loss: 0.25,
        schema_hash: s.join.schema_hash.clone(),
    }
}

/// Both sessions submit to the open round; returns the committed version.
async fn round(a: &mut Session, b: &mut Session, after: u64) -> Result<u64> {
    let open = wait_open(&mut a.stream).await?;
    let open_b = wait_open(&mut b.stream).await?;
    if open.round != open_b.round {
        bail!("sessions see rounds {} and {}", open.round, open_b.round);
    }
    a.client.submit_update(update(a, &open, 0.01)).await?;
    b.client.submit_update(update(b, &open, 0.02)).await?;
    wait_committed(&mut a.stream, after).await
}

/// The serial of the certificate a server presents to `tls`.
async fn presented_serial(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await??;
    let (_, conn) = stream.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("no server certificate"))?;
    Ok(fedmesh_crypto::crl::cert_serial(cert)?)
}

fn signer_serial(signed: &v1::SignedModel) -> Result<Vec<u8>> {
    Ok(fedmesh_crypto::crl::cert_serial(&signed.signer_cert)?)
}

/// A node whose certificate is revoked while it has an update in the open
/// round: its connection is closed, a new connection fails the handshake,
/// its update is not aggregated, the next audit entry names it, the chain
/// verifies; a node refuses a model signed by a revoked coordinator
/// certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_node_is_cut_off_dropped_and_audited() -> Result<()> {
    let r = start(3, 2, 1500).await?;
    let honest = [Node::new(&r, "n1")?, Node::new(&r, "n2")?];
    let thief = Node::new(&r, "n3")?;
    let mut s1 = session(&honest[0]).await?;
    let mut s2 = session(&honest[1]).await?;
    let mut s3 = session(&thief).await?;
    // Version 0 = the latest, here still the genesis.
    let (_, genesis) = get_model(&mut s2.client, 0).await?;
    let genesis = crate::protocol::params(&genesis)?;
    let open = wait_open(&mut s3.stream).await?;
    s3.client.submit_update(update(&s3, &open, 0.05)).await?;

    let outcome = r.creds.apply(
        &coordinator_material(&r, &r.coord, Some(crl(&r.ca, &[&thief.cert.cert_pem], 1)?)),
        now(),
    )?;
    assert_eq!(outcome.crl_number, Some(1));
    assert_eq!(outcome.revoked.len(), 1);
    assert_eq!(
        outcome.revoked[0].1,
        Some(fedmesh_crypto::Identity::Node {
            tenant: "acme".parse()?,
            node: "n3".parse()?
        })
    );

    // The open connection is closed: the stream ends, the next call fails
    // below the handlers.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match s3.stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked node's stream stayed open");
    let status = tokio::time::timeout(WAIT, join(&mut s3.client, "acme", "n3"))
        .await?
        .expect_err("a revoked connection was served");
    let code = status
        .downcast_ref::<tonic::Status>()
        .map(tonic::Status::code);
    assert!(
        matches!(
            code,
            Some(tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
        ),
        "{status:?}"
    );
    // A new connection with the revoked certificate fails the handshake
    // (or its first call, when the client reports the alert late).
    match thief.connect().await {
        Err(_) => {}
        Ok(mut c) => {
            let e = join(&mut c, "acme", "n3")
                .await
                .expect_err("a revoked certificate was served");
            let code = e.downcast_ref::<tonic::Status>().map(tonic::Status::code);
            assert!(
                matches!(
                    code,
                    Some(tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
                ),
                "{e:?}"
            );
        }
    }

    // The honest nodes finish the round; the thief's update is not in it.
    s1.client.submit_update(update(&s1, &open, 0.01)).await?;
    s2.client.submit_update(update(&s2, &open, 0.01)).await?;
    let v = wait_committed(&mut s1.stream, 0).await?;
    let log = r.fed.audit_log()?;
    let entry = log
        .iter()
        .find(|e| e.version == v)
        .ok_or_else(|| anyhow!("no audit entry for version {v}"))?;
    assert_eq!(entry.participants, vec!["n1".to_string(), "n2".to_string()]);
    let decision = entry
        .reputation
        .iter()
        .find(|d| d.action == Action::Revoked)
        .ok_or_else(|| anyhow!("no revocation in {entry:?}"))?;
    assert_eq!(decision.node, "n3");
    assert!(
        decision
            .reason
            .contains(&fedmesh_crypto::crl::serial_hex(&serial(
                &thief.cert.cert_pem
            )?))
    );
    assert_eq!(r.store.verify_chain("acme")?, log.len());
    let (_, body) = get_model(&mut s2.client, v).await?;
    let params = crate::protocol::params(&body)?;
    // Mean of the two honest deltas (0.01), not pulled towards 0.05.
    for (w, g) in params.iter().zip(&genesis) {
        assert!((w - (g + 0.01)).abs() <= 1e-5, "{w} vs {g} + 0.01");
    }

    // Nodes refuse a model signed by a revoked coordinator certificate.
    let signed = get_model(&mut s1.client, v).await?.0.encode_to_vec();
    verify_global_model(&signed, honest[0].creds.verifier(), "acme", None, now())?;
    let revoked_coordinator = crl(&r.ca, &[&thief.cert.cert_pem, &r.coord.cert_pem], 2)?;
    honest[0].creds.apply(
        &NodeMaterial {
            ca_pem: r.ca.cert_pem().to_string(),
            cert_pem: honest[0].cert.cert_pem.clone(),
            key_pem: honest[0].cert.key_pem.clone(),
            crl_pem: Some(revoked_coordinator.clone()),
        },
        now(),
    )?;
    let refused = verify_global_model(&signed, honest[0].creds.verifier(), "acme", None, now());
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("revoked")),
        "{refused:?}"
    );
    // ... and the coordinator refuses a list that revokes its own
    // certificate, or an older list, keeping the one in force.
    assert!(
        r.creds
            .apply(
                &coordinator_material(&r, &r.coord, Some(revoked_coordinator)),
                now()
            )
            .is_err()
    );
    assert!(
        r.creds
            .apply(
                &coordinator_material(&r, &r.coord, Some(crl(&r.ca, &[], 0)?)),
                now()
            )
            .is_err()
    );
    Ok(())
}

/// Every certificate of a running mesh is rotated while rounds go on:
/// established connections keep committing, models are signed with the new
/// coordinator certificate, and once every old certificate is revoked the
/// nodes reconnect with their new certificates, see the coordinator's new
/// one, and rounds keep committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_certificate_rotates_while_rounds_commit() -> Result<()> {
    let r = start(2, 2, 5000).await?;
    let mut nodes = [Node::new(&r, "n1")?, Node::new(&r, "n2")?];
    let [a, b] = &nodes;
    let (mut sa, mut sb) = (session(a).await?, session(b).await?);
    let v1 = round(&mut sa, &mut sb, 0).await?;
    let old_coord = serial(&r.coord.cert_pem)?;
    assert_eq!(
        signer_serial(&get_model(&mut sa.client, v1).await?.0)?,
        old_coord
    );

    // Rotate the coordinator and both nodes; nothing reconnects.
    let new_coord = issue_coordinator(&r.ca)?;
    let outcome = r
        .creds
        .apply(&coordinator_material(&r, &new_coord, None), now())?;
    assert!(outcome.certificate_changed);
    let old_a = nodes[0].rotate(&r, None)?;
    let old_b = nodes[1].rotate(&r, None)?;
    let v2 = round(&mut sa, &mut sb, v1).await?;
    assert_eq!(v2, v1 + 1, "no round was lost");
    let (signed_v2, _) = get_model(&mut sa.client, v2).await?;
    assert_eq!(signer_serial(&signed_v2)?, serial(&new_coord.cert_pem)?);

    // Revoke every old certificate: old connections close; new ones use
    // the new certificates on both sides.
    let list = crl(
        &r.ca,
        &[&r.coord.cert_pem, &old_a.cert_pem, &old_b.cert_pem],
        1,
    )?;
    let outcome = r.creds.apply(
        &coordinator_material(&r, &new_coord, Some(list.clone())),
        now(),
    )?;
    assert_eq!(outcome.revoked.len(), 3);
    for n in &nodes {
        n.creds.apply(
            &NodeMaterial {
                ca_pem: r.ca.cert_pem().to_string(),
                cert_pem: n.cert.cert_pem.clone(),
                key_pem: n.cert.key_pem.clone(),
                crl_pem: Some(list.clone()),
            },
            now(),
        )?;
    }
    let [a, b] = &nodes;
    assert_eq!(
        presented_serial(r.addr, a.creds.tls_config()).await?,
        serial(&new_coord.cert_pem)?
    );
    let (mut sa, mut sb) = (session(a).await?, session(b).await?);
    let v3 = round(&mut sa, &mut sb, v2).await?;
    let v4 = round(&mut sa, &mut sb, v3).await?;
    assert_eq!((v3, v4), (v2 + 1, v2 + 2));

    // Nodes with the list accept the new signer and refuse the old one.
    let (signed_v4, _) = get_model(&mut sa.client, v4).await?;
    verify_global_model(
        &signed_v4.encode_to_vec(),
        a.creds.verifier(),
        "acme",
        None,
        now(),
    )?;
    let (signed_v1, _) = get_model(&mut sa.client, v1).await?;
    match a.creds.verifier().verify(
        &signed_v1.signer_cert,
        &signed_v1.body,
        &signed_v1.signature,
        now(),
    ) {
        Err(CryptoError::Revoked { .. }) => {}
        other => bail!("a model signed by the revoked certificate: {other:?}"),
    }
    assert_eq!(r.store.verify_chain("acme")?, r.fed.audit_log()?.len());
    let revoked_nodes: BTreeMap<String, usize> = r
        .fed
        .audit_log()?
        .iter()
        .flat_map(|e| e.reputation.iter())
        .filter(|d| d.action == Action::Revoked)
        .fold(BTreeMap::new(), |mut m, d| {
            *m.entry(d.node.clone()).or_default() += 1;
            m
        });
    assert_eq!(
        revoked_nodes,
        BTreeMap::from([("n1".to_string(), 1), ("n2".to_string(), 1)])
    );
    Ok(())
}

/// Parsing is shared with the coordinator: a list from another CA is refused.
#[test]
fn foreign_revocation_list_is_refused() -> Result<()> {
    let ca = MeshCa::generate("test CA", now(), 30)?;
    let other = MeshCa::generate("test CA", now(), 30)?;
    let pem = other.issue_crl(&[], 1, now())?;
    assert!(RevocationList::from_pem(pem.as_bytes(), ca.cert_pem()).is_err());
    Ok(())
}
