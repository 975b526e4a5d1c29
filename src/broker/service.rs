//! [`Broker`]: cache lookup order, single-flight issuance, revocation.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tracing::{Instrument, info, warn};

use tokio::sync::broadcast;

use super::{
    BrokerError, CertRequest, IssueRequest, Issuer, RevokeRequest,
    fleet::{BrokerStats, Usable, decode_refusal},
    l1::L1,
    request::CacheKey,
    singleflight::SingleFlight,
    tracker::Tracker,
};
use crate::{
    cert::{CertRecord, CertSelector},
    store::{Store, StoreHealth},
};

/// Where an answer came from; mirrors the API's `CacheStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// This process's cache.
    HitLocal,
    /// The shared store.
    HitShared,
    /// Joined an issuance already in flight.
    Joined,
    /// Issued for this request.
    Issued,
}

/// Result of a revocation.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Leaf serial, lowercase hex.
    pub serial_hex: String,
    /// CA that revoked it.
    pub issuer_ca: String,
    /// When the broker recorded the revocation.
    pub revoked_at: OffsetDateTime,
    /// The certificate was a short-term one: its STAR order was canceled instead of the
    /// certificate revoked (a STAR CA does not revoke them; it stops issuing).
    pub star_order_canceled: bool,
}

/// Tunables, from `[broker]`.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Most certificates in the in-process cache.
    pub cache_capacity: u64,
    /// Least validity left when a request names none.
    pub default_min_remaining: Duration,
    /// Bound on one issuance, failover included.
    pub issuance_timeout: Duration,
    /// Lifetime of the fleet lock on one cache key (renewed while held).
    pub lock_ttl: Duration,
    /// How long a refusal is remembered fleet-wide.
    pub negative_ttl: Duration,
}

impl From<&crate::config::BrokerSettings> for BrokerOptions {
    /// The broker's tunables `[broker]` describes.
    fn from(s: &crate::config::BrokerSettings) -> Self {
        Self {
            cache_capacity: s.cache_capacity.get(),
            default_min_remaining: s.default_min_remaining,
            issuance_timeout: s.issuance_timeout,
            lock_ttl: s.lock_ttl,
            negative_ttl: s.negative_ttl,
        }
    }
}

/// What one in-process flight yields: the certificate and where it came from.
type FlightResult = Result<(Arc<CertRecord>, CacheStatus), BrokerError>;

/// The broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) issuer: Arc<dyn Issuer>,
    pub(super) store: Arc<dyn Store>,
    /// The in-process cache, bounded by `cache_capacity`. Read it through [`Inner::l1_get`],
    /// which never answers an expired certificate.
    pub(super) l1: L1,
    flights: SingleFlight<CacheKey, FlightResult>,
    pub(super) opts: BrokerOptions,
    pub(super) stats: BrokerStats,
    pub(super) tracker: Tracker,
    /// Cache keys whose current certificate changed (renewed here or elsewhere, revoked).
    updates: broadcast::Sender<String>,
}

// === impl Inner ===

impl Inner {
    /// The L1 certificate for `key` while it is valid. An expired one is dropped (unless a
    /// fresh one replaced it meanwhile) and is not answered: L1 never serves an expired
    /// certificate.
    pub(super) async fn l1_get(&self, key: &CacheKey) -> Option<Arc<CertRecord>> {
        self.l1_get_at(key, now()).await
    }

    /// [`Inner::l1_get`] with the clock read by the caller (`t`, Unix seconds).
    async fn l1_get_at(&self, key: &CacheKey, t: i64) -> Option<Arc<CertRecord>> {
        let c = self.l1.get(key).await?;
        if c.remaining_secs(t) > 0 {
            return Some(c);
        }
        self.l1
            .remove_if(key, |c| c.remaining_secs(now()) <= 0)
            .await;
        None
    }

    /// Drops every expired certificate from L1, so that the certificates of keys nobody
    /// asks for any more free their memory when they expire, as they would with a
    /// per-entry expiry. Called by the renewal loop once per check; yields to the runtime
    /// every 1,024 entries.
    pub(super) async fn l1_sweep(&self) {
        let t = now();
        let expired: Vec<CacheKey> = self
            .l1
            .iter()
            .filter(|(_, c)| c.remaining_secs(t) <= 0)
            .map(|(k, _)| *k)
            .collect();
        for (i, key) in expired.iter().enumerate() {
            if i % 1024 == 1023 {
                tokio::task::yield_now().await;
            }
            // `l1_get` drops it unless a fresh certificate replaced it.
            let _ = self.l1_get(key).await;
        }
    }
}

// === impl Broker ===

impl Broker {
    /// A broker over an issuer and a store.
    pub fn new(issuer: Arc<dyn Issuer>, store: Arc<dyn Store>, opts: BrokerOptions) -> Self {
        let l1 = L1::new(opts.cache_capacity);
        Self {
            inner: Arc::new(Inner {
                issuer,
                store,
                l1,
                flights: SingleFlight::new(),
                opts,
                stats: BrokerStats::default(),
                tracker: Tracker::default(),
                updates: broadcast::channel(1024).0,
            }),
        }
    }

    pub(super) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(super) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    /// The PEM chain of a certificate the fleet issued, by leaf fingerprint, with its
    /// notAfter (Unix seconds), while it is valid; for STI-CR publication.
    pub async fn chain_by_fingerprint(&self, fingerprint_hex: &str) -> Option<(String, i64)> {
        let record = self
            .inner
            .store
            .find(&CertSelector::Fingerprint(fingerprint_hex.to_owned()))
            .await
            .ok()??;
        (record.remaining_secs(now()) > 0).then_some((record.chain_pem, record.not_after))
    }

    /// Cache keys whose certificate changed, as they change: renewed on this replica or on
    /// another (through the store's invalidations), or revoked.
    pub fn updates(&self) -> broadcast::Receiver<String> {
        self.inner.updates.subscribe()
    }

    /// Tells this replica's watchers and the fleet that `key` has a new certificate.
    pub(super) async fn announce(&self, key: &str) {
        let _ = self.inner.updates.send(key.to_owned());
        if let Err(e) = self.inner.store.publish_invalidation(key).await {
            warn!(error = %e, "could not tell the fleet about the new certificate");
        }
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Counters about the broker's own behaviour.
    pub fn stats(&self) -> &BrokerStats {
        &self.inner.stats
    }

    /// Whether the shared store answers (false: degraded to per-replica caching).
    pub async fn store_ok(&self) -> bool {
        matches!(self.inner.store.health().await, StoreHealth::Ok)
    }

    /// Drops L1 entries that any replica invalidates (after a revocation). Resubscribes
    /// through store reconnects; on a lagging receiver, drops the whole L1.
    pub async fn listen_for_invalidations(&self) -> Result<(), crate::store::StoreError> {
        let mut rx = self.inner.store.subscribe_invalidations().await?;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let msg = rx.recv().await;
                let Some(inner) = weak.upgrade() else { break };
                match msg {
                    Ok(key) => {
                        inner.l1.invalidate(&CacheKey::of(&key)).await;
                        let _ = inner.updates.send(key);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => inner.l1.invalidate_all(),
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(())
    }

    /// A certificate for `req`: L1, then (once per cache key in this process, every
    /// concurrent caller joining) L1 again, the store, and one issuance shared across the
    /// fleet. While the store is down each replica thus issues at most once per key.
    ///
    /// An L1 hit makes no span and writes no log line (the caller's `audit` line names it).
    /// Past L1 the work runs in an info-level `broker.get_certificate` span (pool,
    /// identifiers), so every line a miss logs, its issuance's included, says what it was
    /// for; exported, it is the child of the `rpc` span.
    ///
    /// Takes the request by value or by reference: it is only read.
    pub async fn get_certificate(
        &self,
        req: impl std::borrow::Borrow<CertRequest>,
    ) -> Result<(Arc<CertRecord>, CacheStatus), BrokerError> {
        let req = req.borrow();
        let inner = &self.inner;
        if !inner.issuer.has_pool(&req.pool) {
            return Err(BrokerError::invalid(
                "ca_pool",
                format!("no CA serves pool {:?}", req.pool),
            ));
        }
        let min_remaining = req
            .min_remaining
            .unwrap_or(inner.opts.default_min_remaining);
        // Refusals before any cache lookup or CA work.
        self.check_pool_lifetime(req, min_remaining)?;
        let key = req.key();
        let min_secs = min_remaining.as_secs() as i64;
        // One clock read for the hit: L1's validity check and this request's minimum.
        let t = now();
        let cached = inner.l1_get_at(&key, t).await;
        if let Some(c) = &cached
            && c.remaining_secs(t) > min_secs
            && !req.force_renew
        {
            inner.tracker.touch_hit(key, req);
            return Ok((c.clone(), CacheStatus::HitLocal));
        }
        let span = tracing::info_span!(
            "broker.get_certificate",
            pool = %req.pool,
            identifiers = %req.identifiers.describe(),
            force_renew = req.force_renew,
        );
        self.past_l1(req, key, cached, min_remaining)
            .instrument(span)
            .await
    }

    /// [`Broker::get_certificate`] once L1 had no fresh certificate (`cached`: the one it
    /// had, stale or to be renewed by force).
    async fn past_l1(
        &self,
        req: &CertRequest,
        key: CacheKey,
        cached: Option<Arc<CertRecord>>,
        min_remaining: Duration,
    ) -> Result<(Arc<CertRecord>, CacheStatus), BrokerError> {
        let inner = &self.inner;
        let min_secs = min_remaining.as_secs() as i64;
        let fresh = move |c: &CertRecord| c.remaining_secs(now()) > min_secs;
        // The certificate this request finds wanting, if any: a replacement must differ.
        let mut stale_serial = None;
        if let Some(c) = cached {
            self.check_recent_refusal(req, min_remaining, &c)?;
            stale_serial = Some(c.serial_hex.clone());
        }
        // Tracked (renewed ahead of expiry) only once it passed the checks above.
        inner.tracker.touch(key, req);
        // Everything past L1 runs once per key in this process, store I/O included: callers
        // that miss together share one store round trip, and while the store is down they
        // all wait for the one issuance instead of each paying the store's timeout and then
        // starting its own. A flight re-checks L1 first, so a request that missed L1 just
        // before another flight finished finds that flight's certificate. Only the caller
        // that starts the flight builds what it needs; the others just wait.
        let (result, joined) = inner
            .flights
            .run(
                &key,
                || {
                    let this = self.clone();
                    let issue_req = IssueRequest::template(req, &key.to_string());
                    let force_renew = req.force_renew;
                    async move {
                        this.lookup_or_obtain(key, issue_req, min_secs, stale_serial, force_renew)
                            .await
                    }
                },
                |panic| Err(BrokerError::Internal(format!("issuance failed: {panic}"))),
            )
            .await;
        let (cert, status) = result?;
        if !fresh(&cert) {
            // The pool is the reason, not the request: repeats are refused up front
            // (`Broker::check_recent_refusal`) from this certificate and the learned lifetime.
            return Err(BrokerError::FailedPrecondition {
                field: "min_remaining_validity".into(),
                reason: format!(
                    "the CA issued a certificate with only {}s of validity left, less than the {}s asked for",
                    cert.remaining_secs(now()),
                    min_remaining.as_secs()
                ),
            });
        }
        let status = if joined { CacheStatus::Joined } else { status };
        Ok((cert, status))
    }

    /// The flight behind [`Broker::get_certificate`] after an L1 miss (or a stale or
    /// `force_renew` hit on `stale_serial`): L1 again, the store, the negative cache, then
    /// one issuance for the fleet. `key` is the cache key `req.cache_key` spells in hex,
    /// passed as the caller computed it rather than parsed back.
    async fn lookup_or_obtain(
        &self,
        key: CacheKey,
        mut req: IssueRequest,
        min_secs: i64,
        mut stale_serial: Option<String>,
        force_renew: bool,
    ) -> FlightResult {
        let inner = &self.inner;
        let fresh = move |c: &CertRecord| c.remaining_secs(now()) > min_secs;
        // Another flight for this key may have finished since the caller looked: it left
        // its certificate here before it ended.
        if let Some(c) = inner.l1_get(&key).await {
            if fresh(&c) && Some(&c.serial_hex) != stale_serial.as_ref() {
                return Ok((c, CacheStatus::HitLocal));
            }
        }
        match inner.store.current(&req.cache_key).await {
            Ok(Some(c)) if fresh(&c) && !force_renew => {
                let c = Arc::new(c);
                inner.l1.insert(key, c.clone()).await;
                return Ok((c, CacheStatus::HitShared));
            }
            Ok(Some(c)) => {
                if !force_renew && super::star::continues(&c) {
                    // Its STAR order still runs: the successor comes from there.
                    req.star_next = Some(Arc::new(c.clone()));
                }
                stale_serial = Some(c.serial_hex);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "store lookup failed; treating as a miss"),
        }
        if let Ok(Some(refusal)) = inner.store.negative(&req.cache_key).await {
            return Err(decode_refusal(&refusal));
        }
        let usable: Usable = Arc::new(move |c: &CertRecord| {
            c.remaining_secs(now()) > 0 && Some(&c.serial_hex) != stale_serial.as_ref()
        });
        // Boxed: the issuance's state machine is large, and this future is boxed into its
        // flight on every L2 hit, which never issues.
        let (cert, issued_here) = Box::pin(self.obtain(req, usable)).await?;
        let status = if issued_here {
            CacheStatus::Issued
        } else {
            CacheStatus::Joined
        };
        Ok((cert, status))
    }

    /// Revokes a certificate at the CA that issued it and forgets it fleet-wide, so the next
    /// request for its identifiers issues anew.
    #[tracing::instrument(name = "broker.revoke", skip_all)]
    pub async fn revoke(&self, req: RevokeRequest) -> Result<Revoked, BrokerError> {
        let inner = &self.inner;
        let record = inner
            .store
            .find(&req.selector)
            .await
            .map_err(|e| BrokerError::Internal(e.to_string()))?
            .ok_or_else(|| {
                BrokerError::NotFound(format!("no certificate known for {}", req.selector))
            })?;
        // A short-term certificate is not revoked: its STAR order is canceled (RFC 8739
        // §3.1.2); a STAR CA answers revokeCert with autoRenewalRevocationNotSupported.
        let star_order_canceled = record.star.is_some();
        if star_order_canceled {
            inner.issuer.cancel_star(&record).await?;
        } else {
            inner.issuer.revoke(&record, req.reason).await?;
        }
        inner.l1.invalidate(&CacheKey::of(&record.cache_key)).await;
        let _ = inner.updates.send(record.cache_key.clone());
        if let Err(e) = inner.store.evict(&record).await {
            warn!(error = %e, serial = %record.serial_hex, "revoked certificate could not be evicted from the store");
        }
        if let Err(e) = inner.store.publish_invalidation(&record.cache_key).await {
            warn!(error = %e, "could not tell the fleet about the revocation");
        }
        info!(serial = %record.serial_hex, issuer_ca = %record.issuer_ca, reason = req.reason, star_order_canceled, "certificate revoked");
        Ok(Revoked {
            serial_hex: record.serial_hex,
            issuer_ca: record.issuer_ca,
            revoked_at: OffsetDateTime::now_utc(),
            star_order_canceled,
        })
    }
}

impl IssueRequest {
    /// The issuance a request for `key` (its cache key) asks for; renewals reuse it.
    pub(super) fn template(req: &CertRequest, key: &str) -> Self {
        Self {
            pool: req.pool.clone(),
            identifiers: req.identifiers.clone(),
            csr_der: req.csr_der.clone(),
            ca: req.ca,
            cache_key: key.to_owned(),
            resume: None,
            progress: None,
            replaces: None,
            star_next: None,
        }
    }
}

/// The wall clock in Unix seconds (read on every L1 hit: no calendar conversion).
pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
