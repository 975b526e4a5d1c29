//! Misbehaviour knobs and counters of the embedded CA, settable while it runs, so tests
//! can drive a client down its error paths.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

/// A fault the STI-PA puts into the tokens it issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// The token is already expired when issued.
    Expired,
    /// The token is signed with a key that is not the one in the `x5u` certificate.
    WrongKey,
    /// The `fingerprint` is not the one the client asked for.
    WrongFingerprint,
    /// The `tkvalue` is a different TNAuthList than the one the client asked for.
    WrongTkValue,
}

/// Runtime-settable misbehaviour. Every knob is off by default.
#[derive(Debug, Default)]
pub struct Behaviour {
    nonce_reject_percent: AtomicU32,
    /// 0: off; `u32::MAX`: always; n: the next n ACME requests.
    unavailable: AtomicU32,
    /// Retry-After seconds of those 503 answers; 0: none.
    unavailable_retry_after_secs: AtomicU64,
    /// Retry-After seconds of rate-limited newOrders; 0: off.
    rate_limit_secs: AtomicU64,
    delay_ms: AtomicU64,
    already_replaced: std::sync::atomic::AtomicBool,
    renewal_info_unavailable: std::sync::atomic::AtomicBool,
    token_fault: Mutex<Option<TokenFault>>,
    profile_defect: Mutex<Option<super::ProfileDefect>>,
    counters: Counters,
    /// `atc.fingerprint` of every token the STI-PA issued, oldest first.
    token_fingerprints: Mutex<Vec<String>>,
}

/// Counters of what the embedded CA did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Orders created.
    pub new_orders: u64,
    /// Finalize requests whose CSR was accepted.
    pub finalizes: u64,
    /// tkauth-01 challenges that validated.
    pub challenges_validated: u64,
    /// Certificates issued.
    pub certificates_issued: u64,
    /// Certificates revoked.
    pub revocations: u64,
    /// SPC tokens the STI-PA issued.
    pub tokens_issued: u64,
    /// Requests answered with `badNonce`.
    pub bad_nonces: u64,
    /// Every request that reached the ACME API (directory included), whatever the answer.
    pub acme_requests: u64,
    /// newOrders answered with `rateLimited`.
    pub rate_limited: u64,
    /// `renewalInfo` requests answered (RFC 9773).
    pub renewal_info_requests: u64,
    /// newOrders answered with `alreadyReplaced`.
    pub already_replaced: u64,
}

#[derive(Debug, Default)]
struct Counters {
    new_orders: AtomicU64,
    finalizes: AtomicU64,
    challenges_validated: AtomicU64,
    certificates_issued: AtomicU64,
    revocations: AtomicU64,
    tokens_issued: AtomicU64,
    bad_nonces: AtomicU64,
    acme_requests: AtomicU64,
    rate_limited: AtomicU64,
    renewal_info_requests: AtomicU64,
    already_replaced: AtomicU64,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    AcmeRequest,
    AlreadyReplaced,
    BadNonce,
    CertificateIssued,
    ChallengeValidated,
    Finalize,
    NewOrder,
    RateLimited,
    RenewalInfo,
    Revocation,
    TokenIssued,
}

impl Behaviour {
    /// Answers `badNonce` to this share (0 to 100) of otherwise valid ACME requests.
    pub fn set_nonce_reject_percent(&self, percent: u8) {
        self.nonce_reject_percent
            .store(u32::from(percent.min(100)), Ordering::Relaxed);
    }

    /// Answers every ACME request with 503 `serverInternal` while `on`.
    pub fn set_unavailable(&self, on: bool) {
        self.unavailable
            .store(if on { u32::MAX } else { 0 }, Ordering::Relaxed);
    }

    /// Answers the next `count` ACME requests with 503 `serverInternal`.
    pub fn set_unavailable_for(&self, count: u32) {
        self.unavailable.store(count, Ordering::Relaxed);
    }

    /// Gives the 503 answers of [`Behaviour::set_unavailable`] this `Retry-After`; `None`
    /// sends none.
    pub fn set_unavailable_retry_after(&self, retry_after: Option<Duration>) {
        let secs = retry_after.map_or(0, |d| d.as_secs().max(1));
        self.unavailable_retry_after_secs
            .store(secs, Ordering::Relaxed);
    }

    pub(crate) fn unavailable_retry_after(&self) -> Option<u64> {
        Some(self.unavailable_retry_after_secs.load(Ordering::Relaxed)).filter(|s| *s > 0)
    }

    /// Answers newOrder with 429 `rateLimited` and this `Retry-After`; `None` turns it off.
    pub fn set_rate_limit(&self, retry_after: Option<Duration>) {
        let secs = retry_after.map_or(0, |d| d.as_secs().max(1));
        self.rate_limit_secs.store(secs, Ordering::Relaxed);
    }

    /// Sleeps this long before answering each ACME request.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// While `on`, answers every newOrder whose `replaces` names a certificate of this CA
    /// with 409 `alreadyReplaced` (RFC 9773 §5), as if another order had replaced it.
    pub fn set_already_replaced(&self, on: bool) {
        self.already_replaced.store(on, Ordering::Relaxed);
    }

    pub(crate) fn already_replaced(&self) -> bool {
        self.already_replaced.load(Ordering::Relaxed)
    }

    /// While `on`, answers `renewalInfo` requests with 503 `serverInternal` (the rest of the
    /// ACME API keeps working).
    pub fn set_renewal_info_unavailable(&self, on: bool) {
        self.renewal_info_unavailable.store(on, Ordering::Relaxed);
    }

    pub(crate) fn renewal_info_unavailable(&self) -> bool {
        self.renewal_info_unavailable.load(Ordering::Relaxed)
    }

    /// Makes the STI-PA issue faulty tokens; `None` issues good ones.
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        *self
            .token_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    /// Writes `defect` into every end-entity certificate issued from now on (re-signed, so
    /// the chain still verifies); `None` issues them as the PKI makes them.
    pub fn set_profile_defect(&self, defect: Option<super::ProfileDefect>) {
        *self
            .profile_defect
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = defect;
    }

    pub(crate) fn profile_defect(&self) -> Option<super::ProfileDefect> {
        *self
            .profile_defect
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn token_fault(&self) -> Option<TokenFault> {
        *self
            .token_fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn rate_limit(&self) -> Option<u64> {
        Some(self.rate_limit_secs.load(Ordering::Relaxed)).filter(|s| *s > 0)
    }

    /// Whether this request must be answered 503; consumes one of a counted outage.
    pub(crate) fn take_unavailable(&self) -> bool {
        self.unavailable
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| match n {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok()
    }

    /// Whether this otherwise valid request gets a `badNonce`.
    pub(crate) fn reject_nonce(&self) -> bool {
        let percent = self.nonce_reject_percent.load(Ordering::Relaxed);
        percent > 0 && rand::random_range(0..100) < percent
    }

    pub(crate) fn count(&self, counter: Counter) {
        let c = &self.counters;
        let atomic = match counter {
            Counter::AcmeRequest => &c.acme_requests,
            Counter::AlreadyReplaced => &c.already_replaced,
            Counter::BadNonce => &c.bad_nonces,
            Counter::CertificateIssued => &c.certificates_issued,
            Counter::ChallengeValidated => &c.challenges_validated,
            Counter::Finalize => &c.finalizes,
            Counter::NewOrder => &c.new_orders,
            Counter::RateLimited => &c.rate_limited,
            Counter::RenewalInfo => &c.renewal_info_requests,
            Counter::Revocation => &c.revocations,
            Counter::TokenIssued => &c.tokens_issued,
        };
        atomic.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes the fingerprint an issued token is bound to.
    pub(crate) fn record_token(&self, fingerprint: &str) {
        self.token_fingerprints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(fingerprint.to_owned());
    }

    /// `atc.fingerprint` of every token the STI-PA issued, oldest first.
    pub fn token_fingerprints(&self) -> Vec<String> {
        self.token_fingerprints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            new_orders: get(&c.new_orders),
            finalizes: get(&c.finalizes),
            challenges_validated: get(&c.challenges_validated),
            certificates_issued: get(&c.certificates_issued),
            revocations: get(&c.revocations),
            tokens_issued: get(&c.tokens_issued),
            bad_nonces: get(&c.bad_nonces),
            acme_requests: get(&c.acme_requests),
            rate_limited: get(&c.rate_limited),
            renewal_info_requests: get(&c.renewal_info_requests),
            already_replaced: get(&c.already_replaced),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_outage_runs_out() {
        let b = Behaviour::default();
        assert!(!b.take_unavailable());
        b.set_unavailable_for(2);
        assert!(b.take_unavailable());
        assert!(b.take_unavailable());
        assert!(!b.take_unavailable());
        b.set_unavailable(true);
        for _ in 0..5 {
            assert!(b.take_unavailable());
        }
        b.set_unavailable(false);
        assert!(!b.take_unavailable());
    }

    #[test]
    fn nonce_rejection_extremes() {
        let b = Behaviour::default();
        assert!((0..50).all(|_| !b.reject_nonce()));
        b.set_nonce_reject_percent(100);
        assert!((0..50).all(|_| b.reject_nonce()));
    }
}
