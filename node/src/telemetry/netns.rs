//! Network-namespace signals without Falco (`[[sources]] kind = "netns"`):
//! per container, the TCP counters and socket tables of its network
//! namespace, read from a member process's `/proc/<pid>/net/snmp`, `tcp`
//! and `tcp6` once per window. What the cgroup counters cannot show — a
//! port scan's refused connections, a reverse shell's or a miner's outbound
//! connection — becomes an [`Event::Net`] per namespace:
//!
//! | read | becomes |
//! |---|---|
//! | `snmp` `Tcp:` `ActiveOpens`, `PassiveOpens`, `AttemptFails`, `EstabResets`, `OutRsts`, `InErrs` | their growth since the namespace's previous reading |
//! | `raw` + `raw6` + `packet` | raw IP sockets (other than ICMP) and packet sockets at the reading: a SYN scan's, a sniffer's, a spoofer's |
//! | `tcp` + `tcp6` | listening sockets, `SYN_SENT` sockets and their distinct remote ports, distinct remote endpoints, and the outbound connections first seen at this reading (a non-listening socket whose local port is no listening port) |
//!
//! `snmp` and the raw and packet tables (small: the namespace's own raw
//! and packet sockets) are read every window; the TCP socket tables only when they can hold
//! something new: at a namespace's first reading and when its `ActiveOpens`
//! moved since they were last read (every new outbound connection is an
//! active open), at most `max_table_reads` ([`MAX_TABLE_READS`])
//! namespaces per window. Reading
//! `tcp` makes the kernel walk the whole TCP hash table, shared by every
//! namespace unless `net.ipv4.tcp_child_ehash_entries` gives new ones their
//! own (Linux ≥ 6.1); see BENCHMARKS.md for the cost.
//!
//! Namespaces, not containers, are read:
//!
//! - A namespace is identified by the inode of its `/proc/<pid>/net/snmp`
//!   entry (procfs creates one per network namespace). Unlike
//!   `/proc/<pid>/ns/net`, it needs no ptrace access, so the node stays
//!   unprivileged.
//! - Containers on the host's namespace (`network_mode: host`,
//!   `hostNetwork: true`: the namespace of `<proc_root>/self` or
//!   `<proc_root>/1`) are skipped and counted: the host's counters are
//!   every host process's, no container's.
//! - Containers sharing a namespace (a Kubernetes pod, `docker run
//!   --network container:…`) are read once, and the namespace's activity is
//!   attributed to one of them: the one it was attributed to at the
//!   previous reading while that one lives, else the lowest container id
//!   (so, when the node was already running, the container that created
//!   the namespace: a pod's sandbox). Its event says how many others share
//!   it (`shared_with`). Nothing is counted twice.
//!
//! The parsers ([`parse_snmp`], [`parse_tcp_line`], [`parse_tcp_table`],
//! [`parse_raw_table`], [`parse_packet_table`])
//! take text and return typed errors (fuzzed: `fuzz/fuzz_targets/proc_net.rs`);
//! the deltas ([`NetnsTracker::step`]) take parsed readings and the time;
//! only [`NetnsCollector`] touches files. Bounded: at most [`MAX_NETNS`]
//! namespaces, [`MAX_SOCKETS`] socket rows per reading and
//! [`MAX_TRACKED_OUTBOUND`] outbound connections remembered per namespace;
//! a namespace no longer read is forgotten at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cgroup::{CgroupCollector, CgroupError};
use super::proc::{MAX_FILE_BYTES, parse_pids, read_limited, read_small};
use super::{ContainerId, Event, NetActivity};

/// Namespaces tracked at most per reading (more are skipped and counted).
pub const MAX_NETNS: usize = 1024;

/// Socket rows parsed per namespace reading (`tcp` and `tcp6` together).
pub const MAX_SOCKETS: usize = 16_384;

/// Bytes read of each raw or packet table: room for [`MAX_SOCKETS`] rows
/// (every row is shorter than 256 bytes), so a table too long to read
/// whole reaches the row cap, whose excess counts as raw sockets, before
/// the byte limit cuts it.
pub const MAX_RAW_TABLE_BYTES: u64 = (MAX_SOCKETS as u64 + 1) * 256;

/// Outbound connections remembered per namespace to tell new ones; beyond,
/// connections are not reported as new (counted as untracked).
pub const MAX_TRACKED_OUTBOUND: usize = 1024;

/// Default of the namespaces whose socket tables are read per sample at
/// most (`[[sources]] kind = "netns"` `max_table_reads`; see
/// [`NetnsTracker::table_plan`]).
pub const MAX_TABLE_READS: usize = 32;

/// New remote endpoints listed in one event (all are counted).
pub const MAX_NEW_REMOTES: usize = 64;

/// Member processes tried per container.
const PID_TRIES: usize = 4;

/// TCP counters of one namespace (`/proc/<pid>/net/snmp`, `Tcp:` lines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `ActiveOpens`.
    pub active_opens: u64,
    /// `PassiveOpens`.
    pub passive_opens: u64,
    /// `AttemptFails`.
    pub attempt_fails: u64,
    /// `EstabResets`.
    pub estab_resets: u64,
    /// `InErrs`.
    pub in_errs: u64,
    /// `OutRsts`.
    pub out_rsts: u64,
}

/// The `Tcp:` fields read, in [`TcpCounters`] order.
const SNMP_FIELDS: [&str; 6] = [
    "ActiveOpens",
    "PassiveOpens",
    "AttemptFails",
    "EstabResets",
    "InErrs",
    "OutRsts",
];

/// Why a `snmp` file did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnmpError {
    /// No `Tcp:` header line followed by a `Tcp:` value line.
    #[error("no Tcp: header and value lines")]
    NoTcp,
    /// The header and value lines have different numbers of fields.
    #[error("Tcp: header has {header} fields, the value line {values}")]
    FieldCount {
        /// Fields named by the header.
        header: usize,
        /// Values on the value line.
        values: usize,
    },
    /// A field the node reads is not in the header.
    #[error("Tcp: has no {0} field")]
    MissingField(&'static str),
    /// A field the node reads is not an unsigned integer.
    #[error("Tcp: {0} is not an unsigned integer")]
    BadValue(&'static str),
}

/// Parses the `Tcp:` header and value lines of `/proc/<pid>/net/snmp`,
/// by field name (never by position). Other protocols' lines and fields
/// the node does not read (`MaxConn` is signed) are ignored.
pub fn parse_snmp(text: &str) -> Result<TcpCounters, SnmpError> {
    let mut tcp = text.lines().filter_map(|l| l.strip_prefix("Tcp:"));
    let (Some(header), Some(values)) = (tcp.next(), tcp.next()) else {
        return Err(SnmpError::NoTcp);
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    let vals: Vec<&str> = values.split_whitespace().collect();
    if names.len() != vals.len() {
        return Err(SnmpError::FieldCount {
            header: names.len(),
            values: vals.len(),
        });
    }
    let mut got = [0u64; SNMP_FIELDS.len()];
    for (slot, field) in got.iter_mut().zip(SNMP_FIELDS) {
        let i = names
            .iter()
            .position(|n| *n == field)
            .ok_or(SnmpError::MissingField(field))?;
        *slot = vals[i].parse().map_err(|_| SnmpError::BadValue(field))?;
    }
    let [
        active_opens,
        passive_opens,
        attempt_fails,
        estab_resets,
        in_errs,
        out_rsts,
    ] = got;
    Ok(TcpCounters {
        active_opens,
        passive_opens,
        attempt_fails,
        estab_resets,
        in_errs,
        out_rsts,
    })
}

/// TCP socket states as `/proc/net/tcp` numbers them (`st`, hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    /// 01
    Established,
    /// 02
    SynSent,
    /// 03
    SynRecv,
    /// 04
    FinWait1,
    /// 05
    FinWait2,
    /// 06
    TimeWait,
    /// 07
    Close,
    /// 08
    CloseWait,
    /// 09
    LastAck,
    /// 0A
    Listen,
    /// 0B
    Closing,
    /// 0C
    NewSynRecv,
}

impl TcpState {
    /// The state of a `/proc/net/tcp` state number.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => Self::Established,
            0x02 => Self::SynSent,
            0x03 => Self::SynRecv,
            0x04 => Self::FinWait1,
            0x05 => Self::FinWait2,
            0x06 => Self::TimeWait,
            0x07 => Self::Close,
            0x08 => Self::CloseWait,
            0x09 => Self::LastAck,
            0x0A => Self::Listen,
            0x0B => Self::Closing,
            0x0C => Self::NewSynRecv,
            _ => return None,
        })
    }
}

/// One row of `/proc/<pid>/net/tcp` or `tcp6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (unspecified for a listening socket).
    pub remote: SocketAddr,
    /// State.
    pub state: TcpState,
    /// Socket inode (0 for `TIME_WAIT` rows, which have no socket).
    pub inode: u64,
}

/// Why a socket-table row did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TcpLineError {
    /// Fewer than the 10 fields up to the inode.
    #[error("fewer than 10 fields")]
    TooFewFields,
    /// The slot field is not `<decimal>:`.
    #[error("bad slot field")]
    BadSlot,
    /// An address is not `<8 or 32 hex>:<1-4 hex>`.
    #[error("bad {0} address")]
    BadAddress(&'static str),
    /// The state is not a known two-digit hex state.
    #[error("bad state")]
    BadState,
    /// The inode is not a decimal integer.
    #[error("bad inode")]
    BadInode,
}

/// A hex address as the kernel prints it: each 32-bit word of the
/// network-order address printed as a native-endian number (`%08X`).
fn parse_hex_ip(s: &str) -> Option<IpAddr> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(s.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match s.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn parse_endpoint(s: &str, which: &'static str) -> Result<SocketAddr, TcpLineError> {
    let bad = TcpLineError::BadAddress(which);
    let (ip, port) = s.split_once(':').ok_or(bad)?;
    let ip = parse_hex_ip(ip).ok_or(bad)?;
    if port.is_empty() || port.len() > 4 || !port.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad);
    }
    let port = u16::from_str_radix(port, 16).map_err(|_| bad)?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses one row of `/proc/<pid>/net/tcp` or `tcp6`
/// (`sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`).
pub fn parse_tcp_line(line: &str) -> Result<TcpSocket, TcpLineError> {
    let mut f = line.split_whitespace();
    let mut next = || f.next().ok_or(TcpLineError::TooFewFields);
    let slot = next()?;
    let (local, remote, state) = (next()?, next()?, next()?);
    for _ in 0..5 {
        next()?;
    }
    let inode = next()?;
    let digits = slot.strip_suffix(':').ok_or(TcpLineError::BadSlot)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TcpLineError::BadSlot);
    }
    let local = parse_endpoint(local, "local")?;
    let remote = parse_endpoint(remote, "remote")?;
    if state.len() != 2 {
        return Err(TcpLineError::BadState);
    }
    let state = u8::from_str_radix(state, 16)
        .ok()
        .and_then(TcpState::from_code)
        .ok_or(TcpLineError::BadState)?;
    let inode = inode.parse().map_err(|_| TcpLineError::BadInode)?;
    Ok(TcpSocket {
        local,
        remote,
        state,
        inode,
    })
}

/// What parsing socket tables counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Rows decoded.
    pub rows: u64,
    /// Rows that did not decode (skipped).
    pub malformed: u64,
    /// Rows left unread past [`MAX_SOCKETS`].
    pub truncated: u64,
}

/// Parses a whole `tcp`/`tcp6` file into `out` (appending, up to
/// [`MAX_SOCKETS`] rows in `out`): the header line (`sl …`) and blank lines
/// are skipped, malformed rows are counted and skipped.
pub fn parse_tcp_table(text: &str, out: &mut Vec<TcpSocket>) -> TableStats {
    let mut st = TableStats::default();
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with("sl ") {
            continue;
        }
        if out.len() >= MAX_SOCKETS {
            st.truncated += 1;
            continue;
        }
        match parse_tcp_line(t) {
            Ok(s) => {
                out.push(s);
                st.rows += 1;
            }
            Err(_) => st.malformed += 1,
        }
    }
    st
}

/// Raw and packet sockets of one namespace at one reading
/// (`/proc/<pid>/net/raw`, `raw6` and `packet`): what a SYN scan (nmap
/// sends from a raw IP socket and listens on a packet socket), a sniffer or
/// a spoofer holds, and what no TCP counter sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawSockets {
    /// Raw IP sockets of a protocol other than ICMP and ICMPv6.
    pub raw: u32,
    /// Raw ICMP or ICMPv6 sockets (`ping` without ping sockets): not
    /// counted in `raw`.
    pub icmp: u32,
    /// Packet (`AF_PACKET`) sockets.
    pub packet: u32,
    /// Rows that did not decode (skipped).
    pub malformed: u32,
    /// Rows beyond [`MAX_SOCKETS`] (not looked at).
    pub truncated: u32,
}

impl RawSockets {
    /// Rows looked at so far.
    fn rows(&self) -> u64 {
        u64::from(self.raw) + u64::from(self.icmp) + u64::from(self.packet)
    }

    fn add(n: &mut u32) {
        *n = n.saturating_add(1);
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit())
}

/// What one row of a raw or packet table is.
#[derive(Clone, Copy)]
enum RawRow {
    Raw,
    Icmp,
    Packet,
}

/// Classifies the rows of a raw or packet table into `out`: the header
/// (starting with `header`) and blank lines are skipped, rows beyond
/// [`MAX_SOCKETS`] in `out` counted as truncated, rows `classify` cannot
/// read as malformed.
fn classify_rows(
    text: &str,
    header: &str,
    out: &mut RawSockets,
    classify: impl Fn(&str) -> Option<RawRow>,
) {
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with(header) {
            continue;
        }
        if out.rows() >= MAX_SOCKETS as u64 {
            RawSockets::add(&mut out.truncated);
            continue;
        }
        RawSockets::add(match classify(t) {
            Some(RawRow::Raw) => &mut out.raw,
            Some(RawRow::Icmp) => &mut out.icmp,
            Some(RawRow::Packet) => &mut out.packet,
            None => &mut out.malformed,
        });
    }
}

/// Adds the rows of a `raw` or `raw6` file to `out`: the header (`sl …`)
/// and blank lines are skipped; a row is `sl: ADDR:PROTO REMOTE:0 …` with
/// the local address in hex (8 or 32 digits) and the socket's IP protocol
/// where a TCP table has the port. Malformed rows are counted and skipped.
pub fn parse_raw_table(text: &str, out: &mut RawSockets) {
    classify_rows(text, "sl ", out, |t| {
        let mut f = t.split_ascii_whitespace();
        let (sl, local) = (f.next()?, f.next()?);
        sl.strip_suffix(':').filter(|n| is_hex(n))?;
        let (addr, proto) = local.split_once(':')?;
        if !((addr.len() == 8 || addr.len() == 32)
            && is_hex(addr)
            && proto.len() == 4
            && is_hex(proto))
        {
            return None;
        }
        match u16::from_str_radix(proto, 16).ok()? {
            // IPPROTO_ICMP, IPPROTO_ICMPV6.
            1 | 58 => Some(RawRow::Icmp),
            _ => Some(RawRow::Raw),
        }
    });
}

/// Adds the rows of a `packet` file to `out`: the header (`sk RefCnt …`)
/// and blank lines are skipped; a row is nine fields, the socket pointer
/// and protocol in hex, the type and reference count in decimal.
/// Malformed rows are counted and skipped.
pub fn parse_packet_table(text: &str, out: &mut RawSockets) {
    classify_rows(text, "sk ", out, |t| {
        let f: Vec<&str> = t.split_ascii_whitespace().take(10).collect();
        let ok = f.len() == 9
            && is_hex(f[0])
            && is_decimal(f[1])
            && is_decimal(f[2])
            && f[3].len() == 4
            && is_hex(f[3]);
        ok.then_some(RawRow::Packet)
    });
}

/// A socket table's summary at one reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketSummary {
    /// Listening sockets.
    pub listening: u32,
    /// `SYN_SENT` sockets.
    pub syn_sent: u32,
    /// Distinct remote ports of the `SYN_SENT` sockets.
    pub syn_sent_ports: u32,
    /// Distinct remote endpoints of non-listening sockets.
    pub remote_endpoints: u32,
    /// Outbound connections, `(key, remote)`, in table order: non-listening
    /// sockets (not `SYN_RECV`/`CLOSE`) with a remote address whose local
    /// port is no listening port. The key identifies the connection (both
    /// endpoints), across its states.
    pub outbound: Vec<(u64, SocketAddr)>,
}

/// FNV-1a over the connection's endpoints: a stable key across runs.
fn connection_key(local: &SocketAddr, remote: &SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for a in [local, remote] {
        match a.ip() {
            IpAddr::V4(v4) => {
                feed(&[4]);
                feed(&v4.octets());
            }
            IpAddr::V6(v6) => {
                feed(&[6]);
                feed(&v6.octets());
            }
        }
        feed(&a.port().to_be_bytes());
    }
    h
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Summarises a namespace's sockets (`tcp` and `tcp6` rows together).
pub fn summarize(sockets: &[TcpSocket]) -> SocketSummary {
    let listen_ports: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.local.port())
        .collect();
    let mut out = SocketSummary::default();
    let mut syn_ports = HashSet::new();
    let mut remotes = HashSet::new();
    let mut seen = HashSet::new();
    for s in sockets {
        match s.state {
            TcpState::Listen => {
                out.listening = out.listening.saturating_add(1);
                continue;
            }
            TcpState::SynSent => {
                out.syn_sent = out.syn_sent.saturating_add(1);
                syn_ports.insert(s.remote.port());
            }
            _ => {}
        }
        if s.remote.ip().is_unspecified() {
            continue;
        }
        remotes.insert(s.remote);
        let inbound = matches!(
            s.state,
            TcpState::SynRecv | TcpState::NewSynRecv | TcpState::Close
        ) || listen_ports.contains(&s.local.port());
        let key = connection_key(&s.local, &s.remote);
        if !inbound && seen.insert(key) {
            out.outbound.push((key, s.remote));
        }
    }
    out.syn_sent_ports = count_u32(syn_ports.len());
    out.remote_endpoints = count_u32(remotes.len());
    out
}

/// One namespace as read at one time, for [`NetnsTracker::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsReading {
    /// Namespace identity (the inode of its `net/snmp` entry).
    pub netns: u64,
    /// Containers in it, any order (at least one).
    pub members: Vec<ContainerId>,
    /// `net/snmp` text.
    pub snmp: String,
    /// `net/tcp` text, if it could be read.
    pub tcp: Option<String>,
    /// `net/tcp6` text, if it could be read (absent without IPv6).
    pub tcp6: Option<String>,
    /// `net/raw` text, if it could be read.
    pub raw: Option<String>,
    /// `net/raw6` text, if it could be read (absent without IPv6).
    pub raw6: Option<String>,
    /// `net/packet` text, if it could be read.
    pub packet: Option<String>,
}

/// What the tracker and the collector counted, per sample.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetnsStats {
    /// Containers discovered.
    pub containers: u64,
    /// Namespaces read (events emitted).
    pub namespaces: u64,
    /// Namespaces whose socket tables were read.
    pub tables: u64,
    /// Containers whose namespace was attributed to another container.
    pub shared: u64,
    /// Containers on the host's namespace (skipped).
    pub host_network: u64,
    /// Containers without a readable member process (skipped).
    pub no_process: u64,
    /// Namespaces whose files could not be read, or past [`MAX_NETNS`].
    pub unreadable: u64,
    /// `snmp` files that did not decode (namespace skipped).
    pub bad_snmp: u64,
    /// Socket rows that did not decode, or past [`MAX_SOCKETS`].
    pub bad_rows: u64,
    /// Outbound connections past [`MAX_TRACKED_OUTBOUND`] (never reported new).
    pub untracked: u64,
    /// Namespaces whose counters went backwards (started over, no delta).
    pub resets: u64,
}

impl NetnsStats {
    /// Everything skipped as unreadable or malformed.
    pub fn skipped(&self) -> u64 {
        self.unreadable + self.bad_snmp + self.bad_rows
    }
}

/// What is remembered of a namespace between readings.
#[derive(Clone, Debug)]
struct NsState {
    ts_ms: u64,
    counters: TcpCounters,
    owner: ContainerId,
    members: Vec<ContainerId>,
    outbound: HashSet<u64>,
    /// `ActiveOpens` when the socket tables were last read (`None`: never).
    opens_at_tables: Option<u64>,
    /// When the socket tables were last read.
    tables_ts_ms: u64,
}

impl NsState {
    /// Whether `members` (sorted) continue this namespace: some member
    /// stayed (else its inode was recycled for a new namespace).
    fn continues(&self, members: &[ContainerId]) -> bool {
        self.members
            .iter()
            .any(|m| members.binary_search(m).is_ok())
    }
}

/// Turns namespace readings into [`Event::Net`]s: counter deltas per
/// namespace, new outbound connections, one owner per namespace.
/// Deterministic: the same readings at the same times give the same events.
#[derive(Clone, Debug)]
pub struct NetnsTracker {
    states: HashMap<u64, NsState>,
    max_table_reads: usize,
}

impl Default for NetnsTracker {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            max_table_reads: MAX_TABLE_READS,
        }
    }
}

fn delta(cur: &TcpCounters, prev: &TcpCounters) -> Option<TcpCounters> {
    Some(TcpCounters {
        active_opens: cur.active_opens.checked_sub(prev.active_opens)?,
        passive_opens: cur.passive_opens.checked_sub(prev.passive_opens)?,
        attempt_fails: cur.attempt_fails.checked_sub(prev.attempt_fails)?,
        estab_resets: cur.estab_resets.checked_sub(prev.estab_resets)?,
        in_errs: cur.in_errs.checked_sub(prev.in_errs)?,
        out_rsts: cur.out_rsts.checked_sub(prev.out_rsts)?,
    })
}

fn sorted_members(r: &NetnsReading) -> Vec<ContainerId> {
    let mut m = r.members.clone();
    m.sort();
    m.dedup();
    m
}

/// What a reading starts from: interval, deltas, owner, known outbound
/// connections, `ActiveOpens` and time of the last table read.
type Start = (
    u64,
    TcpCounters,
    ContainerId,
    HashSet<u64>,
    Option<u64>,
    u64,
);

impl NetnsTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the socket tables of at most `n` namespaces per sample (0:
    /// never; counters only).
    pub fn with_max_table_reads(mut self, n: usize) -> Self {
        self.max_table_reads = n;
        self
    }

    /// Namespaces remembered (at most [`MAX_NETNS`]).
    pub fn tracked(&self) -> usize {
        self.states.len()
    }

    /// The namespaces whose socket tables are worth reading at this sample
    /// (`readings` carry only `snmp`): those never read, and those whose
    /// `ActiveOpens` moved since their tables were last read — a new
    /// outbound connection, pending or not, is always an active open, so a
    /// namespace without one has nothing new in its tables. At most
    /// `max_table_reads`, the longest unread first (ties by inode): the
    /// rest wait for a later sample, their growth still pending. Reading a
    /// table costs the kernel a walk of the whole TCP hash (BENCHMARKS.md).
    pub fn table_plan(&self, readings: &[NetnsReading]) -> BTreeSet<u64> {
        let mut want: Vec<(u64, u64)> = Vec::new();
        for r in readings {
            let Ok(c) = parse_snmp(&r.snmp) else { continue };
            let members = sorted_members(r);
            match self.states.get(&r.netns).filter(|s| s.continues(&members)) {
                None => want.push((0, r.netns)),
                Some(s) if s.opens_at_tables != Some(c.active_opens) => {
                    // Never read (over the budget so far) before any read.
                    let since = s
                        .opens_at_tables
                        .map_or(0, |_| s.tables_ts_ms.saturating_add(1));
                    want.push((since, r.netns));
                }
                Some(_) => {}
            }
        }
        want.sort_unstable();
        want.into_iter()
            .take(self.max_table_reads)
            .map(|(_, ino)| ino)
            .collect()
    }

    /// One reading of every namespace at `ts_ms`: one [`Event::Net`] per
    /// namespace whose `snmp` decodes, sorted by container. A namespace's
    /// first reading (or one after its counters went backwards, or whose
    /// members are all new: a recycled inode) has no deltas and reports
    /// every outbound connection as new. A reading without socket tables
    /// (`tcp` and `tcp6` both `None`: not planned, or unreadable) reports
    /// the counters only (`tables: false`) and keeps the connections known.
    /// Namespaces absent from `readings` are forgotten.
    pub fn step(
        &mut self,
        ts_ms: u64,
        readings: &[NetnsReading],
        stats: &mut NetnsStats,
    ) -> Vec<Event> {
        let mut next: HashMap<u64, NsState> = HashMap::with_capacity(readings.len());
        let mut events = Vec::with_capacity(readings.len());
        for r in readings {
            if next.len() >= MAX_NETNS {
                stats.unreadable += 1;
                continue;
            }
            let members = sorted_members(r);
            let Some(lowest) = members.first().cloned() else {
                continue;
            };
            let prev = self.states.remove(&r.netns);
            let counters = match parse_snmp(&r.snmp) {
                Ok(c) => c,
                Err(_) => {
                    stats.bad_snmp += 1;
                    // Keep what was known: the next good reading has a delta.
                    if let Some(p) = prev {
                        next.insert(r.netns, p);
                    }
                    continue;
                }
            };
            let tables = r.tcp.is_some() || r.tcp6.is_some();
            let mut sockets = Vec::new();
            for text in [&r.tcp, &r.tcp6].into_iter().flatten() {
                let t = parse_tcp_table(text, &mut sockets);
                stats.bad_rows += t.malformed + t.truncated;
            }
            let summary = summarize(&sockets);
            let mut raw = RawSockets::default();
            for text in [&r.raw, &r.raw6].into_iter().flatten() {
                parse_raw_table(text, &mut raw);
            }
            if let Some(text) = &r.packet {
                parse_packet_table(text, &mut raw);
            }
            stats.bad_rows += u64::from(raw.malformed) + u64::from(raw.truncated);
            // The same namespace as before: some member stayed, time and
            // counters moved forward.
            let prev = prev.filter(|p| p.continues(&members) && ts_ms >= p.ts_ms);
            let fresh =
                |lowest| -> Start { (0, TcpCounters::default(), lowest, HashSet::new(), None, 0) };
            let (interval_ms, d, owner, known, opens_at_tables, tables_ts_ms) = match prev {
                Some(p) => match delta(&counters, &p.counters) {
                    Some(d) => {
                        let owner = if members.binary_search(&p.owner).is_ok() {
                            p.owner
                        } else {
                            lowest
                        };
                        let interval = ts_ms - p.ts_ms;
                        (
                            interval,
                            d,
                            owner,
                            p.outbound,
                            p.opens_at_tables,
                            p.tables_ts_ms,
                        )
                    }
                    None => {
                        stats.resets += 1;
                        fresh(lowest)
                    }
                },
                None => fresh(lowest),
            };
            let (outbound, new_remotes, new_total, opens_at_tables, tables_ts_ms) = if tables {
                let mut outbound =
                    HashSet::with_capacity(summary.outbound.len().min(MAX_TRACKED_OUTBOUND));
                let mut new_remotes = Vec::new();
                let mut new_total = 0u32;
                for (key, remote) in &summary.outbound {
                    if outbound.len() >= MAX_TRACKED_OUTBOUND {
                        stats.untracked += 1;
                        continue;
                    }
                    outbound.insert(*key);
                    if !known.contains(key) {
                        new_total = new_total.saturating_add(1);
                        if new_remotes.len() < MAX_NEW_REMOTES {
                            new_remotes.push(*remote);
                        }
                    }
                }
                let at = Some(counters.active_opens);
                (outbound, new_remotes, new_total, at, ts_ms)
            } else {
                (known, Vec::new(), 0, opens_at_tables, tables_ts_ms)
            };
            stats.namespaces += 1;
            stats.tables += u64::from(tables);
            stats.shared += members.len() as u64 - 1;
            events.push(Event::Net {
                container: owner.clone(),
                ts_ms,
                net: Box::new(NetActivity {
                    interval_ms,
                    active_opens: d.active_opens,
                    passive_opens: d.passive_opens,
                    attempt_fails: d.attempt_fails,
                    estab_resets: d.estab_resets,
                    out_rsts: d.out_rsts,
                    in_errs: d.in_errs,
                    tables,
                    listening: summary.listening,
                    syn_sent: summary.syn_sent,
                    syn_sent_ports: summary.syn_sent_ports,
                    remote_endpoints: summary.remote_endpoints,
                    new_remotes,
                    new_remotes_total: new_total,
                    shared_with: count_u32(members.len() - 1),
                    // Rows past the cap are unknown: counted as raw, so
                    // that thousands of ICMP sockets cannot hide one.
                    raw_sockets: raw.raw.saturating_add(raw.truncated),
                    packet_sockets: raw.packet,
                }),
            });
            next.insert(
                r.netns,
                NsState {
                    ts_ms,
                    counters,
                    owner,
                    members,
                    outbound,
                    opens_at_tables,
                    tables_ts_ms,
                },
            );
        }
        self.states = next;
        events.sort_by(|a, b| a.container().cmp(b.container()));
        events
    }
}

/// Opens `path`, returns its inode and at most [`MAX_FILE_BYTES`] of its
/// text (the inode comes from the open file, so a pid reused between a
/// stat and a read cannot mix two namespaces up).
fn inode_and_text(path: &Path) -> io::Result<(u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path)?;
    let ino = f.metadata()?.ino();
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES).read_to_end(&mut buf)?;
    let text = String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((ino, text))
}

fn inode_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The `netns` source: discovers containers in the cgroup tree (as the
/// cgroup source does), reads each network namespace once through one
/// member process under `proc_root`, and feeds a [`NetnsTracker`].
#[derive(Debug)]
pub struct NetnsCollector {
    cgroup: CgroupCollector,
    proc_root: PathBuf,
    tracker: NetnsTracker,
}

impl NetnsCollector {
    /// A collector over the cgroup hierarchy at `cgroup_root` and the
    /// `/proc` mount at `proc_root`.
    pub fn new(cgroup_root: PathBuf, proc_root: PathBuf) -> Result<Self, CgroupError> {
        Self::with_max_table_reads(cgroup_root, proc_root, MAX_TABLE_READS)
    }

    /// As [`NetnsCollector::new`], reading the socket tables of at most
    /// `max_table_reads` namespaces per sample.
    pub fn with_max_table_reads(
        cgroup_root: PathBuf,
        proc_root: PathBuf,
        max_table_reads: usize,
    ) -> Result<Self, CgroupError> {
        Ok(Self {
            cgroup: CgroupCollector::new(cgroup_root)?,
            proc_root,
            tracker: NetnsTracker::new().with_max_table_reads(max_table_reads),
        })
    }

    /// The cgroup collector used for discovery.
    pub fn cgroup(&self) -> &CgroupCollector {
        &self.cgroup
    }

    fn snmp_path(&self, pid: &str) -> PathBuf {
        self.proc_root.join(pid).join("net").join("snmp")
    }

    /// The host's namespaces: those of `<proc_root>/self` (the node) and
    /// `<proc_root>/1` (the host's init, with the host's PID namespace).
    pub fn host_namespaces(&self) -> BTreeSet<u64> {
        ["self", "1"]
            .iter()
            .filter_map(|p| inode_of(&self.snmp_path(p)))
            .collect()
    }

    /// Re-discovers the containers, reads every namespace once and returns
    /// the [`Event::Net`]s stamped `ts_ms` with what was counted.
    pub fn sample(&mut self, ts_ms: u64) -> Result<(Vec<Event>, NetnsStats), CgroupError> {
        self.cgroup.discover()?;
        let host = self.host_namespaces();
        let mut stats = NetnsStats {
            containers: self.cgroup.containers().len() as u64,
            ..NetnsStats::default()
        };
        let mut readings: BTreeMap<u64, NetnsReading> = BTreeMap::new();
        let mut pid_of: BTreeMap<u64, u32> = BTreeMap::new();
        for info in self.cgroup.containers() {
            let id = info.container_id();
            let pids = self
                .cgroup
                .procs_file(info)
                .and_then(|p| read_small(&p).ok())
                .map(|t| parse_pids(&t).0)
                .unwrap_or_default();
            let mut found = None;
            for pid in pids.iter().take(PID_TRIES) {
                let path = self.snmp_path(&pid.to_string());
                // Known namespaces need only the inode; a new one is read.
                let Some(ino) = inode_of(&path) else { continue };
                if host.contains(&ino) || readings.contains_key(&ino) {
                    found = Some((ino, None));
                    break;
                }
                match inode_and_text(&path) {
                    Ok((ino, text)) => {
                        found = Some((ino, Some((*pid, text))));
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => {
                        stats.unreadable += 1;
                        break;
                    }
                }
            }
            match found {
                None => stats.no_process += 1,
                Some((ino, _)) if host.contains(&ino) => stats.host_network += 1,
                Some((ino, None)) => {
                    if let Some(r) = readings.get_mut(&ino) {
                        r.members.push(id);
                    }
                }
                Some((ino, Some((pid, snmp)))) => {
                    if readings.len() >= MAX_NETNS {
                        stats.unreadable += 1;
                        continue;
                    }
                    pid_of.insert(ino, pid);
                    readings.insert(
                        ino,
                        NetnsReading {
                            netns: ino,
                            members: vec![id],
                            snmp,
                            tcp: None,
                            tcp6: None,
                            raw: None,
                            raw6: None,
                            packet: None,
                        },
                    );
                }
            }
        }
        let mut readings: Vec<NetnsReading> = readings.into_values().collect();
        // Raw and packet sockets every reading: a short SYN scan leaves no
        // trace in the TCP counters, and these tables are small (the
        // namespace's own raw and packet sockets).
        for r in readings.iter_mut() {
            let Some(pid) = pid_of.get(&r.netns) else {
                continue;
            };
            let dir = self.proc_root.join(pid.to_string()).join("net");
            let read = |name: &str| read_limited(&dir.join(name), MAX_RAW_TABLE_BYTES).ok();
            r.raw = read("raw");
            r.raw6 = read("raw6");
            r.packet = read("packet");
        }
        let plan = self.tracker.table_plan(&readings);
        for r in readings.iter_mut().filter(|r| plan.contains(&r.netns)) {
            let Some(pid) = pid_of.get(&r.netns) else {
                continue;
            };
            let dir = self.proc_root.join(pid.to_string()).join("net");
            r.tcp = read_small(&dir.join("tcp")).ok();
            r.tcp6 = read_small(&dir.join("tcp6")).ok();
            if r.tcp.is_none() {
                stats.unreadable += 1;
            }
        }
        let events = self.tracker.step(ts_ms, &readings, &mut stats);
        Ok((events, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL InReceives\nIp: 1 64 10\n\
Icmp: InMsgs InErrors\nIcmp: 0 0\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
Tcp: 1 200 120000 -1 100 3 97 1 2 400 300 0 5 7 0\n\
Udp: InDatagrams NoPorts\nUdp: 0 0\n";

    /// The kernel's `%08X` of a network-order IPv4 address on this host.
    fn hex4(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    fn row(
        slot: usize,
        local: ([u8; 4], u16),
        remote: ([u8; 4], u16),
        st: u8,
        inode: u64,
    ) -> String {
        format!(
            "{slot:4}: {}:{:04X} {}:{:04X} {st:02X} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0",
            hex4(local.0),
            local.1,
            hex4(remote.0),
            remote.1
        )
    }

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn table(rows: &[String]) -> String {
        let mut t = String::from(HEADER);
        for r in rows {
            t.push('\n');
            t.push_str(r);
        }
        t.push('\n');
        t
    }

    fn snmp(active: u64, fails: u64) -> String {
        format!(
            "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\nTcp: 1 200 120000 -1 {active} 0 {fails} 0 0 0 0 0 0 0 0\n"
        )
    }

    fn cid(s: &str) -> ContainerId {
        ContainerId(s.into())
    }

    #[test]
    fn snmp_fields_by_name() {
        assert_eq!(
            parse_snmp(SNMP),
            Ok(TcpCounters {
                active_opens: 100,
                passive_opens: 3,
                attempt_fails: 97,
                estab_resets: 1,
                in_errs: 5,
                out_rsts: 7,
            })
        );
        // Field order does not matter; unknown fields are ignored.
        let shuffled = "Tcp: OutRsts X InErrs EstabResets AttemptFails PassiveOpens ActiveOpens\nTcp: 6 -1 5 4 3 2 1\n";
        let c = parse_snmp(shuffled).unwrap();
        assert_eq!((c.active_opens, c.out_rsts, c.attempt_fails), (1, 6, 3));
    }

    #[test]
    fn snmp_errors_are_typed() {
        assert_eq!(parse_snmp(""), Err(SnmpError::NoTcp));
        assert_eq!(parse_snmp("Tcp: ActiveOpens\n"), Err(SnmpError::NoTcp));
        assert_eq!(
            parse_snmp("Tcp: A B\nTcp: 1\n"),
            Err(SnmpError::FieldCount {
                header: 2,
                values: 1
            })
        );
        assert_eq!(
            parse_snmp("Tcp: ActiveOpens\nTcp: 1\n"),
            Err(SnmpError::MissingField("PassiveOpens"))
        );
        let neg = SNMP.replace(" 100 3 97", " -100 3 97");
        assert_eq!(parse_snmp(&neg), Err(SnmpError::BadValue("ActiveOpens")));
    }

    #[test]
    fn tcp_rows_decode_v4_and_v6() {
        let r = row(
            0,
            ([172, 17, 0, 3], 40000),
            ([172, 17, 0, 2], 80),
            0x01,
            12345,
        );
        let s = parse_tcp_line(&r).unwrap();
        assert_eq!(s.local, "172.17.0.3:40000".parse().unwrap());
        assert_eq!(s.remote, "172.17.0.2:80".parse().unwrap());
        assert_eq!((s.state, s.inode), (TcpState::Established, 12345));
        // ::1 port 8080 listening, as tcp6 prints it.
        let lo6: [u8; 16] = "::1".parse::<Ipv6Addr>().unwrap().octets();
        let hex6: String = lo6
            .chunks_exact(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let line = format!(
            "   1: {hex6}:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0"
        );
        let s = parse_tcp_line(&line).unwrap();
        assert_eq!(s.local, "[::1]:8080".parse().unwrap());
        assert_eq!(s.state, TcpState::Listen);
        assert!(s.remote.ip().is_unspecified());
    }

    #[test]
    fn tcp_row_errors_are_typed_and_counted() {
        let good = row(0, ([10, 0, 0, 1], 1), ([10, 0, 0, 2], 2), 0x01, 9);
        assert_eq!(parse_tcp_line("0: 1 2"), Err(TcpLineError::TooFewFields));
        assert_eq!(
            parse_tcp_line(&good.replacen("0:", "x:", 1)),
            Err(TcpLineError::BadSlot)
        );
        let f: Vec<&str> = good.split_whitespace().collect();
        let with = |i: usize, v: &str| {
            let mut g = f.clone();
            g[i] = v;
            g.join(" ")
        };
        assert_eq!(
            parse_tcp_line(&with(1, "0100007G:0050")),
            Err(TcpLineError::BadAddress("local"))
        );
        assert_eq!(
            parse_tcp_line(&with(2, "0100007F:00500")),
            Err(TcpLineError::BadAddress("remote"))
        );
        assert_eq!(
            parse_tcp_line(&with(2, "0100007F")),
            Err(TcpLineError::BadAddress("remote"))
        );
        assert_eq!(parse_tcp_line(&with(3, "0D")), Err(TcpLineError::BadState));
        assert_eq!(parse_tcp_line(&with(3, "1")), Err(TcpLineError::BadState));
        assert_eq!(parse_tcp_line(&with(9, "-1")), Err(TcpLineError::BadInode));
        let mut out = Vec::new();
        let st = parse_tcp_table(&table(&[good.clone(), "garbage".into(), good]), &mut out);
        assert_eq!((st.rows, st.malformed, out.len()), (2, 1, 2));
    }

    #[test]
    fn the_table_is_bounded() {
        let r = row(0, ([10, 0, 0, 1], 1), ([10, 0, 0, 2], 2), 0x01, 9);
        let text = table(&vec![r; 100]);
        let mut out = vec![
            TcpSocket {
                local: "1.1.1.1:1".parse().unwrap(),
                remote: "1.1.1.1:2".parse().unwrap(),
                state: TcpState::Established,
                inode: 1
            };
            MAX_SOCKETS - 10
        ];
        let st = parse_tcp_table(&text, &mut out);
        assert_eq!((st.rows, st.truncated, out.len()), (10, 90, MAX_SOCKETS));
    }

    #[test]
    fn summary_tells_outbound_from_inbound() {
        let me = [172, 17, 0, 3];
        let rows = [
            // Listening on 80; an accepted connection on 80 (inbound).
            row(0, ([0, 0, 0, 0], 80), ([0, 0, 0, 0], 0), 0x0A, 1),
            row(1, (me, 80), ([172, 17, 0, 9], 51000), 0x01, 2),
            // Outbound: to a pool port, a SYN_SENT pair, and a TIME_WAIT.
            row(2, (me, 40001), ([45, 9, 148, 21], 3333), 0x01, 3),
            row(3, (me, 40002), ([172, 17, 0, 2], 22), 0x02, 4),
            row(4, (me, 40003), ([172, 17, 0, 2], 23), 0x02, 5),
            row(5, (me, 40004), ([172, 17, 0, 2], 23), 0x06, 0),
        ];
        let mut socks = Vec::new();
        parse_tcp_table(&table(&rows), &mut socks);
        let s = summarize(&socks);
        assert_eq!(s.listening, 1);
        assert_eq!((s.syn_sent, s.syn_sent_ports), (2, 2));
        assert_eq!(s.remote_endpoints, 4);
        let remotes: Vec<SocketAddr> = s.outbound.iter().map(|o| o.1).collect();
        assert_eq!(
            remotes,
            [
                "45.9.148.21:3333",
                "172.17.0.2:22",
                "172.17.0.2:23",
                "172.17.0.2:23"
            ]
            .map(|a| a.parse().unwrap())
        );
    }

    fn reading(netns: u64, members: &[&str], snmp: String, rows: &[String]) -> NetnsReading {
        NetnsReading {
            netns,
            members: members.iter().map(|m| cid(m)).collect(),
            snmp,
            tcp: Some(table(rows)),
            tcp6: None,
            raw: None,
            raw6: None,
            packet: None,
        }
    }

    fn activity(e: &Event) -> (&str, &NetActivity) {
        match e {
            Event::Net { container, net, .. } => (container.0.as_str(), net),
            other => panic!("not a net event: {other:?}"),
        }
    }

    #[test]
    fn deltas_new_connections_and_resets() {
        let me = [172, 17, 0, 3];
        let pool = row(0, (me, 40001), ([45, 9, 148, 21], 3333), 0x01, 3);
        let mut t = NetnsTracker::new();
        let mut st = NetnsStats::default();
        // First reading: no deltas, the existing connection is new.
        let ev = t.step(
            1_000,
            &[reading(7, &["a"], snmp(10, 2), std::slice::from_ref(&pool))],
            &mut st,
        );
        let (c, n) = activity(&ev[0]);
        assert_eq!((c, n.interval_ms, n.active_opens), ("a", 0, 0));
        assert_eq!(n.new_remotes, vec!["45.9.148.21:3333".parse().unwrap()]);
        // Second: 100 refused attempts; the pool connection is known.
        let ev = t.step(
            11_000,
            &[reading(
                7,
                &["a"],
                snmp(110, 102),
                std::slice::from_ref(&pool),
            )],
            &mut st,
        );
        let (_, n) = activity(&ev[0]);
        assert_eq!(
            (n.interval_ms, n.active_opens, n.attempt_fails),
            (10_000, 100, 100)
        );
        assert!(n.new_remotes.is_empty() && n.new_remotes_total == 0);
        // Counters going backwards: no delta, counted.
        let ev = t.step(
            21_000,
            &[reading(7, &["a"], snmp(5, 0), std::slice::from_ref(&pool))],
            &mut st,
        );
        let (_, n) = activity(&ev[0]);
        assert_eq!((n.interval_ms, n.active_opens), (0, 0));
        assert_eq!(st.resets, 1);
        // The same inode with none of the old members (a recycled inode): a
        // first reading again, even though its counters are higher.
        let ev = t.step(
            31_000,
            &[reading(7, &["z"], snmp(500, 400), &[pool])],
            &mut st,
        );
        let (c, n) = activity(&ev[0]);
        assert_eq!(
            (c, n.interval_ms, n.attempt_fails, n.new_remotes_total),
            ("z", 0, 0, 1)
        );
        // Gone namespaces are forgotten.
        t.step(41_000, &[], &mut st);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn a_shared_namespace_is_counted_once_and_keeps_its_owner() {
        let mut t = NetnsTracker::new();
        let mut st = NetnsStats::default();
        let ev = t.step(
            0,
            &[reading(9, &["pod-b", "pod-a"], snmp(0, 0), &[])],
            &mut st,
        );
        assert_eq!(ev.len(), 1);
        let (c, n) = activity(&ev[0]);
        assert_eq!((c, n.shared_with), ("pod-a", 1));
        assert_eq!((st.namespaces, st.shared), (1, 1));
        // A new member with a lower id joins: the owner stays.
        let ev = t.step(
            10,
            &[reading(9, &["pod-0", "pod-b", "pod-a"], snmp(60, 60), &[])],
            &mut st,
        );
        let (c, n) = activity(&ev[0]);
        assert_eq!((c, n.attempt_fails, n.shared_with), ("pod-a", 60, 2));
        // The owner leaves: the lowest remaining member takes over, with the
        // namespace's deltas (no double count, no lost baseline).
        let ev = t.step(
            20,
            &[reading(9, &["pod-0", "pod-b"], snmp(70, 60), &[])],
            &mut st,
        );
        let (c, n) = activity(&ev[0]);
        assert_eq!((c, n.active_opens, n.interval_ms), ("pod-0", 10, 10));
    }

    /// The readings as the collector first has them: `snmp` only.
    fn snmp_only(mut r: NetnsReading) -> NetnsReading {
        r.tcp = None;
        r.tcp6 = None;
        r
    }

    #[test]
    fn tables_are_read_when_new_outbound_connections_can_exist() {
        let me = [172, 17, 0, 3];
        let pool = row(0, (me, 40001), ([45, 9, 148, 21], 3333), 0x01, 3);
        let shell = row(1, (me, 40002), ([203, 0, 113, 7], 9001), 0x01, 4);
        let mut t = NetnsTracker::new();
        let mut st = NetnsStats::default();
        let r = |opens: u64, rows: &[String]| reading(5, &["a"], snmp(opens, 0), rows);
        // Never read: planned.
        let first = r(10, std::slice::from_ref(&pool));
        assert!(t.table_plan(&[snmp_only(first.clone())]).contains(&5));
        t.step(0, &[first], &mut st);
        // No active open since: not planned; a reading without tables keeps
        // the known connections and reports no socket fields.
        assert!(t.table_plan(&[snmp_only(r(10, &[]))]).is_empty());
        let ev = t.step(10, &[snmp_only(r(10, &[]))], &mut st);
        let (_, n) = activity(&ev[0]);
        assert!(!n.tables && n.new_remotes.is_empty() && n.remote_endpoints == 0);
        // One active open (the shell's connection): planned, and only the
        // new connection is new.
        assert!(t.table_plan(&[snmp_only(r(11, &[]))]).contains(&5));
        let ev = t.step(20, &[r(11, &[pool, shell])], &mut st);
        let (_, n) = activity(&ev[0]);
        assert!(n.tables);
        assert_eq!(n.new_remotes, vec!["203.0.113.7:9001".parse().unwrap()]);
        assert_eq!(st.tables, 2);
        // Planned but not read (over the budget): still planned next time.
        assert!(t.table_plan(&[snmp_only(r(12, &[]))]).contains(&5));
        t.step(30, &[snmp_only(r(12, &[]))], &mut st);
        assert!(t.table_plan(&[snmp_only(r(12, &[]))]).contains(&5));
    }

    #[test]
    fn the_table_plan_is_bounded_and_serves_the_longest_unread_first() {
        let mut t = NetnsTracker::new();
        let mut st = NetnsStats::default();
        let n = MAX_TABLE_READS as u64 + 8;
        let all = |opens: u64| -> Vec<NetnsReading> {
            (0..n)
                .map(|i| {
                    snmp_only(reading(
                        100 + i,
                        &[&format!("c{i:03}")],
                        snmp(opens, 0),
                        &[],
                    ))
                })
                .collect()
        };
        // First sample: every namespace wants its tables; the budget takes
        // the lowest inodes.
        let plan = t.table_plan(&all(1));
        assert_eq!(plan.len(), MAX_TABLE_READS);
        assert_eq!(plan.iter().next(), Some(&100));
        let read: Vec<NetnsReading> = all(1)
            .into_iter()
            .map(|mut r| {
                if plan.contains(&r.netns) {
                    r.tcp = Some(table(&[]));
                }
                r
            })
            .collect();
        t.step(0, &read, &mut st);
        // Everyone opens a connection: those never read come first.
        let plan = t.table_plan(&all(2));
        assert_eq!(plan.len(), MAX_TABLE_READS);
        for i in MAX_TABLE_READS as u64..n {
            assert!(plan.contains(&(100 + i)), "{i} never read, not planned");
        }
        // A budget of 0: counters only.
        let t = NetnsTracker::new().with_max_table_reads(0);
        assert!(t.table_plan(&all(1)).is_empty());
    }

    #[test]
    fn bad_snmp_skips_the_namespace_but_keeps_its_baseline() {
        let mut t = NetnsTracker::new();
        let mut st = NetnsStats::default();
        t.step(0, &[reading(1, &["a"], snmp(1, 0), &[])], &mut st);
        assert!(
            t.step(10, &[reading(1, &["a"], "garbage".into(), &[])], &mut st)
                .is_empty()
        );
        assert_eq!(st.bad_snmp, 1);
        let ev = t.step(20, &[reading(1, &["a"], snmp(4, 0), &[])], &mut st);
        assert_eq!(activity(&ev[0]).1.active_opens, 3);
    }

    #[test]
    fn outbound_memory_is_bounded() {
        let rows: Vec<String> = (0..(MAX_TRACKED_OUTBOUND + 10))
            .map(|i| {
                row(
                    i,
                    ([10, 0, 0, 1], 20_000 + i as u16),
                    ([10, 0, 0, 2], 443),
                    0x01,
                    i as u64 + 1,
                )
            })
            .collect();
        let mut t = NetnsTracker::new();
        let mut st = NetnsStats::default();
        let ev = t.step(0, &[reading(1, &["a"], snmp(0, 0), &rows)], &mut st);
        let (_, n) = activity(&ev[0]);
        assert_eq!(n.new_remotes_total as usize, MAX_TRACKED_OUTBOUND);
        assert_eq!(n.new_remotes.len(), MAX_NEW_REMOTES);
        assert_eq!(st.untracked, 10);
        // The same table again: nothing new, nothing reported twice.
        let ev = t.step(10, &[reading(1, &["a"], snmp(0, 0), &rows)], &mut st);
        assert_eq!(activity(&ev[0]).1.new_remotes_total, 0);
    }

    /// A fixture host: cgroup v1 tree, a /proc stand-in whose `net/snmp`
    /// files are hard links where processes share a namespace.
    #[test]
    fn the_collector_reads_each_namespace_once_and_skips_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = tmp.path().join("cgroup");
        let proc = tmp.path().join("proc");
        let ids: Vec<String> = (1..=4).map(|i| format!("{i:x}").repeat(64)).collect();
        // Container 1: own netns (pid 11); 2 and 3 share one (pids 12, 13);
        // 4 is on the host's (pid 14 links to pid 1's and self's).
        for (i, id) in ids.iter().enumerate() {
            let d = cg.join("pids/docker").join(id);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), format!("{}\n", 11 + i)).unwrap();
        }
        let mk = |pid: &str| {
            let d = proc.join(pid).join("net");
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let host = mk("1");
        std::fs::write(host.join("snmp"), snmp(1000, 1000)).unwrap();
        for p in ["self", "14"] {
            std::fs::hard_link(host.join("snmp"), mk(p).join("snmp")).unwrap();
        }
        let own = mk("11");
        std::fs::write(own.join("snmp"), snmp(5, 0)).unwrap();
        std::fs::write(own.join("tcp"), table(&[])).unwrap();
        let shared = mk("12");
        std::fs::write(shared.join("snmp"), snmp(1, 0)).unwrap();
        std::fs::write(shared.join("tcp"), table(&[])).unwrap();
        std::fs::hard_link(shared.join("snmp"), mk("13").join("snmp")).unwrap();
        let mut c = NetnsCollector::new(cg, proc.clone()).unwrap();
        let (ev, st) = c.sample(1_000).unwrap();
        let owners: Vec<&str> = ev.iter().map(|e| activity(e).0).collect();
        assert_eq!(owners, vec![&ids[0][..12], &ids[1][..12]]);
        assert_eq!(
            (st.containers, st.namespaces, st.shared, st.host_network),
            (4, 2, 1, 1)
        );
        // The scan shows up as a delta on the shared namespace's owner.
        std::fs::write(shared.join("snmp"), snmp(101, 100)).unwrap();
        let (ev, _) = c.sample(2_000).unwrap();
        let (c2, n) = activity(&ev[1]);
        assert_eq!(
            (c2, n.attempt_fails, n.shared_with),
            (&ids[1][..12], 100, 1)
        );
        assert!(n.tables, "active opens moved: the tables are read");
        // A container whose process is gone is counted, not guessed; the
        // shared namespace made no new attempt: its tables are not read.
        std::fs::remove_dir_all(proc.join("11")).unwrap();
        std::fs::remove_file(shared.join("tcp")).unwrap();
        let (ev, st) = c.sample(3_000).unwrap();
        assert_eq!(
            (ev.len(), st.no_process, st.tables, st.unreadable),
            (1, 1, 0, 0)
        );
        assert!(!activity(&ev[0]).1.tables);
    }

    /// What this machine's kernel printed while nmap ran a SYN scan
    /// (`nmap -sS`), and while busybox `ping` and `arping` ran.
    const RAW_NMAP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
 141: 00000000:00FF 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 11747 2 000000000398f2f4 0\n";
    const RAW_PING: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
 174: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12723 2 0000000085760eeb 0\n";
    const RAW6_TCP: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  6: 00000000000000000000000000000000:0006 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 9 2 0000000000000000 0\n\
 58: 00000000000000000000000000000000:003A 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 10 2 0000000000000000 0\n";
    const PACKET_NMAP: &str = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n\
000000003f62ab42 3      3    0003   0     1 212992 0      11744 \n\
0000000071016e83 3      3    0003   7     1 0      0      11749 \n";
    const PACKET_ARPING: &str = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n\
0000000087c8ae04 3      2    0806   7     1 0      0      13460 \n";

    #[test]
    fn raw_and_packet_tables_count_what_a_syn_scan_holds_and_not_ping() {
        let mut r = RawSockets::default();
        parse_raw_table(RAW_NMAP, &mut r);
        parse_packet_table(PACKET_NMAP, &mut r);
        assert_eq!((r.raw, r.icmp, r.packet, r.malformed), (1, 0, 2, 0));
        let mut r = RawSockets::default();
        parse_raw_table(RAW_PING, &mut r);
        parse_raw_table(RAW6_TCP, &mut r);
        parse_packet_table(PACKET_ARPING, &mut r);
        assert_eq!((r.raw, r.icmp, r.packet, r.malformed), (1, 2, 1, 0));
        // Empty tables (header only) and malformed rows.
        let mut r = RawSockets::default();
        parse_raw_table(RAW_NMAP.lines().next().unwrap(), &mut r);
        parse_packet_table("sk RefCnt Type Proto Iface R Rmem User Inode\n", &mut r);
        assert_eq!(r, RawSockets::default());
        for bad in [
            " 1: 0000000:00FF 00000000:0000 07",
            " 1: 00000000:0FF 00000000:0000 07",
            " x: 00000000:00FF 00000000:0000 07",
            "1 00000000:00FF",
            " 1: 0000000g:00FF 00000000:0000 07",
            " 1: 00000000:+0FF 00000000:0000 07",
        ] {
            let mut r = RawSockets::default();
            parse_raw_table(bad, &mut r);
            assert_eq!((r.raw, r.icmp, r.malformed), (0, 0, 1), "{bad}");
        }
        for bad in [
            "00000000 3 3 0003 0 1 0 0",
            "00000000 3 3 0003 0 1 0 0 1 2",
            "0000000z 3 3 0003 0 1 0 0 1",
            "00000000 3 x 0003 0 1 0 0 1",
            "00000000 3 3 003 0 1 0 0 1",
            "00000000 +3 3 0003 0 1 0 0 1",
        ] {
            let mut r = RawSockets::default();
            parse_packet_table(bad, &mut r);
            assert_eq!((r.packet, r.malformed), (0, 1), "{bad}");
        }
        // Bounded.
        let mut big = String::from("sk RefCnt\n");
        for _ in 0..MAX_SOCKETS + 5 {
            big.push_str("0000000087c8ae04 3 2 0806 7 1 0 0 13460\n");
        }
        let mut r = RawSockets::default();
        parse_packet_table(&big, &mut r);
        assert_eq!((r.packet as usize, r.truncated), (MAX_SOCKETS, 5));
    }

    #[test]
    fn raw_and_packet_sockets_reach_the_event_at_every_reading() {
        let mut t = NetnsTracker::new();
        let mut stats = NetnsStats::default();
        let with = |raw: &str, packet: &str| NetnsReading {
            raw: Some(raw.to_string()),
            packet: Some(packet.to_string()),
            ..snmp_only(reading(7, &["s"], snmp(0, 0), &[]))
        };
        let ev = t.step(1_000, &[with(RAW_NMAP, PACKET_NMAP)], &mut stats);
        let n = activity(&ev[0]).1;
        assert_eq!((n.raw_sockets, n.packet_sockets), (1, 2));
        // Counters still, no TCP table read: the sockets are seen anyway.
        let ev = t.step(2_000, &[with(RAW_NMAP, PACKET_NMAP)], &mut stats);
        let n = activity(&ev[0]).1;
        assert!(!n.tables);
        assert_eq!((n.raw_sockets, n.packet_sockets), (1, 2));
        let ev = t.step(3_000, &[with(RAW_PING, "")], &mut stats);
        let n = activity(&ev[0]).1;
        assert_eq!((n.raw_sockets, n.packet_sockets), (0, 0));
        assert_eq!(stats.bad_rows, 0);
    }

    #[test]
    fn a_raw_table_read_from_disk_reaches_the_row_cap_before_the_byte_limit() {
        // The longest rows (raw6, large inode and pointer), more of them
        // than the cap: what is read still holds more rows than the cap.
        let row = " 9999: 00000000000000000000000000000000:003A 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 4294967295        0 4294967295 2 ffffffffffffffff 4294967295\n";
        assert!(row.len() < 256);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw6");
        let mut text = RAW_PING.lines().next().unwrap_or_default().to_string();
        text.push('\n');
        for _ in 0..MAX_SOCKETS + 100 {
            text.push_str(row);
        }
        std::fs::write(&path, &text).unwrap();
        let read = read_limited(&path, MAX_RAW_TABLE_BYTES).unwrap();
        let mut r = RawSockets::default();
        parse_raw_table(&read, &mut r);
        assert_eq!(r.icmp as usize, MAX_SOCKETS);
        assert!(r.truncated >= 1, "{r:?}");
    }

    #[test]
    fn icmp_sockets_past_the_cap_cannot_hide_a_raw_socket() {
        // Enough raw ICMP sockets to fill the cap, the scanner's raw TCP
        // socket and packet sockets after them: the rows left unread count
        // as raw, so the namespace still shows a raw socket.
        let mut raw = String::from(RAW_PING);
        let row = RAW_PING.lines().nth(1).unwrap_or_default();
        for _ in 0..MAX_SOCKETS {
            raw.push_str(row);
            raw.push('\n');
        }
        raw.push_str(RAW_NMAP.lines().nth(1).unwrap_or_default());
        raw.push('\n');
        let mut t = NetnsTracker::new();
        let mut stats = NetnsStats::default();
        let r = NetnsReading {
            raw: Some(raw),
            packet: Some(PACKET_NMAP.to_string()),
            ..snmp_only(reading(7, &["s"], snmp(0, 0), &[]))
        };
        let ev = t.step(1_000, &[r], &mut stats);
        let n = activity(&ev[0]).1;
        assert!(n.raw_sockets >= 1, "{n:?}");
        assert!(stats.bad_rows >= 1);
    }

    #[test]
    fn the_collector_reads_raw_and_packet_tables_every_sample() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = tmp.path().join("cgroup");
        let proc = tmp.path().join("proc");
        let id = "a".repeat(64);
        let d = cg.join("pids/docker").join(&id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.procs"), "11\n").unwrap();
        for pid in ["1", "11"] {
            std::fs::create_dir_all(proc.join(pid).join("net")).unwrap();
        }
        std::fs::write(proc.join("1/net/snmp"), snmp(1000, 0)).unwrap();
        let net = proc.join("11/net");
        std::fs::write(net.join("snmp"), snmp(5, 0)).unwrap();
        let mut c = NetnsCollector::new(cg, proc.clone()).unwrap();
        let (ev, _) = c.sample(1_000).unwrap();
        assert_eq!(activity(&ev[0]).1.raw_sockets, 0);
        // The scan starts between two readings; no TCP counter moves.
        std::fs::write(net.join("raw"), RAW_NMAP).unwrap();
        std::fs::write(net.join("packet"), PACKET_NMAP).unwrap();
        let (ev, _) = c.sample(2_000).unwrap();
        let n = activity(&ev[0]).1;
        assert_eq!((n.raw_sockets, n.packet_sockets, n.tables), (1, 2, false));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_fails_cleanly(s in "\\PC{0,400}") {
            let _ = parse_snmp(&s);
            let _ = parse_tcp_line(&s);
            let mut out = Vec::new();
            let st = parse_tcp_table(&s, &mut out);
            prop_assert_eq!(st.rows as usize, out.len());
            let lines = s.lines().count() as u64;
            let mut r = RawSockets::default();
            parse_raw_table(&s, &mut r);
            prop_assert!(r.rows() + u64::from(r.malformed) <= lines);
            prop_assert_eq!(r.packet, 0);
            let mut p = RawSockets::default();
            parse_packet_table(&s, &mut p);
            prop_assert!(p.rows() + u64::from(p.malformed) <= lines);
            prop_assert_eq!(p.raw + p.icmp, 0);
        }

        #[test]
        fn raw_rows_decode_by_protocol(proto in any::<u16>(), v6 in any::<bool>(), sl in 0u32..10_000) {
            let addr = if v6 { "0".repeat(32) } else { "0".repeat(8) };
            let row = format!("{sl:4}: {addr}:{proto:04X} {addr}:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 0\n");
            let mut r = RawSockets::default();
            parse_raw_table(&row, &mut r);
            let icmp = proto == 1 || proto == 58;
            prop_assert_eq!((r.raw, r.icmp, r.malformed), (u32::from(!icmp), u32::from(icmp), 0));
        }

        #[test]
        fn rows_round_trip(
            local in any::<([u8; 4], u16)>(),
            remote in any::<([u8; 4], u16)>(),
            st in 1u8..=12,
            inode in any::<u64>(),
        ) {
            let s = parse_tcp_line(&row(3, local, remote, st, inode)).unwrap();
            prop_assert_eq!(s.local, SocketAddr::from(local));
            prop_assert_eq!(s.remote, SocketAddr::from(remote));
            prop_assert_eq!(s.state, TcpState::from_code(st).unwrap());
            prop_assert_eq!(s.inode, inode);
        }

        #[test]
        fn snmp_round_trips(v in any::<[u64; 6]>()) {
            let text = format!(
                "Tcp: MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets InErrs OutRsts\nTcp: -1 {} {} {} {} {} {}\n",
                v[0], v[1], v[2], v[3], v[4], v[5]
            );
            let c = parse_snmp(&text).unwrap();
            prop_assert_eq!(
                [c.active_opens, c.passive_opens, c.attempt_fails, c.estab_resets, c.in_errs, c.out_rsts],
                v
            );
        }

        #[test]
        fn deltas_never_underflow_and_sum_up(
            steps in prop::collection::vec((any::<u16>(), any::<u16>(), 0u64..5_000), 1..20),
        ) {
            // Whatever the counters do, the deltas reported never exceed
            // the counters' rises: a reset is never a huge delta.
            let mut t = NetnsTracker::new();
            let mut st = NetnsStats::default();
            let (mut ts, mut reported, mut rises) = (0u64, 0u64, 0u64);
            let mut last: Option<(u64, u64)> = None;
            for (a, f, dt) in steps {
                let (a, f) = (u64::from(a), u64::from(f));
                ts += dt;
                let ev = t.step(ts, &[reading(1, &["a"], snmp(a, f), &[])], &mut st);
                let (_, n) = activity(&ev[0]);
                if let Some((pa, pf)) = last {
                    rises += a.saturating_sub(pa);
                    if a >= pa && f >= pf {
                        prop_assert_eq!((n.active_opens, n.attempt_fails), (a - pa, f - pf));
                    } else {
                        prop_assert_eq!((n.active_opens, n.interval_ms), (0, 0));
                    }
                }
                reported += n.active_opens;
                prop_assert!(reported <= rises);
                last = Some((a, f));
            }
        }
    }
}
