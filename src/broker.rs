//! The broker core: answers "a valid certificate for these identifiers" from the in-process
//! cache (L1), then the shared store (L2), and otherwise issues through an [`Issuer`] exactly
//! once for all concurrent callers of the same cache key.

mod error;
mod fleet;
mod request;
mod service;
mod singleflight;

pub use error::{BrokerError, FailureKind, IssueError};
pub use fleet::BrokerStats;
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
    /// The cache key the result will be stored under.
    pub cache_key: String,
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
