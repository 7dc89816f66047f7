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
//!
//! Reading is typed and borrowed (`json_fields!` in [`super::events`]): only
//! the keys above are kept (both spellings; a present snake_case key hides
//! its camelCase twin, even when `null`), every other value is validated as
//! JSON and skipped; of duplicate keys the last counts.

use super::events::json::{Array, Lit, Nested, get, ip, json_fields, parse_top, pick, str_of};
use super::events::{ParseError, classify_file_access, normalize_container_id, parse_rfc3339_ms};
use super::{ContainerId, Event, KernelDetail, KernelEventKind};

/// Kinds of Tetragon events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Exec,
    Kprobe,
    Other,
}

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
pub(super) const MAY_WRITE_OR_APPEND: u64 = 0x2 | 0x8;

/// `AF_PACKET`.
pub(super) const AF_PACKET: u64 = 17;

/// What a kprobe describes.
pub(super) enum Action {
    Connect,
    Kernel(KernelEventKind),
    File { mask_arg: bool },
    Socket,
}

json_fields! {
    /// The top-level keys of a line that the parser reads (each event key
    /// in its snake_case and camelCase spelling).
    struct Line<'a> {
        process_exec: Nested<Body<'a>> = "process_exec",
        process_exec_c: Nested<Body<'a>> = "processExec",
        process_kprobe: Nested<Body<'a>> = "process_kprobe",
        process_kprobe_c: Nested<Body<'a>> = "processKprobe",
        process_lsm: Nested<Body<'a>> = "process_lsm",
        process_lsm_c: Nested<Body<'a>> = "processLsm",
        process_exit: Lit<'a> = "process_exit",
        process_exit_c: Lit<'a> = "processExit",
        process_tracepoint: Lit<'a> = "process_tracepoint",
        process_tracepoint_c: Lit<'a> = "processTracepoint",
        process_uprobe: Lit<'a> = "process_uprobe",
        process_uprobe_c: Lit<'a> = "processUprobe",
        process_loader: Lit<'a> = "process_loader",
        process_loader_c: Lit<'a> = "processLoader",
        process_throttle: Lit<'a> = "process_throttle",
        process_throttle_c: Lit<'a> = "processThrottle",
        process_usdt: Lit<'a> = "process_usdt",
        process_usdt_c: Lit<'a> = "processUsdt",
        rate_limit_info: Lit<'a> = "rate_limit_info",
        rate_limit_info_c: Lit<'a> = "rateLimitInfo",
        time: Lit<'a> = "time",
    }
}

json_fields! {
    /// An event body (`process_exec`, `process_kprobe`, `process_lsm`).
    struct Body<'a> {
        process: Nested<Process<'a>> = "process",
        function_name: Lit<'a> = "function_name",
        function_name_c: Lit<'a> = "functionName",
        args: Array<Nested<Arg<'a>>> = "args",
    }
}

json_fields! {
    /// `process`.
    struct Process<'a> {
        binary: Lit<'a> = "binary",
        uid: Lit<'a> = "uid",
        pod: Nested<Pod<'a>> = "pod",
        docker: Lit<'a> = "docker",
    }
}

json_fields! {
    /// `process.pod`.
    struct Pod<'a> {
        container: Nested<Container<'a>> = "container",
    }
}

json_fields! {
    /// `process.pod.container`.
    struct Container<'a> {
        id: Lit<'a> = "id",
    }
}

json_fields! {
    /// One element of a kprobe's `args`.
    struct Arg<'a> {
        int_arg: Lit<'a> = "int_arg",
        int_arg_c: Lit<'a> = "intArg",
        string_arg: Lit<'a> = "string_arg",
        string_arg_c: Lit<'a> = "stringArg",
        sock_arg: Nested<Sock<'a>> = "sock_arg",
        sock_arg_c: Nested<Sock<'a>> = "sockArg",
        sockaddr_arg: Nested<Sock<'a>> = "sockaddr_arg",
        sockaddr_arg_c: Nested<Sock<'a>> = "sockaddrArg",
        file_arg: Nested<PathArg<'a>> = "file_arg",
        file_arg_c: Nested<PathArg<'a>> = "fileArg",
        path_arg: Nested<PathArg<'a>> = "path_arg",
        path_arg_c: Nested<PathArg<'a>> = "pathArg",
        cred_arg: Nested<Cred<'a>> = "cred_arg",
        cred_arg_c: Nested<Cred<'a>> = "credArg",
        capability_arg: Nested<Capability<'a>> = "capability_arg",
        capability_arg_c: Nested<Capability<'a>> = "capabilityArg",
    }
}

json_fields! {
    /// `sock_arg` (`daddr`, `dport`) or `sockaddr_arg` (`addr`, `port`).
    struct Sock<'a> {
        daddr: Lit<'a> = "daddr",
        dport: Lit<'a> = "dport",
        addr: Lit<'a> = "addr",
        port: Lit<'a> = "port",
    }
}

json_fields! {
    /// `file_arg` or `path_arg`.
    struct PathArg<'a> {
        path: Lit<'a> = "path",
    }
}

json_fields! {
    /// `cred_arg`.
    struct Cred<'a> {
        euid: Lit<'a> = "euid",
        uid: Lit<'a> = "uid",
    }
}

json_fields! {
    /// `capability_arg`.
    struct Capability<'a> {
        name: Lit<'a> = "name",
    }
}

impl<'a> Arg<'a> {
    fn int_arg(&self) -> Option<u64> {
        pick(&self.int_arg, &self.int_arg_c).and_then(Lit::lenient_u64)
    }

    fn string_arg(&self) -> Option<&str> {
        pick(&self.string_arg, &self.string_arg_c).and_then(Lit::as_str)
    }
}

/// The elements of `args` that are objects (the others have no fields).
fn objects<'s, 'a>(args: &'s Array<Nested<Arg<'a>>>) -> impl Iterator<Item = &'s Arg<'a>> {
    args.iter().filter_map(Nested::object)
}

/// The first event key present (in the order exec, kprobe, lsm, then the
/// unsupported kinds): its kind and
/// body, or `None` as body for the kinds the parser does not read.
fn event<'s, 'a>(l: &'s Line<'a>) -> Option<(Kind, Option<&'s Nested<Body<'a>>>)> {
    let bodies = [
        (Kind::Exec, &l.process_exec, &l.process_exec_c),
        (Kind::Kprobe, &l.process_kprobe, &l.process_kprobe_c),
        (Kind::Kprobe, &l.process_lsm, &l.process_lsm_c),
    ];
    if let Some(found) = bodies
        .into_iter()
        .find_map(|(kind, s, c)| pick(s, c).map(|b| (kind, Some(b))))
    {
        return Some(found);
    }
    let others = [
        (&l.process_exit, &l.process_exit_c),
        (&l.process_tracepoint, &l.process_tracepoint_c),
        (&l.process_uprobe, &l.process_uprobe_c),
        (&l.process_loader, &l.process_loader_c),
        (&l.process_throttle, &l.process_throttle_c),
        (&l.process_usdt, &l.process_usdt_c),
        (&l.rate_limit_info, &l.rate_limit_info_c),
    ];
    others
        .into_iter()
        .any(|(s, c)| pick(s, c).is_some())
        .then_some((Kind::Other, None))
}

/// Parses one Tetragon JSON line (CRI prefix allowed).
pub fn parse_tetragon_line(line: &str) -> Result<Vec<Event>, ParseError> {
    let mut slot = None;
    let top: &Line<'_> = parse_top(line, &mut slot)?;
    let Some((kind, body)) = event(top) else {
        return Err(ParseError::MissingField("process_exec"));
    };
    let (Kind::Exec | Kind::Kprobe, Some(body)) = (kind, body) else {
        return Err(ParseError::Unsupported("unsupported_event"));
    };
    let Nested::Object(body) = body else {
        return Err(ParseError::InvalidField("process_exec"));
    };
    let process = match get(&body.process) {
        Some(Nested::Object(p)) => p,
        Some(_) => return Err(ParseError::InvalidField("process")),
        None => return Err(ParseError::MissingField("process")),
    };
    match kind {
        Kind::Exec => {
            let binary = match get(&process.binary) {
                Some(Lit::Str(b)) if !b.trim().is_empty() => b.trim().to_string(),
                Some(Lit::Str(_)) | None => return Err(ParseError::MissingField("binary")),
                Some(_) => return Err(ParseError::InvalidField("binary")),
            };
            let container = container_id(process)?;
            let ts_ms = timestamp_ms(top)?;
            Ok(vec![Event::Exec {
                container,
                ts_ms,
                binary,
            }])
        }
        Kind::Kprobe | Kind::Other => {
            // (`Other` was refused above.)
            let func = match pick(&body.function_name, &body.function_name_c) {
                Some(Lit::Str(f)) => f.trim(),
                Some(_) => return Err(ParseError::InvalidField("function_name")),
                None => return Err(ParseError::MissingField("function_name")),
            };
            let action = classify_function(func)?;
            let args: &Array<Nested<Arg<'_>>> = match get(&body.args) {
                Some(a @ Array::Items { .. }) => a,
                Some(_) => return Err(ParseError::InvalidField("args")),
                None => &Array::Null,
            };
            let kernel_kind = match action {
                Action::Connect => {
                    let (dst_ip, dst_port) = destination(args)?;
                    let container = container_id(process)?;
                    let ts_ms = timestamp_ms(top)?;
                    return Ok(vec![Event::Connect {
                        container,
                        ts_ms,
                        dst_ip,
                        dst_port,
                    }]);
                }
                Action::Kernel(k) => k,
                Action::Socket => {
                    let family = objects(args).find_map(|a| {
                        a.int_arg().or_else(|| {
                            a.string_arg()
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
            let ts_ms = timestamp_ms(top)?;
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
fn detail(
    process: &Process<'_>,
    args: &Array<Nested<Arg<'_>>>,
    kind: KernelEventKind,
) -> Option<Box<KernelDetail>> {
    let u32_of = |v: &Lit<'_>| v.lenient_u64().and_then(|n| u32::try_from(n).ok());
    let first_int = || objects(args).find_map(Arg::int_arg);
    let target_uid = match kind {
        KernelEventKind::Setuid => objects(args)
            .find_map(|a| {
                pick(&a.cred_arg, &a.cred_arg_c)
                    .and_then(Nested::object)
                    .and_then(|c| get(&c.euid).or_else(|| get(&c.uid)).and_then(u32_of))
            })
            .or_else(|| first_int().and_then(|n| u32::try_from(n).ok())),
        _ => None,
    };
    let capability = objects(args).find_map(|a| {
        pick(&a.capability_arg, &a.capability_arg_c)
            .and_then(Nested::object)
            .and_then(|c| str_of(&c.name))
            .map(str::to_string)
    });
    let request = match kind {
        KernelEventKind::Ptrace => first_int()
            .map(|n| super::ptrace_request_name(n).map_or_else(|| n.to_string(), str::to_string)),
        _ => None,
    };
    let path = arg_path(args).map(str::to_string);
    KernelDetail {
        process: str_of(&process.binary)
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_string),
        user: None,
        uid: get(&process.uid).and_then(u32_of),
        target_uid,
        path,
        capability,
        request,
    }
    .boxed()
}

pub(super) fn classify_function(func: &str) -> Result<Action, ParseError> {
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

fn container_id(process: &Process<'_>) -> Result<ContainerId, ParseError> {
    let pod_cid = get(&process.pod)
        .and_then(Nested::object)
        .and_then(|p| get(&p.container))
        .and_then(Nested::object)
        .and_then(|c| get(&c.id));
    match pod_cid {
        Some(Lit::Str(s)) if !s.trim().is_empty() => {
            return normalize_container_id(s).ok_or(ParseError::InvalidContainerId);
        }
        Some(Lit::Str(_)) | None => {}
        Some(_) => return Err(ParseError::InvalidField("process.pod.container.id")),
    }
    match get(&process.docker) {
        Some(Lit::Str(s)) if !s.trim().is_empty() => {
            normalize_container_id(s).ok_or(ParseError::InvalidContainerId)
        }
        Some(Lit::Str(_)) | None => Err(ParseError::HostEvent),
        Some(_) => Err(ParseError::InvalidField("process.docker")),
    }
}

fn timestamp_ms(top: &Line<'_>) -> Result<u64, ParseError> {
    match get(&top.time) {
        Some(Lit::Str(s)) => parse_rfc3339_ms(s).ok_or(ParseError::InvalidTimestamp),
        Some(_) => Err(ParseError::InvalidTimestamp),
        None => Err(ParseError::MissingField("time")),
    }
}

/// First `sock_arg` (`daddr`/`dport`) or `sockaddr_arg` (`addr`/`port`).
fn destination(args: &Array<Nested<Arg<'_>>>) -> Result<(std::net::IpAddr, u16), ParseError> {
    for a in objects(args) {
        // A `sock_arg` that is not an object has no address.
        let (i, p) = if let Some(s) = pick(&a.sock_arg, &a.sock_arg_c) {
            s.object()
                .map_or((None, None), |s| (get(&s.daddr), get(&s.dport)))
        } else if let Some(s) = pick(&a.sockaddr_arg, &a.sockaddr_arg_c) {
            s.object()
                .map_or((None, None), |s| (get(&s.addr), get(&s.port)))
        } else {
            continue;
        };
        let i = i
            .and_then(Lit::as_str)
            .and_then(ip)
            .ok_or(ParseError::InvalidField("sock_arg.daddr"))?;
        let p = p
            .and_then(Lit::port)
            .ok_or(ParseError::InvalidField("sock_arg.dport"))?;
        return Ok((i, p));
    }
    Err(ParseError::MissingField("sock_arg"))
}

/// The first path among a kprobe's arguments: a `file_arg`/`path_arg`
/// path, or an absolute `string_arg`.
fn arg_path<'s>(args: &'s Array<Nested<Arg<'_>>>) -> Option<&'s str> {
    objects(args).find_map(|a| {
        pick(&a.file_arg, &a.file_arg_c)
            .or_else(|| pick(&a.path_arg, &a.path_arg_c))
            .and_then(Nested::object)
            .and_then(|f| get(&f.path))
            .and_then(Lit::as_str)
            .or_else(|| a.string_arg().filter(|s| s.starts_with('/')))
    })
}

fn file_kind(args: &Array<Nested<Arg<'_>>>, mask_arg: bool) -> Result<KernelEventKind, ParseError> {
    let path = arg_path(args).ok_or(ParseError::MissingField("file_arg"))?;
    let write = if mask_arg {
        objects(args)
            .find_map(Arg::int_arg)
            .map(|m| m & MAY_WRITE_OR_APPEND != 0)
    } else {
        None
    };
    classify_file_access(path, write).ok_or(ParseError::Unmapped("non_sensitive_file"))
}
