//! Falco JSON alerts (`json_output: true`, one object per line) → [`Event`]s.
//!
//! Fields read (all optional except where noted): top-level `rule`
//! (required), `source` (only `syscall` or absent is accepted), `time`
//! (RFC 3339), and from `output_fields`: `container.id` (required; 12 or 64
//! hex, `host`/empty = host event), `evt.time` (integer ns, preferred over
//! `time`), `evt.type`, `proc.exepath`/`proc.exe`/`proc.name`/`proc.cmdline`,
//! `fd.sip`/`fd.sport` (or `fd.rip`/`fd.rport`, or `fd.name` `a:p->b:q`),
//! `fd.name`/`evt.arg.name`/`evt.arg.path`/`fs.path.name`,
//! `evt.is_open_write`/`evt.arg.flags`, `evt.arg.domain`.
//!
//! Mapping, first match wins:
//! 1. The rule name, for Falco's stable and incubating rules (e.g.
//!    `Terminal shell in container` → Exec, `Read sensitive file
//!    untrusted` → SensitiveFileRead, `Detect release_agent File Container
//!    Escapes` → SensitiveFileWrite, `Change thread namespace` → Setns,
//!    `Mount Launched in Privileged Container` → Mount). A kernel-class rule
//!    fired by an `execve` (the tool was launched) yields the
//!    [`Event::Exec`] followed by the [`Event::Kernel`].
//! 2. `evt.type`: `execve`/`execveat` → [`Event::Exec`]; `connect` (and
//!    `dup*` with a socket destination) → [`Event::Connect`];
//!    `setuid`/`setresuid`/… → `Setuid`; `capset` → `Capset`; `mount`,
//!    `unshare`, `setns`, `ptrace`, `init_module`/`finit_module` → the
//!    matching [`KernelEventKind`]; `open*`/`creat` → `SensitiveFileRead` or
//!    `SensitiveFileWrite` (the rule fired, so the file is sensitive; the
//!    direction comes from the flags or the path); `socket` with
//!    `AF_PACKET` → `PacketSocket`.
//! 3. A rule name mentioning a process launch (`shell`, `exec`, `launch`,
//!    `spawn`, `process`, `run`) → Exec of the process (binary: `proc.exepath`,
//!    else `proc.exe` if absolute, else `proc.name`, else the first word of
//!    `proc.cmdline`).
//!
//! Anything else is skipped and counted (`unmapped_rule`). Falco's own
//! alerts (`Falco internal: …`) are `sensor_internal`; stats-file lines are
//! `falco_stats`.
//!
//! Reading is typed and borrowed (`json_fields!` in [`super::events`]): only
//! the keys above are kept, every other value is validated as JSON and
//! skipped; of duplicate keys the last counts; `null` is absent (except that
//! a present `evt.time` or port key, even `null`, is not "missing").

use super::events::json::{Lit, Nested, Skip, ip, json_fields, parse_top, str_of};
use super::events::{ParseError, classify_file_access, normalize_container_id, parse_rfc3339_ms};
use super::{ContainerId, Event, KernelDetail, KernelEventKind};

/// What a Falco alert describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Exec,
    Connect,
    Kernel(KernelEventKind),
    /// An open of a file the rule considered sensitive.
    File,
}

/// Rule names (lowercase, `[custom]`-style suffixes removed) → action.
pub(super) const RULES: &[(&str, Action)] = &[
    ("terminal shell in container", Action::Exec),
    ("netcat remote code execution in container", Action::Exec),
    ("launch suspicious network tool in container", Action::Exec),
    ("launch remote file copy tools in container", Action::Exec),
    ("known cryptominer process executed", Action::Exec),
    (
        "detect crypto miners using the stratum protocol",
        Action::Exec,
    ),
    ("execution from /dev/shm", Action::Exec),
    ("drop and execute new binary in container", Action::Exec),
    ("fileless execution via memfd_create", Action::Exec),
    ("container drift detected", Action::Exec),
    ("debugfs launched in privileged container", Action::Exec),
    ("search private keys or passwords", Action::Exec),
    ("find aws credentials", Action::Exec),
    ("web server spawned shell", Action::Exec),
    ("reverse shell from web server", Action::Exec),
    (
        "redirect stdout/stdin to network connection in container",
        Action::Connect,
    ),
    (
        "detect outbound connections to common miner pool ports",
        Action::Connect,
    ),
    (
        "contact cloud metadata service from container",
        Action::Connect,
    ),
    ("contact k8s api server from container", Action::Connect),
    (
        "unexpected outbound connection destination",
        Action::Connect,
    ),
    ("outbound connection to c2 servers", Action::Connect),
    (
        "read sensitive file untrusted",
        Action::Kernel(KernelEventKind::SensitiveFileRead),
    ),
    (
        "read sensitive file trusted after startup",
        Action::Kernel(KernelEventKind::SensitiveFileRead),
    ),
    (
        "read environment variable from /proc files",
        Action::Kernel(KernelEventKind::SensitiveFileRead),
    ),
    (
        "read ssh information",
        Action::Kernel(KernelEventKind::SensitiveFileRead),
    ),
    (
        "detect release_agent file container escapes",
        Action::Kernel(KernelEventKind::SensitiveFileWrite),
    ),
    (
        "write below etc",
        Action::Kernel(KernelEventKind::SensitiveFileWrite),
    ),
    (
        "clear log activities",
        Action::Kernel(KernelEventKind::SensitiveFileWrite),
    ),
    (
        "packet socket created in container",
        Action::Kernel(KernelEventKind::PacketSocket),
    ),
    (
        "linux kernel module injection detected",
        Action::Kernel(KernelEventKind::ModuleLoad),
    ),
    (
        "mount launched in privileged container",
        Action::Kernel(KernelEventKind::Mount),
    ),
    (
        "ptrace attached to process",
        Action::Kernel(KernelEventKind::Ptrace),
    ),
    (
        "ptrace anti-debug attempt",
        Action::Kernel(KernelEventKind::Ptrace),
    ),
    (
        "change thread namespace",
        Action::Kernel(KernelEventKind::Setns),
    ),
    (
        "change namespace privileges via unshare",
        Action::Kernel(KernelEventKind::Unshare),
    ),
    ("non sudo setuid", Action::Kernel(KernelEventKind::Setuid)),
    (
        "set setuid or setgid bit",
        Action::Kernel(KernelEventKind::Setuid),
    ),
];

/// Words in a rule name that indicate a process launch (fallback rule 3).
pub(super) const EXEC_WORDS: &[&str] = &["shell", "exec", "launch", "spawn", "process", "run"];

json_fields! {
    /// The top-level keys of an alert that the parser reads.
    struct Alert<'a> {
        rule: Lit<'a> = "rule",
        sample: Skip = "sample",
        source: Lit<'a> = "source",
        output_fields: Nested<OutputFields<'a>> = "output_fields",
        time: Lit<'a> = "time",
    }
}

json_fields! {
    /// The `output_fields` keys that the parser reads.
    struct OutputFields<'a> {
        container_id: Lit<'a> = "container.id",
        evt_time: Lit<'a> = "evt.time",
        evt_type: Lit<'a> = "evt.type",
        evt_args: Lit<'a> = "evt.args",
        evt_is_open_write: Lit<'a> = "evt.is_open_write",
        evt_arg_flags: Lit<'a> = "evt.arg.flags",
        evt_arg_domain: Lit<'a> = "evt.arg.domain",
        evt_arg_name: Lit<'a> = "evt.arg.name",
        evt_arg_path: Lit<'a> = "evt.arg.path",
        evt_arg_uid: Lit<'a> = "evt.arg.uid",
        evt_arg_ruid: Lit<'a> = "evt.arg.ruid",
        evt_arg_euid: Lit<'a> = "evt.arg.euid",
        evt_arg_cap_effective: Lit<'a> = "evt.arg.cap_effective",
        evt_arg_cap_permitted: Lit<'a> = "evt.arg.cap_permitted",
        evt_arg_cap_inheritable: Lit<'a> = "evt.arg.cap_inheritable",
        evt_arg_request: Lit<'a> = "evt.arg.request",
        proc_exepath: Lit<'a> = "proc.exepath",
        proc_exe: Lit<'a> = "proc.exe",
        proc_name: Lit<'a> = "proc.name",
        proc_cmdline: Lit<'a> = "proc.cmdline",
        user_name: Lit<'a> = "user.name",
        user_uid: Lit<'a> = "user.uid",
        fd_sip: Lit<'a> = "fd.sip",
        fd_sport: Lit<'a> = "fd.sport",
        fd_rip: Lit<'a> = "fd.rip",
        fd_rport: Lit<'a> = "fd.rport",
        fd_name: Lit<'a> = "fd.name",
        fs_path_name: Lit<'a> = "fs.path.name",
    }
}

impl OutputFields<'_> {
    /// The file path keys, in order of preference.
    fn paths(&self) -> [&Option<Lit<'_>>; 4] {
        [
            &self.fd_name,
            &self.evt_arg_name,
            &self.evt_arg_path,
            &self.fs_path_name,
        ]
    }
}

/// Parses one Falco JSON alert line (a CRI log prefix is stripped first)
/// into one event, or two (Exec + Kernel) for a kernel-class rule fired by
/// an exec.
pub fn parse_falco_line(line: &str) -> Result<Vec<Event>, ParseError> {
    let mut slot = None;
    let obj: &Alert<'_> = parse_top(line, &mut slot)?;
    let rule = match &obj.rule {
        Some(Lit::Str(r)) => &**r,
        Some(Lit::Null) | None => {
            return Err(if obj.sample.is_some() {
                ParseError::Unsupported("falco_stats")
            } else {
                ParseError::MissingField("rule")
            });
        }
        Some(_) => return Err(ParseError::InvalidField("rule")),
    };
    if rule.starts_with("Falco internal") {
        return Err(ParseError::SensorInternal);
    }
    match &obj.source {
        None | Some(Lit::Null) => {}
        Some(Lit::Str(s)) if s == "syscall" => {}
        Some(Lit::Str(_)) => return Err(ParseError::Unsupported("unsupported_source")),
        Some(_) => return Err(ParseError::InvalidField("source")),
    }
    let of = match &obj.output_fields {
        Some(Nested::Object(m)) => m,
        None | Some(Nested::Null) => return Err(ParseError::MissingField("output_fields")),
        Some(Nested::Other) => return Err(ParseError::InvalidField("output_fields")),
    };
    let action = classify(rule, of)?;
    let container = container_id(of)?;
    let ts_ms = timestamp_ms(obj, of)?;
    let ev = match action {
        Action::Exec => Event::Exec {
            container,
            ts_ms,
            binary: binary(of)?,
        },
        Action::Connect => {
            let (dst_ip, dst_port) = destination(of)?;
            Event::Connect {
                container,
                ts_ms,
                dst_ip,
                dst_port,
            }
        }
        Action::Kernel(kind) => {
            let ev = Event::Kernel {
                container: container.clone(),
                ts_ms,
                kind,
                detail: detail(of),
            };
            // A rule about a launched tool (`mount`, `insmod`): keep the exec too.
            let by_exec = matches!(str_of(&of.evt_type), Some("execve" | "execveat"));
            return Ok(match binary(of) {
                Ok(binary) if by_exec => vec![
                    Event::Exec {
                        container,
                        ts_ms,
                        binary,
                    },
                    ev,
                ],
                _ => vec![ev],
            });
        }
        Action::File => Event::Kernel {
            container,
            ts_ms,
            kind: file_kind(rule, of),
            detail: detail(of),
        },
    };
    Ok(vec![ev])
}

/// Particulars of a kernel-class alert for the rule layer: `proc.*`,
/// `user.name`/`user.uid`, `evt.arg.uid` (Falco renders it `0(root)`), the
/// file path, `evt.arg.cap*` and `evt.arg.request`.
fn detail(of: &OutputFields<'_>) -> Option<Box<KernelDetail>> {
    let text = |slot: &Option<Lit<'_>>| {
        str_of(slot)
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "<NA>")
            .map(str::to_string)
    };
    let leading_u32 = |slot: &Option<Lit<'_>>| -> Option<u32> {
        match slot.as_ref()? {
            Lit::U64(v) => u32::try_from(*v).ok(),
            Lit::Str(s) => {
                let s = s.trim();
                let n = s.bytes().take_while(u8::is_ascii_digit).count();
                s[..n].parse().ok()
            }
            _ => None,
        }
    };
    KernelDetail {
        process: binary(of).ok(),
        user: text(&of.user_name),
        uid: leading_u32(&of.user_uid),
        target_uid: leading_u32(&of.evt_arg_uid)
            .or_else(|| leading_u32(&of.evt_arg_ruid))
            .or_else(|| leading_u32(&of.evt_arg_euid)),
        path: of
            .paths()
            .into_iter()
            .find_map(text)
            .filter(|p| p.starts_with('/')),
        capability: [
            &of.evt_arg_cap_effective,
            &of.evt_arg_cap_permitted,
            &of.evt_arg_cap_inheritable,
        ]
        .into_iter()
        .filter_map(text)
        .reduce(|a, b| format!("{a} {b}")),
        request: text(&of.evt_arg_request),
    }
    .boxed()
}

/// `true` if the ASCII word `w` starts with the lowercase ASCII `prefix`,
/// ignoring case.
fn starts_with_ignore_case(w: &str, prefix: &str) -> bool {
    w.as_bytes()
        .get(..prefix.len())
        .is_some_and(|h| h.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// `true` if `hay` contains the lowercase ASCII `needle`, ignoring ASCII
/// case (what `hay.to_ascii_lowercase().contains(needle)` returns, without
/// the copy).
fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn classify(rule: &str, of: &OutputFields<'_>) -> Result<Action, ParseError> {
    // Rule names are compared ignoring ASCII case (the table is lowercase),
    // without building a lowercase copy.
    let mut name = rule.trim();
    // Drop a trailing bracketed tag such as "[custom]".
    if name.ends_with(']')
        && let Some(i) = name.rfind('[')
    {
        name = name[..i].trim_end();
    }
    if let Some((_, a)) = RULES.iter().find(|(r, _)| r.eq_ignore_ascii_case(name)) {
        return Ok(*a);
    }
    if let Some(t) = str_of(&of.evt_type).map(str::trim)
        && let Some(a) = classify_evt_type(t, of)
    {
        return Ok(a);
    }
    let launches = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| EXEC_WORDS.iter().any(|x| starts_with_ignore_case(w, x)));
    if launches {
        return Ok(Action::Exec);
    }
    Err(ParseError::Unmapped("unmapped_rule"))
}

fn classify_evt_type(t: &str, of: &OutputFields<'_>) -> Option<Action> {
    use KernelEventKind as K;
    Some(match t {
        "execve" | "execveat" => Action::Exec,
        "connect" => Action::Connect,
        "dup" | "dup2" | "dup3" if destination(of).is_ok() => Action::Connect,
        "setuid" | "setgid" | "setreuid" | "setregid" | "setresuid" | "setresgid" | "setfsuid"
        | "setfsgid" => Action::Kernel(K::Setuid),
        "capset" => Action::Kernel(K::Capset),
        "mount" | "fsmount" | "move_mount" => Action::Kernel(K::Mount),
        "unshare" => Action::Kernel(K::Unshare),
        "setns" => Action::Kernel(K::Setns),
        "ptrace" => Action::Kernel(K::Ptrace),
        "init_module" | "finit_module" => Action::Kernel(K::ModuleLoad),
        "open" | "openat" | "openat2" | "creat" | "open_by_handle_at" => Action::File,
        "socket" => {
            let dom = str_of(&of.evt_arg_domain)
                .or_else(|| str_of(&of.evt_args))
                .unwrap_or("");
            if dom.contains("AF_PACKET") || dom.trim() == "17" {
                Action::Kernel(K::PacketSocket)
            } else {
                return None;
            }
        }
        _ => return None,
    })
}

/// Read or write of a file opened in a rule that fired.
fn file_kind(rule: &str, of: &OutputFields<'_>) -> KernelEventKind {
    let path = of.paths().into_iter().find_map(str_of).unwrap_or("");
    let mut write = of.evt_is_open_write.as_ref().and_then(Lit::lenient_bool);
    if write != Some(true)
        && let Some(flags) = str_of(&of.evt_arg_flags)
        && ["O_WRONLY", "O_RDWR", "O_TRUNC", "O_CREAT", "O_APPEND"]
            .iter()
            .any(|f| flags.contains(f))
    {
        write = Some(true);
    }
    if write.is_none()
        && ["write", "modif", "release_agent", "clear log", "tamper"]
            .iter()
            .any(|w| contains_ignore_case(rule, w))
    {
        write = Some(true);
    }
    classify_file_access(path, write).unwrap_or(if write == Some(true) {
        KernelEventKind::SensitiveFileWrite
    } else {
        KernelEventKind::SensitiveFileRead
    })
}

fn container_id(of: &OutputFields<'_>) -> Result<ContainerId, ParseError> {
    match &of.container_id {
        Some(Lit::Str(s)) => {
            let s = s.trim();
            if s.is_empty() || s == "host" {
                Err(ParseError::HostEvent)
            } else {
                normalize_container_id(s).ok_or(ParseError::InvalidContainerId)
            }
        }
        None | Some(Lit::Null) => Err(ParseError::MissingField("container.id")),
        Some(_) => Err(ParseError::InvalidField("container.id")),
    }
}

/// `output_fields.evt.time` (ns, number or decimal string), else the
/// top-level RFC 3339 `time`.
fn timestamp_ms(obj: &Alert<'_>, of: &OutputFields<'_>) -> Result<u64, ParseError> {
    if let Some(ns) = of.evt_time.as_ref().and_then(Lit::lenient_u64) {
        return Ok(ns / 1_000_000);
    }
    match &obj.time {
        Some(Lit::Str(s)) => parse_rfc3339_ms(s).ok_or(ParseError::InvalidTimestamp),
        // A present `evt.time` (even `null`) that is not a timestamp makes
        // a missing `time` an invalid timestamp rather than a missing field.
        None | Some(Lit::Null) if of.evt_time.is_none() => Err(ParseError::MissingField("time")),
        _ => Err(ParseError::InvalidTimestamp),
    }
}

fn binary(of: &OutputFields<'_>) -> Result<String, ParseError> {
    let nonempty = |s: &str| -> Option<String> {
        let s = s.trim();
        (!s.is_empty() && s != "<NA>").then(|| s.to_string())
    };
    if let Some(b) = str_of(&of.proc_exepath).and_then(nonempty) {
        return Ok(b);
    }
    if let Some(b) = str_of(&of.proc_exe)
        .filter(|s| s.starts_with('/'))
        .and_then(nonempty)
    {
        return Ok(b);
    }
    if let Some(b) = str_of(&of.proc_name).and_then(nonempty) {
        return Ok(b);
    }
    str_of(&of.proc_cmdline)
        .and_then(|c| c.split_whitespace().next())
        .and_then(nonempty)
        .ok_or(ParseError::MissingField("proc.name"))
}

/// Destination of a connection: `fd.sip`/`fd.sport`, else `fd.rip`/`fd.rport`,
/// else the remote side of `fd.name` (`10.0.0.1:3456->1.2.3.4:443`).
fn destination(of: &OutputFields<'_>) -> Result<(std::net::IpAddr, u16), ParseError> {
    // A present port key counts even when it is `null` (then it is invalid).
    for (ik, pk) in [(&of.fd_sip, &of.fd_sport), (&of.fd_rip, &of.fd_rport)] {
        if let (Some(i), Some(p)) = (str_of(ik), pk) {
            let i = ip(i).ok_or(ParseError::InvalidField("fd.sip"))?;
            let p = p.port().ok_or(ParseError::InvalidField("fd.sport"))?;
            return Ok((i, p));
        }
    }
    if let Some(name) = str_of(&of.fd_name)
        && let Some((_, remote)) = name.split_once("->")
        && let Some((h, p)) = remote.trim().rsplit_once(':')
        && let (Some(h), Ok(p)) = (ip(h), p.parse::<u16>())
    {
        return Ok((h, p));
    }
    Err(ParseError::MissingField("fd.sip"))
}
