//! `fedmesh-sim demo`: a whole mesh on loopback.
//!
//! A fresh mesh CA in a temporary directory; a coordinator and `nodes` edge
//! nodes as tasks of this process, talking real gRPC over mutual TLS; each
//! node watches a non-IID mix of synthetic workloads; federated rounds;
//! attacks injected into some nodes' live telemetry; and detection quality
//! of the federated model against models each node trains alone, on the
//! same held-out windows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fedmesh_coordinator::pki::{self, layout};
use fedmesh_coordinator::{Coordinator, CoordinatorConfig, Pki};
use fedmesh_crypto::{CertVerifier, MeshCa, NodeId, SecretPem, TenantId};
use fedmesh_node::agent::{Agent, AgentSettings, SharedAgent, lock};
use fedmesh_node::config::DetectorConfig;
use fedmesh_node::detection::detector::Detector;
use fedmesh_node::detection::features::{FeatureWindow, WindowBuilder};
use fedmesh_node::detection::incident::IncidentState;
use fedmesh_node::detection::model::ModelSpec;
use fedmesh_node::detection::rules::{RuleEngine, RulesConfig};
use fedmesh_node::runtime::node::federation_from_pem;
use fedmesh_node::sim::eval::{EvalReport, evaluate};
use fedmesh_node::sim::hook::{SeededNode, Tamper};
use fedmesh_node::sim::synthetic::{AttackKind, Profile, SyntheticSource};
use fedmesh_node::store::NodeStore;
use fedmesh_node::{Node, RunningNode};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Demo parameters.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Edge nodes (at least 4).
    pub nodes: usize,
    /// Federated rounds.
    pub rounds: u64,
    /// Telemetry windows each node collects before federating.
    pub warmup_windows: u64,
    /// Live windows with attacks.
    pub attack_windows: u64,
    /// Seed for everything.
    pub seed: u64,
    /// Secure-aggregation bucket size k (1 = plaintext updates over TLS).
    pub bucket_size: usize,
    /// The coordinator's aggregation rule (`fedavg`, `median`,
    /// `geometric_median`, …; over bucket means when k > 1).
    pub rule: String,
    /// The last `attackers` nodes poison their updates with `attack`
    /// (they run the real node code with a tamper hook).
    pub attackers: usize,
    /// How attackers poison.
    pub attack: Tamper,
    /// Hide progress bars (tests).
    pub quiet: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            nodes: 6,
            rounds: 8,
            warmup_windows: 240,
            attack_windows: 36,
            seed: 42,
            bucket_size: 3,
            rule: "fedavg".into(),
            attackers: 0,
            attack: Tamper::Scale(10.0),
            quiet: false,
        }
    }
}

/// One committed round as the demo saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    /// Round number.
    pub round: u64,
    /// Updates aggregated.
    pub participants: usize,
    /// Mean local training loss.
    pub mean_loss: f32,
    /// New global version.
    pub version: u64,
    /// Bytes of updates received.
    pub bytes: u64,
    /// Wall time of the round in ms.
    pub ms: u64,
}

/// Detection quality of one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeQuality {
    /// Node.
    pub node: String,
    /// Dominant workload.
    pub workloads: String,
    /// Federated model on the fleet-wide held-out set.
    pub federated: EvalReport,
    /// Local-only model on the same set.
    pub local: EvalReport,
}

/// One incident of the live phase, as its records describe it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LiveIncident {
    /// Node.
    pub node: String,
    /// Container.
    pub container: String,
    /// Attack injected there (`None`: a benign container).
    pub truth: Option<String>,
    /// Live window it opened in (0-based).
    pub opened_window: u64,
    /// Windows after the attack's first window (`None` for benign).
    pub windows_after_start: Option<u64>,
    /// Highest severity.
    pub severity: String,
    /// Peak score over the threshold.
    pub peak_ratio: Option<f32>,
    /// Top features of the peak window.
    pub top_features: Vec<String>,
    /// Features that rose beyond the container's own recent windows when it
    /// opened.
    pub rise: Vec<String>,
    /// Rules that fired.
    pub rules: Vec<String>,
    /// Windows while open.
    pub windows: u32,
    /// Closed before the live phase ended.
    pub closed: bool,
    /// Records emitted (open, updates, close).
    pub records: usize,
}

/// What the demo found.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Committed rounds.
    pub rounds: Vec<RoundRow>,
    /// Final global version held by every node.
    pub final_version: u64,
    /// SHA-256 of the final global parameters (f32 little-endian): equal
    /// for equal seeds.
    pub final_params_sha256: String,
    /// Per-node quality.
    pub quality: Vec<NodeQuality>,
    /// Every incident the nodes opened during the live phase.
    pub incidents: Vec<LiveIncident>,
    /// Attacks injected: (node, container, kind, first attacked window
    /// relative to the live phase).
    pub attacks: Vec<(String, String, String, u64)>,
    /// Containers watched during the live phase (all nodes).
    pub live_containers: usize,
    /// Mean federated AUC over nodes.
    pub mean_federated_auc: f32,
    /// Mean local-only AUC over nodes.
    pub mean_local_auc: f32,
    /// Whole demo, seconds.
    pub seconds: f32,
}

const TENANT: &str = "demo";
/// Window length of the demo's synthetic telemetry.
pub const WINDOW_MS: u64 = 10_000;

/// Non-IID fleet: each node's containers lean to one workload.
pub fn fleet(i: usize) -> Vec<(String, Profile)> {
    let mixes: [&[(Profile, usize)]; 6] = [
        &[(Profile::Web, 4), (Profile::Database, 1)],
        &[(Profile::Database, 3), (Profile::Web, 1)],
        &[(Profile::Batch, 4), (Profile::Web, 1)],
        &[(Profile::Ml, 3), (Profile::Batch, 1)],
        &[(Profile::Web, 2), (Profile::Batch, 2)],
        &[(Profile::Database, 2), (Profile::Ml, 2)],
    ];
    let mut out = Vec::new();
    for (p, n) in mixes[i % mixes.len()] {
        for k in 0..*n {
            out.push((format!("{p}-{k}"), *p));
        }
    }
    out
}

fn workloads_label(c: &[(String, Profile)]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, p) in c {
        *counts.entry(p.to_string()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(p, n)| format!("{n}×{p}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn bar(quiet: bool, len: u64, msg: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12.bold} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(msg.to_string());
    pb
}

/// Finishes a phase bar; without a terminal the bar is invisible, so the
/// phase summary is printed as a line instead.
fn done(pb: &ProgressBar, quiet: bool, msg: impl Into<String>) {
    let msg = msg.into();
    if !quiet && pb.is_hidden() {
        println!("{:>12} {msg}", pb.prefix());
    }
    pb.finish_with_message(msg);
}

/// Prints a line above a bar (or plainly without a terminal).
fn line(pb: &ProgressBar, quiet: bool, s: String) {
    if !quiet {
        pb.suspend(|| println!("{s}"));
    }
}

fn say(quiet: bool, s: &str) {
    if !quiet {
        println!("{s}");
    }
}

struct DemoNode {
    name: String,
    containers: Vec<(String, Profile)>,
    source: SyntheticSource,
    agent: SharedAgent,
}

/// The detectors one demo node ends with, for further evaluation
/// ([`crate::quality`]).
#[derive(Debug, Clone)]
pub struct NodeModels {
    /// Node.
    pub node: String,
    /// The node's containers and their workloads.
    pub containers: Vec<(String, Profile)>,
    /// The final global model with this node's calibrated threshold.
    pub federated: Detector,
    /// The model this node trained alone (same data, epochs, architecture).
    pub local: Detector,
    /// The feature windows of the node's warm-up telemetry (what it trained on).
    pub warmup: Vec<FeatureWindow>,
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> Result<DemoReport> {
    Ok(run_with_models(opts).await?.0)
}

/// Runs the demo and also returns every node's detectors.
pub async fn run_with_models(opts: DemoOptions) -> Result<(DemoReport, Vec<NodeModels>)> {
    if opts.nodes < 3 {
        bail!("the demo needs at least 3 nodes");
    }
    if opts.attackers >= opts.nodes {
        bail!(
            "{} attackers leave no honest node among {}",
            opts.attackers,
            opts.nodes
        );
    }
    if opts.bucket_size == 0 || opts.bucket_size > opts.nodes - 1 {
        bail!(
            "bucket size {} must be between 1 and {} (nodes - 1)",
            opts.bucket_size,
            opts.nodes - 1
        );
    }
    let started = Instant::now();
    let q = opts.quiet;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    say(
        q,
        &format!(
            "fedmesh demo: {} nodes, {} rounds, seed {}, {}, rule {}{}, workspace {}",
            opts.nodes,
            opts.rounds,
            opts.seed,
            if opts.bucket_size > 1 {
                format!("secure aggregation in buckets of {}", opts.bucket_size)
            } else {
                "plaintext updates over TLS (k = 1)".to_string()
            },
            opts.rule,
            if opts.attackers > 0 {
                format!(", {} attackers ({:?})", opts.attackers, opts.attack)
            } else {
                String::new()
            },
            dir.path().display()
        ),
    );

    // Phase 1: PKI.
    let pb = bar(q, opts.nodes as u64 + 1, "PKI");
    let pki_dir = dir.path().join("pki");
    let now = time::OffsetDateTime::now_utc();
    let ca = MeshCa::generate("fedmesh demo CA", now, 2)?;
    pki::write_public(&layout::ca_cert(&pki_dir), ca.cert_pem())?;
    pki::write_secret(&layout::ca_key(&pki_dir), ca.key_pem())?;
    let coord = ca.issue_coordinator(
        &"demo".parse::<NodeId>()?,
        &["localhost".into()],
        &["127.0.0.1".parse()?],
        now,
        1,
    )?;
    pki::write_public(&layout::coordinator_cert(&pki_dir), &coord.cert_pem)?;
    pki::write_secret(&layout::coordinator_key(&pki_dir), &coord.key_pem)?;
    pb.inc(1);
    let tenant: TenantId = TENANT.parse()?;
    let names: Vec<String> = (1..=opts.nodes).map(|i| format!("node-{i}")).collect();
    for n in &names {
        let c = ca.issue_node(&tenant, &n.parse()?, now, 1)?;
        pki::write_public(&layout::node_cert(&pki_dir, TENANT, n), &c.cert_pem)?;
        pki::write_secret(&layout::node_key(&pki_dir, TENANT, n), &c.key_pem)?;
        pb.inc(1);
    }
    done(
        &pb,
        q,
        format!(
            "mesh CA + {} certificates in {}",
            opts.nodes + 1,
            pki_dir.display()
        ),
    );

    // Phase 2: coordinator on loopback.
    let cfg_text = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
[tls]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
[[tenants]]
name = "{TENANT}"
min_nodes = {n}
quorum = {quorum}
round_timeout_ms = 20000
round_interval_ms = 0
max_rounds = {rounds}
seed = {seed}
[tenants.training]
local_epochs = 4
[tenants.secure]
bucket_size = {k}
[tenants.aggregation]
rule = "{rule}"
"#,
        data = dir.path().join("coordinator").display(),
        ca = layout::ca_cert(&pki_dir).display(),
        cert = layout::coordinator_cert(&pki_dir).display(),
        key = layout::coordinator_key(&pki_dir).display(),
        n = opts.nodes,
        quorum = (2 * opts.nodes).div_ceil(3).max(opts.bucket_size),
        rounds = opts.rounds,
        seed = opts.seed,
        k = opts.bucket_size,
        rule = opts.rule,
    );
    let cfg = CoordinatorConfig::from_toml(&cfg_text, Path::new("demo.toml"))?;
    let coord_pki = Pki::load(&cfg.tls.ca_cert, &cfg.tls.cert, &cfg.tls.key)?;
    let coordinator = Coordinator::open(&cfg, &coord_pki)?;
    let fed = coordinator
        .federation(TENANT)
        .context("demo tenant missing")?;
    let mut summaries = fed.summaries();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (coord_stop_tx, coord_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(coordinator.serve(listener, async move {
        let _ = coord_stop_rx.await;
    }));
    say(
        q,
        &format!("  coordinator listening on {addr} (gRPC, TLS 1.3, client certificates required)"),
    );

    // Phase 3: nodes collect telemetry.
    let ca_pem = ca.cert_pem().to_string();
    let verifier = Arc::new(CertVerifier::new(&ca_pem)?);
    let mut nodes = Vec::new();
    let mut assembled = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let containers = fleet(i);
        let source = SyntheticSource::new(
            opts.seed.wrapping_add(i as u64 * 1000),
            &containers,
            WINDOW_MS,
        );
        let store = NodeStore::open(&dir.path().join("nodes").join(name))?;
        let agent = Agent::new(
            AgentSettings {
                tenant: TENANT.into(),
                node: name.clone(),
                detector: DetectorConfig {
                    bootstrap_after_windows: 0,
                    // The demo reports what the federation commits (its
                    // poisoning comparison measures the damage FedAvg does
                    // through the nodes' detectors), so nodes install
                    // every version instead of holding a far worse one back.
                    max_loss_ratio: 0.0,
                    ..DetectorConfig::default()
                },
                incidents: Default::default(),
                seed: opts.seed ^ (i as u64 + 1),
            },
            Some(store),
            Some(&verifier),
            now,
        )?;
        let node = Node::new(agent);
        nodes.push(DemoNode {
            name: name.clone(),
            containers,
            source,
            agent: node.agent().clone(),
        });
        assembled.push(node);
    }
    let pb = bar(q, opts.warmup_windows * nodes.len() as u64, "telemetry");
    let mut warmups = Vec::new();
    for n in &mut nodes {
        // The same events through a second builder: the windows the agent saw.
        let mut builder = WindowBuilder::new();
        let mut seen = Vec::new();
        for _ in 0..opts.warmup_windows {
            let (w, events) = n.source.next_window();
            let mut a = lock(&n.agent);
            for e in &events {
                a.observe(e);
                builder.push(e);
            }
            a.close_window((w + 1) * WINDOW_MS, &[])?;
            seen.extend(builder.close((w + 1) * WINDOW_MS));
            pb.inc(1);
        }
        warmups.push(seen);
    }
    done(
        &pb,
        q,
        format!(
            "{} windows per node ({} min of 10 s windows), never leaving the node",
            opts.warmup_windows,
            opts.warmup_windows * WINDOW_MS / 60_000
        ),
    );
    for n in &nodes {
        say(
            q,
            &format!("  {:<8} watches {}", n.name, workloads_label(&n.containers)),
        );
    }

    // Phase 4: federated rounds over mTLS.
    let mut running = Vec::new();
    for (i, (n, node)) in nodes.iter().zip(assembled).enumerate() {
        let cert = std::fs::read_to_string(layout::node_cert(&pki_dir, TENANT, &n.name))?;
        let key = SecretPem::new(std::fs::read_to_string(layout::node_key(
            &pki_dir, TENANT, &n.name,
        ))?);
        let mut settings = federation_from_pem(
            &addr.to_string(),
            "localhost",
            &ca_pem,
            &cert,
            &key,
            verifier.clone(),
            Duration::from_secs(2),
        )?;
        settings.sim = Some(Arc::new(SeededNode {
            secagg_seed: opts.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
            tamper: (i >= opts.nodes - opts.attackers).then_some(opts.attack),
        }));
        running.push(node.with_federation(settings).start());
    }
    let pb = bar(q, opts.rounds, "rounds");
    line(
        &pb,
        q,
        format!(
            "  {:>5}  {:>12}  {:>15}  {:>7}  {:>14}  {:>6}",
            "round", "participants", "mean local loss", "version", "bytes received", "ms"
        ),
    );
    let mut rows = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while (rows.len() as u64) < opts.rounds {
        let s = tokio::time::timeout_at(deadline, summaries.recv())
            .await
            .context("rounds did not finish within 90 s")?
            .context("coordinator stopped")?;
        let row = RoundRow {
            round: s.round,
            participants: s.participants,
            mean_loss: s.mean_train_loss,
            version: s.version,
            bytes: s.bytes_received,
            ms: s.duration.as_millis() as u64,
        };
        line(
            &pb,
            q,
            format!(
                "  {:>5}  {:>12}  {:>15.5}  {:>7}  {:>14}  {:>6}",
                row.round,
                format!("{}/{}", row.participants, s.selected),
                row.mean_loss,
                row.version,
                row.bytes,
                row.ms
            ),
        );
        rows.push(row);
        pb.inc(1);
    }
    let final_version = fed.version();
    // Every node installs the last version (bounded wait).
    for _ in 0..200 {
        if nodes
            .iter()
            .all(|n| lock(&n.agent).global_version() == Some(final_version))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for n in &nodes {
        let have = lock(&n.agent).global_version();
        if have != Some(final_version) {
            bail!(
                "{} holds version {have:?}, the coordinator committed {final_version}",
                n.name
            );
        }
    }
    done(
        &pb,
        q,
        format!(
            "global model v{final_version}, signed, held by all {} nodes",
            nodes.len()
        ),
    );

    let final_params_sha256 = {
        let a = lock(&nodes[0].agent);
        let params = a.global().map(|g| g.params.clone()).unwrap_or_default();
        let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        fedmesh_crypto::sha256_hex(&bytes)
    };
    // Phase 5: local-only baselines, same data, same architecture, same
    // number of epochs as the federated model saw.
    let spec = ModelSpec::default_for_features();
    let epochs = (opts.rounds * 4) as usize;
    let pb = bar(q, nodes.len() as u64, "local-only");
    let mut locals = Vec::new();
    for n in &nodes {
        let a = lock(&n.agent);
        locals.push(a.fit_local(&spec, epochs)?);
        pb.inc(1);
    }
    done(
        &pb,
        q,
        format!("each node trained alone for {epochs} epochs (baseline)"),
    );

    // Phase 6: attacks in live telemetry.
    let kinds = AttackKind::ALL;
    let mut injected: BTreeMap<(String, String), AttackKind> = BTreeMap::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        if i % 3 == 2 {
            continue; // some nodes stay clean
        }
        let kind = kinds[i % kinds.len()];
        let target = n.containers[0].0.clone();
        let start = opts.warmup_windows + opts.attack_windows / 3;
        n.source.inject(&target, kind, start, opts.attack_windows)?;
        injected.insert((n.name.clone(), target), kind);
    }
    let attack_start = opts.attack_windows / 3;
    let attacks: Vec<(String, String, String, u64)> = injected
        .iter()
        .map(|((n, c), k)| (n.clone(), c.clone(), k.to_string(), attack_start))
        .collect();
    let pb = bar(q, opts.attack_windows * nodes.len() as u64, "live");
    let mut incidents: Vec<LiveIncident> = Vec::new();
    let mut live_containers = 0;
    // The node's rule layer runs over the same events, as in a real node.
    let rules = RuleEngine::new(&RulesConfig::default());
    for n in &mut nodes {
        live_containers += n.containers.len();
        let mut by_incident: BTreeMap<String, usize> = BTreeMap::new();
        for k in 0..opts.attack_windows {
            let (w, events) = n.source.next_window();
            let hits = rules.evaluate(&events);
            let records = {
                let mut a = lock(&n.agent);
                for e in &events {
                    a.observe(e);
                }
                a.close_window((w + 1) * WINDOW_MS, &hits)?
            };
            for r in records {
                let truth = injected
                    .get(&(n.name.clone(), r.container.clone()))
                    .map(|k| k.to_string());
                let idx = *by_incident.entry(r.incident.clone()).or_insert_with(|| {
                    incidents.push(LiveIncident {
                        node: n.name.clone(),
                        container: r.container.clone(),
                        windows_after_start: truth.as_ref().map(|_| k.saturating_sub(attack_start)),
                        truth,
                        opened_window: k,
                        severity: String::new(),
                        peak_ratio: None,
                        top_features: Vec::new(),
                        rise: Vec::new(),
                        rules: Vec::new(),
                        windows: 0,
                        closed: false,
                        records: 0,
                    });
                    incidents.len() - 1
                });
                let inc = &mut incidents[idx];
                inc.severity = r.severity.to_string();
                inc.peak_ratio = r.score.zip(r.threshold).map(|(s, t)| s / t);
                inc.top_features = r.top_features.iter().map(|(f, _)| f.clone()).collect();
                inc.rise = r.rise.iter().map(|(f, _)| f.clone()).collect();
                inc.rules = r.rules.iter().map(|m| m.id.clone()).collect();
                inc.windows = r.windows;
                inc.closed |= r.state == IncidentState::Close;
                inc.records += 1;
            }
            pb.inc(1);
        }
        // Incidents still open at the end: as they stand now.
        let a = lock(&n.agent);
        for inc in incidents
            .iter_mut()
            .filter(|i| i.node == n.name && !i.closed)
        {
            if let Some(now) = a.open_incident(&inc.container) {
                inc.severity = now.severity.to_string();
                inc.peak_ratio = now.peak.map(|(s, t)| s / t);
                inc.top_features = now.top_features.iter().map(|(f, _)| f.clone()).collect();
                inc.rules = now.rules.iter().map(|r| r.id.clone()).collect();
                inc.windows = now.windows;
            }
        }
    }
    done(
        &pb,
        q,
        "attacks injected; each node's federated detector and rule layer turn windows into incidents",
    );
    running.iter().for_each(RunningNode::stop);
    for r in running {
        r.join().await;
    }
    let _ = coord_stop_tx.send(());
    let _ = server.await;

    say(
        q,
        &format!(
            "\nIncidents opened during the live phase ({} containers, {} windows each; attacks start at window {attack_start}):",
            live_containers, opts.attack_windows
        ),
    );
    say(
        q,
        &format!(
            "  {:<8}  {:<10}  {:<28}  {:>6}  {:<8}  {:>5}  {:>7}  explanation",
            "node", "container", "ground truth", "opened", "severity", "peak", "windows"
        ),
    );
    for inc in &incidents {
        let truth = inc
            .truth
            .clone()
            .map_or_else(|| "benign".to_string(), |k| format!("ATTACK: {k}"));
        let opened = match inc.windows_after_start {
            Some(d) => format!("+{d}"),
            None => format!("w{}", inc.opened_window),
        };
        let mut why = format!("top features: {}", inc.top_features.join(", "));
        if !inc.rise.is_empty() {
            why.push_str(&format!(
                "; rose beyond its own recent windows: {}",
                inc.rise.join(", ")
            ));
        }
        if !inc.rules.is_empty() {
            why.push_str(&format!("; rules: {}", inc.rules.join(", ")));
        }
        say(
            q,
            &format!(
                "  {:<8}  {:<10}  {:<28}  {:>6}  {:<8}  {:>5}  {:>7}  {}",
                inc.node,
                inc.container,
                truth,
                opened,
                inc.severity,
                inc.peak_ratio.map_or("-".into(), |r| if r >= 1000.0 {
                    format!("{r:.0e}x")
                } else {
                    format!("{r:.1}x")
                }),
                format!("{}{}", inc.windows, if inc.closed { "" } else { "+" }),
                why
            ),
        );
    }
    let missed: Vec<String> = attacks
        .iter()
        .filter(|(n, c, _, _)| {
            !incidents
                .iter()
                .any(|i| &i.node == n && &i.container == c && i.truth.is_some())
        })
        .map(|(n, c, k, _)| format!("{n}/{c} ({k})"))
        .collect();
    let benign = incidents.iter().filter(|i| i.truth.is_none()).count();
    say(
        q,
        &format!(
            "  {} of {} attacks opened an incident{}; {benign} incident(s) on the {} benign containers. \
             (opened: attacked window it opened in, +0 = the first; peak: score over threshold; windows: \
             length so far, + while still open)",
            attacks.len() - missed.len(),
            attacks.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!(" (missed: {})", missed.join(", "))
            },
            live_containers - attacks.len()
        ),
    );

    // Phase 7: quality on the same held-out windows: every workload of the
    // fleet, every attack kind, fresh seed.
    let heldout = heldout_set(opts.seed ^ 0xE7A1)?;
    let mut quality = Vec::new();
    let mut models = Vec::new();
    for ((n, local), warmup) in nodes.iter().zip(&locals).zip(warmups) {
        let fed_det = {
            let a = lock(&n.agent);
            a.detector()
                .cloned()
                .context("node has no federated detector")?
        };
        quality.push(NodeQuality {
            node: n.name.clone(),
            workloads: workloads_label(&n.containers),
            federated: evaluate(&fed_det, &heldout)?,
            local: evaluate(local, &heldout)?,
        });
        models.push(NodeModels {
            node: n.name.clone(),
            containers: n.containers.clone(),
            federated: fed_det,
            local: local.clone(),
            warmup,
        });
    }
    let mean =
        |f: &dyn Fn(&NodeQuality) -> f32| quality.iter().map(f).sum::<f32>() / quality.len() as f32;
    let mean_federated_auc = mean(&|x| x.federated.auc);
    let mean_local_auc = mean(&|x| x.local.auc);
    say(
        q,
        &format!(
            "\nDetection quality on the same {} held-out windows (all workloads of the fleet, all 7 attack kinds):",
            heldout.len()
        ),
    );
    say(
        q,
        &format!(
            "  {:<8}  {:<18}  {:>9} {:>6} {:>6} {:>6}   {:>9} {:>6} {:>6} {:>6}",
            "node",
            "workloads",
            "fed AUC",
            "prec",
            "recall",
            "FPR",
            "local AUC",
            "prec",
            "recall",
            "FPR"
        ),
    );
    for x in &quality {
        say(
            q,
            &format!(
                "  {:<8}  {:<18}  {:>9.3} {:>6.2} {:>6.2} {:>6.2}   {:>9.3} {:>6.2} {:>6.2} {:>6.2}",
                x.node,
                x.workloads,
                x.federated.auc,
                x.federated.precision,
                x.federated.recall,
                x.federated.false_positive_rate,
                x.local.auc,
                x.local.precision,
                x.local.recall,
                x.local.false_positive_rate
            ),
        );
    }
    say(
        q,
        &format!(
            "  {:<8}  {:<18}  {:>9.3} {:>20}   {:>9.3}",
            "mean", "", mean_federated_auc, "", mean_local_auc
        ),
    );
    if let Some(first) = quality.first() {
        let per: Vec<String> = first
            .federated
            .auc_per_kind
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        say(
            q,
            &format!("  federated AUC per attack kind: {}", per.join(", ")),
        );
    }
    let seconds = started.elapsed().as_secs_f32();
    say(
        q,
        &format!(
            "\nDone in {seconds:.1} s. Telemetry never left a node; only {} model updates did{}.",
            rows.iter().map(|r| r.participants).sum::<usize>(),
            if opts.bucket_size > 1 {
                format!(
                    ", masked in buckets of {}: the coordinator saw bucket sums only",
                    opts.bucket_size
                )
            } else {
                String::new()
            }
        ),
    );
    Ok((
        DemoReport {
            rounds: rows,
            final_version,
            final_params_sha256,
            quality,
            incidents,
            attacks,
            live_containers,
            mean_federated_auc,
            mean_local_auc,
            seconds,
        },
        models,
    ))
}

/// Held-out windows: two containers of every workload, each attack kind
/// injected into one of them for the second half.
fn heldout_set(seed: u64) -> Result<Vec<(FeatureWindow, Option<AttackKind>)>> {
    Ok(fedmesh_node::sim::eval::standard_heldout(
        seed,
        &Profile::ALL,
        2,
        80,
        WINDOW_MS,
    )?)
}
