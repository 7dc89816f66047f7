//! The Value-tree parsers as they were before the typed, borrowed rewrite
//! (commit 9c3ea8b), kept verbatim as a test-only reference: the property
//! tests below check that [`super::super::falco::parse_falco_line`] and
//! [`super::super::tetragon::parse_tetragon_line`] return exactly what these
//! return, on every fixture line and on mutated variants of them.

use serde_json::Value;

use super::{ParseError, strip_cri_prefix};

/// Parses a JSON line into an object (shared first step of the parsers):
/// strips a CRI prefix, a trailing comma (Falco stats files), whitespace.
pub(crate) fn parse_object(line: &str) -> Result<serde_json::Map<String, Value>, ParseError> {
    let line = strip_cri_prefix(line)?.trim();
    let line = line.strip_suffix(',').unwrap_or(line).trim_end();
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ParseError::NotAnObject),
        Err(e) => Err(ParseError::InvalidJson(e.to_string())),
    }
}

/// Converts `snake_case` to `camelCase`.
fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Looks up `snake` (then its camelCase form) in an object; `null` counts
/// as absent.
pub(crate) fn field<'a>(v: &'a Value, snake: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    let hit = match obj.get(snake) {
        Some(x) => Some(x),
        None if snake.contains('_') => obj.get(&camel(snake)),
        None => None,
    };
    hit.filter(|x| !x.is_null())
}

/// A non-negative integer from a JSON number or a decimal string (protojson
/// encodes 64-bit integers as strings; Falco sometimes does too).
pub(crate) fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A boolean from `true`/`false` or the strings `"true"`/`"false"`.
pub(crate) fn lenient_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim() {
            "true" | "TRUE" | "True" | "1" => Some(true),
            "false" | "FALSE" | "False" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A TCP/UDP port (0..=65535) from a number or a decimal string.
pub(crate) fn port(v: &Value) -> Option<u16> {
    lenient_u64(v).and_then(|p| u16::try_from(p).ok())
}

pub(crate) mod falco {
    use serde_json::{Map, Value};

    use super::{lenient_bool, lenient_u64, parse_object, port};
    use crate::telemetry::events::json::ip;
    use crate::telemetry::events::{
        ParseError, classify_file_access, normalize_container_id, parse_rfc3339_ms,
    };
    use crate::telemetry::{ContainerId, Event, KernelDetail, KernelEventKind};

    // The mapping tables are the live parser's: this oracle checks the JSON
    // reading, not the tables.
    use crate::telemetry::falco::{Action, EXEC_WORDS, RULES};

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
                    let digits: String =
                        s.trim().chars().take_while(char::is_ascii_digit).collect();
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
            "setuid" | "setgid" | "setreuid" | "setregid" | "setresuid" | "setresgid"
            | "setfsuid" | "setfsgid" => Action::Kernel(K::Setuid),
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
}

pub(crate) mod tetragon {
    use serde_json::Value;

    use super::{field, lenient_u64, parse_object, port};
    use crate::telemetry::events::json::ip;
    use crate::telemetry::events::{
        ParseError, classify_file_access, normalize_container_id, parse_rfc3339_ms,
    };
    use crate::telemetry::{ContainerId, Event, KernelDetail, KernelEventKind};

    // The mapping constants are the live parser's: this oracle checks the
    // JSON reading, not them.
    use crate::telemetry::tetragon::{
        AF_PACKET, Action, Kind, MAY_WRITE_OR_APPEND, classify_function,
    };

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
                    Some(Value::String(_)) | None => {
                        return Err(ParseError::MissingField("binary"));
                    }
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
            KernelEventKind::Ptrace => first_int().map(|n| {
                crate::telemetry::ptrace_request_name(n)
                    .map_or_else(|| n.to_string(), str::to_string)
            }),
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
}

/// The typed parsers against the reference, on the fixtures and on mutated
/// variants of them.
mod equivalence {
    use proptest::prelude::*;
    use serde_json::Value;

    use crate::telemetry::Event;
    use crate::telemetry::events::ParseError;

    const FIXTURES: [&[u8]; 5] = [
        include_bytes!("../../../tests/fixtures/falco.jsonl"),
        include_bytes!("../../../tests/fixtures/falco-rules.jsonl"),
        include_bytes!("../../../tests/fixtures/tetragon.jsonl"),
        include_bytes!("../../../tests/fixtures/tetragon-kprobes.jsonl"),
        include_bytes!("../../../tests/fixtures/malformed.jsonl"),
    ];

    const CRI: &str = "2026-03-15T00:06:32.475152409Z stdout F ";

    /// Every fixture line that is UTF-8 (the reader refuses the others
    /// before any parser sees them).
    fn lines() -> Vec<&'static str> {
        FIXTURES
            .iter()
            .flat_map(|f| f.split(|b| *b == b'\n'))
            .filter_map(|l| std::str::from_utf8(l).ok())
            .collect()
    }

    type Parser = fn(&str) -> Result<Vec<Event>, ParseError>;

    const PAIRS: [(&str, Parser, Parser); 2] = [
        (
            "falco",
            crate::telemetry::falco::parse_falco_line,
            super::falco::parse_falco_line,
        ),
        (
            "tetragon",
            crate::telemetry::tetragon::parse_tetragon_line,
            super::tetragon::parse_tetragon_line,
        ),
    ];

    fn assert_same(line: &str) {
        for (name, new, old) in PAIRS {
            assert_eq!(new(line), old(line), "{name} differs on {line:?}");
        }
    }

    #[test]
    fn fixture_lines_parse_as_before() {
        let mut ok = 0;
        for l in lines() {
            assert_same(l);
            assert_same(&format!("{CRI}{l}"));
            assert_same(&format!("  {l} ,"));
            ok += usize::from(PAIRS.iter().any(|(_, new, _)| new(l).is_ok()));
        }
        assert!(ok >= 30, "only {ok} fixture lines parse");
    }

    /// Keys the parsers read (either spelling), to add or rename into.
    const KEYS: &[&str] = &[
        "rule",
        "sample",
        "source",
        "output_fields",
        "time",
        "container.id",
        "evt.time",
        "evt.type",
        "evt.args",
        "evt.is_open_write",
        "evt.arg.flags",
        "evt.arg.domain",
        "evt.arg.name",
        "evt.arg.path",
        "evt.arg.uid",
        "evt.arg.ruid",
        "evt.arg.euid",
        "evt.arg.cap_effective",
        "evt.arg.request",
        "proc.exepath",
        "proc.exe",
        "proc.name",
        "proc.cmdline",
        "user.name",
        "user.uid",
        "fd.sip",
        "fd.sport",
        "fd.rip",
        "fd.rport",
        "fd.name",
        "fs.path.name",
        "process_exec",
        "processExec",
        "process_kprobe",
        "processKprobe",
        "process_lsm",
        "processLsm",
        "process_exit",
        "processExit",
        "rate_limit_info",
        "rateLimitInfo",
        "process",
        "function_name",
        "functionName",
        "args",
        "binary",
        "uid",
        "pod",
        "container",
        "id",
        "docker",
        "int_arg",
        "intArg",
        "string_arg",
        "stringArg",
        "sock_arg",
        "sockArg",
        "sockaddr_arg",
        "sockaddrArg",
        "file_arg",
        "fileArg",
        "path_arg",
        "pathArg",
        "cred_arg",
        "credArg",
        "capability_arg",
        "capabilityArg",
        "daddr",
        "dport",
        "addr",
        "port",
        "path",
        "euid",
        "name",
    ];

    /// Strings that steer the parsers down their branches.
    const STRINGS: &[&str] = &[
        "execve",
        "connect",
        "dup2",
        "setuid",
        "capset",
        "mount",
        "unshare",
        "setns",
        "ptrace",
        "init_module",
        "openat",
        "socket",
        "AF_PACKET",
        "17",
        "true",
        "False",
        "1",
        "0",
        " 42 ",
        "+7",
        "-1",
        "host",
        "",
        "<NA>",
        "/etc/shadow",
        "/etc/passwd",
        "/tmp/x",
        "0(root)",
        "O_WRONLY|O_CREAT",
        "10.0.0.1",
        "[::1]",
        "1.2.3.4:5->6.7.8.9:443",
        "443",
        "99999",
        "tcp_connect",
        "__x64_sys_setuid",
        "security_file_permission",
        "fd_install",
        "packet_create",
        "cap_capable",
        "commit_creds",
        "syscall",
        "k8s_audit",
        "2021-01-14T23:39:44Z",
        "2026-03-15T00:06:31.123+01:00",
        "not-a-time",
        "containerd://551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3",
        "5892B41BCF46",
        "551e161c47d8ff0eb665438a7bcd5b4",
        "Terminal shell in container",
        "Falco internal: syscall event drop",
        "Write below etc",
        "Read sensitive file untrusted [custom]",
        "Some process RUN here",
        "quote\"back\\slash\ttab\u{e9}\u{1F600}",
    ];

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            (0u64..70_000).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(serde_json::json!(1.5)),
            Just(serde_json::json!(-0.0)),
            Just(serde_json::json!(1e300)),
            Just(serde_json::json!(1_740_609_600_001_000_000u64)),
            prop::sample::select(STRINGS).prop_map(Value::from),
            any::<u64>().prop_map(|n| Value::from(n.to_string())),
            "[ -~]{0,12}".prop_map(Value::from),
            Just(serde_json::json!([])),
            Just(serde_json::json!({})),
            Just(serde_json::json!([{"int_arg": 17}])),
        ]
    }

    /// Paths (array indices) to every object in `v`, depth first.
    fn objects(v: &Value, path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        let children: Vec<&Value> = match v {
            Value::Object(m) => {
                out.push(path.clone());
                m.values().collect()
            }
            Value::Array(a) => a.iter().collect(),
            _ => return,
        };
        for (i, x) in children.into_iter().enumerate() {
            path.push(i);
            objects(x, path, out);
            path.pop();
        }
    }

    fn at_path<'v>(mut v: &'v mut Value, path: &[usize]) -> &'v mut Value {
        for &i in path {
            v = match v {
                Value::Object(m) => m.values_mut().nth(i).expect("path"),
                Value::Array(a) => &mut a[i],
                _ => unreachable!("paths lead through containers"),
            };
        }
        v
    }

    fn camel_or_snake(k: &str) -> String {
        if k.contains('_') {
            let mut out = String::new();
            let mut up = false;
            for c in k.chars() {
                if c == '_' {
                    up = true;
                } else if up {
                    out.push(c.to_ascii_uppercase());
                    up = false;
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            k.chars()
                .flat_map(|c| {
                    if c.is_ascii_uppercase() {
                        vec!['_', c.to_ascii_lowercase()]
                    } else {
                        vec![c]
                    }
                })
                .collect()
        }
    }

    /// One structural edit of `v`, chosen by `op` at object `at`, key `k`.
    fn mutate(v: &mut Value, op: u8, at: usize, k: usize, new_key: &str, leaf: Value) {
        let mut objs = Vec::new();
        objects(v, &mut Vec::new(), &mut objs);
        if objs.is_empty() {
            return;
        }
        let Value::Object(m) = at_path(v, &objs[at % objs.len()]) else {
            unreachable!("objects lists objects");
        };
        let keys: Vec<String> = m.keys().cloned().collect();
        let key = (!keys.is_empty()).then(|| keys[k % keys.len()].clone());
        match (op % 8, key) {
            (0, Some(key)) => {
                m.remove(&key);
            }
            (1, Some(key)) => {
                m.insert(key, leaf);
            }
            (2, Some(key)) => {
                // A number as a string, or a numeric string as a number.
                let x = m.get_mut(&key).expect("key");
                *x = match x.take() {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::String(s) => s
                        .trim()
                        .parse::<u64>()
                        .map_or_else(|_| Value::String(s), Value::from),
                    other => other,
                };
            }
            (3, Some(key)) => {
                // Rename to the other spelling, or add it as a twin (with
                // the original, `null` or the leaf as the first value).
                let x = m.remove(&key).expect("key");
                match k % 4 {
                    0 => {
                        m.insert(key.clone(), x.clone());
                    }
                    1 => {
                        m.insert(key.clone(), Value::Null);
                    }
                    2 => {
                        m.insert(key.clone(), leaf);
                    }
                    _ => {}
                }
                m.insert(camel_or_snake(&key), x);
            }
            (4, _) => {
                m.insert(new_key.to_string(), leaf);
            }
            (5, Some(key)) => {
                let x = m.get_mut(&key).expect("key");
                if let Value::String(s) = x {
                    s.push_str("\u{e9}\n\"");
                }
            }
            (6, Some(key)) => {
                let x = m.get_mut(&key).expect("key");
                *x = Value::Array(vec![x.take()]);
            }
            (7, Some(key)) => {
                m.insert(key, Value::Null);
            }
            _ => {}
        }
    }

    /// One textual edit of a serialised line.
    fn text_edit(line: &str, op: u8, pos: usize, leaf: &Value) -> String {
        let keys: Vec<usize> = line.match_indices("\":").map(|(i, _)| i).collect();
        let boundary = |p: usize| {
            let mut p = p % (line.len() + 1);
            while !line.is_char_boundary(p) {
                p -= 1;
            }
            p
        };
        match op % 6 {
            0 => line[..boundary(pos)].to_string(),
            1 if !keys.is_empty() => {
                // Duplicate a key: `"k":<leaf>,` before its occurrence.
                let end = keys[pos % keys.len()];
                let Some(start) = line[..end].rfind('"') else {
                    return line.to_string();
                };
                let key = &line[start..=end];
                let leaf = serde_json::to_string(leaf).expect("json");
                if line[..start].ends_with(['{', ',']) {
                    format!("{}{key}:{leaf},{}", &line[..start], &line[start..])
                } else {
                    line.to_string()
                }
            }
            2 if !keys.is_empty() => {
                // Escape the first character of a key.
                let end = keys[pos % keys.len()];
                match line[..end].rfind('"') {
                    Some(start) if start + 1 < end && line.as_bytes()[start + 1].is_ascii() => {
                        let c = line.as_bytes()[start + 1];
                        format!("{}\\u{:04x}{}", &line[..=start], c, &line[start + 2..])
                    }
                    _ => line.to_string(),
                }
            }
            3 => format!("{CRI}{line}"),
            4 => format!(" {line} ,\r"),
            _ => {
                let p = boundary(pos);
                format!(
                    "{}{}{}",
                    &line[..p],
                    ["{", "}", ",", "\"", "\\", "]", " ", "x"][pos % 8],
                    &line[p..]
                )
            }
        }
    }

    /// A random object tree over the keys the parsers read.
    fn shaped() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            8 => prop::sample::select(KEYS).prop_map(str::to_string),
            1 => "[a-z_.]{1,8}",
        ];
        leaf().prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                3 => prop::collection::vec((key.clone(), inner.clone()), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                1 => prop::collection::vec(inner, 0..3).prop_map(Value::Array),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn mutated_lines_parse_as_before(
            idx in any::<prop::sample::Index>(),
            edits in prop::collection::vec(
                (any::<u8>(), any::<usize>(), any::<usize>(), prop::sample::select(KEYS), leaf()),
                0..6,
            ),
            texts in prop::collection::vec((any::<u8>(), any::<usize>(), leaf()), 0..2),
        ) {
            let all = lines();
            let line = *idx.get(&all);
            let json = crate::telemetry::events::strip_cri_prefix(line).unwrap_or(line);
            let mut text = match serde_json::from_str::<Value>(json.trim().trim_end_matches(',')) {
                Ok(mut v) => {
                    for (op, at, k, key, leaf) in edits {
                        mutate(&mut v, op, at, k, key, leaf);
                    }
                    serde_json::to_string(&v).expect("json")
                }
                Err(_) => line.to_string(),
            };
            for (op, pos, leaf) in &texts {
                text = text_edit(&text, *op, *pos, leaf);
            }
            for (name, new, old) in PAIRS {
                prop_assert_eq!(new(&text), old(&text), "{} differs on {:?}", name, text);
            }
        }

        #[test]
        fn random_shapes_parse_as_before(
            body in shaped(),
            top in prop::sample::select(&["process_exec", "processKprobe", "process_kprobe", "process_lsm", "process_exit", "output_fields"][..]),
            rule in prop::sample::select(STRINGS),
            time in prop::sample::select(STRINGS),
        ) {
            let line = serde_json::json!({ top: body, "rule": rule, "time": time }).to_string();
            for (name, new, old) in PAIRS {
                prop_assert_eq!(new(&line), old(&line), "{} differs on {:?}", name, line);
            }
        }
    }
}
