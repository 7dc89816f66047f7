//! Certificate revocation and rotation on a running mesh: an in-process
//! coordinator and nodes over real mTLS, dialling through the node's own
//! connector and live credentials: protocol-level nodes for plaintext
//! rounds, the node crate's federation loop for secure rounds. Every wait
//! is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use fedmesh_coordinator::credentials::CredentialError;
use fedmesh_coordinator::reputation::Action;
use fedmesh_crypto::{CrlSuccession, CryptoError, IssuedCert, MeshCa, RevocationList, TlsMaterial};
use fedmesh_node::agent::{Agent, AgentSettings, SharedAgent, lock, verify_global_model};
use fedmesh_node::config::DetectorConfig;
use fedmesh_node::federation::client::{Connector, NodeCredentials};
use fedmesh_node::federation::round::FederationSettings;
use fedmesh_node::federation::session::run_federation;
use fedmesh_node::sim::synthetic::{Profile, SyntheticSource};
use fedmesh_proto::v1::{self, round_event::Event};
use prost::Message;
use tonic::Streaming;

use crate::protocol::{
    Client, Mesh, WAIT, crl, get_model, issue_coordinator, join, material, next_event, now,
    param_count, serial, watch,
};

/// Tenant `acme` in plaintext rounds: rounds open once `min_nodes` stream,
/// commit with `quorum` updates or at the `timeout_ms` deadline; unlimited
/// rounds.
fn rotating_tenant(min_nodes: usize, quorum: usize, timeout_ms: u64) -> String {
    format!(
        "[[tenants]]\nname = \"acme\"\nmin_nodes = {min_nodes}\nquorum = {quorum}\n\
         round_timeout_ms = {timeout_ms}\nround_interval_ms = 50\nmax_rounds = 0\n\
         max_update_norm = 1.0\n[tenants.model]\nhidden = [4]\n"
    )
}

async fn start(min_nodes: usize, quorum: usize, timeout_ms: u64) -> Result<Mesh> {
    Mesh::start(
        &[rotating_tenant(min_nodes, quorum, timeout_ms)],
        fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
    )
    .await
}

fn coordinator_material(r: &Mesh, cert: &IssuedCert, crl: Option<Vec<u8>>) -> TlsMaterial {
    material(r.ca.cert_pem(), cert, crl)
}

/// A protocol-level node: live credentials and a connector that follows them.
struct Node {
    name: &'static str,
    cert: IssuedCert,
    creds: Arc<NodeCredentials>,
    connector: Connector,
}

impl Node {
    fn new(r: &Mesh, name: &'static str) -> Result<Node> {
        let cert = r.issue_node("acme", name)?;
        let creds = Arc::new(NodeCredentials::new(
            &material(r.ca.cert_pem(), &cert, None),
            7,
            now(),
        )?);
        let connector = Connector::new(
            &r.addr().to_string(),
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
    fn rotate(&mut self, r: &Mesh, crl: Option<Vec<u8>>) -> Result<IssuedCert> {
        let new = r.issue_node("acme", self.name)?;
        let changed = self
            .creds
            .apply(&material(r.ca.cert_pem(), &new, crl), now())?;
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

    let outcome = r.credentials().apply(
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
    let log = r.fed("acme").audit_log()?;
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
    assert_eq!(r.verify_chain("acme")?, log.len());
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
        &material(
            r.ca.cert_pem(),
            &honest[0].cert,
            Some(revoked_coordinator.clone()),
        ),
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
        r.credentials()
            .apply(
                &coordinator_material(&r, &r.coord, Some(revoked_coordinator)),
                now()
            )
            .is_err()
    );
    assert!(
        r.credentials()
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
        .credentials()
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
    let outcome = r.credentials().apply(
        &coordinator_material(&r, &new_coord, Some(list.clone())),
        now(),
    )?;
    assert_eq!(outcome.revoked.len(), 3);
    for n in &nodes {
        n.creds.apply(
            &material(r.ca.cert_pem(), &n.cert, Some(list.clone())),
            now(),
        )?;
    }
    let [a, b] = &nodes;
    assert_eq!(
        presented_serial(r.addr(), a.creds.tls_config()).await?,
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
    assert_eq!(r.verify_chain("acme")?, r.fed("acme").audit_log()?.len());
    let revoked_nodes: BTreeMap<String, usize> = r
        .fed("acme")
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

// ------------------------------------------------ real nodes in secure rounds

/// Tenant `acme` aggregating securely in buckets of 2 among `nodes` nodes;
/// unlimited rounds.
fn secure_rotating_tenant(nodes: usize) -> String {
    format!(
        "[[tenants]]\nname = \"acme\"\nmin_nodes = {nodes}\nquorum = {nodes}\n\
         round_timeout_ms = 10000\nround_interval_ms = 50\nmax_rounds = 0\n\
         [tenants.model]\nhidden = [4]\n\
         [tenants.secure]\nbucket_size = 2\nphase_timeout_ms = 5000\n"
    )
}

/// A node run by the node crate's own federation loop (training, secure
/// aggregation, model verification), in process, with its live
/// credentials; the loop signs with `creds.signer()` and verifies with a
/// clone of `creds.verifier()`, exactly as the binary wires them.
struct LiveNode {
    name: &'static str,
    cert: IssuedCert,
    creds: Arc<NodeCredentials>,
    agent: SharedAgent,
    task: tokio::task::JoinHandle<()>,
}

impl LiveNode {
    fn start(
        mesh: &Mesh,
        name: &'static str,
        seed: u64,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<LiveNode> {
        let cert = mesh.issue_node("acme", name)?;
        let creds = Arc::new(NodeCredentials::new(
            &material(mesh.ca.cert_pem(), &cert, None),
            7,
            now(),
        )?);
        let agent = Arc::new(std::sync::Mutex::new(Agent::new(
            AgentSettings {
                tenant: "acme".into(),
                node: name.into(),
                detector: DetectorConfig {
                    min_train_windows: 32,
                    bootstrap_after_windows: 0,
                    ..DetectorConfig::default()
                },
                incidents: Default::default(),
                seed,
            },
            None,
            None,
            now(),
        )?));
        // Benign windows to train on (two containers: 80 windows).
        let mut source = SyntheticSource::new(
            seed,
            &[
                ("web-1".into(), Profile::Web),
                ("db-1".into(), Profile::Database),
            ],
            10_000,
        );
        for _ in 0..40 {
            let (w, events) = source.next_window();
            let mut a = lock(&agent);
            for e in &events {
                a.observe(e);
            }
            a.close_window((w + 1) * 10_000, &[])?;
        }
        let settings = FederationSettings::new(
            Connector::new(
                &mesh.addr().to_string(),
                "localhost",
                creds.tls_config(),
                fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
            )?,
            Arc::new(creds.verifier().clone()),
            creds.signer().clone(),
            std::time::Duration::from_millis(500),
        );
        let task = tokio::spawn(run_federation(agent.clone(), settings, stop));
        Ok(LiveNode {
            name,
            cert,
            creds,
            agent,
            task,
        })
    }

    /// Installs `cert` (and its key) with CA file `ca_pem` and list `crl`,
    /// as the file watcher does.
    fn install(&mut self, ca_pem: &str, cert: IssuedCert, crl: Option<Vec<u8>>) -> Result<()> {
        self.creds.apply(&material(ca_pem, &cert, crl), now())?;
        self.cert = cert;
        Ok(())
    }
}

/// Waits (bounded) until two more versions than `after` are committed, so
/// that at least one whole round opened after the caller's change; every
/// version after `after` must come from a secure round with both nodes'
/// masked updates. Returns the latest version.
async fn two_secure_commits(mesh: &Mesh, after: u64, what: &str) -> Result<u64> {
    let fed = mesh.fed("acme");
    let mut committed = false;
    for _ in 0..1200 {
        if fed.version() >= after + 2 {
            committed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = fed.audit_log()?;
    let entries: Vec<_> = log.iter().filter(|e| e.version > after).collect();
    if !committed {
        bail!(
            "{what}: no two secure rounds committed within 60 s; audit after v{after}: {entries:?}"
        );
    }
    for e in &entries {
        if e.secure.is_none() || e.participants != ["n1", "n2"] {
            bail!(
                "{what}: version {} is not a secure round of n1 and n2: {e:?}",
                e.version
            );
        }
    }
    Ok(fed.version())
}

/// Secure aggregation (k = 2) goes on across rotations of every key: the
/// real node loop signs its adverts, masked inputs and unmask responses
/// with its rotated key, and trusts a new CA for models and peers' adverts.
///
/// 1. Both nodes rotate their keys and the coordinator revokes the old
///    certificates: the nodes reconnect and their adverts, signed with the
///    new keys, are accepted (signed with the revoked ones they would be
///    refused, and no secure round would commit).
/// 2. The mesh CA rotates: everyone trusts both CAs, the coordinator and the
///    nodes take certificates of the new CA, then everyone drops the old
///    CA and installs the new CA's first revocation list (its number below
///    the old list's). Models signed by the new coordinator certificate are
///    verified and installed by the nodes, and the rounds keep committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_rounds_commit_across_key_and_ca_rotation() -> Result<()> {
    let mesh = Mesh::start(
        &[secure_rotating_tenant(2)],
        fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
    )
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut nodes = [
        LiveNode::start(&mesh, "n1", 11, stop_rx.clone())?,
        LiveNode::start(&mesh, "n2", 12, stop_rx)?,
    ];
    let v = two_secure_commits(&mesh, 0, "before any rotation").await?;

    // 1. New node keys; the old certificates are revoked.
    let ca1 = mesh.ca.cert_pem().to_string();
    let mut old = Vec::new();
    for n in &mut nodes {
        let new = mesh.issue_node("acme", n.name)?;
        old.push(n.cert.cert_pem.clone());
        n.install(&ca1, new, None)?;
    }
    let outcome = mesh.revoke(&[&old[0], &old[1]], 3)?;
    assert_eq!(outcome.revoked.len(), 2, "{outcome:?}");
    let list = crl(&mesh.ca, &[&old[0], &old[1]], 3)?;
    let after_revocation = mesh.fed("acme").version();
    for n in &mut nodes {
        let cert = n.cert.clone();
        n.install(&ca1, cert, Some(list.clone()))?;
    }
    let v = two_secure_commits(&mesh, after_revocation.max(v), "after the key rotation").await?;

    // 2. CA rotation: trust both, move every certificate, drop the old CA.
    let ca2 = MeshCa::generate("test CA 2", now(), 30)?;
    let both = format!("{}{ca1}", ca2.cert_pem());
    let coord = mesh.credentials();
    coord.apply(&material(&both, &mesh.coord, Some(list.clone())), now())?;
    for n in &mut nodes {
        let cert = n.cert.clone();
        n.install(&both, cert, Some(list.clone()))?;
    }
    let coord2 = issue_coordinator(&ca2)?;
    assert!(
        coord
            .apply(&material(&both, &coord2, Some(list.clone())), now())?
            .certificate_changed
    );
    for n in &mut nodes {
        let new = ca2.issue_node(&"acme".parse()?, &n.name.parse()?, now(), 30)?;
        n.install(&both, new, Some(list.clone()))?;
    }
    // The new CA's first list (#1) cannot lift the old CA's revocations
    // while the old CA is trusted; it goes in together with dropping it.
    let list2 = crl(&ca2, &[], 1)?;
    let refused = coord.apply(&material(&both, &coord2, Some(list2.clone())), now());
    assert!(
        matches!(
            refused,
            Err(CredentialError::CrlSuccession(CrlSuccession::IssuerChanged))
        ),
        "{refused:?}"
    );
    coord.apply(
        &material(ca2.cert_pem(), &coord2, Some(list2.clone())),
        now(),
    )?;
    for n in &mut nodes {
        let cert = n.cert.clone();
        n.install(ca2.cert_pem(), cert, Some(list2.clone()))?;
    }
    let dropped_ca1 = mesh.fed("acme").version();
    let last = two_secure_commits(&mesh, dropped_ca1.max(v), "after the CA rotation").await?;

    // The newest model is signed by the new coordinator certificate, and
    // both nodes verified and installed a model committed after the switch.
    let bytes = mesh.fed("acme").model(last)?;
    let signed = v1::SignedModel::decode(bytes.as_slice())?;
    assert_eq!(
        fedmesh_crypto::crl::cert_serial(&signed.signer_cert)?,
        serial(&coord2.cert_pem)?
    );
    for n in &nodes {
        verify_global_model(&bytes, n.creds.verifier(), "acme", None, now())?;
        let mut installed = None;
        for _ in 0..200 {
            installed = lock(&n.agent).global_version();
            if installed.is_some_and(|have| have > dropped_ca1) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(
            installed.is_some_and(|have| have > dropped_ca1),
            "{} holds version {installed:?}",
            n.name
        );
    }
    assert_eq!(
        mesh.verify_chain("acme")?,
        mesh.fed("acme").audit_log()?.len()
    );

    stop_tx.send(true)?;
    for n in nodes {
        tokio::time::timeout(WAIT, n.task).await??;
    }
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
