//! Prometheus metrics. Names follow the Prometheus conventions: `certbroker_` prefix,
//! `_total` counters, `_seconds` base units.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `certbroker_build_info` | gauge (1) | `version`, `rustc`, `git` |
//! | `certbroker_requests_total` | counter | `method`, `code` (as grpc-prometheus writes it: `OK`, `InvalidArgument`, ...), `cache_status` |
//! | `certbroker_request_duration_seconds` | histogram | `method` |
//! | `certbroker_requests_rejected_total` | counter | `method`, `reason` (`rate_limited`, `overloaded`, `timeout`) |
//! | `certbroker_issuance_duration_seconds` | histogram | `ca` |
//! | `certbroker_issuance_failures_total` | counter | `ca`, `kind` |
//! | `certbroker_store_fallbacks_total` | counter | |
//! | `certbroker_renewal_failures_total` | counter | |
//! | `certbroker_certificates` | gauge | `expires_within` (`3600`, `21600`, `86400`, `604800`, `+Inf` seconds; cumulative) |
//! | `certbroker_certificate_min_expiry_seconds` | gauge | |
//! | `certbroker_ca_breaker_state` | gauge | `ca` (0 closed, 1 half-open, 2 open); only with a [`CaBreakerSource`] |
//! | `certbroker_ca_profile_findings_total` | counter | `ca`, `finding` (a code of `shaken::FINDING_CODES`); only with a [`CaBreakerSource`] |
//! | `certbroker_ca_preauthorizations_total` | counter | `ca`, `result` (`valid`, `failed`): newAuthz pre-authorizations of configured SPCs |
//! | `certbroker_certificate_expiration_timestamp_seconds` | gauge | `key`, `identifiers`, `pool`, `ca`: notAfter, Unix seconds |
//! | `certbroker_certificate_renewal_timestamp_seconds` | gauge | same: next planned renewal, Unix seconds |
//! | `certbroker_certificate_ready_status` | gauge | same and `condition` (`True`, `False`): 1 for the condition that holds |
//! | `certbroker_acme_client_requests_total` | counter | `ca`, `endpoint`, `method`, `status` (HTTP status, `none` without an answer) |
//! | `certbroker_acme_client_request_duration_seconds` | histogram | same |
//!
//! The per-certificate families come from the renewal tracker at each scrape
//! ([`Metrics::set_certificates`]): a certificate the tracker forgets loses its series.
//!
//! Over 500 lines (tests aside) because [`Metrics::new`] registers every family of the table
//! above in one place, each with its help text; split, a family would sit apart from the others.

mod hits;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use crate::instance::InstanceId;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Undecodable requests so far, by message type (`GetCertificateRequest`, …).
static UNDECODABLE: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts one request of type `message` that could not be decoded (the server codec calls
/// it); exported as `certbroker_requests_undecodable_total{message}`.
pub fn count_undecodable(message: &'static str) {
    *UNDECODABLE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(message)
        .or_default() += 1;
}

/// How many requests of each message type could not be decoded, in this process.
pub fn undecodable_counts() -> BTreeMap<&'static str, u64> {
    UNDECODABLE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// What the server counts when it turns a request away; implemented by the metrics.
pub trait RejectionObserver: Send + Sync + std::fmt::Debug {
    /// A request was rejected before reaching a service. `reason`: `rate_limited`,
    /// `overloaded` or `timeout`.
    fn rejected(&self, method: &str, reason: &'static str);
}

/// Expiry windows of `certbroker_certificates`, in seconds.
const EXPIRY_WINDOWS: [i64; 4] = [3_600, 21_600, 86_400, 604_800];

/// Where CA circuit-breaker states come from: implemented by the CA pool once it tracks
/// them. Each entry: CA name and state (0 closed, 1 half-open, 2 open).
pub trait CaBreakerSource: Send + Sync + std::fmt::Debug {
    /// The current state of every CA's breaker.
    fn ca_breaker_states(&self) -> Vec<(String, i64)>;

    /// Running counts of profile findings in issued certificates: (CA, finding code, count).
    fn ca_profile_findings(&self) -> Vec<(String, String, u64)> {
        vec![]
    }
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
    ca_findings: IntCounterVec,
    ca_preauthorizations: IntCounterVec,
    cert_expiration: IntGaugeVec,
    cert_renewal: IntGaugeVec,
    cert_ready: IntGaugeVec,
    acme_requests: IntCounterVec,
    acme_duration: HistogramVec,
    /// Certificates this replica has handed out and not seen revoked: serial → notAfter.
    served: Mutex<foldhash::HashMap<String, i64>>,
    /// Bumped by every change of `served` other than an insert (revocations), so that a
    /// thread's memo of what it last recorded ([`Metrics::certificate_served`]) expires.
    served_epoch: std::sync::atomic::AtomicU64,
    /// Tells this instance's memos from another's (tests make many in one thread).
    id: InstanceId,
    /// The series of an L1 hit (`GetCertificate`, `OK`, `hit_local`), created on the first
    /// one so that a scrape finds them to add [`Inner::hits`] to.
    hit_local: std::sync::OnceLock<()>,
    /// L1 hits, counted per thread (most requests are those).
    hits: hits::Hits,
    ca_source: Mutex<Option<Arc<dyn CaBreakerSource>>>,
}

/// What a thread last recorded in [`Metrics::certificate_served`], besides the serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    /// [`Inner::id`] of the instance.
    metrics: InstanceId,
    /// [`Inner::served_epoch`] when it was recorded.
    epoch: u64,
    not_after: i64,
}

thread_local! {
    static LAST_SERVED: std::cell::RefCell<Option<(Served, String)>> =
        const { std::cell::RefCell::new(None) };
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
        let latency_buckets = hits::LATENCY_BUCKETS.to_vec();
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
        let ca_findings = IntCounterVec::new(
            Opts::new(
                "certbroker_ca_profile_findings_total",
                "Profile findings (non-DER encodings, SHAKEN profile departures) in certificates CAs issued",
            ),
            &["ca", "finding"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "certbroker_build_info",
                "The running build: always 1, the labels say which",
            ),
            &["version", "rustc", "git"],
        )?;
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("CERTBROKER_BUILD_RUSTC"),
                env!("CERTBROKER_BUILD_GIT"),
            ])
            .set(1);
        let cert_labels = ["key", "identifiers", "pool", "ca"];
        let cert_expiration = IntGaugeVec::new(
            Opts::new(
                "certbroker_certificate_expiration_timestamp_seconds",
                "notAfter of the current certificate of each tracked request, Unix seconds",
            ),
            &cert_labels,
        )?;
        let cert_renewal = IntGaugeVec::new(
            Opts::new(
                "certbroker_certificate_renewal_timestamp_seconds",
                "When the current certificate is next due for renewal, Unix seconds",
            ),
            &cert_labels,
        )?;
        let cert_ready = IntGaugeVec::new(
            Opts::new(
                "certbroker_certificate_ready_status",
                "1 for the condition that holds: True (a current, unexpired certificate) or False",
            ),
            &["key", "identifiers", "pool", "ca", "condition"],
        )?;
        let acme_labels = ["ca", "endpoint", "method", "status"];
        let acme_requests = IntCounterVec::new(
            Opts::new(
                "certbroker_acme_client_requests_total",
                "HTTP requests to upstream ACME servers, by CA, endpoint and HTTP status",
            ),
            &acme_labels,
        )?;
        let acme_duration = HistogramVec::new(
            HistogramOpts::new(
                "certbroker_acme_client_request_duration_seconds",
                "Time of one HTTP request to an upstream ACME server, to the whole body",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &acme_labels,
        )?;
        // Series alerts divide by exist from the start, at zero.
        let ca_preauthorizations = IntCounterVec::new(
            Opts::new(
                "certbroker_ca_preauthorizations_total",
                "Pre-authorizations (newAuthz) of configured SPCs, by outcome",
            ),
            &["ca", "result"],
        )?;
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
        registry.register(Box::new(ca_findings.clone()))?;
        registry.register(Box::new(ca_preauthorizations.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(cert_expiration.clone()))?;
        registry.register(Box::new(cert_renewal.clone()))?;
        registry.register(Box::new(cert_ready.clone()))?;
        registry.register(Box::new(acme_requests.clone()))?;
        registry.register(Box::new(acme_duration.clone()))?;
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
                ca_findings,
                ca_preauthorizations,
                cert_expiration,
                cert_renewal,
                cert_ready,
                acme_requests,
                acme_duration,
                served: Mutex::new(foldhash::HashMap::default()),
                served_epoch: std::sync::atomic::AtomicU64::new(0),
                id: InstanceId::default(),
                hit_local: std::sync::OnceLock::new(),
                hits: hits::Hits::new(),
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
        let inner = &self.inner;
        if method == "GetCertificate"
            && code == tonic::Code::Ok
            && cache_status == Some("hit_local")
        {
            inner.hit_local.get_or_init(|| {
                inner
                    .requests
                    .with_label_values(&[method, "OK", "hit_local"]);
                inner.request_duration.with_label_values(&[method]);
            });
            inner.hits.observe(took);
            return;
        }
        let code = grpc_code_name(code);
        self.inner
            .requests
            .with_label_values(&[method, code, cache_status.unwrap_or("")])
            .inc();
        self.inner
            .request_duration
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// One HTTP exchange with the ACME server of `ca`; `status` `None`: no answer.
    pub fn acme_request(
        &self,
        ca: &str,
        endpoint: &str,
        method: &str,
        status: Option<u16>,
        took: Duration,
    ) {
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        let labels = [ca, endpoint, method, status.as_str()];
        self.inner.acme_requests.with_label_values(&labels).inc();
        self.inner
            .acme_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
    }

    /// Replaces the per-certificate series with one set per tracked certificate: those
    /// no longer tracked disappear. `now`: Unix seconds, for the ready condition.
    pub fn set_certificates(&self, certs: &[crate::broker::RenewalStatus], now: i64) {
        let inner = &self.inner;
        inner.cert_expiration.reset();
        inner.cert_renewal.reset();
        inner.cert_ready.reset();
        for c in certs {
            let identifiers = identifiers_label(&c.identifiers);
            let ca = c.issuer_ca.as_deref().unwrap_or("");
            let labels = [c.cache_key.as_str(), &identifiers, &c.pool, ca];
            if let Some(not_after) = c.not_after {
                inner
                    .cert_expiration
                    .with_label_values(&labels)
                    .set(not_after);
            }
            if let Some(at) = c.next_renewal {
                inner.cert_renewal.with_label_values(&labels).set(at);
            }
            let ready = c.not_after.is_some_and(|na| na > now);
            for (condition, holds) in [("True", ready), ("False", !ready)] {
                inner
                    .cert_ready
                    .with_label_values(&[labels[0], labels[1], labels[2], labels[3], condition])
                    .set(i64::from(holds));
            }
        }
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

    /// One pre-authorization at `ca` ended with `result` (`valid` or `failed`).
    pub fn ca_preauthorization(&self, ca: &str, result: &str) {
        self.inner
            .ca_preauthorizations
            .with_label_values(&[ca, result])
            .inc();
    }

    /// A certificate was handed out.
    ///
    /// Every worker thread remembers the last certificate it recorded, so a run of hits on
    /// one certificate takes no lock after the first (the map's mutex was a cache line both
    /// cores wrote on every hit).
    pub fn certificate_served(&self, serial_hex: &str, not_after_unix: i64) {
        let inner = &self.inner;
        let epoch = inner
            .served_epoch
            .load(std::sync::atomic::Ordering::Acquire);
        let memo = Served {
            metrics: inner.id,
            epoch,
            not_after: not_after_unix,
        };
        let known = LAST_SERVED.with_borrow(|last| {
            last.as_ref()
                .is_some_and(|(m, serial)| *m == memo && serial == serial_hex)
        });
        if known {
            return;
        }
        {
            let mut served = lock(&inner.served);
            if served.get(serial_hex) != Some(&not_after_unix) {
                served.insert(serial_hex.to_owned(), not_after_unix);
            }
        }
        LAST_SERVED.with_borrow_mut(|last| match last {
            Some((m, serial)) => {
                *m = memo;
                serial.clear();
                serial.push_str(serial_hex);
            }
            None => *last = Some((memo, serial_hex.to_owned())),
        });
    }

    /// A certificate was revoked; it no longer counts.
    pub fn certificate_revoked(&self, serial_hex: &str) {
        let mut served = lock(&self.inner.served);
        served.remove(serial_hex);
        // Under the lock: a thread that records after this sees the new epoch.
        self.inner
            .served_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
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
        for (message, running) in undecodable_counts() {
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
            for (ca, finding, running) in source.ca_profile_findings() {
                let counter = inner.ca_findings.with_label_values(&[&ca, &finding]);
                let seen = counter.get();
                if running > seen {
                    counter.inc_by(running - seen);
                }
            }
        }
        let mut out = vec![];
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The registry's families, with the per-thread L1-hit counts added to their series.
    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.inner.registry.gather();
        let labels = |m: &prometheus::proto::Metric, want: &[(&str, &str)]| {
            want.iter().all(|(name, value)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *name && l.value() == *value)
            })
        };
        for family in &mut families {
            let name = family.name().to_owned();
            for m in family.mut_metric() {
                match name.as_str() {
                    "certbroker_requests_total"
                        if labels(
                            m,
                            &[
                                ("method", "GetCertificate"),
                                ("code", "OK"),
                                ("cache_status", "hit_local"),
                            ],
                        ) =>
                    {
                        self.inner.hits.add_to_counter(m);
                    }
                    "certbroker_request_duration_seconds"
                        if labels(m, &[("method", "GetCertificate")]) =>
                    {
                        self.inner.hits.add_to_histogram(m);
                    }
                    _ => {}
                }
            }
        }
        families
    }

    fn update_expiry(&self, now: i64) {
        let inner = &self.inner;
        let mut served = lock(&inner.served);
        let before = served.len();
        served.retain(|_, not_after| *not_after > now);
        if served.len() != before {
            inner
                .served_epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
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

/// The gRPC code as grpc-prometheus (grpc-go's `codes.Code.String`) writes it.
pub(crate) fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Longest `identifiers` label value; longer lists are cut and say how many more.
const IDENTIFIERS_LABEL_MAX: usize = 64;

/// The identifiers in words (`spc 1234`, `tn 12025550100`, ...), bounded in length.
fn identifiers_label(ids: &crate::cert::Identifiers) -> String {
    let full = ids.describe();
    if full.len() <= IDENTIFIERS_LABEL_MAX {
        return full;
    }
    let parts: Vec<&str> = full.split(", ").collect();
    let mut out = String::new();
    let mut used = 0;
    for p in &parts {
        let sep = if used == 0 { 0 } else { 2 };
        if out.len() + sep + p.len() > IDENTIFIERS_LABEL_MAX - 12 {
            break;
        }
        if used > 0 {
            out.push_str(", ");
        }
        out.push_str(p);
        used += 1;
    }
    if used == 0 {
        // One identifier longer than the bound: cut it at a character boundary.
        let mut end = IDENTIFIERS_LABEL_MAX - 12;
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&full[..end]);
        used = 1;
    }
    format!("{out} +{} more", parts.len() - used)
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

    /// Fails naming the first of `lines` that `text` lacks.
    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
    }

    #[derive(Debug)]
    struct Breakers;
    impl CaBreakerSource for Breakers {
        fn ca_breaker_states(&self) -> Vec<(String, i64)> {
            vec![("primary".into(), 2)]
        }
        fn ca_profile_findings(&self) -> Vec<(String, String, u64)> {
            vec![("primary".into(), "der_encoded_default".into(), 3)]
        }
    }

    #[test]
    fn grpc_codes_are_written_as_grpc_prometheus_does() {
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
        assert_eq!(grpc_code_name(tonic::Code::Cancelled), "Canceled");
        assert_eq!(
            grpc_code_name(tonic::Code::InvalidArgument),
            "InvalidArgument"
        );
        assert_eq!(
            grpc_code_name(tonic::Code::Unauthenticated),
            "Unauthenticated"
        );
    }

    #[test]
    fn identifiers_label_is_bounded() {
        use crate::cert::Identifiers;
        let dns = |n: usize| Identifiers::Dns((0..n).map(|i| format!("host{i}.example")).collect());
        assert_eq!(identifiers_label(&dns(1)), "dns host0.example");
        let long = identifiers_label(&dns(40));
        assert!(long.len() <= IDENTIFIERS_LABEL_MAX, "{long}");
        assert!(long.ends_with(" more"), "{long}");
        let one = identifiers_label(&Identifiers::Dns(vec!["x".repeat(200)]));
        assert!(one.len() <= IDENTIFIERS_LABEL_MAX, "{one}");
    }

    #[test]
    fn certificate_series_follow_the_tracker() {
        use crate::{broker::RenewalStatus, cert::Identifiers};
        let m = Metrics::new().unwrap();
        let status = |key: &str, not_after: Option<i64>| RenewalStatus {
            cache_key: key.into(),
            serial_hex: Some("01".into()),
            not_after,
            next_renewal: not_after.map(|na| na - 100),
            last_error: None,
            failures: 0,
            pool: "default".into(),
            identifiers: Identifiers::Dns(vec!["a.example".into()]),
            issuer_ca: Some("primary".into()),
            profile_findings: vec![],
            star: None,
        };
        m.set_certificates(&[status("k1", Some(2_000)), status("k2", Some(500))], 1_000);
        let text = m.render(0, 0);
        let labels = |k: &str| {
            format!("ca=\"primary\",identifiers=\"dns a.example\",key=\"{k}\",pool=\"default\"")
        };
        for line in [
            format!(
                "certbroker_certificate_expiration_timestamp_seconds{{{}}} 2000",
                labels("k1")
            ),
            format!(
                "certbroker_certificate_renewal_timestamp_seconds{{{}}} 1900",
                labels("k1")
            ),
            "certbroker_certificate_ready_status{ca=\"primary\",condition=\"True\",identifiers=\"dns a.example\",key=\"k1\",pool=\"default\"} 1".to_owned(),
            // k2 is expired: not ready.
            "certbroker_certificate_ready_status{ca=\"primary\",condition=\"False\",identifiers=\"dns a.example\",key=\"k2\",pool=\"default\"} 1".to_owned(),
        ] {
            assert!(text.contains(&line), "missing {line}:\n{text}");
        }
        // k1 forgotten: its series go.
        m.set_certificates(&[status("k2", Some(500))], 1_000);
        let text = m.render(0, 0);
        assert!(!text.contains("key=\"k1\""), "{text}");
        assert!(text.contains("key=\"k2\""), "{text}");
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
        m.ca_preauthorization("primary", "valid");
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
        assert_lines(
            &text,
            &[
                "certbroker_requests_total{cache_status=\"ISSUED\",code=\"OK\",method=\"GetCertificate\"} 1",
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
                "certbroker_ca_profile_findings_total{ca=\"primary\",finding=\"der_encoded_default\"} 3",
                "certbroker_ca_preauthorizations_total{ca=\"primary\",result=\"valid\"} 1",
            ],
        );
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

    #[test]
    fn a_thread_remembering_its_last_certificate_misses_no_change() {
        let inf = |m: &Metrics| {
            m.render(0, 0)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("certbroker_certificates{expires_within=\"+Inf\"} ")
                        .map(|n| n.parse::<u64>().unwrap())
                })
                .unwrap()
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (a, b) = (Metrics::new().unwrap(), Metrics::new().unwrap());
        a.certificate_served("01", now + 1_000);
        a.certificate_served("01", now + 1_000);
        // Another instance on the same thread records the same certificate for itself.
        b.certificate_served("01", now + 1_000);
        assert_eq!((inf(&a), inf(&b)), (1, 1));
        // Revoked, then served again (a re-issue with the same serial in a test CA): counted.
        a.certificate_revoked("01");
        assert_eq!(inf(&a), 0);
        a.certificate_served("01", now + 1_000);
        assert_eq!(inf(&a), 1);
        // Expired and swept by a scrape, then served again: counted again.
        a.certificate_served("02", now - 1);
        assert_eq!(inf(&a), 1, "an expired one is not counted");
        a.certificate_served("02", now + 500);
        assert_eq!(inf(&a), 2, "renewed notAfter for the same serial");
        // Hits on the memo's certificate from another thread are recorded there too.
        let a2 = a.clone();
        std::thread::spawn(move || a2.certificate_served("03", now + 10))
            .join()
            .unwrap();
        assert_eq!(inf(&a), 3);
    }

    #[test]
    fn l1_hits_count_in_the_same_series_as_other_answers() {
        let m = Metrics::new().unwrap();
        for _ in 0..3 {
            m.request(
                "GetCertificate",
                tonic::Code::Ok,
                Some("hit_local"),
                Duration::from_millis(1),
            );
        }
        m.request(
            "GetCertificate",
            tonic::Code::Ok,
            Some("issued"),
            Duration::from_millis(1),
        );
        let text = m.render(0, 0);
        assert_lines(
            &text,
            &[
                "certbroker_requests_total{cache_status=\"hit_local\",code=\"OK\",method=\"GetCertificate\"} 3",
                "certbroker_requests_total{cache_status=\"issued\",code=\"OK\",method=\"GetCertificate\"} 1",
                "certbroker_request_duration_seconds_count{method=\"GetCertificate\"} 4",
                // The hits, counted per thread, are in the buckets with the other answers.
                "certbroker_request_duration_seconds_bucket{method=\"GetCertificate\",le=\"0.005\"} 4",
                "certbroker_request_duration_seconds_bucket{method=\"GetCertificate\",le=\"+Inf\"} 4",
                "certbroker_request_duration_seconds_sum{method=\"GetCertificate\"} 0.004",
            ],
        );
        // A hit from another thread, and a slow one.
        let m2 = m.clone();
        std::thread::spawn(move || {
            m2.request(
                "GetCertificate",
                tonic::Code::Ok,
                Some("hit_local"),
                Duration::from_millis(20),
            )
        })
        .join()
        .unwrap();
        let text = m.render(0, 0);
        assert_lines(
            &text,
            &[
                "certbroker_requests_total{cache_status=\"hit_local\",code=\"OK\",method=\"GetCertificate\"} 4",
                "certbroker_request_duration_seconds_bucket{method=\"GetCertificate\",le=\"0.01\"} 4",
                "certbroker_request_duration_seconds_bucket{method=\"GetCertificate\",le=\"0.025\"} 5",
                "certbroker_request_duration_seconds_count{method=\"GetCertificate\"} 5",
            ],
        );
    }
}
