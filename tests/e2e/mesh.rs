//! Real binaries: a coordinator and three nodes over mTLS on loopback.
//!
//! The mesh runs four federated rounds, aggregated securely in buckets (k = 2:
//! the coordinator only unmasks bucket sums); then the coordinator is killed with
//! SIGKILL while the nodes keep running, restarted, and the nodes reconnect
//! and run four more rounds. The test checks that the global version
//! advanced to 8 with no version lost or duplicated (the audit chain
//! verifies), that every node holds the same signed model, and that each
//! node's federated detector catches the injected attack kinds on its own
//! workloads with ROC AUC above a floor.
//!
//! Floor: on the node workload mixes below the federated model scored ROC
//! AUC 0.967–0.982 on held-out windows with all seven attack kinds
//! (measured 2026-11-23); the test asserts 0.85, leaving margin for seed and
//! platform differences while still failing on a broken or untrained model
//! (≈ 0.5–0.7).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const COORD: &str = env!("CARGO_BIN_EXE_e2e-fedmesh-coordinator");
const NODE: &str = env!("CARGO_BIN_EXE_e2e-fedmesh-node");
const AUC_FLOOR: f64 = 0.85;
const ROUNDS: u64 = 4;
/// Version after a second run of ROUNDS rounds following a crash.
const FINAL: u64 = 2 * ROUNDS;

/// A child process killed when dropped, so a failing test leaks nothing.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, bin: &str, args: &[&str], dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .env("FEDMESH_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {bin}"))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        // Strip ANSI colour codes in case the subscriber used them.
        let mut out = String::with_capacity(s.len());
        let mut esc = false;
        for c in s.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    }

    /// Waits (bounded) until the log contains `needle`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before logging {needle:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not log {needle:?} within {timeout:?}:\n{}",
            self.name,
            self.log()
        )
    }

    /// SIGKILL: no chance to flush or say goodbye.
    fn kill9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(&mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.child.try_wait()? {
                ensure!(
                    status.success(),
                    "{} exited with {status}:\n{}",
                    self.name,
                    self.log()
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not stop within 10 s", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(bin: &str, args: &[&str], dir: &Path) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("FEDMESH_LOG", "warn")
        .output()
        .with_context(|| format!("cannot run {bin}"))?;
    ensure!(
        out.status.success(),
        "{bin} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A plain HTTP/1.1 GET on loopback; returns the body.
fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    ensure!(resp.starts_with("HTTP/1.1 200"), "GET {path}: {resp}");
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

const NODES: [(&str, &str, &str); 3] = [
    (
        "n1",
        "web,database",
        r#"{ id = "web-1", profile = "web" }, { id = "web-2", profile = "web" }, { id = "db-1", profile = "database" }"#,
    ),
    (
        "n2",
        "database,batch",
        r#"{ id = "db-1", profile = "database" }, { id = "db-2", profile = "database" }, { id = "batch-1", profile = "batch" }"#,
    ),
    (
        "n3",
        "batch,web",
        r#"{ id = "batch-1", profile = "batch" }, { id = "batch-2", profile = "batch" }, { id = "web-1", profile = "web" }"#,
    ),
];

#[test]
fn coordinator_and_three_nodes_federate_over_mtls() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    run(COORD, &["ca", "init", "--dir", "pki"], dir)?;
    for (n, _, _) in NODES {
        run(
            COORD,
            &[
                "ca", "issue", "--dir", "pki", "--tenant", "acme", "--node", n,
            ],
            dir,
        )?;
    }
    let port = free_port()?;
    let mport = free_port()?;
    let hport = free_port()?;
    std::fs::write(
        dir.join("coordinator.toml"),
        format!(
            r#"
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{mport}"
health_listen = "127.0.0.1:{hport}"
data_dir = "coordinator-data"
[tls]
ca_cert = "pki/ca.crt"
cert = "pki/coordinator.crt"
key = "pki/coordinator.key"
[[tenants]]
name = "acme"
min_nodes = 3
quorum = 3
round_timeout_ms = 15000
round_interval_ms = 100
max_rounds = {ROUNDS}
[tenants.secure]
bucket_size = 2
phase_timeout_ms = 10000
"#
        ),
    )?;
    for (i, (n, _, containers)) in NODES.iter().enumerate() {
        std::fs::write(
            dir.join(format!("{n}.toml")),
            format!(
                r#"
data_dir = "{n}-data"
window_ms = 10000
tick_ms = 10
seed = {i}
[coordinator]
endpoint = "127.0.0.1:{port}"
max_backoff_ms = 1000
[tls]
ca_cert = "pki/ca.crt"
cert = "pki/tenants/acme/{n}.crt"
key = "pki/tenants/acme/{n}.key"
[detector]
min_train_windows = 96
[alerts]
stdout = false
file = "{n}-alerts.jsonl"
[source]
kind = "synthetic"
seed = {seed}
containers = [ {containers} ]
"#,
                seed = 100 + i
            ),
        )?;
    }

    let mut coord = Proc::start(
        "coordinator",
        COORD,
        &["serve", "--config", "coordinator.toml"],
        dir,
    )?;
    coord.wait_for("coordinator serving", Duration::from_secs(20))?;
    let mut nodes = Vec::new();
    for (n, _, _) in NODES {
        nodes.push(Proc::start(
            n,
            NODE,
            &["run", "--config", &format!("{n}.toml")],
            dir,
        )?);
    }
    let done = format!("installed global model version={ROUNDS}");
    for p in &mut nodes {
        p.wait_for(&done, Duration::from_secs(120))?;
    }

    // kill -9 the coordinator while the nodes run, start it again: it
    // resumes from the last committed version, the nodes reconnect (with
    // backoff) and training continues for another ROUNDS rounds.
    coord.kill9()?;
    let mut coord = Proc::start(
        "coordinator-2",
        COORD,
        &["serve", "--config", "coordinator.toml"],
        dir,
    )?;
    coord.wait_for(
        &format!("resuming from committed version tenant=acme version={ROUNDS}"),
        Duration::from_secs(20),
    )?;
    let done = format!("installed global model version={FINAL}");
    for p in &mut nodes {
        p.wait_for(&done, Duration::from_secs(120))?;
    }
    // The restarted coordinator read the last secure round's list back:
    // its first secure round sends the list as a change, not whole.
    let first_open = coord
        .log()
        .lines()
        .find(|l| l.contains("secure round open"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(first_open.contains("list_sent=\"change\""), "{first_open}");
    // Secure aggregation (k = 2): every node sent masked updates only, and
    // the coordinator committed from unmasked bucket sums.
    for p in &nodes {
        assert!(
            p.log().contains("masked update submitted"),
            "{}: {}",
            p.name,
            p.log()
        );
    }
    assert!(
        coord.log().contains("secure round committed"),
        "{}",
        coord.log()
    );
    // Prometheus metrics and the live status of the running coordinator.
    let metrics = http_get(mport, "/metrics")?;
    for needle in [
        format!("fedmesh_model_version{{tenant=\"acme\"}} {FINAL}"),
        format!("fedmesh_rounds_committed_total{{tenant=\"acme\"}} {ROUNDS}"),
        "fedmesh_connected_nodes{tenant=\"acme\"} 3".to_string(),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
    let status = http_get(mport, "/status")?;
    assert!(
        status.contains("\"tenant\":\"acme\"") && status.contains(&format!("\"version\":{FINAL}")),
        "{status}"
    );
    assert!(status.contains("\"oldest_kept_version\":0"), "{status}");
    // `serve` runs with two glibc malloc arenas (it re-executes itself with
    // MALLOC_ARENA_MAX set, same pid), or with the operator's value.
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let environ = std::fs::read(format!("/proc/{}/environ", coord.child.id()))?;
        let want = format!(
            "MALLOC_ARENA_MAX={}",
            std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into())
        );
        assert!(
            environ.split(|&b| b == 0).any(|kv| kv == want.as_bytes()),
            "{want} not in the coordinator's environment"
        );
    }
    // Kubernetes-style gRPC probe on the plaintext health port.
    let serving = tokio::runtime::Runtime::new()?.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{hport}"))?
            .connect()
            .await?;
        let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
        let mut out = Vec::new();
        for service in ["", "fedmesh.v1.Federation"] {
            let r = c
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await?;
            out.push(r.into_inner().status);
        }
        anyhow::Ok(out)
    })?;
    let ok = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(serving, vec![ok, ok]);
    // The operator's view of the same: `status --url` against the live coordinator.
    let live = run(
        COORD,
        &["status", "--url", &format!("http://127.0.0.1:{mport}")],
        dir,
    )?;
    assert!(
        live.contains(&format!("tenant acme: version {FINAL}")) && live.contains("connected:"),
        "{live}"
    );
    for p in &mut nodes {
        p.stop()?;
    }
    coord.stop()?;

    // Every node holds the same signed model, version FINAL.
    let mut hashes = Vec::new();
    for (n, _, _) in NODES {
        let out = run(
            NODE,
            &[
                "inspect",
                "--data-dir",
                &format!("{n}-data"),
                "--ca-cert",
                "pki/ca.crt",
                "--tenant",
                "acme",
            ],
            dir,
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        assert_eq!(v["version"], FINAL, "{n}: {v}");
        assert_eq!(v["verified"], true, "{n}: {v}");
        hashes.push(v["sha256"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        hashes.iter().all(|h| h == &hashes[0] && h.len() == 64),
        "{hashes:?}"
    );

    // No version was lost or duplicated across the crash: the audit chain
    // holds genesis + FINAL contiguous versions and verifies.
    let audit = run(
        COORD,
        &["audit-verify", "--data-dir", "coordinator-data"],
        dir,
    )?;
    assert!(
        audit.contains(&format!("({} versions)", FINAL + 1)),
        "{audit}"
    );

    // Detection quality of the federated model on each node's workloads.
    for (n, profiles, _) in NODES {
        let out = run(
            NODE,
            &[
                "evaluate",
                "--data-dir",
                &format!("{n}-data"),
                "--ca-cert",
                "pki/ca.crt",
                "--tenant",
                "acme",
                "--profiles",
                profiles,
            ],
            dir,
        )?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        let auc = v["report"]["auc"].as_f64().context("auc missing")?;
        println!("{n}: federated AUC {auc:.3} on {profiles}");
        assert!(
            auc >= AUC_FLOOR,
            "{n}: AUC {auc:.3} below the floor {AUC_FLOOR}: {v}"
        );
        assert_eq!(v["version"], FINAL);
    }
    Ok(())
}
