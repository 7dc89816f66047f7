//! Replays the committed real-workload recording (bench/workload/fixture:
//! a live `bench/workload/run.sh` run of real services and real attacks in
//! Docker, recorded by the node) through `fedmesh-node replay`'s library
//! path, with the recording node's own config, and checks that
//!
//! - the replay is deterministic (twice the same alerts, bit for bit);
//! - it raises exactly `fixture/expected-alerts.jsonl`. Before incidents
//!   that file was the live node's own `alerts.jsonl` (kept beside it),
//!   which showed the replay path is the live path. A deliberate change to
//!   detection changes the expected records; regenerate them with
//!   `FEDMESH_BLESS=1 cargo test -p fedmesh-node --test replay` and review
//!   the diff;
//! - with incidents, the port scan, the reverse shell, the exfiltration,
//!   cryptojacking and the fork storm stay caught (the first two by the
//!   containers' own history: the cgroup counters alone give the fleet
//!   model too little), and no incident opens on a benign container (the
//!   live node, before incidents, raised 7 window alerts on them) nor on
//!   attack infrastructure but while the attack that uses it runs.
// Test crate: helpers outside `#[test]` fns may unwrap and panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fedmesh_node::alerting::alert::Alert;
use fedmesh_node::alerting::sink::{AlertError, AlertSink, AlertSinks};
use fedmesh_node::config::NodeConfig;
use fedmesh_node::runtime::replay::{ReplaySummary, replay};
use fedmesh_node::telemetry::recording::RecordingReader;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/workload/fixture")
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Alert>>>);

impl AlertSink for Collect {
    fn emit(&mut self, alert: &Alert) -> Result<(), AlertError> {
        self.0.lock().unwrap().push(alert.clone());
        Ok(())
    }
}

fn run_replay() -> (ReplaySummary, Vec<Alert>) {
    let dir = fixture();
    let cfg = NodeConfig::load(&dir.join("node.toml")).unwrap();
    cfg.validate().unwrap();
    let reader = RecordingReader::open(&dir.join("recording.jsonl")).unwrap();
    let seen = Collect::default();
    let summary = replay(&cfg, reader, AlertSinks::none().with_sink(seen.clone())).unwrap();
    let alerts = seen.0.lock().unwrap().clone();
    (summary, alerts)
}

/// What identifies a detection, without the names Docker gave it live.
fn key(a: &Alert) -> (String, String, u64, Option<u32>, Vec<String>) {
    (
        a.id.clone(),
        a.container.clone(),
        a.ts_ms,
        a.score.map(f32::to_bits),
        a.rules.iter().map(|r| r.id.clone()).collect(),
    )
}

fn tsv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: Vec<String> = lines
        .next()
        .unwrap()
        .split('\t')
        .map(String::from)
        .collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            head.iter()
                .cloned()
                .zip(l.split('\t').map(String::from))
                .collect()
        })
        .collect()
}

/// (kind, short container id, start, stop) of every attack.
fn attack_spans() -> Vec<(String, String, u64, u64)> {
    let dir = fixture();
    let ids: BTreeMap<String, String> = tsv(&dir.join("containers.tsv"))
        .into_iter()
        .map(|r| (r["name"].clone(), r["id"][..12].to_string()))
        .collect();
    tsv(&dir.join("attacks.tsv"))
        .into_iter()
        .map(|a| {
            (
                a["kind"].clone(),
                ids[&a["container"]].clone(),
                a["start_ms"].parse().unwrap(),
                a["stop_ms"].parse().unwrap(),
            )
        })
        .collect()
}

/// The scenario's attack infrastructure, the attacker's own servers, as
/// (attack kind that sends to it, short id): the mining pool, the
/// reverse-shell listener, the exfiltration sink.
fn infrastructure() -> Vec<(String, String)> {
    tsv(&fixture().join("containers.tsv"))
        .into_iter()
        .filter(|r| r["class"] == "infra")
        .map(|r| {
            let kind = match r["role"].as_str() {
                "pool" => "cryptojacking",
                "listener" => "reverse_shell",
                "sink" => "exfiltration",
                other => panic!("unknown infrastructure role {other}"),
            };
            (kind.to_string(), r["id"][..12].to_string())
        })
        .collect()
}

/// Attack kinds with at least one alert on their container between the
/// attack's start and two windows after its end.
fn caught(alerts: &[(String, u64)]) -> Vec<String> {
    attack_spans()
        .into_iter()
        .filter(|(_, id, start, stop)| {
            alerts
                .iter()
                .any(|(c, ts)| c == id && ts >= start && *ts <= stop + 20_000)
        })
        .map(|(kind, ..)| kind)
        .collect()
}

fn read_alerts(path: &Path) -> Vec<Alert> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_recorded_run_replays_deterministically_to_the_expected_alerts() {
    let (summary, replayed) = run_replay();
    assert!(summary.windows > 100, "{summary:?}");
    assert_eq!(summary.alerts as usize, replayed.len());
    let (again, replayed_again) = run_replay();
    assert_eq!(again, summary);
    assert_eq!(replayed_again, replayed);
    let expected_path = fixture().join("expected-alerts.jsonl");
    if std::env::var("FEDMESH_BLESS").as_deref() == Ok("1") {
        let mut text = String::new();
        for a in &replayed {
            text.push_str(&serde_json::to_string(a).unwrap());
            text.push('\n');
        }
        std::fs::write(&expected_path, text).unwrap();
    }
    let expected = read_alerts(&expected_path);
    let want: Vec<_> = expected.iter().map(key).collect();
    let got: Vec<_> = replayed.iter().map(key).collect();
    assert_eq!(
        got,
        want,
        "the replay differs from {}: if detection changed on purpose, regenerate it with FEDMESH_BLESS=1",
        expected_path.display()
    );
    let seen: Vec<(String, u64)> = replayed
        .iter()
        .map(|a| (a.container.clone(), a.ts_ms))
        .collect();
    let caught_now = caught(&seen);
    for kind in [
        "port_scan",
        "reverse_shell",
        "exfiltration",
        "cryptojacking",
        "fork_bomb",
    ] {
        assert!(
            caught_now.iter().any(|k| k == kind),
            "{kind} no longer caught: {caught_now:?}"
        );
    }
    // No false incident: every incident opens on an attacked container
    // while its attack runs (or within two windows after), or on the
    // attacker's server that attack sends to (the listener receiving the
    // shell, the pool the miner's sessions, the sink the upload).
    let spans = attack_spans();
    let infra = infrastructure();
    for a in replayed.iter().filter(|a| a.state.as_str() == "open") {
        assert!(
            spans.iter().any(|(kind, id, start, stop)| {
                let target = infra.iter().any(|(k, i)| k == kind && *i == a.container);
                (*id == a.container || target) && a.ts_ms >= *start && a.ts_ms <= stop + 20_000
            }),
            "a false incident: {a:?}"
        );
    }
    eprintln!("replayed {summary:?}; attacks caught: {caught_now:?}");
}

#[test]
fn the_live_run_is_kept_as_recorded() {
    // The live node's own records (per-window alerts: the node predates
    // incidents), kept beside the recording as the run's ground truth of
    // what it raised live: 49 alerts, five of six attacks.
    let live: Vec<(String, u64)> = std::fs::read_to_string(fixture().join("alerts.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["container"].as_str().unwrap().to_string(),
                v["ts_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(live.len(), 49);
    assert_eq!(
        caught(&live),
        [
            "port_scan",
            "reverse_shell",
            "exfiltration",
            "cryptojacking",
            "fork_bomb"
        ]
    );
}
