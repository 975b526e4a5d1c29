//! Where certificates live between requests: the record of every certificate the broker
//! issued (for lookup by cache key, serial or fingerprint) behind one trait, so a single
//! process can run on [`MemoryStore`] and a fleet on Redis. Knows nothing of ACME.

mod memory;

use std::fmt;

pub use memory::MemoryStore;
use serde::{Deserialize, Serialize};

/// One issued certificate as the broker keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// The cache key this certificate answers.
    pub cache_key: String,
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// DER chain, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER of the leaf key when the broker generated it. Secret.
    pub private_key_pkcs8: Option<Vec<u8>>,
    /// Leaf notBefore, Unix seconds.
    pub not_before: i64,
    /// Leaf notAfter, Unix seconds.
    pub not_after: i64,
    /// Leaf serial, lowercase hex.
    pub serial_hex: String,
    /// SHA-256 of the leaf DER, lowercase hex.
    pub fingerprint_hex: String,
    /// Configured name of the CA that issued it.
    pub issuer_ca: String,
    /// The account at that CA that ordered it (needed to revoke).
    pub issuer_account: String,
}

impl fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertRecord")
            .field("cache_key", &self.cache_key)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("issuer_ca", &self.issuer_ca)
            .field(
                "private_key_pkcs8",
                &self.private_key_pkcs8.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl CertRecord {
    /// Seconds of validity left at `now` (Unix seconds); negative once expired.
    pub fn remaining_secs(&self, now: i64) -> i64 {
        self.not_after - now
    }
}

/// How a caller names a certificate it wants revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSelector {
    /// Leaf serial, lowercase hex.
    Serial(String),
    /// SHA-256 of the leaf DER, lowercase hex.
    Fingerprint(String),
}

/// A store backend failed; callers treat this as a miss and carry on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value did not decode.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

/// The shared certificate store.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The current certificate for a cache key.
    async fn current(&self, cache_key: &str) -> Result<Option<CertRecord>, StoreError>;
    /// Makes `record` the current certificate for its cache key and indexes it by serial
    /// and fingerprint until it expires.
    async fn put(&self, record: &CertRecord) -> Result<(), StoreError>;
    /// Finds any certificate the store still knows, current or superseded.
    async fn find(&self, selector: &CertSelector) -> Result<Option<CertRecord>, StoreError>;
    /// Forgets a certificate: its index entries, and the cache key's current pointer when it
    /// points at this certificate.
    async fn evict(&self, record: &CertRecord) -> Result<(), StoreError>;
}
