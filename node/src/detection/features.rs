//! Per-container feature windows: THE documented feature schema.
//!
//! A [`WindowBuilder`] aggregates [`Event`]s per container over a fixed window
//! (the caller decides the window boundaries by calling
//! [`WindowBuilder::close`]) and emits one [`FeatureWindow`] per container that
//! produced at least one event in the window. Windows are sorted by container id.
//!
//! # Schema (version [`SCHEMA_VERSION`] = 1, [`NUM_FEATURES`] = 22)
//!
//! Rates are per second, computed from counter deltas between the *baseline*
//! sample (the last sample of that container seen before this window, or, for
//! a container's first window, the first sample inside it) and the last sample
//! inside the window. `log1p(x)` is `ln(1 + x)`; all values are `f32`.
//!
//! | # | name | definition |
//! |---|------|------------|
//! | 0 | `cpu_cores` | Δ`cpu_usage_usec` / Δt, in cores |
//! | 1 | `throttle_ratio` | Δ`nr_throttled` / Δ`nr_periods`, clamped to [0, 1] (0 without periods) |
//! | 2 | `log1p_memory_mib` | log1p(`memory_bytes` / MiB) of the last sample |
//! | 3 | `log1p_io_read_kib_s` | log1p(io read KiB/s) |
//! | 4 | `log1p_io_write_kib_s` | log1p(io write KiB/s) |
//! | 5 | `log1p_net_rx_kib_s` | log1p(net rx KiB/s) |
//! | 6 | `log1p_net_tx_kib_s` | log1p(net tx KiB/s) |
//! | 7 | `log1p_net_rx_pkts_s` | log1p(rx packets/s) |
//! | 8 | `log1p_net_tx_pkts_s` | log1p(tx packets/s) |
//! | 9 | `log1p_tx_bytes_per_pkt` | log1p(Δtx bytes / Δtx packets), 0 without tx packets |
//! | 10 | `log1p_pids` | log1p(`pids`) of the last sample |
//! | 11 | `log1p_execs` | log1p(# exec events) |
//! | 12 | `log1p_distinct_binaries` | log1p(# distinct exec'd binaries) |
//! | 13 | `log1p_new_binaries` | log1p(# distinct binaries never exec'd before in this container) |
//! | 14 | `log1p_connects` | log1p(# outbound connection attempts: # connect events, or the TCP active opens of the container's network namespace when larger) |
//! | 15 | `log1p_distinct_dst_ips` | log1p(# distinct destination IPs: of connect events and of outbound connections first seen in the namespace's socket tables) |
//! | 16 | `log1p_distinct_dst_ports` | log1p(# distinct destination ports, from the same) |
//! | 17 | `log1p_new_dst_ips` | log1p(# distinct destination IPs never seen before in this container) |
//! | 18 | `log1p_privilege_events` | log1p(# `Setuid` + `Capset`) |
//! | 19 | `log1p_escape_events` | log1p(# `Mount` + `Unshare` + `Setns` + `Ptrace` + `ModuleLoad` + `PacketSocket`) |
//! | 20 | `log1p_sensitive_file_events` | log1p(# `SensitiveFileRead` + `SensitiveFileWrite`) |
//! | 21 | `log1p_tx_rx_ratio` | log1p(tx KiB/s / (rx KiB/s + 1)) |
//!
//! Notes:
//! - A counter whose value decreased (reset, e.g. container restart) yields a
//!   zero rate for that counter in that window; nothing ever underflows. A
//!   CPU counter that went back marks the window
//!   [`FeatureWindow::restarted`].
//! - A container's first window has no earlier baseline, so its rates come
//!   from the samples inside the window only, and every binary / destination
//!   it uses counts as "new". Consumers that want clean statistics (e.g.
//!   [`crate::sim::synthetic::labelled_windows`]) skip that window.
//! - A container with events but no sample in the window gets zero rates and
//!   the gauges (memory, pids) of its last known sample (zero if none).
//! - Connection attempts come from two kinds of events that may both
//!   describe the same connections: `Connect` events (Falco, Tetragon) and
//!   the `netns` source's `Net` events (the namespace's `ActiveOpens`
//!   growth; it also sees the attempts no socket table shows, such as
//!   connections refused at once). Taking the larger of the two counts
//!   never counts a connection twice when both sources run. The `Net`
//!   events' other counters (failed attempts, resets) are the rule layer's
//!   (`port_scan`), not features, so the schema (and its hash) is unchanged.
//! - The per-container memories of known binaries and destination IPs are
//!   capped at [`MAX_KNOWN_PER_CONTAINER`] entries each (beyond that, unknown
//!   values keep counting as new).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::detection::scaler::{STD_FLOOR, Scaler};
use crate::telemetry::{ContainerId, Event, KernelEventKind, ResourceCounters};

/// Version of the feature schema; bump on any change of names, order or meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Number of features per window.
pub const NUM_FEATURES: usize = 22;

/// Feature names, in vector order (see the module table for definitions).
pub const FEATURE_NAMES: [&str; NUM_FEATURES] = [
    "cpu_cores",
    "throttle_ratio",
    "log1p_memory_mib",
    "log1p_io_read_kib_s",
    "log1p_io_write_kib_s",
    "log1p_net_rx_kib_s",
    "log1p_net_tx_kib_s",
    "log1p_net_rx_pkts_s",
    "log1p_net_tx_pkts_s",
    "log1p_tx_bytes_per_pkt",
    "log1p_pids",
    "log1p_execs",
    "log1p_distinct_binaries",
    "log1p_new_binaries",
    "log1p_connects",
    "log1p_distinct_dst_ips",
    "log1p_distinct_dst_ports",
    "log1p_new_dst_ips",
    "log1p_privilege_events",
    "log1p_escape_events",
    "log1p_sensitive_file_events",
    "log1p_tx_rx_ratio",
];

/// Index constants for the features (same order as [`FEATURE_NAMES`]).
pub mod idx {
    /// `cpu_cores`
    pub const CPU_CORES: usize = 0;
    /// `throttle_ratio`
    pub const THROTTLE_RATIO: usize = 1;
    /// `log1p_memory_mib`
    pub const MEMORY: usize = 2;
    /// `log1p_io_read_kib_s`
    pub const IO_READ: usize = 3;
    /// `log1p_io_write_kib_s`
    pub const IO_WRITE: usize = 4;
    /// `log1p_net_rx_kib_s`
    pub const NET_RX: usize = 5;
    /// `log1p_net_tx_kib_s`
    pub const NET_TX: usize = 6;
    /// `log1p_net_rx_pkts_s`
    pub const RX_PKTS: usize = 7;
    /// `log1p_net_tx_pkts_s`
    pub const TX_PKTS: usize = 8;
    /// `log1p_tx_bytes_per_pkt`
    pub const TX_BYTES_PER_PKT: usize = 9;
    /// `log1p_pids`
    pub const PIDS: usize = 10;
    /// `log1p_execs`
    pub const EXECS: usize = 11;
    /// `log1p_distinct_binaries`
    pub const DISTINCT_BINARIES: usize = 12;
    /// `log1p_new_binaries`
    pub const NEW_BINARIES: usize = 13;
    /// `log1p_connects`
    pub const CONNECTS: usize = 14;
    /// `log1p_distinct_dst_ips`
    pub const DISTINCT_DST_IPS: usize = 15;
    /// `log1p_distinct_dst_ports`
    pub const DISTINCT_DST_PORTS: usize = 16;
    /// `log1p_new_dst_ips`
    pub const NEW_DST_IPS: usize = 17;
    /// `log1p_privilege_events`
    pub const PRIVILEGE: usize = 18;
    /// `log1p_escape_events`
    pub const ESCAPE: usize = 19;
    /// `log1p_sensitive_file_events`
    pub const SENSITIVE_FILE: usize = 20;
    /// `log1p_tx_rx_ratio`
    pub const TX_RX_RATIO: usize = 21;
}

/// Smallest standard deviation a scaler gives `cpu_cores`: 0.01 core (10 ms
/// of CPU per second). An idle container's CPU barely varies over its
/// training windows, so a scaler floored at [`STD_FLOOR`]
/// (1 ms per second) turned one 50 ms blip of a shell's `sleep` loop into
/// a z-score of 50 and an incident; below 0.01 core a CPU change says
/// nothing an operator acts on, while a miner (tenths of a core and more)
/// stays tens of standard deviations out.
pub const CPU_CORES_STD_FLOOR: f32 = 0.01;

/// Per-feature floors on a scaler's standard deviation: each feature's
/// measurement resolution (see [`CPU_CORES_STD_FLOOR`]); the others keep
/// the scaler's generic floor. Applied by [`schema_scaler`].
pub const STD_FLOORS: [f32; NUM_FEATURES] = {
    let mut f = [STD_FLOOR; NUM_FEATURES];
    f[idx::CPU_CORES] = CPU_CORES_STD_FLOOR;
    f
};

/// `scaler` with every standard deviation raised to at least
/// [`STD_FLOORS`]: the scaler a node trains, calibrates and scores with,
/// whether it built it locally or received it in a global model (the
/// coordinator's floor is generic; it does not know the feature schema).
pub fn schema_scaler(scaler: Scaler) -> Scaler {
    scaler.with_floors(&STD_FLOORS)
}

/// Cap on the per-container memory of known binaries and of known destination IPs.
pub const MAX_KNOWN_PER_CONTAINER: usize = 4096;

/// SHA-256 over the schema version (little-endian u32) and each feature name
/// (length-prefixed as little-endian u32, then UTF-8 bytes).
pub fn feature_schema_hash() -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedmesh-features");
    h.update(SCHEMA_VERSION.to_le_bytes());
    for name in FEATURE_NAMES {
        // Feature names are short constants; the length always fits in u32.
        h.update((name.len() as u32).to_le_bytes());
        h.update(name.as_bytes());
    }
    h.finalize().into()
}

/// One feature vector for one container over `[start_ms, end_ms)`.
///
/// Uses a fixed-size array (serde supports arrays up to 32 elements), so the
/// width is enforced by the type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureWindow {
    /// Container the window describes.
    pub container: ContainerId,
    /// Window start (inclusive), milliseconds.
    pub start_ms: u64,
    /// Window end (exclusive), milliseconds.
    pub end_ms: u64,
    /// Feature values in [`FEATURE_NAMES`] order.
    pub features: [f32; NUM_FEATURES],
    /// The container's CPU counter went back since its previous sample: its
    /// cgroup was made anew under the same id (`docker restart`, a restart
    /// policy), so this window starts a new run of the container.
    #[serde(default)]
    pub restarted: bool,
}

/// Per-window aggregation state of one container.
#[derive(Debug, Default, Clone)]
struct WindowAcc {
    first_sample: Option<(u64, ResourceCounters)>,
    last_sample: Option<(u64, ResourceCounters)>,
    execs: u64,
    binaries: HashSet<String>,
    connects: u64,
    /// TCP active opens of the container's namespace (`Net` events).
    net_opens: u64,
    dst_ips: HashSet<IpAddr>,
    dst_ports: HashSet<u16>,
    privilege: u64,
    escape: u64,
    sensitive: u64,
}

/// Long-lived state of one container.
#[derive(Debug, Default, Clone)]
struct ContainerState {
    /// Last sample seen in any closed window (the next window's baseline).
    baseline: Option<(u64, ResourceCounters)>,
    known_binaries: HashSet<String>,
    known_ips: HashSet<IpAddr>,
    acc: WindowAcc,
    active: bool,
}

/// Aggregates events into per-container [`FeatureWindow`]s.
#[derive(Debug, Default, Clone)]
pub struct WindowBuilder {
    containers: BTreeMap<ContainerId, ContainerState>,
    window_start: Option<u64>,
}

fn delta(cur: u64, prev: u64) -> Option<u64> {
    cur.checked_sub(prev)
}

fn log1p(x: f64) -> f32 {
    if x.is_finite() && x > 0.0 {
        x.ln_1p() as f32
    } else {
        0.0
    }
}

fn count_log1p(n: u64) -> f32 {
    log1p(n as f64)
}

impl WindowBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of containers the builder keeps state for.
    pub fn known_containers(&self) -> usize {
        self.containers.len()
    }

    /// Adds one event to the current window. Never panics: out-of-order
    /// samples only replace the window's last sample if they are newer.
    pub fn push(&mut self, ev: &Event) {
        let ts = ev.ts_ms();
        self.window_start = Some(self.window_start.map_or(ts, |s| s.min(ts)));
        // Look up before inserting: no id copy per event once the
        // container is known.
        let st = match self.containers.get_mut(ev.container()) {
            Some(st) => st,
            None => self.containers.entry(ev.container().clone()).or_default(),
        };
        st.active = true;
        let acc = &mut st.acc;
        match ev {
            Event::Sample {
                ts_ms, counters, ..
            } => {
                let s = (*ts_ms, *counters);
                match acc.first_sample {
                    Some((t, _)) if t <= *ts_ms => {}
                    _ => acc.first_sample = Some(s),
                }
                match acc.last_sample {
                    Some((t, _)) if t > *ts_ms => {}
                    _ => acc.last_sample = Some(s),
                }
            }
            Event::Exec { binary, .. } => {
                acc.execs = acc.execs.saturating_add(1);
                if acc.binaries.len() < MAX_KNOWN_PER_CONTAINER && !acc.binaries.contains(binary) {
                    acc.binaries.insert(binary.clone());
                }
            }
            Event::Connect {
                dst_ip, dst_port, ..
            } => {
                acc.connects = acc.connects.saturating_add(1);
                if acc.dst_ips.len() < MAX_KNOWN_PER_CONTAINER {
                    acc.dst_ips.insert(*dst_ip);
                }
                if acc.dst_ports.len() < MAX_KNOWN_PER_CONTAINER {
                    acc.dst_ports.insert(*dst_port);
                }
            }
            Event::Net { net, .. } => {
                acc.net_opens = acc.net_opens.saturating_add(net.active_opens);
                for r in &net.new_remotes {
                    if acc.dst_ips.len() < MAX_KNOWN_PER_CONTAINER {
                        acc.dst_ips.insert(r.ip());
                    }
                    if acc.dst_ports.len() < MAX_KNOWN_PER_CONTAINER {
                        acc.dst_ports.insert(r.port());
                    }
                }
            }
            Event::Kernel { kind, .. } => {
                let c = match kind {
                    KernelEventKind::Setuid | KernelEventKind::Capset => &mut acc.privilege,
                    KernelEventKind::SensitiveFileRead | KernelEventKind::SensitiveFileWrite => {
                        &mut acc.sensitive
                    }
                    KernelEventKind::Mount
                    | KernelEventKind::Unshare
                    | KernelEventKind::Setns
                    | KernelEventKind::Ptrace
                    | KernelEventKind::ModuleLoad
                    | KernelEventKind::PacketSocket => &mut acc.escape,
                    // Decisive on its own: the rule layer's, not a feature.
                    KernelEventKind::ShellOnSocket => return,
                };
                *c = c.saturating_add(1);
            }
        }
    }

    /// Closes the current window at `end_ms` and returns one window per
    /// container that had events, sorted by container id. The window start is
    /// the previous `close` time (or the earliest event timestamp for the first
    /// window).
    pub fn close(&mut self, end_ms: u64) -> Vec<FeatureWindow> {
        let start_ms = self.window_start.unwrap_or(end_ms).min(end_ms);
        self.window_start = Some(end_ms);
        let mut out = Vec::new();
        for (id, st) in self.containers.iter_mut() {
            if !st.active {
                continue;
            }
            st.active = false;
            let acc = std::mem::take(&mut st.acc);
            let features = compute_features(st, &acc);
            let cpu = |s: Option<(u64, ResourceCounters)>| s.map(|(_, c)| c.cpu_usage_usec);
            // A counter read as 0 is a failed read (a collector reports 0
            // for a file it could not read), not a new run.
            let went_back = |a: Option<u64>, b: Option<u64>| matches!((a, b), (Some(a), Some(b)) if 0 < b && b < a);
            let restarted = went_back(cpu(st.baseline), cpu(acc.first_sample))
                || went_back(cpu(acc.first_sample), cpu(acc.last_sample));
            if let Some(last) = acc.last_sample {
                // Keep the newest sample as the next baseline.
                match st.baseline {
                    Some((t, _)) if t > last.0 => {}
                    _ => st.baseline = Some(last),
                }
            }
            out.push(FeatureWindow {
                container: id.clone(),
                start_ms,
                end_ms,
                features,
                restarted,
            });
        }
        out
    }
}

fn compute_features(st: &mut ContainerState, acc: &WindowAcc) -> [f32; NUM_FEATURES] {
    let mut f = [0.0f32; NUM_FEATURES];
    let base = st.baseline.or(acc.first_sample);
    match (base, acc.last_sample) {
        (Some((t0, c0)), Some((t1, c1))) => {
            let dt_s = t1.saturating_sub(t0) as f64 / 1000.0;
            if dt_s > 0.0 {
                let rate = |cur: u64, prev: u64| -> f64 {
                    delta(cur, prev).map_or(0.0, |d| d as f64 / dt_s)
                };
                f[idx::CPU_CORES] = (rate(c1.cpu_usage_usec, c0.cpu_usage_usec) / 1e6) as f32;
                if let (Some(dp), Some(dthr)) = (
                    delta(c1.nr_periods, c0.nr_periods),
                    delta(c1.nr_throttled, c0.nr_throttled),
                ) && dp > 0
                {
                    f[idx::THROTTLE_RATIO] = (dthr as f64 / dp as f64).clamp(0.0, 1.0) as f32;
                }
                f[idx::IO_READ] = log1p(rate(c1.io_read_bytes, c0.io_read_bytes) / 1024.0);
                f[idx::IO_WRITE] = log1p(rate(c1.io_write_bytes, c0.io_write_bytes) / 1024.0);
                let rx_kib = rate(c1.net_rx_bytes, c0.net_rx_bytes) / 1024.0;
                let tx_kib = rate(c1.net_tx_bytes, c0.net_tx_bytes) / 1024.0;
                f[idx::NET_RX] = log1p(rx_kib);
                f[idx::NET_TX] = log1p(tx_kib);
                f[idx::RX_PKTS] = log1p(rate(c1.net_rx_packets, c0.net_rx_packets));
                f[idx::TX_PKTS] = log1p(rate(c1.net_tx_packets, c0.net_tx_packets));
                if let (Some(db), Some(dp)) = (
                    delta(c1.net_tx_bytes, c0.net_tx_bytes),
                    delta(c1.net_tx_packets, c0.net_tx_packets),
                ) && dp > 0
                {
                    f[idx::TX_BYTES_PER_PKT] = log1p(db as f64 / dp as f64);
                }
                f[idx::TX_RX_RATIO] = log1p(tx_kib / (rx_kib + 1.0));
            }
            f[idx::MEMORY] = log1p(c1.memory_bytes as f64 / (1024.0 * 1024.0));
            f[idx::PIDS] = log1p(c1.pids as f64);
        }
        (Some((_, c)), None) | (None, Some((_, c))) => {
            f[idx::MEMORY] = log1p(c.memory_bytes as f64 / (1024.0 * 1024.0));
            f[idx::PIDS] = log1p(c.pids as f64);
        }
        (None, None) => {}
    }
    f[idx::EXECS] = count_log1p(acc.execs);
    f[idx::DISTINCT_BINARIES] = count_log1p(acc.binaries.len() as u64);
    let mut new_bins = 0u64;
    for b in &acc.binaries {
        if !st.known_binaries.contains(b) {
            new_bins += 1;
            if st.known_binaries.len() < MAX_KNOWN_PER_CONTAINER {
                st.known_binaries.insert(b.clone());
            }
        }
    }
    f[idx::NEW_BINARIES] = count_log1p(new_bins);
    f[idx::CONNECTS] = count_log1p(acc.connects.max(acc.net_opens));
    f[idx::DISTINCT_DST_IPS] = count_log1p(acc.dst_ips.len() as u64);
    f[idx::DISTINCT_DST_PORTS] = count_log1p(acc.dst_ports.len() as u64);
    let mut new_ips = 0u64;
    for ip in &acc.dst_ips {
        if !st.known_ips.contains(ip) {
            new_ips += 1;
            if st.known_ips.len() < MAX_KNOWN_PER_CONTAINER {
                st.known_ips.insert(*ip);
            }
        }
    }
    f[idx::NEW_DST_IPS] = count_log1p(new_ips);
    f[idx::PRIVILEGE] = count_log1p(acc.privilege);
    f[idx::ESCAPE] = count_log1p(acc.escape);
    f[idx::SENSITIVE_FILE] = count_log1p(acc.sensitive);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cid(s: &str) -> ContainerId {
        ContainerId(s.to_string())
    }

    fn sample(c: &str, ts: u64, counters: ResourceCounters) -> Event {
        Event::Sample {
            container: cid(c),
            ts_ms: ts,
            counters,
        }
    }

    #[test]
    fn names_and_hash_are_stable() {
        assert_eq!(FEATURE_NAMES.len(), NUM_FEATURES);
        let unique: HashSet<_> = FEATURE_NAMES.iter().collect();
        assert_eq!(unique.len(), NUM_FEATURES);
        assert_eq!(feature_schema_hash(), feature_schema_hash());
        assert_eq!(FEATURE_NAMES[idx::TX_RX_RATIO], "log1p_tx_rx_ratio");
        assert_eq!(FEATURE_NAMES[idx::NEW_DST_IPS], "log1p_new_dst_ips");
    }

    #[test]
    fn rates_from_baseline_and_last_sample() {
        let mut b = WindowBuilder::new();
        b.push(&sample("a", 0, ResourceCounters::default()));
        b.push(&sample(
            "a",
            10_000,
            ResourceCounters {
                cpu_usage_usec: 5_000_000,
                nr_periods: 100,
                nr_throttled: 25,
                memory_bytes: 100 * 1024 * 1024,
                net_tx_bytes: 10 * 1024 * 10,
                net_tx_packets: 100,
                pids: 7,
                ..Default::default()
            },
        ));
        b.push(&Event::Exec {
            container: cid("a"),
            ts_ms: 5,
            binary: "sh".into(),
        });
        let w = b.close(10_001);
        assert_eq!(w.len(), 1);
        let f = w[0].features;
        assert!((f[idx::CPU_CORES] - 0.5).abs() < 1e-6);
        assert!((f[idx::THROTTLE_RATIO] - 0.25).abs() < 1e-6);
        assert!((f[idx::MEMORY] - 101f32.ln()).abs() < 1e-5);
        assert!((f[idx::NET_TX] - 11f32.ln()).abs() < 1e-5);
        assert!((f[idx::TX_BYTES_PER_PKT] - 1025f32.ln()).abs() < 1e-4);
        assert!((f[idx::PIDS] - 8f32.ln()).abs() < 1e-5);
        assert!((f[idx::NEW_BINARIES] - 2f32.ln()).abs() < 1e-6);
        // Second window: baseline carried over; binary no longer new.
        b.push(&sample(
            "a",
            20_000,
            ResourceCounters {
                cpu_usage_usec: 15_000_000,
                ..Default::default()
            },
        ));
        b.push(&Event::Exec {
            container: cid("a"),
            ts_ms: 15_000,
            binary: "sh".into(),
        });
        let w = b.close(20_001);
        let f = w[0].features;
        assert!((f[idx::CPU_CORES] - 1.0).abs() < 1e-6);
        assert_eq!(f[idx::NEW_BINARIES], 0.0);
        assert!((f[idx::DISTINCT_BINARIES] - 2f32.ln()).abs() < 1e-6);
        assert_eq!(w[0].start_ms, 10_001);
    }

    #[test]
    fn counter_reset_gives_zero_rate() {
        let mut b = WindowBuilder::new();
        let big = ResourceCounters {
            cpu_usage_usec: u64::MAX,
            net_rx_bytes: u64::MAX,
            nr_periods: 50,
            nr_throttled: 50,
            ..Default::default()
        };
        b.push(&sample("a", 0, big));
        b.close(1);
        b.push(&sample("a", 1000, ResourceCounters::default()));
        let w = b.close(2000);
        assert!(w[0].features.iter().all(|v| *v == 0.0));
        // A CPU counter of 0 is what a failed read gives: not a restart.
        assert!(!w[0].restarted);
    }

    #[test]
    fn a_cpu_counter_that_goes_back_marks_a_restart() {
        let at = |cpu| ResourceCounters {
            cpu_usage_usec: cpu,
            ..Default::default()
        };
        let mut b = WindowBuilder::new();
        b.push(&sample("a", 0, at(5_000_000)));
        b.push(&sample("a", 500, at(5_200_000)));
        assert!(!b.close(1000)[0].restarted);
        b.push(&sample("a", 1500, at(5_400_000)));
        assert!(!b.close(2000)[0].restarted);
        // Across windows: the new cgroup starts from zero.
        b.push(&sample("a", 2500, at(30_000)));
        assert!(b.close(3000)[0].restarted);
        assert!(!b.close(3000).iter().any(|w| w.restarted));
        b.push(&sample("a", 3500, at(60_000)));
        assert!(!b.close(4000)[0].restarted);
        // Within one window.
        b.push(&sample("a", 4200, at(90_000)));
        b.push(&sample("a", 4700, at(10_000)));
        assert!(b.close(5000)[0].restarted);
        // A failed read (0) is not a restart.
        b.push(&sample("a", 5200, at(0)));
        assert!(!b.close(5500)[0].restarted);
        // Events without samples say nothing of a restart.
        b.push(&Event::Kernel {
            container: cid("a"),
            ts_ms: 5500,
            kind: KernelEventKind::Mount,
            detail: None,
        });
        assert!(!b.close(6000)[0].restarted);
    }

    #[test]
    fn sorted_output_and_known_containers() {
        let mut b = WindowBuilder::new();
        for c in ["z", "a", "m"] {
            b.push(&Event::Kernel {
                container: cid(c),
                ts_ms: 1,
                kind: KernelEventKind::Mount,
                detail: None,
            });
        }
        let w = b.close(10);
        let ids: Vec<_> = w.iter().map(|w| w.container.0.as_str()).collect();
        assert_eq!(ids, vec!["a", "m", "z"]);
        assert_eq!(b.known_containers(), 3);
        assert!(b.close(20).is_empty());
    }

    fn net(c: &str, ts: u64, opens: u64, remotes: &[&str]) -> Event {
        Event::Net {
            container: cid(c),
            ts_ms: ts,
            net: Box::new(crate::telemetry::NetActivity {
                interval_ms: 10_000,
                active_opens: opens,
                attempt_fails: opens,
                new_remotes: remotes.iter().map(|r| r.parse().unwrap()).collect(),
                new_remotes_total: remotes.len() as u32,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn namespace_activity_feeds_the_connection_features_without_double_counting() {
        let mut b = WindowBuilder::new();
        // 100 refused attempts (no socket left) and one new outbound
        // connection seen in the table.
        b.push(&net("a", 5, 100, &["45.9.148.21:3333"]));
        let f = b.close(10)[0].features;
        assert!((f[idx::CONNECTS] - 101f32.ln()).abs() < 1e-5);
        assert!((f[idx::DISTINCT_DST_IPS] - 2f32.ln()).abs() < 1e-6);
        assert!((f[idx::DISTINCT_DST_PORTS] - 2f32.ln()).abs() < 1e-6);
        assert!((f[idx::NEW_DST_IPS] - 2f32.ln()).abs() < 1e-6);
        // Falco reports 3 of 4 attempts the namespace counted: 4, not 7.
        for port in [80, 81, 82] {
            b.push(&Event::Connect {
                container: cid("a"),
                ts_ms: 15,
                dst_ip: "10.0.0.1".parse().unwrap(),
                dst_port: port,
            });
        }
        b.push(&net("a", 19, 4, &["10.0.0.1:80"]));
        let f = b.close(20)[0].features;
        assert!((f[idx::CONNECTS] - 5f32.ln()).abs() < 1e-5);
        assert!((f[idx::DISTINCT_DST_PORTS] - 4f32.ln()).abs() < 1e-6);
        assert!((f[idx::NEW_DST_IPS] - 2f32.ln()).abs() < 1e-6);
        // More connect events than active opens: the events count.
        for _ in 0..9 {
            b.push(&Event::Connect {
                container: cid("a"),
                ts_ms: 25,
                dst_ip: "10.0.0.1".parse().unwrap(),
                dst_port: 80,
            });
        }
        b.push(&net("a", 29, 2, &[]));
        let f = b.close(30)[0].features;
        assert!((f[idx::CONNECTS] - 10f32.ln()).abs() < 1e-5);
        assert_eq!(f[idx::NEW_DST_IPS], 0.0);
    }

    fn arb_counters() -> impl Strategy<Value = ResourceCounters> {
        (
            prop::array::uniform8(any::<u64>()),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(a, x, y, z)| ResourceCounters {
                cpu_usage_usec: a[0],
                nr_periods: a[1],
                nr_throttled: a[2],
                memory_bytes: a[3],
                io_read_bytes: a[4],
                io_write_bytes: a[5],
                net_rx_bytes: a[6],
                net_tx_bytes: a[7],
                net_rx_packets: x,
                net_tx_packets: y,
                pids: z,
            })
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let c = prop::sample::select(vec!["a", "b", "c"]).prop_map(cid);
        prop_oneof![
            (c.clone(), any::<u64>(), arb_counters()).prop_map(|(container, ts_ms, counters)| {
                Event::Sample {
                    container,
                    ts_ms,
                    counters,
                }
            }),
            (c.clone(), any::<u64>(), "[a-z]{0,4}").prop_map(|(container, ts_ms, binary)| {
                Event::Exec {
                    container,
                    ts_ms,
                    binary,
                }
            }),
            (c.clone(), any::<u64>(), any::<[u8; 4]>(), any::<u16>()).prop_map(
                |(container, ts_ms, ip, dst_port)| Event::Connect {
                    container,
                    ts_ms,
                    dst_ip: IpAddr::from(ip),
                    dst_port,
                }
            ),
            (
                c.clone(),
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec(any::<([u8; 4], u16)>(), 0..4)
            )
                .prop_map(|(container, ts_ms, opens, remotes)| Event::Net {
                    container,
                    ts_ms,
                    net: Box::new(crate::telemetry::NetActivity {
                        active_opens: opens,
                        new_remotes: remotes
                            .into_iter()
                            .map(std::net::SocketAddr::from)
                            .collect(),
                        ..Default::default()
                    }),
                }),
            (c, any::<u64>(), 0usize..10).prop_map(|(container, ts_ms, k)| {
                let kinds = [
                    KernelEventKind::Setuid,
                    KernelEventKind::Capset,
                    KernelEventKind::Mount,
                    KernelEventKind::Unshare,
                    KernelEventKind::Setns,
                    KernelEventKind::Ptrace,
                    KernelEventKind::ModuleLoad,
                    KernelEventKind::SensitiveFileRead,
                    KernelEventKind::SensitiveFileWrite,
                    KernelEventKind::PacketSocket,
                ];
                Event::Kernel {
                    container,
                    ts_ms,
                    kind: kinds[k % kinds.len()],
                    detail: None,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_event_sequences_never_panic(
            events in prop::collection::vec(arb_event(), 0..60),
            closes in prop::collection::vec(any::<u64>(), 1..5),
        ) {
            let mut b = WindowBuilder::new();
            let chunk = events.len() / closes.len() + 1;
            for (i, evs) in events.chunks(chunk).enumerate() {
                for e in evs {
                    b.push(e);
                }
                let end = closes[i % closes.len()];
                let ws = b.close(end);
                for w in &ws {
                    prop_assert!(w.features.iter().all(|v| v.is_finite() && *v >= 0.0));
                }
                for pair in ws.windows(2) {
                    prop_assert!(pair[0].container < pair[1].container);
                }
            }
            prop_assert!(b.known_containers() <= 3);
        }
    }
}
