//! The real node binary on this machine's real Docker engine.
//!
//! A tiny image is built from the host's static busybox (`FROM scratch`).
//! Two containers run side by side: a benign one (a sleep loop) and an
//! attacker that behaves the same until the test drops a trigger file into
//! it (after the node has its model), then burns CPU and opens many TCP connections to a listener of this
//! test on the Docker bridge. The node watches the host cgroup tree
//! (`[source] kind = "cgroup"`), bootstraps a local model from the first
//! windows (no coordinator), and must alert on the attacker (alert JSON
//! lines on stdout naming its container id) and never on the benign one.
//!
//! Bounded: well under two minutes; containers are removed by a drop guard
//! (`docker rm -f`) even when the test fails; names are unique per run.
//! Without a usable Docker engine the test is skipped with a printed reason,
//! or fails when `FEDMESH_REQUIRE_DOCKER=1` (CI).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fedmesh_node::alerting::alert::Alert;

pub(crate) const NODE: &str = env!("CARGO_BIN_EXE_e2e-fedmesh-node");
pub(crate) const IMAGE: &str = "fedmesh-test-busybox:latest";
const BUSYBOX_PATHS: [&str; 3] = ["/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox"];

/// Runs `docker` with `args`, failing after `timeout`.
pub(crate) fn docker(args: &[&str], timeout: Duration) -> Result<Output> {
    let mut child = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run the docker CLI")?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("docker {} timed out after {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `docker args` that must succeed; returns trimmed stdout.
pub(crate) fn docker_ok(args: &[&str], timeout: Duration) -> Result<String> {
    let out = docker(args, timeout)?;
    ensure!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Why Docker cannot be used here, if it cannot.
pub(crate) fn docker_unavailable() -> Option<String> {
    match docker(
        &["info", "--format", "{{.ServerVersion}} {{.CgroupDriver}}"],
        Duration::from_secs(20),
    ) {
        Err(e) => Some(format!("{e:#}")),
        Ok(o) if !o.status.success() => Some(format!(
            "docker info failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) if !Path::new("/sys/fs/cgroup").is_dir() => {
            Some("no cgroup tree at /sys/fs/cgroup".into())
        }
        // The test image is built from the host's static busybox.
        Ok(_)
            if !BUSYBOX_PATHS.iter().any(|p| Path::new(p).is_file())
                && !docker(&["image", "inspect", IMAGE], Duration::from_secs(20))
                    .is_ok_and(|o| o.status.success()) =>
        {
            Some("no busybox binary on this host (apt-get install busybox-static)".into())
        }
        Ok(_) => None,
    }
}

/// Builds the busybox image unless it exists.
pub(crate) fn ensure_image() -> Result<()> {
    if docker(&["image", "inspect", IMAGE], Duration::from_secs(20))?
        .status
        .success()
    {
        return Ok(());
    }
    let busybox = BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox binary on this host (apt-get install busybox-static)")?;
    let ctx = tempfile::tempdir()?;
    std::fs::copy(&busybox, ctx.path().join("busybox"))?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )?;
    let dir = ctx.path().to_string_lossy().to_string();
    docker_ok(
        &["build", "-q", "-t", IMAGE, &dir],
        Duration::from_secs(120),
    )
    .context("building the busybox test image")?;
    Ok(())
}

/// Removes the containers when dropped.
pub(crate) struct Containers(pub(crate) Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut args = vec!["rm", "-f"];
        args.extend(self.0.iter().map(String::as_str));
        if let Err(e) = docker(&args, Duration::from_secs(30)) {
            eprintln!("cleanup failed: {e:#}");
        }
    }
}

/// Kills the node when dropped.
struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Accepts connections on all interfaces, answers one line and closes,
/// until dropped.
struct Sink {
    port: u16,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start() -> Result<Self> {
        let l = TcpListener::bind("0.0.0.0:0")?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
                        let _ = c.write_all(b"ok\n");
                        let mut buf = [0u8; 64];
                        let _ = c.read(&mut buf);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(Self {
            port,
            accepted,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Docker containers in the host's cgroup tree (cgroupfs layout, any
/// controller directory that has a `docker` subdirectory).
fn count_host_containers() -> usize {
    ["pids", "cpuacct", "cpu,cpuacct", "memory"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join("docker"))
        .find(|p| p.is_dir())
        .and_then(|p| std::fs::read_dir(p).ok())
        .map_or(0, |rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .count()
        })
}

fn alerts(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Alert>(l).ok())
        .collect()
}

fn count_for(alerts: &[Alert], id: &str) -> usize {
    alerts
        .iter()
        .filter(|a| !a.container.is_empty() && id.starts_with(&a.container))
        .count()
}

#[test]
fn node_flags_the_attacking_container_and_not_the_benign_one() {
    if let Some(reason) = docker_unavailable() {
        if std::env::var("FEDMESH_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("FEDMESH_REQUIRE_DOCKER=1 but Docker is unusable: {reason}");
        }
        eprintln!("skipping the Docker test: {reason}");
        return;
    }
    let _host = crate::host_containers();
    run().unwrap();
}

fn run() -> Result<()> {
    let started = Instant::now();
    ensure_image()?;
    let sink = Sink::start()?;
    let gateway = docker_ok(
        &[
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ],
        Duration::from_secs(20),
    )
    .unwrap_or_default();
    let gateway = if gateway.parse::<std::net::Ipv4Addr>().is_ok() {
        gateway
    } else {
        "172.17.0.1".to_string()
    };
    let suffix = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );
    let benign_name = format!("fedmesh-e2e-benign-{suffix}");
    let attacker_name = format!("fedmesh-e2e-attacker-{suffix}");
    let mut guard = Containers(Vec::new());
    let benign_script = "i=0; while :; do i=$((i+1)); sleep 0.5; done";
    // Benign until /go exists (the image has no /tmp); then one CPU burner and four loops of
    // short TCP connections to the test's listener.
    let attacker_script = format!(
        "i=0; while [ ! -f /go ]; do i=$((i+1)); sleep 0.5; done; \
         (while :; do :; done) & \
         for k in 1 2 3 4; do (while :; do echo x | nc -w 1 {gateway} {port} >/dev/null 2>&1; done) & done; \
         wait",
        port = sink.port
    );
    let mut ids = Vec::new();
    for (name, script) in [
        (&benign_name, benign_script.to_string()),
        (&attacker_name, attacker_script),
    ] {
        guard.0.push(name.clone());
        let id = docker_ok(
            &[
                "run",
                "-d",
                "--name",
                name,
                "--label",
                "fedmesh-e2e=1",
                "--cpus",
                "0.5",
                IMAGE,
                "/bin/busybox",
                "sh",
                "-c",
                &script,
            ],
            Duration::from_secs(60),
        )?;
        ensure!(id.len() == 64, "unexpected container id {id:?}");
        ids.push(id);
    }
    let (benign_id, attacker_id) = (ids[0].clone(), ids[1].clone());
    println!("benign {benign_id}\nattacker {attacker_id}");

    // The node watches every container on the host (other tests may run
    // some); bootstrap after about 24 windows of each, so our two
    // containers' benign behaviour is in the training data.
    let running = count_host_containers().max(2);
    let bootstrap = running * 24;
    println!("{running} containers on the host: bootstrap after {bootstrap} windows");
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"tenant = "e2e"
node = "docker-host"
data_dir = "data"
window_ms = 1000
seed = 5
[source]
kind = "cgroup"
root = "/sys/fs/cgroup"
proc_root = "/proc"
[detector]
min_train_windows = 32
bootstrap_after_windows = {bootstrap}
[alerts]
stdout = true
"#
        ),
    )?;
    let alerts_path = dir.path().join("alerts.jsonl");
    let log_path = dir.path().join("node.log");
    let node = NodeProc(
        Command::new(NODE)
            .args(["run", "--config"])
            .arg(&config)
            .env("FEDMESH_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&alerts_path)?)
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .context("cannot start the node")?,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The node bootstraps a local model from the benign warm-up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("local bootstrap model") {
        ensure!(
            Instant::now() < deadline,
            "no bootstrap model within 60 s; node log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = alerts(&alerts_path);
    println!(
        "bootstrapped after {:.1} s; alerts so far: benign {}, attacker {}",
        started.elapsed().as_secs_f32(),
        count_for(&before, &benign_id),
        count_for(&before, &attacker_id)
    );
    docker_ok(
        &["exec", &attacker_name, "/bin/busybox", "touch", "/go"],
        Duration::from_secs(20),
    )?;
    let attack_start = Instant::now();

    // The attacker must be flagged; keep watching a little longer so the
    // benign container has time to (wrongly) alert too.
    let deadline = attack_start + Duration::from_secs(40);
    let mut flagged_after = None;
    loop {
        let a = alerts(&alerts_path);
        if flagged_after.is_none() && count_for(&a, &attacker_id) > count_for(&before, &attacker_id)
        {
            flagged_after = Some(attack_start.elapsed());
        }
        if let Some(t) = flagged_after
            && attack_start.elapsed() >= t + Duration::from_secs(8)
        {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // `docker restart` keeps the id and makes the cgroup anew: the node
    // sees the CPU counter go back and starts the container up again.
    // (Its new run settles at a third of the memory the model learned, so
    // after the new warm-up the model may still flag it: the benign
    // assertion below covers the time before the restart.)
    let restart_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    docker_ok(
        &["restart", "-t", "1", &benign_name],
        Duration::from_secs(60),
    )?;
    let restarted_at = Instant::now();
    let deadline = restarted_at + Duration::from_secs(30);
    let restart_line = |l: &str| l.contains("started anew") && l.contains(&benign_id[..12]);
    while !log().lines().any(restart_line) {
        ensure!(
            Instant::now() < deadline,
            "the node did not see the benign container's restart within 30 s; node log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    println!(
        "benign restart seen {:.1} s after `docker restart` returned",
        restarted_at.elapsed().as_secs_f32()
    );
    // Watch its first windows after the restart.
    std::thread::sleep(Duration::from_secs(8));
    drop(node);
    let all = alerts(&alerts_path);
    let attacker_alerts = count_for(&all, &attacker_id);
    let (before_restart, after_restart): (Vec<Alert>, Vec<Alert>) =
        all.iter().cloned().partition(|a| a.ts_ms < restart_ms);
    let benign_alerts = count_for(&before_restart, &benign_id);
    println!(
        "benign records after its restart: {}",
        count_for(&after_restart, &benign_id)
    );
    println!(
        "attacker alerts {attacker_alerts} (first {:?} after the trigger), benign alerts {benign_alerts}, \
         connections accepted {}, total {:.1} s",
        flagged_after,
        sink.accepted.load(Ordering::Relaxed),
        started.elapsed().as_secs_f32()
    );
    for a in all.iter().filter(|a| attacker_id.starts_with(&a.container)) {
        println!(
            "  attacker alert score {:?} > {:?}: {:?}",
            a.score, a.threshold, a.top_features
        );
    }
    ensure!(
        flagged_after.is_some(),
        "the attacker was never flagged; alerts: {all:?}\nnode log:\n{}",
        log()
    );
    ensure!(
        benign_alerts == 0,
        "the benign container was flagged {benign_alerts} times: {:?}",
        all.iter()
            .filter(|a| benign_id.starts_with(&a.container))
            .collect::<Vec<_>>()
    );
    ensure!(
        sink.accepted.load(Ordering::Relaxed) > 0,
        "the attacker never reached the listener on {gateway}:{}",
        sink.port
    );
    drop(guard);
    Ok(())
}
