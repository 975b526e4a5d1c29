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
use time::OffsetDateTime;
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
        Some((pem, not_after)) => {
            let max_age = max_age_secs(not_after, OffsetDateTime::now_utc());
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

/// The `max-age` for a chain whose leaf expires at `not_after` (Unix seconds), asked for at
/// `now`: the whole seconds left, rounded down, so a cache never keeps the chain past
/// notAfter; 0 once expired; at most a day (verifiers cache for 24 h when told less).
fn max_age_secs(not_after: i64, now: OffsetDateTime) -> i64 {
    let Ok(expiry) = OffsetDateTime::from_unix_timestamp(not_after) else {
        return 0;
    };
    // `whole_seconds` truncates toward zero: down for time left, 0 just past expiry.
    (expiry - now).whole_seconds().clamp(0, 86_400)
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    #[test]
    fn max_age_rounds_down_never_past_not_after() {
        let not_after = 1_700_000_100;
        let second = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        // 0.9 s into a second: 99.1 s are left, so 99, not the 100 a truncated clock says.
        for (now, want) in [
            (second + Duration::milliseconds(900), 99),
            (second + Duration::milliseconds(1), 99),
            (second, 100),
            (second - Duration::milliseconds(1), 100),
        ] {
            let max_age = max_age_secs(not_after, now);
            assert_eq!(max_age, want, "at {now}");
            assert!(
                now + Duration::seconds(max_age)
                    <= OffsetDateTime::from_unix_timestamp(not_after).unwrap()
            );
        }
        // Just before and after expiry, and far from it.
        let expiry = OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        assert_eq!(
            max_age_secs(not_after, expiry - Duration::milliseconds(999)),
            0
        );
        assert_eq!(
            max_age_secs(not_after, expiry + Duration::milliseconds(500)),
            0
        );
        assert_eq!(max_age_secs(not_after, expiry - Duration::days(3)), 86_400);
    }
}
