//! Orders, authorizations, the tkauth-01 and http-01 challenges, finalize, certificate
//! download and revocation (RFC 8555 §7.4–§7.6, §8.3, RFC 9447, RFC 9448).

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    DevKeyReuse, DevResponseField,
    acme::created,
    ari,
    behaviour::Counter,
    jws::{KeyRef, Problem, spki_der, thumbprint, verify_request},
    pki::IssueRequest,
    state::{
        AcmeState, Authz, Challenge, Identifier, Inner, IssuedCert, Order, Status, authz_json,
        challenge_json, identifier_names, order_json, random_id,
    },
    stipa,
};
use crate::shaken::{CertInfo, TnAuthList, parse_csr};

fn bad_csr(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "badCSR", detail)
}

/// newOrder (RFC 8555 §7.4) for `TNAuthList` (RFC 9448 §3) and `dns` identifiers.
pub(crate) async fn new_order(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
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
    if !inner.settings.allow_tn_lists {
        if let Some(list) = identifiers.iter().find_map(|i| i.tn_auth_list.as_ref()) {
            if list.entries().len() != 1 || list.spcs().count() != 1 {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "rejectedIdentifier",
                    format!(
                        "ATIS-1000080 v005: a TNAuthList holds exactly one SPC, not {list} \
                         (the devca's allow_tn_lists is off)"
                    ),
                ));
            }
        }
    }
    let now = OffsetDateTime::now_utc();
    let not_after = requested_not_after(&inner, &payload, now)?;
    let replaces = ari::requested_replaces(&payload, inner.settings.renewal_info.is_some())?;
    let order_id = random_id();
    let mut state = inner.lock_state();
    let replaced = replaces
        .map(|id| ari::check_replaces(&mut state, id, &account, &identifiers, &inner.behaviour))
        .transpose()?;
    let mut authz_ids = Vec::new();
    for identifier in &identifiers {
        let authz_id = random_id();
        let chall_id = random_id();
        // dns identifiers are validated over http-01 (RFC 8555 §8.3), TNAuthList over
        // tkauth-01 (RFC 9447); both start pending (§7.1.6).
        let is_dns = identifier.kind == "dns";
        let status = Status::Pending;
        state
            .authz_by_challenge
            .insert(chall_id.clone(), authz_id.clone());
        state.authzs.insert(
            authz_id.clone(),
            Authz {
                account: account.clone(),
                order: order_id.clone(),
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
            },
        );
        tracing::info!(
            target: "devca",
            authz = %authz_id,
            order = %order_id,
            identifier = %identifier_names(std::slice::from_ref(identifier)),
            "authorization created"
        );
        inner.behaviour.count(Counter::Authorization);
        authz_ids.push(authz_id);
    }
    let order = Order {
        account,
        status: Status::Pending,
        expires: now + Duration::days(7),
        identifiers,
        not_after,
        authzs: authz_ids,
        cert: None,
        error: None,
        replaces: replaces.map(str::to_owned),
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

/// Order POST-as-GET.
pub(crate) async fn order(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
    let state = inner.lock_state();
    let order = state
        .orders
        .get(&id)
        .ok_or_else(|| Problem::not_found("order"))?;
    if order.account != req.account_id()? {
        return Err(Problem::unauthorized("not your order"));
    }
    Ok(Json(order_json(order, &id, &inner)).into_response())
}

/// The account's orders list (RFC 8555 §7.1.2.1), POST-as-GET: every order of the account
/// that is not invalid, in no particular order.
pub(crate) async fn orders(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
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
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
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

/// Challenge: POST-as-GET reads it; a JSON object starts validation in the background:
/// for tkauth-01 it carries the token (RFC 9448 §4: `tkauth`; deployed CAs: `atc`), for
/// http-01 it is `{}` and the devca fetches the key authorization from the client
/// (RFC 8555 §7.5.1, §8.3). Every answer links `up` to the authorization.
pub(crate) async fn challenge(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
    let payload = req.json()?;
    let mut state = inner.lock_state();
    let authz_id = state
        .authz_by_challenge
        .get(&id)
        .cloned()
        .ok_or_else(|| Problem::not_found("challenge"))?;
    let authz = state
        .authzs
        .get_mut(&authz_id)
        .ok_or_else(|| Problem::not_found("authorization"))?;
    if authz.account != req.account_id()? {
        return Err(Problem::unauthorized("not your challenge"));
    }
    let up = format!(
        "<{}>;rel=\"up\"",
        inner.url(&format!("/acme/authz/{authz_id}"))
    );
    let with_up = |mut resp: Response| {
        if let Ok(v) = HeaderValue::from_str(&up) {
            resp.headers_mut().append(header::LINK, v);
        }
        resp
    };
    if let Some(p) = &payload
        && !p.is_object()
    {
        return Err(Problem::malformed(
            "a challenge response must be a JSON object",
        ));
    }
    if payload.is_some()
        && authz.challenge.kind == "http-01"
        && authz.challenge.status == Status::Pending
        && authz.status == Status::Pending
    {
        authz.challenge.status = Status::Processing;
        let inner2 = inner.clone();
        let authz_id2 = authz_id.clone();
        tokio::spawn(async move { validate_http01(&inner2, &authz_id2).await });
        let mut resp = Json(challenge_json(&authz.challenge, &inner)).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(with_up(resp));
    }
    if let Some(p) = payload
        && authz.challenge.status == Status::Pending
        && authz.status == Status::Pending
    {
        let token = match inner.settings.response_field {
            DevResponseField::Atc => p.get("atc"),
            DevResponseField::Tkauth => p.get("tkauth"),
            DevResponseField::Either => p.get("atc").or_else(|| p.get("tkauth")),
        }
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            Problem::malformed(format!(
                "challenge response lacks the token field ({:?})",
                inner.settings.response_field
            ))
        })?;
        authz.challenge.status = Status::Processing;
        let (inner2, jwk) = (inner.clone(), req.jwk.clone());
        tokio::spawn(async move { validate(&inner2, &authz_id, &token, &jwk) });
        let mut resp = Json(challenge_json(&authz.challenge, &inner)).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(with_up(resp));
    }
    Ok(with_up(
        Json(challenge_json(&authz.challenge, &inner)).into_response(),
    ))
}

/// http-01 validation (RFC 8555 §8.3): GET
/// `http://{domain}:{http01_port}/.well-known/acme-challenge/{token}`, with the domain
/// resolved to `http01_address` when set, and compare the body (trailing whitespace aside)
/// with `token.thumbprint(account key)`.
async fn validate_http01(inner: &Inner, authz_id: &str) {
    let target = {
        let state = inner.lock_state();
        state.authzs.get(authz_id).and_then(|a| {
            let jwk = &state.accounts.get(&a.account)?.jwk;
            let token = a.challenge.token.clone()?;
            let key_auth = format!("{token}.{}", thumbprint(jwk));
            Some((a.identifier.value.clone(), token, key_auth))
        })
    };
    let Some((domain, token, key_auth)) = target else {
        return;
    };
    let result = fetch_key_authorization(inner, &domain, &token)
        .await
        .and_then(|body| {
            if body.trim_end() == key_auth {
                Ok(None)
            } else {
                Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "incorrectResponse",
                    format!(
                        "http-01 for {domain}: the key authorization served is {body:?}, \
                         expected {key_auth:?}"
                    ),
                ))
            }
        });
    let mut state = inner.lock_state();
    settle(inner, &mut state, authz_id, result);
}

async fn fetch_key_authorization(
    inner: &Inner,
    domain: &str,
    token: &str,
) -> Result<String, Problem> {
    let port = inner.settings.http01_port;
    let url = format!("http://{domain}:{port}/.well-known/acme-challenge/{token}");
    let connection = |detail: String| Problem::new(StatusCode::BAD_REQUEST, "connection", detail);
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::limited(10));
    if let Some(ip) = inner.settings.http01_address {
        // reqwest takes the port from the URL; the resolved address only gives the IP.
        builder = builder.resolve(domain, std::net::SocketAddr::new(ip, port));
    }
    let client = builder
        .build()
        .map_err(|e| connection(format!("http-01 client: {e}")))?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| connection(format!("http-01 fetch of {url}: {e}")))?;
    if resp.status() != StatusCode::OK {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "unauthorized",
            format!("http-01 fetch of {url}: HTTP {}", resp.status()),
        ));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| connection(format!("http-01 fetch of {url}: {e}")))?;
    if body.len() > 4096 {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "incorrectResponse",
            format!("http-01 fetch of {url}: a {} byte body", body.len()),
        ));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn validate(inner: &Inner, authz_id: &str, token: &str, jwk: &Value) {
    let mut state = inner.lock_state();
    let Some(expected) = state
        .authzs
        .get(authz_id)
        .and_then(|a| a.identifier.tn_auth_list.clone())
    else {
        return;
    };
    let result = stipa::verify_token(inner, token, &expected, jwk).and_then(|grant| {
        if !inner.settings.one_time_jti || state.used_jtis.insert(grant.jti.clone()) {
            Ok(grant)
        } else {
            Err(Problem::unauthorized("token already used (jti replay)"))
        }
    });
    settle(
        inner,
        &mut state,
        authz_id,
        result.map(|grant| Some(grant.ca)),
    );
}

/// Records a challenge's outcome (`Ok` with the token's `atc.ca` for tkauth-01) on the
/// challenge, its authorization and its order.
fn settle(
    inner: &Inner,
    state: &mut AcmeState,
    authz_id: &str,
    result: Result<Option<bool>, Problem>,
) {
    let Some(authz) = state.authzs.get_mut(authz_id) else {
        return;
    };
    if authz.status != Status::Pending {
        // Deactivated while the validation ran.
        return;
    }
    let identifier = identifier_names(std::slice::from_ref(&authz.identifier));
    match result {
        Ok(token_ca) => {
            authz.status = Status::Valid;
            authz.challenge.status = Status::Valid;
            authz.challenge.validated = Some(OffsetDateTime::now_utc());
            authz.token_ca = token_ca;
            inner.behaviour.count(Counter::ChallengeValidated);
            tracing::info!(
                target: "devca",
                authz = %authz_id,
                kind = authz.challenge.kind,
                %identifier,
                "challenge valid"
            );
        }
        Err(problem) => {
            inner.behaviour.count(Counter::ChallengeInvalid);
            tracing::info!(
                target: "devca",
                authz = %authz_id,
                kind = authz.challenge.kind,
                %identifier,
                problem_type = problem.kind,
                detail = %problem.detail,
                "challenge invalid"
            );
            authz.status = Status::Invalid;
            authz.challenge.status = Status::Invalid;
            authz.challenge.error = Some(problem.to_json());
        }
    }
    update_order(state, authz_id);
}

/// Derives the order's status from its authorizations (RFC 8555 §7.1.6).
fn update_order(state: &mut AcmeState, authz_id: &str) {
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

/// finalize (RFC 8555 §7.4): checks the CSR against the order and the SHAKEN rules, then
/// issues in the background.
pub(crate) async fn finalize(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
    let payload = req.json()?.unwrap_or_default();
    let csr_der = payload
        .get("csr")
        .and_then(Value::as_str)
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .ok_or_else(|| bad_csr("csr must be base64url DER"))?;
    let mut state = inner.lock_state();
    state.record_csr(csr_der.clone());
    let order = state
        .orders
        .get(&id)
        .ok_or_else(|| Problem::not_found("order"))?;
    if order.account != req.account_id()? {
        return Err(Problem::unauthorized("not your order"));
    }
    if order.status != Status::Ready {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "orderNotReady",
            format!("order is {}", order.status.as_str()),
        ));
    }
    let csr = parse_csr(&csr_der).map_err(|e| bad_csr(e.to_string()))?;
    if !csr.key_is_p256 {
        return Err(bad_csr("CSR key must be P-256"));
    }
    if !csr.is_ecdsa_sha256() {
        return Err(bad_csr("CSR must be signed with ecdsa-with-SHA256"));
    }
    let is_account_key = csr.public_key_spki_der == spki_der(&req.jwk);
    match inner.settings.account_key_reuse {
        DevKeyReuse::Reject if is_account_key => {
            return Err(bad_csr("CSR key must not be the account key"));
        }
        DevKeyReuse::Require if !is_account_key => {
            return Err(bad_csr("Public key does not match account"));
        }
        _ => {}
    }
    let ordered_list = order
        .identifiers
        .iter()
        .find_map(|i| i.tn_auth_list.clone());
    match (&ordered_list, &csr.tn_auth_list) {
        (Some(want), Some(got)) if want != got => {
            return Err(bad_csr(format!(
                "TNAuthList extension value does not match: CSR {got}, order {want}"
            )));
        }
        (Some(_), None) => return Err(bad_csr("CSR lacks the TNAuthList extension")),
        (None, Some(_)) => return Err(bad_csr("CSR has a TNAuthList the order lacks")),
        _ => {}
    }
    if csr.tn_auth_list_critical {
        return Err(bad_csr("Invalid TNAuthList extension - cannot be critical"));
    }
    // The subject is re-encoded into the certificate (countryName and serialNumber as
    // PrintableString), so it must be encodable.
    csr.subject
        .validate()
        .map_err(|e| bad_csr(format!("CSR {e}")))?;
    let mut ordered_dns: Vec<String> = order
        .identifiers
        .iter()
        .filter(|i| i.kind == "dns")
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    let mut csr_dns: Vec<String> = csr
        .dns_names
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    ordered_dns.sort();
    csr_dns.sort();
    if ordered_dns != csr_dns {
        return Err(bad_csr(format!(
            "CSR names {csr_dns:?} are not the order's {ordered_dns:?}"
        )));
    }
    let token_ca = order
        .authzs
        .iter()
        .filter_map(|a| state.authzs.get(a).and_then(|a| a.token_ca))
        .any(|ca| ca);
    if csr.ca && !ordered_dns.is_empty() {
        return Err(bad_csr("a CA certificate cannot carry dns names"));
    }
    if ordered_list.is_some() && csr.ca != token_ca {
        return Err(bad_csr(format!(
            "CSR basicConstraints CA={} does not match the token's atc.ca={token_ca}",
            csr.ca
        )));
    }
    let lifetime = Duration::try_from(inner.settings.cert_lifetime).unwrap_or(Duration::DAY);
    let max_after = OffsetDateTime::now_utc() + lifetime;
    let issue = IssueRequest {
        spki_der: csr.public_key_spki_der,
        subject: csr.subject,
        tn_auth_list: csr.tn_auth_list,
        dns_names: csr.dns_names,
        ca: csr.ca,
        not_after: order.not_after.map_or(max_after, |na| na.min(max_after)),
    };
    let account = order.account.clone();
    if let Some(order) = state.orders.get_mut(&id) {
        order.status = Status::Processing;
    }
    let body = state.orders.get(&id).map(|o| order_json(o, &id, &inner));
    drop(state);
    inner.behaviour.count(Counter::Finalize);
    tracing::info!(target: "devca", order = %id, "order finalized; issuing");
    let inner2 = inner.clone();
    let order_id = id.clone();
    tokio::spawn(async move { issue_for(&inner2, &order_id, &account, &issue) });
    let mut resp = Json(body.unwrap_or_default()).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if let Ok(v) = HeaderValue::from_str(inner.url(&format!("/acme/order/{id}")).as_str()) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn issue_for(inner: &Inner, order_id: &str, account: &str, req: &IssueRequest) {
    let result = inner.pki.issue(req).map_err(|e| e.to_string());
    let result = match (result, inner.behaviour.profile_defect()) {
        (Ok(issued), Some(defect)) if !req.ca => super::defect::apply(defect, issued, &inner.pki),
        (other, _) => other,
    };
    let mut state = inner.lock_state();
    let cert_id = random_id();
    match result {
        Ok(issued) => {
            let aki = CertInfo::parse(&issued.leaf_der)
                .ok()
                .and_then(|c| c.authority_key_id)
                .unwrap_or_default();
            let serial = hex::decode(&issued.serial_hex).unwrap_or_default();
            let identifiers = state
                .orders
                .get(order_id)
                .map(|o| o.identifiers.clone())
                .unwrap_or_default();
            tracing::info!(
                target: "devca",
                order = %order_id,
                serial = %issued.serial_hex,
                identifiers = %identifier_names(&identifiers),
                not_after = %super::state::rfc3339(req.not_after),
                "certificate issued"
            );
            state.certs.insert(
                cert_id.clone(),
                IssuedCert {
                    account: account.to_owned(),
                    chain_pem: issued.chain_pem,
                    leaf_der: issued.leaf_der,
                    revoked: None,
                    revoked_at: None,
                    cert_id: ari::cert_id(&aki, &serial),
                    identifiers,
                    issued_at: OffsetDateTime::now_utc(),
                    not_after: req.not_after,
                    replaced_by: None,
                    serial_hex: issued.serial_hex,
                },
            );
            if let Some(order) = state.orders.get_mut(order_id) {
                order.status = Status::Valid;
                order.cert = Some(cert_id);
            }
            inner.behaviour.count(Counter::CertificateIssued);
        }
        Err(e) => {
            tracing::info!(target: "devca", order = %order_id, error = %e, "issuance failed");
            if let Some(order) = state.orders.get_mut(order_id) {
                order.status = Status::Invalid;
                order.error = Some(
                    Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "serverInternal",
                        e.to_string(),
                    )
                    .to_json(),
                );
            }
        }
    }
}

/// Certificate download, POST-as-GET, `application/pem-certificate-chain` (RFC 8555 §7.4.2).
pub(crate) async fn certificate(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Kid)?;
    let state = inner.lock_state();
    let cert = state
        .certs
        .get(&id)
        .ok_or_else(|| Problem::not_found("certificate"))?;
    if cert.account != req.account_id()? {
        return Err(Problem::unauthorized("not your certificate"));
    }
    Ok((
        [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
        cert.chain_pem.clone(),
    )
        .into_response())
}

/// revokeCert (RFC 8555 §7.6), signed by the issuing account (kid) or the certificate key
/// (jwk).
pub(crate) async fn revoke(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Either)?;
    let payload = req.json()?.unwrap_or_default();
    let der = payload
        .get("certificate")
        .and_then(Value::as_str)
        .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
        .ok_or_else(|| Problem::malformed("certificate must be base64url DER"))?;
    let reason = payload.get("reason").and_then(Value::as_u64).unwrap_or(0);
    if reason == 7 || reason > 10 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "badRevocationReason",
            format!("reason {reason} is not allowed"),
        ));
    }
    let info = CertInfo::parse(&der).map_err(|e| Problem::malformed(e.to_string()))?;
    let mut state = inner.lock_state();
    let cert = state
        .certs
        .values_mut()
        .find(|c| c.leaf_der == der)
        .ok_or_else(|| Problem::not_found("certificate issued by this CA"))?;
    let allowed = match &req.account {
        Some(acct) => *acct == cert.account,
        None => spki_der(&req.jwk) == info.public_key_spki_der,
    };
    if !allowed {
        return Err(Problem::unauthorized(
            "neither the issuing account nor the certificate key signed this request",
        ));
    }
    if cert.revoked.is_some() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "alreadyRevoked",
            format!("certificate {} is already revoked", cert.serial_hex),
        ));
    }
    cert.revoked = Some(u8::try_from(reason).unwrap_or(0));
    cert.revoked_at = Some(OffsetDateTime::now_utc());
    tracing::info!(
        target: "devca",
        serial = %cert.serial_hex,
        identifiers = %identifier_names(&cert.identifiers),
        reason,
        "certificate revoked"
    );
    drop(state);
    inner.behaviour.count(Counter::Revocation);
    Ok((StatusCode::OK, Json(json!({}))).into_response())
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
