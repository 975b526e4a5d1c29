//! In-process store for a single broker (`store.backend = "memory"`, and `serve --dev`).
//! Locks, progress, negative entries and notifications work within this process only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use secrecy::zeroize::Zeroizing;
use tokio::{sync::broadcast, time::Instant};

use super::{LockToken, SecretStore, Store, StoreError, StoreHealth, wait_for_ready};
use crate::cert::{CertRecord, CertSelector};

/// Keeps records in a map; expired records are dropped on the next write. Cheap to clone:
/// clones share the same maps.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
    coord: Arc<Mutex<Coord>>,
    /// Keys whose work finished or whose lock was released.
    ready: broadcast::Sender<String>,
    invalidations: broadcast::Sender<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            coord: Arc::default(),
            ready: broadcast::channel(CHANNEL_CAPACITY).0,
            invalidations: broadcast::channel(CHANNEL_CAPACITY).0,
        }
    }
}

/// Fleet-coordination state, every entry with its expiry.
#[derive(Debug, Default)]
struct Coord {
    locks: HashMap<String, (LockToken, Instant)>,
    progress: HashMap<String, (Vec<u8>, Instant)>,
    negative: HashMap<String, (String, Instant)>,
    /// group -> key -> secret blob. In process memory only, like the certificates' keys.
    secrets: HashMap<String, SecretGroup>,
}

/// One secret group: key -> blob and its expiry.
type SecretGroup = HashMap<String, (Zeroizing<Vec<u8>>, Instant)>;

impl Coord {
    /// The live lock on `key`, dropping it if it expired.
    fn lock(&mut self, key: &str) -> Option<&LockToken> {
        live(&mut self.locks, key)
    }
}

/// The live entry for `key` in `map`, dropping it if it expired.
fn live<'m, T>(map: &'m mut HashMap<String, (T, Instant)>, key: &str) -> Option<&'m T> {
    if map
        .get(key)
        .is_some_and(|(_, until)| *until <= Instant::now())
    {
        map.remove(key);
    }
    map.get(key).map(|(v, _)| v)
}

#[derive(Debug, Default)]
struct Inner {
    /// cache key -> serial of the current certificate.
    current: HashMap<String, String>,
    /// serial -> record.
    by_serial: HashMap<String, CertRecord>,
    /// fingerprint -> serial.
    by_fingerprint: HashMap<String, String>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-read; the maps stay consistent
        // because every write below is a sequence of single-map operations.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn coord(&self) -> std::sync::MutexGuard<'_, Coord> {
        // Every critical section below is a single map operation, so a poisoned mutex still
        // guards consistent maps.
        self.coord.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn current(&self, cache_key: &str) -> Result<Option<CertRecord>, StoreError> {
        let inner = self.read();
        Ok(inner
            .current
            .get(cache_key)
            .and_then(|serial| inner.by_serial.get(serial))
            .cloned())
    }

    async fn put(&self, record: &CertRecord) -> Result<(), StoreError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut inner = self.write();
        let expired: Vec<CertRecord> = inner
            .by_serial
            .values()
            .filter(|r| r.not_after <= now)
            .cloned()
            .collect();
        for r in &expired {
            remove(&mut inner, r);
        }
        inner
            .current
            .insert(record.cache_key.clone(), record.serial_hex.clone());
        inner
            .by_fingerprint
            .insert(record.fingerprint_hex.clone(), record.serial_hex.clone());
        inner
            .by_serial
            .insert(record.serial_hex.clone(), record.clone());
        Ok(())
    }

    async fn find(&self, selector: &CertSelector) -> Result<Option<CertRecord>, StoreError> {
        let inner = self.read();
        let serial = match selector {
            CertSelector::Serial(s) => Some(s),
            CertSelector::Fingerprint(f) => inner.by_fingerprint.get(f),
        };
        Ok(serial.and_then(|s| inner.by_serial.get(s)).cloned())
    }

    async fn evict(&self, record: &CertRecord) -> Result<(), StoreError> {
        remove(&mut self.write(), record);
        Ok(())
    }

    async fn try_lock(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, StoreError> {
        let mut coord = self.coord();
        if coord.lock(key).is_some() {
            return Ok(None);
        }
        let token = LockToken::random();
        coord
            .locks
            .insert(key.to_owned(), (token.clone(), Instant::now() + ttl));
        Ok(Some(token))
    }

    async fn renew_lock(
        &self,
        key: &str,
        token: &LockToken,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut coord = self.coord();
        if coord.lock(key) != Some(token) {
            return Ok(false);
        }
        coord
            .locks
            .insert(key.to_owned(), (token.clone(), Instant::now() + ttl));
        Ok(true)
    }

    async fn release_lock(&self, key: &str, token: &LockToken) -> Result<(), StoreError> {
        let released = {
            let mut coord = self.coord();
            let owned = coord.lock(key) == Some(token);
            if owned {
                coord.locks.remove(key);
            }
            owned
        };
        if released {
            // No receiver is not an error: nobody waits.
            let _ = self.ready.send(key.to_owned());
        }
        Ok(())
    }

    async fn set_progress(
        &self,
        key: &str,
        progress: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.coord()
            .progress
            .insert(key.to_owned(), (progress.to_vec(), Instant::now() + ttl));
        Ok(())
    }

    async fn progress(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(live(&mut self.coord().progress, key).cloned())
    }

    async fn clear_progress(&self, key: &str) -> Result<(), StoreError> {
        self.coord().progress.remove(key);
        Ok(())
    }

    async fn publish_ready(&self, key: &str) -> Result<(), StoreError> {
        let _ = self.ready.send(key.to_owned());
        Ok(())
    }

    async fn wait_ready(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let rx = self.ready.subscribe();
        wait_for_ready(rx, key, timeout, POLL_INTERVAL, || async {
            Ok(self.coord().lock(key).is_some())
        })
        .await
    }

    async fn put_negative(&self, key: &str, reason: &str, ttl: Duration) -> Result<(), StoreError> {
        self.coord()
            .negative
            .insert(key.to_owned(), (reason.to_owned(), Instant::now() + ttl));
        Ok(())
    }

    async fn negative(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(live(&mut self.coord().negative, key).cloned())
    }

    async fn publish_invalidation(&self, cache_key: &str) -> Result<(), StoreError> {
        let _ = self.invalidations.send(cache_key.to_owned());
        Ok(())
    }

    async fn subscribe_invalidations(&self) -> Result<broadcast::Receiver<String>, StoreError> {
        Ok(self.invalidations.subscribe())
    }

    async fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }
}

#[async_trait::async_trait]
impl SecretStore for MemoryStore {
    async fn put_secret(
        &self,
        group: &str,
        key: &str,
        secret: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut coord = self.coord();
        let now = Instant::now();
        // Few groups of few entries: sweeping all keeps groups nobody asks for from piling up.
        coord.secrets.retain(|_, entries| {
            entries.retain(|_, (_, until)| *until > now);
            !entries.is_empty()
        });
        let entries = coord.secrets.entry(group.to_owned()).or_default();
        entries.insert(key.to_owned(), (Zeroizing::new(secret.to_vec()), now + ttl));
        Ok(())
    }

    async fn secret(
        &self,
        group: &str,
        key: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let mut coord = self.coord();
        let Some(entries) = coord.secrets.get_mut(group) else {
            return Ok(None);
        };
        Ok(live(entries, key).cloned())
    }

    async fn delete_secret(&self, group: &str, key: &str) -> Result<(), StoreError> {
        if let Some(entries) = self.coord().secrets.get_mut(group) {
            entries.remove(key);
        }
        Ok(())
    }

    async fn drop_secret_group(&self, group: &str) -> Result<u64, StoreError> {
        let now = Instant::now();
        let dropped = self.coord().secrets.remove(group).unwrap_or_default();
        Ok(dropped.values().filter(|(_, until)| *until > now).count() as u64)
    }
}

fn remove(inner: &mut Inner, record: &CertRecord) {
    inner.by_serial.remove(&record.serial_hex);
    inner.by_fingerprint.remove(&record.fingerprint_hex);
    if inner.current.get(&record.cache_key) == Some(&record.serial_hex) {
        inner.current.remove(&record.cache_key);
    }
}

/// Lock expiry is only noticed by polling; release wakes waiters at once.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const CHANNEL_CAPACITY: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, serial: &str, not_after: i64) -> CertRecord {
        CertRecord {
            cache_key: key.into(),
            chain_pem: String::new(),
            chain_der: vec![],
            private_key_pkcs8: None,
            not_before: 0,
            not_after,
            serial_hex: serial.into(),
            fingerprint_hex: format!("fp{serial}"),
            issuer_ca: "ca".into(),
            issuer_account: "acct".into(),
            issued_at: 0,
        }
    }

    #[tokio::test]
    async fn superseded_certificates_stay_findable_until_evicted() {
        let store = MemoryStore::new();
        let far = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let old = record("k", "01", far);
        let new = record("k", "02", far);
        store.put(&old).await.unwrap();
        store.put(&new).await.unwrap();
        assert_eq!(store.current("k").await.unwrap(), Some(new.clone()));
        let by_fp = CertSelector::Fingerprint("fp01".into());
        assert_eq!(store.find(&by_fp).await.unwrap(), Some(old.clone()));

        // Evicting the superseded one leaves the current pointer alone.
        store.evict(&old).await.unwrap();
        assert_eq!(store.find(&by_fp).await.unwrap(), None);
        assert_eq!(store.current("k").await.unwrap(), Some(new.clone()));
        store.evict(&new).await.unwrap();
        assert_eq!(store.current("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn expired_records_are_dropped_on_write() {
        let store = MemoryStore::new();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        store.put(&record("a", "01", now - 1)).await.unwrap();
        store.put(&record("b", "02", now + 3600)).await.unwrap();
        let sel = CertSelector::Serial("01".into());
        assert_eq!(store.find(&sel).await.unwrap(), None);
        assert_eq!(store.current("a").await.unwrap(), None);
    }
}

#[cfg(test)]
mod coord_tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn lock_is_exclusive_owned_and_expires() {
        let store = MemoryStore::new();
        let ttl = Duration::from_millis(300);
        let a = store.try_lock("k", ttl).await.unwrap().unwrap();
        assert_eq!(store.try_lock("k", ttl).await.unwrap(), None);

        let stranger = LockToken::random();
        store.release_lock("k", &stranger).await.unwrap();
        assert!(!store.renew_lock("k", &stranger, ttl).await.unwrap());
        assert_eq!(store.try_lock("k", ttl).await.unwrap(), None);

        assert!(store.renew_lock("k", &a, ttl).await.unwrap());
        store.release_lock("k", &a).await.unwrap();
        let b = store.try_lock("k", ttl).await.unwrap().unwrap();
        assert_ne!(a, b);

        tokio::time::sleep(ttl + Duration::from_millis(20)).await;
        assert!(!store.renew_lock("k", &b, ttl).await.unwrap());
        assert!(store.try_lock("k", ttl).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn wait_ready_wakes_on_publish_release_or_times_out() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        // Nobody holds the lock: nothing to wait for.
        store.wait_ready("k", Duration::ZERO).await.unwrap();

        let token = store.try_lock("k", ttl).await.unwrap().unwrap();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_ready("k", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished());
        let published = Instant::now();
        store.publish_ready("k").await.unwrap();
        waiter.await.unwrap().unwrap();
        assert!(
            published.elapsed() < POLL_INTERVAL,
            "woken by the message, not polling"
        );

        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_ready("k", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished());
        store.release_lock("k", &token).await.unwrap();
        waiter.await.unwrap().unwrap();

        store.try_lock("k", ttl).await.unwrap().unwrap();
        let err = store
            .wait_ready("k", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TimedOut(_)), "{err}");
    }

    #[tokio::test]
    async fn progress_negative_and_invalidations() {
        let store = MemoryStore::new();
        let ttl = Duration::from_millis(200);
        store.set_progress("k", b"order-url", ttl).await.unwrap();
        assert_eq!(
            store.progress("k").await.unwrap().as_deref(),
            Some(&b"order-url"[..])
        );
        store.clear_progress("k").await.unwrap();
        assert_eq!(store.progress("k").await.unwrap(), None);

        store.put_negative("k", "{\"why\":1}", ttl).await.unwrap();
        assert_eq!(
            store.negative("k").await.unwrap().as_deref(),
            Some("{\"why\":1}")
        );
        tokio::time::sleep(ttl).await;
        assert_eq!(store.negative("k").await.unwrap(), None);

        let mut rx = store.subscribe_invalidations().await.unwrap();
        store.publish_invalidation("ck").await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), "ck");
        assert_eq!(store.health().await, StoreHealth::Ok);
    }

    #[tokio::test]
    async fn secrets_expire_and_groups_drop_together() {
        let store = MemoryStore::new();
        let long = Duration::from_secs(60);
        store.put_secret("g1", "a", b"one", long).await.unwrap();
        store.put_secret("g1", "b", b"two", long).await.unwrap();
        store.put_secret("g2", "a", b"three", long).await.unwrap();
        store
            .put_secret("g2", "short", b"x", Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(&store.secret("g1", "a").await.unwrap().unwrap()[..], b"one");
        assert_eq!(store.secret("g1", "c").await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.secret("g2", "short").await.unwrap(), None);

        store.delete_secret("g2", "a").await.unwrap();
        assert_eq!(store.secret("g2", "a").await.unwrap(), None);
        store.put_secret("g2", "a", b"three", long).await.unwrap();

        assert_eq!(store.drop_secret_group("g1").await.unwrap(), 2);
        assert_eq!(store.secret("g1", "a").await.unwrap(), None);
        assert_eq!(store.secret("g1", "b").await.unwrap(), None);
        assert_eq!(
            &store.secret("g2", "a").await.unwrap().unwrap()[..],
            b"three"
        );
        assert_eq!(store.drop_secret_group("none").await.unwrap(), 0);
    }
}
