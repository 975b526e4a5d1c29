//! Per-CA circuit breaker and `Retry-After` gate.
//!
//! Closed: every request goes through; `failure_threshold` consecutive retryable failures
//! open it. Open: the CA is skipped until the cool-down has passed; then one probe is let
//! through (half-open). The probe's success closes the breaker, its failure re-opens it for
//! another cool-down. Independently, a `Retry-After` on a rateLimited or 503 answer
//! ([RFC 8555 §6.6](https://www.rfc-editor.org/rfc/rfc8555#section-6.6),
//! [RFC 9110 §10.2.3](https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3)) keeps every
//! request away from the CA until the instant it named. The gate remembers which of the two
//! set it: a skip after `rateLimited` is rate limiting, a skip after a 5xx is an outage.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::config::BreakerSettings;

/// Breaker state, as reported in [`super::CaStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// The CA is skipped until the cool-down ends.
    Open,
    /// One probe request is allowed to decide between closed and open.
    HalfOpen,
}

/// Why a CA was skipped without being asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The CA answered `rateLimited` with a `Retry-After` that has not passed.
    RateLimited,
    /// The CA failed (5xx, network) with a `Retry-After` that has not passed.
    RetryAfter,
    /// The breaker is open.
    Open,
    /// The breaker is half-open and its one probe is in flight.
    ProbeInFlight,
}

/// A CA that must not be asked now, and when it may be asked again.
#[derive(Debug, Clone, Copy)]
pub struct Skip {
    /// Why.
    pub reason: SkipReason,
    /// Earliest instant a request may go to the CA again.
    pub until: Instant,
}

/// One CA's breaker. Shared between concurrent requests.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    inner: Arc<Mutex<State>>,
    threshold: u32,
    cool_down: Duration,
    max_retry_after: Duration,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    consecutive_failures: u32,
    /// The `Retry-After` gate, and whether a rateLimited answer set it.
    not_before: Option<(Instant, bool)>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_out: bool },
}

/// Leave to send one request. Report its outcome with [`Permit::success`] or
/// [`Permit::failure`]; dropping it unreported (the attempt was abandoned) frees the
/// half-open probe slot without judging the CA.
#[derive(Debug)]
#[must_use]
pub(crate) struct Permit {
    breaker: Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(s: &BreakerSettings) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                phase: Phase::Closed,
                consecutive_failures: 0,
                not_before: None,
            })),
            threshold: s.failure_threshold.get(),
            cool_down: s.cool_down,
            max_retry_after: s.max_retry_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a request may go to the CA at `now`.
    pub(crate) fn admit(&self, now: Instant) -> Result<Permit, Skip> {
        let mut s = self.lock();
        if let Some((until, rate_limited)) = s.not_before.filter(|(t, _)| *t > now) {
            return Err(Skip {
                reason: if rate_limited {
                    SkipReason::RateLimited
                } else {
                    SkipReason::RetryAfter
                },
                until,
            });
        }
        let probe = match s.phase {
            Phase::Closed => false,
            Phase::Open { until } if now < until => {
                return Err(Skip {
                    reason: SkipReason::Open,
                    until,
                });
            }
            Phase::Open { .. } | Phase::HalfOpen { probe_out: false } => {
                s.phase = Phase::HalfOpen { probe_out: true };
                true
            }
            Phase::HalfOpen { probe_out: true } => {
                return Err(Skip {
                    reason: SkipReason::ProbeInFlight,
                    until: now + self.cool_down.min(Duration::from_secs(1)),
                });
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            reported: false,
        })
    }

    /// The state right now (an open breaker whose cool-down has passed reports half-open).
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl Permit {
    /// The CA answered: it issued, or it refused the request itself (a refusal says the
    /// CA is healthy). Closes the breaker.
    pub(crate) fn success(mut self) {
        self.reported = true;
        let mut s = self.breaker.lock();
        s.consecutive_failures = 0;
        s.phase = Phase::Closed;
    }

    /// A retryable failure (network, timeout, 5xx, rateLimited), with the CA's
    /// `Retry-After` if it sent one; `rate_limited` when the answer was `rateLimited`.
    pub(crate) fn failure(mut self, retry_after: Option<Duration>, rate_limited: bool) {
        self.reported = true;
        let now = Instant::now();
        let b = &self.breaker;
        let mut s = b.lock();
        if let Some(after) = retry_after {
            let until = now + after.min(b.max_retry_after);
            // The later instant wins, and with it the reason that named it.
            s.not_before = Some(match s.not_before {
                Some(old) if old.0 >= until => old,
                _ => (until, rate_limited),
            });
        }
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        if self.probe || s.consecutive_failures >= b.threshold {
            s.phase = Phase::Open {
                until: now + b.cool_down,
            };
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            let mut s = self.breaker.lock();
            if let Phase::HalfOpen { probe_out: true } = s.phase {
                s.phase = Phase::HalfOpen { probe_out: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, cool_down_secs: u64) -> Breaker {
        Breaker::new(&BreakerSettings {
            failure_threshold: std::num::NonZeroU32::new(threshold).unwrap(),
            cool_down: Duration::from_secs(cool_down_secs),
            max_retry_after: Duration::from_secs(60),
        })
    }

    #[test]
    fn opens_after_threshold_and_closes_after_probe() {
        let b = breaker(2, 0);
        let now = Instant::now();
        b.admit(now).unwrap().failure(None, false);
        assert_eq!(b.state(now), BreakerState::Closed);
        b.admit(now).unwrap().failure(None, false);
        // Cool-down 0: open, but immediately eligible for a probe.
        let probe = b.admit(Instant::now()).expect("probe allowed");
        let second = b.admit(Instant::now()).unwrap_err();
        assert_eq!(second.reason, SkipReason::ProbeInFlight);
        probe.success();
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        assert!(b.admit(Instant::now()).is_ok());
    }

    #[test]
    fn open_breaker_skips_until_cool_down() {
        let b = breaker(1, 30);
        b.admit(Instant::now()).unwrap().failure(None, false);
        let skip = b.admit(Instant::now()).unwrap_err();
        assert_eq!(skip.reason, SkipReason::Open);
        assert!(skip.until > Instant::now() + Duration::from_secs(29));
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        // After the cool-down, one probe; its failure re-opens.
        let later = Instant::now() + Duration::from_secs(31);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        b.admit(later).unwrap().failure(None, false);
        // Re-opened for a fresh cool-down from the failure.
        assert_eq!(
            b.admit(Instant::now()).unwrap_err().reason,
            SkipReason::Open
        );
    }

    #[test]
    fn abandoned_probe_frees_the_slot() {
        let b = breaker(1, 0);
        b.admit(Instant::now()).unwrap().failure(None, false);
        drop(b.admit(Instant::now()).expect("probe"));
        b.admit(Instant::now()).expect("another probe").success();
    }

    #[test]
    fn retry_after_gates_even_a_closed_breaker_and_is_capped() {
        let b = breaker(10, 0);
        b.admit(Instant::now())
            .unwrap()
            .failure(Some(Duration::from_secs(5)), true);
        let skip = b.admit(Instant::now()).unwrap_err();
        assert_eq!(skip.reason, SkipReason::RateLimited);
        assert!(b.admit(Instant::now() + Duration::from_secs(6)).is_ok());

        let b = breaker(10, 0);
        b.admit(Instant::now())
            .unwrap()
            .failure(Some(Duration::from_secs(86_400)), false);
        let skip = b.admit(Instant::now()).unwrap_err();
        assert!(skip.until <= Instant::now() + Duration::from_secs(60));
        assert_eq!(
            skip.reason,
            SkipReason::RetryAfter,
            "a 5xx is not rate limiting"
        );
    }
}
