//! The rule layer: decisive rare events that must never be averaged away in
//! a feature window.
//!
//! The autoencoder scores whole windows, so one `setuid(0)` among hundreds
//! of ordinary events barely moves the reconstruction error. Each rule here
//! looks at single events (`reverse_shell` at a pair in the same window,
//! `port_scan` at a container's namespace counters over the window) and a
//! hit raises an alert at once, whatever the model score.
//!
//! | id | severity | fires on |
//! |---|---|---|
//! | `setuid_root` | critical | a `setuid`-family call to uid 0 by a non-root process (unknown uids count as a hit; a known root caller or a known non-zero target does not) |
//! | `cgroup_release_agent` | critical | an open/write of a cgroup `release_agent` or `notify_on_release` |
//! | `kernel_tunable_write` | critical | a write of `/proc/sys/kernel/core_pattern` or `/proc/sysrq-trigger` |
//! | `exec_from_tmpfs` | high | exec of a binary under `/dev/shm`, `/tmp`, `/var/tmp`, `/run/shm` or from a `memfd:` |
//! | `namespace_change` | critical | `mount`, `unshare` or `setns` from a container, or exec of `nsenter`/`unshare` |
//! | `ptrace_attach` | high | `ptrace` (attach, seize, poke, setregs; any request when it is unknown) |
//! | `cap_sys_admin` | high | `capset`/capability check naming `CAP_SYS_ADMIN` |
//! | `shadow_read` | high | a read of `/etc/shadow` or `/etc/gshadow` |
//! | `miner_binary` | critical | exec of a known miner binary (`xmrig`, `minerd`, …) |
//! | `stratum_port` | high | a connection to a mining-pool port (3333, 4444, 5555, 7777, 14444, 45700, …; configurable), from a connect event or a new outbound connection in the namespace's socket table |
//! | `module_load` | critical | `init_module`/`finit_module` |
//! | `reverse_shell` | high | a shell whose standard input is a network socket (the process source), or exec of a shell or netcat **and** a connection to an external address (not loopback, private, link-local, unique-local or CGNAT) by the same container in the same window |
//! | `raw_socket` | high | a raw IP socket of a protocol other than ICMP/ICMPv6, or a packet (`AF_PACKET`) socket, open in the container's network namespace at a reading (the `netns` source): nmap's SYN scan sends from one and listens on the other, invisible to every TCP counter; sniffers and spoofers hold them too. Ping is not counted (Docker gives containers ping sockets; a raw ICMP socket is a legacy ping) |
//! | `port_scan` | high | in one window, at least `scan_failed_opens` (50) of the container's outbound TCP connection attempts failed, and they are at least half of its attempts; or one reading shows connections pending (`SYN_SENT`) to at least [`SCAN_SYN_SENT_PORTS`] distinct ports (the `netns` source) |
//!
//! `port_scan`'s threshold: the counters say how many attempts failed, not
//! to which ports (a refused attempt leaves no socket behind), so the rule
//! counts failures. A healthy service makes no failed attempts however busy
//! it is (and the half-of-attempts condition keeps a busy client whose
//! backend restarts from firing); a client retrying a dead dependency with
//! any backoff fails a few times a window (gRPC: 1 s, then ×1.6; nginx
//! stops trying an upstream for `fail_timeout`, 10 s, after a failure). A
//! connect scan of 100 closed ports fails 100 times in under a second. The
//! rule does fire on a client that hammers a dead dependency without
//! backoff at 5 or more attempts a second, which is an outage worth a look
//! too; raise `scan_failed_opens` or disable the rule where that is normal.
//!
//! Falco's own "Redirect STDOUT/STDIN to Network Connection" rule reaches
//! the node as a connection event only, so `reverse_shell` is the pair
//! heuristic above rather than the `dup2` signature itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::detection::severity::Severity;
use crate::telemetry::{ContainerId, Event, KernelDetail, KernelEventKind};

/// One rule: id, severity and what it detects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Stable id (config, metrics, alerts).
    pub id: &'static str,
    /// Severity of its alerts.
    pub severity: Severity,
    /// What it detects.
    pub description: &'static str,
}

/// Every rule, in a fixed order (the index is used for counters).
pub const RULES: &[Rule] = &[
    Rule {
        id: "setuid_root",
        severity: Severity::Critical,
        description: "setuid/setgid to root by a non-root process",
    },
    Rule {
        id: "cgroup_release_agent",
        severity: Severity::Critical,
        description: "open or write of a cgroup release_agent/notify_on_release (container escape)",
    },
    Rule {
        id: "kernel_tunable_write",
        severity: Severity::Critical,
        description: "write of /proc/sys/kernel/core_pattern or /proc/sysrq-trigger (container escape)",
    },
    Rule {
        id: "exec_from_tmpfs",
        severity: Severity::High,
        description: "exec of a binary from /dev/shm, /tmp, /var/tmp or a memfd (dropper, fileless)",
    },
    Rule {
        id: "namespace_change",
        severity: Severity::Critical,
        description: "mount, unshare, setns or nsenter from a container (escape attempt)",
    },
    Rule {
        id: "ptrace_attach",
        severity: Severity::High,
        description: "ptrace attach/poke of another process",
    },
    Rule {
        id: "cap_sys_admin",
        severity: Severity::High,
        description: "capset or capability check naming CAP_SYS_ADMIN",
    },
    Rule {
        id: "shadow_read",
        severity: Severity::High,
        description: "read of /etc/shadow (credential access)",
    },
    Rule {
        id: "miner_binary",
        severity: Severity::Critical,
        description: "exec of a known cryptocurrency miner",
    },
    Rule {
        id: "stratum_port",
        severity: Severity::High,
        description: "connection to a mining-pool (stratum) port",
    },
    Rule {
        id: "module_load",
        severity: Severity::Critical,
        description: "kernel module load from a container",
    },
    Rule {
        id: "reverse_shell",
        severity: Severity::High,
        description: "shell with a network socket as stdin, or shell or netcat exec together with a connection to an external address in the same window",
    },
    Rule {
        id: "port_scan",
        severity: Severity::High,
        description: "many failed outbound TCP connection attempts in one window, or pending connections to many distinct ports (port scan)",
    },
    Rule {
        id: "raw_socket",
        severity: Severity::High,
        description: "a raw IP socket (not ICMP) or a packet socket in the container's network namespace (SYN scan, sniffing, spoofing)",
    },
];

/// Default `[rules] scan_failed_opens`: failed outbound connection
/// attempts in one window that make a `port_scan` (see the module docs).
pub const DEFAULT_SCAN_FAILED_OPENS: u64 = 50;

/// Distinct remote ports of pending (`SYN_SENT`) connections in one
/// reading that make a `port_scan` (a scan of filtered ports, whose
/// attempts time out rather than fail at once). An ordinary client's
/// pending connections last one round trip and go to a few service ports.
pub const SCAN_SYN_SENT_PORTS: u32 = 32;

/// Default mining-pool ports (Falco's miner port list without the generic
/// web ports 25/80/443/8000/8080/...).
pub const DEFAULT_MINER_PORTS: &[u16] = &[
    3333, 3334, 3335, 3336, 3357, 4444, 5555, 5556, 5588, 5730, 6099, 6666, 7777, 7778, 9999,
    14433, 14444, 45560, 45700,
];

/// Basenames of known miner binaries.
const MINER_BINARIES: &[&str] = &[
    "xmrig",
    "xmrig-notls",
    "xmr-stak",
    "xmr-stak-cpu",
    "minerd",
    "cpuminer",
    "cpuminer-multi",
    "ccminer",
    "cgminer",
    "bfgminer",
    "ethminer",
    "nbminer",
    "t-rex",
    "lolminer",
    "phoenixminer",
    "nanominer",
    "gminer",
    "teamredminer",
    "xmr-miner",
];

/// Shells and netcat variants (reverse-shell pair rule).
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "tcsh", "csh", "fish", "busybox", "nc",
    "ncat", "netcat", "socat",
];

/// Directories a legitimate container binary is not executed from.
const TMPFS_DIRS: &[&str] = &["/dev/shm/", "/tmp/", "/var/tmp/", "/run/shm/"];

/// `ptrace` requests that touch another process.
const PTRACE_HOSTILE: &[&str] = &[
    "PTRACE_ATTACH",
    "PTRACE_SEIZE",
    "PTRACE_POKETEXT",
    "PTRACE_POKEDATA",
    "PTRACE_POKEUSER",
    "PTRACE_SETREGS",
];

/// `[rules]` configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Run the rule layer at all.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Rule ids to switch off.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Mining-pool ports for `stratum_port` (default [`DEFAULT_MINER_PORTS`]).
    #[serde(default)]
    pub miner_ports: Option<Vec<u16>>,
    /// Failed outbound TCP connection attempts of one container in one
    /// window that make a `port_scan` (default [`DEFAULT_SCAN_FAILED_OPENS`]).
    #[serde(default = "d_scan_failed_opens")]
    pub scan_failed_opens: u64,
}

fn d_scan_failed_opens() -> u64 {
    DEFAULT_SCAN_FAILED_OPENS
}

fn d_true() -> bool {
    true
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            disable: Vec::new(),
            miner_ports: None,
            scan_failed_opens: DEFAULT_SCAN_FAILED_OPENS,
        }
    }
}

impl RulesConfig {
    /// Problems with this section (unknown rule ids, empty port list).
    pub fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for id in &self.disable {
            if !RULES.iter().any(|r| r.id == id) {
                errs.push(format!(
                    "rules.disable: unknown rule {id:?} (known: {})",
                    RULES.iter().map(|r| r.id).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if self.miner_ports.as_ref().is_some_and(|p| p.is_empty()) {
            errs.push("rules.miner_ports must not be empty (disable stratum_port instead)".into());
        }
        if self.scan_failed_opens == 0 {
            errs.push(
                "rules.scan_failed_opens must be at least 1 (disable port_scan instead)".into(),
            );
        }
        errs
    }
}

/// One rule hit: the rule, the container, the first matching event (time
/// and words) and how many events of the window matched.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleHit {
    /// The rule.
    pub rule: &'static Rule,
    /// Container.
    pub container: ContainerId,
    /// Time of the first matching event.
    pub ts_ms: u64,
    /// The first matching event, in words.
    pub event: String,
    /// Matching events in the window.
    pub count: u32,
}

/// Per-rule hit counters, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct RuleCounters {
    hits: [std::sync::atomic::AtomicU64; RULES.len()],
}

impl RuleCounters {
    /// Hits of every rule, `(id, hits)` in [`RULES`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        RULES
            .iter()
            .zip(&self.hits)
            .map(|(r, h)| (r.id, h.load(std::sync::atomic::Ordering::Relaxed)))
            .collect()
    }
}

/// The rule engine: the enabled rules and their parameters.
#[derive(Debug, Clone)]
pub struct RuleEngine {
    enabled: [bool; RULES.len()],
    miner_ports: Vec<u16>,
    scan_failed_opens: u64,
    counters: Arc<RuleCounters>,
}

/// One container's namespace counters summed over a window.
#[derive(Debug, Default)]
struct ScanTally {
    ts_ms: u64,
    opens: u64,
    fails: u64,
    interval_ms: u64,
    syn_sent_ports: u32,
}

fn index(id: &str) -> Option<usize> {
    RULES.iter().position(|r| r.id == id)
}

/// Whether `ip` is outside loopback, private, link-local, unique-local,
/// CGNAT and unspecified ranges: where a reverse shell calls home, and
/// where a container's ordinary in-cluster traffic (databases, DNS, health
/// checks) does not go.
fn is_external(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
                && v6
                    .to_ipv4_mapped()
                    .is_none_or(|v4| is_external(&std::net::IpAddr::V4(v4)))
        }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn detail_words(d: Option<&KernelDetail>) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(p) = &d.process {
        parts.push(format!("process={p}"));
    }
    if let Some(u) = &d.user {
        parts.push(format!("user={u}"));
    }
    if let Some(u) = d.uid {
        parts.push(format!("uid={u}"));
    }
    if let Some(u) = d.target_uid {
        parts.push(format!("target_uid={u}"));
    }
    if let Some(p) = &d.path {
        parts.push(format!("path={p}"));
    }
    if let Some(c) = &d.capability {
        parts.push(format!("capability={c}"));
    }
    if let Some(r) = &d.request {
        parts.push(format!("request={r}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(" "))
    }
}

impl RuleEngine {
    /// An engine for `cfg` (call [`RulesConfig::problems`] first: unknown
    /// ids in `disable` are ignored here).
    pub fn new(cfg: &RulesConfig) -> Self {
        let mut enabled = [cfg.enabled; RULES.len()];
        for id in &cfg.disable {
            if let Some(i) = index(id) {
                enabled[i] = false;
            }
        }
        Self {
            enabled,
            miner_ports: cfg
                .miner_ports
                .clone()
                .unwrap_or_else(|| DEFAULT_MINER_PORTS.to_vec()),
            scan_failed_opens: cfg.scan_failed_opens.max(1),
            counters: Arc::new(RuleCounters::default()),
        }
    }

    /// An engine that matches nothing.
    pub fn disabled() -> Self {
        Self::new(&RulesConfig {
            enabled: false,
            ..RulesConfig::default()
        })
    }

    /// Counts hits into `counters` (shared with `/metrics`).
    pub fn with_counters(mut self, counters: Arc<RuleCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// The hit counters (for `/metrics`).
    pub fn counters(&self) -> Arc<RuleCounters> {
        self.counters.clone()
    }

    /// Whether the rule `id` is enabled.
    pub fn is_enabled(&self, id: &str) -> bool {
        index(id).is_some_and(|i| self.enabled[i])
    }

    /// The rules one event matches, with the event in words.
    pub fn match_event(&self, ev: &Event) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut hit = |id: &str, words: String| {
            if let Some(i) = index(id)
                && self.enabled[i]
            {
                out.push((i, words));
            }
        };
        match ev {
            Event::Exec { binary, .. } => {
                let base = basename(binary);
                let lower = base.to_ascii_lowercase();
                if TMPFS_DIRS.iter().any(|d| binary.starts_with(d)) || binary.contains("memfd:") {
                    hit("exec_from_tmpfs", format!("exec {binary}"));
                }
                if MINER_BINARIES.contains(&lower.as_str()) {
                    hit("miner_binary", format!("exec {binary}"));
                }
                if matches!(lower.as_str(), "nsenter" | "unshare") {
                    hit("namespace_change", format!("exec {binary}"));
                }
            }
            Event::Connect {
                dst_ip, dst_port, ..
            } => {
                if self.miner_ports.contains(dst_port) {
                    hit("stratum_port", format!("connect {dst_ip}:{dst_port}"));
                }
            }
            Event::Kernel { kind, detail, .. } => {
                let d = detail.as_deref();
                let words = |what: &str| format!("{what}{}", detail_words(d));
                let path = d.and_then(|d| d.path.as_deref()).unwrap_or("");
                match kind {
                    KernelEventKind::Setuid => {
                        let caller_root = d
                            .is_some_and(|d| d.uid == Some(0) || d.user.as_deref() == Some("root"));
                        let target_not_root = d.and_then(|d| d.target_uid).is_some_and(|u| u != 0);
                        if !caller_root && !target_not_root {
                            hit("setuid_root", words("setuid"));
                        }
                    }
                    KernelEventKind::Capset => {
                        let cap = d.and_then(|d| d.capability.as_deref()).unwrap_or("");
                        if cap.to_ascii_uppercase().contains("SYS_ADMIN") {
                            hit("cap_sys_admin", words("capability"));
                        }
                    }
                    KernelEventKind::Mount | KernelEventKind::Unshare | KernelEventKind::Setns => {
                        let name = match kind {
                            KernelEventKind::Mount => "mount",
                            KernelEventKind::Unshare => "unshare",
                            _ => "setns",
                        };
                        hit("namespace_change", words(name));
                    }
                    KernelEventKind::Ptrace => {
                        let req = d.and_then(|d| d.request.as_deref());
                        if req.is_none_or(|r| {
                            PTRACE_HOSTILE.iter().any(|h| r.eq_ignore_ascii_case(h))
                        }) {
                            hit("ptrace_attach", words("ptrace"));
                        }
                    }
                    KernelEventKind::ModuleLoad => hit("module_load", words("module load")),
                    KernelEventKind::SensitiveFileRead | KernelEventKind::SensitiveFileWrite => {
                        let base = basename(path);
                        if base == "release_agent" || base == "notify_on_release" {
                            hit("cgroup_release_agent", words("open"));
                        }
                        if *kind == KernelEventKind::SensitiveFileWrite
                            && (path == "/proc/sys/kernel/core_pattern"
                                || path == "/proc/sysrq-trigger")
                        {
                            hit("kernel_tunable_write", words("write"));
                        }
                        if *kind == KernelEventKind::SensitiveFileRead
                            && (path == "/etc/shadow" || path == "/etc/gshadow")
                        {
                            hit("shadow_read", words("read"));
                        }
                    }
                    KernelEventKind::PacketSocket => {}
                    KernelEventKind::ShellOnSocket => {
                        hit("reverse_shell", words("shell with a socket as stdin"));
                    }
                }
            }
            Event::Net { net, .. } => {
                for r in &net.new_remotes {
                    if self.miner_ports.contains(&r.port()) {
                        hit("stratum_port", format!("connection to {r} (socket table)"));
                    }
                }
                if net.raw_sockets > 0 || net.packet_sockets > 0 {
                    hit(
                        "raw_socket",
                        format!(
                            "{} raw IP and {} packet sockets open in the network namespace",
                            net.raw_sockets, net.packet_sockets
                        ),
                    );
                }
            }
            Event::Sample { .. } => {}
        }
        out
    }

    /// Evaluates one window's events: one hit per (container, rule), with
    /// the first matching event and the number of matches, ordered by
    /// container then rule. Counts every hit in the counters.
    pub fn evaluate(&self, events: &[Event]) -> Vec<RuleHit> {
        let mut hits: BTreeMap<(ContainerId, usize), RuleHit> = BTreeMap::new();
        let mut record = |i: usize, c: &ContainerId, ts_ms: u64, words: String| {
            hits.entry((c.clone(), i))
                .and_modify(|h| {
                    h.count = h.count.saturating_add(1);
                    if ts_ms < h.ts_ms {
                        h.ts_ms = ts_ms;
                        h.event = words.clone();
                    }
                })
                .or_insert_with(|| RuleHit {
                    rule: &RULES[i],
                    container: c.clone(),
                    ts_ms,
                    event: words,
                    count: 1,
                });
        };
        // reverse_shell: first shell exec and first outbound connection per container.
        let mut shells: BTreeMap<&ContainerId, (u64, &str)> = BTreeMap::new();
        let mut connects: BTreeMap<&ContainerId, (u64, String)> = BTreeMap::new();
        // port_scan: the namespace counters of each container over the window.
        let mut scans: BTreeMap<&ContainerId, ScanTally> = BTreeMap::new();
        for ev in events {
            for (i, words) in self.match_event(ev) {
                record(i, ev.container(), ev.ts_ms(), words);
            }
            match ev {
                Event::Exec {
                    container,
                    ts_ms,
                    binary,
                } if SHELLS.contains(&basename(binary).to_ascii_lowercase().as_str()) => {
                    let e = shells.entry(container).or_insert((*ts_ms, binary));
                    if *ts_ms < e.0 {
                        *e = (*ts_ms, binary);
                    }
                }
                Event::Connect {
                    container,
                    ts_ms,
                    dst_ip,
                    dst_port,
                } if is_external(dst_ip) => {
                    let e = connects
                        .entry(container)
                        .or_insert((*ts_ms, format!("{dst_ip}:{dst_port}")));
                    if *ts_ms < e.0 {
                        *e = (*ts_ms, format!("{dst_ip}:{dst_port}"));
                    }
                }
                Event::Net {
                    container,
                    ts_ms,
                    net,
                } => {
                    if let Some(r) = net.new_remotes.iter().find(|r| is_external(&r.ip())) {
                        let e = connects.entry(container).or_insert((*ts_ms, r.to_string()));
                        if *ts_ms < e.0 {
                            *e = (*ts_ms, r.to_string());
                        }
                    }
                    let t = scans.entry(container).or_insert(ScanTally {
                        ts_ms: *ts_ms,
                        ..ScanTally::default()
                    });
                    t.ts_ms = t.ts_ms.min(*ts_ms);
                    t.opens = t.opens.saturating_add(net.active_opens);
                    t.fails = t.fails.saturating_add(net.attempt_fails);
                    t.interval_ms = t.interval_ms.saturating_add(net.interval_ms);
                    t.syn_sent_ports = t.syn_sent_ports.max(net.syn_sent_ports);
                }
                _ => {}
            }
        }
        if let Some(i) = index("port_scan").filter(|i| self.enabled[*i]) {
            for (c, t) in &scans {
                let failed = t.fails >= self.scan_failed_opens && t.fails >= t.opens.div_ceil(2);
                if failed {
                    let secs = t.interval_ms as f64 / 1000.0;
                    record(
                        i,
                        c,
                        t.ts_ms,
                        format!(
                            "{} of {} outbound TCP connection attempts failed in {secs:.1} s",
                            t.fails, t.opens
                        ),
                    );
                } else if t.syn_sent_ports >= SCAN_SYN_SENT_PORTS {
                    record(
                        i,
                        c,
                        t.ts_ms,
                        format!(
                            "connections pending (SYN_SENT) to {} distinct ports",
                            t.syn_sent_ports
                        ),
                    );
                }
            }
        }
        if let Some(i) = index("reverse_shell").filter(|i| self.enabled[*i]) {
            for (c, (ts, bin)) in &shells {
                if let Some((cts, dst)) = connects.get(c) {
                    record(
                        i,
                        c,
                        (*ts).min(*cts),
                        format!("exec {bin} and connect {dst}"),
                    );
                }
            }
        }
        let out: Vec<RuleHit> = hits.into_values().collect();
        for h in &out {
            if let Some(i) = index(h.rule.id) {
                self.counters.hits[i]
                    .fetch_add(u64::from(h.count), std::sync::atomic::Ordering::Relaxed);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::falco::parse_falco_line;
    use crate::telemetry::tetragon::parse_tetragon_line;

    const FALCO: &str = include_str!("../../tests/fixtures/falco-rules.jsonl");
    const TETRAGON: &str = include_str!("../../tests/fixtures/tetragon-kprobes.jsonl");

    /// Events of the fixture line whose text contains `needle`.
    fn line_events(
        text: &str,
        needle: &str,
        parse: crate::telemetry::events::LineParser,
    ) -> Vec<Event> {
        let line = text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no fixture line with {needle}"));
        parse(line).unwrap()
    }

    fn fired(events: &[Event]) -> Vec<&'static str> {
        RuleEngine::new(&RulesConfig::default())
            .evaluate(events)
            .iter()
            .map(|h| h.rule.id)
            .collect()
    }

    fn falco(needle: &str) -> Vec<&'static str> {
        fired(&line_events(FALCO, needle, parse_falco_line))
    }

    fn tetragon(needle: &str) -> Vec<&'static str> {
        fired(&line_events(TETRAGON, needle, parse_tetragon_line))
    }

    #[test]
    fn setuid_root_by_non_root_fires_and_root_caller_does_not() {
        // Falco "Non sudo setuid" by www-data.
        assert_eq!(falco("Non sudo setuid"), vec!["setuid_root"]);
        // Tetragon setuid(0) by a process already running as uid 0: nothing gained.
        assert_eq!(tetragon("__x64_sys_setuid"), Vec::<&str>::new());
        // The same call by uid 1000 is the escalation.
        let line = TETRAGON
            .lines()
            .find(|l| l.contains("__x64_sys_setuid"))
            .unwrap()
            .replacen("\"uid\":0", "\"uid\":1000", 1);
        let evs = parse_tetragon_line(&line).unwrap();
        let hits = RuleEngine::new(&RulesConfig::default()).evaluate(&evs);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].rule.id, "setuid_root");
        assert!(hits[0].event.contains("uid=1000") && hits[0].event.contains("target_uid=0"));
        // setuid to a non-root uid is a privilege drop.
        let drop = line.replace("{\"int_arg\":0}", "{\"int_arg\":33}");
        assert!(fired(&parse_tetragon_line(&drop).unwrap()).is_empty());
        // commit_creds to uid 0 from root: no hit either.
        assert!(tetragon("commit_creds").is_empty());
    }

    #[test]
    fn release_agent_and_core_pattern_writes() {
        assert_eq!(falco("release_agent"), vec!["cgroup_release_agent"]);
        assert_eq!(
            tetragon("memory/release_agent"),
            vec!["cgroup_release_agent"]
        );
        assert_eq!(falco("core_pattern"), vec!["kernel_tunable_write"]);
    }

    #[test]
    fn exec_from_tmp_and_miner_binaries() {
        assert_eq!(falco("Drop and execute"), vec!["exec_from_tmpfs"]);
        let ev = Event::Exec {
            container: ContainerId("c".into()),
            ts_ms: 1,
            binary: "/dev/shm/xmrig".into(),
        };
        assert_eq!(fired(&[ev]), vec!["exec_from_tmpfs", "miner_binary"]);
        let memfd = Event::Exec {
            container: ContainerId("c".into()),
            ts_ms: 1,
            binary: "memfd:payload (deleted)".into(),
        };
        assert_eq!(fired(&[memfd]), vec!["exec_from_tmpfs"]);
        let normal = Event::Exec {
            container: ContainerId("c".into()),
            ts_ms: 1,
            binary: "/usr/sbin/nginx".into(),
        };
        assert!(fired(&[normal]).is_empty());
    }

    #[test]
    fn stratum_ports_and_their_config() {
        // Falco miner-pool rule: connection to 45.9.148.21:3333.
        assert_eq!(falco("common miner pool ports"), vec!["stratum_port"]);
        assert!(
            falco("Unexpected outbound connection").is_empty(),
            "443 is no pool port"
        );
        let evs = line_events(FALCO, "common miner pool ports", parse_falco_line);
        let other = RuleEngine::new(&RulesConfig {
            miner_ports: Some(vec![9000]),
            ..RulesConfig::default()
        });
        assert!(other.evaluate(&evs).is_empty());
    }

    #[test]
    fn namespace_ptrace_module_capability_and_shadow() {
        assert_eq!(falco("Mount Launched"), vec!["namespace_change"]);
        assert_eq!(falco("via unshare"), vec!["namespace_change"]);
        assert_eq!(falco("setns [custom]"), vec!["namespace_change"]);
        assert_eq!(tetragon("__x64_sys_mount"), vec!["namespace_change"]);
        assert_eq!(tetragon("__x64_sys_setns"), vec!["namespace_change"]);
        assert_eq!(falco("PTRACE attached"), vec!["ptrace_attach"]);
        assert_eq!(tetragon("__x64_sys_ptrace"), vec!["ptrace_attach"]);
        assert_eq!(falco("Kernel module loaded"), vec!["module_load"]);
        assert_eq!(tetragon("finit_module"), vec!["module_load"]);
        assert_eq!(tetragon("cap_capable"), vec!["cap_sys_admin"]);
        // Falco's capset line names no capability: a capability drop is
        // ordinary, so no hit without CAP_SYS_ADMIN.
        assert!(falco("Capability raised").is_empty());
        assert_eq!(falco("Read sensitive file untrusted"), vec!["shadow_read"]);
        assert_eq!(tetragon("\"/etc/shadow\""), vec!["shadow_read"]);
        assert!(falco("Service account token").is_empty());
        // A PTRACE_PEEKDATA is a read of a traced child, not an attach.
        let peek = TETRAGON
            .lines()
            .find(|l| l.contains("__x64_sys_ptrace"))
            .unwrap()
            .replace("{\"int_arg\":16}", "{\"int_arg\":2}");
        assert!(fired(&parse_tetragon_line(&peek).unwrap()).is_empty());
    }

    #[test]
    fn a_shell_on_a_socket_is_a_reverse_shell_on_its_own() {
        let engine = RuleEngine::new(&RulesConfig::default());
        let ev = Event::Kernel {
            container: ContainerId("c1".into()),
            ts_ms: 9,
            kind: KernelEventKind::ShellOnSocket,
            detail: KernelDetail {
                process: Some("/bin/sh".into()),
                ..KernelDetail::default()
            }
            .boxed(),
        };
        let hits = engine.evaluate(&[ev]);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].rule.id, "reverse_shell");
        assert!(hits[0].event.contains("/bin/sh"));
    }

    #[test]
    fn reverse_shell_needs_shell_and_connection_in_one_container() {
        let c = |s: &str| ContainerId(s.into());
        let shell = Event::Exec {
            container: c("web"),
            ts_ms: 5,
            binary: "/bin/sh".into(),
        };
        let conn = |who: &str, ip: &str| Event::Connect {
            container: c(who),
            ts_ms: 7,
            dst_ip: ip.parse().unwrap(),
            dst_port: 4444,
        };
        let e = RuleEngine::new(&RulesConfig {
            disable: vec!["stratum_port".into()],
            ..RulesConfig::default()
        });
        let hits = e.evaluate(&[shell.clone(), conn("web", "45.9.148.21")]);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].rule.id, "reverse_shell");
        assert_eq!(hits[0].ts_ms, 5);
        assert_eq!(hits[0].event, "exec /bin/sh and connect 45.9.148.21:4444");
        assert!(e.evaluate(std::slice::from_ref(&shell)).is_empty());
        assert!(
            e.evaluate(&[shell.clone(), conn("db", "45.9.148.21")])
                .is_empty()
        );
        // In-cluster and local destinations are ordinary traffic (health
        // checks run `sh -c`, apps talk to their databases).
        for ip in [
            "127.0.0.1",
            "10.0.0.9",
            "192.168.1.4",
            "172.20.0.2",
            "100.64.0.1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                e.evaluate(&[shell.clone(), conn("web", ip)]).is_empty(),
                "{ip}"
            );
        }
        assert_eq!(
            e.evaluate(&[shell, conn("web", "2001:4860::8888")]).len(),
            1
        );
    }

    fn net(c: &str, opens: u64, fails: u64, syn_ports: u32, remotes: &[&str]) -> Event {
        Event::Net {
            container: ContainerId(c.into()),
            ts_ms: 42,
            net: Box::new(crate::telemetry::NetActivity {
                interval_ms: 10_000,
                active_opens: opens,
                attempt_fails: fails,
                syn_sent: syn_ports,
                syn_sent_ports: syn_ports,
                new_remotes: remotes.iter().map(|r| r.parse().unwrap()).collect(),
                new_remotes_total: remotes.len() as u32,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn port_scan_fires_on_many_failed_attempts_not_on_a_busy_client() {
        let e = RuleEngine::new(&RulesConfig::default());
        // A connect scan of 100 closed ports.
        let hits = e.evaluate(&[net("scanner", 100, 100, 0, &[])]);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].rule.id, "port_scan");
        assert_eq!(hits[0].rule.severity, Severity::High);
        assert_eq!(
            hits[0].event,
            "100 of 100 outbound TCP connection attempts failed in 10.0 s"
        );
        // Split over two readings of the same window: summed.
        assert_eq!(
            e.evaluate(&[net("s", 30, 30, 0, &[]), net("s", 30, 30, 0, &[])])
                .len(),
            1
        );
        // A busy client: 10,000 attempts, 400 failed while a backend restarted.
        assert!(e.evaluate(&[net("web", 10_000, 400, 0, &[])]).is_empty());
        // A client retrying a dead dependency once a second.
        assert!(e.evaluate(&[net("app", 10, 10, 0, &[])]).is_empty());
        // Just under and at the threshold.
        assert!(e.evaluate(&[net("s", 49, 49, 0, &[])]).is_empty());
        assert_eq!(e.evaluate(&[net("s", 50, 50, 0, &[])]).len(), 1);
        // Two containers' failures are never added up.
        assert!(
            e.evaluate(&[net("a", 30, 30, 0, &[]), net("b", 30, 30, 0, &[])])
                .is_empty()
        );
        // A scan of filtered ports: pending connections to many ports.
        let hits = e.evaluate(&[net("f", 40, 0, 40, &[])]);
        assert_eq!(hits.len(), 1);
        assert!(hits[0].event.contains("40 distinct ports"), "{hits:?}");
        assert!(e.evaluate(&[net("f", 40, 0, 31, &[])]).is_empty());
        // Configurable threshold; disabled rule.
        let strict = RuleEngine::new(&RulesConfig {
            scan_failed_opens: 200,
            ..RulesConfig::default()
        });
        assert!(strict.evaluate(&[net("s", 100, 100, 0, &[])]).is_empty());
        let off = RuleEngine::new(&RulesConfig {
            disable: vec!["port_scan".into()],
            ..RulesConfig::default()
        });
        assert!(off.evaluate(&[net("s", 100, 100, 0, &[])]).is_empty());
        let zero = RulesConfig {
            scan_failed_opens: 0,
            ..RulesConfig::default()
        };
        assert_eq!(zero.problems().len(), 1);
    }

    #[test]
    fn raw_socket_fires_on_a_raw_or_packet_socket_only() {
        let e = RuleEngine::new(&RulesConfig::default());
        let with = |c: &str, raw: u32, packet: u32| Event::Net {
            container: ContainerId(c.into()),
            ts_ms: 7,
            net: Box::new(crate::telemetry::NetActivity {
                interval_ms: 10_000,
                raw_sockets: raw,
                packet_sockets: packet,
                ..Default::default()
            }),
        };
        let hits = e.evaluate(&[with("scanner", 1, 2)]);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].rule.id, "raw_socket");
        assert_eq!(hits[0].rule.severity, Severity::High);
        assert_eq!(
            hits[0].event,
            "1 raw IP and 2 packet sockets open in the network namespace"
        );
        assert_eq!(e.evaluate(&[with("arp", 0, 1)]).len(), 1);
        assert_eq!(e.evaluate(&[with("spoof", 1, 0)]).len(), 1);
        // No raw socket, a busy namespace otherwise: nothing.
        assert!(e.evaluate(&[net("web", 10_000, 0, 3, &[])]).is_empty());
        assert!(e.evaluate(&[with("web", 0, 0)]).is_empty());
        let off = RuleEngine::new(&RulesConfig {
            disable: vec!["raw_socket".into()],
            ..RulesConfig::default()
        });
        assert!(off.evaluate(&[with("scanner", 1, 2)]).is_empty());
    }

    #[test]
    fn socket_table_connections_reach_the_pool_and_reverse_shell_rules() {
        let e = RuleEngine::new(&RulesConfig::default());
        let miner = net("m", 1, 0, 0, &["45.9.148.21:3333"]);
        let hits = e.evaluate(std::slice::from_ref(&miner));
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].rule.id, "stratum_port");
        assert_eq!(
            hits[0].event,
            "connection to 45.9.148.21:3333 (socket table)"
        );
        // A shell exec and a new external connection in one window.
        let shell = Event::Exec {
            container: ContainerId("w".into()),
            ts_ms: 5,
            binary: "/bin/sh".into(),
        };
        let out = net("w", 1, 0, 0, &["10.0.0.5:5432", "203.0.113.7:9001"]);
        let hits = e.evaluate(&[shell.clone(), out]);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].rule.id, "reverse_shell");
        assert_eq!(hits[0].event, "exec /bin/sh and connect 203.0.113.7:9001");
        // In-cluster destinations only: nothing.
        let local = net("w", 1, 0, 0, &["10.0.0.5:5432"]);
        assert!(e.evaluate(&[shell, local]).is_empty());
    }

    #[test]
    fn disabled_rules_and_counts() {
        let evs = line_events(FALCO, "Non sudo setuid", parse_falco_line);
        let e = RuleEngine::new(&RulesConfig {
            disable: vec!["setuid_root".into()],
            ..RulesConfig::default()
        });
        assert!(!e.is_enabled("setuid_root"));
        assert!(e.evaluate(&evs).is_empty());
        assert!(RuleEngine::disabled().evaluate(&evs).is_empty());
        // Three matching events of one container: one hit with count 3.
        let e = RuleEngine::new(&RulesConfig::default());
        let three: Vec<Event> = (0..3).flat_map(|_| evs.clone()).collect();
        let hits = e.evaluate(&three);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].count, 3);
        let snap = e.counters().snapshot();
        assert!(snap.contains(&("setuid_root", 3)), "{snap:?}");
        let bad = RulesConfig {
            disable: vec!["setuid".into()],
            miner_ports: Some(vec![]),
            ..RulesConfig::default()
        };
        let p = bad.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("\"setuid\""));
    }

    #[test]
    fn synthetic_attacks_without_details_still_hit() {
        let c = ContainerId("c".into());
        for (kind, id) in [
            (KernelEventKind::Setuid, "setuid_root"),
            (KernelEventKind::Ptrace, "ptrace_attach"),
            (KernelEventKind::Mount, "namespace_change"),
            (KernelEventKind::ModuleLoad, "module_load"),
        ] {
            let ev = Event::Kernel {
                container: c.clone(),
                ts_ms: 1,
                kind,
                detail: None,
            };
            assert_eq!(fired(&[ev]), vec![id], "{kind:?}");
        }
    }

    #[test]
    fn synthetic_workloads_benign_quiet_attacks_caught() {
        use crate::sim::synthetic::{AttackKind, Profile, SyntheticSource};
        let profiles = [Profile::Web, Profile::Database, Profile::Batch, Profile::Ml];
        let list: Vec<(String, Profile)> = profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("c{i}"), *p))
            .collect();
        let e = RuleEngine::new(&RulesConfig::default());
        // 500 benign windows of every profile: no rule fires.
        let mut src = SyntheticSource::new(11, &list, 10_000);
        for _ in 0..500 {
            let (_, evs) = src.next_window();
            let hits = e.evaluate(&evs);
            assert!(hits.is_empty(), "benign hit: {hits:?}");
        }
        // Every attack kind on a web container: which rules fire.
        let mut caught = Vec::new();
        for kind in AttackKind::ALL {
            let mut src = SyntheticSource::new(3, &list, 10_000);
            src.inject("c0", kind, 2, 3).unwrap();
            let mut ids = std::collections::BTreeSet::new();
            for _ in 0..6 {
                let (_, evs) = src.next_window();
                for h in e.evaluate(&evs) {
                    assert_eq!(h.container.0, "c0", "{kind:?} hit elsewhere: {h:?}");
                    ids.insert(h.rule.id);
                }
            }
            caught.push((kind, ids));
        }
        let fired = |k: AttackKind| {
            caught
                .iter()
                .find(|(x, _)| *x == k)
                .map(|(_, s)| s.clone())
                .unwrap()
        };
        assert!(
            fired(AttackKind::PrivilegeEscalation).contains("setuid_root"),
            "{caught:?}"
        );
        assert!(
            fired(AttackKind::EscapeAttempt).contains("namespace_change"),
            "{caught:?}"
        );
        assert!(
            fired(AttackKind::ReverseShell).contains("reverse_shell"),
            "{caught:?}"
        );
        // Resource-only attacks are the model's job.
        assert!(fired(AttackKind::ForkBomb).is_empty(), "{caught:?}");
        println!("rules per synthetic attack: {caught:?}");
    }
}
