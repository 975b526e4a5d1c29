//! In-process store for a single broker (`store.backend = "memory"`, and `serve --dev`).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use super::{CertRecord, CertSelector, Store, StoreError};

/// Keeps records in a map; expired records are dropped on the next write.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
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
}

fn remove(inner: &mut Inner, record: &CertRecord) {
    inner.by_serial.remove(&record.serial_hex);
    inner.by_fingerprint.remove(&record.fingerprint_hex);
    if inner.current.get(&record.cache_key) == Some(&record.serial_hex) {
        inner.current.remove(&record.cache_key);
    }
}

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
