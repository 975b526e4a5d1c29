//! Pre-authorization ([RFC 8555 §7.4.1](https://www.rfc-editor.org/rfc/rfc8555#section-7.4.1)):
//! for each SPC in a CA's `[ca.preauthorization] spcs`, the broker asks the CA's `newAuthz`
//! for an authorization of that TNAuthList and answers its tkauth-01 challenge with the SPC
//! token, exactly as for an order's authorization. While that authorization is valid, the
//! CA hands it to the account's next order for the SPC already `valid`, and the order flow
//! skips the challenge: a cache miss costs newOrder, finalize and the download.
//!
//! One task per (CA, SPC) does this at start-up and again
//! - when the SPC token is refreshed: the token cache announces every token it fetches
//!   anew ([`crate::challenge::TokenProvider::refreshes`]), and the task itself takes the
//!   next token when the current one reaches the cache's refresh margin;
//! - when the authorization is within the refresh margin of its `expires`.
//!
//! Pre-authorizations are answered with end-entity tokens (`atc.ca` false), which a CA
//! certificate cannot be issued on. So a CA-certificate order whose TNAuthList
//! authorization arrives `valid` deactivates it and is placed again
//! ([`release_for_ca_order`]; RFC 8555 §7.5.2), and the tasks of that CA pre-authorize anew.
//!
//! A CA whose directory offers no `newAuthz` gets nothing (logged at debug); a failed
//! attempt is retried with backoff. Each attempt counts in
//! `certbroker_ca_preauthorizations_total{ca,result}`.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::{sync::broadcast, task::JoinHandle, time::Instant};
use tracing::{debug, info, warn};

use super::{AttemptError, CaPool, CertKind, Upstream};
use crate::{
    acme::{self, Account, AuthorizationStatus, Endpoint, Identifier, RetryPolicy},
    challenge::TokenRefreshed,
    shaken::TnAuthList,
    telemetry::Metrics,
};

/// The first retry after a failed attempt; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a task waits when neither the token nor the authorization says when to act
/// (a token file, an authorization without `expires`): it checks again then.
const IDLE_RECHECK: Duration = Duration::from_secs(3600);
/// Wakes this much after the token's refresh point, so the cache surely refetches.
const AFTER_REFRESH_POINT: Duration = Duration::from_millis(20);

/// Starts the pre-authorization tasks of every CA in `pool` whose
/// `[ca.preauthorization]` is enabled and names SPCs. Each task ends when its upstream is
/// dropped (the pool with it) or when the CA turns out to offer no `newAuthz`.
pub fn spawn(pool: &CaPool, metrics: Option<Metrics>) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![];
    for upstream in pool.upstreams() {
        let settings = upstream.preauthorization();
        if settings.spcs.is_empty() {
            continue;
        }
        if !settings.enabled {
            debug!(ca = %upstream.name(), "pre-authorization turned off for this CA");
            continue;
        }
        for spc in &settings.spcs {
            // Checked when the configuration was loaded.
            let Ok(list) = TnAuthList::from_spc(spc) else {
                warn!(ca = %upstream.name(), spc = %spc, "not an SPC; not pre-authorized");
                continue;
            };
            let task = Task {
                upstream: Arc::downgrade(upstream),
                ca: upstream.name().to_owned(),
                list,
                metrics: metrics.clone(),
            };
            tasks.push(tokio::spawn(task.run()));
        }
    }
    tasks
}

/// What one round found.
enum Round {
    /// The CA's directory has no `newAuthz`.
    NotOffered,
    /// An authorization is valid (made now, or the last one still is).
    Valid(Held),
}

/// The authorization the task holds and the token it was made with.
#[derive(Debug, Clone)]
struct Held {
    /// The token's `jti`, when the token source announces refreshes.
    jti: Option<String>,
    /// When the token reaches the cache's refresh margin.
    token_due: Option<OffsetDateTime>,
    /// When the authorization reaches the refresh margin of its `expires`.
    authz_due: Option<OffsetDateTime>,
}

/// Pre-authorizes one SPC at one CA, again and again.
struct Task {
    upstream: Weak<Upstream>,
    ca: String,
    list: TnAuthList,
    metrics: Option<Metrics>,
}

impl Task {
    async fn run(self) {
        let mut refreshes = self
            .upstream
            .upgrade()
            .and_then(|u| u.solvers().tokens().and_then(|t| t.refreshes()));
        let mut lost = match self.upstream.upgrade() {
            Some(u) => u.preauth_lost(),
            None => return,
        };
        let mut held: Option<Held> = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let Some(upstream) = self.upstream.upgrade() else {
                return;
            };
            let wake = match self.round(&upstream, held.as_ref()).await {
                Ok(Round::NotOffered) => {
                    debug!(ca = %self.ca, identifier = %self.list, "the CA's directory offers no newAuthz; nothing pre-authorized");
                    return;
                }
                Ok(Round::Valid(now_held)) => {
                    backoff = FIRST_BACKOFF;
                    let wake = next_wake(&now_held);
                    held = Some(now_held);
                    wake
                }
                Err(e) => {
                    self.count("failed");
                    warn!(ca = %self.ca, identifier = %self.list, error = %e, retry_in = ?backoff, "pre-authorization failed");
                    let wake = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wake
                }
            };
            drop(upstream);
            let jti = held.as_ref().and_then(|h| h.jti.clone());
            if self
                .wait(wake, refreshes.as_mut(), jti.as_deref(), &mut lost)
                .await
            {
                held = None;
            }
        }
    }

    /// Sleeps until `wake`, until the token cache announces a new token for this SPC (one
    /// other than `jti`, which the held authorization was made with), or until an order of
    /// the CA deactivated a pre-authorization: then returns true (the held one may be gone).
    async fn wait(
        &self,
        wake: Instant,
        mut refreshes: Option<&mut broadcast::Receiver<TokenRefreshed>>,
        jti: Option<&str>,
        lost: &mut broadcast::Receiver<TnAuthList>,
    ) -> bool {
        let sleep = tokio::time::sleep_until(wake);
        tokio::pin!(sleep);
        let mut lost_open = true;
        loop {
            let refreshed = async {
                match refreshes.as_deref_mut() {
                    Some(rx) => Some(rx.recv().await),
                    None => std::future::pending().await,
                }
            };
            let released = async {
                if lost_open {
                    lost.recv().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                () = &mut sleep => return false,
                list = released => match list {
                    Ok(list) if list == self.list => {
                        debug!(ca = %self.ca, identifier = %self.list, "an order gave up the pre-authorization; pre-authorizing again");
                        return true;
                    }
                    Ok(_) => {}
                    // Missed ones may include ours.
                    Err(broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(broadcast::error::RecvError::Closed) => lost_open = false,
                },
                event = refreshed => match event {
                    Some(Ok(e)) if e.request.tn_auth_list == self.list
                        && !e.request.ca
                        && Some(e.jti.as_str()) != jti => {
                        debug!(ca = %self.ca, identifier = %self.list, "SPC token refreshed; pre-authorizing again");
                        return false;
                    }
                    Some(Ok(_)) | None => {}
                    // Missed announcements may include ours: look (the round compares jti).
                    Some(Err(broadcast::error::RecvError::Lagged(_))) => return false,
                    Some(Err(broadcast::error::RecvError::Closed)) => refreshes = None,
                },
            }
        }
    }

    /// One look: a new pre-authorization unless the held one still stands (same token,
    /// authorization not yet due).
    async fn round(&self, up: &Upstream, held: Option<&Held>) -> Result<Round, AttemptError> {
        let limit = up.attempt_timeout();
        tokio::time::timeout(limit, self.round_inner(up, held))
            .await
            .map_err(|_| AttemptError::Timeout(limit))?
    }

    async fn round_inner(&self, up: &Upstream, held: Option<&Held>) -> Result<Round, AttemptError> {
        let account = up.account().await?;
        if account.client().directory().new_authz.is_none() {
            return Ok(Round::NotOffered);
        }
        let solvers = up.solvers();
        let tokens = solvers.token_source()?;
        let tkauth = solvers.tkauth();
        let margin = tkauth.refresh_margin;
        // With a token cache, the token the challenge will be answered with is the one
        // asked for here (cached); without one, every ask fetches, so none is asked here.
        let follows_tokens = tokens.refreshes().is_some();
        let (jti, token_due) = if follows_tokens {
            let req = solvers.token_request(&account, self.list.clone(), CertKind::EndEntity)?;
            let token = tokens.token(&req).await?;
            (Some(token.jti), minus(token.expires_at, margin))
        } else {
            (None, None)
        };
        let now = OffsetDateTime::now_utc();
        if let Some(h) = held
            && h.jti == jti
            && h.authz_due.is_none_or(|due| due > now)
        {
            return Ok(Round::Valid(Held {
                token_due,
                ..h.clone()
            }));
        }
        let identifier = Identifier::new("TNAuthList", self.list.encode(tkauth.tkvalue_encoding));
        let Some((url, _)) = account.new_authorization(&identifier).await? else {
            return Ok(Round::NotOffered);
        };
        let policy = RetryPolicy::new().timeout(up.attempt_timeout());
        up.authorize(&account, &url, &policy, CertKind::EndEntity)
            .await?;
        let authz = account.authorization(&url).await?;
        self.count("valid");
        info!(ca = %self.ca, identifier = %self.list, authorization = %url, expires = ?authz.expires, "acme: pre-authorized");
        Ok(Round::Valid(Held {
            jti,
            token_due,
            authz_due: authz.expires.and_then(|e| minus(e, margin)),
        }))
    }

    fn count(&self, result: &str) {
        if let Some(m) = &self.metrics {
            m.ca_preauthorization(&self.ca, result);
        }
    }
}

/// How many times a CA-certificate order is placed again after giving up valid
/// authorizations ([`release_for_ca_order`]) before it goes ahead with what it has.
pub(super) const MAX_RELEASES: usize = 8;

/// For an order placed for a CA certificate: deactivates each of its TNAuthList
/// authorizations that is already `valid` (a pre-authorization, or another order's, most
/// likely answered with an end-entity token, on which the CA would refuse a CA certificate
/// at finalize). Returns the TNAuthLists it deactivated; when there are any, the order is
/// placed again and gets authorizations of its own.
pub(super) async fn release_for_ca_order(
    account: &Account,
    order: &acme::Order,
    ca: &str,
) -> Result<Vec<TnAuthList>, AttemptError> {
    let mut released = vec![];
    for url in &order.state.authorizations {
        let authz = account.authorization(url).await?;
        if authz.status != AuthorizationStatus::Valid
            || !authz.identifier.r#type.eq_ignore_ascii_case("TNAuthList")
        {
            continue;
        }
        let list = TnAuthList::decode(&authz.identifier.value)?;
        let deactivate = serde_json::json!({"status": "deactivated"});
        account.post_json(Endpoint::Authz, url, &deactivate).await?;
        info!(ca = %ca, authorization = %url, "acme: valid TNAuthList authorization deactivated for a CA-certificate order (its token may not allow a CA certificate)");
        released.push(list);
    }
    Ok(released)
}

/// `at` − `d`, or `None` past the representable dates (an `exp` at the edge).
fn minus(at: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    at.checked_sub(time::Duration::try_from(d).ok()?)
}

/// When to look again: the earlier of the token's refresh point and the authorization's.
fn next_wake(held: &Held) -> Instant {
    let due = match (held.token_due, held.authz_due) {
        (Some(t), Some(a)) => Some(t.min(a)),
        (t, a) => t.or(a),
    };
    let now = OffsetDateTime::now_utc();
    let wait = due.map_or(IDLE_RECHECK, |due| {
        Duration::try_from(due - now)
            .unwrap_or(Duration::ZERO)
            .min(IDLE_RECHECK)
    });
    Instant::now() + wait + AFTER_REFRESH_POINT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_at_the_earlier_refresh_point() {
        let now = OffsetDateTime::now_utc();
        let at = |secs: i64| now + time::Duration::seconds(secs);
        let within = |held: Held, secs: u64| {
            let wait = next_wake(&held) - Instant::now();
            let expected = Duration::from_secs(secs);
            assert!(
                wait <= expected + Duration::from_secs(1)
                    && wait + Duration::from_secs(1) >= expected,
                "{wait:?} vs {expected:?}"
            );
        };
        within(
            Held {
                jti: None,
                token_due: Some(at(30)),
                authz_due: Some(at(600)),
            },
            30,
        );
        within(
            Held {
                jti: None,
                token_due: Some(at(600)),
                authz_due: Some(at(40)),
            },
            40,
        );
        within(
            Held {
                jti: None,
                token_due: None,
                authz_due: None,
            },
            IDLE_RECHECK.as_secs(),
        );
        // Past due: at once.
        within(
            Held {
                jti: None,
                token_due: Some(at(-5)),
                authz_due: None,
            },
            0,
        );
    }
}
