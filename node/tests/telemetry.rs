//! Real telemetry sources against fixture trees and reference lines:
//! cgroup v2/v1 discovery and counters, `/proc/<pid>/net/dev`, Falco and
//! Tetragon JSON lines, the line reader and file follower.
// Test crate: helpers outside `#[test]` fns may unwrap and panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Cursor, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fedmesh_node::detection::features::{WindowBuilder, idx};
use fedmesh_node::telemetry::cgroup::{
    CgroupCollector, CgroupError, CgroupVersion, CollectStats, QosClass, Runtime,
    classify_cgroup_path, parse_blkio_service_bytes, parse_flat_keyed, parse_io_stat,
};
use fedmesh_node::telemetry::events::{
    FollowFile, JsonLineReader, ParseError, ParseStats, StartAt,
};
use fedmesh_node::telemetry::falco::parse_falco_line;
use fedmesh_node::telemetry::proc::parse_net_dev;
use fedmesh_node::telemetry::tetragon::parse_tetragon_line;
use fedmesh_node::telemetry::{ContainerId, Event, KernelEventKind, ResourceCounters};
use proptest::prelude::*;
use serde_json::Value;

const A: &str = "72e5a5ff5eef3c4222a6551b992b9360a99122f77d2229783f0ee0946dfd800e";
const B: &str = "3b8c9a0f4d1e2f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
const C: &str = "551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3";
const D: &str = "0d4c3b2a19180706f5e4d3c2b1a0908f7e6d5c4b3a291807f6e5d4c3b2a19180";
const E: &str = "e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff00";
const F: &str = "28c0c7a20575aa11bb22cc33dd44ee55ff6677889900aabbccddeeff00112233";
const G: &str = "5892b41bcf46000111222333444555666777888999aaabbbcccdddeeefff0001";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cgroup_fixture(name: &str) -> PathBuf {
    fixtures().join("cgroup").join(name)
}

fn collector(name: &str) -> CgroupCollector {
    CgroupCollector::new(cgroup_fixture(name))
        .expect("fixture hierarchy")
        .with_proc_root(fixtures().join("proc"))
}

fn cid(s: &str) -> ContainerId {
    ContainerId(s.to_string())
}

fn short(full: &str) -> ContainerId {
    cid(&full[..12])
}

fn sample_of(events: &[Event], full_id: &str) -> ResourceCounters {
    let want = short(full_id);
    events
        .iter()
        .find_map(|e| match e {
            Event::Sample {
                container,
                counters,
                ..
            } if *container == want => Some(*counters),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no sample for {full_id}"))
}

fn reason(stats: &CollectStats, r: &str) -> u64 {
    stats.by_reason.get(r).copied().unwrap_or(0)
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            fs::copy(e.path(), to).unwrap();
        }
    }
}

// ---------------------------------------------------------------- cgroup

#[test]
fn v2_docker_systemd_discovery() {
    let c = collector("v2-docker-systemd");
    assert_eq!(c.version(), CgroupVersion::V2);
    let found: Vec<_> = c
        .containers()
        .iter()
        .map(|i| (i.id.as_str(), i.runtime, i.pod_uid.clone(), i.qos))
        .collect();
    // Not: init.scope, sshd.service, docker.service, the overlay and netns `.mount` units.
    assert_eq!(
        found,
        vec![
            (B, Runtime::Docker, None, None),
            (A, Runtime::Docker, None, None),
        ]
    );
    assert_eq!(
        c.containers()[1].cgroup_path,
        PathBuf::from(format!("system.slice/docker-{A}.scope"))
    );
    assert_eq!(c.containers()[1].container_id(), short(A));
}

#[test]
fn v2_docker_systemd_counters() {
    let mut c = collector("v2-docker-systemd");
    let (events, stats) = c.sample(1_000).unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.ts_ms() == 1_000));
    assert_eq!(
        sample_of(&events, A),
        ResourceCounters {
            cpu_usage_usec: 212_376_922,
            nr_periods: 0,
            nr_throttled: 0,
            memory_bytes: 1_234_567_890,
            io_read_bytes: 1_459_200 + 90_430_464,
            io_write_bytes: 314_773_504 + 299_008_000,
            net_rx_bytes: 1_607_540,
            net_tx_bytes: 4_895_506,
            net_rx_packets: 1_210,
            net_tx_packets: 3_320,
            pids: 42,
        }
    );
    assert_eq!(
        sample_of(&events, B),
        ResourceCounters {
            cpu_usage_usec: 8_000_000,
            nr_periods: 100,
            nr_throttled: 0,
            memory_bytes: 52_428_800,
            pids: 3,
            ..Default::default()
        }
    );
    // B has no io.stat and its member PID has no /proc entry.
    assert_eq!(stats.containers, 2);
    assert_eq!(stats.samples, 2);
    assert_eq!(stats.missing_files, 2);
    assert_eq!(reason(&stats, "missing:io.stat"), 1);
    assert_eq!(reason(&stats, "missing:net/dev"), 1);
    assert_eq!(stats.malformed_lines, 0);
    assert_eq!(stats.vanished, 0);
}

#[test]
fn v2_kubepods_discovery_and_counters() {
    let mut c = collector("v2-kubepods");
    let found: Vec<_> = c
        .containers()
        .iter()
        .map(|i| (i.id.as_str(), i.runtime, i.pod_uid.as_deref(), i.qos))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                D,
                Runtime::CriO,
                Some("8e2d1b3c-4f5a-4b6c-9d7e-0f1a2b3c4d5e"),
                Some(QosClass::BestEffort)
            ),
            (
                C,
                Runtime::Containerd,
                Some("1b2c56f1-ff15-4ab7-8ae8-7161cdfb59d4"),
                Some(QosClass::Burstable)
            ),
            (
                E,
                Runtime::Containerd,
                Some("0c9b8a7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d"),
                Some(QosClass::Guaranteed)
            ),
        ]
    );
    let (events, stats) = c.sample(5).unwrap();
    let cc = sample_of(&events, C);
    assert_eq!((cc.cpu_usage_usec, cc.nr_periods), (8_000_000, 100));
    assert_eq!(cc.memory_bytes, 104_857_600);
    assert_eq!(cc.pids, 7);
    // eth0 + net1, not lo.
    assert_eq!(
        (
            cc.net_rx_bytes,
            cc.net_rx_packets,
            cc.net_tx_bytes,
            cc.net_tx_packets
        ),
        (44_414, 122, 9_200, 64)
    );
    let dd = sample_of(&events, D);
    assert_eq!((dd.io_read_bytes, dd.io_write_bytes), (0, 0)); // empty io.stat
    assert_eq!((dd.net_rx_bytes, dd.net_tx_bytes), (0, 0)); // only lo
    let ee = sample_of(&events, E);
    assert_eq!((ee.net_rx_bytes, ee.net_tx_packets), (10, 2)); // first PID gone, second used
    assert_eq!(stats.missing_files, 0);
    assert_eq!(stats.malformed_lines, 0);
}

#[test]
fn v1_hybrid_cgroupfs() {
    let mut c = collector("v1-docker-cgroupfs");
    assert_eq!(c.version(), CgroupVersion::V1);
    let found: Vec<_> = c
        .containers()
        .iter()
        .map(|i| (i.id.as_str(), i.runtime, i.pod_uid.as_deref(), i.qos))
        .collect();
    assert_eq!(
        found,
        vec![
            (F, Runtime::Docker, None, None),
            (
                G,
                Runtime::Unknown,
                Some("8e2d1b3c-4f5a-4b6c-9d7e-0f1a2b3c4d5e"),
                Some(QosClass::BestEffort)
            ),
        ]
    );
    let (events, stats) = c.sample(7).unwrap();
    assert_eq!(
        sample_of(&events, F),
        ResourceCounters {
            cpu_usage_usec: 212_376_922, // cpuacct.usage ns / 1000
            nr_periods: 50,
            nr_throttled: 5,
            memory_bytes: 2_830_336,
            io_read_bytes: 90_430_464 + 1_459_200,
            io_write_bytes: 299_008_000 + 314_773_504,
            net_rx_bytes: 1_607_540,
            net_tx_bytes: 4_895_506,
            net_rx_packets: 1_210,
            net_tx_packets: 3_320,
            pids: 5,
        }
    );
    let g = sample_of(&events, G);
    assert_eq!(
        (g.cpu_usage_usec, g.memory_bytes, g.pids),
        (1_000, 1_048_576, 1)
    );
    assert_eq!(stats.missing_files, 0);
    assert_eq!(stats.malformed_lines, 0);
}

#[test]
fn two_samples_through_window_builder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cg");
    copy_dir(&cgroup_fixture("v2-docker-systemd"), &root);
    let mut c = CgroupCollector::new(root.clone())
        .unwrap()
        .with_proc_root(fixtures().join("proc"));
    let (first, _) = c.sample(10_000).unwrap();
    // 10 s later: A used 5 CPU-seconds (0.5 cores), B 20 (2 cores), B was
    // throttled in 50 of 100 periods.
    let a = root.join(format!("system.slice/docker-{A}.scope/cpu.stat"));
    fs::write(
        &a,
        "usage_usec 217376922\nuser_usec 1\nsystem_usec 2\nnice_usec 0\n",
    )
    .unwrap();
    let b = root.join(format!("system.slice/docker-{B}.scope/cpu.stat"));
    fs::write(
        &b,
        "nr_throttled 50\nusage_usec 28000000\nnr_periods 200\nthrottled_usec 5\n",
    )
    .unwrap();
    let (second, stats) = c.sample(20_000).unwrap();
    assert_eq!(stats.samples, 2);
    let mut wb = WindowBuilder::new();
    for e in first.iter().chain(&second) {
        wb.push(e);
    }
    let windows = wb.close(20_001);
    assert_eq!(windows.len(), 2);
    let w = |id: &str| {
        windows
            .iter()
            .find(|w| w.container == short(id))
            .unwrap()
            .features
    };
    assert!((w(A)[idx::CPU_CORES] - 0.5).abs() < 1e-6);
    assert!((w(B)[idx::CPU_CORES] - 2.0).abs() < 1e-6);
    assert!((w(B)[idx::THROTTLE_RATIO] - 0.5).abs() < 1e-6);
    assert_eq!(w(A)[idx::THROTTLE_RATIO], 0.0);
    assert!((w(A)[idx::PIDS] - 43f32.ln()).abs() < 1e-5);

    // A container removed between samples simply disappears.
    fs::remove_dir_all(root.join(format!("system.slice/docker-{B}.scope"))).unwrap();
    let (third, stats) = c.sample(30_000).unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(stats.containers, 1);
}

#[test]
fn malformed_files_are_counted_not_fatal() {
    let mut c = collector("v2-malformed");
    let (events, stats) = c.sample(1).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        sample_of(&events, A),
        ResourceCounters {
            cpu_usage_usec: 5_000, // first usage_usec; garbage lines skipped
            io_read_bytes: 7,      // only the one well-formed io.stat line
            io_write_bytes: 3,
            net_rx_bytes: 1, // only the well-formed eth1 line of net/dev
            net_rx_packets: 2,
            net_tx_bytes: 3,
            net_tx_packets: 4,
            ..Default::default() // memory "-5", pids overflow: malformed → 0
        }
    );
    assert_eq!(sample_of(&events, B), ResourceCounters::default());
    // A: cpu.stat 5 (NUL garbage, negative, truncated, 3 fields, %%%%),
    // memory 1, io.stat 3, pids 1, cgroup.procs 1, net/dev 3;
    // B: cpu.stat 1 (overflow), memory 1 ("max"), pids 1 (empty).
    assert_eq!(reason(&stats, "malformed:cpu.stat"), 6);
    assert_eq!(reason(&stats, "malformed:memory.current"), 2);
    assert_eq!(reason(&stats, "malformed:io.stat"), 3);
    assert_eq!(reason(&stats, "malformed:pids.current"), 2);
    assert_eq!(reason(&stats, "malformed:cgroup.procs"), 1);
    assert_eq!(reason(&stats, "malformed:net/dev"), 3);
    assert_eq!(stats.malformed_lines, 17);
    assert_eq!(reason(&stats, "missing:io.stat"), 1);
    assert_eq!(reason(&stats, "no_member_process"), 1);
}

#[test]
fn bad_roots_are_errors() {
    match CgroupCollector::new(fixtures().join("does-not-exist")) {
        Err(CgroupError::Unreadable { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
    match CgroupCollector::new(fixtures().join("proc")) {
        Err(CgroupError::NoHierarchy(_)) => {}
        other => panic!("unexpected {other:?}"),
    }
}

// ------------------------------------------------------------ JSON lines

fn read_fixture<P>(name: &str, parser: P) -> (Vec<Event>, ParseStats)
where
    P: FnMut(&str) -> Result<Vec<Event>, fedmesh_node::telemetry::events::ParseError>,
{
    let f = fs::File::open(fixtures().join(name)).unwrap();
    let mut r = JsonLineReader::new(std::io::BufReader::new(f), parser);
    let evs = plain(r.read_all().unwrap());
    (evs, r.into_stats())
}

/// Events without their kernel details (compared separately in the rule tests).
fn plain(evs: Vec<Event>) -> Vec<Event> {
    evs.into_iter().map(Event::without_detail).collect()
}

fn skips(stats: &ParseStats) -> Vec<(&'static str, u64)> {
    stats
        .skipped_by_reason
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect()
}

fn exec(c: &str, ts_ms: u64, binary: &str) -> Event {
    Event::Exec {
        container: cid(c),
        ts_ms,
        binary: binary.into(),
    }
}

fn kernel(c: &str, ts_ms: u64, kind: KernelEventKind) -> Event {
    Event::Kernel {
        container: cid(c),
        ts_ms,
        kind,
        detail: None,
    }
}

fn connect(c: &str, ts_ms: u64, ip: &str, port: u16) -> Event {
    Event::Connect {
        container: cid(c),
        ts_ms,
        dst_ip: ip.parse::<IpAddr>().unwrap(),
        dst_port: port,
    }
}

#[test]
fn falco_reference_lines() {
    let (events, stats) = read_fixture("falco.jsonl", parse_falco_line);
    assert_eq!(
        events,
        vec![
            // Custom rule "Memory dump process in Container [custom]": a
            // launched process; binary from the first word of proc.cmdline.
            exec("28c0c7a20575", 1_740_609_587_261, "dd"),
            exec("5892b41bcf46", 1_610_667_584_834, "sh"),
        ]
    );
    assert_eq!(stats.lines, 4);
    assert_eq!(stats.events, 2);
    assert_eq!(
        skips(&stats),
        vec![("falco_stats", 1), ("sensor_internal", 1)]
    );
}

#[test]
fn falco_rule_mapping() {
    use KernelEventKind::*;
    const T: u64 = 1_740_609_600_000;
    let c = "28c0c7a20575";
    let (events, stats) = read_fixture("falco-rules.jsonl", parse_falco_line);
    assert_eq!(
        events,
        vec![
            connect(c, T + 1, "45.9.148.21", 3333),
            exec(c, T + 2, "/tmp/.x/kworker"),
            kernel(c, T + 3, Setuid), // 64-hex uppercase id → short lowercase
            kernel(c, T + 4, Capset),
            exec(c, T + 5, "/usr/bin/mount"),
            kernel(c, T + 5, Mount),
            kernel(c, T + 6, Unshare),
            kernel(c, T + 7, Setns),
            kernel(c, T + 8, Ptrace),
            kernel(c, T + 9, ModuleLoad),
            kernel(c, T + 10, SensitiveFileWrite),
            kernel(c, T + 11, SensitiveFileWrite),
            kernel(c, T + 12, SensitiveFileRead),
            kernel(c, T + 13, SensitiveFileRead),
            kernel(c, T + 14, PacketSocket),
            connect(c, T + 15, "2001:db8::10", 443),
            exec(c, 1_610_667_600_500, "nc"), // older form: top-level time only
        ]
    );
    assert_eq!(stats.lines, 19);
    assert_eq!(
        skips(&stats),
        vec![
            ("host_event", 1),
            ("unmapped_rule", 1),
            ("unsupported_source", 1)
        ]
    );
}

#[test]
fn tetragon_reference_lines() {
    let (events, stats) = read_fixture("tetragon.jsonl", parse_tetragon_line);
    assert_eq!(
        events,
        vec![exec("551e161c47d8", 1_696_629_837_700, "/usr/bin/curl")]
    );
    // The kprobe line (behind a CRI prefix) parses; `udp_sendmsg` maps to
    // no event (per-datagram sends are not connection attempts).
    assert_eq!(stats.lines, 2);
    assert_eq!(skips(&stats), vec![("unmapped_function", 1)]);
    let line = fs::read_to_string(fixtures().join("tetragon.jsonl")).unwrap();
    let kprobe = line.lines().nth(1).unwrap();
    let stripped = kprobe.split_once(" stdout F ").unwrap().1;
    // Same outcome with or without the CRI prefix.
    assert_eq!(parse_tetragon_line(kprobe), parse_tetragon_line(stripped));
}

#[test]
fn tetragon_kprobe_mapping() {
    use KernelEventKind::*;
    let c = "551e161c47d8";
    let t = |s: u64| 1_773_533_220_123 + s * 1000; // 2026-03-15T00:07:<s>.123
    let (events, stats) = read_fixture("tetragon-kprobes.jsonl", parse_tetragon_line);
    assert_eq!(
        events,
        vec![
            connect(c, t(1), "10.96.0.1", 443), // behind a CRI prefix
            kernel(c, t(2), Setuid),
            kernel(c, t(3), Capset),
            kernel(c, t(4), Mount),
            kernel(c, t(5), Mount),
            kernel(c, t(6), Ptrace),
            kernel(c, t(7), Setns),
            kernel(c, t(8), Unshare),
            kernel(c, t(9), ModuleLoad),
            kernel(c, t(10), SensitiveFileRead),
            kernel(c, t(11), SensitiveFileWrite),
            kernel(c, t(12), SensitiveFileRead),
            connect(c, t(13), "45.9.148.21", 4444), // sockaddr_arg, port as string
            kernel(c, t(14), Setuid),
            exec(c, t(15), "/bin/sh"), // camelCase, process.docker only
        ]
    );
    assert_eq!(stats.lines, 19);
    assert_eq!(
        skips(&stats),
        vec![
            ("cri_partial_line", 1),
            ("host_event", 1),
            ("non_sensitive_file", 1),
            ("unsupported_event", 1),
        ]
    );
}

#[test]
fn malformed_lines_all_skipped() {
    let total = fs::read(fixtures().join("malformed.jsonl"))
        .unwrap()
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u64;
    for (name, stats) in [
        ("falco", read_fixture("malformed.jsonl", parse_falco_line)),
        (
            "tetragon",
            read_fixture("malformed.jsonl", parse_tetragon_line),
        ),
    ]
    .map(|(n, (evs, st))| {
        assert!(evs.is_empty(), "{n}: {evs:?}");
        (n, st)
    }) {
        assert_eq!(stats.lines, total, "{name}");
        assert_eq!(stats.events, 0, "{name}");
        assert_eq!(stats.skipped(), total, "{name}: {stats:?}");
        for r in [
            "invalid_json",
            "empty_line",
            "invalid_utf8",
            "not_an_object",
            "cri_partial_line",
        ] {
            assert!(
                stats.skipped_by_reason.contains_key(r),
                "{name}: {r} in {stats:?}"
            );
        }
    }
    let (_, falco) = read_fixture("malformed.jsonl", parse_falco_line);
    for r in ["invalid_field", "invalid_timestamp", "invalid_container_id"] {
        assert!(falco.skipped_by_reason.contains_key(r), "{r} in {falco:?}");
    }
}

#[test]
fn over_long_line_is_skipped_without_buffering() {
    let good = fs::read_to_string(fixtures().join("falco.jsonl")).unwrap();
    let good = good.lines().nth(1).unwrap();
    let mut input = Vec::new();
    input.extend(std::iter::repeat_n(b'x', 3 * 1024 * 1024));
    input.push(b'\n');
    input.extend_from_slice(good.as_bytes());
    input.extend_from_slice(b"\r\n");
    input.extend(std::iter::repeat_n(b'{', 2 * 1024 * 1024)); // unterminated at EOF
    let mut r = JsonLineReader::new(Cursor::new(input), parse_falco_line);
    let evs = r.read_all().unwrap();
    assert_eq!(evs, vec![exec("5892b41bcf46", 1_610_667_584_834, "sh")]);
    assert_eq!(r.stats().lines, 3);
    assert_eq!(skips(r.stats()), vec![("line_too_long", 2)]);

    // A small limit applies too.
    let mut r = JsonLineReader::new(Cursor::new(format!("{good}\n")), parse_falco_line)
        .with_max_line_bytes(64);
    assert!(r.read_all().unwrap().is_empty());
    assert_eq!(skips(r.stats()), vec![("line_too_long", 1)]);
}

#[test]
fn follow_file_appends_truncation_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tetragon.log");
    let lines = fs::read_to_string(fixtures().join("tetragon-kprobes.jsonl")).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    let mut ff = FollowFile::new(&path, StartAt::Beginning, parse_tetragon_line)
        .with_poll_interval(Duration::from_millis(5));
    // Not there yet.
    assert!(ff.poll().unwrap().is_empty());
    let mut f = fs::File::create(&path).unwrap();
    writeln!(f, "{}", lines[1]).unwrap();
    assert_eq!(ff.poll().unwrap().len(), 1);
    // A half-written line waits for its newline.
    let (head, tail) = lines[2].split_at(40);
    write!(f, "{head}").unwrap();
    f.flush().unwrap();
    assert!(ff.poll().unwrap().is_empty());
    writeln!(f, "{tail}").unwrap();
    assert_eq!(
        plain(ff.wait_events(Duration::from_secs(2)).unwrap()),
        vec![kernel(
            "551e161c47d8",
            1_773_533_223_123,
            KernelEventKind::Capset
        )]
    );
    // copytruncate: the file shrinks and is rewritten.
    drop(f);
    fs::write(&path, format!("{}\n", lines[5])).unwrap();
    assert_eq!(
        plain(ff.poll().unwrap()),
        vec![kernel(
            "551e161c47d8",
            1_773_533_226_123,
            KernelEventKind::Ptrace
        )]
    );
    assert_eq!(ff.truncations(), 1);
    // Rotation: the writer appends a last line to the old file, then a new
    // file appears at the path.
    let old = tmp.path().join("tetragon.log.1");
    fs::rename(&path, &old).unwrap();
    let mut o = fs::OpenOptions::new().append(true).open(&old).unwrap();
    writeln!(o, "{}", lines[6]).unwrap();
    assert_eq!(ff.poll().unwrap().len(), 1); // old tail, no new file yet
    writeln!(o, "{}", lines[7]).unwrap();
    fs::write(&path, format!("{}\n", lines[8])).unwrap();
    let evs = ff.poll().unwrap();
    let kinds: Vec<_> = evs
        .iter()
        .map(|e| match e {
            Event::Kernel { kind, .. } => *kind,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![KernelEventKind::Unshare, KernelEventKind::ModuleLoad]
    );
    assert_eq!(ff.rotations(), 1);
    assert_eq!(ff.stats().events, 6);
    // Nothing new: wait_events returns empty after the timeout.
    assert!(
        ff.wait_events(Duration::from_millis(20))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn follow_file_start_at_end() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("falco.log");
    let src = fs::read_to_string(fixtures().join("falco.jsonl")).unwrap();
    fs::write(&path, &src).unwrap();
    let mut ff = FollowFile::new(&path, StartAt::End, parse_falco_line);
    assert!(ff.poll().unwrap().is_empty());
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    writeln!(f, "{}", src.lines().nth(1).unwrap()).unwrap();
    assert_eq!(ff.poll().unwrap().len(), 1);
    assert_eq!(ff.stats().lines, 1);
}

// ---------------------------------------------------------------- proptests

const KEYS: &[&str] = &[
    "rule",
    "output_fields",
    "time",
    "source",
    "sample",
    "container.id",
    "evt.time",
    "evt.type",
    "evt.is_open_write",
    "evt.arg.flags",
    "evt.arg.domain",
    "proc.name",
    "proc.exepath",
    "proc.exe",
    "proc.cmdline",
    "fd.sip",
    "fd.sport",
    "fd.rip",
    "fd.rport",
    "fd.name",
    "process_exec",
    "processExec",
    "process_kprobe",
    "processKprobe",
    "process_exit",
    "process",
    "pod",
    "container",
    "id",
    "docker",
    "binary",
    "function_name",
    "functionName",
    "args",
    "sock_arg",
    "sockaddr_arg",
    "daddr",
    "dport",
    "addr",
    "port",
    "file_arg",
    "path_arg",
    "path",
    "int_arg",
    "string_arg",
];

const STRINGS: &[&str] = &[
    "execve",
    "connect",
    "openat",
    "socket",
    "setuid",
    "dup2",
    "AF_PACKET",
    "O_WRONLY",
    "host",
    "",
    "28c0c7a20575",
    "containerd://551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3",
    "2023-10-06T22:03:57.700326678Z",
    "1740609587261363951",
    "tcp_connect",
    "__x64_sys_socket",
    "security_file_permission",
    "fd_install",
    "/etc/shadow",
    "/x/release_agent",
    "10.0.0.1",
    "::1",
    "1.2.3.4:5->6.7.8.9:10",
    "Terminal shell in container",
    "Mount Launched in Privileged Container",
    "Falco internal: x",
    "syscall",
];

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(STRINGS).prop_map(str::to_string),
        any::<String>(),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(KEYS).prop_map(str::to_string),
            1 => any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like the real top level, with arbitrary insides.
fn arb_shaped() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["process_exec", "process_kprobe", "processKprobe", "rule"][..]),
        arb_json(),
        arb_json(),
        arb_string(),
    )
        .prop_map(|(k, body, extra, s)| {
            let mut m = serde_json::Map::new();
            if k == "rule" {
                m.insert("rule".into(), Value::String(s));
                m.insert("output_fields".into(), body);
                m.insert("time".into(), extra);
            } else {
                let mut b = serde_json::Map::new();
                b.insert("process".into(), body);
                b.insert("function_name".into(), Value::String(s));
                b.insert("args".into(), extra);
                m.insert(k.into(), Value::Object(b));
                m.insert(
                    "time".into(),
                    Value::String("2026-03-15T00:06:31.621475905Z".into()),
                );
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsers_never_panic_on_strings(s in any::<String>()) {
        let _ = parse_falco_line(&s);
        let _ = parse_tetragon_line(&s);
        let _ = parse_net_dev(&s);
        let _ = parse_io_stat(&s);
        let _ = parse_blkio_service_bytes(&s);
        let _ = parse_flat_keyed(&s, &["usage_usec", "nr_periods"]);
        let _ = classify_cgroup_path(Path::new(&s));
    }

    #[test]
    fn parsers_never_panic_on_json(v in prop_oneof![arb_json(), arb_shaped()]) {
        let line = v.to_string();
        for evs in [parse_falco_line(&line), parse_tetragon_line(&line)].into_iter().flatten() {
            prop_assert!(!evs.is_empty() && evs.len() <= 2);
            for e in &evs {
                prop_assert_eq!(e.container().0.len(), 12);
            }
        }
        // Also behind a CRI prefix.
        let _ = parse_tetragon_line(&format!("2026-03-15T00:06:32Z stdout F {line}"));
    }

    #[test]
    fn reader_accounts_for_every_line(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        max in 1usize..64,
    ) {
        let nl = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        let trailing = u64::from(!bytes.is_empty() && bytes.last() != Some(&b'\n'));
        let mut r = JsonLineReader::new(Cursor::new(bytes), parse_falco_line)
            .with_max_line_bytes(max);
        let evs = r.read_all().unwrap();
        let st = r.stats();
        prop_assert_eq!(st.lines, nl + trailing);
        prop_assert_eq!(st.events, evs.len() as u64);
        prop_assert!(st.skipped() <= st.lines);
        if evs.is_empty() {
            prop_assert_eq!(st.skipped(), st.lines);
        }
    }
}

#[test]
fn kernel_details_from_falco_and_tetragon_fixtures() {
    use fedmesh_node::telemetry::KernelDetail;
    fn details(
        name: &str,
        parser: fedmesh_node::telemetry::events::LineParser,
    ) -> Vec<KernelDetail> {
        let text = fs::read_to_string(fixtures().join(name)).unwrap();
        text.lines()
            .filter_map(|l| parser(l).ok())
            .flatten()
            .filter_map(|e| match e {
                Event::Kernel { detail, .. } => Some(detail.map(|d| *d).unwrap_or_default()),
                _ => None,
            })
            .collect()
    }
    let falco = details("falco-rules.jsonl", parse_falco_line);
    let su = falco
        .iter()
        .find(|d| d.process.as_deref() == Some("su"))
        .unwrap();
    assert_eq!(su.user.as_deref(), Some("www-data"));
    assert!(
        falco
            .iter()
            .any(|d| d.path.as_deref() == Some("/sys/fs/cgroup/rdma/release_agent"))
    );
    assert!(
        falco
            .iter()
            .any(|d| d.request.as_deref() == Some("PTRACE_ATTACH"))
    );
    let tet = details("tetragon-kprobes.jsonl", parse_tetragon_line);
    let setuid = tet.iter().find(|d| d.target_uid.is_some()).unwrap();
    assert_eq!((setuid.uid, setuid.target_uid), (Some(0), Some(0)));
    assert_eq!(setuid.process.as_deref(), Some("/usr/bin/python3"));
    assert!(
        tet.iter()
            .any(|d| d.capability.as_deref() == Some("CAP_SYS_ADMIN"))
    );
    assert!(
        tet.iter()
            .any(|d| d.request.as_deref() == Some("PTRACE_ATTACH"))
    );
    assert!(tet.iter().any(|d| d.path.as_deref() == Some("/etc/shadow")));
    // Falco renders uids as `0(root)`: the leading number is taken.
    let line = r#"{"rule":"Non sudo setuid","time":"2021-01-14T23:40:00Z","output_fields":{"container.id":"28c0c7a20575","evt.type":"setuid","evt.arg.uid":"0(root)","user.uid":1000,"proc.name":"exploit"}}"#;
    let evs = parse_falco_line(line).unwrap();
    let Event::Kernel {
        detail: Some(d), ..
    } = &evs[0]
    else {
        panic!("{evs:?}")
    };
    assert_eq!((d.uid, d.target_uid), (Some(1000), Some(0)));
    // Serialized events without details keep their old shape.
    let plain = serde_json::to_string(&kernel("c", 1, KernelEventKind::Mount)).unwrap();
    assert!(!plain.contains("detail"), "{plain}");
}

/// Edge cases of the typed (borrowed) JSON reading that the Value-tree
/// parsers defined: duplicate keys keep the last value, camelCase keys are
/// accepted for Tetragon (a present snake_case key wins, even when `null`),
/// escaped strings and keys decode, numbers may be strings, `null` is
/// absent, and bad JSON anywhere in the line (even in keys no parser reads)
/// is refused as before.
#[test]
fn typed_json_edge_cases() {
    let falco = |of: &str, extra: &str| {
        format!(
            r#"{{"rule":"Terminal shell in container","time":"2021-01-14T23:39:44Z"{extra},"output_fields":{{"container.id":"5892b41bcf46",{of}}}}}"#
        )
    };
    // Duplicate keys: the last one wins (as in a serde_json::Value).
    assert_eq!(
        parse_falco_line(&falco(r#""proc.name":"a","proc.name":"sh""#, "")),
        Ok(vec![exec("5892b41bcf46", 1_610_667_584_000, "sh")])
    );
    assert_eq!(
        parse_falco_line(&falco(
            r#""proc.name":"sh""#,
            r#","rule":"Falco internal: syscall event drop""#
        )),
        Err(ParseError::SensorInternal)
    );
    // Escapes in values and keys.
    assert_eq!(
        parse_falco_line(&falco(r#""proc.\u006eame":"\/bin\/s\u0068""#, "")),
        Ok(vec![exec("5892b41bcf46", 1_610_667_584_000, "/bin/sh")])
    );
    // Numbers as strings; `null` = absent; a present but `null` evt.time
    // with no usable `time` is an invalid timestamp.
    assert_eq!(
        parse_falco_line(&falco(
            r#""proc.name":"sh","evt.time":" 1740609600001000000 ""#,
            ""
        )),
        Ok(vec![exec("5892b41bcf46", 1_740_609_600_001, "sh")])
    );
    assert_eq!(
        parse_falco_line(&falco(r#""proc.exepath":null,"proc.name":"sh""#, "")),
        Ok(vec![exec("5892b41bcf46", 1_610_667_584_000, "sh")])
    );
    assert_eq!(
        parse_falco_line(
            r#"{"rule":"Terminal shell in container","output_fields":{"container.id":"5892b41bcf46","proc.name":"sh","evt.time":null}}"#
        ),
        Err(ParseError::InvalidTimestamp)
    );
    // Bad JSON in a key no parser reads is still bad JSON.
    for bad in [
        r#","hostname":1e400"#,
        r#","tags":["\x"]"#,
        r#","hostname":"a"  "b""#,
    ] {
        assert_eq!(
            parse_falco_line(&falco(r#""proc.name":"sh""#, bad)).map_err(|e| e.reason()),
            Err("invalid_json"),
            "{bad}"
        );
    }
    // serde_json's `Value` (with its `raw_value` feature, which another
    // dependency turns on) replaced an object whose first key is its private
    // raw-value token by the parse of the string inside; the typed reading
    // sees an object without `rule` (accepted difference).
    let smuggled = serde_json::to_string(&serde_json::json!({
        "$serde_json::private::RawValue": falco(r#""proc.name":"sh""#, "")
    }))
    .unwrap();
    assert_eq!(
        parse_falco_line(&smuggled),
        Err(ParseError::MissingField("rule"))
    );
    let deep = format!(
        "{{\"rule\":\"x\",\"junk\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(
        parse_falco_line(&deep).map_err(|e| e.reason()),
        Err("invalid_json")
    );

    let tet = |body: &str| format!(r#"{{{body},"node_name":"n","time":"2026-03-15T00:06:31Z"}}"#);
    let cid = "containerd://551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3";
    // camelCase event and argument keys.
    let camel = tet(&format!(
        r#""processKprobe":{{"process":{{"binary":"/x","pod":{{"container":{{"id":"{cid}"}}}}}},"functionName":"tcp_connect","args":[{{"sockArg":{{"daddr":"10.0.0.1","dport":"443"}}}}]}}"#
    ));
    assert_eq!(
        parse_tetragon_line(&camel),
        Ok(vec![connect(
            "551e161c47d8",
            1_773_533_191_000,
            "10.0.0.1",
            443
        )])
    );
    // A snake_case key hides its camelCase twin, even when it is null.
    let hidden = camel.replace(
        r#""functionName""#,
        r#""function_name":null,"functionName""#,
    );
    assert_eq!(
        parse_tetragon_line(&hidden),
        Err(ParseError::MissingField("function_name"))
    );
    // Duplicate event keys: the last body wins.
    let dup = tet(&format!(
        r#""process_exec":{{"process":{{"binary":"/a","docker":"zz"}}}},"process_exec":{{"process":{{"binary":"/bin/sh","pod":{{"container":{{"id":"{cid}"}}}}}}}}"#
    ));
    assert_eq!(
        parse_tetragon_line(&dup),
        Ok(vec![exec("551e161c47d8", 1_773_533_191_000, "/bin/sh")])
    );
}
