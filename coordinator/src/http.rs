//! The coordinator's HTTP listener (`metrics_listen`): Prometheus
//! `/metrics` from [`crate::metrics`], `/status` as [`TenantStatus`] JSON,
//! and the liveness probe `/healthz`. Read-only: it never changes a
//! federation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::federation::Federation;
use crate::metrics::Metrics;
use crate::status::TenantStatus;

/// Serves `/metrics`, `/status` and `/healthz` until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    feds: BTreeMap<String, Arc<Federation>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let feds = Arc::new(feds);
    let m = metrics.clone();
    let f2 = feds.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                let feds = f2.clone();
                async move {
                    for (t, f) in feds.iter() {
                        m.observe_state(t, f.version(), f.connected_count(), f.quarantined().len());
                    }
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let feds = feds.clone();
                async move {
                    axum::Json(
                        feds.values()
                            .map(|f| TenantStatus::of(f))
                            .collect::<Vec<_>>(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Address helper for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{StatusFetchError, TenantStatus, fetch_status, render_status};

    #[tokio::test]
    async fn live_status_is_fetched_and_rendered() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(
            l,
            Arc::new(Metrics::new()),
            BTreeMap::new(),
            async move {
                let _ = rx.await;
            },
        ));
        let v = fetch_status(&format!("http://{addr}/")).await.unwrap();
        assert!(v.is_empty());
        assert!(matches!(
            fetch_status("https://example.org").await,
            Err(StatusFetchError::BadUrl(_))
        ));
        let _ = tx.send(());
        server.await.unwrap().unwrap();
        assert!(matches!(
            fetch_status(&format!("http://{addr}")).await,
            Err(StatusFetchError::Io { .. })
        ));

        let v = serde_json::json!([{
            "tenant": "acme", "version": 3,
            "round": {"state": "open", "round": 4, "base_version": 3, "selected": ["a", "b"]},
            "connected": ["a", "b", "evil"], "quarantined": ["evil"],
            "reputation": {"evil": {"score": 7.5, "flagged": 3, "violations": 0, "rounds": 3,
                                     "quarantined_at": 3, "release_at": 8}}
        }]);
        let v: Vec<TenantStatus> = serde_json::from_value(v).unwrap();
        let text = render_status(&v);
        for needle in [
            "tenant acme: version 3, open round 4 from v3 (2 selected)",
            "connected:   a, b, evil",
            "quarantined: evil",
            "quarantined at v3, release at v8",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
