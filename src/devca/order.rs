//! newOrder, orders and authorizations (RFC 8555 §7.4, §7.5), pre-authorization (newAuthz,
//! §7.4.1). Challenges are in [`super::challenge`], finalize and what follows in
//! [`super::issue`], STAR (RFC 8739) in [`super::star`].

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    acme::created,
    ari,
    behaviour::Counter,
    jws::{AccountRequest, KeyRef, Problem, verify_request},
    star,
    state::{
        AcmeState, Authz, Challenge, Identifier, Inner, Order, Status, authz_json,
        identifier_names, order_json, random_id,
    },
};
use crate::shaken::TnAuthList;

/// newOrder (RFC 8555 §7.4) for `TNAuthList` (RFC 9448 §3) and `dns` identifiers.
pub(crate) async fn new_order(
    State(inner): State<Arc<Inner>>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    let account = req.account_id()?.to_owned();
    if let Some(secs) = inner.behaviour.rate_limit() {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rateLimited",
            "the devca is configured to rate-limit newOrder",
        );
        p.retry_after = Some(secs);
        inner.behaviour.count(Counter::RateLimited);
        tracing::info!(target: "devca", %account, retry_after = secs, "newOrder rate-limited");
        return Err(p);
    }
    let payload = req
        .json()?
        .ok_or_else(|| Problem::malformed("newOrder needs a payload"))?;
    let ids = payload
        .get("identifiers")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Problem::malformed("identifiers must be a non-empty array"))?;
    let mut identifiers = Vec::new();
    for id in ids {
        identifiers.push(parse_identifier(id)?);
    }
    if identifiers
        .iter()
        .filter(|i| i.tn_auth_list.is_some())
        .count()
        > 1
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "rejectedIdentifier",
            "at most one TNAuthList identifier per order",
        ));
    }
    for identifier in &identifiers {
        check_tn_list(&inner, identifier)?;
    }
    let now = OffsetDateTime::now_utc();
    // Before notAfter: with auto-renewal, notBefore/notAfter get STAR's own error.
    let star = star::requested(&inner, &payload, now)?;
    let not_after = requested_not_after(&inner, &payload, now)?;
    let replaces = ari::requested_replaces(&payload, inner.settings.renewal_info.is_some())?;
    let order_id = random_id();
    let mut state = inner.lock_state();
    let replaced = replaces
        .map(|id| ari::check_replaces(&mut state, id, &account, &identifiers, &inner.behaviour))
        .transpose()?;
    let mut authz_ids = Vec::new();
    for identifier in &identifiers {
        if let Some(pre) = preauthorization(&state, &account, identifier, now) {
            tracing::info!(
                target: "devca",
                authz = %pre,
                order = %order_id,
                identifier = %identifier_names(std::slice::from_ref(identifier)),
                "pre-authorization reused"
            );
            authz_ids.push(pre);
            continue;
        }
        let authz_id = create_authz(
            &inner, &mut state, &account, &order_id, identifier, now, false,
        );
        authz_ids.push(authz_id);
    }
    let all_valid = authz_ids.iter().all(|a| {
        state
            .authzs
            .get(a)
            .is_some_and(|a| a.status == Status::Valid)
    });
    let order = Order {
        account,
        status: if all_valid {
            Status::Ready
        } else {
            Status::Pending
        },
        // A STAR order lives until its end-date at least.
        expires: star.as_ref().map_or(now + Duration::days(7), |s| {
            s.end.max(now + Duration::days(7))
        }),
        identifiers,
        not_after,
        authzs: authz_ids,
        cert: None,
        error: None,
        replaces: replaces.map(str::to_owned),
        star,
    };
    let body = order_json(&order, &order_id, &inner);
    tracing::info!(
        target: "devca",
        order = %order_id,
        account = %order.account,
        identifiers = %identifier_names(&order.identifiers),
        replaces = order.replaces.as_deref().unwrap_or(""),
        "order created"
    );
    state.orders.insert(order_id.clone(), order);
    if let Some(cert) = replaced.and_then(|key| state.certs.get_mut(&key)) {
        cert.replaced_by = Some(order_id.clone());
    }
    drop(state);
    inner.behaviour.count(Counter::NewOrder);
    Ok(created(
        StatusCode::CREATED,
        inner.url(&format!("/acme/order/{order_id}")).as_str(),
        body,
    ))
}

/// ATIS-1000080 v005: unless `allow_tn_lists`, a TNAuthList holds exactly one SPC.
fn check_tn_list(inner: &Inner, identifier: &Identifier) -> Result<(), Problem> {
    if inner.settings.allow_tn_lists {
        return Ok(());
    }
    match &identifier.tn_auth_list {
        Some(list) if list.entries().len() != 1 || list.spcs().count() != 1 => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "rejectedIdentifier",
            format!(
                "ATIS-1000080 v005: a TNAuthList holds exactly one SPC, not {list} \
                     (the devca's allow_tn_lists is off)"
            ),
        )),
        _ => Ok(()),
    }
}

/// A pending authorization for `identifier` with its challenge: http-01 for `dns`
/// (RFC 8555 §8.3), tkauth-01 for TNAuthList (RFC 9447). `order_id` is empty for a
/// pre-authorization.
fn create_authz(
    inner: &Inner,
    state: &mut AcmeState,
    account: &str,
    order_id: &str,
    identifier: &Identifier,
    now: OffsetDateTime,
    preauthorized: bool,
) -> String {
    let authz_id = random_id();
    let chall_id = random_id();
    let is_dns = identifier.kind == "dns";
    let status = Status::Pending;
    state
        .authz_by_challenge
        .insert(chall_id.clone(), authz_id.clone());
    state.authzs.insert(
        authz_id.clone(),
        Authz {
            account: account.to_owned(),
            order: order_id.to_owned(),
            identifier: identifier.clone(),
            status,
            expires: now + Duration::days(7),
            challenge: Challenge {
                id: chall_id,
                kind: if is_dns { "http-01" } else { "tkauth-01" },
                token: is_dns.then(random_id),
                status,
                validated: None,
                error: None,
            },
            token_ca: None,
            preauthorized,
        },
    );
    tracing::info!(
        target: "devca",
        authz = %authz_id,
        order = %order_id,
        preauthorized,
        identifier = %identifier_names(std::slice::from_ref(identifier)),
        "authorization created"
    );
    inner.behaviour.count(Counter::Authorization);
    authz_id
}

/// A valid, unexpired pre-authorization (newAuthz) of `account` for `identifier`:
/// TNAuthLists compared after DER decoding, other values case-insensitively.
fn preauthorization(
    state: &AcmeState,
    account: &str,
    identifier: &Identifier,
    now: OffsetDateTime,
) -> Option<String> {
    state
        .authzs
        .iter()
        .find(|(_, a)| {
            a.preauthorized
                && a.account == account
                && a.status == Status::Valid
                && a.expires > now
                && a.identifier.kind == identifier.kind
                && match (&a.identifier.tn_auth_list, &identifier.tn_auth_list) {
                    (Some(x), Some(y)) => x == y,
                    _ => a.identifier.value.eq_ignore_ascii_case(&identifier.value),
                }
        })
        .map(|(id, _)| id.clone())
}

/// newAuthz (RFC 8555 §7.4.1): a pending authorization for one identifier, outside any
/// order, answered like any other; once valid, the account's next orders for the
/// identifier reuse it.
pub(crate) async fn new_authz(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    if !inner.settings.new_authz {
        return Err(Problem::not_found("resource (this CA offers no newAuthz)"));
    }
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
    let account = req.account_id()?.to_owned();
    let payload = req
        .json()?
        .ok_or_else(|| Problem::malformed("newAuthz needs a payload"))?;
    let id = payload
        .get("identifier")
        .filter(|v| v.is_object())
        .ok_or_else(|| Problem::malformed("newAuthz needs an identifier object"))?;
    let identifier = parse_identifier(id)?;
    check_tn_list(&inner, &identifier)?;
    let now = OffsetDateTime::now_utc();
    let mut state = inner.lock_state();
    let authz_id = create_authz(&inner, &mut state, &account, "", &identifier, now, true);
    let body = state
        .authzs
        .get(&authz_id)
        .map(|a| authz_json(a, &inner))
        .unwrap_or_default();
    drop(state);
    inner.behaviour.count(Counter::NewAuthz);
    Ok(created(
        StatusCode::CREATED,
        inner.url(&format!("/acme/authz/{authz_id}")).as_str(),
        body,
    ))
}

/// The order's `notAfter`. RFC 8555 §7.4: a server that cannot issue for the requested
/// validity period MUST refuse the order, so `notBefore` (the devca starts every certificate
/// when it issues it) and a `notAfter` past the maximum lifetime are errors.
fn requested_not_after(
    inner: &Inner,
    payload: &Value,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, Problem> {
    if payload.get("notBefore").is_some() {
        return Err(Problem::malformed(
            "this CA does not take notBefore: certificates start when issued",
        ));
    }
    let Some(s) = payload.get("notAfter") else {
        return Ok(None);
    };
    let na = s
        .as_str()
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .ok_or_else(|| Problem::malformed(format!("notAfter {s} is not an RFC 3339 time")))?;
    let lifetime = Duration::try_from(inner.settings.cert_lifetime).unwrap_or(Duration::DAY);
    if na <= now || na > now + lifetime {
        return Err(Problem::malformed(format!(
            "notAfter {s} is not within this CA's maximum certificate lifetime of {} s",
            lifetime.whole_seconds()
        )));
    }
    Ok(Some(na))
}

/// Whether `name` is a DNS name http-01 can validate: LDH labels of 1 to 63 characters,
/// 253 at most in all, no wildcard (RFC 8555 §7.1.3, §8.3).
fn is_validatable_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_identifier(id: &Value) -> Result<Identifier, Problem> {
    let kind = id.get("type").and_then(Value::as_str).unwrap_or_default();
    let value = id.get("value").and_then(Value::as_str).unwrap_or_default();
    let tn_auth_list = match kind {
        "TNAuthList" => Some(TnAuthList::decode(value).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "rejectedIdentifier",
                format!("TNAuthList identifier {value:?}: {e}"),
            )
        })?),
        "dns" if is_validatable_dns_name(value) => None,
        "dns" => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "rejectedIdentifier",
                format!(
                    "dns identifier {value:?} is not a name http-01 can validate \
                     (no wildcards: RFC 8555 §8.3)"
                ),
            ));
        }
        _ => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "unsupportedIdentifier",
                format!("identifier type {kind:?} with value {value:?} is not supported"),
            ));
        }
    };
    Ok(Identifier {
        kind: kind.to_owned(),
        value: value.to_owned(),
        tn_auth_list,
    })
}

/// Order POST-as-GET; `{"status": "canceled"}` cancels a STAR order (RFC 8739 §3.1.2).
pub(crate) async fn order(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    let payload = req.json()?;
    let mut state = inner.lock_state();
    let order = state
        .orders
        .get(&id)
        .ok_or_else(|| Problem::not_found("order"))?;
    if order.account != req.account_id()? {
        return Err(Problem::unauthorized("not your order"));
    }
    if let Some(status) = payload.as_ref().and_then(|p| p.get("status")) {
        return star::cancel(&inner, &mut state, &id, status);
    }
    Ok(Json(order_json(order, &id, &inner)).into_response())
}

/// The account's orders list (RFC 8555 §7.1.2.1), POST-as-GET: every order of the account
/// that is not invalid, in no particular order.
pub(crate) async fn orders(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    if req.account_id()? != id {
        return Err(Problem::unauthorized("not your account"));
    }
    let state = inner.lock_state();
    let urls: Vec<String> = state
        .orders
        .iter()
        .filter(|(_, o)| o.account == id && o.status != Status::Invalid)
        .map(|(oid, _)| inner.url(&format!("/acme/order/{oid}")).to_string())
        .collect();
    Ok(Json(json!({ "orders": urls })).into_response())
}

/// Authorization POST-as-GET, and deactivation with `{"status": "deactivated"}`
/// (RFC 8555 §7.5.2).
pub(crate) async fn authz(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    let payload = req.json()?;
    let mut state = inner.lock_state();
    let authz = state
        .authzs
        .get_mut(&id)
        .ok_or_else(|| Problem::not_found("authorization"))?;
    if authz.account != req.account_id()? {
        return Err(Problem::unauthorized("not your authorization"));
    }
    let Some(status) = payload.as_ref().and_then(|p| p.get("status")) else {
        return Ok(Json(authz_json(authz, &inner)).into_response());
    };
    if status.as_str() != Some("deactivated") {
        return Err(Problem::malformed(format!(
            "an authorization can only be deactivated, not set to {status}"
        )));
    }
    if !matches!(authz.status, Status::Pending | Status::Valid) {
        return Err(Problem::malformed(format!(
            "a {} authorization cannot be deactivated",
            authz.status.as_str()
        )));
    }
    authz.status = Status::Deactivated;
    let body = authz_json(authz, &inner);
    update_order(&mut state, &id);
    Ok(Json(body).into_response())
}

/// Derives the order's status from its authorizations (RFC 8555 §7.1.6).
pub(crate) fn update_order(state: &mut AcmeState, authz_id: &str) {
    let Some(order_id) = state.authzs.get(authz_id).map(|a| a.order.clone()) else {
        return;
    };
    let statuses: Vec<Status> = state
        .orders
        .get(&order_id)
        .map(|o| {
            o.authzs
                .iter()
                .filter_map(|a| state.authzs.get(a).map(|a| a.status))
                .collect()
        })
        .unwrap_or_default();
    // A deactivated authorization also invalidates a ready order: it cannot be finalized.
    if let Some(order) = state.orders.get_mut(&order_id)
        && matches!(order.status, Status::Pending | Status::Ready)
    {
        if statuses
            .iter()
            .any(|s| matches!(s, Status::Invalid | Status::Deactivated))
        {
            order.status = Status::Invalid;
            order.error =
                Some(Problem::unauthorized("an authorization of this order is invalid").to_json());
        } else if statuses.iter().all(|s| *s == Status::Valid) {
            order.status = Status::Ready;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_http01_can_validate() {
        for ok in ["sip.example.test", "a-b.example", "localhost", "x1.y2"] {
            assert!(is_validatable_dns_name(ok), "{ok}");
        }
        let long = format!("{}.example", "a".repeat(64));
        for bad in [
            "*.example.test",
            "",
            "a..b",
            "-a.example",
            "a-.example",
            "a_b.example",
            &long,
        ] {
            assert!(!is_validatable_dns_name(bad), "{bad}");
        }
    }
}
