//! `/proc` readers used by the cgroup collector: `/proc/<pid>/net/dev`
//! (network counters of the process's network namespace, as cAdvisor reads
//! them) and PID lists (`cgroup.procs`).
//!
//! Parsers never panic; malformed lines are counted and skipped.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Upper bound on bytes read from one `/proc` or cgroup file.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Network counters summed over the interfaces of one network namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetDevCounters {
    /// Received bytes.
    pub rx_bytes: u64,
    /// Received packets.
    pub rx_packets: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
}

/// Result of parsing one `net/dev` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetDevParse {
    /// Sum over every interface except `lo`.
    pub counters: NetDevCounters,
    /// Interfaces summed (excluding `lo`).
    pub interfaces: u32,
    /// Lines that looked like interface lines but could not be parsed.
    pub malformed_lines: u64,
}

/// Parses `/proc/<pid>/net/dev`: the two header lines (no `:`) are ignored;
/// each `iface: rx_bytes rx_packets errs drop fifo frame compressed
/// multicast tx_bytes tx_packets ...` line is summed, except `lo`.
pub fn parse_net_dev(text: &str) -> NetDevParse {
    let mut out = NetDevParse::default();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            if !line.trim().is_empty() && !line.contains('|') {
                out.malformed_lines = out.malformed_lines.saturating_add(1);
            }
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            out.malformed_lines = out.malformed_lines.saturating_add(1);
            continue;
        }
        let fields: Result<Vec<u64>, _> = rest.split_whitespace().map(str::parse::<u64>).collect();
        let fields = match fields {
            Ok(f) if f.len() >= 10 => f,
            _ => {
                out.malformed_lines = out.malformed_lines.saturating_add(1);
                continue;
            }
        };
        if name == "lo" {
            continue;
        }
        let c = &mut out.counters;
        c.rx_bytes = c.rx_bytes.saturating_add(fields[0]);
        c.rx_packets = c.rx_packets.saturating_add(fields[1]);
        c.tx_bytes = c.tx_bytes.saturating_add(fields[8]);
        c.tx_packets = c.tx_packets.saturating_add(fields[9]);
        out.interfaces = out.interfaces.saturating_add(1);
    }
    out
}

/// Parses a PID list (`cgroup.procs`, one PID per line). Returns the PIDs
/// and the number of malformed lines.
pub fn parse_pids(text: &str) -> (Vec<u32>, u64) {
    let mut pids = Vec::new();
    let mut bad = 0u64;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        match t.parse::<u32>() {
            Ok(p) if p > 0 => pids.push(p),
            _ => bad = bad.saturating_add(1),
        }
    }
    (pids, bad)
}

/// Reads a small text file, at most [`MAX_FILE_BYTES`]; invalid UTF-8 is an
/// `InvalidData` error.
pub fn read_small(path: &Path) -> io::Result<String> {
    read_limited(path, MAX_FILE_BYTES)
}

/// Reads at most `limit` bytes of a text file; invalid UTF-8 is an
/// `InvalidData` error.
pub fn read_limited(path: &Path, limit: u64) -> io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A `/proc` mount at a configurable root (`/proc` on a host, `/host/proc`
/// in a container, a fixture directory in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    /// A `/proc` reader rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses `<root>/<pid>/net/dev`.
    pub fn net_dev(&self, pid: u32) -> io::Result<NetDevParse> {
        let path = self.root.join(pid.to_string()).join("net").join("dev");
        read_small(&path).map(|t| parse_net_dev(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3293      31    0    0    0     0          0         0     3293      31    0    0    0     0       0          0
  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0
  eth1: 1 1 0 0 0 0 0 0 2 2 0 0 0 0 0 0
";

    #[test]
    fn net_dev_sums_all_but_lo() {
        let p = parse_net_dev(NET_DEV);
        assert_eq!(
            p.counters,
            NetDevCounters {
                rx_bytes: 1001,
                rx_packets: 11,
                tx_bytes: 2002,
                tx_packets: 22
            }
        );
        assert_eq!(p.interfaces, 2);
        assert_eq!(p.malformed_lines, 0);
    }

    #[test]
    fn net_dev_malformed() {
        let p = parse_net_dev("eth0: 1 2 3\nwlan0: -1 0 0 0 0 0 0 0 0 0\ngarbage\n");
        assert_eq!(p.malformed_lines, 3);
        assert_eq!(p.interfaces, 0);
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("12\n\n x\n0\n13\n"), (vec![12, 13], 2));
    }
}
