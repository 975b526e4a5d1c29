//! Exactly one issuance per cache key across the fleet.
//!
//! The replica whose request takes the key's lock in the store re-checks the store (another
//! replica may just have finished), issues, stores, announces "ready" and releases. The
//! others wait for that announcement (pub/sub, with polling as the fallback) and read the
//! result from the store; if the holder vanished without a result, its lock expires and a
//! waiter takes over. A store that cannot be reached degrades to issuing here, with only
//! the in-process single-flight in front.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{BrokerError, FailureKind, IssueError, IssueRequest, ProgressSink, service::Broker};
use crate::{
    cert::CertRecord,
    store::{LockToken, StoreError},
};

/// How long a recorded in-flight order stays resumable. ACME orders live for days; an hour
/// covers any takeover while bounding what a stale record can cost (one failed resume).
const PROGRESS_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// A certificate, and whether this replica issued it (false: another replica did).
pub(super) type Obtained = Result<(Arc<CertRecord>, bool), BrokerError>;

/// Decides whether a stored certificate answers the request (fresh enough, and not the one
/// the request wants replaced).
pub(super) type Usable = Arc<dyn Fn(&CertRecord) -> bool + Send + Sync>;

impl Broker {
    /// Obtains a certificate for `req` once for the whole fleet.
    pub(super) async fn obtain(&self, req: IssueRequest, usable: Usable) -> Obtained {
        let inner = self.inner();
        let key = req.cache_key.clone();
        let lock_ttl = inner.opts.lock_ttl;
        let deadline = Instant::now() + inner.opts.issuance_timeout;
        loop {
            let token = match inner.store.try_lock(&key, lock_ttl).await {
                Ok(token) => token,
                Err(e) => return self.degraded(req, e).await,
            };
            if let Some(token) = token {
                let result = match self.stored(&key, &usable).await {
                    Some(done) => Ok((done, false)),
                    None => {
                        self.issue_here(&self.tracked(&req).await, Some(&token))
                            .await
                    }
                };
                if let Err(e) = inner.store.publish_ready(&key).await {
                    warn!(error = %e, "could not announce the result to the fleet");
                }
                if let Err(e) = inner.store.release_lock(&key, &token).await {
                    warn!(error = %e, "could not release the fleet lock; it will expire");
                }
                return result;
            }

            // Another replica holds the lock: wait for its result.
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(lock_ttl);
            if wait.is_zero() {
                return Err(BrokerError::DeadlineExceeded(inner.opts.issuance_timeout));
            }
            match inner.store.wait_ready(&key, wait).await {
                Ok(()) | Err(StoreError::TimedOut(_)) => {}
                Err(e) => return self.degraded(req, e).await,
            }
            if let Some(done) = self.stored(&key, &usable).await {
                return Ok((done, false));
            }
            if let Ok(Some(refusal)) = inner.store.negative(&key).await {
                return Err(decode_refusal(&refusal));
            }
            // The holder finished without a usable result or died; try to take over.
        }
    }

    /// `req` with its in-flight order recorded in the store, and any order a previous holder
    /// recorded handed over for resumption.
    async fn tracked(&self, req: &IssueRequest) -> IssueRequest {
        let store = self.inner().store.clone();
        let key = req.cache_key.clone();
        let resume = match store.progress(&key).await {
            Ok(Some(p)) => {
                info!("resuming the order a previous lock holder recorded");
                Some(p)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "could not read in-flight order; placing a new one");
                None
            }
        };
        let sink = ProgressSink::new(move |blob| {
            let (store, key) = (store.clone(), key.clone());
            Box::pin(async move {
                if let Err(e) = store.set_progress(&key, &blob, PROGRESS_TTL).await {
                    warn!(error = %e, "could not record the in-flight order");
                }
            })
        });
        IssueRequest {
            resume,
            progress: Some(sink),
            ..req.clone()
        }
    }

    /// The store's current certificate for `key`, if it answers the request.
    async fn stored(&self, key: &str, usable: &Usable) -> Option<Arc<CertRecord>> {
        match self.inner().store.current(key).await {
            Ok(Some(c)) if usable(&c) => {
                let c = Arc::new(c);
                self.inner()
                    .l1
                    .insert(super::request::CacheKey::of(key), c.clone())
                    .await;
                Some(c)
            }
            _ => None,
        }
    }

    async fn degraded(&self, req: IssueRequest, error: StoreError) -> Obtained {
        self.inner().stats.record_store_fallback();
        warn!(error = %error, "shared store unreachable; issuing without fleet coordination");
        self.issue_here(&req, None).await
    }

    /// Issues at the CA, keeping `lock` alive meanwhile, and stores the result. A refusal is
    /// remembered fleet-wide for `negative_ttl`.
    async fn issue_here(&self, req: &IssueRequest, lock: Option<&LockToken>) -> Obtained {
        let inner = self.inner();
        let renewer = lock.map(|token| {
            let (store, key, token) = (inner.store.clone(), req.cache_key.clone(), token.clone());
            let ttl = inner.opts.lock_ttl;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.renew_lock(&key, &token, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!("fleet lock lost while issuing");
                            break;
                        }
                        Err(e) => warn!(error = %e, "could not renew the fleet lock"),
                    }
                }
            })
        });
        let timeout = inner.opts.issuance_timeout;
        let result = tokio::time::timeout(timeout, inner.issuer.issue(req)).await;
        if let Some(r) = renewer {
            r.abort();
        }
        let record = match result {
            Err(_) => return Err(BrokerError::DeadlineExceeded(timeout)),
            Ok(Err(e)) => {
                if e.kind == FailureKind::Refused {
                    self.forget_progress(&req.cache_key).await;
                    let ttl = inner.opts.negative_ttl;
                    if let Err(se) = inner
                        .store
                        .put_negative(&req.cache_key, &encode_refusal(&e), ttl)
                        .await
                    {
                        warn!(error = %se, "could not remember the refusal fleet-wide");
                    }
                }
                return Err(e.into());
            }
            Ok(Ok(record)) => record,
        };
        info!(
            serial = %record.serial_hex,
            issuer_ca = %record.issuer_ca,
            not_after = record.not_after,
            "certificate issued"
        );
        self.forget_progress(&req.cache_key).await;
        if let Err(e) = inner.store.put(&record).await {
            inner.stats.record_store_fallback();
            warn!(error = %e, "issued certificate could not be written to the shared store");
        }
        let record = Arc::new(record);
        inner
            .l1
            .insert(super::request::CacheKey::of(&req.cache_key), record.clone())
            .await;
        Ok((record, true))
    }
}

impl Broker {
    async fn forget_progress(&self, key: &str) {
        if let Err(e) = self.inner().store.clear_progress(key).await {
            warn!(error = %e, "could not clear the in-flight order record");
        }
    }
}

/// Remembered refusals are the broker's own JSON, so any replica can replay them.
pub(super) fn encode_refusal(e: &IssueError) -> String {
    serde_json::json!({
        "ca": e.ca,
        "problem_type": e.problem_type,
        "detail": e.detail,
    })
    .to_string()
}

pub(super) fn decode_refusal(s: &str) -> BrokerError {
    let v: serde_json::Value = serde_json::from_str(s).unwrap_or_default();
    let text = |k: &str| v[k].as_str().map(str::to_owned);
    BrokerError::Upstream(IssueError {
        ca: text("ca"),
        kind: FailureKind::Refused,
        problem_type: text("problem_type"),
        detail: format!(
            "{} (remembered refusal; retry after the negative cache expires)",
            text("detail").unwrap_or_default()
        ),
        retry_after: None,
    })
}

/// Counters about the broker's own behaviour.
#[derive(Debug, Default)]
pub struct BrokerStats {
    store_fallbacks: std::sync::atomic::AtomicU64,
    renewal_failures: std::sync::atomic::AtomicU64,
}

impl BrokerStats {
    pub(super) fn record_renewal_failure(&self) {
        self.renewal_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Renewals that failed (each is retried with backoff).
    pub fn renewal_failures(&self) -> u64 {
        self.renewal_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn record_store_fallback(&self) {
        self.store_fallbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Times the shared store could not be used and the broker carried on without it.
    pub fn store_fallbacks(&self) -> u64 {
        self.store_fallbacks
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
