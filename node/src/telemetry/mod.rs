//! Telemetry event model shared by every source (cgroup v2 + /proc readers,
//! the proc connector, network namespaces, Falco/Tetragon JSON, and, with
//! the `sim` feature, the synthetic generator).
//!
//! Sources turn whatever they read into a stream of [`Event`]s; the
//! [`crate::detection::features::WindowBuilder`] aggregates them into per-container
//! feature windows. Resource counters are *cumulative* (as the kernel exposes
//! them); rates are computed downstream from deltas with reset detection.

pub mod cgroup;
pub mod events;
pub mod falco;
pub mod netns;
pub mod proc;
pub mod process;
pub mod recording;
pub mod tetragon;

use serde::{Deserialize, Serialize};

/// Identifier of a container (runtime id, pod/container name, or synthetic name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerId(pub String);

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Cumulative counters as read from cgroup v2 + /proc/<pid>/net/dev.
///
/// `memory_bytes` and `pids` are gauges (current values); every other field is
/// a monotonically increasing counter that may reset (e.g. container restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceCounters {
    /// `cpu.stat usage_usec`: cumulative CPU time in microseconds.
    pub cpu_usage_usec: u64,
    /// `cpu.stat nr_periods`: enforcement periods elapsed.
    pub nr_periods: u64,
    /// `cpu.stat nr_throttled`: periods in which the group was throttled.
    pub nr_throttled: u64,
    /// `memory.current` in bytes (gauge).
    pub memory_bytes: u64,
    /// `io.stat rbytes` summed over devices.
    pub io_read_bytes: u64,
    /// `io.stat wbytes` summed over devices.
    pub io_write_bytes: u64,
    /// Received bytes (all interfaces of the container's netns except `lo`).
    pub net_rx_bytes: u64,
    /// Transmitted bytes.
    pub net_tx_bytes: u64,
    /// Received packets.
    pub net_rx_packets: u64,
    /// Transmitted packets.
    pub net_tx_packets: u64,
    /// `pids.current` (gauge).
    pub pids: u64,
}

/// Kind of a security-relevant kernel event (from Falco/Tetragon or synthetic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KernelEventKind {
    /// `setuid`/`setresuid`/`setgid` family.
    Setuid,
    /// `capset`.
    Capset,
    /// `mount`.
    Mount,
    /// `unshare`.
    Unshare,
    /// `setns`.
    Setns,
    /// `ptrace` attach.
    Ptrace,
    /// `init_module`/`finit_module`.
    ModuleLoad,
    /// Read of a sensitive file (/etc/shadow, SA token, ...).
    SensitiveFileRead,
    /// Write of a sensitive file (release_agent, core_pattern, /etc/passwd, ...).
    SensitiveFileWrite,
    /// Creation of an `AF_PACKET` socket.
    PacketSocket,
    /// A shell started with a network socket as its standard input (a
    /// reverse or bind shell). Rule layer only: no model feature counts it.
    ShellOnSocket,
}

/// One telemetry event for one container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A snapshot of cumulative resource counters.
    Sample {
        /// Container the counters belong to.
        container: ContainerId,
        /// Milliseconds timestamp of the read.
        ts_ms: u64,
        /// Cumulative counters.
        counters: ResourceCounters,
    },
    /// A process exec.
    Exec {
        /// Container the process runs in.
        container: ContainerId,
        /// Milliseconds timestamp.
        ts_ms: u64,
        /// Executed binary (path or comm).
        binary: String,
    },
    /// An outbound connection attempt.
    Connect {
        /// Container that connected.
        container: ContainerId,
        /// Milliseconds timestamp.
        ts_ms: u64,
        /// Destination address.
        dst_ip: std::net::IpAddr,
        /// Destination port.
        dst_port: u16,
    },
    /// TCP activity of a container's network namespace between two
    /// readings of its `/proc/<pid>/net/snmp`, `tcp` and `tcp6` (the
    /// `netns` source, [`netns`]).
    Net {
        /// Container the namespace is attributed to (one per namespace).
        container: ContainerId,
        /// Milliseconds timestamp of the reading.
        ts_ms: u64,
        /// Counter deltas and the socket table's summary.
        net: Box<NetActivity>,
    },
    /// A security-relevant kernel event.
    Kernel {
        /// Container the event happened in.
        container: ContainerId,
        /// Milliseconds timestamp.
        ts_ms: u64,
        /// What happened.
        kind: KernelEventKind,
        /// What the source told about it (process, uids, path, capability),
        /// when it told anything; read by the rule layer, not by features.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Box<KernelDetail>>,
    },
}

/// Optional particulars of a [`Event::Kernel`] event, as far as the source
/// exposes them. Every field may be absent; the rule layer
/// ([`crate::detection::rules`]) treats an absent field as "unknown", never as benign.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelDetail {
    /// Binary of the acting process (path or comm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// User name of the acting process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Uid of the acting process (before the call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Uid requested by a `setuid`-family call (or the new credentials' uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_uid: Option<u32>,
    /// File path opened, read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Capability (set) named by a `capset`/capability check, e.g. `CAP_SYS_ADMIN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// `ptrace` request, e.g. `PTRACE_ATTACH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// What one reading of a network namespace shows: the TCP counters' growth
/// since the namespace's previous reading (all zero, with `interval_ms` 0,
/// on the first one) and a summary of its socket tables at the reading.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetActivity {
    /// Milliseconds since the namespace's previous reading; 0 on its first.
    pub interval_ms: u64,
    /// Δ `Tcp: ActiveOpens`: outbound connection attempts (`connect`).
    pub active_opens: u64,
    /// Δ `Tcp: PassiveOpens`: connections accepted.
    pub passive_opens: u64,
    /// Δ `Tcp: AttemptFails`: attempts that failed (refused, reset or timed
    /// out in `SYN_SENT`/`SYN_RECV`).
    pub attempt_fails: u64,
    /// Δ `Tcp: EstabResets`: established connections reset.
    pub estab_resets: u64,
    /// Δ `Tcp: OutRsts`: resets sent (e.g. for connections to closed ports).
    pub out_rsts: u64,
    /// Δ `Tcp: InErrs`: segments received in error.
    pub in_errs: u64,
    /// Whether the socket tables were read at this reading (at the
    /// namespace's first, and when `ActiveOpens` moved since they were last
    /// read); the socket fields below are 0 when they were not.
    pub tables: bool,
    /// Listening sockets at the reading.
    pub listening: u32,
    /// Sockets in `SYN_SENT` at the reading.
    pub syn_sent: u32,
    /// Distinct remote ports of the `SYN_SENT` sockets.
    pub syn_sent_ports: u32,
    /// Distinct remote endpoints (address and port) of non-listening sockets.
    pub remote_endpoints: u32,
    /// Remote endpoints of outbound connections (a non-listening socket
    /// whose local port is no listening port) first seen at this reading,
    /// at most [`netns::MAX_NEW_REMOTES`]; `new_remotes_total` counts all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_remotes: Vec<std::net::SocketAddr>,
    /// Outbound connections first seen at this reading.
    pub new_remotes_total: u32,
    /// Other containers in the same namespace (a pod, or `--network
    /// container:`): the namespace's activity is theirs too, attributed once.
    pub shared_with: u32,
    /// Raw IP sockets other than ICMP/ICMPv6 in the namespace at the
    /// reading (nmap's SYN scan sends from one); rows past the reading's
    /// cap count too, so a flood of ICMP sockets cannot hide one.
    #[serde(default)]
    pub raw_sockets: u32,
    /// Packet (`AF_PACKET`) sockets in the namespace at the reading
    /// (sniffers, ARP tools, nmap's receiver).
    #[serde(default)]
    pub packet_sockets: u32,
}

impl KernelDetail {
    /// `None` when nothing is known, so events without details stay small.
    pub fn boxed(self) -> Option<Box<KernelDetail>> {
        (self != KernelDetail::default()).then(|| Box::new(self))
    }
}

impl Event {
    /// The container this event belongs to.
    pub fn container(&self) -> &ContainerId {
        match self {
            Event::Sample { container, .. }
            | Event::Exec { container, .. }
            | Event::Connect { container, .. }
            | Event::Net { container, .. }
            | Event::Kernel { container, .. } => container,
        }
    }

    /// The event timestamp in milliseconds.
    pub fn ts_ms(&self) -> u64 {
        match self {
            Event::Sample { ts_ms, .. }
            | Event::Exec { ts_ms, .. }
            | Event::Connect { ts_ms, .. }
            | Event::Net { ts_ms, .. }
            | Event::Kernel { ts_ms, .. } => *ts_ms,
        }
    }

    /// The event with its [`KernelDetail`] removed (what the feature
    /// pipeline sees; handy to compare events by their essentials).
    pub fn without_detail(self) -> Event {
        match self {
            Event::Kernel {
                container,
                ts_ms,
                kind,
                ..
            } => Event::Kernel {
                container,
                ts_ms,
                kind,
                detail: None,
            },
            other => other,
        }
    }
}

/// Name of a `ptrace(2)` request number (x86-64/arm64 values).
pub fn ptrace_request_name(n: u64) -> Option<&'static str> {
    Some(match n {
        0 => "PTRACE_TRACEME",
        1 => "PTRACE_PEEKTEXT",
        2 => "PTRACE_PEEKDATA",
        3 => "PTRACE_PEEKUSER",
        4 => "PTRACE_POKETEXT",
        5 => "PTRACE_POKEDATA",
        6 => "PTRACE_POKEUSER",
        7 => "PTRACE_CONT",
        8 => "PTRACE_KILL",
        9 => "PTRACE_SINGLESTEP",
        12 => "PTRACE_GETREGS",
        13 => "PTRACE_SETREGS",
        16 => "PTRACE_ATTACH",
        17 => "PTRACE_DETACH",
        0x4206 => "PTRACE_SEIZE",
        _ => return None,
    })
}
