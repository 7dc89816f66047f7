//! The real node binary with only the proc connector source (`[source]
//! kind = "process"`, no Falco, no Tetragon, no cgroup collector) on this
//! machine's kernel and Docker engine: a non-root user in a container runs
//! a setuid-root binary, and the node raises the `setuid_root` rule alert
//! naming that container; a shell served on a socket (busybox `nc -e`)
//! raises `reverse_shell`; an ordinary container's execs raise nothing.
//!
//! Bounded: about 15 s; containers removed by a drop guard. Skipped without
//! Docker (or without root, which the proc connector needs) unless
//! `FEDMESH_REQUIRE_DOCKER=1` (CI, which runs as root).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fedmesh_node::alerting::alert::Alert;

use crate::docker::{Containers, IMAGE, NODE, docker_ok, docker_unavailable, ensure_image};

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn the_proc_connector_alone_catches_a_setuid_root_exec_in_a_container() {
    let unusable = docker_unavailable().or_else(|| (!is_root()).then(|| "not root".to_string()));
    if let Some(reason) = unusable {
        if std::env::var("FEDMESH_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("FEDMESH_REQUIRE_DOCKER=1 but the test cannot run: {reason}");
        }
        eprintln!("skipping the proc connector test: {reason}");
        return;
    }
    let _host = crate::host_containers();
    run().unwrap();
}

fn run() -> Result<()> {
    ensure_image()?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("node.toml"),
        "tenant = \"t\"\nnode = \"n\"\ndata_dir = \"data\"\nwindow_ms = 1000\n\
         [source]\nkind = \"process\"\n[alerts]\nstdout = false\nfile = \"alerts.jsonl\"\n",
    )?;
    let child = Command::new(NODE)
        .args(["run", "--config"])
        .arg(dir.path().join("node.toml"))
        .env("FEDMESH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the node")?;
    let _node = Kill(child);
    // The subscription is made at start; give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    let suffix = format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let benign = format!("fedmesh-e2e-plain-{suffix}");
    let victim = format!("fedmesh-e2e-suid-{suffix}");
    let mut guard = Containers(Vec::new());
    guard.0.push(benign.clone());
    let benign_id = docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &benign,
            IMAGE,
            "/bin/busybox",
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do ls / >/dev/null; id >/dev/null; sleep 1; done",
        ],
        Duration::from_secs(60),
    )?;
    guard.0.push(victim.clone());
    // As root, plant a setuid-root copy of busybox and a user; then, as
    // that user, run it (the misconfiguration a privilege escalation uses).
    let victim_id = docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &victim,
            IMAGE,
            "/bin/busybox",
            "sh",
            "-c",
            "echo 'root:x:0:0::/:/bin/sh' > /etc/passwd; echo 'u:x:1000:1000::/:/bin/sh' >> /etc/passwd; \
           cp /bin/busybox /suid; chmod 4755 /suid; sleep 2; \
           for i in 1 2 3; do su -s /bin/sh u -c '/suid true'; sleep 1; done; sleep 5",
        ],
        Duration::from_secs(60),
    )?;
    // A bind shell: busybox nc hands its socket to /bin/sh as stdin. The
    // client keeps the connection open a few seconds, as an operator's
    // session does: the source reads the new shell's fd 0 when the exec
    // event arrives, and a shell that has already exited by then (one
    // command, then EOF, within milliseconds) cannot be attributed.
    let shell = format!("fedmesh-e2e-shell-{suffix}");
    guard.0.push(shell.clone());
    let shell_id = docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &shell,
            IMAGE,
            "/bin/busybox",
            "sh",
            "-c",
            "nc -l -p 4444 -e /bin/sh & sleep 2; (echo id; sleep 6) | nc 127.0.0.1 4444; sleep 2",
        ],
        Duration::from_secs(60),
    )?;
    let alerts_path = dir.path().join("alerts.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut alerts: Vec<Alert> = Vec::new();
    while Instant::now() < deadline {
        alerts = std::fs::read_to_string(&alerts_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let seen = |id: &str| alerts.iter().any(|a| id.starts_with(&a.container));
        if seen(&victim_id) && seen(&shell_id) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let on_victim: Vec<&Alert> = alerts
        .iter()
        .filter(|a| !a.container.is_empty() && victim_id.starts_with(&a.container))
        .collect();
    ensure!(
        on_victim
            .iter()
            .any(|a| a.rules.iter().any(|r| r.id == "setuid_root")),
        "no setuid_root alert on the container: {alerts:?}"
    );
    let rule = on_victim
        .iter()
        .flat_map(|a| &a.rules)
        .find(|r| r.id == "setuid_root")
        .context("rule")?;
    ensure!(
        rule.event.contains("uid=1000") && rule.event.contains("target_uid=0"),
        "{rule:?}"
    );
    ensure!(
        alerts.iter().any(|a| !a.container.is_empty()
            && shell_id.starts_with(&a.container)
            && a.rules.iter().any(|r| r.id == "reverse_shell")),
        "no reverse_shell alert on the bind shell: {alerts:?}"
    );
    ensure!(
        !alerts
            .iter()
            .any(|a| !a.container.is_empty() && benign_id.starts_with(&a.container)),
        "the plain container was flagged: {alerts:?}"
    );
    Ok(())
}
