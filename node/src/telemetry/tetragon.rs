//! Tetragon JSON export (one event per line, protojson) → [`Event`]s.
//!
//! A line is an object with exactly one event key plus `node_name` and
//! `time` (RFC 3339, required). Both the export file's snake_case
//! (`process_exec`, `exec_id`, `function_name`) and the gRPC/`tetra`
//! camelCase (`processExec`, `execId`, `functionName`) are accepted, and a
//! CRI log prefix (`<time> stdout F `, when read from container logs) is
//! stripped.
//!
//! Container id: `process.pod.container.id` with its scheme stripped
//! (`containerd://<64hex>`), else `process.docker` (first 31 hex); both are
//! normalised to the 12-hex short id. A process with neither is a host event.
//!
//! Mapping:
//! - `process_exec` → [`Event::Exec`] with `process.binary`.
//! - `process_kprobe` (and `process_lsm`) by `function_name`, after stripping
//!   the syscall wrapper prefix (`__x64_sys_`, `__arm64_sys_`, `__sys_`,
//!   `sys_`, …):
//!   `connect`/`tcp_connect`/`tcp_v4_connect`/`tcp_v6_connect` with a
//!   `sock_arg` (`daddr`, `dport`) or `sockaddr_arg` (`addr`, `port`) →
//!   [`Event::Connect`]; `setuid` family/`commit_creds` → `Setuid`;
//!   `capset`/`cap_capable` → `Capset`; `mount`/`security_sb_mount`/`fsmount`/
//!   `move_mount` → `Mount`; `ptrace` → `Ptrace`; `setns` → `Setns`;
//!   `unshare` → `Unshare`; `init_module`/`finit_module`/`do_init_module` →
//!   `ModuleLoad`; `socket`/`packet_create` with family `AF_PACKET` (17) →
//!   `PacketSocket`; `security_file_permission`/`security_file_open`/
//!   `fd_install`/`file_open`/`file_permission` with a `file_arg`/`path_arg`
//!   (or absolute `string_arg`) naming a sensitive path →
//!   `SensitiveFileRead`/`SensitiveFileWrite` (direction from the
//!   `security_file_permission` mask: `MAY_WRITE`/`MAY_APPEND` = write,
//!   otherwise from the path; see
//!   [`super::events::classify_file_access`]).
//! - Other functions (e.g. `udp_sendmsg`, `tcp_close`) are `unmapped_function`;
//!   `process_exit`, `process_tracepoint`, `process_uprobe`,
//!   `process_loader`, … are `unsupported_event`.

use serde_json::Value;

use super::events::{
    ParseError, classify_file_access, field, ip, lenient_u64, normalize_container_id, parse_object,
    parse_rfc3339_ms, port,
};
use super::{ContainerId, Event, KernelDetail, KernelEventKind};

/// Kinds of Tetragon events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exec,
    Kprobe,
    Other,
}

const EVENT_KEYS: &[(&str, Kind)] = &[
    ("process_exec", Kind::Exec),
    ("process_kprobe", Kind::Kprobe),
    ("process_lsm", Kind::Kprobe),
    ("process_exit", Kind::Other),
    ("process_tracepoint", Kind::Other),
    ("process_uprobe", Kind::Other),
    ("process_loader", Kind::Other),
    ("process_throttle", Kind::Other),
    ("process_usdt", Kind::Other),
    ("rate_limit_info", Kind::Other),
];

/// Syscall wrapper prefixes stripped from kprobe function names.
const SYSCALL_PREFIXES: &[&str] = &[
    "__x64_sys_",
    "__arm64_sys_",
    "__ia32_sys_",
    "__ia32_compat_sys_",
    "__se_sys_",
    "__do_sys_",
    "ksys_",
    "__sys_",
    "sys_",
];

/// `MAY_WRITE | MAY_APPEND` bits of the `security_file_permission` mask.
const MAY_WRITE_OR_APPEND: u64 = 0x2 | 0x8;

/// `AF_PACKET`.
const AF_PACKET: u64 = 17;

/// What a kprobe describes.
enum Action {
    Connect,
    Kernel(KernelEventKind),
    File { mask_arg: bool },
    Socket,
}

/// Parses one Tetragon JSON line (CRI prefix allowed).
pub fn parse_tetragon_line(line: &str) -> Result<Vec<Event>, ParseError> {
    let obj = parse_object(line)?;
    let top = Value::Object(obj);
    let Some((body, kind)) = EVENT_KEYS
        .iter()
        .find_map(|(k, kind)| field(&top, k).map(|b| (b, *kind)))
    else {
        return Err(ParseError::MissingField("process_exec"));
    };
    if kind == Kind::Other {
        return Err(ParseError::Unsupported("unsupported_event"));
    }
    if !body.is_object() {
        return Err(ParseError::InvalidField("process_exec"));
    }
    let process = match field(body, "process") {
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(ParseError::InvalidField("process")),
        None => return Err(ParseError::MissingField("process")),
    };
    match kind {
        Kind::Exec => {
            let binary = match field(process, "binary") {
                Some(Value::String(b)) if !b.trim().is_empty() => b.trim().to_string(),
                Some(Value::String(_)) | None => return Err(ParseError::MissingField("binary")),
                Some(_) => return Err(ParseError::InvalidField("binary")),
            };
            let container = container_id(process)?;
            let ts_ms = timestamp_ms(&top)?;
            Ok(vec![Event::Exec {
                container,
                ts_ms,
                binary,
            }])
        }
        Kind::Kprobe | Kind::Other => {
            // (`Other` was refused above.)
            let func = match field(body, "function_name") {
                Some(Value::String(f)) => f.trim(),
                Some(_) => return Err(ParseError::InvalidField("function_name")),
                None => return Err(ParseError::MissingField("function_name")),
            };
            let action = classify_function(func)?;
            let args: &[Value] = match field(body, "args") {
                Some(Value::Array(a)) => a,
                Some(_) => return Err(ParseError::InvalidField("args")),
                None => &[],
            };
            let kernel_kind = match action {
                Action::Connect => {
                    let (dst_ip, dst_port) = destination(args)?;
                    let container = container_id(process)?;
                    let ts_ms = timestamp_ms(&top)?;
                    return Ok(vec![Event::Connect {
                        container,
                        ts_ms,
                        dst_ip,
                        dst_port,
                    }]);
                }
                Action::Kernel(k) => k,
                Action::Socket => {
                    let family = args.iter().find_map(|a| {
                        field(a, "int_arg").and_then(lenient_u64).or_else(|| {
                            field(a, "string_arg")
                                .and_then(Value::as_str)
                                .filter(|s| s.contains("AF_PACKET"))
                                .map(|_| AF_PACKET)
                        })
                    });
                    if family != Some(AF_PACKET) {
                        return Err(ParseError::Unmapped("unmapped_function"));
                    }
                    KernelEventKind::PacketSocket
                }
                Action::File { mask_arg } => file_kind(args, mask_arg)?,
            };
            let container = container_id(process)?;
            let ts_ms = timestamp_ms(&top)?;
            Ok(vec![Event::Kernel {
                container,
                ts_ms,
                kind: kernel_kind,
                detail: detail(process, args, kernel_kind),
            }])
        }
    }
}

/// Particulars for the rule layer: the process binary and uid; the first
/// `int_arg` of a `setuid`-family call (or `cred_arg.euid`/`uid` of
/// `commit_creds`) as the target uid; a `capability_arg` name; the `ptrace`
/// request; a file path.
fn detail(process: &Value, args: &[Value], kind: KernelEventKind) -> Option<Box<KernelDetail>> {
    let u32_of = |v: &Value| lenient_u64(v).and_then(|n| u32::try_from(n).ok());
    let first_int = || {
        args.iter()
            .find_map(|a| field(a, "int_arg").and_then(lenient_u64))
    };
    let target_uid = match kind {
        KernelEventKind::Setuid => args
            .iter()
            .find_map(|a| {
                field(a, "cred_arg").and_then(|c| {
                    field(c, "euid")
                        .or_else(|| field(c, "uid"))
                        .and_then(u32_of)
                })
            })
            .or_else(|| first_int().and_then(|n| u32::try_from(n).ok())),
        _ => None,
    };
    let capability = args.iter().find_map(|a| {
        field(a, "capability_arg")
            .and_then(|c| field(c, "name"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let request = match kind {
        KernelEventKind::Ptrace => first_int()
            .map(|n| super::ptrace_request_name(n).map_or_else(|| n.to_string(), str::to_string)),
        _ => None,
    };
    let path = arg_path(args).map(str::to_string);
    KernelDetail {
        process: field(process, "binary")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_string),
        user: None,
        uid: field(process, "uid").and_then(u32_of),
        target_uid,
        path,
        capability,
        request,
    }
    .boxed()
}

fn classify_function(func: &str) -> Result<Action, ParseError> {
    use KernelEventKind as K;
    let mut base = func;
    for p in SYSCALL_PREFIXES {
        if let Some(rest) = base.strip_prefix(p) {
            base = rest;
            break;
        }
    }
    Ok(match base {
        "connect" | "tcp_connect" | "tcp_v4_connect" | "tcp_v6_connect" => Action::Connect,
        "setuid" | "setgid" | "setreuid" | "setregid" | "setresuid" | "setresgid" | "setfsuid"
        | "setfsgid" | "commit_creds" => Action::Kernel(K::Setuid),
        "capset" | "cap_capable" => Action::Kernel(K::Capset),
        "mount" | "security_sb_mount" | "fsmount" | "move_mount" | "sb_mount" => {
            Action::Kernel(K::Mount)
        }
        "ptrace" => Action::Kernel(K::Ptrace),
        "setns" => Action::Kernel(K::Setns),
        "unshare" => Action::Kernel(K::Unshare),
        "init_module" | "finit_module" | "do_init_module" => Action::Kernel(K::ModuleLoad),
        "socket" | "packet_create" => Action::Socket,
        "security_file_permission" | "file_permission" => Action::File { mask_arg: true },
        "security_file_open" | "file_open" | "fd_install" => Action::File { mask_arg: false },
        _ => return Err(ParseError::Unmapped("unmapped_function")),
    })
}

fn container_id(process: &Value) -> Result<ContainerId, ParseError> {
    let pod_cid = field(process, "pod")
        .and_then(|p| field(p, "container"))
        .and_then(|c| field(c, "id"));
    match pod_cid {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            return normalize_container_id(s).ok_or(ParseError::InvalidContainerId);
        }
        Some(Value::String(_)) | None => {}
        Some(_) => return Err(ParseError::InvalidField("process.pod.container.id")),
    }
    match field(process, "docker") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            normalize_container_id(s).ok_or(ParseError::InvalidContainerId)
        }
        Some(Value::String(_)) | None => Err(ParseError::HostEvent),
        Some(_) => Err(ParseError::InvalidField("process.docker")),
    }
}

fn timestamp_ms(top: &Value) -> Result<u64, ParseError> {
    match field(top, "time") {
        Some(Value::String(s)) => parse_rfc3339_ms(s).ok_or(ParseError::InvalidTimestamp),
        Some(_) => Err(ParseError::InvalidTimestamp),
        None => Err(ParseError::MissingField("time")),
    }
}

/// First `sock_arg` (`daddr`/`dport`) or `sockaddr_arg` (`addr`/`port`).
fn destination(args: &[Value]) -> Result<(std::net::IpAddr, u16), ParseError> {
    for a in args {
        let (sock, ik, pk) = if let Some(s) = field(a, "sock_arg") {
            (s, "daddr", "dport")
        } else if let Some(s) = field(a, "sockaddr_arg") {
            (s, "addr", "port")
        } else {
            continue;
        };
        let i = field(sock, ik)
            .and_then(Value::as_str)
            .and_then(ip)
            .ok_or(ParseError::InvalidField("sock_arg.daddr"))?;
        let p = field(sock, pk)
            .and_then(port)
            .ok_or(ParseError::InvalidField("sock_arg.dport"))?;
        return Ok((i, p));
    }
    Err(ParseError::MissingField("sock_arg"))
}

/// The first path among a kprobe's arguments: a `file_arg`/`path_arg`
/// path, or an absolute `string_arg`.
fn arg_path(args: &[Value]) -> Option<&str> {
    args.iter().find_map(|a| {
        field(a, "file_arg")
            .or_else(|| field(a, "path_arg"))
            .and_then(|f| field(f, "path"))
            .and_then(Value::as_str)
            .or_else(|| {
                field(a, "string_arg")
                    .and_then(Value::as_str)
                    .filter(|s| s.starts_with('/'))
            })
    })
}

fn file_kind(args: &[Value], mask_arg: bool) -> Result<KernelEventKind, ParseError> {
    let path = arg_path(args).ok_or(ParseError::MissingField("file_arg"))?;
    let write = if mask_arg {
        args.iter()
            .find_map(|a| field(a, "int_arg").and_then(lenient_u64))
            .map(|m| m & MAY_WRITE_OR_APPEND != 0)
    } else {
        None
    };
    classify_file_access(path, write).ok_or(ParseError::Unmapped("non_sensitive_file"))
}
