//! The in-process certificate cache (L1): a bounded moka cache, read on a hit through a
//! small per-thread memo.
//!
//! Every moka read records the access in a queue both worker threads write, and looks the
//! key up in the shared table; on a fleet that keeps asking for the same few certificates
//! that is most of what an L1 hit costs beyond the transport. Each thread therefore keeps
//! the last [`MEMO_SIZE`] entries it read, stamped with the cache's *epoch*, which every
//! change of the cache's contents (insert, invalidation, removal) advances. A memo entry
//! answers only while the epoch is the one it was read at, so a read after a change
//! always sees the change; one memo hit in [`REFRESH_EVERY`] still reads moka, so that its
//! eviction policy keeps seeing which keys are in use.
//!
//! Capacity evictions do not advance the epoch: a memo may hand out a certificate moka
//! evicted a moment ago. It is still a valid certificate for its key (the broker checks
//! its notAfter on every read), and the thread's next change-driven refresh drops it.

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use moka::{future::Cache, ops::compute::Op};

use super::request::CacheKey;
use crate::{cert::CertRecord, instance::InstanceId};

/// Entries each thread remembers.
const MEMO_SIZE: usize = 8;

/// One memo hit in this many reads moka instead, for its eviction policy.
const REFRESH_EVERY: u32 = 64;

thread_local! {
    static MEMO: RefCell<Vec<Memo>> = const { RefCell::new(Vec::new()) };
}

/// One remembered read.
struct Memo {
    cache: InstanceId,
    epoch: u64,
    key: CacheKey,
    value: Arc<CertRecord>,
    hits: u32,
}

/// The in-process cache. See the module documentation.
#[derive(Debug)]
pub(super) struct L1 {
    cache: Cache<CacheKey, Arc<CertRecord>, foldhash::fast::RandomState>,
    id: InstanceId,
    epoch: AtomicU64,
}

impl L1 {
    /// A cache of at most `capacity` certificates.
    pub(super) fn new(capacity: u64) -> Self {
        // No per-entry expiry in moka: its timer wheel costs a node per entry (~50 bytes)
        // and housekeeping work, while every read already compares notAfter with the clock
        // ([`super::service::Inner::l1_get`]); expired entries are dropped there and by
        // the renewal loop's sweep.
        let cache = Cache::builder()
            .max_capacity(capacity)
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            cache,
            id: InstanceId::default(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The certificate cached for `key`, from this thread's memo while nothing changed.
    pub(super) async fn get(&self, key: &CacheKey) -> Option<Arc<CertRecord>> {
        // Read before moka: a change after this load makes the entry stored below stale
        // at once, never a stale value current.
        let epoch = self.epoch.load(Ordering::Acquire);
        let memoized = MEMO.with_borrow_mut(|memo| {
            let m = memo
                .iter_mut()
                .find(|m| m.cache == self.id && m.key == *key && m.epoch == epoch)?;
            m.hits += 1;
            (m.hits % REFRESH_EVERY != 0).then(|| m.value.clone())
        });
        if memoized.is_some() {
            return memoized;
        }
        let value = self.cache.get(key).await?;
        MEMO.with_borrow_mut(|memo| {
            let entry = Memo {
                cache: self.id,
                epoch,
                key: *key,
                value: value.clone(),
                hits: 0,
            };
            match memo
                .iter()
                .position(|m| m.cache == self.id && m.key == *key)
            {
                Some(i) => memo[i] = entry,
                None if memo.len() < MEMO_SIZE => memo.push(entry),
                None => {
                    // The oldest goes.
                    memo.remove(0);
                    memo.push(entry);
                }
            }
        });
        Some(value)
    }

    /// Caches `value` for `key`.
    pub(super) async fn insert(&self, key: CacheKey, value: Arc<CertRecord>) {
        self.cache.insert(key, value).await;
        self.changed();
    }

    /// Drops `key`.
    pub(super) async fn invalidate(&self, key: &CacheKey) {
        self.cache.invalidate(key).await;
        self.changed();
    }

    /// Drops everything.
    pub(super) fn invalidate_all(&self) {
        self.cache.invalidate_all();
        self.changed();
    }

    /// Drops `key` if `expired` says so of its certificate.
    pub(super) async fn remove_if(&self, key: &CacheKey, expired: impl Fn(&CertRecord) -> bool) {
        self.cache
            .entry(*key)
            .and_compute_with(|e| async move {
                match e {
                    Some(e) if expired(e.value()) => Op::Remove,
                    _ => Op::Nop,
                }
            })
            .await;
        self.changed();
    }

    /// Every cached entry (a snapshot as moka iterates it).
    pub(super) fn iter(&self) -> impl Iterator<Item = (Arc<CacheKey>, Arc<CertRecord>)> + '_ {
        self.cache.iter()
    }

    fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: &str) -> Arc<CertRecord> {
        Arc::new(CertRecord {
            cache_key: "k".into(),
            chain_pem: String::new(),
            chain_der: vec![],
            private_key_pkcs8: None,
            not_before: 0,
            not_after: i64::MAX,
            serial_hex: serial.into(),
            fingerprint_hex: String::new(),
            issuer_ca: String::new(),
            issuer_account: String::new(),
            issued_at: 0,
            star: None,
        })
    }

    fn serial(c: Option<Arc<CertRecord>>) -> Option<String> {
        c.map(|c| c.serial_hex.clone())
    }

    #[tokio::test]
    async fn a_read_after_any_change_sees_the_change() {
        let l1 = L1::new(100);
        let (a, b) = (CacheKey::of("a"), CacheKey::of("b"));
        assert_eq!(serial(l1.get(&a).await), None);
        l1.insert(a, record("01")).await;
        for _ in 0..(2 * REFRESH_EVERY) {
            assert_eq!(serial(l1.get(&a).await).as_deref(), Some("01"));
        }
        l1.insert(a, record("02")).await;
        assert_eq!(serial(l1.get(&a).await).as_deref(), Some("02"), "replaced");
        l1.invalidate(&a).await;
        assert_eq!(serial(l1.get(&a).await), None, "invalidated");
        l1.insert(a, record("03")).await;
        l1.insert(b, record("04")).await;
        assert_eq!(serial(l1.get(&a).await).as_deref(), Some("03"));
        l1.remove_if(&a, |c| c.serial_hex == "03").await;
        assert_eq!(serial(l1.get(&a).await), None, "removed");
        assert_eq!(serial(l1.get(&b).await).as_deref(), Some("04"));
        l1.invalidate_all();
        assert_eq!(serial(l1.get(&b).await), None, "all invalidated");
    }

    #[tokio::test]
    async fn caches_do_not_answer_for_each_other_and_the_memo_stays_small() {
        let (one, two) = (L1::new(100), L1::new(100));
        let k = CacheKey::of("k");
        one.insert(k, record("01")).await;
        assert_eq!(serial(one.get(&k).await).as_deref(), Some("01"));
        assert_eq!(serial(two.get(&k).await), None);
        two.insert(k, record("02")).await;
        assert_eq!(serial(two.get(&k).await).as_deref(), Some("02"));
        assert_eq!(serial(one.get(&k).await).as_deref(), Some("01"));
        for i in 0..(3 * MEMO_SIZE) {
            let k = CacheKey::of(&format!("k{i}"));
            one.insert(k, record(&format!("{i}"))).await;
            assert_eq!(serial(one.get(&k).await), Some(format!("{i}")));
        }
        assert!(MEMO.with_borrow(Vec::len) <= MEMO_SIZE);
    }
}
