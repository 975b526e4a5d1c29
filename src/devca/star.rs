//! STAR, short-term automatically renewed certificates (RFC 8739): the `auto-renewal` object
//! of newOrder (§3.1.1), the issuance schedule (§3.2), the star-certificate resource
//! (§3.3, §4.3) and cancellation (§3.1.2).
//!
//! Policy: a request outside the limits of [`DevStar`] is refused with 400 `malformed` and
//! a detail naming the field and the limit; the devca never adjusts the values. Each next
//! certificate is issued halfway through the current one's lifetime, so the
//! star-certificate URL always serves a certificate that is valid now; the last one ends at
//! `end-date`. An order whose `end-date` passed stays `valid`, and its star-certificate URL
//! answers 403 `autoRenewalExpired`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    behaviour::Counter,
    issue::{fail_order, issue_and_record},
    jws::{AccountRequest, Problem},
    pki::IssueRequest,
    state::{AcmeState, Inner, Status, order_json, rfc3339},
};

/// The STAR limits the devca announces in `meta.auto-renewal` (RFC 8739 §3.1.1) and
/// enforces at newOrder. A request outside them is refused with a 400 `malformed` problem
/// naming the field and the limit; the devca never adjusts the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevStar {
    /// The shortest `lifetime` accepted; 1 s by default, so tests can run on seconds.
    pub min_lifetime: std::time::Duration,
    /// The longest `end-date` − `start-date` accepted; 365 days by default.
    pub max_duration: std::time::Duration,
    /// Whether orders may negotiate `allow-certificate-get` (unauthenticated GET of the
    /// star-certificate URL); on by default.
    pub allow_certificate_get: bool,
}

impl Default for DevStar {
    fn default() -> Self {
        Self {
            min_lifetime: std::time::Duration::from_secs(1),
            max_duration: std::time::Duration::from_secs(365 * 24 * 3600),
            allow_certificate_get: true,
        }
    }
}

/// What the devca did for one STAR order ([`DevCaHandle::star_orders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevStarOrder {
    /// The order URL.
    pub order_url: String,
    /// The order's status (`processing`, `valid`, `canceled`).
    pub status: String,
    /// Short-term certificates issued for it so far.
    pub certificates: u64,
    /// Successful fetches of its star-certificate URL (POST-as-GET, GET; not HEAD).
    pub fetches: u64,
    /// Serials (lowercase hex) of its certificates, oldest first.
    pub serials: Vec<String>,
}

/// The STAR part of an order.
pub(crate) struct StarState {
    pub(crate) start: Option<OffsetDateTime>,
    pub(crate) end: OffsetDateTime,
    pub(crate) lifetime: Duration,
    pub(crate) adjust: Duration,
    pub(crate) allow_get: bool,
    /// The short-term certificates issued, oldest first; the last is the current one.
    pub(crate) certs: Vec<StarCert>,
    /// Successful star-certificate fetches (HEAD not counted).
    pub(crate) fetches: u64,
    /// Wakes the issuing task on cancellation.
    pub(crate) cancel: Arc<tokio::sync::Notify>,
}

pub(crate) struct StarCert {
    pub(crate) id: String,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl StarState {
    /// The `auto-renewal` object as the order echoes it.
    pub(crate) fn request_json(&self) -> Value {
        let mut v = json!({
            "end-date": rfc3339(self.end),
            "lifetime": self.lifetime.whole_seconds(),
            "allow-certificate-get": self.allow_get,
        });
        if let Some(start) = self.start {
            v["start-date"] = json!(rfc3339(start));
        }
        if !self.adjust.is_zero() {
            v["lifetime-adjust"] = json!(self.adjust.whole_seconds());
        }
        v
    }
}

/// The directory's `meta.auto-renewal`.
pub(crate) fn meta_json(star: &DevStar) -> Value {
    json!({
        "min-lifetime": star.min_lifetime.as_secs(),
        "max-duration": star.max_duration.as_secs(),
        "allow-certificate-get": star.allow_certificate_get,
    })
}

/// The newOrder's `auto-renewal`, checked as RFC 8739 §3.1.1 says; `None` without one.
pub(crate) fn requested(
    inner: &Inner,
    payload: &Value,
    now: OffsetDateTime,
) -> Result<Option<StarState>, Problem> {
    let Some(ar) = payload.get("auto-renewal") else {
        return Ok(None);
    };
    let Some(limits) = inner.settings.star else {
        return Err(Problem::malformed(
            "this CA does not offer STAR (its directory has no meta.auto-renewal): \
             newOrder with auto-renewal refused",
        ));
    };
    for field in ["notBefore", "notAfter"] {
        if payload.get(field).is_some() {
            return Err(Problem::malformed(format!(
                "{field} must not be present with auto-renewal (RFC 8739 §3.1.1)"
            )));
        }
    }
    let ar = ar
        .as_object()
        .ok_or_else(|| Problem::malformed("auto-renewal must be a JSON object"))?;
    let date = |name: &str| -> Result<Option<OffsetDateTime>, Problem> {
        ar.get(name)
            .map(|v| {
                v.as_str()
                    .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
                    .ok_or_else(|| {
                        Problem::malformed(format!(
                            "auto-renewal.{name} {v} is not an RFC 3339 date-time"
                        ))
                    })
            })
            .transpose()
    };
    let secs = |name: &str| -> Result<Option<i64>, Problem> {
        ar.get(name)
            .map(|v| {
                v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                    Problem::malformed(format!(
                        "auto-renewal.{name} {v} is not a non-negative integer (seconds)"
                    ))
                })
            })
            .transpose()
    };
    let start = date("start-date")?;
    let end =
        date("end-date")?.ok_or_else(|| Problem::malformed("auto-renewal.end-date is required"))?;
    let lifetime =
        secs("lifetime")?.ok_or_else(|| Problem::malformed("auto-renewal.lifetime is required"))?;
    let adjust = secs("lifetime-adjust")?.unwrap_or(0);
    let allow_get = match ar.get("allow-certificate-get") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            Problem::malformed(format!(
                "auto-renewal.allow-certificate-get {v} is not a boolean"
            ))
        })?,
    };
    if end <= now {
        return Err(Problem::malformed(format!(
            "auto-renewal.end-date {} is in the past",
            rfc3339(end)
        )));
    }
    if let Some(start) = start
        && start >= end
    {
        return Err(Problem::malformed(format!(
            "auto-renewal.end-date {} is not after start-date {}",
            rfc3339(end),
            rfc3339(start)
        )));
    }
    let min = i64::try_from(limits.min_lifetime.as_secs()).unwrap_or(i64::MAX);
    if lifetime < min.max(1) {
        return Err(Problem::malformed(format!(
            "auto-renewal.lifetime {lifetime} s is below this CA's min-lifetime of {} s",
            min.max(1)
        )));
    }
    let duration = end - start.map_or(now, |s| s.max(now));
    let max = Duration::try_from(limits.max_duration).unwrap_or(Duration::MAX);
    if duration > max {
        return Err(Problem::malformed(format!(
            "auto-renewal duration of {} s (end-date minus start-date) exceeds this CA's \
             max-duration of {} s",
            duration.whole_seconds(),
            max.whole_seconds()
        )));
    }
    if allow_get && !limits.allow_certificate_get {
        return Err(Problem::malformed(
            "auto-renewal.allow-certificate-get is requested, but this CA does not allow \
             unauthenticated GET (meta.auto-renewal.allow-certificate-get is false)",
        ));
    }
    Ok(Some(StarState {
        start,
        end,
        lifetime: Duration::seconds(lifetime),
        adjust: Duration::seconds(adjust),
        allow_get,
        certs: Vec::new(),
        fetches: 0,
        cancel: Arc::new(tokio::sync::Notify::new()),
    }))
}

/// The issuing task of one finalized STAR order: from `start-date` (or now) a certificate
/// valid for `lifetime` (+ `lifetime-adjust` before), the next one halfway through, until
/// the end-date or cancellation.
pub(crate) async fn run(
    inner: Arc<Inner>,
    order_id: String,
    account: String,
    mut req: IssueRequest,
) {
    let Some((start, end, lifetime, adjust, cancel)) = ({
        let state = inner.lock_state();
        state
            .orders
            .get(&order_id)
            .and_then(|o| o.star.as_ref())
            .map(|s| (s.start, s.end, s.lifetime, s.adjust, s.cancel.clone()))
    }) else {
        return;
    };
    if let Some(start) = start
        && !wait_until(start, &cancel).await
    {
        return;
    }
    loop {
        let now = OffsetDateTime::now_utc();
        if now >= end || canceled(&inner.lock_state(), &order_id) {
            break;
        }
        req.not_before = Some(now - adjust);
        req.not_after = (now + lifetime).min(end);
        let result = issue_and_record(&inner, &order_id, &account, &req, true);
        {
            let mut state = inner.lock_state();
            let Some(order) = state.orders.get_mut(&order_id) else {
                return;
            };
            match result {
                Ok(id) => {
                    if order.status == Status::Processing {
                        order.status = Status::Valid;
                    }
                    if let Some(star) = order.star.as_mut() {
                        star.certs.push(StarCert {
                            id,
                            not_before: now - adjust,
                            not_after: req.not_after,
                        });
                    }
                }
                Err(e) if order.status == Status::Processing => {
                    fail_order(&order_id, order, &e);
                    return;
                }
                Err(e) => {
                    // The current certificate stays; the next attempt is at the usual time.
                    tracing::info!(target: "devca", order = %order_id, error = %e, "STAR issuance failed");
                }
            }
        }
        if req.not_after >= end || !wait_until(now + lifetime / 2, &cancel).await {
            break;
        }
    }
    tracing::info!(target: "devca", order = %order_id, "STAR issuance ended");
}

/// Sleeps until `at`; false when cancellation came first.
async fn wait_until(at: OffsetDateTime, cancel: &tokio::sync::Notify) -> bool {
    let wait = (at - OffsetDateTime::now_utc()).max(Duration::ZERO);
    let wait = std::time::Duration::try_from(wait).unwrap_or_default();
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = cancel.notified() => false,
    }
}

fn canceled(state: &AcmeState, order_id: &str) -> bool {
    state
        .orders
        .get(order_id)
        .is_some_and(|o| o.status == Status::Canceled)
}

/// `{"status": "canceled"}` to a STAR order's URL (RFC 8739 §3.1.2).
pub(crate) fn cancel(
    inner: &Inner,
    state: &mut AcmeState,
    id: &str,
    status: &Value,
) -> Result<Response, Problem> {
    if status.as_str() != Some("canceled") {
        return Err(Problem::malformed(format!(
            "an order's status can only be set to \"canceled\" (RFC 8739 §3.1.2), not {status}"
        )));
    }
    let order = state
        .orders
        .get_mut(id)
        .ok_or_else(|| Problem::not_found("order"))?;
    let invalid = |detail: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "autoRenewalCancellationInvalid",
            detail,
        )
    };
    let Some(star) = order.star.as_ref() else {
        return Err(invalid(
            "this is not a STAR order (it has no auto-renewal): nothing to cancel".to_owned(),
        ));
    };
    if order.status != Status::Valid {
        return Err(invalid(format!(
            "only a valid STAR order can be canceled; this one is {}",
            order.status.as_str()
        )));
    }
    if OffsetDateTime::now_utc() >= star.end {
        return Err(expired(star.end));
    }
    let cancel = star.cancel.clone();
    order.status = Status::Canceled;
    cancel.notify_one();
    tracing::info!(target: "devca", order = %id, "STAR order canceled");
    Ok(Json(order_json(order, id, inner)).into_response())
}

fn expired(end: OffsetDateTime) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "autoRenewalExpired",
        format!("the STAR order's end-date {} has passed", rfc3339(end)),
    )
}

/// The star-certificate URL by POST-as-GET (RFC 8739 §3.3).
pub(crate) async fn star_post(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    let account = req.account_id()?.to_owned();
    current(&inner, &id, Some(&account), true)
}

/// The star-certificate URL by unauthenticated GET or HEAD, where the order negotiated
/// `allow-certificate-get` (RFC 8739 §3.4, §4.3).
pub(crate) async fn star_get(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    method: Method,
) -> Result<Response, Problem> {
    current(&inner, &id, None, method != Method::HEAD)
}

/// The current certificate of a STAR order, with `Cert-Not-Before`/`Cert-Not-After`; an
/// unauthenticated answer (`account` `None`) is cacheable until the next certificate.
fn current(
    inner: &Inner,
    id: &str,
    account: Option<&str>,
    count: bool,
) -> Result<Response, Problem> {
    let mut state = inner.lock_state();
    let order = state
        .orders
        .get_mut(id)
        .ok_or_else(|| Problem::not_found("STAR order"))?;
    if account.is_some_and(|a| a != order.account) {
        return Err(Problem::unauthorized("not your order"));
    }
    let status = order.status;
    let star = order
        .star
        .as_mut()
        .ok_or_else(|| Problem::not_found("STAR order"))?;
    if account.is_none() && !star.allow_get {
        return Err(Problem::unauthorized(
            "this STAR order did not negotiate allow-certificate-get: fetch its certificate \
             by POST-as-GET",
        ));
    }
    if status == Status::Canceled {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "autoRenewalCanceled",
            "the STAR order was canceled: no current certificate",
        ));
    }
    let now = OffsetDateTime::now_utc();
    if now >= star.end {
        return Err(expired(star.end));
    }
    let Some(cert) = star.certs.last() else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "malformed",
            format!(
                "no short-term certificate is issued yet (the order is {})",
                status.as_str()
            ),
        ));
    };
    let (cert_id, nb, na) = (cert.id.clone(), cert.not_before, cert.not_after);
    let next: OffsetDateTime = nb + star.adjust + star.lifetime / 2;
    if count {
        star.fetches += 1;
        inner.behaviour.count(Counter::StarFetch);
    }
    let pem = state
        .certs
        .get(&cert_id)
        .map(|c| c.chain_pem.clone())
        .unwrap_or_default();
    drop(state);
    let mut resp = (
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        pem,
    )
        .into_response();
    let h = resp.headers_mut();
    for (name, t) in [("cert-not-before", nb), ("cert-not-after", na)] {
        if let Ok(v) = HeaderValue::from_str(&http_date(t)) {
            h.insert(name, v);
        }
    }
    if account.is_none() {
        // §4.3: caches may keep it until the next certificate is due, never past notAfter.
        let max_age = (next.min(na) - now).whole_seconds().max(0);
        if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
    Ok(resp)
}

fn http_date(t: OffsetDateTime) -> String {
    httpdate::fmt_http_date(t.into())
}
