//! Where certificates live between requests: the record of every certificate the broker
//! issued (for lookup by cache key, serial or fingerprint) behind one trait, so a single
//! process can run on [`MemoryStore`] and a fleet on Redis ([`RedisStore`]). The same trait
//! carries the fleet coordination the broker needs to issue each certificate exactly once:
//! per-key locks, an opaque progress record, "ready" notifications, a negative cache and
//! cache invalidation. Every store is also a small [`SecretStore`]: opaque blobs with an
//! expiry, in named groups that can be dropped at once (the SPC token cache uses it; the
//! store does not know what the blobs are). Knows nothing of ACME.

mod crypto;
mod memory;
mod redis;

use std::{fmt, time::Duration};

use secrecy::zeroize::Zeroizing;
use tokio::sync::broadcast;

pub use self::redis::{RedisSettings, RedisStore, SentinelSettings, connect};
pub use crypto::{Keyring, KeyringSettings};
pub use memory::MemoryStore;

/// Re-exported from [`crate::cert`], where the shared domain lives.
pub use crate::cert::{CertRecord, CertSelector};

/// A store operation failed. Callers treat every variant except [`StoreError::Config`] as a
/// miss and carry on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store settings (Redis address, prefix, keyring) are unusable, or a record with a
    /// private key was offered to a store that has no keyring to encrypt it.
    #[error("store configuration: {0}")]
    Config(String),
    /// A stored value did not decode.
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    /// A stored private key could not be decrypted: its key id is not in the keyring, or the
    /// ciphertext fails authentication (wrong key, tampered, or moved to another record).
    #[error("stored private key cannot be decrypted: {0}")]
    Decrypt(String),
    /// [`Store::wait_ready`] gave up before the key became ready.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// The backend could not be reached or answered an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Proof of holding a fleet lock taken with [`Store::try_lock`]: a random owner token that
/// only the holder knows, so nobody else can renew or release the lock.
#[derive(Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// A fresh random token (128 bits, hex).
    fn random() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// The token as stored in the lock.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to correlate logs, not enough to release someone's lock.
        write!(f, "LockToken({}…)", &self.0[..self.0.len().min(8)])
    }
}

/// Whether the store backend answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// The backend does not answer; the broker works per instance until it is back.
    Degraded(String),
    /// The backend answers.
    Ok,
}

/// A small store of secrets: opaque blobs with an expiry, in named groups that can be
/// dropped at once. The SPC token cache (`challenge`) needs only this, so it and `ca` take
/// an `Arc<dyn SecretStore>`, not the whole [`Store`].
#[async_trait::async_trait]
pub trait SecretStore: Send + Sync + fmt::Debug {
    /// Keeps the secret blob `secret` under (`group`, `key`) for `ttl`, replacing any
    /// earlier one. Blobs are opaque to the store and sealed at rest (Redis: AES-256-GCM
    /// under the keyring, bound to their key, so it needs `store.keyring`).
    async fn put_secret(
        &self,
        group: &str,
        key: &str,
        secret: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// The blob stored under (`group`, `key`), unless it expired or was dropped.
    async fn secret(
        &self,
        group: &str,
        key: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
    /// Drops the blob under (`group`, `key`), if any.
    async fn delete_secret(&self, group: &str, key: &str) -> Result<(), StoreError>;
    /// Drops every blob of `group`; returns how many were still there.
    async fn drop_secret_group(&self, group: &str) -> Result<u64, StoreError>;
}

/// The shared certificate store, with the fleet coordination the broker needs. Every store
/// is also a [`SecretStore`], so one backend serves both (an `Arc<dyn Store>` coerces to an
/// `Arc<dyn SecretStore>`).
#[async_trait::async_trait]
pub trait Store: SecretStore {
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

    /// Takes the lock `key` for `ttl` if nobody holds it, atomically (Redis `SET NX PX`).
    /// `Ok(None)` means someone else holds it. The lock expires by itself after `ttl`, so a
    /// crashed holder never blocks the fleet for longer; a live holder extends it with
    /// [`Store::renew_lock`].
    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, StoreError>;
    /// Extends the lock to `ttl` from now if `token` still holds it. `false` means the lock
    /// expired or passed to someone else: the caller no longer owns the work.
    async fn renew_lock(
        &self,
        key: &str,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Releases the lock if `token` still holds it; does nothing otherwise.
    async fn release_lock(&self, key: &str, token: &LockToken) -> Result<(), StoreError>;

    /// Records an opaque progress blob for `key` for `ttl` (the lock holder notes its
    /// in-flight work there, so a successor can resume it). Replaces any earlier blob.
    async fn set_progress(
        &self,
        key: &str,
        progress: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// The progress blob for `key`, unless it expired or was cleared.
    async fn progress(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Forgets the progress blob for `key`.
    async fn clear_progress(&self, key: &str) -> Result<(), StoreError>;

    /// Tells every waiter on `key`, in every process, that the work on it finished (the
    /// result, if any, is in the store). Delivery is best effort; [`Store::wait_ready`]
    /// falls back to watching the lock.
    async fn publish_ready(&self, key: &str) -> Result<(), StoreError>;
    /// Waits until the work on `key` is over, then returns `Ok(())`. "Over" means either a
    /// [`Store::publish_ready`] for `key` arrived after this call started, or the lock `key`
    /// is not held (checked at the start and then every poll interval, so a missed message
    /// costs at most one interval). It does not say whether the work succeeded: read the
    /// result (e.g. [`Store::current`]) afterwards. [`StoreError::TimedOut`] once `timeout`
    /// passed with the lock still held; [`StoreError::Unavailable`] when the backend fails.
    async fn wait_ready(&self, key: &str, timeout: Duration) -> Result<(), StoreError>;

    /// Remembers for `ttl` that work on `key` failed; `reason` is opaque to the store.
    async fn put_negative(&self, key: &str, reason: &str, ttl: Duration) -> Result<(), StoreError>;
    /// The reason recorded by [`Store::put_negative`], while it lasts.
    async fn negative(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Tells every process (this one included) to drop its local copy of `cache_key`.
    async fn publish_invalidation(&self, cache_key: &str) -> Result<(), StoreError>;
    /// A stream of cache keys named by [`Store::publish_invalidation`] anywhere in the fleet.
    /// Delivery is best effort: messages published while the backend was unreachable are
    /// lost, and a [`broadcast::error::RecvError::Lagged`] means some were skipped; in both
    /// cases the local copies age out by their own TTL, or the caller clears them all.
    async fn subscribe_invalidations(&self) -> Result<broadcast::Receiver<String>, StoreError>;

    /// Whether the backend answers right now.
    async fn health(&self) -> StoreHealth;
}

/// The loop behind both [`Store::wait_ready`] implementations: checks `held` (is the lock
/// on `key` still taken?) now and every `poll`, and returns early when `key` arrives on
/// `ready`. `ready` must be subscribed before the first check, so a notification sent in
/// between is not lost.
async fn wait_for_ready<F, Fut>(
    mut ready: broadcast::Receiver<String>,
    key: &str,
    timeout: Duration,
    poll: Duration,
    mut held: F,
) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, StoreError>>,
{
    use tokio::{sync::broadcast::error::RecvError, time::Instant};

    let deadline = Instant::now() + timeout;
    loop {
        if !held().await? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(StoreError::TimedOut(format!(
                "{key:?} still locked after {timeout:?}"
            )));
        }
        let next_check = tokio::time::sleep_until((now + poll).min(deadline));
        tokio::pin!(next_check);
        loop {
            tokio::select! {
                msg = ready.recv() => match msg {
                    Ok(k) if k == key => return Ok(()),
                    Ok(_) => {}
                    // Ours may be among the skipped ones: check the lock now.
                    Err(RecvError::Lagged(_)) => break,
                    // No more messages: plain polling from here on.
                    Err(RecvError::Closed) => {
                        next_check.as_mut().await;
                        break;
                    }
                },
                () = &mut next_check => break,
            }
        }
    }
}
