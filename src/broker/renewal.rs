//! Proactive renewal: every certificate requested within the idle horizon is renewed when
//! `renew_fraction` of its lifetime is left, by one replica of the fleet (the fleet lock),
//! while the old one keeps being served. Watchers hear about every new certificate.

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
    IssueRequest,
    service::{Broker, now},
};
use crate::store::CertRecord;

/// Tunables, from `[renewal]`.
#[derive(Debug, Clone)]
pub struct RenewalOptions {
    /// How often tracked certificates are checked.
    pub check_interval: Duration,
    /// Certificates nobody asked for (or watched) this long are no longer renewed.
    pub idle_horizon: Duration,
    /// Renew when this fraction of the lifetime is left (1/3 by default).
    pub renew_fraction: f64,
    /// First retry delay after a failed renewal; doubles per failure, with jitter.
    pub retry_base: Duration,
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
    /// When the next renewal is due, Unix seconds.
    pub next_renewal: Option<i64>,
    /// The last renewal failure, cleared by a success.
    pub last_error: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
}

#[derive(Debug)]
struct Tracked {
    request: IssueRequest,
    /// Milliseconds since [`EPOCH`]; atomic so the hot path needs only a read lock.
    last_requested: AtomicU64,
    retry_at: Option<Instant>,
    failures: u32,
    last_error: Option<String>,
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

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Tracked>> {
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
            .or_insert_with(|| Tracked {
                request: request(),
                last_requested: AtomicU64::new(now),
                retry_at: None,
                failures: 0,
                last_error: None,
            });
    }
}

impl Broker {
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
        let snapshot: Vec<(String, Option<String>, u32)> = self
            .inner()
            .tracker
            .read()
            .iter()
            .map(|(k, t)| (k.clone(), t.last_error.clone(), t.failures))
            .collect();
        let mut out = vec![];
        for (key, last_error, failures) in snapshot {
            let current = self.current(&key).await;
            out.push(RenewalStatus {
                serial_hex: current.as_ref().map(|c| c.serial_hex.clone()),
                not_after: current.as_ref().map(|c| c.not_after),
                next_renewal: current.as_ref().map(|c| renew_at(c, renew_fraction)),
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
                now.saturating_sub(t.last_requested.load(Ordering::Relaxed)) < horizon
            });
            keys.values()
                .filter(|t| t.retry_at.is_none_or(|at| at <= Instant::now()))
                .map(|t| t.request.clone())
                .collect()
        };
        for request in due {
            let Some(current) = self.current(&request.cache_key).await else {
                continue;
            };
            if now() < renew_at(&current, opts.renew_fraction) {
                continue;
            }
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
        }
    }

    /// Resets the key's retry state on success; schedules a jittered backoff on failure.
    fn record_outcome(&self, key: &str, error: Option<super::BrokerError>, opts: &RenewalOptions) {
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
                let backoff = opts.retry_base * 2u32.saturating_pow(t.failures.min(10) - 1);
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

/// When a certificate is due: `fraction` of its lifetime before notAfter. The lifetime
/// starts when the broker obtained it, or at notBefore if that is later.
fn renew_at(c: &CertRecord, fraction: f64) -> i64 {
    let start = c.not_before.max(c.issued_at);
    let lifetime = (c.not_after - start).max(0) as f64;
    c.not_after - (lifetime * fraction) as i64
}

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

    #[test]
    fn renews_with_a_third_left() {
        let c = CertRecord {
            cache_key: "k".into(),
            chain_pem: String::new(),
            chain_der: vec![],
            private_key_pkcs8: None,
            not_before: 1000,
            not_after: 1300,
            serial_hex: "1".into(),
            fingerprint_hex: "f".into(),
            issuer_ca: "ca".into(),
            issuer_account: "a".into(),
            issued_at: 0,
        };
        assert_eq!(renew_at(&c, 1.0 / 3.0), 1200);
        assert_eq!(renew_at(&c, 0.5), 1150);
        // A backdated notBefore does not make a fresh certificate look half spent.
        let backdated = CertRecord {
            not_before: 1000 - 300,
            issued_at: 1000,
            ..c
        };
        assert_eq!(renew_at(&backdated, 1.0 / 3.0), 1200);
    }
}
