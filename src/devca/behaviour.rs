//! Misbehaviour knobs and counters of the embedded CA, settable while it runs, so tests
//! can drive a client down its error paths and platform teams can rehearse CA outages
//! (`certbroker devca --latency … --error-rate … --hang …`).
//!
//! A little over 500 lines (tests aside): one flat table of knobs, each a few lines of
//! setter and getter; split, a knob's test-facing setter would sit apart from its check.

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

/// One step of the ACME flow, as the devca's per-step faults name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// `GET /acme/directory`.
    Directory,
    /// newNonce (`HEAD`/`GET /acme/new-nonce`).
    Nonce,
    /// newAccount, account updates and key rollover.
    Account,
    /// newOrder.
    NewOrder,
    /// Order POST-as-GET (polling).
    Order,
    /// Authorization POST-as-GET.
    Authz,
    /// Challenge response and polling.
    Challenge,
    /// finalize.
    Finalize,
    /// Certificate download.
    Certificate,
    /// revokeCert.
    Revoke,
    /// renewalInfo (RFC 9773).
    RenewalInfo,
}

impl Step {
    /// Every step, in flow order.
    pub const ALL: [Self; 11] = [
        Self::Directory,
        Self::Nonce,
        Self::Account,
        Self::NewOrder,
        Self::Order,
        Self::Authz,
        Self::Challenge,
        Self::Finalize,
        Self::Certificate,
        Self::Revoke,
        Self::RenewalInfo,
    ];

    /// The name `certbroker devca` flags use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Directory => "directory",
            Self::Nonce => "nonce",
            Self::Account => "account",
            Self::NewOrder => "new-order",
            Self::Order => "order",
            Self::Authz => "authz",
            Self::Challenge => "challenge",
            Self::Finalize => "finalize",
            Self::Certificate => "certificate",
            Self::Revoke => "revoke",
            Self::RenewalInfo => "renewal-info",
        }
    }

    /// The step a request path of the ACME API belongs to.
    pub(crate) fn of_path(path: &str) -> Option<Self> {
        let segment = path.strip_prefix("/acme/")?.split('/').next()?;
        Some(match segment {
            "directory" => Self::Directory,
            "new-nonce" => Self::Nonce,
            "new-account" | "acct" | "key-change" => Self::Account,
            "new-order" => Self::NewOrder,
            "order" => Self::Order,
            "authz" | "new-authz" => Self::Authz,
            "chall" => Self::Challenge,
            "finalize" => Self::Finalize,
            "cert" | "star" => Self::Certificate,
            "revoke-cert" => Self::Revoke,
            "renewal-info" => Self::RenewalInfo,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for Step {
    type Err = String;

    /// A step by its [`Step::name`]; also `newOrder`, `download` (the certificate) and the
    /// other RFC 8555 resource names.
    fn from_str(s: &str) -> Result<Self, String> {
        let normalized = s.to_ascii_lowercase().replace(['-', '_'], "");
        Ok(match normalized.as_str() {
            "directory" => Self::Directory,
            "nonce" | "newnonce" => Self::Nonce,
            "account" | "newaccount" | "keychange" => Self::Account,
            "neworder" => Self::NewOrder,
            "order" => Self::Order,
            "authz" | "authorization" => Self::Authz,
            "challenge" => Self::Challenge,
            "finalize" => Self::Finalize,
            "certificate" | "cert" | "download" => Self::Certificate,
            "revoke" | "revokecert" => Self::Revoke,
            "renewalinfo" => Self::RenewalInfo,
            _ => {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
                return Err(format!(
                    "unknown ACME step {s:?}; one of {}",
                    names.join(", ")
                ));
            }
        })
    }
}

/// An error problem document the devca answers a share of requests with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedError {
    /// Share of matching requests answered with it, 0 to 100.
    pub percent: u8,
    /// The HTTP status.
    pub status: u16,
    /// The problem type: an ACME error name (`serverInternal`, `rateLimited`, …), sent as
    /// `urn:ietf:params:acme:error:NAME`, or a full URN, sent as is.
    pub problem_type: String,
    /// `Retry-After` seconds sent with it.
    pub retry_after: Option<u64>,
    /// The steps it applies to; empty: every step.
    pub steps: Vec<Step>,
}

impl InjectedError {
    /// The problem type as sent.
    pub fn type_urn(&self) -> String {
        if self.problem_type.starts_with("urn:") {
            self.problem_type.clone()
        } else {
            format!("urn:ietf:params:acme:error:{}", self.problem_type)
        }
    }

    fn applies_to(&self, step: Step) -> bool {
        self.steps.is_empty() || self.steps.contains(&step)
    }
}

/// Runtime-settable misbehaviour. Every knob is off by default.
#[derive(Debug, Default)]
pub struct Behaviour {
    nonce_reject_percent: AtomicU32,
    /// Extra delay per [`Step`], milliseconds.
    step_delay_ms: [AtomicU64; Step::ALL.len()],
    /// Bit `1 << step` set: requests of that step are never answered.
    hung_steps: AtomicU32,
    injected_error: Mutex<Option<InjectedError>>,
    /// Delay of every STI-PA API answer, milliseconds.
    sti_pa_delay_ms: AtomicU64,
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
    /// Authorizations created (one per identifier of each order).
    pub authorizations: u64,
    /// tkauth-01 challenges that failed validation.
    pub challenges_invalid: u64,
    /// Requests answered with an [`InjectedError`].
    pub injected_errors: u64,
    /// Requests left hanging ([`Behaviour::set_hang`]).
    pub hung_requests: u64,
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
    /// Authorizations created through `newAuthz` (pre-authorization, RFC 8555 §7.4.1).
    pub new_authz: u64,
    /// Short-term certificates issued for STAR orders (RFC 8739); also in
    /// `certificates_issued`.
    pub star_certificates: u64,
    /// Successful fetches of star-certificate URLs (POST-as-GET or GET; HEAD not counted).
    pub star_fetches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    new_orders: AtomicU64,
    authorizations: AtomicU64,
    challenges_invalid: AtomicU64,
    injected_errors: AtomicU64,
    hung_requests: AtomicU64,
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
    new_authz: AtomicU64,
    star_certificates: AtomicU64,
    star_fetches: AtomicU64,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    AcmeRequest,
    AlreadyReplaced,
    Authorization,
    BadNonce,
    CertificateIssued,
    ChallengeInvalid,
    ChallengeValidated,
    Finalize,
    Hung,
    NewAuthz,
    InjectedError,
    NewOrder,
    RateLimited,
    RenewalInfo,
    Revocation,
    StarCertificate,
    StarFetch,
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

    /// Sleeps this long (on top of [`Behaviour::set_delay`]) before answering each request
    /// of `step`.
    pub fn set_step_delay(&self, step: Step, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.step_delay_ms[step.index()].store(ms, Ordering::Relaxed);
    }

    /// How long requests of `step` are held before they are answered.
    pub(crate) fn delay_for(&self, step: Option<Step>) -> Duration {
        let extra = step.map_or(0, |s| self.step_delay_ms[s.index()].load(Ordering::Relaxed));
        self.delay() + Duration::from_millis(extra)
    }

    /// While `on`, never answers requests of `step` (the connection stays open until the
    /// client gives up): a hung CA.
    pub fn set_hang(&self, step: Step, on: bool) {
        let bit = 1u32 << step.index();
        if on {
            self.hung_steps.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.hung_steps.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    pub(crate) fn hangs(&self, step: Option<Step>) -> bool {
        step.is_some_and(|s| self.hung_steps.load(Ordering::Relaxed) & (1u32 << s.index()) != 0)
    }

    /// Answers a share of the requests of its steps with this problem document; `None`
    /// turns it off.
    pub fn set_injected_error(&self, error: Option<InjectedError>) {
        *self
            .injected_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// The error this request of `step` gets, if the dice say so.
    pub(crate) fn roll_injected_error(&self, step: Option<Step>) -> Option<InjectedError> {
        let step = step?;
        let guard = self
            .injected_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = guard.as_ref().filter(|e| e.applies_to(step))?;
        (e.percent > 0 && rand::random_range(0..100u8) < e.percent).then(|| e.clone())
    }

    /// Sleeps this long before answering each STI-PA API request (login, logout, token): a
    /// slow STI-PA.
    pub fn set_sti_pa_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.sti_pa_delay_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn sti_pa_delay(&self) -> Duration {
        Duration::from_millis(self.sti_pa_delay_ms.load(Ordering::Relaxed))
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
            Counter::Authorization => &c.authorizations,
            Counter::BadNonce => &c.bad_nonces,
            Counter::CertificateIssued => &c.certificates_issued,
            Counter::ChallengeInvalid => &c.challenges_invalid,
            Counter::ChallengeValidated => &c.challenges_validated,
            Counter::Finalize => &c.finalizes,
            Counter::Hung => &c.hung_requests,
            Counter::InjectedError => &c.injected_errors,
            Counter::NewAuthz => &c.new_authz,
            Counter::NewOrder => &c.new_orders,
            Counter::RateLimited => &c.rate_limited,
            Counter::RenewalInfo => &c.renewal_info_requests,
            Counter::Revocation => &c.revocations,
            Counter::StarCertificate => &c.star_certificates,
            Counter::StarFetch => &c.star_fetches,
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
            authorizations: get(&c.authorizations),
            challenges_invalid: get(&c.challenges_invalid),
            injected_errors: get(&c.injected_errors),
            hung_requests: get(&c.hung_requests),
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
            new_authz: get(&c.new_authz),
            star_certificates: get(&c.star_certificates),
            star_fetches: get(&c.star_fetches),
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
    fn steps_by_path_and_name() {
        assert_eq!(Step::of_path("/acme/directory"), Some(Step::Directory));
        assert_eq!(Step::of_path("/acme/new-order"), Some(Step::NewOrder));
        assert_eq!(Step::of_path("/acme/chall/abc"), Some(Step::Challenge));
        assert_eq!(Step::of_path("/acme/cert/abc"), Some(Step::Certificate));
        assert_eq!(Step::of_path("/api/v1/auth/login"), None);
        for step in Step::ALL {
            assert_eq!(step.name().parse::<Step>(), Ok(step));
        }
        assert_eq!("newOrder".parse::<Step>(), Ok(Step::NewOrder));
        assert_eq!("download".parse::<Step>(), Ok(Step::Certificate));
        assert!("frobnicate".parse::<Step>().is_err());
    }

    #[test]
    fn per_step_faults() {
        let b = Behaviour::default();
        b.set_step_delay(Step::Finalize, Duration::from_millis(300));
        assert_eq!(
            b.delay_for(Some(Step::Finalize)),
            Duration::from_millis(300)
        );
        assert_eq!(b.delay_for(Some(Step::NewOrder)), Duration::ZERO);
        b.set_hang(Step::NewOrder, true);
        assert!(b.hangs(Some(Step::NewOrder)) && !b.hangs(Some(Step::Order)));
        b.set_hang(Step::NewOrder, false);
        assert!(!b.hangs(Some(Step::NewOrder)));
        b.set_injected_error(Some(InjectedError {
            percent: 100,
            status: 503,
            problem_type: "serverInternal".into(),
            retry_after: Some(7),
            steps: vec![Step::Finalize],
        }));
        assert!(b.roll_injected_error(Some(Step::NewOrder)).is_none());
        let e = b.roll_injected_error(Some(Step::Finalize)).unwrap();
        assert_eq!(e.type_urn(), "urn:ietf:params:acme:error:serverInternal");
    }

    #[test]
    fn nonce_rejection_extremes() {
        let b = Behaviour::default();
        assert!((0..50).all(|_| !b.reject_nonce()));
        b.set_nonce_reject_percent(100);
        assert!((0..50).all(|_| b.reject_nonce()));
    }
}
