//! Throughput of the detection path (criterion):
//!
//! - `parse/*`: Falco and Tetragon JSON lines (the reference examples and
//!   the parser fixtures, re-labelled across 100 containers) through the
//!   parsers alone, against two baselines over the same bytes: a
//!   memory-bandwidth pass (byte sum) and `serde_json::from_str` into a
//!   `serde_json::Value`.
//! - `parse_features/*`: the same lines through the parser into a
//!   [`WindowBuilder`], closing a window every 10,000 lines.
//! - `score/*`: windows scored per second by a [`Detector`] with the
//!   default model and with a ~1.1M-parameter model, in batches
//!   (`score/*`) and one window at a time (`score_one/*`).
//! - `netns/*`: the `netns` source's cost per container and window. Live
//!   `/proc` reads of one namespace's `net/snmp` (every window) and of
//!   `tcp` + `tcp6` (only after new active opens) — of this process, or of
//!   `FEDMESH_BENCH_NETNS_PID` — against the cgroup source's existing
//!   per-container read of `net/dev` (the baseline); parsing and deltas of
//!   100 namespaces of 24 sockets each, tables included
//!   (`NetnsTracker::step`); and a whole `NetnsCollector::sample` of a
//!   fixture host with 100 quiet containers (discovery in a cgroup v1 tree,
//!   `snmp` only after the first sample, files on disk rather than procfs).
//!
//! Run: `cargo bench -p fedmesh-node --bench pipeline`. Throughput is in
//! elements (lines, windows) per second.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fedmesh_node::detection::detector::Detector;
use fedmesh_node::detection::features::{FeatureWindow, NUM_FEATURES, WindowBuilder};
use fedmesh_node::detection::model::{Autoencoder, ModelSpec};
use fedmesh_node::detection::scaler::Scaler;
use fedmesh_node::telemetry::events::ParseError;
use fedmesh_node::telemetry::falco::parse_falco_line;
use fedmesh_node::telemetry::tetragon::parse_tetragon_line;
use fedmesh_node::telemetry::{ContainerId, Event};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Parser = fn(&str) -> Result<Vec<Event>, ParseError>;

const FALCO: [&str; 2] = [
    include_str!("../tests/fixtures/falco.jsonl"),
    include_str!("../tests/fixtures/falco-rules.jsonl"),
];
const TETRAGON: [&str; 2] = [
    include_str!("../tests/fixtures/tetragon.jsonl"),
    include_str!("../tests/fixtures/tetragon-kprobes.jsonl"),
];

/// Container ids that appear in the fixtures, replaced per container.
const IDS: [&str; 3] = [
    "551e161c47d8ff0eb665438a7bcd5b4e3ef5a297282b40a92b7c77d6bd168eb3",
    "28c0c7a20575",
    "5892b41bcf46",
];

/// Every fixture line that yields at least one event, copied for 100
/// containers (the first four hex digits of every known id replaced), in an
/// interleaved order.
fn corpus(sources: &[&str], parser: Parser) -> Vec<String> {
    let base: Vec<&str> = sources
        .iter()
        .flat_map(|s| s.lines())
        .filter(|l| parser(l).is_ok_and(|e| !e.is_empty()))
        .collect();
    assert!(!base.is_empty(), "no usable fixture lines");
    let mut out = Vec::with_capacity(base.len() * 100);
    for c in 0..100u32 {
        for l in &base {
            let mut line = l.to_string();
            for id in IDS {
                line = line.replace(id, &format!("{c:04x}{}", &id[4..]));
            }
            out.push(line);
        }
    }
    // Deterministic shuffle so consecutive lines hit different containers.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for i in (1..out.len()).rev() {
        out.swap(i, rng.random_range(0..=i));
    }
    out
}

fn bench_parse(c: &mut Criterion) {
    for (name, sources, parser) in [
        ("falco", &FALCO[..], parse_falco_line as Parser),
        ("tetragon", &TETRAGON[..], parse_tetragon_line as Parser),
    ] {
        let lines = corpus(sources, parser);
        let bytes: usize = lines.iter().map(String::len).sum();
        let mut g = c.benchmark_group(format!("parse/{name}"));
        g.throughput(Throughput::Elements(lines.len() as u64));
        println!(
            "{name}: {} lines, {:.0} bytes/line",
            lines.len(),
            bytes as f64 / lines.len() as f64
        );
        g.bench_function("baseline_byte_sum", |b| {
            b.iter(|| {
                let mut s = 0u64;
                for l in &lines {
                    for &x in l.as_bytes() {
                        s = s.wrapping_add(u64::from(x));
                    }
                }
                black_box(s)
            })
        });
        g.bench_function("baseline_serde_json_value", |b| {
            b.iter(|| {
                let mut n = 0usize;
                for l in &lines {
                    let json = l.find('{').map_or(l.as_str(), |i| &l[i..]);
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
                        n += v.as_object().map_or(0, |o| o.len());
                    }
                }
                black_box(n)
            })
        });
        g.bench_function("parser", |b| {
            b.iter(|| {
                let mut n = 0usize;
                for l in &lines {
                    n += parser(l).map_or(0, |e| e.len());
                }
                black_box(n)
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("parse_features/{name}"));
        g.throughput(Throughput::Elements(lines.len() as u64));
        g.bench_function("parser_into_window_builder", |b| {
            b.iter_batched_ref(
                WindowBuilder::new,
                |wb| {
                    let mut windows = 0usize;
                    for (i, l) in lines.iter().enumerate() {
                        if let Ok(evs) = parser(l) {
                            for e in &evs {
                                wb.push(e);
                            }
                        }
                        if i % 10_000 == 9_999 {
                            windows += wb.close(i as u64).len();
                        }
                    }
                    windows += wb.close(u64::MAX).len();
                    black_box(windows)
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

fn windows(n: usize) -> Vec<FeatureWindow> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    (0..n)
        .map(|i| {
            let mut features = [0.0f32; NUM_FEATURES];
            for f in &mut features {
                *f = rng.random_range(0.0..3.0);
            }
            FeatureWindow {
                container: ContainerId(format!("c{}", i % 100)),
                start_ms: 0,
                end_ms: 10_000,
                features,
                restarted: false,
            }
        })
        .collect()
}

fn bench_score(c: &mut Criterion) {
    let big = ModelSpec {
        input_dim: NUM_FEATURES,
        hidden: vec![1024, 512],
    };
    for (name, spec, n) in [
        ("default", ModelSpec::default_for_features(), 1000usize),
        ("1.1M_params", big, 100),
    ] {
        let params = spec.param_count();
        let det = Detector {
            model: Autoencoder::new_random(spec, &mut ChaCha8Rng::seed_from_u64(1))
                .unwrap_or_else(|e| unreachable!("bench model: {e}")),
            scaler: Scaler::identity(NUM_FEATURES),
            threshold: 1.0,
        };
        let ws = windows(n);
        let mut g = c.benchmark_group("score");
        g.throughput(Throughput::Elements(n as u64));
        println!("score/{name}: {params} parameters, batches of {n} windows");
        g.bench_function(format!("{name}_batch_{n}"), |b| {
            b.iter(|| black_box(det.score_windows(&ws).map_or(0, |s| s.len())))
        });
        g.finish();
        let mut g = c.benchmark_group("score_one");
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}_one_window"), |b| {
            b.iter(|| black_box(det.score_windows(&ws[..1]).map_or(0, |s| s.len())))
        });
        g.finish();
    }
}

/// A namespace's `tcp` table: a listener, 8 accepted connections, 12
/// outbound ones and 3 in `TIME_WAIT` (24 rows), varied by `salt`.
fn tcp_fixture(salt: u32) -> String {
    let hex = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
    let me = [172, 17, (salt >> 8) as u8, salt as u8];
    let mut t = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    );
    let mut row = |i: usize, local: ([u8; 4], u16), remote: ([u8; 4], u16), st: u8| {
        t.push_str(&format!(
            "{i:4}: {}:{:04X} {}:{:04X} {st:02X} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 30 10 -1\n",
            hex(local.0),
            local.1,
            hex(remote.0),
            remote.1,
            1000 + i
        ));
    };
    row(0, ([0, 0, 0, 0], 8080), ([0, 0, 0, 0], 0), 0x0A);
    for i in 1..9 {
        row(i, (me, 8080), ([10, 0, 1, i as u8], 40000 + i as u16), 0x01);
    }
    for i in 9..21 {
        row(i, (me, 50000 + i as u16), ([10, 0, 2, i as u8], 5432), 0x01);
    }
    for i in 21..24 {
        row(i, (me, 50000 + i as u16), ([10, 0, 3, i as u8], 443), 0x06);
    }
    t
}

fn snmp_fixture(n: u64) -> String {
    format!(
        "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits\n\
Ip: 1 64 {n} 0 0 0 0 0 {n} {n} 0 0 0 0 0 0 0 0 0 {n}\n\
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs\nIcmp: 0 0 0 0\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
Tcp: 1 200 120000 -1 {n} {n} 0 0 20 {n} {n} 0 0 0 0\n\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\nUdp: 0 0 0 0 0 0 0 0 0\n"
    )
}

fn bench_netns(c: &mut Criterion) {
    use fedmesh_node::telemetry::netns::{NetnsCollector, NetnsReading, NetnsStats, NetnsTracker};
    use fedmesh_node::telemetry::proc::{parse_net_dev, read_small};
    let pid = std::env::var("FEDMESH_BENCH_NETNS_PID").unwrap_or_else(|_| "self".into());
    let net = std::path::Path::new("/proc").join(&pid).join("net");
    let mut g = c.benchmark_group("netns");
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_net_dev_baseline", |b| {
        b.iter(|| {
            black_box(read_small(&net.join("dev")).map_or(0, |t| parse_net_dev(&t).interfaces))
        })
    });
    g.bench_function("read_snmp", |b| {
        b.iter(|| black_box(read_small(&net.join("snmp")).map_or(0, |t| t.len())))
    });
    g.bench_function("read_tcp_tcp6", |b| {
        b.iter(|| {
            let n: usize = ["tcp", "tcp6"]
                .iter()
                .map(|f| read_small(&net.join(f)).map_or(0, |t| t.len()))
                .sum();
            black_box(n)
        })
    });
    // Parsing and deltas: 100 namespaces, counters moving every reading.
    let tables: Vec<String> = (0..100).map(tcp_fixture).collect();
    let readings = |tick: u64| -> Vec<NetnsReading> {
        tables
            .iter()
            .enumerate()
            .map(|(i, t)| NetnsReading {
                netns: 4_026_532_000 + i as u64,
                members: vec![ContainerId(format!("{i:012x}"))],
                snmp: snmp_fixture(1000 + tick * (i as u64 + 1)),
                tcp: Some(t.clone()),
                tcp6: Some(String::from(
                    "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
                )),
                raw: Some(String::from(
                    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n",
                )),
                raw6: None,
                packet: Some(String::from(
                    "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n",
                )),
            })
            .collect()
    };
    let batches: Vec<Vec<NetnsReading>> = (0..2).map(readings).collect();
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_step_100_namespaces", |b| {
        let mut t = NetnsTracker::new();
        let mut tick = 0u64;
        b.iter(|| {
            tick += 1;
            let mut st = NetnsStats::default();
            let ev = t.step(tick * 10_000, &batches[(tick % 2) as usize], &mut st);
            black_box(ev.len())
        })
    });
    // A whole sample of a fixture host: 100 containers in a cgroup v1
    // tree, one process each, its own namespace files.
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let (cg, proc) = (dir.path().join("cgroup"), dir.path().join("proc"));
    let built = (0..100u32).try_for_each(|i| -> std::io::Result<()> {
        // Distinct in the first 12 digits (the short id).
        let id = format!("{i:012x}{}", "a".repeat(52));
        let d = cg.join("pids/docker").join(&id);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("cgroup.procs"), format!("{}\n", 20_000 + i))?;
        let n = proc.join((20_000 + i).to_string()).join("net");
        std::fs::create_dir_all(&n)?;
        std::fs::write(n.join("snmp"), snmp_fixture(u64::from(i)))?;
        std::fs::write(n.join("tcp"), tcp_fixture(i))?;
        Ok(())
    });
    let Ok(mut coll) = built.and_then(|()| {
        NetnsCollector::new(cg.clone(), proc.clone()).map_err(std::io::Error::other)
    }) else {
        return;
    };
    if let Ok((ev, st)) = coll.sample(1) {
        println!(
            "netns fixture: {} containers, {} events, {} tables read at the first sample",
            st.containers,
            ev.len(),
            st.tables
        );
    }
    g.bench_function("collector_sample_100_quiet_containers", |b| {
        let mut ts = 0u64;
        b.iter(|| {
            ts += 10_000;
            black_box(coll.sample(ts).map_or(0, |(ev, _)| ev.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_parse, bench_score, bench_netns);
criterion_main!(benches);
