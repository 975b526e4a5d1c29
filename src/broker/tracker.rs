//! The certificates this replica keeps fresh, one small entry per cache key it served: the
//! renewal loop ([`super::renewal`]) walks them, every hit touches one.

use std::{
    cell::Cell,
    sync::{
        LazyLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use foldhash::HashMap;
use tokio::time::Instant;
use tracing::warn;

use super::{CertRequest, Identifiers, IssueRequest, request::CacheKey, schedule::AriPlan};
use crate::instance::InstanceId;

/// One certificate the tracker keeps fresh. Every key the replica served has one, so it is
/// kept small (80 bytes with its key): the key is the map's, the renewal template is one
/// allocation of what a renewal asks the CA for, and what only a failing or ARI-scheduled
/// renewal needs is boxed.
#[derive(Debug)]
pub(super) struct Tracked {
    pub(super) template: Template,
    /// Index of the request's pool in [`Tracker::pools`].
    pub(super) pool: u32,
    /// Milliseconds since [`EPOCH`]; atomic so the hot path needs only a read lock.
    pub(super) last_requested: AtomicU64,
    /// Open WatchCertificate streams on it: a watched certificate is in use however long
    /// ago it was last asked for, so it is never dropped as idle.
    pub(super) watchers: u32,
    /// The failures since the last success, while there are any.
    pub(super) failing: Option<Box<Failing>>,
    /// The CA's renewal window for the current certificate, once fetched.
    pub(super) ari: Option<Box<AriPlan>>,
}

/// Failed renewals of one certificate since its last success.
#[derive(Debug)]
pub(super) struct Failing {
    /// When to try again.
    pub(super) retry_at: Instant,
    /// Consecutive failures (at least one).
    pub(super) failures: u32,
    pub(super) last_error: String,
}

/// What a renewal re-issues besides the pool and the key: the first request's kind,
/// identifiers and CSR, packed into one allocation. Byte 0 holds flags ([`Template::CA`],
/// [`Template::DNS`], [`Template::CSR`]), bytes 1..5 the length of the identifiers (u32,
/// big-endian), then the identifiers (the TNAuthList's DER, or the DNS names joined by
/// `,`, which no valid name contains), then the CSR's DER.
pub(super) struct Template(Box<[u8]>);

impl Template {
    /// A CA certificate (`CertRequest::ca`).
    const CA: u8 = 1;
    /// DNS names rather than a TNAuthList.
    const DNS: u8 = 2;
    /// The caller's CSR follows the identifiers.
    const CSR: u8 = 4;

    fn of(req: &CertRequest) -> Self {
        let (kind, ids) = match &req.identifiers {
            Identifiers::TnAuthList(list) => (0, list.to_der()),
            Identifiers::Dns(names) => (Self::DNS, names.join(",").into_bytes()),
        };
        let csr = req.csr_der.as_deref();
        let mut flags = kind;
        if req.ca {
            flags |= Self::CA;
        }
        if csr.is_some() {
            flags |= Self::CSR;
        }
        let len = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(5 + ids.len() + csr.map_or(0, <[u8]>::len));
        out.push(flags);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&ids);
        out.extend_from_slice(csr.unwrap_or_default());
        Self(out.into_boxed_slice())
    }

    fn flags(&self) -> u8 {
        self.0.first().copied().unwrap_or_default()
    }

    /// The identifiers, and the CSR if there was one; `None` only if the bytes are not what
    /// [`Template::of`] writes, which cannot be.
    fn parts(&self) -> Option<(Identifiers, Option<Vec<u8>>)> {
        let len: [u8; 4] = self.0.get(1..5)?.try_into().ok()?;
        let end = 5 + usize::try_from(u32::from_be_bytes(len)).ok()?;
        let ids = self.0.get(5..end)?;
        let ids = if self.flags() & Self::DNS != 0 {
            let names = std::str::from_utf8(ids).ok()?;
            Identifiers::Dns(names.split(',').map(str::to_owned).collect())
        } else {
            Identifiers::TnAuthList(crate::shaken::TnAuthList::from_der(ids).ok()?)
        };
        let csr = (self.flags() & Self::CSR != 0).then(|| self.0[end..].to_vec());
        Some((ids, csr))
    }
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("bytes", &self.0.len())
            .finish_non_exhaustive()
    }
}

/// The set of certificates kept fresh by this replica.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// Tags this tracker's entry in a thread's memo ([`Tracker::touch_hit`]).
    id: InstanceId,
    keys: RwLock<HashMap<CacheKey, Tracked>>,
    /// The names of the pools tracked certificates come from, indexed by [`Tracked::pool`]
    /// (a few: requests name configured pools only). Locked after `keys`, never before.
    pools: std::sync::Mutex<Vec<String>>,
    /// The scheduler's renew fraction, once it runs.
    fraction: std::sync::OnceLock<f64>,
}

impl Tracker {
    pub(super) fn set_fraction(&self, f: f64) {
        let _ = self.fraction.set(f);
    }

    pub(super) fn fraction(&self) -> f64 {
        self.fraction.get().copied().unwrap_or(1.0 / 3.0)
    }

    // One map operation per critical section: a poisoned map is still consistent.
    pub(super) fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CacheKey, Tracked>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<CacheKey, Tracked>> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `key` (the cache key of `req`) was just asked for; the first time, keeps
    /// `req` as its renewal template. On every cache hit: a shared lock, and a store when
    /// the time moved by [`TOUCH_RESOLUTION_MS`] (a hot key's time is one cache line that
    /// both cores would otherwise write on every hit).
    pub(super) fn touch(&self, key: CacheKey, req: &CertRequest) {
        self.touch_at(key, req, since_epoch());
    }

    /// [`Tracker::touch`] for an L1 hit: a thread that touched `key` less than
    /// [`TOUCH_RESOLUTION_MS`] ago has nothing to store, and skips even the shared lock.
    pub(super) fn touch_hit(&self, key: CacheKey, req: &CertRequest) {
        thread_local! {
            /// This thread's last touch: tracker, key, when.
            static LAST: Cell<Option<(InstanceId, CacheKey, u64)>> = const { Cell::new(None) };
        }
        let now = since_epoch();
        if let Some((id, k, at)) = LAST.get()
            && id == self.id
            && k == key
            && now.saturating_sub(at) < TOUCH_RESOLUTION_MS
        {
            return;
        }
        self.touch_at(key, req, now);
        LAST.set(Some((self.id, key, now)));
    }

    fn touch_at(&self, key: CacheKey, req: &CertRequest, now: u64) {
        if let Some(t) = self.read().get(&key) {
            if now.saturating_sub(t.last_requested.load(Ordering::Relaxed)) >= TOUCH_RESOLUTION_MS {
                t.last_requested.store(now, Ordering::Relaxed);
            }
            return;
        }
        let pool = self.pool_index(&req.pool);
        self.lock()
            .entry(key)
            .or_insert_with(|| Tracked::new(Template::of(req), pool, now));
    }

    /// Marks `key` (the cache key of `req`) watched until the guard is dropped (see
    /// [`super::Broker::watching`]).
    pub(super) fn watch(&self, key: CacheKey, req: &CertRequest) {
        let now = since_epoch();
        let pool = self.pool_index(&req.pool);
        let mut keys = self.lock();
        let t = keys
            .entry(key)
            .or_insert_with(|| Tracked::new(Template::of(req), pool, now));
        t.watchers += 1;
        t.last_requested.store(now, Ordering::Relaxed);
    }

    /// Ends one watch of `key`; the idle horizon counts from now.
    pub(super) fn unwatch(&self, key: CacheKey) {
        if let Some(t) = self.lock().get_mut(&key) {
            t.watchers = t.watchers.saturating_sub(1);
            t.last_requested.store(since_epoch(), Ordering::Relaxed);
        }
    }

    pub(super) fn pools(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of `pool` in [`Tracker::pools`], added if new.
    fn pool_index(&self, pool: &str) -> u32 {
        let mut pools = self.pools();
        let i = pools.iter().position(|p| p == pool).unwrap_or_else(|| {
            pools.push(pool.to_owned());
            pools.len() - 1
        });
        u32::try_from(i).unwrap_or(u32::MAX)
    }

    /// The pool, identifiers and CSR `t` was first requested with.
    pub(super) fn request_of(&self, t: &Tracked) -> Option<(String, Identifiers, Option<Vec<u8>>)> {
        let pool = self.pools().get(t.pool as usize)?.clone();
        let (ids, csr) = t.template.parts()?;
        Some((pool, ids, csr))
    }

    /// The issuance of a renewal of `key`, if it is tracked.
    pub(super) fn issue_request(&self, key: CacheKey) -> Option<IssueRequest> {
        let keys = self.read();
        let t = keys.get(&key)?;
        let Some((pool, identifiers, csr_der)) = self.request_of(t) else {
            warn!(key = %key, "unreadable renewal template; not renewing");
            return None;
        };
        Some(IssueRequest {
            pool,
            identifiers,
            csr_der,
            ca: t.template.flags() & Template::CA != 0,
            cache_key: key.to_string(),
            resume: None,
            progress: None,
            replaces: None,
            star_next: None,
        })
    }
}

impl Tracked {
    pub(super) fn new(template: Template, pool: u32, now: u64) -> Self {
        Self {
            template,
            pool,
            last_requested: AtomicU64::new(now),
            watchers: 0,
            failing: None,
            ari: None,
        }
    }

    /// Consecutive failed renewals.
    pub(super) fn failures(&self) -> u32 {
        self.failing.as_ref().map_or(0, |f| f.failures)
    }
}

/// Process-wide origin of the trackers' millisecond clocks.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How stale a hit may leave a key's last-requested time, in milliseconds: far below any
/// idle horizon (`renewal.idle_horizon_secs`, whole seconds).
const TOUCH_RESOLUTION_MS: u64 = 10;

pub(super) fn since_epoch() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaken::TnAuthList;

    fn req(identifiers: Identifiers, csr_der: Option<Vec<u8>>, ca: bool) -> CertRequest {
        CertRequest::for_test(identifiers, csr_der, ca)
    }

    #[test]
    fn a_template_gives_back_the_request_it_was_made_of() {
        let tn = Identifiers::TnAuthList(TnAuthList::from_spc("1234").unwrap());
        let dns = Identifiers::dns(&["b.example".into(), "a.example".into()]).unwrap();
        for r in [
            req(tn.clone(), None, false),
            req(tn, Some(vec![0x30, 1, 2, 3]), true),
            req(dns.clone(), None, true),
            req(dns, Some(vec![9; 300]), false),
        ] {
            let t = Template::of(&r);
            assert_eq!(t.parts(), Some((r.identifiers.clone(), r.csr_der.clone())));
            assert_eq!(t.flags() & Template::CA != 0, r.ca);
        }
    }

    #[test]
    fn the_tracker_keeps_each_template_and_its_pool() {
        let tracker = Tracker::default();
        let spc = |s| Identifiers::TnAuthList(TnAuthList::from_spc(s).unwrap());
        let a = req(spc("1000"), None, false);
        let b = CertRequest {
            pool: "other".into(),
            ..req(spc("2000"), None, true)
        };
        for r in [&a, &b, &a] {
            tracker.touch(r.key(), r);
        }
        assert_eq!(tracker.read().len(), 2);
        assert_eq!(tracker.pools().len(), 2);
        let issued = tracker.issue_request(b.key()).unwrap();
        assert_eq!(
            (issued.pool.as_str(), &issued.identifiers, issued.ca),
            ("other", &b.identifiers, true)
        );
        assert_eq!(issued.cache_key, b.cache_key());
        assert!(tracker.issue_request(CacheKey::of("untracked")).is_none());
    }

    #[test]
    fn a_hit_tracks_its_key_and_only_a_tracker_of_its_own() {
        let spc = |s| Identifiers::TnAuthList(TnAuthList::from_spc(s).unwrap());
        let a = req(spc("1000"), None, false);
        let (one, two) = (Tracker::default(), Tracker::default());
        one.touch_hit(a.key(), &a);
        assert_eq!(one.read().len(), 1);
        // The same key on the same thread, within the resolution, but another tracker.
        two.touch_hit(a.key(), &a);
        assert_eq!(two.read().len(), 1, "another tracker's memo does not count");
        // Forgotten meanwhile (the renewal loop's idle sweep): tracked again once the
        // thread's memo is older than the resolution.
        one.lock().clear();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while one.read().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never tracked again");
            one.touch_hit(a.key(), &a);
            std::thread::yield_now();
        }
        let last = one.read()[&a.key()].last_requested.load(Ordering::Relaxed);
        assert!(since_epoch() - last < 1_000);
    }

    #[test]
    fn a_tracked_entry_stays_small() {
        // What every key this replica served costs in the map (before the map's slack).
        assert!(size_of::<(CacheKey, Tracked)>() <= 80);
    }
}
