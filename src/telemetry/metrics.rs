//! Prometheus metrics. Names follow the Prometheus conventions: `certbroker_` prefix,
//! `_total` counters, `_seconds` base units.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `certbroker_requests_total` | counter | `method`, `code`, `cache_status` |
//! | `certbroker_request_duration_seconds` | histogram | `method` |
//! | `certbroker_requests_rejected_total` | counter | `method`, `reason` (`rate_limited`, `overloaded`, `timeout`) |
//! | `certbroker_issuance_duration_seconds` | histogram | `ca` |
//! | `certbroker_issuance_failures_total` | counter | `ca`, `kind` |
//! | `certbroker_store_fallbacks_total` | counter | |
//! | `certbroker_renewal_failures_total` | counter | |
//! | `certbroker_certificates` | gauge | `expires_within` (`3600`, `21600`, `86400`, `604800`, `+Inf` seconds; cumulative) |
//! | `certbroker_certificate_min_expiry_seconds` | gauge | |
//! | `certbroker_ca_breaker_state` | gauge | `ca` (0 closed, 1 half-open, 2 open); only with a [`CaBreakerSource`] |

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::api::layers::RejectionObserver;

/// Expiry windows of `certbroker_certificates`, in seconds.
const EXPIRY_WINDOWS: [i64; 4] = [3_600, 21_600, 86_400, 604_800];

/// Where CA circuit-breaker states come from: implemented by the CA pool once it tracks
/// them. Each entry: CA name and state (0 closed, 1 half-open, 2 open).
pub trait CaBreakerSource: Send + Sync + std::fmt::Debug {
    /// The current state of every CA's breaker.
    fn ca_breaker_states(&self) -> Vec<(String, i64)>;
}

/// The broker's metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    rejected: IntCounterVec,
    undecodable: IntCounterVec,
    issuance_duration: HistogramVec,
    issuance_failures: IntCounterVec,
    store_fallbacks: IntCounter,
    renewal_failures: IntCounter,
    certificates: IntGaugeVec,
    min_expiry: IntGauge,
    ca_breaker: IntGaugeVec,
    /// Certificates this replica has handed out and not seen revoked: serial → notAfter.
    served: Mutex<HashMap<String, i64>>,
    ca_source: Mutex<Option<Arc<dyn CaBreakerSource>>>,
}

/// A metric could not be registered (a name clash: a programming error).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

// === impl Metrics ===

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        let requests = IntCounterVec::new(
            Opts::new("certbroker_requests_total", "gRPC broker requests answered"),
            &["method", "code", "cache_status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "certbroker_request_duration_seconds",
                "Time to answer a broker request",
            )
            .buckets(latency_buckets.clone()),
            &["method"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "certbroker_requests_rejected_total",
                "Requests the server turned away before any work",
            ),
            &["method", "reason"],
        )?;
        let undecodable = IntCounterVec::new(
            Opts::new(
                "certbroker_requests_undecodable_total",
                "Requests whose message was not valid protobuf (answered INVALID_ARGUMENT)",
            ),
            &["message"],
        )?;
        for message in [
            "GetCertificateRequest",
            "ListRenewalsRequest",
            "RevokeRequest",
        ] {
            undecodable.with_label_values(&[message]);
        }
        let issuance_duration = HistogramVec::new(
            HistogramOpts::new(
                "certbroker_issuance_duration_seconds",
                "Time from request to certificate for requests that issued",
            )
            .buckets(latency_buckets),
            &["ca"],
        )?;
        let issuance_failures = IntCounterVec::new(
            Opts::new(
                "certbroker_issuance_failures_total",
                "Issuances or revocations that failed at a CA",
            ),
            &["ca", "kind"],
        )?;
        let store_fallbacks = IntCounter::new(
            "certbroker_store_fallbacks_total",
            "Times the shared store was unreachable and the broker issued on its own",
        )?;
        let renewal_failures = IntCounter::new(
            "certbroker_renewal_failures_total",
            "Proactive renewals that failed (each is retried with backoff; the old certificate stays in service).",
        )?;
        let certificates = IntGaugeVec::new(
            Opts::new(
                "certbroker_certificates",
                "Certificates served by this replica, by time left (cumulative windows)",
            ),
            &["expires_within"],
        )?;
        let min_expiry = IntGauge::new(
            "certbroker_certificate_min_expiry_seconds",
            "Seconds until the soonest served certificate expires",
        )?;
        let ca_breaker = IntGaugeVec::new(
            Opts::new(
                "certbroker_ca_breaker_state",
                "CA circuit breaker: 0 closed, 1 half-open, 2 open",
            ),
            &["ca"],
        )?;
        // Series alerts divide by exist from the start, at zero.
        for method in ["GetCertificate", "Revoke"] {
            for reason in ["rate_limited", "overloaded", "timeout"] {
                rejected.with_label_values(&[method, reason]);
            }
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(undecodable.clone()))?;
        registry.register(Box::new(issuance_duration.clone()))?;
        registry.register(Box::new(issuance_failures.clone()))?;
        registry.register(Box::new(store_fallbacks.clone()))?;
        registry.register(Box::new(renewal_failures.clone()))?;
        registry.register(Box::new(certificates.clone()))?;
        registry.register(Box::new(min_expiry.clone()))?;
        registry.register(Box::new(ca_breaker.clone()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                request_duration,
                rejected,
                undecodable,
                issuance_duration,
                issuance_failures,
                store_fallbacks,
                renewal_failures,
                certificates,
                min_expiry,
                ca_breaker,
                served: Mutex::new(HashMap::new()),
                ca_source: Mutex::new(None),
            }),
        })
    }

    /// Hook for CA breaker states: once set, every scrape reads them.
    pub fn set_ca_breaker_source(&self, source: Arc<dyn CaBreakerSource>) {
        *lock(&self.inner.ca_source) = Some(source);
    }

    /// One answered broker request.
    pub fn request(
        &self,
        method: &str,
        code: tonic::Code,
        cache_status: Option<&str>,
        took: Duration,
    ) {
        let code = format!("{code:?}");
        self.inner
            .requests
            .with_label_values(&[method, &code, cache_status.unwrap_or("")])
            .inc();
        self.inner
            .request_duration
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// A request that issued a new certificate at `ca`.
    pub fn issued(&self, ca: &str, took: Duration) {
        self.inner
            .issuance_duration
            .with_label_values(&[ca])
            .observe(took.as_secs_f64());
    }

    /// A CA failed an issuance or revocation; `kind` as in the error's classification.
    pub fn ca_failure(&self, ca: &str, kind: &str) {
        self.inner
            .issuance_failures
            .with_label_values(&[ca, kind])
            .inc();
    }

    /// A certificate was handed out.
    pub fn certificate_served(&self, serial_hex: &str, not_after_unix: i64) {
        lock(&self.inner.served).insert(serial_hex.to_owned(), not_after_unix);
    }

    /// A certificate was revoked; it no longer counts.
    pub fn certificate_revoked(&self, serial_hex: &str) {
        lock(&self.inner.served).remove(serial_hex);
    }

    /// The Prometheus text exposition, with gauges brought up to date; `store_fallbacks`
    /// is the broker's running count.
    pub fn render(&self, store_fallbacks: u64, renewal_failures: u64) -> String {
        let inner = &self.inner;
        for (counter, running) in [
            (&inner.store_fallbacks, store_fallbacks),
            (&inner.renewal_failures, renewal_failures),
        ] {
            let seen = counter.get();
            if running > seen {
                counter.inc_by(running - seen);
            }
        }
        for (message, running) in crate::api::codec::undecodable_counts() {
            let counter = inner.undecodable.with_label_values(&[message]);
            let seen = counter.get();
            if running > seen {
                counter.inc_by(running - seen);
            }
        }
        self.update_expiry(time::OffsetDateTime::now_utc().unix_timestamp());
        let source = lock(&inner.ca_source).clone();
        if let Some(source) = source {
            for (ca, state) in source.ca_breaker_states() {
                inner.ca_breaker.with_label_values(&[&ca]).set(state);
            }
        }
        let mut out = vec![];
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&inner.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn update_expiry(&self, now: i64) {
        let inner = &self.inner;
        let mut served = lock(&inner.served);
        served.retain(|_, not_after| *not_after > now);
        let left: Vec<i64> = served.values().map(|na| na - now).collect();
        drop(served);
        for window in EXPIRY_WINDOWS {
            let n = left.iter().filter(|l| **l <= window).count();
            inner
                .certificates
                .with_label_values(&[&window.to_string()])
                .set(n as i64);
        }
        inner
            .certificates
            .with_label_values(&["+Inf"])
            .set(left.len() as i64);
        inner
            .min_expiry
            .set(left.iter().copied().min().unwrap_or(0));
    }
}

impl RejectionObserver for Metrics {
    fn rejected(&self, method: &str, reason: &'static str) {
        self.inner
            .rejected
            .with_label_values(&[method_name(method), reason])
            .inc();
    }
}

/// `/pkg.Service/Method` → `Method`.
pub(crate) fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoned: a panic mid-update of plain counters/maps; the data is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Breakers;
    impl CaBreakerSource for Breakers {
        fn ca_breaker_states(&self) -> Vec<(String, i64)> {
            vec![("primary".into(), 2)]
        }
    }

    #[test]
    fn exposition_has_every_family_with_conventional_names() {
        let m = Metrics::new().unwrap();
        m.request(
            "GetCertificate",
            tonic::Code::Ok,
            Some("ISSUED"),
            Duration::from_millis(30),
        );
        m.issued("primary", Duration::from_millis(30));
        m.ca_failure("secondary", "unavailable");
        m.rejected(
            "/certbroker.v1.CertificateBrokerService/GetCertificate",
            "rate_limited",
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        m.certificate_served("01", now + 1_800);
        m.certificate_served("02", now + 100_000);
        m.certificate_served("03", now - 5);
        m.set_ca_breaker_source(Arc::new(Breakers));
        let text = m.render(3, 2);
        for line in [
            "certbroker_requests_total{cache_status=\"ISSUED\",code=\"Ok\",method=\"GetCertificate\"} 1",
            "certbroker_request_duration_seconds_count{method=\"GetCertificate\"} 1",
            "certbroker_issuance_duration_seconds_count{ca=\"primary\"} 1",
            "certbroker_issuance_failures_total{ca=\"secondary\",kind=\"unavailable\"} 1",
            "certbroker_requests_rejected_total{method=\"GetCertificate\",reason=\"rate_limited\"} 1",
            "certbroker_store_fallbacks_total 3",
            "certbroker_renewal_failures_total 2",
            "certbroker_certificates{expires_within=\"3600\"} 1",
            "certbroker_certificates{expires_within=\"86400\"} 1",
            "certbroker_certificates{expires_within=\"604800\"} 2",
            "certbroker_certificates{expires_within=\"+Inf\"} 2",
            "certbroker_ca_breaker_state{ca=\"primary\"} 2",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
        let min: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("certbroker_certificate_min_expiry_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((1_700..=1_800).contains(&min), "{min}");
        // Counters only go up, even when asked to render a smaller broker count.
        assert!(
            m.render(1, 0)
                .contains("certbroker_store_fallbacks_total 3")
        );
        m.certificate_revoked("01");
        assert!(
            m.render(3, 0)
                .contains("certbroker_certificates{expires_within=\"+Inf\"} 1")
        );
    }
}
