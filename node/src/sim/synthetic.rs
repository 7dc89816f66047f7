//! Synthetic telemetry: benign workload profiles and injected attacks.
//!
//! A [`SyntheticSource`] simulates a set of containers, each with a
//! [`Profile`] and its own base levels drawn from the seed, and produces the
//! [`Event`]s of one window at a time (two counter samples per container per
//! window, plus exec / connect / kernel events). Attacks ([`AttackKind`]) are
//! injected per container over a range of windows and change the telemetry
//! the way each kind's signature in [`AttackKind`] describes; their intensity varies
//! per window (about a quarter of attacked windows are subtle).
//!
//! Determinism: everything is drawn from `ChaCha8Rng` streams derived from the
//! seed. Each container has a *benign* stream and a separate *attack* stream,
//! so injecting an attack never changes the benign behaviour of any container
//! (attacked and clean runs with the same seed are directly comparable).
//!
//! Benign profiles:
//! - `web`: 0.01–0.06 cores with request-correlated bursts, 80–300 MiB flat
//!   memory, 5–60 KiB/s network following the same load factor, a few
//!   connects to stable internal destinations (DB, DNS, API), almost no execs.
//! - `database`: 0.1–0.4 cores, 1–4 GiB memory, heavy disk I/O, moderate
//!   network, very rare outbound connects (replica).
//! - `batch`: periodic CPU bursts (1–1.8 cores) every 6–12 windows with disk
//!   I/O, uploads and 1–4 execs from a fixed binary set; idle otherwise.
//! - `ml`: high steady CPU (2.5–3.8 of 4 cores, some throttling), 4–12 GiB
//!   memory, data-loading disk reads, very little network: CPU-heavy like a
//!   miner but different in memory, I/O and network.
//!
//! Every container execs its profile's binaries in its first window
//! (container start-up), which establishes its known-binary set.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::detection::features::{FeatureWindow, WindowBuilder};
use crate::telemetry::{ContainerId, Event, KernelEventKind, ResourceCounters};

/// Errors of the synthetic source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyntheticError {
    /// The container id is not part of the source.
    #[error("unknown container {0:?}")]
    UnknownContainer(String),
    /// Attacks need at least one window.
    #[error("attack duration must be at least one window")]
    ZeroDuration,
    /// Window length must be positive.
    #[error("window length must be positive")]
    ZeroWindow,
    /// Unknown profile name.
    #[error("unknown profile {0:?} (expected web, database, batch or ml)")]
    UnknownProfile(String),
    /// Unknown attack name.
    #[error("unknown attack kind {0:?}")]
    UnknownAttack(String),
}

/// Benign workload profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Web server / microservice.
    Web,
    /// Database server.
    Database,
    /// Periodic batch job.
    Batch,
    /// ML training / inference.
    Ml,
}

impl Profile {
    /// All profiles.
    pub const ALL: [Profile; 4] = [Profile::Web, Profile::Database, Profile::Batch, Profile::Ml];

    fn name(self) -> &'static str {
        match self {
            Profile::Web => "web",
            Profile::Database => "database",
            Profile::Batch => "batch",
            Profile::Ml => "ml",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = SyntheticError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| SyntheticError::UnknownProfile(s.to_string()))
    }
}

/// Attack behaviour that can be injected into a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// Crypto miner: CPU to limit, throttling, memory, pool connection.
    Cryptojacking,
    /// Shell execs plus a connection to a new external IP.
    ReverseShell,
    /// setuid/capset events and setuid binary execs.
    PrivilegeEscalation,
    /// mount/unshare/setns/ptrace and release_agent writes.
    EscapeAttempt,
    /// Hundreds of connects to distinct ports, tiny packets.
    PortScan,
    /// tx surge to a new destination, preceded by reads.
    Exfiltration,
    /// pids to thousands, CPU to limit.
    ForkBomb,
}

impl AttackKind {
    /// All attack kinds.
    pub const ALL: [AttackKind; 7] = [
        AttackKind::Cryptojacking,
        AttackKind::ReverseShell,
        AttackKind::PrivilegeEscalation,
        AttackKind::EscapeAttempt,
        AttackKind::PortScan,
        AttackKind::Exfiltration,
        AttackKind::ForkBomb,
    ];

    fn name(self) -> &'static str {
        match self {
            AttackKind::Cryptojacking => "cryptojacking",
            AttackKind::ReverseShell => "reverse_shell",
            AttackKind::PrivilegeEscalation => "privilege_escalation",
            AttackKind::EscapeAttempt => "escape_attempt",
            AttackKind::PortScan => "port_scan",
            AttackKind::Exfiltration => "exfiltration",
            AttackKind::ForkBomb => "fork_bomb",
        }
    }
}

impl fmt::Display for AttackKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttackKind {
    type Err = SyntheticError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        AttackKind::ALL
            .into_iter()
            .find(|k| k.name() == norm)
            .ok_or_else(|| SyntheticError::UnknownAttack(s.to_string()))
    }
}

/// Per-container base levels, drawn once from the container's benign stream.
#[derive(Clone, Debug)]
struct Base {
    cpu: f64,
    cpu_limit: f64,
    mem_mib: f64,
    io_r: f64,
    io_w: f64,
    rx: f64,
    tx: f64,
    rx_pkt: f64,
    tx_pkt: f64,
    pids: f64,
    period: u64,
    burst_len: u64,
    phase: u64,
    binaries: Vec<&'static str>,
    dsts: Vec<(IpAddr, u16)>,
}

/// What a container does in one window (rates per second, KiB for bytes).
#[derive(Clone, Debug, Default)]
struct Plan {
    cpu: f64,
    throttle: Option<f64>,
    mem_mib: f64,
    io_r: f64,
    io_w: f64,
    rx: f64,
    tx: f64,
    rx_pkt: f64,
    tx_pkt: f64,
    /// Extra packets per second with their own size (port scans, tiny packets).
    extra_tx_pps: f64,
    extra_tx_pkt: f64,
    extra_rx_pps: f64,
    extra_rx_pkt: f64,
    pids: f64,
    execs: Vec<String>,
    connects: Vec<(IpAddr, u16)>,
    kernel: Vec<KernelEventKind>,
}

#[derive(Clone, Debug)]
struct Injected {
    kind: AttackKind,
    start: u64,
    duration: u64,
    ip: IpAddr,
    port: u16,
    binary: &'static str,
    heavy: bool,
    scan_targets: Vec<IpAddr>,
}

impl Injected {
    fn active(&self, w: u64) -> bool {
        w >= self.start && w - self.start < self.duration
    }
}

#[derive(Clone, Debug)]
struct SimContainer {
    id: ContainerId,
    profile: Profile,
    base: Base,
    rng: ChaCha8Rng,
    attack_rng: ChaCha8Rng,
    counters: ResourceCounters,
    attacks: Vec<Injected>,
}

/// Deterministic generator of container telemetry with optional attacks.
#[derive(Clone, Debug)]
pub struct SyntheticSource {
    window_ms: u64,
    next: u64,
    containers: Vec<SimContainer>,
}

fn noise(rng: &mut ChaCha8Rng, sigma: f64) -> f64 {
    let z: f64 = rng.sample(StandardNormal);
    (sigma * z.clamp(-4.0, 4.0)).exp()
}

fn uni(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn internal_ip(rng: &mut ChaCha8Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        rng.random_range(0..=255),
        rng.random_range(0..=255),
        rng.random_range(1..=254),
    ))
}

fn external_ip(rng: &mut ChaCha8Rng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        rng.random_range(45..=223),
        rng.random_range(0..=255),
        rng.random_range(0..=255),
        rng.random_range(1..=254),
    ))
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T], default: T) -> T {
    if items.is_empty() {
        default
    } else {
        items[rng.random_range(0..items.len())]
    }
}

fn draw_base(profile: Profile, rng: &mut ChaCha8Rng) -> Base {
    let period = rng.random_range(6..=12u64);
    let mut b = Base {
        cpu: 0.0,
        cpu_limit: 1.0,
        mem_mib: 0.0,
        io_r: 0.0,
        io_w: 0.0,
        rx: 0.0,
        tx: 0.0,
        rx_pkt: uni(rng, 300.0, 800.0),
        tx_pkt: uni(rng, 700.0, 1400.0),
        pids: 0.0,
        period,
        burst_len: rng.random_range(2..=4u64),
        phase: rng.random_range(0..period),
        binaries: Vec::new(),
        dsts: Vec::new(),
    };
    match profile {
        Profile::Web => {
            b.cpu = uni(rng, 0.01, 0.06);
            b.cpu_limit = 1.0;
            b.mem_mib = uni(rng, 80.0, 300.0);
            b.io_r = uni(rng, 0.2, 4.0);
            b.io_w = uni(rng, 2.0, 20.0);
            b.rx = uni(rng, 5.0, 40.0);
            b.tx = uni(rng, 10.0, 60.0);
            b.pids = uni(rng, 4.0, 30.0);
            b.binaries = vec!["/usr/sbin/nginx", "/usr/local/bin/app"];
            b.dsts = vec![
                (internal_ip(rng), 5432),
                (internal_ip(rng), 53),
                (internal_ip(rng), 443),
            ];
        }
        Profile::Database => {
            b.cpu = uni(rng, 0.1, 0.4);
            b.cpu_limit = 2.0;
            b.mem_mib = uni(rng, 1024.0, 4096.0);
            b.io_r = uni(rng, 200.0, 2000.0);
            b.io_w = uni(rng, 50.0, 600.0);
            b.rx = uni(rng, 20.0, 150.0);
            b.tx = uni(rng, 30.0, 300.0);
            b.pids = uni(rng, 20.0, 60.0);
            b.binaries = vec!["/usr/lib/postgresql/bin/postgres"];
            b.dsts = vec![(internal_ip(rng), 5432)];
        }
        Profile::Batch => {
            b.cpu = uni(rng, 1.0, 1.8);
            b.cpu_limit = 2.0;
            b.mem_mib = uni(rng, 200.0, 1500.0);
            b.io_r = uni(rng, 500.0, 5000.0);
            b.io_w = uni(rng, 200.0, 2000.0);
            b.rx = uni(rng, 20.0, 200.0);
            b.tx = uni(rng, 100.0, 1000.0);
            b.pids = uni(rng, 3.0, 8.0);
            b.binaries = vec![
                "/usr/bin/python3",
                "/bin/gzip",
                "/bin/tar",
                "/usr/local/bin/aws",
            ];
            b.dsts = vec![(internal_ip(rng), 443), (internal_ip(rng), 53)];
        }
        Profile::Ml => {
            b.cpu = uni(rng, 2.5, 3.8);
            b.cpu_limit = 4.0;
            b.mem_mib = uni(rng, 4096.0, 12288.0);
            b.io_r = uni(rng, 500.0, 5000.0);
            b.io_w = uni(rng, 10.0, 100.0);
            b.rx = uni(rng, 1.0, 10.0);
            b.tx = uni(rng, 0.5, 5.0);
            b.pids = uni(rng, 20.0, 60.0);
            b.binaries = vec!["/usr/bin/python3"];
            b.dsts = vec![(internal_ip(rng), 443)];
        }
    }
    b
}

fn benign_plan(c: &mut SimContainer, w: u64) -> Plan {
    let b = &c.base;
    let rng = &mut c.rng;
    let mut p = Plan {
        rx_pkt: b.rx_pkt * noise(rng, 0.1),
        tx_pkt: b.tx_pkt * noise(rng, 0.1),
        ..Plan::default()
    };
    if w == 0 {
        p.execs = b.binaries.iter().map(|s| s.to_string()).collect();
    }
    match c.profile {
        Profile::Web => {
            let mut load = noise(rng, 0.35);
            if rng.random_bool(0.1) {
                load *= uni(rng, 2.0, 4.0);
            }
            p.cpu = b.cpu * load * noise(rng, 0.2);
            p.mem_mib = b.mem_mib * (1.0 + 0.02 * rng.sample::<f64, _>(StandardNormal));
            p.io_r = b.io_r * noise(rng, 0.5);
            p.io_w = b.io_w * load.sqrt() * noise(rng, 0.3);
            p.rx = b.rx * load * noise(rng, 0.2);
            p.tx = b.tx * load * noise(rng, 0.2);
            p.pids = b.pids + f64::from(rng.random_range(-2i32..=2));
            let n = (load * uni(rng, 0.0, 3.0)).round() as usize;
            for _ in 0..n {
                let d = pick(rng, &b.dsts, (IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
                p.connects.push(d);
            }
            if w > 0 && rng.random_bool(0.02) {
                p.execs.push("/usr/local/bin/app".to_string());
            }
        }
        Profile::Database => {
            let load = noise(rng, 0.3);
            p.cpu = b.cpu * load * noise(rng, 0.15);
            p.mem_mib = b.mem_mib * (1.0 + 0.03 * rng.sample::<f64, _>(StandardNormal));
            p.io_r = b.io_r * load * noise(rng, 0.3);
            p.io_w = b.io_w * load * noise(rng, 0.3);
            p.rx = b.rx * load * noise(rng, 0.2);
            p.tx = b.tx * load * noise(rng, 0.2);
            p.pids = b.pids + f64::from(rng.random_range(-3i32..=3));
            if rng.random_bool(0.1) {
                let d = pick(rng, &b.dsts, (IpAddr::V4(Ipv4Addr::LOCALHOST), 5432));
                p.connects.push(d);
            }
        }
        Profile::Batch => {
            let in_burst = (w + b.phase) % b.period < b.burst_len;
            if in_burst {
                p.cpu = b.cpu * noise(rng, 0.1);
                p.mem_mib = b.mem_mib * 1.5 * noise(rng, 0.05);
                p.io_r = b.io_r * noise(rng, 0.3);
                p.io_w = b.io_w * noise(rng, 0.3);
                p.rx = b.rx * noise(rng, 0.3);
                p.tx = b.tx * noise(rng, 0.3);
                p.pids = b.pids + f64::from(rng.random_range(10..=40));
                let n = rng.random_range(1..=4usize);
                for _ in 0..n {
                    let bin = pick(rng, &b.binaries, "/usr/bin/python3");
                    p.execs.push(bin.to_string());
                }
                for _ in 0..rng.random_range(1..=3usize) {
                    let d = pick(rng, &b.dsts, (IpAddr::V4(Ipv4Addr::LOCALHOST), 443));
                    p.connects.push(d);
                }
            } else {
                p.cpu = 0.02 * noise(rng, 0.3);
                p.mem_mib = b.mem_mib * noise(rng, 0.03);
                p.io_r = 2.0 * noise(rng, 0.5);
                p.io_w = 5.0 * noise(rng, 0.5);
                p.rx = 1.0 * noise(rng, 0.3);
                p.tx = 1.0 * noise(rng, 0.3);
                p.pids = b.pids;
            }
        }
        Profile::Ml => {
            p.cpu = (b.cpu * noise(rng, 0.04)).min(b.cpu_limit * 0.97);
            p.mem_mib = b.mem_mib * (1.0 + 0.01 * rng.sample::<f64, _>(StandardNormal));
            p.io_r = b.io_r * noise(rng, 0.3);
            p.io_w = b.io_w * noise(rng, 0.3);
            p.rx = b.rx * noise(rng, 0.3);
            p.tx = b.tx * noise(rng, 0.3);
            p.pids = b.pids + f64::from(rng.random_range(-2i32..=2));
            if rng.random_bool(0.05) {
                let d = pick(rng, &b.dsts, (IpAddr::V4(Ipv4Addr::LOCALHOST), 443));
                p.connects.push(d);
            }
        }
    }
    p
}

/// Per-window attack intensity in (0, 1]: about a quarter of windows are subtle.
fn intensity(rng: &mut ChaCha8Rng) -> f64 {
    if rng.random_bool(0.25) {
        uni(rng, 0.1, 0.4)
    } else {
        uni(rng, 0.5, 1.0)
    }
}

fn apply_attack(p: &mut Plan, a: &Injected, w: u64, base: &Base, rng: &mut ChaCha8Rng) {
    let i = intensity(rng);
    let first = w == a.start;
    let count = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| -> usize {
        (i * uni(rng, lo, hi)).round().max(1.0) as usize
    };
    match a.kind {
        AttackKind::Cryptojacking => {
            let target = base.cpu_limit * uni(rng, 0.97, 1.0);
            p.cpu += i * (target - p.cpu).max(0.0);
            p.throttle = Some((i * uni(rng, 0.85, 1.0)).max(p.throttle.unwrap_or(0.0)));
            p.mem_mib += if a.heavy { 2336.0 } else { 256.0 } + 2.0 * base.cpu_limit;
            p.pids += base.cpu_limit.ceil() + 1.0;
            // Share submissions: a few KB per minute.
            p.extra_tx_pps += uni(rng, 0.05, 0.3);
            p.extra_tx_pkt = 200.0;
            p.extra_rx_pps += uni(rng, 0.05, 0.3);
            p.extra_rx_pkt = 150.0;
            if first {
                p.execs.push(a.binary.to_string());
            }
            if first || rng.random_bool(0.1) {
                p.connects.push((a.ip, a.port));
            }
        }
        AttackKind::ReverseShell => {
            const CMDS: [&str; 8] = [
                "/bin/sh",
                "/bin/bash",
                "/usr/bin/id",
                "/usr/bin/whoami",
                "/bin/cat",
                "/bin/ls",
                "/bin/uname",
                "/usr/bin/python3",
            ];
            let n = count(rng, 1.0, 20.0);
            if first {
                p.execs.push(a.binary.to_string());
            }
            for _ in 0..n {
                p.execs.push(pick(rng, &CMDS, "/bin/sh").to_string());
            }
            // A few hundred bytes to a few KB per command.
            let secs = 10.0;
            p.tx += n as f64 * uni(rng, 0.2, 3.0) / secs;
            p.rx += n as f64 * uni(rng, 0.05, 0.5) / secs;
            p.pids += 2.0;
            if first || rng.random_bool(0.3) {
                p.connects.push((a.ip, a.port));
            }
        }
        AttackKind::PrivilegeEscalation => {
            const SUID: [&str; 5] = [
                "/usr/bin/sudo",
                "/bin/su",
                "/usr/bin/pkexec",
                "/usr/bin/passwd",
                "/tmp/.suid",
            ];
            let n = count(rng, 1.0, 10.0);
            for _ in 0..n {
                p.kernel.push(if rng.random_bool(0.6) {
                    KernelEventKind::Setuid
                } else {
                    KernelEventKind::Capset
                });
            }
            if first || rng.random_bool(0.5) {
                p.execs.push(pick(rng, &SUID, "/usr/bin/sudo").to_string());
            }
            if rng.random_bool(0.3 * i) {
                p.kernel.push(KernelEventKind::SensitiveFileWrite);
            }
        }
        AttackKind::EscapeAttempt => {
            const KINDS: [KernelEventKind; 4] = [
                KernelEventKind::Mount,
                KernelEventKind::Unshare,
                KernelEventKind::Setns,
                KernelEventKind::Ptrace,
            ];
            const BINS: [&str; 4] = ["/usr/bin/nsenter", "/bin/mount", "/sbin/debugfs", "/bin/sh"];
            let n = count(rng, 1.0, 8.0);
            for _ in 0..n {
                p.kernel.push(pick(rng, &KINDS, KernelEventKind::Mount));
            }
            if rng.random_bool(0.3 + 0.5 * i) {
                // release_agent / core_pattern write.
                p.kernel.push(KernelEventKind::SensitiveFileWrite);
            }
            if rng.random_bool(0.1) {
                p.kernel.push(KernelEventKind::ModuleLoad);
            }
            if rng.random_bool(0.1) {
                p.kernel.push(KernelEventKind::PacketSocket);
            }
            if first || rng.random_bool(0.4) {
                p.execs.push(pick(rng, &BINS, "/bin/sh").to_string());
            }
        }
        AttackKind::PortScan => {
            let ports = (i * uni(rng, 300.0, 3000.0)).round().max(50.0) as usize;
            let start: u16 = rng.random_range(1..=20);
            for k in 0..ports {
                let port = start.saturating_add(u16::try_from(k).unwrap_or(u16::MAX));
                let ip = pick(rng, &a.scan_targets, a.ip);
                p.connects.push((ip, port));
            }
            let secs = 10.0;
            p.extra_tx_pps += 2.0 * ports as f64 / secs;
            p.extra_tx_pkt = uni(rng, 54.0, 74.0);
            p.extra_rx_pps += ports as f64 / secs;
            p.extra_rx_pkt = 54.0;
            if first || rng.random_bool(0.3) {
                p.execs.push(a.binary.to_string());
            }
            if rng.random_bool(0.2) {
                p.kernel.push(KernelEventKind::PacketSocket);
            }
        }
        AttackKind::Exfiltration => {
            // Log-uniform multiplier: subtle windows ~2-10x, strong ones up to ~1000x.
            let m = (2f64.ln() + i * (1000f64.ln() - 2f64.ln())).exp() * noise(rng, 0.2);
            p.tx = p.tx.max(1.0) * m;
            p.tx_pkt = uni(rng, 1200.0, 1450.0);
            p.io_r = p.io_r.max(10.0) * (1.0 + i * uni(rng, 2.0, 30.0));
            if first || rng.random_bool(0.5) {
                p.connects.push((a.ip, a.port));
            }
            if first || rng.random_bool(0.3) {
                p.execs.push(a.binary.to_string());
            }
        }
        AttackKind::ForkBomb => {
            let extra = i * uni(rng, 1000.0, 10000.0);
            p.pids += extra;
            let target = base.cpu_limit * uni(rng, 0.95, 1.0);
            p.cpu += i * (target - p.cpu).max(0.0);
            p.mem_mib += extra * 16.0 / 1024.0;
            if first {
                p.execs.push("/bin/bash".to_string());
            }
        }
    }
}

impl SyntheticSource {
    /// A source over `containers` (duplicate ids after the first are ignored),
    /// producing windows of `window_ms` milliseconds (0 is treated as 1).
    pub fn new(seed: u64, containers: &[(String, Profile)], window_ms: u64) -> Self {
        let mut master = ChaCha8Rng::seed_from_u64(seed);
        let mut seen = HashSet::new();
        let mut list = Vec::new();
        for (id, profile) in containers {
            let s1: u64 = master.random();
            let s2: u64 = master.random();
            if !seen.insert(id.clone()) {
                continue;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(s1);
            let base = draw_base(*profile, &mut rng);
            list.push(SimContainer {
                id: ContainerId(id.clone()),
                profile: *profile,
                base,
                rng,
                attack_rng: ChaCha8Rng::seed_from_u64(s2),
                counters: ResourceCounters::default(),
                attacks: Vec::new(),
            });
        }
        Self {
            window_ms: window_ms.max(1),
            next: 0,
            containers: list,
        }
    }

    /// Window length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Injects an attack into `container_id` for windows
    /// `start_window .. start_window + duration_windows`.
    pub fn inject(
        &mut self,
        container_id: &str,
        kind: AttackKind,
        start_window: u64,
        duration_windows: u64,
    ) -> Result<(), SyntheticError> {
        if duration_windows == 0 {
            return Err(SyntheticError::ZeroDuration);
        }
        let c = self
            .containers
            .iter_mut()
            .find(|c| c.id.0 == container_id)
            .ok_or_else(|| SyntheticError::UnknownContainer(container_id.to_string()))?;
        let rng = &mut c.attack_rng;
        let ip = external_ip(rng);
        let (port, binary) = match kind {
            AttackKind::Cryptojacking => (
                pick(rng, &[3333u16, 4444, 5555, 7777, 14444, 45700], 3333),
                pick(
                    rng,
                    &["/tmp/xmrig", "/tmp/.x/kdevtmpfsi", "/var/tmp/kworkerds"],
                    "/tmp/xmrig",
                ),
            ),
            AttackKind::ReverseShell => (
                pick(rng, &[4444u16, 4444, 443, 80], 4444),
                pick(
                    rng,
                    &["/bin/nc", "/usr/bin/ncat", "/bin/busybox"],
                    "/bin/nc",
                ),
            ),
            AttackKind::PortScan => (
                0,
                pick(
                    rng,
                    &["/usr/bin/nmap", "/usr/bin/masscan", "/bin/nc"],
                    "/usr/bin/nmap",
                ),
            ),
            AttackKind::Exfiltration => (
                443,
                pick(
                    rng,
                    &["/usr/bin/curl", "/usr/bin/wget", "/usr/bin/scp"],
                    "/usr/bin/curl",
                ),
            ),
            _ => (0, "/bin/sh"),
        };
        let heavy = rng.random_bool(0.6);
        let n_targets = rng.random_range(1..=3usize);
        let scan_targets = (0..n_targets).map(|_| internal_ip(rng)).collect();
        c.attacks.push(Injected {
            kind,
            start: start_window,
            duration: duration_windows,
            ip,
            port,
            binary,
            heavy,
            scan_targets,
        });
        Ok(())
    }

    /// The attack active in `container_id` during `window`, if any (the first
    /// injected one when several overlap).
    pub fn active_attack(&self, container_id: &str, window: u64) -> Option<AttackKind> {
        self.containers
            .iter()
            .find(|c| c.id.0 == container_id)?
            .attacks
            .iter()
            .find(|a| a.active(window))
            .map(|a| a.kind)
    }

    /// Produces the events of the next window `[t, t + window_ms)` (with
    /// `t = index * window_ms`) for every container, sorted by timestamp.
    pub fn next_window(&mut self) -> (u64, Vec<Event>) {
        let w = self.next;
        self.next = self.next.saturating_add(1);
        let wm = self.window_ms;
        let t = w.saturating_mul(wm);
        let mut events = Vec::new();
        for c in &mut self.containers {
            let mut plan = benign_plan(c, w);
            let active: Vec<Injected> = c.attacks.iter().filter(|a| a.active(w)).cloned().collect();
            for a in &active {
                apply_attack(&mut plan, a, w, &c.base, &mut c.attack_rng);
            }
            let rng = &mut c.rng;
            let offset = |rng: &mut ChaCha8Rng| t + rng.random_range(0..wm);
            for b in &plan.execs {
                events.push(Event::Exec {
                    container: c.id.clone(),
                    ts_ms: offset(rng),
                    binary: b.clone(),
                });
            }
            for (ip, port) in &plan.connects {
                events.push(Event::Connect {
                    container: c.id.clone(),
                    ts_ms: offset(rng),
                    dst_ip: *ip,
                    dst_port: *port,
                });
            }
            for k in &plan.kernel {
                events.push(Event::Kernel {
                    container: c.id.clone(),
                    ts_ms: offset(rng),
                    kind: *k,
                    detail: None,
                });
            }
            // Counter samples at the middle and the end of the window.
            let util = if c.base.cpu_limit > 0.0 {
                plan.cpu / c.base.cpu_limit
            } else {
                0.0
            };
            let throttle = plan.throttle.unwrap_or_else(|| {
                (((util - 0.7) / 0.3).clamp(0.0, 1.0).powf(1.5) * noise(rng, 0.2)).clamp(0.0, 1.0)
            });
            let half_ms = wm / 2;
            for (ts, dur_ms) in [(t + half_ms, half_ms), (t + wm - 1, wm - half_ms)] {
                let frac = dur_ms as f64 / 1000.0;
                let cnt = &mut c.counters;
                let add = |v: &mut u64, x: f64| {
                    *v = v.saturating_add(x.max(0.0).round() as u64);
                };
                add(&mut cnt.cpu_usage_usec, plan.cpu * 1e6 * frac);
                let periods = (dur_ms / 100).max(1);
                cnt.nr_periods = cnt.nr_periods.saturating_add(periods);
                add(&mut cnt.nr_throttled, throttle * periods as f64);
                add(&mut cnt.io_read_bytes, plan.io_r * 1024.0 * frac);
                add(&mut cnt.io_write_bytes, plan.io_w * 1024.0 * frac);
                let rx_b = plan.rx * 1024.0 * frac;
                let tx_b = plan.tx * 1024.0 * frac;
                add(
                    &mut cnt.net_rx_bytes,
                    rx_b + plan.extra_rx_pps * plan.extra_rx_pkt * frac,
                );
                add(
                    &mut cnt.net_tx_bytes,
                    tx_b + plan.extra_tx_pps * plan.extra_tx_pkt * frac,
                );
                add(
                    &mut cnt.net_rx_packets,
                    rx_b / plan.rx_pkt.max(1.0) + plan.extra_rx_pps * frac,
                );
                add(
                    &mut cnt.net_tx_packets,
                    tx_b / plan.tx_pkt.max(1.0) + plan.extra_tx_pps * frac,
                );
                cnt.memory_bytes = (plan.mem_mib.max(1.0) * 1024.0 * 1024.0).round() as u64;
                cnt.pids = plan.pids.max(1.0).round() as u64;
                events.push(Event::Sample {
                    container: c.id.clone(),
                    ts_ms: ts,
                    counters: *cnt,
                });
            }
        }
        events.sort_by_key(Event::ts_ms);
        (w, events)
    }
}

/// Runs a [`SyntheticSource`] for `windows` windows through a
/// [`WindowBuilder`] and labels every window with the active attack.
///
/// The first window of every container is skipped: it has no rate baseline
/// from an earlier window and all its binaries / destinations count as new.
/// Output order: by window, then by container id.
pub fn labelled_windows(
    seed: u64,
    containers: &[(String, Profile)],
    windows: u64,
    window_ms: u64,
    attacks: &[(String, AttackKind, u64, u64)],
) -> Result<Vec<(FeatureWindow, Option<AttackKind>)>, SyntheticError> {
    labelled(seed, containers, windows, window_ms, attacks, None).map(|(w, _)| w)
}

/// Rule hits of each window, by window end (ms).
pub type HitsByWindow = std::collections::BTreeMap<u64, Vec<crate::detection::rules::RuleHit>>;

/// [`labelled_windows`], and what `rules` finds in each window's events
/// (every window, the skipped first ones included), as a node's rule layer
/// would.
pub fn labelled_windows_and_hits(
    seed: u64,
    containers: &[(String, Profile)],
    windows: u64,
    window_ms: u64,
    attacks: &[(String, AttackKind, u64, u64)],
    rules: &crate::detection::rules::RuleEngine,
) -> Result<Labelled, SyntheticError> {
    labelled(seed, containers, windows, window_ms, attacks, Some(rules))
}

/// Labelled windows and the rule hits of each window.
pub type Labelled = (Vec<(FeatureWindow, Option<AttackKind>)>, HitsByWindow);

fn labelled(
    seed: u64,
    containers: &[(String, Profile)],
    windows: u64,
    window_ms: u64,
    attacks: &[(String, AttackKind, u64, u64)],
    rules: Option<&crate::detection::rules::RuleEngine>,
) -> Result<Labelled, SyntheticError> {
    if window_ms == 0 {
        return Err(SyntheticError::ZeroWindow);
    }
    let mut src = SyntheticSource::new(seed, containers, window_ms);
    for (id, kind, start, dur) in attacks {
        src.inject(id, *kind, *start, *dur)?;
    }
    let mut builder = WindowBuilder::new();
    let mut seen: HashSet<ContainerId> = HashSet::new();
    let mut out = Vec::new();
    let mut hits = HitsByWindow::new();
    for _ in 0..windows {
        let (w, events) = src.next_window();
        for e in &events {
            builder.push(e);
        }
        let end = w.saturating_add(1).saturating_mul(window_ms);
        if let Some(r) = rules {
            let h = r.evaluate(&events);
            if !h.is_empty() {
                hits.insert(end, h);
            }
        }
        for fw in builder.close(end) {
            if seen.insert(fw.container.clone()) {
                continue;
            }
            let label = src.active_attack(&fw.container.0, w);
            out.push((fw, label));
        }
    }
    Ok((out, hits))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::features::idx;

    fn fleet() -> Vec<(String, Profile)> {
        Profile::ALL
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{p}-{i}"), *p))
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(p.to_string().parse::<Profile>(), Ok(p));
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{p}\""));
        }
        for k in AttackKind::ALL {
            assert_eq!(k.to_string().parse::<AttackKind>(), Ok(k));
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(j, format!("\"{k}\""));
        }
        assert_eq!("port-scan".parse::<AttackKind>(), Ok(AttackKind::PortScan));
        assert!("nope".parse::<Profile>().is_err());
    }

    #[test]
    fn events_inside_window_with_two_samples_each() {
        let mut s = SyntheticSource::new(1, &fleet(), 10_000);
        for _ in 0..3 {
            let (w, evs) = s.next_window();
            let t = w * 10_000;
            assert!(evs.iter().all(|e| e.ts_ms() >= t && e.ts_ms() < t + 10_000));
            for (id, _) in fleet() {
                let n = evs
                    .iter()
                    .filter(|e| matches!(e, Event::Sample { container, .. } if container.0 == id))
                    .count();
                assert!(n >= 2);
            }
        }
    }

    #[test]
    fn inject_errors() {
        let mut s = SyntheticSource::new(1, &fleet(), 10_000);
        assert_eq!(
            s.inject("missing", AttackKind::PortScan, 0, 1),
            Err(SyntheticError::UnknownContainer("missing".into()))
        );
        assert_eq!(
            s.inject("web-0", AttackKind::PortScan, 0, 0),
            Err(SyntheticError::ZeroDuration)
        );
        s.inject("web-0", AttackKind::PortScan, 5, 2).unwrap();
        assert_eq!(s.active_attack("web-0", 4), None);
        assert_eq!(s.active_attack("web-0", 5), Some(AttackKind::PortScan));
        assert_eq!(s.active_attack("web-0", 6), Some(AttackKind::PortScan));
        assert_eq!(s.active_attack("web-0", 7), None);
    }

    #[test]
    fn same_seed_same_windows() {
        let atk = vec![("web-0".to_string(), AttackKind::ReverseShell, 5, 5)];
        let a = labelled_windows(7, &fleet(), 20, 10_000, &atk).unwrap();
        let b = labelled_windows(7, &fleet(), 20, 10_000, &atk).unwrap();
        let c = labelled_windows(8, &fleet(), 20, 10_000, &atk).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 19 * 4);
        assert!(
            a.iter()
                .all(|(w, _)| w.features.iter().all(|v| v.is_finite()))
        );
    }

    /// Benign windows of other containers are unaffected by an injection.
    #[test]
    fn injection_does_not_change_benign_streams() {
        let clean = labelled_windows(3, &fleet(), 15, 10_000, &[]).unwrap();
        let atk = vec![("ml-3".to_string(), AttackKind::Cryptojacking, 3, 10)];
        let dirty = labelled_windows(3, &fleet(), 15, 10_000, &atk).unwrap();
        for ((a, la), (b, _)) in clean.iter().zip(&dirty) {
            assert_eq!(la, &None);
            if a.container.0 != "ml-3" {
                assert_eq!(a, b);
            }
        }
    }

    /// Mean of feature `f` over attacked vs clean windows of the same
    /// containers (same seed, with and without the attack).
    fn shift(kind: AttackKind, f: usize) -> Vec<(Profile, f32, f32)> {
        let mut out = Vec::new();
        for (i, p) in Profile::ALL.iter().enumerate() {
            let id = format!("{p}-{i}");
            let atk = vec![(id.clone(), kind, 10, 20)];
            let clean = labelled_windows(11, &fleet(), 30, 10_000, &[]).unwrap();
            let dirty = labelled_windows(11, &fleet(), 30, 10_000, &atk).unwrap();
            let (mut sa, mut sb, mut n) = (0.0, 0.0, 0.0);
            for ((a, _), (b, lb)) in clean.iter().zip(&dirty) {
                if b.container.0 == id && lb.is_some() {
                    sa += a.features[f];
                    sb += b.features[f];
                    n += 1.0;
                }
            }
            assert_eq!(n, 20.0);
            out.push((*p, sa / n, sb / n));
        }
        out
    }

    fn assert_up(kind: AttackKind, f: usize, min_delta: f32) {
        for (p, clean, dirty) in shift(kind, f) {
            assert!(
                dirty - clean >= min_delta,
                "{kind} on {p}: {} clean {clean} attacked {dirty}",
                crate::detection::features::FEATURE_NAMES[f]
            );
        }
    }

    #[test]
    fn cryptojacking_signature() {
        assert_up(AttackKind::Cryptojacking, idx::THROTTLE_RATIO, 0.3);
        for (p, clean, dirty) in shift(AttackKind::Cryptojacking, idx::MEMORY) {
            // +256 MiB (light mode) or +2336 MiB (fast mode).
            assert!(
                dirty.exp_m1() - clean.exp_m1() > 200.0,
                "{p}: memory {clean} -> {dirty}"
            );
        }
        for (p, clean, dirty) in shift(AttackKind::Cryptojacking, idx::CPU_CORES) {
            assert!(dirty > clean + 0.1, "{p}: cpu {clean} -> {dirty}");
        }
    }

    #[test]
    fn reverse_shell_signature() {
        assert_up(AttackKind::ReverseShell, idx::EXECS, 0.5);
        assert_up(AttackKind::ReverseShell, idx::NEW_BINARIES, 0.05);
        // One new destination over the whole attack (log1p compresses coincidences).
        assert_up(AttackKind::ReverseShell, idx::NEW_DST_IPS, 0.01);
    }

    #[test]
    fn privilege_escalation_signature() {
        assert_up(AttackKind::PrivilegeEscalation, idx::PRIVILEGE, 0.5);
    }

    #[test]
    fn escape_attempt_signature() {
        assert_up(AttackKind::EscapeAttempt, idx::ESCAPE, 0.5);
        assert_up(AttackKind::EscapeAttempt, idx::SENSITIVE_FILE, 0.2);
    }

    #[test]
    fn port_scan_signature() {
        assert_up(AttackKind::PortScan, idx::DISTINCT_DST_PORTS, 2.0);
        assert_up(AttackKind::PortScan, idx::TX_PKTS, 1.0);
        for (p, clean, dirty) in shift(AttackKind::PortScan, idx::TX_BYTES_PER_PKT) {
            assert!(dirty < clean, "{p}: bytes/packet {clean} -> {dirty}");
        }
    }

    #[test]
    fn exfiltration_signature() {
        assert_up(AttackKind::Exfiltration, idx::NET_TX, 1.0);
        assert_up(AttackKind::Exfiltration, idx::TX_RX_RATIO, 0.5);
        assert_up(AttackKind::Exfiltration, idx::IO_READ, 0.3);
    }

    #[test]
    fn fork_bomb_signature() {
        assert_up(AttackKind::ForkBomb, idx::PIDS, 2.0);
        for (p, clean, dirty) in shift(AttackKind::ForkBomb, idx::CPU_CORES) {
            assert!(dirty > clean + 0.1, "{p}: cpu {clean} -> {dirty}");
        }
    }
}
