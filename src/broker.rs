//! The broker core: answers "a valid certificate for these identifiers" from the in-process
//! cache (L1), then the shared store (L2), and otherwise issues through an [`Issuer`] exactly
//! once for all concurrent callers of the same cache key.

mod error;
mod fleet;
mod l1;
mod renewal;
mod request;
mod schedule;
mod service;
mod singleflight;
mod star;
mod tracker;
mod watch;

/// Re-exported from [`crate::cert`], where the shared domain lives.
pub use crate::cert::Identifiers;
pub use error::{BrokerError, FailureKind, IssueError};
pub use fleet::BrokerStats;
pub use renewal::{RenewalOptions, RenewalStatus, WatchGuard, unix_to_rfc3339};
pub use request::{CaReadiness, CertRequest, ReadyState, RevokeRequest};
pub use service::{Broker, BrokerOptions, CacheStatus, Revoked};
pub use watch::Watched;

use crate::cert::CertRecord;

/// What the broker asks an upstream to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Pool of CAs to use.
    pub pool: String,
    /// The identifiers to certify.
    pub identifiers: Identifiers,
    /// The caller's CSR (DER) when it keeps its own key.
    pub csr_der: Option<Vec<u8>>,
    /// A CA certificate for a delegate-issuing subordinate CA, not an end-entity one.
    pub ca: bool,
    /// The cache key the result will be stored under.
    pub cache_key: String,
    /// An in-flight order another replica recorded before it died: resume it instead of
    /// placing a new one. Opaque to the broker; written and read by the issuer.
    pub resume: Option<Vec<u8>>,
    /// Where the issuer records its in-flight order, so a takeover can resume it.
    pub progress: Option<ProgressSink>,
    /// The certificate this issuance replaces (a renewal), so that the CA that issued it
    /// can be told (ACME Renewal Information, RFC 9773 `replaces`).
    pub replaces: Option<Replaces>,
    /// The short-term certificate whose successor to fetch from its STAR order (RFC 8739)
    /// instead of ordering; an issuer that finds the order over places a new one.
    pub star_next: Option<std::sync::Arc<CertRecord>>,
}

/// A certificate being replaced. The issuer names it only to the CA that issued it; an
/// issuance that fails over to another CA does not mention it.
#[derive(Clone)]
pub struct Replaces {
    /// Configured name of the CA that issued it.
    pub issuer_ca: String,
    /// Its leaf certificate, DER.
    pub leaf_der: Vec<u8>,
}

impl Replaces {
    /// The predecessor `cert`, if it has a leaf.
    pub fn of(cert: &CertRecord) -> Option<Self> {
        Some(Self {
            issuer_ca: cert.issuer_ca.clone(),
            leaf_der: cert.chain_der.first()?.clone(),
        })
    }
}

impl std::fmt::Debug for Replaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replaces")
            .field("issuer_ca", &self.issuer_ca)
            .finish_non_exhaustive()
    }
}

/// When the CA that issued a certificate suggests renewing it (ACME Renewal Information,
/// RFC 9773 §4.2), as an issuer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalWindow {
    /// Earliest suggested renewal, Unix seconds.
    pub start: i64,
    /// Latest suggested renewal, Unix seconds; after `start`.
    pub end: i64,
    /// When to ask again, if the CA said.
    pub retry_after: Option<std::time::Duration>,
    /// The CA's explanation of the window, if it gave one.
    pub explanation_url: Option<String>,
}

/// Records an issuer's in-flight order (opaque bytes) where the fleet can find it. The
/// issuer awaits it before going on, so a crash right after leaves the record behind.
#[derive(Clone)]
pub struct ProgressSink(
    std::sync::Arc<dyn Fn(Vec<u8>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
);

impl ProgressSink {
    /// A sink calling `f`.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(Vec<u8>) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        Self(std::sync::Arc::new(f))
    }

    /// Records `progress`.
    pub async fn record(&self, progress: Vec<u8>) {
        (self.0)(progress).await;
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// Upstream certificate authorities, as the broker sees them. Implemented by
/// [`crate::ca::CaPool`]; tests may supply their own.
#[async_trait::async_trait]
pub trait Issuer: Send + Sync + std::fmt::Debug {
    /// Whether a pool of that name exists.
    fn has_pool(&self, pool: &str) -> bool;
    /// Obtains a certificate from the first CA of the pool that can give one.
    async fn issue(&self, req: &IssueRequest) -> Result<CertRecord, IssueError>;
    /// Revokes `cert` at the CA and account that issued it. `reason` is an RFC 5280 code.
    async fn revoke(&self, cert: &CertRecord, reason: u8) -> Result<(), IssueError>;
    /// Cancels the STAR order (RFC 8739 §3.1.2) `cert` came from, at the CA that issued
    /// it: the way to end a short-term certificate, which a STAR CA does not revoke. By
    /// default refused: the issuer knows no STAR.
    async fn cancel_star(&self, cert: &CertRecord) -> Result<(), IssueError> {
        Err(IssueError {
            ca: Some(cert.issuer_ca.clone()),
            kind: FailureKind::Refused,
            problem_type: None,
            detail: "this issuer cannot cancel STAR orders".into(),
            retry_after: None,
        })
    }
    /// The renewal window the CA that issued `cert` suggests; `Ok(None)` when that CA
    /// suggests none (the default). The broker then renews by its own rule.
    async fn renewal_window(&self, cert: &CertRecord) -> Result<Option<RenewalWindow>, IssueError> {
        let _ = cert;
        Ok(None)
    }
    /// The longest certificate lifetime any CA of `pool` issues, when it is known for every
    /// one of them (configured or learned); `None`: unknown (the default).
    fn max_lifetime(&self, pool: &str) -> Option<std::time::Duration> {
        let _ = pool;
        None
    }
    /// What is known of each CA's readiness (its ACME account); empty by default.
    fn readiness(&self) -> Vec<CaReadiness> {
        Vec::new()
    }
}
