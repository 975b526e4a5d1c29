//! Polling policy and `Retry-After` parsing.

use std::time::{Duration, SystemTime};

/// How to poll an object until it settles: exponential backoff from `initial_delay` by
/// `backoff`, capped at `max_delay`, giving up after `timeout`.
///
/// A `Retry-After` header ([RFC 9110 §10.2.3](https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3),
/// recommended by [RFC 8555 §7.5.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.5.1))
/// replaces the computed delay for that step, still capped at `max_delay` so a misbehaving
/// server cannot stall us; no step sleeps past the deadline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first re-poll.
    pub initial_delay: Duration,
    /// Factor applied to the delay after each poll (values below 1 are treated as 1).
    pub backoff: f32,
    /// Upper bound for any single delay, `Retry-After` included.
    pub max_delay: Duration,
    /// Total time to keep polling.
    pub timeout: Duration,
}

impl RetryPolicy {
    /// 1 ms, doubling, at most 10 s per step, 90 s overall.
    ///
    /// The first poll goes out at once; the first re-poll only 1 ms later, because a CA that
    /// issues in milliseconds (Pebble, the devca, most CAs for a tkauth-01 order) often
    /// answers the first poll with `processing`, and a fixed quarter second there was most
    /// of a cold issuance (5 ms, the step before, was still half of a Pebble issuance's own
    /// time). Doubling keeps the wait within twice the CA's processing time, and reaches a
    /// second after 10 polls (about 1 s), so a slow CA is not hammered; its `Retry-After` on
    /// a poll answer wins over these steps.
    pub const fn new() -> Self {
        Self {
            initial_delay: Duration::from_millis(1),
            backoff: 2.0,
            max_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(90),
        }
    }

    /// Sets [`RetryPolicy::initial_delay`].
    pub const fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets [`RetryPolicy::backoff`].
    pub const fn backoff(mut self, factor: f32) -> Self {
        self.backoff = factor;
        self
    }

    /// Sets [`RetryPolicy::max_delay`].
    pub const fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets [`RetryPolicy::timeout`].
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The delay after `current`, without any server hint.
    pub(crate) fn next_delay(&self, current: Duration) -> Duration {
        current.mul_f32(self.backoff.max(1.0)).min(self.max_delay)
    }

    /// The delay to actually sleep: the server's hint if any, else ours, capped.
    pub(crate) fn step(&self, ours: Duration, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or(ours).min(self.max_delay)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date. A date in the past means
/// "now" (zero).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let cases: &[(&str, Option<Duration>)] = &[
            ("120", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:50:07 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("soon", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_retry_after(input, now), *want, "{input:?}");
        }
    }

    #[test]
    fn backoff_is_capped_and_hint_wins_but_is_bounded() {
        let p = RetryPolicy::new()
            .initial_delay(Duration::from_secs(1))
            .backoff(3.0)
            .max_delay(Duration::from_secs(5));
        assert_eq!(p.next_delay(Duration::from_secs(1)), Duration::from_secs(3));
        assert_eq!(p.next_delay(Duration::from_secs(3)), Duration::from_secs(5));
        assert_eq!(
            p.step(Duration::from_secs(1), Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.step(Duration::from_secs(1), Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
        assert_eq!(p.step(Duration::from_secs(4), None), Duration::from_secs(4));
        let flat = p.backoff(0.5);
        assert_eq!(
            flat.next_delay(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn default_schedule_repolls_within_milliseconds_then_backs_off() {
        let p = RetryPolicy::new();
        let mut delay = p.initial_delay;
        let mut schedule = vec![];
        for _ in 0..15 {
            schedule.push(p.step(delay, None));
            delay = p.next_delay(delay);
        }
        assert_eq!(schedule[0], Duration::from_millis(1));
        assert_eq!(schedule[1], Duration::from_millis(2));
        // Ten polls in the first ~1 s, then doubling up to one per max_delay.
        let first_ten: Duration = schedule[..10].iter().sum();
        assert!(first_ten < Duration::from_millis(1100), "{first_ten:?}");
        assert!(schedule[13] < p.max_delay);
        assert_eq!(schedule[14], p.max_delay);
        // A server's hint replaces the step, even a long one, up to max_delay.
        assert_eq!(
            p.step(p.initial_delay, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn const_constructor() {
        const P: RetryPolicy = RetryPolicy::new().timeout(Duration::from_secs(5));
        assert_eq!(P.timeout, Duration::from_secs(5));
        assert_eq!(P, RetryPolicy::default().timeout(Duration::from_secs(5)));
    }
}
