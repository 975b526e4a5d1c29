//! The STI-PA token API, shaped like iconectiv's (shaken-acme.md §4), and the STI-CA's
//! validation of the tokens it issues (RFC 9448 §6; shaken-acme.md §1).

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use josekit::jws::{ES256, JwsSigner, JwsVerifier};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::pki::RevokedEntry;
use super::{
    TokenFault,
    behaviour::Counter,
    jws::{self, Problem},
    state::{Inner, random_id},
};
use crate::shaken::{TkValueEncoding, TnAuthList};

/// Path of the token-signing certificate named by every token's `x5u`.
pub(crate) const X5U_PATH: &str = "/download/v1/certificate/sti-pa.crt";

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/account/{ocn}/token/", post(token))
        .route("/api/v1/account/{ocn}/token", post(token))
        .route_layer(middleware::from_fn_with_state(inner.clone(), api_delay))
        .route(X5U_PATH, get(certificate))
        .route(super::pki::CRL_PATH, get(crl))
        .route(super::pki::ROOT_CRL_PATH, get(root_crl))
        .with_state(inner)
}

/// A slow STI-PA ([`super::Behaviour::set_sti_pa_delay`]): holds every API answer (login,
/// logout, token; not the certificate and CRL downloads).
async fn api_delay(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let delay = inner.behaviour.sti_pa_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    next.run(req).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"status": "error", "message": message}))).into_response()
}

async fn login(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body must be JSON");
    };
    let user = req.get("userId").and_then(Value::as_str);
    let password = req.get("password").and_then(Value::as_str);
    let s = &inner.settings;
    if user != Some(s.sti_pa_user.as_str()) || password != Some(s.sti_pa_password.expose_secret()) {
        return error(StatusCode::UNAUTHORIZED, "invalid userId or password");
    }
    let access = random_id();
    inner
        .access_tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(access.clone());
    Json(json!({
        "status": "success",
        "accessToken": access,
        "refreshToken": random_id(),
        "message": "login successful",
    }))
    .into_response()
}

async fn logout(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let access = authorization(&headers);
    inner
        .access_tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&access);
    Json(json!({"status": "success", "message": "logged out"})).into_response()
}

async fn token(
    State(inner): State<Arc<Inner>>,
    Path(ocn): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let known = inner
        .access_tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(&authorization(&headers));
    if !known {
        return error(StatusCode::UNAUTHORIZED, "missing or unknown access token");
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body must be JSON");
    };
    let atc = &req["atc"];
    let field = |k: &str| atc.get(k).and_then(Value::as_str);
    if !field("tktype").is_some_and(|t| t.eq_ignore_ascii_case("TNAuthList")) {
        return error(StatusCode::BAD_REQUEST, "atc.tktype must be TNAuthList");
    }
    let Some(tkvalue) = field("tkvalue") else {
        return error(StatusCode::BAD_REQUEST, "atc.tkvalue is missing");
    };
    let list = match TnAuthList::decode(tkvalue) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("atc.tkvalue: {e}")),
    };
    if !list.spcs().any(|s| s == ocn) {
        return error(
            StatusCode::FORBIDDEN,
            &format!("SPC {ocn} is not in the requested TNAuthList"),
        );
    }
    let Some(fingerprint) = field("fingerprint").filter(|f| f.starts_with("SHA256 ")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "atc.fingerprint must be `SHA256 <hex>`",
        );
    };
    let ca = atc.get("ca").and_then(Value::as_bool).unwrap_or(false);
    let token = match mint(&inner, tkvalue, fingerprint, ca) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    inner.behaviour.count(Counter::TokenIssued);
    tracing::info!(target: "devca", spc = %ocn, ca, "STI-PA SPC token issued");
    inner.behaviour.record_token(fingerprint);
    Json(json!({
        "status": "success",
        "message": format!("SPC token for spc: {ocn} is created successfully"),
        "token": token,
        "crl": inner.pki.crl_url,
    }))
    .into_response()
}

/// Serves the token-signing certificate: DER (`application/pkix-cert`) when the client
/// asks for it, PEM (`application/x-pem-file`) otherwise.
async fn certificate(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let wants_der = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/pkix-cert"));
    if wants_der {
        (
            [(header::CONTENT_TYPE, "application/pkix-cert")],
            inner.pki.stipa_cert_der.clone(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            inner.pki.stipa_cert_pem.clone(),
        )
            .into_response()
    }
}

/// Serves the CRL (`application/pkix-crl`) listing every certificate revoked so far, with
/// the reason each was revoked for.
async fn crl(State(inner): State<Arc<Inner>>) -> Response {
    let revoked: Vec<RevokedEntry> = inner
        .lock_state()
        .certs
        .values()
        .filter_map(|c| {
            Some(RevokedEntry {
                serial_hex: c.serial_hex.clone(),
                reason: c.revoked?,
                revoked_at: c.revoked_at.unwrap_or(c.issued_at),
            })
        })
        .collect();
    crl_response(inner.pki.crl(&revoked))
}

/// The root's CRL, which covers the intermediate (the intermediate's CRLDP names it).
async fn root_crl(State(inner): State<Arc<Inner>>) -> Response {
    crl_response(inner.pki.root_crl())
}

fn crl_response(crl: Result<Vec<u8>, super::DevCaError>) -> Response {
    match crl {
        Ok(der) => ([(header::CONTENT_TYPE, "application/pkix-crl")], der).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn authorization(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Signs an SPC token (RFC 9448 §5), applying the configured [`TokenFault`].
fn mint(inner: &Inner, tkvalue: &str, fingerprint: &str, ca: bool) -> Result<String, String> {
    let fault = inner.behaviour.token_fault();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let lifetime = i64::try_from(inner.settings.token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let exp = if fault == Some(TokenFault::Expired) {
        now - 60
    } else {
        now.saturating_add(lifetime)
    };
    let fingerprint = if fault == Some(TokenFault::WrongFingerprint) {
        format!("SHA256 {}", ["00"; 32].join(":"))
    } else {
        fingerprint.to_owned()
    };
    let tkvalue = match fault {
        Some(TokenFault::WrongTkValue) => TnAuthList::from_spc("0000")
            .map_err(|e| e.to_string())?
            .encode(TkValueEncoding::Base64),
        _ => tkvalue.to_owned(),
    };
    let header = json!({"alg": "ES256", "typ": "JWT", "x5u": inner.url(X5U_PATH).as_str()});
    let payload = json!({
        "exp": exp,
        "jti": random_id(),
        "atc": {"tktype": "TNAuthList", "tkvalue": tkvalue, "ca": ca, "fingerprint": fingerprint},
    });
    let key = if fault == Some(TokenFault::WrongKey) {
        &inner.pki.wrong_key_der
    } else {
        &inner.pki.stipa_key_der
    };
    let signer = ES256.signer_from_der(key).map_err(|e| e.to_string())?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// What a validated token grants.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) ca: bool,
    pub(crate) jti: String,
}

/// Validates an SPC token answered to a tkauth-01 challenge for `expected` by the account
/// with key `account_jwk` (RFC 9448 §6; shaken-acme.md §1 "What the server verifies").
pub(crate) fn verify_token(
    inner: &Inner,
    token: &str,
    expected: &TnAuthList,
    account_jwk: &Value,
) -> Result<Grant, Problem> {
    let unauthorized = |d: &str| Problem::unauthorized(d.to_owned());
    let incorrect = |d: String| Problem::new(StatusCode::FORBIDDEN, "incorrectResponse", d);
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(unauthorized("token is not a compact JWS"));
    };
    let header = jws::decode_header(h).map_err(|_| unauthorized("token header does not decode"))?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err(unauthorized("token alg is not ES256"));
    }
    let x5u = header
        .get("x5u")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if x5u != inner.url(X5U_PATH).as_str() {
        return Err(unauthorized(&format!(
            "token x5u {x5u:?} is not the trusted STI-PA certificate"
        )));
    }
    let verifier = ES256
        .verifier_from_der(&inner.pki.stipa_spki_der)
        .map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "serverInternal",
                e.to_string(),
            )
        })?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| unauthorized("token signature is not base64url"))?;
    verifier
        .verify(format!("{h}.{p}").as_bytes(), &signature)
        .map_err(|_| unauthorized("token signature invalid"))?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| unauthorized("token payload is not JSON"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now => {}
        Some(_) => return Err(unauthorized("token expired")),
        None => return Err(unauthorized("token has no exp")),
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .ok_or_else(|| unauthorized("token has no jti"))?;
    let atc = claims
        .get("atc")
        .ok_or_else(|| unauthorized("token has no atc claim"))?;
    let field = |k: &str| atc.get(k).and_then(Value::as_str).unwrap_or_default();
    if !field("tktype").eq_ignore_ascii_case("TNAuthList") {
        return Err(incorrect(format!(
            "atc.tktype {:?} is not TNAuthList",
            field("tktype")
        )));
    }
    match TnAuthList::decode(field("tkvalue")) {
        Ok(list) if &list == expected => {}
        Ok(list) => {
            return Err(incorrect(format!(
                "tkvalue {list} does not match the order's TNAuthList {expected}"
            )));
        }
        Err(e) => return Err(incorrect(format!("tkvalue does not decode: {e}"))),
    }
    let want = jws::fingerprint(account_jwk, inner.settings.fingerprint);
    if !field("fingerprint").eq_ignore_ascii_case(&want) {
        return Err(incorrect(format!(
            "fingerprint mismatch: token has {:?}, the account key's is {want:?}",
            field("fingerprint")
        )));
    }
    let ca = match atc.get("ca") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(incorrect("atc.ca is not a boolean".into())),
    };
    Ok(Grant {
        ca,
        jti: jti.to_owned(),
    })
}
