//! The real `fedmesh-node` binary with a Falco file source, a webhook
//! receiver, a fake Docker Engine API (identity) and dry-run responses:
//! one `Non sudo setuid` line reaches the webhook as a named rule alert,
//! followed by the response record (refused: the node is still learning),
//! the refusal is counted on `/metrics`, and no request but the container
//! list reaches the Docker API.
// Test crate: helpers outside `#[test]` fns may unwrap and panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Log = Arc<Mutex<Vec<String>>>;

const FALCO_SETUID: &str = r#"{"hostname":"node-1","output":"Non sudo setuid (...)","priority":"Warning","rule":"Non sudo setuid","source":"syscall","tags":["container"],"output_fields":{"container.id":"28c0c7a20575","evt.type":"setuid","evt.arg.uid":"0(root)","proc.name":"su","user.name":"www-data","user.uid":33,"evt.time":1740609600003000000}}"#;

async fn fake_docker(socket: &std::path::Path) -> Log {
    let log: Log = Arc::default();
    let l2 = log.clone();
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let log = l2.clone();
        async move {
            log.lock()
                .unwrap()
                .push(format!("{} {}", req.method(), req.uri().path()));
            if req.uri().path() == "/containers/json" {
                (
                    StatusCode::OK,
                    axum::Json(serde_json::json!([{
                        "Id": "28c0c7a20575aa11bb22cc33dd44ee55ff6677889900aabbccddeeff00112233",
                        "Names": ["/shop-web"],
                        "Image": "nginx:1.27",
                        "Labels": {"io.kubernetes.pod.name": "shop-web-7d9f", "io.kubernetes.pod.namespace": "prod"},
                        "NetworkSettings": {"Networks": {"frontend": {}}}
                    }])),
                )
            } else {
                (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({})))
            }
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    log
}

async fn webhook() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let seen = s2.clone();
            async move {
                seen.lock().unwrap().push(v);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

async fn metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_raises_named_rule_alert_to_webhook_with_dry_run_response() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let docker_log = fake_docker(&socket).await;
    let (hook_port, seen) = webhook().await;
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let events = dir.path().join("falco.json");
    std::fs::write(&events, "").unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"tenant = "acme"
node = "n1"
data_dir = "data"
window_ms = 500
metrics_listen = "127.0.0.1:{metrics_port}"
[source]
kind = "falco"
path = "falco.json"
from_start = true
[alerts]
stdout = false
file = "alerts.jsonl"
[alerts.webhook]
url = "http://127.0.0.1:{hook_port}/alerts"
initial_backoff_ms = 50
max_backoff_ms = 200
[docker]
socket = "{}"
refresh_s = 60
min_refresh_s = 0
[response]
mode = "dry-run"
min_severity = "critical"
[incidents]
close_after_windows = 100
"#,
            socket.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fedmesh-node"))
        .args(["run", "--config"])
        .arg(&config)
        .env("FEDMESH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    // Wait until the identity cache is filled (first list request), then
    // write the event.
    let start = Instant::now();
    while docker_log.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&events)
        .unwrap();
    writeln!(f, "{FALCO_SETUID}").unwrap();
    drop(f);
    while seen.lock().unwrap().len() < 2 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alerts = seen.lock().unwrap().clone();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    // The response record: this node has no detector yet, so it is
    // learning and the response layer refuses to act.
    let r = &alerts[1];
    assert_eq!(r["response"]["alert"], alerts[0]["id"]);
    assert_eq!(r["response"]["result"], "refused");
    assert_eq!(r["response"]["reason"], "learning");
    assert_ne!(r["id"], alerts[0]["id"]);
    let a = &alerts[0];
    assert_eq!(a["state"], "open");
    assert_eq!(a["opened_by"], "rule");
    assert_eq!(a["rules"][0]["id"], "setuid_root");
    assert_eq!(a["incident"].as_str().map(str::len), Some(32));
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["container"], "28c0c7a20575");
    assert_eq!(a["container_name"], "shop-web");
    assert_eq!(a["image"], "nginx:1.27");
    assert_eq!(a["pod"], "shop-web-7d9f");
    assert_eq!(a["namespace"], "prod");
    assert_eq!(a["tenant"], "acme");
    assert_eq!(a["id"].as_str().map(str::len), Some(32));
    // The same alert in the JSON-lines file.
    let lines = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap();
    assert!(lines.contains(a["id"].as_str().unwrap()), "{lines}");
    // Metrics: rule hit, delivery, dry-run response; outbox drained.
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics(metrics_port).await;
        if text.contains("result=\"learning\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for needle in [
        "fedmesh_node_rule_hits_total{rule=\"setuid_root\"} 1",
        "fedmesh_node_incidents_opened_total{severity=\"critical\"} 1",
        "fedmesh_node_incidents_open 1",
        "fedmesh_node_webhook_delivered_total 2",
        "fedmesh_node_webhook_outbox_depth 0",
        "fedmesh_node_responses_total{action=\"pause\",mode=\"dry-run\",result=\"learning\"} 1",
        "fedmesh_node_docker_errors_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // Learning: the container was not even inspected; the Docker API saw
    // container listings only.
    let calls = docker_log.lock().unwrap().clone();
    assert!(
        calls.iter().all(|c| c == "GET /containers/json"),
        "{calls:?}"
    );
}
