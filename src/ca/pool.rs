//! The CA pool: named groups of upstreams, tried by the pool's policy with failover on
//! retryable failures and optional hedging. A refusal (bad identifier, bad token, bad CSR)
//! ends the request: another CA would be asked the same wrong thing.
//!
//! A little over 500 lines (tests aside): the pool's policy (order, failover, hedging, STAR
//! successors) reads as one flow; the race and breaker parts are already their own modules.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    AttemptError, CaStats, CertKind, Issued, Tracking, Upstream,
    breaker::{Breaker, Skip, SkipReason},
    metrics::{Event, Metrics},
    policy,
    race::{self, CancelRx, Outcome, Progress, Stop},
};
use crate::{
    broker::{
        CaReadiness, FailureKind, IssueError, IssueRequest, Issuer, ReadyState, RenewalWindow,
    },
    cert::CertRecord,
    config::{PoolPolicy, PoolSettings},
};

/// RFC 5280 CRLReason `superseded`, for hedged losers that were issued anyway.
const SUPERSEDED: u8 = 4;

/// How long a lifetime learned from a CA's certificate stands in for its configuration
/// (after that, one order may learn it anew).
const LEARNED_LIFETIME_TTL: Duration = Duration::from_secs(3600);

/// Every configured upstream, grouped by pool.
#[derive(Debug)]
pub struct CaPool {
    /// Sorted by priority, then by configuration order.
    members: Vec<Arc<Member>>,
    pools: HashMap<String, PoolSettings>,
}

/// One upstream with its breaker and counters.
#[derive(Debug)]
struct Member {
    upstream: Arc<Upstream>,
    breaker: Breaker,
    metrics: Metrics,
    /// Lifetime (notAfter − notBefore) of the last certificate it issued, and when.
    learned_lifetime: LearnedLifetime,
    /// What the warm-up and later attempts found out about its account.
    ready: Mutex<ReadyState>,
}

impl Member {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The longest lifetime this CA is known to issue: learned from its last certificate
    /// (recently), else its `cert_lifetime_secs`.
    fn lifetime(&self) -> Option<Duration> {
        self.learned_lifetime
            .get()
            .or_else(|| self.upstream.cert_lifetime())
    }

    fn set_ready(&self, state: ReadyState) {
        *Self::lock(&self.ready) = state;
    }
}

/// A learned lifetime and when it was learned, in one atomic word (whole seconds: the
/// lifetime in the high half, the time since `epoch` plus one in the low half, zero for
/// none): every request reads it (`Issuer::max_lifetime`), so it takes no lock.
#[derive(Debug)]
struct LearnedLifetime {
    epoch: Instant,
    packed: AtomicU64,
}

impl LearnedLifetime {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            packed: AtomicU64::new(0),
        }
    }

    /// The lifetime learned within [`LEARNED_LIFETIME_TTL`], if any.
    fn get(&self) -> Option<Duration> {
        let packed = self.packed.load(Ordering::Relaxed);
        let at = packed & u64::from(u32::MAX);
        if at == 0 {
            return None;
        }
        let age = self.epoch.elapsed().as_secs().saturating_sub(at - 1);
        (age < LEARNED_LIFETIME_TTL.as_secs()).then(|| Duration::from_secs(packed >> 32))
    }

    fn set(&self, lifetime_secs: u64) {
        let life = lifetime_secs.min(u64::from(u32::MAX));
        let at = (self.epoch.elapsed().as_secs() + 1).min(u64::from(u32::MAX));
        self.packed.store(life << 32 | at, Ordering::Relaxed);
    }
}

/// Why one member produced no certificate.
enum Failed {
    /// It was asked and failed.
    Issue(IssueError),
    /// It was not asked: breaker open or `Retry-After` pending.
    Skipped(String, Skip),
    /// The race was decided before it finished.
    Abandoned,
}

impl CaPool {
    /// A pool over already-built upstreams (see [`crate::app::build_pool`]). `pools` sets
    /// the policy of the pools it names; other pools use priority order without hedging.
    pub fn new(mut upstreams: Vec<Arc<Upstream>>, pools: &[PoolSettings]) -> Self {
        upstreams.sort_by_key(|u| u.priority());
        let members = upstreams
            .into_iter()
            .map(|upstream| {
                Arc::new(Member {
                    breaker: Breaker::new(upstream.breaker_settings()),
                    metrics: Metrics::default(),
                    learned_lifetime: LearnedLifetime::new(),
                    ready: Mutex::new(ReadyState::WarmingUp),
                    upstream,
                })
            })
            .collect();
        let pools = pools.iter().map(|p| (p.name.clone(), p.clone())).collect();
        Self { members, pools }
    }

    /// Every CA's ACME requests are counted in `metrics` from now on (call before the
    /// warm-up to count its requests too).
    pub fn set_metrics(&self, metrics: &crate::telemetry::Metrics) {
        for m in &self.members {
            m.upstream.set_metrics(metrics.clone());
        }
    }

    /// The upstreams serving `pool`, by priority (the order of the `priority` policy).
    pub fn members(&self, pool: &str) -> impl Iterator<Item = &Arc<Upstream>> {
        self.members_of(pool).map(|m| &m.upstream)
    }

    /// The upstream configured under `name`.
    pub(super) fn upstream_named(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.members
            .iter()
            .map(|m| &m.upstream)
            .find(|u| u.name() == name)
    }

    /// Every upstream, by priority.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.members.iter().map(|m| &m.upstream)
    }

    fn members_of(&self, pool: &str) -> impl Iterator<Item = &Arc<Member>> {
        self.members
            .iter()
            .filter(move |m| m.upstream.pools().iter().any(|p| p == pool))
    }

    /// Creates (or finds) the account at every CA, so configuration mistakes show at
    /// start-up: all CAs at once, each bounded by its attempt timeout. Records what it
    /// learns in [`Issuer::readiness`] and returns the failures.
    pub async fn warm_up(&self) -> Vec<(String, AttemptError)> {
        let each = self.members.iter().map(|m| async move {
            let limit = m.upstream.attempt_timeout();
            let result = match tokio::time::timeout(limit, m.upstream.account()).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(AttemptError::Timeout(limit)),
            };
            match &result {
                Ok(()) => m.set_ready(ReadyState::Ready),
                Err(e) => {
                    // An attempt that succeeded meanwhile knows better.
                    let mut state = Member::lock(&m.ready);
                    if *state != ReadyState::Ready {
                        *state = ReadyState::Failed(bounded(&e.to_string(), 200));
                    }
                }
            }
            result.err().map(|e| (m.upstream.name().to_owned(), e))
        });
        futures::future::join_all(each)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// [`CaPool::warm_up`] in the background: start-up does not wait for any CA, and
    /// requests are served meanwhile (a request for a CA still warming up waits for it at
    /// most that CA's attempt timeout, then fails over).
    pub fn spawn_warm_up(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            for (ca, err) in pool.warm_up().await {
                // Not fatal: the CA may come back; requests will fail over or report it.
                warn!(ca = %ca, error = %err, "CA account not ready at start-up");
            }
        })
    }

    /// Per-CA counters and breaker states, in priority order.
    pub fn stats(&self) -> Vec<CaStats> {
        let now = Instant::now();
        self.members
            .iter()
            .map(|m| m.metrics.snapshot(m.upstream.name(), m.breaker.state(now)))
            .collect()
    }
}

#[async_trait::async_trait]
impl Issuer for CaPool {
    fn has_pool(&self, pool: &str) -> bool {
        self.members_of(pool).next().is_some()
    }

    fn max_lifetime(&self, pool: &str) -> Option<Duration> {
        let mut max: Option<Duration> = None;
        for m in self.members_of(pool) {
            max = Some(max.unwrap_or_default().max(m.lifetime()?));
        }
        max
    }

    fn readiness(&self) -> Vec<CaReadiness> {
        self.members
            .iter()
            .map(|m| CaReadiness {
                name: m.upstream.name().to_owned(),
                state: Member::lock(&m.ready).clone(),
            })
            .collect()
    }

    async fn issue(&self, req: &IssueRequest) -> Result<CertRecord, IssueError> {
        if let Some(prev) = &req.star_next {
            match self.next_star(req, prev).await {
                Ok(record) => return Ok(record),
                Err(super::star::NoSuccessor::Failed(e)) => return Err(e),
                Err(super::star::NoSuccessor::Over(why)) => {
                    info!(ca = %prev.issuer_ca, reason = %why, "STAR order over; placing a new order");
                }
            }
        }
        let candidates: Vec<Arc<Member>> = self.members_of(&req.pool).cloned().collect();
        if candidates.is_empty() {
            return Err(IssueError {
                ca: None,
                kind: FailureKind::NoSuchPool,
                problem_type: None,
                detail: format!("no CA serves pool {:?}", req.pool),
                retry_after: None,
            });
        }
        let (policy, hedge_after) = self
            .pools
            .get(&req.pool)
            .map_or((PoolPolicy::Priority, None), |p| {
                (p.policy, p.hedge_after_ms.map(Duration::from_millis))
            });
        let keys: Vec<(u32, u32)> = candidates
            .iter()
            .map(|m| (m.upstream.priority(), m.upstream.weight()))
            .collect();
        let ordered: Vec<Arc<Member>> = policy::order(policy, &keys, rand::random)
            .into_iter()
            .map(|i| candidates[i].clone())
            .collect();

        let (cancel_tx, cancel_rx) = watch::channel(false);
        let shared = Arc::new(req.clone());
        let attempts = ordered
            .iter()
            .map(|m| attempt(m.clone(), shared.clone(), cancel_rx.clone()))
            .collect();
        let finish = race::run(attempts, hedge_after).await;
        let _ = cancel_tx.send(true);
        if !finish.leftovers.is_empty() {
            tokio::spawn(drain_losers(finish.leftovers, ordered.clone()));
        }
        match finish.result {
            Ok((_, record)) => Ok(record),
            Err(Stop::Fatal(Failed::Issue(e))) => Err(e),
            Err(Stop::Fatal(_)) => Err(internal("a skip was classified as fatal")),
            Err(Stop::Exhausted(errors)) => Err(summarize(&req.pool, errors)),
        }
    }

    async fn revoke(&self, cert: &CertRecord, reason: u8) -> Result<(), IssueError> {
        let upstream = self
            .members
            .iter()
            .map(|m| &m.upstream)
            .find(|u| u.name() == cert.issuer_ca)
            .ok_or_else(|| IssueError {
                ca: Some(cert.issuer_ca.clone()),
                kind: FailureKind::Refused,
                problem_type: None,
                detail: "the CA that issued this certificate is no longer configured".into(),
                retry_after: None,
            })?;
        let leaf = cert.chain_der.first().ok_or_else(|| IssueError {
            ca: Some(cert.issuer_ca.clone()),
            kind: FailureKind::Refused,
            problem_type: None,
            detail: "stored record has no certificate".into(),
            retry_after: None,
        })?;
        upstream
            .revoke(leaf, reason)
            .await
            .map_err(|e| e.to_issue_error(upstream.name()))
    }

    async fn cancel_star(&self, cert: &CertRecord) -> Result<(), IssueError> {
        self.cancel_star_of(cert).await
    }

    /// Asks the CA that issued `cert` (by name); a CA no longer configured suggests nothing.
    async fn renewal_window(&self, cert: &CertRecord) -> Result<Option<RenewalWindow>, IssueError> {
        let Some(upstream) = self
            .members
            .iter()
            .map(|m| &m.upstream)
            .find(|u| u.name() == cert.issuer_ca)
        else {
            return Ok(None);
        };
        let Some(leaf) = cert.chain_der.first() else {
            return Ok(None);
        };
        upstream
            .renewal_window(leaf)
            .await
            .map_err(|e| e.to_issue_error(upstream.name()))
    }
}

/// One attempt at one member: gated by its breaker, bounded by its attempt timeout, and
/// abandoned when the race is decided elsewhere, unless the finalize request already went
/// out (then it runs to the end so that its certificate can be revoked).
fn attempt(
    m: Arc<Member>,
    req: Arc<IssueRequest>,
    mut cancel: CancelRx,
) -> BoxFuture<'static, Outcome<CertRecord, Failed>> {
    async move {
        let name = m.upstream.name().to_owned();
        let permit = match m.breaker.admit(Instant::now()) {
            Ok(p) => p,
            Err(skip) => {
                m.metrics.record(Event::Skipped);
                return Outcome::Retryable(Failed::Skipped(name, skip));
            }
        };
        m.metrics.record(Event::Attempt);
        let started = Instant::now();
        let progress = Progress::default();
        let tracking = Tracking {
            resume: req.resume.as_deref(),
            progress: req.progress.as_ref(),
            race: Some(&progress),
            replaces: req.replaces.as_ref(),
        };
        let kind = CertKind::from_ca_flag(req.ca);
        let work =
            m.upstream
                .issue_tracked(&req.identifiers, req.csr_der.as_deref(), kind, tracking);
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            () = race::cancelled(&mut cancel) => {
                if !progress.finalize_sent() {
                    m.metrics.record(Event::Abandoned);
                    return Outcome::Retryable(Failed::Abandoned);
                }
                work.await
            }
        };
        let latency = started.elapsed();
        match result {
            Ok(issued) => {
                permit.success();
                m.metrics.record(Event::Findings(&issued.findings));
                m.metrics.record(Event::Success(latency));
                m.set_ready(ReadyState::Ready);
                let cert = record(&req, &name, issued);
                let life = cert.not_after.saturating_sub(cert.not_before);
                if let Ok(secs) = u64::try_from(life) {
                    m.learned_lifetime.set(secs);
                }
                Outcome::Won(cert)
            }
            Err(e) => {
                if let AttemptError::NonConforming { findings, .. } = &e {
                    m.metrics.record(Event::Findings(findings));
                }
                let err = e.to_issue_error(&name);
                m.metrics.record(Event::Failure(&err, latency));
                if err.is_retryable() {
                    permit.failure(err.retry_after, err.kind == FailureKind::RateLimited);
                    warn!(ca = %name, error = %err, "CA failed; trying the next");
                    Outcome::Retryable(Failed::Issue(err))
                } else {
                    // The CA (or STI-PA) answered and refused: it is healthy.
                    permit.success();
                    Outcome::Fatal(Failed::Issue(err))
                }
            }
        }
    }
    .boxed()
}

/// Lets hedged losers that were past finalize finish, and revokes what they issued.
async fn drain_losers(
    mut leftovers: futures::stream::FuturesUnordered<
        BoxFuture<'static, (usize, Outcome<CertRecord, Failed>)>,
    >,
    ordered: Vec<Arc<Member>>,
) {
    while let Some((i, outcome)) = leftovers.next().await {
        let (Outcome::Won(cert), Some(m)) = (outcome, ordered.get(i)) else {
            continue;
        };
        let Some(leaf) = cert.chain_der.first() else {
            continue;
        };
        match m.upstream.revoke(leaf, SUPERSEDED).await {
            Ok(()) => {
                m.metrics.record(Event::Superseded);
                info!(ca = %cert.issuer_ca, serial = %cert.serial_hex, "hedged loser revoked as superseded");
            }
            Err(e) => {
                warn!(ca = %cert.issuer_ca, serial = %cert.serial_hex, error = %e, "hedged loser could not be revoked");
            }
        }
    }
}

pub(super) fn record(req: &IssueRequest, ca: &str, issued: Issued) -> CertRecord {
    CertRecord {
        cache_key: req.cache_key.clone(),
        chain_pem: issued.chain_pem,
        chain_der: issued.chain_der,
        private_key_pkcs8: issued.key_pkcs8,
        not_before: issued.leaf.not_before.unix_timestamp(),
        not_after: issued.leaf.not_after.unix_timestamp(),
        serial_hex: issued.leaf.serial_hex.trim_start_matches('0').to_owned(),
        fingerprint_hex: issued.leaf.sha256_fingerprint_hex,
        issuer_ca: ca.to_owned(),
        issuer_account: issued.account_url,
        issued_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        star: issued.star.map(Box::new),
    }
}

/// Every member failed or was skipped. Reports the last real failure; when every CA was
/// skipped, reports why and when the first one may be asked again.
fn summarize(pool: &str, errors: Vec<(usize, Failed)>) -> IssueError {
    let now = Instant::now();
    let mut last = None;
    let mut skips = vec![];
    for (_, failed) in errors {
        match failed {
            Failed::Issue(e) => last = Some(e),
            Failed::Skipped(name, skip) => skips.push((name, skip)),
            Failed::Abandoned => {}
        }
    }
    let earliest = skips
        .iter()
        .map(|(_, s)| s.until.saturating_duration_since(now))
        .min();
    if let Some(mut e) = last {
        e.retry_after = e.retry_after.or(earliest);
        return e;
    }
    if skips.is_empty() {
        return internal("no attempt was made");
    }
    // RESOURCE_EXHAUSTED only when every CA skipped is rate limiting us; a CA backing off
    // after a 5xx (with or without Retry-After) or an open breaker is an outage.
    let rate_limited = skips
        .iter()
        .all(|(_, s)| s.reason == SkipReason::RateLimited);
    let why: Vec<String> = skips
        .iter()
        .map(|(name, s)| {
            let reason = match s.reason {
                SkipReason::RateLimited => "rate limited us",
                SkipReason::RetryAfter => "failed and asked us to retry later",
                SkipReason::Open => "circuit breaker open",
                SkipReason::ProbeInFlight => "circuit breaker probing",
            };
            let wait = s.until.saturating_duration_since(now);
            format!("{name}: {reason} (for {:.1}s)", wait.as_secs_f64())
        })
        .collect();
    IssueError {
        ca: (skips.len() == 1).then(|| skips[0].0.clone()),
        kind: if rate_limited {
            FailureKind::RateLimited
        } else {
            FailureKind::Unavailable
        },
        problem_type: None,
        detail: format!(
            "every CA of pool {pool:?} is backing off: {}",
            why.join("; ")
        ),
        retry_after: earliest.map(|d| d.max(Duration::from_millis(1))),
    }
}

/// `s` cut to `max` characters with an ellipsis.
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

fn internal(detail: &str) -> IssueError {
    IssueError {
        ca: None,
        kind: FailureKind::Unavailable,
        problem_type: None,
        detail: detail.to_owned(),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_lifetime_stands_for_an_hour() {
        let learned = LearnedLifetime::new();
        assert_eq!(learned.get(), None);
        learned.set(86_400);
        assert_eq!(learned.get(), Some(Duration::from_secs(86_400)));
        learned.set(0);
        assert_eq!(
            learned.get(),
            Some(Duration::ZERO),
            "zero is a lifetime, not none"
        );
        // Learned at the epoch, an hour and a second ago.
        let old = LearnedLifetime {
            epoch: Instant::now() - LEARNED_LIFETIME_TTL - Duration::from_secs(1),
            packed: AtomicU64::new(86_400 << 32 | 1),
        };
        assert_eq!(old.get(), None);
        let recent = LearnedLifetime {
            epoch: Instant::now() - LEARNED_LIFETIME_TTL + Duration::from_secs(60),
            packed: AtomicU64::new(86_400 << 32 | 1),
        };
        assert_eq!(recent.get(), Some(Duration::from_secs(86_400)));
    }
}
