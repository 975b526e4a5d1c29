//! The one pub/sub subscription each [`super::RedisStore`] keeps: "ready" and
//! "invalidate" messages from the whole fleet, fanned out to local waiters and subscribers.
//! A background task resubscribes with backoff after every disconnect.
//!
//! In cluster mode it subscribes on one seed node at a time (rotating on failure): classic
//! `PUBLISH` in Redis Cluster reaches every node, so any node sees every message.

use std::time::Duration;

use futures::StreamExt;
use std::sync::Arc;

use redis::{Client, Value, sentinel::SentinelClient};
use tokio::{sync::broadcast, task::JoinHandle};

/// Where a subscription connects.
#[derive(Clone)]
pub(super) enum Source {
    /// One server (or one Cluster seed node).
    Fixed(Box<Client>),
    /// Whichever master the sentinels name now.
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
}

impl Source {
    async fn client(&self) -> redis::RedisResult<Client> {
        match self {
            Self::Fixed(c) => Ok((**c).clone()),
            Self::Sentinel(s) => s.lock().await.async_get_client().await,
        }
    }
}

/// Channel names and the local fan-out they feed.
#[derive(Debug, Clone)]
pub(super) struct Routes {
    /// Channel carrying keys whose work is done.
    pub(super) ready_channel: String,
    /// Where ready keys go locally.
    pub(super) ready: broadcast::Sender<String>,
    /// Channel carrying cache keys to drop from local caches.
    pub(super) invalidate_channel: String,
    /// Where invalidated keys go locally.
    pub(super) invalidations: broadcast::Sender<String>,
}

/// Owns the background task; dropping it stops the subscription.
#[derive(Debug)]
pub(super) struct Subscriber {
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Starts subscribing through `clients` (tried in turn) and keeps at it until dropped.
    pub(super) fn spawn(clients: Vec<Source>, routes: Routes, timeout: Duration) -> Self {
        Self {
            task: tokio::spawn(run(clients, routes, timeout)),
        }
    }
}

async fn run(clients: Vec<Source>, routes: Routes, timeout: Duration) {
    let mut backoff = MIN_BACKOFF;
    for client in clients.iter().cycle() {
        match session(client, &routes, timeout).await {
            // Subscribed, then lost: the server is likely back soon, retry quickly.
            Ok(()) => backoff = MIN_BACKOFF,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "redis subscription unavailable");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One subscription from connect to disconnect. `Ok` once it was established and then lost.
async fn session(
    source: &Source,
    routes: &Routes,
    timeout: Duration,
) -> Result<(), redis::RedisError> {
    let client = bounded(timeout, source.client()).await?;
    let pubsub = bounded(timeout, client.get_async_pubsub()).await?;
    let (mut sink, mut stream) = pubsub.split();
    bounded(
        timeout,
        sink.subscribe(&[&routes.ready_channel, &routes.invalidate_channel]),
    )
    .await?;
    tracing::debug!("redis subscription established");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    tracing::warn!("redis subscription lost, resubscribing");
                    return Ok(());
                };
                let Ok(key) = msg.get_payload::<String>() else { continue };
                let target = if msg.get_channel_name() == routes.ready_channel {
                    &routes.ready
                } else if msg.get_channel_name() == routes.invalidate_channel {
                    &routes.invalidations
                } else {
                    continue;
                };
                // No local receiver is fine: nobody in this process cares right now.
                let _ = target.send(key);
            }
            _ = ping.tick() => {
                // A silent peer (no RST) would otherwise leave us subscribed to nothing.
                if let Err(error) = bounded(timeout, sink.ping::<Value>()).await {
                    tracing::warn!(%error, "redis subscription ping failed, resubscribing");
                    return Ok(());
                }
            }
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(10);
