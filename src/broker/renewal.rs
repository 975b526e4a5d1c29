//! Proactive renewal: every certificate requested within the idle horizon is renewed by one
//! replica of the fleet (the fleet lock) while the old one keeps being served; watchers
//! hear about every new certificate.
//!
//! When: inside the window the issuing CA suggests through ACME Renewal Information
//! (RFC 9773) when it offers one, else when `renew_fraction` of the lifetime is left
//! ([`super::schedule`]). The window is fetched once per certificate and again when the
//! CA's `Retry-After` has passed; a failed fetch falls back to the fraction rule and never
//! holds up a renewal. The renewal names the old certificate ([`super::Replaces`]); the
//! issuer tells only the CA that issued it.

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    CertRequest, Identifiers, IssueRequest, Replaces,
    request::CacheKey,
    schedule::{self, AriPlan},
    service::{Broker, now},
};
use crate::cert::CertRecord;

/// Tunables, from `[renewal]`.
#[derive(Debug, Clone)]
pub struct RenewalOptions {
    /// How often tracked certificates are checked.
    pub check_interval: Duration,
    /// Certificates nobody asked for this long, and no open watch holds, are no longer renewed.
    pub idle_horizon: Duration,
    /// Renew when this fraction of the lifetime is left (1/3 by default).
    pub renew_fraction: f64,
    /// First retry delay after a failed renewal; doubles per failure, with jitter.
    pub retry_base: Duration,
    /// Follow the renewal window the issuing CA suggests (ACME Renewal Information) when it
    /// offers one.
    pub use_ari: bool,
}

/// What the scheduler knows about one certificate it keeps fresh.
#[derive(Debug, Clone)]
pub struct RenewalStatus {
    /// The cache key.
    pub cache_key: String,
    /// Serial of the current certificate, if one is known.
    pub serial_hex: Option<String>,
    /// Its notAfter, Unix seconds.
    pub not_after: Option<i64>,
    /// When the next renewal is due, Unix seconds: the instant chosen inside the CA's
    /// suggested window when there is one, else by the fraction rule.
    pub next_renewal: Option<i64>,
    /// The last renewal failure, cleared by a success.
    pub last_error: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
    /// The pool the certificate is requested from.
    pub pool: String,
    /// What the certificate is for.
    pub identifiers: Identifiers,
    /// The CA that issued the current certificate, if one is known.
    pub issuer_ca: Option<String>,
    /// What the strict review of the current certificate's chain finds
    /// ([`crate::shaken::profile_findings`]); empty when it conforms.
    pub profile_findings: Vec<String>,
    /// The STAR order the current certificate came from, if it is a short-term one; then
    /// `next_renewal` is when its successor is fetched (or, for the order's last
    /// certificate, when the next order is placed).
    pub star: Option<crate::cert::StarOrder>,
}

/// One certificate the tracker keeps fresh. Every key the replica served has one, so it is
/// kept small (80 bytes with its key): the key is the map's, the renewal template is one
/// allocation of what a renewal asks the CA for, and what only a failing or ARI-scheduled
/// renewal needs is boxed.
#[derive(Debug)]
pub(super) struct Tracked {
    template: Template,
    /// Index of the request's pool in [`Tracker::pools`].
    pool: u32,
    /// Milliseconds since [`EPOCH`]; atomic so the hot path needs only a read lock.
    last_requested: AtomicU64,
    /// Open WatchCertificate streams on it: a watched certificate is in use however long
    /// ago it was last asked for, so it is never dropped as idle.
    watchers: u32,
    /// The failures since the last success, while there are any.
    failing: Option<Box<Failing>>,
    /// The CA's renewal window for the current certificate, once fetched.
    ari: Option<Box<AriPlan>>,
}

/// Failed renewals of one certificate since its last success.
#[derive(Debug)]
pub(super) struct Failing {
    /// When to try again.
    pub(super) retry_at: Instant,
    /// Consecutive failures (at least one).
    pub(super) failures: u32,
    last_error: String,
}

/// What a renewal re-issues besides the pool and the key: the first request's kind,
/// identifiers and CSR, packed into one allocation. Byte 0 holds flags ([`Template::CA`],
/// [`Template::DNS`], [`Template::CSR`]), bytes 1..5 the length of the identifiers (u32,
/// big-endian), then the identifiers (the TNAuthList's DER, or the DNS names joined by
/// `,`, which no valid name contains), then the CSR's DER.
struct Template(Box<[u8]>);

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
    keys: RwLock<HashMap<CacheKey, Tracked>>,
    /// The names of the pools tracked certificates come from, indexed by [`Tracked::pool`]
    /// (a few: requests name configured pools only). Locked after `keys`, never before.
    pools: std::sync::Mutex<Vec<String>>,
    /// The scheduler's renew fraction, once it runs.
    fraction: std::sync::OnceLock<f64>,
}

impl Tracker {
    fn set_fraction(&self, f: f64) {
        let _ = self.fraction.set(f);
    }

    fn fraction(&self) -> f64 {
        self.fraction.get().copied().unwrap_or(1.0 / 3.0)
    }

    // One map operation per critical section: a poisoned map is still consistent.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CacheKey, Tracked>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<CacheKey, Tracked>> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `key` (the cache key of `req`) was just asked for; the first time, keeps
    /// `req` as its renewal template. On every cache hit: a shared lock and a store.
    pub(super) fn touch(&self, key: CacheKey, req: &CertRequest) {
        let now = since_epoch();
        if let Some(t) = self.read().get(&key) {
            t.last_requested.store(now, Ordering::Relaxed);
            return;
        }
        let pool = self.pool_index(&req.pool);
        self.lock()
            .entry(key)
            .or_insert_with(|| Tracked::new(Template::of(req), pool, now));
    }

    /// Marks `key` (the cache key of `req`) watched until the guard is dropped (see
    /// [`Broker::watching`]).
    fn watch(&self, key: CacheKey, req: &CertRequest) {
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
    fn unwatch(&self, key: CacheKey) {
        if let Some(t) = self.lock().get_mut(&key) {
            t.watchers = t.watchers.saturating_sub(1);
            t.last_requested.store(since_epoch(), Ordering::Relaxed);
        }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
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
    fn request_of(&self, t: &Tracked) -> Option<(String, Identifiers, Option<Vec<u8>>)> {
        let pool = self.pools().get(t.pool as usize)?.clone();
        let (ids, csr) = t.template.parts()?;
        Some((pool, ids, csr))
    }

    /// The issuance of a renewal of `key`, if it is tracked.
    fn issue_request(&self, key: CacheKey) -> Option<IssueRequest> {
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
    fn new(template: Template, pool: u32, now: u64) -> Self {
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

    /// Moves the next retry of a failing renewal to `at` when that is sooner.
    pub(super) fn retry_no_later_than(&mut self, at: Instant) {
        if let Some(f) = &mut self.failing {
            f.retry_at = f.retry_at.min(at);
        }
    }
}

/// Keeps a certificate on the renewal schedule while a WatchCertificate stream is open on
/// it, whatever `renewal.idle_horizon_secs` says; from [`Broker::watching`].
#[derive(Debug)]
pub struct WatchGuard {
    broker: Broker,
    key: CacheKey,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.broker.inner().tracker.unwatch(self.key);
    }
}

impl Broker {
    /// Marks the certificate of `req` as in use until the guard is dropped: an open watch
    /// keeps it renewed even when nobody asks for it within the idle horizon.
    pub fn watching(&self, req: &CertRequest) -> WatchGuard {
        let key = req.key();
        self.inner().tracker.watch(key, req);
        WatchGuard {
            broker: self.clone(),
            key,
        }
    }

    /// Starts the renewal loop; it stops when the broker is dropped.
    pub fn spawn_renewal(&self, opts: RenewalOptions) {
        self.inner().tracker.set_fraction(opts.renew_fraction);
        let weak = self.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(opts.check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(broker) = Broker::upgrade(&weak) else {
                    break;
                };
                broker.renew_due(&opts).await;
            }
        });
    }

    /// Renewal state of every tracked certificate, for `certbroker status`.
    pub async fn renewal_status(&self) -> Vec<RenewalStatus> {
        let renew_fraction = self.inner().tracker.fraction();
        type Row = (
            String,
            Option<String>,
            u32,
            Option<AriPlan>,
            String,
            Identifiers,
        );
        let tracker = &self.inner().tracker;
        let snapshot: Vec<Row> = tracker
            .read()
            .iter()
            .filter_map(|(k, t)| {
                let (pool, identifiers, _) = tracker.request_of(t)?;
                Some((
                    k.to_string(),
                    t.failing.as_ref().map(|f| f.last_error.clone()),
                    t.failures(),
                    t.ari.as_deref().cloned(),
                    pool,
                    identifiers,
                ))
            })
            .collect();
        let mut out = vec![];
        for (key, last_error, failures, plan, pool, identifiers) in snapshot {
            let current = self.current(&key).await;
            out.push(RenewalStatus {
                pool,
                identifiers,
                issuer_ca: current.as_ref().map(|c| c.issuer_ca.clone()),
                serial_hex: current.as_ref().map(|c| c.serial_hex.clone()),
                not_after: current.as_ref().map(|c| c.not_after),
                next_renewal: current.as_ref().map(|c| {
                    super::star::plan(c, renew_fraction).map_or_else(
                        || schedule::due_at(c, renew_fraction, plan.as_ref()),
                        |s| s.due,
                    )
                }),
                star: current.as_ref().and_then(|c| c.star.as_deref().cloned()),
                profile_findings: current
                    .as_ref()
                    .map(|c| {
                        crate::shaken::profile_findings(&c.chain_der)
                            .iter()
                            .map(ToString::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                cache_key: key,
                last_error,
                failures,
            });
        }
        out.sort_by(|a, b| a.cache_key.cmp(&b.cache_key));
        out
    }

    async fn current(&self, key: &str) -> Option<Arc<CertRecord>> {
        if let Some(c) = self.inner().l1_get(&CacheKey::of(key)).await {
            return Some(c);
        }
        self.inner()
            .store
            .current(key)
            .await
            .ok()
            .flatten()
            .map(Arc::new)
    }

    async fn renew_due(&self, opts: &RenewalOptions) {
        self.inner().l1_sweep().await;
        let due: Vec<CacheKey> = {
            let mut keys = self.inner().tracker.lock();
            let horizon = opts.idle_horizon.as_millis() as u64;
            let now = since_epoch();
            keys.retain(|_, t| {
                t.watchers > 0
                    || now.saturating_sub(t.last_requested.load(Ordering::Relaxed)) < horizon
            });
            keys.iter()
                .filter(|(_, t)| {
                    t.failing
                        .as_ref()
                        .is_none_or(|f| f.retry_at <= Instant::now())
                })
                .map(|(k, _)| *k)
                .collect()
        };
        for key in due {
            let hex = key.to_string();
            let Some(current) = self.current(&hex).await else {
                continue;
            };
            let star = super::star::plan(&current, opts.renew_fraction);
            let plan = if opts.use_ari && star.is_none() {
                self.ari_plan(&hex, &current).await
            } else {
                None
            };
            let due = star.map_or_else(
                || schedule::due_at(&current, opts.renew_fraction, plan.as_ref()),
                |s| s.due,
            );
            if now() < due {
                continue;
            }
            let Some(mut request) = self.inner().tracker.issue_request(key) else {
                continue;
            };
            match star {
                Some(s) if s.fetch => request.star_next = Some(current.clone()),
                Some(_) => {}
                None if opts.use_ari => request.replaces = Replaces::of(&current),
                None => {}
            }
            let star_fetch = request.star_next.is_some();
            let old_serial = current.serial_hex.clone();
            let usable: super::fleet::Usable = Arc::new(move |c: &CertRecord| {
                c.remaining_secs(now()) > 0 && c.serial_hex != old_serial
            });
            let key = request.cache_key.clone();
            let result = self.obtain(request, usable).await;
            if let Ok((new, true)) = &result {
                info!(serial = %new.serial_hex, old = %current.serial_hex, "certificate renewed");
                self.announce(&key).await;
            }
            self.record_outcome(&key, result.err(), opts);
            if star_fetch {
                self.retry_star_soon(&key, &current);
            }
        }
    }

    /// The CA's renewal window for `current`: the one fetched before while the CA's
    /// `Retry-After` lasts, else a fresh fetch. A failed fetch yields a plan without a window
    /// (the fraction rule) that is retried after [`ARI_RETRY_AFTER_FAILURE`].
    async fn ari_plan(&self, key: &str, current: &CertRecord) -> Option<AriPlan> {
        let tracker = &self.inner().tracker;
        let known = tracker
            .read()
            .get(&CacheKey::of(key))
            .and_then(|t| t.ari.as_deref().cloned());
        if let Some(plan) = known.filter(|p| p.is_current(current, Instant::now())) {
            return Some(plan);
        }
        let serial = current.serial_hex.clone();
        let plan = match self.inner().issuer.renewal_window(current).await {
            Ok(Some(w)) if schedule::usable_window(&w, current) => {
                let at = schedule::time_in_window(&w, current);
                info!(
                    serial = %serial,
                    window_start = %unix_to_rfc3339(w.start),
                    window_end = %unix_to_rfc3339(w.end),
                    renew_at = %unix_to_rfc3339(at),
                    explanation = w.explanation_url.as_deref().unwrap_or(""),
                    "renewal scheduled inside the CA's suggested window"
                );
                AriPlan {
                    serial_hex: serial,
                    refetch_at: Instant::now() + schedule::refetch_after(w.retry_after),
                    window: Some(w),
                }
            }
            Ok(Some(w)) => {
                warn!(serial = %serial, start = w.start, end = w.end, "the CA's renewal window starts after expiry; renewing by the lifetime fraction");
                AriPlan {
                    serial_hex: serial,
                    refetch_at: Instant::now() + schedule::refetch_after(w.retry_after),
                    window: None,
                }
            }
            Ok(None) => AriPlan {
                serial_hex: serial,
                refetch_at: Instant::now() + schedule::refetch_after(None),
                window: None,
            },
            Err(e) => {
                warn!(serial = %serial, error = %e, "renewal information unavailable; renewing by the lifetime fraction");
                let wait = e
                    .retry_after
                    .map_or(ARI_RETRY_AFTER_FAILURE, |d| d.max(ARI_RETRY_AFTER_FAILURE));
                AriPlan {
                    serial_hex: serial,
                    refetch_at: Instant::now() + wait,
                    window: None,
                }
            }
        };
        if let Some(t) = tracker.lock().get_mut(&CacheKey::of(key)) {
            t.ari = Some(Box::new(plan.clone()));
        }
        Some(plan)
    }

    /// Resets the key's retry state on success; schedules a jittered backoff on failure.
    fn record_outcome(&self, key: &str, error: Option<super::BrokerError>, opts: &RenewalOptions) {
        let mut keys = self.inner().tracker.lock();
        let Some(t) = keys.get_mut(&CacheKey::of(key)) else {
            return;
        };
        match error {
            None => t.failing = None,
            Some(e) => {
                let failures = t.failures() + 1;
                let backoff = opts.retry_base * 2u32.saturating_pow(failures.min(10) - 1);
                let jitter = rand::rng().random_range(0.0..0.25);
                t.failing = Some(Box::new(Failing {
                    retry_at: Instant::now() + backoff.mul_f64(1.0 + jitter),
                    failures,
                    last_error: e.to_string(),
                }));
                self.inner().stats.record_renewal_failure();
                warn!(error = %e, failures, "renewal failed; the current certificate stays in service");
            }
        }
    }
}

/// Process-wide origin of the trackers' millisecond clocks.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn since_epoch() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// How long a failed renewal-information fetch is not repeated for a certificate (the
/// fraction rule applies meanwhile).
const ARI_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// Unix seconds now, as [`OffsetDateTime`] (for status output).
pub fn unix_to_rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaken::TnAuthList;

    fn req(identifiers: Identifiers, csr_der: Option<Vec<u8>>, ca: bool) -> CertRequest {
        CertRequest {
            identifiers,
            csr_der,
            csr_public_key: None,
            pool: "default".into(),
            min_remaining: None,
            force_renew: false,
            ca,
        }
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
    fn a_tracked_entry_stays_small() {
        // What every key this replica served costs in the map (before the map's slack).
        assert!(size_of::<(CacheKey, Tracked)>() <= 80);
    }
}
