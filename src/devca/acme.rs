//! The STI-CA's ACME endpoints (RFC 8555 §7): directory, nonces, accounts and key
//! rollover; orders and what follows are in [`super::order`].

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use josekit::jws::{HS256, JwsVerifier};
use serde_json::{Value, json};

use super::{
    ari,
    behaviour::{Counter, InjectedError, Step},
    challenge, issue,
    jws::{self, AccountRequest, Flattened, KeyRef, Problem, thumbprint, verify_request},
    order, star,
    state::{Account, Inner, account_json, random_id},
};

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/acme/directory", get(directory))
        .route("/acme/new-nonce", get(new_nonce_get).head(new_nonce_head))
        .route("/acme/new-account", post(new_account))
        .route("/acme/acct/{id}", post(account))
        .route("/acme/acct/{id}/orders", post(order::orders))
        .route("/acme/key-change", post(key_change))
        .route("/acme/new-order", post(order::new_order))
        .route("/acme/new-authz", post(order::new_authz))
        .route("/acme/order/{id}", post(order::order))
        .route("/acme/authz/{id}", post(order::authz))
        .route("/acme/chall/{id}", post(challenge::challenge))
        .route("/acme/finalize/{id}", post(issue::finalize))
        .route("/acme/cert/{id}", post(issue::certificate))
        .route("/acme/star/{id}", post(star::star_post).get(star::star_get))
        .route("/acme/revoke-cert", post(issue::revoke))
        .route("/acme/renewal-info/{id}", get(ari::renewal_info))
        .layer(middleware::from_fn_with_state(inner.clone(), acme_layer))
        .with_state(inner)
}

/// Applies the delay, hang and error knobs (per [`Step`]), refuses a POST that is not
/// `application/jose+json` (RFC 8555 §6.2: 415), turns a GET on a POST-only resource into a
/// problem document (§6.3: 405), and gives every response a fresh `Replay-Nonce` (§6.5),
/// `Cache-Control: no-store` and the directory `Link` (§7.1).
async fn acme_layer(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    inner.behaviour.count(Counter::AcmeRequest);
    let step = Step::of_path(req.uri().path());
    let step_name = step.map_or("other", Step::name);
    let delay = inner.behaviour.delay_for(step);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if inner.behaviour.hangs(step) {
        inner.behaviour.count(Counter::Hung);
        tracing::info!(target: "devca", step = step_name, "fault: request left hanging");
        // Until the client gives up (or the devca stops), like a CA that accepted the
        // connection and never answers.
        std::future::pending::<()>().await;
    }
    let mut resp = if inner.behaviour.take_unavailable() {
        let mut resp = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "serverInternal",
            "the devca is configured to be unavailable",
        )
        .into_response();
        if let Some(secs) = inner.behaviour.unavailable_retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    } else if let Some(e) = inner.behaviour.roll_injected_error(step) {
        inner.behaviour.count(Counter::InjectedError);
        tracing::info!(
            target: "devca",
            step = step_name,
            status = e.status,
            problem_type = %e.type_urn(),
            "fault: injected error"
        );
        injected_error_response(&e)
    } else if req.method() == Method::POST && !is_jose_json(req.headers()) {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "malformed",
            "ACME requests must have Content-Type: application/jose+json",
        )
        .into_response()
    } else {
        let resp = next.run(req).await;
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            let allow = resp.headers().get(header::ALLOW).cloned();
            let mut p = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "malformed",
                "this resource takes POST (POST-as-GET to read it)",
            )
            .into_response();
            if let Some(allow) = allow {
                p.headers_mut().insert(header::ALLOW, allow);
            }
            p
        } else {
            resp
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&inner.new_nonce()) {
        h.insert("replay-nonce", v);
    }
    // A cacheable STAR answer (RFC 8739 §4.3) keeps its own directives.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let link = format!("<{}>;rel=\"index\"", inner.url("/acme/directory"));
    if let Ok(v) = HeaderValue::from_str(&link) {
        // Appended: a challenge response also links "up" to its authorization.
        h.append(header::LINK, v);
    }
    resp
}

/// The problem document of an [`InjectedError`], with its `Retry-After`.
fn injected_error_response(e: &InjectedError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = json!({
        "type": e.type_urn(),
        "detail": "error injected by the devca (--error-rate)",
        "status": status.as_u16(),
    });
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(secs) = e.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Whether the media type is `application/jose+json` (parameters aside).
fn is_jose_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/jose+json"))
}

async fn directory(State(inner): State<Arc<Inner>>) -> Json<Value> {
    let u = |p: &str| inner.url(p).to_string();
    let mut dir = json!({
        "newNonce": u("/acme/new-nonce"),
        "newAccount": u("/acme/new-account"),
        "newOrder": u("/acme/new-order"),
        "revokeCert": u("/acme/revoke-cert"),
        "keyChange": u("/acme/key-change"),
        "meta": {
            "website": inner.base.as_str(),
            "externalAccountRequired": inner.settings.require_eab.is_some(),
            "caaIdentities": inner.settings.caa_identities,
        },
    });
    if let Some(limits) = &inner.settings.star {
        dir["meta"]["auto-renewal"] = star::meta_json(limits);
    }
    if inner.settings.new_authz {
        dir["newAuthz"] = json!(u("/acme/new-authz"));
    }
    if inner.settings.renewal_info.is_some() {
        dir["renewalInfo"] = json!(u("/acme/renewal-info"));
    }
    Json(dir)
}

async fn new_nonce_head() -> StatusCode {
    StatusCode::OK
}

async fn new_nonce_get() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// newAccount (RFC 8555 §7.3), with onlyReturnExisting and External Account Binding.
async fn new_account(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    body: Bytes,
) -> Result<Response, Problem> {
    let req = verify_request(&inner, uri.path(), &body, KeyRef::Jwk)?;
    let payload = req.json()?.unwrap_or_else(|| json!({}));
    let key = thumbprint(&req.jwk);
    let existing = inner.lock_state().account_by_key.get(&key).cloned();
    if let Some(id) = existing {
        let state = inner.lock_state();
        let acct = state
            .accounts
            .get(&id)
            .ok_or_else(|| Problem::not_found("account"))?;
        if acct.deactivated {
            // RFC 8555 §7.3.6: no further requests authorized by a deactivated account's key.
            return Err(Problem::unauthorized(
                "the account of this key is deactivated",
            ));
        }
        return Ok(created(
            StatusCode::OK,
            inner.url(&format!("/acme/acct/{id}")).as_str(),
            account_json(acct, &id, &inner),
        ));
    }
    if payload.get("onlyReturnExisting").and_then(Value::as_bool) == Some(true) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "accountDoesNotExist",
            "no account exists for this key",
        ));
    }
    if let Some((kid, hmac)) = &inner.settings.require_eab {
        check_eab(&inner, &payload, &req.jwk, kid, hmac)?;
    }
    let contact = contacts(&payload)?;
    let id = random_id();
    let acct = Account {
        jwk: req.jwk.clone(),
        contact,
        deactivated: false,
    };
    let body = account_json(&acct, &id, &inner);
    tracing::info!(target: "devca", account = %id, "account created");
    let mut state = inner.lock_state();
    state.accounts.insert(id.clone(), acct);
    state.account_by_key.insert(key, id.clone());
    Ok(created(
        StatusCode::CREATED,
        inner.url(&format!("/acme/acct/{id}")).as_str(),
        body,
    ))
}

/// Checks the External Account Binding (RFC 8555 §7.3.4): an HS256 JWS over the account
/// JWK, with the configured key id and the newAccount URL.
fn check_eab(
    inner: &Inner,
    payload: &Value,
    jwk: &Value,
    kid: &str,
    hmac: &[u8],
) -> Result<(), Problem> {
    let required = |d: &str| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "externalAccountRequired",
            d.to_owned(),
        )
    };
    let eab = payload
        .get("externalAccountBinding")
        .ok_or_else(|| required("this CA requires an external account binding"))?;
    let eab: Flattened = serde_json::from_value(eab.clone())
        .map_err(|e| Problem::malformed(format!("externalAccountBinding: {e}")))?;
    let header = jws::decode_header(&eab.protected)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(Problem::malformed(
            "externalAccountBinding alg must be HS256",
        ));
    }
    if header.get("kid").and_then(Value::as_str) != Some(kid) {
        return Err(required("unknown external account key id"));
    }
    if header.get("url").and_then(Value::as_str) != Some(inner.url("/acme/new-account").as_str()) {
        return Err(Problem::malformed(
            "externalAccountBinding url must be newAccount",
        ));
    }
    let verifier = HS256.verifier_from_bytes(hmac).map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "serverInternal",
            e.to_string(),
        )
    })?;
    let signature = URL_SAFE_NO_PAD
        .decode(&eab.signature)
        .map_err(|_| Problem::malformed("externalAccountBinding signature is not base64url"))?;
    verifier
        .verify(
            format!("{}.{}", eab.protected, eab.payload).as_bytes(),
            &signature,
        )
        .map_err(|_| required("externalAccountBinding MAC does not verify"))?;
    let bound: Value = URL_SAFE_NO_PAD
        .decode(&eab.payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| Problem::malformed("externalAccountBinding payload is not a JWK"))?;
    if thumbprint(&bound) != thumbprint(jwk) {
        return Err(Problem::malformed(
            "externalAccountBinding binds a different key",
        ));
    }
    Ok(())
}

/// Account POST-as-GET, update (contact) and deactivation (RFC 8555 §7.3.2, §7.3.6).
async fn account(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    if req.account_id()? != id {
        return Err(Problem::unauthorized("not your account"));
    }
    let payload = req.json()?;
    let mut state = inner.lock_state();
    let acct = state
        .accounts
        .get_mut(&id)
        .ok_or_else(|| Problem::not_found("account"))?;
    if let Some(p) = &payload {
        if p.get("contact").is_some() {
            acct.contact = contacts(p)?;
        }
        match p.get("status") {
            None => {}
            Some(s) if s.as_str() == Some("deactivated") => acct.deactivated = true,
            // §7.3.6: a client can only deactivate; "valid" is a no-op.
            Some(s) if s.as_str() == Some("valid") => {}
            Some(s) => {
                return Err(Problem::malformed(format!(
                    "account status can only be set to \"deactivated\", not {s}"
                )));
            }
        }
    }
    Ok(Json(account_json(acct, &id, &inner)).into_response())
}

/// Account key rollover (RFC 8555 §7.3.5): the outer JWS by the old key (kid), the inner
/// by the new key (jwk, same url, no nonce) over `{account, oldKey}`.
async fn key_change(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
    let id = req.account_id()?.to_owned();
    let inner_jws: Flattened = serde_json::from_slice(&req.payload)
        .map_err(|e| Problem::malformed(format!("keyChange payload is not a JWS: {e}")))?;
    let header = jws::decode_header(&inner_jws.protected)?;
    if header.get("nonce").is_some() {
        return Err(Problem::malformed(
            "the inner keyChange JWS must not carry a nonce",
        ));
    }
    if header.get("url").and_then(Value::as_str) != Some(inner.url(uri.path()).as_str()) {
        return Err(Problem::malformed(
            "the inner keyChange JWS url must equal the outer",
        ));
    }
    if header.get("kid").is_some() {
        return Err(Problem::malformed(
            "the inner keyChange JWS must carry jwk, not kid",
        ));
    }
    let new_jwk = header
        .get("jwk")
        .cloned()
        .ok_or_else(|| Problem::malformed("the inner keyChange JWS must carry jwk"))?;
    jws::verify_signature(&inner_jws, &header, &new_jwk)?;
    let change: Value = URL_SAFE_NO_PAD
        .decode(&inner_jws.payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| Problem::malformed("keyChange inner payload is not JSON"))?;
    let acct_url = inner.url(&format!("/acme/acct/{id}")).to_string();
    if change.get("account").and_then(Value::as_str) != Some(acct_url.as_str()) {
        return Err(Problem::malformed(
            "keyChange account is not the signer's account",
        ));
    }
    let old = change.get("oldKey").cloned().unwrap_or_default();
    if thumbprint(&old) != thumbprint(&req.jwk) {
        return Err(Problem::malformed(
            "keyChange oldKey is not the account's key",
        ));
    }
    let new_key = thumbprint(&new_jwk);
    let mut state = inner.lock_state();
    if let Some(other) = state.account_by_key.get(&new_key) {
        let mut p = Problem::new(
            StatusCode::CONFLICT,
            "malformed",
            "new key is already in use",
        );
        p.location = Some(inner.url(&format!("/acme/acct/{other}")).to_string());
        return Err(p);
    }
    state.account_by_key.remove(&thumbprint(&req.jwk));
    state.account_by_key.insert(new_key, id.clone());
    let acct = state
        .accounts
        .get_mut(&id)
        .ok_or_else(|| Problem::not_found("account"))?;
    acct.jwk = new_jwk;
    Ok(Json(account_json(acct, &id, &inner)).into_response())
}

fn contacts(payload: &Value) -> Result<Vec<String>, Problem> {
    match payload.get("contact") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|c| {
                c.as_str()
                    .filter(|s| s.starts_with("mailto:"))
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Problem::new(
                            StatusCode::BAD_REQUEST,
                            "unsupportedContact",
                            "contacts must be mailto: URLs",
                        )
                    })
            })
            .collect(),
        Some(_) => Err(Problem::malformed("contact must be an array")),
    }
}

/// A JSON response with a `Location` header.
pub(crate) fn created(status: StatusCode, location: &str, body: Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
