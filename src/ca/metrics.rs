//! In-process per-CA counters: attempts, outcomes, failures by problem type, latency.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use super::breaker::BreakerState;
use crate::{
    broker::{FailureKind, IssueError},
    shaken::Finding,
};

/// A snapshot of one CA's counters, from [`super::CaPool::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaStats {
    /// Configured name.
    pub name: String,
    /// Attempts that were sent to the CA (skipped ones excluded).
    pub attempts: u64,
    /// Attempts that returned a certificate.
    pub successes: u64,
    /// Failed attempts by ACME problem type, or by class (`timeout`, `unavailable`,
    /// `rate_limited`, `refused`) when the CA sent no problem document.
    pub failures: BTreeMap<String, u64>,
    /// Requests that skipped this CA because of its breaker or `Retry-After`.
    pub skipped: u64,
    /// Hedged attempts dropped because another CA won first.
    pub abandoned: u64,
    /// Certificates issued by a hedged loser and revoked as superseded.
    pub superseded: u64,
    /// Breaker state now.
    pub breaker: BreakerState,
    /// Sum of the latencies of finished attempts (success or failure).
    pub latency_sum: Duration,
    /// Number of latencies in [`CaStats::latency_sum`].
    pub latency_count: u64,
    /// Profile findings in the certificates this CA issued, by finding code
    /// ([`crate::shaken::FINDING_CODES`]), whether handed out or refused under
    /// `strict_profile`.
    pub profile_findings: BTreeMap<String, u64>,
}

/// The live counters of one CA.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    attempts: u64,
    successes: u64,
    failures: BTreeMap<String, u64>,
    skipped: u64,
    abandoned: u64,
    superseded: u64,
    latency_sum: Duration,
    latency_count: u64,
    profile_findings: BTreeMap<String, u64>,
}

/// Which counter an event bumps.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    Attempt,
    Success(Duration),
    Failure(&'a IssueError, Duration),
    Skipped,
    Abandoned,
    Superseded,
    /// The findings of one issued certificate.
    Findings(&'a [Finding]),
}

impl Metrics {
    pub(crate) fn record(&self, event: Event<'_>) {
        let mut c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Attempt => c.attempts += 1,
            Event::Success(latency) => {
                c.successes += 1;
                c.latency_sum += latency;
                c.latency_count += 1;
            }
            Event::Failure(err, latency) => {
                *c.failures.entry(failure_label(err)).or_default() += 1;
                c.latency_sum += latency;
                c.latency_count += 1;
            }
            Event::Skipped => c.skipped += 1,
            Event::Abandoned => c.abandoned += 1,
            Event::Superseded => c.superseded += 1,
            Event::Findings(findings) => {
                for f in findings {
                    *c.profile_findings.entry(f.code.to_owned()).or_default() += 1;
                }
            }
        }
    }

    pub(crate) fn snapshot(&self, name: &str, breaker: BreakerState) -> CaStats {
        let c = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        CaStats {
            name: name.to_owned(),
            attempts: c.attempts,
            successes: c.successes,
            failures: c.failures.clone(),
            skipped: c.skipped,
            abandoned: c.abandoned,
            superseded: c.superseded,
            breaker,
            latency_sum: c.latency_sum,
            latency_count: c.latency_count,
            profile_findings: c.profile_findings.clone(),
        }
    }
}

/// Reports one CA's ACME requests to the broker's metrics (the `ca` label is the CA's
/// configured name), so the acme module needs no metrics library.
#[derive(Debug)]
pub(crate) struct AcmeRequests {
    pub(crate) ca: String,
    /// Empty until the metrics exist; requests before that are not counted.
    pub(crate) sink: std::sync::Arc<std::sync::OnceLock<crate::telemetry::Metrics>>,
}

impl crate::acme::RequestObserver for AcmeRequests {
    fn observe(
        &self,
        endpoint: crate::acme::Endpoint,
        method: &'static str,
        status: Option<u16>,
        took: Duration,
    ) {
        if let Some(m) = self.sink.get() {
            m.acme_request(&self.ca, endpoint.as_str(), method, status, took);
        }
    }
}

fn failure_label(err: &IssueError) -> String {
    if let Some(t) = &err.problem_type {
        return t.clone();
    }
    match err.kind {
        FailureKind::Refused => "refused",
        FailureKind::Unavailable => "unavailable",
        FailureKind::RateLimited => "rate_limited",
        FailureKind::Timeout => "timeout",
        FailureKind::NoSuchPool => "no_such_pool",
    }
    .to_owned()
}

impl crate::telemetry::CaBreakerSource for super::CaPool {
    fn ca_breaker_states(&self) -> Vec<(String, i64)> {
        self.stats()
            .into_iter()
            .map(|s| {
                let state = match s.breaker {
                    BreakerState::Closed => 0,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open => 2,
                };
                (s.name, state)
            })
            .collect()
    }

    fn ca_profile_findings(&self) -> Vec<(String, String, u64)> {
        self.stats()
            .into_iter()
            .flat_map(|s| {
                let name = s.name;
                s.profile_findings
                    .into_iter()
                    .map(move |(code, n)| (name.clone(), code, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_keyed_by_problem_type_or_class() {
        let m = Metrics::default();
        let err = |kind, ptype: Option<&str>| IssueError {
            ca: Some("a".into()),
            kind,
            problem_type: ptype.map(str::to_owned),
            detail: String::new(),
            retry_after: None,
        };
        let ms = Duration::from_millis;
        m.record(Event::Attempt);
        m.record(Event::Failure(
            &err(
                FailureKind::RateLimited,
                Some("urn:ietf:params:acme:error:rateLimited"),
            ),
            ms(10),
        ));
        m.record(Event::Attempt);
        m.record(Event::Failure(&err(FailureKind::Timeout, None), ms(20)));
        m.record(Event::Attempt);
        m.record(Event::Success(ms(30)));
        m.record(Event::Skipped);
        let s = m.snapshot("a", BreakerState::Closed);
        assert_eq!((s.attempts, s.successes, s.skipped), (3, 1, 1));
        assert_eq!(s.failures["urn:ietf:params:acme:error:rateLimited"], 1);
        assert_eq!(s.failures["timeout"], 1);
        assert_eq!((s.latency_sum, s.latency_count), (ms(60), 3));
    }
}
