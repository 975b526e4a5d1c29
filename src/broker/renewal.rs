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
    IssueRequest, Replaces,
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
    pub identifiers: super::Identifiers,
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

#[derive(Debug)]
pub(super) struct Tracked {
    request: IssueRequest,
    /// Milliseconds since [`EPOCH`]; atomic so the hot path needs only a read lock.
    last_requested: AtomicU64,
    /// Open WatchCertificate streams on it: a watched certificate is in use however long
    /// ago it was last asked for, so it is never dropped as idle.
    watchers: usize,
    pub(super) retry_at: Option<Instant>,
    pub(super) failures: u32,
    last_error: Option<String>,
    /// The CA's renewal window for the current certificate, once fetched.
    ari: Option<AriPlan>,
}

/// The set of certificates kept fresh by this replica.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    keys: RwLock<HashMap<String, Tracked>>,
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
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Tracked>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn lock(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Tracked>> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `key` was just asked for (or is being watched); `request` builds the
    /// renewal template the first time. On every cache hit: a shared lock and a store.
    pub(super) fn touch_with(&self, key: &str, request: impl FnOnce() -> IssueRequest) {
        let now = since_epoch();
        if let Some(t) = self.read().get(key) {
            t.last_requested.store(now, Ordering::Relaxed);
            return;
        }
        self.lock()
            .entry(key.to_owned())
            .or_insert_with(|| Tracked::new(request(), now));
    }

    /// Marks `key` watched until the guard is dropped (see [`Broker::watching`]).
    fn watch(&self, key: &str, request: impl FnOnce() -> IssueRequest) {
        let now = since_epoch();
        let mut keys = self.lock();
        let t = keys
            .entry(key.to_owned())
            .or_insert_with(|| Tracked::new(request(), now));
        t.watchers += 1;
        t.last_requested.store(now, Ordering::Relaxed);
    }

    /// Ends one watch of `key`; the idle horizon counts from now.
    fn unwatch(&self, key: &str) {
        if let Some(t) = self.lock().get_mut(key) {
            t.watchers = t.watchers.saturating_sub(1);
            t.last_requested.store(since_epoch(), Ordering::Relaxed);
        }
    }
}

impl Tracked {
    fn new(request: IssueRequest, now: u64) -> Self {
        Self {
            request,
            last_requested: AtomicU64::new(now),
            watchers: 0,
            retry_at: None,
            failures: 0,
            last_error: None,
            ari: None,
        }
    }
}

/// Keeps a certificate on the renewal schedule while a WatchCertificate stream is open on
/// it, whatever `renewal.idle_horizon_secs` says; from [`Broker::watching`].
#[derive(Debug)]
pub struct WatchGuard {
    broker: Broker,
    key: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.broker.inner().tracker.unwatch(&self.key);
    }
}

impl Broker {
    /// Marks the certificate of `req` as in use until the guard is dropped: an open watch
    /// keeps it renewed even when nobody asks for it within the idle horizon.
    pub fn watching(&self, req: &super::CertRequest) -> WatchGuard {
        let key = req.cache_key();
        self.inner()
            .tracker
            .watch(&key, || IssueRequest::template(req, &key));
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
            super::Identifiers,
        );
        let snapshot: Vec<Row> = self
            .inner()
            .tracker
            .read()
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.last_error.clone(),
                    t.failures,
                    t.ari.clone(),
                    t.request.pool.clone(),
                    t.request.identifiers.clone(),
                )
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
                star: current.as_ref().and_then(|c| c.star.clone()),
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
        if let Some(c) = self.inner().l1.get(key).await {
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
        let due: Vec<IssueRequest> = {
            let mut keys = self.inner().tracker.lock();
            let horizon = opts.idle_horizon.as_millis() as u64;
            let now = since_epoch();
            keys.retain(|_, t| {
                t.watchers > 0
                    || now.saturating_sub(t.last_requested.load(Ordering::Relaxed)) < horizon
            });
            keys.values()
                .filter(|t| t.retry_at.is_none_or(|at| at <= Instant::now()))
                .map(|t| t.request.clone())
                .collect()
        };
        for mut request in due {
            let Some(current) = self.current(&request.cache_key).await else {
                continue;
            };
            let star = super::star::plan(&current, opts.renew_fraction);
            let plan = if opts.use_ari && star.is_none() {
                self.ari_plan(&request.cache_key, &current).await
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
            // A STAR successor the CA has not issued yet is only late: retried on the
            // order's own short schedule, not after the general renewal backoff.
            let backoff = |failures: u32| {
                let general = opts.retry_base * 2u32.saturating_pow(failures.min(10) - 1);
                if star_fetch {
                    general.min(super::star::retry_after(&current, failures))
                } else {
                    general
                }
            };
            self.record_outcome(&key, result.err(), backoff);
        }
    }

    /// The CA's renewal window for `current`: the one fetched before while the CA's
    /// `Retry-After` lasts, else a fresh fetch. A failed fetch yields a plan without a window
    /// (the fraction rule) that is retried after [`ARI_RETRY_AFTER_FAILURE`].
    async fn ari_plan(&self, key: &str, current: &CertRecord) -> Option<AriPlan> {
        let tracker = &self.inner().tracker;
        let known = tracker.read().get(key).and_then(|t| t.ari.clone());
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
        if let Some(t) = tracker.lock().get_mut(key) {
            t.ari = Some(plan.clone());
        }
        Some(plan)
    }

    /// Resets the key's retry state on success; on failure, schedules the next try after
    /// `backoff(consecutive failures)`, jittered by up to a quarter.
    fn record_outcome(
        &self,
        key: &str,
        error: Option<super::BrokerError>,
        backoff: impl FnOnce(u32) -> Duration,
    ) {
        let mut keys = self.inner().tracker.lock();
        let Some(t) = keys.get_mut(key) else { return };
        match error {
            None => {
                t.failures = 0;
                t.retry_at = None;
                t.last_error = None;
            }
            Some(e) => {
                t.failures += 1;
                let backoff = backoff(t.failures);
                let jitter = rand::rng().random_range(0.0..0.25);
                t.retry_at = Some(Instant::now() + backoff.mul_f64(1.0 + jitter));
                t.last_error = Some(e.to_string());
                self.inner().stats.record_renewal_failure();
                warn!(error = %e, failures = t.failures, "renewal failed; the current certificate stays in service");
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
