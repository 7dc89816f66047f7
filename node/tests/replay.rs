//! Replays the committed real-workload recording (bench/workload/fixture:
//! a live `bench/workload/run.sh` run of real services and real attacks in
//! Docker, recorded by the node) through `fedmesh-node replay`'s library
//! path, with the recording node's own config, and checks that
//!
//! - the replay raises exactly the alerts the live node raised (same ids,
//!   containers, times, scores and rules: detection is deterministic and
//!   the replay path is the live path), and twice the same;
//! - every attack the live run caught is caught in the replay.
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

#[test]
fn the_recorded_run_replays_to_the_live_alerts_bit_for_bit() {
    let live: Vec<Alert> = std::fs::read_to_string(fixture().join("alerts.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, replayed) = run_replay();
    assert!(summary.windows > 100, "{summary:?}");
    assert_eq!(summary.alerts as usize, replayed.len());
    let live_keys: Vec<_> = live.iter().map(key).collect();
    let replay_keys: Vec<_> = replayed.iter().map(key).collect();
    assert_eq!(replay_keys, live_keys);
    let (again, replayed_again) = run_replay();
    assert_eq!(again, summary);
    assert_eq!(replayed_again, replayed);
    let live_caught = caught(&live);
    assert_eq!(caught(&replayed), live_caught);
    assert!(!live_caught.is_empty(), "the fixture catches some attack");
    eprintln!("replayed {summary:?}; attacks caught: {live_caught:?}");
}
