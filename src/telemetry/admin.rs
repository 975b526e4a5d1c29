//! The HTTP admin listener (`telemetry.admin_listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process runs), `/readyz` (it serves; the body says whether the shared
//! store answers, which degrades but does not stop service, so it stays 200) and
//! `/readyz/store` (200 while the shared store answers, 503 while it does not: for alerts and
//! dashboards, not for a readiness probe, since every replica fails it at once). Plain HTTP:
//! bind it to a cluster-internal address.

use std::future::Future;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use super::Metrics;
use crate::broker::Broker;

/// The admin listener failed.
#[derive(Debug, thiserror::Error)]
#[error("admin listener: {0}")]
pub struct AdminError(#[from] std::io::Error);

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    broker: Broker,
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    broker: Broker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AdminError> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/readyz/store", get(store_ready))
        .with_state(AdminState { metrics, broker });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn render(State(s): State<AdminState>) -> impl IntoResponse {
    let stats = s.broker.stats();
    let text = s
        .metrics
        .render(stats.store_fallbacks(), stats.renewal_failures());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn store_ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.broker.store_ok().await {
        (StatusCode::OK, "shared store answers\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "shared store unreachable: caching per replica\n",
        )
    }
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    if s.broker.store_ok().await {
        "ready\n"
    } else {
        "ready (shared store unreachable: caching per replica)\n"
    }
}
