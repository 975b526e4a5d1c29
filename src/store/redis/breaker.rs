//! The store's circuit breaker: once Redis is known to be unreachable, commands fail at once
//! instead of each paying the connect or command timeout, and a background task probes Redis
//! until it answers again, then lets commands through.
//!
//! Only failures that say "the store cannot be used right now" open it: no answer within the
//! timeout, a broken or refused connection, a failed login, a Cluster that is down or
//! re-sharding, a server still loading, a read-only server (the broker cannot take a lock
//! there). A command the server refuses for its own reasons (a script error, a wrong type)
//! leaves it closed.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use redis::{ErrorKind, RedisError, RetryMethod, ServerErrorKind};
use tokio::{sync::Notify, task::JoinHandle};

/// Open (failing fast) or closed (commands go to Redis).
#[derive(Debug, Default)]
pub(super) struct Breaker {
    open: AtomicBool,
    /// Why it opened, for the error callers see and for the health report.
    reason: Mutex<String>,
    /// Wakes the prober when the breaker opens.
    opened: Notify,
}

impl Breaker {
    /// The reason it is open, or `None` while closed.
    pub(super) fn open_reason(&self) -> Option<String> {
        self.open
            .load(Ordering::Acquire)
            .then(|| lock(&self.reason).clone())
    }

    /// Opens the breaker (if closed) because of `reason`.
    pub(super) fn trip(&self, reason: &str) {
        *lock(&self.reason) = reason.to_owned();
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                %reason,
                "shared store unreachable: store calls fail fast until a background probe succeeds"
            );
            self.opened.notify_one();
        }
    }

    /// Closes the breaker after a successful probe.
    fn close(&self) {
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("shared store reachable again");
        }
    }
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether `e` means the store as a whole is unusable (see the module docs).
pub(super) fn is_outage(e: &RedisError) -> bool {
    match e.retry_method() {
        RetryMethod::Reconnect
        | RetryMethod::ReconnectFromInitialConnections
        | RetryMethod::RetryImmediately
        | RetryMethod::WaitAndRetry => true,
        RetryMethod::NoRetry => matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly)),
        // Redirects (handled inside the cluster client) and whatever a newer client adds.
        _ => false,
    }
}

/// Owns the probing task; dropping it stops the task.
#[derive(Debug)]
pub(super) struct Prober {
    task: JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    /// While `breaker` is open, runs the probe `probe` makes every `every`, and closes the
    /// breaker on the first success. `probe` answers `None` once the store is gone, which
    /// ends the task.
    pub(super) fn spawn<F>(breaker: Arc<Breaker>, every: Duration, probe: F) -> Self
    where
        F: Fn() -> Option<BoxFuture<'static, Result<(), String>>> + Send + 'static,
    {
        let task = tokio::spawn(async move {
            loop {
                if breaker.open_reason().is_none() {
                    breaker.opened.notified().await;
                    continue;
                }
                tokio::time::sleep(every).await;
                let Some(probe) = probe() else { break };
                match probe.await {
                    Ok(()) => breaker.close(),
                    Err(reason) => *lock(&breaker.reason) = reason,
                }
            }
        });
        Self { task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_open_it_command_errors_do_not() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_outage(&io));
        let down = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ClusterDown),
            "CLUSTERDOWN",
        ));
        assert!(is_outage(&down));
        let ro = RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY"));
        assert!(is_outage(&ro));
        let wrong = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "ERR"));
        assert!(!is_outage(&wrong));
        let script = RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT"));
        assert!(!is_outage(&script));
    }

    #[tokio::test]
    async fn trip_then_close() {
        let b = Breaker::default();
        assert_eq!(b.open_reason(), None);
        b.trip("refused");
        assert_eq!(b.open_reason().as_deref(), Some("refused"));
        b.close();
        assert_eq!(b.open_reason(), None);
    }
}
