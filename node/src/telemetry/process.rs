//! Process events from the kernel's proc connector (`[source] kind =
//! "process"`), without Falco, Tetragon or an eBPF toolchain: the kernel
//! multicasts every exec, fork, uid/gid change, ptrace attach and exit on
//! a `NETLINK_CONNECTOR` socket (group `CN_IDX_PROC`; needs root or
//! `CAP_NET_ADMIN`). Each is attributed to its container through
//! `/proc/<pid>/cgroup` and turned into the shared [`Event`]s:
//!
//! | kernel event | event |
//! |---|---|
//! | exec | `Exec { binary }` (`/proc/<pid>/exe`, else `comm`); when the new image runs with an effective uid other than its real uid (a setuid binary), also `Kernel { Setuid }` with `uid` → `target_uid` |
//! | uid change | `Kernel { Setuid }` when a process whose real uid was not 0 gains uid 0 |
//! | ptrace attach | `Kernel { Ptrace }` on the tracee's container |
//! | exec of a shell whose fd 0 is a socket (`/proc/<pid>/fd/0`) | `Kernel { ShellOnSocket }` (the `reverse_shell` rule) |
//!
//! So the existing exec, privilege and escape features and rules
//! (`setuid_root`, `miner_binary`, `ptrace_attach`, `reverse_shell`) see
//! processes on hosts with only this node. Processes outside containers are
//! ignored. A process that exits before its `/proc` entry is read (the
//! reader thread handles each event as it arrives, usually within
//! milliseconds) is never guessed at: a shell on a socket that runs one
//! command and exits at once can go unseen, an interactive one cannot.
//!
//! [`decode`] parses the kernel's datagrams: bounded, typed errors, fuzzed
//! and property-tested.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::telemetry::cgroup::classify_cgroup_path;
use crate::telemetry::{ContainerId, Event, KernelDetail, KernelEventKind};

/// `CN_IDX_PROC` / `CN_VAL_PROC`: the proc connector's id.
pub const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;
/// `what`, `cpu`, `timestamp_ns` before the event data.
const PROC_EVENT_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const PROC_CN_MCAST_LISTEN: u32 = 1;

/// One process event, as the kernel reports it (thread group ids are the
/// process ids of user space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// The subscription acknowledgement (`PROC_EVENT_NONE`).
    Ack,
    /// `fork`/`clone`.
    Fork {
        /// Parent process.
        parent_tgid: u32,
        /// Child process.
        child_tgid: u32,
    },
    /// `execve`.
    Exec {
        /// Process.
        tgid: u32,
    },
    /// A real or effective uid change.
    Uid {
        /// Process.
        tgid: u32,
        /// New real uid.
        ruid: u32,
        /// New effective uid.
        euid: u32,
    },
    /// `ptrace` attach.
    Ptrace {
        /// The traced process.
        tgid: u32,
        /// The tracer (0 on detach).
        tracer_tgid: u32,
    },
    /// Exit.
    Exit {
        /// Process.
        tgid: u32,
    },
    /// Another kind (gid, sid, comm, coredump…), by its `what` code.
    Other(u32),
}

/// Why a datagram did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A header or an event is cut short.
    #[error("truncated netlink message at byte {at}")]
    Truncated {
        /// Offset of the cut message.
        at: usize,
    },
    /// A netlink length smaller than its header or past the datagram.
    #[error("bad netlink length {len} at byte {at}")]
    BadLength {
        /// The length field.
        len: u32,
        /// Offset of the message.
        at: usize,
    },
    /// The kernel refused the subscription (`NLMSG_ERROR`).
    #[error("the kernel refused the proc connector subscription (error {0})")]
    Refused(i32),
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
}

/// Decodes one datagram from the proc connector socket: every netlink
/// message in it (4-byte aligned), keeping those of the proc connector.
/// Never reads past `buf`.
pub fn decode(buf: &[u8]) -> Result<Vec<ProcEvent>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) else {
            return Err(DecodeError::Truncated { at });
        };
        let end = at.checked_add(len as usize).filter(|e| *e <= buf.len());
        let Some(end) = end.filter(|_| len as usize >= NLMSG_HDR) else {
            return Err(DecodeError::BadLength { len, at });
        };
        let msg = &buf[at + NLMSG_HDR..end];
        if kind == NLMSG_ERROR {
            let code = u32_at(msg, 0).map_or(0, |c| c as i32);
            if code != 0 {
                return Err(DecodeError::Refused(code));
            }
        } else if (kind == NLMSG_DONE || msg.len() >= CN_MSG_HDR)
            && let Some(e) = decode_cn(msg, at)?
        {
            out.push(e);
        }
        at = end.saturating_add(3) & !3;
    }
    Ok(out)
}

fn decode_cn(msg: &[u8], at: usize) -> Result<Option<ProcEvent>, DecodeError> {
    let (Some(idx), Some(val), Some(len)) = (u32_at(msg, 0), u32_at(msg, 4), u16_at(msg, 16))
    else {
        return Err(DecodeError::Truncated { at });
    };
    if idx != CN_IDX_PROC || val != CN_VAL_PROC {
        return Ok(None);
    }
    let data = msg
        .get(CN_MSG_HDR..CN_MSG_HDR + len as usize)
        .ok_or(DecodeError::Truncated { at })?;
    let what = u32_at(data, 0).ok_or(DecodeError::Truncated { at })?;
    let d = data.get(PROC_EVENT_HDR..).unwrap_or(&[]);
    let field = |i: usize| u32_at(d, 4 * i).ok_or(DecodeError::Truncated { at });
    Ok(Some(match what {
        0 => ProcEvent::Ack,
        0x1 => ProcEvent::Fork {
            parent_tgid: field(1)?,
            child_tgid: field(3)?,
        },
        0x2 => ProcEvent::Exec { tgid: field(1)? },
        0x4 => ProcEvent::Uid {
            tgid: field(1)?,
            ruid: field(2)?,
            euid: field(3)?,
        },
        0x100 => ProcEvent::Ptrace {
            tgid: field(1)?,
            tracer_tgid: field(3)?,
        },
        0x8000_0000 => ProcEvent::Exit { tgid: field(1)? },
        other => ProcEvent::Other(other),
    }))
}

/// The subscription request (`PROC_CN_MCAST_LISTEN`) as one netlink
/// datagram from `port`.
pub fn listen_request(port: u32) -> Vec<u8> {
    let total = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
    let mut b = Vec::with_capacity(total as usize);
    b.extend(total.to_ne_bytes());
    b.extend(NLMSG_DONE.to_ne_bytes());
    b.extend(0u16.to_ne_bytes());
    b.extend(0u32.to_ne_bytes());
    b.extend(port.to_ne_bytes());
    b.extend(CN_IDX_PROC.to_ne_bytes());
    b.extend(CN_VAL_PROC.to_ne_bytes());
    b.extend(0u32.to_ne_bytes());
    b.extend(0u32.to_ne_bytes());
    b.extend(4u16.to_ne_bytes());
    b.extend(0u16.to_ne_bytes());
    b.extend(PROC_CN_MCAST_LISTEN.to_ne_bytes());
    b
}

/// What the translator counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStats {
    /// Kernel events received.
    pub received: u64,
    /// Events emitted for containers.
    pub emitted: u64,
    /// Processes that were gone (or unreadable) before `/proc` was read.
    pub unresolved: u64,
}

/// What is known of a live containerised process.
#[derive(Debug, Clone)]
struct Known {
    container: ContainerId,
    ruid: u32,
}

/// Shells whose standard input being a socket is a reverse (or bind) shell.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "tcsh", "csh", "fish",
];

/// Tracked processes at most (the oldest half is dropped beyond).
const MAX_TRACKED: usize = 65_536;

/// Turns proc connector events into [`Event`]s by reading `/proc` (under
/// `proc_root`). Deterministic given the files it reads.
pub struct ProcessTranslator {
    proc_root: PathBuf,
    known: HashMap<u32, Known>,
    stats: ProcessStats,
}

/// Reads at most 64 KiB of a `/proc` file.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    f.take(64 * 1024).read_to_string(&mut s).ok()?;
    Some(s)
}

/// The container of a process from its `/proc/<pid>/cgroup` text (v1 or
/// v2 lines `N:controllers:/path`).
pub fn container_of_cgroup_text(text: &str) -> Option<ContainerId> {
    text.lines().find_map(|l| {
        let path = l.splitn(3, ':').nth(2)?;
        classify_cgroup_path(Path::new(path.trim_start_matches('/'))).map(|c| c.container_id())
    })
}

/// Real and effective uid from `/proc/<pid>/status` text.
pub fn uids_of_status_text(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().find(|l| l.starts_with("Uid:"))?;
    let mut it = line["Uid:".len()..].split_whitespace();
    let ruid = it.next()?.parse().ok()?;
    let euid = it.next()?.parse().ok()?;
    Some((ruid, euid))
}

impl ProcessTranslator {
    /// A translator reading `/proc` files under `proc_root`.
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            known: HashMap::new(),
            stats: ProcessStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProcessStats {
        self.stats
    }

    fn file(&self, tgid: u32, name: &str) -> PathBuf {
        self.proc_root.join(tgid.to_string()).join(name)
    }

    fn container(&self, tgid: u32) -> Option<ContainerId> {
        container_of_cgroup_text(&read_small(&self.file(tgid, "cgroup"))?)
    }

    fn binary(&self, tgid: u32) -> Option<String> {
        std::fs::read_link(self.file(tgid, "exe"))
            .ok()
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
            .or_else(|| read_small(&self.file(tgid, "comm")).map(|c| c.trim().to_string()))
            .filter(|b| !b.is_empty())
    }

    /// A shell by its executable's or its command's name (busybox applets
    /// show as `/bin/busybox` with the applet as `comm`).
    fn is_shell(&self, tgid: u32, binary: Option<&str>) -> bool {
        let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_ascii_lowercase();
        binary.is_some_and(|b| SHELLS.contains(&base(b).as_str()))
            || read_small(&self.file(tgid, "comm"))
                .is_some_and(|c| SHELLS.contains(&base(c.trim()).as_str()))
    }

    fn stdin_is_socket(&self, tgid: u32) -> bool {
        std::fs::read_link(self.file(tgid, "fd/0"))
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:["))
    }

    fn remember(&mut self, tgid: u32, k: Known) {
        if self.known.len() >= MAX_TRACKED {
            let mut pids: Vec<u32> = self.known.keys().copied().collect();
            pids.sort_unstable();
            for p in pids.iter().take(MAX_TRACKED / 2) {
                self.known.remove(p);
            }
        }
        self.known.insert(tgid, k);
    }

    fn setuid(
        container: ContainerId,
        ts_ms: u64,
        binary: Option<String>,
        from: u32,
        to: u32,
    ) -> Event {
        Event::Kernel {
            container,
            ts_ms,
            kind: KernelEventKind::Setuid,
            detail: KernelDetail {
                process: binary,
                uid: Some(from),
                target_uid: Some(to),
                ..KernelDetail::default()
            }
            .boxed(),
        }
    }

    /// The events of one kernel event at `ts_ms`.
    pub fn translate(&mut self, ev: ProcEvent, ts_ms: u64) -> Vec<Event> {
        self.stats.received += 1;
        let mut out = Vec::new();
        match ev {
            ProcEvent::Exec { tgid } => {
                let Some(container) = self.container(tgid) else {
                    self.stats.unresolved += u64::from(self.file(tgid, "cgroup").exists());
                    return out;
                };
                let binary = self.binary(tgid);
                let uids = read_small(&self.file(tgid, "status"))
                    .as_deref()
                    .and_then(uids_of_status_text);
                if binary.is_none() || uids.is_none() {
                    self.stats.unresolved += 1;
                }
                if let Some(b) = &binary {
                    out.push(Event::Exec {
                        container: container.clone(),
                        ts_ms,
                        binary: b.clone(),
                    });
                }
                // One readlink first; the `comm` read only for the rare exec on a socket.
                if self.stdin_is_socket(tgid) && self.is_shell(tgid, binary.as_deref()) {
                    out.push(Event::Kernel {
                        container: container.clone(),
                        ts_ms,
                        kind: KernelEventKind::ShellOnSocket,
                        detail: KernelDetail {
                            process: binary.clone(),
                            ..KernelDetail::default()
                        }
                        .boxed(),
                    });
                }
                if let Some((ruid, euid)) = uids {
                    if euid != ruid {
                        out.push(Self::setuid(container.clone(), ts_ms, binary, ruid, euid));
                    }
                    self.remember(tgid, Known { container, ruid });
                }
            }
            ProcEvent::Fork {
                parent_tgid,
                child_tgid,
            } => {
                if parent_tgid != child_tgid
                    && let Some(k) = self.known.get(&parent_tgid).cloned()
                {
                    self.remember(child_tgid, k);
                }
            }
            ProcEvent::Uid { tgid, ruid, euid } => {
                let known = match self.known.get(&tgid) {
                    Some(k) => Some(k.clone()),
                    None => self.container(tgid).map(|container| Known {
                        container,
                        ruid: u32::MAX,
                    }),
                };
                if let Some(k) = known {
                    if k.ruid != 0 && k.ruid != u32::MAX && (ruid == 0 || euid == 0) {
                        let binary = self.binary(tgid);
                        out.push(Self::setuid(k.container.clone(), ts_ms, binary, k.ruid, 0));
                    }
                    self.remember(
                        tgid,
                        Known {
                            container: k.container,
                            ruid,
                        },
                    );
                }
            }
            ProcEvent::Ptrace { tgid, tracer_tgid } if tracer_tgid != 0 => {
                if let Some(container) = self
                    .known
                    .get(&tgid)
                    .map(|k| k.container.clone())
                    .or_else(|| self.container(tgid))
                {
                    out.push(Event::Kernel {
                        container,
                        ts_ms,
                        kind: KernelEventKind::Ptrace,
                        detail: KernelDetail {
                            process: self.binary(tracer_tgid),
                            ..KernelDetail::default()
                        }
                        .boxed(),
                    });
                }
            }
            ProcEvent::Exit { tgid } => {
                self.known.remove(&tgid);
            }
            _ => {}
        }
        self.stats.emitted += out.len() as u64;
        out
    }
}

/// Why the proc connector could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProcessSourceError {
    /// Socket, bind or subscription failed (e.g. no `CAP_NET_ADMIN`).
    #[error("proc connector: {what}: {source}")]
    Socket {
        /// The step.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The kernel's answer did not decode or refused.
    #[error("proc connector: {0}")]
    Decode(#[from] DecodeError),
}

/// A subscribed proc connector socket.
pub struct ProcConnector {
    fd: rustix::fd::OwnedFd,
    buf: Vec<u8>,
}

impl ProcConnector {
    /// Opens, binds and subscribes; receives time out after `poll` so the
    /// caller can check for shutdown.
    pub fn open(poll: Duration) -> Result<Self, ProcessSourceError> {
        use rustix::net::{
            AddressFamily, SendFlags, SocketType, bind, netlink, send, socket, sockopt,
        };
        let err = |what: &'static str| {
            move |e: rustix::io::Errno| ProcessSourceError::Socket {
                what,
                source: e.into(),
            }
        };
        let fd = socket(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            Some(netlink::CONNECTOR),
        )
        .map_err(err("socket"))?;
        let port = std::process::id();
        bind(&fd, &netlink::SocketAddrNetlink::new(port, CN_IDX_PROC))
            .or_else(|_| bind(&fd, &netlink::SocketAddrNetlink::new(0, CN_IDX_PROC)))
            .map_err(err("bind"))?;
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(poll))
            .map_err(err("receive timeout"))?;
        let _ = sockopt::set_socket_recv_buffer_size(&fd, 4 << 20);
        send(&fd, &listen_request(port), SendFlags::empty()).map_err(err("subscribe"))?;
        Ok(Self {
            fd,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The next datagram's events; an empty list on timeout. `Ok(None)`
    /// when the kernel dropped events (the socket buffer overflowed).
    pub fn recv(&mut self) -> Result<Option<Vec<ProcEvent>>, ProcessSourceError> {
        use rustix::io::Errno;
        use rustix::net::{RecvFlags, recv};
        match recv(&self.fd, &mut self.buf[..], RecvFlags::empty()) {
            Ok((n, _)) => Ok(Some(decode(&self.buf[..n.min(self.buf.len())])?)),
            Err(Errno::AGAIN | Errno::INTR) => Ok(Some(Vec::new())),
            Err(Errno::NOBUFS) => Ok(None),
            Err(e) => Err(ProcessSourceError::Socket {
                what: "receive",
                source: e.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One proc connector netlink message with `what` and event words.
    fn msg(what: u32, words: &[u32]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend(what.to_ne_bytes());
        data.extend(0u32.to_ne_bytes());
        data.extend(0u64.to_ne_bytes());
        for w in words {
            data.extend(w.to_ne_bytes());
        }
        let total = (NLMSG_HDR + CN_MSG_HDR + data.len()) as u32;
        let mut b = Vec::new();
        b.extend(total.to_ne_bytes());
        b.extend(NLMSG_DONE.to_ne_bytes());
        b.extend([0u8; 10]);
        b.extend(CN_IDX_PROC.to_ne_bytes());
        b.extend(CN_VAL_PROC.to_ne_bytes());
        b.extend([0u8; 8]);
        b.extend((data.len() as u16).to_ne_bytes());
        b.extend(0u16.to_ne_bytes());
        b.extend(data);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    #[test]
    fn decodes_every_kind_it_uses_and_several_messages_per_datagram() {
        let mut d = msg(0x2, &[10, 11]);
        d.extend(msg(0x1, &[1, 2, 30, 31]));
        d.extend(msg(0x4, &[10, 11, 0, 0]));
        d.extend(msg(0x100, &[5, 6, 7, 8]));
        d.extend(msg(0x8000_0000, &[10, 11, 0, 0, 1, 2]));
        d.extend(msg(0x40, &[10, 11, 0, 0]));
        d.extend(msg(0, &[0]));
        assert_eq!(
            decode(&d).unwrap(),
            vec![
                ProcEvent::Exec { tgid: 11 },
                ProcEvent::Fork {
                    parent_tgid: 2,
                    child_tgid: 31
                },
                ProcEvent::Uid {
                    tgid: 11,
                    ruid: 0,
                    euid: 0
                },
                ProcEvent::Ptrace {
                    tgid: 6,
                    tracer_tgid: 8
                },
                ProcEvent::Exit { tgid: 11 },
                ProcEvent::Other(0x40),
                ProcEvent::Ack,
            ]
        );
    }

    #[test]
    fn malformed_datagrams_are_typed_errors() {
        let good = msg(0x2, &[10, 11]);
        assert!(matches!(
            decode(&good[..10]),
            Err(DecodeError::BadLength { .. } | DecodeError::Truncated { .. })
        ));
        let mut short = good.clone();
        short[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            decode(&short),
            Err(DecodeError::BadLength { len: 8, .. })
        ));
        // An exec event whose data is cut.
        let cut = msg(0x2, &[]);
        assert!(matches!(decode(&cut), Err(DecodeError::Truncated { .. })));
        // The kernel refusing the subscription.
        let mut err = Vec::new();
        err.extend(20u32.to_ne_bytes());
        err.extend(NLMSG_ERROR.to_ne_bytes());
        err.extend([0u8; 10]);
        err.extend((-1i32).to_ne_bytes());
        assert_eq!(decode(&err), Err(DecodeError::Refused(-1)));
        assert_eq!(decode(&[]), Ok(vec![]));
    }

    #[test]
    fn the_subscription_request_is_a_well_formed_listen_message() {
        let r = listen_request(42);
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), Some(40));
        assert_eq!(u32_at(&r, 12), Some(42));
        assert_eq!(u32_at(&r, 16), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&r, 36), Some(PROC_CN_MCAST_LISTEN));
    }

    fn fake_proc(dir: &Path, pid: u32, cgroup: &str, uid: &str, exe: &str) {
        let p = dir.join(pid.to_string());
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("cgroup"), cgroup).unwrap();
        std::fs::write(
            p.join("status"),
            format!("Name:\tx\nUid:\t{uid}\nGid:\t0\t0\t0\t0\n"),
        )
        .unwrap();
        std::os::unix::fs::symlink(exe, p.join("exe")).unwrap();
    }

    const ID: &str = "1172a58c38a108462e1b3d5aded61db9a907c903afc7d03879dc4887838e2e12";

    #[test]
    fn execs_setuid_binaries_uid_gains_and_ptrace_become_container_events() {
        let dir = tempfile::tempdir().unwrap();
        let cg = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n");
        fake_proc(
            dir.path(),
            100,
            &cg,
            "999\t0\t0\t0",
            "/usr/local/bin/wl-suid",
        );
        fake_proc(dir.path(), 200, &cg, "101\t101\t101\t101", "/bin/busybox");
        fake_proc(
            dir.path(),
            300,
            "0::/user.slice\n",
            "0\t0\t0\t0",
            "/usr/bin/bash",
        );
        let mut t = ProcessTranslator::new(dir.path().to_path_buf());
        let c = ContainerId(ID[..12].into());
        // A setuid-root binary: an exec and a privilege change 999 -> 0.
        let ev = t.translate(ProcEvent::Exec { tgid: 100 }, 7);
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0],
            Event::Exec {
                container: c.clone(),
                ts_ms: 7,
                binary: "/usr/local/bin/wl-suid".into()
            }
        );
        let Event::Kernel { kind, detail, .. } = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!(*kind, KernelEventKind::Setuid);
        let d = detail.as_ref().unwrap();
        assert_eq!((d.uid, d.target_uid), (Some(999), Some(0)));
        // A plain exec as uid 101, then that process gaining uid 0.
        assert_eq!(t.translate(ProcEvent::Exec { tgid: 200 }, 8).len(), 1);
        let gain = t.translate(
            ProcEvent::Uid {
                tgid: 200,
                ruid: 0,
                euid: 0,
            },
            9,
        );
        assert!(matches!(
            &gain[..],
            [Event::Kernel {
                kind: KernelEventKind::Setuid,
                ..
            }]
        ));
        // Already root: no second event.
        assert!(
            t.translate(
                ProcEvent::Uid {
                    tgid: 200,
                    ruid: 0,
                    euid: 0
                },
                10
            )
            .is_empty()
        );
        // A forked child inherits what is known; ptrace attach on it.
        t.translate(
            ProcEvent::Fork {
                parent_tgid: 200,
                child_tgid: 201,
            },
            11,
        );
        let tr = t.translate(
            ProcEvent::Ptrace {
                tgid: 201,
                tracer_tgid: 100,
            },
            12,
        );
        assert!(matches!(
            &tr[..],
            [Event::Kernel {
                kind: KernelEventKind::Ptrace,
                ..
            }]
        ));
        // A shell (busybox applet: comm "sh") whose stdin is a socket.
        fake_proc(dir.path(), 400, &cg, "101\t101\t101\t101", "/bin/busybox");
        std::fs::write(dir.path().join("400/comm"), "sh\n").unwrap();
        std::fs::create_dir_all(dir.path().join("400/fd")).unwrap();
        std::os::unix::fs::symlink("socket:[4242]", dir.path().join("400/fd/0")).unwrap();
        let sh = t.translate(ProcEvent::Exec { tgid: 400 }, 12);
        assert!(
            matches!(
                &sh[..],
                [
                    Event::Exec { .. },
                    Event::Kernel {
                        kind: KernelEventKind::ShellOnSocket,
                        ..
                    }
                ]
            ),
            "{sh:?}"
        );
        // The same shell on a pipe: only the exec.
        std::fs::remove_file(dir.path().join("400/fd/0")).unwrap();
        std::os::unix::fs::symlink("pipe:[1]", dir.path().join("400/fd/0")).unwrap();
        assert_eq!(t.translate(ProcEvent::Exec { tgid: 400 }, 13).len(), 1);
        // Host processes and vanished ones: nothing.
        assert!(t.translate(ProcEvent::Exec { tgid: 300 }, 13).is_empty());
        assert!(t.translate(ProcEvent::Exec { tgid: 999 }, 14).is_empty());
        t.translate(ProcEvent::Exit { tgid: 200 }, 15);
        assert!(!t.known.contains_key(&200));
        assert_eq!(t.stats().emitted, 8);
    }

    #[test]
    fn cgroup_and_status_parsers() {
        assert_eq!(
            container_of_cgroup_text(&format!("0::/system.slice/docker-{ID}.scope\n")),
            Some(ContainerId(ID[..12].into()))
        );
        assert_eq!(container_of_cgroup_text("0::/\n"), None);
        assert_eq!(container_of_cgroup_text("garbage"), None);
        assert_eq!(uids_of_status_text("Uid:\t5\t0\t0\t0\n"), Some((5, 0)));
        assert_eq!(uids_of_status_text("Uid:\tx\n"), None);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&b);
        }

        #[test]
        fn well_formed_exec_messages_round_trip(pids in proptest::collection::vec(any::<u32>(), 1..20)) {
            let d: Vec<u8> = pids.iter().flat_map(|p| msg(0x2, &[*p, *p])).collect();
            let got = decode(&d).unwrap();
            prop_assert_eq!(got, pids.iter().map(|p| ProcEvent::Exec { tgid: *p }).collect::<Vec<_>>());
        }
    }
}
