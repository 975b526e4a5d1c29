//! The HTTP admin listener (`telemetry.admin_listen`): `/metrics` (Prometheus text),
//! `/healthz` (the process runs), `/readyz` (it serves: 503 only while no CA account works
//! and the start-up warm-up still runs; the body says what is known of each CA and whether
//! the shared store answers, which degrades but does not stop service, so a store outage
//! keeps it 200) and `/readyz/store` (200 while the shared store answers, 503 while it does
//! not: for alerts and dashboards, not for a readiness probe, since every replica fails it at
//! once). Plain HTTP: bind it to a cluster-internal address.

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
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    s.metrics
        .set_certificates(&s.broker.renewal_status().await, now);
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

/// 200 once any CA's account works, or once the start-up warm-up has ended (even if it
/// failed everywhere: cached certificates are still served); 503 while no CA is known to
/// work and the warm-up still runs. The body says what is known, one line per CA.
async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    use crate::broker::ReadyState;
    let mut body = String::new();
    let cas = s.broker.ca_readiness();
    let any_ready = cas.iter().any(|c| c.state == ReadyState::Ready);
    let warming = cas.iter().any(|c| c.state == ReadyState::WarmingUp);
    let code = if any_ready || !warming {
        body.push_str("ready");
        StatusCode::OK
    } else {
        body.push_str("not ready (warming up: no CA account works yet)");
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !s.broker.store_ok().await {
        body.push_str(" (shared store unreachable: caching per replica)");
    }
    body.push('\n');
    for c in &cas {
        let state = match &c.state {
            ReadyState::WarmingUp => "warming up".to_owned(),
            ReadyState::Ready => "ready".to_owned(),
            ReadyState::Failed(why) => format!("not ready: {why}"),
        };
        body.push_str(&format!("ca {}: {state}\n", c.name));
    }
    (code, body)
}
