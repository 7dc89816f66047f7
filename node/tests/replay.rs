//! Replays the committed real-workload recording (bench/workload/fixture:
//! a live `bench/workload/run.sh` run of real services and real attacks in
//! Docker, recorded by the node) through `fedmesh-node replay`'s library
//! path, with the recording node's own config, and checks that
//!
//! - the replay is deterministic (twice the same alerts, bit for bit);
//! - it raises exactly `fixture/expected-alerts.jsonl`. When that file was
//!   made it was the live node's own `alerts.jsonl` (kept beside it): the
//!   replay path is the live path. A deliberate change to detection
//!   changes the expected alerts; regenerate them with
//!   `FEDMESH_BLESS=1 cargo test -p fedmesh-node --test replay` and review
//!   the diff;
//! - the attacks caught by cgroup counters alone in the live run
//!   (cryptojacking, fork storm, exfiltration, port scan) stay caught.
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
fn key(a: &Alert) -> (String, String, u64, Option<u32>, Option<String>) {
    (
        a.id.clone(),
        a.container.clone(),
        a.ts_ms,
        a.score.map(f32::to_bits),
        a.rule.as_ref().map(|r| r.id.clone()),
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

/// Attack kinds with at least one alert on their container between the
/// attack's start and two windows after its end.
fn caught(alerts: &[Alert]) -> Vec<String> {
    let dir = fixture();
    let ids: BTreeMap<String, String> = tsv(&dir.join("containers.tsv"))
        .into_iter()
        .map(|r| (r["name"].clone(), r["id"][..12].to_string()))
        .collect();
    tsv(&dir.join("attacks.tsv"))
        .into_iter()
        .filter(|a| {
            let id = &ids[&a["container"]];
            let start: u64 = a["start_ms"].parse().unwrap();
            let stop: u64 = a["stop_ms"].parse().unwrap();
            alerts
                .iter()
                .any(|x| &x.container == id && x.ts_ms >= start && x.ts_ms <= stop + 20_000)
        })
        .map(|a| a["kind"].clone())
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
    let caught_now = caught(&replayed);
    for kind in ["port_scan", "exfiltration", "cryptojacking", "fork_bomb"] {
        assert!(
            caught_now.iter().any(|k| k == kind),
            "{kind} no longer caught: {caught_now:?}"
        );
    }
    eprintln!("replayed {summary:?}; attacks caught: {caught_now:?}");
}

#[test]
fn the_live_alerts_were_the_replay_when_the_fixture_was_made() {
    // The fixture's own record: the live node's alerts equal the expected
    // replay as committed with the fixture (checked here so a bless that
    // changes the expected alerts must also say so by updating this test).
    let live = read_alerts(&fixture().join("alerts.jsonl"));
    assert_eq!(live.len(), 49);
    let caught_live = caught(&live);
    assert_eq!(
        caught_live,
        [
            "port_scan",
            "reverse_shell",
            "exfiltration",
            "cryptojacking",
            "fork_bomb"
        ]
    );
}
