//! Container resource counters from cgroup v2 (unified) or v1/hybrid
//! hierarchies, plus network counters from `/proc/<pid>/net/dev`.
//!
//! [`CgroupCollector`] discovers containers under a configurable cgroup root
//! (`/sys/fs/cgroup` on a host, a fixture tree in tests) by walking the
//! hierarchy and applying the cAdvisor rule to each directory's basename: a
//! 64-hex container id, never a `.mount` unit. Recognised layouts
//! ([`classify_cgroup_path`]):
//!
//! | runtime / driver | path (relative to the hierarchy root) |
//! |---|---|
//! | Docker, systemd | `system.slice/docker-<64hex>.scope` |
//! | Docker, cgroupfs | `docker/<64hex>` |
//! | K8s + containerd, systemd | `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<64hex>.scope` |
//! | K8s + CRI-O, systemd | `…/kubepods-<qos>-pod<uid_>.slice/crio-<64hex>.scope` (not `crio-conmon-`) |
//! | K8s, cgroupfs | `kubepods/<qos>/pod<uid>/<64hex>` (Guaranteed: `kubepods/pod<uid>/<64hex>`) |
//! | Podman, systemd | `…/libpod-<64hex>.scope` (not `libpod-conmon-`) |
//!
//! The pod UID comes from the `pod<uid>` component (systemd's `_` escapes
//! turned back into `-`), the QoS class from the `burstable`/`besteffort`
//! slice (a pod under `kubepods` without one is Guaranteed). Pause/sandbox
//! containers look like any other container here; excluding them needs the
//! CRI API.
//!
//! [`CgroupCollector::sample`] re-discovers the containers and reads, by key
//! and never by position:
//!
//! | counter | cgroup v2 | cgroup v1 |
//! |---|---|---|
//! | `cpu_usage_usec` | `cpu.stat usage_usec` | `cpuacct.usage` (ns / 1000) |
//! | `nr_periods`, `nr_throttled` | `cpu.stat` | `cpu.stat` (cpu controller) |
//! | `memory_bytes` | `memory.current` | `memory.usage_in_bytes` |
//! | `io_read_bytes`, `io_write_bytes` | `io.stat` `rbytes`/`wbytes` summed over devices | `blkio.throttle.io_service_bytes` `Read`/`Write` (else `blkio.io_service_bytes_recursive`) |
//! | `pids` | `pids.current` | `pids.current` |
//! | `net_*` | `/proc/<pid>/net/dev` of a member process (first PIDs of `cgroup.procs`), all interfaces but `lo` | same |
//!
//! A missing file leaves its counters at 0 and is counted in
//! [`CollectStats`]; malformed lines are counted and skipped; a container
//! whose directory disappears while it is read is dropped (`vanished`).
//! A container on the host network namespace reports the host's interfaces.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::events::SHORT_ID_LEN;
use super::proc::{ProcFs, parse_pids, read_small};
use super::{ContainerId, Event, ResourceCounters};

/// Deepest directory level visited under a hierarchy root.
pub const MAX_WALK_DEPTH: usize = 16;

/// Most directories visited per hierarchy per discovery.
pub const MAX_WALK_DIRS: usize = 200_000;

/// Member PIDs tried for `/proc/<pid>/net/dev` before giving up.
const NET_PID_TRIES: usize = 4;

/// cgroup hierarchy flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    /// Per-controller hierarchies (v1, or hybrid with an unused `unified`).
    V1,
    /// The unified hierarchy (`cgroup.controllers` at the root).
    V2,
}

/// Container runtime inferred from the cgroup path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Runtime {
    /// `docker-<id>.scope` or `docker/<id>`.
    Docker,
    /// `cri-containerd-<id>.scope`.
    Containerd,
    /// `crio-<id>.scope`.
    CriO,
    /// `libpod-<id>.scope`.
    Podman,
    /// A bare 64-hex directory outside `docker/` (e.g. `kubepods/…/pod<uid>/<id>`)
    /// or another `<prefix>-<id>.scope`.
    Unknown,
}

/// Kubernetes pod QoS class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum QosClass {
    /// Pod directly under `kubepods` (no QoS slice).
    Guaranteed,
    /// `kubepods-burstable.slice` / `kubepods/burstable`.
    Burstable,
    /// `kubepods-besteffort.slice` / `kubepods/besteffort`.
    BestEffort,
}

/// A container found in the cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// The full 64-hex container id (lowercase).
    pub id: String,
    /// Runtime inferred from the path.
    pub runtime: Runtime,
    /// Pod UID with dashes (`1b2c56f1-ff15-4ab7-8ae8-7161cdfb59d4`), if in a pod.
    pub pod_uid: Option<String>,
    /// QoS class, if under `kubepods`.
    pub qos: Option<QosClass>,
    /// Path relative to the hierarchy root (v2: the cgroup root; v1: each
    /// controller directory).
    pub cgroup_path: PathBuf,
}

impl ContainerInfo {
    /// The id used in [`Event`]s: the 12-hex short id, so cgroup samples
    /// join Falco/Tetragon events (see [`super::events::SHORT_ID_LEN`]).
    pub fn container_id(&self) -> ContainerId {
        ContainerId(self.id.chars().take(SHORT_ID_LEN).collect())
    }
}

/// Errors that stop a discovery or a sample.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The root (or a controller directory) cannot be listed.
    #[error("cannot read cgroup hierarchy {path}: {source}")]
    Unreadable {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Neither `cgroup.controllers` (v2) nor a v1 controller directory
    /// exists under the root.
    #[error("no cgroup v2 or v1 hierarchy under {0}")]
    NoHierarchy(PathBuf),
}

/// Counters of one discovery or sample.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CollectStats {
    /// Containers discovered.
    pub containers: u64,
    /// `Event::Sample`s produced.
    pub samples: u64,
    /// Containers that disappeared while being read (no sample).
    pub vanished: u64,
    /// Counter files that did not exist (their counters are 0).
    pub missing_files: u64,
    /// Files that existed but could not be read (permissions, not UTF-8, ...).
    pub unreadable_files: u64,
    /// Malformed lines skipped.
    pub malformed_lines: u64,
    /// Detail per reason, e.g. `missing:io.stat`, `malformed:cpu.stat`,
    /// `vanished`, `duplicate_id`, `no_member_process`, `unreadable_dir`.
    pub by_reason: BTreeMap<&'static str, u64>,
}

impl CollectStats {
    fn count(&mut self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let e = self.by_reason.entry(reason).or_insert(0);
        *e = e.saturating_add(n);
    }

    /// Adds `other`'s counters to `self`.
    pub fn merge(&mut self, other: &CollectStats) {
        self.containers = self.containers.saturating_add(other.containers);
        self.samples = self.samples.saturating_add(other.samples);
        self.vanished = self.vanished.saturating_add(other.vanished);
        self.missing_files = self.missing_files.saturating_add(other.missing_files);
        self.unreadable_files = self.unreadable_files.saturating_add(other.unreadable_files);
        self.malformed_lines = self.malformed_lines.saturating_add(other.malformed_lines);
        for (k, v) in &other.by_reason {
            self.count(k, *v);
        }
    }
}

/// The counter files read, with their stable reason strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CgFile {
    CpuStat,
    CpuacctUsage,
    MemoryCurrent,
    MemoryUsageInBytes,
    IoStat,
    BlkioServiceBytes,
    PidsCurrent,
    CgroupProcs,
    NetDev,
}

impl CgFile {
    fn name(self) -> &'static str {
        match self {
            CgFile::CpuStat => "cpu.stat",
            CgFile::CpuacctUsage => "cpuacct.usage",
            CgFile::MemoryCurrent => "memory.current",
            CgFile::MemoryUsageInBytes => "memory.usage_in_bytes",
            CgFile::IoStat => "io.stat",
            CgFile::BlkioServiceBytes => "blkio.throttle.io_service_bytes",
            CgFile::PidsCurrent => "pids.current",
            CgFile::CgroupProcs => "cgroup.procs",
            CgFile::NetDev => "net/dev",
        }
    }

    fn missing(self) -> &'static str {
        match self {
            CgFile::CpuStat => "missing:cpu.stat",
            CgFile::CpuacctUsage => "missing:cpuacct.usage",
            CgFile::MemoryCurrent => "missing:memory.current",
            CgFile::MemoryUsageInBytes => "missing:memory.usage_in_bytes",
            CgFile::IoStat => "missing:io.stat",
            CgFile::BlkioServiceBytes => "missing:blkio.throttle.io_service_bytes",
            CgFile::PidsCurrent => "missing:pids.current",
            CgFile::CgroupProcs => "missing:cgroup.procs",
            CgFile::NetDev => "missing:net/dev",
        }
    }

    fn malformed(self) -> &'static str {
        match self {
            CgFile::CpuStat => "malformed:cpu.stat",
            CgFile::CpuacctUsage => "malformed:cpuacct.usage",
            CgFile::MemoryCurrent => "malformed:memory.current",
            CgFile::MemoryUsageInBytes => "malformed:memory.usage_in_bytes",
            CgFile::IoStat => "malformed:io.stat",
            CgFile::BlkioServiceBytes => "malformed:blkio.throttle.io_service_bytes",
            CgFile::PidsCurrent => "malformed:pids.current",
            CgFile::CgroupProcs => "malformed:cgroup.procs",
            CgFile::NetDev => "malformed:net/dev",
        }
    }

    fn unreadable(self) -> &'static str {
        match self {
            CgFile::CpuStat => "unreadable:cpu.stat",
            CgFile::CpuacctUsage => "unreadable:cpuacct.usage",
            CgFile::MemoryCurrent => "unreadable:memory.current",
            CgFile::MemoryUsageInBytes => "unreadable:memory.usage_in_bytes",
            CgFile::IoStat => "unreadable:io.stat",
            CgFile::BlkioServiceBytes => "unreadable:blkio.throttle.io_service_bytes",
            CgFile::PidsCurrent => "unreadable:pids.current",
            CgFile::CgroupProcs => "unreadable:cgroup.procs",
            CgFile::NetDev => "unreadable:net/dev",
        }
    }
}

/// Read and write byte totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoBytes {
    /// Bytes read.
    pub read: u64,
    /// Bytes written.
    pub write: u64,
}

/// Parses a flat-keyed file (`key value` per line) for `keys`, in any order.
/// Unknown keys are ignored; a line that is not `key <u64>` is malformed.
/// Returns the values (in `keys` order, `None` if absent; the first
/// occurrence wins) and the number of malformed lines.
pub fn parse_flat_keyed(text: &str, keys: &[&str]) -> (Vec<Option<u64>>, u64) {
    let mut vals = vec![None; keys.len()];
    let mut bad = 0u64;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v), None) = (it.next(), it.next(), it.next()) else {
            if !line.trim().is_empty() {
                bad = bad.saturating_add(1);
            }
            continue;
        };
        let Ok(v) = v.parse::<u64>() else {
            bad = bad.saturating_add(1);
            continue;
        };
        if let Some(i) = keys.iter().position(|x| *x == k)
            && vals[i].is_none()
        {
            vals[i] = Some(v);
        }
    }
    (vals, bad)
}

/// Parses a single-value file (`memory.current`, `pids.current`,
/// `cpuacct.usage`): one unsigned integer. `max` or anything else is `None`.
pub fn parse_single_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Parses cgroup v2 `io.stat` (`MAJ:MIN rbytes=.. wbytes=.. rios=..`),
/// summing `rbytes`/`wbytes` over devices. A line without a `MAJ:MIN` key or
/// with a `key=value` pair whose value is not a u64 is skipped and counted.
pub fn parse_io_stat(text: &str) -> (IoBytes, u64) {
    let mut out = IoBytes::default();
    let mut bad = 0u64;
    'lines: for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(dev) = it.next() else { continue };
        if !is_dev(dev) {
            bad = bad.saturating_add(1);
            continue;
        }
        let (mut r, mut w) = (0u64, 0u64);
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                bad = bad.saturating_add(1);
                continue 'lines;
            };
            let Ok(v) = v.parse::<u64>() else {
                bad = bad.saturating_add(1);
                continue 'lines;
            };
            match k {
                "rbytes" => r = v,
                "wbytes" => w = v,
                _ => {}
            }
        }
        out.read = out.read.saturating_add(r);
        out.write = out.write.saturating_add(w);
    }
    (out, bad)
}

fn is_dev(s: &str) -> bool {
    s.split_once(':').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// Parses cgroup v1 `blkio.throttle.io_service_bytes` (`MAJ:MIN Op bytes`,
/// plus a `Total bytes` line), summing `Read`/`Write` over devices.
pub fn parse_blkio_service_bytes(text: &str) -> (IoBytes, u64) {
    let mut out = IoBytes::default();
    let mut bad = 0u64;
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            [] => {}
            ["Total", v] if v.parse::<u64>().is_ok() => {}
            [dev, op, v] if is_dev(dev) => match v.parse::<u64>() {
                Ok(v) => match *op {
                    "Read" => out.read = out.read.saturating_add(v),
                    "Write" => out.write = out.write.saturating_add(v),
                    _ => {}
                },
                Err(_) => bad = bad.saturating_add(1),
            },
            _ => bad = bad.saturating_add(1),
        }
    }
    (out, bad)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Classifies one cgroup path (relative to the hierarchy root): `Some` for
/// a container directory of a known layout (see the module table).
pub fn classify_cgroup_path(rel: &Path) -> Option<ContainerInfo> {
    let comps: Vec<&str> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let (&base, parents) = comps.split_last()?;
    if base.ends_with(".mount") {
        return None;
    }
    let (id, runtime) = if let Some(stem) = base.strip_suffix(".scope") {
        if stem.starts_with("crio-conmon-") || stem.starts_with("libpod-conmon-") {
            return None;
        }
        let (prefix, id) = stem.rsplit_once('-')?;
        let runtime = match prefix {
            "docker" => Runtime::Docker,
            "cri-containerd" => Runtime::Containerd,
            "crio" => Runtime::CriO,
            "libpod" => Runtime::Podman,
            _ => Runtime::Unknown,
        };
        (id, runtime)
    } else if parents.last() == Some(&"docker") {
        (base, Runtime::Docker)
    } else {
        (base, Runtime::Unknown)
    };
    if !is_hex64(id) {
        return None;
    }
    let pod_uid = parents.iter().find_map(|c| pod_uid_of(c));
    let in_kubepods = parents.iter().any(|c| {
        *c == "kubepods" || c.starts_with("kubepods-") || c.starts_with("kubepods.") || {
            c.contains("-kubepods")
        }
    });
    let qos = if !in_kubepods {
        None
    } else if parents.iter().any(|c| {
        *c == "burstable" || c.ends_with("-burstable.slice") || c.contains("-burstable-pod")
    }) {
        Some(QosClass::Burstable)
    } else if parents.iter().any(|c| {
        *c == "besteffort" || c.ends_with("-besteffort.slice") || c.contains("-besteffort-pod")
    }) {
        Some(QosClass::BestEffort)
    } else if pod_uid.is_some() {
        Some(QosClass::Guaranteed)
    } else {
        None
    };
    Some(ContainerInfo {
        id: id.to_string(),
        runtime,
        pod_uid,
        qos,
        cgroup_path: rel.to_path_buf(),
    })
}

/// `pod<uid>` (cgroupfs) or `…-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(c: &str) -> Option<String> {
    let raw = if let Some(s) = c.strip_suffix(".slice") {
        let i = s.rfind("-pod")?;
        &s[i + 4..]
    } else {
        c.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let ok = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then(|| uid.to_ascii_lowercase())
}

/// v1 controller directories (absolute), `None` when not mounted.
#[derive(Clone, Debug, Default)]
struct V1Dirs {
    cpuacct: Option<PathBuf>,
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    blkio: Option<PathBuf>,
    pids: Option<PathBuf>,
}

impl V1Dirs {
    fn detect(root: &Path) -> Self {
        let first = |cands: &[&str]| cands.iter().map(|c| root.join(c)).find(|p| p.is_dir());
        Self {
            cpuacct: first(&["cpu,cpuacct", "cpuacct,cpu", "cpuacct"]),
            cpu: first(&["cpu,cpuacct", "cpuacct,cpu", "cpu"]),
            memory: first(&["memory"]),
            blkio: first(&["blkio"]),
            pids: first(&["pids"]),
        }
    }

    /// Distinct controller directories, in a fixed order.
    fn all(&self) -> Vec<&Path> {
        let mut seen = BTreeSet::new();
        [
            &self.pids,
            &self.memory,
            &self.cpuacct,
            &self.cpu,
            &self.blkio,
        ]
        .into_iter()
        .flatten()
        .filter(|p| seen.insert(p.as_path()))
        .map(PathBuf::as_path)
        .collect()
    }
}

#[derive(Clone, Debug)]
enum Layout {
    V2,
    V1(V1Dirs),
}

/// Discovers containers in a cgroup hierarchy and samples their counters.
#[derive(Clone, Debug)]
pub struct CgroupCollector {
    root: PathBuf,
    layout: Layout,
    proc: ProcFs,
    containers: Vec<ContainerInfo>,
}

/// Outcome of reading one file.
enum FileRead {
    Text(String),
    Missing,
    Failed,
}

impl CgroupCollector {
    /// A collector for the hierarchy at `root` (e.g. `/sys/fs/cgroup`),
    /// reading network counters from `/proc` (see
    /// [`CgroupCollector::with_proc_root`]). Detects v2 (a
    /// `cgroup.controllers` file at the root) or v1/hybrid (per-controller
    /// directories) and runs a first discovery.
    pub fn new(root: PathBuf) -> Result<Self, CgroupError> {
        let layout = if root.join("cgroup.controllers").is_file() {
            Layout::V2
        } else {
            let dirs = V1Dirs::detect(&root);
            if dirs.all().is_empty() {
                return Err(if root.is_dir() {
                    CgroupError::NoHierarchy(root)
                } else {
                    CgroupError::Unreadable {
                        source: io::Error::new(io::ErrorKind::NotFound, "not a directory"),
                        path: root,
                    }
                });
            }
            Layout::V1(dirs)
        };
        let mut c = Self {
            root,
            layout,
            proc: ProcFs::default(),
            containers: Vec::new(),
        };
        c.discover()?;
        Ok(c)
    }

    /// Reads `/proc/<pid>/net/dev` under `proc_root` instead of `/proc`.
    pub fn with_proc_root(mut self, proc_root: PathBuf) -> Self {
        self.proc = ProcFs::new(proc_root);
        self
    }

    /// The cgroup root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The detected hierarchy flavour.
    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V2 => CgroupVersion::V2,
            Layout::V1(_) => CgroupVersion::V1,
        }
    }

    /// Containers found by the last discovery, sorted by cgroup path.
    pub fn containers(&self) -> &[ContainerInfo] {
        &self.containers
    }

    /// Walks the hierarchy (v1: every controller directory, union by path)
    /// and replaces the container list. Duplicate ids (same short id at two
    /// paths) keep the first path and are counted.
    pub fn discover(&mut self) -> Result<CollectStats, CgroupError> {
        let mut stats = CollectStats::default();
        let mut found: BTreeMap<PathBuf, ContainerInfo> = BTreeMap::new();
        let bases: Vec<PathBuf> = match &self.layout {
            Layout::V2 => vec![self.root.clone()],
            Layout::V1(d) => d.all().into_iter().map(Path::to_path_buf).collect(),
        };
        for base in &bases {
            walk(base, &mut found, &mut stats)?;
        }
        let mut ids = BTreeSet::new();
        let mut out = Vec::with_capacity(found.len());
        for info in found.into_values() {
            if ids.insert(info.container_id()) {
                out.push(info);
            } else {
                stats.count("duplicate_id", 1);
            }
        }
        stats.containers = out.len() as u64;
        self.containers = out;
        Ok(stats)
    }

    /// The `cgroup.procs` file of a container of the last discovery (v1:
    /// the first controller directory that has one), if any.
    pub fn procs_file(&self, info: &ContainerInfo) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = match &self.layout {
            Layout::V2 => vec![self.root.join(&info.cgroup_path)],
            Layout::V1(d) => d.all().iter().map(|b| b.join(&info.cgroup_path)).collect(),
        };
        dirs.into_iter()
            .map(|d| d.join("cgroup.procs"))
            .find(|p| p.is_file())
    }

    /// Re-discovers the containers and reads every container's counters,
    /// returning one [`Event::Sample`] per container (in cgroup-path order)
    /// stamped `ts_ms`, and the counters of what was skipped.
    pub fn sample(&mut self, ts_ms: u64) -> Result<(Vec<Event>, CollectStats), CgroupError> {
        let mut stats = self.discover()?;
        let events = self.read_known(ts_ms, &mut stats);
        Ok((events, stats))
    }

    /// Reads the counters of the containers of the last discovery.
    fn read_known(&self, ts_ms: u64, stats: &mut CollectStats) -> Vec<Event> {
        let mut events = Vec::with_capacity(self.containers.len());
        for info in &self.containers {
            let mut local = CollectStats::default();
            let counters = match &self.layout {
                Layout::V2 => self.read_v2(&info.cgroup_path, &mut local),
                Layout::V1(d) => self.read_v1(d, &info.cgroup_path, &mut local),
            };
            if self.vanished(&info.cgroup_path) {
                stats.vanished = stats.vanished.saturating_add(1);
                stats.count("vanished", 1);
                continue;
            }
            stats.merge(&local);
            events.push(Event::Sample {
                container: info.container_id(),
                ts_ms,
                counters,
            });
        }
        stats.samples = events.len() as u64;
        events
    }

    fn vanished(&self, rel: &Path) -> bool {
        match &self.layout {
            Layout::V2 => !self.root.join(rel).is_dir(),
            Layout::V1(d) => !d.all().iter().any(|b| b.join(rel).is_dir()),
        }
    }

    fn read(path: &Path, file: CgFile, stats: &mut CollectStats) -> FileRead {
        match read_small(path) {
            Ok(t) => FileRead::Text(t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                stats.missing_files = stats.missing_files.saturating_add(1);
                stats.count(file.missing(), 1);
                FileRead::Missing
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, file = file.name(), "cgroup file unreadable");
                stats.unreadable_files = stats.unreadable_files.saturating_add(1);
                stats.count(file.unreadable(), 1);
                FileRead::Failed
            }
        }
    }

    fn malformed(stats: &mut CollectStats, file: CgFile, n: u64) {
        stats.malformed_lines = stats.malformed_lines.saturating_add(n);
        stats.count(file.malformed(), n);
    }

    /// A single-value file; `None` if missing/unreadable/malformed (counted).
    fn single(path: &Path, file: CgFile, stats: &mut CollectStats) -> Option<u64> {
        match Self::read(path, file, stats) {
            FileRead::Text(t) => {
                let v = parse_single_u64(&t);
                if v.is_none() {
                    Self::malformed(stats, file, 1);
                }
                v
            }
            FileRead::Missing | FileRead::Failed => None,
        }
    }

    fn cpu_stat(path: &Path, c: &mut ResourceCounters, with_usage: bool, stats: &mut CollectStats) {
        if let FileRead::Text(t) = Self::read(path, CgFile::CpuStat, stats) {
            let (v, bad) = parse_flat_keyed(&t, &["usage_usec", "nr_periods", "nr_throttled"]);
            Self::malformed(stats, CgFile::CpuStat, bad);
            if with_usage {
                c.cpu_usage_usec = v[0].unwrap_or(0);
            }
            c.nr_periods = v[1].unwrap_or(0);
            c.nr_throttled = v[2].unwrap_or(0);
        }
    }

    fn read_v2(&self, rel: &Path, stats: &mut CollectStats) -> ResourceCounters {
        let dir = self.root.join(rel);
        let mut c = ResourceCounters::default();
        Self::cpu_stat(&dir.join("cpu.stat"), &mut c, true, stats);
        c.memory_bytes =
            Self::single(&dir.join("memory.current"), CgFile::MemoryCurrent, stats).unwrap_or(0);
        if let FileRead::Text(t) = Self::read(&dir.join("io.stat"), CgFile::IoStat, stats) {
            let (io, bad) = parse_io_stat(&t);
            Self::malformed(stats, CgFile::IoStat, bad);
            c.io_read_bytes = io.read;
            c.io_write_bytes = io.write;
        }
        c.pids = Self::single(&dir.join("pids.current"), CgFile::PidsCurrent, stats).unwrap_or(0);
        self.net(&[dir], &mut c, stats);
        c
    }

    fn read_v1(&self, d: &V1Dirs, rel: &Path, stats: &mut CollectStats) -> ResourceCounters {
        let mut c = ResourceCounters::default();
        let missing = |stats: &mut CollectStats, f: CgFile| {
            stats.missing_files = stats.missing_files.saturating_add(1);
            stats.count(f.missing(), 1);
        };
        match &d.cpuacct {
            Some(b) => {
                let ns = Self::single(
                    &b.join(rel).join("cpuacct.usage"),
                    CgFile::CpuacctUsage,
                    stats,
                );
                c.cpu_usage_usec = ns.unwrap_or(0) / 1000;
            }
            None => missing(stats, CgFile::CpuacctUsage),
        }
        match &d.cpu {
            Some(b) => Self::cpu_stat(&b.join(rel).join("cpu.stat"), &mut c, false, stats),
            None => missing(stats, CgFile::CpuStat),
        }
        match &d.memory {
            Some(b) => {
                c.memory_bytes = Self::single(
                    &b.join(rel).join("memory.usage_in_bytes"),
                    CgFile::MemoryUsageInBytes,
                    stats,
                )
                .unwrap_or(0);
            }
            None => missing(stats, CgFile::MemoryUsageInBytes),
        }
        match &d.blkio {
            Some(b) => {
                let dir = b.join(rel);
                let primary = dir.join("blkio.throttle.io_service_bytes");
                let path = if primary.exists() {
                    primary
                } else {
                    let alt = dir.join("blkio.io_service_bytes_recursive");
                    if alt.exists() { alt } else { primary }
                };
                if let FileRead::Text(t) = Self::read(&path, CgFile::BlkioServiceBytes, stats) {
                    let (io, bad) = parse_blkio_service_bytes(&t);
                    Self::malformed(stats, CgFile::BlkioServiceBytes, bad);
                    c.io_read_bytes = io.read;
                    c.io_write_bytes = io.write;
                }
            }
            None => missing(stats, CgFile::BlkioServiceBytes),
        }
        match &d.pids {
            Some(b) => {
                c.pids = Self::single(
                    &b.join(rel).join("pids.current"),
                    CgFile::PidsCurrent,
                    stats,
                )
                .unwrap_or(0);
            }
            None => missing(stats, CgFile::PidsCurrent),
        }
        let dirs: Vec<PathBuf> = d.all().iter().map(|b| b.join(rel)).collect();
        self.net(&dirs, &mut c, stats);
        c
    }

    /// Network counters of the first member process whose `net/dev` exists;
    /// `dirs` are the container's directories tried for `cgroup.procs`.
    fn net(&self, dirs: &[PathBuf], c: &mut ResourceCounters, stats: &mut CollectStats) {
        let Some(procs) = dirs
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .find(|p| p.is_file())
        else {
            stats.missing_files = stats.missing_files.saturating_add(1);
            stats.count(CgFile::CgroupProcs.missing(), 1);
            return;
        };
        let FileRead::Text(t) = Self::read(&procs, CgFile::CgroupProcs, stats) else {
            return;
        };
        let (pids, bad) = parse_pids(&t);
        Self::malformed(stats, CgFile::CgroupProcs, bad);
        if pids.is_empty() {
            stats.count("no_member_process", 1);
            return;
        }
        for pid in pids.iter().take(NET_PID_TRIES) {
            match self.proc.net_dev(*pid) {
                Ok(p) => {
                    Self::malformed(stats, CgFile::NetDev, p.malformed_lines);
                    c.net_rx_bytes = p.counters.rx_bytes;
                    c.net_rx_packets = p.counters.rx_packets;
                    c.net_tx_bytes = p.counters.tx_bytes;
                    c.net_tx_packets = p.counters.tx_packets;
                    return;
                }
                // The process exited (or never had a net/dev): try the next.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => {
                    stats.unreadable_files = stats.unreadable_files.saturating_add(1);
                    stats.count(CgFile::NetDev.unreadable(), 1);
                    return;
                }
            }
        }
        stats.missing_files = stats.missing_files.saturating_add(1);
        stats.count(CgFile::NetDev.missing(), 1);
    }
}

/// Walks `base` (depth- and size-bounded, symlinks not followed) and records
/// container directories by relative path.
fn walk(
    base: &Path,
    found: &mut BTreeMap<PathBuf, ContainerInfo>,
    stats: &mut CollectStats,
) -> Result<(), CgroupError> {
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    let mut visited = 0usize;
    while let Some((rel, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_WALK_DIRS {
            stats.count("walk_limit", 1);
            break;
        }
        let dir = base.join(&rel);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(source) if rel.as_os_str().is_empty() => {
                return Err(CgroupError::Unreadable { path: dir, source });
            }
            Err(_) => {
                // Removed while walking, or not permitted.
                stats.count("unreadable_dir", 1);
                continue;
            }
        };
        for entry in rd.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let child = rel.join(name);
            if let Some(info) = classify_cgroup_path(&child) {
                found.entry(child.clone()).or_insert(info);
            }
            if depth + 1 < MAX_WALK_DEPTH {
                stack.push((child, depth + 1));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "72e5a5ff5eef3c4222a6551b992b9360a99122f77d2229783f0ee0946dfd800e";

    #[test]
    fn cadvisor_vectors() {
        let c = classify_cgroup_path(Path::new(&format!("system.slice/docker-{ID}.scope")))
            .expect("container");
        assert_eq!(c.id, ID);
        assert_eq!(c.runtime, Runtime::Docker);
        assert_eq!(c.pod_uid, None);
        assert_eq!(c.qos, None);
        assert!(
            classify_cgroup_path(Path::new(
                "system.slice/var-lib-docker-overlay-9f086b233ab7c786bf8b40b164680b658a8f00e94323868e288d6ce20bc92193-merged.mount"
            ))
            .is_none()
        );
        assert!(classify_cgroup_path(Path::new("system.slice/sshd.service")).is_none());
    }

    #[test]
    fn kubepods_layouts() {
        let p = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c56f1_ff15_4ab7_8ae8_7161cdfb59d4.slice/cri-containerd-{ID}.scope"
        );
        let c = classify_cgroup_path(Path::new(&p)).expect("container");
        assert_eq!(c.runtime, Runtime::Containerd);
        assert_eq!(
            c.pod_uid.as_deref(),
            Some("1b2c56f1-ff15-4ab7-8ae8-7161cdfb59d4")
        );
        assert_eq!(c.qos, Some(QosClass::Burstable));
        let p = format!("kubepods/pod0a1b2c3d-0000-4000-8000-000000000001/{ID}");
        let c = classify_cgroup_path(Path::new(&p)).expect("container");
        assert_eq!(c.runtime, Runtime::Unknown);
        assert_eq!(c.qos, Some(QosClass::Guaranteed));
        let p = format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod0a1b_2c.slice/crio-{ID}.scope"
        );
        let c = classify_cgroup_path(Path::new(&p)).expect("container");
        assert_eq!(c.runtime, Runtime::CriO);
        assert_eq!(c.qos, Some(QosClass::BestEffort));
        assert_eq!(c.pod_uid.as_deref(), Some("0a1b-2c"));
        assert!(classify_cgroup_path(Path::new(&format!("x/crio-conmon-{ID}.scope"))).is_none());
        assert!(classify_cgroup_path(Path::new(&format!("x/docker-{}.scope", &ID[1..]))).is_none());
    }

    #[test]
    fn container_vanishing_mid_read_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory\n").unwrap();
        for id in [ID, &ID.replace('7', "8")] {
            let d = root.join(format!("system.slice/docker-{id}.scope"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cpu.stat"), "usage_usec 10\n").unwrap();
        }
        let c = CgroupCollector::new(root.clone()).unwrap();
        assert_eq!(c.containers().len(), 2);
        std::fs::remove_dir_all(root.join(format!("system.slice/docker-{ID}.scope"))).unwrap();
        let mut stats = CollectStats::default();
        let events = c.read_known(1, &mut stats);
        assert_eq!(events.len(), 1);
        assert_eq!(stats.vanished, 1);
        assert_eq!(stats.by_reason.get("vanished"), Some(&1));
        // The gone container's missing files are not counted.
        assert_eq!(stats.by_reason.get("missing:cpu.stat"), None);
    }

    #[test]
    fn flat_keyed_by_key() {
        let (v, bad) = parse_flat_keyed(
            "user_usec 1\nnr_throttled 3\nusage_usec 5\ngarbage\nnr_periods -1\nx 1 2\n",
            &["usage_usec", "nr_periods", "nr_throttled"],
        );
        assert_eq!(v, vec![Some(5), None, Some(3)]);
        assert_eq!(bad, 3);
    }

    #[test]
    fn io_and_blkio() {
        let (io, bad) = parse_io_stat(
            "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021\n",
        );
        assert_eq!(bad, 0);
        assert_eq!(io.read, 1_459_200 + 90_430_464);
        assert_eq!(io.write, 314_773_504 + 299_008_000);
        let (io, bad) = parse_blkio_service_bytes(
            "8:0 Read 100\n8:0 Write 20\n8:0 Sync 1\n8:16 Read 5\nTotal 126\nbogus\n",
        );
        assert_eq!((io.read, io.write, bad), (105, 20, 1));
    }
}
