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
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use rand::Rng;
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    CertRequest, Identifiers, Replaces,
    request::CacheKey,
    schedule::{self, AriPlan},
    service::{Broker, now},
    tracker::{Failing, since_epoch},
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

    /// Resets the key's retry state on success; on failure, schedules the next try after
    /// `backoff(consecutive failures)`, jittered by up to a quarter.
    fn record_outcome(
        &self,
        key: &str,
        error: Option<super::BrokerError>,
        backoff: impl FnOnce(u32) -> Duration,
    ) {
        let mut keys = self.inner().tracker.lock();
        let Some(t) = keys.get_mut(&CacheKey::of(key)) else {
            return;
        };
        match error {
            None => t.failing = None,
            Some(e) => {
                let failures = t.failures() + 1;
                let backoff = backoff(failures);
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
