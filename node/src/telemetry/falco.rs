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
//! 1. The rule name, for the Falco stable/incubating rules of the reference
//!    (e.g. `Terminal shell in container` → Exec, `Read sensitive file
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

use serde_json::{Map, Value};

use super::events::{
    ParseError, classify_file_access, ip, lenient_bool, lenient_u64, normalize_container_id,
    parse_object, parse_rfc3339_ms, port,
};
use super::{ContainerId, Event, KernelDetail, KernelEventKind};

/// What a Falco alert describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Exec,
    Connect,
    Kernel(KernelEventKind),
    /// An open of a file the rule considered sensitive.
    File,
}

/// Rule names (lowercase, `[custom]`-style suffixes removed) → action.
const RULES: &[(&str, Action)] = &[
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
const EXEC_WORDS: &[&str] = &["shell", "exec", "launch", "spawn", "process", "run"];

/// Parses one Falco JSON alert line (a CRI log prefix is stripped first)
/// into one event, or two (Exec + Kernel) for a kernel-class rule fired by
/// an exec.
pub fn parse_falco_line(line: &str) -> Result<Vec<Event>, ParseError> {
    let obj = parse_object(line)?;
    let rule = match obj.get("rule") {
        Some(Value::String(r)) => r.as_str(),
        Some(Value::Null) | None => {
            return Err(if obj.contains_key("sample") {
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
    match obj.get("source") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "syscall" => {}
        Some(Value::String(_)) => return Err(ParseError::Unsupported("unsupported_source")),
        Some(_) => return Err(ParseError::InvalidField("source")),
    }
    let of = match obj.get("output_fields") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => return Err(ParseError::MissingField("output_fields")),
        Some(_) => return Err(ParseError::InvalidField("output_fields")),
    };
    let action = classify(rule, of)?;
    let container = container_id(of)?;
    let ts_ms = timestamp_ms(&obj, of)?;
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
            let by_exec = matches!(of_str(of, "evt.type"), Some("execve" | "execveat"));
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
fn detail(of: &Map<String, Value>) -> Option<Box<KernelDetail>> {
    let text = |k: &str| {
        of_str(of, k)
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "<NA>")
            .map(str::to_string)
    };
    let leading_u32 = |k: &str| -> Option<u32> {
        match of.get(k)? {
            Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
            Value::String(s) => {
                let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            }
            _ => None,
        }
    };
    KernelDetail {
        process: binary(of).ok(),
        user: text("user.name"),
        uid: leading_u32("user.uid"),
        target_uid: leading_u32("evt.arg.uid")
            .or_else(|| leading_u32("evt.arg.ruid"))
            .or_else(|| leading_u32("evt.arg.euid")),
        path: ["fd.name", "evt.arg.name", "evt.arg.path", "fs.path.name"]
            .iter()
            .find_map(|k| text(k))
            .filter(|p| p.starts_with('/')),
        capability: [
            "evt.arg.cap_effective",
            "evt.arg.cap_permitted",
            "evt.arg.cap_inheritable",
        ]
        .iter()
        .filter_map(|k| text(k))
        .reduce(|a, b| format!("{a} {b}")),
        request: text("evt.arg.request"),
    }
    .boxed()
}

/// A string value of a flat `output_fields` key (`null` = absent).
fn of_str<'a>(of: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    of.get(key).and_then(Value::as_str)
}

fn classify(rule: &str, of: &Map<String, Value>) -> Result<Action, ParseError> {
    let mut name = rule.trim().to_ascii_lowercase();
    // Drop a trailing bracketed tag such as "[custom]".
    if name.ends_with(']')
        && let Some(i) = name.rfind('[')
    {
        name.truncate(i);
        name.truncate(name.trim_end().len());
    }
    if let Some((_, a)) = RULES.iter().find(|(r, _)| *r == name) {
        return Ok(*a);
    }
    if let Some(t) = of_str(of, "evt.type").map(str::trim)
        && let Some(a) = classify_evt_type(t, of)
    {
        return Ok(a);
    }
    let launches = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| EXEC_WORDS.iter().any(|x| w.starts_with(x)));
    if launches {
        return Ok(Action::Exec);
    }
    Err(ParseError::Unmapped("unmapped_rule"))
}

fn classify_evt_type(t: &str, of: &Map<String, Value>) -> Option<Action> {
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
            let dom = of_str(of, "evt.arg.domain")
                .or_else(|| of_str(of, "evt.args"))
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
fn file_kind(rule: &str, of: &Map<String, Value>) -> KernelEventKind {
    let path = ["fd.name", "evt.arg.name", "evt.arg.path", "fs.path.name"]
        .iter()
        .find_map(|k| of_str(of, k))
        .unwrap_or("");
    let mut write = of.get("evt.is_open_write").and_then(lenient_bool);
    if write != Some(true)
        && let Some(flags) = of_str(of, "evt.arg.flags")
        && ["O_WRONLY", "O_RDWR", "O_TRUNC", "O_CREAT", "O_APPEND"]
            .iter()
            .any(|f| flags.contains(f))
    {
        write = Some(true);
    }
    if write.is_none() {
        let r = rule.to_ascii_lowercase();
        if ["write", "modif", "release_agent", "clear log", "tamper"]
            .iter()
            .any(|w| r.contains(w))
        {
            write = Some(true);
        }
    }
    classify_file_access(path, write).unwrap_or(if write == Some(true) {
        KernelEventKind::SensitiveFileWrite
    } else {
        KernelEventKind::SensitiveFileRead
    })
}

fn container_id(of: &Map<String, Value>) -> Result<ContainerId, ParseError> {
    match of.get("container.id") {
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() || s == "host" {
                Err(ParseError::HostEvent)
            } else {
                normalize_container_id(s).ok_or(ParseError::InvalidContainerId)
            }
        }
        None | Some(Value::Null) => Err(ParseError::MissingField("container.id")),
        Some(_) => Err(ParseError::InvalidField("container.id")),
    }
}

/// `output_fields.evt.time` (ns, number or decimal string), else the
/// top-level RFC 3339 `time`.
fn timestamp_ms(obj: &Map<String, Value>, of: &Map<String, Value>) -> Result<u64, ParseError> {
    if let Some(ns) = of.get("evt.time").and_then(lenient_u64) {
        return Ok(ns / 1_000_000);
    }
    match obj.get("time") {
        Some(Value::String(s)) => parse_rfc3339_ms(s).ok_or(ParseError::InvalidTimestamp),
        None | Some(Value::Null) if !of.contains_key("evt.time") => {
            Err(ParseError::MissingField("time"))
        }
        _ => Err(ParseError::InvalidTimestamp),
    }
}

fn binary(of: &Map<String, Value>) -> Result<String, ParseError> {
    let nonempty = |s: &str| -> Option<String> {
        let s = s.trim();
        (!s.is_empty() && s != "<NA>").then(|| s.to_string())
    };
    if let Some(b) = of_str(of, "proc.exepath").and_then(nonempty) {
        return Ok(b);
    }
    if let Some(b) = of_str(of, "proc.exe")
        .filter(|s| s.starts_with('/'))
        .and_then(nonempty)
    {
        return Ok(b);
    }
    if let Some(b) = of_str(of, "proc.name").and_then(nonempty) {
        return Ok(b);
    }
    of_str(of, "proc.cmdline")
        .and_then(|c| c.split_whitespace().next())
        .and_then(nonempty)
        .ok_or(ParseError::MissingField("proc.name"))
}

/// Destination of a connection: `fd.sip`/`fd.sport`, else `fd.rip`/`fd.rport`,
/// else the remote side of `fd.name` (`10.0.0.1:3456->1.2.3.4:443`).
fn destination(of: &Map<String, Value>) -> Result<(std::net::IpAddr, u16), ParseError> {
    for (ik, pk) in [("fd.sip", "fd.sport"), ("fd.rip", "fd.rport")] {
        if let (Some(i), Some(p)) = (of_str(of, ik), of.get(pk)) {
            let i = ip(i).ok_or(ParseError::InvalidField("fd.sip"))?;
            let p = port(p).ok_or(ParseError::InvalidField("fd.sport"))?;
            return Ok((i, p));
        }
    }
    if let Some(name) = of_str(of, "fd.name")
        && let Some((_, remote)) = name.split_once("->")
        && let Some((h, p)) = remote.trim().rsplit_once(':')
        && let (Some(h), Ok(p)) = (ip(h), p.parse::<u16>())
    {
        return Ok((h, p));
    }
    Err(ParseError::MissingField("fd.sip"))
}
