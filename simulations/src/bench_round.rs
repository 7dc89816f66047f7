//! `fedmesh-sim bench round`: time of whole federated rounds on the real
//! coordinator (gRPC + mutual TLS on loopback) with `nodes` clients and a
//! model of about `params` parameters, plaintext updates (k = 1) against
//! secure aggregation in buckets (k > 1), measured in the same run.
//!
//! The clients are hand-driven protocol clients (no training: each sends a
//! fixed random update of norm 0.5), so the figure is the protocol's cost:
//! TLS, encoding, key agreement, Shamir sharing, masking, signatures,
//! unmasking, aggregation, signing and storing the version. Clients and
//! coordinator share this machine's cores, so the client-side masking cost,
//! which a real fleet spreads over its nodes, is counted here in full.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use fedmesh_crypto::{CertSigner, CertVerifier, MeshCa, TenantId};
use serde::Serialize;

use crate::harness::{
    CoordinatorProcess, Hooks, Running, TENANT, client_loop, connect_retrying, hidden_for,
    status_kib,
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct RoundBench {
    /// Clients.
    pub nodes: usize,
    /// Approximate parameter count (the model is `[22 → h → 22]`).
    pub params: usize,
    /// Bucket sizes to compare (1 = plaintext).
    pub bucket_sizes: Vec<usize>,
    /// Committed rounds per bucket size.
    pub rounds: u64,
    /// Seed of the updates and of the clients' protocol randomness.
    pub seed: u64,
    /// Where the coordinator runs: in this process (CPU told apart by
    /// thread; memory shared with the clients) or as the
    /// `fedmesh-coordinator` binary in a child process (its own CPU and
    /// memory).
    pub coordinator: CoordinatorProcess,
    /// Progress lines on stderr (connections, every committed round).
    pub progress: bool,
    /// Longest wait for all clients to connect, and for each round.
    pub timeout: Duration,
}

impl RoundBench {
    /// `nodes` clients, `params` parameters, the given bucket sizes, in
    /// process, quiet, 10 minutes at most per step.
    pub fn new(nodes: usize, params: usize, bucket_sizes: Vec<usize>, rounds: u64) -> Self {
        Self {
            nodes,
            params,
            bucket_sizes,
            rounds,
            seed: 42,
            coordinator: CoordinatorProcess::InProcess,
            progress: false,
            timeout: Duration::from_secs(600),
        }
    }
}

/// One bucket size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RoundRow {
    /// Bucket size.
    pub k: usize,
    /// Clients.
    pub nodes: usize,
    /// Exact parameter count.
    pub params: usize,
    /// Rounds measured.
    pub rounds: usize,
    /// Median round time (open → commit, the coordinator's own figure),
    /// ms; the first round (which also waits for the connections) is
    /// left out when there are others.
    pub median_ms: f64,
    /// Fastest round, ms.
    pub min_ms: f64,
    /// Client → coordinator bytes per node per parameter.
    pub bytes_per_param: f64,
    /// Median time over the k = 1 median of the same run.
    pub ratio_to_plain: Option<f64>,
    /// Median CPU time per round of the coordinator (gRPC, TLS, checks,
    /// unmasking, aggregation, storage), ms. In process: every thread but
    /// the clients'; as a child process: all of its threads.
    pub coordinator_cpu_ms: f64,
    /// `coordinator_cpu_ms` per node, µs.
    pub coordinator_cpu_us_per_node: f64,
    /// Share of the coordinator's CPU spent in the kernel (system time:
    /// sockets, and on loopback the receiving side of the clients' TCP
    /// too), over the measured rounds; known for a child process only.
    pub coordinator_kernel_share: Option<f64>,
    /// Median CPU time per round of one client (all clients ÷ nodes), ms.
    pub node_cpu_ms: f64,
    /// Coordinator CPU over the k = 1 coordinator CPU of the same run.
    pub coordinator_cpu_ratio: Option<f64>,
    /// Seconds until every client had connected (TLS) to the coordinator.
    pub connect_s: f64,
    /// Whether the coordinator ran as its own process (else its memory
    /// figures include the clients').
    pub separate_process: bool,
    /// Coordinator resident memory before any client connected, KiB.
    pub rss_idle_kib: u64,
    /// Coordinator resident memory after the last round, every client
    /// still connected, KiB.
    pub rss_kib: u64,
    /// Coordinator peak resident memory (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// (`rss_kib` − `rss_idle_kib`) ÷ nodes, KiB.
    pub kib_per_node: f64,
}

/// Name of the client runtime's threads (their CPU time is the clients').
const CLIENT_THREAD: &str = "fm-bench-client";

/// Pause between rounds (the coordinator's `round_interval_ms`), so every
/// round's CPU falls between two reads of the counters.
const ROUND_GAP_MS: u64 = 250;

/// Clients connecting (TLS handshake) at once: a real fleet connects from
/// many addresses over minutes; this keeps the bench's one address from
/// storming the accept loop.
const CONNECTING_AT_ONCE: usize = 64;

/// CPU time (ns) a process's threads used between two samples: (all,
/// threads named [`CLIENT_THREAD`]). Kept per thread, so a thread that
/// exits between two samples (a blocking-pool thread gone idle) takes
/// nothing away from the total; only its time since the last sample is
/// missed.
#[derive(Debug, Default)]
struct CpuMeter {
    pid: Option<u32>,
    seen: std::collections::HashMap<String, u64>,
}

impl CpuMeter {
    fn new(pid: Option<u32>) -> Result<Self> {
        let mut m = Self {
            pid,
            seen: Default::default(),
        };
        m.sample()?;
        Ok(m)
    }

    /// CPU used since the previous sample.
    fn sample(&mut self) -> Result<(u64, u64)> {
        let mut used = (0u64, 0u64);
        let mut seen = std::collections::HashMap::with_capacity(self.seen.len());
        for (tid, ns, client) in thread_cpu_ns(self.pid)? {
            let d = ns.saturating_sub(self.seen.get(&tid).copied().unwrap_or(0));
            used.0 += d;
            if client {
                used.1 += d;
            }
            seen.insert(tid, ns);
        }
        self.seen = seen;
        Ok(used)
    }
}

/// CPU time (ns) of each of process `pid`'s threads so far (None = this
/// process), and whether it is a [`CLIENT_THREAD`]. Read from
/// `/proc/<pid>/task/*/schedstat` (run time in ns, first field).
fn thread_cpu_ns(pid: Option<u32>) -> Result<Vec<(String, u64, bool)>> {
    let tasks = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_string(),
    };
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let task = task?;
        let tid = task.file_name().to_string_lossy().into_owned();
        let dir = task.path();
        let (Ok(stat), Ok(comm)) = (
            std::fs::read_to_string(dir.join("schedstat")),
            std::fs::read_to_string(dir.join("comm")),
        ) else {
            continue; // the thread exited meanwhile
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("unexpected schedstat line {stat:?}"))?;
        // `comm` is truncated to 15 bytes.
        let client = CLIENT_THREAD.starts_with(comm.trim_end()) && !comm.trim_end().is_empty();
        threads.push((tid, ns, client));
    }
    Ok(threads)
}

/// User and system CPU time (clock ticks) of process `pid`, from
/// `/proc/<pid>/stat` (fields 14 and 15, after the command in parentheses).
fn user_sys_ticks(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected {path}"))?;
    let field = |i: usize| {
        rest.split_whitespace()
            .nth(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("unexpected {path}"))
    };
    // After ')': state is field 3, so utime (14) and stime (15) are the
    // 12th and 13th (0-based 11 and 12).
    Ok((field(11)?, field(12)?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Raises this process's soft limit on open files to `want` (or the hard
/// limit, raising the hard limit too where allowed); returns the soft limit
/// in force. Every client holds a socket, and so does the coordinator for
/// each of them (children inherit the limit).
pub fn raise_open_files(want: u64) -> Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok(soft);
    }
    let hard = cur.maximum.unwrap_or(u64::MAX);
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, go to
    // the hard limit.
    let raised = Rlimit {
        current: Some(want),
        maximum: Some(hard.max(want)),
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        return Ok(want);
    }
    let capped = Rlimit {
        current: Some(hard.min(want)),
        maximum: cur.maximum,
    };
    setrlimit(Resource::Nofile, capped).context("raising RLIMIT_NOFILE")?;
    Ok(hard.min(want))
}

/// The coordinator config of one bucket size.
fn config_text(
    b: &RoundBench,
    k: usize,
    data: &Path,
    tls: [&str; 3],
    listen: &str,
    http: Option<&str>,
) -> String {
    let http = http.map_or(String::new(), |m| format!("metrics_listen = \"{m}\"\n"));
    // Every client dials from 127.0.0.1: the per-address handshake cap is
    // the global one here (a fleet spreads over many addresses). The
    // clients' two threads answer the coordinator's HTTP/2 pings between
    // thousands of clients' crypto, so the ping timeout is 2 minutes (a
    // node answers from its own CPU). Rounds are ROUND_GAP_MS apart: the
    // bench reads CPU counters after each commit it observes, and with
    // back-to-back rounds a fast round could commit before that read, so
    // its CPU went to no round (a 6-node round takes about 2 ms).
    format!(
        "listen = \"{listen}\"\ndata_dir = '{data}'\n{http}\
         [tls]\nca_cert = '{ca}'\ncert = '{cert}'\nkey = '{key}'\n\
         [limits]\nmax_handshakes = 256\nmax_handshakes_per_address = 256\n\
         http2_keepalive_timeout_ms = 120000\n\
         [[tenants]]\nname = \"{TENANT}\"\nmin_nodes = {n}\nquorum = {n}\n\
         round_timeout_ms = {t}\nround_interval_ms = {gap}\nmax_rounds = {r}\n\
         max_update_norm = 10.0\n[tenants.model]\nhidden = [{h}]\n\
         [tenants.secure]\nbucket_size = {k}\nclip_norm = 1.0\nphase_timeout_ms = {t}\n",
        data = data.display(),
        ca = tls[0],
        cert = tls[1],
        key = tls[2],
        n = b.nodes,
        gap = ROUND_GAP_MS,
        r = b.rounds,
        h = hidden_for(b.params),
        t = b.timeout.as_millis(),
    )
}

/// `fedmesh_round_duration_seconds` (sum, count) from a child
/// coordinator's `/metrics`.
async fn round_durations(http: &str) -> Result<(f64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.take(4 << 20).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("/metrics did not answer within 10 s")??;
    let text = String::from_utf8_lossy(&buf);
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("tenant=\"{TENANT}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Ok((
        value("fedmesh_round_duration_seconds_sum").unwrap_or(0.0),
        value("fedmesh_round_duration_seconds_count").unwrap_or(0.0) as u64,
    ))
}

struct Identity {
    name: String,
    tls: rustls::ClientConfig,
    signer: Arc<CertSigner>,
}

/// Issues the clients' certificates (in parallel: Ed25519 keys and
/// signatures, about a millisecond each).
fn identities(ca: &MeshCa, nodes: usize) -> Result<Vec<Identity>> {
    use rayon::prelude::*;
    let now = time::OffsetDateTime::now_utc();
    let tenant: TenantId = TENANT.parse()?;
    (0..nodes)
        .into_par_iter()
        .map(|i| {
            let name = format!("n{i:04}");
            let c = ca.issue_node(&tenant, &name.parse()?, now, 1)?;
            let tls = fedmesh_crypto::tls::client_config(ca.cert_pem(), &c.cert_pem, &c.key_pem)?;
            let signer = Arc::new(CertSigner::from_pem(&c.cert_pem, &c.key_pem)?);
            Ok(Identity { name, tls, signer })
        })
        .collect()
}

fn say(on: bool, line: std::fmt::Arguments<'_>) {
    if on {
        eprintln!("[bench round] {line}");
    }
}

/// Runs the benchmark; prints nothing on stdout (progress lines on stderr
/// when asked).
pub async fn run_round_bench(b: &RoundBench) -> Result<Vec<RoundRow>> {
    if b.nodes < 2 || b.rounds == 0 || b.bucket_sizes.is_empty() {
        bail!("need at least 2 nodes, 1 round and one bucket size");
    }
    if let Some(k) = b.bucket_sizes.iter().find(|k| **k == 0 || **k > b.nodes) {
        bail!("bucket size {k} must be between 1 and the number of nodes");
    }
    // A socket per client here, and one per client in the coordinator:
    // in this process too when it runs here.
    let per_client = match b.coordinator {
        CoordinatorProcess::InProcess => 2,
        CoordinatorProcess::Binary(_) => 1,
    };
    let want_files = per_client * b.nodes as u64 + 1024;
    let files = raise_open_files(want_files)?;
    if files < want_files {
        bail!(
            "{} clients need about {want_files} open files, the limit is {files} \
             (raise it with `ulimit -n`)",
            b.nodes
        );
    }
    let h = hidden_for(b.params);
    let params = fedmesh_proto::model::param_count(22, &[h]).unwrap_or(0);
    let now = time::OffsetDateTime::now_utc();
    let ca = MeshCa::generate("bench CA", now, 1)?;
    let t0 = Instant::now();
    let ids = Arc::new(identities(&ca, b.nodes)?);
    say(
        b.progress,
        format_args!(
            "{} client certificates in {:.1} s",
            b.nodes,
            t0.elapsed().as_secs_f64()
        ),
    );
    let verifier = Arc::new(CertVerifier::new(ca.cert_pem())?);
    let mut rows = Vec::new();
    for &k in &b.bucket_sizes {
        rows.push(run_one(b, k, params, &ca, &ids, &verifier).await?);
    }
    if let Some(plain) = rows.iter().find(|r| r.k == 1).cloned() {
        for r in &mut rows {
            r.ratio_to_plain = Some(r.median_ms / plain.median_ms);
            r.coordinator_cpu_ratio = Some(r.coordinator_cpu_ms / plain.coordinator_cpu_ms);
        }
    }
    Ok(rows)
}

/// One bucket size: a fresh coordinator and store, every client connected,
/// `rounds` committed rounds.
async fn run_one(
    b: &RoundBench,
    k: usize,
    params: usize,
    ca: &MeshCa,
    ids: &Arc<Vec<Identity>>,
    verifier: &Arc<CertVerifier>,
) -> Result<RoundRow> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let http = std::cell::RefCell::new(None::<String>);
    let text = |data: &Path, tls: [&str; 3], listen: &str, h: Option<&str>| {
        *http.borrow_mut() = h.map(str::to_string);
        config_text(b, k, data, tls, listen, h)
    };
    let (mut coordinator, addr) =
        Running::start(&b.coordinator, &text, ca, dir.path(), &data).await?;
    let http = http.into_inner();
    let pid = coordinator.pid();
    let separate_process = pid.is_some();
    let rss_idle_kib = status_kib(pid, "VmRSS")?;
    // The clients get their own runtime (threads named CLIENT_THREAD), so
    // the CPU time of the coordinator and of the clients can be told apart
    // in process; both still share this machine's cores.
    let runtime = ClientRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(CLIENT_THREAD)
            .enable_all()
            .build()?,
    ));
    let client_rt = runtime.handle()?;
    let connected = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
    let (version_tx, mut version_rx) = tokio::sync::watch::channel(0u64);
    let mut version_tx = Some(version_tx);
    let mut clients = Vec::with_capacity(b.nodes);
    for i in 0..b.nodes {
        let connector = fedmesh_node::federation::client::Connector::new(
            &addr.to_string(),
            "localhost",
            ids[i].tls.clone(),
            fedmesh_proto::DEFAULT_MAX_MESSAGE_BYTES,
        )?;
        let seed = b.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k as u64;
        let hooks = Hooks {
            version: version_tx.take(),
            sent: Some(sent.clone()),
        };
        let (ids, verifier, gate, connected) = (
            ids.clone(),
            verifier.clone(),
            gate.clone(),
            connected.clone(),
        );
        clients.push(client_rt.spawn(async move {
            let client = {
                let _permit = gate.acquire().await?;
                connect_retrying(&connector, i as u64).await?
            };
            connected.fetch_add(1, Ordering::Relaxed);
            let id = &ids[i];
            client_loop(
                client,
                id.name.clone(),
                id.signer.clone(),
                verifier,
                seed,
                hooks,
            )
            .await
        }));
    }
    let start = Instant::now();
    let failed = |clients: &mut Vec<tokio::task::JoinHandle<Result<()>>>| -> Option<String> {
        let i = clients.iter().position(|c| c.is_finished())?;
        let c = clients.swap_remove(i);
        let r = futures_now(c);
        Some(format!("client stopped: {r}"))
    };
    // Connections.
    let mut last_say = Instant::now();
    loop {
        let n = connected.load(Ordering::Relaxed);
        if n >= b.nodes {
            break;
        }
        if let Some(e) = failed(&mut clients) {
            bail!(
                "k = {k}: {e} ({n} of {} connected)\n{}",
                b.nodes,
                coordinator.log_tail()
            );
        }
        coordinator.check_alive()?;
        if start.elapsed() > b.timeout {
            bail!(
                "k = {k}: {n} of {} clients connected within {:.0} s",
                b.nodes,
                b.timeout.as_secs_f64()
            );
        }
        if last_say.elapsed() > Duration::from_secs(5) {
            say(
                b.progress,
                format_args!(
                    "k = {k}: {n}/{} clients connected ({:.0} s)",
                    b.nodes,
                    start.elapsed().as_secs_f64()
                ),
            );
            last_say = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = start.elapsed().as_secs_f64();
    say(
        b.progress,
        format_args!(
            "k = {k}: {} clients connected in {connect_s:.1} s; coordinator RSS {:.1} MiB",
            b.nodes,
            status_kib(pid, "VmRSS")? as f64 / 1024.0
        ),
    );
    let mut times = Vec::new();
    let mut coordinator_cpu = Vec::new();
    let mut client_cpu = Vec::new();
    let mut own_cpu = CpuMeter::new(None)?;
    let mut child_cpu = pid.map(|p| CpuMeter::new(Some(p))).transpose()?;
    let mut durations = (0.0f64, 0u64);
    let mut version = 0u64;
    // User and system ticks of the measured rounds (child only).
    let mut ticks = (0u64, 0u64);
    let mut last_ticks = pid.map(user_sys_ticks).transpose()?;
    for round in 0..b.rounds {
        let round_start = Instant::now();
        let in_process_ms = loop {
            if let Some(e) = failed(&mut clients) {
                bail!(
                    "k = {k}, round {}: {e}\n{}",
                    round + 1,
                    coordinator.log_tail()
                );
            }
            coordinator.check_alive()?;
            if round_start.elapsed() > b.timeout {
                bail!(
                    "k = {k}: round {} did not commit within {:.0} s",
                    round + 1,
                    b.timeout.as_secs_f64()
                );
            }
            let tick = Duration::from_millis(200);
            if let Some(rx) = coordinator.summaries() {
                match tokio::time::timeout(tick, rx.recv()).await {
                    Err(_) => continue,
                    Ok(Ok(s)) => break Some(s.duration.as_secs_f64() * 1e3),
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
            // A child: the first client reports the versions it hears of.
            if let Ok(r) = tokio::time::timeout(tick, version_rx.changed()).await {
                r.context("the reporting client stopped")?;
                let v = *version_rx.borrow_and_update();
                if v > version {
                    version = v;
                    break None;
                }
            }
        };
        let (all, cl) = own_cpu.sample()?;
        let (coord_ns, client_ns) = match child_cpu.as_mut() {
            Some(child) => (child.sample()?.0, cl),
            None => (all.saturating_sub(cl), cl),
        };
        let ms = match (in_process_ms, &http) {
            (Some(ms), _) => ms,
            (None, Some(h)) => {
                // A client can hear of the commit before the coordinator
                // has put the round's duration in its histogram: wait for
                // the new sample (bounded) rather than read 0 ms.
                let mut d = round_durations(h).await?;
                for _ in 0..100 {
                    if d.1 > durations.1 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    d = round_durations(h).await?;
                }
                let ms = if d.1 > durations.1 {
                    (d.0 - durations.0) * 1e3 / (d.1 - durations.1) as f64
                } else {
                    f64::NAN
                };
                durations = d;
                ms
            }
            (None, None) => f64::NAN,
        };
        say(
            b.progress,
            format_args!(
                "k = {k}: round {}/{} committed in {ms:.0} ms; coordinator CPU {:.0} ms \
                 ({:.1} µs/node), RSS {:.1} MiB",
                round + 1,
                b.rounds,
                coord_ns as f64 / 1e6,
                coord_ns as f64 / 1e3 / b.nodes as f64,
                status_kib(pid, "VmRSS")? as f64 / 1024.0
            ),
        );
        let now_ticks = pid.map(user_sys_ticks).transpose()?;
        // The first round also waits for the joins and opens the
        // streams; it counts only when it is the only one.
        if let (Some(a), Some(z)) = (last_ticks, now_ticks)
            && (round > 0 || b.rounds == 1)
        {
            ticks.0 += z.0.saturating_sub(a.0);
            ticks.1 += z.1.saturating_sub(a.1);
        }
        last_ticks = now_ticks;
        if round > 0 || b.rounds == 1 {
            times.push(ms);
            coordinator_cpu.push(coord_ns as f64 / 1e6);
            client_cpu.push(client_ns as f64 / 1e6 / b.nodes as f64);
        }
    }
    let rss_kib = status_kib(pid, "VmRSS")?;
    let peak_rss_kib = status_kib(pid, "VmHWM")?;
    for c in clients {
        c.abort();
    }
    coordinator.stop_and_verify(&data).await?;
    let min_ms = times.iter().copied().fold(f64::INFINITY, f64::min);
    let cpu = median(coordinator_cpu);
    Ok(RoundRow {
        k,
        nodes: b.nodes,
        params,
        rounds: times.len(),
        median_ms: median(times),
        min_ms,
        bytes_per_param: sent.load(Ordering::Relaxed) as f64
            / (b.rounds as f64 * b.nodes as f64 * params as f64),
        ratio_to_plain: None,
        coordinator_cpu_ms: cpu,
        coordinator_cpu_us_per_node: cpu * 1e3 / b.nodes as f64,
        coordinator_kernel_share: (separate_process && ticks.0 + ticks.1 > 0)
            .then(|| ticks.1 as f64 / (ticks.0 + ticks.1) as f64),
        node_cpu_ms: median(client_cpu),
        coordinator_cpu_ratio: None,
        connect_s,
        separate_process,
        rss_idle_kib,
        rss_kib,
        peak_rss_kib,
        kib_per_node: rss_kib.saturating_sub(rss_idle_kib) as f64 / b.nodes as f64,
    })
}

/// The clients' runtime, shut down in the background when dropped (also
/// on an early error return: a runtime may not be dropped, blocking, from
/// inside the harness's own runtime).
struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    fn handle(&self) -> Result<tokio::runtime::Handle> {
        self.0
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(|| anyhow!("client runtime already shut down"))
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The outcome of a finished client task, as text.
fn futures_now(c: tokio::task::JoinHandle<Result<()>>) -> String {
    use futures::FutureExt;
    match c.now_or_never() {
        Some(Ok(Ok(()))) => "its round stream ended".into(),
        Some(Ok(Err(e))) => format!("{e:#}"),
        Some(Err(e)) => format!("task failed: {e}"),
        None => "still running".into(),
    }
}

/// The results as a Markdown table.
pub fn markdown(rows: &[RoundRow]) -> String {
    let whose = if rows.iter().all(|r| r.separate_process) {
        "coordinator"
    } else {
        "coordinator + clients"
    };
    let mut out = format!(
        "| k | nodes | params | rounds | median round ms | fastest ms | × k = 1 | coordinator CPU ms/round | µs/node/round | kernel share | × k = 1 | client CPU ms/round/node | bytes/param/node | connect s | {whose} RSS idle MiB | RSS MiB | peak MiB | KiB/node |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ratio = |x: Option<f64>| x.map_or_else(|| "—".to_string(), |x| format!("{x:.2}"));
    let mib = |k: u64| k as f64 / 1024.0;
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r.k,
            r.nodes,
            r.params,
            r.rounds,
            r.median_ms,
            r.min_ms,
            ratio(r.ratio_to_plain),
            r.coordinator_cpu_ms,
            r.coordinator_cpu_us_per_node,
            r.coordinator_kernel_share
                .map_or_else(|| "—".to_string(), |x| format!("{:.0} %", x * 100.0)),
            ratio(r.coordinator_cpu_ratio),
            r.node_cpu_ms,
            r.bytes_per_param,
            r.connect_s,
            mib(r.rss_idle_kib),
            mib(r.rss_kib),
            mib(r.peak_rss_kib),
            r.kib_per_node,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run in process: both bucket sizes commit their rounds over
    /// real gRPC + mTLS, and every figure the table prints is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plaintext_and_secure_rounds_commit_and_report_their_figures() {
        let b = RoundBench {
            timeout: Duration::from_secs(120),
            ..RoundBench::new(6, 500, vec![1, 3], 2)
        };
        let rows = run_round_bench(&b).await.unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            // The first round (connections, joins) is left out.
            assert_eq!((r.nodes, r.rounds), (6, 1), "{r:?}");
            assert!(r.median_ms.is_finite() && r.median_ms > 0.0, "{r:?}");
            assert!(r.coordinator_cpu_ms > 0.0 && r.node_cpu_ms > 0.0, "{r:?}");
            assert!(r.rss_kib > 0 && r.peak_rss_kib >= r.rss_kib, "{r:?}");
            assert!(!r.separate_process);
            assert_eq!(
                r.params,
                fedmesh_proto::model::param_count(22, &[11]).unwrap()
            );
        }
        // 4 bytes per parameter in the clear; masked inputs are 4 bytes a
        // word too, plus the keys, shares and unmasking.
        assert!((4.0..4.5).contains(&rows[0].bytes_per_param), "{rows:?}");
        assert!(
            rows[1].bytes_per_param > rows[0].bytes_per_param,
            "{rows:?}"
        );
        assert_eq!(rows[0].ratio_to_plain, Some(1.0));
        let table = markdown(&rows);
        assert_eq!(table.lines().count(), 4, "{table}");
    }
}
