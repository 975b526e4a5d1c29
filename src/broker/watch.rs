//! [`Broker::watch`]: the certificate for one request now, and each new one as it replaces
//! the last, for as long as the stream is held.

use std::{sync::Arc, time::Duration};

use futures::Stream;
use tokio::sync::broadcast;
use tracing::warn;

use super::{Broker, BrokerError, CacheStatus, CertRequest, WatchGuard};
use crate::store::CertRecord;

/// How often a watch re-checks its certificate without a notification.
const RECHECK: Duration = Duration::from_secs(30);

/// One answer of a watch: the certificate and where it came from.
pub type Watched = (Arc<CertRecord>, CacheStatus);

/// Where a watch stream stands between two answers.
enum State {
    /// Nothing answered yet; the first request may force a renewal, later ones never do.
    First(Watching, CertRequest),
    /// The first answer went out; waiting for a new certificate.
    Following(Watching, Following),
    /// The first answer failed: the stream has ended.
    Done,
}

/// What every state of a live watch carries.
struct Watching {
    broker: Broker,
    req: CertRequest,
    key: String,
    updates: broadcast::Receiver<String>,
}

/// What a watch carries once its first answer went out.
struct Following {
    /// Serial of the last certificate handed out; only a different one is sent.
    last: String,
    recheck: tokio::time::Interval,
    /// Keeps the certificate renewed while the stream is held.
    _guard: WatchGuard,
}

impl Broker {
    /// The certificate for `req` ([`Broker::get_certificate`]) as the first item, then each
    /// new certificate for the same cache key as it appears: renewed on this replica or on
    /// another (heard through [`Broker::updates`], and re-checked every 30 s in case a
    /// notification was missed), or re-issued after a revocation.
    ///
    /// Only the first item can be an error; the stream ends after it. A failed re-check
    /// later is logged and retried, never sent. While the stream is held its certificate
    /// counts as in use ([`Broker::watching`]): renewed however long the idle horizon is.
    /// Dropping the stream ends the watch. The stream ends by itself when the broker's
    /// update channel closes.
    pub fn watch(
        &self,
        mut req: CertRequest,
    ) -> impl Stream<Item = Result<Watched, BrokerError>> + Send + 'static {
        // Subscribe before the first answer so no renewal can slip between the two.
        let updates = self.updates();
        let key = req.cache_key();
        let first = req.clone();
        req.force_renew = false;
        let watching = Watching {
            broker: self.clone(),
            req,
            key,
            updates,
        };
        futures::stream::unfold(State::First(watching, first), |state| async move {
            match state {
                State::First(w, first) => match w.broker.get_certificate(first).await {
                    Ok((cert, status)) => {
                        let following = Following {
                            last: cert.serial_hex.clone(),
                            recheck: first_recheck().await,
                            _guard: w.broker.watching(&w.req),
                        };
                        Some((Ok((cert, status)), State::Following(w, following)))
                    }
                    Err(e) => Some((Err(e), State::Done)),
                },
                State::Following(mut w, mut f) => {
                    let next = w.next(&mut f).await?;
                    Some((Ok(next), State::Following(w, f)))
                }
                State::Done => None,
            }
        })
    }
}

impl Watching {
    /// Waits for a certificate other than the last one handed out; `None` when the
    /// broker's update channel closed.
    async fn next(&mut self, f: &mut Following) -> Option<Watched> {
        loop {
            tokio::select! {
                msg = self.updates.recv() => match msg {
                    Ok(k) if k != self.key => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = f.recheck.tick() => {}
            }
            match self.broker.get_certificate(self.req.clone()).await {
                Ok((cert, status)) if cert.serial_hex != f.last => {
                    f.last = cert.serial_hex.clone();
                    return Some((cert, status));
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "watch re-check failed; retrying"),
            }
        }
    }
}

/// The re-check timer, its immediate first tick already taken.
async fn first_recheck() -> tokio::time::Interval {
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    recheck
}
