//! The broker core: answers "a valid certificate for these identifiers" from the in-process
//! cache (L1), then the shared store (L2), and otherwise issues through an [`Issuer`] exactly
//! once for all concurrent callers of the same cache key.

mod error;
mod fleet;
mod renewal;
mod request;
mod service;
mod singleflight;

pub use error::{BrokerError, FailureKind, IssueError};
pub use fleet::BrokerStats;
pub use renewal::{RenewalOptions, RenewalStatus, unix_to_rfc3339};
pub use request::{CertRequest, Identifiers, RevokeRequest};
pub use service::{Broker, BrokerOptions, CacheStatus, Revoked};

use crate::store::CertRecord;

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
}
