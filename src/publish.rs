//! STI-CR publication: every chain the fleet issued, served over HTTP at a stable path
//! (`<base>/<sha256 fingerprint>.pem`) as `application/pem-certificate-chain`, full chain,
//! no redirects, with cache headers, so it can sit behind any CDN. Any replica serves any
//! chain, from the shared store.

use std::net::SocketAddr;

use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use url::Url;

use crate::broker::Broker;

/// The public URL of a chain: `base` + lowercase fingerprint + `.pem`.
pub fn x5u(base: &Url, fingerprint_hex: &str) -> Url {
    // `base` ends with '/' (checked at config load) and the name is hex, so join appends.
    base.join(&format!("{fingerprint_hex}.pem"))
        .unwrap_or_else(|_| base.clone())
}

/// Serves chains on `listen`, under the path of `base`, until the returned task is aborted.
pub async fn serve(
    broker: Broker,
    listen: SocketAddr,
    base: &Url,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(&format!("{}{{name}}", base.path()), get(chain))
        .with_state(broker);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "STI-CR listener stopped");
        }
    });
    Ok((addr, task))
}

async fn chain(State(broker): State<Broker>, Path(name): Path<String>) -> Response {
    let Some(fp) = name.strip_suffix(".pem") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if fp.len() != 64
        || !fp
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    match broker.chain_by_fingerprint(fp).await {
        Some((pem, remaining_secs)) => {
            // Verifiers cache for 24 h when told less; never promise past notAfter.
            let max_age = remaining_secs.clamp(0, 86_400);
            (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        "application/pem-certificate-chain".to_owned(),
                    ),
                    (header::CACHE_CONTROL, format!("public, max-age={max_age}")),
                ],
                pem,
            )
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
