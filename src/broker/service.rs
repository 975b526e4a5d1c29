//! [`Broker`]: cache lookup order, single-flight issuance, revocation.

use std::{sync::Arc, time::Duration};

use moka::{Expiry, future::Cache};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::{
    BrokerError, CertRequest, IssueRequest, Issuer, RevokeRequest, singleflight::SingleFlight,
};
use crate::store::{CertRecord, Store};

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
}

type IssueResult = Result<Arc<CertRecord>, BrokerError>;

/// The broker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    issuer: Arc<dyn Issuer>,
    store: Arc<dyn Store>,
    l1: Cache<String, Arc<CertRecord>>,
    flights: SingleFlight<IssueResult>,
    opts: BrokerOptions,
}

// === impl Broker ===

impl Broker {
    /// A broker over an issuer and a store.
    pub fn new(issuer: Arc<dyn Issuer>, store: Arc<dyn Store>, opts: BrokerOptions) -> Self {
        let l1 = Cache::builder()
            .max_capacity(opts.cache_capacity)
            .expire_after(UntilNotAfter)
            .build();
        Self {
            inner: Arc::new(Inner {
                issuer,
                store,
                l1,
                flights: SingleFlight::new(),
                opts,
            }),
        }
    }

    /// A certificate for `req`: L1, then the store, then one issuance shared by every
    /// concurrent caller with the same cache key.
    #[tracing::instrument(skip_all, fields(pool = %req.pool, force_renew = req.force_renew))]
    pub async fn get_certificate(
        &self,
        req: CertRequest,
    ) -> Result<(Arc<CertRecord>, CacheStatus), BrokerError> {
        let inner = &self.inner;
        if !inner.issuer.has_pool(&req.pool) {
            return Err(BrokerError::invalid(
                "ca_pool",
                format!("no CA serves pool {:?}", req.pool),
            ));
        }
        let key = req.cache_key();
        let min_remaining = req
            .min_remaining
            .unwrap_or(inner.opts.default_min_remaining);
        let fresh = |c: &CertRecord| c.remaining_secs(now()) > min_remaining.as_secs() as i64;

        if !req.force_renew {
            if let Some(c) = inner.l1.get(&key).await.filter(|c| fresh(c)) {
                return Ok((c, CacheStatus::HitLocal));
            }
            match inner.store.current(&key).await {
                Ok(Some(c)) if fresh(&c) => {
                    let c = Arc::new(c);
                    inner.l1.insert(key, c.clone()).await;
                    return Ok((c, CacheStatus::HitShared));
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "store lookup failed; treating as a miss"),
            }
        }

        let this = self.clone();
        let issue_req = IssueRequest {
            pool: req.pool.clone(),
            identifiers: req.identifiers.clone(),
            csr_der: req.csr_der.clone(),
            cache_key: key.clone(),
        };
        let (result, joined) = inner
            .flights
            .run(
                &key,
                move || async move { this.issue_and_store(issue_req).await },
                |panic| {
                    Err(BrokerError::Internal(format!(
                        "issuance task failed: {panic}"
                    )))
                },
            )
            .await;
        let cert = result?;
        if !fresh(&cert) {
            return Err(BrokerError::invalid(
                "min_remaining_validity",
                format!(
                    "the CA issued a certificate with only {}s of validity left, less than the {}s asked for",
                    cert.remaining_secs(now()),
                    min_remaining.as_secs()
                ),
            ));
        }
        let status = if joined {
            CacheStatus::Joined
        } else {
            CacheStatus::Issued
        };
        Ok((cert, status))
    }

    /// Revokes a certificate at the CA that issued it and forgets it, so the next request
    /// for its identifiers issues anew.
    #[tracing::instrument(skip_all)]
    pub async fn revoke(&self, req: RevokeRequest) -> Result<Revoked, BrokerError> {
        let inner = &self.inner;
        let record = inner
            .store
            .find(&req.selector)
            .await
            .map_err(|e| BrokerError::Internal(e.to_string()))?
            .ok_or_else(|| {
                BrokerError::NotFound(format!("no certificate known for {:?}", req.selector))
            })?;
        inner.issuer.revoke(&record, req.reason).await?;
        inner.l1.invalidate(&record.cache_key).await;
        if let Err(e) = inner.store.evict(&record).await {
            warn!(error = %e, serial = %record.serial_hex, "revoked certificate could not be evicted from the store");
        }
        info!(serial = %record.serial_hex, issuer_ca = %record.issuer_ca, reason = req.reason, "certificate revoked");
        Ok(Revoked {
            serial_hex: record.serial_hex,
            issuer_ca: record.issuer_ca,
            revoked_at: OffsetDateTime::now_utc(),
        })
    }

    async fn issue_and_store(&self, req: IssueRequest) -> IssueResult {
        let inner = &self.inner;
        let timeout = inner.opts.issuance_timeout;
        let record = tokio::time::timeout(timeout, inner.issuer.issue(&req))
            .await
            .map_err(|_| BrokerError::DeadlineExceeded(timeout))??;
        info!(
            serial = %record.serial_hex,
            issuer_ca = %record.issuer_ca,
            not_after = record.not_after,
            "certificate issued"
        );
        if let Err(e) = inner.store.put(&record).await {
            warn!(error = %e, "issued certificate could not be written to the store");
        }
        let record = Arc::new(record);
        inner.l1.insert(req.cache_key, record.clone()).await;
        Ok(record)
    }
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// L1 entries live no longer than their certificate.
struct UntilNotAfter;

impl Expiry<String, Arc<CertRecord>> for UntilNotAfter {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CertRecord>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            value.remaining_secs(now()).max(0) as u64
        ))
    }
}
