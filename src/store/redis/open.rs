//! Opening the Redis store: settings checks, the connection (standalone, Sentinel or
//! Cluster), the subscriber and the breaker's background probe.

use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast;

use super::{
    CHANNEL_CAPACITY, Inner, PROBE_EVERY, RedisSettings, RedisStore,
    breaker::{Breaker, Prober},
    conn::{self, Conn, redact_url},
    pubsub::{Routes, Source, Subscriber},
    scripts::Scripts,
};
use crate::store::{Keyring, Store, StoreError, StoreHealth};

/// Opens the store described by `settings`. Connections are made lazily and re-made after
/// every failure, so this returns within `timeout_ms` even when Redis is down (it logs a
/// warning); operations fail with [`StoreError::Unavailable`] until Redis is back.
/// [`StoreError::Config`] for unusable settings. Needs a Tokio runtime.
pub async fn connect(settings: &RedisSettings) -> Result<RedisStore, StoreError> {
    crate::tls::init();
    let timeout = Duration::from_millis(settings.timeout_ms.max(1));
    if settings.prefix.is_empty() || settings.prefix.contains(['{', '}']) {
        return Err(StoreError::Config(format!(
            "store.redis.prefix {:?} must be non-empty and contain no braces",
            settings.prefix
        )));
    }
    let keyring = settings.keyring.as_ref().map(Keyring::new).transpose()?;
    let tls = conn::trust_roots(settings)?;
    let (conn, sources, mode) = match (
        &settings.url,
        settings.cluster_nodes.as_slice(),
        settings.sentinel.as_ref(),
    ) {
        (None, [], Some(sentinel)) => {
            let client = conn::sentinel_client(sentinel, tls.as_ref())?;
            (
                Conn::sentinel(client.clone(), timeout),
                vec![Source::Sentinel(client)],
                format!(
                    "sentinel master {:?} via {} sentinels",
                    sentinel.master_name,
                    sentinel.nodes.len()
                ),
            )
        }
        (_, _, Some(_)) => {
            return Err(StoreError::Config(
                "store.sentinel excludes store.url and store.cluster_nodes".into(),
            ));
        }
        (Some(url), [], None) => (
            Conn::standalone(conn::client(url, tls.as_ref())?, timeout)?,
            vec![Source::Fixed(Box::new(conn::client(url, tls.as_ref())?))],
            redact_url(url),
        ),
        (None, nodes, None) if !nodes.is_empty() => (
            Conn::cluster(nodes, tls.as_ref(), timeout)?,
            nodes
                .iter()
                .map(|u| conn::client(u, tls.as_ref()).map(|c| Source::Fixed(Box::new(c))))
                .collect::<Result<Vec<_>, _>>()?,
            format!("cluster of {} seed nodes", nodes.len()),
        ),
        (None, _, None) => {
            return Err(StoreError::Config(
                "set store.redis.url, store.redis.cluster_nodes or store.redis.sentinel".into(),
            ));
        }
        (Some(_), _, None) => {
            return Err(StoreError::Config(
                "store.redis.url and store.redis.cluster_nodes are exclusive".into(),
            ));
        }
    };
    let prefix = settings.prefix.clone();
    let routes = Routes {
        ready_channel: format!("{prefix}:ready"),
        ready: broadcast::channel(CHANNEL_CAPACITY).0,
        invalidate_channel: format!("{prefix}:invalidate"),
        invalidations: broadcast::channel(CHANNEL_CAPACITY).0,
    };
    let cluster = !settings.cluster_nodes.is_empty();
    let breaker = Arc::new(Breaker::default());
    let store = RedisStore {
        inner: Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let prober = Prober::spawn(breaker.clone(), PROBE_EVERY, move || {
                let store = RedisStore {
                    inner: weak.upgrade()?,
                };
                Some(Box::pin(async move { store.probe().await }))
            });
            Inner {
                conn,
                mode,
                prefix,
                keyring,
                timeout,
                cluster,
                _subscriber: Subscriber::spawn(sources, routes.clone(), timeout),
                routes,
                scripts: Scripts::new(),
                breaker,
                _prober: prober,
            }
        }),
    };
    if let StoreHealth::Degraded(reason) = store.health().await {
        tracing::warn!(
            %reason,
            "redis unusable at start-up; running degraded until it answers"
        );
    }
    Ok(store)
}
