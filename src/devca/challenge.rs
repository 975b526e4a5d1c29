//! Challenges: the tkauth-01 (RFC 9447, RFC 9448) and http-01 (RFC 8555 §8.3) responses
//! and their validation in the background.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use time::OffsetDateTime;

use super::{
    DevResponseField,
    behaviour::Counter,
    jws::{AccountRequest, Problem, thumbprint},
    order::update_order,
    state::{AcmeState, Inner, Status, challenge_json, identifier_names},
    stipa,
};

/// Challenge: POST-as-GET reads it; a JSON object starts validation in the background:
/// for tkauth-01 it carries the token (RFC 9448 §4: `tkauth`; deployed CAs: `atc`), for
/// http-01 it is `{}` and the devca fetches the key authorization from the client
/// (RFC 8555 §7.5.1, §8.3). Every answer links `up` to the authorization.
pub(crate) async fn challenge(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    AccountRequest(req): AccountRequest,
) -> Result<Response, Problem> {
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
